//! Flow control of one consumer instance: its lease in the fleet, its cached view of the hosts'
//! shared state, and the pacing that follows both.
//!
//! Per job, before any idempotency write: [`Flow::admit`] (is the host paused, is its circuit
//! open?), then [`Flow::permit`] (this instance's share of the host's and the global budget).
//! A job that may not be called now is rescheduled by the caller, never failed. After the call,
//! [`Flow::report`] tells the fleet what the host said; the store's answer updates this
//! instance's view at once, so the instance that saw a 429 or an outage reacts on its next
//! call, and every other instance within a cache period.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use fanout_shared::fleet::{
    self, entitled_at, seen_by_all, share_count, FleetStore, Lease, FIRST_RENEW, LEASE_RENEW,
    LEASE_TTL, RELEASE_GRACE,
};
use fanout_shared::{
    now_ms, Circuit, Gate, HoldReason, HostEvent, HostPolicy, HostState, PipelineConfig, ALL_HOSTS,
};

use crate::limiter::{Deferred, Key, Limiters, Share, HOLD_IN_PLACE};

/// The spread of joiners' start times. Joiners that read the same fleet get the same
/// entitlement; starting in the same millisecond, their limiters would tick in step, and a
/// host would get the fleet's calls in bunches of one per instance (5 within a millisecond
/// every 50 ms at 20/s each, measured), so a 1 s window that takes in one bunch more holds a
/// whole bunch over its budget. A random delay within one period of a 20/s share spreads
/// them; slower shares' bunches are within their bursts.
const PHASE_SPREAD: Duration = Duration::from_millis(50);

/// How often a working instance looks whether its lease is due for renewal (a clock read, no
/// store call unless it is).
pub(crate) const RENEW_CHECK: Duration = Duration::from_millis(100);

/// Whether a job may be called now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Admission {
    /// Call it.
    Go,
    /// Call it: it is the probe of the host's half-open circuit (no other job is let through
    /// until its answer, so it must not be held again).
    Probe,
    /// Hold it until `until_ms` (ms since the epoch).
    Hold {
        /// When to look again.
        until_ms: i64,
        /// Why.
        reason: HoldReason,
    },
}

/// What a report changed about a host, for logs and per-host metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostChange {
    /// The host's rate was lowered.
    pub slowed: bool,
    /// Its circuit opened.
    pub opened: bool,
    /// Its circuit closed again.
    pub closed: bool,
}

struct LeaseView {
    lease: Lease,
    /// This instance may call from then on (ms since the epoch), once every instance it read
    /// has seen it ([`fleet::seen_by_all`]).
    entitled_ms: i64,
    /// While it waits to be seen by all: when its joining write was in the store (ms since
    /// the epoch), so that a lease renewed since has read it. Once seen, `None` until it joins
    /// again (a lease renewed later has seen it too), so the split asks nothing more.
    seen_from_ms: Option<i64>,
    leases: Vec<Lease>,
    /// When [`Self::leases`] were read (ms since the epoch): a lease live then is counted until
    /// the next read says otherwise ([`Flow::split`] says why).
    read_ms: i64,
    renewed: Option<Instant>,
    /// The expiry of this instance's lease as last written to the store: the others count it
    /// until then.
    stored_expires_ms: i64,
    /// The last renewal failed: [`Self::leases`] may miss instances that joined since.
    stale: bool,
}

/// How this instance splits the budgets now: by how many, and from when it may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Split {
    count: u32,
    entitled_ms: i64,
    /// Its lease lapsed in the store while it could not renew it: the others no longer count
    /// it, so any call would be on top of their shares. It waits (its jobs are rescheduled)
    /// until a renewal goes through.
    lapsed: bool,
}

