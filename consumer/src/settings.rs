//! The consumer's settings, read from the Lambda environment.

use std::time::Duration;

use fanout_shared::{check_rate, RetryPolicy};

/// Tunables of one consumer instance. [`Settings::from_env`] documents each variable.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Global outbound budget of the fleet (requests/s), `FANOUT_RATE_PER_SECOND`; replaces
    /// the config file's `rate_limit.per_second` when set. The CDK stack sets it only when the
    /// config has no `rate_limit` (its `ratePerSecond` then supplies the budget) and refuses at
    /// synth a `ratePerSecond` that disagrees with the config, so a deployed consumer runs the
    /// budget its config file says. `fanout run --rate` and hand-set variables still override.
    pub rate_per_second: Option<f64>,
    /// How long idempotency records live (the table's TTL).
    pub record_ttl: Duration,
    /// Work stops this long before the invocation's deadline.
    pub deadline_margin: Duration,
    /// How long a job's IN_PROGRESS lock outlives its invocation (`FANOUT_LOCK_GRACE_SECS`,
    /// 60). A success the store would not take for the rest of the invocation travels with the
    /// job's rescheduled copy; until the lock lapses no other copy (a duplicate delivery) can
    /// take the job over and call it again, so the grace is the backend outage that cannot
    /// cause a second call. A crashed invocation's jobs wait for it too, usually less than
    /// SQS's visibility timeout (at least 6 × the function's timeout) makes them wait anyway.
    pub lock_grace: Duration,
    /// Records of one invocation processed at once (its batch and what it pulls), at least:
    /// more when the instance's share of the budgets needs more to be spent
    /// (`consumer::in_flight`), up to [`Settings::max_in_flight`].
    pub batch_concurrency: usize,
    /// The most records one invocation processes at once (`FANOUT_MAX_IN_FLIGHT`, 100): its
    /// open connections to the targets and its memory stay bounded whatever the budget.
    pub max_in_flight: usize,
    /// Whether an invocation with room and time receives more records itself
    /// (`FANOUT_PULL`, on unless `false`; the consumer's `pull` module says why).
    pub pull: bool,
    /// The `Function` metric dimension.
    pub function_name: String,
    /// Overrides of the config's `retry` section, field by field: the stack sets each only for
    /// a field the config leaves out (as for [`Settings::rate_per_second`]).
    pub retry: RetryOverrides,
    /// How long a host's shared state is trusted without reading it again.
    pub host_state_ttl: Duration,
    /// The pipeline's name: the `Pipeline` dimension of run metrics and the `pipeline` of
    /// completion events (the stack's name).
    pub pipeline: String,
    /// The most instances that can work at once (`FANOUT_MAX_INSTANCES`: the stack passes the
    /// event source mapping's `MaximumConcurrency`). While the instance cannot read the fleet's
    /// leases it splits each budget by this many, the most it can be shared by; unset, by the
    /// last count it read.
    pub max_instances: Option<u32>,
    /// The job queue's visibility timeout, when it is shorter than an invocation can run:
    /// the batch's records become visible to other invocations again after it, so a done one
    /// is deleted at once and a waiting one waits for its permit no longer than that
    /// ([`crate::record::Deadline::reappears_at`]). `fanout run` sets it from its event
    /// source; the stack's queue hides a record for at least 6 × the function's timeout, so
    /// a deployed consumer leaves it unset.
    pub visibility_timeout: Option<Duration>,
}

/// An environment variable of the consumer's that does not hold what it must: the function
/// refuses to start, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct BadVariable {
    /// The variable, e.g. `FANOUT_MAX_ATTEMPTS`.
    pub variable: &'static str,
    /// What is wrong with its value.
    pub problem: String,
}

/// The retry variables; each one present replaces the config file's field. The stack passes
/// `retryBaseMs`, `retryCapMs` and `maxAttempts` through them only when the config has no such
/// field (a value that disagrees with the config stops synth), so each setting has one source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOverrides {
    /// `FANOUT_RETRY_BASE_MS`.
    pub base_ms: Option<u64>,
    /// `FANOUT_RETRY_CAP_MS`.
    pub cap_ms: Option<u64>,
    /// `FANOUT_MAX_ATTEMPTS`.
    pub max_attempts: Option<u32>,
}

impl RetryOverrides {
    /// `config` with these overrides applied.
    pub fn apply(&self, config: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            base_ms: self.base_ms.unwrap_or(config.base_ms),
            cap_ms: self.cap_ms.unwrap_or(config.cap_ms),
            max_attempts: self.max_attempts.unwrap_or(config.max_attempts),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rate_per_second: None,
            record_ttl: Duration::from_secs(24 * 60 * 60),
            deadline_margin: Duration::from_millis(1000),
            lock_grace: Duration::from_secs(60),
            batch_concurrency: 10,
            max_in_flight: 100,
            pull: true,
            function_name: "fanout-consumer".into(),
            retry: RetryOverrides::default(),
            host_state_ttl: Duration::from_millis(1000),
            pipeline: "fanout".into(),
            max_instances: None,
            visibility_timeout: None,
        }
    }
}

