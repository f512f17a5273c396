//! Why a job failed for good, typed from the call's outcome to the run ledger.
//!
//! A dead-lettering carries a [`Failure`]: its [`FailureKind`] decides the low-cardinality class
//! the run counts it under ("failures by reason", the completion event, the alarms built on
//! them), and its text is what an operator reads in the DLQ's `failure_reason`. Keeping the two
//! apart means a message can be reworded without moving a job to another class: nothing ever
//! classifies the text back.

use std::fmt;

/// What kind of permanent failure a job met: the key of its run's "failures by reason".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The target answered with a status retrying cannot change (a 4xx other than 408/429, a
    /// redirect not followed or refused).
    Http(u16),
    /// Every allowed attempt failed transiently; the last attempt's status, if one came back.
    RetriesExhausted(Option<u16>),
    /// The message asks for something the consumer's own config does not allow (an unknown
    /// target, a host outside the allow-list, a field that differs from the config).
    RefusedByConfig,
    /// The call would reach an address the SSRF guard forbids.
    RefusedAddress,
    /// The request could not be built (an unset `${env:…}` variable, a bad header value).
    BadRequest,
    /// The message is not a job this consumer can read.
    Poison,
}

impl FailureKind {
    /// The class a run counts the failure under: the HTTP status where there is one
    /// (`HTTP 404`, `retries exhausted (HTTP 503)`), else a fixed name.
    pub fn class(self) -> String {
        match self {
            FailureKind::Http(code) => format!("HTTP {code}"),
            FailureKind::RetriesExhausted(Some(code)) => format!("retries exhausted (HTTP {code})"),
            FailureKind::RetriesExhausted(None) => "retries exhausted".to_owned(),
            FailureKind::RefusedByConfig => "refused by the consumer's config".to_owned(),
            FailureKind::RefusedAddress => "refused address".to_owned(),
            FailureKind::BadRequest => "bad request".to_owned(),
            FailureKind::Poison => "poison message".to_owned(),
        }
    }

    /// The target's HTTP status, when the failure came with one.
    pub fn status(self) -> Option<u16> {
        match self {
            FailureKind::Http(code) => Some(code),
            FailureKind::RetriesExhausted(status) => status,
            _ => None,
        }
    }
}

/// A permanent failure: its kind, and the text the DLQ shows (which names the field, header or
/// host at fault, never a header value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    kind: FailureKind,
    text: String,
}

impl Failure {
    /// A failure of `kind`, described by `text`.
    pub fn new(kind: FailureKind, text: impl Into<String>) -> Self {
        Self {
            kind,
            text: text.into(),
        }
    }

    /// The job failed transiently on all `attempts`; `last` is the last attempt's failure.
    pub fn retries_exhausted(attempts: u32, status: Option<u16>, last: &str) -> Self {
        Self::new(
            FailureKind::RetriesExhausted(status),
            format!("transient failure on all {attempts} attempts, the last: {last}"),
        )
    }

    /// Its kind.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// See [`FailureKind::class`].
    pub fn class(&self) -> String {
        self.kind.class()
    }

    /// See [`FailureKind::status`].
    pub fn status(&self) -> Option<u16> {
        self.kind.status()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Failure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_few_and_independent_of_the_text() {
        let cases = [
            (FailureKind::Http(400), "HTTP 400"),
            (
                FailureKind::RetriesExhausted(Some(503)),
                "retries exhausted (HTTP 503)",
            ),
            (FailureKind::RetriesExhausted(None), "retries exhausted"),
            (
                FailureKind::RefusedByConfig,
                "refused by the consumer's config",
            ),
            (FailureKind::RefusedAddress, "refused address"),
            (FailureKind::BadRequest, "bad request"),
        ];
        for (kind, class) in cases {
            assert_eq!(Failure::new(kind, "any wording at all").class(), class);
        }
        let exhausted = Failure::retries_exhausted(8, Some(503), "HTTP 503 Service Unavailable");
        assert_eq!(
            exhausted.to_string(),
            "transient failure on all 8 attempts, the last: HTTP 503 Service Unavailable"
        );
        assert_eq!(exhausted.status(), Some(503));
        assert_eq!(
            Failure::new(FailureKind::RefusedAddress, "x").status(),
            None
        );
    }
}
