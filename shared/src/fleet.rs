//! What the consumer fleet shares: host states ([`HostState`]) and the instance leases that
//! split the rate budgets among the instances actually working.
//!
//! # Leases
//! Each working instance renews a lease every [`LEASE_RENEW`] (reading everyone else's in the
//! same call); a lease lapses [`LEASE_TTL`] after its last renewal. An instance's share of a
//! budget is `budget / n`, where `n` counts itself and every other lease that was live when it
//! last read them: a lease that lapses later is counted until the next read shows it gone,
//! since its holder may have renewed it meanwhile.
//! A joining instance that finds others at work waits until each of them has renewed once
//! more (their next renewal is due by [`Lease::next_renewal_ms`], plus `JOIN_SLACK`): by then
//! they all have read its lease, so the fleet never sends above the budget while it grows
//! (and it starts only once a read shows each of them renewed since, [`seen_by_all`]). It
//! writes that time into its lease ([`Lease::entitled_ms`]), and the others count it from then
//! on, not from when they read it: until the joiner may call, they keep its share busy. (Its
//! first write, before it knows the time, says "count me now": an instance that reads that one
//! lowers its share at once, which is safe.) An instance that finds nobody starts at once, and
//! renews again within [`FIRST_RENEW`]: instances that start together at a tick see each other
//! within a fraction of a second, not a whole renewal period.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::BackendError;
use crate::hosts::{HostEvent, HostPolicy, HostState};

/// The longest gap between two renewals of a working instance's lease (it renews at about half
/// this, and reads everyone else's in the same call).
pub const LEASE_RENEW: Duration = Duration::from_secs(1);
/// A lease lapses this long after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How long an instance that finished a batch stays counted: a new batch within it keeps the
/// lease; after it, the others take its share.
pub const RELEASE_GRACE: Duration = Duration::from_millis(300);

/// The longest gap between an instance's first renewal (when it joins) and its second.
pub const FIRST_RENEW: Duration = Duration::from_millis(200);

/// Margin over the others' renewals for a store round trip and clock skew, before a joining
/// instance may start.
pub(crate) const JOIN_SLACK: Duration = Duration::from_millis(200);

/// How much earlier than a joiner's [`Lease::entitled_ms`] the others count it: the clocks of
/// two instances may disagree by this much.
pub const CLOCK_SKEW: Duration = Duration::from_millis(50);

/// One instance's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The instance (random per process).
    pub instance: String,
    /// When it joined, ms since the epoch.
    pub since_ms: i64,
    /// When it lapses unless renewed, ms since the epoch.
    pub expires_ms: i64,
    /// From when the others count it, ms since the epoch (less [`CLOCK_SKEW`]): when its
    /// holder may start calling. Its join time until the holder knows better.
    pub entitled_ms: i64,
    /// Its holder ended its last batch and shortened the lease to [`RELEASE_GRACE`]: it calls
    /// again only after a renewal, which reads every lease, so a joiner need not wait for it
    /// ([`seen_by_all`]).
    pub released: bool,
}

impl Lease {
    /// Whether the lease is live at `now_ms`.
    pub fn live(&self, now_ms: i64) -> bool {
        self.expires_ms > now_ms
    }

    /// Whether the others count it at `now_ms`: its holder may be calling.
    pub fn counted(&self, now_ms: i64) -> bool {
        self.entitled_ms - ms(CLOCK_SKEW) <= now_ms
    }

    /// The lease as the stores keep it: `since:expires:entitled`, and `:released` when it is.
    pub fn to_value(&self) -> String {
        let released = if self.released { ":released" } else { "" };
        format!(
            "{}:{}:{}{released}",
            self.since_ms, self.expires_ms, self.entitled_ms
        )
    }

    /// A stored lease of `instance` ([`Lease::to_value`]); one written before leases carried
    /// their entitlement (`since:expires`) is counted from its join, as it was then.
    pub fn from_value(instance: &str, value: &str) -> Option<Lease> {
        let (value, released) = match value.strip_suffix(":released") {
            Some(rest) => (rest, true),
            None => (value, false),
        };
        let mut parts = value.split(':').map(str::parse::<i64>);
        let since_ms = parts.next()?.ok()?;
        let expires_ms = parts.next()?.ok()?;
        let entitled_ms = match parts.next() {
            Some(entitled) => entitled.ok()?,
            None => since_ms,
        };
        parts.next().is_none().then(|| Lease {
            instance: instance.to_owned(),
            since_ms,
            expires_ms,
            entitled_ms,
            released,
        })
    }

    /// When the lease was last renewed.
    pub(crate) fn renewed_ms(&self) -> i64 {
        self.expires_ms - ms(LEASE_TTL)
    }

