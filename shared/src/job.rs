//! The job message: what the producer publishes and the consumer executes.
//!
//! A job is one HTTP call to one target for one scheduled run. Its ID is derived from the run
//! and the target, so publishing the same tick twice yields the same IDs and the consumer's
//! idempotency store makes the second copy harmless.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::target_rules::{self, FieldError, HTTP_METHODS, MAX_RUN_ID_LEN, MAX_TIMEOUT_MS};

/// The message schema version this build writes and reads.
pub(crate) const MESSAGE_VERSION: u32 = 1;

/// The SNS and SQS limit on one message (body plus attributes), in bytes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Message attribute holding the job's message ID.
pub const ATTR_MESSAGE_ID: &str = "message_id";
/// Message attribute holding the target host, so SNS filter policies can route by host.
pub const ATTR_TARGET_HOST: &str = "target_host";
/// Attribute the consumer sets on a dead-lettered message: why it failed for good.
pub const ATTR_FAILURE_REASON: &str = "failure_reason";
/// Attribute the consumer sets on a dead-lettered message: the target's HTTP status, if any.
pub const ATTR_STATUS_CODE: &str = "status_code";
/// Attribute the consumer sets on a dead-lettered message: the idempotency attempt that failed.
/// A replay carries it back, which lets the replayed copy (and only it) run again.
pub const ATTR_DEAD_LETTER_ATTEMPT: &str = "dead_letter_attempt";

/// Attribute of a rescheduled copy whose wait is longer than one SQS message can be delayed
/// (15 minutes): ms since the epoch before which the consumer reschedules it again instead of
/// calling. It can only delay a job, never make it do more.
pub const ATTR_NOT_BEFORE: &str = "not_before";

/// Attribute of a copy rescheduled because its job's successful call could not be recorded
/// (the store failed for the whole invocation): `ATTEMPT:HOLDER:STATUS`. The copy records that
/// success instead of calling the target again, but only while the job's record is still held
/// by that attempt under that holder token (a random number the claim and its copy alone
/// know), so a message that merely carries the attribute cannot mark a job done.
pub const ATTR_UNRECORDED_SUCCESS: &str = "unrecorded_success";

/// Attribute of a copy rescheduled because its acquire kept failing: the claim's holder token.
/// The acquire may have been applied with its answer lost; the copy claims with the same token,
/// so it takes that lock again instead of waiting for it to lapse. A token that matches no
/// lock changes nothing.
pub const ATTR_HOLDER: &str = "holder";

/// One versioned job, as JSON in the SNS/SQS message body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    /// Schema version, `MESSAGE_VERSION`.
    pub v: u32,
    /// Deterministic ID, [`message_id`]`(run_id, target.id)`: the idempotency key.
    pub message_id: String,
    /// The scheduled run this job belongs to.
    pub run_id: String,
    /// What to call.
    pub target: JobTarget,
    /// When the producer built the message.
    pub enqueued_at: DateTime<Utc>,
    /// For a job rendered from a row: the template and the values it was rendered with. The
    /// consumer renders the call again from *its own* template of that name with these values
    /// and refuses the job unless the result equals `target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateCall>,
}

/// The template a row's job was rendered from, and the values that filled its placeholders:
/// only the fields the template names, so a message carries no more of a row than its call
/// needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateCall {
    /// The template's name in the config.
    pub name: String,
    /// The row's values, by field.
    pub values: serde_json::Map<String, serde_json::Value>,
    /// The tick's values (`{tick.…}`).
    pub tick: crate::template::TickValues,
}

/// A target with the config defaults applied. Header values may hold `${env:NAME}` placeholders,
/// which only the consumer resolves, so secrets never travel in a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobTarget {
    /// The target's ID from the config, unique within it.
    pub id: String,
    /// `http` or `https` URL.
    pub url: String,
    /// Upper-case HTTP method.
    pub method: String,
    /// Request headers (placeholders unresolved).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// JSON request body, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// Per-call timeout.
    pub timeout_ms: u64,
}

impl JobTarget {
    /// The URL's host, lower-cased (without port).
    pub fn host(&self) -> Option<String> {
        url::Url::parse(&self.url)
            .ok()?
            .host_str()
            .map(str::to_ascii_lowercase)
    }

    /// Checks the fields a message carries, as the consumer must for untrusted input.
    /// Returns the offending field and why.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.id.is_empty() {
            return Err(FieldError::new("id", "is empty"));
        }
        target_rules::check_url(&self.url).map_err(|e| FieldError::new("url", e.to_string()))?;
        if !HTTP_METHODS.contains(&self.method.as_str()) {
            return Err(FieldError::new(
                "method",
                format!("unknown method {:?}", self.method),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(FieldError::new(
                "timeout_ms",
                format!("must be 1..={MAX_TIMEOUT_MS}, got {}", self.timeout_ms),
            ));
        }
        for (name, value) in &self.headers {
            target_rules::check_header(name, value)
                .map_err(|e| FieldError::new("headers", e.to_string()))?;
        }
        Ok(())
    }
}

