//! An AWS endpoint between an SDK client and an emulator (ministack, moto) that counts every
//! request by service and operation, with what AWS would bill for it, and injects the faults
//! real AWS has and emulators never show: throttling, server errors, a call applied whose
//! response is lost, latency.
//!
//! Why at the wire: the pipeline's promises (a job applied once, a run counted exactly, a
//! retried batch) rest on how the AWS SDK classifies and retries errors, and on what the code
//! does once the SDK gives up. An error answered here goes through the SDK's own parsing and
//! retry classifier, exactly as one from AWS would, so a test exercises the product's real
//! error paths; and a lost response is the one fault a mock of the SDK cannot express (the
//! write happened, the caller cannot know).
//!
//! Two ways in:
//! - deployed functions on the local cloud: start the emulator with the proxy as the
//!   functions' `AWS_ENDPOINT_URL` (`FANOUT_LOCAL_CLOUD_FUNCTION_ENDPOINT`) and give the proxy
//!   the emulator's own address once it runs ([`AwsProxy::set_upstream`]);
//! - a test's own SDK clients (moto): point each client's endpoint URL at [`AwsProxy::url`]
//!   and the proxy's upstream at moto.
//!
//! Requests are forwarded as they came (headers, host and signature included) and answered
//! with the upstream's response, unless a rule of the [`FaultPlan`] fires. Every request is
//! counted ([`AwsProxy::counts`]), the ones the proxy answered itself too; every injected fault
//! is counted by service, operation and kind ([`AwsProxy::faults`]).
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use std::time::Duration;
//! use fanout_testkit::aws_proxy::{AwsProxy, FaultKind, FaultPlan, FaultRule, Service};
//!
//! let proxy = AwsProxy::start().await?;
//! proxy.set_upstream("http://127.0.0.1:4566");
//! // Every fifth DynamoDB write throttled, and for two seconds from now every PublishBatch
//! // applied with its response lost.
//! proxy.set_plan(
//!     FaultPlan::new(7)
//!         .rule(
//!             FaultRule::new(Service::DynamoDb, FaultKind::Throttle)
//!                 .writes_only()
//!                 .probability(0.2),
//!         )
//!         .rule(
//!             FaultRule::new(Service::Sns, FaultKind::Lost)
//!                 .operations(["PublishBatch"])
//!                 .window(Duration::ZERO, Duration::from_secs(2)),
//!         ),
//! );
//! // … run the pipeline with its endpoint at proxy.url() …
//! let throttled: u64 = proxy
//!     .faults()
//!     .iter()
//!     .filter(|((_, _, kind), _)| *kind == FaultKind::Throttle)
//!     .map(|(_, n)| n)
//!     .sum();
//! # let _ = throttled;
//! # Ok(())
//! # }
//! ```

mod items;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, Uri};
use serde_json::Value;

use crate::serve::{serve, Answer};

/// What the requests of one service operation add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// HTTP requests made, including those the proxy answered itself.
    pub requests: u64,
    /// Billed units: DynamoDB read or write request units, EventBridge events, SNS/SQS
    /// requests (64 KB chunks); 1 per request of any other service. A request the proxy
    /// answered without forwarding (throttled, server error) adds none: AWS bills no work it
    /// refused.
    pub units: f64,
}

/// Counts by `(service, operation)`, the service as [`Service::label`] names it (or, for a
/// service the proxy does not know, the `X-Amz-Target` prefix or the signature's scope).
pub type Counts = BTreeMap<(String, String), Tally>;

/// Faults injected, by `(service, operation, kind)`.
pub type FaultCounts = BTreeMap<(String, String, FaultKind), u64>;

/// The DynamoDB operations that write, the ones [`FaultRule::writes_only`] matches.
pub const DYNAMODB_WRITES: [&str; 5] = [
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "TransactWriteItems",
    "BatchWriteItem",
];

