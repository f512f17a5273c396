//! The [`RunLedger`] contract: a run is created once, skipped ticks and ticks that failed
//! before publishing are recorded (the latter begun afresh by a re-run), runs are read
//! and listed newest first, a run is settled when every shard is done (while RUNNING), finished
//! by exactly one caller, and its completion event marked sent.

use std::collections::BTreeMap;

use fanout_shared::idempotency::{Claim, IdempotencyStore};
use fanout_shared::runs::{shard_of, Begin, RunCounts, Tally};
use fanout_shared::{RunLedger, RunRecord, RunStatus};

use super::{contract, ids_in_distinct_shards, run_start, Contract};

/// Every contract of the trait.
pub fn contracts() -> Vec<Contract> {
    vec![
        contract!(begin_creates_a_running_run(runs)),
        contract!(a_second_begin_finds_the_run_and_changes_nothing(runs)),
        contract!(a_skipped_tick_is_recorded_once(runs)),
        contract!(a_tick_that_failed_unpublished_is_begun_afresh(runs)),
        contract!(an_unknown_run_is_nowhere(runs)),
        contract!(list_is_newest_first_up_to_the_limit(runs)),
        contract!(a_run_is_settled_when_every_shard_is_done(runs, store)),
        contract!(only_a_running_run_is_settled(runs, store)),
        contract!(counts_are_summed_over_shards(runs, store)),
        contract!(finish_moves_a_running_run_once(runs)),
        contract!(racing_finishers_finish_once(runs)),
        contract!(a_finisher_asking_again_finds_its_own_finish(runs)),
        contract!(the_event_is_marked_sent(runs)),
    ]
}

fn now() -> i64 {
    fanout_shared::now_ms()
}

/// The record `begin` of `run_start(run_id, ids, started_at_ms)` creates.
fn fresh_record(run_id: &str, ids: &[&str], started_at_ms: i64) -> RunRecord {
    let start = run_start(run_id, ids, started_at_ms);
    RunRecord {
        run_id: run_id.to_owned(),
        status: RunStatus::Running,
        scheduled_at: start.scheduled_at.clone(),
        config_digest: start.config_digest.clone(),
        started_at_ms,
        finished_at_ms: None,
        deadline_at_ms: start.deadline_at_ms(),
        policy: start.policy,
        counts: RunCounts {
            expected: ids.len() as u64,
            ..RunCounts::default()
        },
        event_sent: false,
        note: None,
        sources: start.sources,
    }
}

/// Settles job `id` of `run` through the idempotency store: success, or dead-lettered with
/// `class`.
async fn settle(store: &dyn IdempotencyStore, run: &str, id: &str, class: Option<&str>) {
    let t = now();
    let claim = Claim {
        message_id: id,
        run_id: run,
        target_id: "target",
        now_ms: t,
        lock_until_ms: t + 30_000,
        expiration_s: t / 1000 + 3_600,
        replay_of: None,
        holder: Claim::new_holder(),
    };
    store.acquire(&claim).await.unwrap();
    let tally = Tally {
        run_id: run,
        host: "h",
        reason: class,
        undo: None,
    };
    match class {
        None => {
            store.complete(id, 1, 200, 0, &tally).await.unwrap();
        }
        Some(class) => {
            let failure = fanout_shared::Failure::new(
                fanout_shared::FailureKind::Http(400),
                format!("{class}: refused"),
            );
            store.reject(id, 1, &failure).await.unwrap();
            store.dead_lettered(id, 1, &tally).await.unwrap();
        }
    }
}

/// `begin`: a RUNNING run with its expected count, schedule, digest, start, deadline and policy,
/// no finish and no event yet.
pub async fn begin_creates_a_running_run(runs: &dyn RunLedger) {
    let t = now();
    let ids = ["j1", "j2", "j3"];
    assert_eq!(
        runs.begin(&run_start("r1", &ids, t)).await.unwrap(),
        Begin::Started
    );
    let run = runs.get("r1").await.unwrap().expect("the run");
    assert_eq!(run, fresh_record("r1", &ids, t));
    assert_eq!(run.deadline_at_ms, Some(t + 600_000));
    assert_eq!(run.counts.in_flight(), 3);
}

