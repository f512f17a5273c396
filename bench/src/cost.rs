//! Figure 9, what a tick costs: the AWS requests of figure 8's ticks on the deployed stack, per
//! job and priced, beside the same jobs as a Step Functions Distributed Map and as the Python
//! peer's Lambda.
//!
//! Measured: every request the functions made (`fanout_testkit::aws_proxy`), consumer
//! invocations and their durations, function log bytes. Modelled, because the emulator does them
//! inside itself: the event source mapping's `ReceiveMessage` and `DeleteMessageBatch` (one each
//! per invocation) and SNS's delivery of each message into SQS (one SQS request each). Peers are
//! modelled from their billing rules, with what they would need to do the same work stated beside
//! them.

use crate::cloud::{Tick, MEMORY_MB};
use crate::report::{Figure, Section};

const LAMBDA_REQUEST: f64 = 0.20e-6;
/// arm64, the stack's default architecture (x86_64: $0.0000166667).
const LAMBDA_GB_S: f64 = 0.000_013_333_4;
const SQS_REQUEST: f64 = 0.40e-6;
const SNS_REQUEST: f64 = 0.50e-6;
const DYNAMODB_WRU: f64 = 0.625e-6;
// The date these were read is in PRICE_NOTES.
const DYNAMODB_RRU: f64 = 0.125e-6;
const EVENTBRIDGE_EVENT: f64 = 1.00e-6;
const LOGS_GB: f64 = 0.50;
const SFN_TRANSITION: f64 = 0.025e-3;
const SFN_EXPRESS_REQUEST: f64 = 1.00e-6;
const SFN_EXPRESS_GB_S: f64 = 0.000_016_67;
/// Lambda's START, END and REPORT lines of one invocation.
const PLATFORM_LOG_BYTES: f64 = 300.0;
/// Memory that gets one full vCPU on Lambda.
const MB_PER_VCPU: f64 = 1769.0;

/// The price list, for the document.
pub(crate) const PRICE_NOTES: &str = "Prices (AWS list prices, us-east-1, on-demand, no free tier, read 2026-11-22): Lambda $0.20 per 1M \
     requests and $0.0000133334 per GB-s on arm64 (billed per ms); SQS standard $0.40 per 1M requests (a batch of up to 10 \
     small messages is one request; each 64 KB chunk is one); SNS standard $0.50 per 1M requests (PublishBatch of 10 small \
     messages is one request), deliveries to SQS free on the SNS side and counted here as one SQS request each; DynamoDB \
     on-demand $0.625 per 1M write request units and $0.125 per 1M read request units (Nov 2024 prices; a transactional \
     write is 2 WRU per KB and item, an eventually consistent read 0.5 RRU per 4 KB; a write's KB are its item's, the larger \
     of before and after, which the counting proxy keeps from the writes it forwards, not its request's); EventBridge custom events $1.00 per \
     1M; CloudWatch Logs ingestion $0.50 per GB; Step Functions standard $0.025 per 1,000 state transitions, express \
     $1.00 per 1M requests and $0.00001667 per GB-s (64 MB and 100 ms steps). Sources: aws.amazon.com/lambda/pricing, \
     /sqs/pricing, /sns/pricing, /dynamodb/pricing/on-demand, /eventbridge/pricing, /cloudwatch/pricing, \
     /step-functions/pricing, and the DynamoDB and Step Functions developer guides (transactions' capacity; a Distributed \
     Map charges one state transition per child execution it starts). Where a page's copy could not confirm a figure \
     (arm64 GB-s, the DynamoDB cut), the value is the one AWS announced.";

/// One line of a bill: what, how many per job, in what unit, and dollars per million jobs.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// The request or resource.
    pub item: String,
    /// Units per job.
    pub per_job: f64,
    /// The unit.
    pub unit: &'static str,
    /// Dollars per million jobs.
    pub usd_per_million: f64,
    /// Measured (from the deployed stack) or modelled.
    pub measured: bool,
}

fn line(
    item: impl Into<String>,
    per_job: f64,
    unit: &'static str,
    price: f64,
    measured: bool,
) -> Line {
    Line {
        item: item.into(),
        per_job,
        unit,
        usd_per_million: per_job * price * 1e6,
        measured,
    }
}

const DYNAMODB_WRITES: [&str; 5] = [
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "TransactWriteItems",
    "BatchWriteItem",
];

/// fanout's bill for one measured tick, line by line.
/// DynamoDB write (or read) units per job of a tick, as the proxy priced them.
fn dynamodb_units(tick: &Tick, writes: bool) -> f64 {
    let units: f64 = tick
        .counts
        .iter()
        .filter(|((service, operation), _)| {
            service == "DynamoDB" && DYNAMODB_WRITES.contains(&operation.as_str()) == writes
        })
        .map(|(_, tally)| tally.units)
        .sum();
    units / tick.jobs.max(1) as f64
}

