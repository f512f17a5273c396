//! A local stand-in for the Lambda SQS event source mapping.
//!
//! Like the real one: at most `concurrency` invocations in flight, batches of up to
//! `batch_size`, each invocation gets a deadline (`function_timeout`) and is cut off at it,
//! successful records are deleted, and reported failures stay hidden until their visibility
//! timeout ends. It drives any [`Queue`], so it drains real SQS as well as the embedded queue,
//! and calls exactly [`Consumer::handle_batch`], the function the Lambda binary calls.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsEvent;
use fanout_consumer::Consumer;
use fanout_shared::metrics::MetricSet;
use fanout_shared::{BackendError, Queue, QueueMessage};

/// How the event source behaves.
#[derive(Debug, Clone)]
pub struct EventSourceOptions {
    /// Invocations in flight at most (the mapping's `MaximumConcurrency`).
    pub concurrency: usize,
    /// Records per invocation at most.
    pub batch_size: u32,
    /// How long received messages stay hidden.
    pub visibility_timeout: Duration,
    /// Each invocation's time limit.
    pub function_timeout: Duration,
    /// Long-poll wait of an empty receive.
    pub poll_wait: Duration,
    /// Give up after this long, drained or not.
    pub timeout: Duration,
}

/// Where an invocation may die before it answers: the event source's seam for fault injection.
/// A drain has none ([`drain`]); the fault-injection tests pass a seeded crash plan
/// ([`drain_with_faults`]). A dead invocation's handler future is dropped at that instant
/// (mid-batch: some records called, maybe one between its call and its recorded outcome) and
/// the event source deletes nothing, as when a Lambda instance dies before returning its
/// response. The instance (its rate limiter) lives on; its idempotency locks lapse at the
/// invocation's deadline.
pub trait InvocationFaults: Send + Sync {
    /// When invocation number `n` (from 1) dies, counted from its start, if it does.
    fn dies_at(&self, n: u64) -> Option<Duration>;
}

/// No faults: every invocation runs to its answer or its function timeout.
struct NoFaults;

impl InvocationFaults for NoFaults {
    fn dies_at(&self, _: u64) -> Option<Duration> {
        None
    }
}

/// What a drain did.
#[derive(Debug, Default)]
pub struct DrainOutcome {
    /// Every invocation's metrics, merged.
    pub metrics: MetricSet,
    /// Invocations made.
    pub invocations: u64,
    /// Invocations cut off at the function timeout.
    pub timed_out: u64,
    /// Invocations that died ([`InvocationFaults`]).
    pub crashed: u64,
    /// Whether the queue was drained (false: the timeout came first).
    pub drained: bool,
    /// Wall time.
    pub elapsed: Duration,
}

/// Drains `queue` through one consumer per concurrent invocation slot (each Lambda instance has
/// its own rate-limit share), until the queue is empty or the timeout passes.
pub async fn drain(
    queue: Arc<dyn Queue>,
    consumers: Vec<Arc<Consumer>>,
    options: &EventSourceOptions,
    progress: &(dyn Fn(&MetricSet) + Send + Sync + '_),
) -> Result<DrainOutcome, BackendError> {
    drain_with_faults(queue, consumers, options, progress, Arc::new(NoFaults)).await
}

/// [`drain`] with invocations that die where `faults` says.
pub async fn drain_with_faults(
    queue: Arc<dyn Queue>,
    consumers: Vec<Arc<Consumer>>,
    options: &EventSourceOptions,
    progress: &(dyn Fn(&MetricSet) + Send + Sync + '_),
    faults: Arc<dyn InvocationFaults>,
) -> Result<DrainOutcome, BackendError> {
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let outcome = Arc::new(Mutex::new(DrainOutcome::default()));
    let mut workers = tokio::task::JoinSet::new();
    for consumer in consumers.into_iter().take(options.concurrency.max(1)) {
        let (queue, done, outcome, options, faults) = (
            queue.clone(),
            done.clone(),
            outcome.clone(),
            options.clone(),
            faults.clone(),
        );
        workers.spawn(async move {
            worker(
                queue,
                consumer,
                &options,
                faults.as_ref(),
                &done,
                &outcome,
                started,
            )
            .await
        });
    }
    // Progress is reported from here so the callback needs no 'static bound.
    let mut first_error = None;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok(Err(e))) => { first_error.get_or_insert(e); done.store(true, Ordering::Relaxed); }
                Some(_) => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if let Ok(o) = outcome.lock() { progress(&o.metrics); }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let mut outcome = std::mem::take(
        &mut *outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    progress(&outcome.metrics);
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

async fn worker(
    queue: Arc<dyn Queue>,
    consumer: Arc<Consumer>,
    options: &EventSourceOptions,
    faults: &dyn InvocationFaults,
    done: &AtomicBool,
    outcome: &Mutex<DrainOutcome>,
    started: Instant,
) -> Result<(), BackendError> {
    while !done.load(Ordering::Relaxed) {
        if started.elapsed() >= options.timeout {
            done.store(true, Ordering::Relaxed);
            break;
        }
        let messages = queue
            .receive(
                options.batch_size,
                options.visibility_timeout,
                options.poll_wait,
            )
            .await?;
        if messages.is_empty() {
            if queue.depth().await?.is_drained() {
                if let Ok(mut o) = outcome.lock() {
                    o.drained = true;
                }
                done.store(true, Ordering::Relaxed);
            }
            continue;
        }
        invoke(&queue, &consumer, messages, options, faults, outcome).await?;
    }
    Ok(())
}

/// One invocation: build the event, call the handler within the function timeout, delete what
/// succeeded. A timed-out or crashed invocation deletes nothing: every record comes back, as on
/// Lambda.
async fn invoke(
    queue: &Arc<dyn Queue>,
    consumer: &Consumer,
    messages: Vec<QueueMessage>,
    options: &EventSourceOptions,
    faults: &dyn InvocationFaults,
    outcome: &Mutex<DrainOutcome>,
) -> Result<(), BackendError> {
    let receipts: HashMap<String, String> = messages
        .iter()
        .map(|m| (m.message_id.clone(), m.receipt_handle.clone()))
        .collect();
    let event = to_event(queue.name(), messages);
    let deadline_ms = fanout_shared::now_ms()
        + i64::try_from(options.function_timeout.as_millis()).unwrap_or(i64::MAX);
    let number = {
        let mut o = outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        o.invocations += 1;
        o.invocations
    };
    let crash_at = faults.dies_at(number);
    let handler = consumer.handle_batch(event, deadline_ms);
    let result = tokio::time::timeout(
        crash_at
            .unwrap_or(options.function_timeout)
            .min(options.function_timeout),
        handler,
    )
    .await;
    let to_delete: Vec<String> = {
        let mut o = outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if crash_at.is_some() {
            o.crashed += 1;
            return Ok(());
        }
        let Ok(report) = result else {
            o.timed_out += 1;
            tracing::warn!(
                invocation = number,
                records = receipts.len(),
                "invocation cut off at the function timeout: its records come back after the visibility timeout"
            );
            return Ok(());
        };
        let failed: HashSet<&str> = report
            .response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        let keep = receipts
            .iter()
            .filter(|(id, _)| !failed.contains(id.as_str()))
            .map(|(_, receipt)| receipt.clone())
            .collect();
        o.metrics.merge(report.metrics);
        keep
    };
    queue.delete(&to_delete).await
}

/// The SQS event Lambda would deliver for these messages.
pub fn to_event(queue_name: &str, messages: Vec<QueueMessage>) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = messages
        .into_iter()
        .map(|m| fanout_consumer::to_record(queue_name, m))
        .collect();
    event
}