/// A run ID [`check_run_id`] refuses: it would not fit the message size budget, or would
/// garble a log line or a ledger key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run_id {0:?} must be 1..={MAX_RUN_ID_LEN} printable characters")]
pub struct BadRunId(String);

/// Checks a run ID: non-empty, at most [`MAX_RUN_ID_LEN`] characters, no control characters.
/// The producer checks the IDs it publishes, the consumer those it reads.
pub fn check_run_id(run_id: &str) -> Result<(), BadRunId> {
    if run_id.is_empty()
        || run_id.chars().count() > MAX_RUN_ID_LEN
        || run_id.chars().any(char::is_control)
    {
        return Err(BadRunId(run_id.to_owned()));
    }
    Ok(())
}

/// The deterministic message ID of a job: the first 128 bits of SHA-256 over the run and target
/// IDs, in hex. Same tick + same target = same ID.
pub fn message_id(run_id: &str, target_id: &str) -> String {
    let mut hash = Sha256::new();
    // The separator keeps ("a", "bc") and ("ab", "c") apart; it cannot occur in a run ID.
    hash.update(run_id.as_bytes());
    hash.update([0u8]);
    hash.update(target_id.as_bytes());
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A message ready for SNS `PublishBatch` or SQS `SendMessage` (serializable, so the producer
/// can spool a large tick's messages once encoded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// The job's message ID (also the batch entry ID).
    pub id: String,
    /// JSON body.
    pub body: String,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
}

impl OutboundMessage {
    /// Bytes SNS counts against its 256 KiB limit: body plus attribute names, types and values.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + "String".len() + v.len())
                .sum::<usize>()
    }
}

impl JobMessage {
    /// Builds the job for `target` in run `run_id`.
    pub fn new(run_id: &str, target: JobTarget, enqueued_at: DateTime<Utc>) -> Self {
        Self {
            v: MESSAGE_VERSION,
            message_id: message_id(run_id, &target.id),
            run_id: run_id.to_owned(),
            target,
            enqueued_at,
            template: None,
        }
    }

    /// The message as published: JSON body plus `message_id` and `target_host` attributes.
    pub fn encode(&self) -> OutboundMessage {
        let mut attributes = BTreeMap::new();
        attributes.insert(ATTR_MESSAGE_ID.to_owned(), self.message_id.clone());
        if let Some(host) = self.target.host() {
            attributes.insert(ATTR_TARGET_HOST.to_owned(), host);
        }
        OutboundMessage {
            id: self.message_id.clone(),
            // A struct of strings, maps and a JSON value always serializes.
            body: serde_json::to_string(self).unwrap_or_default(),
            attributes,
        }
    }
}

/// Why an SQS body is not a job. Each is a permanent failure: the message goes to the DLQ with
/// this text as its reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than any message SNS or SQS can carry.
    #[error("body is {0} bytes, over the 256 KiB message limit")]
    TooLarge(usize),
    /// Not JSON at all.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// An SNS notification whose `Message` is missing or is not a job.
    #[error("SNS envelope: {0}")]
    Envelope(Box<DecodeError>),
    /// A `v` this build does not read.
    #[error("unsupported message version {0} (this consumer reads v{MESSAGE_VERSION})")]
    UnsupportedVersion(String),
    /// JSON, but not a valid job: a missing or mistyped field.
    #[error("invalid job: {0}")]
    Invalid(String),
}

/// Decodes an SQS body: a raw job (SNS raw message delivery) or an SNS notification envelope
/// whose `Message` is the job.
pub fn decode_body(body: &str) -> Result<JobMessage, DecodeError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(body.len()));
    }
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let is_envelope = value.get("Type").and_then(|t| t.as_str()) == Some("Notification");
    if is_envelope {
        let inner = value
            .get("Message")
            .and_then(|m| m.as_str())
            .ok_or_else(|| {
                DecodeError::Envelope(Box::new(DecodeError::Invalid(
                    "no string field `Message`".into(),
                )))
            })?;
        let inner: serde_json::Value = serde_json::from_str(inner)
            .map_err(|e| DecodeError::Envelope(Box::new(DecodeError::NotJson(e.to_string()))))?;
        return decode_job(inner).map_err(|e| DecodeError::Envelope(Box::new(e)));
    }
    decode_job(value)
}