/// An AWS service the proxy recognizes in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// DynamoDB (JSON protocol, `X-Amz-Target: DynamoDB_20120810.*`).
    DynamoDb,
    /// SQS: its JSON protocol (`X-Amz-Target: AmazonSQS.*`, what the AWS SDK for Rust
    /// speaks) or its older query protocol (signature scope `sqs`, `Action=` in the form).
    Sqs,
    /// SNS (query protocol: signature scope `sns`, `Action=` in the form).
    Sns,
    /// EventBridge (JSON protocol, `X-Amz-Target: AWSEvents.*`).
    EventBridge,
    /// S3 (REST: signature scope `s3`, the operation from method, path-style path and query).
    S3,
}

impl Service {
    /// The name in [`Counts`] and [`FaultCounts`]: `DynamoDB`, `SQS`, `SNS`, `EventBridge`, `S3`.
    pub fn label(self) -> &'static str {
        match self {
            Self::DynamoDb => "DynamoDB",
            Self::Sqs => "SQS",
            Self::Sns => "SNS",
            Self::EventBridge => "EventBridge",
            Self::S3 => "S3",
        }
    }
}

/// `dynamodb`, `sqs`, `sns`, `events` (or `eventbridge`), `s3`, in any case; labels too.
impl FromStr for Service {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "dynamodb" => Ok(Self::DynamoDb),
            "sqs" => Ok(Self::Sqs),
            "sns" => Ok(Self::Sns),
            "events" | "eventbridge" => Ok(Self::EventBridge),
            "s3" => Ok(Self::S3),
            other => Err(format!(
                "unknown service {other:?} (dynamodb, sqs, sns, events, s3)"
            )),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What a firing rule does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Answered at once, not forwarded, with the error the service returns when it throttles,
    /// in its protocol: DynamoDB and EventBridge `ThrottlingException`, SQS `RequestThrottled`,
    /// SNS `Throttling` (400), S3 `SlowDown` (503). The SDK classifies every one of them as
    /// throttling.
    Throttle,
    /// Like [`FaultKind::Throttle`], but DynamoDB answers
    /// `ProvisionedThroughputExceededException` (a hot partition or provisioned table; also
    /// throttling to the SDK). Other services answer as for `Throttle`.
    ThroughputExceeded,
    /// Answered at once, not forwarded: a 500 `InternalServerError` (DynamoDB),
    /// `InternalFailure` (SQS), `InternalError` (SNS, S3), `InternalException` (EventBridge).
    ServerError,
    /// Forwarded, applied by the upstream, and answered with the [`FaultKind::ServerError`]
    /// answer instead of the real one (whatever the upstream answered): the call applied and its response lost, so the caller
    /// retries something that already happened.
    Lost,
    /// Forwarded after this delay, answered as the upstream answers.
    Latency(Duration),
}

/// One rule of a [`FaultPlan`]: which requests it matches, when it fires, what it does.
///
/// A rule matches a request of its service (or any service), of one of its operations if it
/// names some, and of a DynamoDB write if it is [`FaultRule::writes_only`]. A matching rule
/// fires inside its window if it has one, then with its probability if it has one; with
/// neither, it fires on every request it matches.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    service: Option<Service>,
    operations: Option<BTreeSet<String>>,
    writes_only: bool,
    probability: Option<f64>,
    window: Option<(Duration, Duration)>,
    kind: FaultKind,
}

impl FaultRule {
    /// A rule for every request of `service`.
    pub fn new(service: Service, kind: FaultKind) -> Self {
        Self {
            service: Some(service),
            ..Self::any_service(kind)
        }
    }

    /// A rule for every request of any service (including services the proxy does not know).
    pub fn any_service(kind: FaultKind) -> Self {
        Self {
            service: None,
            operations: None,
            writes_only: false,
            probability: None,
            window: None,
            kind,
        }
    }

    /// Only these operations, as the service names them (`PutItem`, `TransactWriteItems`,
    /// `PublishBatch`, `SendMessage`, `PutEvents`, `GetObject`, …).
    pub fn operations<S: Into<String>>(mut self, operations: impl IntoIterator<Item = S>) -> Self {
        self.operations = Some(operations.into_iter().map(Into::into).collect());
        self
    }