impl Settings {
    /// Reads `FANOUT_RATE_PER_SECOND`, `FANOUT_RECORD_TTL_SECS` (86400),
    /// `FANOUT_DEADLINE_MARGIN_MS` (1000), `FANOUT_LOCK_GRACE_SECS` (60),
    /// `FANOUT_BATCH_CONCURRENCY` (10), `FANOUT_MAX_IN_FLIGHT` (100), `FANOUT_PULL` (true),
    /// `FANOUT_RETRY_BASE_MS`, `FANOUT_RETRY_CAP_MS`, `FANOUT_MAX_ATTEMPTS` (the config's
    /// `retry` unless set), `FANOUT_HOST_STATE_TTL_MS` (1000), `FANOUT_PIPELINE` (`fanout`),
    /// `FANOUT_MAX_INSTANCES` (unset) and `AWS_LAMBDA_FUNCTION_NAME`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, BadVariable> {
        let bad = |variable: &'static str, problem: String| BadVariable { variable, problem };
        let parse = |name: &'static str| -> Result<Option<u64>, BadVariable> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|_| bad(name, format!("cannot parse {v:?} as a whole number")))
                })
                .transpose()
        };
        let defaults = Self::default();
        const RATE: &str = "FANOUT_RATE_PER_SECOND";
        let rate_per_second: Option<f64> = var(RATE)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| bad(RATE, format!("cannot parse {v:?}")))
            })
            .transpose()?;
        if let Some(Err(e)) = rate_per_second.map(check_rate) {
            return Err(bad(RATE, e.to_string()));
        }
        let max_attempts = parse("FANOUT_MAX_ATTEMPTS")?
            .map(|n| {
                u32::try_from(n)
                    .map_err(|_| bad("FANOUT_MAX_ATTEMPTS", format!("{n} is too large")))
            })
            .transpose()?;
        Ok(Self {
            rate_per_second,
            record_ttl: parse("FANOUT_RECORD_TTL_SECS")?
                .map_or(defaults.record_ttl, Duration::from_secs),
            deadline_margin: parse("FANOUT_DEADLINE_MARGIN_MS")?
                .map_or(defaults.deadline_margin, Duration::from_millis),
            lock_grace: parse("FANOUT_LOCK_GRACE_SECS")?
                .map_or(defaults.lock_grace, Duration::from_secs),
            batch_concurrency: parse("FANOUT_BATCH_CONCURRENCY")?
                .map_or(defaults.batch_concurrency, |n| n as usize),
            max_in_flight: parse("FANOUT_MAX_IN_FLIGHT")?
                .map_or(defaults.max_in_flight, |n| n as usize),
            pull: match var("FANOUT_PULL").as_deref().map(str::trim) {
                None | Some("true") => true,
                Some("false") => false,
                Some(v) => {
                    return Err(bad(
                        "FANOUT_PULL",
                        format!("{v:?} is neither true nor false"),
                    ))
                }
            },
            function_name: var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or(defaults.function_name),
            retry: RetryOverrides {
                base_ms: parse("FANOUT_RETRY_BASE_MS")?,
                cap_ms: parse("FANOUT_RETRY_CAP_MS")?,
                max_attempts,
            },
            host_state_ttl: parse("FANOUT_HOST_STATE_TTL_MS")?
                .map_or(defaults.host_state_ttl, Duration::from_millis),
            pipeline: var("FANOUT_PIPELINE").unwrap_or(defaults.pipeline),
            max_instances: parse("FANOUT_MAX_INSTANCES")?
                .map(|n| {
                    u32::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
                        bad(
                            "FANOUT_MAX_INSTANCES",
                            format!("{n} must be 1..={}", u32::MAX),
                        )
                    })
                })
                .transpose()?,
            visibility_timeout: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_env_and_names_bad_values() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let s = Settings::from_env(env(&[
            ("FANOUT_RATE_PER_SECOND", "50"),
            ("FANOUT_MAX_ATTEMPTS", "3"),
            ("FANOUT_RETRY_BASE_MS", "50"),
        ]))
        .unwrap();
        assert_eq!(s.rate_per_second, Some(50.0));
        assert_eq!(s.record_ttl, Duration::from_secs(86400));
        let retry = s.retry.apply(RetryPolicy::default());
        assert_eq!(
            (retry.base_ms, retry.cap_ms, retry.max_attempts),
            (50, RetryPolicy::default().cap_ms, 3)
        );
        assert_eq!(Settings::from_env(env(&[])).unwrap(), Settings::default());
        let err = Settings::from_env(env(&[("FANOUT_MAX_ATTEMPTS", "x")])).unwrap_err();
        assert!(
            err.to_string()
                .contains("FANOUT_MAX_ATTEMPTS: cannot parse"),
            "{err}"
        );
        assert!(Settings::from_env(env(&[("FANOUT_RATE_PER_SECOND", "0")])).is_err());
        assert!(
            !Settings::from_env(env(&[("FANOUT_PULL", "false")]))
                .unwrap()
                .pull
        );
        let err = Settings::from_env(env(&[("FANOUT_PULL", "no")])).unwrap_err();
        assert_eq!(err.variable, "FANOUT_PULL");
    }
}
