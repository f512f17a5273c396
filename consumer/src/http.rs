//! The outbound call: a guarded HTTP client and the classification of what came back.
//!
//! Classification: 2xx succeeded; 408, 429, 5xx, timeouts and connection errors are transient
//! (SQS retries them); other 4xx, redirects we do not follow, refused addresses and bad input
//! are permanent (DLQ). The client is `fanout_shared::guarded_http`'s, which the producer's
//! HTTP list endpoints share: the SSRF guard sits in its DNS resolver, so it judges the
//! addresses actually connected to, for the first request and for every redirect; redirects are
//! followed by hand so each hop also meets the allow-list and loses its secrets when it leaves
//! the origin.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};

use fanout_shared::guarded_http::{
    self, drain, env_headers, refused_address, root_cause, GuardedClient, Hop, RedirectRules, Sent,
};
use fanout_shared::{check_literal_host, Failure, FailureKind, JobTarget};

/// Header carrying the job's message ID, so targets that support it dedupe on their side too.
pub(crate) const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// How a redirect refused by the allow-list names it: the consumer's list is the config's.
const ALLOW_LIST: &str = "the consumer's allowed hosts (a `hosts` key of the config allows it)";
/// Longest `Retry-After` honoured: SQS's visibility timeout ceiling.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(12 * 60 * 60);

