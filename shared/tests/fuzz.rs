//! Bounded fuzzing (proptest, 1,000 cases each, under a second in CI) of the two parsers that
//! read untrusted or hand-written input: the consumer's message decoder and the config loader.
//! Neither may panic, and what the config loader accepts the consumer must accept.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use chrono::{TimeZone, Utc};
use fanout_shared::{decode_body, JobMessage, JobTarget, PipelineConfig};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn valid_job() -> JobMessage {
    let target = JobTarget {
        id: "user-1".into(),
        url: "https://api.example.com/users/1".into(),
        method: "POST".into(),
        headers: [("Authorization".to_owned(), "Bearer ${env:TOKEN}".to_owned())].into(),
        body: Some(json!({"sync": true})),
        timeout_ms: 3000,
    };
    JobMessage::new(
        "rule@2026-11-21T10:00:00Z",
        target,
        Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
    )
}

/// Where a mutation may land in a job's JSON.
const FIELDS: &[&[&str]] = &[
    &["v"],
    &["message_id"],
    &["run_id"],
    &["enqueued_at"],
    &["target"],
    &["target", "id"],
    &["target", "url"],
    &["target", "method"],
    &["target", "headers"],
    &["target", "headers", "Authorization"],
    &["target", "body"],
    &["target", "timeout_ms"],
    &["extra"],
];

fn envelope(body: &str) -> String {
    json!({"Type": "Notification", "MessageId": "m", "Message": body}).to_string()
}

/// A config target's pieces: id, url, method, headers, timeout, body.
type TargetParts = (
    &'static str,
    &'static str,
    Option<&'static str>,
    std::collections::BTreeMap<String, String>,
    Option<u64>,
    Option<Value>,
);

fn target_parts() -> impl Strategy<Value = TargetParts> {
    const URLS: &[&str] = &[
        "https://api.example.com/x",
        "http://api.example.com:8080/p?q=1",
        "https://API.Example.COM/",
        "ftp://x.example.com/",
        "not a url",
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://169.254.169.254/",
        "http://localhost/",
        "https://xn--bcher-kva.example/",
        "http://10.0.0.1/",
        "http://[::ffff:a9fe:a9fe]/",
    ];
    let header_values = prop_oneof![
        ".{0,10}",
        Just("${env:TOKEN}".to_owned()),
        Just("${env:".to_owned()),
        Just("${x}".to_owned())
    ];
    (
        prop::sample::select(&["a", "b", "c", "", "user-1"][..]),
        prop::sample::select(URLS),
        prop::option::of(prop::sample::select(
            &["get", "POST", "FETCH", "delete", ""][..],
        )),
        prop::collection::btree_map("[A-Za-z-]{0,6}", header_values, 0..3),
        prop::option::of(prop_oneof![
            Just(0u64),
            Just(1),
            Just(900_000),
            Just(900_001),
            any::<u64>()
        ]),
        prop::option::of(any_json()),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn decoder_never_panics_on_any_text(body in ".{0,300}") {
        let _ = decode_body(&body);
        let _ = decode_body(&envelope(&body));
    }

    #[test]
    fn decoder_never_panics_on_any_json_and_what_it_accepts_round_trips(value in any_json()) {
        if let Ok(job) = decode_body(&value.to_string()) {
            prop_assert_eq!(decode_body(&job.encode().body).unwrap(), job);
        }
    }

    /// A valid job with one field replaced (or removed): a verdict that names what is wrong,
    /// the same raw and inside an SNS envelope.
    #[test]
    fn mutated_jobs_get_the_same_verdict_raw_and_enveloped(field in prop::sample::select(FIELDS), value in prop::option::of(any_json())) {
        let mut job = serde_json::to_value(valid_job()).unwrap();
        let (last, parents) = field.split_last().unwrap();
        if let Some(Value::Object(map)) = parents.iter().try_fold(&mut job, |v, k| v.get_mut(*k)) {
            match value {
                Some(v) => map.insert((*last).to_owned(), v),
                None => map.remove(*last),
            };
        }
        let body = job.to_string();
        match (decode_body(&body), decode_body(&envelope(&body))) {
            (Ok(raw), Ok(wrapped)) => {
                prop_assert!(raw.target.check().is_ok());
                prop_assert_eq!(raw, wrapped);
            }
            (Err(raw), Err(wrapped)) => {
                prop_assert!(!raw.to_string().is_empty());
                prop_assert_eq!(wrapped.to_string(), format!("SNS envelope: {raw}"));
            }
            (raw, wrapped) => prop_assert!(false, "raw {:?} but enveloped {:?}", raw, wrapped),
        }
    }

    #[test]
    fn config_loader_never_panics_on_any_text(text in ".{0,300}", yaml in any::<bool>()) {
        if let Err(errors) = PipelineConfig::parse(&text, yaml, "fuzz.json") {
            prop_assert!(errors.0.iter().all(|e| e.to_string().starts_with("fuzz.json: ")));
        }
    }

    /// Configs built from good and bad pieces: every error names the file and where in it, and
    /// every accepted target makes a job message the consumer decodes to the same job.
    #[test]
    fn accepted_configs_make_jobs_the_consumer_accepts(
        targets in prop::collection::vec(target_parts(), 0..5),
        allow_private in any::<bool>(),
        rate in prop::option::of((prop_oneof![Just(-1.0), Just(0.0), Just(0.5), Just(50.0), any::<f64>()], any::<u32>())),
    ) {
        let targets: Vec<Value> = targets
            .into_iter()
            .map(|(id, url, method, headers, timeout_ms, body)| json!({"id": id, "url": url, "method": method, "headers": headers, "timeout_ms": timeout_ms, "body": body}))
            .collect();
        let mut config = json!({"allow_private_networks": allow_private, "targets": targets});
        if let Some((per_second, burst)) = rate {
            config["rate_limit"] = json!({"per_second": per_second, "burst": burst});
        }
        match PipelineConfig::parse(&config.to_string(), false, "fuzz.json") {
            Ok(parsed) => {
                for target in parsed.job_targets() {
                    prop_assert!(target.host().is_some_and(|h| parsed.allowed_hosts().contains(&h)));
                    let job = JobMessage::new("rule@2026-11-21T10:00:00Z", target, Utc::now());
                    prop_assert_eq!(decode_body(&job.encode().body).unwrap(), job);
                }
            }
            Err(errors) => {
                for e in &errors.0 {
                    let line = e.to_string();
                    prop_assert!(line.starts_with("fuzz.json: "), "{}", line);
                    let located = e.location.is_empty() || e.location.starts_with("targets[") || e.location == "rate_limit";
                    prop_assert!(located, "{}", line);
                }
            }
        }
    }
}
