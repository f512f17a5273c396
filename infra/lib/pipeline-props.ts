import { type Duration, type Size, SizeRoundingBehavior, type TimeZone } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import type * as events from 'aws-cdk-lib/aws-events';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as logs from 'aws-cdk-lib/aws-logs';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as sns from 'aws-cdk-lib/aws-sns';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type { FanoutScheduleProps } from './schedules';
import type { FanoutSettings, Naming } from './settings';

/**
 * Props of {@link FanoutPipeline}. Every setting of docs/deploy.md step 3 has a prop here with the
 * same default and the same checks; a bad value stops synth with an error naming the prop. Times
 * are `Duration`s; they must be whole seconds (milliseconds for `retryBase`, `retryCap` and
 * `hostStateTtl`), as the CloudFormation properties and consumer variables they become.
 */
export interface FanoutPipelineProps {
  /**
   * Directory of the producer's deployment package: `bootstrap` (built by `scripts/package` or
   * cargo-lambda) and the pipeline config file. A directory rather than a `lambda.Code`, because
   * synth checks the binary's architecture and reads the config from it.
   */
  readonly producerAssetDir: string;
  /** Directory of the consumer's deployment package, as `producerAssetDir`. */
  readonly consumerAssetDir: string;
  /**
   * Name of the pipeline config file inside both packages (`FANOUT_CONFIG`); JSON, or YAML when
   * it ends in `.yaml`/`.yml`.
   * @default 'fanout.json'
   */
  readonly configFile?: string;
  /**
   * Instruction set of both functions; must match the binaries (checked at synth).
   * @default lambda.Architecture.ARM_64
   */
  readonly architecture?: lambda.Architecture;
  /**
   * The pipeline's name: `FANOUT_PIPELINE`, the `Pipeline` dimension of the run metrics, the
   * `detail.pipeline` of run events and the dashboard name's prefix. Unique per stack and
   * per account and region, since runs are told apart by it.
   * @default `${stackName}-${id}`
   */
  readonly pipelineName?: string;

  /**
   * The pipeline's EventBridge Scheduler schedules, each with its name, expression and time
   * zone (an hourly sync and a nightly report in Tokyo are two entries). Each tick's run ID
   * comes from its schedule's name and scheduled time; each schedule has its own
   * `ProducerNotRunning` alarm. Not with `schedule`, `schedulePeriod` or `scheduleTimeZone`,
   * which describe the one default schedule.
   * @default one schedule named `tick`, from `schedule`, `schedulePeriod` and `scheduleTimeZone`
   */
  readonly schedules?: FanoutScheduleProps[];
  /**
   * When the producer runs, with `schedules` unset: `events.Schedule.rate(...)` (at most 3.5
   * days) or `events.Schedule.expression('cron(...)')`, in `scheduleTimeZone`.
   * @default events.Schedule.rate(Duration.minutes(15))
   */
  readonly schedule?: events.Schedule;
  /**
   * The time zone of `schedule` (a cron fires at its hours in that zone, daylight saving
   * included).
   * @default TimeZone.ETC_UTC
   */
  readonly scheduleTimeZone?: TimeZone;
  /**
   * Deploy the schedules enabled; `false` deploys them (the watchdog's too) disabled, for a
   * pipeline ticked by hand (`fanout trigger`).
   * @default true
   */
  readonly schedulesEnabled?: boolean;
  /**
   * Time between two ticks (for an irregular cron, the longest gap), whole minutes up to 3.5
   * days. Required with a cron schedule; a rate schedule gives it itself. The
   * `ProducerNotRunning` alarm fires after two periods without a tick.
   * @default the rate schedule's period
   */
  readonly schedulePeriod?: Duration;
  /**
   * Producer Lambda timeout (1–900 s).
   * @default Duration.seconds(120)
   */
  readonly producerTimeout?: Duration;
  /**
   * Producer memory in MB (128–10240).
   * @default 256
   */
  readonly producerMemorySize?: number;
  /**
   * The producer's `/tmp` (Lambda ephemeral storage, 512 MiB–10 GiB, whole MiB). A tick that
   * reads a list spools its encoded messages there, about 650 bytes a row: the default holds
   * about 3M rows. A list that does not fit fails its tick visibly, naming this prop.
   * @default Size.mebibytes(2048)
   */
  readonly producerEphemeralStorageSize?: Size;
  /**
   * Concurrent `PublishBatch` calls of the producer (`FANOUT_PUBLISH_CONCURRENCY`, 1–1000).
   * @default the producer's own default
   */
  readonly publishConcurrency?: number;

