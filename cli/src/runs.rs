//! `fanout runs list` and `fanout runs show`: the run ledger, as an operator reads it.

use fanout_shared::runs::{rfc3339, RunRecord};

/// One line per run, newest first.
pub(crate) fn table(runs: &[RunRecord], now_ms: i64) -> String {
    let mut out = format!(
        "{:<44} {:<10} {:>8} {:>9} {:>13} {:>9}  {:<24} {:>10}\n",
        "RUN",
        "STATUS",
        "EXPECTED",
        "SUCCEEDED",
        "DEAD-LETTERED",
        "IN FLIGHT",
        "STARTED",
        "DURATION"
    );
    for run in runs {
        let status = if run.is_overdue(now_ms) {
            "OVERDUE".to_owned()
        } else {
            run.status.as_str().to_owned()
        };
        out.push_str(&format!(
            "{:<44} {:<10} {:>8} {:>9} {:>13} {:>9}  {:<24} {:>10}\n",
            run.run_id,
            status,
            run.counts.expected,
            run.counts.succeeded,
            run.counts.dead_lettered,
            run.counts.in_flight(),
            rfc3339(run.started_at_ms),
            duration(run, now_ms),
        ));
    }
    out
}

/// Everything about one run.
pub(crate) fn details(run: &RunRecord, now_ms: i64) -> String {
    let mut rows: Vec<(String, String)> = vec![
        ("run".into(), run.run_id.clone()),
        (
            "status".into(),
            format!(
                "{}{}",
                run.status.as_str(),
                if run.is_overdue(now_ms) {
                    " (OVERDUE: past its deadline)"
                } else {
                    ""
                }
            ),
        ),
        ("expected".into(), run.counts.expected.to_string()),
        ("succeeded".into(), run.counts.succeeded.to_string()),
        ("dead-lettered".into(), run.counts.dead_lettered.to_string()),
        ("in flight".into(), run.counts.in_flight().to_string()),
        ("started".into(), rfc3339(run.started_at_ms)),
        (
            "finished".into(),
            run.finished_at_ms
                .map(rfc3339)
                .unwrap_or_else(|| "-".into()),
        ),
        ("duration".into(), duration(run, now_ms)),
    ];
    if let Some(at) = &run.scheduled_at {
        rows.push(("scheduled for".into(), at.clone()));
    }
    if let Some(deadline) = run.deadline_at_ms {
        rows.push(("deadline".into(), rfc3339(deadline)));
    }
    let p = &run.policy;
    let tolerated = match (p.tolerated_failure_count, p.tolerated_failure_percentage) {
        (None, None) => "none (any dead-lettered job fails the run)".to_owned(),
        (count, percent) => [
            count.map(|c| format!("{c} jobs")),
            percent.map(|p| format!("{p}%")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" and "),
    };
    rows.push(("tolerated failures".into(), tolerated));
    rows.push((
        "completion event".into(),
        if run.event_sent { "sent" } else { "not sent" }.into(),
    ));
    rows.push(("config digest".into(), run.config_digest.clone()));
    if let Some(note) = &run.note {
        rows.push(("note".into(), note.clone()));
    }
    for (title, by) in [
        ("failures by reason", &run.counts.failures_by_reason),
        ("failures by host", &run.counts.failures_by_host),
    ] {
        if !by.is_empty() {
            rows.push((title.into(), String::new()));
            let mut sorted: Vec<_> = by.iter().collect();
            sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            rows.extend(
                sorted
                    .into_iter()
                    .map(|(k, n)| (format!("  {k}"), n.to_string())),
            );
        }
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}").trim_end().to_owned() + "\n")
        .collect()
}

/// Finished minus started, or time so far for a running run.
fn duration(run: &RunRecord, now_ms: i64) -> String {
    let ms = run
        .duration_ms()
        .unwrap_or(now_ms - run.started_at_ms)
        .max(0);
    let suffix = if run.finished_at_ms.is_none() {
        " so far"
    } else {
        ""
    };
    if run.status == fanout_shared::runs::RunStatus::Skipped {
        return "-".into();
    }
    format!("{:.1} s{suffix}", ms as f64 / 1000.0)
}