    /// Whether its holder has renewed only once, when it joined.
    pub fn just_joined(&self) -> bool {
        self.since_ms == self.renewed_ms()
    }

    /// The latest its working holder renews it again: [`FIRST_RENEW`] after joining, then
    /// [`LEASE_RENEW`] after each renewal.
    pub fn next_renewal_ms(&self) -> i64 {
        self.renewed_ms()
            + ms(if self.just_joined() {
                FIRST_RENEW
            } else {
                LEASE_RENEW
            })
    }
}

/// The number of instances a budget is split by, as seen by `me` at `now_ms` from `leases` read
/// at `read_ms`: itself plus the others live when read and counted by now.
pub fn share_count(me: &str, leases: &[Lease], read_ms: i64, now_ms: i64) -> u32 {
    let others = leases
        .iter()
        .filter(|l| l.instance != me && l.live(read_ms) && l.counted(now_ms))
        .count();
    u32::try_from(others + 1).unwrap_or(u32::MAX)
}

/// When `me`, joining at `now_ms`, may start: at once if no other lease is live, otherwise once
/// every live one has renewed again and so counts `me`.
pub fn entitled_at(me: &str, leases: &[Lease], now_ms: i64) -> i64 {
    leases
        .iter()
        .filter(|l| l.instance != me && l.live(now_ms))
        .map(|l| l.next_renewal_ms() + ms(JOIN_SLACK))
        .max()
        .map_or(now_ms, |at| at.max(now_ms))
}

/// Whether every other lease live when `leases` were read (at `read_ms`) has been renewed since
/// `seen_from_ms`, when this instance's joining write was in the store: each renewal reads
/// every lease, so each of them has seen it and splits the budgets with it. [`entitled_at`]
/// expects that by then from the promised renewal periods; a joiner starts only once it is so
/// (a renewal slowed by a loaded store came later than promised, and the fleet's peak went
/// above its budget while the late instance still called at its old share). A late one that
/// stopped working instead lapses, and leaves the set; a released one is not waited for at all
/// (its holder renews, and so reads, before it calls again: waiting for it to lapse made a
/// sparse fleet, whose instances end batches often, 1.4 × slower).
pub fn seen_by_all(me: &str, leases: &[Lease], read_ms: i64, seen_from_ms: i64) -> bool {
    leases
        .iter()
        .filter(|l| l.instance != me && l.live(read_ms) && !l.released)
        .all(|l| l.renewed_ms() >= seen_from_ms + ms(CLOCK_SKEW))
}

