//! `fasttasks._core.Worker`: one worker process's Rust side, driven by `fasttasks.cli`.
//!
//! The Python main thread keeps control: it calls `start()`, then loops on `wait(timeout)` (detached
//! while waiting, so Python signal handlers run between waits and call `stop()` / `abort()`), logs
//! `drain_events()` and prints `stats()`.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use fasttasks_core::Store;
use fasttasks_core::config::{DatabaseConfig, QueueFilter, WorkerConfig};
use fasttasks_core::worker::{self, EventLevel, JobTicket, RunSummary, WorkerShared};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{ConfigurationError, to_py, to_py_ref};
use crate::executor::spawn_python_threads;
use crate::settings::database_config;

type RunResult = fasttasks_core::Result<RunSummary>;

/// Set once by the runtime thread when the run ends.
#[derive(Default)]
struct Finished {
    result: Mutex<Option<RunResult>>,
    signal: Condvar,
}

enum State {
    Ready,
    Running { finished: Arc<Finished>, python_threads: Vec<JoinHandle<()>> },
}

#[pyclass(frozen, module = "fasttasks._core")]
pub struct Worker {
    database: DatabaseConfig,
    config: WorkerConfig,
    runner: Py<PyAny>,
    shared: WorkerShared,
    state: Mutex<State>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[pymethods]
impl Worker {
    /// `database`: see `settings::database_config`. `runner`: an object with `execute(job, reply)` and
    /// `thread_exit()` (`fasttasks._runner.Runner`). `queues=None` means every queue.
    #[new]
    #[pyo3(signature = (database, runner, *, backend, worker_id, queues=None, concurrency=8, prefetch=1000, batch=false, max_tasks=None, poll_interval=1.0, listen=true, hostname=None, heartbeat_interval=2.0, dead_after=10.0, max_crashes=3, health_port=None, health_host=String::from("0.0.0.0")))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        database: &Bound<'_, PyDict>,
        runner: Py<PyAny>,
        backend: String,
        worker_id: String,
        queues: Option<Vec<String>>,
        concurrency: usize,
        prefetch: usize,
        batch: bool,
        max_tasks: Option<u64>,
        poll_interval: f64,
        listen: bool,
        hostname: Option<String>,
        heartbeat_interval: f64,
        dead_after: f64,
        max_crashes: i32,
        health_port: Option<u16>,
        health_host: String,
    ) -> PyResult<Self> {
        let database = database_config(database)?;
        let mut config = WorkerConfig::new(backend, worker_id);
        config.queues = match queues {
            None => QueueFilter::All,
            Some(names) if names.is_empty() => {
                return Err(ConfigurationError::new_err(
                    "queues must name at least one queue (or be None for all)",
                ));
            }
            Some(names) => QueueFilter::Only(names),
        };
        config.concurrency = concurrency;
        config.prefetch = prefetch;
        config.batch = batch;
        config.max_tasks = max_tasks;
        config.listen = listen;
        if !(poll_interval.is_finite() && poll_interval >= 0.0) {
            return Err(ConfigurationError::new_err("poll_interval must be a finite number of seconds >= 0"));
        }
        config.poll_interval = Duration::from_secs_f64(poll_interval);
        if let Some(hostname) = hostname {
            config.hostname = hostname;
        }
        for (name, seconds) in [("heartbeat_interval", heartbeat_interval), ("dead_after", dead_after)] {
            if !(seconds.is_finite() && seconds > 0.0) {
                return Err(ConfigurationError::new_err(format!(
                    "{name} must be a finite number of seconds > 0"
                )));
            }
        }
        config.heartbeat_interval = Duration::from_secs_f64(heartbeat_interval);
        config.dead_after = Duration::from_secs_f64(dead_after);
        config.max_crashes = max_crashes;
        config.health_port = health_port;
        config.health_host = health_host;
        config.validate().map_err(to_py)?;
        Ok(Self { database, config, runner, shared: worker::new_shared(), state: Mutex::new(State::Ready) })
    }

