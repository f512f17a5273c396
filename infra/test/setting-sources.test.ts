import assert from 'node:assert/strict';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { Annotations, Match } from 'aws-cdk-lib/assertions';
import { readPipelineConfig } from '../lib/pipeline-config';
import { settingSources } from '../lib/setting-sources';
import { buildStack, consumerPackage, idByPath, only, synth } from './helpers';

const config = (values: Record<string, number>) => ({ name: 'fanout.json', values });

/** The consumer's environment variables in a template. */
function consumerEnv(t: ReturnType<typeof synth>): Record<string, string> {
  const all = t.toJSON().Resources as Record<string, any>;
  return all[idByPath(t, 'Fanout/Default/Consumer/Resource')].Properties.Environment.Variables;
}

describe('which value of a shared setting runs', () => {
  test('config only: the config runs, the stack sets no variable', () => {
    const s = settingSources({}, config({ ratePerSecond: 20, maxAttempts: 3 }));
    assert.deepEqual(s.environment, {});
    assert.deepEqual(s.effective, { ratePerSecond: 20, maxAttempts: 3 });
    assert.ok(s.notes.includes('ratePerSecond: fanout.json rate_limit.per_second=20 runs'), s.notes.join('\n'));
    assert.deepEqual(s.problems, []);
  });

  test('both, equal: the config runs and no variable can drift from it', () => {
    const s = settingSources({ ratePerSecond: 20, retryBaseMs: 100 }, config({ ratePerSecond: 20, retryBaseMs: 100 }));
    assert.deepEqual(s.environment, {});
    assert.deepEqual(s.problems, []);
  });

  test('both, different: refused, naming the setting and the config field', () => {
    const s = settingSources({ ratePerSecond: 10, maxAttempts: 4 }, config({ ratePerSecond: 20, maxAttempts: 8 }));
    assert.deepEqual(s.problems, [
      'ratePerSecond=10 disagrees with fanout.json rate_limit.per_second=20: set one of them',
      'maxAttempts=4 disagrees with fanout.json retry.max_attempts=8: set one of them',
    ]);
  });

  test('stack only: the stack supplies the variable and says so', () => {
    const s = settingSources({ ratePerSecond: 2.5, retryCapMs: 30_000 }, config({}));
    assert.deepEqual(s.environment, { FANOUT_RATE_PER_SECOND: '2.5', FANOUT_RETRY_CAP_MS: '30000' });
    assert.ok(s.notes.includes('ratePerSecond=2.5 runs (FANOUT_RATE_PER_SECOND): fanout.json has no rate_limit.per_second'));
    assert.deepEqual(s.warnings, []);
  });

  test('no budget anywhere is a warning: the consumers would be unlimited', () => {
    const s = settingSources({}, config({}));
    assert.equal(s.warnings.length, 1);
    assert.match(s.warnings[0], /^no global budget: neither ratePerSecond nor fanout\.json rate_limit\.per_second is set/);
    assert.equal(s.effective.ratePerSecond, undefined);
  });

  test('a retry cap from one place below a base from the other is refused', () => {
    const s = settingSources({ retryBaseMs: 5000 }, config({ retryCapMs: 1000 }));
    assert.deepEqual(s.problems, [
      'the retry cap (1000, fanout.json retry.cap_ms) is below the retry base (5000, stack retryBaseMs): the consumer would refuse to start',
    ]);
  });
});

describe('reading the packaged config', () => {
  test('JSON and YAML give the same values; absent fields stay absent', () => {
    const json = consumerPackage('{"rate_limit":{"per_second":20,"burst":2},"retry":{"max_attempts":3},"targets":[]}');
    const yaml = consumerPackage('rate_limit:\n  per_second: 20\n  burst: 2\nretry:\n  max_attempts: 3\ntargets: []\n', 'fanout.yaml');
    const expected = { ratePerSecond: 20, maxAttempts: 3 };
    assert.deepEqual(readPipelineConfig(path.join(json, 'fanout.json')), { name: 'fanout.json', values: expected });
    assert.deepEqual(readPipelineConfig(path.join(yaml, 'fanout.yaml')), { name: 'fanout.yaml', values: expected });
  });

  test('an unreadable config or a non-numeric shared field names the file and field', () => {
    const bad = consumerPackage('{"targets": [');
    assert.throws(() => readPipelineConfig(path.join(bad, 'fanout.json')), /fanout\.json: cannot parse/);
    const text = consumerPackage('{"rate_limit":{"per_second":"fast"},"targets":[]}');
    assert.throws(() => readPipelineConfig(path.join(text, 'fanout.json')), /rate_limit\.per_second must be a number, got "fast"/);
  });
});

describe('the stack and the packaged config', () => {
  const budget20 = consumerPackage('{"rate_limit":{"per_second":20},"targets":[]}');

  test('config 20/s and no ratePerSecond: no variable, the dashboard draws 20/s', () => {
    const t = synth({ consumerAssetDir: budget20 });
    assert.equal(consumerEnv(t).FANOUT_RATE_PER_SECOND, undefined);
    const body = JSON.stringify(only(t, 'AWS::CloudWatch::Dashboard').resource.Properties.DashboardBody);
    assert.match(body, /\\"horizontal\\":\[\{\\"value\\":20,/);
  });

  test('ratePerSecond=20 restating the config is accepted and sets no variable', () => {
    assert.equal(consumerEnv(synth({ consumerAssetDir: budget20, ratePerSecond: 20 })).FANOUT_RATE_PER_SECOND, undefined);
  });

  test('ratePerSecond=10 against the config\'s 20 stops synth, naming both', () => {
    assert.throws(
      () => buildStack({ consumerAssetDir: budget20, ratePerSecond: 10 }),
      /ratePerSecond=10 disagrees with fanout\.json rate_limit\.per_second=20: set one of them/,
    );
  });

  test('a YAML config (configFile=fanout.yaml) is compared too', () => {
    const yaml = 'retry:\n  base_ms: 100\ntargets: []\n';
    const props = { consumerAssetDir: consumerPackage(yaml, 'fanout.yaml'), producerAssetDir: consumerPackage(yaml, 'fanout.yaml') };
    assert.throws(() => buildStack({ ...props, configFile: 'fanout.yaml', retryBaseMs: 250 }), /retryBaseMs=250 disagrees with fanout\.yaml retry\.base_ms=100/);
    assert.doesNotThrow(() => buildStack({ ...props, configFile: 'fanout.yaml', retryBaseMs: 100 }));
  });

  test('a stack value the config lacks runs, and synth says so (info); no budget at all is a warning', () => {
    const stack = buildStack({ ratePerSecond: 2.5 });
    assert.equal(consumerEnv(synth({ ratePerSecond: 2.5 })).FANOUT_RATE_PER_SECOND, '2.5');
    Annotations.fromStack(stack).hasInfo('/Fanout/Default', Match.stringLikeRegexp('^ratePerSecond=2\\.5 runs \\(FANOUT_RATE_PER_SECOND\\): fanout\\.json has no rate_limit\\.per_second'));
    Annotations.fromStack(stack).hasNoWarning('*', Match.anyValue());
    Annotations.fromStack(buildStack()).hasWarning('/Fanout/Default', Match.stringLikeRegexp('^no global budget'));
  });
});
