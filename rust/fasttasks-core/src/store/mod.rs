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
//!   A return value or error the database cannot store (malformed JSON, `\u0000` in a PostgreSQL `jsonb`)
//!   fails only that attempt, with the reason as its error, so one bad value never blocks the batch.
//! - `release` hands claimed-but-unstarted jobs back: READY again, as if never claimed.
//! - Workers `register_worker`, `heartbeat` and `deregister_worker` in `fasttasks_worker`; `elect` takes
//!   or renews a named leader lease in `fasttasks_leader` (held by one worker at a time, free once
//!   expired); `rescue` returns RUNNING rows of workers with no fresh heartbeat to READY, counting a
//!   crash, or ends them FAILED once they have crashed `max_crashes` times.

mod postgres;
mod sqlite;

use std::time::Duration;

use crate::Result;
use crate::config::{DatabaseConfig, Dialect, QueueFilter};
use crate::job::{ClaimedJob, NewJob, Outcome};
use crate::time::Timestamp;

pub use postgres::PostgresStore;
pub use sqlite::{SqliteStore, library_version as sqlite_library_version};

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

/// A worker process, as it registers itself.
#[derive(Debug, Clone)]
pub struct WorkerRegistration<'a> {
    pub worker_id: &'a str,
    pub backend_name: &'a str,
    pub hostname: &'a str,
    pub pid: u32,
    pub now: Timestamp,
}

/// One rescue round.
#[derive(Debug, Clone, Copy)]
pub struct RescueRequest<'a> {
    pub now: Timestamp,
    /// Workers whose last heartbeat is older than this are dead.
    pub alive_since: Timestamp,
    /// A task whose worker died this many times ends FAILED instead of running again.
    pub max_crashes: i32,
    /// Also take this worker id for dead, whatever its heartbeat: a worker starting under the id of a
    /// previous process (a restart with a fixed `--worker-id`) rescues that process's tasks, which would
    /// otherwise look like its own.
    pub previous_incarnation: Option<&'a str>,
}

/// A take-or-renew of the leader lease `name` until `expires_at` (see [`Store::elect`]).
#[derive(Debug, Clone, Copy)]
pub struct LeaderLease<'a> {
    pub name: &'a str,
    pub worker_id: &'a str,
    pub now: Timestamp,
    pub expires_at: Timestamp,
}

/// One maintenance round of a worker, in one transaction: heartbeat (registering again if the
/// registration is gone), election, and a rescue if this worker holds the lease.
#[derive(Debug, Clone)]
pub struct MaintenanceRound<'a> {
    pub worker: WorkerRegistration<'a>,
    pub lease: LeaderLease<'a>,
    pub rescue: RescueRequest<'a>,
}

/// What a maintenance round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// False: the registration was gone (the worker had been taken for dead) and was made again.
    pub was_registered: bool,
    pub leader: bool,
    /// The rescue, when this worker is the leader.
    pub rescue: Option<RescueReport>,
    /// Ids of this worker's RUNNING tasks that `fasttasks.cancel()` asked to stop.
    pub cancel_requested: Vec<String>,
}

/// What `rescue` did: ids of the rows it returned to READY and of those it ended FAILED.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RescueReport {
    pub requeued: Vec<String>,
    pub failed: Vec<String>,
    /// Registrations of dead workers removed.
    pub dead_workers: u64,
}

