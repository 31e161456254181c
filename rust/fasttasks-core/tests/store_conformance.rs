//! The store contract (see `store/mod.rs`), checked on both databases: each test below is written once
//! and run by `on_both_databases!` (in `common`) against SQLite (`sqlite::name`) and PostgreSQL (`postgres::name`), each on
//! a database of its own (see `common`).

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Admin, Fixture, Kind, claim, default_queue, ids, job, lease, secs, t0};
use fasttasks_core::store::{ClaimRequest, RescueRequest};
use fasttasks_core::{ClaimedJob, NewJob, Outcome, OutcomeKind, QueueFilter, Store};
use serde_json::{Value, json};

on_both_databases! {
    install_schema_is_idempotent,
    claims_in_priority_then_available_at_then_id_order,
    claim_respects_limit,
    deferred_job_is_not_claimed_until_due,
    queue_filter_only_and_all,
    claims_only_its_backend,
    claimed_job_carries_the_row,
    second_attempt_keeps_first_started_at,
    no_double_claim_between_concurrent_stores,
    batch_completion_writes_results_and_errors,
    retry_outcome_requeues_with_error_appended,
    stale_lease_completion_is_rejected_and_reported,
    unstorable_json_fails_only_that_attempt,
    release_restores_ready_state,
    release_leases_hands_back_a_whole_claim,
    waker_wakes_on_write_from_elsewhere,
    waker_times_out_without_writes,
    waker_ignores_claims_that_find_nothing,
    django_written_timestamps_parse,
    values_no_job_carries_do_not_stop_the_claim,
    json_lists_that_are_not_arrays_keep_every_entry,
    rescue_counts_a_crash_at_the_integer_limit,
}

fn success(job: &ClaimedJob, return_json: &str, finished_at: chrono::DateTime<chrono::Utc>) -> Outcome {
    Outcome {
        id: job.id.clone(),
        lease_token: job.lease_token,
        finished_at,
        kind: OutcomeKind::Succeeded { return_json: return_json.into() },
    }
}

fn failure(
    job: &ClaimedJob,
    error: &Value,
    retry_at: Option<chrono::DateTime<chrono::Utc>>,
    finished_at: chrono::DateTime<chrono::Utc>,
) -> Outcome {
    Outcome {
        id: job.id.clone(),
        lease_token: job.lease_token,
        finished_at,
        kind: OutcomeKind::Failed { error_json: error.to_string(), retry_at },
    }
}

fn error_object(traceback: &str) -> Value {
    json!({"exception_class_path": "builtins.RuntimeError", "traceback": traceback})
}

async fn install_schema_is_idempotent(fx: Arc<Fixture>) {
    fx.store.insert(&[job("kept", 1)]).await.unwrap();
    fx.store.install_schema().await.expect("second install is a no-op");
    fx.new_store().await.install_schema().await.expect("install from another store is a no-op");
    assert_eq!(fx.row("kept").await.status, "READY", "installing again must not recreate the table");
}

async fn claims_in_priority_then_available_at_then_id_order(fx: Arc<Fixture>) {
    let with = |id: &str, priority: i32, age: i64| NewJob { priority, ..job(id, age) };
    let mut early = with("f", 10, 1);
    early.run_after = Some(t0() - secs(20)); // available_at comes from run_after, not enqueued_at
    // Inserted out of order; "a" and "e" tie on priority and available_at, so id decides.
    let jobs =
        vec![with("e", 0, 3), with("d", -5, 10), with("b", 10, 1), with("a", 0, 3), early, with("c", 0, 5)];
    let expected = ["f", "b", "c", "a", "e", "d"];

    // One row per claim: the order is the database's ORDER BY, not a sort in Rust.
    fx.store.insert(&jobs).await.unwrap();
    let mut one_by_one = Vec::new();
    for _ in 0..jobs.len() {
        let claimed = claim(&fx.store, &default_queue(), 1, "w1", lease(), t0()).await;
        assert_eq!(claimed.len(), 1);
        one_by_one.push(claimed[0].id.clone());
    }
    assert_eq!(one_by_one, expected);

    // All in one claim: the rows come back in claim order too.
    let second: Vec<NewJob> = jobs.iter().map(|j| NewJob { id: format!("2{}", j.id), ..j.clone() }).collect();
    fx.store.insert(&second).await.unwrap();
    let claimed = claim(&fx.store, &default_queue(), 100, "w1", lease(), t0()).await;
    let expected: Vec<String> = expected.iter().map(|id| format!("2{id}")).collect();
    assert_eq!(ids(&claimed), expected);
}

async fn claim_respects_limit(fx: Arc<Fixture>) {
    let jobs: Vec<NewJob> = (0..5).map(|i| job(&format!("j{i}"), 10 - i)).collect();
    fx.store.insert(&jobs).await.unwrap();
    assert!(claim(&fx.store, &default_queue(), 0, "w1", lease(), t0()).await.is_empty());
    let sizes: Vec<usize> = {
        let mut sizes = Vec::new();
        for _ in 0..4 {
            sizes.push(claim(&fx.store, &default_queue(), 2, "w1", lease(), t0()).await.len());
        }
        sizes
    };
    assert_eq!(sizes, [2, 2, 1, 0]);
    assert_eq!(fx.count("RUNNING").await, 5);
}

