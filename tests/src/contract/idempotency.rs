//! The [`IdempotencyStore`] contract: every row of the acquire table (`decide_acquire`'s rule,
//! see `shared/src/idempotency.rs`), fencing, the failure count, the classes a record keeps, and
//! the run's tally written with each terminal transition, exactly once.

use fanout_shared::runs::{RunCounts, RunLedger, Tally};
use fanout_shared::{
    Acquire, Claim, Failure, FailureKind, IdempotencyRecord, IdempotencyStore, Status, Transition,
};

use super::{contract, fresh_token, run_start, Contract, CountingStore};

/// Every contract of the trait.
pub fn contracts() -> Vec<Contract> {
    vec![
        contract!(a_new_job_is_taken_with_attempt_one(store)),
        contract!(a_completed_job_is_never_taken_again(store, runs)),
        contract!(a_live_lock_is_locked_until_its_expiry(store)),
        contract!(an_expired_lock_is_taken_over_with_its_failures(store)),
        contract!(a_lock_is_free_at_its_expiry(store)),
        contract!(a_failed_job_is_taken_with_its_failures(store)),
        contract!(a_rejected_job_answers_its_rejection(store)),
        contract!(a_rejected_job_is_taken_by_the_replay_of_its_rejection(
            store
        )),
        contract!(a_dead_lettered_job_is_acked(store, runs)),
        contract!(a_dead_lettered_job_is_taken_by_the_replay_of_its_dead_lettering(store, runs)),
        contract!(a_superseded_holder_writes_nothing(store, runs)),
        contract!(transitions_leave_only_their_own_state(store, runs)),
        contract!(each_terminal_transition_is_counted_once(store, runs)),
        contract!(racing_holders_count_once(store, runs)),
        contract!(racing_acquires_take_one_lock(store)),
        contract!(an_acquire_asked_again_by_its_claim_finds_its_own_lock(
            store
        )),
        contract!(a_dead_lettering_without_a_class_counts_as_unknown(
            store, runs
        )),
        contract!(a_job_of_a_run_without_a_ledger_still_moves(store, runs)),
        contract!(get_many_reads_each_record_asked_for_once(store)),
        contract!(a_job_s_whole_life_follows_the_state_machine(store)),
    ]
}

const LOCK_MS: i64 = 30_000;
const HOST: &str = "h";

/// A claim of `id` in run `run` at `now_ms`, locking for [`LOCK_MS`].
fn claim<'a>(id: &'a str, run: &'a str, now_ms: i64) -> Claim<'a> {
    Claim {
        message_id: id,
        run_id: run,
        target_id: "target",
        now_ms,
        lock_until_ms: now_ms + LOCK_MS,
        expiration_s: now_ms / 1000 + 86_400,
        replay_of: None,
        holder: Claim::new_holder(),
    }
}

/// `claim` of a DLQ replay of the dead-lettering by attempt `of`.
fn replay<'a>(id: &'a str, run: &'a str, now_ms: i64, of: u32) -> Claim<'a> {
    Claim {
        replay_of: Some(of),
        ..claim(id, run, now_ms)
    }
}

fn tally<'a>(run: &'a str, reason: Option<&'a str>, undo: Option<&'a str>) -> Tally<'a> {
    Tally {
        run_id: run,
        host: HOST,
        reason,
        undo,
    }
}

fn acquired(attempt: u32, failures: u32, dead_letter_class: Option<&str>) -> Acquire {
    Acquire::Acquired {
        attempt,
        failures,
        dead_letter_class: dead_letter_class.map(str::to_owned),
    }
}

fn http400() -> Failure {
    Failure::new(
        FailureKind::Http(400),
        "HTTP 400: the target refused the body",
    )
}

async fn record(store: &dyn IdempotencyStore, id: &str) -> IdempotencyRecord {
    let mut records = store.get_many(&[id.to_owned()]).await.expect("get_many");
    assert_eq!(records.len(), 1, "one record for {id}: {records:?}");
    records.remove(0)
}

async fn counts(runs: &dyn RunLedger, run: &str) -> RunCounts {
    runs.get(run).await.expect("get").expect("the run").counts
}

/// A time base for one contract: now, so the records' TTLs are realistic.
fn t0() -> i64 {
    fanout_shared::now_ms()
}

/// Acquire, then `fail` (503): a FAILED record with `failures` = 1, attempt 1.
async fn failed_once(store: &dyn IdempotencyStore, id: &str, run: &str, t: i64) {
    assert_eq!(
        store.acquire(&claim(id, run, t)).await.unwrap(),
        acquired(1, 0, None)
    );
    assert_eq!(
        store.fail(id, 1, "HTTP 503", Some(503)).await.unwrap(),
        Transition::Done
    );
}

