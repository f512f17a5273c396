//! The one error type every backend returns.

/// A failure talking to a backend (SNS, SQS, DynamoDB, or the embedded SQLite file).
///
/// `retryable` tells callers whether the same request may succeed later (throttling, a network
/// blip) or will fail again (a missing queue, bad credentials).
#[derive(Debug, thiserror::Error)]
#[error("{service}: {message}")]
pub struct BackendError {
    /// The service or component that failed, e.g. `sqs:ReceiveMessage` or `sqlite`.
    pub service: &'static str,
    /// What went wrong, as the service said it.
    pub message: String,
    /// Whether repeating the request may help.
    pub retryable: bool,
    /// Whether the service said "slow down" (throttling, provisioned throughput exceeded): the
    /// metric `BackendThrottled` tells it from other faults (`BackendFailed`).
    pub throttled: bool,
}

impl BackendError {
    /// A failure that may pass if the request is repeated.
    pub fn transient(service: &'static str, message: impl Into<String>) -> Self {
        Self {
            service,
            message: message.into(),
            retryable: true,
            throttled: false,
        }
    }

    /// A failure that will repeat whatever the caller does.
    pub fn permanent(service: &'static str, message: impl Into<String>) -> Self {
        Self {
            service,
            message: message.into(),
            retryable: false,
            throttled: false,
        }
    }
}