    /// Only DynamoDB writes ([`DYNAMODB_WRITES`]); a request of another service never matches.
    pub fn writes_only(mut self) -> Self {
        self.writes_only = true;
        self
    }

    /// Fires on this share of the requests it matches (0 to 1), drawn from the plan's seeded
    /// generator: the same seed and the same sequence of requests fire on the same ones.
    pub fn probability(mut self, probability: f64) -> Self {
        self.probability = Some(probability.clamp(0.0, 1.0));
        self
    }

    /// Fires only from `start` after the plan was armed, for `length`.
    pub fn window(mut self, start: Duration, length: Duration) -> Self {
        self.window = Some((start, length));
        self
    }

    /// What the rule does when it fires.
    pub fn kind(&self) -> FaultKind {
        self.kind
    }

    fn matches(&self, call: &Call) -> bool {
        if self.service.is_some() && self.service != call.service {
            return false;
        }
        if self
            .operations
            .as_ref()
            .is_some_and(|ops| !ops.contains(&call.operation))
        {
            return false;
        }
        !self.writes_only
            || (call.service == Some(Service::DynamoDb)
                && DYNAMODB_WRITES.contains(&call.operation.as_str()))
    }
}

/// Rules, first firing one wins, and the seed of their probabilities. Installed and armed with
/// [`AwsProxy::set_plan`]; windows count from the moment it was armed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    rules: Vec<FaultRule>,
    seed: u64,
}

impl FaultPlan {
    /// No rules yet; `seed` seeds the generator the rules' probabilities draw from.
    pub fn new(seed: u64) -> Self {
        Self {
            rules: Vec::new(),
            seed,
        }
    }

