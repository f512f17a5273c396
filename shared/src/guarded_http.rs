//! The guarded HTTP client the consumer calls targets with and the producer reads HTTP list
//! endpoints with: one copy of the SSRF guard's resolver, the redirect rules and the header
//! secrets, so both sides of the pipeline make requests under the same rules.
//!
//! - **The SSRF guard sits in the DNS resolver** ([`client_builder`]), so it judges the
//!   addresses actually connected to, for the first request and for every redirect. It refuses a
//!   name when *any* of its addresses is forbidden (not just filters them), which stops
//!   DNS-rebinding tricks that mix a public and a private address. No proxy is used: a proxy
//!   would resolve names itself, past the guard. `allow_private_networks` turns the guard off.
//! - **Redirects are followed by hand** ([`GuardedClient::send`], [`RedirectRules`]), so every
//!   hop meets the same rules as the first request: `http`/`https` only, a host in the caller's
//!   allow-list, the guard for literal addresses (names meet the resolver when the hop
//!   connects); otherwise the request is refused with a reason naming the host. On a hop to
//!   another origin (scheme, host or port) the request drops every header whose value came from
//!   the environment, plus `Authorization`, `Cookie` and `Proxy-Authorization`, and they stay
//!   dropped for the rest of the chain. 301/302 turn a POST into a GET and 303 turns anything
//!   but HEAD into a GET, without the body; 307/308 keep method and body.
//! - **Secrets exist only in the request** ([`env_headers`]): `${env:NAME}` in a header value is
//!   read from this process's environment when the request is built, and the value is marked
//!   sensitive, so `Debug` prints `Sensitive` and no error or log can quote it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE,
    LOCATION, PROXY_AUTHORIZATION,
};
use reqwest::{Method, StatusCode, Url};

use crate::netguard::{self, RefusedHost};
use crate::target_rules::{env_placeholders, HeaderPart, PlaceholderError};

/// Redirects followed at most.
pub(crate) const MAX_REDIRECTS: usize = 5;

/// Bytes of a response body read (and discarded) so the connection can be reused.
const MAX_BODY_DRAIN: usize = 1 << 20;

/// Headers never sent to another origin, whatever their value.
const CREDENTIAL_HEADERS: [HeaderName; 3] = [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION];

/// An address the SSRF guard refused, carried through reqwest's error chain.
#[derive(Debug)]
struct ForbiddenAddress(String);

impl std::fmt::Display for ForbiddenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ForbiddenAddress {}

/// Resolves with the system resolver, then refuses the name if any address is forbidden.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(reason) = addrs
                .iter()
                .find_map(|a| netguard::forbidden_reason(a.ip()))
            {
                return Err(
                    Box::new(ForbiddenAddress(format!("{host} resolves to a {reason}"))) as _,
                );
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A client builder with the guard's settings: no automatic redirects (they are followed by
/// [`GuardedClient::send`]), no proxy, and the guarded resolver unless `allow_private` (the
/// config's `allow_private_networks`). Callers add their own pool and timeout settings.
pub fn client_builder(allow_private: bool) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("fanout/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve names itself, past the guard.
        .no_proxy();
    if !allow_private {
        builder = builder.dns_resolver(Arc::new(GuardedResolver));
    }
    builder
}

/// Why the guarded resolver refused a request (`"<host> resolves to a loopback address"`), if
/// that is what `err` (or an error in its chain) is.
pub fn refused_address(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(forbidden) = e.downcast_ref::<ForbiddenAddress>() {
            return Some(forbidden.to_string());
        }
        source = e.source();
    }
    None
}

/// The innermost error of `err`'s chain: what actually went wrong, without reqwest's wrapping.
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut e = err;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}

/// One request of a redirect chain.
#[derive(Debug, Clone)]
pub struct Hop {
    /// Where it goes.
    pub url: Url,
    /// Its method.
    pub method: Method,
    /// Its headers; values from the environment are marked sensitive.
    pub headers: HeaderMap,
    /// Its body, if any.
    pub body: Option<Vec<u8>>,
}

