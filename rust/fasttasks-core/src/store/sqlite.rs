//! The SQLite store. SQLite has one writer at a time, so the store writes through a pool of exactly
//! one connection: this process's claims, completions and releases queue up in Rust instead of fighting
//! over the file lock. Other processes (Django, other workers) are kept out by `BEGIN IMMEDIATE`, which
//! takes the write lock up front and waits for it up to `busy_timeout`.
//!
//! Timestamps are TEXT in Django's format (`crate::time`). Claims filter and order on that text in SQL,
//! so the queue never depends on parsing it. The timestamps a claimed job carries (`enqueued_at`,
//! `run_after`, `started_at`) are informational; when one does not parse (a row edited by hand), the job
//! is still returned, with `run_after` absent and the others set to the claim time.
//!
//! SQLite stores whatever it is given, so a row written by hand may hold what no job can be made of: a
//! BLOB or bytes that are not UTF-8 where text belongs, a non-integer priority. A claim never fails on
//! such a row, since it would fail on it again every round and starve the whole queue behind it: the
//! row ends FAILED inside the claim's transaction with an error naming the column (see [`claim_rows`]).
//! Likewise the JSON lists the worker appends to (`worker_ids`, `errors`) are appended to through
//! [`json_list!`], which copes with text that is not a JSON array.

use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, Transaction};

use super::{
    ClaimRequest, CompletionReport, LeaderLease, MaintenanceRound, OutcomeWrite, RescueReport, RescueRequest,
    RoundReport, WORKER_CRASHED_CLASS, WorkerRegistration,
};
use crate::config::{DatabaseConfig, Dialect, QueueFilter};
use crate::job::{ClaimedJob, NewJob, Outcome, in_job_range};
use crate::time::{Timestamp, from_sqlite_text, to_sqlite_text};
use crate::{Error, Result};

/// The JSON list in `$column` to append to, whatever a row edited by hand holds there: an array as is,
/// other JSON wrapped in an array (as PostgreSQL's `||` does), text that is not JSON kept as one string
/// in an array. `json_insert` alone fails on malformed JSON, which would fail every claim or completion
/// batch holding that row, and appends nothing to a non-array, losing the entry.
macro_rules! json_list {
    ($column:literal) => {
        concat!(
            "CASE WHEN NOT json_valid(",
            $column,
            ") THEN json_array(CAST(",
            $column,
            " AS TEXT)) ",
            "WHEN json_type(",
            $column,
            ") = 'array' THEN ",
            $column,
            " ",
            "ELSE json_array(json(",
            $column,
            ")) END"
        )
    };
}

/// One claimed row as the JSON array [`ClaimedRow`] decodes, in its column order. Text columns go in as
/// JSON strings, so `args`/`kwargs` arrive as the exact stored text; `priority` and `max_attempts` go in
/// as stored, so a value that is not an integer fails the decoding of that row (and only that row:
/// see [`claim_rows`]); timestamps and `attempts` (which the claim has just made a number) are `CAST`.
macro_rules! claimed_row_json {
    () => {
        "json_array(
    id, task_path, queue_name, backend_name, priority, args, kwargs,
    CAST(run_after AS TEXT), CAST(enqueued_at AS TEXT), CAST(started_at AS TEXT),
    CAST(attempts AS INTEGER), max_attempts, worker_ids, CAST(available_at AS TEXT),
    CAST(crashes AS INTEGER))"
    };
}

/// Without file events, how often the waker looks at `PRAGMA data_version`: one cheap read, so wake-up
/// latency stays in the low milliseconds at little cost.
const WAKER_POLL: Duration = Duration::from_millis(5);
/// A file event comes when a commit *writes* the WAL; the commit becomes visible (and `data_version`
/// changes) a moment later, through the shared-memory index, which makes no file event. So after an
/// event the waker looks again every [`COMMIT_RECHECK`] for this long before sleeping on events again.
const COMMIT_GRACE: Duration = Duration::from_millis(50);
const COMMIT_RECHECK: Duration = Duration::from_millis(1);

/// Rows per insert statement (each chunk is one JSON array parameter).
const INSERT_CHUNK: usize = 1_000;

