//! The PostgreSQL store. Every hot path is one statement: a claim is a `FOR UPDATE SKIP LOCKED` CTE
//! feeding an `UPDATE … RETURNING`, a completion batch is one `UPDATE … FROM UNNEST(arrays)`. All values
//! are bound parameters; the SQL texts are static, so each is prepared once per connection and cached.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow, PgSslMode, PgValueFormat,
};
use sqlx::{Decode, Row, ValueRef};

use super::{
    ClaimRequest, CompletionReport, LeaderLease, MaintenanceRound, NOTIFY_CHANNEL, OutcomeWrite,
    RescueReport, RescueRequest, RoundReport, WORKER_CRASHED_CLASS, WorkerRegistration,
};
use crate::config::{DatabaseConfig, Dialect, QueueFilter};
use crate::job::{ClaimedJob, NewJob, Outcome, OutcomeKind, corrupt_row_error, in_job_range};
use crate::time::Timestamp;
use crate::{Error, Result};

/// One worker runs a producer, a completer and the maintenance services at once; more connections
/// than that only add idle backends on the server.
const MAX_CONNECTIONS: u32 = 4;

/// Rows per insert statement: keeps one statement's arrays at a few megabytes.
const INSERT_CHUNK: usize = 5_000;

/// libpq connection parameters that only configure the client side. Passing them to the server as
/// runtime parameters would make it refuse the connection, and sqlx has no equivalent, so they are
/// ignored. Also Django's own `OPTIONS` keys for psycopg, in case the caller forwards them unfiltered.
const CLIENT_ONLY_OPTIONS: &[&str] = &[
    "channel_binding",
    "client_encoding",
    "gssencmode",
    "gsslib",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "krbsrvname",
    "load_balance_hosts",
    "passfile",
    "require_auth",
    "requirepeer",
    "service",
    "sslcompression",
    "sslcrl",
    "sslcrldir",
    "sslpassword",
    "sslsni",
    "ssl_max_protocol_version",
    "ssl_min_protocol_version",
    "target_session_attrs",
    "tcp_user_timeout",
    // Django / psycopg-level settings, not libpq ones.
    "assume_role",
    "cursor_factory",
    "isolation_level",
    "pool",
    "server_side_binding",
];

/// Run once on each of the store's connections (used only for the statements in this file).
///
/// The claim must walk `fasttasks_task_ready_idx` in order and stop after `LIMIT` rows. Without table
/// statistics (a fresh table after a burst of inserts, or autovacuum off) the planner instead picks a
/// bitmap scan of every READY row plus a sort: measured 24 ms per claim at 25,000 READY rows instead of
/// well under 1 ms, a 10x lower drain rate. A plain index scan is also the path that marks dead index
/// entries as killed, which bitmap scans never do. Completion and release join on the primary key and
/// need neither. Session settings; behind a transaction-pooling PgBouncer they may not stick, and then
/// the plan depends on statistics again (autovacuum's ANALYZE).
const PLANNER_SETTINGS: &str = "SET enable_bitmapscan = off; SET enable_sort = off";

/// Claims from every queue of the backend. The literal `'READY'` matches the predicate of the partial
/// index `fasttasks_task_ready_idx`, whose order is the `ORDER BY`, so the scan stops after `LIMIT` rows.
/// `LEAST` keeps a row whose `attempts` was set to the integer limit by hand from overflowing, which
/// would fail the whole statement on every claim and stop the queue.
const CLAIM_ALL_QUEUES: &str = "\
WITH picked AS (
    SELECT id FROM fasttasks_task
    WHERE status = 'READY' AND available_at <= $1 AND backend_name = $2
    ORDER BY priority DESC, available_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE fasttasks_task AS t
SET status = 'RUNNING',
    attempts = LEAST(t.attempts, 2147483646) + 1,
    started_at = COALESCE(t.started_at, $1),
    last_attempted_at = $1,
    worker_ids = t.worker_ids || jsonb_build_array($4::text),
    worker_id = $4,
    lease_token = $5