/// `d` in ms.
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What [`FleetStore::read_host_states`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostStates {
    /// The stored states that read (hosts never written are left out: their state is the
    /// default).
    pub states: Vec<(String, HostState)>,
    /// Hosts whose stored state does not parse (hand-edited, or written by an incompatible
    /// version). Callers read them as the default, not paused and circuit closed, so calls go
    /// on; they are listed so the consumer can count them (`HostStateUnreadable`): an
    /// operator's pause that silently stopped holding must show on a dashboard, not only in
    /// the backend's warn log.
    pub unreadable: Vec<String>,
}

/// Where the fleet's shared state lives: a DynamoDB table, or the embedded state file.
#[async_trait]
pub trait FleetStore: Send + Sync {
    /// The stored states of `hosts`, and which of them do not parse (each also logged at warn,
    /// naming the host).
    async fn read_host_states(&self, hosts: &[String]) -> Result<HostStates, BackendError>;

    /// The stored states of `hosts` that read (hosts never written, and hosts whose state does
    /// not parse, are left out: their state is the default). For callers that need no count
    /// of unreadable states.
    async fn host_states(
        &self,
        hosts: &[String],
    ) -> Result<Vec<(String, HostState)>, BackendError> {
        Ok(self.read_host_states(hosts).await?.states)
    }

    /// Applies `event` to `host`'s state atomically ([`HostState::apply`] on the current
    /// state). Returns the state after it and whether the event changed it (for
    /// [`HostEvent::ProbeClaimed`]: whether the claim won).
    async fn apply(
        &self,
        host: &str,
        event: &HostEvent,
        now_ms: i64,
        policy: &HostPolicy,
    ) -> Result<(HostState, bool), BackendError>;

    /// Renews `lease` (inserting it if new, pruning lapsed ones) and returns every live lease,
    /// this one included.
    async fn renew(&self, lease: &Lease, now_ms: i64) -> Result<Vec<Lease>, BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joiner_is_seen_by_all_once_every_live_lease_renewed_after_its_join() {
        let renewed_at = |instance: &str, renewed_ms: i64| Lease {
            instance: instance.into(),
            since_ms: 0,
            expires_ms: renewed_ms + ms(LEASE_TTL),
            entitled_ms: 0,
            released: false,
        };
        let skew = ms(CLOCK_SKEW);
        let me = renewed_at("z", 1_000);
        let late = renewed_at("a", 900);
        let on_time = renewed_at("b", 1_000 + skew);
        assert!(
            seen_by_all("z", std::slice::from_ref(&me), 1_000, 1_000),
            "alone"
        );
        assert!(seen_by_all(
            "z",
            &[me.clone(), on_time.clone()],
            1_100,
            1_000
        ));
        assert!(
            !seen_by_all("z", &[me.clone(), on_time, late.clone()], 1_100, 1_000),
            "a has not renewed since z joined"
        );
        assert!(
            !seen_by_all(
                "z",
                &[me.clone(), renewed_at("a", 1_000 + skew - 1)],
                1_100,
                1_000
            ),
            "within the clock skew of the join"
        );
        let lapsed_by_then = late.expires_ms;
        assert!(
            seen_by_all("z", &[me.clone(), late.clone()], lapsed_by_then, 1_000),
            "a lapsed lease is not waited for"
        );
        let released = Lease {
            expires_ms: 1_200,
            released: true,
            ..late
        };
        assert!(
            seen_by_all("z", &[me, released], 1_100, 1_000),
            "nor a released one: its holder reads the fleet before it calls again"
        );
    }

    #[test]
    fn a_joiner_counts_at_once_and_starts_when_everyone_has_seen_it() {
        let lease = |instance: &str, expires_ms| Lease {
            instance: instance.into(),
            since_ms: 0,
            expires_ms,
            entitled_ms: 0,
            released: false,
        };
        let ttl = ms(LEASE_TTL);
        let leases = [
            lease("a", 1_000 + ttl),
            lease("b", 1_500 + ttl),
            lease("c", 1_800),
        ];
        assert_eq!(
            share_count("a", &leases, 2_000, 2_000),
            2,
            "a and b; c lapsed"
        );
        assert_eq!(share_count("z", &leases, 2_000, 2_000), 3);
        assert_eq!(
            share_count("a", &leases, 1_700, 2_000),
            3,
            "c was live when read: counted until a read shows it gone"
        );
        // b renewed last at 1.5 s: z may start after b's next renewal.
        assert_eq!(
            entitled_at("z", &leases, 2_000),
            1_500 + ms(LEASE_RENEW) + ms(JOIN_SLACK)
        );
        assert_eq!(entitled_at("z", &[], 2_000), 2_000, "alone: at once");
        // An instance that joined at 1.9 s renews again within FIRST_RENEW: z waits only for that.
        let fresh = Lease {
            instance: "f".into(),
            since_ms: 1_900,
            expires_ms: 1_900 + ttl,
            entitled_ms: 1_900,
            released: false,
        };
        assert!(fresh.just_joined() && !leases[0].just_joined());
        assert_eq!(
            entitled_at("z", &[fresh], 2_000),
            1_900 + ms(FIRST_RENEW) + ms(JOIN_SLACK)
        );
    }

    #[test]
    fn a_joiner_is_counted_from_its_entitlement_less_the_clock_skew() {
        let joiner = Lease {
            instance: "j".into(),
            since_ms: 2_000,
            expires_ms: 2_000 + ms(LEASE_TTL),
            entitled_ms: 2_600,
            released: false,
        };
        let leases = [joiner.clone()];
        let skew = ms(CLOCK_SKEW);
        assert_eq!(
            share_count("a", &leases, 2_100, 2_100),
            1,
            "not calling yet"
        );
        assert_eq!(share_count("a", &leases, 2_100, 2_600 - skew - 1), 1);
        assert_eq!(share_count("a", &leases, 2_100, 2_600 - skew), 2);
        // Stored and read back; a lease written before entitlements is counted from its join.
        assert_eq!(
            Lease::from_value("j", &joiner.to_value()),
            Some(joiner.clone())
        );
        let released = Lease {
            released: true,
            ..joiner
        };
        assert_eq!(released.to_value(), "2000:5000:2600:released");
        assert_eq!(Lease::from_value("j", &released.to_value()), Some(released));
        let old = Lease::from_value("o", "1000:4000").unwrap();
        assert_eq!(
            (old.since_ms, old.expires_ms, old.entitled_ms),
            (1_000, 4_000, 1_000)
        );
        assert_eq!(Lease::from_value("o", "1000:x"), None);
        assert_eq!(Lease::from_value("o", "1:2:3:4"), None);
    }
}
