//! The AWS proxy against a tiny upstream started here: what reaches the upstream, what the
//! client is answered, what is counted; and the AWS SDK's own reading of the injected errors.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

use fanout_testkit::aws_proxy::{AwsProxy, FaultKind, FaultPlan, FaultRule, Service, Tally};

/// One request the upstream saw: its path, headers and body.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// An upstream on 127.0.0.1 that records every request and answers 200 `{}` (a valid answer
/// to a DynamoDB write) with an `x-upstream` header; stops when dropped.
struct Upstream {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            log.lock().unwrap().push(Seen {
                                path: parts.uri.to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_owned())
                                    })
                                    .collect(),
                                body: String::from_utf8_lossy(&body).into_owned(),
                            });
                            Response::builder()
                                .status(200)
                                .header("content-type", "application/x-amz-json-1.0")
                                .header("x-upstream", "yes")
                                .body(Full::new(Bytes::from_static(b"{}")))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, seen, task }
    }

    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A proxy in front of a fresh upstream.
async fn proxied() -> (AwsProxy, Upstream) {
    let upstream = Upstream::start().await;
    let proxy = AwsProxy::start().await.unwrap();
    proxy.set_upstream(&upstream.url);
    (proxy, upstream)
}

/// What the client got.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

/// One client for every test of the binary (building one per request made the 2,000-request
/// test take a minute). It keeps no idle connection: each test runs its own runtime, and a
/// pooled connection would outlive the runtime that drove it.
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    })
}

async fn send(proxy: &AwsProxy, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut request = client()
        .post(format!("{}/", proxy.url()))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

/// A DynamoDB JSON-protocol request for `operation` with a small item.
async fn dynamodb(proxy: &AwsProxy, operation: &str) -> Answer {
    let target = format!("DynamoDB_20120810.{operation}");
    send(
        proxy,
        &[
            ("x-amz-target", &target),
            ("content-type", "application/x-amz-json-1.0"),
        ],
        r#"{"TableName":"t","Item":{"pk":{"S":"a"}}}"#,
    )
    .await
}

fn signed(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, \
         SignedHeaders=host, Signature=0"
    )
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap()
}

fn key(service: &str, operation: &str) -> (String, String) {
    (service.to_owned(), operation.to_owned())
}

fn fault(service: &str, operation: &str, kind: FaultKind) -> (String, String, FaultKind) {
    (service.to_owned(), operation.to_owned(), kind)
}

#[tokio::test]
async fn without_a_plan_requests_pass_unchanged_and_are_counted() {
    let (proxy, upstream) = proxied().await;
    let answer = send(
        &proxy,
        &[
            ("x-amz-target", "DynamoDB_20120810.PutItem"),
            ("authorization", &signed("dynamodb")),
        ],
        r#"{"Item":{"pk":{"S":"a"}}}"#,
    )
    .await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "{}"));
    assert_eq!(answer.headers["x-upstream"], "yes");
    let seen = upstream.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.path, "/");
    assert_eq!(seen.body, r#"{"Item":{"pk":{"S":"a"}}}"#);
    assert!(seen
        .headers
        .contains(&("authorization".into(), signed("dynamodb"))));
    assert_eq!(
        proxy.counts()[&key("DynamoDB", "PutItem")],
        Tally {
            requests: 1,
            units: 1.0
        }
    );
    assert!(proxy.faults().is_empty());
}