FROM picked
WHERE t.id = picked.id
RETURNING t.id, t.task_path, t.queue_name, t.backend_name, t.priority, t.args::text AS args,
    t.kwargs::text AS kwargs, t.run_after, t.enqueued_at, t.started_at, t.last_attempted_at,
    t.attempts, t.max_attempts, t.crashes, t.worker_ids::text AS worker_ids, t.available_at";

/// The same with a queue filter. A separate text (not `$6 IS NULL OR …`) so each variant gets a plan
/// made for it.
const CLAIM_SOME_QUEUES: &str = "\
WITH picked AS (
    SELECT id FROM fasttasks_task
    WHERE status = 'READY' AND available_at <= $1 AND backend_name = $2 AND queue_name = ANY($6::text[])
    ORDER BY priority DESC, available_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE fasttasks_task AS t
SET status = 'RUNNING',
    attempts = LEAST(t.attempts, 2147483646) + 1,
    started_at = COALESCE(t.started_at, $1),
    last_attempted_at = $1,
    worker_ids = t.worker_ids || jsonb_build_array($4::text),
    worker_id = $4,
    lease_token = $5
FROM picked
WHERE t.id = picked.id
RETURNING t.id, t.task_path, t.queue_name, t.backend_name, t.priority, t.args::text AS args,
    t.kwargs::text AS kwargs, t.run_after, t.enqueued_at, t.started_at, t.last_attempted_at,
    t.attempts, t.max_attempts, t.crashes, t.worker_ids::text AS worker_ids, t.available_at";

/// One statement for a whole batch of outcomes. The guard (the same lease) makes a completion from a
/// worker whose attempt was taken away a no-op; `RETURNING` tells which ones applied.
///
/// The guard is the lease token alone, not `status = 'RUNNING'` too: a lease is set only by a claim and
/// cleared whenever a row leaves RUNNING, so it is the same fence; and a `status = 'RUNNING'` qual lets
/// the planner (without statistics) pick the partial running index, which fills with dead entries of
/// finished rows until vacuum runs, making every completion scan all of them (measured: 40,000 tasks at
/// concurrency 128 took 173 s instead of 4 s). Matching on `id` leaves it the primary key.
/// A retry (status READY) leaves `finished_at` NULL and defers the task to the retry time: `available_at`
/// (the queue's) and `run_after` (what Django's result shows).
const COMPLETE: &str = "\
UPDATE fasttasks_task AS t
SET status = v.status,
    finished_at = v.finished_at,
    available_at = COALESCE(v.retry_at, t.available_at),
    run_after = COALESCE(v.retry_at, t.run_after),
    return_value = CASE WHEN v.status = 'SUCCESSFUL' THEN v.return_value::jsonb ELSE t.return_value END,
    errors = CASE WHEN v.error IS NULL THEN t.errors ELSE t.errors || jsonb_build_array(v.error::jsonb) END,
    worker_id = NULL,
    lease_token = NULL
FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[])
    AS v(id, lease, status, return_value, error, finished_at, retry_at)
WHERE t.id = v.id AND t.lease_token = v.lease
RETURNING t.id, v.lease";

/// Undoes a claim: READY again, the attempt and its worker id taken back. `SET` expressions see the
/// row before the update, so `t.attempts <= 1` means "this was the first attempt".
macro_rules! undo_claim {
    () => {
        "UPDATE fasttasks_task AS t
SET status = 'READY',
    attempts = GREATEST(t.attempts - 1, 0),
    worker_ids = t.worker_ids - (-1),
    started_at = CASE WHEN t.attempts <= 1 THEN NULL ELSE t.started_at END,
    last_attempted_at = CASE WHEN t.attempts <= 1 THEN NULL ELSE t.last_attempted_at END,
    worker_id = NULL,
    lease_token = NULL
"
    };
}
const RELEASE: &str = concat!(
    undo_claim!(),
    "FROM UNNEST($1::text[], $2::int8[]) AS v(id, lease)
WHERE t.id = v.id AND t.lease_token = v.lease"
);

/// [`RELEASE`] of every row still held under some claims' lease tokens.
const RELEASE_LEASES: &str =
    concat!(undo_claim!(), "WHERE t.status = 'RUNNING' AND t.lease_token = ANY($1::int8[])");

