//! The consumer's own dependencies failing (issue #26): each recovery path on the embedded
//! backend, with the store, the queues, the lease store and the event bus wrapped to fail on
//! cue. A fault costs a retry or a rescheduled copy, never a batch item failure, a lost job, a
//! second call or a second count.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fanout_consumer::{Backends, BatchReport, Consumer, Settings};
use fanout_shared::embedded::EmbeddedBackend;
use fanout_shared::fleet::{FleetStore, HostStates, Lease};
use fanout_shared::metrics::Metric;
use fanout_shared::runs::{
    Begin, CountState, CountToken, Counted, Delta, EventBus, RunLedger, RunPolicy, RunRecord,
    RunStart, RunStatus, Tally,
};
use fanout_shared::{
    Acquire, BackendError, Claim, Failure, HostEvent, HostPolicy, HostState, IdempotencyRecord,
    IdempotencyStore, PipelineConfig, Queue, QueueDepth, QueueMessage, Transition,
};
use fanout_testkit::target_server::TargetServer;
use serde_json::{json, Value};

mod common;
use common::{config, event, in_seconds, job};

/// The SQS event of messages received from the embedded queue, as Lambda would deliver them.
fn to_event(messages: &[QueueMessage]) -> aws_lambda_events::event::sqs::SqsEvent {
    let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
    event.records = messages
        .iter()
        .map(|m| fanout_consumer::to_record("jobs", m.clone()))
        .collect();
    event
}

/// How a wrapped call misbehaves: fail its next `fail` calls before reaching the backend, or
/// let its next `lose` calls through and answer an error anyway (the answer lost).
#[derive(Default)]
struct Cue {
    /// Milliseconds each call waits before it runs (a slow store).
    delay_ms: AtomicU64,
    fail: AtomicU32,
    lose: AtomicU32,
    /// Calls to fail after a lost answer (a storm right after a lost response).
    fail_after_lost: AtomicU32,
}

impl Cue {
    fn failing(n: u32) -> Self {
        Self {
            fail: AtomicU32::new(n),
            ..Self::default()
        }
    }

    fn losing(n: u32) -> Self {
        Self {
            lose: AtomicU32::new(n),
            ..Self::default()
        }
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Runs `call` as cued.
    async fn run<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let delay = self.delay_ms.load(Ordering::Acquire);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if Self::take(&self.fail) {
            return Err(throttled(operation));
        }
        let answer = call.await;
        if Self::take(&self.lose) {
            self.fail.store(
                self.fail_after_lost.load(Ordering::Acquire),
                Ordering::Release,
            );
            return Err(BackendError::transient(
                operation,
                "InternalServerError: answer lost",
            ));
        }
        answer
    }
}

fn throttled(operation: &'static str) -> BackendError {
    BackendError {
        throttled: true,
        ..BackendError::transient(operation, "ThrottlingException: Rate exceeded")
    }
}

/// The idempotency store with a cue per step.
struct FaultyStore {
    inner: Arc<dyn IdempotencyStore>,
    acquire: Arc<Cue>,
    complete: Arc<Cue>,
}