/// One instance's flow control.
pub(crate) struct Flow {
    store: Arc<dyn FleetStore>,
    policy: HostPolicy,
    config: PipelineConfig,
    global_override: Option<f64>,
    cache_ttl: Duration,
    cache: Mutex<HashMap<String, (HostState, Instant)>>,
    lease: Mutex<LeaseView>,
    /// Batches of this instance in flight: on Lambda at most one, in `fanout run` one per
    /// invocation slot (the process is one instance whose slots share its limiters).
    batches: AtomicUsize,
    limiters: Limiters,
    /// See [`crate::Settings::max_instances`].
    max_instances: Option<u32>,
    /// Jobs this instance holds now, by host ([`Flow::holding`]): a job of a slow host
    /// leaves at once only when jobs of other hosts are there to use its slot.
    held: Mutex<HashMap<String, usize>>,
    /// This instance's transient failures in a row, by host ([`Flow::failed`]).
    streaks: Mutex<HashMap<String, u32>>,
}

/// A job held by its instance ([`Flow::holding`]) until dropped.
pub(crate) struct Holding<'a> {
    held: &'a Mutex<HashMap<String, usize>>,
    host: String,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.host) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.host);
            }
        }
    }
}

/// A batch in flight ([`Flow::start_batch`]); dropping it without [`Flow::end_batch`] (a
/// crashed invocation) still stops counting it, and leaves the lease to lapse on its own.
pub(crate) struct BatchGuard<'a> {
    batches: &'a AtomicUsize,
}

