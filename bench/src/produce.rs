//! Figure 4, producer fan-out: one tick of 100,000 targets into the embedded topic (a fresh state
//! file per run, as `fanout produce` writes it), and 500 targets into SNS on moto.

use std::time::Instant;

use fanout::{aws_with, provision};
use fanout_tests::Moto;

use crate::measure::cpu_seconds;
use crate::report::{list, median, Figure, Section};
use crate::workload::{embedded, ok_targets, Scratch};

const EMBEDDED_TARGETS: usize = 100_000;
const MOTO_TARGETS: usize = 500;

/// One embedded tick: (seconds, PublishBatch calls).
async fn embedded_tick(scratch: &Scratch, run: usize) -> Result<(f64, u64), String> {
    let config = ok_targets("https://api.example.com", EMBEDDED_TARGETS, None);
    let pipeline = embedded(&scratch.join(&format!("produce-{run}.db")), 0.0)?;
    let summary = fanout::produce_tick(
        &config,
        &pipeline,
        &format!("bench-produce-{run}"),
        "fanout",
    )
    .await
    .map_err(|e| e.to_string())?;
    if summary.published != EMBEDDED_TARGETS {
        return Err(format!(
            "published {} of {EMBEDDED_TARGETS}",
            summary.published
        ));
    }
    Ok((summary.elapsed.as_secs_f64(), summary.publish_calls))
}

/// Moto ticks: (msgs/s, calls ÷ (N/10), share of one core this process used), or why not.
async fn moto_ticks(runs: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>), String> {
    let moto = Moto::start().ok_or("moto is not installed in .venv (scripts/setup-emulator)")?;
    let sdk = moto.sdk().await;
    let config = ok_targets("https://api.example.com", MOTO_TARGETS, None);
    let (mut rates, mut calls, mut cpu_share) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        // A fresh topic and queue per run, so no run publishes into a deeper queue.
        let names = provision(&sdk, &format!("bench{run}"), 5, 30)
            .await
            .map_err(|e| e.to_string())?;
        let pipeline = aws_with(&sdk, &names);
        let (cpu, started) = (cpu_seconds(), Instant::now());
        let summary =
            fanout::produce_tick(&config, &pipeline, &format!("bench-moto-{run}"), "fanout")
                .await
                .map_err(|e| e.to_string())?;
        let wall = started.elapsed().as_secs_f64();
        if summary.published != MOTO_TARGETS {
            return Err(format!(
                "moto: published {} of {MOTO_TARGETS}",
                summary.published
            ));
        }
        rates.push(MOTO_TARGETS as f64 / wall);
        calls.push(summary.publish_calls as f64 / (MOTO_TARGETS as f64 / 10.0));
        cpu_share.push((cpu_seconds() - cpu) / wall);
    }
    Ok((rates, calls, cpu_share))
}

/// Runs figure 4, `runs` times each.
pub(crate) async fn section(runs: usize) -> Result<Section, String> {
    let scratch = Scratch::new("produce")?;
    let (mut seconds, mut calls) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let (s, c) = embedded_tick(&scratch, run).await?;
        seconds.push(s);
        calls.push(c as f64 / (EMBEDDED_TARGETS as f64 / 10.0));
    }
    let mut figures = vec![
        Figure::goal(
            &format!("embedded: {EMBEDDED_TARGETS} targets"),
            format!("{:.2} s", median(&seconds)),
            "≤ 2 s",
            median(&seconds) <= 2.0,
        ),
        Figure::goal(
            "embedded: PublishBatch calls ÷ (N/10)",
            format!("{:.3}", median(&calls)),
            "= 1.0",
            (median(&calls) - 1.0).abs() < 1e-9,
        ),
    ];
    let mut runs_lines = vec![
        format!("embedded seconds: {}", list(&seconds, 3)),
        format!("embedded calls ÷ (N/10): {}", list(&calls, 3)),
    ];
    let mut notes = Vec::new();
    match moto_ticks(runs).await {
        Ok((rates, moto_calls, cpu_share)) => {
            figures.push(Figure::info(
                &format!("moto: {MOTO_TARGETS} targets"),
                format!("{:.0} msgs/s", median(&rates)),
            ));
            figures.push(Figure::goal(
                "moto: PublishBatch calls ÷ (N/10)",
                format!("{:.3}", median(&moto_calls)),
                "= 1.0",
                (median(&moto_calls) - 1.0).abs() < 1e-9,
            ));
            figures.push(Figure::info(
                "moto: producer CPU ÷ wall",
                format!("{:.0}% of one core", median(&cpu_share) * 100.0),
            ));
            runs_lines.push(format!("moto msgs/s: {}", list(&rates, 0)));
            notes.push(format!(
                "Against moto the producer is emulator-bound: moto (Python, one request at a time, see \
                 tests/emulator/moto_serial.py) spends ~{:.1} ms per PublishBatch call of 10 messages while the producer \
                 process itself is busy {:.0}% of the time; the figure says nothing about SNS's own rate.",
                1000.0 * 10.0 / median(&rates),
                median(&cpu_share) * 100.0
            ));
        }
        Err(e) => notes.push(format!("moto figures not measured: {e}")),
    }
    Ok(Section {
        title: "4. Producer fan-out".into(),
        command: "target/release/fanout-bench produce".into(),
        workload: format!(
            "One tick of {EMBEDDED_TARGETS} targets (message IDs, JSON bodies, batches of 10, 8 PublishBatch calls in flight) \
             into the embedded topic on a fresh state file; then {MOTO_TARGETS} targets into SNS on moto (`fanout provision`ed \
             topic → SQS queue, fresh per run). Time is the producer's `Summary.elapsed`."
        ),
        figures,
        runs: runs_lines,
        notes,
    })
}