fn decode_job(value: serde_json::Value) -> Result<JobMessage, DecodeError> {
    match value.get("v") {
        None => return Err(DecodeError::Invalid("missing field `v`".into())),
        Some(v) if v.as_u64() != Some(u64::from(MESSAGE_VERSION)) => {
            return Err(DecodeError::UnsupportedVersion(v.to_string()))
        }
        Some(_) => {}
    }
    let job: JobMessage =
        serde_json::from_value(value).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    check_run_id(&job.run_id).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    job.target
        .check()
        .map_err(|e| DecodeError::Invalid(format!("target.{e}")))?;
    if job.message_id != message_id(&job.run_id, &job.target.id) {
        return Err(DecodeError::Invalid(
            "message_id does not match run_id and target.id".into(),
        ));
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: &str) -> JobTarget {
        JobTarget {
            id: id.into(),
            url: "https://api.example.com/users/1".into(),
            method: "GET".into(),
            headers: BTreeMap::new(),
            body: None,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn message_ids_are_deterministic_per_tick_and_target() {
        assert_eq!(
            message_id("rule@2026-11-21T10:00:00Z", "a"),
            message_id("rule@2026-11-21T10:00:00Z", "a")
        );
        assert_ne!(
            message_id("rule@2026-11-21T10:00:00Z", "a"),
            message_id("rule@2026-11-21T10:15:00Z", "a")
        );
        assert_ne!(message_id("r", "ab"), message_id("ra", "b"));
        assert_eq!(message_id("r", "a").len(), 32);
    }

    #[test]
    fn encode_then_decode_round_trips_raw_and_enveloped() {
        let job = JobMessage::new("run-1", target("user-1"), Utc::now());
        let out = job.encode();
        assert_eq!(out.attributes[ATTR_MESSAGE_ID], job.message_id);
        assert_eq!(out.attributes[ATTR_TARGET_HOST], "api.example.com");
        assert_eq!(decode_body(&out.body).unwrap(), job);
        // SNS envelopes are pretty-printed by some emulators: parse, never string-match.
        let envelope = serde_json::to_string_pretty(&serde_json::json!({
            "Type": "Notification", "MessageId": "x", "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Message": out.body,
        }))
        .unwrap();
        assert_eq!(decode_body(&envelope).unwrap(), job);
    }

    #[test]
    fn poison_bodies_have_precise_reasons() {
        let job = JobMessage::new("run-1", target("user-1"), Utc::now());
        let mut wrong_version = serde_json::to_value(&job).unwrap();
        wrong_version["v"] = 2.into();
        let mut wrong_type = serde_json::to_value(&job).unwrap();
        wrong_type["target"]["timeout_ms"] = "soon".into();
        let mut missing = serde_json::to_value(&job).unwrap();
        missing.as_object_mut().unwrap().remove("run_id");
        let mut forged = serde_json::to_value(&job).unwrap();
        forged["message_id"] = "0".repeat(32).into();
        let long_run = serde_json::to_value(JobMessage::new(
            &"r".repeat(MAX_RUN_ID_LEN + 1),
            target("user-1"),
            Utc::now(),
        ))
        .unwrap();
        let mut userinfo = serde_json::to_value(&job).unwrap();
        userinfo["target"]["url"] = "https://u:s3cret@api.example.com/users/1".into();
        let mut framing = serde_json::to_value(&job).unwrap();
        framing["target"]["headers"] = serde_json::json!({"Transfer-Encoding": "chunked"});
        let broken_envelope = r#"{"Type":"Notification","Message":"{not json"}"#;
        let cases = [
            ("not json", "body is not JSON".to_owned()),
            (
                &"x".repeat(MAX_MESSAGE_BYTES + 1),
                "over the 256 KiB".to_owned(),
            ),
            (
                &wrong_version.to_string(),
                "unsupported message version 2".to_owned(),
            ),
            (
                &wrong_type.to_string(),
                "invalid job: invalid type".to_owned(),
            ),
            (&missing.to_string(), "missing field `run_id`".to_owned()),
            (&forged.to_string(), "message_id does not match".to_owned()),
            (
                &long_run.to_string(),
                "invalid job: run_id \"rrrr".to_owned(),
            ),
            (
                &userinfo.to_string(),
                "invalid job: target.url: credentials (user:password@) in \"https://***@api"
                    .to_owned(),
            ),
            (
                &framing.to_string(),
                "invalid job: target.headers: header Transfer-Encoding frames or routes".to_owned(),
            ),
            (broken_envelope, "SNS envelope: body is not JSON".to_owned()),
            (r#"{"v":1}"#, "invalid job".to_owned()),
        ];
        for (body, expected) in cases {
            let err = decode_body(body).unwrap_err().to_string();
            assert!(
                err.contains(&expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }
}
