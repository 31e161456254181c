//! The services of one worker process, in River's shape:
//!
//! - the **producer** claims jobs only when slots are free, never more than are free, and hands each
//!   one as a [`JobTicket`] to the executor's channel. Slots are `concurrency` running tasks plus a
//!   claim-ahead window that follows the executor's pace (see [`PREFETCH_HORIZON`]): fast tasks are
//!   claimed hundreds at a time, slow ones only for idle slots;
//! - the **executor** is not here: the binding crate runs Python threads that take tickets from the
//!   channel (tests and the ceiling benchmark use [`spawn_rust_executor`]); each ticket's [`Reply`]
//!   carries the outcome back and frees the slot;
//! - the **completer** writes outcomes in batches: whatever has arrived while the previous write was in
//!   flight goes in the next statement, so batches grow with load and latency stays low when idle.
//!
//! Stopping is in two steps. [`WorkerControl::stop`] (first SIGTERM): claim nothing more, give the
//! tickets nobody has started back to the database, let running tasks finish, write every outcome,
//! return. [`WorkerControl::abort`] (second signal): the same without waiting for running tasks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};

use crate::config::WorkerConfig;
use crate::job::{ClaimedJob, Outcome, OutcomeKind};
use crate::store::{ClaimRequest, Store, Waker};
use crate::time::Timestamp;

/// The longest pause between retries of a failing database call.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The first pause after a failing database call.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// In batch mode, how often to look again while tasks are still running.
const BATCH_RECHECK: Duration = Duration::from_millis(20);
/// After an abort, how long the completer keeps trying to write what it holds.
const ABORT_FLUSH_DEADLINE: Duration = Duration::from_secs(3);
/// At exit, how long to try to remove the worker's registration (a worker that cannot is rescued like
/// a dead one once its heartbeat is stale).
const DEREGISTER_DEADLINE: Duration = Duration::from_secs(2);
/// Events kept for the host to read; older ones are dropped (and counted) past this.
const MAX_QUEUED_EVENTS: usize = 1_000;
/// How long after a failed claim its lease token is still handed back (see
/// `Producer::settle_doubtful_claims`).
const DOUBTFUL_CLAIM_SETTLE: Duration = Duration::from_secs(5);
/// How often, meanwhile.
const DOUBTFUL_CLAIM_RECHECK: Duration = Duration::from_millis(500);
/// Claim-ahead covers what the executor starts in this much time at its recent pace. A claimed task
/// waits for a slot about this long at most, so a task enqueued later at a higher priority (or another,
/// idle worker) is kept waiting by claim-ahead no longer than this; in exchange claims are large
/// enough that their cost per task is small. See [`WorkerConfig::prefetch`]. When claims themselves
/// take longer (a busy database), the horizon grows to [`CLAIMS_PER_HORIZON`] claim durations, so
/// that the executor does not run dry while the next claim is under way.
pub const PREFETCH_HORIZON: Duration = Duration::from_millis(20);
/// See [`PREFETCH_HORIZON`]. The producer refills at half the window: two claim durations of work.
const CLAIMS_PER_HORIZON: f64 = 4.0;
/// How often the producer re-measures the executor's pace.
const PACE_SAMPLE: Duration = Duration::from_millis(10);

/// Where the worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Claim nothing more; finish what runs; write everything; return.
    Draining,
    /// Claim nothing more; hand back what has not started; write what is done; return now.
    Aborting,
}

/// Stops a running worker. Cheap to clone; usable from any thread.
#[derive(Debug, Clone)]
pub struct WorkerControl {
    phase: Arc<watch::Sender<Phase>>,
}

impl WorkerControl {
    fn new() -> (Self, watch::Receiver<Phase>) {
        let (sender, receiver) = watch::channel(Phase::Running);
        (Self { phase: Arc::new(sender) }, receiver)
    }

    /// Graceful stop: no new claims, running tasks finish, results are written.
    pub fn stop(&self) {
        self.phase.send_if_modified(|phase| {
            if *phase == Phase::Running {
                *phase = Phase::Draining;
                true
            } else {
                false
            }
        });
    }