/// `failed_once`, acquire again (attempt 2) and reject with HTTP 400: a REJECTED record of
/// attempt 2 with one failure.
async fn rejected_at_two(store: &dyn IdempotencyStore, id: &str, run: &str, t: i64) {
    failed_once(store, id, run, t).await;
    assert_eq!(
        store.acquire(&claim(id, run, t + 1)).await.unwrap(),
        acquired(2, 1, None)
    );
    assert_eq!(
        store.reject(id, 2, &http400()).await.unwrap(),
        Transition::Done
    );
}

/// No record: the lock is taken with attempt 1 and the claim's lock, TTL, run and target.
pub async fn a_new_job_is_taken_with_attempt_one(store: &dyn IdempotencyStore) {
    let t = t0();
    let c = claim("new", "run", t);
    assert_eq!(store.acquire(&c).await.unwrap(), acquired(1, 0, None));
    let r = record(store, "new").await;
    assert_eq!(
        (
            r.status,
            r.attempts,
            r.failures,
            r.in_progress_expiry_ms,
            r.expiration_s
        ),
        (Status::InProgress, 1, 0, c.lock_until_ms, c.expiration_s)
    );
    assert_eq!((r.run_id.as_str(), r.target_id.as_str()), ("run", "target"));
    assert_eq!(
        (
            r.last_error,
            r.status_code,
            r.dead_letter_class,
            r.failure_class
        ),
        (None, None, None, None)
    );
}

/// COMPLETED: every later copy, a replay's too, is skipped, at any time, and changes nothing.
pub async fn a_completed_job_is_never_taken_again(
    store: &dyn IdempotencyStore,
    runs: &dyn RunLedger,
) {
    let store = &CountingStore { store, runs };
    let t = t0();
    runs.begin(&run_start("done-run", &["done"], t))
        .await
        .unwrap();
    store.acquire(&claim("done", "done-run", t)).await.unwrap();
    let expiration_s = t / 1000 + 3_600;
    assert_eq!(
        store
            .complete(
                "done",
                1,
                201,
                expiration_s,
                (&tally("done-run", None, None), &fresh_token())
            )
            .await
            .unwrap(),
        Transition::Done
    );
    for c in [
        claim("done", "done-run", t + 1),
        claim("done", "done-run", t + 10 * LOCK_MS),
        replay("done", "done-run", t + 2, 1),
        replay("done", "done-run", t + 3, 2),
    ] {
        assert_eq!(
            store.acquire(&c).await.unwrap(),
            Acquire::AlreadyCompleted,
            "{c:?}"
        );
    }
    let r = record(store, "done").await;
    assert_eq!(
        (
            r.status,
            r.attempts,
            r.status_code,
            r.expiration_s,
            r.last_error
        ),
        (Status::Completed, 1, Some(201), expiration_s, None)
    );
}

/// IN_PROGRESS with a live lock: locked until the lock's expiry, for a replay too; the holder
/// keeps its lock and attempt.
pub async fn a_live_lock_is_locked_until_its_expiry(store: &dyn IdempotencyStore) {
    let t = t0();
    let first = claim("held", "run", t);
    store.acquire(&first).await.unwrap();
    let until_ms = first.lock_until_ms;
    for c in [
        claim("held", "run", t + 1),
        claim("held", "run", until_ms - 1),
        replay("held", "run", t + 2, 1),
    ] {
        assert_eq!(
            store.acquire(&c).await.unwrap(),
            Acquire::Locked { until_ms },
            "{c:?}"
        );
    }
    let r = record(store, "held").await;
    assert_eq!(
        (r.status, r.attempts, r.in_progress_expiry_ms),
        (Status::InProgress, 1, until_ms)
    );
}

/// IN_PROGRESS with an expired lock (the holder crashed): taken over with the next attempt and
/// a new lock; the failures so far are kept.
pub async fn an_expired_lock_is_taken_over_with_its_failures(store: &dyn IdempotencyStore) {
    let t = t0();
    failed_once(store, "crashed", "run", t).await;
    assert_eq!(
        store
            .acquire(&claim("crashed", "run", t + 1))
            .await
            .unwrap(),
        acquired(2, 1, None)
    );
    let later = claim("crashed", "run", t + 1 + LOCK_MS + 1);
    assert_eq!(store.acquire(&later).await.unwrap(), acquired(3, 1, None));
    let r = record(store, "crashed").await;
    assert_eq!(
        (r.status, r.attempts, r.failures, r.in_progress_expiry_ms),
        (Status::InProgress, 3, 1, later.lock_until_ms)
    );
}

/// A lock is live while its expiry is after now: at the expiry itself it is free
/// (`in_progress_expiry_ms > now_ms` in `decide_acquire`).
pub async fn a_lock_is_free_at_its_expiry(store: &dyn IdempotencyStore) {
    let t = t0();
    let first = claim("edge", "run", t);
    store.acquire(&first).await.unwrap();
    assert_eq!(
        store
            .acquire(&claim("edge", "run", first.lock_until_ms))
            .await
            .unwrap(),
        acquired(2, 0, None)
    );
}

