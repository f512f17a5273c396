import * as path from 'node:path';
import { RetentionDays } from 'aws-cdk-lib/aws-logs';
import { isTimeZone } from './time-zone';

/** Lambda instruction set; the binaries in the asset directories must match it. */
export type Architecture = 'arm64' | 'x86_64';

/**
 * Everything an operator can tune. Every field has a default (see {@link DEFAULTS}) except the
 * optional ones, whose absence means "leave it to the Rust code's own default".
 * Durations are plain seconds so that `-c name=value` context values map onto them directly.
 */
export interface FanoutSettings {
  /** Directory holding the producer's `bootstrap` and config file (cargo-lambda output). */
  readonly producerAssetDir: string;
  /** Directory holding the consumer's `bootstrap` and config file (cargo-lambda output). */
  readonly consumerAssetDir: string;
  /** Architecture of both functions. */
  readonly architecture: Architecture;
  /** Name of the pipeline config file inside each package, passed as `FANOUT_CONFIG`. */
  readonly configFile: string;

  /** EventBridge schedule of the producer, `rate(...)` or `cron(...)`. */
  readonly scheduleExpression: string;
  /**
   * Seconds between two scheduled ticks (for an irregular cron, the longest gap). Required with a
   * `cron(...)` schedule; a `rate(...)` schedule gives it itself. The `ProducerNotRunning` alarm
   * fires when no tick was counted for two of these periods.
   */
  readonly schedulePeriodSeconds?: number;
  /**
   * The IANA time zone the schedule fires in (EventBridge Scheduler's
   * `ScheduleExpressionTimezone`), e.g. `Asia/Tokyo`: `cron(0 0 * * ? *)` is then midnight in
   * Tokyo, daylight saving included where the zone has it.
   */
  readonly scheduleTimeZone: string;
  /**
   * Deploy the schedules enabled. `false` deploys every schedule of the pipeline disabled, the
   * watchdog's included (a staging stack ticked by hand with `fanout trigger`, a benchmark).
   */
  readonly schedulesEnabled: boolean;
  readonly producerTimeoutSeconds: number;
  readonly producerMemoryMb: number;
  /**
   * The producer's `/tmp` in MB (Lambda ephemeral storage, 512–10240). A tick that reads a list
   * spools its encoded messages there (about 650 bytes a row), so the default holds ~3M rows;
   * raise it for longer lists.
   */
  readonly producerTmpMb: number;
  /** `FANOUT_PUBLISH_CONCURRENCY`: concurrent PublishBatch calls; unset = Rust default. */
  readonly publishConcurrency?: number;