#[async_trait]
impl IdempotencyStore for FaultyStore {
    async fn acquire(&self, claim: &Claim<'_>) -> Result<Acquire, BackendError> {
        self.acquire
            .run("dynamodb:UpdateItem", self.inner.acquire(claim))
            .await
    }
    async fn complete(
        &self,
        message_id: &str,
        attempt: u32,
        status_code: u16,
        expiration_s: i64,
        count: (&Tally<'_>, &CountToken),
    ) -> Result<Transition, BackendError> {
        self.complete
            .run(
                "dynamodb:TransactWriteItems",
                self.inner
                    .complete(message_id, attempt, status_code, expiration_s, count),
            )
            .await
    }
    async fn fail(
        &self,
        message_id: &str,
        attempt: u32,
        error: &str,
        status_code: Option<u16>,
    ) -> Result<Transition, BackendError> {
        self.inner
            .fail(message_id, attempt, error, status_code)
            .await
    }
    async fn reject(
        &self,
        message_id: &str,
        attempt: u32,
        failure: &Failure,
    ) -> Result<Transition, BackendError> {
        self.inner.reject(message_id, attempt, failure).await
    }
    async fn dead_lettered(
        &self,
        message_id: &str,
        attempt: u32,
        count: (&Tally<'_>, &CountToken),
    ) -> Result<Transition, BackendError> {
        self.inner.dead_lettered(message_id, attempt, count).await
    }
    async fn recount(
        &self,
        message_id: &str,
        from: &CountToken,
        to: &CountToken,
    ) -> Result<bool, BackendError> {
        self.inner.recount(message_id, from, to).await
    }
    async fn get_many(
        &self,
        message_ids: &[String],
    ) -> Result<Vec<IdempotencyRecord>, BackendError> {
        self.inner.get_many(message_ids).await
    }
}

/// A queue whose sends follow a cue.
struct FaultyQueue {
    inner: Arc<dyn Queue>,
    send: Arc<Cue>,
}

#[async_trait]
impl Queue for FaultyQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn send_delayed(
        &self,
        body: &str,
        attributes: &BTreeMap<String, String>,
        delay: Duration,
    ) -> Result<String, BackendError> {
        self.send
            .run(
                "sqs:SendMessage",
                self.inner.send_delayed(body, attributes, delay),
            )
            .await
    }
    async fn receive(
        &self,
        max: u32,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<QueueMessage>, BackendError> {
        self.inner.receive(max, visibility, wait).await
    }
    async fn delete(&self, receipt_handles: &[String]) -> Result<(), BackendError> {
        self.inner.delete(receipt_handles).await
    }
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        self.inner.change_visibility(receipt_handle, timeout).await
    }
    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        self.inner.depth().await
    }
}

/// The lease store, whose renewals follow a cue.
struct FaultyFleet {
    inner: Arc<dyn FleetStore>,
    renew: Arc<Cue>,
}

#[async_trait]
impl FleetStore for FaultyFleet {
    async fn read_host_states(&self, hosts: &[String]) -> Result<HostStates, BackendError> {
        self.inner.read_host_states(hosts).await
    }
    async fn apply(
        &self,
        host: &str,
        event: &HostEvent,
        now_ms: i64,
        policy: &HostPolicy,
    ) -> Result<(HostState, bool), BackendError> {
        self.inner.apply(host, event, now_ms, policy).await
    }
    async fn renew(&self, lease: &Lease, now_ms: i64) -> Result<Vec<Lease>, BackendError> {
        self.renew
            .run("dynamodb:UpdateItem", self.inner.renew(lease, now_ms))
            .await
    }
}

/// The event bus, whose puts follow a cue.
struct FaultyBus {
    inner: Arc<dyn EventBus>,
    put: Arc<Cue>,
}

#[async_trait]
impl EventBus for FaultyBus {
    async fn put(&self, detail_type: &str, detail: &Value) -> Result<(), BackendError> {
        self.put
            .run("events:PutEvents", self.inner.put(detail_type, detail))
            .await
    }
}

/// The run ledger, whose marks of a sent event follow a cue.
struct FaultyRuns {
    inner: Arc<dyn RunLedger>,
    mark: Arc<Cue>,
    count: Arc<Cue>,
}

#[async_trait]
impl RunLedger for FaultyRuns {
    async fn begin(&self, start: &RunStart) -> Result<Begin, BackendError> {
        self.inner.begin(start).await
    }
    async fn skip(&self, start: &RunStart, reason: &str) -> Result<(), BackendError> {
        self.inner.skip(start, reason).await
    }
    async fn fail_unpublished(&self, start: &RunStart, reason: &str) -> Result<(), BackendError> {
        self.inner.fail_unpublished(start, reason).await
    }
    async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, BackendError> {
        self.inner.get(run_id).await
    }
    async fn list(&self, limit: usize) -> Result<Vec<RunRecord>, BackendError> {
        self.inner.list(limit).await
    }
    async fn count(
        &self,
        run_id: &str,
        instance: &str,
        seq: u64,
        delta: &Delta,
    ) -> Result<Counted, BackendError> {
        self.count
            .run(
                "dynamodb:UpdateItem",
                self.inner.count(run_id, instance, seq, delta),
            )
            .await
    }
    async fn seal(
        &self,
        run_id: &str,
        instance: &str,
        seq: u64,
    ) -> Result<Option<CountState>, BackendError> {
        self.inner.seal(run_id, instance, seq).await
    }
    async fn count_state(&self, run_id: &str) -> Result<Option<CountState>, BackendError> {
        self.inner.count_state(run_id).await
    }
    async fn finish(
        &self,
        run_id: &str,
        status: RunStatus,
        finished_at_ms: i64,
        finisher: i64,
    ) -> Result<bool, BackendError> {
        self.inner
            .finish(run_id, status, finished_at_ms, finisher)
            .await
    }
    async fn mark_event_sent(&self, run_id: &str) -> Result<(), BackendError> {
        self.mark
            .run("dynamodb:UpdateItem", self.inner.mark_event_sent(run_id))
            .await
    }
}

