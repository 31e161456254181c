//! The SQLite store. SQLite has one writer at a time, so the store writes through a pool of exactly
//! one connection: this process's claims, completions and releases queue up in Rust instead of fighting
//! over the file lock. Other processes (Django, other workers) are kept out by `BEGIN IMMEDIATE`, which
//! takes the write lock up front and waits for it up to `busy_timeout`.
//!
//! Timestamps are TEXT in Django's format (`crate::time`). Claims filter and order on that text in SQL,
//! so the queue never depends on parsing it. The timestamps a claimed job carries (`enqueued_at`,
//! `run_after`, `started_at`) are informational; when one does not parse (a row edited by hand), the job
//! is still returned, with `run_after` absent and the others set to the claim time, rather than failing
//! the claim with `Error::CorruptRow`: a claim that fails on a row would fail on it again every round and
//! starve the whole queue behind it. For the same reason numeric columns are read through `CAST`.

use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, Transaction};

use super::{ClaimRequest, CompletionReport, OutcomeWrite};
use crate::config::{DatabaseConfig, Dialect, QueueFilter};
use crate::job::{ClaimedJob, NewJob, Outcome};
use crate::time::{Timestamp, from_sqlite_text, to_sqlite_text};
use crate::{Error, Result};

/// How often the waker looks at `PRAGMA data_version`: one cheap read, so wake-up latency stays in
/// the low milliseconds at negligible cost.
const WAKER_POLL: Duration = Duration::from_millis(5);

/// Rows per insert statement (each chunk is one JSON array parameter).
const INSERT_CHUNK: usize = 1_000;

/// `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING`: pick and mark in one statement. The literal
/// `'READY'` matches the partial index `fasttasks_task_ready_idx`, whose order is the `ORDER BY`.
/// Text columns that may hold timestamps and the numeric columns are `CAST` so that one odd value
/// cannot make the row undecodable (see the module comment).
const CLAIM_ALL_QUEUES: &str = "\
UPDATE fasttasks_task
SET status = 'RUNNING',
    attempts = attempts + 1,
    started_at = COALESCE(started_at, ?1),
    last_attempted_at = ?1,
    worker_ids = json_insert(worker_ids, '$[#]', ?2),
    worker_id = ?2,
    lease_token = ?3
WHERE id IN (
    SELECT id FROM fasttasks_task
    WHERE status = 'READY' AND available_at <= ?1 AND backend_name = ?4
    ORDER BY priority DESC, available_at, id
    LIMIT ?5
)
RETURNING id, task_path, queue_name, backend_name, CAST(priority AS INTEGER) AS priority, args, kwargs,
    CAST(run_after AS TEXT) AS run_after, CAST(enqueued_at AS TEXT) AS enqueued_at,
    CAST(started_at AS TEXT) AS started_at, CAST(attempts AS INTEGER) AS attempts,
    CAST(max_attempts AS INTEGER) AS max_attempts, worker_ids, CAST(available_at AS TEXT) AS available_at";

/// The same, only from the queues in the JSON array `?6`.
const CLAIM_SOME_QUEUES: &str = "\
UPDATE fasttasks_task
SET status = 'RUNNING',
    attempts = attempts + 1,
    started_at = COALESCE(started_at, ?1),
    last_attempted_at = ?1,
    worker_ids = json_insert(worker_ids, '$[#]', ?2),
    worker_id = ?2,
    lease_token = ?3
WHERE id IN (
    SELECT id FROM fasttasks_task
    WHERE status = 'READY' AND available_at <= ?1 AND backend_name = ?4
        AND queue_name IN (SELECT value FROM json_each(?6))
    ORDER BY priority DESC, available_at, id
    LIMIT ?5
)
RETURNING id, task_path, queue_name, backend_name, CAST(priority AS INTEGER) AS priority, args, kwargs,
    CAST(run_after AS TEXT) AS run_after, CAST(enqueued_at AS TEXT) AS enqueued_at,
    CAST(started_at AS TEXT) AS started_at, CAST(attempts AS INTEGER) AS attempts,
    CAST(max_attempts AS INTEGER) AS max_attempts, worker_ids, CAST(available_at AS TEXT) AS available_at";

