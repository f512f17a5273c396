import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { Match } from 'aws-cdk-lib/assertions';
import { idByPath, only, synth } from './helpers';

// One template with every default, shared by the tests that only read it.
const template = synth();
const resources = template.toJSON().Resources as Record<string, any>;
const ref = (suffix: string) => ({ Ref: idByPath(template, suffix) });
const arn = (suffix: string) => ({ 'Fn::GetAtt': [idByPath(template, suffix), 'Arn'] });
const TOPIC = 'Topic/Resource';
const QUEUE = 'Fanout/Queue/Resource';
const DLQ = 'Fanout/Dlq/Resource';
const TABLE = 'IdempotencyTable/Resource';
const PRODUCER = 'Fanout/Producer/Resource';
const CONSUMER = 'Fanout/Consumer/Resource';

function env(suffix: string, t = template): Record<string, unknown> {
  const all = t.toJSON().Resources as Record<string, any>;
  return all[idByPath(t, suffix)].Properties.Environment.Variables;
}

describe('schedule and producer', () => {
  test('an EventBridge rule runs the producer on the configured expression', () => {
    template.hasResourceProperties('AWS::Events::Rule', {
      ScheduleExpression: 'rate(15 minutes)',
      State: 'ENABLED',
      Targets: [Match.objectLike({ Arn: arn(PRODUCER) })],
    });
    template.hasResourceProperties('AWS::Lambda::Permission', {
      Action: 'lambda:InvokeFunction',
      Principal: 'events.amazonaws.com',
      FunctionName: arn(PRODUCER),
    });
    synth({ scheduleExpression: 'cron(0 6 * * ? *)' }).hasResourceProperties('AWS::Events::Rule', {
      ScheduleExpression: 'cron(0 6 * * ? *)',
    });
  });

  test('both functions are provided.al2023 / bootstrap, arm64 by default, x86_64 on request', () => {
    for (const fn of [PRODUCER, CONSUMER]) {
      const props = resources[idByPath(template, fn)].Properties;
      assert.equal(props.Runtime, 'provided.al2023');
      assert.equal(props.Handler, 'bootstrap');
      assert.deepEqual(props.Architectures, ['arm64']);
      assert.equal(props.LoggingConfig.LogFormat, 'JSON');
    }
    const x86 = synth({ architecture: 'x86_64' });
    for (const [, fn] of Object.entries(x86.findResources('AWS::Lambda::Function'))) {
      assert.deepEqual(fn.Properties.Architectures, ['x86_64']);
    }
  });

  test('the producer environment names the topic and the packaged config', () => {
    assert.deepEqual(env(PRODUCER), { FANOUT_CONFIG: 'fanout.json', FANOUT_TOPIC_ARN: ref(TOPIC) });
    assert.equal(env(PRODUCER, synth({ publishConcurrency: 8 })).FANOUT_PUBLISH_CONCURRENCY, '8');
  });
});