  /**
   * Consumer Lambda timeout (1–900 s). A batch, rate-limit waits included, must fit in it.
   * @default Duration.seconds(30)
   */
  readonly consumerTimeout?: Duration;
  /**
   * Consumer memory in MB (128–10240).
   * @default 256
   */
  readonly consumerMemorySize?: number;
  /**
   * Most consumer instances at once: the event source mapping's `MaximumConcurrency` (2–1000).
   * The instances share the global budget through leases, so this bounds Lambda only.
   * @default 5
   */
  readonly maxConcurrency?: number;
  /**
   * Global outbound budget of all consumer instances, requests per second. The pipeline config's
   * `rate_limit.per_second` is its source: set this only to restate it, or to supply it when the
   * config has no `rate_limit`; a different value stops synth.
   * @default the config's `rate_limit.per_second` (no global budget without one)
   */
  readonly ratePerSecond?: number;
  /**
   * Records per consumer invocation (1–10; up to 10000 with a `maxBatchingWindow`).
   * @default 10
   */
  readonly batchSize?: number;
  /**
   * How long the event source gathers a batch (0–300 s).
   * @default Duration.seconds(0)
   */
  readonly maxBatchingWindow?: Duration;
  /**
   * Deliveries before SQS dead-letters a message (1–1000). Waits and retries travel as delayed
   * copies, so this counts only invocations that crashed or timed out.
   * @default 5
   */
  readonly maxReceiveCount?: number;
  /**
   * Lifetime of idempotency records (`FANOUT_RECORD_TTL_SECS`, 60 s to 366 days).
   * @default the consumer's own default (1 day)
   */
  readonly recordTtl?: Duration;
  /**
   * First backoff after a transient failure (1 ms to 12 h). Like `ratePerSecond`: the config's
   * `retry.base_ms` is its source.
   * @default the config's `retry.base_ms`
   */
  readonly retryBase?: Duration;
  /**
   * Longest backoff (at least the retry base, at most 12 h); the config's `retry.cap_ms` is its source.
   * @default the config's `retry.cap_ms`
   */
  readonly retryCap?: Duration;
  /**
   * Transiently failed calls before a job is dead-lettered (1–100); the config's
   * `retry.max_attempts` is its source.
   * @default the config's `retry.max_attempts`
   */
  readonly maxAttempts?: number;
  /**
   * How long a consumer trusts a host's shared state (pause, circuit) before reading it again
   * (`FANOUT_HOST_STATE_TTL_MS`, 100 ms to 60 s).
   * @default the consumer's own default (1 s)
   */
  readonly hostStateTtl?: Duration;
  /**
   * The most records one consumer invocation runs at once (`FANOUT_MAX_IN_FLIGHT`, 1 to 10,000):
   * it runs as many as its share of the budgets needs to be spent (share × a job's time), and
   * this bounds its open connections to the targets and its memory.
   * @default the consumer's own default (100)
   */
  readonly maxInFlight?: number;
  /**
   * SNS filter policy of the queue's subscription, on message attributes (e.g. `target_host`).
   * @default every message
   */
  readonly filterPolicy?: { [attribute: string]: sns.SubscriptionFilter };
  /**
   * Extra consumer variables, e.g. values for `${env:NAME}` header placeholders. They land in
   * the template in plain text (docs/deploy.md, step 4); `FANOUT_*` variables the pipeline sets
   * are refused.
   * @default none
   */
  readonly consumerEnvironment?: { [name: string]: string };

