//! Claiming, completing and releasing jobs. One enum over the two databases (no trait objects, no
//! async-trait): each method dispatches to `postgres.rs` or `sqlite.rs`, which hold all the SQL.
//!
//! The contract every store keeps (checked by `tests/store_conformance.rs` on both databases):
//! - `claim` takes at most `limit` READY rows of the backend and queues with `available_at <= now`,
//!   highest priority first, then oldest `available_at`, then `id`; it marks them RUNNING, adds one to
//!   `attempts`, sets `started_at` (first attempt only) and `last_attempted_at` to `now`, appends the
//!   worker id to `worker_ids`, sets `worker_id` and `lease_token`, all in one statement, and returns
//!   them in that order. Two concurrent claimers never get the same row.
//! - `complete` writes a batch of outcomes in one statement (PostgreSQL) or one transaction (SQLite),
//!   each only where `status = 'RUNNING'` and `lease_token` matches; the others are reported stale.
//! - `release` hands claimed-but-unstarted jobs back: READY again, as if never claimed.

mod postgres;
mod sqlite;

use std::time::Duration;

use crate::config::{DatabaseConfig, Dialect, QueueFilter};
use crate::job::{ClaimedJob, NewJob, Outcome};
use crate::time::Timestamp;
use crate::Result;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The channel `FastTasksBackend.enqueue` notifies on PostgreSQL (payload: the queue name).
pub const NOTIFY_CHANNEL: &str = "fasttasks";

/// One claim round.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub backend_name: &'a str,
    pub queues: &'a QueueFilter,
    pub limit: usize,
    pub worker_id: &'a str,
    pub lease_token: i64,
    pub now: Timestamp,
}

/// What `complete` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompletionReport {
    /// Outcomes written.
    pub applied: u64,
    /// Ids whose outcome was rejected: the row is no longer RUNNING under that lease token.
    pub stale: Vec<String>,
}

/// A job queue in one database.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PostgresStore),
    Sqlite(SqliteStore),
}

/// Waits for "there may be new work": LISTEN/NOTIFY on PostgreSQL, `PRAGMA data_version` on SQLite.
pub enum Waker {
    Postgres(postgres::PostgresWaker),
    Sqlite(sqlite::SqliteWaker),
}

impl Waker {
    /// Returns `true` when woken by a sign of new work, `false` when `timeout` passed without one.
    /// A broken listener reports the error; the caller falls back to polling and makes a new waker.
    pub async fn wait(&mut self, timeout: Duration) -> Result<bool> {
        match self {
            Self::Postgres(waker) => waker.wait(timeout).await,
            Self::Sqlite(waker) => waker.wait(timeout).await,
        }
    }
}

impl Store {
    pub async fn connect(config: &DatabaseConfig) -> Result<Self> {
        Ok(match config {
            DatabaseConfig::Postgres { .. } => Self::Postgres(PostgresStore::connect(config).await?),
            DatabaseConfig::Sqlite { .. } => Self::Sqlite(SqliteStore::connect(config).await?),
        })
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Postgres(_) => Dialect::Postgres,
            Self::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// Creates the tables if they do not exist (tests and benchmarks; Django's `migrate` does it in production).
    pub async fn install_schema(&self) -> Result<()> {
        match self {
            Self::Postgres(store) => store.install_schema().await,
            Self::Sqlite(store) => store.install_schema().await,
        }
    }

    /// Inserts jobs in one statement per chunk (tests and benchmarks).
    pub async fn insert(&self, jobs: &[NewJob]) -> Result<()> {
        match self {
            Self::Postgres(store) => store.insert(jobs).await,
            Self::Sqlite(store) => store.insert(jobs).await,
        }
    }

    pub async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<ClaimedJob>> {
        match self {
            Self::Postgres(store) => store.claim(request).await,
            Self::Sqlite(store) => store.claim(request).await,
        }
    }

    pub async fn complete(&self, outcomes: &[Outcome]) -> Result<CompletionReport> {
        if outcomes.is_empty() {
            return Ok(CompletionReport::default());
        }
        match self {
            Self::Postgres(store) => store.complete(outcomes).await,
            Self::Sqlite(store) => store.complete(outcomes).await,
        }
    }

    /// Returns claimed jobs that never started to READY (`attempts` and `worker_ids` restored).
    /// Takes `(id, lease_token)` pairs; returns how many rows were released.
    pub async fn release(&self, claims: &[(String, i64)]) -> Result<u64> {
        if claims.is_empty() {
            return Ok(0);
        }
        match self {
            Self::Postgres(store) => store.release(claims).await,
            Self::Sqlite(store) => store.release(claims).await,
        }
    }

    pub async fn waker(&self) -> Result<Waker> {
        Ok(match self {
            Self::Postgres(store) => Waker::Postgres(store.waker().await?),
            Self::Sqlite(store) => Waker::Sqlite(store.waker().await?),
        })
    }

    pub async fn close(&self) {
        match self {
            Self::Postgres(store) => store.close().await,
            Self::Sqlite(store) => store.close().await,
        }
    }
}