/// Writes every column Django's enqueue writes, so rows look the same whoever inserted them.
const INSERT: &str = "\
INSERT INTO fasttasks_task (id, task_path, queue_name, backend_name, priority, status, args, kwargs,
    run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors)
SELECT v.id, v.task_path, v.queue_name, v.backend_name, v.priority, 'READY', v.args::jsonb, v.kwargs::jsonb,
    v.run_after, COALESCE(v.run_after, v.enqueued_at), v.enqueued_at, 0, v.max_attempts, '[]', '[]'
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::text[], $7::text[],
    $8::timestamptz[], $9::timestamptz[], $10::int4[])
    AS v(id, task_path, queue_name, backend_name, priority, args, kwargs, run_after, enqueued_at, max_attempts)";

const REGISTER_WORKER: &str = "\
INSERT INTO fasttasks_worker (id, backend_name, hostname, pid, started_at, heartbeat_at)
VALUES ($1, $2, $3, $4, $5, $5)
ON CONFLICT (id) DO UPDATE SET backend_name = EXCLUDED.backend_name, hostname = EXCLUDED.hostname,
    pid = EXCLUDED.pid, started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at";

const HEARTBEAT: &str = "UPDATE fasttasks_worker SET heartbeat_at = $2 WHERE id = $1";

/// The row is taken only if it is free, expired, or already ours: two workers cannot both get it.
const ELECT: &str = "\
INSERT INTO fasttasks_leader (name, worker_id, expires_at) VALUES ($1, $2, $4)
ON CONFLICT (name) DO UPDATE SET worker_id = EXCLUDED.worker_id, expires_at = EXCLUDED.expires_at
WHERE fasttasks_leader.worker_id = EXCLUDED.worker_id OR fasttasks_leader.expires_at < $3";

/// RUNNING rows whose worker has no heartbeat since `$1` go back to READY (available at `$2`), or end
/// FAILED on their `$3`-th crash; either way the crash is counted and an error entry names the dead
/// worker. Rows another rescuer is handling are skipped (`SKIP LOCKED`). The anti-join runs on the
/// running index. `LEAST`: a `crashes` set to the integer limit by hand must not overflow, which would
/// fail every rescue round.
const RESCUE: &str = "\
WITH lost AS (
    SELECT t.id FROM fasttasks_task AS t
    WHERE t.status = 'RUNNING'
        AND (
            NOT EXISTS (SELECT 1 FROM fasttasks_worker AS w WHERE w.id = t.worker_id AND w.heartbeat_at >= $1)
            OR t.worker_id = $6
        )
    FOR UPDATE OF t SKIP LOCKED
)
UPDATE fasttasks_task AS t
SET status = CASE WHEN LEAST(t.crashes, 2147483646) + 1 >= $3 THEN 'FAILED' ELSE 'READY' END,
    crashes = LEAST(t.crashes, 2147483646) + 1,
    finished_at = CASE WHEN LEAST(t.crashes, 2147483646) + 1 >= $3 THEN $2 ELSE NULL END,
    errors = t.errors || jsonb_build_array(jsonb_build_object(
        'exception_class_path', $4::text,
        'traceback', $4::text || ': worker ' || COALESCE(t.worker_id, '(none)')
            || ' stopped sending heartbeats while running attempt ' || t.attempts || E'\\n',
        'attempt', t.attempts,
        'worker_id', t.worker_id,
        'failed_at', $5::text)),
    worker_id = NULL,
    lease_token = NULL
FROM lost
WHERE t.id = lost.id
RETURNING t.id, t.status";

/// This worker's RUNNING tasks whose cancellation was asked for (through the running index).
const CANCEL_REQUESTED: &str = "\
SELECT id FROM fasttasks_task
WHERE worker_id = $1 AND status = 'RUNNING' AND cancel_requested_at IS NOT NULL";

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

/// LISTENs on [`NOTIFY_CHANNEL`] over a connection of its own (not one of the store's pool, which
/// it would hold forever).
pub struct PostgresWaker {
    listener: PgListener,
}

