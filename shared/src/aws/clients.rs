//! SDK clients with a retry configuration chosen for the function that holds them.
//!
//! The SDK's default (standard mode, 3 attempts, backoff from 1 s up to 20 s) is written for
//! long-lived processes. In a consumer invocation of 30 s whose records wait on each DynamoDB
//! write, a first retry a second later is most of a call's time budget; in the producer, a
//! throttled `PublishBatch` may wait longer. So each function names its [`Retries`] per service:
//! standard mode (exponential backoff with full jitter, and the SDK's retry quota, which stops
//! retrying when most calls of the client fail), a few attempts, a low first backoff and a cap
//! that fits the function's timeout. What outlasts the SDK's attempts is the caller's to handle:
//! the consumer retries with its own backoff while the invocation lasts and otherwise
//! reschedules the record (never the visibility timeout); the producer retries a batch's failed
//! entries itself (`fanout_producer::publish`).

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::SdkConfig;

/// How the SDK retries one client's calls (standard mode).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retries {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first retry's backoff before jitter; doubled per retry.
    pub first_backoff: Duration,
    /// The longest backoff before jitter.
    pub max_backoff: Duration,
}

impl Retries {
    /// The consumer's DynamoDB calls (idempotency records, run counts, leases, host state):
    /// each one is in a record's path, so retries are quick and few (~0.4 s at most before
    /// the consumer's own backoff takes over).
    pub const CONSUMER_DYNAMODB: Retries = Retries::new(4, 25, 1_000);
    /// The consumer's SQS calls (rescheduled copies, the DLQ, visibility changes).
    pub const CONSUMER_SQS: Retries = Retries::new(4, 50, 1_000);
    /// Completion events, from the consumer or the producer's watchdog.
    pub const EVENTS: Retries = Retries::new(5, 100, 2_000);
    /// The producer's run ledger writes: a tick has minutes, and a run that cannot be written
    /// publishes nothing.
    pub const PRODUCER_DYNAMODB: Retries = Retries::new(6, 100, 5_000);
    /// The producer's `PublishBatch` calls; it retries failed entries itself as well.
    pub const PRODUCER_SNS: Retries = Retries::new(4, 100, 2_000);

    const fn new(attempts: u32, first_ms: u64, max_ms: u64) -> Self {
        Self {
            attempts,
            first_backoff: Duration::from_millis(first_ms),
            max_backoff: Duration::from_millis(max_ms),
        }
    }

    /// The SDK's form.
    pub fn config(self) -> RetryConfig {
        RetryConfig::standard()
            .with_max_attempts(self.attempts)
            .with_initial_backoff(self.first_backoff)
            .with_max_backoff(self.max_backoff)
    }
}

/// A DynamoDB client of `sdk` that retries as `retries` says.
pub fn dynamodb_client(sdk: &SdkConfig, retries: Retries) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::config::Builder::from(sdk)
        .retry_config(retries.config())
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// An SQS client of `sdk` that retries as `retries` says.
pub fn sqs_client(sdk: &SdkConfig, retries: Retries) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::config::Builder::from(sdk)
        .retry_config(retries.config())
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// An SNS client of `sdk` that retries as `retries` says.
pub fn sns_client(sdk: &SdkConfig, retries: Retries) -> aws_sdk_sns::Client {
    let config = aws_sdk_sns::config::Builder::from(sdk)
        .retry_config(retries.config())
        .build();
    aws_sdk_sns::Client::from_conf(config)
}

/// An EventBridge client of `sdk` that retries as `retries` says.
pub fn eventbridge_client(sdk: &SdkConfig, retries: Retries) -> aws_sdk_eventbridge::Client {
    let config = aws_sdk_eventbridge::config::Builder::from(sdk)
        .retry_config(retries.config())
        .build();
    aws_sdk_eventbridge::Client::from_conf(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_carries_its_retries() {
        let sdk = SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let client = dynamodb_client(&sdk, Retries::CONSUMER_DYNAMODB);
        let retry = client.config().retry_config().cloned();
        assert_eq!(retry, Some(Retries::CONSUMER_DYNAMODB.config()));
        assert_eq!(
            sns_client(&sdk, Retries::PRODUCER_SNS)
                .config()
                .retry_config()
                .map(|r| r.max_attempts()),
            Some(4)
        );
    }
}

/// An environment variable a Lambda function cannot start without.
#[derive(thiserror::Error)]
#[error("{0} is required")]
pub struct MissingVariable(&'static str);

/// `main` returning the error prints its `Debug`: the message, quoted, as the functions printed
/// it when the error was a `String`.
impl std::fmt::Debug for MissingVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// The value of `name`, which the function's stack always sets (a table, a queue, a topic).
pub fn required_env(name: &'static str) -> Result<String, MissingVariable> {
    std::env::var(name).map_err(|_| MissingVariable(name))
}