    /// Immediate stop: do not wait for running tasks.
    pub fn abort(&self) {
        self.phase.send_if_modified(|phase| {
            if *phase != Phase::Aborting {
                *phase = Phase::Aborting;
                true
            } else {
                false
            }
        });
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }
}

/// Counters of one worker, readable while it runs.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub claimed: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Failed attempts that were scheduled to run again.
    pub retried: AtomicU64,
    /// Claimed jobs handed back unstarted at shutdown.
    pub released: AtomicU64,
    /// Outcomes the database rejected because the attempt's lease was no longer ours.
    pub stale: AtomicU64,
    pub database_errors: AtomicU64,
    /// Outcomes received from the executor and not yet written.
    pub pending_outcomes: AtomicU64,
    /// Jobs handed to the executor whose outcome has not come back.
    pub in_flight: AtomicU64,
    /// The last heartbeat the database accepted (registration included); see [`WorkerStats::heartbeat`].
    heartbeat: Mutex<Option<HeartbeatMark>>,
    /// Whether the last maintenance round found this worker holding the leader lease.
    pub leader: AtomicBool,
}

/// When the worker's row last moved forward: the time written (what rescuers compare) and the
/// monotonic instant it was taken, so that its age does not depend on wall-clock jumps.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatMark {
    pub at: Timestamp,
    pub taken: Instant,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub claimed: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub retried: u64,
    pub released: u64,
    pub stale: u64,
    pub database_errors: u64,
    pub pending_outcomes: u64,
    pub in_flight: u64,
    /// The time of the last successful heartbeat (or registration), None before the first.
    pub last_heartbeat: Option<Timestamp>,
    pub leader: bool,
}

impl WorkerStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            claimed: load(&self.claimed),
            succeeded: load(&self.succeeded),
            failed: load(&self.failed),
            retried: load(&self.retried),
            released: load(&self.released),
            stale: load(&self.stale),
            database_errors: load(&self.database_errors),
            pending_outcomes: load(&self.pending_outcomes),
            in_flight: load(&self.in_flight),
            last_heartbeat: self.heartbeat().map(|mark| mark.at),
            leader: self.leader.load(Ordering::Relaxed),
        }
    }

    /// Records a heartbeat the database accepted: `at` is the time written, `taken` when it was read
    /// from the clock (before the round's statements ran).
    pub fn record_heartbeat(&self, at: Timestamp, taken: Instant) {
        let mut mark = self.heartbeat.lock().unwrap_or_else(|poison| poison.into_inner());
        *mark = Some(HeartbeatMark { at, taken });
    }

    /// The last heartbeat the database accepted, None before registration.
    pub fn heartbeat(&self) -> Option<HeartbeatMark> {
        *self.heartbeat.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventLevel {
    Debug,
    Info,
    Warning,
    Error,
}

/// Something worth logging. The core never logs itself: the host (Python) drains these on its own
/// thread, so no tokio thread ever needs the GIL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEvent {
    pub level: EventLevel,
    pub message: String,
}

/// A bounded queue of events shared with the host.
#[derive(Debug, Default)]
pub struct EventLog {
    events: Mutex<VecDeque<WorkerEvent>>,
    dropped: AtomicU64,
}

