//! What the consumer fleet shares: host states ([`crate::hosts`]) and the instance leases that
//! split the rate budgets among the instances actually working.
//!
//! # Leases
//! Each working instance renews a lease every [`LEASE_RENEW`]; a lease lapses [`LEASE_TTL`]
//! after its last renewal. An instance's share of a budget is `budget / n`, where `n` counts
//! itself and every other live lease that is *entitled*: a lease becomes entitled
//! [`JOIN_DELAY`] after it joined, which is longer than any other instance takes to see it.
//! A joining instance waits out that delay before its first call (unless it found nobody
//! else), so the others have lowered their shares before it starts: the fleet never sends
//! above the budget while it grows, and uses the whole budget when only a few instances work.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::BackendError;
use crate::hosts::{HostEvent, HostPolicy, HostState};

/// How often a working instance renews its lease (and reads everyone else's).
pub const LEASE_RENEW: Duration = Duration::from_secs(1);
/// A lease lapses this long after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// A lease counts towards the split this long after it joined: more than [`LEASE_RENEW`] plus a
/// store round trip, so every other instance has seen it by then.
pub const JOIN_DELAY: Duration = Duration::from_millis(2500);

/// One instance's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The instance (random per process).
    pub instance: String,
    /// When it joined, ms since the epoch.
    pub since_ms: i64,
    /// When it lapses unless renewed, ms since the epoch.
    pub expires_ms: i64,
}

impl Lease {
    /// Whether the lease counts towards the split at `now_ms`.
    pub fn entitled(&self, now_ms: i64) -> bool {
        self.expires_ms > now_ms && self.since_ms + ms(JOIN_DELAY) <= now_ms
    }
}

/// The number of instances a budget is split by, as seen by `me` at `now_ms`: itself plus the
/// other entitled leases.
pub fn share_count(me: &str, leases: &[Lease], now_ms: i64) -> u32 {
    let others = leases.iter().filter(|l| l.instance != me && l.entitled(now_ms)).count();
    u32::try_from(others + 1).unwrap_or(u32::MAX)
}

/// `d` in ms.
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Where the fleet's shared state lives: a DynamoDB table, or the embedded state file.
#[async_trait]
pub trait FleetStore: Send + Sync {
    /// The stored states of `hosts` (hosts never written are left out: their state is the
    /// default).
    async fn host_states(&self, hosts: &[String]) -> Result<Vec<(String, HostState)>, BackendError>;

    /// Applies `event` to `host`'s state atomically ([`HostState::apply`] on the current
    /// state). Returns the state after it and whether the event changed it (for
    /// [`HostEvent::ProbeClaimed`]: whether the claim won).
    async fn apply(&self, host: &str, event: &HostEvent, now_ms: i64, policy: &HostPolicy) -> Result<(HostState, bool), BackendError>;

    /// Renews `lease` (inserting it if new, pruning lapsed ones) and returns every live lease,
    /// this one included.
    async fn renew(&self, lease: &Lease, now_ms: i64) -> Result<Vec<Lease>, BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joining_leases_count_only_after_the_join_delay() {
        let lease = |instance: &str, since_ms, expires_ms| Lease { instance: instance.into(), since_ms, expires_ms };
        let leases = [lease("a", 0, 10_000), lease("b", 5_000, 10_000), lease("c", 0, 4_000)];
        assert_eq!(share_count("a", &leases, 5_000), 1, "b just joined, c lapsed");
        assert_eq!(share_count("a", &leases, 5_000 + ms(JOIN_DELAY)), 2);
        assert_eq!(share_count("b", &leases, 5_001), 2, "b counts itself and a");
        assert_eq!(share_count("a", &leases, 3_000), 2, "c is live until 4 s");
    }
}