pub(crate) fn fanout_bill(tick: &Tick) -> Vec<Line> {
    let jobs = tick.jobs.max(1) as f64;
    let mut lines = Vec::new();
    for ((service, operation), tally) in &tick.counts {
        let (unit, price) = match service.as_str() {
            "DynamoDB" if DYNAMODB_WRITES.contains(&operation.as_str()) => ("WRU", DYNAMODB_WRU),
            "DynamoDB" => ("RRU", DYNAMODB_RRU),
            "SNS" => ("requests", SNS_REQUEST),
            "SQS" => ("requests", SQS_REQUEST),
            "EventBridge" => ("events", EVENTBRIDGE_EVENT),
            _ => ("requests", 0.0),
        };
        let requests = tally.requests as f64 / jobs;
        lines.push(line(
            format!("{service} {operation} ({requests:.3} calls/job)"),
            tally.units / jobs,
            unit,
            price,
            true,
        ));
    }
    let invocations = tick.invocations as f64;
    lines.push(line(
        "SQS: SNS delivers each message (incl. duplicates)",
        tick.deliveries as f64 / jobs,
        "requests",
        SQS_REQUEST,
        false,
    ));
    lines.push(line(
        "SQS ReceiveMessage + DeleteMessageBatch by the event source mapping",
        2.0 * invocations / jobs,
        "requests",
        SQS_REQUEST,
        false,
    ));
    lines.push(line(
        "Lambda invocations (consumer, producer)",
        (invocations + 1.0) / jobs,
        "requests",
        LAMBDA_REQUEST,
        true,
    ));
    let gb_s = (tick.consumer_ms + tick.producer_ms) / 1000.0 * MEMORY_MB / 1024.0;
    lines.push(line(
        format!("Lambda duration at {MEMORY_MB} MB"),
        gb_s / jobs,
        "GB-s",
        LAMBDA_GB_S,
        true,
    ));
    let log_bytes = tick.log_bytes as f64 + PLATFORM_LOG_BYTES * (invocations + 1.0);
    lines.push(line(
        "CloudWatch Logs (JSON logs, EMF, platform lines)",
        log_bytes / jobs,
        "bytes",
        LOGS_GB / 1e9,
        true,
    ));
    lines
}

/// Dollars per million jobs of a bill.
pub(crate) fn total(lines: &[Line]) -> f64 {
    lines.iter().map(|l| l.usd_per_million).sum()
}

/// The Python/Powertools peer's bill for the same tick: the same SNS, SQS, event source mapping,
/// invocations and logs; Powertools idempotency writes a record and completes it (2 WRU per job,
/// 1 more per duplicate's refused write), and no run ledger or fleet state; its duration is
/// fanout's measured one plus its extra CPU per job at the memory size's share of a vCPU.
pub(crate) fn python_bill(tick: &Tick, rust_cpu_us: f64, python_cpu_us: f64) -> Vec<Line> {
    let jobs = tick.jobs.max(1) as f64;
    let duplicates = (tick.deliveries - tick.jobs) as f64 / jobs;
    let invocations = tick.invocations as f64;
    let vcpu = MEMORY_MB / MB_PER_VCPU;
    let extra_s = (python_cpu_us - rust_cpu_us).max(0.0) / 1e6 / vcpu;
    let gb_s =
        ((tick.consumer_ms + tick.producer_ms) / 1000.0 / jobs + extra_s) * MEMORY_MB / 1024.0;
    let sns = tick
        .counts
        .iter()
        .filter(|((s, _), _)| s == "SNS")
        .map(|(_, t)| t.units)
        .sum::<f64>()
        / jobs;
    vec![
        line("SNS PublishBatch", sns, "requests", SNS_REQUEST, false),
        line(
            "SQS: deliveries, event source mapping",
            (tick.deliveries as f64 + 2.0 * invocations) / jobs,
            "requests",
            SQS_REQUEST,
            false,
        ),
        line(
            "DynamoDB: Powertools idempotency (PutItem, UpdateItem)",
            2.0 + duplicates,
            "WRU",
            DYNAMODB_WRU,
            false,
        ),
        line(
            "Lambda invocations",
            (invocations + 1.0) / jobs,
            "requests",
            LAMBDA_REQUEST,
            false,
        ),
        line(
            format!(
                "Lambda duration at {MEMORY_MB} MB (+{:.1} ms CPU-bound per job)",
                extra_s * 1000.0
            ),
            gb_s,
            "GB-s",
            LAMBDA_GB_S,
            false,
        ),
        line(
            "CloudWatch Logs",
            (tick.log_bytes as f64 + PLATFORM_LOG_BYTES * (invocations + 1.0)) / jobs,
            "bytes",
            LOGS_GB / 1e9,
            false,
        ),
    ]
}

