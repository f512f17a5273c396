//! The consumer's settings, read from the Lambda environment.

use std::time::Duration;

/// Tunables of one consumer instance. [`Settings::from_env`] documents each variable.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The event source mapping's `MaximumConcurrency`: the rate budget is split by it.
    pub max_concurrency: u32,
    /// Global outbound budget (requests/s); overrides the config file's `rate_limit.per_second`.
    pub rate_per_second: Option<f64>,
    /// How long idempotency records live (the table's TTL).
    pub record_ttl: Duration,
    /// Work stops this long before the invocation's deadline.
    pub deadline_margin: Duration,
    /// Records of one batch processed at once.
    pub batch_concurrency: usize,
    /// The `Function` metric dimension.
    pub function_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_concurrency: 2,
            rate_per_second: None,
            record_ttl: Duration::from_secs(24 * 60 * 60),
            deadline_margin: Duration::from_millis(1000),
            batch_concurrency: 10,
            function_name: "fanout-consumer".into(),
        }
    }
}

impl Settings {
    /// Reads `FANOUT_MAX_CONCURRENCY` (required: must equal the event source mapping's
    /// `MaximumConcurrency`), `FANOUT_RATE_PER_SECOND`, `FANOUT_RECORD_TTL_SECS` (86400),
    /// `FANOUT_DEADLINE_MARGIN_MS` (1000), `FANOUT_BATCH_CONCURRENCY` (10) and
    /// `AWS_LAMBDA_FUNCTION_NAME`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        fn parse<T: std::str::FromStr>(name: &str, value: Option<String>) -> Result<Option<T>, String> {
            value
                .map(|v| v.trim().parse().map_err(|_| format!("{name}: cannot parse {v:?}")))
                .transpose()
        }
        let defaults = Self::default();
        let max_concurrency: u32 = parse("FANOUT_MAX_CONCURRENCY", var("FANOUT_MAX_CONCURRENCY"))?
            .ok_or("FANOUT_MAX_CONCURRENCY is required (the event source mapping's MaximumConcurrency)")?;
        if max_concurrency == 0 {
            return Err("FANOUT_MAX_CONCURRENCY must be at least 1".into());
        }
        let rate_per_second: Option<f64> = parse("FANOUT_RATE_PER_SECOND", var("FANOUT_RATE_PER_SECOND"))?;
        if rate_per_second.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err("FANOUT_RATE_PER_SECOND must be a positive number".into());
        }
        Ok(Self {
            max_concurrency,
            rate_per_second,
            record_ttl: parse("FANOUT_RECORD_TTL_SECS", var("FANOUT_RECORD_TTL_SECS"))?
                .map_or(defaults.record_ttl, Duration::from_secs),
            deadline_margin: parse("FANOUT_DEADLINE_MARGIN_MS", var("FANOUT_DEADLINE_MARGIN_MS"))?
                .map_or(defaults.deadline_margin, Duration::from_millis),
            batch_concurrency: parse("FANOUT_BATCH_CONCURRENCY", var("FANOUT_BATCH_CONCURRENCY"))?
                .unwrap_or(defaults.batch_concurrency),
            function_name: var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or(defaults.function_name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_env_and_names_bad_values() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        let s = Settings::from_env(env(&[("FANOUT_MAX_CONCURRENCY", "8"), ("FANOUT_RATE_PER_SECOND", "50")])).unwrap();
        assert_eq!((s.max_concurrency, s.rate_per_second), (8, Some(50.0)));
        assert_eq!(s.record_ttl, Duration::from_secs(86400));
        assert!(Settings::from_env(env(&[])).unwrap_err().contains("FANOUT_MAX_CONCURRENCY is required"));
        let err = Settings::from_env(env(&[("FANOUT_MAX_CONCURRENCY", "x")])).unwrap_err();
        assert!(err.contains("FANOUT_MAX_CONCURRENCY: cannot parse"), "{err}");
        assert!(Settings::from_env(env(&[("FANOUT_MAX_CONCURRENCY", "2"), ("FANOUT_RATE_PER_SECOND", "0")])).is_err());
    }
}
