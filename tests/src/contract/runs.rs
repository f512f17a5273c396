//! The [`RunLedger`] contract: a run is created once, skipped ticks and ticks that failed
//! before publishing are recorded (the latter begun afresh by a re-run), runs are read
//! and listed newest first, batches of settlements are counted once and in order per
//! instance (a sealed one never), a run is finished by exactly one caller, and its completion
//! event marked sent.

use std::collections::BTreeMap;

use fanout_shared::runs::{
    BatchState, Begin, CountToken, Counted, Delta, RunCounts, RunLedger, RunRecord, RunStatus,
    Tally,
};
use fanout_shared::{Claim, IdempotencyStore};

use super::{contract, fresh_token, run_start, Contract, CountingStore};

/// Every contract of the trait.
pub fn contracts() -> Vec<Contract> {
    vec![
        contract!(begin_creates_a_running_run(runs)),
        contract!(a_second_begin_finds_the_run_and_changes_nothing(runs)),
        contract!(a_skipped_tick_is_recorded_once(runs)),
        contract!(a_tick_that_failed_unpublished_is_begun_afresh(runs)),
        contract!(an_unknown_run_is_nowhere(runs)),
        contract!(list_is_newest_first_up_to_the_limit(runs)),
        contract!(a_batch_counts_once_and_answers_the_counters(runs)),
        contract!(an_instance_s_batches_apply_in_order(runs)),
        contract!(a_sealed_batch_never_applies(runs)),
        contract!(a_run_without_a_ledger_counts_nothing(runs)),
        contract!(settled_jobs_are_counted_with_failures_by_class_and_host(
            runs, store
        )),
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

/// Settles job `id` of `run` through the idempotency store and counts it: success, or
/// dead-lettered with `class`.
async fn settle(
    (store, runs): (&dyn IdempotencyStore, &dyn RunLedger),
    run: &str,
    id: &str,
    class: Option<&str>,
) {
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
    let store = CountingStore { store, runs };
    let tally = Tally {
        run_id: run,
        host: "h",
        reason: class,
        undo: None,
    };
    match class {
        None => {
            store
                .complete(id, 1, 200, 0, (&tally, &fresh_token()))
                .await
                .unwrap();
        }
        Some(class) => {
            let failure = fanout_shared::Failure::new(
                fanout_shared::FailureKind::Http(400),
                format!("{class}: refused"),
            );
            store.reject(id, 1, &failure).await.unwrap();
            store
                .dead_lettered(id, 1, (&tally, &fresh_token()))
                .await
                .unwrap();
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
    assert_eq!(runs.count_state("nobody").await.unwrap(), None);
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

fn successes(n: i64) -> Delta {
    Delta {
        succeeded: n,
        ..Delta::default()
    }
}

fn applied(counted: Counted) -> fanout_shared::runs::CountState {
    match counted {
        Counted::Applied(state) => state,
        other => panic!("expected the batch applied, got {other:?}"),
    }
}

/// `count`: a batch adds its delta once, also when asked again (its first answer lost), and
/// answers the run's counters; the one that settles the last job shows nothing in flight.
pub async fn a_batch_counts_once_and_answers_the_counters(runs: &dyn RunLedger) {
    runs.begin(&run_start("r", &["a", "b", "c"], now()))
        .await
        .unwrap();
    let first = applied(runs.count("r", "i1", 1, &successes(2)).await.unwrap());
    assert_eq!((first.counts.succeeded, first.counts.in_flight()), (2, 1));
    let again = applied(runs.count("r", "i1", 1, &successes(2)).await.unwrap());
    assert_eq!(
        again.counts.succeeded, 2,
        "a batch asked again adds nothing"
    );
    let dead = Delta {
        dead_lettered: 1,
        reasons: vec![("HTTP 400".to_owned(), 1)],
        hosts: vec![("h".to_owned(), 1)],
        ..Delta::default()
    };
    let last = applied(runs.count("r", "i2", 1, &dead).await.unwrap());
    assert_eq!(
        (
            last.counts.settled(),
            last.counts.in_flight(),
            last.last.len()
        ),
        (3, 0, 2)
    );
    assert_eq!(runs.count_state("r").await.unwrap(), Some(last.clone()));
    assert_eq!(runs.get("r").await.unwrap().unwrap().counts, last.counts);
}

/// An instance's batch applies only after its previous one: a batch that skips one is refused.
pub async fn an_instance_s_batches_apply_in_order(runs: &dyn RunLedger) {
    runs.begin(&run_start("r", &["a", "b", "c"], now()))
        .await
        .unwrap();
    assert!(runs.count("r", "i1", 2, &successes(1)).await.is_err());
    applied(runs.count("r", "i1", 1, &successes(1)).await.unwrap());
    let state = applied(runs.count("r", "i1", 2, &successes(1)).await.unwrap());
    assert_eq!((state.counts.succeeded, state.last["i1"]), (2, 2));
}

/// `seal`: the instance's next batch is taken; its own count of it is then refused
/// (`Sealed`), its later batches apply, and a seal of a batch that is not next (or already
/// applied) changes nothing.
pub async fn a_sealed_batch_never_applies(runs: &dyn RunLedger) {
    runs.begin(&run_start("r", &["a", "b", "c"], now()))
        .await
        .unwrap();
    let token = |seq| CountToken {
        instance: "i1".to_owned(),
        seq,
        deadline_ms: 0,
    };
    let untouched = runs.seal("r", "i1", 2).await.unwrap().unwrap();
    assert_eq!(
        untouched.batch(&token(2)),
        BatchState::Pending { next: false }
    );
    let sealed = runs.seal("r", "i1", 1).await.unwrap().unwrap();
    assert_eq!(sealed.batch(&token(1)), BatchState::Sealed);
    assert_eq!(runs.seal("r", "i1", 1).await.unwrap(), Some(sealed.clone()));
    assert_eq!(
        runs.count("r", "i1", 1, &successes(1)).await.unwrap(),
        Counted::Sealed
    );
    let later = applied(runs.count("r", "i1", 2, &successes(1)).await.unwrap());
    assert_eq!(
        (
            later.counts.succeeded,
            later.batch(&token(1)),
            later.batch(&token(2))
        ),
        (1, BatchState::Sealed, BatchState::Applied)
    );
    let kept = runs.seal("r", "i1", 2).await.unwrap().unwrap();
    assert_eq!(kept.batch(&token(2)), BatchState::Applied);
}

/// A run without a ledger (published before it had one, or expired) counts nothing.
pub async fn a_run_without_a_ledger_counts_nothing(runs: &dyn RunLedger) {
    assert_eq!(
        runs.count("old", "i1", 1, &successes(1)).await.unwrap(),
        Counted::NoLedger
    );
    assert_eq!(runs.seal("old", "i1", 1).await.unwrap(), None);
    assert_eq!(runs.count_state("old").await.unwrap(), None);
    runs.skip(&run_start("s", &[], now()), "overlap")
        .await
        .unwrap();
    assert_eq!(
        runs.count("s", "i1", 1, &successes(1)).await.unwrap(),
        Counted::NoLedger,
        "a skipped tick has no jobs to count"
    );
}

/// Settled jobs, counted through their records' batches: expected, succeeded, dead-lettered,
/// and the failures by class and by host.
pub async fn settled_jobs_are_counted_with_failures_by_class_and_host(
    runs: &dyn RunLedger,
    store: &dyn IdempotencyStore,
) {
    let ids = ["sum-0", "sum-1", "sum-2", "sum-3"];
    runs.begin(&run_start("r", &ids, now())).await.unwrap();
    settle((store, runs), "r", ids[0], None).await;
    settle((store, runs), "r", ids[1], Some("HTTP 400")).await;
    settle((store, runs), "r", ids[2], Some("HTTP 400")).await;
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