// One completion statement per kind of outcome, each guarded like PostgreSQL's: only a row still
// RUNNING under the presented lease is written. `json(?)` makes the error an object inside the array
// instead of a string.
const COMPLETE_SUCCESS: &str = "\
UPDATE fasttasks_task
SET status = 'SUCCESSFUL', finished_at = ?3, return_value = ?4, worker_id = NULL, lease_token = NULL
WHERE id = ?1 AND status = 'RUNNING' AND lease_token = ?2";

const COMPLETE_FAILURE: &str = "\
UPDATE fasttasks_task
SET status = 'FAILED', finished_at = ?3, errors = json_insert(errors, '$[#]', json(?4)),
    worker_id = NULL, lease_token = NULL
WHERE id = ?1 AND status = 'RUNNING' AND lease_token = ?2";

const COMPLETE_RETRY: &str = "\
UPDATE fasttasks_task
SET status = 'READY', available_at = ?3, finished_at = NULL, errors = json_insert(errors, '$[#]', json(?4)),
    worker_id = NULL, lease_token = NULL
WHERE id = ?1 AND status = 'RUNNING' AND lease_token = ?2";

/// Undoes a claim. Right-hand sides see the row before the update, so `attempts <= 1` means "this
/// was the first attempt".
const RELEASE: &str = "\
UPDATE fasttasks_task
SET status = 'READY',
    attempts = max(attempts - 1, 0),
    worker_ids = json_remove(worker_ids, '$[#-1]'),
    started_at = CASE WHEN attempts <= 1 THEN NULL ELSE started_at END,
    last_attempted_at = CASE WHEN attempts <= 1 THEN NULL ELSE last_attempted_at END,
    worker_id = NULL,
    lease_token = NULL
WHERE id = ?1 AND status = 'RUNNING' AND lease_token = ?2";

/// A whole chunk in one static statement with one parameter: a JSON array of [`InsertRow`]s.
const INSERT: &str = "\
INSERT INTO fasttasks_task (id, task_path, queue_name, backend_name, priority, status, args, kwargs,
    run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors)
SELECT j.value ->> 'id', j.value ->> 'task_path', j.value ->> 'queue_name', j.value ->> 'backend_name',
    j.value ->> 'priority', 'READY', j.value ->> 'args', j.value ->> 'kwargs', j.value ->> 'run_after',
    j.value ->> 'available_at', j.value ->> 'enqueued_at', 0, j.value ->> 'max_attempts', '[]', '[]'
FROM json_each(?1) AS j";

/// One row of an insert chunk; `args`/`kwargs` travel as strings holding the JSON text, stored as is.
#[derive(Serialize)]
struct InsertRow<'a> {
    id: &'a str,
    task_path: &'a str,
    queue_name: &'a str,
    backend_name: &'a str,
    priority: i32,
    args: &'a str,
    kwargs: &'a str,
    run_after: Option<String>,
    available_at: String,
    enqueued_at: String,
    max_attempts: i32,
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: every write of this process goes through it, one at a time.
    pool: SqlitePool,
}

/// Watches `PRAGMA data_version` on a connection of its own. The value changes whenever another
/// connection (another process, or this process's write connection) commits, and never for reads.
pub struct SqliteWaker {
    connection: SqliteConnection,
    /// The last value reported. Kept across calls, so a commit that lands between two waits still
    /// wakes the next one.
    seen: i64,
}

impl SqliteWaker {
    pub async fn wait(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let version = data_version(&mut self.connection).await?;
            if version != self.seen {
                self.seen = version;
                return Ok(true);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(WAKER_POLL.min(deadline - now)).await;
        }
    }
}