impl EventLog {
    pub fn push(&self, level: EventLevel, message: impl Into<String>) {
        let mut events = self.events.lock().unwrap_or_else(|poison| poison.into_inner());
        if events.len() >= MAX_QUEUED_EVENTS {
            events.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        events.push_back(WorkerEvent { level, message: message.into() });
    }

    /// Takes every queued event, oldest first.
    pub fn drain(&self) -> Vec<WorkerEvent> {
        let mut events = self.events.lock().unwrap_or_else(|poison| poison.into_inner());
        events.drain(..).collect()
    }
}

/// What the host shares with a running worker.
#[derive(Debug, Clone)]
pub struct WorkerShared {
    pub control: WorkerControl,
    pub stats: Arc<WorkerStats>,
    pub events: Arc<EventLog>,
    /// Ids of running tasks whose cancellation was asked for, found by the maintenance round; the
    /// executor's side takes them (the same id comes again every round until the task ends).
    pub cancel_requests: Arc<Mutex<Vec<String>>>,
}

/// One claimed job for the executor. Exactly one of [`Reply::send`] or release happens per ticket.
#[derive(Debug)]
pub struct JobTicket {
    pub job: ClaimedJob,
    pub reply: Reply,
}

/// Carries one attempt's outcome to the completer and frees its execution slot.
///
/// Dropped without an outcome (an executor bug, a thread that died), it reports the attempt as failed,
/// so the row never stays RUNNING because of us.
#[derive(Debug)]
pub struct Reply {
    id: String,
    lease_token: i64,
    route: Option<ReplyRoute>,
}

#[derive(Debug)]
struct ReplyRoute {
    outcomes: mpsc::UnboundedSender<Outcome>,
    stats: Arc<WorkerStats>,
    slots: Arc<Slots>,
}

/// Dropping the route frees the ticket's slot: exactly once per ticket, whether it was answered,
/// released or dropped.
impl Drop for ReplyRoute {
    fn drop(&mut self) {
        let in_flight = self.stats.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        self.slots.returned.fetch_add(1, Ordering::Relaxed);
        if in_flight <= self.slots.wake_at_or_below.load(Ordering::Acquire) {
            self.slots.freed.notify_one();
        }
    }
}

/// The producer's side of the tickets in flight (their count is `WorkerStats::in_flight`).
#[derive(Debug)]
struct Slots {
    /// Woken when a ticket is answered or released and at most `wake_at_or_below` remain in flight:
    /// the producer sets the level it waits for, so that a busy executor does not wake it per task.
    freed: Notify,
    wake_at_or_below: AtomicU64,
    /// Tickets answered or released so far: the executor's pace.
    returned: AtomicU64,
}

impl Default for Slots {
    fn default() -> Self {
        Self { freed: Notify::new(), wake_at_or_below: AtomicU64::new(u64::MAX), returned: AtomicU64::new(0) }
    }
}

impl Slots {
    /// Waits until at most `level` tickets are in flight (or the phase changes).
    async fn wait_until_at_most(&self, level: u64, stats: &WorkerStats, phase: &mut watch::Receiver<Phase>) {
        self.wake_at_or_below.store(level, Ordering::Release);
        // Checked after publishing the level: a ticket returned in between has either seen the level
        // (and notified) or is counted here.
        if stats.in_flight.load(Ordering::Acquire) > level {
            tokio::select! {
                _ = self.freed.notified() => {}
                _ = phase.changed() => {}
            }
        }
        self.wake_at_or_below.store(u64::MAX, Ordering::Release);
    }
}

impl Reply {
    /// Sends the outcome of this attempt.
    pub fn send(mut self, kind: OutcomeKind) {
        self.deliver(kind);
    }

