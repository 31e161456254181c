//! The job model: what the store hands to an executor, and what comes back.

use chrono::Datelike;

use crate::time::Timestamp;

/// A row the store claimed for this worker: status RUNNING, `attempts` already counting this attempt,
/// this worker already appended to `worker_ids` (Django's contract: the id is added before the call).
///
/// Its timestamps are always within [`in_job_range`]. A stored one that is not (PostgreSQL's
/// `infinity`, a year past 9999 written by hand, SQLite text that does not parse) is informational
/// only, so the job still runs: `run_after` becomes `None`, the others the claim time. A row that
/// cannot be read at all (SQLite: a BLOB or bytes that are not UTF-8 where text belongs, a priority
/// that is not an integer) is never handed out: the store ends it FAILED at once, under the claim's
/// lease, with [`corrupt_row_error`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub id: String,
    pub task_path: String,
    pub queue_name: String,
    pub backend_name: String,
    pub priority: i32,
    /// JSON text of the positional arguments (a list).
    pub args_json: String,
    /// JSON text of the keyword arguments (an object).
    pub kwargs_json: String,
    /// What the user asked for with `run_after`; `None` when not deferred.
    pub run_after: Option<Timestamp>,
    pub enqueued_at: Timestamp,
    /// The start of the first attempt.
    pub started_at: Timestamp,
    /// The start of this attempt.
    pub last_attempted_at: Timestamp,
    /// This attempt's number, counting from 1.
    pub attempt: i32,
    pub max_attempts: i32,
    /// Attempts that ended with their worker dead (rescued): they count against `--max-crashes`, not
    /// against `max_attempts`.
    pub crashes: i32,
    /// JSON text of the worker ids, one per attempt, this one last.
    pub worker_ids_json: String,
    /// The fencing token of this claim: the completion must present it.
    pub lease_token: i64,
}

/// Whether a claimed job may carry this timestamp: the years Python's `datetime` holds (1 to 9999),
/// since the runner turns each into one.
pub fn in_job_range(timestamp: &Timestamp) -> bool {
    (1..=9999).contains(&timestamp.year())
}

/// The exception class recorded for a claimed row that cannot be read (Django's
/// `TaskError.exception_class` imports it, so it must exist); the Python runner records a row whose
/// arguments are not a JSON array and object the same way.
pub const CORRUPT_ROW_CLASS: &str = "builtins.ValueError";

/// The `errors` entry (JSON text) of a claimed row the store cannot turn into a job: `reason` says
/// which column holds what; `id` is the row's id as far as it could be read.
pub fn corrupt_row_error(
    id: &str,
    reason: &str,
    attempt: Option<i64>,
    worker_id: &str,
    failed_at: Timestamp,
) -> String {
    serde_json::json!({
        "exception_class_path": CORRUPT_ROW_CLASS,
        "traceback": format!("ValueError: corrupt task row {id:?}: {reason}\n"),
        "attempt": attempt,
        "worker_id": worker_id,
        "failed_at": failed_at.to_rfc3339(),
    })
    .to_string()
}

/// A job to insert. Production inserts come from Django (`FastTasksBackend.enqueue`); this is for the
/// Rust tests and benchmarks, and writes exactly the same columns.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub task_path: String,
    pub queue_name: String,
    pub backend_name: String,
    pub priority: i32,
    pub args_json: String,
    pub kwargs_json: String,
    pub run_after: Option<Timestamp>,
    pub enqueued_at: Timestamp,
    pub max_attempts: i32,
}

impl NewJob {
    /// A due job with no arguments on the "default" queue of the "default" backend.
    pub fn simple(id: impl Into<String>, task_path: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            task_path: task_path.into(),
            queue_name: "default".into(),
            backend_name: "default".into(),
            priority: 0,
            args_json: "[]".into(),
            kwargs_json: "{}".into(),
            run_after: None,
            enqueued_at: crate::time::now(),
            max_attempts: 1,
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum OutcomeKind {
    /// The task returned; `return_json` is the JSON text of its (normalized) return value.
    Succeeded { return_json: String },
    /// The task raised. `error_json` is one JSON object appended to the row's `errors`
    /// (`{"exception_class_path", "traceback", ...}`). With `retry_at` the row goes back to READY,
    /// available at that time; without, it ends FAILED.
    Failed { error_json: String, retry_at: Option<Timestamp> },
}

/// The result of one attempt, to be written by the completer.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub id: String,
    pub lease_token: i64,
    pub finished_at: Timestamp,
    pub kind: OutcomeKind,
}

impl Outcome {
    pub fn for_job(job: &ClaimedJob, kind: OutcomeKind) -> Self {
        Self { id: job.id.clone(), lease_token: job.lease_token, finished_at: crate::time::now(), kind }
    }
}
