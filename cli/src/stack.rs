//! `--stack NAME`: the pipeline's resources from a deployed CloudFormation stack's outputs
//! (`DescribeStacks`), so nobody copies four ARNs by hand. Works the same against AWS and the
//! local cloud (`scripts/local-cloud`).

use std::collections::BTreeMap;

use aws_sdk_cloudformation::error::{DisplayErrorContext, ProvideErrorMetadata};

use fanout_shared::sources::ListsHome;

use crate::backend::ResourceNames;

/// Output holding the SNS topic ARN (`FANOUT_TOPIC_ARN`).
pub(crate) const TOPIC_ARN: &str = "TopicArn";
/// Output holding the job queue URL (`FANOUT_QUEUE_URL`).
pub(crate) const QUEUE_URL: &str = "QueueUrl";
/// Output holding the dead-letter queue URL (`FANOUT_DLQ_URL`).
pub(crate) const DLQ_URL: &str = "DlqUrl";
/// Output holding the idempotency table's name (`FANOUT_TABLE_NAME`).
pub(crate) const TABLE_NAME: &str = "TableName";
/// Output holding the list home, `s3://bucket/prefix/` (`FANOUT_LISTS`).
pub(crate) const LISTS_LOCATION: &str = "ListsLocation";
/// Output holding the pipeline's name (`FANOUT_PIPELINE`), by which `--pipeline` picks one of
/// a stack's pipelines.
pub(crate) const PIPELINE_NAME: &str = "PipelineName";
/// Output holding the producer function's name (`fanout trigger`).
pub(crate) const PRODUCER_FUNCTION: &str = "ProducerFunctionName";
/// Output holding the pipeline's EventBridge Scheduler schedules by name, comma-separated, the
/// first the default of `fanout trigger --schedule`.
pub(crate) const SCHEDULE_NAMES: &str = "ScheduleNames";

/// Why a stack's outputs could not be had.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// No stack of that name where the SDK points.
    #[error("stack {stack:?} does not exist {place}")]
    NotFound {
        /// The stack name asked for.
        stack: String,
        /// Region and endpoint, as "in REGION" or "in REGION at ENDPOINT".
        place: String,
    },
    /// The stack exists but lacks outputs this command needs.
    #[error("stack {stack:?} ({status}) has no output {}: deployed from an older infra/, or not finished?", .missing.join(", "))]
    MissingOutputs {
        /// The stack.
        stack: String,
        /// Its CloudFormation status.
        status: String,
        /// The outputs missing.
        missing: Vec<String>,
    },
    /// The stack holds several pipelines and `--pipeline` named none.
    #[error("stack {stack:?} holds the pipelines {}: pick one with --pipeline NAME (FANOUT_PIPELINE)", .known.join(", "))]
    SeveralPipelines {
        /// The stack.
        stack: String,
        /// Its pipelines' names.
        known: Vec<String>,
    },
    /// `--pipeline` names none of the stack's pipelines.
    #[error("stack {stack:?} has no pipeline {asked:?}; its pipelines: {}", .known.join(", "))]
    NoSuchPipeline {
        /// The stack.
        stack: String,
        /// The name given.
        asked: String,
        /// Its pipelines' names.
        known: Vec<String>,
    },
    /// DescribeStacks itself failed (credentials, network, throttling).
    #[error("DescribeStacks for stack {stack:?} {place}: {message}")]
    Describe {
        /// The stack.
        stack: String,
        /// Region and endpoint.
        place: String,
        /// The SDK's error, with its code.
        message: String,
    },
}

impl StackError {
    /// Whether the error is the caller's (a wrong name, an old stack) rather than the service's.
    pub(crate) fn is_bad_input(&self) -> bool {
        !matches!(self, StackError::Describe { .. })
    }
}

/// A deployed stack's outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct StackOutputs {
    /// The stack's name.
    pub stack: String,
    /// Its CloudFormation status, e.g. `UPDATE_COMPLETE`.
    pub status: String,
    /// Output key → value.
    pub outputs: BTreeMap<String, String>,
}

