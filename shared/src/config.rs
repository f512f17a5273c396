//! The pipeline config file: targets for the producer, budgets and allowed hosts for the consumer.
//!
//! One file, JSON (`.json`) or YAML (`.yaml`/`.yml`). [`PipelineConfig::load`] parses and
//! validates it and reports every problem at once, each naming the file, the target (index and
//! id) and the field.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::hosts::HostPolicy;
use crate::job::{JobMessage, JobTarget, MAX_MESSAGE_BYTES};
use crate::netguard;
use crate::retry::RetryPolicy;

/// Methods a target may use.
pub const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Longest per-call timeout: Lambda's own 15-minute ceiling.
pub const MAX_TIMEOUT_MS: u64 = 900_000;
/// Longest run ID the producer accepts; validation sizes messages against it.
pub const MAX_RUN_ID_LEN: usize = 128;

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Global outbound budget shared by all consumer instances. Absent = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Per-host budgets (host name → budget), on top of the global one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, HostLimit>,
    /// Lets targets reach loopback, private and link-local addresses (tests, private APIs).
    #[serde(default)]
    pub allow_private_networks: bool,
    /// Values a target inherits unless it sets its own.
    #[serde(default)]
    pub defaults: Defaults,
    /// Retry schedule of transient failures (backoff, jitter, attempts).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// How hosts are protected: slow-down on 429/503, circuit breaker, operator holds.
    #[serde(default)]
    pub host_protection: HostPolicy,
    /// The calls to make on every tick.
    pub targets: Vec<Target>,
}

/// A requests-per-second budget with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second (may be fractional, e.g. 0.5).
    pub per_second: f64,
    /// Requests that may go out back to back before the rate applies.
    #[serde(default = "one")]
    pub burst: u32,
}

fn one() -> u32 {
    1
}

/// A per-host budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostLimit {
    /// Sustained requests per second to this host.
    pub per_second: f64,
    /// The highest budget `fanout hosts set` may give this host at runtime (default:
    /// `per_second`, so an operator can only lower it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_second: Option<f64>,
}

/// Defaults for every target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// HTTP method, `GET` unless set.
    #[serde(default = "default_method")]
    pub method: String,
    /// Per-call timeout, 5 s unless set.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Headers every call sends (a target's own headers win).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl Default for Defaults {
    fn default() -> Self {
        Self { method: default_method(), timeout_ms: default_timeout(), headers: BTreeMap::new() }
    }
}

fn default_method() -> String {
    "GET".into()
}

fn default_timeout() -> u64 {
    5000
}

/// One target as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Unique ID; with the run ID it makes the job's message ID.
    pub id: String,
    /// `http` or `https` URL.
    pub url: String,
    /// HTTP method (defaults apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Extra headers; values may be `${env:NAME}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// Per-call timeout (defaults apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file, as the user named it.
    pub file: String,
    /// Where in it: `targets[3] (id "user-3")`, `rate_limit`, or empty for the whole file.
    pub location: String,
    /// The field at fault, if one.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if !self.location.is_empty() {
            write!(f, ": {}", self.location)?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "{}", lines.join("\n"))
    }
}