/// The cues of one test; each defaults to behaving.
#[derive(Default, Clone)]
struct Cues {
    acquire: Arc<Cue>,
    complete: Arc<Cue>,
    reschedule: Arc<Cue>,
    dlq: Arc<Cue>,
    renew: Arc<Cue>,
    put: Arc<Cue>,
    mark: Arc<Cue>,
    count: Arc<Cue>,
}

struct Rig {
    backend: EmbeddedBackend,
    consumer: Consumer,
    server: TargetServer,
    cues: Cues,
}

async fn rig(targets: Value, settings: Settings, cues: Cues) -> Rig {
    rig_with(config(targets), settings, cues).await
}

async fn rig_with(config: Value, settings: Settings, cues: Cues) -> Rig {
    let server = TargetServer::start().await.unwrap();
    let backend = EmbeddedBackend::open(":memory:".as_ref()).unwrap();
    backend
        .ensure_pipeline("jobs", "jobs", "jobs-dlq", Some(5))
        .unwrap();
    let text = config.to_string().replace("BASE", &server.base_url());
    let config = PipelineConfig::parse(&text, false, "test.json").unwrap();
    let kept = cues.clone();
    let backends = Backends {
        store: Arc::new(FaultyStore {
            inner: Arc::new(backend.store()),
            acquire: cues.acquire,
            complete: cues.complete,
        }),
        source: Arc::new(FaultyQueue {
            inner: Arc::new(backend.queue("jobs")),
            send: cues.reschedule,
        }),
        dlq: Arc::new(FaultyQueue {
            inner: Arc::new(backend.queue("jobs-dlq")),
            send: cues.dlq,
        }),
        fleet: Arc::new(FaultyFleet {
            inner: Arc::new(backend.fleet()),
            renew: cues.renew,
        }),
        runs: Arc::new(FaultyRuns {
            inner: Arc::new(backend.runs()),
            mark: cues.mark,
            count: cues.count,
        }),
        events: Arc::new(FaultyBus {
            inner: Arc::new(backend.events()),
            put: cues.put,
        }),
    };
    let consumer = Consumer::new(&config, backends, settings).unwrap();
    Rig {
        backend,
        consumer,
        server,
        cues: kept,
    }
}

/// A run of the given jobs' message IDs, begun in the ledger.
async fn begin_run(rig: &Rig, run_id: &str, message_ids: &[&str]) {
    rig.backend
        .runs()
        .begin(&RunStart {
            run_id: run_id.to_owned(),
            scheduled_at: None,
            config_digest: "0123456789abcdef".to_owned(),
            started_at_ms: fanout_shared::now_ms(),
            expected: message_ids.len() as u64,
            policy: RunPolicy::default(),
            sources: Vec::new(),
        })
        .await
        .unwrap();
}

fn one_target() -> Value {
    json!([{"id": "a", "url": "BASE/ok/a"}])
}

fn body(rig: &Rig, run: &str) -> (String, String) {
    let job = job(run, "a", &format!("{}/ok/a", rig.server.base_url()));
    (job.encode().body, job.message_id)
}

fn operation_total(report: &BatchReport, operation: &str, metric: Metric) -> f64 {
    report
        .backend_metrics
        .iter()
        .filter(|m| m.dimension("Operation") == Some(operation))
        .map(|m| m.total(metric))
        .sum()
}