/// Why a request may not go to a URL ([`RedirectRules::check`]); each names the scheme or the
/// host, so the reader knows which rule to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopRefused {
    /// Not `http` or `https`.
    #[error("scheme {0:?} is not allowed")]
    Scheme(String),
    /// A host outside the caller's allow-list.
    #[error("host {host:?} is not in {allow_list}")]
    NotAllowed {
        /// The host, lower-case.
        host: String,
        /// The list, as the caller names it ([`RedirectRules::new`]).
        allow_list: &'static str,
    },
    /// A literal address (or `localhost`) the SSRF guard refuses.
    #[error(transparent)]
    Guard(#[from] RefusedHost),
}

/// Why a redirect is not followed ([`RedirectRules::next`]); the text starts `redirect
/// refused: `, which the consumer's dead-letter reasons and the producer's page errors show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectRefused {
    /// The chain is longer than `MAX_REDIRECTS`.
    #[error("redirect refused: more than {MAX_REDIRECTS} redirects")]
    TooMany,
    /// `Location` does not resolve to a URL.
    #[error("redirect refused: Location is not a URL ({0})")]
    NotUrl(url::ParseError),
    /// The URL it leads to breaks the rules.
    #[error("redirect refused: {0}")]
    Hop(#[from] HopRefused),
}

/// What a hop may reach: the allow-list and whether the SSRF guard is on.
#[derive(Debug, Clone)]
pub struct RedirectRules {
    allowed_hosts: Arc<BTreeSet<String>>,
    allow_private: bool,
    allow_list: &'static str,
}

impl RedirectRules {
    /// Rules for `allowed_hosts` (lower-case host names, as `PipelineConfig::allowed_hosts`
    /// gives them); `allow_private` turns the SSRF guard off. `allow_list` names the list in a
    /// refusal (`host "x" is not in <allow_list>`), so the reader learns which list to extend.
    pub fn new(
        allowed_hosts: BTreeSet<String>,
        allow_private: bool,
        allow_list: &'static str,
    ) -> Self {
        Self {
            allowed_hosts: Arc::new(allowed_hosts),
            allow_private,
            allow_list,
        }
    }

    /// Whether the SSRF guard is off.
    pub fn allow_private(&self) -> bool {
        self.allow_private
    }

    /// The hop a redirect `status` with `location` leads to from `hop`, having followed
    /// `followed` redirects already, or why it is refused (`redirect refused: …`).
    pub fn next(
        &self,
        hop: &Hop,
        status: StatusCode,
        location: &str,
        followed: usize,
    ) -> Result<Hop, RedirectRefused> {
        if followed >= MAX_REDIRECTS {
            return Err(RedirectRefused::TooMany);
        }
        let url = hop.url.join(location).map_err(RedirectRefused::NotUrl)?;
        self.check(&url)?;
        let mut next = Hop { url, ..hop.clone() };
        let to_get = match status {
            StatusCode::SEE_OTHER => hop.method != Method::HEAD,
            StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND => hop.method == Method::POST,
            _ => false,
        };
        if to_get {
            next.method = Method::GET;
            next.body = None;
            next.headers.remove(CONTENT_TYPE);
            next.headers.remove(CONTENT_LENGTH);
        }
        if next.url.origin() != hop.url.origin() {
            strip_credentials(&mut next.headers);
        }
        Ok(next)
    }