async fn deferred_job_is_not_claimed_until_due(fx: Arc<Fixture>) {
    let mut later = job("later", 1);
    later.run_after = Some(t0() + secs(60));
    fx.store.insert(&[later, job("now", 1)]).await.unwrap();
    assert_eq!(fx.row("later").await.available_at, t0() + secs(60));

    assert_eq!(ids(&claim(&fx.store, &default_queue(), 10, "w1", lease(), t0()).await), ["now"]);
    assert!(claim(&fx.store, &default_queue(), 10, "w1", lease(), t0() + secs(59)).await.is_empty());
    let due = claim(&fx.store, &default_queue(), 10, "w1", lease(), t0() + secs(60)).await;
    assert_eq!(ids(&due), ["later"], "due exactly at run_after");
    assert_eq!(due[0].run_after, Some(t0() + secs(60)));
}

async fn queue_filter_only_and_all(fx: Arc<Fixture>) {
    let on = |id: &str, queue: &str| NewJob { queue_name: queue.into(), ..job(id, 1) };
    fx.store
        .insert(&[on("d1", "default"), on("e1", "emails"), on("r1", "reports"), on("r2", "reports")])
        .await
        .unwrap();
    let only = |names: &[&str]| QueueFilter::Only(names.iter().map(|n| n.to_string()).collect());

    assert!(claim(&fx.store, &only(&[]), 10, "w1", lease(), t0()).await.is_empty());
    assert!(claim(&fx.store, &only(&["nothing"]), 10, "w1", lease(), t0()).await.is_empty());
    assert_eq!(ids(&claim(&fx.store, &only(&["emails"]), 10, "w1", lease(), t0()).await), ["e1"]);
    assert_eq!(
        ids(&claim(&fx.store, &only(&["reports", "nothing"]), 10, "w1", lease(), t0()).await),
        ["r1", "r2"]
    );
    fx.store.insert(&[on("e2", "emails")]).await.unwrap();
    let mut all = ids(&claim(&fx.store, &QueueFilter::All, 10, "w1", lease(), t0()).await)
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    all.sort();
    assert_eq!(all, ["d1", "e2"]);
}

async fn claims_only_its_backend(fx: Arc<Fixture>) {
    let other = NewJob { backend_name: "other".into(), ..job("other-1", 5) };
    fx.store.insert(&[other, job("mine", 1)]).await.unwrap();
    assert_eq!(ids(&claim(&fx.store, &QueueFilter::All, 10, "w1", lease(), t0()).await), ["mine"]);
    let request = ClaimRequest {
        backend_name: "other",
        queues: &QueueFilter::All,
        limit: 10,
        worker_id: "w2",
        lease_token: lease(),
        now: t0(),
    };
    assert_eq!(ids(&fx.store.claim(&request).await.unwrap()), ["other-1"]);
}

async fn claimed_job_carries_the_row(fx: Arc<Fixture>) {
    let new = NewJob {
        id: "full".into(),
        task_path: "tests.tasks.add".into(),
        queue_name: "default".into(),
        backend_name: "default".into(),
        priority: 7,
        args_json: r#"[1, "two", {"three": 3.5}]"#.into(),
        kwargs_json: r#"{"k": [true, null], "s": "é\n\"q\""}"#.into(),
        run_after: Some(t0() - secs(1)),
        enqueued_at: t0() - secs(2),
        max_attempts: 3,
    };
    fx.store.insert(std::slice::from_ref(&new)).await.unwrap();
    let before = fx.row("full").await;
    assert_eq!((before.status.as_str(), before.attempts), ("READY", 0));
    assert_eq!((before.worker_ids, before.errors), (json!([]), json!([])));
    assert_eq!((before.started_at, before.worker_id, before.lease_token), (None, None, None));

    let token = lease();
    let claimed = claim(&fx.store, &default_queue(), 10, "w1", token, t0()).await;
    assert_eq!(claimed.len(), 1);
    let got = &claimed[0];
    assert_eq!(got.id, "full");
    assert_eq!(got.task_path, "tests.tasks.add");
    assert_eq!((got.queue_name.as_str(), got.backend_name.as_str()), ("default", "default"));
    assert_eq!(got.priority, 7);
    assert_eq!(common::json(got.args_json.clone()), json!([1, "two", {"three": 3.5}]));
    assert_eq!(common::json(got.kwargs_json.clone()), json!({"k": [true, null], "s": "é\n\"q\""}));
    assert_eq!(got.run_after, Some(t0() - secs(1)));
    assert_eq!(got.enqueued_at, t0() - secs(2));
    assert_eq!((got.started_at, got.last_attempted_at), (t0(), t0()));
    assert_eq!((got.attempt, got.max_attempts), (1, 3));
    assert_eq!(common::json(got.worker_ids_json.clone()), json!(["w1"]));
    assert_eq!(got.lease_token, token);

    let row = fx.row("full").await;
    assert_eq!((row.status.as_str(), row.attempts), ("RUNNING", 1));
    assert_eq!(row.worker_ids, json!(["w1"]));
    assert_eq!((row.worker_id.as_deref(), row.lease_token), (Some("w1"), Some(token)));
    assert_eq!((row.started_at, row.last_attempted_at, row.finished_at), (Some(t0()), Some(t0()), None));
}

async fn second_attempt_keeps_first_started_at(fx: Arc<Fixture>) {
    fx.store.insert(&[NewJob { max_attempts: 3, ..job("r", 1) }]).await.unwrap();
    let first = claim(&fx.store, &default_queue(), 1, "w1", lease(), t0()).await.remove(0);
    let retry_at = t0() + secs(10);
    let report = fx
        .store
        .complete(&[failure(&first, &error_object("tb1"), Some(retry_at), t0() + secs(1))])
        .await
        .unwrap();
    assert_eq!(report.applied, 1);

    let second = claim(&fx.store, &default_queue(), 1, "w2", lease(), retry_at).await.remove(0);
    assert_eq!(second.attempt, 2);
    assert_eq!(second.started_at, t0(), "started_at is the first attempt's start");
    assert_eq!(second.last_attempted_at, retry_at);
    assert_eq!(common::json(second.worker_ids_json.clone()), json!(["w1", "w2"]));
    let row = fx.row("r").await;
    assert_eq!((row.attempts, row.started_at, row.last_attempted_at), (2, Some(t0()), Some(retry_at)));
    assert_eq!(row.worker_id.as_deref(), Some("w2"));
}