/// One job of run-1 on the one target, its run begun, handled in a 10 s invocation that must
/// not fall back to a batch item failure.
async fn one_job(cues: Cues) -> (Rig, String, BatchReport) {
    let rig = rig(one_target(), Settings::default(), cues).await;
    let (body, message_id) = body(&rig, "run-1");
    begin_run(&rig, "run-1", &[&message_id]).await;
    let report = rig
        .consumer
        .handle_batch(event(&[body]), in_seconds(10))
        .await;
    no_batch_item_failures(&report);
    (rig, message_id, report)
}

/// Waits for the one rescheduled copy in the job queue (at most 8 s) and handles it in a 10 s
/// invocation.
async fn the_copy_comes_back(rig: &Rig) -> BatchReport {
    let copies = rig
        .backend
        .queue("jobs")
        .receive(10, Duration::from_secs(30), Duration::from_secs(8))
        .await
        .unwrap();
    assert_eq!(copies.len(), 1, "one rescheduled copy");
    rig.consumer
        .handle_batch(to_event(&copies), in_seconds(10))
        .await
}

fn no_batch_item_failures(report: &BatchReport) {
    assert!(
        report.response.batch_item_failures.is_empty(),
        "a backend fault must not fall back to the visibility timeout"
    );
}

#[tokio::test]
async fn a_throttled_acquire_is_retried_in_place_and_counted_by_operation() {
    let cues = Cues {
        acquire: Arc::new(Cue::failing(2)),
        ..Cues::default()
    };
    let (rig, _, report) = one_job(cues).await;
    assert_eq!(report.metrics.total(Metric::Succeeded), 1.0);
    assert_eq!(rig.server.stats().calls, 1);
    assert_eq!(
        operation_total(&report, "dynamodb:UpdateItem", Metric::BackendThrottled),
        2.0
    );
    assert_eq!(
        operation_total(&report, "dynamodb:UpdateItem", Metric::BackendFailed),
        0.0
    );
}

#[tokio::test]
async fn an_acquire_whose_answer_was_lost_finds_its_own_lock_and_calls_once() {
    let cues = Cues {
        acquire: Arc::new(Cue::losing(1)),
        ..Cues::default()
    };
    let (rig, message_id, report) = one_job(cues).await;
    assert_eq!(report.metrics.total(Metric::Succeeded), 1.0);
    assert_eq!(report.metrics.total(Metric::LockedElsewhere), 0.0);
    assert_eq!(rig.server.stats().calls, 1);
    let records = rig.backend.store().get_many(&[message_id]).await.unwrap();
    assert_eq!(records[0].attempts, 2, "the retry took its own lock again");
}

#[tokio::test]
async fn a_copy_rescheduled_after_a_lost_acquire_takes_its_lock_without_waiting_for_it() {
    // The acquire is applied, its answer lost, and every retry throttled: the record is
    // rescheduled while its lock (to the invocation's deadline) stands.
    let cues = Cues {
        acquire: Arc::new(Cue {
            lose: AtomicU32::new(1),
            fail_after_lost: AtomicU32::new(u32::MAX),
            ..Cue::default()
        }),
        ..Cues::default()
    };
    let (rig, message_id, report) = one_job(cues).await;
    assert_eq!(report.metrics.total(Metric::BackendRescheduled), 1.0);
    assert_eq!(rig.server.stats().calls, 0);
    rig.cues.acquire.fail.store(0, Ordering::Release);
    // The lock lives for 10 s more; the copy, with the claim's token, takes it at once.
    let again = the_copy_comes_back(&rig).await;
    assert_eq!(again.metrics.total(Metric::LockedElsewhere), 0.0);
    assert_eq!(again.metrics.total(Metric::Succeeded), 1.0);
    assert_eq!(rig.server.stats().calls, 1);
    let records = rig.backend.store().get_many(&[message_id]).await.unwrap();
    assert_eq!(records[0].status, fanout_shared::Status::Completed);
}