/// `UPDATE … WHERE id IN (SELECT … LIMIT n)`: pick and mark in one statement. The literal `'READY'`
/// matches the partial index `fasttasks_task_ready_idx`, whose order is the `ORDER BY`. The claimed rows
/// are read back by [`CLAIMED_ROWS`] rather than with `RETURNING`: sqlx hands every result row from its
/// SQLite thread to ours as a message of its own, which cost more than the claim itself at a few
/// hundred rows; one aggregated row costs one message.
const CLAIM_ALL_QUEUES: &str = concat!(
    "\
UPDATE fasttasks_task
SET status = 'RUNNING',
    attempts = attempts + 1,
    started_at = COALESCE(started_at, ?1),
    last_attempted_at = ?1,
    worker_ids = json_insert(",
    json_list!("worker_ids"),
    ", '$[#]', ?2),
    worker_id = ?2,
    lease_token = ?3
WHERE id IN (
    SELECT id FROM fasttasks_task
    WHERE status = 'READY' AND available_at <= ?1 AND backend_name = ?4
    ORDER BY priority DESC, available_at, id
    LIMIT ?5
)"
);

/// The same, only from the queues in the JSON array `?6`.
const CLAIM_SOME_QUEUES: &str = concat!(
    "\
UPDATE fasttasks_task
SET status = 'RUNNING',
    attempts = attempts + 1,
    started_at = COALESCE(started_at, ?1),
    last_attempted_at = ?1,
    worker_ids = json_insert(",
    json_list!("worker_ids"),
    ", '$[#]', ?2),
    worker_id = ?2,
    lease_token = ?3
WHERE id IN (
    SELECT id FROM fasttasks_task
    WHERE status = 'READY' AND available_at <= ?1 AND backend_name = ?4
        AND queue_name IN (SELECT value FROM json_each(?6))
    ORDER BY priority DESC, available_at, id
    LIMIT ?5
)"
);

/// The rows one claim took (its fresh lease token), as one JSON array of [`ClaimedRow`] arrays, through
/// the running index.
const CLAIMED_ROWS: &str = concat!(
    "SELECT json_group_array(",
    claimed_row_json!(),
    ") FROM fasttasks_task WHERE worker_id = ?1 AND status = 'RUNNING' AND lease_token = ?2"
);

/// When [`CLAIMED_ROWS`] fails or does not decode (a hand-edited row): the claimed rows one at a time.
const CLAIMED_ROWIDS: &str =
    "SELECT rowid FROM fasttasks_task WHERE worker_id = ?1 AND status = 'RUNNING' AND lease_token = ?2";
const CLAIMED_ROW: &str = concat!("SELECT ", claimed_row_json!(), " FROM fasttasks_task WHERE rowid = ?1");

/// What a claimed row that [`CLAIMED_ROW`] cannot give as a job holds (see [`unreadable_reason`]): for
/// each column the job reads as text, its type and bytes; the types of the integer columns; the attempt.
const UNREADABLE_ROW: &str = "\
SELECT typeof(id), CAST(id AS BLOB), typeof(task_path), CAST(task_path AS BLOB),
    typeof(queue_name), CAST(queue_name AS BLOB), typeof(backend_name), CAST(backend_name AS BLOB),
    typeof(args), CAST(args AS BLOB), typeof(kwargs), CAST(kwargs AS BLOB),
    typeof(worker_ids), CAST(worker_ids AS BLOB),
    typeof(run_after), CAST(run_after AS BLOB), typeof(enqueued_at), CAST(enqueued_at AS BLOB),
    typeof(started_at), CAST(started_at AS BLOB), typeof(available_at), CAST(available_at AS BLOB),
    typeof(priority), typeof(max_attempts), CAST(attempts AS INTEGER)
FROM fasttasks_task WHERE rowid = ?1";

/// The columns of [`UNREADABLE_ROW`] in order, and whether each must hold text (the timestamps may hold
/// any type: one that does not parse falls back, see the module comment).
const UNREADABLE_COLUMNS: [(&str, bool); 11] = [
    ("id", true),
    ("task_path", true),
    ("queue_name", true),
    ("backend_name", true),
    ("args", true),
    ("kwargs", true),
    ("worker_ids", true),
    ("run_after", false),
    ("enqueued_at", false),
    ("started_at", false),
    ("available_at", false),
];

/// Ends a claimed row that cannot be read: FAILED, with the reason appended to `errors`; by `rowid` (its
/// id may be what cannot be read), fenced by the claim's lease like every completion.
const FAIL_UNREADABLE: &str = concat!(
    "UPDATE fasttasks_task SET status = 'FAILED', finished_at = ?3, errors = json_insert(",
    json_list!("errors"),
    ", '$[#]', json(?4)), worker_id = NULL, lease_token = NULL
WHERE rowid = ?1 AND status = 'RUNNING' AND lease_token = ?2"
);

/// One claimed row as [`claimed_row_json!`] encodes it, in its column order.
type ClaimedRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

// The JSON is read with `json_extract` rather than `->>` (SQLite 3.38): `UPDATE … FROM` (3.33) is the
// newest feature these statements need.

/// A whole batch of outcomes in one statement: `?1` is a JSON array of [`CompletionRow`]s. Each is
/// written only where the row is still RUNNING under the presented lease, like PostgreSQL's. The
/// status decides which columns change: SUCCESSFUL stores the return value; FAILED and READY (a retry)
/// append the error object (`json()`, so it goes in as an object, not a string); READY also moves
/// `available_at` to the retry time and leaves the task unfinished.
const COMPLETE_BATCH: &str = concat!(
    "\
UPDATE fasttasks_task AS t
SET status = o.status,
    finished_at = o.finished_at,
    available_at = CASE WHEN o.status = 'READY' THEN o.retry_at ELSE t.available_at END,
    run_after = CASE WHEN o.status = 'READY' THEN o.retry_at ELSE t.run_after END,
    return_value = CASE WHEN o.status = 'SUCCESSFUL' THEN o.return_json ELSE t.return_value END,
    errors = CASE WHEN o.status = 'SUCCESSFUL' THEN t.errors
        ELSE json_insert(",
    json_list!("t.errors"),
    ", '$[#]', json(o.error_json)) END,
    worker_id = NULL,
    lease_token = NULL
FROM (
    SELECT json_extract(j.value, '$.id') AS id,
        json_extract(j.value, '$.lease_token') AS lease_token,
        json_extract(j.value, '$.status') AS status,
        json_extract(j.value, '$.finished_at') AS finished_at,
        json_extract(j.value, '$.retry_at') AS retry_at,
        json_extract(j.value, '$.return_json') AS return_json,
        json_extract(j.value, '$.error_json') AS error_json
    FROM json_each(?1) AS j
) AS o
WHERE t.id = o.id AND t.status = 'RUNNING' AND t.lease_token = o.lease_token"
);

/// The ids of a [`COMPLETE_BATCH`] parameter whose row is no longer RUNNING under that lease (taken
/// over by another attempt): asked before the update, as one JSON array.
const STALE_IN_BATCH: &str = "\
SELECT json_group_array(json_extract(j.value, '$.id'))
FROM json_each(?1) AS j
WHERE NOT EXISTS (
    SELECT 1 FROM fasttasks_task AS t
    WHERE t.id = json_extract(j.value, '$.id') AND t.status = 'RUNNING'
        AND t.lease_token = json_extract(j.value, '$.lease_token')
)";

/// One outcome of a [`COMPLETE_BATCH`].
#[derive(Serialize)]
struct CompletionRow<'a> {
    id: &'a str,
    lease_token: i64,
    status: &'static str,
    finished_at: Option<String>,
    retry_at: Option<String>,
    return_json: Option<&'a str>,
    error_json: Option<&'a str>,
}

// One outcome at a time, the fallback when a batch is refused (see `complete`); guarded like PostgreSQL's: only a row still
// RUNNING under the presented lease is written. `json(?)` makes the error an object inside the array
// instead of a string.
const COMPLETE_SUCCESS: &str = "\
UPDATE fasttasks_task
SET status = 'SUCCESSFUL', finished_at = ?3, return_value = ?4, worker_id = NULL, lease_token = NULL
WHERE id = ?1 AND status = 'RUNNING' AND lease_token = ?2";

const COMPLETE_FAILURE: &str = concat!(
    "UPDATE fasttasks_task SET status = 'FAILED', finished_at = ?3, errors = json_insert(",
    json_list!("errors"),
    ", '$[#]', json(?4)), worker_id = NULL, lease_token = NULL
WHERE id = ?1 AND status = 'RUNNING' AND lease_token = ?2"
);

const COMPLETE_RETRY: &str = concat!(
    "UPDATE fasttasks_task SET status = 'READY', available_at = ?3, run_after = ?3, finished_at = NULL, \
     errors = json_insert(",
    json_list!("errors"),
    ", '$[#]', json(?4)), worker_id = NULL, lease_token = NULL
WHERE id = ?1 AND status = 'RUNNING' AND lease_token = ?2"
);

/// Undoes a claim. Right-hand sides see the row before the update, so `attempts <= 1` means "this
/// was the first attempt".
macro_rules! undo_claim {
    () => {
        "UPDATE fasttasks_task
SET status = 'READY',
    attempts = max(attempts - 1, 0),
    worker_ids = json_remove(worker_ids, '$[#-1]'),
    started_at = CASE WHEN attempts <= 1 THEN NULL ELSE started_at END,
    last_attempted_at = CASE WHEN attempts <= 1 THEN NULL ELSE last_attempted_at END,
    worker_id = NULL,
    lease_token = NULL
"
    };
}
const RELEASE: &str = concat!(undo_claim!(), "WHERE id = ?1 AND status = 'RUNNING' AND lease_token = ?2");

/// [`RELEASE`] of every row still held under one claim's lease token.
const RELEASE_LEASE: &str = concat!(undo_claim!(), "WHERE status = 'RUNNING' AND lease_token = ?1");

/// A whole chunk in one static statement with one parameter: a JSON array of [`InsertRow`]s.
const INSERT: &str = "\
INSERT INTO fasttasks_task (id, task_path, queue_name, backend_name, priority, status, args, kwargs,
    run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors)
SELECT json_extract(j.value, '$.id'), json_extract(j.value, '$.task_path'),
    json_extract(j.value, '$.queue_name'), json_extract(j.value, '$.backend_name'),
    json_extract(j.value, '$.priority'), 'READY', json_extract(j.value, '$.args'),
    json_extract(j.value, '$.kwargs'), json_extract(j.value, '$.run_after'),
    json_extract(j.value, '$.available_at'), json_extract(j.value, '$.enqueued_at'), 0,
    json_extract(j.value, '$.max_attempts'), '[]', '[]'
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

const REGISTER_WORKER: &str = "\
INSERT INTO fasttasks_worker (id, backend_name, hostname, pid, started_at, heartbeat_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?5)
ON CONFLICT (id) DO UPDATE SET backend_name = excluded.backend_name, hostname = excluded.hostname,
    pid = excluded.pid, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at";

const HEARTBEAT: &str = "UPDATE fasttasks_worker SET heartbeat_at = ?2 WHERE id = ?1";

/// As on PostgreSQL: taken only if free, expired, or already ours.
const ELECT: &str = "\
INSERT INTO fasttasks_leader (name, worker_id, expires_at) VALUES (?1, ?2, ?4)
ON CONFLICT (name) DO UPDATE SET worker_id = excluded.worker_id, expires_at = excluded.expires_at
WHERE fasttasks_leader.worker_id = excluded.worker_id OR fasttasks_leader.expires_at < ?3";

/// The rows [`RESCUE`] will change and the status each gets, as one JSON array, read first in the same
/// transaction (the write lock is held, so nothing changes in between).
const RESCUE_PLAN: &str = "\
SELECT json_group_array(json_array(t.id, CASE WHEN t.crashes + 1 >= ?3 THEN 'FAILED' ELSE 'READY' END))
FROM fasttasks_task AS t
WHERE t.status = 'RUNNING'
    AND (NOT EXISTS (SELECT 1 FROM fasttasks_worker AS w WHERE w.id = t.worker_id AND w.heartbeat_at >= ?1)
        OR t.worker_id = ?6)";

/// PostgreSQL's rescue, in SQLite's dialect (see postgres.rs).
const RESCUE: &str = concat!(
    "\
UPDATE fasttasks_task
SET status = CASE WHEN crashes + 1 >= ?3 THEN 'FAILED' ELSE 'READY' END,
    finished_at = CASE WHEN crashes + 1 >= ?3 THEN ?2 ELSE NULL END,
    crashes = crashes + 1,
    errors = json_insert(",
    json_list!("errors"),
    ", '$[#]', json_object(
        'exception_class_path', ?4,
        'traceback', ?4 || ': worker ' || COALESCE(worker_id, '(none)')
            || ' stopped sending heartbeats while running attempt ' || attempts || char(10),
        'attempt', attempts,
        'worker_id', worker_id,
        'failed_at', ?5)),
    worker_id = NULL,
    lease_token = NULL
WHERE status = 'RUNNING'
    AND (
        NOT EXISTS (
            SELECT 1 FROM fasttasks_worker AS w
            WHERE w.id = fasttasks_task.worker_id AND w.heartbeat_at >= ?1
        )
        OR worker_id = ?6
    )"
);

