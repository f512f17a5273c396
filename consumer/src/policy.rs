//! What a job message may make the consumer do: only what the consumer's own config says.
//!
//! A message names a target by its ID. The consumer looks that ID up in *its own* config and
//! calls exactly that target: URL, method, header templates, body and timeout all come from the
//! config, never from the message. The message's copy of those fields must equal the config's; a
//! message that differs (written by someone with publish access, or produced from another version
//! of the config) is refused before any call and goes to the DLQ with a reason that names the
//! field, or the header (never a value). So the only `${env:…}` placeholders the consumer ever
//! resolves are those its own config declares for that target.
//!
//! A job rendered from a row names its template and carries the row's values instead: the
//! consumer renders the call again from *its own* template of that name, so host, method,
//! headers and secrets come from its config, and the values can only fill the placeholders
//! (each encoded for its place, see `shared/src/template.rs`). The rendering must equal the
//! message's copy, as for a literal target. The consumer needs no copy of the list itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use fanout_shared::{
    CompiledTemplate, Failure, FailureKind, JobMessage, JobTarget, PipelineConfig,
};

/// The consumer's own targets by ID, and the hosts it may call.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    targets: HashMap<String, JobTarget>,
    templates: BTreeMap<String, CompiledTemplate>,
    allowed_hosts: BTreeSet<String>,
}

impl Policy {
    /// The policy of `config`: its targets (defaults applied) and its allowed hosts.
    pub(crate) fn new(config: &PipelineConfig) -> Self {
        let targets = config
            .job_targets()
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        Self {
            targets,
            templates: config.compiled_templates(),
            allowed_hosts: config.allowed_hosts(),
        }
    }

    /// The hosts a call or a redirect hop may reach: the config's target hosts and `hosts` keys.
    pub(crate) fn allowed_hosts(&self) -> &BTreeSet<String> {
        &self.allowed_hosts
    }

    /// The target a refused job is recorded under, if it is one of this consumer's jobs: a
    /// literal target of its config, or a job of one of its templates (recorded as the message
    /// rendered it: no call is made). Such a job is refused through its idempotency record, so
    /// its run counts it once; any other message is poison.
    pub(crate) fn refused_target(&self, job: &JobMessage) -> Option<JobTarget> {
        match &job.template {
            Some(call) if self.templates.contains_key(&call.name) => Some(job.target.clone()),
            Some(_) => None,
            None => self.targets.get(&job.target.id).cloned(),
        }
    }

    /// The target to call for `job`, from the consumer's config, or why the message is refused
    /// (a permanent failure: the DLQ's `failure_reason`).
    pub(crate) fn authorize(&self, job: &JobMessage) -> Result<JobTarget, Failure> {
        let refused = |text: String| Failure::new(FailureKind::RefusedByConfig, text);
        let sent = &job.target;
        let host = sent.host().unwrap_or_default();
        if !self.allowed_hosts.contains(&host) {
            return Err(refused(format!(
                "host {host:?} is not in the consumer's allowed hosts"
            )));
        }
        let own = match &job.template {
            Some(call) => {
                let template = self.templates.get(&call.name).ok_or_else(|| {
                    refused(format!(
                        "template {:?} is not in the consumer's config",
                        call.name
                    ))
                })?;
                template
                    .render(&sent.id, &call.values, &call.tick)
                    .map_err(|e| {
                        refused(format!(
                            "the consumer's template {:?} cannot render the job: {e}",
                            call.name
                        ))
                    })?
            }
            None => self.targets.get(&sent.id).cloned().ok_or_else(|| {
                refused(format!(
                    "target id {:?} is not in the consumer's config",
                    sent.id
                ))
            })?,
        };
        let differences = differences(sent, &own);
        if differences.is_empty() {
            Ok(own)
        } else {
            Err(refused(format!(
                "target {:?} differs from the consumer's config: {}",
                sent.id,
                differences.join("; ")
            )))
        }
    }
}

