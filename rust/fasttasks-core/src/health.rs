//! Health checks over HTTP for container orchestrators (`--health-port`), served from the worker's
//! tokio runtime: the runtime that sends the heartbeats is the one that answers.
//!
//! - `GET /live`: 200 whenever the runtime answers at all (the answer is the proof). It does not turn
//!   503 while the worker stops, so an orchestrator does not kill a worker that is finishing its tasks.
//! - `GET /ready`: 200 while the worker is registered, its last heartbeat the database accepted is
//!   younger than `dead_after`, and it is not stopping; 503 otherwise (`status` says which).
//! - `GET /` or `/health`: always 200, the same document as `/ready`: status, worker id, backend, the
//!   last heartbeat (RFC 3339, UTC) and its age, counters, stopping, leader.
//!
//! Every body is JSON. Other paths: 404; other methods: 405 (`HEAD` is answered like `GET`, without
//! the body). This is a minimal HTTP/1.1 responder, not a web server: one request per connection,
//! read up to the end of its headers, answered, closed.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::WorkerConfig;
use crate::worker::{Phase, WorkerShared};

/// A request's line and headers larger than this are refused.
const MAX_REQUEST: usize = 8 * 1024;
/// A client gets this long to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections answered at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// The running health server. Stopped by [`HealthServer::stop`] or, on any other way out, when dropped.
#[derive(Debug)]
pub struct HealthServer {
    address: SocketAddr,
    /// Always Some until `stop` takes it.
    task: Option<JoinHandle<()>>,
}

impl HealthServer {
    /// Binds `config.health_host:config.health_port` (port 0: any free port) and serves until stopped.
    /// A port in use is an error, not a warning: an orchestrator would otherwise probe another process.
    pub async fn start(config: &WorkerConfig, shared: WorkerShared) -> crate::Result<Self> {
        let port = config.health_port.unwrap_or(0);
        let host = config.health_host.trim();
        let shown = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let listener = TcpListener::bind((host, port))
            .await
            .map_err(|source| crate::Error::HealthServer { address: shown.clone(), source })?;
        let address =
            listener.local_addr().map_err(|source| crate::Error::HealthServer { address: shown, source })?;
        let view = View {
            worker_id: config.worker_id.clone(),
            backend: config.backend_name.clone(),
            dead_after: config.dead_after,
            shared,
        };
        let task = tokio::spawn(serve(listener, view));
        Ok(Self { address, task: Some(task) })
    }

    /// Where the server listens (with the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Closes the port and every open connection; returns once they are closed.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What the answers are made of.
struct View {
    worker_id: String,
    backend: String,
    dead_after: Duration,
    shared: WorkerShared,
}

async fn serve(listener: TcpListener, view: View) {
    let view = std::sync::Arc::new(view);
    // Owned here, so that stopping the server (aborting this task) aborts every open connection too.
    let mut connections = JoinSet::new();
    loop {
        while connections.len() >= MAX_CONNECTIONS {
            connections.join_next().await;
        }
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors and the like: try again shortly rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let view = view.clone();
                connections.spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &view)).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn answer(mut stream: TcpStream, view: &View) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    // Read the whole head: closing with unread bytes would reset the connection under the answer.
    while !head_complete(&request) && request.len() <= MAX_REQUEST {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..read]);
    }
    let response = respond(&request, view);
    stream.write_all(&response).await?;
    stream.shutdown().await
}

fn head_complete(request: &[u8]) -> bool {
    request.windows(4).any(|w| w == b"\r\n\r\n") || request.windows(2).any(|w| w == b"\n\n")
}

/// The whole HTTP response to one request.
fn respond(request: &[u8], view: &View) -> Vec<u8> {
    let (status, body, head_only) = match parse_request_line(request) {
        Err(status) => (status, error_body(status), false),
        Ok((method, path)) => {
            let head_only = method == "HEAD";
            if method != "GET" && !head_only {
                (405, error_body(405), false)
            } else {
                let (status, body) = route(path, view);
                (status, body, head_only)
            }
        }
    };
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    let mut response = response.into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

/// The method and the path (without its query) of a request, or the status to refuse it with.
fn parse_request_line(request: &[u8]) -> Result<(&str, &str), u16> {
    if request.len() > MAX_REQUEST && !head_complete(&request[..MAX_REQUEST]) {
        return Err(431);
    }
    let end = request.iter().position(|&byte| byte == b'\n').ok_or(400u16)?;
    let line = std::str::from_utf8(&request[..end]).map_err(|_| 400u16)?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(400);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok((method, path))
}

fn error_body(status: u16) -> String {
    json!({"error": reason(status)}).to_string()
}

/// The status and the JSON body for a GET of `path`.
fn route(path: &str, view: &View) -> (u16, String) {
    let encode = |document: &Document<'_>| serde_json::to_string(document).expect("plain data encodes");
    match path {
        "/live" => (200, json!({"status": "live", "worker_id": view.worker_id}).to_string()),
        "/ready" => {
            let document = document(view);
            (if document.status == "ready" { 200 } else { 503 }, encode(&document))
        }
        "/" | "/health" => (200, encode(&document(view))),
        _ => (404, json!({"error": reason(404), "paths": ["/live", "/ready", "/health"]}).to_string()),
    }
}

/// The answer of `/ready` and `/health`, fields in this order.
#[derive(Debug, Serialize)]
struct Document<'a> {
    /// "ready"; "starting" (not registered yet); "stale" (no heartbeat accepted for `dead_after`);
    /// "stopping" (after the first SIGTERM/SIGINT).
    status: &'static str,
    worker_id: &'a str,
    backend: &'a str,
    /// RFC 3339, UTC, microseconds.
    last_heartbeat: Option<String>,
    seconds_since_heartbeat: Option<f64>,
    dead_after: f64,
    stopping: bool,
    leader: bool,
    in_flight: u64,
    claimed: u64,
    succeeded: u64,
    failed: u64,
    retried: u64,
    database_errors: u64,
}