/// FAILED: the next copy takes it at once (whatever the old lock said), with the failures so
/// far; each `fail` adds one and keeps the last error and status (none: none).
pub async fn a_failed_job_is_taken_with_its_failures(store: &dyn IdempotencyStore) {
    let t = t0();
    failed_once(store, "flaky", "run", t).await;
    let r = record(store, "flaky").await;
    assert_eq!(
        (r.status, r.failures, r.last_error.as_deref(), r.status_code),
        (Status::Failed, 1, Some("HTTP 503"), Some(503))
    );
    assert_eq!(
        store.acquire(&claim("flaky", "run", t + 1)).await.unwrap(),
        acquired(2, 1, None),
        "FAILED is free before the old lock's expiry"
    );
    assert_eq!(
        store
            .fail("flaky", 2, "connection reset", None)
            .await
            .unwrap(),
        Transition::Done
    );
    let r = record(store, "flaky").await;
    assert_eq!(
        (r.status, r.failures, r.last_error.as_deref(), r.status_code),
        (Status::Failed, 2, Some("connection reset"), None)
    );
    assert_eq!(
        store.acquire(&claim("flaky", "run", t + 2)).await.unwrap(),
        acquired(3, 2, None)
    );
}

/// REJECTED (the DLQ copy may be missing): every copy but the replay of that rejection is
/// answered with the rejection (attempt, text, status, class) and changes nothing; the record
/// keeps the failure's text, status and class.
pub async fn a_rejected_job_answers_its_rejection(store: &dyn IdempotencyStore) {
    let t = t0();
    rejected_at_two(store, "bad", "run", t).await;
    let r = record(store, "bad").await;
    assert_eq!(
        (
            r.status,
            r.attempts,
            r.failures,
            r.last_error.as_deref(),
            r.status_code,
            r.failure_class.as_deref(),
            r.dead_letter_class.as_deref()
        ),
        (
            Status::Rejected,
            2,
            1,
            Some("HTTP 400: the target refused the body"),
            Some(400),
            Some("HTTP 400"),
            None
        )
    );
    let rejection = Acquire::Rejected {
        attempt: 2,
        reason: "HTTP 400: the target refused the body".into(),
        status_code: Some(400),
        class: "HTTP 400".into(),
        dead_letter_class: None,
    };
    // While the rejecting holder's lock lives it is still sending the DLQ copy: a copy is
    // locked out (a second sender would make a second DLQ copy); after it, the rejection.
    let held = Acquire::Locked {
        until_ms: t + 1 + LOCK_MS,
    };
    for (c, answer) in [
        (claim("bad", "run", t + 2), &held),
        (replay("bad", "run", t + 3, 1), &held),
        (claim("bad", "run", t + 10 * LOCK_MS), &rejection),
        (replay("bad", "run", t + 10 * LOCK_MS, 1), &rejection),
        (replay("bad", "run", t + 10 * LOCK_MS + 1, 3), &rejection),
    ] {
        assert_eq!(&store.acquire(&c).await.unwrap(), answer, "{c:?}");
    }
    assert_eq!(record(store, "bad").await, r, "answering changes nothing");

    // A failure without a status: none is kept, even over an earlier failure's.
    failed_once(store, "refused", "run", t).await;
    store
        .acquire(&claim("refused", "run", t + 1))
        .await
        .unwrap();
    let refused = Failure::new(FailureKind::RefusedByConfig, "host not allowed");
    assert_eq!(
        store.reject("refused", 2, &refused).await.unwrap(),
        Transition::Done
    );
    assert_eq!(
        store
            .acquire(&claim("refused", "run", t + 1 + LOCK_MS))
            .await
            .unwrap(),
        Acquire::Rejected {
            attempt: 2,
            reason: "host not allowed".into(),
            status_code: None,
            class: "refused by the consumer's config".into(),
            dead_letter_class: None,
        }
    );
    assert_eq!(record(store, "refused").await.status_code, None);
}

/// REJECTED, and the replay of that rejection arrives (the holder crashed after the DLQ send,
/// before confirming): the replay takes it with a fresh retry budget; a second copy of the same
/// replay finds it locked.
pub async fn a_rejected_job_is_taken_by_the_replay_of_its_rejection(store: &dyn IdempotencyStore) {
    let t = t0();
    rejected_at_two(store, "bad", "run", t).await;
    let first = replay("bad", "run", t + 2, 2);
    assert_eq!(store.acquire(&first).await.unwrap(), acquired(3, 0, None));
    let r = record(store, "bad").await;
    assert_eq!(
        (r.status, r.attempts, r.failures, r.in_progress_expiry_ms),
        (Status::InProgress, 3, 0, first.lock_until_ms)
    );
    assert_eq!(
        store
            .acquire(&replay("bad", "run", t + 3, 2))
            .await
            .unwrap(),
        Acquire::Locked {
            until_ms: first.lock_until_ms
        }
    );
}