/// The error recorded for an attempt whose worker died: a class that exists (Django's
/// `TaskError.exception_class` imports it) and a message naming the worker and the attempt.
pub const WORKER_CRASHED_CLASS: &str = "fasttasks.exceptions.WorkerCrashed";

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

    /// Whether the waker sleeps until told (NOTIFY, file events) rather than polling the database.
    pub fn is_event_driven(&self) -> bool {
        match self {
            Self::Postgres(_) => true,
            Self::Sqlite(waker) => waker.uses_file_events(),
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

    /// Hands back, as [`Store::release`] does, every task still RUNNING under one of these claims'
    /// lease tokens. For claims whose answer was lost (the connection failed after the database may
    /// have committed them): their rows would otherwise stay RUNNING under a live worker that never
    /// runs them, which no rescuer takes.
    pub async fn release_leases(&self, lease_tokens: &[i64]) -> Result<u64> {
        if lease_tokens.is_empty() {
            return Ok(0);
        }
        match self {
            Self::Postgres(store) => store.release_leases(lease_tokens).await,
            Self::Sqlite(store) => store.release_leases(lease_tokens).await,
        }
    }

    pub async fn register_worker(&self, worker: &WorkerRegistration<'_>) -> Result<()> {
        match self {
            Self::Postgres(store) => store.register_worker(worker).await,
            Self::Sqlite(store) => store.register_worker(worker).await,
        }
    }

    /// Moves the worker's heartbeat forward. `false`: its registration is gone (a rescuer judged it
    /// dead, e.g. after a long pause); the caller registers again.
    pub async fn heartbeat(&self, worker_id: &str, now: Timestamp) -> Result<bool> {
        match self {
            Self::Postgres(store) => store.heartbeat(worker_id, now).await,
            Self::Sqlite(store) => store.heartbeat(worker_id, now).await,
        }
    }

    /// Removes the worker's registration and any leader lease it holds (a clean exit).
    pub async fn deregister_worker(&self, worker_id: &str) -> Result<()> {
        match self {
            Self::Postgres(store) => store.deregister_worker(worker_id).await,
            Self::Sqlite(store) => store.deregister_worker(worker_id).await,
        }
    }

    /// Takes or renews a leader lease: `true` when `worker_id` holds it now (it was free, expired at
    /// `now`, or already ours).
    pub async fn elect(&self, lease: &LeaderLease<'_>) -> Result<bool> {
        match self {
            Self::Postgres(store) => store.elect(lease).await,
            Self::Sqlite(store) => store.elect(lease).await,
        }
    }

    /// Heartbeat, election and (for the leader) rescue in one transaction: an idle worker's whole
    /// maintenance costs one round trip per `--heartbeat`.
    pub async fn maintenance_round(&self, round: &MaintenanceRound<'_>) -> Result<RoundReport> {
        match self {
            Self::Postgres(store) => store.maintenance_round(round).await,
            Self::Sqlite(store) => store.maintenance_round(round).await,
        }
    }

    pub async fn rescue(&self, request: &RescueRequest<'_>) -> Result<RescueReport> {
        match self {
            Self::Postgres(store) => store.rescue(request).await,
            Self::Sqlite(store) => store.rescue(request).await,
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

/// How one outcome is written: the row's next status and the values the completion statements bind.
/// Both stores build it with [`OutcomeWrite::plan`], so their semantics cannot drift apart.
#[derive(Debug, Clone)]
struct OutcomeWrite<'a> {
    id: &'a str,
    lease_token: i64,
    /// "SUCCESSFUL", "FAILED", or "READY" (a failure with a retry).
    status: &'static str,
    /// Successes only: the JSON text stored in `return_value`.
    return_json: Option<std::borrow::Cow<'a, str>>,
    /// Failures only: one JSON object appended to `errors`.
    error_json: Option<std::borrow::Cow<'a, str>>,
    /// `None` for a retry: the task is not finished.
    finished_at: Option<Timestamp>,
    /// Retries only: when the row may be claimed again.
    retry_at: Option<Timestamp>,
}

impl<'a> OutcomeWrite<'a> {
    const SUCCESSFUL: &'static str = "SUCCESSFUL";
    const FAILED: &'static str = "FAILED";
    const READY: &'static str = "READY";

    /// Checks the JSON texts before they reach the database: one malformed text would otherwise make the
    /// whole batch fail on every retry, and the completer could never write anything again. A malformed
    /// text turns into a failure of that one attempt, with the reason as its error.
    fn plan(outcome: &'a Outcome) -> Self {
        use crate::job::OutcomeKind;
        let base = Self {
            id: &outcome.id,
            lease_token: outcome.lease_token,
            status: Self::SUCCESSFUL,
            return_json: None,
            error_json: None,
            finished_at: Some(outcome.finished_at),
            retry_at: None,
        };
        match &outcome.kind {
            OutcomeKind::Succeeded { return_json } => {
                let planned = Self { return_json: Some(return_json.as_str().into()), ..base };
                match json_problem(return_json) {
                    None => planned,
                    Some(problem) => planned.refused(&problem),
                }
            }
            OutcomeKind::Failed { error_json, retry_at } => {
                let planned = Self {
                    status: if retry_at.is_some() { Self::READY } else { Self::FAILED },
                    error_json: Some(error_json.as_str().into()),
                    finished_at: if retry_at.is_some() { None } else { Some(outcome.finished_at) },
                    retry_at: *retry_at,
                    ..base
                };
                match json_problem(error_json) {
                    None => planned,
                    Some(problem) => planned.refused(&problem),
                }
            }
        }
    }

    /// The write to make instead when this one cannot be stored (malformed JSON here, or a text the
    /// database refuses, such as `\u0000` in a PostgreSQL `jsonb`): a success becomes a final failure
    /// (running it again would not make its result storable); a failure keeps its status and retry time
    /// but records `reason` instead of its unstorable error. The replacement is always valid JSON.
    fn refused(self, reason: &str) -> Self {
        let (status, finished_at, what) = if self.status == Self::SUCCESSFUL {
            (Self::FAILED, self.finished_at, "return value")
        } else {
            (self.status, self.finished_at, "error report")
        };
        let error = serde_json::json!({
            "exception_class_path": "builtins.ValueError",
            "traceback": format!("fasttasks could not store the task's {what}: {reason}"),
        });
        Self { status, return_json: None, error_json: Some(error.to_string().into()), finished_at, ..self }
    }
}

/// Why `text` is not one JSON value, or `None` if it is. Validates without building the value and
/// without a nesting limit (`IgnoredAny` walks the text iteratively), so any JSON the databases accept
/// passes.
fn json_problem(text: &str) -> Option<String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).err().map(|error| format!("not valid JSON ({error})"))
}

/// Puts claimed rows in claim order (priority descending, then `available_at`, then `id`): the databases
/// return `UPDATE … RETURNING` rows in no particular order. `K` is `available_at` in a form that sorts
/// like the database sorts it.
fn sort_in_claim_order<K: Ord>(rows: &mut [(ClaimedJob, K)]) {
    rows.sort_by(|(a, a_at), (b, b_at)| {
        b.priority.cmp(&a.priority).then_with(|| a_at.cmp(b_at)).then_with(|| a.id.cmp(&b.id))
    });
}
