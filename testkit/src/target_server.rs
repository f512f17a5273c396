//! A target HTTP server on 127.0.0.1 for demos, tests and benchmarks.
//!
//! Behaviour is chosen by the path, so a config file alone describes a workload:
//! `/{kind}/{anything}?{params}`, where the key for per-target state is the whole path.
//! - `ok`: 200.
//! - `slow?ms=N`: waits N ms, then 200; with `&fail=K`, only the first K calls wait.
//! - `flaky?fail=N`: 500 for the first N calls, then 200.
//! - `limited?fail=N&retry_after=S`: 429 with `Retry-After: S` for the first N calls, then 200.
//! - `bad`: 400, always.
//! - `broken`: 400 until [`TargetServer::fix`] is called, then 200 (a target an operator fixes
//!   before replaying the DLQ).
//! - `reset?fail=N`: drops the connection without answering for the first N calls, then 200.
//! - `redirect?to=URL`: 302 to URL.
//! - `capped?rps=R`: the server enforces its own limit, as many APIs do: a token bucket of R
//!   calls per second (burst R) shared by every `capped` path; above it, 429 with
//!   `Retry-After: 1`.
//! - `outage?secs=S`: the whole host is down for S seconds from the first `outage` call: 503
//!   without `Retry-After`, then 200.
//!
//! Like a real API that supports `Idempotency-Key`, it applies each key's effect once: a 2xx
//! for a key that already succeeded is counted as a repeat, not a second effect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::serve::{serve, Answer};

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// When it arrived.
    pub at: Instant,
    /// Its path (with query).
    pub path: String,
    /// Its `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// Its `Authorization` header (tests check secrets arrive here and nowhere else).
    pub authorization: Option<String>,
    /// Every header, lower-case name and value (values that are not text are left out).
    pub headers: Vec<(String, String)>,
    /// The status answered: 0 for a dropped connection, or while unanswered (a slow call whose
    /// client gave up is never answered).
    pub status: u16,
}

#[derive(Default)]
struct State {
    calls_by_path: HashMap<String, u32>,
    records: Vec<CallRecord>,
    succeeded_keys: HashMap<String, u32>,
    fixed: bool,
    /// `capped`: tokens left and when they were last topped up.
    bucket: Option<(f64, Instant)>,
    /// `outage`: when the first call arrived.
    outage_started: Option<Instant>,
}

impl State {
    /// Takes a token of the `capped` bucket (R per second, burst R), if one is left.
    fn take_token(&mut self, rps: f64) -> bool {
        let now = Instant::now();
        let (tokens, last) = self.bucket.unwrap_or((rps, now));
        let tokens = (tokens + rps * now.duration_since(last).as_secs_f64()).min(rps);
        let (left, taken) = if tokens >= 1.0 {
            (tokens - 1.0, true)
        } else {
            (tokens, false)
        };
        self.bucket = Some((left, now));
        taken
    }

    /// Whether the `outage` host is still down `secs` after its first call.
    fn down(&mut self, secs: u64) -> bool {
        let started = *self.outage_started.get_or_insert_with(Instant::now);
        started.elapsed() < Duration::from_secs(secs)
    }
}

/// A running target server; stops when dropped.
pub struct TargetServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

/// Where it listens; what it saw is [`TargetServer::stats`].
impl std::fmt::Debug for TargetServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// What the server saw, summed up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetStats {
    /// Requests received.
    pub calls: usize,
    /// Distinct idempotency keys that got a 2xx: the effects applied.
    pub effects: usize,
    /// 2xx calls for a key that had already succeeded.
    pub repeat_successes: usize,
}