#[tokio::test]
async fn a_complete_whose_answer_was_lost_is_its_own_write_counted_once() {
    let cues = Cues {
        complete: Arc::new(Cue::losing(1)),
        ..Cues::default()
    };
    let (rig, _, report) = one_job(cues).await;
    assert_eq!(report.metrics.total(Metric::Succeeded), 1.0);
    assert_eq!(rig.server.stats().calls, 1);
    let run = rig.backend.runs().get("run-1").await.unwrap().unwrap();
    assert_eq!(
        (run.counts.succeeded, run.status),
        (1, RunStatus::Succeeded)
    );
    assert_eq!(
        report.finished_runs.len(),
        1,
        "this invocation finished the run"
    );
}

#[tokio::test]
async fn a_store_down_for_the_whole_step_reschedules_the_record_untouched() {
    let cues = Cues {
        acquire: Arc::new(Cue::failing(u32::MAX)),
        ..Cues::default()
    };
    let (rig, message_id, report) = one_job(cues).await;
    assert_eq!(report.metrics.total(Metric::BackendRescheduled), 1.0);
    assert_eq!(rig.server.stats().calls, 0);
    assert_eq!(rig.backend.queue("jobs").depth().await.unwrap().delayed, 1);
    assert!(rig
        .backend
        .store()
        .get_many(&[message_id])
        .await
        .unwrap()
        .is_empty());
    assert!(operation_total(&report, "dynamodb:UpdateItem", Metric::BackendThrottled) >= 2.0);
}

#[tokio::test]
async fn a_success_that_cannot_be_recorded_is_carried_by_its_copy_and_never_called_again() {
    let cues = Cues {
        complete: Arc::new(Cue::failing(u32::MAX)),
        ..Cues::default()
    };
    let settings = Settings {
        deadline_margin: Duration::from_millis(200),
        ..Settings::default()
    };
    let rig = rig(one_target(), settings, cues).await;
    let (body, message_id) = body(&rig, "run-1");
    begin_run(&rig, "run-1", &[&message_id]).await;
    let report = rig
        .consumer
        .handle_batch(event(&[body]), in_seconds(2))
        .await;
    no_batch_item_failures(&report);
    assert_eq!(report.metrics.total(Metric::BackendRescheduled), 1.0);
    assert_eq!(rig.server.stats().calls, 1);
    // The store recovers; the copy comes back carrying the success and records it, no call.
    rig.cues.complete.fail.store(0, Ordering::Release);
    let again = the_copy_comes_back(&rig).await;
    assert_eq!(again.metrics.total(Metric::Succeeded), 1.0);
    assert_eq!(
        rig.server.stats().calls,
        1,
        "the target was not called again"
    );
    let run = rig.backend.runs().get("run-1").await.unwrap().unwrap();
    assert_eq!(
        (run.counts.succeeded, run.status),
        (1, RunStatus::Succeeded)
    );
}

/// Settings for invocations of a few seconds that work only on their batch.
fn short_invocations() -> Settings {
    Settings {
        deadline_margin: Duration::from_millis(200),
        pull: false,
        ..Settings::default()
    }
}

/// One job of run-1, handled in a 2 s invocation under `cues`: the rig, the job's body, that
/// invocation's deadline and its report.
async fn one_job_in_two_seconds(cues: Cues) -> (Rig, String, i64, BatchReport) {
    let rig = rig(one_target(), short_invocations(), cues).await;
    let (body, message_id) = body(&rig, "run-1");
    begin_run(&rig, "run-1", &[&message_id]).await;
    let deadline = in_seconds(2);
    let report = rig
        .consumer
        .handle_batch(event(std::slice::from_ref(&body)), deadline)
        .await;
    (rig, body, deadline, report)
}

#[tokio::test]
async fn a_duplicate_after_the_deadline_finds_the_lock_while_the_success_is_carried() {
    // The success cannot be recorded for the whole 2 s invocation; its copy carries it. A
    // duplicate delivery arriving after that invocation's deadline still meets the lock (the
    // grace), so it waits instead of calling the target a second time.
    let cues = Cues {
        complete: Arc::new(Cue::failing(u32::MAX)),
        ..Cues::default()
    };
    let (rig, body, deadline, report) = one_job_in_two_seconds(cues).await;
    assert_eq!(report.metrics.total(Metric::BackendRescheduled), 1.0);
    assert_eq!(rig.server.stats().calls, 1);
    let past = u64::try_from(deadline + 300 - fanout_shared::now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(past)).await;
    let duplicate = rig
        .consumer
        .handle_batch(event(&[body]), in_seconds(10))
        .await;
    assert_eq!(duplicate.metrics.total(Metric::LockedElsewhere), 1.0);
    assert_eq!(rig.server.stats().calls, 1, "the duplicate did not call");
    // The store recovers: the carried copy records the success, still one call.
    rig.cues.complete.fail.store(0, Ordering::Release);
    let again = the_copy_comes_back(&rig).await;
    assert_eq!(again.metrics.total(Metric::Succeeded), 1.0);
    assert_eq!(rig.server.stats().calls, 1);
}

