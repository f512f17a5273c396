import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SETTING_KEYS, settingsFromContext } from '../lib/context';
import { DEFAULTS, resolveSettings } from '../lib/settings';

/** A context reader over a plain object, as `-c key=value` would fill it (strings). */
const ctx = (values: Record<string, unknown>) => (key: string) => values[key];

test('-c strings become numbers, booleans, JSON and absolute paths', () => {
  const settings = settingsFromContext(
    ctx({
      maxConcurrency: '12',
      ratePerSecond: '2.5',
      retainData: 'false',
      architecture: 'x86_64',
      producerAssetDir: '../target/lambda/fanout-producer',
      consumerEnvironment: '{"API_TOKEN":"t"}',
      filterPolicy: '{"target_host":["a.example.com"]}',
    }),
    '/repo/infra',
  );
  assert.deepEqual(settings, {
    maxConcurrency: 12,
    ratePerSecond: 2.5,
    retainData: false,
    architecture: 'x86_64',
    producerAssetDir: '/repo/target/lambda/fanout-producer',
    consumerEnvironment: { API_TOKEN: 't' },
    filterPolicy: { target_host: ['a.example.com'] },
  });
});

test('absent or empty keys leave the defaults in charge', () => {
  const settings = settingsFromContext(ctx({ batchSize: '', unrelated: '1' }));
  assert.deepEqual(settings, {});
  assert.equal(resolveSettings(settings).batchSize, DEFAULTS.batchSize);
});

test('cdk.json values that are already typed pass through', () => {
  assert.deepEqual(settingsFromContext(ctx({ maxConcurrency: 3, retainData: true, filterPolicy: { a: ['b'] } })), {
    maxConcurrency: 3,
    retainData: true,
    filterPolicy: { a: ['b'] },
  });
});

test('the retry and host-state settings are numbers', () => {
  assert.deepEqual(
    settingsFromContext(ctx({ retryBaseMs: '250', retryCapMs: '30000', maxAttempts: '4', hostStateTtlMs: '500', maxInFlight: '40' })),
    { retryBaseMs: 250, retryCapMs: 30_000, maxAttempts: 4, hostStateTtlMs: 500, maxInFlight: 40 },
  );
  assert.throws(() => settingsFromContext(ctx({ maxAttempts: 'many' })), /context maxAttempts: "many" is not a number/);
});

test('runNotificationEmails: a comma-separated list or a JSON array; schedulePeriodSeconds a number', () => {
  assert.deepEqual(settingsFromContext(ctx({ runNotificationEmails: 'ops@example.com, dev@example.com' })), {
    runNotificationEmails: ['ops@example.com', 'dev@example.com'],
  });
  assert.deepEqual(settingsFromContext(ctx({ runNotificationEmails: '["ops@example.com"]' })), {
    runNotificationEmails: ['ops@example.com'],
  });
  assert.deepEqual(settingsFromContext(ctx({ runNotificationEmails: ['ops@example.com'] })), {
    runNotificationEmails: ['ops@example.com'],
  });
  assert.deepEqual(settingsFromContext(ctx({ schedulePeriodSeconds: '86400' })), { schedulePeriodSeconds: 86_400 });
  assert.throws(() => settingsFromContext(ctx({ runNotificationEmails: '[oops' })), /context runNotificationEmails: not valid JSON/);
});

test('malformed values name the key', () => {
  assert.throws(() => settingsFromContext(ctx({ maxConcurrency: 'ten' })), /context maxConcurrency: "ten" is not a number/);
  assert.throws(() => settingsFromContext(ctx({ retainData: 'yes' })), /context retainData: "yes" is not true or false/);
  assert.throws(() => settingsFromContext(ctx({ consumerEnvironment: '{oops' })), /context consumerEnvironment: not valid JSON/);
});

test('every setting can be given as context', () => {
  assert.deepEqual([...SETTING_KEYS].sort(), Object.keys({ ...DEFAULTS, ...OPTIONAL }).sort());
});

/** The optional settings (no default); listed so the test above notices a new setting. */
const OPTIONAL = {
  ratePerSecond: 0,
  publishConcurrency: 0,
  recordTtlSeconds: 0,
  retryBaseMs: 0,
  retryCapMs: 0,
  maxAttempts: 0,
  hostStateTtlMs: 0,
  maxInFlight: 0,
  visibilityTimeoutSeconds: 0,
  filterPolicy: 0,
  consumerEnvironment: 0,
  alarmTopicArn: 0,
  schedulePeriodSeconds: 0,
  runNotificationEmails: 0,
};
