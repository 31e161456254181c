//! The maintenance side of the store contract (see `store/mod.rs`) on both databases: worker
//! registrations and heartbeats, the leader lease, and the rescue of tasks whose worker died.

#[macro_use]
mod common;

use std::sync::Arc;

use common::{Fixture, claim, default_queue, job, secs, t0};
use fasttasks_core::store::{
    LeaderLease, MaintenanceRound, RescueRequest, RoundReport, WORKER_CRASHED_CLASS, WorkerRegistration,
};
use fasttasks_core::{Outcome, OutcomeKind, Store};

on_both_databases! {
    leader_lease_is_held_by_one_worker_until_it_expires,
    heartbeat_reports_a_missing_registration,
    rescue_requeues_the_tasks_of_dead_workers_only,
    rescue_fails_a_task_that_keeps_killing_its_worker,
    a_restart_under_the_same_id_rescues_the_previous_processes_tasks,
    a_maintenance_round_heartbeats_elects_and_rescues_in_one_go,
    a_maintenance_round_reports_cancel_requests_for_its_own_running_tasks,
}

async fn register(store: &Store, worker_id: &str, at: chrono::DateTime<chrono::Utc>) {
    let registration =
        WorkerRegistration { worker_id, backend_name: "default", hostname: "test-host", pid: 4242, now: at };
    store.register_worker(&registration).await.expect("register");
}

/// A 15 s lease taken at `now`.
fn lease<'a>(name: &'a str, worker_id: &'a str, now: chrono::DateTime<chrono::Utc>) -> LeaderLease<'a> {
    LeaderLease { name, worker_id, now, expires_at: now + secs(15) }
}

fn rescue_at(now: chrono::DateTime<chrono::Utc>, max_crashes: i32) -> RescueRequest<'static> {
    // Heartbeats older than 10 s mean a dead worker.
    RescueRequest { now, alive_since: now - secs(10), max_crashes, previous_incarnation: None }
}

async fn leader_lease_is_held_by_one_worker_until_it_expires(fx: Arc<Fixture>) {
    let other = fx.new_store().await;
    let at = |n: i64| t0() + secs(n);
    assert!(fx.store.elect(&lease("maintenance", "w1", at(0))).await.unwrap());
    assert!(!other.elect(&lease("maintenance", "w2", at(1))).await.unwrap());
    // The holder renews; the other still cannot take it before the renewed lease runs out.
    assert!(fx.store.elect(&lease("maintenance", "w1", at(10))).await.unwrap());
    assert!(!other.elect(&lease("maintenance", "w2", at(20))).await.unwrap());
    // Expired: anyone may take it, and then the old holder may not.
    assert!(other.elect(&lease("maintenance", "w2", at(26))).await.unwrap());
    assert!(!fx.store.elect(&lease("maintenance", "w1", at(27))).await.unwrap());
    // Another lease name is independent.
    assert!(fx.store.elect(&lease("other-duty", "w1", at(27))).await.unwrap());
    // A clean exit gives the lease up at once.
    register(&other, "w2", t0()).await;
    other.deregister_worker("w2").await.unwrap();
    assert!(fx.store.elect(&lease("maintenance", "w1", at(28))).await.unwrap());
}

async fn heartbeat_reports_a_missing_registration(fx: Arc<Fixture>) {
    assert!(!fx.store.heartbeat("w1", t0()).await.unwrap(), "never registered");
    register(&fx.store, "w1", t0()).await;
    assert!(fx.store.heartbeat("w1", t0() + secs(5)).await.unwrap());
    // Judged dead by a rescuer (no heartbeat for long enough): the registration is gone, and the
    // worker learns it from its next heartbeat.
    let report = fx.store.rescue(&rescue_at(t0() + secs(60), 3)).await.unwrap();
    assert_eq!(report.dead_workers, 1);
    assert!(!fx.store.heartbeat("w1", t0() + secs(61)).await.unwrap());
    register(&fx.store, "w1", t0() + secs(61)).await;
    assert!(fx.store.heartbeat("w1", t0() + secs(62)).await.unwrap());
}

