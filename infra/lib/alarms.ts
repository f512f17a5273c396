import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { pipelineMetric } from './metrics';
import { isUtc } from './time-zone';

/** What the `ProducerNotRunning` alarm of a schedule needs to know about it. */
export interface AlarmedSchedule {
  /** The `Schedule` dimension of its `Ticks`. */
  readonly name: string;
  /** Seconds between two of its ticks; none for a one-time schedule, which gets no alarm. */
  readonly periodSeconds?: number;
  /** The zone it fires in: outside UTC a daylight-saving shift moves a tick by up to an hour. */
  readonly timeZone: string;
}

/** What the alarms watch and where their descriptions point. */
export interface PipelineAlarmsProps {
  readonly queue: sqs.IQueue;
  readonly dlq: sqs.IQueue;
  readonly producer: lambda.IFunction;
  readonly consumer: lambda.IFunction;
  readonly oldestMessageAgeAlarmSeconds: number;
  /** The `Pipeline` dimension of the run metrics: the pipeline's name. */
  readonly pipeline: string;
  /** The pipeline's tick schedules: a `ProducerNotRunning` alarm for each with a period. */
  readonly schedules: readonly AlarmedSchedule[];
  /** docs/runbook.md (a URL or repo path); each alarm links its own section. */
  readonly runbookUrl: string;
  /** Receives alarm and OK notifications when set. */
  readonly alarmTopic?: sns.ITopic;
}

/** One day in seconds: the longest evaluation CloudWatch allows for periods under an hour. */
const DAY = 86_400;

/**
 * How `ProducerNotRunning` looks at two schedule periods within CloudWatch's limits (the period a
 * multiple of 60 s; period × evaluation periods at most 1 day for periods under an hour, 7 days
 * otherwise): one period of twice the schedule while that fits in a day, else whole days, every
 * one of them without a tick. Either way the alarm needs a gap of at least two schedule periods,
 * so a tick that comes a few seconds late does not page anyone.
 */
export function tickWindow(schedulePeriodSeconds: number, shiftSeconds = 0): { periodSeconds: number; evaluationPeriods: number } {
  // A clock change's hour is added only as far as CloudWatch's 7 days allow.
  const window = Math.max(2 * schedulePeriodSeconds, Math.min(2 * schedulePeriodSeconds + shiftSeconds, 7 * DAY));
  return window <= DAY
    ? { periodSeconds: window, evaluationPeriods: 1 }
    : { periodSeconds: DAY, evaluationPeriods: Math.ceil(window / DAY) };
}

/**
 * The pipeline's alarms. Each description says what fired and links the runbook section with
 * the steps, so whoever is paged lands on the instructions. Missing data is "not breaching": the
 * queues and functions are idle most of the time and an idle pipeline is not an incident. The one
 * exception is the tick count, whose absence is the incident.
 */
export class PipelineAlarms extends Construct {
  /** The alarms, keyed by their runbook anchor (`producer-not-running/SCHEDULE` per schedule). */
  readonly alarms: Record<string, cloudwatch.Alarm> = {};

  constructor(scope: Construct, id: string, props: PipelineAlarmsProps) {
    super(scope, id);
    const period = Duration.minutes(5);
    const notify = props.alarmTopic ? new actions.SnsAction(props.alarmTopic) : undefined;

    const add = (
      id: string,
      anchor: string,
      summary: string,
      metric: cloudwatch.Metric,
      threshold: number,
      opts: Partial<Pick<cloudwatch.AlarmProps, 'comparisonOperator' | 'treatMissingData' | 'evaluationPeriods'>> = {},
      key = anchor,
    ) => {
      const alarm = new cloudwatch.Alarm(this, id, {
        metric,
        threshold,
        evaluationPeriods: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        ...opts,
        alarmDescription: `${summary} Runbook: ${props.runbookUrl}#${anchor}`,
      });
      if (notify) {
        alarm.addAlarmAction(notify);
        alarm.addOkAction(notify);
      }
      this.alarms[key] = alarm;
    };

    add(
      'DlqNotEmpty',
      'dlq-has-messages',
      'fanout: messages are waiting in the dead-letter queue (permanent failures or retries exhausted).',
      props.dlq.metricApproximateNumberOfMessagesVisible({ period, statistic: 'Maximum' }),
      1,
    );
    add(
      'QueueBacklogOld',
      'oldest-message-too-old',
      `fanout: the oldest job in the queue is ${props.oldestMessageAgeAlarmSeconds}s old or more (consumer behind or stuck).`,
      props.queue.metricApproximateAgeOfOldestMessage({ period, statistic: 'Maximum' }),
      props.oldestMessageAgeAlarmSeconds,
    );
    add(
      'ConsumerErrors',
      'consumer-errors',
      'fanout: consumer invocations failed (crash, timeout or whole-batch error).',
      props.consumer.metricErrors({ period, statistic: 'Sum' }),
      1,
    );
    add(
      'ConsumerThrottles',
      'consumer-throttles',
      'fanout: consumer invocations were throttled (account or reserved concurrency exhausted).',
      props.consumer.metricThrottles({ period, statistic: 'Sum' }),
      1,
    );
    add(
      'ProducerErrors',
      'producer-errors',
      'fanout: the scheduled producer run failed; jobs of that tick may not have been published.',
      props.producer.metricErrors({ period, statistic: 'Sum' }),
      1,
    );

    for (const schedule of props.schedules) {
      if (schedule.periodSeconds === undefined) continue;
      // A zone with daylight saving moves a tick by an hour twice a year.
      const shift = isUtc(schedule.timeZone) ? 0 : 3600;
      const ticks = tickWindow(schedule.periodSeconds, shift);
      add(
        `ProducerNotRunning-${schedule.name}`,
        'producer-not-running',
        `fanout: the producer counted no tick of schedule ${schedule.name} in ${ticks.periodSeconds * ticks.evaluationPeriods}s ` +
          `(at least two periods of ${schedule.periodSeconds}s${shift ? `, plus ${shift}s for ${schedule.timeZone}'s clock changes` : ''}): ` +
          'the schedule is disabled, the function cannot start, or its metrics are not arriving.',
        pipelineMetric(
          props.pipeline,
          'Ticks',
          { statistic: 'Sum', period: Duration.seconds(ticks.periodSeconds) },
          { Schedule: schedule.name },
        ),
        1,
        {
          evaluationPeriods: ticks.evaluationPeriods,
          comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
          treatMissingData: cloudwatch.TreatMissingData.BREACHING,
        },
        `producer-not-running/${schedule.name}`,
      );
    }
    add(
      'RunOverdue',
      'run-overdue',
      'fanout: a run is still RUNNING past its deadline (jobs unsettled; reported by the producer watchdog).',
      pipelineMetric(props.pipeline, 'RunsOverdue', { statistic: 'Maximum', period }),
      1,
    );
    add(
      'RunFailed',
      'run-failed',
      'fanout: a run finished FAILED: more of its jobs were dead-lettered than its failure budget tolerates.',
      pipelineMetric(props.pipeline, 'RunsFailed', { statistic: 'Sum', period }),
      1,
    );
  }
}
