//! Turns the dicts that `fasttasks.cli` builds from Django's settings into core configs.

use std::path::PathBuf;
use std::time::Duration;

use fasttasks_core::config::{DatabaseConfig, Dialect};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::ConfigurationError;

fn wrong_type(key: &str, error: PyErr) -> PyErr {
    ConfigurationError::new_err(format!("database setting {key:?} has the wrong type: {error}"))
}

fn required<'py, T: FromPyObjectOwned<'py>>(dict: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    match dict.get_item(key)? {
        Some(value) => value.extract::<T>().map_err(|e| wrong_type(key, e.into())),
        None => Err(ConfigurationError::new_err(format!("database setting {key:?} is missing"))),
    }
}

fn optional<'py, T: FromPyObjectOwned<'py>>(dict: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<T>> {
    match dict.get_item(key)? {
        Some(value) if !value.is_none() => {
            Ok(Some(value.extract::<T>().map_err(|e| wrong_type(key, e.into()))?))
        }
        _ => Ok(None),
    }
}

/// `{"vendor": "sqlite", "path": str, "busy_timeout": float}` or
/// `{"vendor": "postgresql", "host", "port", "user", "password", "dbname", "options": {str: str}}`.
pub fn database_config(dict: &Bound<'_, PyDict>) -> PyResult<DatabaseConfig> {
    let vendor: String = required(dict, "vendor")?;
    let dialect = Dialect::from_vendor(&vendor).map_err(crate::errors::to_py)?;
    Ok(match dialect {
        Dialect::Sqlite => DatabaseConfig::Sqlite {
            path: PathBuf::from(required::<String>(dict, "path")?),
            busy_timeout: Duration::from_secs_f64(optional::<f64>(dict, "busy_timeout")?.unwrap_or(5.0)),
        },
        Dialect::Postgres => DatabaseConfig::Postgres {
            host: optional(dict, "host")?.unwrap_or_else(|| "localhost".to_owned()),
            port: optional(dict, "port")?.unwrap_or(5432),
            user: optional(dict, "user")?.unwrap_or_else(|| "postgres".to_owned()),
            password: optional(dict, "password")?,
            dbname: required(dict, "dbname")?,
            options: optional::<Vec<(String, String)>>(dict, "options")?.unwrap_or_default(),
        },
    })
}