  /**
   * Overrides of the job queue's props, merged over the pipeline's (SSE-SQS, TLS only, 4 days'
   * retention). `visibilityTimeout` may not be below 6 × consumer timeout + batching window
   * (the default); `deadLetterQueue` and `fifo` are refused: the pipeline wires its own DLQ
   * (`deadLetterQueueProps`, `maxReceiveCount`) and publishes through a standard topic. A
   * customer-managed key here is yours to grant to SNS and the consumer.
   * @default the pipeline's queue
   */
  readonly queueProps?: sqs.QueueProps;
  /**
   * Overrides of the DLQ's props, merged over the pipeline's (SSE-SQS, TLS only, 14 days'
   * retention, kept per `retainData`). Its retention must exceed the job queue's, or messages
   * expire as they arrive (SQS keeps their original enqueue time).
   * @default the pipeline's DLQ
   */
  readonly deadLetterQueueProps?: sqs.QueueProps;
  /**
   * A table to use instead of creating one: partition key `message_id` (string), TTL on
   * `expiration`, and the global secondary index `runs` (`run_index` string, `started_at`
   * number, all attributes) that the run ledger queries. Not checked at synth: an imported
   * table's schema is unknown there. `retainData` does not apply to it. One table per pipeline:
   * the ledger's index does not tell pipelines apart, so a shared table is refused.
   * @default a new on-demand table with point-in-time recovery
   */
  readonly existingTableObj?: dynamodb.ITable;
  /**
   * The list home: where `lists://KEY` sources are read from (`FANOUT_LISTS`) and `fanout targets
   * push` uploads, so a list changes with no deploy. A bucket of yours instead of the one the
   * pipeline creates; the producer may read `listsPrefix` in it and nothing else. A bucket
   * encrypted with a customer-managed key is yours to grant (`kms:Decrypt`) to the producer.
   * Keep it versioned: a run records the version of each list it read, and a re-run of its tick
   * reads that version again.
   * @default a new bucket: versioned, S3-managed encryption, TLS only, public access blocked,
   * kept per `retainData`
   */
  readonly existingListsBucketObj?: s3.IBucket;
  /**
   * Overrides of the new lists bucket's props, merged over the pipeline's (not with
   * `existingListsBucketObj`).
   * @default the pipeline's lists bucket
   */
  readonly listsBucketProps?: s3.BucketProps;
  /**
   * The key prefix of the list home in the bucket: empty, or ending in `/`.
   * @default 'lists/'
   */
  readonly listsPrefix?: string;

  /**
   * Age of the oldest queued job that raises the `QueueBacklogOld` alarm (60 s to 14 days).
   * @default Duration.seconds(1800)
   */
  readonly oldestMessageAgeAlarmThreshold?: Duration;
  /**
   * docs/runbook.md as a URL or repo path; each alarm description links its section.
   * @default 'docs/runbook.md'
   */
  readonly runbookUrl?: string;
  /**
   * Receives every alarm's alarm and OK notifications.
   * @default no alarm actions
   */
  readonly alarmTopic?: sns.ITopic;
  /**
   * Email addresses subscribed to the run-notification topic (one message per finished run);
   * each must confirm.
   * @default none
   */
  readonly runNotificationEmails?: string[];
  /**
   * Keep the idempotency table (run ledger included) and the DLQ when the stack is deleted.
   * @default true
   */
  readonly retainData?: boolean;
  /**
   * Retention of both functions' log groups.
   * @default logs.RetentionDays.ONE_MONTH
   */
  readonly logRetention?: logs.RetentionDays;
}

/** Props that are objects of their own rather than settings (see toSettings). */
type ObjectProps =
  | 'existingTableObj'
  | 'alarmTopic'
  | 'queueProps'
  | 'deadLetterQueueProps'
  | 'pipelineName'
  | 'existingListsBucketObj'
  | 'listsBucketProps'
  | 'listsPrefix'
  | 'schedules';

/** How pipeline problems name things: the prop, with the unit the check counts in. */
export const PROP_NAMING: Naming = {
  subject: 'FanoutPipeline props',
  label: (name) => PROP_LABELS[name],
};