    /// Whether a request may go to `url`: scheme, allow-list, then the SSRF guard for literal
    /// addresses (names meet the guarded resolver when the request connects). The error names
    /// the scheme or the host.
    pub fn check(&self, url: &Url) -> Result<(), HopRefused> {
        let scheme = url.scheme();
        if !matches!(scheme, "http" | "https") {
            return Err(HopRefused::Scheme(scheme.to_owned()));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if !self.allowed_hosts.contains(&host) {
            return Err(HopRefused::NotAllowed {
                host,
                allow_list: self.allow_list,
            });
        }
        if let (false, Some(host)) = (self.allow_private, url.host()) {
            netguard::check_literal_host(&host)?;
        }
        Ok(())
    }
}

/// The redirect statuses followed, with the `Location` to follow.
pub(crate) fn location(status: StatusCode, headers: &HeaderMap) -> Option<&str> {
    let followed = [
        StatusCode::MOVED_PERMANENTLY,
        StatusCode::FOUND,
        StatusCode::SEE_OTHER,
        StatusCode::TEMPORARY_REDIRECT,
        StatusCode::PERMANENT_REDIRECT,
    ];
    if !followed.contains(&status) {
        return None;
    }
    headers.get(LOCATION)?.to_str().ok()
}

/// Drops environment-derived (sensitive) values and credential headers.
fn strip_credentials(headers: &mut HeaderMap) {
    let secret: Vec<HeaderName> = headers
        .iter()
        .filter(|(name, value)| value.is_sensitive() || CREDENTIAL_HEADERS.contains(name))
        .map(|(name, _)| name.clone())
        .collect();
    for name in secret {
        headers.remove(name);
    }
}

/// Why a header template could not be resolved (`resolve_env`); never quotes a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A malformed `${env:NAME}` reference.
    #[error(transparent)]
    Placeholder(#[from] PlaceholderError),
    /// The variable is not set in this process's environment.
    #[error("environment variable {0} is not set")]
    Unset(String),
}

/// Why request headers could not be built from their templates ([`env_headers`]); each names
/// the header, never its value (which may hold a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvHeaderError {
    /// Its template could not be resolved.
    #[error("header {name}: {problem}")]
    Template {
        /// The header, as configured.
        name: String,
        /// Why.
        problem: EnvError,
    },
    /// The name is not a valid header name.
    #[error("bad header name {0:?}")]
    Name(String),
    /// The resolved value is not a valid header value (a control character from the
    /// environment, say).
    #[error("header {0}: value is not valid")]
    Value(HeaderName),
}

/// Replaces `${env:NAME}` with the environment variable; an unset one is an error naming it
/// (never a value).
pub(crate) fn resolve_env(template: &str) -> Result<String, EnvError> {
    let mut out = String::with_capacity(template.len());
    for part in env_placeholders(template)? {
        match part {
            HeaderPart::Literal(text) => out.push_str(text),
            HeaderPart::Env(name) => {
                out.push_str(&std::env::var(name).map_err(|_| EnvError::Unset(name.to_owned()))?)
            }
        }
    }
    Ok(out)
}

/// Headers from config templates (name → value with `${env:NAME}` placeholders), resolved
/// from this process's environment. A value built from the environment is marked sensitive:
/// `Debug` prints `Sensitive` and a hop to another origin drops it. Errors name the header,
/// never its value.
pub fn env_headers<'a>(
    templates: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<HeaderMap, EnvHeaderError> {
    let mut headers = HeaderMap::new();
    for (name, template) in templates {
        let value = resolve_env(template).map_err(|problem| EnvHeaderError::Template {
            name: name.clone(),
            problem,
        })?;
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| EnvHeaderError::Name(name.clone()))?;
        let Ok(mut value) = HeaderValue::from_str(&value) else {
            return Err(EnvHeaderError::Value(name));
        };
        value.set_sensitive(template.contains("${"));
        headers.insert(name, value);
    }
    Ok(headers)
}

/// A guarded client and the rules its redirects follow; cheap to clone (the connection pool is
/// shared).
#[derive(Debug, Clone)]
pub struct GuardedClient {
    client: reqwest::Client,
    rules: RedirectRules,
}

/// How [`GuardedClient::send`] ended.
#[derive(Debug)]
pub enum Sent {
    /// The last hop's response: not a followed redirect (any status, a redirect without a
    /// `Location` included). Its `url()` is where the chain ended.
    Response(reqwest::Response),
    /// A redirect the rules refused: its status and why (`redirect refused: …`).
    Refused {
        /// The redirect's status.
        status: StatusCode,
        /// Why, naming the host or the rule.
        reason: String,
    },
    /// The request failed (connection, the guard's resolver, the timeout, a bad request);
    /// [`refused_address`] tells whether the guard refused it.
    Failed(reqwest::Error),
    /// The redirects used up the time.
    TimedOut,
}