impl Drop for BatchGuard<'_> {
    fn drop(&mut self) {
        self.batches.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Flow {
    /// The flow control of a new instance for `config`'s budgets; `global_override` replaces the
    /// global rate, `cache_ttl` is how long a host's state is trusted without a read.
    pub(crate) fn new(
        config: &PipelineConfig,
        store: Arc<dyn FleetStore>,
        (global_override, max_instances): (Option<f64>, Option<u32>),
        cache_ttl: Duration,
    ) -> Self {
        let instance = format!("{:016x}", fastrand::u64(..));
        let lease = Lease {
            instance,
            since_ms: 0,
            expires_ms: 0,
            entitled_ms: 0,
            released: false,
        };
        Self {
            store,
            policy: config.host_protection,
            config: config.clone(),
            global_override,
            cache_ttl,
            cache: Mutex::new(HashMap::new()),
            lease: Mutex::new(LeaseView {
                lease,
                entitled_ms: 0,
                seen_from_ms: None,
                leases: Vec::new(),
                read_ms: 0,
                renewed: None,
                stored_expires_ms: 0,
                stale: false,
            }),
            batches: AtomicUsize::new(0),
            limiters: Limiters::new(),
            max_instances,
            held: Mutex::new(HashMap::new()),
            streaks: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a job of `host` as held by this instance until the guard drops.
    pub(crate) fn holding(&self, host: &str) -> Holding<'_> {
        *self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(host.to_owned())
            .or_default() += 1;
        Holding {
            held: &self.held,
            host: host.to_owned(),
        }
    }

    /// How long a job of `host` may wait in place for the host's permit: up to the deadline
    /// when the instance holds only that host's jobs (leaving would free a slot nobody needs,
    /// and a copy comes back in whole seconds), else [`HOLD_IN_PLACE`].
    fn hold_for(&self, host: &str) -> Duration {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.keys().any(|h| h != host) {
            HOLD_IN_PLACE
        } else {
            Duration::MAX
        }
    }

    /// Renews this instance's lease when due (a working instance renews at least every
    /// [`LEASE_RENEW`], and within [`FIRST_RENEW`] of joining); the batch plumbing calls it at
    /// the start and on a ticker of [`RENEW_CHECK`].
    pub(crate) async fn renew_lease(&self) {
        if !self.paced() {
            // Nothing to split: no lease, no store traffic.
            return;
        }
        let now = now_ms();
        let lease = {
            let mut view = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
            // Renewing at half the period keeps every gap below the promised one
            // (`Lease::next_renewal_ms`), which joiners count on (`fleet::entitled_at`). A
            // joiner not yet seen by all reads as often as when it joined: its start waits
            // for the read that shows the last of them renewed.
            let period = if view.lease.just_joined() || view.seen_from_ms.is_some() {
                FIRST_RENEW
            } else {
                LEASE_RENEW
            };
            if view.renewed.is_some_and(|at| at.elapsed() < period / 2) {
                return;
            }
            if view.lease.expires_ms <= now {
                // New, or lapsed while idle: join again, counted at once until it knows better.
                view.lease.since_ms = now;
                view.lease.entitled_ms = now;
            }
            view.lease.expires_ms = now + fleet::ms(LEASE_TTL);
            view.lease.released = false;
            view.renewed = Some(Instant::now());
            view.lease.clone()
        };
        match self.store.renew(&lease, now).await {
            Ok(leases) => {
                let entitled = {
                    let mut view = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
                    let mut entitled = None;
                    if lease.since_ms == now {
                        // Alone, it may start at once; otherwise it waits until every other
                        // instance has renewed and seen it.
                        view.entitled_ms = entitled_at(&lease.instance, &leases, now);
                        if view.entitled_ms > now {
                            view.entitled_ms += fastrand::i64(0..fleet::ms(PHASE_SPREAD));
                        }
                        view.seen_from_ms = Some(now_ms());
                        info!(instance = %lease.instance, wait_ms = view.entitled_ms - now, "joined the fleet");
                        if view.entitled_ms > now {
                            view.lease.entitled_ms = view.entitled_ms;
                            entitled = Some(view.lease.clone());
                        }
                    }
                    view.leases = leases;
                    view.read_ms = now;
                    view.stored_expires_ms = lease.expires_ms;
                    view.stale = false;
                    if view
                        .seen_from_ms
                        .is_some_and(|from| seen_by_all(&lease.instance, &view.leases, now, from))
                    {
                        view.seen_from_ms = None;
                    }
                    entitled
                };
                if let Some(entitled) = entitled {
                    self.announce_entitlement(&entitled).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "could not renew the instance lease; keeping the last view with a conservative share");
                self.lease
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .stale = true;
            }
        }
    }

    /// A joiner's second write: from when it may call, so that the others, reading it before
    /// then, keep its share busy until then instead of lowering theirs at once. If it fails, the
    /// first write stands ("count me now"), which only costs that share for the wait.
    async fn announce_entitlement(&self, lease: &Lease) {
        let now = now_ms();
        match self.store.renew(lease, now).await {
            Ok(leases) => {
                let mut view = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
                view.leases = leases;
                view.read_ms = now;
            }
            Err(e) => {
                warn!(error = %e, "could not write when this instance may call; the others count it at once")
            }
        }
    }

    /// A batch starts: counts it and renews the lease if due.
    pub(crate) async fn start_batch(&self) -> BatchGuard<'_> {
        self.batches.fetch_add(1, Ordering::AcqRel);
        let guard = BatchGuard {
            batches: &self.batches,
        };
        self.renew_lease().await;
        guard
    }

    /// A batch ended: when it was the instance's last in flight, shortens the lease to
    /// [`RELEASE_GRACE`]: an instance between batches is not working, so the others may use its
    /// share; one that gets a new batch at once keeps its lease.
    pub(crate) async fn end_batch(&self, guard: BatchGuard<'_>) {
        drop(guard);
        if self.batches.load(Ordering::Acquire) == 0 {
            self.release_lease().await;
        }
    }

    async fn release_lease(&self) {
        let now = now_ms();
        let lease = {
            let mut view = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
            if view.renewed.is_none() || view.lease.expires_ms <= now {
                return;
            }
            view.lease.expires_ms = now + fleet::ms(RELEASE_GRACE);
            view.lease.released = true;
            // The next batch renews at once.
            view.renewed = None;
            view.lease.clone()
        };
        match self.store.renew(&lease, now).await {
            Ok(_) => {
                let mut view = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
                view.stored_expires_ms = view.stored_expires_ms.min(lease.expires_ms);
            }
            Err(e) => {
                warn!(error = %e, "could not release the instance lease; it lapses on its own")
            }
        }
    }

    /// Reads the states of `hosts` (and of every host, [`ALL_HOSTS`]) not read within the cache
    /// period, in one store call. Returns how many stored states did not parse: they are cached
    /// as the default (not paused, circuit closed) so their hosts' jobs go on, and the batch
    /// counts them ([`Metric::HostStateUnreadable`](fanout_shared::metrics::Metric)).
    pub(crate) async fn refresh(&self, hosts: &BTreeSet<String>) -> u64 {
        let stale: Vec<String> = {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            std::iter::once(ALL_HOSTS)
                .chain(hosts.iter().map(String::as_str))
                .filter(|h| {
                    cache
                        .get(*h)
                        .is_none_or(|(_, at)| at.elapsed() >= self.cache_ttl)
                })
                .map(str::to_owned)
                .collect()
        };
        if stale.is_empty() {
            return 0;
        }
        match self.store.read_host_states(&stale).await {
            Ok(read) => {
                let mut found: HashMap<String, HostState> = read.states.into_iter().collect();
                let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                for host in stale {
                    let state = found.remove(&host).unwrap_or_default();
                    cache.insert(host, (state, Instant::now()));
                }
                u64::try_from(read.unreadable.len()).unwrap_or(u64::MAX)
            }
            Err(e) => {
                warn!(error = %e, "could not read host states; using the cached ones");
                0
            }
        }
    }

    /// Whether any budget applies (the config's, the stack's, or one an operator set), so the
    /// instance must count itself in the fleet.
    fn paced(&self) -> bool {
        let configured = self.global_override.is_some()
            || self.config.rate_limit.is_some()
            || !self.config.hosts.is_empty();
        configured
            || self
                .cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .any(|(s, _)| s.operator_rate.is_some())
    }

    fn cached(&self, host: &str) -> HostState {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.get(host).map(|(s, _)| s.clone()).unwrap_or_default()
    }

    fn remember(&self, host: &str, state: HostState) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(host.to_owned(), (state, Instant::now()));
    }

    /// Whether a job for `host` may be called now: the pipeline-wide and the host's pause, and
    /// the host's circuit. A cool-down that is over makes this instance try to claim the one
    /// probe; the loser holds.
    pub(crate) async fn admit(&self, host: &str) -> Admission {
        let now = now_ms();
        let mut admission = Admission::Go;
        for key in [ALL_HOSTS, host] {
            match self.cached(key).gate(now, &self.policy) {
                Gate::Open => {}
                Gate::Hold { until_ms, reason } => return Admission::Hold { until_ms, reason },
                Gate::Probe => match self
                    .store
                    .apply(key, &HostEvent::ProbeClaimed, now, &self.policy)
                    .await
                {
                    Ok((state, true)) => {
                        info!(host = key, "circuit half-open: this instance probes");
                        self.remember(key, state);
                        admission = Admission::Probe;
                    }
                    Ok((state, false)) => {
                        let gate = state.gate(now, &self.policy);
                        self.remember(key, state);
                        if let Gate::Hold { until_ms, reason } = gate {
                            return Admission::Hold { until_ms, reason };
                        }
                        // Another instance probed and closed the circuit meanwhile.
                    }
                    Err(e) => {
                        warn!(error = %e, host = key, "could not claim the probe; holding");
                        return Admission::Hold {
                            until_ms: now + 1000,
                            reason: HoldReason::CircuitOpen,
                        };
                    }
                },
            }
        }
        admission
    }

    /// [`Flow::admit`] again, for a job that waited for its permit: the host may have gone down
    /// (or an operator paused it) meanwhile. A Retry-After pause does not hold a job that already
    /// has its permit: the pause holds the jobs still to come and the slow-down lowers the rate,
    /// while holding every waiting job would bring them all back at once when the pause ends.
    pub(crate) async fn readmit(&self, host: &str) -> Admission {
        match self.admit(host).await {
            Admission::Hold {
                reason: HoldReason::RetryAfter,
                ..
            } => Admission::Go,
            admission => admission,
        }
    }

    /// How the budgets are split now. With a fresh view: by the leases live when last read, even
    /// one whose expiry has passed since: a lease shortened by a release may have been renewed
    /// after this instance read it (its holder got a new batch within [`RELEASE_GRACE`]), and
    /// only the next read can tell. Counting it only until its expiry would put both at a
    /// full share until then, the fleet one share above the budget (the deployed mixed-hosts
    /// tick measured 112 calls in a second at 100/s). A lease that really ended frees its
    /// share at the next renewal, within [`LEASE_RENEW`]. A joiner is counted from its
    /// entitlement on ([`Lease::counted`]): until it may call, its share is still this one's.
    /// While the
    /// lease cannot be renewed (a throttled table), the view is kept but others may have joined
    /// unseen, so the split is conservative: by [`crate::Settings::max_instances`] (the most
    /// that can share it) when known, and never by fewer than the instances last seen live;
    /// once its own lease has lapsed in the store it may not call at all
    /// ([`Split::lapsed`]). So a failing store never puts the fleet above a budget.
    fn split(&self) -> Split {
        let view = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
        let now = now_ms();
        if !view.stale {
            return Split {
                count: share_count(&view.lease.instance, &view.leases, view.read_ms, now),
                // Not seen by all yet: not before the next renewal may show it.
                entitled_ms: match view.seen_from_ms {
                    None => view.entitled_ms,
                    Some(_) => view.entitled_ms.max(now + fleet::ms(RENEW_CHECK)),
                },
                lapsed: false,
            };
        }
        // The others as last read, alive or not since and whether they may call yet or not:
        // none of them is known to have left or to be waiting still.
        let seen = share_count(&view.lease.instance, &view.leases, i64::MIN, i64::MAX);
        Split {
            count: seen.max(self.max_instances.unwrap_or(0)),
            entitled_ms: view.entitled_ms,
            lapsed: view.stored_expires_ms <= now,
        }
    }

    fn global_share(&self) -> Option<Share> {
        self.global_share_among(self.split().count)
    }

    /// The global budget's share of one of `count` instances.
    fn global_share_among(&self, count: u32) -> Option<Share> {
        let limit = self.config.rate_limit;
        let per_second = self.global_override.or(limit.map(|l| l.per_second))?;
        let burst = limit.map_or(1, |l| l.burst);
        Some(Share {
            per_second: per_second / f64::from(count),
            burst: (burst / count).max(1),
        })
    }

    fn host_share(&self, host: &str) -> Option<Share> {
        self.host_share_among(host, self.split().count)
    }

    /// `host`'s budget's share of one of `count` instances.
    fn host_share_among(&self, host: &str, count: u32) -> Option<Share> {
        let state = self.cached(host);
        let budget = self.config.host_budget(host).or(self.global_override);
        let ceiling = budget.or(state.operator_rate)?;
        let operator_max = self
            .config
            .host_operator_max(host)
            .or(self.global_override)
            .unwrap_or(f64::INFINITY);
        let per_second = state.rate(ceiling, operator_max, now_ms(), &self.policy);
        Some(Share {
            per_second: per_second / f64::from(count),
            burst: 1,
        })
    }

    /// The calls a second one batch of this instance may make now: its share of the global
    /// budget, or of the budgets of the hosts it holds jobs for when those allow less, split
    /// among its batches in flight. `None` when no budget paces it (a held host without one,
    /// and no global budget). [`crate::in_flight`] sizes an invocation by it.
    pub(crate) fn call_rate(&self) -> Option<f64> {
        // One split for every share: the batch loop asks after each record.
        let count = self.split().count;
        let hosts: Vec<String> = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        let held = if hosts.is_empty() {
            None
        } else {
            hosts
                .iter()
                .map(|h| self.host_share_among(h, count).map(|s| s.per_second))
                .sum::<Option<f64>>()
        };
        let global = self.global_share_among(count).map(|s| s.per_second);
        let rate = match (global, held) {
            (Some(g), Some(h)) => g.min(h),
            (g, h) => g.or(h)?,
        };
        Some(rate / self.batches.load(Ordering::Acquire).max(1) as f64)
    }

    /// Waits until this instance may call (its entitlement in the fleet), unless that is after
    /// `call_by`. Looked at again after each wait: a joiner's moves on when an instance it read
    /// renews late ([`fleet::seen_by_all`]).
    async fn entitlement(&self, call_by: Instant) -> Result<(), Deferred> {
        loop {
            let split = self.split();
            if split.lapsed {
                // Come back once a renewal may have gone through.
                return Err(Deferred { delay: LEASE_RENEW });
            }
            let until_entitled =
                Duration::from_millis(u64::try_from(split.entitled_ms - now_ms()).unwrap_or(0));
            if until_entitled.is_zero() {
                return Ok(());
            }
            if Instant::now() + until_entitled > call_by {
                return Err(Deferred {
                    delay: until_entitled,
                });
            }
            tokio::time::sleep(until_entitled).await;
        }
    }

    /// Waits for this instance's permits for `host` (its entitlement in the fleet, the host's
    /// share, the global share), unless they are due after `call_by`. Returns the time waited.
    pub(crate) async fn permit(&self, host: &str, call_by: Instant) -> Result<Duration, Deferred> {
        let started = Instant::now();
        let (host_paced, globally_paced) = (
            self.host_share(host).is_some(),
            self.global_share().is_some(),
        );
        // With no budget there is nothing to split, so nothing to wait for.
        if host_paced || globally_paced {
            self.entitlement(call_by).await?;
        }
        if host_paced {
            let key = Key::Host(host.to_owned());
            let share = || {
                self.host_share(host).unwrap_or(Share {
                    per_second: f64::MAX,
                    burst: 1,
                })
            };
            let hold = self.hold_for(host);
            self.limiters.acquire(&key, share, call_by, hold).await?;
        }
        if globally_paced {
            let share = || {
                self.global_share().unwrap_or(Share {
                    per_second: f64::MAX,
                    burst: 1,
                })
            };
            // Every job waits for the global permit: leaving would free a slot for nobody.
            self.limiters
                .acquire(&Key::Global, share, call_by, Duration::MAX)
                .await?;
        }
        Ok(started.elapsed())
    }

    /// Counts a transient failure of a call to `host` in this instance's streak, and returns the
    /// streak for the report ([`HostEvent::Failed`]: the fleet's failures are not added up).
    pub(crate) fn failed(&self, host: &str) -> u32 {
        let mut streaks = self.streaks.lock().unwrap_or_else(PoisonError::into_inner);
        let streak = streaks.entry(host.to_owned()).or_default();
        *streak = streak.saturating_add(1);
        *streak
    }

    fn end_streak(&self, host: &str) {
        self.streaks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(host);
    }

    /// Tells the fleet what a call to `host` taught: the store applies it atomically and this
    /// instance's view takes the answer at once. Returns what changed.
    pub(crate) async fn report(&self, host: &str, event: HostEvent) -> HostChange {
        let now = now_ms();
        let before = self.cached(host);
        if event == HostEvent::Succeeded {
            self.end_streak(host);
        }
        if event == HostEvent::Succeeded && before.apply(&event, now, &self.policy).is_none() {
            // A healthy host: no write per successful call.
            return HostChange::default();
        }
        let after = match self.store.apply(host, &event, now, &self.policy).await {
            Ok((state, _)) => state,
            Err(e) => {
                warn!(error = %e, host, "could not share the host's state; this instance reacts alone");
                before
                    .apply(&event, now, &self.policy)
                    .unwrap_or_else(|| before.clone())
            }
        };
        let change = HostChange {
            slowed: after.factor_at_ms == now && before.factor_at_ms != now,
            opened: matches!(after.circuit, Circuit::Open { .. })
                && !matches!(before.circuit, Circuit::Open { .. }),
            closed: after.circuit == Circuit::Closed && before.circuit != Circuit::Closed,
        };
        if change.slowed {
            let rate = self
                .config
                .host_budget(host)
                .map(|b| b * after.factor_at(now, &self.policy));
            info!(
                host,
                factor = after.factor,
                rate,
                paused_until_ms = after.paused_until_ms,
                "host asked us to slow down"
            );
        }
        if after.circuit != Circuit::Closed {
            // Its streak ended with the opening: calls after the cool-down start a new one.
            self.end_streak(host);
        }
        if change.opened {
            warn!(host, consecutive_failures = after.consecutive_failures, circuit = ?after.circuit, "circuit opened: holding the host's jobs");
        }
        if change.closed {
            info!(host, "circuit closed: the host answers again");
        }
        self.remember(host, after);
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_shared::embedded::EmbeddedBackend;

    fn paced_flow(store: &Arc<dyn FleetStore>) -> Flow {
        let config = PipelineConfig {
            rate_limit: Some(fanout_shared::RateLimit {
                per_second: 100.0,
                burst: 1,
            }),
            ..PipelineConfig::default()
        };
        Flow::new(
            &config,
            Arc::clone(store),
            (None, None),
            Duration::from_secs(1),
        )
    }

    /// `n` instances sharing one embedded fleet store in a fresh directory (removed by the
    /// test).
    fn instances(n: usize) -> (std::path::PathBuf, Vec<Flow>) {
        let dir = std::env::temp_dir().join(format!("fanout-flow-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let backend = EmbeddedBackend::open(&dir.join("state.db")).unwrap();
        let store: Arc<dyn FleetStore> = Arc::new(backend.fleet());
        (dir, (0..n).map(|_| paced_flow(&store)).collect())
    }

    /// Two of [`instances`].
    fn two_instances() -> (std::path::PathBuf, Flow, Flow) {
        let (dir, mut flows) = instances(2);
        let (b, a) = (flows.pop().unwrap(), flows.pop().unwrap());
        (dir, a, b)
    }

    /// Five instances each see one call to a host fail, at once, between successes none of
    /// them writes (each sees the host healthy): the host's count is the longest streak, 1,
    /// and its circuit stays closed. Added up they made five "in a row" and opened it (the
    /// deployed stack did so against a host failing 10% of its calls). One instance's five
    /// failures in a row open it for the whole fleet.
    #[tokio::test]
    async fn failures_of_five_instances_do_not_add_up_to_open_the_circuit() {
        let (dir, fleet) = instances(5);
        for instance in &fleet {
            let streak = instance.failed("h");
            let change = instance.report("h", HostEvent::Failed { streak }).await;
            assert!(!change.opened, "streak {streak}");
        }
        let read = || async {
            let states = fleet[0].store.read_host_states(&["h".to_owned()]).await;
            states.unwrap().states[0].1.clone()
        };
        let state = read().await;
        assert_eq!(
            (state.consecutive_failures, state.circuit),
            (1, Circuit::Closed)
        );

        let mut opened = false;
        for _ in 1..5 {
            let streak = fleet[0].failed("h");
            opened |= fleet[0]
                .report("h", HostEvent::Failed { streak })
                .await
                .opened;
        }
        assert!(opened, "the first instance's fifth failure in a row");
        assert!(matches!(read().await.circuit, Circuit::Open { .. }));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Instance `a` releases its lease between two batches and renews it again within
    /// [`RELEASE_GRACE`], after `b` read the shortened lease. Past the shortened expiry `b` still
    /// counts `a` (it may not know of the renewal yet, and `a` is calling at half the budget);
    /// `b` takes the whole budget only after a read shows `a` gone.
    #[tokio::test]
    async fn a_released_lease_renewed_within_its_grace_keeps_its_share_counted() {
        let (dir, a, b) = two_instances();

        let batch_a = a.start_batch().await;
        let batch_b = b.start_batch().await;
        assert_eq!((a.split().count, b.split().count), (1, 2));

        a.end_batch(batch_a).await;
        // b's next renewal reads a's lease as released (lapsing within RELEASE_GRACE).
        tokio::time::sleep(FIRST_RENEW).await;
        b.renew_lease().await;
        // a gets a new batch at once: its lease is renewed, b does not know yet.
        let batch_a = a.start_batch().await;
        tokio::time::sleep(RELEASE_GRACE + Duration::from_millis(100)).await;
        assert_eq!(
            (a.split().count, b.split().count),
            (2, 2),
            "past the released expiry, before b reads again"
        );

        // a really leaves: b's first read after the grace frees its share.
        a.end_batch(batch_a).await;
        tokio::time::sleep(RELEASE_GRACE + Duration::from_millis(100)).await;
        b.renew_lease().await;
        assert_eq!(b.split().count, 1, "a gone at b's next read");
        b.end_batch(batch_b).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A joiner does not wait for a lease released by an instance whose batch ended: that
    /// instance renews, and so reads the joiner, before it calls again. (Waiting for the
    /// release to lapse made figure 7's sparse fleet 1.4 × slower.)
    #[tokio::test]
    async fn a_joiner_does_not_wait_for_a_released_lease() {
        let (dir, a, b) = two_instances();

        let batch_a = a.start_batch().await;
        tokio::time::sleep(FIRST_RENEW).await;
        a.renew_lease().await;
        a.end_batch(batch_a).await;
        let _batch_b = b.start_batch().await;
        assert_eq!(
            b.split().count,
            2,
            "a's released lease is counted until it lapses"
        );
        assert!(
            b.split().entitled_ms <= now_ms(),
            "but b need not wait for a to renew"
        );
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(b.permit("h", soon).await.is_ok(), "b may call at once");

        // a's next batch renews first, and so counts b.
        let _batch_a = a.start_batch().await;
        assert_eq!(a.split().count, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A joiner writes when it may call; the instance already at work keeps the whole budget
    /// until then (less the clock skew) instead of halving it at once and leaving half unused
    /// while the joiner waits. The joiner calls nothing before it.
    #[tokio::test]
    async fn a_joiner_s_share_stays_with_the_others_until_it_may_call() {
        let (dir, a, b) = two_instances();

        let _batch_a = a.start_batch().await;
        // a renews again (its first renewal is due within FIRST_RENEW), as a working instance does.
        tokio::time::sleep(FIRST_RENEW).await;
        a.renew_lease().await;
        let _batch_b = b.start_batch().await;
        let entitled = b.split().entitled_ms;
        assert!(entitled > now_ms(), "b waits for a's next renewal");
        // a reads b's lease (its renewal forced now: b's wait is a's whole renewal period, so a
        // second remains): b is not counted yet.
        a.lease.lock().unwrap().renewed = None;
        a.renew_lease().await;
        assert_eq!(a.split().count, 1, "b may not call yet: a keeps the budget");
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(entitled - now_ms()).unwrap_or(0),
        ))
        .await;
        assert_eq!(
            (a.split().count, b.split().count),
            (2, 2),
            "from b's entitlement on"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Joiners that read the same fleet start within [`PHASE_SPREAD`] of each other, not in
    /// the same millisecond: their limiters do not tick in step (a local 5-instance tick
    /// measured 4 or 5 calls within a millisecond every 50 ms without the spread, 3 at most
    /// with it).
    #[tokio::test]
    async fn joiners_that_read_the_same_fleet_start_at_spread_times() {
        let (dir, fleet) = instances(6);
        let _working = fleet[0].start_batch().await;
        tokio::time::sleep(FIRST_RENEW).await;
        fleet[0].renew_lease().await;
        let mut starts = Vec::new();
        for joiner in &fleet[1..] {
            let _batch = joiner.start_batch().await;
            starts.push(joiner.lease.lock().unwrap().entitled_ms);
        }
        let (first, last) = (starts.iter().min().unwrap(), starts.iter().max().unwrap());
        assert!(
            last > first && last - first < fleet::ms(PHASE_SPREAD),
            "{starts:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A joiner starts only once the instance at work has renewed since it joined, and so
    /// splits the budget with it: a renewal later than its promised period (a loaded store)
    /// leaves the joiner waiting past its entitlement, not the fleet at two full shares.
    #[tokio::test]
    async fn a_joiner_waits_past_its_entitlement_for_a_late_renewal() {
        let (dir, a, b) = two_instances();
        let force_renewal = |flow: &Flow| flow.lease.lock().unwrap().renewed = None;

        let _batch_a = a.start_batch().await;
        tokio::time::sleep(FIRST_RENEW).await;
        a.renew_lease().await;
        let _batch_b = b.start_batch().await;
        let entitled = b.split().entitled_ms;
        // a is late: b's entitlement passes, and b reads the leases again, before a renews.
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(entitled - now_ms() + 100).unwrap_or(0),
        ))
        .await;
        force_renewal(&b);
        b.renew_lease().await;
        assert!(
            b.split().entitled_ms > now_ms(),
            "a has not renewed since b joined"
        );
        assert_eq!(a.split().count, 1, "and calls at the whole budget");
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(
            b.permit("h", soon).await.is_err(),
            "no permit for b meanwhile"
        );

        // a renews (late) and reads b; b's next read shows it.
        force_renewal(&a);
        a.renew_lease().await;
        assert_eq!(a.split().count, 2);
        force_renewal(&b);
        b.renew_lease().await;
        assert!(b.split().entitled_ms <= now_ms());
        let later = Instant::now() + Duration::from_secs(1);
        assert!(b.permit("h", later).await.is_ok(), "b may call now");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