async fn rescue_requeues_the_tasks_of_dead_workers_only(fx: Arc<Fixture>) {
    fx.store.insert(&[job("a", 4), job("b", 3), job("c", 2), job("d", 1)]).await.unwrap();
    let enqueued_available_at = [fx.row("c").await.available_at, fx.row("d").await.available_at];
    register(&fx.store, "alive", t0()).await;
    register(&fx.store, "dead", t0()).await;
    let alive = claim(&fx.store, &default_queue(), 2, "alive", common::lease(), t0()).await;
    let dead = claim(&fx.store, &default_queue(), 2, "dead", common::lease(), t0()).await;
    assert!(fx.store.heartbeat("alive", t0() + secs(25)).await.unwrap());

    let now = t0() + secs(30);
    let report = fx.store.rescue(&rescue_at(now, 3)).await.unwrap();
    let mut requeued = report.requeued.clone();
    requeued.sort();
    assert_eq!(requeued, vec!["c", "d"]);
    assert!(report.failed.is_empty());
    assert_eq!(report.dead_workers, 1);

    for id in ["a", "b"] {
        assert_eq!(fx.row(id).await.status, "RUNNING", "{id} belongs to a live worker");
    }
    for (id, available_at) in ["c", "d"].into_iter().zip(enqueued_available_at) {
        let row = fx.row(id).await;
        assert_eq!(row.status, "READY");
        assert_eq!(row.attempts, 1, "the crashed attempt stays counted");
        // Its place in the queue is kept: a rescued task runs next, not after the whole backlog.
        assert_eq!(row.available_at, available_at);
        assert_eq!((row.worker_id, row.lease_token, row.finished_at), (None, None, None));
        let errors = row.errors.as_array().unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0]["exception_class_path"], WORKER_CRASHED_CLASS);
        assert_eq!(errors[0]["worker_id"], "dead");
        assert_eq!(errors[0]["attempt"], 1);
        let traceback = errors[0]["traceback"].as_str().unwrap();
        assert!(
            traceback.contains("worker dead stopped sending heartbeats while running attempt 1"),
            "{traceback}"
        );
    }
    // A second round finds nothing more to do.
    assert_eq!(fx.store.rescue(&rescue_at(now, 3)).await.unwrap(), Default::default());

    // The rescued tasks run again elsewhere, and the dead worker's late results are refused.
    let again = claim(&fx.store, &default_queue(), 10, "alive", common::lease(), now).await;
    assert_eq!(again.iter().map(|j| j.attempt).collect::<Vec<_>>(), vec![2, 2]);
    // The runner learns that one of the two attempts was a crash, not a failure of the task.
    assert_eq!(again.iter().map(|j| j.crashes).collect::<Vec<_>>(), vec![1, 1]);
    assert!(alive.iter().all(|j| j.crashes == 0));
    let late: Vec<Outcome> = dead
        .iter()
        .map(|job| Outcome::for_job(job, OutcomeKind::Succeeded { return_json: "\"late\"".into() }))
        .collect();
    let written = fx.store.complete(&late).await.unwrap();
    assert_eq!((written.applied, written.stale.len()), (0, 2));
    let fresh: Vec<Outcome> = again
        .iter()
        .chain(alive.iter())
        .map(|job| Outcome::for_job(job, OutcomeKind::Succeeded { return_json: "1".into() }))
        .collect();
    assert_eq!(fx.store.complete(&fresh).await.unwrap().applied, 4);
    assert_eq!(fx.count("SUCCESSFUL").await, 4);
}

