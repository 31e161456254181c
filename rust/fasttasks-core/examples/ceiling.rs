//! The no-Python ceiling: drain N pre-enqueued jobs with the real producer, store and completer, but a
//! no-op executor in Rust. What the Python path can at best approach on this database.
//!
//!     cargo run --release -p fasttasks-core --example ceiling -- sqlite /tmp/ceiling.sqlite3 100000 8
//!     cargo run --release -p fasttasks-core --example ceiling -- postgres fasttasks_ceiling 100000 8
//!
//! Arguments: database kind, SQLite path or PostgreSQL database name (on 127.0.0.1, user postgres; it
//! is created if missing and its task table dropped first), number of jobs, concurrency (slots).
//! Prints one JSON line.

use std::time::{Duration, Instant};

use fasttasks_core::config::{DatabaseConfig, QueueFilter, WorkerConfig};
use fasttasks_core::job::{NewJob, OutcomeKind};
use fasttasks_core::{Store, worker};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: ceiling sqlite|postgres PATH_OR_DBNAME JOBS CONCURRENCY");
        std::process::exit(2);
    }
    let (kind, target) = (args[1].as_str(), args[2].clone());
    let jobs: usize = args[3].parse().expect("JOBS is a number");
    let concurrency: usize = args[4].parse().expect("CONCURRENCY is a number");

    let config = match kind {
        "sqlite" => {
            let _ = std::fs::remove_file(&target);
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{target}{suffix}"));
            }
            DatabaseConfig::Sqlite { path: target.clone().into(), busy_timeout: Duration::from_secs(5) }
        }
        "postgres" => {
            recreate_postgres_database(&target).await;
            DatabaseConfig::Postgres {
                host: "127.0.0.1".into(),
                port: 5432,
                user: "postgres".into(),
                password: None,
                dbname: target.clone(),
                options: vec![],
            }
        }
        other => panic!("unknown database kind {other:?}"),
    };
    let store = Store::connect(&config).await.expect("connect");
    store.install_schema().await.expect("schema");
    let new_jobs: Vec<NewJob> =
        (0..jobs).map(|i| NewJob::simple(format!("{i:012}"), "benches.tasks.noop")).collect();
    store.insert(&new_jobs).await.expect("insert");

    let mut worker_config = WorkerConfig::new("default", "ceiling");
    worker_config.queues = QueueFilter::All;
    worker_config.concurrency = concurrency;
    worker_config.batch = true;
    let (sender, receiver) = crossbeam_channel::unbounded();
    let threads = worker::spawn_rust_executor(2, receiver.clone(), |_job| OutcomeKind::Succeeded {
        return_json: "null".into(),
    });
    let started = Instant::now();
    let summary = worker::run(store.clone(), worker_config, worker::new_shared(), (sender, receiver))
        .await
        .expect("run");
    let elapsed = started.elapsed().as_secs_f64();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(summary.stats.succeeded, jobs as u64, "every job must succeed: {summary:?}");
    println!(
        "{{\"database\": \"{kind}\", \"jobs\": {jobs}, \"concurrency\": {concurrency}, \"seconds\": {elapsed:.3}, \"jobs_per_second\": {:.0}}}",
        jobs as f64 / elapsed
    );
    store.close().await;
}

async fn recreate_postgres_database(name: &str) {
    use sqlx::Connection;
    let mut admin =
        sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres").await.expect("admin");
    // The name comes from the command line of a benchmark; quote it as an identifier.
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .expect("drop");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
        .execute(&mut admin)
        .await
        .expect("create");
    admin.close().await.ok();
}
