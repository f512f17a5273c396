//! The outbound rate budget, split evenly across consumer instances.
//!
//! The config's budgets are global: all instances together may send `R` requests per second.
//! Lambda runs at most `MaximumConcurrency` instances of the consumer (the event source
//! mapping's cap), and each instance serves one invocation at a time, so each instance gets
//! `R / MaximumConcurrency` with a burst of `max(1, burst / MaximumConcurrency)`. The limiters
//! live as long as the instance, across invocations. The same split applies per host.
//!
//! Waiting is deadline-aware: a record whose permit would arrive after the invocation's
//! deadline (minus a safety margin) is not waited for; it goes back to the queue instead of
//! timing out the whole batch.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use fanout_shared::config::{PipelineConfig, RateLimit};

/// Global and per-host limiters of one consumer instance.
pub struct RateBudget {
    global: Option<DefaultDirectRateLimiter>,
    hosts: HashMap<String, DefaultDirectRateLimiter>,
    clock: DefaultClock,
}

/// A permit could not be had before the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deferred {
    /// How long the permit was still away.
    pub wait: Duration,
}

impl RateBudget {
    /// This instance's share of the config's budgets. `global_override` replaces the config's
    /// global rate (the deployed stack sets it from one parameter); `max_concurrency` is the event
    /// source mapping's `MaximumConcurrency`.
    pub fn new(config: &PipelineConfig, global_override: Option<f64>, max_concurrency: u32) -> Self {
        let instances = f64::from(max_concurrency.max(1));
        let global = match (global_override, config.rate_limit) {
            (Some(per_second), limit) => Some(RateLimit { per_second, burst: limit.map_or(1, |l| l.burst) }),
            (None, limit) => limit,
        };
        let share = |per_second: f64, burst: u32| {
            // Period between permits for this instance; a zero or absurd rate was refused by
            // validation, and the floor keeps governor's quota non-zero in any case.
            let period = Duration::from_secs_f64((instances / per_second).clamp(1e-9, 86_400.0));
            let burst = NonZeroU32::new((burst / max_concurrency.max(1)).max(1)).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
            RateLimiter::direct(quota.allow_burst(burst))
        };
        Self {
            global: global.map(|l| share(l.per_second, l.burst)),
            hosts: config.hosts.iter().map(|(h, l)| (h.to_ascii_lowercase(), share(l.per_second, 1))).collect(),
            clock: DefaultClock::default(),
        }
    }

    /// Waits for a permit for `host` (its own budget, then the global one), unless it would
    /// arrive after `deadline`. Returns how long it waited.
    pub async fn acquire(&self, host: &str, deadline: Instant) -> Result<Duration, Deferred> {
        let started = Instant::now();
        if let Some(limiter) = self.hosts.get(host) {
            self.wait_for(limiter, deadline).await?;
        }
        if let Some(limiter) = &self.global {
            self.wait_for(limiter, deadline).await?;
        }
        Ok(started.elapsed())
    }

    async fn wait_for(&self, limiter: &DefaultDirectRateLimiter, deadline: Instant) -> Result<(), Deferred> {
        loop {
            match limiter.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    if Instant::now() + wait > deadline {
                        return Err(Deferred { wait });
                    }
                    // Another task may take the permit first; then we go round again.
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> PipelineConfig {
        serde_json::from_str(json).unwrap()
    }

    #[tokio::test]
    async fn instance_share_paces_requests() {
        // 40/s over 4 instances = 10/s here: 6 permits take about 0.5 s (the first is free).
        let budget = RateBudget::new(&config(r#"{"rate_limit":{"per_second":40},"targets":[]}"#), None, 4);
        let deadline = Instant::now() + Duration::from_secs(10);
        let started = Instant::now();
        for _ in 0..6 {
            budget.acquire("a.example.com", deadline).await.unwrap();
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    }

    #[tokio::test]
    async fn permit_past_deadline_is_deferred_without_waiting() {
        let budget = RateBudget::new(&config(r#"{"rate_limit":{"per_second":1},"targets":[]}"#), None, 1);
        let deadline = Instant::now() + Duration::from_millis(200);
        budget.acquire("a", deadline).await.unwrap();
        let started = Instant::now();
        let deferred = budget.acquire("a", deadline).await.unwrap_err();
        assert!(deferred.wait > Duration::from_millis(500));
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn host_budget_applies_only_to_its_host() {
        let budget = RateBudget::new(&config(r#"{"hosts":{"slow.example.com":{"per_second":1}},"targets":[]}"#), None, 1);
        let deadline = Instant::now() + Duration::from_millis(200);
        budget.acquire("slow.example.com", deadline).await.unwrap();
        assert!(budget.acquire("slow.example.com", deadline).await.is_err());
        for _ in 0..100 {
            budget.acquire("fast.example.com", deadline).await.unwrap();
        }
    }

    #[tokio::test]
    async fn override_replaces_config_rate() {
        let budget = RateBudget::new(&config(r#"{"rate_limit":{"per_second":1000},"targets":[]}"#), Some(1.0), 1);
        let deadline = Instant::now() + Duration::from_millis(200);
        budget.acquire("a", deadline).await.unwrap();
        assert!(budget.acquire("a", deadline).await.is_err());
    }
}