  readonly consumerTimeoutSeconds: number;
  readonly consumerMemoryMb: number;
  /**
   * Event source mapping `ScalingConfig.MaximumConcurrency`: the most consumer instances at once.
   * The consumer does not read it: the instances split `ratePerSecond` among those actually
   * working, through leases in the idempotency table.
   */
  readonly maxConcurrency: number;
  /**
   * Outbound requests per second for all consumer instances together. Unset = the config's
   * `rate_limit.per_second` (no global budget if it has none). Set, it must agree with the config
   * or the config must have no `rate_limit` (the stack then supplies `FANOUT_RATE_PER_SECOND`):
   * see setting-sources.ts.
   */
  readonly ratePerSecond?: number;
  /** `FANOUT_RECORD_TTL_SECS`: lifetime of idempotency records; unset = Rust default (86400). */
  readonly recordTtlSeconds?: number;
  /**
   * First backoff of a transient failure; unset = the config's `retry.base_ms`. Like
   * `ratePerSecond`: may only restate the config, or supply `FANOUT_RETRY_BASE_MS` when the
   * config is silent.
   */
  readonly retryBaseMs?: number;
  /** Longest backoff; unset = the config's `retry.cap_ms` (same rule as `retryBaseMs`). */
  readonly retryCapMs?: number;
  /**
   * Calls that failed transiently before a job is dead-lettered; unset = the config's
   * `retry.max_attempts` (same rule as `retryBaseMs`).
   */
  readonly maxAttempts?: number;
  /** `FANOUT_HOST_STATE_TTL_MS`: how long a host's shared state is trusted; unset = Rust default (1000). */
  readonly hostStateTtlMs?: number;
  /**
   * `FANOUT_MAX_IN_FLIGHT`: the most records one consumer invocation runs at once, however large
   * its share of the budgets (it runs as many as the share needs, README "Flow control"); unset =
   * Rust default (100).
   */
  readonly maxInFlight?: number;
  /** Records per consumer invocation (1–10, up to 10000 with a batching window). */
  readonly batchSize: number;
  readonly maxBatchingWindowSeconds: number;
  /** Queue visibility timeout; defaults to, and may not be below, 6 × consumer timeout + window. */
  readonly visibilityTimeoutSeconds?: number;
  /**
   * Receives before SQS moves a message to the DLQ. Waits and retries travel as delayed copies of
   * the message (see `maxAttempts`), so this counts only deliveries whose invocation crashed or
   * timed out.
   */
  readonly maxReceiveCount: number;
  /** SNS subscription filter policy (attribute → allowed values); unset = every message. */
  readonly filterPolicy?: Record<string, unknown[]>;
  /**
   * Extra consumer environment, e.g. values for `${env:NAME}` header placeholders. These land in
   * the template and the Lambda configuration in plain text: see docs/deploy.md for secrets.
   */
  readonly consumerEnvironment?: Record<string, string>;

  /** Age of the oldest queued message that raises an alarm. */
  readonly oldestMessageAgeAlarmSeconds: number;
  /** Base link to docs/runbook.md put in every alarm description (anchors are appended). */
  readonly runbookUrl: string;
  /** Optional SNS topic ARN that receives alarm and OK notifications. */
  readonly alarmTopicArn?: string;
  /**
   * Email addresses subscribed to the stack's run-notification topic (one message per finished
   * run); each address must confirm its subscription.
   */
  readonly runNotificationEmails?: string[];
  /** Keep the idempotency table and the DLQ when the stack is deleted. */
  readonly retainData: boolean;
  readonly logRetentionDays: number;
}

/** Environment variables the stack sets itself; extra consumer variables may not override them. */
export const RESERVED_ENV = [
  'FANOUT_CONFIG',
  'FANOUT_TOPIC_ARN',
  'FANOUT_PUBLISH_CONCURRENCY',
  'FANOUT_TABLE_NAME',
  'FANOUT_QUEUE_URL',
  'FANOUT_DLQ_URL',
  'FANOUT_RATE_PER_SECOND',
  'FANOUT_RECORD_TTL_SECS',
  'FANOUT_RETRY_BASE_MS',
  'FANOUT_RETRY_CAP_MS',
  'FANOUT_MAX_ATTEMPTS',
  'FANOUT_HOST_STATE_TTL_MS',
  'FANOUT_MAX_INSTANCES',
  'FANOUT_PIPELINE',
  'FANOUT_EVENT_BUS',
] as const;

const repoRoot = path.resolve(__dirname, '..', '..');

/** Defaults for every non-optional setting. */
export const DEFAULTS: Omit<FanoutSettings, OptionalKeys> = {
  producerAssetDir: path.join(repoRoot, 'target', 'lambda', 'fanout-producer'),
  consumerAssetDir: path.join(repoRoot, 'target', 'lambda', 'fanout-consumer'),
  architecture: 'arm64',
  configFile: 'fanout.json',
  scheduleExpression: 'rate(15 minutes)',
  scheduleTimeZone: 'UTC',
  schedulesEnabled: true,
  producerTimeoutSeconds: 120,
  producerMemoryMb: 256,
  producerTmpMb: 2048,
  consumerTimeoutSeconds: 30,
  consumerMemoryMb: 256,
  maxConcurrency: 5,
  batchSize: 10,
  maxBatchingWindowSeconds: 0,
  maxReceiveCount: 5,
  oldestMessageAgeAlarmSeconds: 1800,
  runbookUrl: 'docs/runbook.md',
  retainData: true,
  logRetentionDays: 30,
};