/// Each field (or header, by name) in which the message's target differs from the config's.
fn differences(sent: &JobTarget, own: &JobTarget) -> Vec<String> {
    let mut found = Vec::new();
    for (field, same) in [
        ("url", sent.url == own.url),
        ("method", sent.method == own.method),
        ("body", sent.body == own.body),
        ("timeout_ms", sent.timeout_ms == own.timeout_ms),
    ] {
        if !same {
            found.push(format!("field `{field}` differs"));
        }
    }
    for (name, value) in &sent.headers {
        match own.headers.get(name) {
            None => found.push(format!("header {name} is not in the config")),
            Some(own_value) if own_value != value => found.push(format!("header {name} differs")),
            Some(_) => {}
        }
    }
    for name in own
        .headers
        .keys()
        .filter(|name| !sent.headers.contains_key(*name))
    {
        found.push(format!("header {name} is missing"));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-literal-in-a-message";

    fn config() -> PipelineConfig {
        let text = r#"{"hosts":{"redirects.example.com":{"per_second":1}},
            "defaults":{"headers":{"Authorization":"Bearer ${env:API_TOKEN}"}},
            "targets":[{"id":"a","url":"https://api.example.com/a","method":"POST","body":{"n":1},"timeout_ms":2000}]}"#;
        PipelineConfig::parse(text, false, "policy.json").unwrap()
    }

    fn job(edit: impl FnOnce(&mut JobTarget)) -> JobMessage {
        let config = config();
        let mut target = config.job_target(&config.targets[0]);
        edit(&mut target);
        JobMessage::new("run", target, chrono::Utc::now())
    }

    #[test]
    fn a_message_equal_to_the_config_gets_the_configs_target() {
        let policy = Policy::new(&config());
        let config = config();
        assert_eq!(
            policy.authorize(&job(|_| {})),
            Ok(config.job_target(&config.targets[0]))
        );
        assert!(policy.allowed_hosts().contains("redirects.example.com"));
    }

    #[test]
    fn every_difference_is_named_without_values() {
        let policy = Policy::new(&config());
        let header =
            |name: &str, value: &str| job(|t| drop(t.headers.insert(name.into(), value.into())));
        let cases = [
            (
                header("X-Leak", "${env:AWS_SECRET_ACCESS_KEY}"),
                r#"target "a" differs from the consumer's config: header X-Leak is not in the config"#,
            ),
            (
                header("Authorization", SECRET),
                r#"target "a" differs from the consumer's config: header Authorization differs"#,
            ),
            (
                job(|t| t.headers.clear()),
                r#"target "a" differs from the consumer's config: header Authorization is missing"#,
            ),
            (
                job(|t| t.url = "https://api.example.com/other".into()),
                "field `url` differs",
            ),
            (
                job(|t| t.method = "DELETE".into()),
                "field `method` differs",
            ),
            (
                job(|t| t.body = Some(serde_json::json!({"n": 2}))),
                "field `body` differs",
            ),
            (
                job(|t| t.timeout_ms = 900_000),
                "field `timeout_ms` differs",
            ),
            (
                job(|t| t.id = "b".into()),
                r#"target id "b" is not in the consumer's config"#,
            ),
            (
                job(|t| t.url = "https://evil.example.net/a".into()),
                r#"host "evil.example.net" is not in the consumer's allowed hosts"#,
            ),
            (
                job(|t| {
                    t.method = "PUT".into();
                    t.headers.insert("X-Home".into(), "${env:HOME}".into());
                }),
                r#"target "a" differs from the consumer's config: field `method` differs; header X-Home is not in the config"#,
            ),
        ];
        for (message, expected) in cases {
            let failure = policy.authorize(&message).unwrap_err();
            assert_eq!(failure.kind(), FailureKind::RefusedByConfig);
            let reason = failure.to_string();
            assert!(
                reason.contains(expected),
                "{reason:?} should contain {expected:?}"
            );
            assert!(
                !reason.contains(SECRET) && !reason.contains("${env:"),
                "{reason:?} quotes a value"
            );
        }
    }

    fn templated(template: &str) -> PipelineConfig {
        let text = format!(
            r#"{{"templates":{{"sync":{template}}},
                "sources":[{{"name":"customers","template":"sync","id_field":"id","rows":[]}}]}}"#
        );
        PipelineConfig::parse(&text, false, "templated.json").unwrap()
    }

    /// The job the producer builds for row `values` with `config`'s template.
    fn row_job(config: &PipelineConfig, values: serde_json::Value) -> JobMessage {
        use fanout_shared::{TemplateCall, TickValues};
        let values = values.as_object().cloned().unwrap_or_default();
        let tick = TickValues::default();
        let target = config.compiled_templates()["sync"]
            .render("customers/c-1", &values, &tick)
            .unwrap();
        let mut job = JobMessage::new("run", target, chrono::Utc::now());
        job.template = Some(TemplateCall {
            name: "sync".into(),
            values,
            tick,
        });
        job
    }

    const SYNC: &str = r#"{"url":"https://api.example.com/customers/{id}/sync","method":"POST",
        "headers":{"Authorization":"Bearer ${env:API_TOKEN}"},"body":{"amount":"{amount}"}}"#;

    #[test]
    fn a_row_job_is_rendered_from_the_consumers_own_template() {
        let config = templated(SYNC);
        let policy = Policy::new(&config);
        let job = row_job(&config, serde_json::json!({"id": "c-1", "amount": 12.5}));
        let own = policy.authorize(&job).unwrap();
        assert_eq!(own.url, "https://api.example.com/customers/c-1/sync");
        assert_eq!(own.body, Some(serde_json::json!({"amount": 12.5})));
        assert!(policy.allowed_hosts().contains("api.example.com"));

        // Values edited after rendering (or a hand-written message): the consumer's rendering
        // no longer equals the message's copy.
        let mut forged = job.clone();
        forged.template.as_mut().unwrap().values["id"] = "../admin".into();
        let refused = policy.authorize(&forged).unwrap_err();
        assert_eq!(refused.kind(), FailureKind::RefusedByConfig);
        assert!(
            refused.to_string().contains("field `url` differs"),
            "{refused}"
        );

        // A message that swaps in a header of its own is refused by name.
        let mut extra = job.clone();
        extra
            .target
            .headers
            .insert("X-Home".into(), "${env:HOME}".into());
        assert!(policy
            .authorize(&extra)
            .unwrap_err()
            .to_string()
            .contains("header X-Home is not in the config"));
        assert_eq!(policy.refused_target(&extra), Some(extra.target.clone()));
    }

    #[test]
    fn a_template_that_differs_between_producer_and_consumer_is_refused_naming_the_field() {
        let producer = templated(SYNC);
        let job = row_job(&producer, serde_json::json!({"id": "c-1", "amount": 1}));
        let consumer = templated(&SYNC.replace("POST", "PUT"));
        let refused = Policy::new(&consumer).authorize(&job).unwrap_err();
        assert!(
            refused.to_string().contains("field `method` differs"),
            "{refused}"
        );
        let unknown = templated(SYNC).clone();
        let mut other = job.clone();
        other.template.as_mut().unwrap().name = "report".into();
        let policy = Policy::new(&unknown);
        assert!(policy
            .authorize(&other)
            .unwrap_err()
            .to_string()
            .contains("template \"report\" is not in the consumer's config"));
        assert_eq!(
            policy.refused_target(&other),
            None,
            "not one of its jobs: poison"
        );
    }
}