/// DEAD_LETTERED: acked, by a replay of another dead-lettering too; the record keeps the
/// failure (text, status, class) and remembers the class it is counted under.
pub async fn a_dead_lettered_job_is_acked(store: &dyn IdempotencyStore, runs: &dyn RunLedger) {
    let store = &CountingStore { store, runs };
    let t = t0();
    runs.begin(&run_start("dl-run", &["dead"], t))
        .await
        .unwrap();
    rejected_at_two(store, "dead", "dl-run", t).await;
    assert_eq!(
        store
            .dead_lettered(
                "dead",
                2,
                (&tally("dl-run", Some("HTTP 400"), None), &fresh_token())
            )
            .await
            .unwrap(),
        Transition::Done
    );
    for c in [
        claim("dead", "dl-run", t + 2),
        claim("dead", "dl-run", t + 10 * LOCK_MS),
        replay("dead", "dl-run", t + 3, 1),
        replay("dead", "dl-run", t + 4, 3),
    ] {
        assert_eq!(
            store.acquire(&c).await.unwrap(),
            Acquire::AlreadyDeadLettered,
            "{c:?}"
        );
    }
    let r = record(store, "dead").await;
    assert_eq!(
        (
            r.status,
            r.attempts,
            r.last_error.as_deref(),
            r.status_code,
            r.failure_class.as_deref(),
            r.dead_letter_class.as_deref()
        ),
        (
            Status::DeadLettered,
            2,
            Some("HTTP 400: the target refused the body"),
            Some(400),
            Some("HTTP 400"),
            Some("HTTP 400")
        )
    );
}

/// DEAD_LETTERED, and the replay of that dead-lettering arrives: taken with a fresh retry
/// budget and the class it is counted under; a second copy of the replay finds it locked; its
/// success clears the class, and the same replay again is then skipped.
pub async fn a_dead_lettered_job_is_taken_by_the_replay_of_its_dead_lettering(
    store: &dyn IdempotencyStore,
    runs: &dyn RunLedger,
) {
    let store = &CountingStore { store, runs };
    let t = t0();
    runs.begin(&run_start("dl-run", &["dead"], t))
        .await
        .unwrap();
    rejected_at_two(store, "dead", "dl-run", t).await;
    store
        .dead_lettered(
            "dead",
            2,
            (&tally("dl-run", Some("HTTP 400"), None), &fresh_token()),
        )
        .await
        .unwrap();
    let first = replay("dead", "dl-run", t + 2, 2);
    assert_eq!(
        store.acquire(&first).await.unwrap(),
        acquired(3, 0, Some("HTTP 400"))
    );
    let r = record(store, "dead").await;
    assert_eq!(
        (r.status, r.attempts, r.failures),
        (Status::InProgress, 3, 0)
    );
    assert_eq!(
        store
            .acquire(&replay("dead", "dl-run", t + 3, 2))
            .await
            .unwrap(),
        Acquire::Locked {
            until_ms: first.lock_until_ms
        }
    );
    assert_eq!(
        store
            .complete(
                "dead",
                3,
                200,
                0,
                (&tally("dl-run", None, Some("HTTP 400")), &fresh_token())
            )
            .await
            .unwrap(),
        Transition::Done
    );
    let r = record(store, "dead").await;
    assert_eq!(
        (r.status, r.status_code, r.last_error, r.dead_letter_class),
        (Status::Completed, Some(200), None, None)
    );
    assert_eq!(
        store
            .acquire(&replay("dead", "dl-run", t + 4, 2))
            .await
            .unwrap(),
        Acquire::AlreadyCompleted
    );
}

/// Fencing: a holder whose lock expired and was taken over can neither complete, fail, reject
/// nor confirm a dead-lettering: `Superseded`, nothing written, nothing counted.
pub async fn a_superseded_holder_writes_nothing(
    store: &dyn IdempotencyStore,
    runs: &dyn RunLedger,
) {
    let store = &CountingStore { store, runs };
    let t = t0();
    runs.begin(&run_start("fence-run", &["fenced"], t))
        .await
        .unwrap();
    store
        .acquire(&claim("fenced", "fence-run", t))
        .await
        .unwrap();
    assert_eq!(
        store
            .acquire(&claim("fenced", "fence-run", t + LOCK_MS + 1))
            .await
            .unwrap(),
        acquired(2, 0, None)
    );
    let before = record(store, "fenced").await;
    let ok = tally("fence-run", None, None);
    assert_eq!(
        store
            .complete("fenced", 1, 200, 0, (&ok, &fresh_token()))
            .await
            .unwrap(),
        Transition::Superseded
    );
    assert_eq!(
        store
            .fail("fenced", 1, "HTTP 503", Some(503))
            .await
            .unwrap(),
        Transition::Superseded
    );
    assert_eq!(
        store.reject("fenced", 1, &http400()).await.unwrap(),
        Transition::Superseded
    );
    assert_eq!(record(store, "fenced").await, before);
    assert_eq!(counts(runs, "fence-run").await.settled(), 0);

    // The new holder rejects; the old one cannot confirm the dead-lettering.
    assert_eq!(
        store.reject("fenced", 2, &http400()).await.unwrap(),
        Transition::Done
    );
    let dead = tally("fence-run", Some("HTTP 400"), None);
    assert_eq!(
        store
            .dead_lettered("fenced", 1, (&dead, &fresh_token()))
            .await
            .unwrap(),
        Transition::Superseded
    );
    assert_eq!(record(store, "fenced").await.status, Status::Rejected);
    assert_eq!(counts(runs, "fence-run").await.settled(), 0);
    assert_eq!(
        store
            .dead_lettered("fenced", 2, (&dead, &fresh_token()))
            .await
            .unwrap(),
        Transition::Done
    );
    assert_eq!(counts(runs, "fence-run").await.dead_lettered, 1);
}

