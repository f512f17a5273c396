import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';

/**
 * The settings that exist both as a stack setting and as a field of the pipeline config file
 * (shared/src/config.rs), with the consumer variable the stack would set. The consumer lets the
 * variable replace the config's field (consumer/src/settings.rs), so a stack value silently
 * overrode what the user wrote; setting-sources.ts decides which one runs.
 *
 * Not listed because the config has no such field (the stack is their only source):
 * `recordTtlSeconds` (FANOUT_RECORD_TTL_SECS), `hostStateTtlMs` (FANOUT_HOST_STATE_TTL_MS),
 * `maxInFlight` (FANOUT_MAX_IN_FLIGHT), `publishConcurrency` (FANOUT_PUBLISH_CONCURRENCY).
 */
export const SHARED_SETTINGS = [
  { setting: 'ratePerSecond', field: ['rate_limit', 'per_second'], env: 'FANOUT_RATE_PER_SECOND' },
  { setting: 'retryBaseMs', field: ['retry', 'base_ms'], env: 'FANOUT_RETRY_BASE_MS' },
  { setting: 'retryCapMs', field: ['retry', 'cap_ms'], env: 'FANOUT_RETRY_CAP_MS' },
  { setting: 'maxAttempts', field: ['retry', 'max_attempts'], env: 'FANOUT_MAX_ATTEMPTS' },
] as const;

/** A stack setting that the config file can also set. */
export type SharedSetting = (typeof SHARED_SETTINGS)[number]['setting'];

/** What the config file says about the shared settings; a key is absent when the file is silent. */
export type ConfigValues = Partial<Record<SharedSetting, number>>;

/** The config file as far as the stack needs it. */
export interface PipelineConfigFile {
  /** The file's name as the user knows it (`fanout.json`), for messages. */
  readonly name: string;
  readonly values: ConfigValues;
}

/**
 * Reads the pipeline config that is packaged with the consumer, JSON or YAML (`.yaml`/`.yml`, as
 * the consumer decides). Only the shared fields are read: the consumer validates the whole file
 * itself (`fanout config check`), so this refuses only what would make a comparison meaningless.
 */
export function readPipelineConfig(file: string): PipelineConfigFile {
  const name = path.basename(file);
  const text = fs.readFileSync(file, 'utf8').replace(/^\uFEFF/, '');
  let doc: unknown;
  try {
    doc = /\.ya?ml$/.test(name) ? parseYaml(text) : JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: cannot parse (${(e as Error).message})`);
  }
  if (!isObject(doc)) throw new Error(`${file}: the pipeline config must be an object`);
  const values: ConfigValues = {};
  for (const { setting, field } of SHARED_SETTINGS) {
    const value = field.reduce<unknown>((node, key) => (isObject(node) ? node[key] : undefined), doc);
    if (value === undefined || value === null) continue;
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      throw new Error(`${file}: ${field.join('.')} must be a number, got ${JSON.stringify(value)}`);
    }
    values[setting] = value;
  }
  return { name, values };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * YAML through the `yaml` package that aws-cdk-lib bundles (its pinned version decides ours), so
 * the construct adds no dependency of its own.
 */
function parseYaml(text: string): unknown {
  const fromCdk = createRequire(require.resolve('aws-cdk-lib/package.json'));
  return (fromCdk('yaml') as { parse(text: string): unknown }).parse(text);
}
