import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { elfArchitecture } from '../lib/lambda-asset';
import { type FanoutSettings, minVisibilityTimeout, resolveSettings, schedulePeriod } from '../lib/settings';
import { FIXTURES, buildStack } from './helpers';

/** Asserts that synthesizing with these settings throws a message matching `pattern`. */
function rejects(props: Partial<FanoutSettings>, pattern: RegExp) {
  assert.throws(() => buildStack(props), pattern);
}

describe('parameter validation at synth', () => {
  test('maxConcurrency must be 2..1000 (Lambda rejects a mapping below 2)', () => {
    rejects({ maxConcurrency: 1 }, /maxConcurrency must be an integer from 2 to 1000, got 1/);
    rejects({ maxConcurrency: 1001 }, /maxConcurrency/);
    rejects({ maxConcurrency: 2.5 }, /maxConcurrency/);
    assert.doesNotThrow(() => resolveSettings({ maxConcurrency: 2 }));
  });

  test('visibility timeout below 6 × consumer timeout + batching window is refused', () => {
    const s = { consumerTimeoutSeconds: 60, maxBatchingWindowSeconds: 10, batchSize: 20 };
    assert.equal(minVisibilityTimeout(s), 370);
    rejects({ ...s, visibilityTimeoutSeconds: 369 }, /visibilityTimeoutSeconds \(369\) must be at least .* = 370/);
    assert.doesNotThrow(() => resolveSettings({ ...s, visibilityTimeoutSeconds: 370 }));
    rejects({ visibilityTimeoutSeconds: 43_201 }, /visibilityTimeoutSeconds must be an integer from 0 to 43200/);
  });

  test('function timeouts stay within Lambda limits', () => {
    rejects({ consumerTimeoutSeconds: 901 }, /consumerTimeoutSeconds/);
    rejects({ producerTimeoutSeconds: 0 }, /producerTimeoutSeconds/);
  });

  test('batch size above 10 needs a batching window', () => {
    rejects({ batchSize: 11 }, /batchSize must be an integer from 1 to 10, got 11/);
    assert.doesNotThrow(() => resolveSettings({ batchSize: 11, maxBatchingWindowSeconds: 1 }));
    rejects({ maxBatchingWindowSeconds: 301 }, /maxBatchingWindowSeconds/);
  });

  test('rate, receive count, schedule, architecture, retention', () => {
    rejects({ ratePerSecond: 0 }, /ratePerSecond must be a number above 0/);
    rejects({ ratePerSecond: Number.NaN }, /ratePerSecond/);
    rejects({ maxReceiveCount: 0 }, /maxReceiveCount/);
    rejects({ scheduleExpression: 'every 15 minutes' }, /scheduleExpression must be rate\(\.\.\.\) or cron\(\.\.\.\)/);
    rejects({ scheduleExpression: 'cron()' }, /scheduleExpression must be rate\(\.\.\.\) or cron\(\.\.\.\)/);
    rejects({ architecture: 'x86' as never }, /architecture must be arm64 or x86_64/);
    rejects({ logRetentionDays: 31 }, /logRetentionDays must be one of .*30, 60/);
    rejects({ configFile: '../fanout.json' }, /configFile must be a plain file name/);
  });

  test('retry and host-state settings stay within the bounds the consumer accepts', () => {
    rejects({ retryBaseMs: 0 }, /retryBaseMs must be an integer from 1 to 43200000, got 0/);
    rejects({ retryBaseMs: 43_200_001 }, /retryBaseMs must be an integer from 1 to 43200000/);
    rejects({ retryCapMs: 43_200_001 }, /retryCapMs must be an integer from 1 to 43200000, got 43200001/);
    rejects({ retryBaseMs: 500, retryCapMs: 499 }, /retryCapMs \(499\) must be at least retryBaseMs \(500\)/);
    assert.doesNotThrow(() => resolveSettings({ retryBaseMs: 500, retryCapMs: 500 }));
    assert.doesNotThrow(() => resolveSettings({ retryBaseMs: 1, retryCapMs: 43_200_000 }));
    rejects({ maxAttempts: 0 }, /maxAttempts must be an integer from 1 to 100, got 0/);
    rejects({ maxAttempts: 101 }, /maxAttempts must be an integer from 1 to 100, got 101/);
    rejects({ maxAttempts: 2.5 }, /maxAttempts/);
    assert.doesNotThrow(() => resolveSettings({ maxAttempts: 1 }));
    assert.doesNotThrow(() => resolveSettings({ maxAttempts: 100 }));
    rejects({ hostStateTtlMs: 99 }, /hostStateTtlMs must be an integer from 100 to 60000, got 99/);
    rejects({ hostStateTtlMs: 60_001 }, /hostStateTtlMs must be an integer from 100 to 60000, got 60001/);
    assert.doesNotThrow(() => resolveSettings({ hostStateTtlMs: 100 }));
    assert.doesNotThrow(() => resolveSettings({ hostStateTtlMs: 60_000 }));
    rejects({ maxInFlight: 0 }, /maxInFlight must be an integer from 1 to 10000, got 0/);
    rejects({ maxInFlight: 12.5 }, /maxInFlight/);
    assert.doesNotThrow(() => resolveSettings({ maxInFlight: 10_000 }));
  });

  test('schedule: rate(...) spelled as EventBridge wants it; cron(...) needs schedulePeriodSeconds', () => {
    for (const expr of ['rate(1 minute)', 'rate(5 minutes)', 'rate(1 hour)', 'rate(12 hours)', 'rate(1 day)', 'rate(3 days)']) {
      assert.doesNotThrow(() => resolveSettings({ scheduleExpression: expr }), expr);
    }
    assert.equal(schedulePeriod(resolveSettings({ scheduleExpression: 'rate(5 minutes)' })), 300);
    assert.equal(schedulePeriod(resolveSettings({ scheduleExpression: 'rate(1 day)' })), 86_400);
    for (const expr of ['rate(1 minutes)', 'rate(5 minute)', 'rate(0 minutes)', 'rate(5 seconds)', 'rate(5minutes)']) {
      rejects({ scheduleExpression: expr }, /scheduleExpression must be rate\(1 minute\|hour\|day\) or rate\(N minutes\|hours\|days\)/);
    }
    // The tick alarm looks at two periods, and CloudWatch at 7 days at most.
    rejects({ scheduleExpression: 'rate(4 days)' }, /rate\(4 days\) is longer than 3\.5 days/);
    rejects({ scheduleExpression: 'cron(0 6 * * ? *)' }, /schedulePeriodSeconds is required with a cron\(\.\.\.\) schedule/);
    const cron = resolveSettings({ scheduleExpression: 'cron(0 6 * * ? *)', schedulePeriodSeconds: 86_400 });
    assert.equal(schedulePeriod(cron), 86_400);
    rejects({ scheduleExpression: 'cron(0 6 * * ? *)', schedulePeriodSeconds: 90 }, /schedulePeriodSeconds must be a multiple of 60 from 60 to 302400/);
    rejects({ scheduleExpression: 'cron(0 6 * * ? *)', schedulePeriodSeconds: 0 }, /schedulePeriodSeconds must be a multiple of 60/);
    rejects({ scheduleExpression: 'cron(0 6 ? * MON *)', schedulePeriodSeconds: 604_800 }, /schedulePeriodSeconds must be a multiple of 60 from 60 to 302400/);
    rejects({ schedulePeriodSeconds: 600 }, /schedulePeriodSeconds \(600\) contradicts rate\(15 minutes\) \(900 s\)/);
    assert.doesNotThrow(() => resolveSettings({ schedulePeriodSeconds: 900 }));
  });

  test('runNotificationEmails: a list of distinct email addresses', () => {
    assert.doesNotThrow(() => resolveSettings({ runNotificationEmails: [] }));
    assert.doesNotThrow(() => resolveSettings({ runNotificationEmails: ['ops@example.com', 'a.b+runs@sub.example.org'] }));
    rejects({ runNotificationEmails: ['ops@example'] }, /runNotificationEmails: "ops@example" is not an email address/);
    rejects({ runNotificationEmails: ['a@example.com, b@example.com'] }, /is not an email address/);
    rejects({ runNotificationEmails: [''] }, /"" is not an email address/);
    rejects({ runNotificationEmails: ['ops@example.com', 'ops@example.com'] }, /lists "ops@example.com" twice/);
    rejects({ runNotificationEmails: 'ops@example.com' as never }, /runNotificationEmails must be a list of email addresses/);
  });

  test('extra consumer variables may not override what the stack sets', () => {
    for (const name of ['FANOUT_RATE_PER_SECOND', 'FANOUT_RETRY_BASE_MS', 'FANOUT_RETRY_CAP_MS', 'FANOUT_MAX_ATTEMPTS', 'FANOUT_HOST_STATE_TTL_MS']) {
      rejects({ consumerEnvironment: { [name]: '50' } }, new RegExp(`may not set ${name}: the stack sets it`));
    }
    rejects({ consumerEnvironment: { 'BAD-NAME': 'x' } }, /not a valid variable name/);
    assert.doesNotThrow(() => resolveSettings({ consumerEnvironment: { API_TOKEN: 'x' } }));
  });

  test('a filter policy needs non-empty condition lists', () => {
    rejects({ filterPolicy: { target_host: [] } }, /filterPolicy.target_host must be a non-empty array/);
  });

  test('every problem is reported at once', () => {
    assert.throws(
      () => resolveSettings({ maxConcurrency: 1, ratePerSecond: -1, batchSize: 0 }),
      (e: Error) => ['maxConcurrency', 'ratePerSecond', 'batchSize'].every((name) => e.message.includes(name)),
    );
  });
});

