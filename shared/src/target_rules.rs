//! What a target may hold: its URL, method, headers, timeout, and a run ID's length. The same
//! rules judge a config file (the producer's and the consumer's) and every job message the
//! consumer decodes, so this module is the root both `job` (the wire format) and `config`
//! depend on, and depends on neither.
//!
//! - URL: `http`/`https`, a host, a port other than 0, and no `user:password@` (credentials
//!   belong in a header template such as `"Authorization": "Basic ${env:NAME}"`, which keeps them
//!   out of messages, queues and the state file).
//! - Headers: a token name, no control characters in the value, well-formed `${env:NAME}`
//!   placeholders, and none of the headers the HTTP client or the consumer set themselves: those
//!   that frame or route a request (`Host`, `Content-Length`, `Transfer-Encoding`, `Connection`,
//!   `Upgrade`, `TE`, `Expect`, `Keep-Alive`, `Trailer`, `Proxy-*`) would make calls hang or go
//!   elsewhere, and `Idempotency-Key` is the job's message ID.

/// A field that breaks a rule, and why. The caller adds where the field is (file, target,
/// message), so every error names file, field or message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as the config file or message spells it.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl FieldError {
    /// `field` breaks a rule: `problem`.
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Methods a target may use.
pub(crate) const HTTP_METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Longest per-call timeout: Lambda's own 15-minute ceiling.
pub(crate) const MAX_TIMEOUT_MS: u64 = 900_000;
/// Longest run ID the producer accepts; validation sizes messages against it.
pub const MAX_RUN_ID_LEN: usize = 128;

/// Headers a config may not set, lower-case; any `proxy-*` header is refused too.
pub(crate) const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "expect",
    "keep-alive",
    "trailer",
    "idempotency-key",
];

/// Checks a target URL: parses, `http`/`https`, has a host, port not 0, no userinfo. Errors
/// never quote a password.
pub(crate) fn check_url(raw: &str) -> Result<(), String> {
    let shown = redact_userinfo(raw);
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e}): {shown:?}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not allowed (use http or https)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("no host in {shown:?}"));
    }
    if url.port() == Some(0) {
        return Err(format!("port 0 in {shown:?}: no server listens there"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "credentials (user:password@) in {shown:?} would travel in every message: \
             remove them and use a header template, e.g. \"Authorization\": \"Basic ${{env:NAME}}\""
        ));
    }
    Ok(())
}

/// `raw` with any `user:password@` part replaced by `***@`, for error messages.
pub(crate) fn redact_userinfo(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &raw[authority_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &raw[..authority_start], &rest[at..]),
        None => raw.to_owned(),
    }
}

/// Checks a header name and the `${env:NAME}` placeholders in its value.
pub(crate) fn check_header(name: &str, value: &str) -> Result<(), String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("invalid header name {name:?}"));
    }
    let lower = name.to_ascii_lowercase();
    if lower == "idempotency-key" {
        return Err(format!(
            "header {name} is set by the consumer (the job's message ID): remove it"
        ));
    }
    if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
        return Err(format!(
            "header {name} frames or routes the request and is set by the HTTP client: remove it"
        ));
    }
    // What an HTTP header value may not hold (tab is allowed): the consumer's client would
    // refuse such a value on every call.
    if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
        return Err(format!("header {name}: value has a control character"));
    }
    env_placeholders(value).map_err(|e| format!("header {name}: {e}"))?;
    Ok(())
}

/// One piece of a header value: literal text or an environment variable reference.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderPart<'a> {
    /// Text sent as is.
    Literal(&'a str),
    /// `${env:NAME}`, replaced by the consumer's environment variable `NAME` at call time.
    Env(&'a str),
}

/// Splits a header value into literal text and `${env:NAME}` references.
pub fn env_placeholders(value: &str) -> Result<Vec<HeaderPart<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(HeaderPart::Literal(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated placeholder in {value:?}"))?;
        let name = after[..end]
            .strip_prefix("env:")
            .ok_or_else(|| format!("placeholder ${{{}}} must be ${{env:NAME}}", &after[..end]))?;
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        parts.push(HeaderPart::Env(name));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(HeaderPart::Literal(rest));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_split_into_parts() {
        assert_eq!(
            env_placeholders("Bearer ${env:TOKEN}!").unwrap(),
            vec![
                HeaderPart::Literal("Bearer "),
                HeaderPart::Env("TOKEN"),
                HeaderPart::Literal("!")
            ]
        );
        assert!(env_placeholders("${env:TOKEN").is_err());
        assert!(env_placeholders("${env:1X}").is_err());
    }

    #[test]
    fn framing_routing_and_consumer_headers_are_refused_in_any_case() {
        for name in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "CONNECTION",
            "Upgrade",
            "TE",
            "Expect",
            "Keep-Alive",
            "Trailer",
            "Proxy-Authorization",
            "proxy-connection",
            "Idempotency-Key",
        ] {
            let err = check_header(name, "x").unwrap_err();
            assert!(
                err.starts_with(&format!("header {name} ")) && err.contains("remove it"),
                "{err}"
            );
        }
        for name in [
            "Authorization",
            "X-Api-Key",
            "Content-Type",
            "Cookie",
            "Accept",
            "X-Host",
            "Hostname",
        ] {
            assert_eq!(check_header(name, "x"), Ok(()), "{name}");
        }
    }

    #[test]
    fn urls_without_port_0_or_credentials() {
        assert!(check_url("http://x.example.com:0/")
            .unwrap_err()
            .contains("port 0"));
        assert!(check_url("http://x.example.com:00/")
            .unwrap_err()
            .contains("port 0"));
        for raw in [
            "https://user:pa55w0rd@x.example.com/a",
            "https://user@x.example.com/",
            "https://:pa55w0rd@x.example.com/",
        ] {
            let err = check_url(raw).unwrap_err();
            assert!(
                err.contains("credentials (user:password@)") && err.contains("header template"),
                "{err}"
            );
            assert!(!err.contains("pa55w0rd") && !err.contains("user@"), "{err}");
            assert!(err.contains("https://***@x.example.com/"), "{err}");
        }
        assert_eq!(check_url("https://x.example.com:8443/a@b?c=d@e"), Ok(()));
    }

    #[test]
    fn redaction_touches_only_the_authority() {
        assert_eq!(redact_userinfo("https://u:p@h/x@y"), "https://***@h/x@y");
        assert_eq!(redact_userinfo("https://h/x@y"), "https://h/x@y");
        assert_eq!(redact_userinfo("not a url"), "not a url");
        assert_eq!(redact_userinfo("http://a@b@h?q"), "http://***@h?q");
    }
}
