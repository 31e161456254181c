//! The pure-Rust core of fasttasks: no PyO3 here, so all of it is tested by `cargo test`.
//!
//! - [`job`]: what a claimed job and its outcome look like.
//! - [`config`]: how to reach the database and how a worker behaves.
//! - [`schema`]: the SQL that creates the tables (the Django migration runs the same statements).
//! - [`store`]: claiming, completing and releasing jobs on PostgreSQL or SQLite.
//! - [`worker`]: the services of one worker process (producer, completer) around an executor that
//!   the binding crate provides (Python threads) or the tests provide (plain Rust closures).
//! - [`maintenance`]: heartbeats, leader election and the rescue of dead workers' tasks.
//! - [`health`]: the HTTP health checks a worker serves with `--health-port`.

pub mod config;
pub mod error;
pub mod health;
pub mod job;
pub mod maintenance;
pub mod schema;
pub mod store;
pub mod time;
pub mod worker;

pub use config::{DatabaseConfig, QueueFilter, WorkerConfig};
pub use error::{Error, Result};
pub use job::{ClaimedJob, NewJob, Outcome, OutcomeKind};
pub use store::Store;
