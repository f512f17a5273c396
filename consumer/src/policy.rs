//! What a job message may make the consumer do: only what the consumer's own config says.
//!
//! A message names a target by its ID. The consumer looks that ID up in *its own* config and
//! calls exactly that target: URL, method, header templates, body and timeout all come from the
//! config, never from the message. The message's copy of those fields must equal the config's; a
//! message that differs (written by someone with publish access, or produced from another version
//! of the config) is refused before any call and goes to the DLQ with a reason that names the
//! field, or the header (never a value). So the only `${env:…}` placeholders the consumer ever
//! resolves are those its own config declares for that target.

use std::collections::{BTreeSet, HashMap};

use fanout_shared::{Failure, FailureKind, JobMessage, JobTarget, PipelineConfig};

/// The consumer's own targets by ID, and the hosts it may call.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    targets: HashMap<String, JobTarget>,
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
            allowed_hosts: config.allowed_hosts(),
        }
    }

    /// The hosts a call or a redirect hop may reach: the config's target hosts and `hosts` keys.
    pub(crate) fn allowed_hosts(&self) -> &BTreeSet<String> {
        &self.allowed_hosts
    }

    /// The consumer's own target with this ID, if its config has one.
    pub(crate) fn own_target(&self, id: &str) -> Option<&JobTarget> {
        self.targets.get(id)
    }

    /// The target to call for `job`, from the consumer's config, or why the message is refused
    /// (a permanent failure: the DLQ's `failure_reason`).
    pub(crate) fn authorize(&self, job: &JobMessage) -> Result<&JobTarget, Failure> {
        let refused = |text: String| Failure::new(FailureKind::RefusedByConfig, text);
        let sent = &job.target;
        let host = sent.host().unwrap_or_default();
        if !self.allowed_hosts.contains(&host) {
            return Err(refused(format!(
                "host {host:?} is not in the consumer's allowed hosts"
            )));
        }
        let own = self.targets.get(&sent.id).ok_or_else(|| {
            refused(format!(
                "target id {:?} is not in the consumer's config",
                sent.id
            ))
        })?;
        let differences = differences(sent, own);
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
            Ok(&config.job_target(&config.targets[0]))
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
}
