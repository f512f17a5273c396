//! The consumer's batch handler against the embedded backend and a local target server:
//! every behaviour issue #2 names, with events built from JSON as Lambda sends them.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use fanout_shared::metrics::Metric;
use std::time::Duration;

use fanout_consumer::{Consumer, Settings};
use fanout_shared::embedded::EmbeddedBackend;
use fanout_shared::{
    Acquire, Claim, IdempotencyStore, JobMessage, PipelineConfig, Queue, Status,
    ATTR_FAILURE_REASON, ATTR_STATUS_CODE,
};
use fanout_testkit::target_server::TargetServer;
use serde_json::json;

mod common;
use common::{backends, config, event, harness, in_seconds, job, Harness};

fn failures(report: &fanout_consumer::BatchReport) -> Vec<String> {
    report
        .response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

/// Copies rescheduled into the job queue (not yet visible).
async fn delayed(h: &Harness) -> u64 {
    h.backend.queue("jobs").depth().await.unwrap().delayed
}

async fn dlq_messages(h: &Harness) -> Vec<fanout_shared::QueueMessage> {
    h.backend
        .queue("jobs-dlq")
        .receive(10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
}

#[tokio::test]
async fn success_sends_idempotency_key_and_duplicate_is_skipped() {
    let h = harness(
        config(json!([{"id": "a", "url": "BASE/ok/a"}])),
        Settings::default(),
    )
    .await;
    let job = job("run-1", "a", &format!("{}/ok/a", h.server.base_url()));
    let body = job.encode().body;
    // Two copies in one batch: one calls; the other finds it settled, or still locked and comes back.
    let report = h
        .consumer
        .handle_batch(event(&[body.clone(), body.clone()]), in_seconds(10))
        .await;
    assert_eq!(report.metrics.total(Metric::Succeeded), 1.0);
    assert_eq!(
        report.metrics.total(Metric::DuplicatesSkipped)
            + report.metrics.total(Metric::LockedElsewhere),
        1.0
    );
    assert!(
        failures(&report).is_empty(),
        "a locked copy is rescheduled, not handed back"
    );
    assert_eq!(
        delayed(&h).await as f64,
        report.metrics.total(Metric::LockedElsewhere)
    );
    // A copy delivered later is skipped outright.
    let again = h
        .consumer
        .handle_batch(event(&[body]), in_seconds(10))
        .await;
    assert_eq!(again.metrics.total(Metric::DuplicatesSkipped), 1.0);
    let records = h.server.records();
    assert_eq!(records.len(), 1, "one outbound call for three copies");
    assert_eq!(
        records[0].idempotency_key.as_deref(),
        Some(job.message_id.as_str())
    );
}

#[tokio::test]
async fn copies_in_one_batch_run_in_turn_so_the_later_one_is_acked_not_bounced() {
    let h = harness(
        config(json!([{"id": "a", "url": "BASE/slow/a?ms=50"}, {"id": "b", "url": "BASE/ok/b"}])),
        Settings::default(),
    )
    .await;
    let a = job(
        "run-1",
        "a",
        &format!("{}/slow/a?ms=50", h.server.base_url()),
    )
    .encode()
    .body;
    let b = job("run-1", "b", &format!("{}/ok/b", h.server.base_url()))
        .encode()
        .body;
    // A slow call keeps the first copy's lock live while the batch's other records run.
    let report = h
        .consumer
        .handle_batch(event(&[a.clone(), b, a]), in_seconds(10))
        .await;
    assert!(
        failures(&report).is_empty(),
        "no copy goes back to the queue: {:?}",
        failures(&report)
    );
    assert_eq!(
        (
            report.metrics.total(Metric::Succeeded),
            report.metrics.total(Metric::DuplicatesSkipped)
        ),
        (2.0, 1.0)
    );
    assert_eq!(h.server.stats().calls, 2, "one call per job");
}

#[tokio::test]
async fn live_lock_reschedules_the_copy_and_expired_lock_is_reacquired() {
    let h = harness(
        config(json!([{"id": "a", "url": "BASE/ok/a"}])),
        Settings::default(),
    )
    .await;
    let job = job("run-1", "a", &format!("{}/ok/a", h.server.base_url()));
    let store = h.backend.store();
    let claim = |now_ms, lock_until_ms| Claim {
        message_id: &job.message_id,
        run_id: "run-1",
        target_id: "a",
        now_ms,
        lock_until_ms,
        expiration_s: 0,
        replay_of: None,
        holder: Claim::new_holder(),
    };
    // Another consumer holds a live lock.
    assert!(matches!(
        store
            .acquire(&claim(fanout_shared::now_ms(), in_seconds(60)))
            .await
            .unwrap(),
        Acquire::Acquired { .. }
    ));
    let report = h
        .consumer
        .handle_batch(event(&[job.encode().body]), in_seconds(10))
        .await;
    assert!(
        failures(&report).is_empty(),
        "acked: a copy comes back when the lock lapses, and no receive is used up"
    );
    assert_eq!(
        (
            report.metrics.total(Metric::LockedElsewhere),
            delayed(&h).await
        ),
        (1.0, 1)
    );
    assert_eq!(h.server.stats().calls, 0);
    // Its lock expires (it crashed): the next delivery takes over and calls.
    let other = Claim {
        message_id: "other",
        ..claim(0, 0)
    };
    store.acquire(&other).await.unwrap();
    let expired_store = h.backend.store();
    let record = &expired_store
        .get_many(std::slice::from_ref(&job.message_id))
        .await
        .unwrap()[0];
    assert_eq!(record.status, Status::InProgress);
    // Re-take it with a lock that is already over, as a crashed holder leaves it.
    assert!(matches!(
        store
            .acquire(&claim(in_seconds(120), in_seconds(-1)))
            .await
            .unwrap(),
        Acquire::Acquired { .. }
    ));
    let report = h
        .consumer
        .handle_batch(event(&[job.encode().body]), in_seconds(10))
        .await;
    assert!(failures(&report).is_empty());
    assert_eq!(h.server.stats().effects, 1);
    let record = &store
        .get_many(std::slice::from_ref(&job.message_id))
        .await
        .unwrap()[0];
    assert_eq!((record.status, record.attempts), (Status::Completed, 3));
}

#[tokio::test]
async fn poison_message_goes_to_the_dlq_with_its_reason() {
    let h = harness(
        config(json!([{"id": "a", "url": "BASE/ok/a"}])),
        Settings::default(),
    )
    .await;
    let report = h
        .consumer
        .handle_batch(
            event(&["{not json".into(), r#"{"v":9}"#.into()]),
            in_seconds(10),
        )
        .await;
    assert!(failures(&report).is_empty(), "poison is acked, not retried");
    let mut reasons: Vec<String> = dlq_messages(&h)
        .await
        .iter()
        .map(|m| m.attributes[ATTR_FAILURE_REASON].clone())
        .collect();
    reasons.sort();
    assert!(
        reasons[0].starts_with("poison message: body is not JSON"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("poison message: unsupported message version 9"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn client_error_is_dead_lettered_once_and_server_error_is_retried_after_a_backoff() {
    let h = harness(config(json!([{"id": "bad", "url": "BASE/bad/x"}, {"id": "flaky", "url": "BASE/flaky/x?fail=9"}])), Settings::default()).await;
    let base = h.server.base_url();
    let bad = job("run-1", "bad", &format!("{base}/bad/x"));
    let flaky = job("run-1", "flaky", &format!("{base}/flaky/x?fail=9"));
    let report = h
        .consumer
        .handle_batch(
            event(&[bad.encode().body, flaky.encode().body]),
            in_seconds(10),
        )
        .await;
    assert!(
        failures(&report).is_empty(),
        "the 500's retry is a delayed copy, not a redelivery"
    );
    assert_eq!(
        (report.metrics.total(Metric::Retried), delayed(&h).await),
        (1.0, 1),
        "only the 500 is retried"
    );
    let dlq = dlq_messages(&h).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].attributes[ATTR_FAILURE_REASON],
        "HTTP 400 Bad Request"
    );
    assert_eq!(dlq[0].attributes[ATTR_STATUS_CODE], "400");
    let records = h
        .backend
        .store()
        .get_many(&[bad.message_id.clone(), flaky.message_id.clone()])
        .await
        .unwrap();
    let status = |id: &str| {
        records
            .iter()
            .find(|r| r.message_id == id)
            .map(|r| r.status)
    };
    assert_eq!(status(&bad.message_id), Some(Status::DeadLettered));
    assert_eq!(status(&flaky.message_id), Some(Status::Failed));
    assert_eq!(
        records
            .iter()
            .find(|r| r.message_id == flaky.message_id)
            .map(|r| r.failures),
        Some(1)
    );
    // A redelivered copy of the 400 is acked without a second call.
    let again = h
        .consumer
        .handle_batch(event(&[bad.encode().body]), in_seconds(10))
        .await;
    assert!(failures(&again).is_empty());
    assert_eq!(
        h.server
            .records()
            .iter()
            .filter(|r| r.path.starts_with("/bad"))
            .count(),
        1
    );
}

#[tokio::test]
async fn timeout_is_transient() {
    let h = harness(
        config(json!([{"id": "slow", "url": "BASE/slow/x?ms=3000", "timeout_ms": 100}])),
        Settings::default(),
    )
    .await;
    let mut slow = job(
        "run-1",
        "slow",
        &format!("{}/slow/x?ms=3000", h.server.base_url()),
    );
    slow.target.timeout_ms = 100;
    let report = h
        .consumer
        .handle_batch(event(&[slow.encode().body]), in_seconds(10))
        .await;
    assert_eq!(
        (report.metrics.total(Metric::Retried), delayed(&h).await),
        (1.0, 1)
    );
    let record = &h
        .backend
        .store()
        .get_many(&[slow.message_id])
        .await
        .unwrap()[0];
    assert_eq!(
        (record.last_error.as_deref(), record.failures),
        (Some("timeout after 100 ms"), 1)
    );
}

#[tokio::test]
async fn rate_wait_past_the_deadline_defers_instead_of_waiting() {
    let mut targets = vec![];
    for i in 0..3 {
        targets.push(json!({"id": format!("t{i}"), "url": format!("BASE/ok/{i}")}));
    }
    let mut cfg = config(json!(targets));
    cfg["rate_limit"] = json!({"per_second": 0.5});
    let settings = Settings {
        deadline_margin: Duration::from_millis(100),
        ..Settings::default()
    };
    let h = harness(cfg, settings).await;
    let bodies: Vec<String> = (0..3)
        .map(|i| {
            job(
                "run-1",
                &format!("t{i}"),
                &format!("{}/ok/{i}", h.server.base_url()),
            )
            .encode()
            .body
        })
        .collect();
    let started = std::time::Instant::now();
    let report = h.consumer.handle_batch(event(&bodies), in_seconds(1)).await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "returned before the deadline: {:?}",
        started.elapsed()
    );
    assert!(
        failures(&report).is_empty(),
        "waiting never uses up a receive"
    );
    assert_eq!(
        (report.metrics.total(Metric::Deferred), delayed(&h).await),
        (2.0, 2),
        "one permit per 2 s: two records rescheduled"
    );
    assert_eq!(h.server.stats().calls, 1);
    let records = h
        .backend
        .store()
        .get_many(&[
            job("run-1", "t1", "").message_id,
            job("run-1", "t2", "").message_id,
        ])
        .await
        .unwrap();
    assert!(
        records.is_empty(),
        "a job waiting for its permit never touches its idempotency record"
    );
}

#[tokio::test]
async fn ssrf_guard_refuses_loopback_names_literals_and_unlisted_hosts() {
    let server = TargetServer::start().await.unwrap();
    let port = server.base_url().rsplit(':').next().unwrap().to_owned();
    // Private networks not allowed: the config may not even name 127.0.0.1 ...
    let bad_config =
        json!({"targets": [{"id": "a", "url": format!("http://127.0.0.1:{port}/ok")}]});
    let err = PipelineConfig::parse(&bad_config.to_string(), false, "f.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("loopback"), "{err}");
    // ... and queued jobs naming such hosts are refused by the consumer: a name after DNS (the
    // config may name it), literals because no target of the config is theirs.
    let Some(hostname) = fanout_testkit::target_server::loopback_hostname().await else {
        panic!("this test needs the machine's host name to resolve to loopback (/etc/hosts)");
    };
    let hosts = json!({ "127.0.0.1": {"per_second": 100} });
    let targets =
        json!([{"id": "x", "url": format!("http://{hostname}:{port}/ok"), "timeout_ms": 2000}]);
    let cfg = json!({"hosts": hosts, "targets": targets});
    let backend = EmbeddedBackend::open(":memory:".as_ref()).unwrap();
    let config = PipelineConfig::parse(&cfg.to_string(), false, "f.json").unwrap();
    let consumer =
        Consumer::new(&config, backends(&backend, "q", "dlq"), Settings::default()).unwrap();
    let by_name = job("r", "x", &format!("http://{hostname}:{port}/ok"));
    let literal = job("r", "y", &format!("http://127.0.0.1:{port}/ok"));
    let metadata = job("r", "z", "http://169.254.169.254/latest/meta-data/");
    let report = consumer
        .handle_batch(
            event(&[
                literal.encode().body,
                metadata.encode().body,
                by_name.encode().body,
            ]),
            in_seconds(10),
        )
        .await;
    assert!(
        failures(&report).is_empty(),
        "refusals are permanent: acked, not retried"
    );
    let dlq = backend
        .queue("dlq")
        .receive(10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    let mut reasons: Vec<&str> = dlq
        .iter()
        .map(|m| m.attributes[ATTR_FAILURE_REASON].as_str())
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("host \"169.254.169.254\" is not in the consumer's allowed hosts")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"target id \"y\" is not in the consumer's config"),
        "{reasons:?}"
    );
    let dns = format!("refused: {hostname} resolves to a loopback address");
    assert!(reasons.iter().any(|r| *r == dns), "{reasons:?}");
    assert_eq!(server.stats().calls, 0, "nothing reached the target");
}

#[tokio::test]
async fn env_header_is_resolved_at_call_time_and_absent_from_the_message() {
    std::env::set_var("FANOUT_TEST_API_TOKEN", "tok-42-secret");
    let targets = json!([{"id": "a", "url": "BASE/ok/a", "headers": {"Authorization": "Bearer ${env:FANOUT_TEST_API_TOKEN}"}}]);
    let h = harness(config(targets.clone()), Settings::default()).await;
    let cfg = PipelineConfig::parse(
        &config(targets)
            .to_string()
            .replace("BASE", &h.server.base_url()),
        false,
        "t.json",
    )
    .unwrap();
    let message =
        JobMessage::new("run-1", cfg.job_target(&cfg.targets[0]), chrono::Utc::now()).encode();
    assert!(!message.body.contains("tok-42-secret"));
    assert!(message.body.contains("${env:FANOUT_TEST_API_TOKEN}"));
    let report = h
        .consumer
        .handle_batch(event(&[message.body]), in_seconds(10))
        .await;
    assert!(failures(&report).is_empty());
    assert_eq!(
        h.server.records()[0].authorization.as_deref(),
        Some("Bearer tok-42-secret")
    );
}

#[tokio::test]
async fn missing_env_var_is_a_permanent_failure_naming_it() {
    let targets = json!([{"id": "a", "url": "BASE/ok/a", "headers": {"X-Key": "${env:FANOUT_TEST_NEVER_SET}"}}]);
    let h = harness(config(targets.clone()), Settings::default()).await;
    let cfg = PipelineConfig::parse(
        &config(targets)
            .to_string()
            .replace("BASE", &h.server.base_url()),
        false,
        "t.json",
    )
    .unwrap();
    let message =
        JobMessage::new("run-1", cfg.job_target(&cfg.targets[0]), chrono::Utc::now()).encode();
    h.consumer
        .handle_batch(event(&[message.body]), in_seconds(10))
        .await;
    let dlq = dlq_messages(&h).await;
    assert_eq!(
        dlq[0].attributes[ATTR_FAILURE_REASON],
        "header X-Key: environment variable FANOUT_TEST_NEVER_SET is not set"
    );
}

#[tokio::test]
async fn every_kind_of_poison_is_dead_lettered_with_a_precise_reason_and_acked() {
    let h = harness(
        config(json!([{"id": "a", "url": "BASE/ok/a"}])),
        Settings::default(),
    )
    .await;
    let valid =
        serde_json::to_value(job("run-1", "a", &format!("{}/ok/a", h.server.base_url()))).unwrap();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = valid.clone();
        edit(&mut v);
        v.to_string()
    };
    let envelope = |message: serde_json::Value| {
        json!({"Type": "Notification", "MessageId": "m", "Message": message}).to_string()
    };
    let huge = format!(r#"{{"v":1,"pad":"{}"}}"#, "x".repeat(256 * 1024));
    let cases: Vec<(String, String)> = vec![
        (
            "{not json".into(),
            "poison message: body is not JSON: key must be a string at line 1 column 2".into(),
        ),
        (
            String::new(),
            "poison message: body is not JSON: EOF while parsing a value".into(),
        ),
        (
            "42".into(),
            "poison message: invalid job: missing field `v`".into(),
        ),
        (
            with(&|v| v["v"] = json!(2)),
            "poison message: unsupported message version 2 (this consumer reads v1)".into(),
        ),
        (
            with(&|v| v["v"] = json!("1")),
            "poison message: unsupported message version \"1\"".into(),
        ),
        (
            with(&|v| drop(v.as_object_mut().unwrap().remove("run_id"))),
            "poison message: invalid job: missing field `run_id`".into(),
        ),
        (
            with(&|v| drop(v["target"].as_object_mut().unwrap().remove("url"))),
            "poison message: invalid job: missing field `url`".into(),
        ),
        (
            with(&|v| v["target"]["timeout_ms"] = json!("soon")),
            "poison message: invalid job: invalid type: string \"soon\", expected u64".into(),
        ),
        (
            with(&|v| v["target"]["headers"] = json!(["Authorization"])),
            "poison message: invalid job: invalid type: sequence, expected a map".into(),
        ),
        (
            with(&|v| v["extra"] = json!(true)),
            "poison message: invalid job: unknown field `extra`".into(),
        ),
        (
            with(&|v| v["target"]["url"] = json!("ftp://x.example.com/")),
            "poison message: invalid job: target.url: scheme \"ftp\" is not allowed".into(),
        ),
        (
            with(&|v| v["message_id"] = json!("0".repeat(32))),
            "poison message: invalid job: message_id does not match run_id and target.id".into(),
        ),
        (
            huge.clone(),
            format!(
                "poison message: body is {} bytes, over the 256 KiB message limit",
                huge.len()
            ),
        ),
        (
            envelope(json!("{broken")),
            "poison message: SNS envelope: body is not JSON: key must be a string".into(),
        ),
        (
            envelope(json!(with(&|v| v["v"] = json!(7)))),
            "poison message: SNS envelope: unsupported message version 7".into(),
        ),
        (
            envelope(json!({"v": 1})),
            "poison message: SNS envelope: invalid job: no string field `Message`".into(),
        ),
    ];
    let bodies: Vec<String> = cases.iter().map(|(body, _)| body.clone()).collect();
    for round in 0..2 {
        // A redelivered poison message is dead-lettered again, never retried: no loop.
        let report = h
            .consumer
            .handle_batch(event(&bodies), in_seconds(10))
            .await;
        assert!(
            failures(&report).is_empty(),
            "round {round}: poison is acked, not retried"
        );
        assert_eq!(
            report.metrics.total(Metric::DeadLettered),
            cases.len() as f64
        );
    }
    let dlq = h.backend.queue("jobs-dlq");
    let mut seen = Vec::new();
    loop {
        let batch = dlq
            .receive(10, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        seen.extend(batch);
    }
    assert_eq!(seen.len(), 2 * cases.len());
    for (body, expected) in &cases {
        let copies: Vec<_> = seen.iter().filter(|m| &m.body == body).collect();
        assert_eq!(
            copies.len(),
            2,
            "the body is kept as sent, for inspection: {expected}"
        );
        let reason = &copies[0].attributes[ATTR_FAILURE_REASON];
        assert!(
            reason.starts_with(expected.as_str()),
            "{reason:?} should start with {expected:?}"
        );
    }
    assert_eq!(
        h.server.stats().calls,
        0,
        "no poison message reaches a target"
    );
}

#[tokio::test]
async fn transient_failures_back_off_and_give_up_after_max_attempts() {
    let mut cfg = config(json!([{"id": "flaky", "url": "BASE/flaky/x?fail=9"}]));
    cfg["retry"] = json!({"base_ms": 20, "cap_ms": 50, "max_attempts": 3});
    let h = harness(cfg, Settings::default()).await;
    let flaky = job(
        "run-1",
        "flaky",
        &format!("{}/flaky/x?fail=9", h.server.base_url()),
    );
    let mut report = h
        .consumer
        .handle_batch(event(&[flaky.encode().body]), in_seconds(10))
        .await;
    let queue = h.backend.queue("jobs");
    for _ in 0..2 {
        // The rescheduled copy comes back after its backoff (at most 50 ms here).
        let copies = queue
            .receive(10, Duration::from_secs(30), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(copies.len(), 1, "one copy per retry");
        assert_eq!(
            copies[0].receive_count, 1,
            "a fresh copy: retries use up no receives"
        );
        report = h
            .consumer
            .handle_batch(event(&[copies[0].body.clone()]), in_seconds(10))
            .await;
    }
    assert_eq!(report.metrics.total(Metric::DeadLettered), 1.0);
    assert_eq!(
        h.server.stats().calls,
        3,
        "max_attempts calls, then the DLQ"
    );
    let dlq = dlq_messages(&h).await;
    assert_eq!(
        dlq[0].attributes[ATTR_FAILURE_REASON],
        "transient failure on all 3 attempts, the last: HTTP 500 Internal Server Error"
    );
    assert_eq!(delayed(&h).await, 0, "no further copy scheduled");
}

/// The embedded fleet, except that the stored states of `garbled` hosts do not parse (as a
/// hand-edited or incompatible item would): the backends' own parsing is tested in `shared`.
struct GarbledFleet {
    inner: fanout_shared::embedded::EmbeddedFleet,
    garbled: String,
}

#[async_trait::async_trait]
impl fanout_shared::fleet::FleetStore for GarbledFleet {
    async fn read_host_states(
        &self,
        hosts: &[String],
    ) -> Result<fanout_shared::fleet::HostStates, fanout_shared::BackendError> {
        let mut found = self.inner.read_host_states(hosts).await?;
        found.states.retain(|(h, _)| *h != self.garbled);
        if hosts.contains(&self.garbled) {
            found.unreadable.push(self.garbled.clone());
        }
        Ok(found)
    }

    async fn apply(
        &self,
        host: &str,
        event: &fanout_shared::HostEvent,
        now_ms: i64,
        policy: &fanout_shared::HostPolicy,
    ) -> Result<(fanout_shared::HostState, bool), fanout_shared::BackendError> {
        self.inner.apply(host, event, now_ms, policy).await
    }

    async fn renew(
        &self,
        lease: &fanout_shared::fleet::Lease,
        now_ms: i64,
    ) -> Result<Vec<fanout_shared::fleet::Lease>, fanout_shared::BackendError> {
        self.inner.renew(lease, now_ms).await
    }
}

#[tokio::test]
async fn an_unreadable_host_state_is_counted_and_its_host_still_called() {
    let server = TargetServer::start().await.unwrap();
    let backend = EmbeddedBackend::open(":memory:".as_ref()).unwrap();
    backend
        .ensure_pipeline("jobs", "jobs", "jobs-dlq", Some(5))
        .unwrap();
    let base = server.base_url();
    let config = config(json!([{"id": "a", "url": format!("{base}/ok/a")}])).to_string();
    let config = PipelineConfig::parse(&config, false, "test.json").unwrap();
    let job = job("run-1", "a", &format!("{base}/ok/a"));
    let host = job.target.host().expect("the job has a host");
    let backends = fanout_consumer::Backends {
        fleet: std::sync::Arc::new(GarbledFleet {
            inner: backend.fleet(),
            garbled: host.clone(),
        }),
        ..backends(&backend, "jobs", "jobs-dlq")
    };
    let consumer = Consumer::new(&config, backends, Settings::default()).unwrap();
    let report = consumer
        .handle_batch(event(&[job.encode().body]), in_seconds(10))
        .await;
    assert_eq!(
        report.metrics.total(Metric::HostStateUnreadable),
        1.0,
        "{host}'s unreadable state is counted"
    );
    assert_eq!(
        report.metrics.total(Metric::Succeeded),
        1.0,
        "read as not paused, circuit closed: the job is called"
    );
    assert_eq!(server.records().len(), 1);
}

/// `n` jobs of one config, their bodies, and the harness (pulling as `settings` says).
async fn queued_jobs(n: usize, settings: Settings) -> (Harness, Vec<String>) {
    let targets: Vec<_> = (0..n)
        .map(|i| json!({"id": format!("t{i}"), "url": format!("BASE/ok/{i}")}))
        .collect();
    let h = harness(config(json!(targets)), settings).await;
    let bodies = (0..n)
        .map(|i| {
            let url = format!("{}/ok/{i}", h.server.base_url());
            job("run-pull", &format!("t{i}"), &url).encode().body
        })
        .collect();
    (h, bodies)
}

#[tokio::test]
async fn an_invocation_with_room_pulls_queued_jobs_runs_them_and_deletes_them() {
    let (h, bodies) = queued_jobs(25, Settings::default()).await;
    let queue = h.backend.queue("jobs");
    for body in &bodies[1..] {
        queue.send(body, &Default::default()).await.unwrap();
    }
    // Lambda hands over one record; the other 24 wait in the queue.
    let report = h
        .consumer
        .handle_batch(event(&bodies[..1]), in_seconds(10))
        .await;
    assert_eq!(report.metrics.total(Metric::Pulled), 24.0);
    assert_eq!(report.metrics.total(Metric::Records), 25.0);
    assert_eq!(report.metrics.total(Metric::Succeeded), 25.0);
    assert_eq!(h.server.stats().effects, 25);
    assert!(failures(&report).is_empty());
    assert!(
        queue.depth().await.unwrap().is_drained(),
        "every pulled record deleted once done: {:?}",
        queue.depth().await.unwrap()
    );
}

#[tokio::test]
async fn no_pulling_when_turned_off_or_when_the_invocation_is_short() {
    for (settings, deadline) in [
        (
            Settings {
                pull: false,
                ..Settings::default()
            },
            in_seconds(10),
        ),
        // 2 s of work in all: a pulled record could not be sure of its permit and call.
        (Settings::default(), in_seconds(3)),
    ] {
        let (h, bodies) = queued_jobs(5, settings).await;
        let queue = h.backend.queue("jobs");
        for body in &bodies[1..] {
            queue.send(body, &Default::default()).await.unwrap();
        }
        let report = h.consumer.handle_batch(event(&bodies[..1]), deadline).await;
        assert_eq!(report.metrics.total(Metric::Pulled), 0.0);
        assert_eq!(report.metrics.total(Metric::Succeeded), 1.0);
        assert_eq!(queue.depth().await.unwrap().visible, 4);
    }
}

/// Under a visibility timeout shorter than the invocation (`fanout run --visibility-timeout`;
/// Lambda refuses a mapping whose queue hides records for less than the function's timeout),
/// the batch's records would come back while the invocation still holds them: a done one
/// waiting for the mapping's delete, a waiting one for its permit. Each receive by another
/// invocation that held it as long would bring the message nearer the receive limit, and its
/// DLQ copy of a job that succeeds. So a done record is deleted at once, and one that waits
/// past the visibility is kept hidden: nothing comes back meanwhile.
#[tokio::test]
async fn under_a_short_visibility_the_batch_is_deleted_as_done_and_a_waiting_record_kept_hidden() {
    let targets: Vec<_> = (0..3)
        .map(|i| json!({"id": format!("t{i}"), "url": format!("BASE/ok/{i}")}))
        .collect();
    let mut cfg = config(json!(targets));
    cfg["rate_limit"] = json!({"per_second": 4.0});
    let settings = Settings {
        visibility_timeout: Some(Duration::from_millis(300)),
        pull: false,
        ..Settings::default()
    };
    let h = harness(cfg, settings).await;
    let bodies: Vec<String> = (0..3)
        .map(|i| {
            let url = format!("{}/ok/{i}", h.server.base_url());
            job("run-1", &format!("t{i}"), &url).encode().body
        })
        .collect();
    let queue = h.backend.queue("jobs");
    for body in &bodies {
        queue.send(body, &Default::default()).await.unwrap();
    }
    let received = queue
        .receive(10, Duration::from_millis(300), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(received.len(), 3);
    let records: Vec<_> = received
        .iter()
        .map(|m| {
            json!({
                "messageId": m.message_id, "receiptHandle": m.receipt_handle, "body": m.body,
                "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                "md5OfBody": "", "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:jobs", "awsRegion": "us-east-1"
            })
        })
        .collect();
    let event = serde_json::from_value(json!({ "Records": records })).unwrap();

    // At 4/s the third call is due 500 ms in, past the 300 ms visibility.
    let other_invocation = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        queue
            .receive(10, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
    };
    let (report, seen_by_another) = tokio::join!(
        h.consumer.handle_batch(event, in_seconds(5)),
        other_invocation
    );
    assert!(
        seen_by_another.is_empty(),
        "no record came back while the invocation held it: {seen_by_another:?}"
    );
    assert_eq!(report.metrics.total(Metric::Succeeded), 3.0);
    assert_eq!(h.server.stats().effects, 3);
    assert!(
        queue.depth().await.unwrap().is_drained(),
        "every record deleted by the invocation itself: {:?}",
        queue.depth().await.unwrap()
    );
}