/// How a call ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CallOutcome {
    /// 2xx.
    Succeeded {
        /// The status code.
        status: u16,
    },
    /// Worth retrying later.
    Transient {
        /// Why, for logs and the idempotency record.
        reason: String,
        /// The status code, if a response came.
        status: Option<u16>,
        /// The target's `Retry-After`, on 429 and 503.
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help: dead-letter it (the DLQ message's `failure_reason` is its text;
    /// its status code, if a response came, is in its kind).
    Permanent(Failure),
}

/// The HTTP client every record of an instance shares (connection pool, TLS sessions).
#[derive(Clone)]
pub(crate) struct Caller {
    client: GuardedClient,
    allow_private: bool,
}

impl Caller {
    /// Builds the client. Redirects may only reach `allowed_hosts` (the config's, see
    /// `PipelineConfig::allowed_hosts`). With `allow_private_networks` the SSRF guard is off
    /// (tests, private APIs).
    pub(crate) fn new(
        allow_private_networks: bool,
        allowed_hosts: BTreeSet<String>,
    ) -> Result<Self, reqwest::Error> {
        let client = Self::client_builder(allow_private_networks).build()?;
        Ok(Self::with_client(
            client,
            allow_private_networks,
            allowed_hosts,
        ))
    }

    fn with_client(
        client: reqwest::Client,
        allow_private: bool,
        allowed_hosts: BTreeSet<String>,
    ) -> Self {
        let rules = RedirectRules::new(allowed_hosts, allow_private, ALLOW_LIST);
        Self {
            client: GuardedClient::new(client, rules),
            allow_private,
        }
    }

    /// The guarded client's settings (no automatic redirects, no proxy, the guarded resolver
    /// unless private networks are allowed) with a pool kept warm across records.
    fn client_builder(allow: bool) -> reqwest::ClientBuilder {
        guarded_http::client_builder(allow)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
    }

    /// Calls `target` with `Idempotency-Key: message_id`, following redirects, all within
    /// `timeout`, and classifies the result. Header placeholders are resolved from this
    /// process's environment here, so secrets exist only in the request.
    pub(crate) async fn call(
        &self,
        target: &JobTarget,
        message_id: &str,
        timeout: Duration,
    ) -> CallOutcome {
        let hop = match self.first_hop(target, message_id) {
            Ok(hop) => hop,
            Err(failure) => return CallOutcome::Permanent(failure),
        };
        match self.client.send(hop, timeout).await {
            Sent::Response(response) => classify_response(response).await,
            Sent::Refused { status, reason } => {
                CallOutcome::Permanent(Failure::new(FailureKind::Http(status.as_u16()), reason))
            }
            Sent::Failed(err) => classify_error(&err, timeout),
            Sent::TimedOut => CallOutcome::Transient {
                reason: format!("timeout after {} ms", timeout.as_millis()),
                status: None,
                retry_after: None,
            },
        }
    }

    /// The first request of a call, or why it cannot be made: an address the guard refuses, or
    /// a request that cannot be built (an unset `${env:…}` variable, an invalid header value).
    fn first_hop(&self, target: &JobTarget, message_id: &str) -> Result<Hop, Failure> {
        if !self.allow_private {
            if let Some(host) = reqwest::Url::parse(&target.url)
                .ok()
                .as_ref()
                .and_then(reqwest::Url::host)
            {
                check_literal_host(&host).map_err(|e| {
                    Failure::new(FailureKind::RefusedAddress, format!("refused: {e}"))
                })?;
            }
        }
        self.build_hop(target, message_id)
            .map_err(|e| Failure::new(FailureKind::BadRequest, e.to_string()))
    }

    fn build_hop(&self, target: &JobTarget, message_id: &str) -> Result<Hop, RequestError> {
        let url = reqwest::Url::parse(&target.url).map_err(RequestError::Url)?;
        let method = Method::from_bytes(target.method.as_bytes())
            .map_err(|_| RequestError::Method(target.method.clone()))?;
        // Values from the environment are secrets: marked sensitive, never in an error.
        let mut headers = env_headers(&target.headers)?;
        let key = HeaderValue::from_str(message_id).map_err(|_| RequestError::MessageId)?;
        headers.insert(IDEMPOTENCY_KEY, key);
        let body = match &target.body {
            Some(body) => {
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                Some(serde_json::to_vec(body).map_err(RequestError::Body)?)
            }
            None => None,
        };
        Ok(Hop {
            url,
            method,
            headers,
            body,
        })
    }
}

/// Why a job's request could not be built: a permanent failure (the same message would fail
/// the same way), whose text is its dead-letter reason.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("bad url: {0}")]
    Url(url::ParseError),
    #[error("bad method {0:?}")]
    Method(String),
    #[error(transparent)]
    Header(#[from] fanout_shared::guarded_http::EnvHeaderError),
    #[error("bad message id")]
    MessageId,
    #[error("body: {0}")]
    Body(serde_json::Error),
}

async fn classify_response(mut response: reqwest::Response) -> CallOutcome {
    let status = response.status();
    let retry_after = parse_retry_after(response.headers());
    drain(&mut response).await;
    let code = status.as_u16();
    if status.is_success() {
        CallOutcome::Succeeded { status: code }
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        let honours =
            status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
        CallOutcome::Transient {
            reason: format!("HTTP {status}"),
            status: Some(code),
            retry_after: retry_after.filter(|_| honours),
        }
    } else if status.is_redirection() {
        CallOutcome::Permanent(Failure::new(
            FailureKind::Http(code),
            format!("HTTP {status}: redirect not followed"),
        ))
    } else {
        CallOutcome::Permanent(Failure::new(
            FailureKind::Http(code),
            format!("HTTP {status}"),
        ))
    }
}

fn classify_error(err: &reqwest::Error, timeout: Duration) -> CallOutcome {
    if let Some(forbidden) = refused_address(err) {
        return CallOutcome::Permanent(Failure::new(
            FailureKind::RefusedAddress,
            format!("refused: {forbidden}"),
        ));
    }
    let reason = if err.is_timeout() {
        format!("timeout after {} ms", timeout.as_millis())
    } else if err.is_connect() {
        format!("connection failed: {}", root_cause(err))
    } else if err.is_builder() {
        return CallOutcome::Permanent(Failure::new(
            FailureKind::BadRequest,
            format!("bad request: {}", root_cause(err)),
        ));
    } else {
        format!("request failed: {}", root_cause(err))
    };
    CallOutcome::Transient {
        reason,
        status: None,
        retry_after: None,
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, capped at SQS's 12 h visibility ceiling.
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("999999999"));
        assert_eq!(parse_retry_after(&h), Some(MAX_RETRY_AFTER));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&soon).unwrap());
        let d = parse_retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h), None);
    }

    fn target(url: &str, headers: &[(&str, &str)]) -> JobTarget {
        JobTarget {
            id: "a".into(),
            url: url.into(),
            method: "GET".into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: None,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn env_header_values_are_sent_but_never_printed() {
        std::env::set_var("FANOUT_TEST_HTTP_SECRET", "s3cret-x");
        let headers = [
            ("Authorization", "Bearer ${env:FANOUT_TEST_HTTP_SECRET}"),
            ("X-Plain", "visible"),
        ];
        let caller = Caller::new(true, BTreeSet::new()).unwrap();
        let hop = caller
            .first_hop(&target("http://127.0.0.1:1/", &headers), "m-1")
            .unwrap();
        assert_eq!(hop.headers["authorization"], "Bearer s3cret-x");
        let printed = format!("{hop:?}");
        assert!(
            !printed.contains("s3cret-x") && printed.contains("visible"),
            "{printed}"
        );
    }

    #[tokio::test]
    async fn every_redirect_hop_is_guarded_by_literal_and_after_dns() {
        let server = fanout_testkit::target_server::TargetServer::start()
            .await
            .unwrap();
        let addr: SocketAddr = server
            .base_url()
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let hostname = fanout_testkit::target_server::loopback_hostname()
            .await
            .expect("the host name resolves to loopback (/etc/hosts)");
        // The guarded client, but `origin.test` stands for a public origin: a pinned address
        // skips the resolver, so only the redirect's own hop meets the guard.
        let client = Caller::client_builder(false)
            .resolve("origin.test", addr)
            .build()
            .unwrap();
        // Every hop below is in the allow-list, so the guard is what refuses it.
        let allowed = [
            "origin.test",
            "169.254.169.254",
            "127.0.0.1",
            "[::ffff:a00:1]",
            "localhost",
            &hostname,
        ];
        let caller = Caller::with_client(
            client,
            false,
            allowed.iter().map(|h| h.to_string()).collect(),
        );
        let port = addr.port();
        let cases = [
            (format!("http://origin.test:{port}/ok/followed"), "succeeded".to_owned()),
            (
                "http://169.254.169.254/latest/meta-data/".to_owned(),
                "redirect refused: 169.254.169.254 is a link-local address (metadata endpoint range)".to_owned(),
            ),
            (format!("http://127.0.0.1:{port}/ok"), "redirect refused: 127.0.0.1 is a loopback address".to_owned()),
            (format!("http://[::ffff:10.0.0.1]:{port}/ok"), "redirect refused: ::ffff:10.0.0.1 is a private address".to_owned()),
            (format!("http://localhost:{port}/ok"), "redirect refused: host localhost is loopback".to_owned()),
            (format!("http://{hostname}:{port}/ok"), format!("refused: {hostname} resolves to a loopback address")),
            (
                format!("http://other.test:{port}/ok"),
                r#"redirect refused: host "other.test" is not in the consumer's allowed hosts (a `hosts` key of the config allows it)"#.to_owned(),
            ),
        ];
        for (to, expected) in cases {
            let url = format!("http://origin.test:{port}/redirect/x?to={to}");
            let outcome = caller
                .call(&target(&url, &[]), "m-1", Duration::from_secs(2))
                .await;
            let got = match outcome {
                CallOutcome::Succeeded { .. } => "succeeded".to_owned(),
                CallOutcome::Permanent(failure) => failure.to_string(),
                CallOutcome::Transient { reason, .. } => reason,
            };
            assert_eq!(got, expected, "redirect to {to}");
        }
        let reached: Vec<String> = server.records().iter().map(|r| r.path.clone()).collect();
        assert_eq!(
            reached
                .iter()
                .filter(|p| !p.starts_with("/redirect"))
                .collect::<Vec<_>>(),
            ["/ok/followed"],
            "no refused hop was connected to"
        );
    }
}