impl PostgresWaker {
    pub async fn wait(&mut self, timeout: Duration) -> Result<bool> {
        // `try_recv` is cancel-safe (it only consumes whole messages), so the timeout loses nothing:
        // a notification arriving later stays buffered for the next call.
        match tokio::time::timeout(timeout, self.listener.try_recv()).await {
            Err(_elapsed) => Ok(false),
            Ok(Err(error)) => Err(error.into()),
            // The connection broke and the listener re-established it (LISTEN included). Whatever
            // was notified in between is lost, so report "maybe new work" rather than nothing.
            Ok(Ok(None)) => Ok(true),
            Ok(Ok(Some(_))) => {
                // A burst of enqueues is one wake-up: consume what already arrived without waiting
                // (a zero timeout still polls the receive once). An error here surfaces next call.
                loop {
                    let next = tokio::time::timeout(Duration::ZERO, self.listener.try_recv()).await;
                    if !matches!(next, Ok(Ok(Some(_)))) {
                        break;
                    }
                }
                Ok(true)
            }
        }
    }
}

impl PostgresStore {
    pub async fn connect(config: &DatabaseConfig) -> Result<Self> {
        let (options, acquire_timeout) = connect_options(config)?;
        let mut pool_options = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            // No ping round trip before every claim and completion: a dead connection makes that one
            // statement fail, sqlx discards the connection, and the worker retries with backoff.
            .test_before_acquire(false)
            .after_connect(|connection, _| {
                Box::pin(async move {
                    sqlx::raw_sql(PLANNER_SETTINGS).execute(connection).await?;
                    Ok(())
                })
            });
        if let Some(timeout) = acquire_timeout {
            pool_options = pool_options.acquire_timeout(timeout);
        }
        let pool = pool_options.connect_with(options).await?;
        Ok(Self { pool })
    }