describe('deployment packages', () => {
  const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-asset-'));
  /** A package directory whose bootstrap starts like an ELF executable for `machine`. */
  const elfPackage = (machine: number) => {
    const dir = tmp();
    const header = Buffer.alloc(64);
    header.writeUInt32BE(0x7f454c46, 0); // \x7fELF
    header[4] = 2; // 64-bit
    header[5] = 1; // little endian
    header.writeUInt16LE(machine, 18);
    fs.writeFileSync(path.join(dir, 'bootstrap'), header, { mode: 0o755 });
    fs.writeFileSync(path.join(dir, 'fanout.json'), '{"targets":[]}');
    return dir;
  };
  const producerAssetDir = path.join(FIXTURES, 'fanout-producer');

  test('a missing bootstrap points at scripts/package', () => {
    rejects({ consumerAssetDir: tmp() }, /bootstrap does not exist: build it with scripts\/package/);
  });

  test('a missing config file is refused', () => {
    const dir = tmp();
    fs.copyFileSync(path.join(producerAssetDir, 'bootstrap'), path.join(dir, 'bootstrap'));
    rejects({ consumerAssetDir: dir }, /fanout\.json does not exist/);
    rejects({ configFile: 'pipeline.yaml' }, /pipeline\.yaml does not exist/);
  });

  test('the bootstrap architecture must match the stack architecture', () => {
    const x86 = elfPackage(0x3e);
    const arm = elfPackage(0xb7);
    assert.equal(elfArchitecture(path.join(x86, 'bootstrap')), 'x86_64');
    assert.equal(elfArchitecture(path.join(arm, 'bootstrap')), 'arm64');
    assert.equal(elfArchitecture(path.join(producerAssetDir, 'bootstrap')), undefined);
    rejects({ consumerAssetDir: x86 }, /is an x86_64 binary but the stack deploys arm64/);
    assert.doesNotThrow(() => buildStack({ consumerAssetDir: arm }));
    assert.doesNotThrow(() => buildStack({ consumerAssetDir: x86, architecture: 'x86_64' }));
  });
});