async fn no_double_claim_between_concurrent_stores(fx: Arc<Fixture>) {
    const JOBS: usize = 2_000;
    let jobs: Vec<NewJob> = (0..JOBS).map(|i| job(&format!("job-{i:05}"), 1)).collect();
    fx.store.insert(&jobs).await.unwrap();

    // Two stores (two pools, like two worker processes), two claimers on each.
    let other = fx.new_store().await;
    let mut claimers = Vec::new();
    for (n, store) in [fx.store.clone(), other.clone(), fx.store.clone(), other].into_iter().enumerate() {
        claimers.push(tokio::spawn(async move {
            let worker = format!("w{n}");
            let mut got = Vec::new();
            loop {
                let batch = claim(&store, &default_queue(), 10, &worker, lease(), t0()).await;
                if batch.is_empty() {
                    return got;
                }
                assert!(batch.len() <= 10);
                got.extend(batch.into_iter().map(|job| job.id));
            }
        }));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut per_claimer = Vec::new();
    for claimer in claimers {
        let got = claimer.await.unwrap();
        per_claimer.push(got.len());
        for id in got {
            *seen.entry(id).or_default() += 1;
        }
    }
    // A claimer may stop early when every remaining row was locked by another; the others finish.
    for id in ids(&claim(&fx.store, &default_queue(), JOBS, "late", lease(), t0()).await) {
        *seen.entry(id.to_owned()).or_default() += 1;
    }
    let doubles: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubles.is_empty(),
        "{} jobs claimed more than once, e.g. {:?}",
        doubles.len(),
        &doubles[..doubles.len().min(5)]
    );
    assert_eq!(seen.len(), JOBS, "every job claimed (per claimer: {per_claimer:?})");
    assert_eq!(fx.count("RUNNING").await, JOBS as i64);
    assert_eq!(fx.row("job-00000").await.attempts, 1);
    eprintln!("{:?}: claims per claimer {per_claimer:?}", fx.kind);
}

