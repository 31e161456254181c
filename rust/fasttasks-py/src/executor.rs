//! Dedicated Python threads that run tasks. Each thread attaches to the interpreter once and detaches
//! only while it waits for the next ticket (granian's blocking-pool pattern): attaching per task would
//! cost far more than a no-op task. A thread that finds a ticket waiting takes it without detaching at
//! all. No Python ever runs on a tokio thread.

use std::sync::Mutex;
use std::thread::JoinHandle;

use chrono::{DateTime, Utc};
use fasttasks_core::job::{ClaimedJob, OutcomeKind};
use fasttasks_core::worker::{self, JobTicket};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// One claimed attempt, as the Python runner sees it. Read-only.
#[pyclass(frozen, get_all, module = "fasttasks._core")]
pub struct Job {
    pub id: String,
    pub task_path: String,
    pub queue_name: String,
    pub backend_name: String,
    pub priority: i32,
    pub args_json: String,
    pub kwargs_json: String,
    pub run_after: Option<DateTime<Utc>>,
    pub enqueued_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub last_attempted_at: DateTime<Utc>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub crashes: i32,
    pub worker_ids_json: String,
}

impl From<ClaimedJob> for Job {
    fn from(job: ClaimedJob) -> Self {
        Self {
            id: job.id,
            task_path: job.task_path,
            queue_name: job.queue_name,
            backend_name: job.backend_name,
            priority: job.priority,
            args_json: job.args_json,
            kwargs_json: job.kwargs_json,
            run_after: job.run_after,
            enqueued_at: job.enqueued_at,
            started_at: job.started_at,
            last_attempted_at: job.last_attempted_at,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            crashes: job.crashes,
            worker_ids_json: job.worker_ids_json,
        }
    }
}

#[pymethods]
impl Job {
    fn __repr__(&self) -> String {
        format!("<Job {} {} attempt={}>", self.id, self.task_path, self.attempt)
    }
}

/// Reports how one attempt ended. Callable from any Python thread (the event loop thread reports
/// coroutine tasks); exactly one report per attempt.
#[pyclass(frozen, module = "fasttasks._core")]
pub struct Reply {
    inner: Mutex<Option<worker::Reply>>,
}

impl Reply {
    fn new(reply: worker::Reply) -> Self {
        Self { inner: Mutex::new(Some(reply)) }
    }

    fn send(&self, kind: OutcomeKind) -> PyResult<()> {
        let reply = self.inner.lock().unwrap_or_else(|poison| poison.into_inner()).take();
        match reply {
            Some(reply) => {
                reply.send(kind);
                Ok(())
            }
            None => Err(PyRuntimeError::new_err("this attempt's outcome was already reported")),
        }
    }
}

#[pymethods]
impl Reply {
    /// The task returned; `return_json` is its JSON-encoded return value.
    fn succeed(&self, return_json: String) -> PyResult<()> {
        self.send(OutcomeKind::Succeeded { return_json })
    }

    /// The task raised; `error_json` is one JSON object for the row's `errors` list. With `retry_at`
    /// the task runs again at that time; without, it ends FAILED.
    #[pyo3(signature = (error_json, retry_at=None))]
    fn fail(&self, error_json: String, retry_at: Option<DateTime<Utc>>) -> PyResult<()> {
        self.send(OutcomeKind::Failed { error_json, retry_at })
    }

    /// Whether the outcome has been reported.
    #[getter]
    fn done(&self) -> bool {
        self.inner.lock().unwrap_or_else(|poison| poison.into_inner()).is_none()
    }
}

/// Starts `count` Python threads that hand every ticket to `runner.execute(job, reply)` and call
/// `runner.thread_exit()` when the channel closes (so Django can close that thread's connections).
pub fn spawn_python_threads(
    py: Python<'_>,
    count: usize,
    tickets: &crossbeam_channel::Receiver<JobTicket>,
    runner: &Py<PyAny>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..count)
        .map(|index| {
            let tickets = tickets.clone();
            let runner = runner.clone_ref(py);
            std::thread::Builder::new()
                .name(format!("fasttasks-task-{index}"))
                .spawn(move || Python::attach(|py| run_tickets(py, &runner, &tickets)))
        })
        .collect()
}

fn run_tickets(py: Python<'_>, runner: &Py<PyAny>, tickets: &crossbeam_channel::Receiver<JobTicket>) {
    let runner = runner.bind(py);
    let execute = match runner.getattr("execute") {
        Ok(execute) => execute,
        Err(error) => {
            error.print(py);
            return; // the tickets stay in the channel and are handed back at shutdown
        }
    };
    loop {
        // Take a waiting ticket without letting go of the interpreter; detach only to wait. Under
        // load this thread runs ticket after ticket while the others sleep, instead of handing the
        // GIL back and forth on every task.
        let JobTicket { job, reply } = match tickets.try_recv() {
            Ok(ticket) => ticket,
            Err(crossbeam_channel::TryRecvError::Empty) => match py.detach(|| tickets.recv()) {
                Ok(ticket) => ticket,
                Err(_) => break,
            },
            Err(crossbeam_channel::TryRecvError::Disconnected) => break,
        };
        let reply = match Py::new(py, Reply::new(reply)) {
            Ok(reply) => reply,
            Err(error) => {
                error.print(py);
                continue; // the dropped Reply reports the attempt as failed
            }
        };
        let called = Py::new(py, Job::from(job)).and_then(|job| execute.call1((job, reply.clone_ref(py))));
        if let Err(error) = called {
            // The runner itself broke (it reports task exceptions as data, so this is a bug in
            // fasttasks or an interpreter-level failure): the attempt fails with that error.
            let failure = runner_failure(py, &error);
            let _ = reply.get().send(OutcomeKind::Failed { error_json: failure, retry_at: None });
        }
    }
    if let Err(error) = runner.call_method0("thread_exit") {
        error.print(py);
    }
}

fn runner_failure(py: Python<'_>, error: &PyErr) -> String {
    let class_path = error
        .get_type(py)
        .fully_qualified_name()
        .map(|name| name.to_string())
        .unwrap_or_else(|_| "builtins.Exception".to_owned());
    let traceback = error.traceback(py).and_then(|tb| tb.format().ok()).unwrap_or_default();
    serde_json::json!({
        "exception_class_path": class_path,
        "traceback": format!("{traceback}{class_path}: {error}\n"),
    })
    .to_string()
}