impl SqliteStore {
    pub async fn connect(config: &DatabaseConfig) -> Result<Self> {
        let DatabaseConfig::Sqlite { path, busy_timeout } = config else {
            return Err(Error::Config("SqliteStore needs an SQLite configuration".into()));
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // WAL: readers (Django, the waker) never block the writer nor it them. NORMAL is durable
            // against process crashes, which is what at-least-once delivery needs here.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(*busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // The one connection lives as long as the store; reopening it would buy nothing.
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            // Waiting for the connection can include another caller's wait for the file lock.
            .acquire_timeout(Duration::from_secs(30).max(*busy_timeout * 3))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub async fn install_schema(&self) -> Result<()> {
        // IMMEDIATE: two processes installing at once cannot both see "missing".
        self.write(async |tx| {
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'fasttasks_task')",
            )
            .fetch_one(&mut **tx)
            .await?;
            if exists {
                return Ok(());
            }
            for statement in crate::schema::schema_statements(Dialect::Sqlite) {
                // The statements come from the crate's own embedded SQL files, not from input.
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut **tx).await?;
            }
            Ok(())
        })
        .await
    }

    pub async fn insert(&self, jobs: &[NewJob]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.write(async |tx| {
            for chunk in jobs.chunks(INSERT_CHUNK) {
                let rows: Vec<InsertRow<'_>> = chunk
                    .iter()
                    .map(|job| InsertRow {
                        id: &job.id,
                        task_path: &job.task_path,
                        queue_name: &job.queue_name,
                        backend_name: &job.backend_name,
                        priority: job.priority,
                        args: &job.args_json,
                        kwargs: &job.kwargs_json,
                        run_after: job.run_after.map(to_sqlite_text),
                        available_at: to_sqlite_text(job.run_after.unwrap_or(job.enqueued_at)),
                        enqueued_at: to_sqlite_text(job.enqueued_at),
                        max_attempts: job.max_attempts,
                    })
                    .collect();
                let json = serde_json::to_string(&rows).expect("strings and numbers serialize");
                sqlx::query(INSERT).bind(json).execute(&mut **tx).await?;
            }
            Ok(())
        })
        .await
    }

    pub async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<ClaimedJob>> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        let now = to_sqlite_text(request.now);
        let query = match request.queues {
            QueueFilter::All => sqlx::query(CLAIM_ALL_QUEUES),
            QueueFilter::Only(names) if names.is_empty() => return Ok(Vec::new()),
            QueueFilter::Only(_) => sqlx::query(CLAIM_SOME_QUEUES),
        };
        let query = query
            .bind(now)
            .bind(request.worker_id.to_owned())
            .bind(request.lease_token)
            .bind(request.backend_name.to_owned())
            .bind(i64::try_from(request.limit).unwrap_or(i64::MAX));
        let query = match request.queues {
            QueueFilter::Only(names) => query.bind(serde_json::to_string(names).expect("strings serialize")),
            QueueFilter::All => query,
        };
        let mut jobs = self
            .write(async |tx| {
                let rows = query.fetch_all(&mut **tx).await?;
                // Decode before committing: if a row cannot be decoded at all, the claim rolls back
                // instead of leaving rows RUNNING that nobody holds.
                Ok(rows
                    .iter()
                    .map(|row| claimed_job(row, request))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?)
            })
            .await?;
        // Sorting on the stored text is exactly SQLite's `ORDER BY` (binary collation).
        super::sort_in_claim_order(&mut jobs);
        Ok(jobs.into_iter().map(|(job, _)| job).collect())
    }

    pub async fn complete(&self, outcomes: &[Outcome]) -> Result<CompletionReport> {
        self.write(async |tx| {
            let mut report = CompletionReport::default();
            for write in outcomes.iter().map(OutcomeWrite::plan) {
                // A failed statement inside a transaction undoes only itself in SQLite, so a value the
                // database refuses can be replaced on the spot; if even the replacement fails, the error
                // is not about the value and the whole batch is rolled back and reported.
                let applied = match complete_one(tx, &write).await {
                    Err(error) if is_data_error(&error) => {
                        let refused = write.clone().refused(&error.to_string());
                        complete_one(tx, &refused).await?
                    }
                    other => other?,
                };
                if applied {
                    report.applied += 1;
                } else {
                    report.stale.push(write.id.to_owned());
                }
            }
            Ok(report)
        })
        .await
    }

    pub async fn release(&self, claims: &[(String, i64)]) -> Result<u64> {
        self.write(async |tx| {
            let mut released = 0;
            for (id, lease_token) in claims {
                released += sqlx::query(RELEASE)
                    .bind(id.as_str())
                    .bind(*lease_token)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
            }
            Ok(released)
        })
        .await
    }

    /// Runs `operation` in a `BEGIN IMMEDIATE` transaction on the write connection and commits.
    ///
    /// On any failure the connection is closed instead of returned to the pool: after a failed COMMIT
    /// (e.g. SQLITE_PROTOCOL under heavy WAL contention) SQLite may already have ended the transaction,
    /// so sqlx's queued ROLLBACK fails and the connection would stay marked as inside a transaction,
    /// refusing every later `BEGIN`. A new connection costs a file open; a wedged one stops the worker.
    async fn write<T>(
        &self,
        operation: impl AsyncFnOnce(&mut Transaction<'_, Sqlite>) -> Result<T>,
    ) -> Result<T> {
        let mut connection = self.pool.acquire().await?;
        let result = async {
            let mut tx = connection.begin_with("BEGIN IMMEDIATE").await?;
            let value = operation(&mut tx).await?;
            tx.commit().await?;
            Ok(value)
        }
        .await;
        if result.is_err() {
            connection.close_on_drop();
        }
        result
    }

    pub async fn waker(&self) -> Result<SqliteWaker> {
        // Not from the pool: its one connection is for writes, and data_version only reports commits
        // of *other* connections.
        let mut connection = SqliteConnection::connect_with(&self.pool.connect_options()).await?;
        let seen = data_version(&mut connection).await?;
        Ok(SqliteWaker { connection, seen })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn complete_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    write: &OutcomeWrite<'_>,
) -> Result<bool, sqlx::Error> {
    let (sql, time, json) = match write.status {
        OutcomeWrite::SUCCESSFUL => (COMPLETE_SUCCESS, write.finished_at, write.return_json.as_deref()),
        OutcomeWrite::READY => (COMPLETE_RETRY, write.retry_at, write.error_json.as_deref()),
        _ => (COMPLETE_FAILURE, write.finished_at, write.error_json.as_deref()),
    };
    let result = sqlx::query(sql)
        .bind(write.id)
        .bind(write.lease_token)
        .bind(time.map(to_sqlite_text))
        .bind(json)
        .execute(&mut **tx)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// The job and its `available_at` text (the sort key).
fn claimed_job(row: &SqliteRow, request: &ClaimRequest<'_>) -> Result<(ClaimedJob, String), sqlx::Error> {
    let timestamp = |column: &str| -> Result<Option<Timestamp>, sqlx::Error> {
        Ok(row.try_get::<Option<String>, _>(column)?.as_deref().and_then(from_sqlite_text))
    };
    let job = ClaimedJob {
        id: row.try_get("id")?,
        task_path: row.try_get("task_path")?,
        queue_name: row.try_get("queue_name")?,
        backend_name: row.try_get("backend_name")?,
        priority: row.try_get("priority")?,
        args_json: row.try_get("args")?,
        kwargs_json: row.try_get("kwargs")?,
        run_after: timestamp("run_after")?,
        enqueued_at: timestamp("enqueued_at")?.unwrap_or(request.now),
        started_at: timestamp("started_at")?.unwrap_or(request.now),
        // This claim wrote it.
        last_attempted_at: request.now,
        attempt: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        worker_ids_json: row.try_get("worker_ids")?,
        lease_token: request.lease_token,
    };
    Ok((job, row.try_get("available_at")?))
}

async fn data_version(connection: &mut SqliteConnection) -> Result<i64> {
    Ok(sqlx::query_scalar("PRAGMA data_version").fetch_one(connection).await?)
}

/// A value the database refused (malformed JSON for `json()`, a failed `json_valid` CHECK), as
/// opposed to a lock, I/O or schema problem.
fn is_data_error(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|e| {
        e.kind() == sqlx::error::ErrorKind::CheckViolation || e.code().as_deref() == Some("1")
    })
}

/// The version of the SQLite library this process linked (e.g. "3.40.1"). The worker compares it
/// with Python's `sqlite3.sqlite_version`: both must be the same shared library, see the workspace
/// Cargo.toml on why SQLite is never bundled.
pub fn library_version() -> String {
    // SAFETY: sqlite3_libversion returns a pointer to a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(libsqlite3_sys::sqlite3_libversion()) }.to_string_lossy().into_owned()
}
