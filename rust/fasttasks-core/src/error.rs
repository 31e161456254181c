//! The core's one error type. The binding crate maps each variant to one Python exception, once.

/// Everything that can go wrong in the core. Task failures are not errors: they are [`crate::OutcomeKind::Failed`] data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work (unknown database vendor, bad option).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The database refused or the connection broke. Workers retry these with backoff.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A row that the store read cannot be turned into a job (bad timestamp text, etc.).
    #[error("corrupt row {id}: {reason}")]
    CorruptRow { id: String, reason: String },
    /// The health server cannot listen (the port is in use, the host is not an address of this machine).
    #[error("cannot serve health checks on {address}: {source}")]
    HealthServer { address: String, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