fn document(view: &View) -> Document<'_> {
    let stats = view.shared.stats.snapshot();
    let heartbeat = view.shared.stats.heartbeat();
    let age = heartbeat.map(|mark| mark.taken.elapsed());
    let stopping = view.shared.control.phase() != Phase::Running;
    let status = match age {
        _ if stopping => "stopping",
        None => "starting",
        Some(age) if age >= view.dead_after => "stale",
        Some(_) => "ready",
    };
    Document {
        status,
        worker_id: &view.worker_id,
        backend: &view.backend,
        last_heartbeat: heartbeat.map(|mark| mark.at.to_rfc3339_opts(SecondsFormat::Micros, true)),
        seconds_since_heartbeat: age.map(|age| (age.as_secs_f64() * 1000.0).round() / 1000.0),
        dead_after: view.dead_after.as_secs_f64(),
        stopping,
        leader: stats.leader,
        in_flight: stats.in_flight,
        claimed: stats.claimed,
        succeeded: stats.succeeded,
        failed: stats.failed,
        retried: stats.retried,
        database_errors: stats.database_errors,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::Value;

    use super::*;

    fn view() -> View {
        View {
            worker_id: "w1".into(),
            backend: "default".into(),
            dead_after: Duration::from_secs(10),
            shared: crate::worker::new_shared(),
        }
    }

    fn answer(request: &str, view: &View) -> (u16, String, Value) {
        let response = String::from_utf8(respond(request.as_bytes(), view)).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        assert!(head.contains("\r\nContent-Type: application/json\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())) || body.is_empty(),
            "{head}"
        );
        let body = if body.is_empty() { Value::Null } else { serde_json::from_str(body).unwrap() };
        (status, head.to_owned(), body)
    }

    #[test]
    fn request_lines_are_parsed_strictly() {
        assert_eq!(parse_request_line(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(("GET", "/ready")));
        assert_eq!(parse_request_line(b"GET /ready?verbose=1 HTTP/1.0\n\n"), Ok(("GET", "/ready")));
        assert_eq!(parse_request_line(b"HEAD / HTTP/1.1\r\n\r\n"), Ok(("HEAD", "/")));
        for bad in [
            "",
            "GET /ready",
            "GET /ready\r\n\r\n",
            "GET ready HTTP/1.1\r\n",
            "GET / SPDY/3\r\n",
            "GET  / HTTP/1.1\r\n",
        ] {
            assert_eq!(parse_request_line(bad.as_bytes()), Err(400), "{bad:?}");
        }
        let huge = format!("GET /{} HTTP/1.1\r\n", "x".repeat(MAX_REQUEST + 10));
        assert_eq!(parse_request_line(huge.as_bytes()), Err(431));
    }

    #[test]
    fn routes_methods_and_errors() {
        let view = view();
        assert_eq!(answer("GET /live HTTP/1.1\r\n\r\n", &view).0, 200);
        assert_eq!(answer("GET /health HTTP/1.1\r\n\r\n", &view).0, 200);
        assert_eq!(answer("GET / HTTP/1.1\r\n\r\n", &view).0, 200);
        assert_eq!(answer("GET /livez HTTP/1.1\r\n\r\n", &view).0, 404);
        let (status, head, _) = answer("DELETE /live HTTP/1.1\r\n\r\n", &view);
        assert_eq!(status, 405);
        assert!(head.contains("\r\nAllow: GET, HEAD"), "{head}");
        let (status, _, body) = answer("HEAD /live HTTP/1.1\r\n\r\n", &view);
        assert_eq!((status, body), (200, Value::Null));
        assert_eq!(answer("nonsense\r\n\r\n", &view).0, 400);
    }

    #[test]
    fn ready_needs_a_fresh_heartbeat_and_no_stop() {
        let view = view();
        let ready = |view: &View| answer("GET /ready HTTP/1.1\r\n\r\n", view);
        let (status, _, body) = ready(&view);
        assert_eq!(
            (status, body["status"].as_str(), body["last_heartbeat"].is_null()),
            (503, Some("starting"), true)
        );

        let at = chrono::DateTime::from_timestamp(1_790_000_000, 250_000_000).unwrap();
        view.shared.stats.record_heartbeat(at, Instant::now());
        let (status, _, body) = ready(&view);
        assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
        assert_eq!(body["last_heartbeat"], "2026-09-21T14:13:20.250000Z");
        assert!(body["seconds_since_heartbeat"].as_f64().unwrap() < 1.0);
        assert_eq!((body["worker_id"].as_str(), body["backend"].as_str()), (Some("w1"), Some("default")));
        // The age is measured on the monotonic clock from when the heartbeat was taken.
        let long_ago = Instant::now().checked_sub(Duration::from_secs(11)).unwrap();
        view.shared.stats.record_heartbeat(at, long_ago);
        let (status, _, body) = ready(&view);
        assert_eq!((status, body["status"].as_str()), (503, Some("stale")));
        assert!(body["seconds_since_heartbeat"].as_f64().unwrap() >= 11.0);
        // `/health` tells the same, with 200.
        assert_eq!(answer("GET /health HTTP/1.1\r\n\r\n", &view).2["status"], "stale");

        view.shared.stats.record_heartbeat(at, Instant::now());
        view.shared.control.stop();
        let (status, _, body) = ready(&view);
        assert_eq!(
            (status, body["status"].as_str(), body["stopping"].as_bool()),
            (503, Some("stopping"), Some(true))
        );
        assert_eq!(answer("GET /live HTTP/1.1\r\n\r\n", &view).0, 200);
    }
}
