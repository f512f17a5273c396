//! A proxy between the deployed functions and the emulator that counts every AWS request they
//! make, by service and operation, with what AWS would bill for it: DynamoDB capacity units,
//! EventBridge events, SNS and SQS requests (a batch of small messages is one request).
//!
//! The emulator is started with the proxy as the functions' `AWS_ENDPOINT_URL`
//! (`FANOUT_LOCAL_CLOUD_FUNCTION_ENDPOINT`); the proxy learns the emulator's own address once it
//! runs ([`CountingProxy::set_upstream`]). Requests are forwarded as they came (headers, host and
//! signature included) and answered with the emulator's response.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

/// What the requests of one service operation add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Tally {
    /// HTTP requests made.
    pub requests: u64,
    /// Billed units: DynamoDB read or write request units, EventBridge events, SNS/SQS
    /// requests (64 KB chunks).
    pub units: f64,
}

/// Counts by `(service, operation)`.
pub(crate) type Counts = BTreeMap<(String, String), Tally>;

#[derive(Default)]
struct Shared {
    upstream: Mutex<Option<String>>,
    counts: Mutex<Counts>,
}

/// The running proxy; stops when dropped.
pub(crate) struct CountingProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CountingProxy {
    /// Listens on a free port of 127.0.0.1; forwards nothing until [`Self::set_upstream`].
    pub(crate) async fn start() -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("proxy: {e}"))?;
        let url = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let shared = Arc::new(Shared::default());
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let state = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, client) = (state.clone(), client.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        forward(req, state.clone(), client.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { url, shared, task })
    }

    /// Where requests go from now on, e.g. `http://127.0.0.1:4566`.
    pub(crate) fn set_upstream(&self, url: &str) {
        *self
            .shared
            .upstream
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(url.trim_end_matches('/').to_owned());
    }

    /// The counts since the last call, which starts a new count.
    pub(crate) fn take(&self) -> Counts {
        std::mem::take(
            &mut *self
                .shared
                .counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

type Reply = Result<Response<Full<Bytes>>, std::io::Error>;

async fn forward(req: Request<Incoming>, shared: Arc<Shared>, client: reqwest::Client) -> Reply {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(std::io::Error::other)?;
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
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outbound = client
        .request(parts.method.clone(), format!("{upstream}{path}"))
        .body(body.clone());
    for (name, value) in &parts.headers {
        if name != hyper::header::CONTENT_LENGTH && name != hyper::header::TRANSFER_ENCODING {
            outbound = outbound.header(name, value);
        }
    }
    let answer = outbound.send().await.map_err(std::io::Error::other)?;
    let status = answer.status();
    let headers = answer.headers().clone();
    let answer_body = answer.bytes().await.map_err(std::io::Error::other)?;
    let (service, operation, units) = classify(&parts.headers, &body, &answer_body);
    {
        let mut counts = shared.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let tally = counts.entry((service, operation)).or_default();
        tally.requests += 1;
        tally.units += units;
    }
    let mut response = Response::builder().status(status);
    for (name, value) in &headers {
        if name != hyper::header::TRANSFER_ENCODING && name != hyper::header::CONTENT_LENGTH {
            response = response.header(name, value);
        }
    }
    response
        .body(Full::new(answer_body))
        .map_err(std::io::Error::other)
}

/// 64 KB chunks of a payload: SNS, SQS and EventBridge bill per started chunk.
fn chunks(bytes: usize) -> f64 {
    bytes.div_ceil(64 * 1024).max(1) as f64
}

/// The service (from the JSON protocol's target or the signature's scope), the operation, and
/// the billed units of one request.
fn classify(headers: &hyper::HeaderMap, body: &[u8], answer: &[u8]) -> (String, String, f64) {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        let (prefix, operation) = target.split_once('.').unwrap_or((target, ""));
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        return match prefix {
            p if p.starts_with("DynamoDB") => (
                "DynamoDB".into(),
                operation.into(),
                dynamodb_units(operation, &request, answer),
            ),
            "AmazonSQS" => ("SQS".into(), operation.into(), chunks(body.len())),
            "AWSEvents" => (
                "EventBridge".into(),
                operation.into(),
                request["Entries"]
                    .as_array()
                    .map_or(1.0, |e| e.len() as f64),
            ),
            other => (other.into(), operation.into(), 1.0),
        };
    }
    let form = String::from_utf8_lossy(body);
    let action = form
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("?")
        .to_owned();
    let scope = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').nth(3))
        .unwrap_or("?");
    match scope {
        "sns" => ("SNS".into(), action, chunks(body.len())),
        "sqs" => ("SQS".into(), action, chunks(body.len())),
        other => (other.into(), action, 1.0),
    }
}

/// Capacity units of one DynamoDB request (on-demand): a write is 1 WRU per started KB of the
/// item, in a transaction 2; a read 1 RRU per started 4 KB strongly consistent, half that
/// eventually consistent, in a transaction 2. Item sizes are bounded above by their JSON.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamodb_units_follow_the_on_demand_rules() {
        let transact = serde_json::json!({ "TransactItems": [{ "Update": {} }, { "Put": {} }] });
        assert_eq!(dynamodb_units("TransactWriteItems", &transact, b""), 4.0);
        let batch = serde_json::json!({ "RequestItems": { "t": { "Keys": [{}, {}, {}] } } });
        assert_eq!(dynamodb_units("BatchGetItem", &batch, b""), 1.5);
        let big = serde_json::json!({ "Item": { "a": { "S": "x".repeat(1500) } } });
        assert_eq!(dynamodb_units("PutItem", &big, b""), 2.0);
    }
}
