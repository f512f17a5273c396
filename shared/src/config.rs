//! The pipeline config file: targets for the producer, budgets and allowed hosts for the consumer.
//!
//! One file, JSON (`.json`) or YAML (`.yaml`/`.yml`). [`PipelineConfig::load`] parses and
//! validates it and reports every problem at once, each naming the file, the target (index and
//! id) and the field.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hosts::HostPolicy;
use crate::job::{JobMessage, JobTarget, MAX_MESSAGE_BYTES};
use crate::netguard;
use crate::retry::RetryPolicy;
use crate::runs::RunPolicy;
use crate::sources::{self, Source, TickSettings};
pub(crate) use crate::target_rules::HTTP_METHODS;
use crate::target_rules::MAX_RUN_ID_LEN;
use crate::template::{CompiledTemplate, Template};

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
    /// How runs are judged (tolerated failures), when they are late, and what a tick does while
    /// the previous run is in flight.
    #[serde(default)]
    pub runs: RunPolicy,
    /// The calls to make on every tick, written out one by one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    /// Call templates by name: what a source's rows fill (see [`Template`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub templates: BTreeMap<String, Template>,
    /// Lists of rows read at tick time, each row one call through its template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Source>,
    /// Values of the templates' `{tick.…}` placeholders.
    #[serde(default)]
    pub tick: TickSettings,
    /// The config file's folder: relative source locations are read from there.
    #[serde(skip)]
    pub base_dir: PathBuf,
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
        Self {
            method: default_method(),
            timeout_ms: default_timeout(),
            headers: BTreeMap::new(),
        }
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
    /// Reads at most `MAX_CONFIG_BYTES`, so a device or a runaway file cannot exhaust memory.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let file = path.display().to_string();
        let text =
            read_capped(path).map_err(|e| ConfigErrors(vec![whole_file(&file, e.to_string())]))?;
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        let mut config = Self::parse(&text, yaml, &file)?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(config)
    }

    /// Parses and validates config text; `file` names it in errors. A leading byte order mark
    /// (as some Windows editors write) is skipped.
    pub fn parse(text: &str, yaml: bool, file: &str) -> Result<Self, ConfigErrors> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let cannot_parse = |e: &dyn fmt::Display| {
            ConfigErrors(vec![whole_file(file, format!("cannot parse: {e}"))])
        };
        let config: Self = if yaml {
            serde_norway::from_str(text).map_err(|e| cannot_parse(&e))?
        } else {
            serde_json::from_str(text).map_err(|e| cannot_parse(&e))?
        };
        config.validate(file)?;
        config.validate_sources(file)?;
        Ok(config)
    }

    /// Checks every rule and returns all violations.
    pub(crate) fn validate(&self, file: &str) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut push = |location: String, field: &str, message: String| {
            errors.push(ConfigError {
                file: file.to_owned(),
                location,
                field: field.to_owned(),
                message,
            });
        };
        if let Some(limit) = &self.rate_limit {
            if let Err(e) = check_rate(limit.per_second) {
                push("rate_limit".into(), "per_second", e.to_string());
            }
            if limit.burst == 0 {
                push("rate_limit".into(), "burst", "must be at least 1".into());
            }
        }
        for (host, limit) in &self.hosts {
            if let Err(e) = check_rate(limit.per_second) {
                push(format!("hosts.{host}"), "per_second", e.to_string());
            }
            match limit.max_per_second.map(check_rate) {
                Some(Err(e)) => push(format!("hosts.{host}"), "max_per_second", e.to_string()),
                Some(Ok(())) if limit.max_per_second < Some(limit.per_second) => {
                    push(
                        format!("hosts.{host}"),
                        "max_per_second",
                        format!("must be at least per_second ({})", limit.per_second),
                    );
                }
                _ => {}
            }
        }
        for e in self.retry.problems() {
            push("retry".into(), e.field, e.problem);
        }
        for e in self.host_protection.problems() {
            push("host_protection".into(), e.field, e.problem);
        }
        for e in self.runs.problems() {
            push("runs".into(), e.field, e.problem);
        }
        if !HTTP_METHODS.contains(&self.defaults.method.to_ascii_uppercase().as_str()) {
            push(
                "defaults".into(),
                "method",
                format!("unknown method {:?}", self.defaults.method),
            );
        }
        if self.targets.is_empty() && self.sources.is_empty() {
            push(
                String::new(),
                "targets",
                "no targets and no sources: nothing to call".into(),
            );
        }
        for (name, template) in &self.templates {
            let location = format!("templates.{name}");
            match template.compile(&self.defaults) {
                Err(problems) => {
                    for e in problems {
                        push(location.clone(), e.field, e.problem);
                    }
                }
                Ok(compiled) if !self.allow_private_networks => {
                    let url = url::Url::parse(&format!("http://{}/", compiled.host()));
                    if let Some(host) = url.as_ref().ok().and_then(url::Url::host) {
                        if let Err(e) = netguard::check_literal_host(&host) {
                            push(
                                location,
                                "url",
                                format!("{e}; set allow_private_networks to call it"),
                            );
                        }
                    }
                }
                Ok(_) => {}
            }
        }
        let mut source_names = BTreeSet::new();
        for (index, source) in self.sources.iter().enumerate() {
            let location = format!("sources[{index}] (name {:?})", source.name);
            if source.name.is_empty() || source.name.contains(['/', ' ']) {
                push(
                    location.clone(),
                    "name",
                    "must be non-empty, without `/` or spaces".into(),
                );
            }
            if !source_names.insert(source.name.as_str()) {
                push(location.clone(), "name", "duplicate source name".into());
            }
            if !self.templates.contains_key(&source.template) {
                push(
                    location.clone(),
                    "template",
                    format!("no template {:?} in `templates`", source.template),
                );
            }
            if source.id_field.is_empty() {
                push(location.clone(), "id_field", "is empty".into());
            }
            match source.location(Path::new("")) {
                Err(e) => push(location, "location", e.to_string()),
                Ok(place) => {
                    for e in source.http_problems(&place, self.allow_private_networks) {
                        push(location.clone(), e.field, e.problem);
                    }
                }
            }
        }
        let mut first_index: HashMap<&str, usize> = HashMap::new();
        for (index, target) in self.targets.iter().enumerate() {
            let location = format!("targets[{index}] (id {:?})", target.id);
            if let Some((source, _)) = target.id.split_once('/') {
                if source_names.contains(source) {
                    push(
                        location.clone(),
                        "id",
                        format!("must not start with `{source}/`: the jobs of source {source:?} are named so"),
                    );
                }
            }
            if let Some(previous) = first_index.insert(&target.id, index) {
                push(
                    location.clone(),
                    "id",
                    format!("duplicate id, first used by targets[{previous}]"),
                );
            }
            let job = self.job_target(target);
            if let Err(e) = job.check() {
                push(location.clone(), e.field, e.problem);
                continue;
            }
            if !self.allow_private_networks {
                if let Some(host) = url::Url::parse(&job.url)
                    .ok()
                    .as_ref()
                    .and_then(|u| u.host())
                {
                    if let Err(e) = netguard::check_literal_host(&host) {
                        push(
                            location.clone(),
                            "url",
                            format!("{e}; set allow_private_networks to call it"),
                        );
                    }
                }
            }
            // Size the message as the producer will build it, with the longest run ID.
            let run_id = "r".repeat(MAX_RUN_ID_LEN);
            let size = JobMessage::new(&run_id, job, chrono::Utc::now())
                .encode()
                .size();
            if size > MAX_MESSAGE_BYTES {
                push(
                    location,
                    "body",
                    format!("the job message would be {size} bytes, over the 256 KiB SNS limit"),
                );
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
        // Header names are case-insensitive: a target's `authorization` replaces a default
        // `Authorization` rather than going out beside it.
        headers.retain(|name, _| {
            !target
                .headers
                .keys()
                .any(|own| own.eq_ignore_ascii_case(name))
        });
        headers.extend(target.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        JobTarget {
            id: target.id.clone(),
            url: target.url.clone(),
            method: target
                .method
                .as_deref()
                .unwrap_or(&self.defaults.method)
                .to_ascii_uppercase(),
            headers,
            body: target.body.clone(),
            timeout_ms: target.timeout_ms.unwrap_or(self.defaults.timeout_ms),
        }
    }

    /// A short digest of the config (SHA-256 of its JSON form, 16 hex digits): the run ledger
    /// records which config a run was published from.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let text = serde_json::to_string(self).unwrap_or_default();
        Sha256::digest(text.as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The fleet's budget for `host` (requests/s): its own, else the global one, else `None`
    /// (unlimited).
    pub fn host_budget(&self, host: &str) -> Option<f64> {
        self.hosts
            .get(host)
            .map(|l| l.per_second)
            .or(self.rate_limit.map(|l| l.per_second))
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

    /// Hosts the consumer may call: every target's and template's host plus every `hosts` key.
    /// A job from the queue whose host is not here is refused, and so is a redirect hop to such
    /// a host.
    pub fn allowed_hosts(&self) -> BTreeSet<String> {
        let from_targets = self
            .targets
            .iter()
            .filter_map(|t| self.job_target(t).host());
        let from_templates = self
            .compiled_templates()
            .into_values()
            .map(|t| t.host().to_owned());
        from_targets
            .chain(from_templates)
            .chain(self.hosts.keys().map(|h| h.to_ascii_lowercase()))
            .collect()
    }

    /// Every template, compiled with the config's defaults. [`PipelineConfig::parse`] refused
    /// a config with a template that does not compile, so none is left out of a loaded config.
    pub fn compiled_templates(&self) -> BTreeMap<String, CompiledTemplate> {
        self.templates
            .iter()
            .filter_map(|(name, t)| Some((name.clone(), t.compile(&self.defaults).ok()?)))
            .collect()
    }

    /// Checks the inline rows of every source against its template, naming the source and row.
    fn validate_sources(&self, file: &str) -> Result<(), ConfigErrors> {
        let templates = self.compiled_templates();
        let tick = crate::template::TickValues::default();
        let mut errors = Vec::new();
        for (name, source) in sources::by_name(&self.sources) {
            let (Some(rows), Some(template)) = (&source.rows, templates.get(&source.template))
            else {
                continue;
            };
            let mut seen = BTreeSet::new();
            for (index, row) in rows.iter().enumerate() {
                let location = format!("sources {name:?}: rows[{index}]");
                let problem = match sources::row_id(row, &source.id_field) {
                    Err(e) => Some(e.to_string()),
                    Ok(id) if !seen.insert(id.clone()) => Some(format!("duplicate id {id:?}")),
                    Ok(id) => template
                        .render(&sources::job_id(name, &id), row, &tick)
                        .err()
                        .map(|e| e.to_string()),
                };
                if let Some(message) = problem {
                    errors.push(ConfigError {
                        file: file.to_owned(),
                        location,
                        field: String::new(),
                        message,
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// The largest config file read: room for 100,000 targets with modest bodies.
pub(crate) const MAX_CONFIG_BYTES: u64 = 32 * 1024 * 1024;

/// Why a config file's text could not be had; [`PipelineConfig::load`] names the file.
#[derive(Debug, thiserror::Error)]
enum UnreadableConfig {
    /// Opening or reading it failed.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// More than [`MAX_CONFIG_BYTES`]: a device, or a runaway file.
    #[error("larger than the {} MiB limit of a config file", MAX_CONFIG_BYTES >> 20)]
    TooLarge,
    /// Not UTF-8; the offset of the first invalid byte.
    #[error("cannot read: not UTF-8 text (invalid byte at offset {0})")]
    NotUtf8(usize),
}

/// The file's text, refusing more than [`MAX_CONFIG_BYTES`] and text that is not UTF-8.
fn read_capped(path: &Path) -> Result<String, UnreadableConfig> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    // A regular file says its size; a device or a pipe is read up to the cap.
    if file
        .metadata()
        .is_ok_and(|m| m.is_file() && m.len() > MAX_CONFIG_BYTES)
    {
        return Err(UnreadableConfig::TooLarge);
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(UnreadableConfig::TooLarge);
    }
    String::from_utf8(bytes).map_err(|e| UnreadableConfig::NotUtf8(e.utf8_error().valid_up_to()))
}

fn whole_file(file: &str, message: String) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        location: String::new(),
        field: String::new(),
        message,
    }
}

/// A rate [`check_rate`] refuses (zero, negative, NaN, infinite). Its text completes a
/// sentence that names the field or flag.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("must be a positive number, got {0}")]
pub struct BadRate(f64);

/// The one rule for every rate (config budgets, `--rate` flags, `FANOUT_RATE_PER_SECOND`): a
/// positive, finite number of requests per second. The error completes a sentence that names
/// the field or flag.
pub fn check_rate(per_second: f64) -> Result<(), BadRate> {
    if per_second.is_finite() && per_second > 0.0 {
        Ok(())
    } else {
        Err(BadRate(per_second))
    }
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
        let config = PipelineConfig::parse(
            "targets:\n  - id: a\n    url: https://x.example.com/\n",
            true,
            "f.yaml",
        );
        assert_eq!(config.unwrap().targets.len(), 1);
    }

    #[test]
    fn each_rule_names_file_target_and_field() {
        let cases = [
            (
                r#"{"targets":[{"id":"a","url":"https://x.io/"},{"id":"a","url":"https://x.io/"}]}"#,
                r#"fanout.json: targets[1] (id "a"): field `id`: duplicate id, first used by targets[0]"#,
            ),
            (r#"{"targets":[{"id":"a","url":"ftp://x.io/"}]}"#, r#"targets[0] (id "a"): field `url`: scheme "ftp" is not allowed"#),
            (r#"{"targets":[{"id":"a","url":"not a url"}]}"#, r#"field `url`: not a URL"#),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","method":"FETCH"}]}"#, r#"field `method`: unknown method "FETCH""#),
            (
                r#"{"rate_limit":{"per_second":0},"targets":[{"id":"a","url":"https://x.io/"}]}"#,
                "fanout.json: rate_limit: field `per_second`: must be a positive number",
            ),
            (r#"{"hosts":{"x.io":{"per_second":0}},"targets":[{"id":"a","url":"https://x.io/"}]}"#, "hosts.x.io: field `per_second`"),
            (r#"{"targets":[{"id":"a","url":"http://169.254.169.254/latest"}]}"#, "field `url`: 169.254.169.254 is a link-local"),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"X":"${API}"}}]}"#, "field `headers`: header X: placeholder ${API} must be ${env:NAME}"),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","timeout_ms":0}]}"#, "field `timeout_ms`"),
            (r#"{"targets":[]}"#, "field `targets`: no targets"),
            (r#"{"targets":[{"id":"a","uri":"https://x.io/"}]}"#, "fanout.json: cannot parse: unknown field `uri`"),
            (
                r#"{"rate_limit":{"per_second":5,"burst":0},"targets":[{"id":"a","url":"https://x.io/"}]}"#,
                "fanout.json: rate_limit: field `burst`: must be at least 1",
            ),
            (
                r#"{"rate_limit":{"per_second":-1},"targets":[{"id":"a","url":"https://x.io/"}]}"#,
                "rate_limit: field `per_second`: must be a positive number, got -1",
            ),
            (
                r#"{"defaults":{"method":"FETCH"},"targets":[{"id":"a","url":"https://x.io/"}]}"#,
                r#"fanout.json: defaults: field `method`: unknown method "FETCH""#,
            ),
            (r#"{"targets":[{"id":"","url":"https://x.io/"}]}"#, r#"targets[0] (id ""): field `id`: is empty"#),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","timeout_ms":900001}]}"#, "field `timeout_ms`: must be 1..=900000, got 900001"),
            (
                r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"Bad Name":"v"}}]}"#,
                r#"targets[0] (id "a"): field `headers`: invalid header name "Bad Name""#,
            ),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"X":"a\u0001b"}}]}"#, "field `headers`: header X: value has a control character"),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"X":"a\u007fb"}}]}"#, "field `headers`: header X: value has a control character"),
            (r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"X":"${env:TOKEN"}}]}"#, "field `headers`: header X: unterminated placeholder"),
            (
                r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"X":"${env:1X}"}}]}"#,
                r#"field `headers`: header X: invalid environment variable name "1X""#,
            ),
            (
                r#"{"defaults":{"headers":{"X":"${API}"}},"targets":[{"id":"a","url":"https://x.io/"}]}"#,
                r#"targets[0] (id "a"): field `headers`: header X: placeholder ${API}"#,
            ),
            (
                r#"{"targets":[{"id":"a","url":"http://127.0.0.1:8080/"}]}"#,
                "field `url`: 127.0.0.1 is a loopback address; set allow_private_networks to call it",
            ),
            (r#"{"targets":[{"id":"a","url":"http://localhost:8080/"}]}"#, "field `url`: host localhost is loopback"),
            (r#"{"targets":[{"id":"a","url":"http://10.1.2.3/"}]}"#, "field `url`: 10.1.2.3 is a private address"),
            (r#"{"targets":[{"id":"a","url":"http://[::1]/"}]}"#, "field `url`: ::1 is a loopback address"),
            (r#"{"targets":[{"id":"a","url":"http://0.0.0.0/"}]}"#, "field `url`: 0.0.0.0 is a unspecified address; set allow_private_networks"),
            (r#"{"targets":[{"id":"a","url":"http://[fd00:ec2::254]/"}]}"#, "field `url`: fd00:ec2::254 is a unique local"),
            ("not json", "fanout.json: cannot parse: expected ident"),
        ];
        for (json, expected) in cases {
            let errors = errors(json);
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{errors:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn yaml_errors_and_unreadable_files_name_the_file() {
        let err = PipelineConfig::parse("targets: [", true, "fanout.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("fanout.yaml: cannot parse:"), "{err}");
        let err = PipelineConfig::load(Path::new("/nonexistent/fanout.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/nonexistent/fanout.json: cannot read:"),
            "{err}"
        );
    }

    #[test]
    fn oversized_message_is_refused_at_validation() {
        let big = "x".repeat(MAX_MESSAGE_BYTES);
        let json = format!(r#"{{"targets":[{{"id":"a","url":"https://x.io/","body":"{big}"}}]}}"#);
        assert!(errors(&json)
            .iter()
            .any(|e| e.contains("field `body`: the job message would be")));
    }

    #[test]
    fn issue_13_config_holes_are_refused() {
        let cases = [
            (
                r#"{"targets":[{"id":"a","url":"https://x.io:0/"}]}"#,
                r#"targets[0] (id "a"): field `url`: port 0"#,
            ),
            (
                r#"{"targets":[{"id":"a","url":"https://u:hunter2@x.io/"}]}"#,
                r#"targets[0] (id "a"): field `url`: credentials (user:password@) in "https://***@x.io/""#,
            ),
            (
                r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"Host":"internal.x.io"}}]}"#,
                "field `headers`: header Host frames or routes the request",
            ),
            (
                r#"{"defaults":{"headers":{"transfer-encoding":"chunked"}},"targets":[{"id":"a","url":"https://x.io/"}]}"#,
                "field `headers`: header transfer-encoding frames or routes",
            ),
            (
                r#"{"targets":[{"id":"a","url":"https://x.io/","headers":{"Proxy-Authorization":"x"}}]}"#,
                "header Proxy-Authorization frames",
            ),
            (
                r#"{"targets":[{"id":"a","url":"http://[2001:db8::1]/"}]}"#,
                "field `url`: 2001:db8::1 is a documentation",
            ),
            (
                r#"{"targets":[{"id":"a","url":"http://[2002:a00:1::1]/"}]}"#,
                "field `url`: 2002:a00:1::1 is a 6to4 address wrapping a non-public IPv4 address",
            ),
            (
                r#"{"targets":[{"id":"a","url":"http://[fec0::1]/"}]}"#,
                "field `url`: fec0::1 is a site-local",
            ),
        ];
        for (json, expected) in cases {
            let errors = errors(json);
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{errors:?} should contain {expected:?}"
            );
            assert!(
                !errors.iter().any(|e| e.contains("hunter2")),
                "{errors:?} quotes a password"
            );
        }
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let json = "\u{feff}{\"targets\":[{\"id\":\"a\",\"url\":\"https://x.io/\"}]}";
        assert_eq!(
            PipelineConfig::parse(json, false, "bom.json")
                .unwrap()
                .targets
                .len(),
            1
        );
        let yaml = "\u{feff}targets:\n  - id: a\n    url: https://x.io/\n";
        assert_eq!(
            PipelineConfig::parse(yaml, true, "bom.yaml")
                .unwrap()
                .targets
                .len(),
            1
        );
    }

    #[test]
    fn the_read_is_capped_for_devices_and_large_files() {
        let err = PipelineConfig::load(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/dev/zero: larger than the 32 MiB limit of a config file"
        );
        let err = PipelineConfig::load(Path::new("/dev/urandom"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/dev/urandom: larger than the 32 MiB limit of a config file"
        );
        let path =
            std::env::temp_dir().join(format!("fanout-config-cap-{}.json", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let err = PipelineConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.ends_with(".json: larger than the 32 MiB limit of a config file"),
            "{err}"
        );
        std::fs::write(&path, b"{\"targets\": \xff}").unwrap();
        let err = PipelineConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.ends_with(".json: cannot read: not UTF-8 text (invalid byte at offset 12)"),
            "{err}"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_targets_header_replaces_a_default_of_any_case() {
        let config = PipelineConfig::parse(
            r#"{"defaults":{"headers":{"Authorization":"Bearer ${env:A}","X-Keep":"k"}},
                "targets":[{"id":"a","url":"https://x.io/","headers":{"authorization":"Bearer ${env:B}"}}]}"#,
            false,
            "f.json",
        )
        .unwrap();
        let headers = config.job_target(&config.targets[0]).headers;
        assert_eq!(
            headers.into_iter().collect::<Vec<_>>(),
            [
                ("X-Keep".to_owned(), "k".to_owned()),
                ("authorization".to_owned(), "Bearer ${env:B}".to_owned())
            ]
        );
    }

    #[test]
    fn private_targets_allowed_when_opted_in() {
        let json = r#"{"allow_private_networks":true,"targets":[{"id":"a","url":"http://127.0.0.1:8080/"}]}"#;
        assert!(errors(json).is_empty());
    }
}
