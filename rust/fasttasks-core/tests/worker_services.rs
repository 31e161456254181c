//! The worker services (producer, completer, stop/abort) on both databases, with the Rust executor
//! standing in for Python threads.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Fixture;
use fasttasks_core::config::{QueueFilter, WorkerConfig};
use fasttasks_core::job::{NewJob, OutcomeKind};
use fasttasks_core::worker::{self, JobTicket, Phase, RunSummary, WorkerShared};

on_both_databases! {
    batch_mode_runs_every_job_exactly_once,
    failures_and_retries_are_written,
    stop_finishes_running_jobs_and_hands_back_unstarted_ones,
    abort_does_not_wait_for_running_jobs,
    max_tasks_limits_claims,
    a_dropped_reply_fails_the_attempt_instead_of_leaving_it_running,
    claim_ahead_follows_the_executor_pace,
}

type Tickets = (crossbeam_channel::Sender<JobTicket>, crossbeam_channel::Receiver<JobTicket>);

async fn insert_jobs(fx: &Fixture, count: usize) {
    let jobs: Vec<NewJob> = (0..count).map(|i| NewJob::simple(format!("job-{i:05}"), "tests.noop")).collect();
    fx.store.insert(&jobs).await.unwrap();
}

fn config(concurrency: usize) -> WorkerConfig {
    let mut config = WorkerConfig::new("default", "rust-test-worker");
    config.queues = QueueFilter::All;
    config.concurrency = concurrency;
    config.poll_interval = Duration::from_millis(20);
    config
}

async fn run(fx: &Fixture, config: WorkerConfig, shared: WorkerShared, tickets: Tickets) -> RunSummary {
    worker::run(fx.store.clone(), config, shared, tickets).await.unwrap()
}

async fn batch_mode_runs_every_job_exactly_once(fx: Arc<Fixture>) {
    insert_jobs(&fx, 3_000).await;
    let executed = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let (sender, receiver) = crossbeam_channel::unbounded();
    let seen = executed.clone();
    let threads = worker::spawn_rust_executor(4, receiver.clone(), move |job| {
        *seen.lock().unwrap().entry(job.id.clone()).or_default() += 1;
        OutcomeKind::Succeeded { return_json: "null".into() }
    });
    let mut config = config(16);
    config.batch = true;
    let summary = run(&fx, config, worker::new_shared(), (sender, receiver)).await;
    threads.into_iter().for_each(|t| t.join().unwrap());
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
    assert_eq!(fx.count("SUCCESSFUL").await, 3_000);
}

async fn failures_and_retries_are_written(fx: Arc<Fixture>) {
    insert_jobs(&fx, 10).await;
    let (sender, receiver) = crossbeam_channel::unbounded();
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
    let summary = run(&fx, config, worker::new_shared(), (sender, receiver)).await;
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!((summary.stats.succeeded, summary.stats.failed), (5, 5));
    assert_eq!((fx.count("SUCCESSFUL").await, fx.count("FAILED").await), (5, 5));
}

async fn stop_finishes_running_jobs_and_hands_back_unstarted_ones(fx: Arc<Fixture>) {
    insert_jobs(&fx, 20).await;
    let (sender, receiver) = crossbeam_channel::unbounded();
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
    let store = fx.store.clone();
    let handle =
        tokio::spawn(async move { worker::run(store, config(8), shared, (sender, receiver)).await.unwrap() });
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
    assert_eq!(fx.count("RUNNING").await, 0);
    assert_eq!(fx.count("READY").await as u64, 20 - summary.stats.succeeded);
}

