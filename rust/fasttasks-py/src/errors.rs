//! The one place where core errors cross into Python, as typed exceptions.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(_core, FastTasksError, PyException, "Base class of the errors raised by fasttasks' core.");
create_exception!(
    _core,
    ConfigurationError,
    FastTasksError,
    "The worker or database configuration cannot work."
);
create_exception!(
    _core,
    DatabaseError,
    FastTasksError,
    "The database refused a request or could not be reached."
);

pub fn to_py(error: fasttasks_core::Error) -> PyErr {
    to_py_ref(&error)
}

pub fn to_py_ref(error: &fasttasks_core::Error) -> PyErr {
    use fasttasks_core::Error;
    match error {
        Error::Config(_) | Error::HealthServer { .. } => ConfigurationError::new_err(error.to_string()),
        Error::Database(_) | Error::CorruptRow { .. } => DatabaseError::new_err(error.to_string()),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("FastTasksError", py.get_type::<FastTasksError>())?;
    m.add("ConfigurationError", py.get_type::<ConfigurationError>())?;
    m.add("DatabaseError", py.get_type::<DatabaseError>())?;
    Ok(())
}