#[tokio::test]
async fn a_lock_taken_after_the_call_s_last_start_is_not_used_for_a_call_cut_short() {
    // A 4 s invocation works for 3 s; a host never seen before reserves half of that for its
    // call, so the call must start within 1.5 s. The acquire succeeds, but only after 2 s.
    let cues = Cues {
        acquire: Arc::new(Cue {
            delay_ms: AtomicU64::new(2000),
            ..Cue::default()
        }),
        ..Cues::default()
    };
    let settings = Settings {
        pull: false,
        ..Settings::default()
    };
    let rig = rig(one_target(), settings, cues).await;
    let (body, message_id) = body(&rig, "run-1");
    begin_run(&rig, "run-1", &[&message_id]).await;
    let report = rig
        .consumer
        .handle_batch(event(&[body]), in_seconds(4))
        .await;
    no_batch_item_failures(&report);
    assert_eq!(report.metrics.total(Metric::BackendRescheduled), 1.0);
    assert_eq!(
        rig.server.stats().calls,
        0,
        "no call cut short by the deadline"
    );
    // The copy takes its lock again with its holder token (no wait for the lock) and calls.
    rig.cues.acquire.delay_ms.store(0, Ordering::Release);
    let again = the_copy_comes_back(&rig).await;
    assert_eq!(again.metrics.total(Metric::LockedElsewhere), 0.0);
    assert_eq!(again.metrics.total(Metric::Succeeded), 1.0);
    assert_eq!(rig.server.stats().calls, 1);
    let records = rig.backend.store().get_many(&[message_id]).await.unwrap();
    assert_eq!(records[0].status, fanout_shared::Status::Completed);
}

/// Another instance on the rig's backend, with no faults.
fn another_instance(rig: &Rig, settings: Settings) -> Consumer {
    let text = config(one_target())
        .to_string()
        .replace("BASE", &rig.server.base_url());
    let config = PipelineConfig::parse(&text, false, "test.json").unwrap();
    let backends = Backends {
        store: Arc::new(rig.backend.store()),
        source: Arc::new(rig.backend.queue("jobs")),
        dlq: Arc::new(rig.backend.queue("jobs-dlq")),
        fleet: Arc::new(rig.backend.fleet()),
        runs: Arc::new(rig.backend.runs()),
        events: Arc::new(rig.backend.events()),
    };
    Consumer::new(&config, backends, settings).unwrap()
}

#[tokio::test]
async fn a_batch_its_instance_never_applied_is_sealed_and_its_job_counted_once_by_the_next_copy() {
    // The job succeeds and its record says which batch counts it, but that batch cannot be
    // applied while the invocation lasts (the run's counters refuse every write): its message
    // is kept, so it comes back.
    let cues = Cues {
        count: Arc::new(Cue::failing(u32::MAX)),
        ..Cues::default()
    };
    let (rig, body, deadline, first) = one_job_in_two_seconds(cues).await;
    assert_eq!(first.metrics.total(Metric::Succeeded), 1.0);
    assert_eq!(
        first.response.batch_item_failures.len(),
        1,
        "kept: not counted"
    );
    let run = rig.backend.runs().get("run-1").await.unwrap().unwrap();
    assert_eq!(run.counts.settled(), 0);
    // Another instance receives it once that invocation is over: it seals the batch, takes
    // the job's count into a batch of its own and finishes the run. No second call.
    let past = u64::try_from(deadline + 2_100 - fanout_shared::now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(past)).await;
    let other = another_instance(&rig, short_invocations());
    let again = other.handle_batch(event(&[body]), in_seconds(10)).await;
    no_batch_item_failures(&again);
    assert_eq!(again.metrics.total(Metric::DuplicatesSkipped), 1.0);
    assert_eq!(again.finished_runs.len(), 1);
    assert_eq!(rig.server.stats().calls, 1);
    // The first instance's batch, tried again once its store recovers, is refused: the job is
    // counted once.
    rig.cues.count.fail.store(0, Ordering::Release);
    rig.consumer.handle_batch(event(&[]), in_seconds(3)).await;
    let run = rig.backend.runs().get("run-1").await.unwrap().unwrap();
    assert_eq!(
        (run.counts.succeeded, run.counts.expected, run.status),
        (1, 1, RunStatus::Succeeded)
    );
}