const PROP_LABELS: Record<keyof FanoutSettings, string> = {
  producerAssetDir: 'producerAssetDir',
  consumerAssetDir: 'consumerAssetDir',
  architecture: 'architecture',
  configFile: 'configFile',
  scheduleExpression: 'schedule',
  schedulePeriodSeconds: 'schedulePeriod (s)',
  scheduleTimeZone: 'scheduleTimeZone',
  schedulesEnabled: 'schedulesEnabled',
  producerTimeoutSeconds: 'producerTimeout (s)',
  producerMemoryMb: 'producerMemorySize',
  producerTmpMb: 'producerEphemeralStorageSize (MiB)',
  publishConcurrency: 'publishConcurrency',
  consumerTimeoutSeconds: 'consumerTimeout (s)',
  consumerMemoryMb: 'consumerMemorySize',
  maxConcurrency: 'maxConcurrency',
  ratePerSecond: 'ratePerSecond',
  recordTtlSeconds: 'recordTtl (s)',
  retryBaseMs: 'retryBase (ms)',
  retryCapMs: 'retryCap (ms)',
  maxAttempts: 'maxAttempts',
  hostStateTtlMs: 'hostStateTtl (ms)',
  maxInFlight: 'maxInFlight',
  batchSize: 'batchSize',
  maxBatchingWindowSeconds: 'maxBatchingWindow (s)',
  visibilityTimeoutSeconds: 'queueProps.visibilityTimeout (s)',
  maxReceiveCount: 'maxReceiveCount',
  filterPolicy: 'filterPolicy',
  consumerEnvironment: 'consumerEnvironment',
  oldestMessageAgeAlarmSeconds: 'oldestMessageAgeAlarmThreshold (s)',
  runbookUrl: 'runbookUrl',
  alarmTopicArn: 'alarmTopic',
  runNotificationEmails: 'runNotificationEmails',
  retainData: 'retainData',
  logRetentionDays: 'logRetention',
};

/**
 * The props as the settings the checks and the template code work in (seconds, ms, strings).
 * Durations that are not whole units come through as fractions, for the checks to name.
 */
export function toSettings(props: Omit<FanoutPipelineProps, ObjectProps>, visibilityTimeout?: Duration): Partial<FanoutSettings> {
  const s = (d?: Duration) => d?.toSeconds({ integral: false });
  const ms = (d?: Duration) => d?.toMilliseconds({ integral: false });
  return {
    producerAssetDir: props.producerAssetDir,
    consumerAssetDir: props.consumerAssetDir,
    configFile: props.configFile,
    architecture: props.architecture?.name as FanoutSettings['architecture'] | undefined,
    scheduleExpression: props.schedule?.expressionString,
    schedulePeriodSeconds: s(props.schedulePeriod),
    scheduleTimeZone: props.scheduleTimeZone?.timezoneName,
    schedulesEnabled: props.schedulesEnabled,
    producerTimeoutSeconds: s(props.producerTimeout),
    producerMemoryMb: props.producerMemorySize,
    producerTmpMb: props.producerEphemeralStorageSize?.toMebibytes({ rounding: SizeRoundingBehavior.NONE }),
    publishConcurrency: props.publishConcurrency,
    consumerTimeoutSeconds: s(props.consumerTimeout),
    consumerMemoryMb: props.consumerMemorySize,
    maxConcurrency: props.maxConcurrency,
    ratePerSecond: props.ratePerSecond,
    batchSize: props.batchSize,
    maxBatchingWindowSeconds: s(props.maxBatchingWindow),
    maxReceiveCount: props.maxReceiveCount,
    recordTtlSeconds: s(props.recordTtl),
    retryBaseMs: ms(props.retryBase),
    retryCapMs: ms(props.retryCap),
    maxAttempts: props.maxAttempts,
    hostStateTtlMs: ms(props.hostStateTtl),
    maxInFlight: props.maxInFlight,
    visibilityTimeoutSeconds: s(visibilityTimeout),
    filterPolicy: props.filterPolicy
      ? Object.fromEntries(Object.entries(props.filterPolicy).map(([attr, filter]) => [attr, filter.conditions]))
      : undefined,
    consumerEnvironment: props.consumerEnvironment,
    oldestMessageAgeAlarmSeconds: s(props.oldestMessageAgeAlarmThreshold),
    runbookUrl: props.runbookUrl,
    runNotificationEmails: props.runNotificationEmails,
    retainData: props.retainData,
    logRetentionDays: props.logRetention,
  };
}
