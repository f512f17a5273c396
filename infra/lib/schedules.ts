import { type Duration, TimeZone } from 'aws-cdk-lib';
import * as scheduler from 'aws-cdk-lib/aws-scheduler';
import { type FanoutSettings, MAX_SCHEDULE_PERIOD_SECONDS, ratePeriodSeconds, schedulePeriod } from './settings';
import { isTimeZone } from './time-zone';

/**
 * One EventBridge Scheduler schedule that ticks a pipeline. Its name and scheduled time make the
 * run ID (`schedule/NAME@TIME`), so a tick Scheduler delivers twice is one run.
 */
export interface FanoutScheduleProps {
  /**
   * The schedule's name in the pipeline: run IDs (`schedule/NAME@2026-11-21T15:00:00Z`), the
   * `Schedule` dimension of its `Ticks` metric and `ProducerNotRunning` alarm, and
   * `fanout trigger --schedule NAME`. 1–64 letters, digits, `.`, `-` or `_`; unique in the
   * pipeline. The resource's own name is generated, so two pipelines may both have a `nightly`.
   */
  readonly name: string;
  /**
   * When it fires, in its own time zone: `ScheduleExpression.rate(Duration.hours(1))`,
   * `ScheduleExpression.cron({ minute: '0', hour: '0', timeZone: TimeZone.ASIA_TOKYO })`,
   * `ScheduleExpression.expression('cron(0 9 ? * MON-FRI *)', TimeZone.EUROPE_BERLIN)` or
   * `ScheduleExpression.at(date, zone)` (once). Without a zone, UTC.
   */
  readonly expression: scheduler.ScheduleExpression;
  /**
   * The longest time between two of its ticks, whole minutes up to 3.5 days: the
   * `ProducerNotRunning` alarm fires after two of them without a tick (plus an hour in a zone
   * other than UTC, so a daylight-saving shift never pages). Required with a cron expression;
   * a rate gives it itself; a one-time `at(...)` schedule has no alarm and takes none.
   * @default the rate's period
   */
  readonly period?: Duration;
  /**
   * Scheduler's flexible time window (1–1440 whole minutes): the tick may start up to this long
   * after its time, which spreads many schedules' load. The run ID keeps the scheduled time.
   * @default none: on time
   */
  readonly flexibleWindow?: Duration;
  /**
   * Deploy it disabled (the stack's `schedulesEnabled=false` disables every schedule, the
   * watchdog's included).
   * @default true
   */
  readonly enabled?: boolean;
}

/** A schedule as the pipeline builds it: checked, its period and zone worked out. */
export interface ResolvedSchedule {
  readonly name: string;
  readonly expression: scheduler.ScheduleExpression;
  /** Seconds between two ticks; undefined for a one-time `at(...)` schedule (no alarm). */
  readonly periodSeconds?: number;
  /** The IANA zone it fires in. */
  readonly timeZone: string;
  readonly flexibleWindow?: Duration;
  readonly enabled: boolean;
}

/** What a schedule's name may be: it goes into run IDs and a metric dimension. */
const SCHEDULE_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

/**
 * The pipeline's schedules: `schedules` as given, or the one the settings describe
 * (`scheduleExpression`, `schedulePeriodSeconds`, `scheduleTimeZone`, named `tick`).
 * Throws one Error listing every problem, each naming the schedule and its field.
 */
export function resolveSchedules(
  s: FanoutSettings,
  schedules: readonly FanoutScheduleProps[] | undefined,
  subject: string,
): ResolvedSchedule[] {
  if (schedules === undefined) {
    return [
      {
        name: 'tick',
        expression: scheduler.ScheduleExpression.expression(s.scheduleExpression, TimeZone.of(s.scheduleTimeZone)),
        periodSeconds: schedulePeriod(s),
        timeZone: s.scheduleTimeZone,
        enabled: s.schedulesEnabled,
      },
    ];
  }
  const problems: string[] = [];
  if (schedules.length === 0) problems.push('schedules is empty: give at least one, or leave it unset for the default');
  const seen = new Set<string>();
  const resolved = schedules.map((given, i) => {
    const label = `schedules[${i}]${typeof given.name === 'string' ? ` (${given.name})` : ''}`;
    if (typeof given.name !== 'string' || !SCHEDULE_NAME.test(given.name)) {
      problems.push(`${label}.name must be 1-64 letters, digits, ., - or _, got ${JSON.stringify(given.name)}`);
    } else if (seen.has(given.name)) {
      problems.push(`${label}.name is used twice: run IDs and alarms are told apart by it`);
    }
    seen.add(given.name);
    const timeZone = given.expression.timeZone?.timezoneName ?? 'UTC';
    if (!isTimeZone(timeZone)) problems.push(`${label}.expression: ${JSON.stringify(timeZone)} is not an IANA time zone`);
    const periodSeconds = checkExpression(given, label, problems);
    const window = given.flexibleWindow?.toMinutes({ integral: false });
    if (window !== undefined && (!Number.isInteger(window) || window < 1 || window > 1440)) {
      problems.push(`${label}.flexibleWindow must be 1 to 1440 whole minutes, got ${window} min`);
    }
    return {
      name: given.name,
      expression: given.expression,
      periodSeconds,
      timeZone,
      flexibleWindow: given.flexibleWindow,
      enabled: (given.enabled ?? true) && s.schedulesEnabled,
    };
  });
  if (problems.length > 0) throw new Error(`Invalid ${subject}:\n  - ${problems.join('\n  - ')}`);
  return resolved;
}

/** Checks a schedule's expression against its period; answers the period (none for `at`). */
function checkExpression(given: FanoutScheduleProps, label: string, problems: string[]): number | undefined {
  const expr = given.expression.expressionString;
  const period = given.period?.toSeconds({ integral: false });
  const periodOk = period === undefined || (Number.isInteger(period) && period >= 60 && period <= MAX_SCHEDULE_PERIOD_SECONDS && period % 60 === 0);
  if (!periodOk) problems.push(`${label}.period must be whole minutes from 1 minute to 3.5 days, got ${period} s`);
  if (expr.startsWith('at(')) {
    if (period !== undefined) problems.push(`${label}.period: a one-time at(...) schedule has no period (and no ProducerNotRunning alarm)`);
    return undefined;
  }
  if (/^cron\(.+\)$/.test(expr)) {
    if (period === undefined) problems.push(`${label}.period is required with ${expr}: the longest time between two ticks`);
    return period;
  }
  const rate = ratePeriodSeconds(expr);
  if (rate === undefined) {
    problems.push(`${label}.expression must be rate(...), cron(...) or at(...), got ${JSON.stringify(expr)}`);
  } else if (rate > MAX_SCHEDULE_PERIOD_SECONDS) {
    problems.push(`${label}.expression ${expr} is longer than 3.5 days: the ProducerNotRunning alarm watches two periods and CloudWatch evaluates at most 7 days`);
  } else if (period !== undefined && periodOk && period !== rate) {
    problems.push(`${label}.period (${period} s) contradicts ${expr} (${rate} s): leave it unset with a rate`);
  }
  return rate;
}