#[tokio::test]
async fn a_carried_success_that_is_not_the_holder_s_is_ignored() {
    let rig = rig(one_target(), Settings::default(), Cues::default()).await;
    let (body, message_id) = body(&rig, "run-1");
    // A message claiming its job's success, with a holder token the record never had.
    let mut forged = event(&[body]);
    forged.records[0].message_attributes.insert(
        fanout_shared::ATTR_UNRECORDED_SUCCESS.to_owned(),
        serde_json::from_value(json!({"stringValue": "1:12345:200", "dataType": "String"}))
            .unwrap(),
    );
    let report = rig.consumer.handle_batch(forged, in_seconds(10)).await;
    assert_eq!(report.metrics.total(Metric::Succeeded), 1.0);
    assert_eq!(
        rig.server.stats().calls,
        1,
        "the job was called, not marked done"
    );
    let records = rig.backend.store().get_many(&[message_id]).await.unwrap();
    assert_eq!(records[0].attempts, 1);
}

#[tokio::test]
async fn a_failed_reschedule_is_retried_before_the_message_is_kept() {
    let mut cfg = config(json!([
        {"id": "a", "url": "BASE/ok/a"},
        {"id": "b", "url": "BASE/ok/b"}
    ]));
    cfg["rate_limit"] = json!({"per_second": 0.2});
    let cues = Cues {
        reschedule: Arc::new(Cue::failing(1)),
        ..Cues::default()
    };
    let settings = Settings {
        deadline_margin: Duration::from_millis(100),
        ..Settings::default()
    };
    let rig = rig_with(cfg, settings, cues).await;
    let base = rig.server.base_url();
    let bodies: Vec<String> = ["a", "b"]
        .iter()
        .map(|id| job("run-1", id, &format!("{base}/ok/{id}")).encode().body)
        .collect();
    // Two jobs at 0.2/s in a one-second invocation: the second waits, and the first send of
    // its copy is throttled.
    let report = rig
        .consumer
        .handle_batch(event(&bodies), in_seconds(1))
        .await;
    no_batch_item_failures(&report);
    assert_eq!(report.metrics.total(Metric::Succeeded), 1.0);
    assert_eq!(report.metrics.total(Metric::Deferred), 1.0);
    assert_eq!(rig.backend.queue("jobs").depth().await.unwrap().delayed, 1);
    assert_eq!(
        operation_total(&report, "sqs:SendMessage", Metric::BackendThrottled),
        1.0
    );
}

#[tokio::test]
async fn a_dlq_send_that_fails_is_retried_and_the_job_dead_lettered_once() {
    let cues = Cues {
        dlq: Arc::new(Cue::failing(2)),
        ..Cues::default()
    };
    let rig = rig(
        json!([{"id": "a", "url": "BASE/bad/a"}]),
        Settings::default(),
        cues,
    )
    .await;
    let job = job("run-1", "a", &format!("{}/bad/a", rig.server.base_url()));
    begin_run(&rig, "run-1", &[&job.message_id]).await;
    let report = rig
        .consumer
        .handle_batch(event(&[job.encode().body]), in_seconds(10))
        .await;
    no_batch_item_failures(&report);
    assert_eq!(report.metrics.total(Metric::DeadLettered), 1.0);
    assert_eq!(rig.server.stats().calls, 1);
    assert_eq!(
        rig.backend.queue("jobs-dlq").depth().await.unwrap().visible,
        1
    );
    let run = rig.backend.runs().get("run-1").await.unwrap().unwrap();
    assert_eq!(run.counts.dead_lettered, 1);
}