/// PostgreSQL's cancel poll, in SQLite's dialect (see postgres.rs).
const CANCEL_REQUESTED: &str = "\
SELECT id FROM fasttasks_task
WHERE worker_id = ?1 AND status = 'RUNNING' AND cancel_requested_at IS NOT NULL";

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: every write of this process goes through it, one at a time.
    pool: SqlitePool,
}

/// Watches `PRAGMA data_version` on a connection of its own. The value changes whenever another
/// connection (another process, or this process's write connection) commits, and never for reads.
///
/// On Linux the waker reads it only when the database's files were written (inotify on their
/// directory: a commit appends to the `-wal` file), so an idle worker makes no query at all and wakes
/// within a millisecond of a commit. Where file events are unavailable (other systems, a file system
/// without inotify), it polls every [`WAKER_POLL`].
pub struct SqliteWaker {
    connection: SqliteConnection,
    /// The last value reported. Kept across calls, so a commit that lands between two waits still
    /// wakes the next one.
    seen: i64,
    file_events: Option<file_events::FileEvents>,
    /// After a file event: keep looking at `data_version` until then (see [`COMMIT_GRACE`]).
    recheck_until: Option<tokio::time::Instant>,
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
            if self.recheck_until.is_some_and(|until| now < until) {
                tokio::time::sleep(COMMIT_RECHECK.min(deadline - now)).await;
                continue;
            }
            self.recheck_until = None;
            match self.file_events.as_mut() {
                // The watch exists before the first look at data_version, so a commit after that look
                // has an event waiting.
                Some(events) => tokio::select! {
                    written = events.next_write() => match written {
                        Ok(()) => self.recheck_until = Some(tokio::time::Instant::now() + COMMIT_GRACE),
                        Err(_) => self.file_events = None, // fall back to polling
                    },
                    _ = tokio::time::sleep_until(deadline) => return Ok(false),
                },
                None => tokio::time::sleep(WAKER_POLL.min(deadline - now)).await,
            }
        }
    }

    /// Whether wake-ups come from file events (false: polling).
    pub fn uses_file_events(&self) -> bool {
        self.file_events.is_some()
    }
}