/// "in REGION" or "in REGION at ENDPOINT", for messages that say where the SDK looked.
fn place(sdk: &aws_config::SdkConfig) -> String {
    let region = sdk
        .region()
        .map_or_else(|| "(no region)".to_owned(), ToString::to_string);
    match sdk.endpoint_url() {
        Some(endpoint) => format!("in {region} at {endpoint}"),
        None => format!("in {region}"),
    }
}

impl StackOutputs {
    /// Reads the outputs of `stack` with `DescribeStacks`.
    pub async fn describe(sdk: &aws_config::SdkConfig, stack: &str) -> Result<Self, StackError> {
        let client = aws_sdk_cloudformation::Client::new(sdk);
        let described = client
            .describe_stacks()
            .stack_name(stack)
            .send()
            .await
            .map_err(|e| {
                let service = e.as_service_error();
                let message = service
                    .and_then(ProvideErrorMetadata::message)
                    .unwrap_or_default()
                    .to_owned();
                // CloudFormation answers a missing stack with ValidationError "Stack with id X does not exist".
                if service.and_then(ProvideErrorMetadata::code) == Some("ValidationError")
                    && message.contains("does not exist")
                {
                    StackError::NotFound {
                        stack: stack.to_owned(),
                        place: place(sdk),
                    }
                } else {
                    let detail = match service.and_then(ProvideErrorMetadata::code) {
                        Some(code) => format!("{code}: {message}"),
                        None => DisplayErrorContext(&e).to_string(),
                    };
                    StackError::Describe {
                        stack: stack.to_owned(),
                        place: place(sdk),
                        message: detail,
                    }
                }
            })?;
        let found = described
            .stacks()
            .first()
            .ok_or_else(|| StackError::NotFound {
                stack: stack.to_owned(),
                place: place(sdk),
            })?;
        let outputs = found
            .outputs()
            .iter()
            .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
            .collect();
        let status = found
            .stack_status()
            .map_or_else(|| "status unknown".to_owned(), |s| s.as_str().to_owned());
        Ok(Self {
            stack: stack.to_owned(),
            status,
            outputs,
        })
    }

    /// The outputs of one of the stack's pipelines, their keys without its prefix
    /// ([`PIPELINE_NAME`] tells them apart): the one `pipeline` names, or the only one. A stack
    /// without that output (deployed before it existed) is one pipeline, taken as it is.
    pub fn pipeline(self, pipeline: Option<&str>) -> Result<Self, StackError> {
        let found: Vec<(String, String)> = self
            .outputs
            .iter()
            .filter_map(|(key, name)| {
                key.strip_suffix(PIPELINE_NAME)
                    .map(|prefix| (prefix.to_owned(), name.clone()))
            })
            .collect();
        let known = || found.iter().map(|(_, name)| name.clone()).collect();
        let prefix = match (pipeline, found.as_slice()) {
            (_, []) => return Ok(self),
            (None, [(prefix, _)]) => prefix.clone(),
            (None, _) => {
                return Err(StackError::SeveralPipelines {
                    stack: self.stack.clone(),
                    known: known(),
                })
            }
            (Some(asked), _) => found
                .iter()
                .find(|(_, name)| name == asked)
                .map(|(prefix, _)| prefix.clone())
                .ok_or_else(|| StackError::NoSuchPipeline {
                    stack: self.stack.clone(),
                    asked: asked.to_owned(),
                    known: known(),
                })?,
        };
        let outputs = self
            .outputs
            .iter()
            .filter_map(|(key, value)| Some((key.strip_prefix(&prefix)?.to_owned(), value.clone())))
            .collect();
        Ok(Self { outputs, ..self })
    }

    /// The values of `keys`, in order; one error naming every missing key.
    pub fn require<const N: usize>(&self, keys: [&str; N]) -> Result<[String; N], StackError> {
        let missing: Vec<String> = keys
            .iter()
            .filter(|k| !self.outputs.contains_key(**k))
            .map(|k| (*k).to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(StackError::MissingOutputs {
                stack: self.stack.clone(),
                status: self.status.clone(),
                missing,
            });
        }
        Ok(keys.map(|k| self.outputs.get(k).cloned().unwrap_or_default()))
    }