describe('topic, queue and DLQ', () => {
  test('the queue subscribes to the topic with raw message delivery and no filter by default', () => {
    const { resource } = only(template, 'AWS::SNS::Subscription');
    assert.deepEqual(resource.Properties, {
      Protocol: 'sqs',
      TopicArn: ref(TOPIC),
      Endpoint: arn(QUEUE),
      RawMessageDelivery: true,
    });
  });

  test('a filter policy reaches the subscription', () => {
    const t = synth({ filterPolicy: { target_host: ['api.example.com'] } });
    t.hasResourceProperties('AWS::SNS::Subscription', { FilterPolicy: { target_host: ['api.example.com'] } });
  });

  test('the queue redrives to the DLQ after maxReceiveCount receives (default 5)', () => {
    template.hasResourceProperties('AWS::SQS::Queue', {
      RedrivePolicy: { deadLetterTargetArn: arn(DLQ), maxReceiveCount: 5 },
    });
    synth({ maxReceiveCount: 3 }).hasResourceProperties('AWS::SQS::Queue', {
      RedrivePolicy: Match.objectLike({ maxReceiveCount: 3 }),
    });
  });

  test('the DLQ keeps messages 14 days, longer than the source queue', () => {
    const dlq = resources[idByPath(template, DLQ)].Properties;
    const queue = resources[idByPath(template, QUEUE)].Properties;
    assert.equal(dlq.MessageRetentionPeriod, 14 * 86_400);
    assert.ok(queue.MessageRetentionPeriod < dlq.MessageRetentionPeriod);
  });

  test('visibility timeout defaults to 6 × consumer timeout + batching window', () => {
    assert.equal(resources[idByPath(template, QUEUE)].Properties.VisibilityTimeout, 6 * 30);
    const t = synth({ consumerTimeoutSeconds: 60, maxBatchingWindowSeconds: 20, batchSize: 50 });
    t.hasResourceProperties('AWS::SQS::Queue', { VisibilityTimeout: 6 * 60 + 20 });
    synth({ visibilityTimeoutSeconds: 900 }).hasResourceProperties('AWS::SQS::Queue', { VisibilityTimeout: 900 });
  });

  test('only the topic may send to the queue (aws:SourceArn), over TLS only', () => {
    const policy = Object.values(template.findResources('AWS::SQS::QueuePolicy')).find((p: any) =>
      p.Properties.Queues.some((q: any) => q.Ref === idByPath(template, QUEUE)),
    );
    assert.ok(policy, 'queue policy');
    const statements: any[] = policy.Properties.PolicyDocument.Statement;
    const allows = statements.filter((s) => s.Effect === 'Allow');
    assert.deepEqual(allows, [
      {
        Effect: 'Allow',
        Principal: { Service: 'sns.amazonaws.com' },
        Action: 'sqs:SendMessage',
        Resource: arn(QUEUE),
        Condition: { ArnEquals: { 'aws:SourceArn': ref(TOPIC) } },
      },
    ]);
    assert.ok(
      statements.some((s) => s.Effect === 'Deny' && s.Condition?.Bool?.['aws:SecureTransport'] === 'false'),
      'deny non-TLS',
    );
  });

  test('topic and queues are encrypted at rest', () => {
    const topic = only(template, 'AWS::SNS::Topic').resource.Properties;
    assert.match(JSON.stringify(topic.KmsMasterKeyId), /alias\/aws\/sns/);
    for (const q of [QUEUE, DLQ]) {
      assert.equal(resources[idByPath(template, q)].Properties.SqsManagedSseEnabled, true, q);
    }
  });
});

describe('consumer', () => {
  test('the event source mapping: max concurrency, partial batch responses, batch size and window', () => {
    const { resource } = only(template, 'AWS::Lambda::EventSourceMapping');
    assert.deepEqual(resource.Properties, {
      EventSourceArn: arn(QUEUE),
      FunctionName: ref(CONSUMER),
      BatchSize: 10,
      MaximumBatchingWindowInSeconds: 0,
      ScalingConfig: { MaximumConcurrency: 5 },
      FunctionResponseTypes: ['ReportBatchItemFailures'],
    });
    synth({ batchSize: 100, maxBatchingWindowSeconds: 5 }).hasResourceProperties('AWS::Lambda::EventSourceMapping', {
      BatchSize: 100,
      MaximumBatchingWindowInSeconds: 5,
    });
  });

  test('maxConcurrency sets the mapping only: the consumer splits the budget by leases', () => {
    for (const maxConcurrency of [undefined, 2, 17]) {
      const t = synth({ maxConcurrency });
      const esm = only(t, 'AWS::Lambda::EventSourceMapping').resource.Properties;
      assert.equal(esm.ScalingConfig.MaximumConcurrency, maxConcurrency ?? 5);
      assert.equal(env(CONSUMER, t).FANOUT_MAX_CONCURRENCY, undefined);
    }
  });

  test('the consumer environment carries budget, table, queue and DLQ', () => {
    assert.deepEqual(env(CONSUMER), {
      FANOUT_CONFIG: 'fanout.json',
      FANOUT_TABLE_NAME: ref(TABLE),
      FANOUT_QUEUE_URL: ref(QUEUE),
      FANOUT_DLQ_URL: ref(DLQ),
      FANOUT_RATE_PER_SECOND: '10',
    });
    const t = synth({ ratePerSecond: 2.5, recordTtlSeconds: 3600, consumerEnvironment: { API_TOKEN: 'x' } });
    assert.equal(env(CONSUMER, t).FANOUT_RATE_PER_SECOND, '2.5');
    assert.equal(env(CONSUMER, t).FANOUT_RECORD_TTL_SECS, '3600');
    assert.equal(env(CONSUMER, t).API_TOKEN, 'x');
  });

  test('retry and host-state settings reach the consumer only when set', () => {
    const t = synth({ retryBaseMs: 250, retryCapMs: 30_000, maxAttempts: 4, hostStateTtlMs: 500 });
    assert.deepEqual(env(CONSUMER, t), {
      ...env(CONSUMER),
      FANOUT_RETRY_BASE_MS: '250',
      FANOUT_RETRY_CAP_MS: '30000',
      FANOUT_MAX_ATTEMPTS: '4',
      FANOUT_HOST_STATE_TTL_MS: '500',
    });
    assert.equal(env(CONSUMER, synth({ maxAttempts: 3 })).FANOUT_RETRY_BASE_MS, undefined);
  });
});