async fn abort_does_not_wait_for_running_jobs(fx: Arc<Fixture>) {
    insert_jobs(&fx, 3).await;
    let (sender, receiver) = crossbeam_channel::unbounded();
    let release = Arc::new(AtomicUsize::new(0));
    let gate = release.clone();
    let threads = worker::spawn_rust_executor(1, receiver.clone(), move |_job| {
        while gate.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        OutcomeKind::Succeeded { return_json: "null".into() }
    });
    let shared = worker::new_shared();
    let (control, stats) = (shared.control.clone(), shared.stats.clone());
    let store = fx.store.clone();
    let handle =
        tokio::spawn(async move { worker::run(store, config(3), shared, (sender, receiver)).await.unwrap() });
    while stats.snapshot().claimed < 3 {
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
    assert_eq!(fx.count("READY").await, 2);
}

async fn max_tasks_limits_claims(fx: Arc<Fixture>) {
    insert_jobs(&fx, 50).await;
    let (sender, receiver) = crossbeam_channel::unbounded();
    let threads = worker::spawn_rust_executor(2, receiver.clone(), |_job| OutcomeKind::Succeeded {
        return_json: "null".into(),
    });
    let mut config = config(8);
    config.max_tasks = Some(13);
    let summary = run(&fx, config, worker::new_shared(), (sender, receiver)).await;
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(summary.stats.claimed, 13);
    assert_eq!(summary.stats.succeeded, 13);
    assert_eq!(fx.count("READY").await, 37);
}

async fn a_dropped_reply_fails_the_attempt_instead_of_leaving_it_running(fx: Arc<Fixture>) {
    insert_jobs(&fx, 1).await;
    let (sender, receiver) = crossbeam_channel::unbounded();
    let executor_receiver = receiver.clone();
    // An executor that loses the ticket (as a crashed thread would).
    let thread = std::thread::spawn(move || {
        let ticket = executor_receiver.recv().unwrap();
        drop(ticket);
    });
    let mut config = config(1);
    config.batch = true;
    let summary = run(&fx, config, worker::new_shared(), (sender, receiver)).await;
    thread.join().unwrap();
    assert_eq!(summary.stats.failed, 1);
    assert_eq!(fx.count("FAILED").await, 1);
}

/// Drains `jobs` jobs in batch mode with one executor thread running `task_time` per job; returns the
/// most tickets ever in flight (running plus claimed ahead) as the executor saw it.
async fn most_in_flight(
    fx: &Fixture,
    jobs: usize,
    task_time: Duration,
    concurrency: usize,
    prefetch: usize,
) -> u64 {
    insert_jobs(fx, jobs).await;
    let shared = worker::new_shared();
    let stats = shared.stats.clone();
    let most = Arc::new(AtomicUsize::new(0));
    let seen = most.clone();
    let (sender, receiver) = crossbeam_channel::unbounded();
    let threads = worker::spawn_rust_executor(1, receiver.clone(), move |_job| {
        seen.fetch_max(stats.in_flight.load(Ordering::SeqCst) as usize, Ordering::SeqCst);
        std::thread::sleep(task_time);
        OutcomeKind::Succeeded { return_json: "null".into() }
    });
    let mut config = config(concurrency);
    config.batch = true;
    config.prefetch = prefetch;
    let summary = run(fx, config, shared, (sender, receiver)).await;
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(summary.stats.succeeded, jobs as u64);
    most.load(Ordering::SeqCst) as u64
}

async fn claim_ahead_follows_the_executor_pace(fx: Arc<Fixture>) {
    // Fast tasks: claims run ahead of the two slots, but never past the prefetch bound.
    let fast = most_in_flight(&fx, 4_000, Duration::ZERO, 2, 100).await;
    assert!(fast > 2 && fast <= 2 + 100, "fast tasks: {fast} in flight");
    fx.exec("DELETE FROM fasttasks_task").await;
    // Prefetch 0: only free slots are claimed.
    let strict = most_in_flight(&fx, 500, Duration::ZERO, 2, 0).await;
    assert!(strict <= 2, "prefetch 0: {strict} in flight");
    fx.exec("DELETE FROM fasttasks_task").await;
    // Slow tasks (about 50 per second): almost nothing is claimed ahead, although 1,000 would be allowed.
    let slow = most_in_flight(&fx, 12, Duration::from_millis(20), 2, 1_000).await;
    assert!(slow <= 2 + 3, "slow tasks: {slow} in flight");
}
