//! The worker services (producer, completer, stop/abort) against a real SQLite file, with the Rust
//! executor standing in for Python threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fasttasks_core::Store;
use fasttasks_core::config::{DatabaseConfig, QueueFilter, WorkerConfig};
use fasttasks_core::job::{NewJob, OutcomeKind};
use fasttasks_core::worker::{self, JobTicket, Phase, RunSummary, WorkerShared};
use sqlx::Row;

struct Fixture {
    _dir: tempdir::TempDir,
    path: std::path::PathBuf,
    store: Store,
}

mod tempdir {
    /// A directory removed on drop (no extra crate needed).
    pub struct TempDir(pub std::path::PathBuf);
    impl TempDir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!(
                "fasttasks-worker-test-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn fixture(jobs: usize) -> Fixture {
    let dir = tempdir::TempDir::new();
    let path = dir.0.join("queue.sqlite3");
    let store =
        Store::connect(&DatabaseConfig::Sqlite { path: path.clone(), busy_timeout: Duration::from_secs(5) })
            .await
            .unwrap();
    store.install_schema().await.unwrap();
    let new_jobs: Vec<NewJob> =
        (0..jobs).map(|i| NewJob::simple(format!("job-{i:05}"), "tests.noop")).collect();
    store.insert(&new_jobs).await.unwrap();
    Fixture { _dir: dir, path, store }
}

async fn statuses(path: &std::path::Path) -> HashMap<String, i64> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM fasttasks_task GROUP BY status")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.iter().map(|row| (row.get::<String, _>("status"), row.get::<i64, _>("n"))).collect()
}

fn config(concurrency: usize) -> WorkerConfig {
    let mut config = WorkerConfig::new("default", "rust-test-worker");
    config.queues = QueueFilter::All;
    config.concurrency = concurrency;
    config.poll_interval = Duration::from_millis(20);
    config
}

fn channel() -> (crossbeam_channel::Sender<JobTicket>, crossbeam_channel::Receiver<JobTicket>) {
    crossbeam_channel::unbounded()
}

