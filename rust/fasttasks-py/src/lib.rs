//! `fasttasks._core`: the thin binding between the Rust core and Python.
//!
//! - [`errors`]: the core's errors become Python exceptions here, and only here.
//! - [`settings`]: Python dicts (built from Django's settings) become core configs.
//! - [`executor`]: dedicated Python threads that run tasks (attached once; detached while waiting).
//! - [`worker`]: the `Worker` class the CLI drives: start, wait, stop, abort, stats, events.

mod errors;
mod executor;
mod settings;
mod worker;

use pyo3::prelude::*;

/// The statements that create fasttasks' tables for a Django vendor ("sqlite", "postgresql").
/// The Django migration runs exactly these.
#[pyfunction]
fn schema_statements(vendor: &str) -> PyResult<Vec<String>> {
    let dialect = fasttasks_core::config::Dialect::from_vendor(vendor).map_err(errors::to_py)?;
    Ok(fasttasks_core::schema::schema_statements(dialect))
}

/// The version of the SQLite library the extension uses (the system's shared libsqlite3).
#[pyfunction]
fn sqlite_version() -> String {
    fasttasks_core::store::sqlite_library_version()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(schema_statements, m)?)?;
    m.add_function(wrap_pyfunction!(sqlite_version, m)?)?;
    m.add_class::<worker::Worker>()?;
    m.add_class::<executor::Job>()?;
    m.add_class::<executor::Reply>()?;
    errors::register(m)?;
    Ok(())
}
