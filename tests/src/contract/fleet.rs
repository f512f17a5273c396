//! The [`FleetStore`] contract: host states are read back as written, events are applied
//! atomically (concurrent writers never lose one another's event, a probe is claimed once), and
//! leases are renewed, listed while live, and pruned once lapsed.

use fanout_shared::fleet::{FleetStore, Lease};
use fanout_shared::{Circuit, HostEvent, HostPolicy, HostState};

use super::{contract, Contract};

/// Every contract of the trait.
pub fn contracts() -> Vec<Contract> {
    vec![
        contract!(unwritten_hosts_are_left_out(fleet)),
        contract!(an_event_is_applied_and_read_back(fleet)),
        contract!(an_event_that_changes_nothing_writes_nothing(fleet)),
        contract!(concurrent_events_are_all_applied(fleet)),
        contract!(a_probe_is_claimed_once(fleet)),
        contract!(a_renewal_lists_every_live_lease(fleet)),
        contract!(a_renewal_moves_the_lease_s_expiry(fleet)),
        contract!(a_renewal_moves_the_lease_s_entitlement(fleet)),
        contract!(a_release_is_kept_until_the_next_renewal(fleet)),
        contract!(lapsed_leases_are_left_out_and_pruned(fleet)),
    ]
}

fn policy() -> HostPolicy {
    HostPolicy {
        failure_threshold: 2,
        cooldown_ms: 100,
        ..HostPolicy::default()
    }
}

fn hosts(names: &[&str]) -> Vec<String> {
    names.iter().map(|h| (*h).to_owned()).collect()
}

fn sorted(mut leases: Vec<Lease>) -> Vec<Lease> {
    leases.sort_by(|a, b| a.instance.cmp(&b.instance));
    leases
}

fn lease(instance: &str, since_ms: i64, expires_ms: i64) -> Lease {
    Lease {
        instance: instance.to_owned(),
        since_ms,
        expires_ms,
        entitled_ms: since_ms,
        released: false,
    }
}

/// `host_states`: hosts never written are left out (their state is the default).
pub async fn unwritten_hosts_are_left_out(fleet: &dyn FleetStore) {
    assert!(fleet
        .host_states(&hosts(&["a", "b"]))
        .await
        .unwrap()
        .is_empty());
    assert!(fleet.host_states(&[]).await.unwrap().is_empty());
}

/// `apply`: the state after the event (as [`HostState::apply`] computes it), marked changed,
/// and read back by `host_states`, each host once however often it is asked for.
pub async fn an_event_is_applied_and_read_back(fleet: &dyn FleetStore) {
    let p = policy();
    let (first, changed) = fleet
        .apply("a", &HostEvent::Failed { streak: 1 }, 0, &p)
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(
        Some(first.clone()),
        HostState::default().apply(&HostEvent::Failed { streak: 1 }, 0, &p)
    );
    let (opened, changed) = fleet
        .apply("a", &HostEvent::Failed { streak: 2 }, 1, &p)
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(opened.circuit, Circuit::Open { until_ms: 101 });
    let (set, _) = fleet
        .apply("b", &HostEvent::RateSet(Some(2.5)), 2, &p)
        .await
        .unwrap();
    let (paused, _) = fleet.apply("b", &HostEvent::Paused, 3, &p).await.unwrap();
    assert_eq!(
        (
            set.operator_rate,
            paused.operator_paused,
            paused.operator_rate
        ),
        (Some(2.5), true, Some(2.5))
    );
    let mut read = fleet
        .host_states(&hosts(&["a", "b", "c", "a"]))
        .await
        .unwrap();
    read.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        read,
        vec![("a".to_owned(), opened), ("b".to_owned(), paused)]
    );
}

/// An event that leaves the state as it is answers `false` with the current state and writes
/// nothing (a host never written stays unwritten).
pub async fn an_event_that_changes_nothing_writes_nothing(fleet: &dyn FleetStore) {
    let p = policy();
    assert_eq!(
        fleet
            .apply("calm", &HostEvent::Succeeded, 0, &p)
            .await
            .unwrap(),
        (HostState::default(), false)
    );
    assert!(fleet
        .host_states(&hosts(&["calm"]))
        .await
        .unwrap()
        .is_empty());
    let (paused, _) = fleet.apply("p", &HostEvent::Paused, 0, &p).await.unwrap();
    assert_eq!(
        fleet.apply("p", &HostEvent::Paused, 1, &p).await.unwrap(),
        (paused, false)
    );
}

/// Concurrent events on one host (the store's version check on DynamoDB, its transaction on
/// SQLite) are each applied to the state the others left: none is lost to another writer. Six
/// instances report streaks of 1 to 6 at once; whatever order they land in, the longest stays
/// (a store whose last writer won would keep a random one of them).
pub async fn concurrent_events_are_all_applied(fleet: &dyn FleetStore) {
    let p = HostPolicy {
        failure_threshold: 100,
        ..HostPolicy::default()
    };
    let writers = 6;
    let events: Vec<HostEvent> = (1..=writers)
        .map(|streak| HostEvent::Failed { streak })
        .collect();
    let outcomes = futures_util::future::join_all(
        events
            .iter()
            .zip(0..)
            .map(|(event, now)| fleet.apply("busy", event, now, &p)),
    )
    .await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let state = fleet.host_states(&hosts(&["busy"])).await.unwrap();
    assert_eq!(state[0].1.consecutive_failures, writers);
}