/// `complete`, `fail` and `reject` leave IN_PROGRESS only, `dead_lettered` REJECTED only: from
/// any other state (or no record) they are `Superseded`, write nothing and count nothing;
/// except the same transition by the same attempt asked again (its first answer lost), which
/// is `Done` and writes and counts nothing more.
pub async fn transitions_leave_only_their_own_state(
    store: &dyn IdempotencyStore,
    runs: &dyn RunLedger,
) {
    let store = &CountingStore { store, runs };
    let t = t0();
    let ids = ["ghost", "done", "flaky", "held"];
    runs.begin(&run_start("own-run", &ids, t)).await.unwrap();
    let ok = tally("own-run", None, None);
    let dead = tally("own-run", Some("HTTP 400"), None);

    // No record: nothing is created.
    assert_eq!(
        store
            .complete("ghost", 1, 200, 0, (&ok, &fresh_token()))
            .await
            .unwrap(),
        Transition::Superseded
    );
    assert_eq!(
        store.fail("ghost", 1, "x", None).await.unwrap(),
        Transition::Superseded
    );
    assert_eq!(
        store.reject("ghost", 1, &http400()).await.unwrap(),
        Transition::Superseded
    );
    assert_eq!(
        store
            .dead_lettered("ghost", 1, (&dead, &fresh_token()))
            .await
            .unwrap(),
        Transition::Superseded
    );
    assert!(store
        .get_many(&["ghost".to_owned()])
        .await
        .unwrap()
        .is_empty());

    // COMPLETED: final.
    store.acquire(&claim("done", "own-run", t)).await.unwrap();
    store
        .complete("done", 1, 200, 0, (&ok, &fresh_token()))
        .await
        .unwrap();
    let completed = record(store, "done").await;
    assert_eq!(
        store
            .complete("done", 1, 200, 0, (&ok, &fresh_token()))
            .await
            .unwrap(),
        Transition::Done
    );
    assert_eq!(
        store.fail("done", 1, "x", None).await.unwrap(),
        Transition::Superseded
    );
    assert_eq!(
        store.reject("done", 1, &http400()).await.unwrap(),
        Transition::Superseded
    );
    assert_eq!(
        store
            .dead_lettered("done", 1, (&dead, &fresh_token()))
            .await
            .unwrap(),
        Transition::Superseded
    );
    assert_eq!(record(store, "done").await, completed);

    // FAILED: a second `fail` of the same attempt adds nothing.
    failed_once(store, "flaky", "own-run", t).await;
    assert_eq!(
        store.fail("flaky", 1, "again", None).await.unwrap(),
        Transition::Done
    );
    assert_eq!(
        store
            .complete("flaky", 1, 200, 0, (&ok, &fresh_token()))
            .await
            .unwrap(),
        Transition::Superseded
    );
    assert_eq!(record(store, "flaky").await.failures, 1);

    // IN_PROGRESS: not dead-lettered before it is rejected.
    store.acquire(&claim("held", "own-run", t)).await.unwrap();
    assert_eq!(
        store
            .dead_lettered("held", 1, (&dead, &fresh_token()))
            .await
            .unwrap(),
        Transition::Superseded
    );
    assert_eq!(record(store, "held").await.status, Status::InProgress);

    let counts = counts(runs, "own-run").await;
    assert_eq!((counts.succeeded, counts.dead_lettered), (1, 0));
}

/// An acquire whose answer was lost, asked again by the same claim (the SDK retrying it, or the
/// copy rescheduled with the claim's token), finds the lock its first try took and takes it
/// again (a new attempt), not "locked"; any other claim is locked out.
pub async fn an_acquire_asked_again_by_its_claim_finds_its_own_lock(store: &dyn IdempotencyStore) {
    let t = t0();
    let first = claim("lost", "lost-run", t);
    assert_eq!(store.acquire(&first).await.unwrap(), acquired(1, 0, None));
    assert_eq!(store.acquire(&first).await.unwrap(), acquired(2, 0, None));
    assert_eq!(
        store
            .acquire(&claim("lost", "lost-run", t + 1))
            .await
            .unwrap(),
        Acquire::Locked {
            until_ms: t + LOCK_MS
        }
    );
    assert_eq!(record(store, "lost").await.attempts, 2);
    // The first attempt's outcome is refused (fenced), the second's is recorded; once the job
    // left IN_PROGRESS the claim's token means nothing more.
    assert_eq!(
        store.fail("lost", 1, "HTTP 503", Some(503)).await.unwrap(),
        Transition::Superseded
    );
    assert_eq!(
        store.fail("lost", 2, "HTTP 503", Some(503)).await.unwrap(),
        Transition::Done
    );
    assert_eq!(store.acquire(&first).await.unwrap(), acquired(3, 1, None));
}