    /// Connects and starts claiming, on a runtime thread of its own and `concurrency` Python threads.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let mut state = lock(&self.state);
        if !matches!(*state, State::Ready) {
            return Err(PyRuntimeError::new_err("this worker was already started"));
        }
        let (sender, receiver) = crossbeam_channel::unbounded::<JobTicket>();
        let python_threads = spawn_python_threads(py, self.config.concurrency, &receiver, &self.runner)
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start task threads: {e}")))?;
        let finished = Arc::new(Finished::default());
        let (database, config, shared) = (self.database.clone(), self.config.clone(), self.shared.clone());
        let done = finished.clone();
        std::thread::Builder::new()
            .name("fasttasks-runtime".into())
            .spawn(move || {
                let result = run_to_completion(database, config, shared, (sender, receiver));
                *lock(&done.result) = Some(result);
                done.signal.notify_all();
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the runtime thread: {e}")))?;
        *state = State::Running { finished, python_threads };
        Ok(())
    }

    /// Waits up to `timeout` seconds (forever when None) for the run to end; True when it has.
    /// Detached while waiting, so other Python threads and signal handlers run.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let finished = match &*lock(&self.state) {
            State::Ready => return Err(PyRuntimeError::new_err("the worker was not started")),
            State::Running { finished, .. } => finished.clone(),
        };
        let ended = py.detach(|| {
            let guard = lock(&finished.result);
            let guard = match timeout {
                None => finished
                    .signal
                    .wait_while(guard, |result| result.is_none())
                    .unwrap_or_else(|poison| poison.into_inner()),
                Some(seconds) => {
                    let timeout = Duration::from_secs_f64(seconds.max(0.0));
                    finished
                        .signal
                        .wait_timeout_while(guard, timeout, |result| result.is_none())
                        .unwrap_or_else(|poison| poison.into_inner())
                        .0
                }
            };
            guard.is_some()
        });
        if ended {
            self.join_python_threads(py);
        }
        Ok(ended)
    }

    /// The run's summary once it ended; raises the error that ended it (e.g. the database was
    /// unreachable at start).
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let summary = match &*lock(&self.state) {
            State::Running { finished, .. } => match &*lock(&finished.result) {
                None => return Err(PyRuntimeError::new_err("the worker is still running")),
                Some(Err(error)) => return Err(to_py_ref(error)),
                Some(Ok(summary)) => *summary,
            },
            State::Ready => return Err(PyRuntimeError::new_err("the worker was not started")),
        };
        let dict = stats_dict(py, &summary.stats)?;
        dict.set_item("elapsed", summary.elapsed.as_secs_f64())?;
        dict.set_item("aborted", summary.aborted)?;
        Ok(dict)
    }

    /// Graceful stop: claim nothing more, hand back unstarted tasks, finish running ones, write results.
    fn stop(&self) {
        self.shared.control.stop();
    }

    /// Immediate stop: hand back unstarted tasks, write what is done, do not wait for running tasks.
    fn abort(&self) {
        self.shared.control.abort();
    }

    /// Counters so far: claimed, succeeded, failed, retried, released, stale, database_errors,
    /// pending_outcomes, in_flight; and last_heartbeat (Unix seconds of the last heartbeat the
    /// database accepted, None before registration) and leader (holds the maintenance lease).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, &self.shared.stats.snapshot())
    }

    /// Events since the last call, oldest first, as (level, message); level is one of
    /// "debug", "info", "warning", "error".
    fn drain_events(&self) -> Vec<(&'static str, String)> {
        self.shared
            .events
            .drain()
            .into_iter()
            .map(|event| {
                let level = match event.level {
                    EventLevel::Debug => "debug",
                    EventLevel::Info => "info",
                    EventLevel::Warning => "warning",
                    EventLevel::Error => "error",
                };
                (level, event.message)
            })
            .collect()
    }

    /// Ids of running tasks whose cancellation was asked for since the last call (the same id again
    /// each heartbeat round until the task ends).
    fn drain_cancel_requests(&self) -> Vec<String> {
        let mut requests = self.shared.cancel_requests.lock().unwrap_or_else(|poison| poison.into_inner());
        std::mem::take(&mut *requests)
    }

    /// The database, without its password, for banners.
    #[getter]
    fn database(&self) -> String {
        self.database.describe()
    }

    #[getter]
    fn worker_id(&self) -> String {
        self.config.worker_id.clone()
    }

    #[getter]
    fn concurrency(&self) -> usize {
        self.config.concurrency
    }
}

impl Worker {
    /// After a graceful end every task thread is about to exit (the ticket channel is closed and
    /// empty); join them so their Django connections are closed before the process ends. After an
    /// abort a thread may still be inside a task: leave it.
    fn join_python_threads(&self, py: Python<'_>) {
        let mut state = lock(&self.state);
        let State::Running { finished, python_threads } = &mut *state else {
            return;
        };
        let aborted = matches!(&*lock(&finished.result), Some(Ok(summary)) if summary.aborted);
        if aborted {
            return;
        }
        let threads = std::mem::take(python_threads);
        drop(state);
        py.detach(|| {
            for thread in threads {
                let _ = thread.join();
            }
        });
    }
}

fn run_to_completion(
    database: DatabaseConfig,
    config: WorkerConfig,
    shared: WorkerShared,
    tickets: (crossbeam_channel::Sender<JobTicket>, crossbeam_channel::Receiver<JobTicket>),
) -> RunResult {
    // One I/O thread is plenty for claiming and completing; the cores belong to the task threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fasttasks-io")
        .enable_all()
        .build()
        .map_err(|e| fasttasks_core::Error::Config(format!("cannot start the I/O runtime: {e}")))?;
    runtime.block_on(async move {
        let store = Store::connect(&database).await?;
        let result = worker::run(store.clone(), config, shared, tickets).await;
        store.close().await;
        result
    })
}

fn stats_dict<'py>(py: Python<'py>, stats: &worker::StatsSnapshot) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("claimed", stats.claimed)?;
    dict.set_item("succeeded", stats.succeeded)?;
    dict.set_item("failed", stats.failed)?;
    dict.set_item("retried", stats.retried)?;
    dict.set_item("released", stats.released)?;
    dict.set_item("stale", stats.stale)?;
    dict.set_item("database_errors", stats.database_errors)?;
    dict.set_item("pending_outcomes", stats.pending_outcomes)?;
    dict.set_item("in_flight", stats.in_flight)?;
    let last_heartbeat = stats.last_heartbeat.map(|at| at.timestamp_micros() as f64 / 1_000_000.0);
    dict.set_item("last_heartbeat", last_heartbeat)?;
    dict.set_item("leader", stats.leader)?;
    Ok(dict)
}