async fn batch_completion_writes_results_and_errors(fx: Arc<Fixture>) {
    fx.store.insert(&[job("a", 4), job("b", 3), job("c", 2), job("n", 1)]).await.unwrap();
    let claimed = claim(&fx.store, &default_queue(), 10, "w1", lease(), t0()).await;
    assert_eq!(ids(&claimed), ["a", "b", "c", "n"]);
    let (fa, fb, fnull) = (t0() + secs(1), t0() + secs(2), t0() + secs(3));
    let error = error_object("Traceback: boom");
    let report = fx
        .store
        .complete(&[
            success(&claimed[0], r#"{"answer": 42}"#, fa),
            failure(&claimed[1], &error, None, fb),
            success(&claimed[3], "null", fnull),
        ])
        .await
        .unwrap();
    assert_eq!((report.applied, report.stale), (3, Vec::<String>::new()));

    let a = fx.row("a").await;
    assert_eq!(a.status, "SUCCESSFUL");
    assert_eq!(a.return_value, Some(json!({"answer": 42})));
    assert_eq!((a.finished_at, a.errors), (Some(fa), json!([])));
    assert_eq!((a.worker_id, a.lease_token), (None, None));

    let b = fx.row("b").await;
    assert_eq!(b.status, "FAILED");
    assert_eq!(b.errors, json!([error]));
    assert_eq!((b.finished_at, b.return_value), (Some(fb), None));
    assert_eq!((b.worker_id, b.lease_token), (None, None));

    assert_eq!(fx.row("c").await.status, "RUNNING", "not in the batch");
    let n = fx.row("n").await;
    assert_eq!((n.status.as_str(), n.return_value), ("SUCCESSFUL", Some(Value::Null)));
}

async fn retry_outcome_requeues_with_error_appended(fx: Arc<Fixture>) {
    fx.store.insert(&[NewJob { max_attempts: 3, ..job("flaky", 1) }]).await.unwrap();
    let mut now = t0();
    for attempt in 1..=3 {
        let claimed = claim(&fx.store, &default_queue(), 1, "w1", lease(), now).await;
        assert_eq!(claimed.len(), 1, "attempt {attempt} claimable at its retry time");
        let retry_at = (attempt < 3).then(|| now + secs(30));
        let outcome = failure(&claimed[0], &error_object(&format!("tb{attempt}")), retry_at, now + secs(1));
        assert_eq!(fx.store.complete(&[outcome]).await.unwrap().applied, 1);

        let row = fx.row("flaky").await;
        let errors: Vec<Value> = (1..=attempt).map(|n| error_object(&format!("tb{n}"))).collect();
        assert_eq!(row.errors, Value::Array(errors), "every attempt's error is kept, in order");
        assert_eq!(row.attempts, attempt);
        assert_eq!((row.worker_id, row.lease_token), (None, None));
        match retry_at {
            Some(retry_at) => {
                assert_eq!(row.status, "READY");
                assert_eq!(row.available_at, retry_at);
                assert_eq!(row.run_after, Some(retry_at), "deferred to the retry, as Django's result shows");
                assert_eq!(row.finished_at, None, "a retried task is not finished");
                let early = claim(&fx.store, &default_queue(), 1, "w1", lease(), retry_at - secs(1)).await;
                assert!(early.is_empty(), "not claimable before its retry time");
                now = retry_at;
            }
            None => {
                assert_eq!(row.status, "FAILED");
                assert_eq!(row.finished_at, Some(now + secs(1)));
            }
        }
    }
}

async fn stale_lease_completion_is_rejected_and_reported(fx: Arc<Fixture>) {
    fx.store.insert(&[job("a", 2), job("b", 1)]).await.unwrap();
    let claimed = claim(&fx.store, &default_queue(), 2, "w1", lease(), t0()).await;
    let (a, b) = (&claimed[0], &claimed[1]);

    // Wrong token on "a", right one on "b": one statement, one applied, one reported.
    let mut forged = success(a, "1", t0());
    forged.lease_token = a.lease_token.wrapping_add(1);
    let report = fx.store.complete(&[forged, success(b, "2", t0())]).await.unwrap();
    assert_eq!((report.applied, report.stale), (1, vec!["a".to_string()]));
    let row = fx.row("a").await;
    assert_eq!((row.status.as_str(), row.lease_token), ("RUNNING", Some(a.lease_token)));

    // Completing "b" again: no longer RUNNING, so stale, and the first result stays.
    let report = fx.store.complete(&[success(b, "3", t0())]).await.unwrap();
    assert_eq!((report.applied, report.stale), (0, vec!["b".to_string()]));
    assert_eq!(fx.row("b").await.return_value, Some(json!(2)));

    // "a" is taken away (released, as a rescue would) and claimed again: the old holder's completion
    // must not touch the new attempt.
    assert_eq!(fx.store.release(&[(a.id.clone(), a.lease_token)]).await.unwrap(), 1);
    let again = claim(&fx.store, &default_queue(), 1, "w2", lease(), t0() + secs(1)).await.remove(0);
    let report = fx.store.complete(&[success(a, "\"late\"", t0())]).await.unwrap();
    assert_eq!(report.stale, vec!["a".to_string()]);
    let row = fx.row("a").await;
    assert_eq!((row.status.as_str(), row.lease_token), ("RUNNING", Some(again.lease_token)));
    assert_eq!(row.return_value, None);
}

async fn unstorable_json_fails_only_that_attempt(fx: Arc<Fixture>) {
    fx.store.insert(&[job("bad", 4), job("nul", 3), job("ok", 2), job("baderr", 1)]).await.unwrap();
    let claimed = claim(&fx.store, &default_queue(), 10, "w1", lease(), t0()).await;
    assert_eq!(ids(&claimed), ["bad", "nul", "ok", "baderr"]);
    let mut bad_error = failure(&claimed[3], &Value::Null, Some(t0() + secs(5)), t0());
    bad_error.kind =
        OutcomeKind::Failed { error_json: "Traceback (not JSON)".into(), retry_at: Some(t0() + secs(5)) };
    let report = fx
        .store
        .complete(&[
            success(&claimed[0], "{not json", t0()),
            // Valid JSON, but PostgreSQL's jsonb cannot hold U+0000: refused by the server, not by us.
            success(&claimed[1], r#""a\u0000b""#, t0()),
            success(&claimed[2], "[1]", t0()),
            bad_error,
        ])
        .await
        .unwrap();
    assert_eq!((report.applied, report.stale.len()), (4, 0), "every outcome is written");

    let bad = fx.row("bad").await;
    assert_eq!((bad.status.as_str(), bad.return_value), ("FAILED", None));
    assert_eq!(bad.errors[0]["exception_class_path"], "builtins.ValueError");
    assert!(bad.errors[0]["traceback"].as_str().unwrap().contains("return value"));

    let nul = fx.row("nul").await;
    match fx.kind {
        Kind::Postgres => assert_eq!(nul.status, "FAILED"),
        Kind::Sqlite => assert_eq!(nul.return_value, Some(json!("a\u{0}b"))),
    }
    assert_eq!(fx.row("ok").await.return_value, Some(json!([1])));

    let baderr = fx.row("baderr").await;
    assert_eq!((baderr.status.as_str(), baderr.available_at), ("READY", t0() + secs(5)), "retry kept");
    assert_eq!(baderr.errors[0]["exception_class_path"], "builtins.ValueError");
}

async fn release_restores_ready_state(fx: Arc<Fixture>) {
    fx.store.insert(&[job("x", 3), NewJob { max_attempts: 2, ..job("y", 2) }, job("z", 1)]).await.unwrap();
    let claimed = claim(&fx.store, &default_queue(), 3, "w1", lease(), t0()).await;
    let (x, y, z) = (&claimed[0], &claimed[1], &claimed[2]);

    // Wrong token: nothing happens.
    assert_eq!(fx.store.release(&[(z.id.clone(), z.lease_token.wrapping_add(1))]).await.unwrap(), 0);
    assert_eq!(fx.row("z").await.status, "RUNNING");

    // First attempt released: as if never claimed.
    assert_eq!(fx.store.release(&[(x.id.clone(), x.lease_token)]).await.unwrap(), 1);
    let row = fx.row("x").await;
    assert_eq!((row.status.as_str(), row.attempts, row.worker_ids.clone()), ("READY", 0, json!([])));
    assert_eq!((row.started_at, row.last_attempted_at), (None, None));
    assert_eq!((row.worker_id, row.lease_token), (None, None));
    let again = claim(&fx.store, &default_queue(), 1, "w2", lease(), t0() + secs(1)).await.remove(0);
    assert_eq!((again.id.as_str(), again.attempt), ("x", 1));
    assert_eq!(common::json(again.worker_ids_json.clone()), json!(["w2"]));
    assert_eq!(again.started_at, t0() + secs(1));

    // A second attempt released: back to one attempt by w1, first start kept, errors kept.
    fx.store.complete(&[failure(y, &error_object("tb"), Some(t0()), t0())]).await.unwrap();
    let second = claim(&fx.store, &default_queue(), 1, "w3", lease(), t0() + secs(2)).await.remove(0);
    assert_eq!((second.id.as_str(), second.attempt), ("y", 2));
    assert_eq!(fx.store.release(&[(second.id.clone(), second.lease_token)]).await.unwrap(), 1);
    let row = fx.row("y").await;
    assert_eq!((row.status.as_str(), row.attempts, row.worker_ids.clone()), ("READY", 1, json!(["w1"])));
    assert_eq!(row.started_at, Some(t0()));
    assert_eq!(row.errors.as_array().unwrap().len(), 1);
}

/// A claim whose answer was lost is handed back by its lease token alone; other claims are untouched.
async fn release_leases_hands_back_a_whole_claim(fx: Arc<Fixture>) {
    fx.store.insert(&[job("a", 4), job("b", 3), job("c", 2), job("d", 1)]).await.unwrap();
    let lost_lease = lease();
    let lost = claim(&fx.store, &default_queue(), 2, "w1", lost_lease, t0()).await;
    let kept = claim(&fx.store, &default_queue(), 1, "w1", lease(), t0()).await;
    assert_eq!(lost.len(), 2);

    assert_eq!(fx.store.release_leases(&[lost_lease, lease()]).await.unwrap(), 2);
    for job in &lost {
        let row = fx.row(&job.id).await;
        assert_eq!((row.status.as_str(), row.attempts, row.worker_ids.clone()), ("READY", 0, json!([])));
        assert_eq!((row.worker_id, row.lease_token, row.started_at), (None, None, None));
    }
    assert_eq!(fx.row(&kept[0].id).await.status, "RUNNING");
    assert_eq!(fx.store.release_leases(&[lost_lease]).await.unwrap(), 0, "nothing left to hand back");
    assert_eq!(fx.store.release_leases(&[]).await.unwrap(), 0);
    // Handed back tasks are claimed again, first in line.
    let again = claim(&fx.store, &default_queue(), 2, "w2", lease(), t0()).await;
    assert_eq!(again.iter().map(|job| job.id.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
}

/// Makes "someone else wrote" happen: a NOTIFY from another connection on PostgreSQL (what Django's
/// enqueue sends), an insert through another store on SQLite.
async fn write_elsewhere(fx: &Fixture, other: &Store, id: &str) {
    match &fx.admin {
        Admin::Postgres(_) => {
            // Distinct payloads: PostgreSQL folds identical notifications of one transaction into one.
            fx.exec("SELECT pg_notify('fasttasks', 'q' || g) FROM generate_series(1, 3) AS g").await
        }
        Admin::Sqlite(_) => other.insert(&[job(id, 1)]).await.unwrap(),
    }
}

async fn waker_wakes_on_write_from_elsewhere(fx: Arc<Fixture>) {
    let other = fx.new_store().await;
    let mut waker = fx.store.waker().await.unwrap();
    // On Linux SQLite wake-ups come from file events (no polling while idle); elsewhere they poll.
    assert_eq!(waker.is_event_driven(), cfg!(target_os = "linux") || matches!(fx.admin, Admin::Postgres(_)));
    assert!(!waker.wait(Duration::from_millis(50)).await.unwrap(), "nothing happened yet");

    for round in 0..2 {
        let writer = {
            let (fx, other) = (fx.clone(), other.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                write_elsewhere(&fx, &other, &format!("wake-{round}")).await;
            })
        };
        let started = Instant::now();
        assert!(waker.wait(Duration::from_secs(10)).await.unwrap(), "round {round}: woken");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(150), "round {round}: woke before the write ({waited:?})");
        assert!(waited < Duration::from_secs(3), "round {round}: woke late ({waited:?})");
        writer.await.unwrap();
        // One burst is one wake-up: nothing left over.
        assert!(!waker.wait(Duration::from_millis(150)).await.unwrap(), "round {round}: drained");
    }
}

async fn waker_times_out_without_writes(fx: Arc<Fixture>) {
    let mut waker = fx.store.waker().await.unwrap();
    let started = Instant::now();
    assert!(!waker.wait(Duration::from_millis(200)).await.unwrap());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(190), "returned early ({waited:?})");
    assert!(waited < Duration::from_secs(2), "returned late ({waited:?})");
}

/// Idle workers poll with claims that find nothing. If such a claim looked like a write to the other
/// workers' wakers, idle workers would keep waking each other forever.
async fn waker_ignores_claims_that_find_nothing(fx: Arc<Fixture>) {
    let other = fx.new_store().await;
    let mut waker = fx.store.waker().await.unwrap();
    for _ in 0..3 {
        assert!(claim(&other, &default_queue(), 10, "w2", lease(), t0()).await.is_empty());
        assert!(claim(&fx.store, &QueueFilter::All, 10, "w1", lease(), t0()).await.is_empty());
    }
    assert!(!waker.wait(Duration::from_millis(100)).await.unwrap());
}

async fn django_written_timestamps_parse(fx: Arc<Fixture>) {
    // What Django writes: SQLite gets `str(naive UTC datetime)`, which drops a zero fraction.
    let (stamp, enqueued, next) = match fx.kind {
        Kind::Sqlite => {
            ("'2026-01-01 00:00:00'", "'2025-12-31 23:59:59.500000'", "'2026-01-01 00:00:00.000001'")
        }
        Kind::Postgres => {
            ("'2026-01-01 00:00:00+00'", "'2025-12-31 23:59:59.5+00'", "'2026-01-01 00:00:00.000001+00'")
        }
    };
    fx.exec(&format!(
        "INSERT INTO fasttasks_task (id, task_path, queue_name, backend_name, priority, status, args, kwargs, \
         run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors) VALUES \
         ('dj', 'tests.tasks.noop', 'default', 'default', 0, 'READY', '[1]', '{{}}', {stamp}, {stamp}, {enqueued}, 0, 1, '[]', '[]'), \
         ('dj-next', 'tests.tasks.noop', 'default', 'default', 0, 'READY', '[]', '{{}}', NULL, {next}, {enqueued}, 0, 1, '[]', '[]')"
    ))
    .await;
    let midnight = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().to_utc();
    let claimed = claim(&fx.store, &default_queue(), 10, "w1", lease(), midnight).await;
    assert_eq!(ids(&claimed), ["dj"], "due exactly at its time; the row a microsecond later is not");
    let got = &claimed[0];
    assert_eq!(got.run_after, Some(midnight));
    assert_eq!(got.enqueued_at, midnight - chrono::Duration::milliseconds(500));
    assert_eq!(got.started_at, midnight);
    let report = fx.store.complete(&[success(got, "true", midnight + secs(1))]).await.unwrap();
    assert_eq!(report.applied, 1);
    let row = fx.row("dj").await;
    assert_eq!((row.status.as_str(), row.finished_at), ("SUCCESSFUL", Some(midnight + secs(1))));
}

/// One task row written by hand (not through the store), in the fixture's dialect: `values` gives
/// run_after, available_at, enqueued_at, attempts and worker_ids as SQL literals.
fn hand_written_row(id: &str, values: [&str; 5]) -> String {
    let [run_after, available_at, enqueued_at, attempts, worker_ids] = values;
    format!(
        "INSERT INTO fasttasks_task (id, task_path, queue_name, backend_name, priority, status, args, kwargs, \
         run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors) VALUES \
         ('{id}', 'tests.tasks.noop', 'default', 'default', 0, 'READY', '[]', '{{}}', {run_after}, \
         {available_at}, {enqueued_at}, {attempts}, 1, {worker_ids}, '[]')"
    )
}

/// Rows edited by hand with values that are legal in the table but that no job can carry (timestamps
/// beyond chrono's or Python's range, PostgreSQL's `infinity`, `attempts` at the integer limit): the
/// claim neither fails nor panics, and they run. The timestamps fall back as unparseable text does
/// (`run_after` none, the others the claim time); the attempt count saturates instead of overflowing.
async fn values_no_job_carries_do_not_stop_the_claim(fx: Arc<Fixture>) {
    let (past, limit) = match fx.kind {
        Kind::Sqlite => ("'2020-01-01 00:00:00'", "9223372036854775807"),
        Kind::Postgres => ("'2020-01-01 00:00:00+00'", "2147483647"),
    };
    let odd: Vec<(&str, [&str; 3])> = match fx.kind {
        Kind::Sqlite => vec![
            ("year-20000", ["'20000-01-01 00:00:00'", past, "'20000-01-01 00:00:00'"]),
            ("year-0", ["'0000-06-01 00:00:00'", past, "'0000-06-01 00:00:00'"]),
            ("number", ["0", "0", "0"]),
        ],
        Kind::Postgres => vec![
            ("infinity", ["'infinity'", past, "'infinity'"]),
            ("minus-infinity", ["'-infinity'", "'-infinity'", "'-infinity'"]),
            ("beyond-chrono", ["'294276-12-31 23:59:59+00'", past, "'294276-12-31 23:59:59+00'"]),
            ("year-20000", ["'20000-01-01 00:00:00+00'", past, "'20000-01-01 00:00:00+00'"]),
            ("before-christ", ["'4000-01-01 00:00:00+00 BC'", past, "'4000-01-01 00:00:00+00 BC'"]),
        ],
    };
    for (id, [run_after, available_at, enqueued_at]) in &odd {
        fx.exec(&hand_written_row(id, [run_after, available_at, enqueued_at, "0", "'[]'"])).await;
    }
    fx.exec(&hand_written_row("at-the-limit", ["NULL", past, past, limit, "'[]'"])).await;
    fx.store.insert(&[job("fine", 1)]).await.unwrap();

    let claimed = claim(&fx.store, &QueueFilter::All, 100, "w1", lease(), t0()).await;
    let by_id: HashMap<&str, &ClaimedJob> = claimed.iter().map(|job| (job.id.as_str(), job)).collect();
    assert_eq!(by_id.len(), odd.len() + 2, "every row is claimed: {:?}", ids(&claimed));
    for (id, _) in &odd {
        let job = by_id[id];
        assert_eq!((job.run_after, job.enqueued_at, job.started_at), (None, t0(), t0()), "{id}");
    }
    assert_eq!(by_id["at-the-limit"].attempt, i32::MAX);
    assert_eq!(by_id["fine"].enqueued_at, t0() - secs(1));

    let outcomes: Vec<Outcome> = claimed.iter().map(|job| success(job, "null", t0())).collect();
    assert_eq!(fx.store.complete(&outcomes).await.unwrap().applied, claimed.len() as u64);
    assert_eq!(fx.count("SUCCESSFUL").await, claimed.len() as i64);
}

/// `worker_ids` and `errors` edited by hand to JSON that is not an array: the claim and the completion
/// still append (the old value kept as the first element, as PostgreSQL's `||` does), on both databases.
async fn json_lists_that_are_not_arrays_keep_every_entry(fx: Arc<Fixture>) {
    let past = match fx.kind {
        Kind::Sqlite => "'2020-01-01 00:00:00'",
        Kind::Postgres => "'2020-01-01 00:00:00+00'",
    };
    for (id, value) in [("null", "'null'"), ("object", "'{\"old\": 1}'"), ("number", "'7'")] {
        fx.exec(&hand_written_row(id, ["NULL", past, past, "0", value])).await;
        fx.exec(&format!("UPDATE fasttasks_task SET errors = {value} WHERE id = '{id}'")).await;
    }
    let claimed = claim(&fx.store, &QueueFilter::All, 10, "w1", lease(), t0()).await;
    assert_eq!(claimed.len(), 3);
    let error = error_object("boom");
    let outcomes: Vec<Outcome> = claimed
        .iter()
        .map(|job| {
            let retry_at = (job.id == "number").then(|| t0() + secs(5));
            failure(job, &error, retry_at, t0())
        })
        .collect();
    assert_eq!(fx.store.complete(&outcomes).await.unwrap().applied, 3);
    for (id, old) in [("null", json!(null)), ("object", json!({"old": 1})), ("number", json!(7))] {
        let row = fx.row(id).await;
        assert_eq!(row.worker_ids, json!([old.clone(), "w1"]), "{id}");
        assert_eq!(row.errors, json!([old, error.clone()]), "{id}");
        let expected = if id == "number" { "READY" } else { "FAILED" };
        assert_eq!(row.status, expected, "{id}");
    }
}

/// A RUNNING row of a dead worker whose `crashes` was set to the integer limit: the rescue ends it
/// FAILED instead of overflowing (which would fail every rescue round, for every dead worker's task).
async fn rescue_counts_a_crash_at_the_integer_limit(fx: Arc<Fixture>) {
    fx.store.insert(&[job("poison", 1), job("other", 2)]).await.unwrap();
    claim(&fx.store, &QueueFilter::All, 10, "ghost", lease(), t0()).await;
    fx.exec("UPDATE fasttasks_task SET crashes = 2147483647 WHERE id = 'poison'").await;
    let request =
        RescueRequest { now: t0(), alive_since: t0() - secs(10), max_crashes: 3, previous_incarnation: None };
    let report = fx.store.rescue(&request).await.expect("rescue");
    assert_eq!((report.failed, report.requeued), (vec!["poison".to_owned()], vec!["other".to_owned()]));
    assert_eq!(fx.row("poison").await.status, "FAILED");
}

/// SQLite only (PostgreSQL's typed columns cannot hold these): rows a claim cannot give as jobs (a BLOB
/// where text belongs, bytes that are not UTF-8, a priority that is not an integer) end FAILED inside the
/// claim, by rowid and fenced by its lease, with an error naming the column; the claim returns the
/// others, and nothing is left RUNNING. Without this, SQLite's JSON functions (or the decoding) failed
/// the whole claim, every round: no task ran at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_unreadable_rows_end_failed_inside_the_claim() {
    common::run(Kind::Sqlite, |fx: Arc<Fixture>| async move {
        let past = "'2020-01-01 00:00:00'";
        let row = |id: &str, task_path: &str, priority: &str, args: &str, worker_ids: &str| {
            format!(
                "INSERT INTO fasttasks_task (id, task_path, queue_name, backend_name, priority, status, args, \
                 kwargs, available_at, enqueued_at, worker_ids) VALUES ({id}, {task_path}, 'default', \
                 'default', {priority}, 'READY', {args}, '{{}}', {past}, {past}, {worker_ids})"
            )
        };
        let noop = "'tests.tasks.noop'";
        fx.exec(&row("'blob-args'", noop, "0", "X'5B5D'", "'[]'")).await;
        fx.exec(&row("'blob-path'", "X'6E6F6F70'", "0", "'[]'", "'[]'")).await;
        fx.exec(&row("CAST(X'6964FF' AS TEXT)", noop, "0", "'[]'", "'[]'")).await;
        fx.exec(&row("'bad-utf8-args'", noop, "0", "CAST(X'5B22FF225D' AS TEXT)", "'[]'")).await;
        fx.exec(&format!(
            "PRAGMA ignore_check_constraints = ON; {}; {}; PRAGMA ignore_check_constraints = OFF",
            row("'text-priority'", noop, "'high'", "'[]'", "'[]'"),
            row("'worker-ids-not-json'", noop, "0", "'[]'", "'not json'"),
        ))
        .await;
        fx.store.insert(&[job("fine", 1)]).await.unwrap();

        let lease_token = lease();
        let claimed = claim(&fx.store, &default_queue(), 100, "w1", lease_token, t0()).await;
        assert_eq!(ids(&claimed), ["worker-ids-not-json", "fine"]);
        assert_eq!(claimed[0].worker_ids_json, r#"["not json","w1"]"#);
        assert_eq!(fx.count("RUNNING").await, 2);
        assert_eq!(fx.count("FAILED").await, 5);

        let Admin::Sqlite(pool) = &fx.admin else { unreachable!() };
        /// id (bytes), errors, finished_at, lease_token.
        type FailedRow = (Vec<u8>, String, Option<String>, Option<i64>);
        let failed: Vec<FailedRow> = sqlx::query_as(
            "SELECT CAST(id AS BLOB), errors, finished_at, lease_token FROM fasttasks_task \
             WHERE status = 'FAILED' ORDER BY rowid",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let expected = [
            ("blob-args", "column args holds a BLOB (2 bytes), not text"),
            ("noop", "column task_path holds a BLOB (4 bytes), not text"),
            ("id\u{fffd}", "column id holds text that is not valid UTF-8"),
            ("bad-utf8-args", "column args holds text that is not valid UTF-8"),
            ("text-priority", "column priority holds a text value, not an integer"),
        ];
        for ((id, errors, finished_at, lease), (expected_id, reason)) in failed.iter().zip(expected) {
            let errors: Value = serde_json::from_str(errors).unwrap();
            let entry = &errors[0];
            let traceback = entry["traceback"].as_str().unwrap();
            assert!(traceback.contains(reason), "{traceback}");
            assert!(traceback.contains("corrupt task row"), "{traceback}");
            if expected_id != "noop" {
                assert!(traceback.contains(&format!("{expected_id:?}")), "{traceback}");
                assert!(String::from_utf8_lossy(id).starts_with(&expected_id[..2]));
            }
            assert_eq!(entry["exception_class_path"], "builtins.ValueError");
            assert_eq!((entry["attempt"].clone(), entry["worker_id"].clone()), (json!(1), json!("w1")));
            assert_eq!((finished_at.is_some(), *lease), (true, None));
        }
        // Nothing unreadable is left to trip the next claim.
        assert!(claim(&fx.store, &QueueFilter::All, 100, "w1", lease(), t0()).await.is_empty());
    })
    .await;
}

/// SQLite only (PostgreSQL's typed columns cannot hold it): a timestamp text that does not parse must
/// not stop the queue. The job is claimed; its informational timestamps fall back (see `sqlite.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_corrupt_timestamp_does_not_block_the_queue() {
    common::run(Kind::Sqlite, |fx: Arc<Fixture>| async move {
        fx.exec(
            "INSERT INTO fasttasks_task (id, task_path, queue_name, backend_name, priority, status, args, kwargs, \
             run_after, available_at, enqueued_at, attempts, max_attempts, worker_ids, errors) VALUES \
             ('odd', 'tests.tasks.noop', 'default', 'default', 5, 'READY', '[]', '{}', 'soon', \
              '2020-01-01 00:00:00', 'yesterday', 0, 1, '[]', '[]')",
        )
        .await;
        fx.store.insert(&[job("fine", 1)]).await.unwrap();
        let claimed = claim(&fx.store, &default_queue(), 10, "w1", lease(), t0()).await;
        assert_eq!(ids(&claimed), ["odd", "fine"]);
        assert_eq!((claimed[0].run_after, claimed[0].enqueued_at), (None, t0()));
        assert_eq!(claimed[1].enqueued_at, t0() - secs(1));
    })
    .await;
}

/// PostgreSQL only: the claim uses the partial ready index. The table is shaped like a real one (mostly
/// finished history, a few hundred ready rows) and ANALYZEd, so this is the plan the planner picks on
/// its own, for both statement variants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claim_plan_uses_ready_index() {
    common::run(Kind::Postgres, |fx: Arc<Fixture>| async move {
        let jobs: Vec<NewJob> = (0..20_000)
            .map(|i| NewJob {
                queue_name: ["default", "emails"][i % 2].into(),
                ..job(&format!("h{i:05}"), 1)
            })
            .collect();
        fx.store.insert(&jobs).await.unwrap();
        fx.exec(
            "UPDATE fasttasks_task SET status = 'SUCCESSFUL', finished_at = enqueued_at, attempts = 1 \
             WHERE id >= 'h00500'",
        )
        .await;
        fx.exec("ANALYZE fasttasks_task").await;
        let Store::Postgres(store) = &fx.store else { unreachable!() };
        for queues in [QueueFilter::All, default_queue()] {
            let request = ClaimRequest {
                backend_name: "default",
                queues: &queues,
                limit: 10,
                worker_id: "w1",
                lease_token: 1,
                now: t0(),
            };
            let plan = store.explain_claim(&request).await.unwrap();
            assert!(plan.contains("fasttasks_task_ready_idx"), "{queues:?}: ready index not used:\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{queues:?}: sequential scan:\n{plan}");
        }
    })
    .await;
}

