//! Redirects, followed by hand so every hop meets the same rules as the first call.
//!
//! A hop must be `http`/`https`, go to a host in the consumer's allow-list (the config's target
//! hosts and `hosts` keys) and pass the SSRF guard (literal addresses here, names in the guarded
//! resolver when the hop connects); otherwise the job fails for good with a reason naming the
//! host. On a hop to another origin (scheme, host or port) the request drops every header whose
//! value came from the environment, plus `Authorization`, `Cookie` and `Proxy-Authorization`,
//! and they stay dropped for the rest of the chain. 301/302 turn a POST into a GET and 303 turns
//! anything but HEAD into a GET, without the body; 307/308 keep method and body.

use std::collections::BTreeSet;
use std::sync::Arc;

use reqwest::header::{
    HeaderMap, HeaderName, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, LOCATION,
    PROXY_AUTHORIZATION,
};
use reqwest::{Method, StatusCode, Url};

use fanout_shared::netguard;

/// Redirects followed at most.
pub(crate) const MAX_REDIRECTS: usize = 5;

/// Headers never sent to another origin, whatever their value.
const CREDENTIAL_HEADERS: [HeaderName; 3] = [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION];

/// One request of a redirect chain.
#[derive(Debug, Clone)]
pub(crate) struct Hop {
    /// Where it goes.
    pub url: Url,
    /// Its method.
    pub method: Method,
    /// Its headers; values from the environment are marked sensitive.
    pub headers: HeaderMap,
    /// Its JSON body, if any.
    pub body: Option<Vec<u8>>,
}

/// What a hop may reach: the allow-list and whether the SSRF guard is on.
#[derive(Debug, Clone)]
pub(crate) struct RedirectRules {
    allowed_hosts: Arc<BTreeSet<String>>,
    allow_private: bool,
}

impl RedirectRules {
    /// Rules for `allowed_hosts` (lower-case host names, as `PipelineConfig::allowed_hosts`
    /// gives them); `allow_private` turns the SSRF guard off.
    pub(crate) fn new(allowed_hosts: BTreeSet<String>, allow_private: bool) -> Self {
        Self {
            allowed_hosts: Arc::new(allowed_hosts),
            allow_private,
        }
    }

    /// The hop a redirect `status` with `location` leads to from `hop`, having followed
    /// `followed` redirects already, or why it is refused (a permanent failure).
    pub(crate) fn next(
        &self,
        hop: &Hop,
        status: StatusCode,
        location: &str,
        followed: usize,
    ) -> Result<Hop, String> {
        if followed >= MAX_REDIRECTS {
            return Err(format!(
                "redirect refused: more than {MAX_REDIRECTS} redirects"
            ));
        }
        let url = hop
            .url
            .join(location)
            .map_err(|e| format!("redirect refused: Location is not a URL ({e})"))?;
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

    /// A redirect target: scheme, allow-list, then the SSRF guard for literal addresses (names
    /// meet the guarded resolver when the hop connects).
    fn check(&self, url: &Url) -> Result<(), String> {
        let scheme = url.scheme();
        if !matches!(scheme, "http" | "https") {
            return Err(format!(
                "redirect refused: scheme {scheme:?} is not allowed"
            ));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if !self.allowed_hosts.contains(&host) {
            return Err(format!("redirect refused: host {host:?} is not in the consumer's allowed hosts (a `hosts` key of the config allows it)"));
        }
        if let (false, Some(host)) = (self.allow_private, url.host()) {
            netguard::check_literal_host(&host).map_err(|e| format!("redirect refused: {e}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

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
        let refused =
            |to: &str, n: usize| rules().next(&first, StatusCode::FOUND, to, n).unwrap_err();
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
        let open = RedirectRules::new(["10.0.0.1".to_owned()].into(), true);
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
}