#[tokio::test]
async fn a_failed_event_put_and_mark_are_retried_and_the_run_finishes_with_its_event() {
    // The put fails twice, then the mark as sent (which, left undone, has the watchdog put the
    // event a second time).
    let cues = Cues {
        put: Arc::new(Cue::failing(2)),
        mark: Arc::new(Cue::failing(2)),
        ..Cues::default()
    };
    let (rig, _, report) = one_job(cues).await;
    assert_eq!(report.finished_runs.len(), 1);
    assert!(report.finished_runs[0].event_sent);
    let run = rig.backend.runs().get("run-1").await.unwrap().unwrap();
    assert!(
        run.event_sent,
        "the consumer put the event, not the watchdog"
    );
    assert_eq!(rig.backend.events().all().unwrap().len(), 1);
}

#[tokio::test]
async fn an_instance_that_never_renewed_its_lease_waits_instead_of_calling() {
    let mut cfg = config(json!([
        {"id": "a", "url": "BASE/ok/a"},
        {"id": "b", "url": "BASE/ok/b"}
    ]));
    cfg["rate_limit"] = json!({"per_second": 100});
    let cues = Cues {
        renew: Arc::new(Cue::failing(u32::MAX)),
        ..Cues::default()
    };
    let rig = rig_with(cfg, Settings::default(), cues).await;
    let base = rig.server.base_url();
    let bodies: Vec<String> = ["a", "b"]
        .iter()
        .map(|id| job("run-1", id, &format!("{base}/ok/{id}")).encode().body)
        .collect();
    // The others cannot count an instance whose lease was never written: calling would be on
    // top of their shares. Its jobs wait (rescheduled), none is lost or failed.
    let report = rig
        .consumer
        .handle_batch(event(&bodies), in_seconds(5))
        .await;
    no_batch_item_failures(&report);
    assert_eq!(rig.server.stats().calls, 0);
    assert_eq!(report.metrics.total(Metric::Deferred), 2.0);
    assert_eq!(rig.backend.queue("jobs").depth().await.unwrap().delayed, 2);
}

#[tokio::test]
async fn a_lease_that_cannot_be_renewed_splits_the_budget_by_the_most_instances() {
    let ids = ["a", "b", "c", "d", "e", "f"];
    let targets: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "url": format!("BASE/ok/{id}")}))
        .collect();
    let mut cfg = config(json!(targets));
    cfg["rate_limit"] = json!({"per_second": 4});
    let settings = Settings {
        max_instances: Some(8),
        deadline_margin: Duration::from_millis(100),
        ..Settings::default()
    };
    let rig = rig_with(cfg, settings, Cues::default()).await;
    let base = rig.server.base_url();
    let bodies = |ids: &[&str]| -> Vec<String> {
        ids.iter()
            .map(|id| job("run-1", id, &format!("{base}/ok/{id}")).encode().body)
            .collect()
    };
    // Alone with a fresh view, the instance has the whole 4/s: three calls fit in 1.4 s (the
    // third permit, 0.5 s in, before the last start of a call to a host not yet measured:
    // half the working time, less the acquire's allowance).
    let fresh = rig
        .consumer
        .handle_batch(
            event(&bodies(&["a", "b", "c"])),
            fanout_shared::now_ms() + 1400,
        )
        .await;
    assert_eq!(fresh.metrics.total(Metric::Succeeded), 3.0);
    // Then the store throttles every renewal. The others may have joined unseen, so the
    // instance splits by the 8 that could share the budget (0.5/s: one call of burst in
    // 1.2 s), or, once its written lease has lapsed, waits: never the whole 4/s again.
    rig.cues.renew.fail.store(u32::MAX, Ordering::Release);
    let report = rig
        .consumer
        .handle_batch(
            event(&bodies(&["d", "e", "f"])),
            fanout_shared::now_ms() + 1200,
        )
        .await;
    no_batch_item_failures(&report);
    let called = report.metrics.total(Metric::Succeeded);
    assert!(called <= 1.0, "{called} calls at a conservative 0.5/s");
    assert_eq!(called + report.metrics.total(Metric::Deferred), 3.0);
}
