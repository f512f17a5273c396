//! `fanout provision`: the pipeline's resources in whatever endpoint the SDK config points at.
//!
//! Meant for emulators (moto) and quick trials; production uses the CDK stack in `infra/`.
//! Every step is idempotent, so running it twice is harmless.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use fanout_shared::aws::{
    queue_arn, KEY, RUNS_INDEX, RUNS_INDEX_KEY, RUNS_INDEX_SORT, TTL_ATTRIBUTE,
};
use fanout_shared::sources::ListsHome;
use fanout_shared::BackendError;

use crate::backend::ResourceNames;

fn failed(service: &'static str, e: impl std::error::Error) -> BackendError {
    BackendError::permanent(
        service,
        aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
    )
}

/// Creates topic `PREFIX-jobs`, queue `PREFIX-jobs` with DLQ `PREFIX-jobs-dlq` (redrive after
/// `max_receive_count` receives), the raw-delivery subscription, a queue policy that lets only
/// the topic send, table `PREFIX-idempotency` (on-demand, TTL on `expiration`), and the list
/// home: versioned bucket `PREFIX-lists`.
pub async fn provision(
    sdk: &aws_config::SdkConfig,
    prefix: &str,
    max_receive_count: u32,
    visibility_timeout_s: u32,
) -> Result<ResourceNames, BackendError> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let sns = aws_sdk_sns::Client::new(sdk);
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);

    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{prefix}-jobs-dlq"))
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(|e| failed("sqs:CreateQueue", e))?
        .queue_url
        .unwrap_or_default();
    let dlq_arn = queue_arn(&sqs, &dlq_url).await?;
    let redrive = serde_json::json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count.to_string() });
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("{prefix}-jobs"))
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_timeout_s.to_string(),
        )
        .send()
        .await
        .map_err(|e| failed("sqs:CreateQueue", e))?
        .queue_url
        .unwrap_or_default();
    let queue_arn = queue_arn(&sqs, &queue_url).await?;

    let topic_arn = sns
        .create_topic()
        .name(format!("{prefix}-jobs"))
        .send()
        .await
        .map_err(|e| failed("sns:CreateTopic", e))?
        .topic_arn
        .unwrap_or_default();
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"}, "Action": "sqs:SendMessage",
            "Resource": queue_arn, "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}}
        }]
    });
    sqs.set_queue_attributes()
        .queue_url(&queue_url)
        .attributes(QueueAttributeName::Policy, policy.to_string())
        .send()
        .await
        .map_err(|e| failed("sqs:SetQueueAttributes", e))?;
    sns.subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint(&queue_arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .map_err(|e| failed("sns:Subscribe", e))?;

    let table_name = format!("{prefix}-idempotency");
    let attribute = |name: &str, kind: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(kind)
            .build()
            .map_err(|e| failed("dynamodb:CreateTable", e))
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(|e| failed("dynamodb:CreateTable", e))
    };
    // The run ledger's sparse index: run items only, newest first by `started_at` (the stack's too).
    let runs_index = GlobalSecondaryIndex::builder()
        .index_name(RUNS_INDEX)
        .key_schema(key(RUNS_INDEX_KEY, KeyType::Hash)?)
        .key_schema(key(RUNS_INDEX_SORT, KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .map_err(|e| failed("dynamodb:CreateTable", e))?;
    let created = dynamodb
        .create_table()
        .table_name(&table_name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(KEY, ScalarAttributeType::S)?)
        .attribute_definitions(attribute(RUNS_INDEX_KEY, ScalarAttributeType::S)?)
        .attribute_definitions(attribute(RUNS_INDEX_SORT, ScalarAttributeType::N)?)
        .key_schema(key(KEY, KeyType::Hash)?)
        .global_secondary_indexes(runs_index)
        .send()
        .await;
    match created {
        Ok(_) => {
            let ttl = TimeToLiveSpecification::builder()
                .attribute_name(TTL_ATTRIBUTE)
                .enabled(true)
                .build()
                .map_err(|e| failed("dynamodb:UpdateTimeToLive", e))?;
            dynamodb
                .update_time_to_live()
                .table_name(&table_name)
                .time_to_live_specification(ttl)
                .send()
                .await
                .map_err(|e| failed("dynamodb:UpdateTimeToLive", e))?;
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) => {}
        Err(e) => return Err(failed("dynamodb:CreateTable", e)),
    }
    let lists = lists_bucket(sdk, &lists_bucket_name(prefix)).await?;
    Ok(ResourceNames {
        topic_arn,
        queue_url,
        dlq_url,
        table_name,
        lists: Some(lists),
    })
}

/// `PREFIX-lists` as S3 takes a bucket name: lower case, `_` and other characters S3 refuses
/// as `-`, at most 63 characters (queue and table names allow more than buckets do).
fn lists_bucket_name(prefix: &str) -> String {
    let cleaned: String = prefix
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let cleaned = cleaned.trim_matches('-');
    let stem: String = cleaned.chars().take(63 - "-lists".len()).collect();
    format!("{}-lists", stem.trim_end_matches('-'))
}

/// The versioned bucket `name` as a list home (prefix `lists/`), created if missing.
async fn lists_bucket(sdk: &aws_config::SdkConfig, name: &str) -> Result<ListsHome, BackendError> {
    use aws_sdk_s3::types::{
        BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration,
        VersioningConfiguration,
    };
    let s3 = fanout_shared::aws::s3_client(sdk);
    let mut create = s3.create_bucket().bucket(name);
    // us-east-1 is the one region that refuses its own name as a location constraint.
    if let Some(region) = sdk
        .region()
        .map(ToString::to_string)
        .filter(|r| r != "us-east-1")
    {
        create = create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region.as_str()))
                .build(),
        );
    }
    match create.send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error().is_some_and(|s| {
                s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
            }) => {}
        Err(e) => return Err(failed("s3:CreateBucket", e)),
    }
    s3.put_bucket_versioning()
        .bucket(name)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .map_err(|e| failed("s3:PutBucketVersioning", e))?;
    Ok(ListsHome {
        bucket: name.to_owned(),
        prefix: "lists/".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_bucket_names_are_names_s3_takes() {
        assert_eq!(lists_bucket_name("bench0"), "bench0-lists");
        assert_eq!(
            lists_bucket_name("c3-IdempotencyStore::a_new_job"),
            "c3-idempotencystore--a-new-job-lists"
        );
        let long = lists_bucket_name(&"x".repeat(80));
        assert!(long.len() <= 63 && long.ends_with("-lists"), "{long}");
    }
}