#[tokio::test]
async fn a_certain_throttle_never_reaches_the_upstream_and_answers_each_services_error() {
    let (proxy, upstream) = proxied().await;
    proxy.set_plan(FaultPlan::new(1).rule(FaultRule::any_service(FaultKind::Throttle)));

    let answer = dynamodb(&proxy, "PutItem").await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        json(&answer.body)["__type"],
        "com.amazonaws.dynamodb.v20120810#ThrottlingException"
    );

    let answer = send(
        &proxy,
        &[("x-amz-target", "AmazonSQS.SendMessage")],
        r#"{"QueueUrl":"q","MessageBody":"m"}"#,
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.headers["x-amzn-query-error"],
        "RequestThrottled;Sender"
    );
    assert_eq!(
        json(&answer.body)["__type"],
        "com.amazonaws.sqs#RequestThrottled"
    );

    let answer = send(
        &proxy,
        &[("authorization", &signed("sns"))],
        "Action=PublishBatch&Version=2010-03-31",
    )
    .await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.body.starts_with(
            "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>"
        ),
        "{}",
        answer.body
    );

    let answer = send(
        &proxy,
        &[("x-amz-target", "AWSEvents.PutEvents")],
        r#"{"Entries":[{}]}"#,
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(json(&answer.body)["__type"], "ThrottlingException");

    let answer = send(&proxy, &[("authorization", &signed("s3"))], "").await;
    assert_eq!(answer.status, 503);
    assert!(answer.body.contains("<Code>SlowDown</Code>"));

    assert_eq!(upstream.hits(), 0);
    let counts = proxy.counts();
    assert_eq!(counts.values().map(|t| t.requests).sum::<u64>(), 5);
    assert_eq!(counts.values().map(|t| t.units).sum::<f64>(), 0.0);
    let faults = proxy.faults();
    assert_eq!(faults.len(), 5);
    assert_eq!(
        faults[&fault("SNS", "PublishBatch", FaultKind::Throttle)],
        1
    );
    assert_eq!(faults[&fault("SQS", "SendMessage", FaultKind::Throttle)], 1);
}