/// A second `begin` of the same run (a re-delivered schedule event) finds it as it is and
/// changes nothing, even if it brings other counts.
pub async fn a_second_begin_finds_the_run_and_changes_nothing(runs: &dyn RunLedger) {
    let t = now();
    runs.begin(&run_start("r1", &["a", "b"], t)).await.unwrap();
    let first = runs.get("r1").await.unwrap().unwrap();
    let again = runs
        .begin(&run_start("r1", &["a", "b", "c", "d"], t + 5))
        .await
        .unwrap();
    assert_eq!(again, Begin::Existing(Box::new(first.clone())));
    assert_eq!(runs.get("r1").await.unwrap().unwrap(), first);
}

/// `skip`: a SKIPPED run with its reason and nothing expected; once recorded (or begun) a run
/// is not changed by a skip, and a later `begin` finds it.
pub async fn a_skipped_tick_is_recorded_once(runs: &dyn RunLedger) {
    let t = now();
    runs.skip(&run_start("s1", &["a"], t), "previous run in flight")
        .await
        .unwrap();
    let skipped = runs.get("s1").await.unwrap().expect("the skipped run");
    assert_eq!(
        (
            skipped.status,
            skipped.note.as_deref(),
            skipped.counts.expected,
            skipped.started_at_ms
        ),
        (RunStatus::Skipped, Some("previous run in flight"), 0, t)
    );
    runs.skip(&run_start("s1", &["a"], t + 1), "another reason")
        .await
        .unwrap();
    assert_eq!(runs.get("s1").await.unwrap().unwrap(), skipped);
    assert_eq!(
        runs.begin(&run_start("s1", &["a"], t + 2)).await.unwrap(),
        Begin::Existing(Box::new(skipped))
    );

    runs.begin(&run_start("b1", &["a"], t)).await.unwrap();
    runs.skip(&run_start("b1", &["a"], t), "late")
        .await
        .unwrap();
    assert_eq!(
        runs.get("b1").await.unwrap().unwrap(),
        fresh_record("b1", &["a"], t)
    );
}

/// `fail_unpublished`: a FAILED run with its reason, nothing expected, finished when it
/// started; a later `begin` (the tick re-run once its list is fixed) replaces it with a RUNNING
/// run, and from then on it is a run like any other: a second failure changes nothing.
pub async fn a_tick_that_failed_unpublished_is_begun_afresh(runs: &dyn RunLedger) {
    let t = now();
    runs.fail_unpublished(&run_start("f1", &["a"], t), "source \"customers\": gone")
        .await
        .unwrap();
    let failed = runs.get("f1").await.unwrap().expect("the failed run");
    assert_eq!(
        (
            failed.status,
            failed.note.as_deref(),
            failed.counts.expected,
            failed.finished_at_ms,
            failed.event_sent
        ),
        (
            RunStatus::Failed,
            Some("source \"customers\": gone"),
            0,
            Some(t),
            false
        )
    );
    runs.mark_event_sent("f1").await.unwrap();
    assert_eq!(
        runs.begin(&run_start("f1", &["a", "b"], t + 10))
            .await
            .unwrap(),
        Begin::Started
    );
    assert_eq!(
        runs.get("f1").await.unwrap().unwrap(),
        fresh_record("f1", &["a", "b"], t + 10)
    );
    runs.fail_unpublished(&run_start("f1", &["a"], t + 20), "again")
        .await
        .unwrap();
    assert_eq!(
        runs.get("f1").await.unwrap().unwrap(),
        fresh_record("f1", &["a", "b"], t + 10)
    );
}