describe('idempotency table', () => {
  test('on-demand, message_id key, TTL on expiration, PITR, encrypted, retained', () => {
    const { resource } = only(template, 'AWS::DynamoDB::Table');
    assert.deepEqual(resource.Properties, {
      KeySchema: [{ AttributeName: 'message_id', KeyType: 'HASH' }],
      AttributeDefinitions: [{ AttributeName: 'message_id', AttributeType: 'S' }],
      BillingMode: 'PAY_PER_REQUEST',
      TimeToLiveSpecification: { AttributeName: 'expiration', Enabled: true },
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true },
    });
    assert.equal(resource.DeletionPolicy, 'Retain');
    assert.equal(resources[idByPath(template, DLQ)].DeletionPolicy, 'Retain');
  });

  test('retainData=false lets the stack delete the table and the DLQ', () => {
    const t = synth({ retainData: false });
    t.hasResource('AWS::DynamoDB::Table', { DeletionPolicy: 'Delete' });
    const all = t.toJSON().Resources;
    assert.equal(all[idByPath(t, DLQ)].DeletionPolicy, 'Delete');
  });
});

describe('IAM', () => {
  const policies = Object.values(template.findResources('AWS::IAM::Policy')) as any[];
  const statements = (roleSuffix: string) =>
    policies
      .filter((p) => p.Properties.Roles.some((r: any) => r.Ref === idByPath(template, roleSuffix)))
      .flatMap((p) => p.Properties.PolicyDocument.Statement);
  const list = (x: unknown) => (Array.isArray(x) ? x : [x]);

  test('no statement allows a wildcard action or resource', () => {
    const roles = Object.values(template.findResources('AWS::IAM::Role')) as any[];
    const all = [
      ...policies.flatMap((p) => p.Properties.PolicyDocument.Statement),
      ...roles.flatMap((r) => (r.Properties.Policies ?? []).flatMap((p: any) => p.PolicyDocument.Statement)),
    ];
    assert.ok(all.length > 0);
    for (const s of all) {
      for (const action of list(s.Action)) assert.doesNotMatch(action, /\*/, JSON.stringify(s));
      for (const resource of list(s.Resource)) assert.notEqual(resource, '*', JSON.stringify(s));
    }
    for (const r of roles) assert.equal(r.Properties.ManagedPolicyArns, undefined, 'no managed policies');
  });

  test('the producer may only publish to its topic and write its logs', () => {
    assert.deepEqual(statements('ProducerRole/Resource'), [
      {
        Effect: 'Allow',
        Action: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        Resource: arn('ProducerLogs/Resource'),
      },
      { Effect: 'Allow', Action: 'sns:Publish', Resource: ref(TOPIC) },
    ]);
  });

  test('the consumer gets exactly its queue, DLQ, table and log permissions', () => {
    // SendMessage on the job queue: delayed copies of waiting or retried jobs; on the DLQ:
    // permanent failures. BatchGetItem: host states and leases, read together.
    assert.deepEqual(statements('ConsumerRole/Resource'), [
      {
        Effect: 'Allow',
        Action: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        Resource: arn('ConsumerLogs/Resource'),
      },
      {
        Effect: 'Allow',
        Action: ['sqs:ChangeMessageVisibility', 'sqs:DeleteMessage', 'sqs:GetQueueAttributes', 'sqs:ReceiveMessage'],
        Resource: arn(QUEUE),
      },
      { Effect: 'Allow', Action: 'sqs:SendMessage', Resource: [arn(DLQ), arn(QUEUE)] },
      {
        Effect: 'Allow',
        Action: ['dynamodb:BatchGetItem', 'dynamodb:GetItem', 'dynamodb:UpdateItem'],
        Resource: arn(TABLE),
      },
    ]);
  });

  test('the functions log to their own log groups with a retention', () => {
    for (const [fn, logs] of [
      [PRODUCER, 'ProducerLogs/Resource'],
      [CONSUMER, 'ConsumerLogs/Resource'],
    ]) {
      assert.deepEqual(resources[idByPath(template, fn)].Properties.LoggingConfig.LogGroup, ref(logs));
      assert.equal(resources[idByPath(template, logs)].Properties.RetentionInDays, 30);
    }
  });
});