type OptionalKeys = {
  [K in keyof FanoutSettings]-?: undefined extends FanoutSettings[K] ? K : never;
}[keyof FanoutSettings];

/** Retention periods CloudWatch Logs accepts (the numeric members of the enum, minus INFINITE). */
const LOG_RETENTION_DAYS = Object.values(RetentionDays).filter(
  (d): d is number => typeof d === 'number' && d !== RetentionDays.INFINITE,
);

/** Longest visibility timeout SQS accepts (12 hours). */
const MAX_VISIBILITY_SECONDS = 43_200;

/** Longest retry backoff the consumer accepts: SQS's visibility ceiling, 12 hours. */
const MAX_RETRY_MS = MAX_VISIBILITY_SECONDS * 1000;

/** Seconds per unit of an EventBridge `rate(...)` expression. */
const RATE_UNITS: Record<string, number> = { minute: 60, hour: 3600, day: 86_400 };

/**
 * The longest schedule period the `ProducerNotRunning` alarm can watch: it looks at two periods,
 * and CloudWatch evaluates an alarm over at most 7 days.
 */
export const MAX_SCHEDULE_PERIOD_SECONDS = 302_400;

/**
 * The period of a `rate(N minute|minutes|hour|hours|day|days)` expression in seconds, `undefined`
 * for anything else (cron, or a malformed rate). EventBridge wants the singular unit for 1 and the
 * plural otherwise; so does this.
 */
export function ratePeriodSeconds(expression: string): number | undefined {
  const m = /^rate\((\d+) (minute|hour|day)(s?)\)$/.exec(expression);
  if (!m) return undefined;
  const n = Number(m[1]);
  if (n < 1 || (n === 1) !== (m[3] === '')) return undefined;
  return n * RATE_UNITS[m[2]];
}

/** Seconds between two scheduled ticks: from the rate expression, or `schedulePeriodSeconds` for cron. */
export function schedulePeriod(s: Pick<FanoutSettings, 'scheduleExpression' | 'schedulePeriodSeconds'>): number {
  const period = ratePeriodSeconds(s.scheduleExpression) ?? s.schedulePeriodSeconds;
  if (period === undefined) throw new Error(`no schedule period for ${s.scheduleExpression}: set schedulePeriodSeconds`);
  return period;
}

/** A plausible email address (SNS checks deliverability through the confirmation mail). */
const EMAIL = /^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$/;

/**
 * The smallest queue visibility timeout that keeps a message invisible while a consumer may still
 * work on it: AWS's guidance of six function timeouts (retries on throttling), plus the time the
 * event source spends gathering the batch, during which the messages are already in flight.
 */
export function minVisibilityTimeout(s: Pick<FanoutSettings, 'consumerTimeoutSeconds' | 'maxBatchingWindowSeconds'>): number {
  return 6 * s.consumerTimeoutSeconds + s.maxBatchingWindowSeconds;
}

/** How problems name the settings: the context keys by default, the construct's props for FanoutPipeline. */
export interface Naming {
  /** What the error is about, e.g. `fanout stack settings`. */
  readonly subject: string;
  /** The name the user wrote for a setting (with its unit when that differs from the setting's). */
  readonly label: (name: keyof FanoutSettings) => string;
}

/** The stack's naming: the settings are the `-c` context keys. */
export const CONTEXT_NAMING: Naming = { subject: 'fanout stack settings', label: (name) => name };

/**
 * Fills defaults and checks every setting; throws one Error listing all problems, so a bad
 * parameter stops `cdk synth` instead of failing half-way through a deployment.
 */
