import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Validations } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { IConstruct } from 'constructs';
import { FanoutPipeline } from '../lib';
import { PACKAGES, buildStack, emptyStack, newApp } from './helpers';
import type { FanoutStackProps } from '../lib/fanout-stack';

/**
 * The cdk-nag AwsSolutions rule pack against the stack: every finding (errors and warnings alike)
 * must be fixed, or acknowledged next to the construct with `Validations.of(c).acknowledge({ id,
 * reason })` and a real reason. The pack walks the construct tree directly (`validateScope`), so
 * the test needs no cloud assembly.
 */

/** Settings that add or change resources: alarm actions, a filter policy, x86_64, extra env, a cron schedule, email subscriptions. */
const VARIANTS: Record<string, FanoutStackProps> = {
  defaults: {},
  'every optional setting': {
    architecture: 'x86_64',
    alarmTopicArn: 'arn:aws:sns:us-east-1:123456789012:alarms',
    scheduleExpression: 'cron(0 6 * * ? *)',
    schedulePeriodSeconds: 86_400,
    runNotificationEmails: ['ops@example.com'],
    filterPolicy: { target_host: ['api.example.com'] },
    consumerEnvironment: { API_TOKEN: 'from-secrets-manager-at-deploy' },
    publishConcurrency: 4,
    recordTtlSeconds: 3600,
    retryBaseMs: 250,
    retryCapMs: 30_000,
    maxAttempts: 4,
    hostStateTtlMs: 500,
    retainData: false,
    visibilityTimeoutSeconds: 600,
  },
};

/** `rule on construct path` for each unacknowledged finding. */
function findings(stack: IConstruct): string[] {
  const report = new AwsSolutionsChecks(undefined, { verbose: true }).validateScope(stack);
  return report.violations.flatMap((v) =>
    v.violatingResources.map((r) => `${v.ruleName} (${v.severity}) on ${r.constructPath}: ${v.description}`),
  );
}

/** Every acknowledgement in the tree: construct path, rule id and reason. */
function acknowledgements(root: IConstruct): { path: string; id: string; reason: unknown }[] {
  return root.node.findAll().flatMap((c) =>
    c.node.metadata
      .filter((m) => m.type === Validations.ACKNOWLEDGED_RULES_METADATA_KEY && m.data)
      .flatMap((m) =>
        Object.entries(m.data as Record<string, unknown>).map(([id, reason]) => ({
          path: c.node.path,
          id: id.replace(/^annotation::/i, ''),
          reason,
        })),
      ),
  );
}

describe('cdk-nag AwsSolutions', () => {
  for (const [name, props] of Object.entries(VARIANTS)) {
    test(`no unacknowledged finding (${name})`, () => {
      const found = findings(buildStack(props));
      assert.deepEqual(found, [], `cdk-nag findings:\n  ${found.join('\n  ')}`);
    });
  }

  test('no unacknowledged finding (two pipelines in one stack, one with an existing table)', () => {
    const stack = emptyStack('Jobs');
    new FanoutPipeline(stack, 'Sync', PACKAGES);
    new FanoutPipeline(stack, 'Report', PACKAGES);
    const table = dynamodb.Table.fromTableName(stack, 'Ledger', 'replay-ledger');
    new FanoutPipeline(stack, 'Replay', { ...PACKAGES, existingTableObj: table });
    const found = findings(stack);
    assert.deepEqual(found, [], `cdk-nag findings:\n  ${found.join('\n  ')}`);
  });

  test('no unacknowledged finding (one pipeline in each of two stacks of one app)', () => {
    const app = newApp();
    for (const id of ['Hourly', 'Nightly']) {
      const stack = emptyStack(id, app);
      new FanoutPipeline(stack, 'Pipeline', PACKAGES);
      const found = findings(stack);
      assert.deepEqual(found, [], `cdk-nag findings in ${id}:\n  ${found.join('\n  ')}`);
    }
  });

  test('every acknowledgement names a cdk-nag rule and carries a reason of its own', () => {
    const acks = acknowledgements(buildStack(VARIANTS['every optional setting']));
    for (const { path, id, reason } of acks) {
      assert.match(id, /^AwsSolutions-[A-Z]+\d+/, `${path}: ${id}`);
      assert.ok(typeof reason === 'string' && reason.trim().length >= 20, `${path}: ${id} has no real reason`);
    }
    console.log(`cdk-nag acknowledgements: ${acks.length}`);
  });

  test('the pack is live: a wildcard grant is reported, and only an acknowledgement with a reason hides it', () => {
    const stack = buildStack();
    stack.pipeline.consumer.addToRolePolicy(new iam.PolicyStatement({ actions: ['s3:GetObject'], resources: ['*'] }));
    const found = findings(stack);
    assert.equal(found.length, 1, found.join('\n'));
    assert.match(found[0], /^AwsSolutions-IAM5\[Resource::\*\] \(error\) on Fanout\/Default\/ConsumerRole\/DefaultPolicy\/Resource/);
    Validations.of(stack.pipeline.consumer.role as iam.Role).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason: 'test only: shows that an acknowledgement suppresses exactly this finding',
    });
    assert.deepEqual(findings(stack), []);
  });
});