    fn deliver(&mut self, kind: OutcomeKind) {
        if let Some(route) = self.route.take() {
            route.stats.pending_outcomes.fetch_add(1, Ordering::Relaxed);
            let outcome = Outcome {
                id: std::mem::take(&mut self.id),
                lease_token: self.lease_token,
                finished_at: crate::time::now(),
                kind,
            };
            if route.outcomes.send(outcome).is_err() {
                // The completer is gone (aborted): the row stays RUNNING and crash rescue owns it.
                route.stats.pending_outcomes.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Gives the slot back without an outcome; the caller returns the row to READY.
    fn release(mut self) -> (String, i64) {
        drop(self.route.take());
        (std::mem::take(&mut self.id), self.lease_token)
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.route.is_some() {
            let error = serde_json::json!({
                "exception_class_path": "fasttasks.exceptions.WorkerError",
                "traceback": "fasttasks.exceptions.WorkerError: the executor dropped this attempt without reporting an outcome\n",
            });
            self.deliver(OutcomeKind::Failed { error_json: error.to_string(), retry_at: None });
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    pub stats: StatsSnapshot,
    pub elapsed: Duration,
    /// True when the run ended by [`WorkerControl::abort`].
    pub aborted: bool,
}

/// Creates the shared control, counters and event log for a worker about to run.
pub fn new_shared() -> WorkerShared {
    let (control, _) = WorkerControl::new();
    WorkerShared { control, stats: Arc::default(), events: Arc::default(), cancel_requests: Arc::default() }
}

/// Runs the producer and the completer until the work is done (batch / max tasks) or the worker is
/// stopped. `tickets` is the executor's channel: both ends are needed, the receiver to take back
/// tickets nobody started when stopping.
pub async fn run(
    store: Store,
    config: WorkerConfig,
    shared: WorkerShared,
    tickets: (crossbeam_channel::Sender<JobTicket>, crossbeam_channel::Receiver<JobTicket>),
) -> crate::Result<RunSummary> {
    config.validate()?;
    let started = Instant::now();
    // Up before registration (it answers 503 until then) and down only after the last write, so that
    // a probe sees the whole life of the worker; a port in use stops the worker before it claims.
    let health = match config.health_port {
        Some(_) => {
            let server = crate::health::HealthServer::start(&config, shared.clone()).await?;
            shared.events.push(
                EventLevel::Info,
                format!("health checks on http://{} (/live, /ready, /health)", server.local_addr()),
            );
            Some(server)
        }
        None => None,
    };
    // Registered before the first claim, so that no rescuer takes this worker's tasks for abandoned.
    crate::maintenance::register(&store, &config, &shared).await?;
    let maintenance = tokio::spawn(crate::maintenance::run(
        store.clone(),
        config.clone(),
        shared.clone(),
        shared.control.phase.subscribe(),
    ));
    let (ticket_sender, ticket_receiver) = tickets;
    let slots = Arc::new(Slots::default());
    let (outcome_sender, outcome_receiver) = mpsc::unbounded_channel();
    let completer = tokio::spawn(complete_outcomes(
        store.clone(),
        outcome_receiver,
        shared.clone(),
        config.completion_batch_size,
    ));

    let mut producer = Producer {
        store: &store,
        config: &config,
        shared: &shared,
        slots: &slots,
        outcome_sender,
        ticket_sender,
        phase: shared.control.phase.subscribe(),
        waker: None,
        claimed_total: 0,
        pace: Pace::new(),
        doubtful_claims: Vec::new(),
        next_settle: Instant::now(),
    };
    producer.run().await;
    producer.next_settle = Instant::now(); // a last try, however recent the previous one
    producer.settle_doubtful_claims().await;
    let Producer { outcome_sender, mut phase, .. } = producer;

    // Stopped by a signal: tickets still in the channel were claimed but never started; hand them
    // back first, so another worker can take them while we wait for the running ones. At a natural
    // end (batch drained, max tasks reached) the executor runs them.
    if *phase.borrow() != Phase::Running {
        let unstarted: Vec<(String, i64)> =
            ticket_receiver.try_iter().map(|ticket| ticket.reply.release()).collect();
        release_unstarted(&store, &shared, &unstarted).await;
    }

    // Wait for the running tasks unless aborted.
    while shared.stats.in_flight.load(Ordering::Acquire) > 0 && *phase.borrow() != Phase::Aborting {
        slots.wait_until_at_most(0, &shared.stats, &mut phase).await;
    }
    drop(outcome_sender);
    // The completer ends when every Reply is gone (all outcomes in) or, after an abort, by deadline.
    let aborted = *phase.borrow() == Phase::Aborting;
    if aborted {
        // Running tasks may never report; write what has been reported, then stop waiting.
        let deadline = Instant::now() + ABORT_FLUSH_DEADLINE;
        while shared.stats.pending_outcomes.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        completer.abort();
    } else {
        let _ = completer.await;
    }
    // Heartbeats stop only now: until the last result is written, the running tasks are ours.
    maintenance.abort();
    crate::maintenance::deregister(&store, &config, &shared, DEREGISTER_DEADLINE).await;
    if let Some(server) = health {
        server.stop().await;
    }
    Ok(RunSummary { stats: shared.stats.snapshot(), elapsed: started.elapsed(), aborted })
}

struct Producer<'a> {
    store: &'a Store,
    config: &'a WorkerConfig,
    shared: &'a WorkerShared,
    slots: &'a Arc<Slots>,
    outcome_sender: mpsc::UnboundedSender<Outcome>,
    ticket_sender: crossbeam_channel::Sender<JobTicket>,
    phase: watch::Receiver<Phase>,
    waker: Option<Waker>,
    claimed_total: u64,
    pace: Pace,
    /// Lease tokens of claims whose answer was lost, with when: see [`Producer::settle_doubtful_claims`].
    doubtful_claims: Vec<(i64, Instant)>,
    /// When the doubtful claims may be handed back again (at once after a new one).
    next_settle: Instant,
}

/// The executor's recent pace (tickets returned per second), smoothed.
struct Pace {
    per_second: f64,
    sampled_at: Instant,
    returned_then: u64,
    /// Smoothed duration of a claim that found work, in seconds.
    claim_seconds: f64,
}

impl Pace {
    fn new() -> Self {
        Self { per_second: 0.0, sampled_at: Instant::now(), returned_then: 0, claim_seconds: 0.0 }
    }

    fn claimed_in(&mut self, took: Duration) {
        self.claim_seconds = 0.7 * self.claim_seconds + 0.3 * took.as_secs_f64();
    }

    fn update(&mut self, returned_now: u64) {
        let elapsed = self.sampled_at.elapsed();
        if elapsed < PACE_SAMPLE {
            return;
        }
        let latest = (returned_now - self.returned_then) as f64 / elapsed.as_secs_f64();
        // Fast to follow: a worker goes from idle to a burst (or to long tasks) within a few claims.
        self.per_second = 0.5 * self.per_second + 0.5 * latest;
        self.sampled_at = Instant::now();
        self.returned_then = returned_now;
    }

    /// How many claimed tickets may wait for a slot: what the executor starts within the horizon.
    fn prefetch_window(&self, max_prefetch: usize) -> usize {
        let horizon = PREFETCH_HORIZON.as_secs_f64().max(CLAIMS_PER_HORIZON * self.claim_seconds);
        ((self.per_second * horizon) as usize).min(max_prefetch)
    }
}

impl Producer<'_> {
    async fn run(&mut self) {
        let mut backoff = MIN_BACKOFF;
        if self.config.listen {
            self.waker = self.connect_waker().await;
        }
        loop {
            if *self.phase.borrow() != Phase::Running {
                return;
            }
            let remaining = self.config.max_tasks.map(|max| max.saturating_sub(self.claimed_total));
            if remaining == Some(0) {
                return;
            }
            self.settle_doubtful_claims().await;
            // Demand = free slots: idle execution slots plus the claim-ahead window, less what is in
            // flight. With a window, wait until half of it is free, so that claims stay large while the
            // tickets still queued keep the executor busy.
            self.pace.update(self.slots.returned.load(Ordering::Relaxed));
            let window = self.pace.prefetch_window(self.config.prefetch);
            let capacity = self.config.concurrency + window;
            let least_claim = (window / 2).max(1);
            let in_flight = self.shared.stats.in_flight.load(Ordering::Acquire) as usize;
            let free = capacity.saturating_sub(in_flight);
            if free < least_claim {
                let level = (capacity - least_claim) as u64;
                self.slots.wait_until_at_most(level, &self.shared.stats, &mut self.phase).await;
                continue;
            }
            let wanted = remaining.map_or(free, |r| free.min(r.min(usize::MAX as u64) as usize));
            let idle_before_claim = self.batch_was_idle();
            let claim_started = Instant::now();
            let claimed = match self.claim(wanted).await {
                Ok(jobs) => {
                    backoff = MIN_BACKOFF;
                    jobs
                }
                Err(error) => {
                    self.shared.stats.database_errors.fetch_add(1, Ordering::Relaxed);
                    self.shared.events.push(
                        EventLevel::Warning,
                        format!("claiming tasks failed, retrying in {backoff:?}: {error}"),
                    );
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let got = claimed.len();
            if got > 0 {
                self.pace.claimed_in(claim_started.elapsed());
            }
            self.claimed_total += got as u64;
            self.shared.stats.claimed.fetch_add(got as u64, Ordering::Relaxed);
            for job in claimed {
                self.shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
                let reply = Reply {
                    id: job.id.clone(),
                    lease_token: job.lease_token,
                    route: Some(ReplyRoute {
                        outcomes: self.outcome_sender.clone(),
                        stats: self.shared.stats.clone(),
                        slots: self.slots.clone(),
                    }),
                };
                if let Err(returned) = self.ticket_sender.send(JobTicket { job, reply }) {
                    // No executor left (it shut down): give the job back instead of losing it.
                    let claim = returned.0.reply.release();
                    release_unstarted(self.store, self.shared, &[claim]).await;
                    return;
                }
            }
            if got == wanted {
                continue; // the queue may hold more: claim again as soon as slots free up
            }
            if self.config.batch {
                if got == 0 && idle_before_claim {
                    return;
                }
                self.pause(BATCH_RECHECK).await;
                continue;
            }
            self.wait_for_work().await;
        }
    }

    async fn claim(&mut self, limit: usize) -> crate::Result<Vec<ClaimedJob>> {
        let lease_token = rand::random::<i64>();
        let request = ClaimRequest {
            backend_name: &self.config.backend_name,
            queues: &self.config.queues,
            limit,
            worker_id: &self.config.worker_id,
            lease_token,
            now: crate::time::now(),
        };
        let result = self.store.claim(&request).await;
        if result.is_err() {
            self.doubtful_claims.push((lease_token, Instant::now()));
            self.next_settle = Instant::now();
        }
        result
    }

    /// A claim that failed may still have been committed: the connection can drop after the database
    /// committed and before the answer arrived (a server restart, a killed backend). Its rows would
    /// stay RUNNING under this worker, which is alive, so no rescuer would take them, and nothing
    /// would run them. They are handed back by lease token once the database answers again, and
    /// again for [`DOUBTFUL_CLAIM_SETTLE`] after the failure, in case the old server process was
    /// still finishing the statement.
    async fn settle_doubtful_claims(&mut self) {
        if self.doubtful_claims.is_empty() || Instant::now() < self.next_settle {
            return;
        }
        // Not before every claim: during a busy drain that would be one more statement per claim.
        self.next_settle = Instant::now() + DOUBTFUL_CLAIM_RECHECK;
        let tokens: Vec<i64> = self.doubtful_claims.iter().map(|(token, _)| *token).collect();
        // While the database is still away this fails, and so does the next claim, which backs off.
        if let Ok(released) = self.store.release_leases(&tokens).await {
            if released > 0 {
                self.shared.stats.released.fetch_add(released, Ordering::Relaxed);
                self.shared.events.push(
                    EventLevel::Warning,
                    format!(
                        "handed back {released} tasks of a claim whose answer was lost with the database \
                         connection"
                    ),
                );
            }
            self.doubtful_claims.retain(|(_, failed_at)| failed_at.elapsed() < DOUBTFUL_CLAIM_SETTLE);
        }
    }

    /// Batch mode ends on an empty claim made while nothing was running and every outcome was written:
    /// a written retry may make a task due again, so the last look must come after the last write.
    fn batch_was_idle(&self) -> bool {
        let stats = &self.shared.stats;
        stats.in_flight.load(Ordering::Relaxed) == 0 && stats.pending_outcomes.load(Ordering::Relaxed) == 0
    }

    /// Sleeps until a wake-up (NOTIFY, SQLite data_version change), the poll interval, or a stop.
    async fn wait_for_work(&mut self) {
        // With wake-ups that work (NOTIFY, file events) the poll only catches deferred tasks coming due
        // and lost notifications: it need not be more frequent than the heartbeat, which keeps an idle
        // worker near one query per second in all (heartbeat round plus this claim).
        let event_driven = self.waker.as_ref().is_some_and(Waker::is_event_driven);
        let base = if event_driven {
            self.config.poll_interval.max(self.config.heartbeat_interval)
        } else {
            self.config.poll_interval
        };
        let interval = jittered(base);
        let Some(waker) = self.waker.as_mut() else {
            self.pause(interval).await;
            if self.config.listen {
                self.waker = self.connect_waker().await;
            }
            return;
        };
        let outcome = tokio::select! {
            woken = waker.wait(interval) => woken,
            _ = self.phase.changed() => return,
        };
        if let Err(error) = outcome {
            self.shared.events.push(
                EventLevel::Warning,
                format!("the wake-up listener failed, polling every {interval:?} until it is back: {error}"),
            );
            self.waker = None;
        }
    }

    async fn connect_waker(&mut self) -> Option<Waker> {
        match self.store.waker().await {
            Ok(waker) => Some(waker),
            Err(error) => {
                self.shared.events.push(
                    EventLevel::Warning,
                    format!("cannot listen for new tasks, polling instead: {error}"),
                );
                None
            }
        }
    }

    /// Sleeps, but returns early when the phase changes.
    async fn pause(&mut self, duration: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = self.phase.changed() => {}
        }
    }
}

/// `interval` plus up to 20%, so that idle workers started together do not poll the database in step.
/// Never shorter: an idle worker makes at most one claim per `--interval`.
fn jittered(interval: Duration) -> Duration {
    let factor = 1.0 + rand::random::<f64>() * 0.2;
    interval.mul_f64(factor)
}

async fn release_unstarted(store: &Store, shared: &WorkerShared, claims: &[(String, i64)]) {
    if claims.is_empty() {
        return;
    }
    let mut backoff = MIN_BACKOFF;
    for _ in 0..5 {
        match store.release(claims).await {
            Ok(released) => {
                shared.stats.released.fetch_add(released, Ordering::Relaxed);
                return;
            }
            Err(error) => {
                shared.stats.database_errors.fetch_add(1, Ordering::Relaxed);
                shared.events.push(
                    EventLevel::Warning,
                    format!("handing back {} unstarted tasks failed: {error}", claims.len()),
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    shared.events.push(
        EventLevel::Error,
        format!("gave up handing back {} unstarted tasks; crash rescue will return them", claims.len()),
    );
}

/// The completer: writes outcomes in batches until every sender is gone. A failing write is retried
/// with backoff and never drops outcomes, except after an abort, where the caller stops waiting.
async fn complete_outcomes(
    store: Store,
    mut outcomes: mpsc::UnboundedReceiver<Outcome>,
    shared: WorkerShared,
    batch_size: usize,
) {
    let mut batch: Vec<Outcome> = Vec::with_capacity(batch_size);
    while let Some(first) = outcomes.recv().await {
        batch.push(first);
        // Natural batching: take whatever arrived while the previous write was running.
        while batch.len() < batch_size {
            match outcomes.try_recv() {
                Ok(outcome) => batch.push(outcome),
                Err(_) => break,
            }
        }
        write_batch(&store, &shared, &batch).await;
        shared.stats.pending_outcomes.fetch_sub(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
    }
}

async fn write_batch(store: &Store, shared: &WorkerShared, batch: &[Outcome]) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match store.complete(batch).await {
            Ok(report) => {
                let stats = &shared.stats;
                for outcome in batch {
                    if report.stale.contains(&outcome.id) {
                        continue;
                    }
                    let counter = match &outcome.kind {
                        OutcomeKind::Succeeded { .. } => &stats.succeeded,
                        OutcomeKind::Failed { retry_at: Some(_), .. } => &stats.retried,
                        OutcomeKind::Failed { retry_at: None, .. } => &stats.failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                if !report.stale.is_empty() {
                    stats.stale.fetch_add(report.stale.len() as u64, Ordering::Relaxed);
                    shared.events.push(
                        EventLevel::Warning,
                        format!(
                            "{} results were rejected because their attempt was taken over (lease expired): {}",
                            report.stale.len(),
                            report.stale.join(", ")
                        ),
                    );
                }
                return;
            }
            Err(error) => {
                shared.stats.database_errors.fetch_add(1, Ordering::Relaxed);
                shared.events.push(
                    EventLevel::Warning,
                    format!("writing {} results failed, retrying in {backoff:?}: {error}", batch.len()),
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A Rust executor for tests and the no-Python ceiling benchmark: `threads` OS threads that run
/// `execute` on every ticket until the channel closes.
pub fn spawn_rust_executor<F>(
    threads: usize,
    tickets: crossbeam_channel::Receiver<JobTicket>,
    execute: F,
) -> Vec<std::thread::JoinHandle<()>>
where
    F: Fn(&ClaimedJob) -> OutcomeKind + Send + Sync + 'static,
{
    let execute = Arc::new(execute);
    (0..threads)
        .map(|_| {
            let tickets = tickets.clone();
            let execute = execute.clone();
            std::thread::spawn(move || {
                for ticket in tickets.iter() {
                    let kind = execute(&ticket.job);
                    ticket.reply.send(kind);
                }
            })
        })
        .collect()
}
