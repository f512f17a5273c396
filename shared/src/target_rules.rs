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

/// Why a target URL breaks a rule. `shown` is the URL with any `user:password@` replaced by
/// `***@` ([`redact_userinfo`]): an error never quotes a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UrlRuleError {
    /// It does not parse.
    #[error("not a URL ({reason}): {shown:?}")]
    NotUrl {
        /// The URL, redacted.
        shown: String,
        /// The parser's objection.
        reason: url::ParseError,
    },
    /// Not `http` or `https`.
    #[error("scheme {0:?} is not allowed (use http or https)")]
    Scheme(String),
    /// No host, or an empty one.
    #[error("no host in {0:?}")]
    NoHost(String),
    /// Port 0, where no server listens.
    #[error("port 0 in {0:?}: no server listens there")]
    PortZero(String),
    /// `user:password@`, which would travel in every message, queue and state file.
    #[error(
        "credentials (user:password@) in {0:?} would travel in every message: remove them and \
         use a header template, e.g. \"Authorization\": \"Basic ${{env:NAME}}\""
    )]
    Credentials(String),
}

/// Checks a target URL: parses, `http`/`https`, has a host, port not 0, no userinfo. Errors
/// never quote a password.
pub(crate) fn check_url(raw: &str) -> Result<(), UrlRuleError> {
    let shown = redact_userinfo(raw);
    let url = match url::Url::parse(raw) {
        Ok(url) => url,
        Err(reason) => return Err(UrlRuleError::NotUrl { shown, reason }),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRuleError::Scheme(url.scheme().to_owned()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlRuleError::NoHost(shown));
    }
    if url.port() == Some(0) {
        return Err(UrlRuleError::PortZero(shown));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRuleError::Credentials(shown));
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

/// Why a header breaks a rule; each names the header (never its value, which may be a secret
/// once resolved).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderRuleError {
    /// The name is not an HTTP token.
    #[error("invalid header name {0:?}")]
    InvalidName(String),
    /// `Idempotency-Key`, which the consumer sets to the job's message ID.
    #[error("header {0} is set by the consumer (the job's message ID): remove it")]
    IdempotencyKey(String),
    /// A header that frames or routes the request (`Host`, `Content-Length`, `Proxy-*`, …).
    #[error("header {0} frames or routes the request and is set by the HTTP client: remove it")]
    Reserved(String),
    /// A control character (other than tab) in the value.
    #[error("header {0}: value has a control character")]
    ControlCharacter(String),
    /// A malformed `${env:NAME}` placeholder in the value.
    #[error("header {name}: {problem}")]
    Placeholder {
        /// The header.
        name: String,
        /// What is wrong with the placeholder.
        problem: PlaceholderError,
    },
}

/// Checks a header name and the `${env:NAME}` placeholders in its value.
pub(crate) fn check_header(name: &str, value: &str) -> Result<(), HeaderRuleError> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(HeaderRuleError::InvalidName(name.to_owned()));
    }
    let lower = name.to_ascii_lowercase();
    if lower == "idempotency-key" {
        return Err(HeaderRuleError::IdempotencyKey(name.to_owned()));
    }
    if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
        return Err(HeaderRuleError::Reserved(name.to_owned()));
    }
    // What an HTTP header value may not hold (tab is allowed): the consumer's client would
    // refuse such a value on every call.
    if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
        return Err(HeaderRuleError::ControlCharacter(name.to_owned()));
    }
    env_placeholders(value).map_err(|problem| HeaderRuleError::Placeholder {
        name: name.to_owned(),
        problem,
    })?;
    Ok(())
}

/// One piece of a header value: literal text or an environment variable reference.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HeaderPart<'a> {
    /// Text sent as is.
    Literal(&'a str),
    /// `${env:NAME}`, replaced by the consumer's environment variable `NAME` at call time.
    Env(&'a str),
}

/// A `${…}` in a header value that is not a well-formed `${env:NAME}` reference: the consumer
/// could not resolve it, so the config (or message) is refused instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    /// `${` without its `}`; the whole value is quoted.
    #[error("unterminated placeholder in {0:?}")]
    Unterminated(String),
    /// `${X}` where `X` does not start with `env:`.
    #[error("placeholder ${{{0}}} must be ${{env:NAME}}")]
    NotEnv(String),
    /// `${env:NAME}` whose name is not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("invalid environment variable name {0:?}")]
    InvalidName(String),
}

/// Splits a header value into literal text and `${env:NAME}` references.
pub(crate) fn env_placeholders(value: &str) -> Result<Vec<HeaderPart<'_>>, PlaceholderError> {
    let mut parts = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(HeaderPart::Literal(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| PlaceholderError::Unterminated(value.to_owned()))?;
        let name = after[..end]
            .strip_prefix("env:")
            .ok_or_else(|| PlaceholderError::NotEnv(after[..end].to_owned()))?;
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(PlaceholderError::InvalidName(name.to_owned()));
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
            let err = check_header(name, "x").unwrap_err().to_string();
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
            .to_string()
            .contains("port 0"));
        assert!(check_url("http://x.example.com:00/")
            .unwrap_err()
            .to_string()
            .contains("port 0"));
        for raw in [
            "https://user:pa55w0rd@x.example.com/a",
            "https://user@x.example.com/",
            "https://:pa55w0rd@x.example.com/",
        ] {
            let err = check_url(raw).unwrap_err().to_string();
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
