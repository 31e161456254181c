use pyo3::prelude::*;

#[pyfunction]
fn schema_statements(vendor: &str) -> PyResult<Vec<String>> {
    let dialect = fasttasks_core::config::Dialect::from_vendor(vendor)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    Ok(fasttasks_core::schema::schema_statements(dialect))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(schema_statements, m)?)?;
    Ok(())
}
