//! How to reach the database and how a worker behaves. Built by the binding crate from Django's
//! settings (so a worker always talks to the database Django uses) or directly by tests.

use std::path::PathBuf;
use std::time::Duration;

/// The SQL dialect of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    /// Django's `connection.vendor` names: "postgresql" and "sqlite".
    pub fn from_vendor(vendor: &str) -> crate::Result<Self> {
        match vendor {
            "postgresql" | "postgres" => Ok(Self::Postgres),
            "sqlite" | "sqlite3" => Ok(Self::Sqlite),
            other => Err(crate::Error::Config(format!(
                "unsupported database vendor {other:?}: fasttasks supports PostgreSQL and SQLite"
            ))),
        }
    }
}

/// Where the queue table lives. Fields mirror Django's `DATABASES[alias]` so that no URL escaping is needed.
#[derive(Debug, Clone)]
pub enum DatabaseConfig {
    Postgres {
        host: String,
        port: u16,
        user: String,
        password: Option<String>,
        dbname: String,
        /// `sslmode` etc. as libpq option names and values (only the ones sqlx understands are applied).
        options: Vec<(String, String)>,
    },
    Sqlite {
        path: PathBuf,
        /// How long a statement waits for another process's write lock before failing.
        busy_timeout: Duration,
    },
}

impl DatabaseConfig {
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Postgres { .. } => Dialect::Postgres,
            Self::Sqlite { .. } => Dialect::Sqlite,
        }
    }

    /// A description for banners and logs, without the password.
    pub fn describe(&self) -> String {
        match self {
            Self::Postgres { host, port, user, dbname, .. } => {
                format!("postgresql://{user}@{host}:{port}/{dbname}")
            }
            Self::Sqlite { path, .. } => format!("sqlite:{}", path.display()),
        }
    }
}

/// Which queues a worker claims from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueFilter {
    /// `--queues '*'`: every queue of the backend.
    All,
    /// Only these queue names.
    Only(Vec<String>),
}

/// How one worker process behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The `TASKS` alias whose rows this worker runs (the table may hold several backends' rows).
    pub backend_name: String,
    pub queues: QueueFilter,
    /// Maximum tasks running at once (sync tasks on threads plus coroutines on the event loop).
    pub concurrency: usize,
    /// Claim-ahead: at most this many claimed tasks wait for a free slot on top of `concurrency`. The
    /// producer uses it only as far as the executor's recent pace starts them within
    /// [`crate::worker::PREFETCH_HORIZON`], so short tasks are claimed in large batches while long
    /// ones are claimed only for free slots. 0: claim only for free slots.
    pub prefetch: usize,
    /// Stored in `worker_ids` and `worker_id`; at most 64 characters.
    pub worker_id: String,
    /// Drain everything that is due, then stop.
    pub batch: bool,
    /// Stop after claiming this many tasks.
    pub max_tasks: Option<u64>,
    /// The idle poll interval: how long the producer sleeps when nothing was due and no wake-up came.
    /// Each sleep is lengthened by up to 20% at random so that many idle workers do not poll in step.
    pub poll_interval: Duration,
    /// Listen for wake-ups (PostgreSQL LISTEN/NOTIFY, SQLite `data_version`). Off: poll only, e.g.
    /// behind a transaction-pooling PgBouncer, where LISTEN does not work.
    pub listen: bool,
    /// The most outcomes written in one completion statement. The completer never waits to fill a
    /// batch: it writes whatever arrived while its previous write ran.
    pub completion_batch_size: usize,
    /// Recorded with the worker's registration (`fasttasks_worker.hostname`).
    pub hostname: String,
    /// How often the worker's Rust runtime moves its heartbeat forward.
    pub heartbeat_interval: Duration,
    /// A worker whose heartbeat is older than this is dead: the elected leader rescues its tasks.
    pub dead_after: Duration,
    /// A task whose worker died this many times (a task that kills its process) ends FAILED.
    pub max_crashes: i32,
    /// Serve health checks over HTTP on this port while the worker runs (see [`crate::health`]);
    /// `Some(0)` picks a free port (reported in an event). None: no health server.
    pub health_port: Option<u16>,
    /// The address the health server binds (`0.0.0.0`: every IPv4 interface, so that an orchestrator
    /// can probe from outside the container).
    pub health_host: String,
}

impl WorkerConfig {
    pub fn new(backend_name: impl Into<String>, worker_id: impl Into<String>) -> Self {
        Self {
            backend_name: backend_name.into(),
            queues: QueueFilter::Only(vec!["default".into()]),
            concurrency: 8,
            prefetch: 1_000,
            worker_id: worker_id.into(),
            batch: false,
            max_tasks: None,
            poll_interval: Duration::from_secs(1),
            listen: true,
            completion_batch_size: 1_000,
            hostname: std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into()),
            heartbeat_interval: Duration::from_secs(2),
            dead_after: Duration::from_secs(10),
            max_crashes: 3,
            health_port: None,
            health_host: "0.0.0.0".into(),
        }
    }

    pub fn validate(&self) -> crate::Result<()> {
        if self.concurrency == 0 {
            return Err(crate::Error::Config("concurrency must be at least 1".into()));
        }
        if self.worker_id.is_empty() || self.worker_id.chars().count() > 64 {
            return Err(crate::Error::Config("worker id must be 1 to 64 characters".into()));
        }
        if self.max_tasks == Some(0) {
            return Err(crate::Error::Config("max_tasks must be at least 1".into()));
        }
        if self.heartbeat_interval.is_zero() || self.dead_after < self.heartbeat_interval * 2 {
            return Err(crate::Error::Config(
                "dead_after must be at least twice the heartbeat interval (and the interval above 0)".into(),
            ));
        }
        if self.max_crashes < 1 {
            return Err(crate::Error::Config("max_crashes must be at least 1".into()));
        }
        if self.health_port.is_some() && self.health_host.trim().is_empty() {
            return Err(crate::Error::Config("the health server needs a host to bind (e.g. 0.0.0.0)".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_config_rejects_nonsense() {
        let mut config = WorkerConfig::new("default", "w1");
        assert!(config.validate().is_ok());
        config.concurrency = 0;
        assert!(config.validate().is_err());
        let mut config = WorkerConfig::new("default", "x".repeat(65));
        assert!(config.validate().is_err());
        config.worker_id = "ok".into();
        config.max_tasks = Some(0);
        assert!(config.validate().is_err());
    }
}