/// The run's tally: COMPLETED counts a success, DEAD_LETTERED a dead-lettering under its class
/// and host, each exactly once; acquiring, failing and rejecting count nothing; a replayed
/// job's new outcome takes its old one back.
pub async fn each_terminal_transition_is_counted_once(
    store: &dyn IdempotencyStore,
    runs: &dyn RunLedger,
) {
    let store = &CountingStore { store, runs };
    let t = t0();
    runs.begin(&run_start("tally", &["a", "b", "c"], t))
        .await
        .unwrap();
    let snapshot = |succeeded, dead, reasons: &[(&str, u64)], hosts: &[(&str, u64)]| RunCounts {
        expected: 3,
        succeeded,
        dead_lettered: dead,
        failures_by_reason: reasons.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        failures_by_host: hosts.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    };

    store.acquire(&claim("a", "tally", t)).await.unwrap();
    assert_eq!(counts(runs, "tally").await, snapshot(0, 0, &[], &[]));
    store
        .complete(
            "a",
            1,
            200,
            0,
            (&tally("tally", None, None), &fresh_token()),
        )
        .await
        .unwrap();
    assert_eq!(counts(runs, "tally").await, snapshot(1, 0, &[], &[]));
    // Asked again (its answer lost): its own write, not counted twice.
    assert_eq!(
        store
            .complete(
                "a",
                1,
                200,
                0,
                (&tally("tally", None, None), &fresh_token())
            )
            .await
            .unwrap(),
        Transition::Done
    );
    assert_eq!(counts(runs, "tally").await, snapshot(1, 0, &[], &[]));

    // b: fails, is rejected (nothing counted), then dead-lettered (counted once).
    rejected_at_two(store, "b", "tally", t).await;
    assert_eq!(counts(runs, "tally").await, snapshot(1, 0, &[], &[]));
    let b_dead = Tally {
        host: "h2",
        ..tally("tally", Some("HTTP 400"), None)
    };
    store
        .dead_lettered("b", 2, (&b_dead, &fresh_token()))
        .await
        .unwrap();
    let after_b = snapshot(1, 1, &[("HTTP 400", 1)], &[("h2", 1)]);
    assert_eq!(counts(runs, "tally").await, after_b);
    assert_eq!(
        store
            .dead_lettered("b", 2, (&b_dead, &fresh_token()))
            .await
            .unwrap(),
        Transition::Done
    );
    assert_eq!(counts(runs, "tally").await, after_b);

    // b replayed: fails once more (nothing counted; the class stays with the record), then
    // succeeds, moving from dead-lettered to succeeded.
    assert_eq!(
        store
            .acquire(&replay("b", "tally", t + 2, 2))
            .await
            .unwrap(),
        acquired(3, 0, Some("HTTP 400"))
    );
    store.fail("b", 3, "HTTP 503", Some(503)).await.unwrap();
    assert_eq!(counts(runs, "tally").await, after_b);
    assert_eq!(
        store.acquire(&claim("b", "tally", t + 3)).await.unwrap(),
        acquired(4, 1, Some("HTTP 400"))
    );
    let b_ok = Tally {
        host: "h2",
        ..tally("tally", None, Some("HTTP 400"))
    };
    store
        .complete("b", 4, 200, 0, (&b_ok, &fresh_token()))
        .await
        .unwrap();
    assert_eq!(counts(runs, "tally").await, snapshot(2, 0, &[], &[]));

    // c: dead-lettered, replayed, and dead-lettered again for another reason: counted once,
    // under the new class.
    store.acquire(&claim("c", "tally", t)).await.unwrap();
    let exhausted = Failure::retries_exhausted(3, Some(503), "HTTP 503");
    store.reject("c", 1, &exhausted).await.unwrap();
    let class = exhausted.class();
    store
        .dead_lettered(
            "c",
            1,
            (&tally("tally", Some(&class), None), &fresh_token()),
        )
        .await
        .unwrap();
    assert_eq!(
        counts(runs, "tally").await,
        snapshot(2, 1, &[(&class, 1)], &[(HOST, 1)])
    );
    assert_eq!(
        store
            .acquire(&replay("c", "tally", t + 1, 1))
            .await
            .unwrap(),
        acquired(2, 0, Some(&class))
    );
    let gone = Failure::new(FailureKind::Http(404), "HTTP 404");
    store.reject("c", 2, &gone).await.unwrap();
    store
        .dead_lettered(
            "c",
            2,
            (
                &tally("tally", Some("HTTP 404"), Some(&class)),
                &fresh_token(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        counts(runs, "tally").await,
        snapshot(2, 1, &[("HTTP 404", 1)], &[(HOST, 1)])
    );
    assert_eq!(
        record(store, "c").await.dead_letter_class.as_deref(),
        Some("HTTP 404")
    );
}

/// Copies of one holder's outcome racing (a write retried while its first try is in flight): one
/// moves the record and counts; the others find the holder's own write and answer `Done` too,
/// so the holder carries on whichever answer reaches it; the run counts each job once.
pub async fn racing_holders_count_once(store: &dyn IdempotencyStore, runs: &dyn RunLedger) {
    let store = &CountingStore { store, runs };
    let t = t0();
    runs.begin(&run_start("race", &["ok", "dead"], t))
        .await
        .unwrap();
    store.acquire(&claim("ok", "race", t)).await.unwrap();
    let ok = tally("race", None, None);
    let outcomes = {
        let token = fresh_token();
        futures_util::future::join_all(
            (0..4).map(|_| store.complete("ok", 1, 200, 0, (&ok, &token))),
        )
        .await
    };
    let done = outcomes
        .into_iter()
        .filter(|o| *o.as_ref().unwrap() == Transition::Done)
        .count();
    assert_eq!(
        done, 4,
        "each try of the holder's complete is its own write"
    );

    store.acquire(&claim("dead", "race", t)).await.unwrap();
    store.reject("dead", 1, &http400()).await.unwrap();
    let dead = tally("race", Some("HTTP 400"), None);
    let outcomes = {
        let token = fresh_token();
        futures_util::future::join_all(
            (0..4).map(|_| store.dead_lettered("dead", 1, (&dead, &token))),
        )
        .await
    };
    let done = outcomes
        .into_iter()
        .filter(|o| *o.as_ref().unwrap() == Transition::Done)
        .count();
    assert_eq!(
        done, 4,
        "each try of the confirmation is the holder's own write"
    );
    let counts = counts(runs, "race").await;
    assert_eq!((counts.succeeded, counts.dead_lettered), (1, 1));
}

/// Copies of a new job racing for it: exactly one takes the lock, the others find it locked.
pub async fn racing_acquires_take_one_lock(store: &dyn IdempotencyStore) {
    let t = t0();
    // Each copy is another consumer's claim (its own holder token).
    let claims: Vec<Claim<'_>> = (0..6).map(|_| claim("contended", "run", t)).collect();
    let answers = futures_util::future::join_all(claims.iter().map(|c| store.acquire(c))).await;
    let answers: Vec<Acquire> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        answers
            .iter()
            .filter(|a| **a == acquired(1, 0, None))
            .count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|a| *a == acquired(1, 0, None)
            || *a
                == Acquire::Locked {
                    until_ms: claims[0].lock_until_ms
                }),
        "{answers:?}"
    );
    assert_eq!(record(store, "contended").await.attempts, 1);
}