    /// The plan with one more rule, tried after the ones before it.
    pub fn rule(mut self, rule: FaultRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// The rules, in the order they are tried.
    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// A plan with its clock and generator running.
struct Armed {
    plan: FaultPlan,
    since: Instant,
    rng: fastrand::Rng,
}

impl Armed {
    fn new(plan: FaultPlan) -> Self {
        let rng = fastrand::Rng::with_seed(plan.seed);
        Self {
            plan,
            since: Instant::now(),
            rng,
        }
    }

    /// The fault of the first rule that matches `call` and fires, if any.
    fn decide(&mut self, call: &Call) -> Option<FaultKind> {
        let elapsed = self.since.elapsed();
        for rule in &self.plan.rules {
            if !rule.matches(call) {
                continue;
            }
            if let Some((start, length)) = rule.window {
                if elapsed < start || elapsed >= start.saturating_add(length) {
                    continue;
                }
            }
            if let Some(p) = rule.probability {
                if self.rng.f64() >= p {
                    continue;
                }
            }
            return Some(rule.kind);
        }
        None
    }
}

#[derive(Default)]
struct Shared {
    upstream: Mutex<Option<String>>,
    /// The items written through the proxy, for the write units of the next writes.
    items: items::Items,
    plan: Mutex<Option<Armed>>,
    counts: Mutex<Counts>,
    faults: Mutex<FaultCounts>,
    /// Numbers the request IDs of the proxy's own answers.
    answered: AtomicU64,
}

impl Shared {
    fn decide(&self, call: &Call) -> Option<FaultKind> {
        self.plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()?
            .decide(call)
    }

    fn record(&self, call: &Call, units: f64, fault: Option<FaultKind>) {
        {
            let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            let tally = counts
                .entry((call.label.clone(), call.operation.clone()))
                .or_default();
            tally.requests += 1;
            tally.units += units;
        }
        if let Some(kind) = fault {
            *self
                .faults
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry((call.label.clone(), call.operation.clone(), kind))
                .or_default() += 1;
        }
    }
}

/// The running proxy on 127.0.0.1; stops when dropped.
pub struct AwsProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// Where it listens; what it saw is [`AwsProxy::counts`] and [`AwsProxy::faults`].
impl fmt::Debug for AwsProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AwsProxy {
    /// Listens on a free port of 127.0.0.1 with no plan; forwards nothing until
    /// [`Self::set_upstream`] (until then a request no rule answers gets a 503 and is not
    /// counted).
    pub async fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(std::io::Error::other)?;
        let state = shared.clone();
        let (addr, task) = serve(Ipv4Addr::LOCALHOST.into(), move |req| {
            handle(req, state.clone(), client.clone())
        })
        .await?;
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`: the endpoint URL to give the SDK clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where requests go from now on, e.g. `http://127.0.0.1:4566`.
    pub fn set_upstream(&self, url: &str) {
        *self
            .shared
            .upstream
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(url.trim_end_matches('/').to_owned());
    }

    /// Installs `plan` in place of any other and arms it: its windows count from now, its
    /// generator starts from its seed.
    pub fn set_plan(&self, plan: FaultPlan) {
        *self
            .shared
            .plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Armed::new(plan));
    }

    /// Arms the installed plan again: windows count from now and the generator restarts from
    /// the seed (e.g. a plan installed before a deploy, armed when the tick starts).
    pub fn arm(&self) {
        let mut armed = self
            .shared
            .plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = armed.take() {
            *armed = Some(Armed::new(current.plan));
        }
    }

    /// No more faults: every request is forwarded as it came.
    pub fn clear_plan(&self) {
        *self
            .shared
            .plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Every request so far (or since the last [`Self::take`]).
    pub fn counts(&self) -> Counts {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The counts since the last call, which starts a new count.
    pub fn take(&self) -> Counts {
        std::mem::take(
            &mut *self
                .shared
                .counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Every fault injected so far (or since the last [`Self::take_faults`]).
    pub fn faults(&self) -> FaultCounts {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The faults since the last call, which starts a new count.
    pub fn take_faults(&self) -> FaultCounts {
        std::mem::take(
            &mut *self
                .shared
                .faults
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>, client: reqwest::Client) -> Answer {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(std::io::Error::other)?;
    let call = classify(&parts.method, &parts.uri, &parts.headers, &body);
    let fault = shared.decide(&call);
    if let Some(
        kind @ (FaultKind::Throttle | FaultKind::ThroughputExceeded | FaultKind::ServerError),
    ) = fault
    {
        shared.record(&call, 0.0, fault);
        return refusal(&call, kind, shared.answered.fetch_add(1, Ordering::Relaxed));
    }
    let upstream = shared
        .upstream
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let Some(upstream) = upstream else {
        return Response::builder()
            .status(503)
            .body(Full::new(Bytes::from_static(b"proxy: no upstream yet")))
            .map_err(std::io::Error::other);
    };
    if let Some(FaultKind::Latency(delay)) = fault {
        tokio::time::sleep(delay).await;
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outbound = client
        .request(parts.method.clone(), format!("{upstream}{path}"))
        .body(body.clone());
    for (name, value) in &parts.headers {
        if name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
            outbound = outbound.header(name, value);
        }
    }
    let answer = outbound.send().await.map_err(std::io::Error::other)?;
    let status = answer.status();
    let headers = answer.headers().clone();
    let answer_body = answer.bytes().await.map_err(std::io::Error::other)?;
    let billed = match call.service {
        // A write is billed by its item, which the proxy keeps from the writes it saw.
        Some(Service::DynamoDb) if is_write(&call.operation) => {
            let request = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
            shared
                .items
                .write_units(&call.operation, &request, status.is_success())
        }
        _ => units(&call, &body, &answer_body),
    };
    shared.record(&call, billed, fault);
    if fault == Some(FaultKind::Lost) {
        return refusal(
            &call,
            FaultKind::ServerError,
            shared.answered.fetch_add(1, Ordering::Relaxed),
        );
    }
    let mut response = Response::builder().status(status);
    for (name, value) in &headers {
        if name != TRANSFER_ENCODING && name != CONTENT_LENGTH {
            response = response.header(name, value);
        }
    }
    response
        .body(Full::new(answer_body))
        .map_err(std::io::Error::other)
}

/// How a request speaks to its service, which is how its errors must be answered.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Protocol {
    /// `X-Amz-Target` and a JSON body; errors are JSON with `__type`.
    Json,
    /// A form with `Action=`; errors are `<ErrorResponse>` XML.
    Query,
    /// S3's REST; errors are `<Error>` XML.
    RestXml,
}

/// One request, as the proxy tells it.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    service: Option<Service>,
    /// The service's name in the counts.
    label: String,
    operation: String,
    protocol: Protocol,
}

/// The service and operation of one request: the JSON protocol's `X-Amz-Target`
/// (`DynamoDB_20120810.PutItem`, `AmazonSQS.SendMessage`, `AWSEvents.PutEvents`), else the
/// signature's scope (`Credential=…/REGION/sns/aws4_request`) with the form's `Action=` (SNS,
/// SQS's query protocol) or, for S3, the method, path and query.
fn classify(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Call {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        let (prefix, operation) = target.split_once('.').unwrap_or((target, ""));
        let service = match prefix {
            p if p.starts_with("DynamoDB") => Some(Service::DynamoDb),
            "AmazonSQS" => Some(Service::Sqs),
            "AWSEvents" => Some(Service::EventBridge),
            _ => None,
        };
        return Call {
            service,
            label: service.map_or_else(|| prefix.to_owned(), |s| s.label().to_owned()),
            operation: operation.to_owned(),
            protocol: Protocol::Json,
        };
    }
    let scope = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').nth(3))
        .unwrap_or("?");
    if scope == "s3" {
        return Call {
            service: Some(Service::S3),
            label: Service::S3.label().to_owned(),
            operation: s3_operation(method, uri, headers).to_owned(),
            protocol: Protocol::RestXml,
        };
    }
    let form = String::from_utf8_lossy(body);
    let action = form
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("?")
        .to_owned();
    let service = match scope {
        "sns" => Some(Service::Sns),
        "sqs" => Some(Service::Sqs),
        _ => None,
    };
    Call {
        service,
        label: service.map_or_else(|| scope.to_owned(), |s| s.label().to_owned()),
        operation: action,
        protocol: Protocol::Query,
    }
}

/// The S3 operation of a path-style request (`/bucket/key?query`, what the SDK sends to an
/// IP endpoint such as the proxy's); `?` for one it does not name.
fn s3_operation(method: &Method, uri: &Uri, headers: &HeaderMap) -> &'static str {
    let path = uri.path().trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let query = uri.query().unwrap_or("");
    let has = |name: &str| {
        query
            .split('&')
            .any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == name)
    };
    if bucket.is_empty() {
        return if method == Method::GET {
            "ListBuckets"
        } else {
            "?"
        };
    }
    if key.is_empty() {
        return match *method {
            Method::GET if query.contains("list-type=2") => "ListObjectsV2",
            Method::GET if has("versions") => "ListObjectVersions",
            Method::GET if has("location") => "GetBucketLocation",
            Method::GET => "ListObjects",
            Method::HEAD => "HeadBucket",
            Method::PUT if query.is_empty() => "CreateBucket",
            Method::DELETE if query.is_empty() => "DeleteBucket",
            Method::POST if has("delete") => "DeleteObjects",
            _ => "?",
        };
    }
    match *method {
        Method::GET => "GetObject",
        Method::HEAD => "HeadObject",
        Method::PUT if has("partNumber") && has("uploadId") => "UploadPart",
        Method::PUT if headers.contains_key("x-amz-copy-source") => "CopyObject",
        Method::PUT => "PutObject",
        Method::DELETE if has("uploadId") => "AbortMultipartUpload",
        Method::DELETE => "DeleteObject",
        Method::POST if has("uploads") => "CreateMultipartUpload",
        Method::POST if has("uploadId") => "CompleteMultipartUpload",
        _ => "?",
    }
}

/// The billed units of one request that reached the upstream.
fn units(call: &Call, body: &[u8], answer: &[u8]) -> f64 {
    let request = || serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    match call.service {
        Some(Service::DynamoDb) => dynamodb_units(&call.operation, &request(), answer),
        Some(Service::Sqs | Service::Sns) => chunks(body.len()),
        Some(Service::EventBridge) => request()["Entries"]
            .as_array()
            .map_or(1.0, |e| e.len() as f64),
        Some(Service::S3) | None => 1.0,
    }
}

/// 64 KB chunks of a payload: SNS, SQS and EventBridge bill per started chunk.
fn chunks(bytes: usize) -> f64 {
    bytes.div_ceil(64 * 1024).max(1) as f64
}

/// The DynamoDB operations billed in write units, priced by [`items::Items`] from the items they
/// write.
fn is_write(operation: &str) -> bool {
    matches!(
        operation,
        "PutItem" | "UpdateItem" | "DeleteItem" | "TransactWriteItems" | "BatchWriteItem"
    )
}

/// Capacity units of one DynamoDB request (on-demand) that [`items::Items`] does not price: a
/// read is 1 RRU per started 4 KB strongly consistent, half that eventually consistent, in a
/// transaction 2. A write's units here are bounded above by its request's JSON (what the
/// proxy's own unit test and a write it did not see applied fall back on).
fn dynamodb_units(operation: &str, request: &Value, answer: &[u8]) -> f64 {
    let kb = |v: &Value| v.to_string().len().div_ceil(1024).max(1) as f64;
    let read = |v: &Value, consistent: bool| {
        v.to_string().len().div_ceil(4096).max(1) as f64 * if consistent { 1.0 } else { 0.5 }
    };
    let consistent = request["ConsistentRead"].as_bool().unwrap_or(false);
    match operation {
        "PutItem" => kb(&request["Item"]),
        "UpdateItem" | "DeleteItem" => kb(request),
        "GetItem" => read(request, consistent),
        "TransactWriteItems" => request["TransactItems"]
            .as_array()
            .map_or(0.0, |items| items.iter().map(|i| 2.0 * kb(i)).sum()),
        "TransactGetItems" => request["TransactItems"]
            .as_array()
            .map_or(0.0, |items| items.len() as f64 * 2.0),
        "BatchWriteItem" => request["RequestItems"].as_object().map_or(0.0, |t| {
            t.values()
                .filter_map(Value::as_array)
                .flatten()
                .map(kb)
                .sum()
        }),
        "BatchGetItem" => request["RequestItems"].as_object().map_or(0.0, |tables| {
            tables
                .values()
                .map(|t| {
                    let keys = t["Keys"].as_array().map_or(0, Vec::len) as f64;
                    keys * if t["ConsistentRead"].as_bool().unwrap_or(false) {
                        1.0
                    } else {
                        0.5
                    }
                })
                .sum()
        }),
        // What a query or scan read is what it returned, at least one unit.
        "Query" | "Scan" => {
            answer.len().div_ceil(4096).max(1) as f64 * if consistent { 1.0 } else { 0.5 }
        }
        _ => 0.0,
    }
}

/// One error as a service words it.
struct Refusal {
    status: u16,
    code: &'static str,
    message: &'static str,
    /// Whose fault, in the query protocol's `<Type>`: the caller's (throttling) or the
    /// service's.
    sender: bool,
}

/// What the service of `call` answers for `kind` (`ServerError` for `Lost`), in its protocol,
/// with request ID number `n`.
fn refusal(call: &Call, kind: FaultKind, n: u64) -> Answer {
    let request_id = format!("fanout-aws-proxy-{n:08}");
    let throttled = matches!(kind, FaultKind::Throttle | FaultKind::ThroughputExceeded);
    let refusal = match (call.service, throttled) {
        (Some(Service::DynamoDb), true) if kind == FaultKind::ThroughputExceeded => Refusal {
            status: 400,
            code: "ProvisionedThroughputExceededException",
            message: "The level of configured provisioned throughput for the table was exceeded. \
                      Consider increasing your provisioning level with the UpdateTable API.",
            sender: true,
        },
        (Some(Service::DynamoDb), true) => Refusal {
            status: 400,
            code: "ThrottlingException",
            message: "Throughput exceeds the current capacity of your table or index.",
            sender: true,
        },
        (Some(Service::DynamoDb), false) => Refusal {
            status: 500,
            code: "InternalServerError",
            message: "Internal server error",
            sender: false,
        },
        (Some(Service::Sqs), true) => Refusal {
            status: 400,
            code: "RequestThrottled",
            message: "Request is throttled.",
            sender: true,
        },
        (Some(Service::Sqs) | None, false) => Refusal {
            status: 500,
            code: "InternalFailure",
            message: "The request processing has failed because of an unknown error, exception \
                      or failure.",
            sender: false,
        },
        (Some(Service::Sns), true) => Refusal {
            status: 400,
            code: "Throttling",
            message: "Rate exceeded",
            sender: true,
        },
        (Some(Service::Sns | Service::S3), false) => Refusal {
            status: 500,
            code: "InternalError",
            message: "We encountered an internal error. Please try again.",
            sender: false,
        },
        (Some(Service::EventBridge), true) => Refusal {
            status: 400,
            code: "ThrottlingException",
            message: "Rate exceeded",
            sender: true,
        },
        (Some(Service::EventBridge), false) => Refusal {
            status: 500,
            code: "InternalException",
            message: "An internal error occurred.",
            sender: false,
        },
        (Some(Service::S3), true) => Refusal {
            status: 503,
            code: "SlowDown",
            message: "Please reduce your request rate.",
            sender: true,
        },
        (None, true) if call.protocol == Protocol::Json => Refusal {
            status: 400,
            code: "ThrottlingException",
            message: "Rate exceeded",
            sender: true,
        },
        (None, true) => Refusal {
            status: 400,
            code: "Throttling",
            message: "Rate exceeded",
            sender: true,
        },
    };
    let Refusal {
        status,
        code,
        message,
        sender,
    } = refusal;
    let response = Response::builder().status(status);
    let (response, body) = match call.protocol {
        Protocol::Json => {
            // DynamoDB and SQS name errors with their Smithy namespace; the SDK keeps what
            // follows `#`. SQS's JSON protocol also carries the query protocol's code in a
            // header, which the SDK prefers.
            let (namespace, content_type) = match call.service {
                Some(Service::DynamoDb) => (
                    "com.amazonaws.dynamodb.v20120810#",
                    "application/x-amz-json-1.0",
                ),
                Some(Service::Sqs) => ("com.amazonaws.sqs#", "application/x-amz-json-1.0"),
                Some(Service::EventBridge) => ("", "application/x-amz-json-1.1"),
                _ => ("", "application/x-amz-json-1.0"),
            };
            let mut response = response
                .header(CONTENT_TYPE, content_type)
                .header("x-amzn-requestid", &request_id);
            if call.service == Some(Service::Sqs) {
                let side = if sender { "Sender" } else { "Receiver" };
                response = response.header("x-amzn-query-error", format!("{code};{side}"));
            }
            let body =
                serde_json::json!({ "__type": format!("{namespace}{code}"), "message": message });
            (response, body.to_string())
        }
        Protocol::Query => {
            let side = if sender { "Sender" } else { "Receiver" };
            (
                response
                    .header(CONTENT_TYPE, "text/xml")
                    .header("x-amzn-requestid", &request_id),
                format!(
                    "<ErrorResponse><Error><Type>{side}</Type><Code>{code}</Code>\
                     <Message>{message}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
                ),
            )
        }
        Protocol::RestXml => (
            response
                .header(CONTENT_TYPE, "application/xml")
                .header("x-amz-request-id", &request_id),
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                 <Message>{message}</Message><RequestId>{request_id}</RequestId></Error>"
            ),
        ),
    };
    response
        .body(Full::new(Bytes::from(body)))
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Call {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        classify(
            &method.parse().unwrap(),
            &uri.parse().unwrap(),
            &map,
            body.as_bytes(),
        )
    }

    fn signed(service: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, \
             SignedHeaders=host, Signature=0"
        )
    }

    #[test]
    fn dynamodb_units_follow_the_on_demand_rules() {
        let transact = serde_json::json!({ "TransactItems": [{ "Update": {} }, { "Put": {} }] });
        assert_eq!(dynamodb_units("TransactWriteItems", &transact, b""), 4.0);
        let batch = serde_json::json!({ "RequestItems": { "t": { "Keys": [{}, {}, {}] } } });
        assert_eq!(dynamodb_units("BatchGetItem", &batch, b""), 1.5);
        let big = serde_json::json!({ "Item": { "a": { "S": "x".repeat(1500) } } });
        assert_eq!(dynamodb_units("PutItem", &big, b""), 2.0);
    }

    #[test]
    fn requests_are_told_by_target_action_or_path() {
        let put = request(
            "POST",
            "/",
            &[("x-amz-target", "DynamoDB_20120810.PutItem")],
            "{}",
        );
        assert_eq!(
            (put.service, put.label.as_str(), put.operation.as_str()),
            (Some(Service::DynamoDb), "DynamoDB", "PutItem")
        );
        let send = request(
            "POST",
            "/",
            &[("x-amz-target", "AmazonSQS.SendMessage")],
            "{}",
        );
        assert_eq!(send.service, Some(Service::Sqs));
        let events = request(
            "POST",
            "/",
            &[("x-amz-target", "AWSEvents.PutEvents")],
            "{}",
        );
        assert_eq!(events.label, "EventBridge");
        let publish = request(
            "POST",
            "/",
            &[("authorization", &signed("sns"))],
            "Action=PublishBatch&Version=2010-03-31",
        );
        assert_eq!(
            (
                publish.service,
                publish.operation.as_str(),
                publish.protocol
            ),
            (Some(Service::Sns), "PublishBatch", Protocol::Query)
        );
        let s3 = |method: &str, uri: &str| {
            request(method, uri, &[("authorization", &signed("s3"))], "").operation
        };
        assert_eq!(s3("GET", "/lists/a/b.jsonl"), "GetObject");
        assert_eq!(s3("PUT", "/lists/a.jsonl?x-id=PutObject"), "PutObject");
        assert_eq!(s3("GET", "/lists?list-type=2&prefix=a"), "ListObjectsV2");
        assert_eq!(s3("HEAD", "/lists"), "HeadBucket");
        assert_eq!(s3("PUT", "/lists/a?partNumber=1&uploadId=u"), "UploadPart");
        let unknown = request("POST", "/", &[("x-amz-target", "Other_1.Do")], "{}");
        assert_eq!((unknown.service, unknown.label.as_str()), (None, "Other_1"));
    }

    #[test]
    fn rules_match_service_operations_and_writes() {
        let put = request(
            "POST",
            "/",
            &[("x-amz-target", "DynamoDB_20120810.PutItem")],
            "{}",
        );
        let get = request(
            "POST",
            "/",
            &[("x-amz-target", "DynamoDB_20120810.GetItem")],
            "{}",
        );
        let send = request(
            "POST",
            "/",
            &[("x-amz-target", "AmazonSQS.SendMessage")],
            "{}",
        );
        let writes = FaultRule::any_service(FaultKind::Throttle).writes_only();
        assert!(writes.matches(&put) && !writes.matches(&get) && !writes.matches(&send));
        let sqs = FaultRule::new("sqs".parse().unwrap(), FaultKind::ServerError);
        assert!(sqs.matches(&send) && !sqs.matches(&put));
        let named = FaultRule::new(Service::DynamoDb, FaultKind::Lost).operations(["GetItem"]);
        assert!(named.matches(&get) && !named.matches(&put));
        assert!(FaultRule::any_service(FaultKind::Lost).matches(&send));
    }
}