fn query(path: &str, name: &str) -> Option<u64> {
    let query = path.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

impl TargetServer {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// Starts on a free port of `ip`. Any 127.x.y.z is loopback on Linux, so servers on
    /// 127.0.0.2, 127.0.0.3, … are distinct hosts to the consumer's per-host budgets.
    pub async fn start_on(ip: std::net::IpAddr) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let (addr, task) = serve(ip, move |req| handle(req, shared.clone())).await?;
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request seen so far.
    pub fn records(&self) -> Vec<CallRecord> {
        self.state
            .lock()
            .map(|s| s.records.clone())
            .unwrap_or_default()
    }

    /// Calls, effects and repeats so far.
    pub fn stats(&self) -> TargetStats {
        let Ok(state) = self.state.lock() else {
            return TargetStats::default();
        };
        TargetStats {
            calls: state.records.len(),
            effects: state.succeeded_keys.len(),
            repeat_successes: state
                .succeeded_keys
                .values()
                .map(|n| (*n as usize).saturating_sub(1))
                .sum(),
        }
    }

    /// Makes `broken` targets answer 200 from now on.
    pub fn fix(&self) {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fixed = true;
    }

    /// The most requests that arrived within any window of `window`.
    pub fn max_calls_in_window(&self, window: Duration) -> usize {
        let mut times: Vec<Instant> = self.records().iter().map(|r| r.at).collect();
        times.sort();
        max_in_window(&times, window)
    }
}

/// The most of `times` (sorted) within any half-open window of `window`: a peak rate as a
/// count, for arrivals gathered from several servers too.
pub fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// This machine's host name, if it resolves to loopback addresses only (on Linux, through
/// /etc/hosts): a name, not a literal, for tests of the SSRF guard's check after DNS.
pub async fn loopback_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()?
        .trim()
        .to_owned();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
        .await
        .ok()?
        .collect();
    (!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())).then_some(name)
}

impl Drop for TargetServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(req: Request<Incoming>, state: Arc<Mutex<State>>) -> Answer {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (key, authorization) = (header("idempotency-key"), header("authorization"));
    let headers = req
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let kind = path
        .trim_start_matches('/')
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .to_owned();
    // Recorded on arrival, so a call counts (and its time is right for rate checks) even when
    // the client gives up before the answer and hyper drops this handler.
    let (call_number, fixed, index, over_cap, down) = {
        let mut s = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = s.calls_by_path.entry(path.clone()).or_insert(0);
        *n += 1;
        let n = *n;
        s.records.push(CallRecord {
            at: Instant::now(),
            path: path.clone(),
            idempotency_key: key.clone(),
            authorization,
            headers,
            status: 0,
        });
        let over_cap = kind == "capped" && !s.take_token(query(&path, "rps").unwrap_or(10) as f64);
        let down = kind == "outage" && s.down(query(&path, "secs").unwrap_or(5));
        (n, s.fixed, s.records.len() - 1, over_cap, down)
    };
    let failing = u64::from(call_number) <= query(&path, "fail").unwrap_or(0);
    let dropped = kind == "reset" && failing;
    let mut response = Response::builder();
    let status = match kind.as_str() {
        "slow" if failing || query(&path, "fail").is_none() => {
            tokio::time::sleep(Duration::from_millis(query(&path, "ms").unwrap_or(100))).await;
            StatusCode::OK
        }
        "flaky" if failing => StatusCode::INTERNAL_SERVER_ERROR,
        "limited" if failing => {
            response = response.header(
                "retry-after",
                query(&path, "retry_after").unwrap_or(1).to_string(),
            );
            StatusCode::TOO_MANY_REQUESTS
        }
        "capped" if over_cap => {
            response = response.header("retry-after", "1");
            StatusCode::TOO_MANY_REQUESTS
        }
        "outage" if down => StatusCode::SERVICE_UNAVAILABLE,
        "bad" => StatusCode::BAD_REQUEST,
        "broken" if !fixed => StatusCode::BAD_REQUEST,
        "redirect" => {
            let to = path
                .split_once("to=")
                .map(|(_, to)| to.to_owned())
                .unwrap_or_default();
            response = response.header("location", to);
            StatusCode::FOUND
        }
        _ => StatusCode::OK,
    };
    {
        let mut s = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !dropped {
            s.records[index].status = status.as_u16();
            if let (true, Some(k)) = (status.is_success(), &key) {
                *s.succeeded_keys.entry(k.clone()).or_insert(0) += 1;
            }
        }
    }
    if dropped {
        // An error from the service makes hyper close the connection without a response.
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected reset",
        ));
    }
    response
        .status(status)
        .body(Full::new(Bytes::from_static(b"{}")))
        .map_err(|e| std::io::Error::other(e.to_string()))
}