/// PostgreSQL only: with no statistics at all (a fresh table after a burst of inserts, autovacuum not
/// run yet) the claim still walks the ready index in order and stops at LIMIT, instead of a bitmap scan
/// plus a sort of every READY row (measured: 24 ms per claim at 25,000 READY rows, ten times slower
/// drains). `PLANNER_SETTINGS` in postgres.rs is what guarantees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claim_plan_is_an_ordered_index_scan_without_statistics() {
    common::run(Kind::Postgres, |fx: Arc<Fixture>| async move {
        let jobs: Vec<NewJob> = (0..25_000).map(|i| job(&format!("r{i:05}"), 1)).collect();
        fx.store.insert(&jobs).await.unwrap();
        let Store::Postgres(store) = &fx.store else { unreachable!() };
        for queues in [QueueFilter::All, default_queue()] {
            let request = ClaimRequest {
                backend_name: "default",
                queues: &queues,
                limit: 8,
                worker_id: "w1",
                lease_token: 1,
                now: t0(),
            };
            let plan = store.explain_claim(&request).await.unwrap();
            assert!(plan.contains("Index Scan using fasttasks_task_ready_idx"), "{queues:?}:\n{plan}");
            assert!(!plan.contains("Bitmap"), "{queues:?}: bitmap scan:\n{plan}");
            assert!(!plan.contains("Sort"), "{queues:?}: sorts the ready rows:\n{plan}");
        }
    })
    .await;
}