async fn rescue_fails_a_task_that_keeps_killing_its_worker(fx: Arc<Fixture>) {
    fx.store.insert(&[job("poison", 1)]).await.unwrap();
    let mut now = t0();
    for crash in 1..=2 {
        register(&fx.store, "victim", now).await;
        assert_eq!(claim(&fx.store, &default_queue(), 1, "victim", common::lease(), now).await.len(), 1);
        now += secs(30);
        let report = fx.store.rescue(&rescue_at(now, 2)).await.unwrap();
        let row = fx.row("poison").await;
        if crash < 2 {
            assert_eq!(report.requeued, vec!["poison"]);
            assert_eq!(row.status, "READY");
        } else {
            assert_eq!(report.failed, vec!["poison"]);
            assert_eq!(row.status, "FAILED");
            assert_eq!(row.finished_at, Some(now));
            assert_eq!(row.errors.as_array().unwrap().len(), 2);
            assert_eq!(row.errors[1]["attempt"], 2);
        }
    }
    assert!(claim(&fx.store, &default_queue(), 1, "victim", common::lease(), now).await.is_empty());
}

async fn a_restart_under_the_same_id_rescues_the_previous_processes_tasks(fx: Arc<Fixture>) {
    fx.store.insert(&[job("left-over", 1)]).await.unwrap();
    register(&fx.store, "fixed-id", t0()).await;
    claim(&fx.store, &default_queue(), 1, "fixed-id", common::lease(), t0()).await;
    // The process dies and is restarted at once under the same id: its heartbeat looks fresh.
    let now = t0() + secs(1);
    let plain = fx.store.rescue(&rescue_at(now, 3)).await.unwrap();
    assert!(plain.requeued.is_empty(), "a fresh heartbeat protects the row");
    let restart = RescueRequest { previous_incarnation: Some("fixed-id"), ..rescue_at(now, 3) };
    assert_eq!(fx.store.rescue(&restart).await.unwrap().requeued, vec!["left-over"]);
    assert_eq!(fx.row("left-over").await.status, "READY");
}

async fn a_maintenance_round_heartbeats_elects_and_rescues_in_one_go(fx: Arc<Fixture>) {
    fx.store.insert(&[job("orphan", 1)]).await.unwrap();
    register(&fx.store, "gone", t0()).await;
    claim(&fx.store, &default_queue(), 1, "gone", common::lease(), t0()).await;
    let round = |worker_id: &'static str, now| MaintenanceRound {
        worker: WorkerRegistration { worker_id, backend_name: "default", hostname: "h", pid: 1, now },
        lease: lease("maintenance", worker_id, now),
        rescue: rescue_at(now, 3),
    };
    let other = fx.new_store().await;
    // Not registered yet: the round registers, takes the free lease and rescues the orphan.
    let first = fx.store.maintenance_round(&round("w1", t0() + secs(30))).await.unwrap();
    assert!(!first.was_registered && first.leader);
    assert_eq!(first.rescue.unwrap().requeued, vec!["orphan"]);
    // Another worker: registered by its round, not the leader, no rescue.
    let second = other.maintenance_round(&round("w2", t0() + secs(31))).await.unwrap();
    assert_eq!(second, RoundReport { was_registered: false, leader: false, ..RoundReport::default() });
    let again = other.maintenance_round(&round("w2", t0() + secs(32))).await.unwrap();
    assert!(again.was_registered && !again.leader);
    assert!(fx.store.heartbeat("w1", t0() + secs(33)).await.unwrap());
}

async fn a_maintenance_round_reports_cancel_requests_for_its_own_running_tasks(fx: Arc<Fixture>) {
    fx.store.insert(&[job("mine", 3), job("mine-too", 2), job("theirs", 1)]).await.unwrap();
    claim(&fx.store, &default_queue(), 2, "w1", common::lease(), t0()).await;
    claim(&fx.store, &default_queue(), 1, "w2", common::lease(), t0()).await;
    fx.exec("UPDATE fasttasks_task SET cancel_requested_at = available_at WHERE id IN ('mine', 'theirs')")
        .await;
    let round = MaintenanceRound {
        worker: WorkerRegistration {
            worker_id: "w1",
            backend_name: "default",
            hostname: "h",
            pid: 1,
            now: t0(),
        },
        lease: lease("maintenance", "w1", t0()),
        rescue: rescue_at(t0(), 3),
    };
    let report = fx.store.maintenance_round(&round).await.unwrap();
    assert_eq!(report.cancel_requested, vec!["mine"], "only this worker's running tasks that were asked");
}