/// A run never begun: not read, not listed, never settled or finished; marking its event sent
/// creates no run.
pub async fn an_unknown_run_is_nowhere(runs: &dyn RunLedger) {
    assert_eq!(runs.get("nobody").await.unwrap(), None);
    assert_eq!(runs.record_settled("nobody", &[0, 1]).await.unwrap(), None);
    assert!(!runs
        .finish("nobody", RunStatus::Succeeded, now(), 1)
        .await
        .unwrap());
    runs.mark_event_sent("nobody").await.unwrap();
    assert_eq!(runs.get("nobody").await.unwrap(), None);
    assert!(runs.list(10).await.unwrap().is_empty());
}

/// `list`: the latest runs by start, newest first, at most `limit`, skipped ones too, each
/// with its counters and current state.
pub async fn list_is_newest_first_up_to_the_limit(runs: &dyn RunLedger) {
    let t = now();
    runs.begin(&run_start("old", &["a"], t - 3_000))
        .await
        .unwrap();
    runs.begin(&run_start("new", &["a", "b"], t)).await.unwrap();
    runs.skip(&run_start("mid", &[], t - 1_000), "overlap")
        .await
        .unwrap();
    runs.finish("old", RunStatus::Failed, t, 2).await.unwrap();
    let listed = runs.list(10).await.unwrap();
    let order: Vec<&str> = listed.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(order, ["new", "mid", "old"]);
    assert_eq!(listed[0].counts.expected, 2);
    assert_eq!(
        (listed[2].status, listed[2].finished_at_ms),
        (RunStatus::Failed, Some(t))
    );
    let first_two: Vec<String> = runs
        .list(2)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(first_two, ["new", "mid"]);
}

/// `record_settled`: nothing while a shard still has jobs in flight; the run, with its
/// counters, once the jobs of every shard have settled (succeeded or dead-lettered).
pub async fn a_run_is_settled_when_every_shard_is_done(
    runs: &dyn RunLedger,
    store: &dyn IdempotencyStore,
) {
    let ids = ids_in_distinct_shards("settle", 3);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    runs.begin(&run_start("r", &ids, now())).await.unwrap();
    settle(store, "r", ids[0], None).await;
    assert_eq!(
        runs.record_settled("r", &[shard_of(ids[0])]).await.unwrap(),
        None
    );
    settle(store, "r", ids[1], Some("HTTP 400")).await;
    assert_eq!(
        runs.record_settled("r", &[shard_of(ids[1])]).await.unwrap(),
        None
    );
    settle(store, "r", ids[2], None).await;
    let settled = runs
        .record_settled("r", &[shard_of(ids[2])])
        .await
        .unwrap()
        .expect("every shard is done");
    assert_eq!(
        (
            settled.status,
            settled.counts.expected,
            settled.counts.succeeded,
            settled.counts.dead_lettered,
            settled.counts.in_flight()
        ),
        (RunStatus::Running, 3, 2, 1, 0)
    );
}

/// A settled run that was finished (or a skipped one) is not answered again.
pub async fn only_a_running_run_is_settled(runs: &dyn RunLedger, store: &dyn IdempotencyStore) {
    let t = now();
    let ids = ids_in_distinct_shards("done", 2);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    runs.begin(&run_start("r", &ids, t)).await.unwrap();
    settle(store, "r", ids[0], None).await;
    runs.record_settled("r", &[shard_of(ids[0])]).await.unwrap();
    assert!(runs.finish("r", RunStatus::Succeeded, t, 3).await.unwrap());
    settle(store, "r", ids[1], None).await;
    assert_eq!(
        runs.record_settled("r", &[shard_of(ids[1])]).await.unwrap(),
        None,
        "finished (by the watchdog) before its last job settled"
    );

    runs.skip(&run_start("s", &[], t), "overlap").await.unwrap();
    assert_eq!(runs.record_settled("s", &[0]).await.unwrap(), None);
}