impl GuardedClient {
    /// `client` (built from [`client_builder`]) under `rules`.
    pub fn new(client: reqwest::Client, rules: RedirectRules) -> Self {
        Self { client, rules }
    }

    /// The rules its redirects follow.
    pub fn rules(&self) -> &RedirectRules {
        &self.rules
    }

    /// Sends `hop`, following redirects under the rules, all within `timeout` (each hop gets
    /// what is left of it, body included).
    pub async fn send(&self, mut hop: Hop, timeout: Duration) -> Sent {
        let deadline = Instant::now() + timeout;
        let mut followed = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Sent::TimedOut;
            }
            let mut request = self
                .client
                .request(hop.method.clone(), hop.url.clone())
                .headers(hop.headers.clone())
                .timeout(remaining);
            if let Some(body) = &hop.body {
                request = request.body(body.clone());
            }
            let mut response = match request.send().await {
                Ok(response) => response,
                Err(err) => return Sent::Failed(err),
            };
            let status = response.status();
            let Some(location) = location(status, response.headers()).map(str::to_owned) else {
                return Sent::Response(response);
            };
            drain(&mut response).await;
            hop = match self.rules.next(&hop, status, &location, followed) {
                Ok(next) => next,
                Err(refused) => {
                    return Sent::Refused {
                        status,
                        reason: refused.to_string(),
                    }
                }
            };
            followed += 1;
        }
    }
}