    pub async fn install_schema(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Schema-aware: `to_regclass` resolves through `search_path`, like the statements below.
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('fasttasks_task') IS NOT NULL")
            .fetch_one(&mut *tx)
            .await?;
        if exists {
            return Ok(());
        }
        for statement in crate::schema::schema_statements(Dialect::Postgres) {
            // The statements come from the crate's own embedded SQL files, not from input.
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes the rows only. Unlike Django's enqueue it sends no NOTIFY: notifications are per database,
    /// not per schema, so test inserts would wake every other test's listener. A caller that wants a
    /// listening worker woken sends `pg_notify('fasttasks', queue)` itself.
    pub async fn insert(&self, jobs: &[NewJob]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in jobs.chunks(INSERT_CHUNK) {
            sqlx::query(INSERT)
                .bind(column(chunk, |j| j.id.as_str()))
                .bind(column(chunk, |j| j.task_path.as_str()))
                .bind(column(chunk, |j| j.queue_name.as_str()))
                .bind(column(chunk, |j| j.backend_name.as_str()))
                .bind(column(chunk, |j| j.priority))
                .bind(column(chunk, |j| j.args_json.as_str()))
                .bind(column(chunk, |j| j.kwargs_json.as_str()))
                .bind(column(chunk, |j| j.run_after))
                .bind(column(chunk, |j| j.enqueued_at))
                .bind(column(chunk, |j| j.max_attempts))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<ClaimedJob>> {
        let Some(query) = claim_query(request) else {
            return Ok(Vec::new());
        };
        let rows = query.fetch_all(&self.pool).await?;
        // Each row on its own: one that cannot be decoded must neither fail the claim (the others are
        // RUNNING under our lease already, and nobody would run them) nor stay RUNNING itself.
        let mut jobs = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for row in &rows {
            match claimed_job(row, request) {
                Ok(job) => jobs.push(job),
                Err(error) => unreadable.push(unreadable_row(row, request, &error)),
            }
        }
        if !unreadable.is_empty() {
            // A failure like any other, fenced by this claim's lease. If even that write fails (the
            // connection broke), the decoded jobs are still returned, or they would be stranded too;
            // the unreadable rows then stay RUNNING until this worker exits and the rescue takes them.
            let _ = self.complete(&unreadable).await;
        }
        super::sort_in_claim_order(&mut jobs);
        Ok(jobs.into_iter().map(|(job, _)| job).collect())
    }

    /// The plan PostgreSQL chooses for this claim (`EXPLAIN` of the exact statement and parameters
    /// [`claim`](Self::claim) runs; nothing is executed). For the test that the ready index is used.
    #[doc(hidden)]
    pub async fn explain_claim(&self, request: &ClaimRequest<'_>) -> Result<String> {
        let sql = match request.queues {
            QueueFilter::All => CLAIM_ALL_QUEUES,
            QueueFilter::Only(_) => CLAIM_SOME_QUEUES,
        };
        let explain = format!("EXPLAIN {sql}");
        let query = bind_claim(sqlx::query(sqlx::AssertSqlSafe(explain)).persistent(false), request);
        let lines: Vec<String> = query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        Ok(lines.join("\n"))
    }

    pub async fn complete(&self, outcomes: &[Outcome]) -> Result<CompletionReport> {
        let writes: Vec<OutcomeWrite<'_>> = outcomes.iter().map(OutcomeWrite::plan).collect();
        match self.complete_writes(&writes).await {
            Err(Error::Database(error)) if is_data_error(&error) => {
                // The server refused a value the JSON check let through (e.g. `\u0000`, which `jsonb`
                // cannot hold). The statement changed nothing, so write the outcomes one by one and
                // replace only the refused ones; the rest of the batch is not held hostage.
                let mut report = CompletionReport::default();
                for write in writes {
                    let single = match self.complete_writes(std::slice::from_ref(&write)).await {
                        Err(Error::Database(error)) if is_data_error(&error) => {
                            let refused = write.refused(&error.to_string());
                            self.complete_writes(std::slice::from_ref(&refused)).await?
                        }
                        other => other?,
                    };
                    report.applied += single.applied;
                    report.stale.extend(single.stale);
                }
                Ok(report)
            }
            other => other,
        }
    }

    async fn complete_writes(&self, writes: &[OutcomeWrite<'_>]) -> Result<CompletionReport> {
        let rows = sqlx::query(COMPLETE)
            .bind(column(writes, |w| w.id))
            .bind(column(writes, |w| w.lease_token))
            .bind(column(writes, |w| w.status))
            .bind(column(writes, |w| w.return_json.as_deref()))
            .bind(column(writes, |w| w.error_json.as_deref()))
            .bind(column(writes, |w| w.finished_at))
            .bind(column(writes, |w| w.retry_at))
            .fetch_all(&self.pool)
            .await?;
        let applied: HashSet<(String, i64)> = rows
            .iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("lease")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let stale = writes
            .iter()
            .filter(|w| !applied.contains(&(w.id.to_owned(), w.lease_token)))
            .map(|w| w.id.to_owned())
            .collect();
        Ok(CompletionReport { applied: rows.len() as u64, stale })
    }

    pub async fn release(&self, claims: &[(String, i64)]) -> Result<u64> {
        let result = sqlx::query(RELEASE)
            .bind(column(claims, |(id, _)| id.as_str()))
            .bind(column(claims, |(_, lease)| *lease))
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    pub async fn release_leases(&self, lease_tokens: &[i64]) -> Result<u64> {
        let result = sqlx::query(RELEASE_LEASES).bind(lease_tokens).execute(&self.pool).await?;
        Ok(result.rows_affected())
    }

    pub async fn register_worker(&self, worker: &WorkerRegistration<'_>) -> Result<()> {
        register_on(&mut *self.pool.acquire().await?, worker).await
    }

    pub async fn heartbeat(&self, worker_id: &str, now: Timestamp) -> Result<bool> {
        heartbeat_on(&mut *self.pool.acquire().await?, worker_id, now).await
    }

    pub async fn deregister_worker(&self, worker_id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM fasttasks_worker WHERE id = $1").bind(worker_id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM fasttasks_leader WHERE worker_id = $1")
            .bind(worker_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn elect(&self, lease: &LeaderLease<'_>) -> Result<bool> {
        elect_on(&mut *self.pool.acquire().await?, lease).await
    }

    pub async fn rescue(&self, request: &RescueRequest<'_>) -> Result<RescueReport> {
        let mut tx = self.pool.begin().await?;
        let report = rescue_on(&mut tx, request).await?;
        tx.commit().await?;
        Ok(report)
    }

    pub async fn maintenance_round(&self, round: &MaintenanceRound<'_>) -> Result<RoundReport> {
        let mut tx = self.pool.begin().await?;
        let was_registered = heartbeat_on(&mut tx, round.worker.worker_id, round.worker.now).await?;
        if !was_registered {
            register_on(&mut tx, &round.worker).await?;
        }
        let leader = elect_on(&mut tx, &round.lease).await?;
        let rescue = if leader { Some(rescue_on(&mut tx, &round.rescue).await?) } else { None };
        let cancel_requested =
            sqlx::query_scalar(CANCEL_REQUESTED).bind(round.worker.worker_id).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(RoundReport { was_registered, leader, rescue, cancel_requested })
    }

    pub async fn waker(&self) -> Result<PostgresWaker> {
        // A pool of one, used only to (re)connect the listener; the listener keeps its connection for
        // good, so lifetimes and idle timeouts must not apply.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with((*self.pool.connect_options()).clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        Ok(PostgresWaker { listener })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn register_on(connection: &mut PgConnection, worker: &WorkerRegistration<'_>) -> Result<()> {
    sqlx::query(REGISTER_WORKER)
        .bind(worker.worker_id)
        .bind(worker.backend_name)
        .bind(worker.hostname)
        .bind(i32::try_from(worker.pid).unwrap_or(i32::MAX))
        .bind(worker.now)
        .execute(connection)
        .await?;
    Ok(())
}

async fn heartbeat_on(connection: &mut PgConnection, worker_id: &str, now: Timestamp) -> Result<bool> {
    let result = sqlx::query(HEARTBEAT).bind(worker_id).bind(now).execute(connection).await?;
    Ok(result.rows_affected() == 1)
}

async fn elect_on(connection: &mut PgConnection, lease: &LeaderLease<'_>) -> Result<bool> {
    let result = sqlx::query(ELECT)
        .bind(lease.name)
        .bind(lease.worker_id)
        .bind(lease.now)
        .bind(lease.expires_at)
        .execute(connection)
        .await?;
    Ok(result.rows_affected() == 1)
}

async fn rescue_on(connection: &mut PgConnection, request: &RescueRequest<'_>) -> Result<RescueReport> {
    let rows = sqlx::query(RESCUE)
        .bind(request.alive_since)
        .bind(request.now)
        .bind(request.max_crashes)
        .bind(WORKER_CRASHED_CLASS)
        .bind(request.now.to_rfc3339())
        .bind(request.previous_incarnation)
        .fetch_all(&mut *connection)
        .await?;
    let dead_workers = sqlx::query("DELETE FROM fasttasks_worker WHERE heartbeat_at < $1")
        .bind(request.alive_since)
        .execute(&mut *connection)
        .await?
        .rows_affected();
    let mut report = RescueReport { dead_workers, ..RescueReport::default() };
    for row in rows {
        let id: String = row.try_get("id")?;
        let status: String = row.try_get("status")?;
        if status == "FAILED" { report.failed.push(id) } else { report.requeued.push(id) }
    }
    Ok(report)
}

/// The claim statement for `request` with its parameters bound, or `None` when nothing can match.
fn claim_query<'q>(
    request: &ClaimRequest<'_>,
) -> Option<sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>> {
    if request.limit == 0 || matches!(request.queues, QueueFilter::Only(names) if names.is_empty()) {
        return None;
    }
    let sql = match request.queues {
        QueueFilter::All => CLAIM_ALL_QUEUES,
        QueueFilter::Only(_) => CLAIM_SOME_QUEUES,
    };
    Some(bind_claim(sqlx::query(sql), request))
}

fn bind_claim<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    request: &ClaimRequest<'_>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let query = query
        .bind(request.now)
        .bind(request.backend_name.to_owned())
        .bind(i64::try_from(request.limit).unwrap_or(i64::MAX))
        .bind(request.worker_id.to_owned())
        .bind(request.lease_token);
    match request.queues {
        QueueFilter::All => query,
        QueueFilter::Only(names) => query.bind(names.clone()),
    }
}

/// The job of one claimed row and its `available_at` (the sort key; `None` when out of chrono's range).
fn claimed_job(
    row: &PgRow,
    request: &ClaimRequest<'_>,
) -> Result<(ClaimedJob, Option<Timestamp>), sqlx::Error> {
    let job = ClaimedJob {
        id: row.try_get("id")?,
        task_path: row.try_get("task_path")?,
        queue_name: row.try_get("queue_name")?,
        backend_name: row.try_get("backend_name")?,
        priority: row.try_get("priority")?,
        args_json: row.try_get("args")?,
        kwargs_json: row.try_get("kwargs")?,
        run_after: timestamp(row, "run_after")?.filter(in_job_range),
        enqueued_at: timestamp(row, "enqueued_at")?.filter(in_job_range).unwrap_or(request.now),
        started_at: timestamp(row, "started_at")?.filter(in_job_range).unwrap_or(request.now),
        last_attempted_at: timestamp(row, "last_attempted_at")?.filter(in_job_range).unwrap_or(request.now),
        attempt: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        crashes: row.try_get("crashes")?,
        worker_ids_json: row.try_get("worker_ids")?,
        lease_token: request.lease_token,
    };
    Ok((job, timestamp(row, "available_at")?))
}

/// A `timestamptz` column, without sqlx's chrono decoding: that one panics on values chrono cannot
/// hold (`infinity`, years past 262143), which a row edited by hand may contain. Those come back as
/// `None`, like NULL. Query results arrive in the binary format: microseconds since 2000-01-01 UTC.
fn timestamp(row: &PgRow, column: &str) -> Result<Option<Timestamp>, sqlx::Error> {
    let raw = row.try_get_raw(column)?;
    if raw.is_null() {
        return Ok(None);
    }
    if raw.format() != PgValueFormat::Binary {
        return row.try_get(column); // text: parsed, never panics
    }
    let micros = <i64 as Decode<'_, sqlx::Postgres>>::decode(raw)
        .map_err(|source| sqlx::Error::ColumnDecode { index: column.to_owned(), source })?;
    let epoch = chrono::DateTime::from_timestamp(946_684_800, 0).expect("2000-01-01 is representable");
    Ok(epoch.checked_add_signed(chrono::TimeDelta::microseconds(micros)))
}

/// The failure to record for a claimed row [`claimed_job`] could not decode (by id, under this
/// claim's lease). Only the id is needed; it is a `varchar`, so it always decodes.
fn unreadable_row(row: &PgRow, request: &ClaimRequest<'_>, error: &sqlx::Error) -> Outcome {
    let id: String = row.try_get("id").unwrap_or_default();
    let attempt = row.try_get::<i32, _>("attempts").ok().map(i64::from);
    let reason = format!("the worker cannot read it ({error})");
    let error_json = corrupt_row_error(&id, &reason, attempt, request.worker_id, request.now);
    Outcome {
        id,
        lease_token: request.lease_token,
        finished_at: request.now,
        kind: OutcomeKind::Failed { error_json, retry_at: None },
    }
}

/// One array parameter: `field` of every row (the statements UNNEST these arrays back into rows).
fn column<'a, R, T>(rows: &'a [R], field: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(field).collect()
}

/// SQLSTATE class 22 ("data exception"): the server refused a value, not the statement or the
/// connection, so retrying without that value can succeed.
fn is_data_error(error: &sqlx::Error) -> bool {
    error.as_database_error().and_then(|e| e.code()).is_some_and(|code| code.starts_with("22"))
}

/// Translates the Django-shaped configuration into sqlx's options, plus the pool's acquire timeout
/// when `connect_timeout` is given.
fn connect_options(config: &DatabaseConfig) -> Result<(PgConnectOptions, Option<Duration>)> {
    let DatabaseConfig::Postgres { host, port, user, password, dbname, options } = config else {
        return Err(Error::Config("PostgresStore needs a PostgreSQL configuration".into()));
    };
    // `new()` also reads the libpq environment (PGSSLMODE, ...) and ~/.pgpass, as psycopg does for
    // Django, so the worker authenticates the way the web process does; explicit settings win.
    let mut connect = PgConnectOptions::new()
        .host(host)
        .port(*port)
        .username(user)
        .database(dbname)
        .application_name("fasttasks-worker")
        .statement_cache_capacity(100);
    if let Some(password) = password {
        connect = connect.password(password);
    }
    let mut acquire_timeout = None;
    let mut server_parameters: Vec<(String, String)> = Vec::new();
    for (name, value) in options {
        match name.as_str() {
            "sslmode" => {
                let mode = PgSslMode::from_str(value)
                    .map_err(|e| Error::Config(format!("invalid sslmode {value:?}: {e}")))?;
                connect = connect.ssl_mode(mode);
            }
            "sslrootcert" => connect = connect.ssl_root_cert(value),
            "sslcert" => connect = connect.ssl_client_cert(value),
            "sslkey" => connect = connect.ssl_client_key(value),
            "application_name" => connect = connect.application_name(value),
            "connect_timeout" => {
                let seconds: u64 = value.trim().parse().map_err(|_| {
                    Error::Config(format!("connect_timeout must be whole seconds, not {value:?}"))
                })?;
                acquire_timeout = Some(Duration::from_secs(seconds.max(1)));
            }
            // libpq's own "options" string: "-c name=value" switches.
            "options" => server_parameters.extend(parse_libpq_options(value)?),
            name if CLIENT_ONLY_OPTIONS.contains(&name) => {}
            _ => server_parameters.push((name.clone(), value.clone())),
        }
    }
    if !server_parameters.is_empty() {
        connect = connect.options(server_parameters);
    }
    Ok((connect, acquire_timeout))
}

/// Parses libpq's `options` value: `-c name=value`, `-cname=value` or `--name=value` switches
/// separated by spaces (a backslash escapes a space inside a value).
fn parse_libpq_options(text: &str) -> Result<Vec<(String, String)>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let bad = || Error::Config(format!("unsupported PostgreSQL options string {text:?}"));
    let mut parameters = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next().ok_or_else(bad)?
        } else if let Some(rest) = word.strip_prefix("--") {
            rest.to_owned()
        } else if let Some(rest) = word.strip_prefix("-c") {
            rest.to_owned()
        } else {
            return Err(bad());
        };
        let (name, value) = setting.split_once('=').ok_or_else(bad)?;
        parameters.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(parameters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(options: &[(&str, &str)]) -> DatabaseConfig {
        DatabaseConfig::Postgres {
            host: "db".into(),
            port: 5433,
            user: "u".into(),
            password: Some("p".into()),
            dbname: "d".into(),
            options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn options_map_to_sqlx_and_server_parameters() {
        let (options, timeout) = connect_options(&config(&[
            ("sslmode", "require"),
            ("application_name", "mine"),
            ("search_path", "s1"),
            ("options", "-c statement_timeout=5s --lock-timeout=1s"),
            ("connect_timeout", "7"),
            ("target_session_attrs", "read-write"),
            ("server_side_binding", "true"),
        ]))
        .unwrap();
        assert!(matches!(options.get_ssl_mode(), PgSslMode::Require));
        assert_eq!(options.get_application_name(), Some("mine"));
        assert!(
            options
                .get_options()
                .unwrap()
                .ends_with("-c search_path=s1 -c statement_timeout=5s -c lock_timeout=1s")
        );
        assert_eq!(timeout, Some(Duration::from_secs(7)));
        assert_eq!(options.get_host(), "db");
        assert_eq!(options.get_port(), 5433);
    }

    #[test]
    fn defaults_and_bad_options() {
        let (options, timeout) = connect_options(&config(&[])).unwrap();
        assert_eq!(options.get_application_name(), Some("fasttasks-worker"));
        // Only what libpq's environment brings (sqlx reads PGOPTIONS, as libpq does).
        assert_eq!(options.get_options(), std::env::var("PGOPTIONS").ok().as_deref());
        assert_eq!(timeout, None);
        assert!(connect_options(&config(&[("sslmode", "sometimes")])).is_err());
        assert!(connect_options(&config(&[("options", "-x y")])).is_err());
        assert!(parse_libpq_options("-c a=b\\ c").unwrap() == vec![("a".into(), "b c".into())]);
    }
}