/// A dead-lettering whose tally has no class is counted, and remembered, as `unknown`, so a
/// replay's success takes back exactly what was counted.
pub async fn a_dead_lettering_without_a_class_counts_as_unknown(
    store: &dyn IdempotencyStore,
    runs: &dyn RunLedger,
) {
    let store = &CountingStore { store, runs };
    let t = t0();
    runs.begin(&run_start("classless", &["x"], t))
        .await
        .unwrap();
    store.acquire(&claim("x", "classless", t)).await.unwrap();
    store.reject("x", 1, &http400()).await.unwrap();
    store
        .dead_lettered("x", 1, (&tally("classless", None, None), &fresh_token()))
        .await
        .unwrap();
    let c = counts(runs, "classless").await;
    assert_eq!(
        (
            c.dead_lettered,
            c.failures_by_reason.get("unknown").copied()
        ),
        (1, Some(1))
    );
    assert_eq!(
        record(store, "x").await.dead_letter_class.as_deref(),
        Some("unknown")
    );
    let Acquire::Acquired {
        attempt,
        dead_letter_class,
        ..
    } = store
        .acquire(&replay("x", "classless", t + 1, 1))
        .await
        .unwrap()
    else {
        panic!("the replay takes the job");
    };
    assert_eq!(dead_letter_class.as_deref(), Some("unknown"));
    store
        .complete(
            "x",
            attempt,
            200,
            0,
            (
                &tally("classless", None, dead_letter_class.as_deref()),
                &fresh_token(),
            ),
        )
        .await
        .unwrap();
    let c = counts(runs, "classless").await;
    assert_eq!(
        (c.succeeded, c.dead_lettered, c.failures_by_reason.len()),
        (1, 0, 0)
    );
}

