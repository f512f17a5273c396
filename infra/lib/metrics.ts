import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import type * as lambda from 'aws-cdk-lib/aws-lambda';

/**
 * The functions' own metrics (CloudWatch Embedded Metric Format, written by shared::metrics and the
 * producer's run ledger). The names here must match the Rust side's spelling.
 */
export const NAMESPACE = 'Fanout';

/** Per-job outcome counters of the consumer, one per terminal or intermediate class. */
export const OUTCOME_METRICS = [
  'Succeeded',
  'DeadLettered',
  'Retried',
  'Deferred',
  'Held',
  'DuplicatesSkipped',
  'LockedElsewhere',
  'Requeued',
] as const;

type MetricOptions = Pick<cloudwatch.MetricOptions, 'statistic' | 'period' | 'label'>;

/**
 * A consumer metric: dimension `Function` = the consumer's function name (the consumer sets it from
 * `AWS_LAMBDA_FUNCTION_NAME`).
 */
export function consumerMetric(consumer: lambda.IFunction, metricName: string, opts: MetricOptions = {}): cloudwatch.Metric {
  return new cloudwatch.Metric({
    namespace: NAMESPACE,
    metricName,
    dimensionsMap: { Function: consumer.functionName },
    period: Duration.minutes(1),
    ...opts,
  });
}

/**
 * A run metric: dimension `Pipeline` = the pipeline's name (`FANOUT_PIPELINE`), and any `more`
 * (the producer's `Ticks` also per `Schedule`).
 */
export function pipelineMetric(
  pipeline: string,
  metricName: string,
  opts: MetricOptions = {},
  more: Record<string, string> = {},
): cloudwatch.Metric {
  return new cloudwatch.Metric({
    namespace: NAMESPACE,
    metricName,
    dimensionsMap: { Pipeline: pipeline, ...more },
    period: Duration.minutes(5),
    ...opts,
  });
}