/// A Distributed Map shape: child type and items per child execution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MapShape {
    /// Express (at-least-once) or standard (exactly-once) children.
    pub express: bool,
    /// Items per child execution (`ItemBatcher`), 1 without one.
    pub batch: f64,
}

/// The same jobs as a Distributed Map run whose children call each target with an HTTP Task
/// (`Retry` on 5xx): per job, one state transition per call attempt in a standard child, one
/// parent transition per child started, and for express children a request per child plus
/// their duration (pacing at the same budget, with as many children at once as fanout has
/// consumers) and the idempotency writes that at-least-once children need to call a target
/// once. No Wait states for pacing and no Lambda: the cheapest it could be.
pub(crate) fn map_bill(
    shape: MapShape,
    attempts_per_job: f64,
    concurrency: f64,
    rate: f64,
) -> Vec<Line> {
    let children = 1.0 / shape.batch;
    let mut lines = vec![line(
        "parent: one transition per child execution",
        children,
        "transitions",
        SFN_TRANSITION,
        false,
    )];
    if shape.express {
        // Every child bills at least 100 ms; paced children last concurrency ÷ rate per job.
        let seconds = (concurrency / rate).max(0.1 * children);
        lines.push(line(
            "express children: requests",
            children,
            "requests",
            SFN_EXPRESS_REQUEST,
            false,
        ));
        lines.push(line(
            "express children: duration at 64 MB",
            seconds * 0.0625,
            "GB-s",
            SFN_EXPRESS_GB_S,
            false,
        ));
        lines.push(line(
            "idempotency for at-least-once children (2 writes)",
            2.0,
            "WRU",
            DYNAMODB_WRU,
            false,
        ));
    } else {
        lines.push(line(
            "standard children: HTTP Task transitions (per attempt)",
            attempts_per_job,
            "transitions",
            SFN_TRANSITION,
            false,
        ));
        if shape.batch > 1.0 {
            lines.push(line(
                "standard children: inline Map state",
                children,
                "transitions",
                SFN_TRANSITION,
                false,
            ));
        }
    }
    lines
}

/// The bill as markdown rows.
fn rows(lines: &[Line]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let how = if l.measured { "measured" } else { "modelled" };
            format!(
                "| {} | {:.4} {} | ${:.3} | {how} |",
                l.item, l.per_job, l.unit, l.usd_per_million
            )
        })
        .collect()
}