impl PipelineConfig {
    /// Reads, parses and validates a config file; YAML for `.yaml`/`.yml`, JSON otherwise.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![whole_file(&file, format!("cannot read: {e}"))]))?;
        let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        Self::parse(&text, yaml, &file)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, yaml: bool, file: &str) -> Result<Self, ConfigErrors> {
        let parsed: Result<Self, String> = if yaml {
            serde_norway::from_str(text).map_err(|e| e.to_string())
        } else {
            serde_json::from_str(text).map_err(|e| e.to_string())
        };
        let config = parsed.map_err(|e| ConfigErrors(vec![whole_file(file, format!("cannot parse: {e}"))]))?;
        config.validate(file)?;
        Ok(config)
    }

    /// Checks every rule and returns all violations.
    pub fn validate(&self, file: &str) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut push = |location: String, field: &str, message: String| {
            errors.push(ConfigError { file: file.to_owned(), location, field: field.to_owned(), message });
        };
        if let Some(limit) = &self.rate_limit {
            if let Err(e) = check_rate(limit.per_second) {
                push("rate_limit".into(), "per_second", e);
            }
            if limit.burst == 0 {
                push("rate_limit".into(), "burst", "must be at least 1".into());
            }
        }
        for (host, limit) in &self.hosts {
            if let Err(e) = check_rate(limit.per_second) {
                push(format!("hosts.{host}"), "per_second", e);
            }
            match limit.max_per_second.map(check_rate) {
                Some(Err(e)) => push(format!("hosts.{host}"), "max_per_second", e),
                Some(Ok(())) if limit.max_per_second < Some(limit.per_second) => {
                    push(format!("hosts.{host}"), "max_per_second", format!("must be at least per_second ({})", limit.per_second));
                }
                _ => {}
            }
        }
        for (field, message) in self.retry.problems() {
            push("retry".into(), field, message);
        }
        for (field, message) in self.host_protection.problems() {
            push("host_protection".into(), field, message);
        }
        if !HTTP_METHODS.contains(&self.defaults.method.to_ascii_uppercase().as_str()) {
            push("defaults".into(), "method", format!("unknown method {:?}", self.defaults.method));
        }
        if self.targets.is_empty() {
            push(String::new(), "targets", "no targets: nothing to call".into());
        }
        let mut first_index: HashMap<&str, usize> = HashMap::new();
        for (index, target) in self.targets.iter().enumerate() {
            let location = format!("targets[{index}] (id {:?})", target.id);
            if let Some(previous) = first_index.insert(&target.id, index) {
                push(location.clone(), "id", format!("duplicate id, first used by targets[{previous}]"));
            }
            let job = self.job_target(target);
            if let Err((field, message)) = job.check() {
                push(location.clone(), field, message);
                continue;
            }
            if !self.allow_private_networks {
                if let Some(host) = url::Url::parse(&job.url).ok().as_ref().and_then(|u| u.host()) {
                    if let Err(e) = netguard::check_literal_host(&host) {
                        push(location.clone(), "url", format!("{e}; set allow_private_networks to call it"));
                    }
                }
            }
            // Size the message as the producer will build it, with the longest run ID.
            let run_id = "r".repeat(MAX_RUN_ID_LEN);
            let size = JobMessage::new(&run_id, job, chrono::Utc::now()).encode().size();
            if size > MAX_MESSAGE_BYTES {
                push(location, "body", format!("the job message would be {size} bytes, over the 256 KiB SNS limit"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The target with defaults applied, as it travels in a job message.
    pub fn job_target(&self, target: &Target) -> JobTarget {
        let mut headers = self.defaults.headers.clone();
        headers.extend(target.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        JobTarget {
            id: target.id.clone(),
            url: target.url.clone(),
            method: target.method.as_deref().unwrap_or(&self.defaults.method).to_ascii_uppercase(),
            headers,
            body: target.body.clone(),
            timeout_ms: target.timeout_ms.unwrap_or(self.defaults.timeout_ms),
        }
    }

    /// The fleet's budget for `host` (requests/s): its own, else the global one, else `None`
    /// (unlimited).
    pub fn host_budget(&self, host: &str) -> Option<f64> {
        self.hosts.get(host).map(|l| l.per_second).or(self.rate_limit.map(|l| l.per_second))
    }

    /// The highest budget an operator may set for `host` at runtime.
    pub fn host_operator_max(&self, host: &str) -> Option<f64> {
        match self.hosts.get(host) {
            Some(limit) => Some(limit.max_per_second.unwrap_or(limit.per_second)),
            None => self.rate_limit.map(|l| l.per_second),
        }
    }

    /// Every target as a job target.
    pub fn job_targets(&self) -> Vec<JobTarget> {
        self.targets.iter().map(|t| self.job_target(t)).collect()
    }

    /// Hosts the consumer may call: every target's host plus every `hosts` key. A job from the
    /// queue whose host is not here is refused.
    pub fn allowed_hosts(&self) -> BTreeSet<String> {
        let from_targets = self.targets.iter().filter_map(|t| self.job_target(t).host());
        from_targets.chain(self.hosts.keys().map(|h| h.to_ascii_lowercase())).collect()
    }
}

fn whole_file(file: &str, message: String) -> ConfigError {
    ConfigError { file: file.to_owned(), location: String::new(), field: String::new(), message }
}

fn check_rate(per_second: f64) -> Result<(), String> {
    if per_second.is_finite() && per_second > 0.0 {
        Ok(())
    } else {
        Err(format!("must be a positive number, got {per_second}"))
    }
}

/// Checks a target URL: parses, `http`/`https`, has a host.
pub fn check_url(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e}): {raw:?}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not allowed (use http or https)", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("no host in {raw:?}"));
    }
    Ok(())
}

/// Checks a header name and the `${env:NAME}` placeholders in its value.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("invalid header name {name:?}"));
    }
    // What an HTTP header value may not hold (tab is allowed): the consumer's client would
    // refuse such a value on every call.
    if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
        return Err(format!("header {name}: value has a control character"));
    }
    env_placeholders(value).map_err(|e| format!("header {name}: {e}"))?;
    Ok(())
}