/// A job of a run that has no ledger (published before the run ledger existed) still moves
/// through its states; nothing is counted and no run appears.
pub async fn a_job_of_a_run_without_a_ledger_still_moves(
    store: &dyn IdempotencyStore,
    runs: &dyn RunLedger,
) {
    let store = &CountingStore { store, runs };
    let t = t0();
    store.acquire(&claim("old-ok", "old", t)).await.unwrap();
    assert_eq!(
        store
            .complete(
                "old-ok",
                1,
                200,
                0,
                (&tally("old", None, None), &fresh_token())
            )
            .await
            .unwrap(),
        Transition::Done
    );
    assert_eq!(record(store, "old-ok").await.status, Status::Completed);
    store.acquire(&claim("old-bad", "old", t)).await.unwrap();
    store.reject("old-bad", 1, &http400()).await.unwrap();
    assert_eq!(
        store
            .dead_lettered(
                "old-bad",
                1,
                (&tally("old", Some("HTTP 400"), None), &fresh_token())
            )
            .await
            .unwrap(),
        Transition::Done
    );
    assert_eq!(record(store, "old-bad").await.status, Status::DeadLettered);
    assert_eq!(runs.get("old").await.unwrap(), None);
}

/// `get_many`: the records asked for, each once (a DLQ holding two copies of one job asks for
/// it twice), missing ones left out, in any order.
pub async fn get_many_reads_each_record_asked_for_once(store: &dyn IdempotencyStore) {
    let t = t0();
    assert!(store.get_many(&[]).await.unwrap().is_empty());
    for id in ["r1", "r2", "r3"] {
        store.acquire(&claim(id, "run", t)).await.unwrap();
    }
    let ask: Vec<String> = ["r3", "missing", "r1", "r3"].map(String::from).into();
    let mut found: Vec<String> = store
        .get_many(&ask)
        .await
        .expect("a repeated ID is no error")
        .into_iter()
        .map(|r| r.message_id)
        .collect();
    found.sort();
    assert_eq!(found, ["r1", "r3"]);
}

/// One job's whole life, as a consumer and the DLQ replay drive it (the SQLite store's first
/// test, now every backend's): take, lose the lock, fail, reject, dead-letter, replay, succeed.
pub async fn a_job_s_whole_life_follows_the_state_machine(store: &dyn IdempotencyStore) {
    let t = t0();
    let claim = |now: i64, lock: i64| Claim {
        message_id: "m1",
        run_id: "life",
        target_id: "t",
        now_ms: t + now,
        lock_until_ms: t + lock,
        expiration_s: 0,
        replay_of: None,
        holder: Claim::new_holder(),
    };
    let tally = Tally {
        run_id: "life",
        host: "h",
        reason: Some("HTTP 400"),
        undo: None,
    };
    assert_eq!(
        store.acquire(&claim(100, 1000)).await.unwrap(),
        acquired(1, 0, None)
    );
    assert_eq!(
        store.acquire(&claim(200, 1000)).await.unwrap(),
        Acquire::Locked { until_ms: t + 1000 }
    );
    // The lock expired: a second consumer takes over, and the first one's outcome is refused.
    assert_eq!(
        store.acquire(&claim(1001, 5000)).await.unwrap(),
        acquired(2, 0, None)
    );
    assert_eq!(
        store
            .complete("m1", 1, 200, 9, (&tally, &fresh_token()))
            .await
            .unwrap(),
        Transition::Superseded
    );
    assert_eq!(
        store.fail("m1", 2, "HTTP 503", Some(503)).await.unwrap(),
        Transition::Done
    );
    assert_eq!(
        store.acquire(&claim(1002, 5000)).await.unwrap(),
        acquired(3, 1, None)
    );
    assert_eq!(
        store
            .reject("m1", 3, &Failure::new(FailureKind::Http(400), "HTTP 400"))
            .await
            .unwrap(),
        Transition::Done
    );
    // While the rejecting attempt's lock lives, a copy is locked out; after it (the holder
    // crashed before confirming), the copy resumes the dead-lettering.
    assert_eq!(
        store.acquire(&claim(1003, 5000)).await.unwrap(),
        Acquire::Locked { until_ms: t + 5000 }
    );
    assert!(matches!(
        store.acquire(&claim(5000, 9000)).await.unwrap(),
        Acquire::Rejected {
            attempt: 3,
            status_code: Some(400),
            ..
        }
    ));
    assert_eq!(
        store
            .dead_lettered("m1", 3, (&tally, &fresh_token()))
            .await
            .unwrap(),
        Transition::Done
    );
    assert_eq!(
        store.acquire(&claim(1004, 5000)).await.unwrap(),
        Acquire::AlreadyDeadLettered
    );
    let replay = Claim {
        replay_of: Some(3),
        ..claim(1005, 5000)
    };
    assert_eq!(
        store.acquire(&replay).await.unwrap(),
        acquired(4, 0, Some("HTTP 400"))
    );
    assert_eq!(
        store
            .complete("m1", 4, 200, 9, (&tally, &fresh_token()))
            .await
            .unwrap(),
        Transition::Done
    );
    assert_eq!(
        store.acquire(&replay).await.unwrap(),
        Acquire::AlreadyCompleted
    );
    let record = &store.get_many(&["m1".into(), "none".into()]).await.unwrap()[0];
    assert_eq!(
        (
            record.status,
            record.attempts,
            record.status_code,
            record.last_error.as_deref()
        ),
        (Status::Completed, 4, Some(200), None)
    );
}
