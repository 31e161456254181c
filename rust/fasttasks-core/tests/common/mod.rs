//! Fixtures for tests that need a real database: a fresh SQLite file or a fresh PostgreSQL schema per
//! test, a `Store` on it, a raw sqlx pool on the same database for setting up and inspecting rows, and
//! cleanup that runs even when the test panics.
//!
//! PostgreSQL: 127.0.0.1:5432, user `postgres`, database `test`, no password (override with the usual
//! PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE). When it is unreachable the PostgreSQL tests print a
//! notice and pass, except with `CI=true`, where they fail.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::DateTime;
use fasttasks_core::store::ClaimRequest;
use fasttasks_core::time::{Timestamp, from_sqlite_text};
use fasttasks_core::{ClaimedJob, DatabaseConfig, NewJob, QueueFilter, Store};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Connection, Row};

/// Defines, for each listed `async fn name(fx: Arc<Fixture>)` of the invoking file, the tests
/// `sqlite::name` and `postgres::name`, each on a database of its own.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::common::run(crate::common::Kind::Sqlite, super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::common::run(crate::common::Kind::Postgres, super::$name).await;
                }
            )*
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// Raw access to the test's database, bypassing the store.
pub enum Admin {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

pub struct Fixture {
    pub kind: Kind,
    pub config: DatabaseConfig,
    /// The store under test (schema installed).
    pub store: Store,
    pub admin: Admin,
    /// Every store the test opened, closed at teardown.
    stores: Mutex<Vec<Store>>,
    cleanup: Cleanup,
}

enum Cleanup {
    SqliteFile(PathBuf),
    PostgresSchema { base: Box<PgConnectOptions>, schema: String },
}

/// Runs `test` on a fresh database of `kind`, then cleans up, then re-raises the test's panic.
pub async fn run<F, Fut>(kind: Kind, test: F)
where
    F: FnOnce(Arc<Fixture>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(fixture) = Fixture::new(kind).await else {
        return;
    };
    let fixture = Arc::new(fixture);
    // On a task of its own so that a panic comes back as a JoinError and cleanup still runs.
    let outcome = tokio::spawn(test(fixture.clone())).await;
    fixture.teardown().await;
    if let Err(error) = outcome {
        match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("test task failed: {error}"),
        }
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

impl Fixture {
    async fn new(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Sqlite => Some(Self::sqlite().await),
            Kind::Postgres => Self::postgres().await,
        }
    }

    async fn sqlite() -> Self {
        let path =
            std::env::temp_dir().join(format!("fasttasks-test-{:016x}.sqlite3", rand::random::<u64>()));
        let config = DatabaseConfig::Sqlite { path: path.clone(), busy_timeout: Duration::from_secs(10) };
        let store = Store::connect(&config).await.expect("open SQLite store");
        store.install_schema().await.expect("install SQLite schema");
        let admin = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(SqliteConnectOptions::new().filename(&path).busy_timeout(Duration::from_secs(10)))
            .await
            .expect("open SQLite admin pool");
        Self {
            kind: Kind::Sqlite,
            config,
            store,
            admin: Admin::Sqlite(admin),
            stores: Mutex::new(Vec::new()),
            cleanup: Cleanup::SqliteFile(path),
        }
    }

    async fn postgres() -> Option<Self> {
        let host = env_or("PGHOST", "127.0.0.1");
        let port: u16 = env_or("PGPORT", "5432").parse().expect("PGPORT is a port number");
        let user = env_or("PGUSER", "postgres");
        let dbname = env_or("PGDATABASE", "test");
        let password = std::env::var("PGPASSWORD").ok();
        let mut base = PgConnectOptions::new().host(&host).port(port).username(&user).database(&dbname);
        if let Some(password) = &password {
            base = base.password(password);
        }
        let mut connection = match sqlx::PgConnection::connect_with(&base).await {
            Ok(connection) => connection,
            Err(error) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("PostgreSQL at {host}:{port} is required on CI: {error}");
                }
                eprintln!("NOTICE: skipping PostgreSQL test, no server at {host}:{port}: {error}");
                return None;
            }
        };
        let schema = format!("fasttasks_test_{:016x}", rand::random::<u64>());
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut connection)
            .await
            .expect("create test schema");
        connection.close().await.ok();
        let config = DatabaseConfig::Postgres {
            host,
            port,
            user,
            password,
            dbname,
            options: vec![("search_path".into(), schema.clone())],
        };
        let store = Store::connect(&config).await.expect("open PostgreSQL store");
        store.install_schema().await.expect("install PostgreSQL schema");
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(base.clone().options([("search_path", schema.as_str())]))
            .await
            .expect("open PostgreSQL admin pool");
        Some(Self {
            kind: Kind::Postgres,
            config,
            store,
            admin: Admin::Postgres(admin),
            stores: Mutex::new(Vec::new()),
            cleanup: Cleanup::PostgresSchema { base: Box::new(base), schema },
        })
    }

    /// Another store on the same database: its own pool, like another worker process.
    pub async fn new_store(&self) -> Store {
        let store = Store::connect(&self.config).await.expect("open a second store");
        self.stores.lock().unwrap().push(store.clone());
        store
    }

    async fn teardown(&self) {
        let stores: Vec<Store> = self.stores.lock().unwrap().drain(..).collect();
        for store in stores.iter().chain([&self.store]) {
            store.close().await;
        }
        match &self.admin {
            Admin::Sqlite(pool) => pool.close().await,
            Admin::Postgres(pool) => pool.close().await,
        }
        match &self.cleanup {
            Cleanup::SqliteFile(path) => {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    std::fs::remove_file(file).ok();
                }
            }
            Cleanup::PostgresSchema { base, schema } => {
                if let Ok(mut connection) = sqlx::PgConnection::connect_with(base).await {
                    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                        .execute(&mut connection)
                        .await
                        .ok();
                    connection.close().await.ok();
                }
            }
        }
    }

    /// Runs SQL (written for this fixture's dialect) on the admin pool.
    pub async fn exec(&self, sql: &str) {
        let result = match &self.admin {
            Admin::Sqlite(pool) => {
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(pool).await.map(|_| ())
            }
            Admin::Postgres(pool) => {
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(pool).await.map(|_| ())
            }
        };
        result.unwrap_or_else(|error| panic!("{sql}: {error}"));
    }

    /// The stored state of one row, read around the store.
    pub async fn row(&self, id: &str) -> RowState {
        const COLUMNS: &str = "status, attempts, worker_ids, errors, return_value, available_at, \
            enqueued_at, run_after, started_at, last_attempted_at, finished_at, worker_id, lease_token";
        match &self.admin {
            Admin::Postgres(pool) => {
                let sql = "SELECT status, attempts, worker_ids::text AS worker_ids, errors::text AS errors, \
                     return_value::text AS return_value, available_at, enqueued_at, run_after, started_at, \
                     last_attempted_at, finished_at, worker_id, lease_token FROM fasttasks_task WHERE id = $1";
                let row = sqlx::query(sql)
                    .bind(id)
                    .fetch_one(pool)
                    .await
                    .unwrap_or_else(|e| panic!("row {id}: {e}"));
                RowState {
                    status: row.get("status"),
                    attempts: row.get("attempts"),
                    worker_ids: json(row.get("worker_ids")),
                    errors: json(row.get("errors")),
                    return_value: row.get::<Option<String>, _>("return_value").map(json),
                    available_at: row.get("available_at"),
                    enqueued_at: row.get("enqueued_at"),
                    run_after: row.get("run_after"),
                    started_at: row.get("started_at"),
                    last_attempted_at: row.get("last_attempted_at"),
                    finished_at: row.get("finished_at"),
                    worker_id: row.get("worker_id"),
                    lease_token: row.get("lease_token"),
                }
            }
            Admin::Sqlite(pool) => {
                let sql = format!("SELECT {COLUMNS} FROM fasttasks_task WHERE id = ?1");
                let row = sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_one(pool)
                    .await
                    .unwrap_or_else(|e| panic!("row {id}: {e}"));
                let ts = |column: &str| -> Option<Timestamp> {
                    row.get::<Option<String>, _>(column).map(|text| {
                        from_sqlite_text(&text)
                            .unwrap_or_else(|| panic!("{column} = {text:?} does not parse"))
                    })
                };
                RowState {
                    status: row.get("status"),
                    attempts: row.get("attempts"),
                    worker_ids: json(row.get("worker_ids")),
                    errors: json(row.get("errors")),
                    return_value: row.get::<Option<String>, _>("return_value").map(json),
                    available_at: ts("available_at").expect("available_at is NOT NULL"),
                    enqueued_at: ts("enqueued_at").expect("enqueued_at is NOT NULL"),
                    run_after: ts("run_after"),
                    started_at: ts("started_at"),
                    last_attempted_at: ts("last_attempted_at"),
                    finished_at: ts("finished_at"),
                    worker_id: row.get("worker_id"),
                    lease_token: row.get("lease_token"),
                }
            }
        }
    }

    /// How many rows have `status`.
    pub async fn count(&self, status: &str) -> i64 {
        match &self.admin {
            Admin::Postgres(pool) => {
                sqlx::query_scalar("SELECT count(*) FROM fasttasks_task WHERE status = $1")
                    .bind(status)
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
            Admin::Sqlite(pool) => {
                sqlx::query_scalar("SELECT count(*) FROM fasttasks_task WHERE status = ?1")
                    .bind(status)
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
        }
    }
}

/// One row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RowState {
    pub status: String,
    pub attempts: i32,
    pub worker_ids: Value,
    pub errors: Value,
    pub return_value: Option<Value>,
    pub available_at: Timestamp,
    pub enqueued_at: Timestamp,
    pub run_after: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub last_attempted_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub worker_id: Option<String>,
    pub lease_token: Option<i64>,
}

pub fn json(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"))
}

/// A fixed point in time the tests count from (whole seconds, so Django-style texts are easy to write).
pub fn t0() -> Timestamp {
    DateTime::from_timestamp(1_790_000_000, 0).unwrap()
}

pub fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// A due job on the "default" queue and backend, enqueued `age` seconds before [`t0`].
pub fn job(id: &str, age: i64) -> NewJob {
    let mut job = NewJob::simple(id, "tests.tasks.noop");
    job.enqueued_at = t0() - secs(age);
    job
}

pub fn lease() -> i64 {
    rand::random::<i64>()
}

pub fn default_queue() -> QueueFilter {
    QueueFilter::Only(vec!["default".into()])
}

/// Claims from the "default" backend.
pub async fn claim(
    store: &Store,
    queues: &QueueFilter,
    limit: usize,
    worker_id: &str,
    lease_token: i64,
    now: Timestamp,
) -> Vec<ClaimedJob> {
    let request = ClaimRequest { backend_name: "default", queues, limit, worker_id, lease_token, now };
    store.claim(&request).await.expect("claim")
}

pub fn ids(jobs: &[ClaimedJob]) -> Vec<&str> {
    jobs.iter().map(|job| job.id.as_str()).collect()
}