describe('alarms', () => {
  const alarms = () => Object.values(template.findResources('AWS::CloudWatch::Alarm')) as any[];
  const byMetric = (t: typeof template, metric: string, dimension: string) =>
    (Object.values(t.findResources('AWS::CloudWatch::Alarm')) as any[]).find(
      (a) =>
        a.Properties.MetricName === metric &&
        JSON.stringify(a.Properties.Dimensions).includes(JSON.stringify(idByPath(t, dimension))),
    )?.Properties;

  test('DLQ not empty, oldest message age, consumer errors and throttles, producer errors', () => {
    assert.equal(alarms().length, 5);
    assert.equal(byMetric(template, 'ApproximateNumberOfMessagesVisible', DLQ)?.Threshold, 1);
    assert.equal(byMetric(template, 'ApproximateAgeOfOldestMessage', QUEUE)?.Threshold, 1800);
    assert.equal(byMetric(template, 'Errors', CONSUMER)?.Threshold, 1);
    assert.equal(byMetric(template, 'Throttles', CONSUMER)?.Threshold, 1);
    assert.equal(byMetric(template, 'Errors', PRODUCER)?.Threshold, 1);
    const t = synth({ oldestMessageAgeAlarmSeconds: 600 });
    assert.equal(byMetric(t, 'ApproximateAgeOfOldestMessage', QUEUE)?.Threshold, 600);
  });

  test('every description links a section of docs/runbook.md that exists', () => {
    const runbook = fs.readFileSync(path.join(__dirname, '..', '..', 'docs', 'runbook.md'), 'utf8');
    // GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
    const anchors = new Set(
      [...runbook.matchAll(/^#{1,6} (.+)$/gm)].map((m) =>
        m[1].trim().toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-'),
      ),
    );
    for (const alarm of alarms()) {
      const match = /Runbook: docs\/runbook\.md#([\w-]+)$/.exec(alarm.Properties.AlarmDescription);
      assert.ok(match, alarm.Properties.AlarmDescription);
      assert.ok(anchors.has(match[1]), `docs/runbook.md has no section #${match[1]}`);
    }
  });

  test('a runbook URL and an alarm topic can be configured', () => {
    const topicArn = 'arn:aws:sns:eu-west-1:123456789012:oncall';
    const t = synth({ runbookUrl: 'https://example.com/fanout/runbook', alarmTopicArn: topicArn });
    for (const a of Object.values(t.findResources('AWS::CloudWatch::Alarm')) as any[]) {
      assert.match(a.Properties.AlarmDescription, /Runbook: https:\/\/example\.com\/fanout\/runbook#/);
      assert.deepEqual(a.Properties.AlarmActions, [topicArn]);
      assert.deepEqual(a.Properties.OKActions, [topicArn]);
    }
    for (const a of alarms()) assert.equal(a.Properties.AlarmActions, undefined);
  });
});

test('outputs: TopicArn, QueueUrl, DlqUrl, TableName (and the log groups, producer and rule)', () => {
  const outputs = template.toJSON().Outputs as Record<string, any>;
  assert.deepEqual(Object.keys(outputs).sort(), [
    'ConsumerLogGroup',
    'DlqUrl',
    'ProducerFunctionName',
    'ProducerLogGroup',
    'QueueUrl',
    'ScheduleRuleArn',
    'TableName',
    'TopicArn',
  ]);
  assert.deepEqual(outputs.TopicArn.Value, ref(TOPIC));
  assert.deepEqual(outputs.QueueUrl.Value, ref(QUEUE));
  assert.deepEqual(outputs.DlqUrl.Value, ref(DLQ));
  assert.deepEqual(outputs.TableName.Value, ref(TABLE));
  assert.deepEqual(outputs.ConsumerLogGroup.Value, ref('ConsumerLogs/Resource'));
  // `fanout trigger` invokes the producer with the event the rule sends.
  assert.deepEqual(outputs.ProducerFunctionName.Value, ref(PRODUCER));
  assert.deepEqual(outputs.ScheduleRuleArn.Value, arn('Schedule/Resource'));
});
