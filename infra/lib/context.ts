import * as path from 'node:path';
import type { ExtraPipeline } from './fanout-stack';
import type { FanoutSettings } from './settings';

/** Reads one context value; `cdk -c key=value` gives strings, cdk.json may give any JSON. */
export type ContextReader = (key: string) => unknown;

type Kind = 'string' | 'number' | 'boolean' | 'json' | 'list' | 'path';

/** How each setting is spelled on the command line: `-c <setting name>=<value>`. */
const KINDS: { [K in keyof FanoutSettings]-?: Kind } = {
  producerAssetDir: 'path',
  consumerAssetDir: 'path',
  architecture: 'string',
  configFile: 'string',
  scheduleExpression: 'string',
  schedulePeriodSeconds: 'number',
  scheduleTimeZone: 'string',
  schedulesEnabled: 'boolean',
  producerTimeoutSeconds: 'number',
  producerMemoryMb: 'number',
  producerTmpMb: 'number',
  publishConcurrency: 'number',
  consumerTimeoutSeconds: 'number',
  consumerMemoryMb: 'number',
  maxConcurrency: 'number',
  ratePerSecond: 'number',
  recordTtlSeconds: 'number',
  retryBaseMs: 'number',
  retryCapMs: 'number',
  maxAttempts: 'number',
  hostStateTtlMs: 'number',
  maxInFlight: 'number',
  batchSize: 'number',
  maxBatchingWindowSeconds: 'number',
  visibilityTimeoutSeconds: 'number',
  maxReceiveCount: 'number',
  filterPolicy: 'json',
  consumerEnvironment: 'json',
  oldestMessageAgeAlarmSeconds: 'number',
  runbookUrl: 'string',
  alarmTopicArn: 'string',
  runNotificationEmails: 'list',
  retainData: 'boolean',
  logRetentionDays: 'number',
};

/** Every setting name accepted as a context key. */
export const SETTING_KEYS = Object.keys(KINDS) as (keyof FanoutSettings)[];

/**
 * Turns CDK context values into settings. Only keys that are present are returned, so
 * the defaults stay in charge of the rest; range checks happen in `resolveSettings`.
 * Relative asset paths are resolved against `cwd` (infra/ when run through npm or cdk).
 */
export function settingsFromContext(read: ContextReader, cwd = process.cwd()): Partial<FanoutSettings> {
  const out: Record<string, unknown> = {};
  for (const key of SETTING_KEYS) {
    const raw = read(key);
    if (raw === undefined || raw === '') continue;
    out[key] = convert(key, KINDS[key], raw, cwd);
  }
  return out as Partial<FanoutSettings>;
}

function convert(key: string, kind: Kind, raw: unknown, cwd: string): unknown {
  switch (kind) {
    case 'string':
      return String(raw);
    case 'path':
      return path.resolve(cwd, String(raw));
    case 'number': {
      const n = typeof raw === 'number' ? raw : Number(String(raw).trim());
      if (!Number.isFinite(n)) throw new Error(`context ${key}: ${JSON.stringify(raw)} is not a number`);
      return n;
    }
    case 'boolean':
      if (raw === true || raw === 'true') return true;
      if (raw === false || raw === 'false') return false;
      throw new Error(`context ${key}: ${JSON.stringify(raw)} is not true or false`);
    case 'list':
      // A JSON array (cdk.json, or `-c key='["a","b"]'`) or a comma-separated string (`-c key=a,b`).
      if (typeof raw === 'string' && !raw.trim().startsWith('[')) {
        return raw
          .split(',')
          .map((item) => item.trim())
          .filter((item) => item !== '');
      }
      return convert(key, 'json', raw, cwd);
    case 'json':
      if (typeof raw !== 'string') return raw;
      try {
        return JSON.parse(raw);
      } catch (e) {
        throw new Error(`context ${key}: not valid JSON (${(e as Error).message})`);
      }
  }
}

/**
 * The context key `extraPipelines`: a JSON array of the stack's further pipelines
 * (`[{"name": "report", "producerAssetDir": "...", "consumerAssetDir": "...",
 * "scheduleExpression": "rate(1 day)"}]`), asset paths resolved against `cwd`.
 */
export function extraPipelinesFromContext(read: ContextReader, cwd = process.cwd()): ExtraPipeline[] | undefined {
  const raw = read('extraPipelines');
  if (raw === undefined || raw === '') return undefined;
  const list = convert('extraPipelines', 'json', raw, cwd);
  if (!Array.isArray(list)) throw new Error('context extraPipelines: expected a JSON array of pipelines');
  return list.map((item, i) => {
    const field = (name: string) => {
      const value = (item as Record<string, unknown>)?.[name];
      if (value !== undefined && typeof value !== 'string' && typeof value !== 'number') {
        throw new Error(`context extraPipelines[${i}].${name}: ${JSON.stringify(value)} is not a string`);
      }
      return value;
    };
    for (const required of ['name', 'producerAssetDir', 'consumerAssetDir']) {
      if (typeof field(required) !== 'string') throw new Error(`context extraPipelines[${i}].${required} is required`);
    }
    const period = field('schedulePeriodSeconds');
    return {
      name: String(field('name')),
      producerAssetDir: path.resolve(cwd, String(field('producerAssetDir'))),
      consumerAssetDir: path.resolve(cwd, String(field('consumerAssetDir'))),
      scheduleExpression: field('scheduleExpression') === undefined ? undefined : String(field('scheduleExpression')),
      schedulePeriodSeconds: period === undefined ? undefined : Number(period),
    };
  });
}
