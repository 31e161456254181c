//! A claim that the database committed but whose answer never reached the worker (the connection
//! dropped in between: a server restart, a killed backend, a network cut). Its rows are RUNNING under
//! a worker that is alive and heartbeating, so no rescuer takes them; the worker itself must hand
//! them back. PostgreSQL only: an SQLite commit cannot be lost on the way back.
//!
//! A TCP proxy between the worker and PostgreSQL forwards the first claim statement, lets the server
//! run and commit it, and then closes the connection instead of forwarding the answer.

#[allow(unused_macros)] // on_both_databases: this test is PostgreSQL only
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Fixture, Kind};
use fasttasks_core::DatabaseConfig;
use fasttasks_core::Store;
use fasttasks_core::config::{QueueFilter, WorkerConfig};
use fasttasks_core::job::{NewJob, OutcomeKind};
use fasttasks_core::worker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Text only the claim statement contains.
const CLAIM_MARKER: &[u8] = b"SET status = 'RUNNING'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_is_lost_is_handed_back() {
    common::run(Kind::Postgres, claim_answer_lost).await;
}

async fn claim_answer_lost(fx: Arc<Fixture>) {
    let jobs: Vec<NewJob> = (0..50).map(|i| NewJob::simple(format!("job-{i:03}"), "tests.noop")).collect();
    fx.store.insert(&jobs).await.unwrap();

    let DatabaseConfig::Postgres { host, port, user, password, dbname, options } = fx.config.clone() else {
        unreachable!("a PostgreSQL fixture")
    };
    let cut = Arc::new(AtomicBool::new(false));
    let proxy_port = start_proxy(format!("{host}:{port}"), cut.clone()).await;
    // In plain text, so that the proxy can read the protocol.
    let options = [options, vec![("sslmode".into(), "disable".into())]].concat();
    let through_proxy = DatabaseConfig::Postgres {
        host: "127.0.0.1".into(),
        port: proxy_port,
        user,
        password,
        dbname,
        options,
    };
    let store = Store::connect(&through_proxy).await.unwrap();

    let executed = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let seen = executed.clone();
    let (sender, receiver) = crossbeam_channel::unbounded();
    let threads = worker::spawn_rust_executor(4, receiver.clone(), move |job| {
        *seen.lock().unwrap().entry(job.id.clone()).or_default() += 1;
        OutcomeKind::Succeeded { return_json: "null".into() }
    });
    let mut config = WorkerConfig::new("default", "lost-answer-worker");
    config.queues = QueueFilter::All;
    config.concurrency = 4;
    config.prefetch = 0;
    config.batch = true;
    let shared = worker::new_shared();
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        worker::run(store.clone(), config, shared.clone(), (sender, receiver)),
    )
    .await
    .expect("the worker finished")
    .unwrap();
    threads.into_iter().for_each(|thread| thread.join().unwrap());
    store.close().await;

    assert!(cut.load(Ordering::SeqCst), "the proxy never cut a claim's answer: the test tested nothing");
    let events: Vec<String> = shared.events.drain().into_iter().map(|event| event.message).collect();
    assert!(events.iter().any(|message| message.contains("claiming tasks failed")), "{events:?}");
    assert!(events.iter().any(|message| message.contains("handed back 4 tasks of a claim")), "{events:?}");
    assert_eq!(summary.stats.succeeded, 50);
    assert_eq!(fx.count("SUCCESSFUL").await, 50, "every task ran, none stayed RUNNING");
    let executed = executed.lock().unwrap();
    assert_eq!(executed.len(), 50);
    assert!(executed.values().all(|runs| *runs == 1), "the lost claim's tasks never ran before");
}

/// Listens on a free local port and forwards to `upstream`. The first time a client executes the
/// claim statement, the server's answer to it is dropped and the connection closed: the statement
/// ran (and, in autocommit, committed), but the client never learns what it claimed.
async fn start_proxy(upstream: String, cut: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { return };
            let Ok(server) = TcpStream::connect(&upstream).await else { return };
            tokio::spawn(forward(client, server, cut.clone()));
        }
    });
    port
}

async fn forward(client: TcpStream, server: TcpStream, cut: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set when this connection carries the claim whose answer is lost.
    let cutting = Arc::new(AtomicBool::new(false));
    let cutting_up = cutting.clone();
    let upstream = tokio::spawn(async move {
        let mut messages = ClientMessages::default();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let Ok(read) = client_read.read(&mut buffer).await else { return };
            if read == 0 {
                return;
            }
            let chunk = &buffer[..read];
            if messages.executes_the_claim(chunk) && !cut.swap(true, Ordering::SeqCst) {
                cutting_up.store(true, Ordering::SeqCst);
            }
            if server_write.write_all(chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(read) = server_read.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        if cutting.load(Ordering::SeqCst) {
            // Give the server time to finish the statement and its commit, dropping what it says.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while matches!(server_read.read(&mut buffer).await, Ok(n) if n > 0) {}
            })
            .await;
            break;
        }
        if client_write.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    upstream.abort();
}

/// Follows the frontend messages of one connection: the untyped startup message, then `type, length,
/// body` messages. The claim is executed by an `Execute` ('E') after a `Parse` ('P') of its text
/// (sqlx may send the two in one packet or in two).
#[derive(Default)]
struct ClientMessages {
    pending: Vec<u8>,
    started: bool,
    claim_parsed: bool,
}

impl ClientMessages {
    fn executes_the_claim(&mut self, chunk: &[u8]) -> bool {
        self.pending.extend_from_slice(chunk);
        let mut executes = false;
        loop {
            if !self.started {
                let Some(length) = self.length_at(0) else { return executes };
                if self.pending.len() < length {
                    return executes;
                }
                self.pending.drain(..length);
                self.started = true;
                continue;
            }
            let Some(length) = self.length_at(1) else { return executes };
            if self.pending.len() < 1 + length {
                return executes;
            }
            let message: Vec<u8> = self.pending.drain(..1 + length).collect();
            match message[0] {
                b'P' if message.windows(CLAIM_MARKER.len()).any(|window| window == CLAIM_MARKER) => {
                    self.claim_parsed = true;
                }
                b'E' if self.claim_parsed => executes = true,
                _ => {}
            }
        }
    }

    fn length_at(&self, offset: usize) -> Option<usize> {
        let bytes = self.pending.get(offset..offset + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().unwrap()) as usize)
    }
}
