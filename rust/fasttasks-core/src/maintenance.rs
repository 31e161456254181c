//! The maintenance service of one worker process: it keeps the worker's registration alive and, while
//! this worker holds the database's leader lease, rescues the tasks of dead workers.
//!
//! - **Heartbeat**: every `heartbeat_interval` the worker's row in `fasttasks_worker` moves forward.
//!   It runs on the tokio runtime, never on a Python thread, so a task that holds the GIL or blocks in
//!   C cannot make its worker look dead. If the row is gone (a rescuer judged the worker dead during a
//!   long pause), the worker registers again; its rescued attempts' late results are refused by their
//!   lease.
//! - **Leader election**: every round each worker tries to take or renew the lease `maintenance` for
//!   `dead_after`; one worker per database holds it, and another takes over once it expires.
//! - **Rescue** (leader only): RUNNING tasks whose worker has not sent a heartbeat for `dead_after`
//!   go back to READY with the crash counted, or end FAILED after `max_crashes` crashes.
//!
//! With the defaults (2 s, 10 s) a task of a killed worker runs again elsewhere within about 12 s. That
//! holds when the killed worker was the leader too: its lease and its last heartbeat were written in the
//! same round, so both run out together and the next leader rescues it in the round that elects it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::WorkerConfig;
use crate::store::{LeaderLease, MaintenanceRound, RescueRequest, Store, WorkerRegistration};
use crate::worker::{EventLevel, Phase, WorkerShared};

/// The lease every worker of a database competes for.
pub const LEADER_LEASE: &str = "maintenance";

/// Registers this worker. Called once before the first claim: a worker that cannot register does not
/// claim, since its tasks would look abandoned to every rescuer. Tasks still RUNNING under this worker id
/// belong to a previous process that used the same id and died: they are rescued first, or they would
/// pass for this worker's own. The registration counts as the worker's first heartbeat (in
/// `shared`'s stats, for the health checks).
pub async fn register(store: &Store, config: &WorkerConfig, shared: &WorkerShared) -> crate::Result<()> {
    let taken = Instant::now();
    let registration = registration(config);
    store.rescue(&rescue_request(config, registration.now, Some(&config.worker_id))).await?;
    store.register_worker(&registration).await?;
    shared.stats.record_heartbeat(registration.now, taken);
    Ok(())
}

fn rescue_request<'a>(
    config: &WorkerConfig,
    now: chrono::DateTime<chrono::Utc>,
    previous_incarnation: Option<&'a str>,
) -> RescueRequest<'a> {
    let dead_after = chrono::Duration::from_std(config.dead_after).unwrap_or(chrono::Duration::MAX);
    RescueRequest {
        now,
        alive_since: now - dead_after,
        max_crashes: config.max_crashes,
        previous_incarnation,
    }
}

fn registration(config: &WorkerConfig) -> WorkerRegistration<'_> {
    WorkerRegistration {
        worker_id: &config.worker_id,
        backend_name: &config.backend_name,
        hostname: &config.hostname,
        pid: std::process::id(),
        now: crate::time::now(),
    }
}

/// Runs heartbeat, election and rescue rounds until `phase` leaves [`Phase::Running`] and the worker
/// has finished (the caller aborts this task at the very end, then deregisters).
pub async fn run(
    store: Store,
    config: WorkerConfig,
    shared: WorkerShared,
    mut phase: watch::Receiver<Phase>,
) {
    let mut leader = false;
    loop {
        round(&store, &config, &shared, &mut leader).await;
        tokio::select! {
            _ = tokio::time::sleep(config.heartbeat_interval) => {}
            // Keep heartbeating while draining: running tasks are still ours.
            _ = phase.changed() => {}
        }
    }
}

async fn round(store: &Store, config: &WorkerConfig, shared: &WorkerShared, leader: &mut bool) {
    let events = &shared.events;
    let taken = Instant::now();
    let now = crate::time::now();
    let until = now + chrono::Duration::from_std(config.dead_after).unwrap_or(chrono::Duration::MAX);
    let round = MaintenanceRound {
        worker: WorkerRegistration { now, ..registration(config) },
        lease: LeaderLease { name: LEADER_LEASE, worker_id: &config.worker_id, now, expires_at: until },
        rescue: rescue_request(config, now, None),
    };
    let report = match store.maintenance_round(&round).await {
        Ok(report) => report,
        Err(error) => {
            shared.stats.database_errors.fetch_add(1, Ordering::Relaxed);
            events.push(EventLevel::Warning, format!("heartbeat and maintenance failed: {error}"));
            return;
        }
    };
    // The round wrote `now` as this worker's heartbeat (registering it again if it had been removed).
    shared.stats.record_heartbeat(now, taken);
    shared.stats.leader.store(report.leader, Ordering::Relaxed);
    if !report.was_registered {
        events.push(
            EventLevel::Warning,
            format!(
                "worker {} had been taken for dead (no heartbeat for {:?}) and registered again; results of \
                 its rescued attempts will be refused",
                config.worker_id, config.dead_after
            ),
        );
    }
    if report.leader != *leader {
        *leader = report.leader;
        let news = if report.leader {
            "is now the maintenance leader"
        } else {
            "is no longer the maintenance leader"
        };
        events.push(EventLevel::Info, format!("worker {} {news}", config.worker_id));
    }
    if !report.cancel_requested.is_empty() {
        let mut requests = shared.cancel_requests.lock().unwrap_or_else(|poison| poison.into_inner());
        requests.extend(report.cancel_requested);
    }
    if let Some(rescue) = report.rescue
        && (!rescue.requeued.is_empty() || !rescue.failed.is_empty())
    {
        events.push(
            EventLevel::Warning,
            format!(
                "rescued the tasks of dead workers: {} back to READY ({}), {} FAILED after {} crashes ({})",
                rescue.requeued.len(),
                rescue.requeued.join(", "),
                rescue.failed.len(),
                config.max_crashes,
                rescue.failed.join(", "),
            ),
        );
    }
}

/// Removes the worker's registration and leader lease at exit, trying for at most `within`: a
/// worker that cannot is rescued like a dead one once its heartbeat is stale.
pub async fn deregister(store: &Store, config: &WorkerConfig, shared: &WorkerShared, within: Duration) {
    match tokio::time::timeout(within, store.deregister_worker(&config.worker_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => shared.events.push(EventLevel::Warning, format!("deregistering failed: {error}")),
        Err(_) => shared.events.push(EventLevel::Warning, "deregistering timed out".to_owned()),
    }
}