#[cfg(target_os = "linux")]
mod file_events {
    use std::ffi::OsString;
    use std::path::Path;

    use futures_util::{FutureExt, StreamExt};
    use inotify::{EventStream, Inotify, WatchMask};

    /// Writes to one SQLite database's files (the database and its `-wal`), from inotify.
    pub struct FileEvents {
        stream: EventStream<Vec<u8>>,
        names: [OsString; 2],
    }

    impl FileEvents {
        /// Watches the directory rather than the files: SQLite deletes and recreates the `-wal` file.
        pub fn watch(database: &Path) -> std::io::Result<Self> {
            let name = database.file_name().ok_or(std::io::ErrorKind::InvalidInput)?.to_owned();
            let directory = match database.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            let inotify = Inotify::init()?;
            inotify.watches().add(
                directory,
                WatchMask::MODIFY | WatchMask::CLOSE_WRITE | WatchMask::CREATE | WatchMask::MOVED_TO,
            )?;
            let mut wal = name.clone();
            wal.push("-wal");
            Ok(Self { stream: inotify.into_event_stream(vec![0; 4096])?, names: [name, wal] })
        }

        /// Waits for a write to the database or its WAL, then takes every event already queued, so a
        /// burst (our own completions while we were busy) costs one look at `data_version`, not one
        /// per event. An error (or the end of the stream) means: stop using file events.
        pub async fn next_write(&mut self) -> std::io::Result<()> {
            loop {
                let next = self.stream.next().await;
                let mut relevant = self.is_relevant(next)?;
                while let Some(queued) = self.stream.next().now_or_never() {
                    relevant |= self.is_relevant(queued)?;
                }
                if relevant {
                    return Ok(());
                }
            }
        }