/// Reads (a bounded part of) the body so the keep-alive connection goes back to the pool.
pub async fn drain(response: &mut reqwest::Response) {
    let mut drained = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        drained += chunk.len();
        if drained > MAX_BODY_DRAIN {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The consumer's wording, which its tests assert.
    const CONSUMER: &str = "the consumer's allowed hosts (a `hosts` key of the config allows it)";

    fn hop(url: &str, method: Method) -> Hop {
        let mut headers = HeaderMap::new();
        let mut secret = HeaderValue::from_static("k");
        secret.set_sensitive(true);
        headers.insert("x-api-key", secret);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer literal"));
        headers.insert(COOKIE, HeaderValue::from_static("c=1"));
        headers.insert("x-plain", HeaderValue::from_static("p"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Hop {
            url: Url::parse(url).unwrap(),
            method,
            headers,
            body: Some(b"{}".to_vec()),
        }
    }

    fn rules() -> RedirectRules {
        RedirectRules::new(
            ["a.example.com", "b.example.com", "10.0.0.1"]
                .map(String::from)
                .into(),
            false,
            CONSUMER,
        )
    }

    fn names(h: &Hop) -> Vec<&str> {
        let mut names: Vec<&str> = h.headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn same_origin_keeps_headers_other_origins_lose_secrets_and_credentials() {
        let first = hop("https://a.example.com/x", Method::GET);
        let same = rules()
            .next(&first, StatusCode::FOUND, "/y?z=1", 0)
            .unwrap();
        assert_eq!(same.url.as_str(), "https://a.example.com/y?z=1");
        assert_eq!(names(&same), names(&first));
        for other in [
            "https://b.example.com/y",
            "http://a.example.com/y",
            "https://a.example.com:8443/y",
        ] {
            let next = rules()
                .next(&first, StatusCode::TEMPORARY_REDIRECT, other, 0)
                .unwrap();
            assert_eq!(names(&next), ["content-type", "x-plain"], "{other}");
            // Once dropped, they stay dropped, even back on the first origin.
            let back = rules()
                .next(&next, StatusCode::FOUND, "https://a.example.com/z", 1)
                .unwrap();
            assert_eq!(names(&back), ["content-type", "x-plain"]);
        }
    }

    #[test]
    fn hops_outside_the_allow_list_or_the_guard_are_refused_naming_the_host() {
        let first = hop("https://a.example.com/x", Method::GET);
        let refused = |to: &str, n: usize| {
            rules()
                .next(&first, StatusCode::FOUND, to, n)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("https://evil.example.net/", 0),
            r#"redirect refused: host "evil.example.net" is not in the consumer's allowed hosts (a `hosts` key of the config allows it)"#
        );
        assert_eq!(
            refused("ftp://a.example.com/", 0),
            r#"redirect refused: scheme "ftp" is not allowed"#
        );
        assert_eq!(
            refused("http://10.0.0.1/", 0),
            "redirect refused: 10.0.0.1 is a private address"
        );
        assert_eq!(
            refused("/y", MAX_REDIRECTS),
            "redirect refused: more than 5 redirects"
        );
        assert!(refused("http://[::1", 0).starts_with("redirect refused: Location is not a URL"));
        let open = RedirectRules::new(["10.0.0.1".to_owned()].into(), true, CONSUMER);
        assert!(open
            .next(&first, StatusCode::FOUND, "http://10.0.0.1/", 0)
            .is_ok());
    }

    #[test]
    fn method_and_body_follow_the_status() {
        let post = hop("https://a.example.com/x", Method::POST);
        for (status, method, body) in [
            (StatusCode::MOVED_PERMANENTLY, Method::GET, false),
            (StatusCode::FOUND, Method::GET, false),
            (StatusCode::SEE_OTHER, Method::GET, false),
            (StatusCode::TEMPORARY_REDIRECT, Method::POST, true),
            (StatusCode::PERMANENT_REDIRECT, Method::POST, true),
        ] {
            let next = rules().next(&post, status, "/y", 0).unwrap();
            assert_eq!(
                (
                    next.method,
                    next.body.is_some(),
                    next.headers.contains_key(CONTENT_TYPE)
                ),
                (method, body, body),
                "{status}"
            );
        }
        let put = rules()
            .next(
                &hop("https://a.example.com/x", Method::PUT),
                StatusCode::FOUND,
                "/y",
                0,
            )
            .unwrap();
        assert_eq!(put.method, Method::PUT);
    }

    #[test]
    fn only_redirect_statuses_with_a_location_are_followed() {
        let mut headers = HeaderMap::new();
        assert_eq!(location(StatusCode::FOUND, &headers), None);
        headers.insert(LOCATION, HeaderValue::from_static("/next"));
        assert_eq!(location(StatusCode::FOUND, &headers), Some("/next"));
        assert_eq!(location(StatusCode::NOT_MODIFIED, &headers), None);
        assert_eq!(location(StatusCode::OK, &headers), None);
    }

    #[test]
    fn env_placeholders_resolve_or_name_the_missing_variable() {
        std::env::set_var("FANOUT_TEST_HTTP_TOKEN", "s3cret");
        assert_eq!(
            resolve_env("Bearer ${env:FANOUT_TEST_HTTP_TOKEN}").unwrap(),
            "Bearer s3cret"
        );
        let err = resolve_env("${env:FANOUT_TEST_UNSET_VARIABLE}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("FANOUT_TEST_UNSET_VARIABLE is not set"),
            "{err}"
        );
    }

    #[test]
    fn env_headers_are_sensitive_and_errors_name_the_header_not_the_value() {
        std::env::set_var("FANOUT_TEST_HTTP_KEY", "k3y-x");
        let templates: std::collections::BTreeMap<String, String> = [
            ("X-Api-Key", "${env:FANOUT_TEST_HTTP_KEY}"),
            ("X-Plain", "visible"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        let headers = env_headers(&templates).unwrap();
        assert_eq!(headers["x-api-key"], "k3y-x");
        let printed = format!("{headers:?}");
        assert!(
            !printed.contains("k3y-x") && printed.contains("visible"),
            "{printed}"
        );
        let bad: std::collections::BTreeMap<String, String> = [(
            "X-Bad".to_owned(),
            "${env:FANOUT_TEST_HTTP_KEY}\n".to_owned(),
        )]
        .into();
        std::env::set_var("FANOUT_TEST_HTTP_KEY", "k3y-x");
        let err = env_headers(&bad).unwrap_err().to_string();
        assert!(err.contains("x-bad") && !err.contains("k3y-x"), "{err}");
    }
}