async fn run(
    fixture: &Fixture,
    config: WorkerConfig,
    shared: WorkerShared,
    tickets: (crossbeam_channel::Sender<JobTicket>, crossbeam_channel::Receiver<JobTicket>),
) -> RunSummary {
    worker::run(fixture.store.clone(), config, shared, tickets).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_runs_every_job_exactly_once() {
    let fixture = fixture(3_000).await;
    let executed = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let (sender, receiver) = channel();
    let seen = executed.clone();
    let threads = worker::spawn_rust_executor(4, receiver.clone(), move |job| {
        *seen.lock().unwrap().entry(job.id.clone()).or_default() += 1;
        OutcomeKind::Succeeded { return_json: "null".into() }
    });
    let mut config = config(16);
    config.batch = true;
    let summary = run(&fixture, config, worker::new_shared(), (sender, receiver)).await;
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(!summary.aborted);
    assert_eq!(summary.stats.claimed, 3_000);
    assert_eq!(summary.stats.succeeded, 3_000);
    assert_eq!(summary.stats.in_flight, 0);
    assert_eq!(summary.stats.pending_outcomes, 0);
    {
        let executed = executed.lock().unwrap();
        assert_eq!(executed.len(), 3_000);
        assert!(executed.values().all(|count| *count == 1));
    }
    assert_eq!(statuses(&fixture.path).await, HashMap::from([("SUCCESSFUL".to_owned(), 3_000)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_retries_are_written() {
    let fixture = fixture(10).await;
    let (sender, receiver) = channel();
    let threads = worker::spawn_rust_executor(2, receiver.clone(), |job| {
        let number: usize = job.id.trim_start_matches("job-").parse().unwrap();
        if number.is_multiple_of(2) {
            OutcomeKind::Succeeded { return_json: format!("{number}") }
        } else {
            OutcomeKind::Failed {
                error_json: r#"{"exception_class_path":"builtins.ValueError","traceback":"ValueError\n"}"#
                    .into(),
                retry_at: None,
            }
        }
    });
    let mut config = config(4);
    config.batch = true;
    let summary = run(&fixture, config, worker::new_shared(), (sender, receiver)).await;
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!((summary.stats.succeeded, summary.stats.failed), (5, 5));
    assert_eq!(
        statuses(&fixture.path).await,
        HashMap::from([("SUCCESSFUL".to_owned(), 5), ("FAILED".to_owned(), 5)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_finishes_running_jobs_and_hands_back_unstarted_ones() {
    let fixture = fixture(20).await;
    let (sender, receiver) = channel();
    let started = Arc::new(AtomicUsize::new(0));
    let counter = started.clone();
    // One executor thread but eight slots: seven claimed tickets wait in the channel, unstarted.
    let threads = worker::spawn_rust_executor(1, receiver.clone(), move |_job| {
        counter.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        OutcomeKind::Succeeded { return_json: "null".into() }
    });
    let shared = worker::new_shared();
    let control = shared.control.clone();
    let run_shared = shared.clone();
    let handle = {
        let store = fixture.store.clone();
        tokio::spawn(
            async move { worker::run(store, config(8), run_shared, (sender, receiver)).await.unwrap() },
        )
    };
    while started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    control.stop();
    assert_eq!(control.phase(), Phase::Draining);
    let summary = handle.await.unwrap();
    threads.into_iter().for_each(|t| t.join().unwrap());

    assert_eq!(summary.stats.claimed, 8);
    assert_eq!(summary.stats.succeeded, started.load(Ordering::SeqCst) as u64);
    assert_eq!(summary.stats.released + summary.stats.succeeded, 8);
    assert!(summary.stats.released >= 1, "{summary:?}");
    let counts = statuses(&fixture.path).await;
    assert_eq!(counts.get("RUNNING"), None);
    assert_eq!(counts["READY"] as u64, 20 - summary.stats.succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_does_not_wait_for_running_jobs() {
    let fixture = fixture(3).await;
    let (sender, receiver) = channel();
    let release = Arc::new(AtomicUsize::new(0));
    let gate = release.clone();
    let threads = worker::spawn_rust_executor(1, receiver.clone(), move |_job| {
        while gate.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        OutcomeKind::Succeeded { return_json: "null".into() }
    });
    let shared = worker::new_shared();
    let control = shared.control.clone();
    let run_shared = shared.clone();
    let store = fixture.store.clone();
    let handle =
        tokio::spawn(
            async move { worker::run(store, config(3), run_shared, (sender, receiver)).await.unwrap() },
        );
    while shared.stats.snapshot().claimed < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let began = Instant::now();
    control.abort();
    let summary = tokio::time::timeout(Duration::from_secs(10), handle).await.unwrap().unwrap();
    assert!(summary.aborted);
    assert!(began.elapsed() < Duration::from_secs(5));
    // The two tickets nobody started went back to READY; the blocked one is still RUNNING.
    assert_eq!(summary.stats.released, 2);
    release.store(1, Ordering::SeqCst);
    threads.into_iter().for_each(|t| t.join().unwrap());
    let counts = statuses(&fixture.path).await;
    assert_eq!(counts["READY"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tasks_limits_claims() {
    let fixture = fixture(50).await;
    let (sender, receiver) = channel();
    let threads = worker::spawn_rust_executor(2, receiver.clone(), |_job| OutcomeKind::Succeeded {
        return_json: "null".into(),
    });
    let mut config = config(8);
    config.max_tasks = Some(13);
    let summary = run(&fixture, config, worker::new_shared(), (sender, receiver)).await;
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(summary.stats.claimed, 13);
    assert_eq!(summary.stats.succeeded, 13);
    assert_eq!(statuses(&fixture.path).await["READY"], 37);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_reply_fails_the_attempt_instead_of_leaving_it_running() {
    let fixture = fixture(1).await;
    let (sender, receiver) = channel();
    let executor_receiver = receiver.clone();
    // An executor that loses the ticket (as a crashed thread would).
    let thread = std::thread::spawn(move || {
        let ticket = executor_receiver.recv().unwrap();
        drop(ticket);
    });
    let mut config = config(1);
    config.batch = true;
    let summary = run(&fixture, config, worker::new_shared(), (sender, receiver)).await;
    thread.join().unwrap();
    assert_eq!(summary.stats.failed, 1);
    assert_eq!(statuses(&fixture.path).await, HashMap::from([("FAILED".to_owned(), 1)]));
}