        fn is_relevant(
            &self,
            event: Option<std::io::Result<inotify::Event<OsString>>>,
        ) -> std::io::Result<bool> {
            let event = event.ok_or(std::io::ErrorKind::UnexpectedEof)??;
            // A queue overflow lost events: treat it as a write, the caller looks at data_version.
            Ok(event.mask.contains(inotify::EventMask::Q_OVERFLOW)
                || event.name.is_some_and(|name| self.names.contains(&name)))
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod file_events {
    /// No file events here: the waker polls.
    pub struct FileEvents;

    impl FileEvents {
        pub fn watch(_database: &std::path::Path) -> std::io::Result<Self> {
            Err(std::io::ErrorKind::Unsupported.into())
        }

        pub async fn next_write(&mut self) -> std::io::Result<()> {
            std::future::pending().await
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
                let claimed = query.execute(&mut **tx).await?.rows_affected();
                if claimed == 0 {
                    return Ok(Vec::new());
                }
                claim_rows(tx, request).await
            })
            .await?;
        // Sorting on the stored text is exactly SQLite's `ORDER BY` (binary collation).
        super::sort_in_claim_order(&mut jobs);
        Ok(jobs.into_iter().map(|(job, _)| job).collect())
    }

    pub async fn complete(&self, outcomes: &[Outcome]) -> Result<CompletionReport> {
        let writes: Vec<OutcomeWrite<'_>> = outcomes.iter().map(OutcomeWrite::plan).collect();
        let rows: Vec<CompletionRow<'_>> = writes
            .iter()
            .map(|write| CompletionRow {
                id: write.id,
                lease_token: write.lease_token,
                status: write.status,
                finished_at: write.finished_at.map(to_sqlite_text),
                retry_at: write.retry_at.map(to_sqlite_text),
                return_json: write.return_json.as_deref(),
                error_json: write.error_json.as_deref(),
            })
            .collect();
        let batch = serde_json::to_string(&rows).expect("strings and numbers serialize");
        self.write(async |tx| {
            let stale: String = sqlx::query_scalar(STALE_IN_BATCH).bind(&batch).fetch_one(&mut **tx).await?;
            let stale: Vec<String> = serde_json::from_str(&stale).unwrap_or_default();
            match sqlx::query(COMPLETE_BATCH).bind(&batch).execute(&mut **tx).await {
                Ok(done) => return Ok(CompletionReport { applied: done.rows_affected(), stale }),
                Err(error) if is_data_error(&error) => {}
                Err(error) => return Err(error.into()),
            }
            // The database refused a value of the batch (the JSON texts were checked, so this is rare,
            // e.g. a CHECK added by hand). A failed statement inside a transaction undoes only itself in
            // SQLite, so write one outcome at a time, replacing just the refused one; if even the
            // replacement fails, the error is not about the value and the whole batch is rolled back.
            let mut report = CompletionReport::default();
            for write in &writes {
                let applied = match complete_one(tx, write).await {
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

    pub async fn release_leases(&self, lease_tokens: &[i64]) -> Result<u64> {
        self.write(async |tx| {
            let mut released = 0;
            for lease_token in lease_tokens {
                released +=
                    sqlx::query(RELEASE_LEASE).bind(*lease_token).execute(&mut **tx).await?.rows_affected();
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

    pub async fn register_worker(&self, worker: &WorkerRegistration<'_>) -> Result<()> {
        self.write(async |tx| register_on(tx, worker).await).await
    }

    pub async fn heartbeat(&self, worker_id: &str, now: Timestamp) -> Result<bool> {
        self.write(async |tx| heartbeat_on(tx, worker_id, now).await).await
    }

    pub async fn deregister_worker(&self, worker_id: &str) -> Result<()> {
        self.write(async |tx| {
            sqlx::query("DELETE FROM fasttasks_worker WHERE id = ?1")
                .bind(worker_id)
                .execute(&mut **tx)
                .await?;
            sqlx::query("DELETE FROM fasttasks_leader WHERE worker_id = ?1")
                .bind(worker_id)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn elect(&self, lease: &LeaderLease<'_>) -> Result<bool> {
        self.write(async |tx| elect_on(tx, lease).await).await
    }

    pub async fn rescue(&self, request: &RescueRequest<'_>) -> Result<RescueReport> {
        self.write(async |tx| rescue_on(tx, request).await).await
    }

    pub async fn maintenance_round(&self, round: &MaintenanceRound<'_>) -> Result<RoundReport> {
        self.write(async |tx| {
            let was_registered = heartbeat_on(tx, round.worker.worker_id, round.worker.now).await?;
            if !was_registered {
                register_on(tx, &round.worker).await?;
            }
            let leader = elect_on(tx, &round.lease).await?;
            let rescue = if leader { Some(rescue_on(tx, &round.rescue).await?) } else { None };
            let cancel_requested = sqlx::query_scalar(CANCEL_REQUESTED)
                .bind(round.worker.worker_id)
                .fetch_all(&mut **tx)
                .await?;
            Ok(RoundReport { was_registered, leader, rescue, cancel_requested })
        })
        .await
    }

    pub async fn waker(&self) -> Result<SqliteWaker> {
        // Not from the pool: its one connection is for writes, and data_version only reports commits
        // of *other* connections.
        let options = self.pool.connect_options();
        // Watch first, then read the version: a commit in between is seen by one or the other.
        let file_events = file_events::FileEvents::watch(options.get_filename()).ok();
        let mut connection = SqliteConnection::connect_with(&options).await?;
        let seen = data_version(&mut connection).await?;
        Ok(SqliteWaker { connection, seen, file_events, recheck_until: None })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn register_on(tx: &mut Transaction<'_, Sqlite>, worker: &WorkerRegistration<'_>) -> Result<()> {
    sqlx::query(REGISTER_WORKER)
        .bind(worker.worker_id)
        .bind(worker.backend_name)
        .bind(worker.hostname)
        .bind(i64::from(worker.pid))
        .bind(to_sqlite_text(worker.now))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn heartbeat_on(tx: &mut Transaction<'_, Sqlite>, worker_id: &str, now: Timestamp) -> Result<bool> {
    let result = sqlx::query(HEARTBEAT).bind(worker_id).bind(to_sqlite_text(now)).execute(&mut **tx).await?;
    Ok(result.rows_affected() == 1)
}

async fn elect_on(tx: &mut Transaction<'_, Sqlite>, lease: &LeaderLease<'_>) -> Result<bool> {
    let result = sqlx::query(ELECT)
        .bind(lease.name)
        .bind(lease.worker_id)
        .bind(to_sqlite_text(lease.now))
        .bind(to_sqlite_text(lease.expires_at))
        .execute(&mut **tx)
        .await?;
    Ok(result.rows_affected() == 1)
}

async fn rescue_on(tx: &mut Transaction<'_, Sqlite>, request: &RescueRequest<'_>) -> Result<RescueReport> {
    let alive_since = to_sqlite_text(request.alive_since);
    let now = to_sqlite_text(request.now);
    let failed_at = request.now.to_rfc3339();
    let plan: String = sqlx::query_scalar(RESCUE_PLAN)
        .bind(&alive_since)
        .bind(&now)
        .bind(request.max_crashes)
        .bind(WORKER_CRASHED_CLASS)
        .bind(&failed_at)
        .bind(request.previous_incarnation)
        .fetch_one(&mut **tx)
        .await?;
    let plan: Vec<(String, String)> = serde_json::from_str(&plan)
        .map_err(|error| Error::CorruptRow { id: String::new(), reason: format!("rescue plan: {error}") })?;
    if !plan.is_empty() {
        sqlx::query(RESCUE)
            .bind(&alive_since)
            .bind(&now)
            .bind(request.max_crashes)
            .bind(WORKER_CRASHED_CLASS)
            .bind(&failed_at)
            .bind(request.previous_incarnation)
            .execute(&mut **tx)
            .await?;
    }
    let dead_workers = sqlx::query("DELETE FROM fasttasks_worker WHERE heartbeat_at < ?1")
        .bind(&alive_since)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    let mut report = RescueReport { dead_workers, ..RescueReport::default() };
    for (id, status) in plan {
        if status == "FAILED" { report.failed.push(id) } else { report.requeued.push(id) }
    }
    Ok(report)
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

/// Reads back the rows this claim took, in the claim's transaction. The usual way is one query and one
/// decoding for all ([`CLAIMED_ROWS`]). A row edited by hand can break both (SQLite's JSON functions
/// refuse a BLOB; bytes that are not UTF-8 or a priority that is not an integer do not decode); then
/// the rows are read one by one, and each one that cannot be read ends FAILED here, by `rowid` and
/// under the claim's lease, with the reason. The others are claimed as usual.
async fn claim_rows(
    tx: &mut Transaction<'_, Sqlite>,
    request: &ClaimRequest<'_>,
) -> Result<Vec<(ClaimedJob, String)>> {
    let all: Result<Vec<u8>, sqlx::Error> = sqlx::query_scalar(CLAIMED_ROWS)
        .bind(request.worker_id)
        .bind(request.lease_token)
        .fetch_one(&mut **tx)
        .await;
    match all {
        Ok(bytes) => {
            if let Ok(rows) = serde_json::from_slice::<Vec<ClaimedRow>>(&bytes) {
                return Ok(rows.into_iter().map(|row| claimed_job(row, request)).collect());
            }
        }
        Err(error) if is_data_error(&error) => {}
        Err(error) => return Err(error.into()),
    }
    let rowids: Vec<i64> = sqlx::query_scalar(CLAIMED_ROWIDS)
        .bind(request.worker_id)
        .bind(request.lease_token)
        .fetch_all(&mut **tx)
        .await?;
    let mut jobs = Vec::with_capacity(rowids.len());
    for rowid in rowids {
        let row: Result<Vec<u8>, sqlx::Error> =
            sqlx::query_scalar(CLAIMED_ROW).bind(rowid).fetch_one(&mut **tx).await;
        let decoded = match row {
            Ok(bytes) => serde_json::from_slice::<ClaimedRow>(&bytes).map_err(|error| error.to_string()),
            Err(error) if is_data_error(&error) => Err(error.to_string()),
            Err(error) => return Err(error.into()),
        };
        match decoded {
            Ok(row) => jobs.push(claimed_job(row, request)),
            Err(error) => fail_unreadable(tx, rowid, request, &error).await?,
        }
    }
    Ok(jobs)
}

/// Ends the claimed row `rowid`, which cannot be read (`error`: why decoding failed), FAILED with an
/// error entry naming what it holds.
async fn fail_unreadable(
    tx: &mut Transaction<'_, Sqlite>,
    rowid: i64,
    request: &ClaimRequest<'_>,
    error: &str,
) -> Result<()> {
    let row = sqlx::query(UNREADABLE_ROW).bind(rowid).fetch_one(&mut **tx).await?;
    let (id, reason, attempt) = unreadable_reason(&row)?;
    let reason = reason.unwrap_or_else(|| format!("the worker cannot read it ({error})"));
    let error_json = crate::job::corrupt_row_error(&id, &reason, attempt, request.worker_id, request.now);
    sqlx::query(FAIL_UNREADABLE)
        .bind(rowid)
        .bind(request.lease_token)
        .bind(to_sqlite_text(request.now))
        .bind(error_json)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// From an [`UNREADABLE_ROW`] row: the id (as far as it is text), what is wrong with the row (`None`
/// if nothing is found), and the attempt.
fn unreadable_reason(row: &sqlx::sqlite::SqliteRow) -> Result<(String, Option<String>, Option<i64>)> {
    use sqlx::Row;
    let mut problems = Vec::new();
    let mut id = String::new();
    for (index, (column, must_be_text)) in UNREADABLE_COLUMNS.iter().enumerate() {
        let kind: String = row.try_get(2 * index)?;
        let bytes: Option<Vec<u8>> = row.try_get(2 * index + 1)?;
        let bytes = bytes.unwrap_or_default();
        if index == 0 {
            id = String::from_utf8_lossy(&bytes).into_owned();
        }
        if *must_be_text && kind == "blob" {
            problems.push(format!("{column} holds a BLOB ({} bytes), not text", bytes.len()));
        } else if std::str::from_utf8(&bytes).is_err() {
            problems.push(format!("{column} holds text that is not valid UTF-8"));
        }
    }
    let numbers = 2 * UNREADABLE_COLUMNS.len();
    for (offset, column) in ["priority", "max_attempts"].into_iter().enumerate() {
        let kind: String = row.try_get(numbers + offset)?;
        if kind != "integer" {
            problems.push(format!("{column} holds a {kind} value, not an integer"));
        }
    }
    let attempt: Option<i64> = row.try_get(numbers + 2)?;
    let reason = (!problems.is_empty()).then(|| format!("column {}", problems.join("; column ")));
    Ok((id, reason, attempt))
}

/// The job and its `available_at` text (the sort key). A missing text column (a row edited by hand)
/// becomes JSON `null`, which the runner reports as a corrupt row, failing only that task. Numbers
/// beyond `i32` saturate (an out-of-range priority then fails Django's validation, clearly).
fn claimed_job(row: ClaimedRow, request: &ClaimRequest<'_>) -> (ClaimedJob, String) {
    let (id, task_path, queue_name, backend_name, priority, args, kwargs) =
        (row.0, row.1, row.2, row.3, row.4, row.5, row.6);
    let (run_after, enqueued_at, started_at, attempts, max_attempts, worker_ids, available_at) =
        (row.7, row.8, row.9, row.10, row.11, row.12, row.13);
    let crashes = row.14;
    let timestamp = |text: Option<String>| text.as_deref().and_then(from_sqlite_text).filter(in_job_range);
    let small = |number: Option<i64>| {
        number.map_or(0, |n| i32::try_from(n).unwrap_or(if n < 0 { i32::MIN } else { i32::MAX }))
    };
    let job = ClaimedJob {
        id,
        task_path: task_path.unwrap_or_default(),
        queue_name: queue_name.unwrap_or_default(),
        backend_name: backend_name.unwrap_or_default(),
        priority: small(priority),
        args_json: args.unwrap_or_else(|| "null".to_owned()),
        kwargs_json: kwargs.unwrap_or_else(|| "null".to_owned()),
        run_after: timestamp(run_after),
        enqueued_at: timestamp(enqueued_at).unwrap_or(request.now),
        started_at: timestamp(started_at).unwrap_or(request.now),
        // This claim wrote it.
        last_attempted_at: request.now,
        attempt: small(attempts),
        max_attempts: small(max_attempts),
        crashes: small(crashes),
        worker_ids_json: worker_ids.unwrap_or_else(|| "[]".to_owned()),
        lease_token: request.lease_token,
    };
    (job, available_at.unwrap_or_default())
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
