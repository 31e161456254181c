//! The health server (`--health-port`) of a running worker, probed over real TCP on both databases.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Fixture;
use fasttasks_core::config::{QueueFilter, WorkerConfig};
use fasttasks_core::job::{NewJob, OutcomeKind};
use fasttasks_core::worker::{self, WorkerShared};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

on_both_databases! {
    health_checks_follow_the_worker_through_its_life,
    a_port_in_use_stops_the_worker_before_it_registers,
}

const WORKER_ID: &str = "health-test-worker";

fn config() -> WorkerConfig {
    let mut config = WorkerConfig::new("default", WORKER_ID);
    config.queues = QueueFilter::All;
    config.concurrency = 1;
    config.poll_interval = Duration::from_millis(20);
    config.heartbeat_interval = Duration::from_millis(100);
    config.dead_after = Duration::from_millis(600);
    config.health_host = "127.0.0.1".into();
    config.health_port = Some(0);
    config
}

struct Answer {
    status: u16,
    head: String,
    body: Value,
}

/// One request over a fresh connection, read to the server's close.
async fn request(port: u16, method: &str, path: &str) -> Answer {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the health port");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {response:?}"));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
    let body = if body.is_empty() { Value::Null } else { common::json(body.to_owned()) };
    Answer { status, head: head.to_owned(), body }
}

/// Evaluates `$check` (which may `.await`) until it is true, failing after `$seconds`.
macro_rules! eventually {
    ($what:expr, $seconds:expr, $check:expr) => {{
        let deadline = Instant::now() + Duration::from_secs($seconds);
        while !$check {
            assert!(Instant::now() < deadline, "timed out after {}s waiting for {}", $seconds, $what);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }};
}

/// The port the worker reported in its "health checks on http://…" event.
async fn health_port(shared: &WorkerShared) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for event in shared.events.drain() {
            if let Some(rest) = event.message.strip_prefix("health checks on http://127.0.0.1:") {
                return rest.split(' ').next().unwrap().parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no health-checks event");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens the executor's gate when the test ends, passed or not, so that its thread can finish.
struct OpenOnDrop(Arc<AtomicBool>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn health_checks_follow_the_worker_through_its_life(fx: Arc<Fixture>) {
    fx.store.insert(&[NewJob::simple("slow", "tests.slow")]).await.unwrap();
    let gate = Arc::new(AtomicBool::new(false));
    let _open_at_the_end = OpenOnDrop(gate.clone());
    let open = gate.clone();
    let (sender, receiver) = crossbeam_channel::unbounded();
    let threads = worker::spawn_rust_executor(1, receiver.clone(), move |_job| {
        while !open.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        OutcomeKind::Succeeded { return_json: "null".into() }
    });
    let shared = worker::new_shared();
    let (control, stats) = (shared.control.clone(), shared.stats.clone());
    let store = fx.store.clone();
    let worker_shared = shared.clone();
    let handle =
        tokio::spawn(async move { worker::run(store, config(), worker_shared, (sender, receiver)).await });
    let port = health_port(&shared).await;

    let live = request(port, "GET", "/live").await;
    assert_eq!(live.status, 200);
    assert!(live.head.contains("\r\nContent-Type: application/json"), "{}", live.head);
    assert_eq!(live.body["status"], "live");
    eventually!("ready, leader, the task running", 10, {
        let ready = request(port, "GET", "/ready").await;
        ready.status == 200 && ready.body["leader"] == true && ready.body["in_flight"] == 1
    });

    let health = request(port, "GET", "/health").await;
    assert_eq!(health.status, 200);
    let body = &health.body;
    assert_eq!((body["status"].as_str(), body["worker_id"].as_str()), (Some("ready"), Some(WORKER_ID)));
    assert_eq!((body["backend"].as_str(), body["stopping"].as_bool()), (Some("default"), Some(false)));
    assert_eq!((body["claimed"].as_u64(), body["succeeded"].as_u64()), (Some(1), Some(0)));
    let first = chrono::DateTime::parse_from_rfc3339(body["last_heartbeat"].as_str().unwrap()).unwrap();
    assert!(body["last_heartbeat"].as_str().unwrap().ends_with('Z'));
    let age = (chrono::Utc::now() - first.to_utc()).to_std().unwrap();
    assert!(age < Duration::from_secs(1), "last heartbeat {age:?} ago");
    assert!(body["seconds_since_heartbeat"].as_f64().unwrap() < 1.0, "{body}");
    // The same document at `/`; Worker stats carry the heartbeat too.
    assert_eq!(request(port, "GET", "/").await.body["worker_id"], WORKER_ID);
    assert!(stats.snapshot().last_heartbeat.is_some() && stats.snapshot().leader);
    // The heartbeat moves forward with the maintenance rounds.
    eventually!("a later heartbeat", 5, {
        let later = request(port, "GET", "/health").await;
        chrono::DateTime::parse_from_rfc3339(later.body["last_heartbeat"].as_str().unwrap()).unwrap() > first
    });

    let missing = request(port, "GET", "/nope?x=1").await;
    assert_eq!((missing.status, missing.head.contains("application/json")), (404, true));
    let post = request(port, "POST", "/ready").await;
    assert_eq!(post.status, 405);
    assert!(post.head.contains("\r\nAllow: GET, HEAD"), "{}", post.head);
    let head = request(port, "HEAD", "/ready").await;
    assert_eq!((head.status, head.body.is_null()), (200, true));
    assert!(head.head.contains("Content-Length: "), "{}", head.head);

    // Heartbeats that the database refuses: ready turns 503 ("stale") once the last accepted one is
    // older than dead_after, while /live still answers; it comes back when heartbeats do.
    fx.exec("ALTER TABLE fasttasks_worker RENAME TO fasttasks_worker_away").await;
    eventually!("stale", 10, {
        let ready = request(port, "GET", "/ready").await;
        ready.status == 503 && ready.body["status"] == "stale"
    });
    assert_eq!(request(port, "GET", "/live").await.status, 200);
    assert!(stats.snapshot().database_errors > 0);
    fx.exec("ALTER TABLE fasttasks_worker_away RENAME TO fasttasks_worker").await;
    eventually!("ready again", 10, { request(port, "GET", "/ready").await.status == 200 });

    // Stopping: not ready (the orchestrator sends no more traffic), still live (it must not kill the
    // worker while its task finishes).
    control.stop();
    let stopping = request(port, "GET", "/ready").await;
    assert_eq!((stopping.status, stopping.body["status"].as_str()), (503, Some("stopping")));
    assert_eq!(stopping.body["stopping"], true);
    assert_eq!(request(port, "GET", "/live").await.status, 200);
    gate.store(true, Ordering::SeqCst);
    let summary = handle.await.unwrap().unwrap();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(summary.stats.succeeded, 1);
    // The port closes with the worker.
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err(), "the health port is still open");
}

async fn a_port_in_use_stops_the_worker_before_it_registers(fx: Arc<Fixture>) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut config = config();
    config.health_port = Some(port);
    let (sender, receiver) = crossbeam_channel::unbounded();
    let error = worker::run(fx.store.clone(), config, worker::new_shared(), (sender, receiver))
        .await
        .expect_err("a port in use is a startup error");
    let message = error.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(
        matches!(error, fasttasks_core::Error::HealthServer { ref source, .. }
        if source.kind() == std::io::ErrorKind::AddrInUse),
        "{message}"
    );
    // Nothing was registered (or claimed).
    assert!(!fx.store.heartbeat(WORKER_ID, fasttasks_core::time::now()).await.unwrap());
    drop(taken);
}
