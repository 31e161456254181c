//! The job model: what the store hands to an executor, and what comes back.

use crate::time::Timestamp;

/// A row the store claimed for this worker: status RUNNING, `attempts` already counting this attempt,
/// this worker already appended to `worker_ids` (Django's contract: the id is added before the call).
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
    /// JSON text of the worker ids, one per attempt, this one last.
    pub worker_ids_json: String,
    /// The fencing token of this claim: the completion must present it.
    pub lease_token: i64,
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