/// One piece of a header value: literal text or an environment variable reference.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderPart<'a> {
    /// Text sent as is.
    Literal(&'a str),
    /// `${env:NAME}`, replaced by the consumer's environment variable `NAME` at call time.
    Env(&'a str),
}

/// Splits a header value into literal text and `${env:NAME}` references.
pub fn env_placeholders(value: &str) -> Result<Vec<HeaderPart<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(HeaderPart::Literal(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unterminated placeholder in {value:?}"))?;
        let name = after[..end]
            .strip_prefix("env:")
            .ok_or_else(|| format!("placeholder ${{{}}} must be ${{env:NAME}}", &after[..end]))?;
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        parts.push(HeaderPart::Env(name));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(HeaderPart::Literal(rest));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(json: &str) -> Vec<String> {
        match PipelineConfig::parse(json, false, "fanout.json") {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn valid_config_applies_defaults() {
        let config = PipelineConfig::parse(
            r#"{"rate_limit":{"per_second":50},"defaults":{"headers":{"Authorization":"Bearer ${env:API_TOKEN}"}},
                "targets":[{"id":"a","url":"https://api.example.com/a","method":"post","timeout_ms":3000}]}"#,
            false,
            "fanout.json",
        )
        .unwrap();
        let job = config.job_target(&config.targets[0]);
        assert_eq!(job.method, "POST");
        assert_eq!(job.timeout_ms, 3000);
        assert_eq!(job.headers["Authorization"], "Bearer ${env:API_TOKEN}");
        assert_eq!(config.rate_limit.unwrap().burst, 1);
        assert!(config.allowed_hosts().contains("api.example.com"));
    }

    #[test]
    fn yaml_is_accepted() {
        let config = PipelineConfig::parse("targets:\n  - id: a\n    url: https://x.example.com/\n", true, "f.yaml");
        assert_eq!(config.unwrap().targets.len(), 1);
    }

    #[test]
    fn each_rule_names_file_target_and_field() {
        let cases = [
            (r#"{"targets":[{"id":"a","url":"https://x.io/"},{"id":"a","url":"https://x.io/"}]}"#,
             r#"fanout.json: targets[1] (id "a"): field `id`: duplicate id, first used by targets[0]"#),
            (r#"{"targets":[{"id":"a","url":"ftp://x.io/"}]}"#,
             r#"targets[0] (id "a"): field `url`: scheme "ftp" is not allowed"#),
            (r#"{"targets":[{"id":"a","url":"not a url"}]}"#, r#"field `url`: not a URL"#),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","method":"FETCH"}]}"#,
             r#"field `method`: unknown method "FETCH""#),
            (r#"{"rate_limit":{"per_second":0},"targets":[{"id":"a","url":"https://x.io/"}]}"#,
             "fanout.json: rate_limit: field `per_second`: must be a positive number"),
            (r#"{"hosts":{"x.io":{"per_second":0}},"targets":[{"id":"a","url":"https://x.io/"}]}"#,
             "hosts.x.io: field `per_second`"),
            (r#"{"targets":[{"id":"a","url":"http://169.254.169.254/latest"}]}"#,
             "field `url`: 169.254.169.254 is a link-local"),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"X":"${API}"}}]}"#,
             "field `headers`: header X: placeholder ${API} must be ${env:NAME}"),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","timeout_ms":0}]}"#, "field `timeout_ms`"),
            (r#"{"targets":[]}"#, "field `targets`: no targets"),
            (r#"{"targets":[{"id":"a","uri":"https://x.io/"}]}"#, "fanout.json: cannot parse: unknown field `uri`"),
            (r#"{"rate_limit":{"per_second":5,"burst":0},"targets":[{"id":"a","url":"https://x.io/"}]}"#,
             "fanout.json: rate_limit: field `burst`: must be at least 1"),
            (r#"{"rate_limit":{"per_second":-1},"targets":[{"id":"a","url":"https://x.io/"}]}"#,
             "rate_limit: field `per_second`: must be a positive number, got -1"),
            (r#"{"defaults":{"method":"FETCH"},"targets":[{"id":"a","url":"https://x.io/"}]}"#,
             r#"fanout.json: defaults: field `method`: unknown method "FETCH""#),
            (r#"{"targets":[{"id":"","url":"https://x.io/"}]}"#, r#"targets[0] (id ""): field `id`: is empty"#),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","timeout_ms":900001}]}"#,
             "field `timeout_ms`: must be 1..=900000, got 900001"),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"Bad Name":"v"}}]}"#,
             r#"targets[0] (id "a"): field `headers`: invalid header name "Bad Name""#),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"X":"a\u0001b"}}]}"#,
             "field `headers`: header X: value has a control character"),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"X":"a\u007fb"}}]}"#,
             "field `headers`: header X: value has a control character"),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"X":"${env:TOKEN"}}]}"#,
             "field `headers`: header X: unterminated placeholder"),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"X":"${env:1X}"}}]}"#,
             r#"field `headers`: header X: invalid environment variable name "1X""#),
            (r#"{"defaults":{"headers":{"X":"${API}"}},"targets":[{"id":"a","url":"https://x.io/"}]}"#,
             r#"targets[0] (id "a"): field `headers`: header X: placeholder ${API}"#),
            (r#"{"targets":[{"id":"a","url":"http://127.0.0.1:8080/"}]}"#,
             "field `url`: 127.0.0.1 is a loopback address; set allow_private_networks to call it"),
            (r#"{"targets":[{"id":"a","url":"http://localhost:8080/"}]}"#, "field `url`: host localhost is loopback"),
            (r#"{"targets":[{"id":"a","url":"http://10.1.2.3/"}]}"#, "field `url`: 10.1.2.3 is a private address"),
            (r#"{"targets":[{"id":"a","url":"http://[::1]/"}]}"#, "field `url`: ::1 is a loopback address"),
            (r#"{"targets":[{"id":"a","url":"http://0.0.0.0/"}]}"#, "field `url`: 0.0.0.0 is a unspecified address; set allow_private_networks"),
            (r#"{"targets":[{"id":"a","url":"http://[fd00:ec2::254]/"}]}"#, "field `url`: fd00:ec2::254 is a unique local"),
            ("not json", "fanout.json: cannot parse: expected ident"),
        ];
        for (json, expected) in cases {
            let errors = errors(json);
            assert!(errors.iter().any(|e| e.contains(expected)), "{errors:?} should contain {expected:?}");
        }
    }

    #[test]
    fn yaml_errors_and_unreadable_files_name_the_file() {
        let err = PipelineConfig::parse("targets: [", true, "fanout.yaml").unwrap_err().to_string();
        assert!(err.starts_with("fanout.yaml: cannot parse:"), "{err}");
        let err = PipelineConfig::load(Path::new("/nonexistent/fanout.json")).unwrap_err().to_string();
        assert!(err.starts_with("/nonexistent/fanout.json: cannot read:"), "{err}");
    }

    #[test]
    fn oversized_message_is_refused_at_validation() {
        let big = "x".repeat(MAX_MESSAGE_BYTES);
        let json = format!(r#"{{"targets":[{{"id":"a","url":"https://x.io/","body":"{big}"}}]}}"#);
        assert!(errors(&json).iter().any(|e| e.contains("field `body`: the job message would be")));
    }

    #[test]
    fn private_targets_allowed_when_opted_in() {
        let json = r#"{"allow_private_networks":true,"targets":[{"id":"a","url":"http://127.0.0.1:8080/"}]}"#;
        assert!(errors(json).is_empty());
    }

    #[test]
    fn placeholders_split_into_parts() {
        assert_eq!(
            env_placeholders("Bearer ${env:TOKEN}!").unwrap(),
            vec![HeaderPart::Literal("Bearer "), HeaderPart::Env("TOKEN"), HeaderPart::Literal("!")]
        );
        assert!(env_placeholders("${env:TOKEN").is_err());
        assert!(env_placeholders("${env:1X}").is_err());
    }
}
