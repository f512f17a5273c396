import { Aws, Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { OUTCOME_METRICS, consumerMetric, pipelineMetric } from './metrics';

export interface PipelineDashboardProps {
  readonly queue: sqs.IQueue;
  readonly dlq: sqs.IQueue;
  readonly consumer: lambda.IFunction;
  /** The `Pipeline` dimension of the run metrics: the pipeline's name. */
  readonly pipeline: string;
  /** The global outbound budget that runs, drawn as a line on the calls-per-second graph; none when unlimited. */
  readonly ratePerSecond?: number;
}

/**
 * One CloudWatch dashboard per pipeline: throughput against the budget, what happened to the jobs,
 * where time goes (rate-limit waits, call latency), the queues, and the runs.
 */
export class PipelineDashboard extends Construct {
  readonly dashboard: cloudwatch.Dashboard;

  constructor(scope: Construct, id: string, props: PipelineDashboardProps) {
    super(scope, id);
    const minute = Duration.minutes(1);
    const graph = (title: string, left: cloudwatch.IMetric[], more: Partial<cloudwatch.GraphWidgetProps> = {}) =>
      new cloudwatch.GraphWidget({ title, left, width: 8, height: 6, ...more });
    const fn = (name: string, statistic: string, label?: string) =>
      consumerMetric(props.consumer, name, { statistic, period: minute, label: label ?? name });
    const run = (name: string, statistic: string, label?: string) =>
      pipelineMetric(props.pipeline, name, { statistic, period: Duration.minutes(5), label: label ?? name });

    this.dashboard = new cloudwatch.Dashboard(this, 'Resource', {
      // Dashboards are per account, not per region: the region keeps two deployments apart.
      dashboardName: `${props.pipeline}-${Aws.REGION}`,
      defaultInterval: Duration.hours(3),
    });

    this.dashboard.addWidgets(
      graph(
        'Outbound calls per second (all consumers)',
        [
          new cloudwatch.MathExpression({
            // Sum per period ÷ the period's seconds: calls per second at any zoom level.
            expression: 'calls / PERIOD(calls)',
            usingMetrics: { calls: fn('OutboundCalls', 'Sum') },
            period: minute,
            label: 'calls/s',
          }),
        ],
        {
          width: 12,
          leftAnnotations:
            props.ratePerSecond === undefined
              ? []
              : [{ value: props.ratePerSecond, label: `global budget ${props.ratePerSecond}/s`, color: '#d62728' }],
          leftYAxis: { min: 0 },
        },
      ),
      graph(
        'Job outcomes per minute',
        OUTCOME_METRICS.map((name) => fn(name, 'Sum')),
        { width: 12, stacked: true },
      ),
    );
    this.dashboard.addWidgets(
      graph('Rate-limit wait (ms)', [fn('RateLimitWait', 'p50', 'p50'), fn('RateLimitWait', 'p95', 'p95'), fn('RateLimitWait', 'Maximum', 'max')]),
      graph('Call latency (ms)', [fn('CallLatency', 'p50', 'p50'), fn('CallLatency', 'p95', 'p95'), fn('CallLatency', 'p99', 'p99')]),
      graph('Run duration (ms)', [run('RunDuration', 'Maximum', 'max'), run('RunDuration', 'Average', 'avg')]),
    );
    this.dashboard.addWidgets(
      graph('Job queue depth', [
        props.queue.metricApproximateNumberOfMessagesVisible({ period: minute, statistic: 'Maximum', label: 'visible' }),
        props.queue.metricApproximateNumberOfMessagesNotVisible({ period: minute, statistic: 'Maximum', label: 'in flight' }),
      ]),
      graph('Age of oldest job (s)', [
        props.queue.metricApproximateAgeOfOldestMessage({ period: minute, statistic: 'Maximum', label: 'oldest' }),
      ]),
      graph('DLQ depth', [
        props.dlq.metricApproximateNumberOfMessagesVisible({ period: minute, statistic: 'Maximum', label: 'dead-lettered' }),
      ]),
    );
    this.dashboard.addWidgets(
      graph('Runs finished', [run('RunsSucceeded', 'Sum', 'succeeded'), run('RunsFailed', 'Sum', 'failed')], { width: 12 }),
      graph('Ticks', [run('Ticks', 'Sum', 'ticks'), run('RunsSkipped', 'Sum', 'skipped (previous run in flight)')], { width: 12 }),
    );
  }
}