/// Figure 9's section: fanout's bill per scenario, itemised, and the peers beside it.
pub(crate) fn section(
    clean: &Tick,
    duplicates: &Tick,
    transient: &Tick,
    by_rate: &[&Tick],
    cpu_us: (f64, f64),
    concurrency: f64,
) -> Section {
    let rate = clean.rate;
    let fanout = total(&fanout_bill(clean));
    let shapes = [
        (
            "Distributed Map, standard children, 1 item each",
            MapShape {
                express: false,
                batch: 1.0,
            },
        ),
        (
            "Distributed Map, standard children, 100 items each",
            MapShape {
                express: false,
                batch: 100.0,
            },
        ),
        (
            "Distributed Map, express children, 1 item each",
            MapShape {
                express: true,
                batch: 1.0,
            },
        ),
        (
            "Distributed Map, express children, 100 items each",
            MapShape {
                express: true,
                batch: 100.0,
            },
        ),
    ];
    let attempts = 1.0;
    let dollars = |t: &Tick| total(&fanout_bill(t));
    let mut figures = vec![
        Figure::goal(
            "fanout, clean tick: $ per 1M jobs",
            format!("${fanout:.2}"),
            "≤ $2.50",
            fanout <= 2.50,
        ),
        Figure::goal(
            "fanout, 30% duplicate deliveries: $ per 1M jobs",
            format!("${:.2}", dollars(duplicates)),
            "≤ $2.75",
            dollars(duplicates) <= 2.75,
        ),
        Figure::goal(
            "fanout, 10% transient failures: $ per 1M jobs",
            format!("${:.2}", dollars(transient)),
            "≤ $3.00",
            dollars(transient) <= 3.00,
        ),
        Figure::goal(
            "fanout, clean tick: DynamoDB write units per job",
            format!("{:.2}", dynamodb_units(clean, true)),
            "≤ 2.5",
            dynamodb_units(clean, true) <= 2.5,
        ),
        Figure::goal(
            "fanout, clean tick: DynamoDB read units per job",
            format!("{:.2}", dynamodb_units(clean, false)),
            "≤ 0.3",
            dynamodb_units(clean, false) <= 0.3,
        ),
    ];
    for tick in by_rate {
        // Lambda bills the time an instance waits for its share: a lower budget, longer
        // invocations per job.
        figures.push(Figure::info(
            &format!(
                "fanout, clean tick at {}/s ({}/s per instance): $ per 1M jobs, consumer GB-s per job",
                tick.rate,
                tick.rate / concurrency
            ),
            format!(
                "${:.2}, {:.4} GB-s",
                dollars(tick),
                tick.consumer_ms / 1000.0 * MEMORY_MB / 1024.0 / tick.jobs.max(1) as f64
            ),
        ));
    }
    for (name, shape) in shapes {
        let map = total(&map_bill(shape, attempts, concurrency, rate));
        figures.push(Figure::goal(
            &format!("{name}: $ per 1M jobs ÷ fanout's"),
            format!("{:.1}× (${map:.2})", map / fanout),
            "≥ 5×",
            map / fanout >= 5.0,
        ));
    }
    let python = total(&python_bill(clean, cpu_us.0, cpu_us.1));
    figures.push(Figure::info(
        "Python/Powertools peer's Lambda: $ per 1M jobs ÷ fanout's",
        format!("{:.2}× (${python:.2})", python / fanout),
    ));
    let table = |title: String, lines: &[Line]| {
        format!("{title}\n\n| item | per job | $ per 1M jobs | |\n|---|---|---|---|\n{}\n| total | | ${:.2} | |", rows(lines).join("\n"), total(lines))
    };
    let mut notes: Vec<String> = [clean, duplicates, transient]
        .iter()
        .map(|t| table(format!("fanout's bill, {}:", t.name), &fanout_bill(t)))
        .collect();
    notes.extend([table(
        "The Python/Powertools peer's bill for the clean tick:".into(),
        &python_bill(clean, cpu_us.0, cpu_us.1),
    )]);
    for (name, shape) in shapes {
        notes.push(table(
            format!("{name}:"),
            &map_bill(shape, attempts, concurrency, rate),
        ));
    }
    let bill = fanout_bill(clean);
    let dynamodb: f64 = bill
        .iter()
        .filter(|l| l.item.starts_with("DynamoDB"))
        .map(|l| l.usd_per_million)
        .sum();
    let cheapest = shapes
        .iter()
        .map(|(_, shape)| total(&map_bill(*shape, attempts, concurrency, rate)))
        .fold(f64::INFINITY, f64::min);
    let floor = 2.0 * DYNAMODB_WRU * 1e6 + SQS_REQUEST * 1e6;
    notes.insert(
        0,
        format!(
            "Where the money goes: DynamoDB is {:.0}% of fanout's bill ({:.2} write and {:.2} read units per job). \
             A job costs two single-item conditional writes, the acquire and the settlement (COMPLETED or \
             DEAD_LETTERED), which also stores the batch that will count the job and what it adds; each consumer \
             instance then adds a whole batch of settlements to the run's counters in one conditional write, before it \
             deletes their messages (issue #28; until then a `TransactWriteItems` per job wrote the record and the \
             run's shard at 2 units each: 4.3 units a job). What else is shared: SNS `PublishBatch` (10 per call), the \
             mapping's receives and deletes (10 per call), host states (one `BatchGetItem` per batch), leases (one \
             write per instance and half-second), events (one per run). The floor of the design: two writes per job to \
             call each target once (${:.2}) and one SQS delivery (${:.2}), ${floor:.2} per 1M jobs before Lambda. \
             Distributed Map with express children of 100 items is the cheap shape (${cheapest:.2} per 1M jobs, \
             assuming the HTTP Task runs in express children; if not, a Lambda per child adds about what fanout's \
             consumer costs): a queue-based design cannot be 5× below it, its floor is above a fifth of it. Against it \
             fanout buys per-host budgets, 429 slow-down, circuits, the DLQ with reasons and runs counted exactly once.",
            100.0 * dynamodb / fanout,
            dynamodb_units(clean, true),
            dynamodb_units(clean, false),
            2.0 * DYNAMODB_WRU * 1e6,
            SQS_REQUEST * 1e6,
        ),
    );
    notes.push(PRICE_NOTES.to_owned());
    Section {
        title: "9. Cost per million jobs".into(),
        command: "target/release/fanout-bench cloud".into(),
        workload: "The ticks of figure 8 on the deployed stack: a clean tick, one where 30% of the jobs are delivered twice \
                   (copies published into the topic while the run is under way), one where 10% of the targets answer their \
                   first call with HTTP 500. Every request the functions made is counted by a proxy in front of the emulator \
                   and priced; the rows marked modelled are what the emulator does inside itself or what a peer would do."
            .into(),
        figures,
        runs: Vec::new(),
        notes,
    }
}