    /// The pipeline's four resources.
    pub fn names(&self) -> Result<ResourceNames, StackError> {
        let [topic_arn, queue_url, dlq_url, table_name] =
            self.require([TOPIC_ARN, QUEUE_URL, DLQ_URL, TABLE_NAME])?;
        let lists = match self.outputs.get(LISTS_LOCATION) {
            None => None,
            Some(text) => {
                Some(
                    ListsHome::parse(text).map_err(|reason| StackError::MissingOutputs {
                        stack: self.stack.clone(),
                        status: self.status.clone(),
                        missing: vec![format!("{LISTS_LOCATION} (unusable: {reason})")],
                    })?,
                )
            }
        };
        Ok(ResourceNames {
            topic_arn,
            queue_url,
            dlq_url,
            table_name,
            lists,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(keys: &[&str]) -> StackOutputs {
        StackOutputs {
            stack: "Fanout".into(),
            status: "UPDATE_COMPLETE".into(),
            outputs: keys
                .iter()
                .map(|k| ((*k).to_owned(), format!("value-of-{k}")))
                .collect(),
        }
    }

    #[test]
    fn names_come_from_the_four_outputs() {
        let names = outputs(&[
            TOPIC_ARN,
            QUEUE_URL,
            DLQ_URL,
            TABLE_NAME,
            "ProducerLogGroup",
        ])
        .names()
        .unwrap();
        assert_eq!(names.topic_arn, "value-of-TopicArn");
        assert_eq!(names.queue_url, "value-of-QueueUrl");
        assert_eq!(names.dlq_url, "value-of-DlqUrl");
        assert_eq!(names.table_name, "value-of-TableName");
    }

    #[test]
    fn a_pipeline_of_several_is_picked_by_name_and_its_prefix_dropped() {
        let stack = outputs(&[
            "SyncPipelineName",
            "SyncTopicArn",
            "ReportPipelineName",
            "ReportTopicArn",
        ]);
        let stack = named_in(stack, "ReportPipelineName", "nightly-report");
        let stack = named_in(stack, "SyncPipelineName", "Jobs-Sync");
        let report = stack.clone().pipeline(Some("nightly-report")).unwrap();
        assert_eq!(report.outputs["TopicArn"], "value-of-ReportTopicArn");
        assert_eq!(report.outputs["PipelineName"], "nightly-report");
        assert!(!report.outputs.contains_key("SyncTopicArn"));
        let err = stack.clone().pipeline(None).unwrap_err();
        assert!(err.is_bad_input());
        assert_eq!(
            err.to_string(),
            "stack \"Fanout\" holds the pipelines nightly-report, Jobs-Sync: pick one with --pipeline NAME (FANOUT_PIPELINE)"
        );
        assert_eq!(
            stack.pipeline(Some("hourly")).unwrap_err().to_string(),
            "stack \"Fanout\" has no pipeline \"hourly\"; its pipelines: nightly-report, Jobs-Sync"
        );
        // One pipeline, unprefixed (FanoutStack): taken without --pipeline; a stack from
        // before PipelineName likewise, whatever --pipeline says.
        let single = named_in(outputs(&[TOPIC_ARN]), PIPELINE_NAME, "Fanout");
        assert_eq!(single.clone().pipeline(None).unwrap(), single);
        let old = outputs(&[TOPIC_ARN]);
        assert_eq!(old.clone().pipeline(Some("x")).unwrap(), old);
    }

    fn named_in(mut stack: StackOutputs, key: &str, name: &str) -> StackOutputs {
        stack.outputs.insert(key.into(), name.into());
        stack
    }

    #[test]
    fn missing_outputs_are_named_all_at_once() {
        let err = outputs(&[TOPIC_ARN, QUEUE_URL]).names().unwrap_err();
        assert!(err.is_bad_input());
        assert_eq!(err.to_string(), "stack \"Fanout\" (UPDATE_COMPLETE) has no output DlqUrl, TableName: deployed from an older infra/, or not finished?");
    }
}