#[tokio::test]
async fn dynamodb_writes_only_rule_spares_reads_and_can_answer_throughput_exceeded() {
    let (proxy, upstream) = proxied().await;
    proxy.set_plan(
        FaultPlan::new(1)
            .rule(FaultRule::new(Service::DynamoDb, FaultKind::ThroughputExceeded).writes_only()),
    );
    for write in ["PutItem", "UpdateItem", "TransactWriteItems"] {
        let answer = dynamodb(&proxy, write).await;
        assert_eq!(answer.status, 400);
        assert_eq!(
            json(&answer.body)["__type"],
            "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
        );
    }
    assert_eq!(dynamodb(&proxy, "GetItem").await.status, 200);
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn server_error_answers_500_without_forwarding() {
    let (proxy, upstream) = proxied().await;
    proxy.set_plan(
        FaultPlan::new(1).rule(FaultRule::new(Service::DynamoDb, FaultKind::ServerError)),
    );
    let answer = dynamodb(&proxy, "PutItem").await;
    assert_eq!(answer.status, 500);
    assert_eq!(
        json(&answer.body)["__type"],
        "com.amazonaws.dynamodb.v20120810#InternalServerError"
    );
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn lost_reaches_the_upstream_once_and_answers_500() {
    let (proxy, upstream) = proxied().await;
    proxy.set_plan(FaultPlan::new(1).rule(
        FaultRule::new(Service::DynamoDb, FaultKind::Lost).operations(["TransactWriteItems"]),
    ));
    let answer = dynamodb(&proxy, "TransactWriteItems").await;
    assert_eq!(answer.status, 500);
    assert!(answer.headers.get("x-upstream").is_none());
    assert_eq!(
        json(&answer.body)["__type"],
        "com.amazonaws.dynamodb.v20120810#InternalServerError"
    );
    assert_eq!(upstream.hits(), 1);
    // Applied, so counted with its units like any forwarded request.
    assert_eq!(
        proxy.counts()[&key("DynamoDB", "TransactWriteItems")].requests,
        1
    );
    assert_eq!(
        proxy.faults()[&fault("DynamoDB", "TransactWriteItems", FaultKind::Lost)],
        1
    );
    // Another operation is not in the rule.
    assert_eq!(dynamodb(&proxy, "PutItem").await.status, 200);
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn latency_delays_the_forwarded_request() {
    let (proxy, upstream) = proxied().await;
    let delay = Duration::from_millis(300);
    proxy.set_plan(FaultPlan::new(1).rule(FaultRule::new(Service::Sqs, FaultKind::Latency(delay))));
    let started = Instant::now();
    let answer = send(
        &proxy,
        &[("x-amz-target", "AmazonSQS.ReceiveMessage")],
        "{}",
    )
    .await;
    assert!(started.elapsed() >= delay);
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.hits(), 1);
    assert_eq!(
        proxy.faults()[&fault("SQS", "ReceiveMessage", FaultKind::Latency(delay))],
        1
    );
}

#[tokio::test]
async fn a_window_rule_fires_only_inside_its_window() {
    let (proxy, upstream) = proxied().await;
    let (start, length) = (Duration::from_millis(500), Duration::from_millis(600));
    proxy.set_plan(
        FaultPlan::new(1)
            .rule(FaultRule::new(Service::DynamoDb, FaultKind::Throttle).window(start, length)),
    );
    let armed = Instant::now();
    assert_eq!(dynamodb(&proxy, "PutItem").await.status, 200, "before");
    tokio::time::sleep_until((armed + Duration::from_millis(800)).into()).await;
    assert_eq!(dynamodb(&proxy, "PutItem").await.status, 400, "inside");
    tokio::time::sleep_until((armed + Duration::from_millis(1400)).into()).await;
    assert_eq!(dynamodb(&proxy, "PutItem").await.status, 200, "after");
    assert_eq!(upstream.hits(), 2);

    // Arming again restarts the clock: before the window again.
    proxy.arm();
    assert_eq!(dynamodb(&proxy, "PutItem").await.status, 200, "re-armed");
    proxy.clear_plan();
    assert_eq!(proxy.faults().values().sum::<u64>(), 1);
}

/// Which of 1,000 sequential `PutItem`s a 10% rule throttled.
async fn throttled_pattern(proxy: &AwsProxy) -> Vec<bool> {
    let mut pattern = Vec::with_capacity(1000);
    for _ in 0..1000 {
        pattern.push(dynamodb(proxy, "PutItem").await.status == 400);
    }
    pattern
}

#[tokio::test]
async fn a_seeded_ten_percent_rule_fires_on_about_a_tenth_and_reproduces() {
    let (proxy, upstream) = proxied().await;
    proxy.set_plan(
        FaultPlan::new(26)
            .rule(FaultRule::new(Service::DynamoDb, FaultKind::Throttle).probability(0.1)),
    );
    let first = throttled_pattern(&proxy).await;
    let fired = first.iter().filter(|t| **t).count();
    assert!((70..=130).contains(&fired), "{fired} of 1000");
    assert_eq!(upstream.hits(), 1000 - fired);
    assert_eq!(
        proxy.take_faults()[&fault("DynamoDB", "PutItem", FaultKind::Throttle)],
        fired as u64
    );
    let counts = proxy.take();
    assert_eq!(counts[&key("DynamoDB", "PutItem")].requests, 1000);
    // Forwarded puts bill 1 WRU each, throttled ones none.
    assert_eq!(
        counts[&key("DynamoDB", "PutItem")].units,
        (1000 - fired) as f64
    );

    // The same seed, armed again, fires on the same requests.
    proxy.arm();
    assert_eq!(throttled_pattern(&proxy).await, first);
    assert_eq!(proxy.counts()[&key("DynamoDB", "PutItem")].requests, 1000);
}

/// Static credentials, a region and the proxy as endpoint, as a moto-backed test configures
/// its clients.
macro_rules! sdk_config {
    ($sdk:ident, $proxy:expr, $retry:expr) => {
        $sdk::Config::builder()
            .behavior_version($sdk::config::BehaviorVersion::latest())
            .region($sdk::config::Region::new("us-east-1"))
            .credentials_provider($sdk::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url($proxy.url())
            .retry_config($retry)
            .build()
    };
}

#[tokio::test]
async fn the_dynamodb_sdk_reads_the_throttle_as_throttling_and_retries_it() {
    use aws_sdk_dynamodb::config::retry::RetryConfig;
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    use aws_sdk_dynamodb::types::AttributeValue;

    let (proxy, upstream) = proxied().await;
    proxy.set_plan(
        FaultPlan::new(1)
            .rule(FaultRule::new(Service::DynamoDb, FaultKind::Throttle).operations(["PutItem"])),
    );
    let put = |client: aws_sdk_dynamodb::Client| async move {
        client
            .put_item()
            .table_name("t")
            .item("pk", AttributeValue::S("a".into()))
            .send()
            .await
    };

    let once = aws_sdk_dynamodb::Client::from_conf(sdk_config!(
        aws_sdk_dynamodb,
        proxy,
        RetryConfig::disabled()
    ));
    let error = put(once).await.unwrap_err();
    assert_eq!(error.code(), Some("ThrottlingException"));
    assert!(error.into_service_error().is_throttling_exception());

    // The SDK's standard retries take it as retryable: three attempts, none forwarded.
    let retrying = aws_sdk_dynamodb::Client::from_conf(sdk_config!(
        aws_sdk_dynamodb,
        proxy,
        RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(1))
    ));
    let error = put(retrying).await.unwrap_err();
    assert_eq!(error.code(), Some("ThrottlingException"));
    assert_eq!(proxy.counts()[&key("DynamoDB", "PutItem")].requests, 4);
    assert_eq!(upstream.hits(), 0);

    // ProvisionedThroughputExceededException is read as such too.
    proxy.set_plan(FaultPlan::new(1).rule(FaultRule::new(
        Service::DynamoDb,
        FaultKind::ThroughputExceeded,
    )));
    let once = aws_sdk_dynamodb::Client::from_conf(sdk_config!(
        aws_sdk_dynamodb,
        proxy,
        RetryConfig::disabled()
    ));
    let error = put(once).await.unwrap_err();
    assert!(error
        .into_service_error()
        .is_provisioned_throughput_exceeded_exception());
}

#[tokio::test]
async fn the_dynamodb_sdk_retries_a_lost_write_which_applies_again() {
    use aws_sdk_dynamodb::config::retry::RetryConfig;
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    use aws_sdk_dynamodb::types::AttributeValue;

    let (proxy, upstream) = proxied().await;
    proxy.set_plan(FaultPlan::new(1).rule(FaultRule::new(Service::DynamoDb, FaultKind::Lost)));
    let client = aws_sdk_dynamodb::Client::from_conf(sdk_config!(
        aws_sdk_dynamodb,
        proxy,
        RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(1))
    ));
    let error = client
        .put_item()
        .table_name("t")
        .item("pk", AttributeValue::S("a".into()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("InternalServerError"));
    // Every attempt applied upstream: what an idempotent write must survive.
    assert_eq!(upstream.hits(), 3);
    assert_eq!(
        proxy.faults()[&fault("DynamoDB", "PutItem", FaultKind::Lost)],
        3
    );
}

#[tokio::test]
async fn the_sns_sqs_and_eventbridge_sdks_read_their_throttling_codes() {
    use aws_sdk_sns::config::retry::RetryConfig;
    use aws_sdk_sns::error::ProvideErrorMetadata;

    let (proxy, upstream) = proxied().await;
    proxy.set_plan(FaultPlan::new(1).rule(FaultRule::any_service(FaultKind::Throttle)));

    let sns =
        aws_sdk_sns::Client::from_conf(sdk_config!(aws_sdk_sns, proxy, RetryConfig::disabled()));
    let error = sns
        .publish()
        .topic_arn("arn:aws:sns:us-east-1:000000000000:t")
        .message("m")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("Throttling"));

    let sqs = aws_sdk_sqs::Client::from_conf(sdk_config!(
        aws_sdk_sqs,
        proxy,
        aws_sdk_sqs::config::retry::RetryConfig::disabled()
    ));
    let error = sqs
        .send_message()
        .queue_url("http://127.0.0.1/000000000000/q")
        .message_body("m")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("RequestThrottled"));
    assert!(error.into_service_error().is_request_throttled());

    let events = aws_sdk_eventbridge::Client::from_conf(sdk_config!(
        aws_sdk_eventbridge,
        proxy,
        aws_sdk_eventbridge::config::retry::RetryConfig::disabled()
    ));
    let error = events
        .put_events()
        .entries(
            aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .source("fanout")
                .detail_type("Run Succeeded")
                .detail("{}")
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("ThrottlingException"));

    assert_eq!(upstream.hits(), 0);
    let faults = proxy.faults();
    assert_eq!(faults[&fault("SNS", "Publish", FaultKind::Throttle)], 1);
    assert_eq!(faults[&fault("SQS", "SendMessage", FaultKind::Throttle)], 1);
    assert_eq!(
        faults[&fault("EventBridge", "PutEvents", FaultKind::Throttle)],
        1
    );
}