/// A run's counters are the sums over its shards: expected, succeeded, dead-lettered, and the
/// failures by class and by host.
pub async fn counts_are_summed_over_shards(runs: &dyn RunLedger, store: &dyn IdempotencyStore) {
    let ids = ids_in_distinct_shards("sum", 4);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    runs.begin(&run_start("r", &ids, now())).await.unwrap();
    settle(store, "r", ids[0], None).await;
    settle(store, "r", ids[1], Some("HTTP 400")).await;
    settle(store, "r", ids[2], Some("HTTP 400")).await;
    let run = runs.get("r").await.unwrap().unwrap();
    assert_eq!(
        run.counts,
        RunCounts {
            expected: 4,
            succeeded: 1,
            dead_lettered: 2,
            failures_by_reason: BTreeMap::from([("HTTP 400".to_owned(), 2)]),
            failures_by_host: BTreeMap::from([("h".to_owned(), 2)]),
        }
    );
}

/// `finish`: RUNNING → the verdict, once: the second call (whatever its verdict) is refused and
/// changes nothing; a skipped run is never finished.
pub async fn finish_moves_a_running_run_once(runs: &dyn RunLedger) {
    let t = now();
    runs.begin(&run_start("r", &["a"], t)).await.unwrap();
    assert!(runs
        .finish("r", RunStatus::Failed, t + 10, 4)
        .await
        .unwrap());
    assert!(!runs
        .finish("r", RunStatus::Succeeded, t + 20, 5)
        .await
        .unwrap());
    let run = runs.get("r").await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.finished_at_ms, run.duration_ms()),
        (RunStatus::Failed, Some(t + 10), Some(10))
    );

    runs.skip(&run_start("s", &[], t), "overlap").await.unwrap();
    assert!(!runs.finish("s", RunStatus::Succeeded, t, 6).await.unwrap());
    assert_eq!(
        runs.get("s").await.unwrap().unwrap().status,
        RunStatus::Skipped
    );
}

/// Finishers racing on one run (consumers that settled its last jobs at once): exactly one wins.
pub async fn racing_finishers_finish_once(runs: &dyn RunLedger) {
    let t = now();
    runs.begin(&run_start("r", &["a"], t)).await.unwrap();
    let won = futures_util::future::join_all(
        (0..4).map(|i| runs.finish("r", RunStatus::Succeeded, t + i, i)),
    )
    .await
    .into_iter()
    .filter(|w| *w.as_ref().unwrap())
    .count();
    assert_eq!(won, 1);
}

/// A finisher whose first answer was lost asks again with its token and is told it won (its
/// event must still go out); any other finisher, even at the same time and verdict, is not.
pub async fn a_finisher_asking_again_finds_its_own_finish(runs: &dyn RunLedger) {
    let t = now();
    runs.begin(&run_start("r", &["a"], t)).await.unwrap();
    assert!(runs.finish("r", RunStatus::Succeeded, t, 41).await.unwrap());
    assert!(runs.finish("r", RunStatus::Succeeded, t, 41).await.unwrap());
    assert!(!runs.finish("r", RunStatus::Succeeded, t, 42).await.unwrap());
    let run = runs.get("r").await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.finished_at_ms),
        (RunStatus::Succeeded, Some(t))
    );
}

/// `mark_event_sent`: read back as sent, and nothing else changes.
pub async fn the_event_is_marked_sent(runs: &dyn RunLedger) {
    let t = now();
    runs.begin(&run_start("r", &["a"], t)).await.unwrap();
    runs.finish("r", RunStatus::Succeeded, t, 8).await.unwrap();
    let before = runs.get("r").await.unwrap().unwrap();
    runs.mark_event_sent("r").await.unwrap();
    let after = runs.get("r").await.unwrap().unwrap();
    assert_eq!(
        after,
        RunRecord {
            event_sent: true,
            ..before
        }
    );
}