export function resolveSettings(input: Partial<FanoutSettings> = {}, naming: Naming = CONTEXT_NAMING): FanoutSettings {
  const n = naming.label;
  const defined = Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined));
  const s: FanoutSettings = { ...DEFAULTS, ...defined };
  const problems: string[] = [];
  const int = (name: keyof FanoutSettings, min: number, max: number) => {
    const v = s[name];
    if (v === undefined) return;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      problems.push(`${n(name)} must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
    }
  };

  if (s.architecture !== 'arm64' && s.architecture !== 'x86_64') {
    problems.push(`${n('architecture')} must be arm64 or x86_64, got ${JSON.stringify(s.architecture)}`);
  }
  if (!/^[\w.-]+$/.test(s.configFile)) {
    problems.push(`${n('configFile')} must be a plain file name inside the package, got ${JSON.stringify(s.configFile)}`);
  }
  checkSchedule(s, problems, n);
  if (typeof s.scheduleTimeZone !== 'string' || !isTimeZone(s.scheduleTimeZone)) {
    problems.push(`${n('scheduleTimeZone')} must be an IANA time zone such as Asia/Tokyo or UTC, got ${JSON.stringify(s.scheduleTimeZone)}`);
  }
  int('producerTimeoutSeconds', 1, 900);
  int('consumerTimeoutSeconds', 1, 900);
  int('producerMemoryMb', 128, 10_240);
  int('producerTmpMb', 512, 10_240);
  int('consumerMemoryMb', 128, 10_240);
  int('publishConcurrency', 1, 1000);
  // Lambda's own bounds for ScalingConfig.MaximumConcurrency; below 2 it rejects the mapping.
  int('maxConcurrency', 2, 1000);
  if (s.ratePerSecond !== undefined && (typeof s.ratePerSecond !== 'number' || !Number.isFinite(s.ratePerSecond) || s.ratePerSecond <= 0)) {
    problems.push(`${n('ratePerSecond')} must be a number above 0, got ${JSON.stringify(s.ratePerSecond)}`);
  }
  int('recordTtlSeconds', 60, 366 * 86_400);
  // The consumer's own bounds (RetryPolicy and its settings); it would refuse to start otherwise.
  int('retryBaseMs', 1, MAX_RETRY_MS);
  int('retryCapMs', 1, MAX_RETRY_MS);
  if (typeof s.retryBaseMs === 'number' && typeof s.retryCapMs === 'number' && s.retryCapMs < s.retryBaseMs) {
    problems.push(`${n('retryCapMs')} (${s.retryCapMs}) must be at least ${n('retryBaseMs')} (${s.retryBaseMs})`);
  }
  int('maxAttempts', 1, 100);
  int('hostStateTtlMs', 100, 60_000);
  int('maxInFlight', 1, 10_000);
  int('maxBatchingWindowSeconds', 0, 300);
  // SQS allows more than 10 records per batch only when a batching window is set.
  int('batchSize', 1, s.maxBatchingWindowSeconds > 0 ? 10_000 : 10);
  int('maxReceiveCount', 1, 1000);
  int('oldestMessageAgeAlarmSeconds', 60, 14 * 86_400);
  if (!LOG_RETENTION_DAYS.includes(s.logRetentionDays)) {
    problems.push(`${n('logRetentionDays')} must be one of ${LOG_RETENTION_DAYS.join(', ')}, got ${JSON.stringify(s.logRetentionDays)}`);
  }

  // With Lambda's 900 s and the 300 s window caps, the minimum (5700 s) always fits SQS's limit.
  const minVisibility = minVisibilityTimeout(s);
  if (s.visibilityTimeoutSeconds !== undefined) {
    int('visibilityTimeoutSeconds', 0, MAX_VISIBILITY_SECONDS);
    if (s.visibilityTimeoutSeconds < minVisibility) {
      problems.push(
        `${n('visibilityTimeoutSeconds')} (${s.visibilityTimeoutSeconds}) must be at least 6 × ` +
          `${n('consumerTimeoutSeconds')} + ${n('maxBatchingWindowSeconds')} = ${minVisibility}`,
      );
    }
  }

  for (const [name, value] of Object.entries(s.consumerEnvironment ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
      problems.push(`${n('consumerEnvironment')}: ${JSON.stringify(name)} is not a valid variable name`);
    } else if ((RESERVED_ENV as readonly string[]).includes(name)) {
      problems.push(`${n('consumerEnvironment')} may not set ${name}: the stack sets it`);
    }
    if (typeof value !== 'string') {
      problems.push(`${n('consumerEnvironment')}.${name} must be a string`);
    }
  }
  for (const [attr, values] of Object.entries(s.filterPolicy ?? {})) {
    if (!Array.isArray(values) || values.length === 0) {
      problems.push(`${n('filterPolicy')}.${attr} must be a non-empty array of conditions`);
    }
  }

  if (s.runNotificationEmails !== undefined) {
    const emails: unknown = s.runNotificationEmails;
    if (!Array.isArray(emails)) {
      problems.push(`${n('runNotificationEmails')} must be a list of email addresses, got ${JSON.stringify(emails)}`);
    } else {
      for (const email of emails) {
        if (typeof email !== 'string' || !EMAIL.test(email)) {
          problems.push(`${n('runNotificationEmails')}: ${JSON.stringify(email)} is not an email address`);
        }
      }
      const duplicates = emails.filter((e, i) => emails.indexOf(e) !== i);
      if (duplicates.length > 0) problems.push(`${n('runNotificationEmails')} lists ${JSON.stringify(duplicates[0])} twice`);
    }
  }

  if (problems.length > 0) {
    throw new Error(`Invalid ${naming.subject}:\n  - ${problems.join('\n  - ')}`);
  }
  return s;
}

/**
 * The schedule expression and its period. EventBridge's own syntax for rate(...) is checked here
 * (it would refuse the rule half-way through a deployment); cron(...) fields are left to it, but
 * a cron schedule must say how far apart its ticks are, since the tick alarm cannot derive it.
 */
function checkSchedule(s: FanoutSettings, problems: string[], n: Naming['label']): void {
  const expr = s.scheduleExpression;
  const given = s.schedulePeriodSeconds;
  const validGiven =
    typeof given === 'number' && Number.isInteger(given) && given >= 60 && given <= MAX_SCHEDULE_PERIOD_SECONDS && given % 60 === 0;
  if (given !== undefined && !validGiven) {
    problems.push(
      `${n('schedulePeriodSeconds')} must be a multiple of 60 from 60 to ${MAX_SCHEDULE_PERIOD_SECONDS} (3.5 days), got ${JSON.stringify(given)}`,
    );
  }
  if (typeof expr === 'string' && /^cron\(.+\)$/.test(expr)) {
    if (given === undefined) {
      problems.push(`${n('schedulePeriodSeconds')} is required with a cron(...) schedule: the time between two ticks (the longest gap if irregular)`);
    }
    return;
  }
  if (typeof expr !== 'string' || !expr.startsWith('rate(')) {
    problems.push(`${n('scheduleExpression')} must be rate(...) or cron(...), got ${JSON.stringify(expr)}`);
    return;
  }
  const rate = ratePeriodSeconds(expr);
  if (rate === undefined) {
    problems.push(
      `${n('scheduleExpression')} must be rate(1 minute|hour|day) or rate(N minutes|hours|days) with N above 1, got ${JSON.stringify(expr)}`,
    );
  } else if (rate > MAX_SCHEDULE_PERIOD_SECONDS) {
    problems.push(
      `${n('scheduleExpression')} ${expr} is longer than 3.5 days: the ProducerNotRunning alarm watches two periods and CloudWatch evaluates at most 7 days`,
    );
  } else if (validGiven && given !== rate) {
    problems.push(`${n('schedulePeriodSeconds')} (${given}) contradicts ${expr} (${rate} s): leave it unset with a rate(...) schedule`);
  }
}
