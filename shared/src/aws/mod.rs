//! The backend traits over the AWS SDK: SNS, SQS, DynamoDB, EventBridge and S3.
//!
//! Clients come from the standard SDK configuration only ([`load_sdk_config`]): region,
//! credential chain and profiles, and `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` for
//! emulators such as moto. Nothing here knows about endpoints.

mod clients;
mod events;
mod fleet;
mod idempotency;
mod move_task;
mod runs;
mod s3;
mod sns;
mod sqs;
mod table;

pub use clients::{
    dynamodb_client, eventbridge_client, required_env, sns_client, sqs_client, MissingVariable,
    Retries,
};
pub use events::EventBridgeBus;
pub use fleet::DynamoDbFleet;
pub use idempotency::DynamoDbIdempotency;
pub use move_task::SqsMessageMover;
pub use runs::DynamoDbRuns;
pub use s3::{s3_client, S3Objects};
pub use sns::SnsPublisher;
pub use sqs::{queue_arn, SqsQueue};
pub use table::{KEY, RUNS_INDEX, RUNS_INDEX_KEY, RUNS_INDEX_SORT, TTL_ATTRIBUTE};

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::error::BackendError;

/// Loads the standard SDK configuration (environment, profiles, container/instance roles).
pub async fn load_sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// Maps an SDK error to a [`BackendError`]: transport failures and throttling are retryable,
/// everything else (validation, missing resources, access denied) is not.
fn sdk_error<E, R>(service: &'static str, err: SdkError<E, R>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = service_code(&err).unwrap_or_default();
    let throttled = is_throttling(code);
    let retryable = match &err {
        SdkError::ServiceError(_) => {
            // InternalError, InternalFailure, InternalServerError, InternalException: the
            // service's fault, not the request's.
            throttled
                || code.contains("Internal")
                || code.contains("ServiceUnavailable")
                || code.contains("TransactionConflict")
                || code.is_empty()
        }
        SdkError::ConstructionFailure(_) => false,
        _ => true,
    };
    // A service error's code and message say it all; the full context repeats the raw response.
    let message = match &err {
        SdkError::ServiceError(e) => format!(
            "{}: {}",
            e.err().code().unwrap_or("error"),
            e.err().message().unwrap_or_default()
        ),
        _ => DisplayErrorContext(&err).to_string(),
    };
    BackendError {
        service,
        message,
        retryable,
        throttled,
    }
}

/// Whether an error code means "slow down" (the codes AWS services use for it).
fn is_throttling(code: &str) -> bool {
    code.contains("Throttl")
        || code.contains("ProvisionedThroughputExceeded")
        || code.contains("RequestLimitExceeded")
        || code.contains("TooManyRequests")
}

/// The error code of an SDK service error, if the error is one.
fn service_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}