/// The half-open probe: of the instances claiming it once the cool-down is over, one wins.
pub async fn a_probe_is_claimed_once(fleet: &dyn FleetStore) {
    let p = policy();
    fleet
        .apply("a", &HostEvent::Failed { streak: 1 }, 0, &p)
        .await
        .unwrap();
    fleet
        .apply("a", &HostEvent::Failed { streak: 2 }, 1, &p)
        .await
        .unwrap();
    assert!(
        !fleet
            .apply("a", &HostEvent::ProbeClaimed, 50, &p)
            .await
            .unwrap()
            .1,
        "no probe during the cool-down"
    );
    assert!(
        fleet
            .apply("a", &HostEvent::ProbeClaimed, 101, &p)
            .await
            .unwrap()
            .1,
        "first claim wins"
    );
    assert!(
        !fleet
            .apply("a", &HostEvent::ProbeClaimed, 102, &p)
            .await
            .unwrap()
            .1,
        "second claim loses"
    );

    // The same race, at once.
    fleet
        .apply("b", &HostEvent::Failed { streak: 1 }, 0, &p)
        .await
        .unwrap();
    fleet
        .apply("b", &HostEvent::Failed { streak: 2 }, 1, &p)
        .await
        .unwrap();
    let won = futures_util::future::join_all(
        (0..4).map(|_| fleet.apply("b", &HostEvent::ProbeClaimed, 101, &p)),
    )
    .await
    .into_iter()
    .filter(|o| o.as_ref().unwrap().1)
    .count();
    assert_eq!(won, 1);
}

/// `renew`: inserts a new lease and answers every live lease, this one included.
pub async fn a_renewal_lists_every_live_lease(fleet: &dyn FleetStore) {
    let a = lease("a", 0, 1_000);
    let b = lease("b", 500, 3_000);
    assert_eq!(fleet.renew(&a, 0).await.unwrap(), vec![a.clone()]);
    assert_eq!(
        sorted(fleet.renew(&b, 500).await.unwrap()),
        vec![a.clone(), b.clone()]
    );
    let c = lease("c", 600, 3_600);
    assert_eq!(sorted(fleet.renew(&c, 600).await.unwrap()), vec![a, b, c]);
}

/// Renewing one's lease moves its expiry: one lease per instance, the latest expiry.
pub async fn a_renewal_moves_the_lease_s_expiry(fleet: &dyn FleetStore) {
    fleet.renew(&lease("a", 0, 3_000), 0).await.unwrap();
    let renewed = lease("a", 0, 4_000);
    assert_eq!(
        fleet.renew(&renewed, 1_000).await.unwrap(),
        vec![renewed.clone()]
    );
    let other = lease("b", 1_500, 4_500);
    assert_eq!(
        sorted(fleet.renew(&other, 1_500).await.unwrap()),
        vec![renewed, other]
    );
}

/// A joiner's second write moves its entitlement (from when the others count it); the next
/// renewal keeps it.
pub async fn a_renewal_moves_the_lease_s_entitlement(fleet: &dyn FleetStore) {
    let joined = lease("j", 1_000, 4_000);
    fleet.renew(&joined, 1_000).await.unwrap();
    let entitled = Lease {
        entitled_ms: 1_600,
        ..joined
    };
    assert_eq!(
        fleet.renew(&entitled, 1_010).await.unwrap(),
        vec![entitled.clone()]
    );
    let renewed = Lease {
        expires_ms: 5_000,
        ..entitled
    };
    assert_eq!(fleet.renew(&renewed, 2_000).await.unwrap(), vec![renewed]);
}

/// A release (the holder ended its last batch) is stored and read back as one; the holder's
/// next renewal clears it.
pub async fn a_release_is_kept_until_the_next_renewal(fleet: &dyn FleetStore) {
    let working = lease("r", 1_000, 4_000);
    fleet.renew(&working, 1_000).await.unwrap();
    let released = Lease {
        expires_ms: 1_500,
        released: true,
        ..working.clone()
    };
    let other = lease("o", 1_200, 4_200);
    fleet.renew(&released, 1_200).await.unwrap();
    assert_eq!(
        sorted(fleet.renew(&other, 1_200).await.unwrap()),
        vec![other.clone(), released.clone()]
    );
    let again = Lease {
        expires_ms: 4_400,
        released: false,
        ..released
    };
    assert_eq!(
        sorted(fleet.renew(&again, 1_400).await.unwrap()),
        vec![other, again]
    );
}

/// A lease is live while its expiry is after now: a lapsed one is left out of the answer, and
/// pruned (a later renewal that looks from an earlier time does not see it again).
pub async fn lapsed_leases_are_left_out_and_pruned(fleet: &dyn FleetStore) {
    let a = lease("a", 0, 1_000);
    let b = lease("b", 500, 3_000);
    fleet.renew(&a, 0).await.unwrap();
    fleet.renew(&b, 500).await.unwrap();
    let renewed = lease("b", 500, 4_000);
    assert_eq!(
        fleet.renew(&renewed, 1_000).await.unwrap(),
        vec![renewed.clone()],
        "a lapsed at 1 s, exactly"
    );
    let late = lease("c", 900, 3_900);
    assert_eq!(
        sorted(fleet.renew(&late, 900).await.unwrap()),
        vec![renewed, late],
        "a was pruned"
    );
}
