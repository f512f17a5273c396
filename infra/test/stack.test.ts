import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { Match } from 'aws-cdk-lib/assertions';
import { tickWindow } from '../lib/alarms';
import { extraPipelinesFromContext } from '../lib/context';
import { PACKAGES, idByPath, only, synth } from './helpers';

// One template with every default, shared by the tests that only read it.
const template = synth();
const resources = template.toJSON().Resources as Record<string, any>;
const ref = (suffix: string) => ({ Ref: idByPath(template, suffix) });
const arn = (suffix: string) => ({ 'Fn::GetAtt': [idByPath(template, suffix), 'Arn'] });
const TOPIC = 'Fanout/Default/Topic/Resource';
const QUEUE = 'Fanout/Default/Queue/Resource';
const DLQ = 'Fanout/Default/Dlq/Resource';
const TABLE = 'IdempotencyTable/Resource';
const PRODUCER = 'Fanout/Default/Producer/Resource';
const CONSUMER = 'Fanout/Default/Consumer/Resource';
const RUN_TOPIC = 'Runs/RunNotifications/Resource';
const RUN_RULE = 'Runs/RunEvents/Resource';
const RUN_KEY = 'Runs/Key/Resource';
const LISTS = 'ListsBucket/Resource';
/** s3://<bucket>/lists/, the list home (`FANOUT_LISTS`, the `ListsLocation` output). */
const LISTS_LOCATION = { 'Fn::Join': ['', ['s3://', { Ref: idByPath(template, LISTS) }, '/lists/']] };
/** arn:${Partition}:events:${Region}:${Account}:event-bus/default, as CloudFormation renders it. */
const DEFAULT_BUS = {
  'Fn::Join': [
    '',
    ['arn:', { Ref: 'AWS::Partition' }, ':events:', { Ref: 'AWS::Region' }, ':', { Ref: 'AWS::AccountId' }, ':event-bus/default'],
  ],
};

function env(suffix: string, t = template): Record<string, unknown> {
  const all = t.toJSON().Resources as Record<string, any>;
  return all[idByPath(t, suffix)].Properties.Environment.Variables;
}

describe('schedule and producer', () => {
  test('an EventBridge Scheduler schedule runs the producer on the configured expression, in its time zone', () => {
    const schedule = resources[idByPath(template, 'Fanout/Default/Schedule-tick/Resource')].Properties;
    assert.deepEqual(schedule, {
      Description: 'Starts a fanout producer run (schedule tick)',
      FlexibleTimeWindow: { Mode: 'OFF' },
      ScheduleExpression: 'rate(15 minutes)',
      ScheduleExpressionTimezone: 'UTC',
      State: 'ENABLED',
      Target: {
        Arn: arn(PRODUCER),
        // The producer makes the run ID of the name and Scheduler's scheduled time.
        Input: JSON.stringify({ schedule: 'tick', scheduled_time: '<aws.scheduler.scheduled-time>' }),
        RetryPolicy: { MaximumEventAgeInSeconds: 86_400, MaximumRetryAttempts: 185 },
        RoleArn: arn('Fanout/Default/SchedulerRole/Resource'),
      },
    });
    // Scheduler assumes the role, for this account's schedules only; the role may invoke the producer.
    const role = resources[idByPath(template, 'Fanout/Default/SchedulerRole/Resource')].Properties;
    assert.deepEqual(role.AssumeRolePolicyDocument.Statement, [
      {
        Action: 'sts:AssumeRole',
        Condition: { StringEquals: { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } } },
        Effect: 'Allow',
        Principal: { Service: 'scheduler.amazonaws.com' },
      },
    ]);
    template.hasResourceProperties('AWS::IAM::Policy', {
      Roles: [ref('Fanout/Default/SchedulerRole/Resource')],
      PolicyDocument: { Statement: [Match.objectLike({ Action: 'lambda:InvokeFunction' })] },
    });
    assert.equal(Object.keys(template.findResources('AWS::Events::Rule', { Properties: { ScheduleExpression: Match.anyValue() } })).length, 0);
    const tokyo = synth({ scheduleExpression: 'cron(0 0 * * ? *)', schedulePeriodSeconds: 86_400, scheduleTimeZone: 'Asia/Tokyo' });
    tokyo.hasResourceProperties('AWS::Scheduler::Schedule', {
      ScheduleExpression: 'cron(0 0 * * ? *)',
      ScheduleExpressionTimezone: 'Asia/Tokyo',
    });
    synth({ schedulesEnabled: false }).resourcePropertiesCountIs('AWS::Scheduler::Schedule', { State: 'DISABLED' }, 2);
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

  test('the producer environment names the topic, the table, the pipeline and the packaged config', () => {
    assert.deepEqual(env(PRODUCER), {
      FANOUT_CONFIG: 'fanout.json',
      FANOUT_TOPIC_ARN: ref(TOPIC),
      FANOUT_TABLE_NAME: ref(TABLE),
      FANOUT_LISTS: LISTS_LOCATION,
      FANOUT_PIPELINE: 'Fanout',
      FANOUT_EVENT_BUS: 'default',
    });
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

  test("the producer's /tmp holds a list's spool: 2 GiB by default, the consumer keeps Lambda's 512 MB", () => {
    assert.deepEqual(resources[idByPath(template, PRODUCER)].Properties.EphemeralStorage, { Size: 2048 });
    assert.equal(resources[idByPath(template, CONSUMER)].Properties.EphemeralStorage, undefined);
    synth({ producerTmpMb: 10_240 }).hasResourceProperties('AWS::Lambda::Function', { EphemeralStorage: { Size: 10_240 } });
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
    const topic = resources[idByPath(template, TOPIC)].Properties;
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

  test('maxConcurrency sets the mapping, and the consumer the most instances a budget is split by when it cannot read the leases', () => {
    for (const maxConcurrency of [undefined, 2, 17]) {
      const t = synth({ maxConcurrency });
      const esm = only(t, 'AWS::Lambda::EventSourceMapping').resource.Properties;
      assert.equal(esm.ScalingConfig.MaximumConcurrency, maxConcurrency ?? 5);
      assert.equal(env(CONSUMER, t).FANOUT_MAX_INSTANCES, String(maxConcurrency ?? 5));
    }
  });

  test('the consumer environment carries table, queue and DLQ; a budget only when the stack supplies one', () => {
    // The fixture config has no rate_limit and the stack sets no ratePerSecond: no variable.
    assert.deepEqual(env(CONSUMER), {
      FANOUT_CONFIG: 'fanout.json',
      FANOUT_TABLE_NAME: ref(TABLE),
      FANOUT_QUEUE_URL: ref(QUEUE),
      FANOUT_DLQ_URL: ref(DLQ),
      FANOUT_MAX_INSTANCES: '5',
      FANOUT_PIPELINE: 'Fanout',
      FANOUT_EVENT_BUS: 'default',
    });
    const t = synth({ ratePerSecond: 2.5, recordTtlSeconds: 3600, consumerEnvironment: { API_TOKEN: 'x' } });
    assert.equal(env(CONSUMER, t).FANOUT_RATE_PER_SECOND, '2.5');
    assert.equal(env(CONSUMER, t).FANOUT_RECORD_TTL_SECS, '3600');
    assert.equal(env(CONSUMER, t).API_TOKEN, 'x');
  });

  test('retry, host-state and in-flight settings reach the consumer only when set', () => {
    const t = synth({ retryBaseMs: 250, retryCapMs: 30_000, maxAttempts: 4, hostStateTtlMs: 500, maxInFlight: 40 });
    assert.deepEqual(env(CONSUMER, t), {
      ...env(CONSUMER),
      FANOUT_RETRY_BASE_MS: '250',
      FANOUT_RETRY_CAP_MS: '30000',
      FANOUT_MAX_ATTEMPTS: '4',
      FANOUT_HOST_STATE_TTL_MS: '500',
      FANOUT_MAX_IN_FLIGHT: '40',
    });
    assert.equal(env(CONSUMER, synth({ maxAttempts: 3 })).FANOUT_RETRY_BASE_MS, undefined);
    assert.equal(env(CONSUMER).FANOUT_MAX_IN_FLIGHT, undefined);
  });
});

describe('idempotency table', () => {
  test('on-demand, message_id key, runs index, TTL on expiration, PITR, encrypted, retained', () => {
    const { resource } = only(template, 'AWS::DynamoDB::Table');
    assert.deepEqual(resource.Properties, {
      KeySchema: [{ AttributeName: 'message_id', KeyType: 'HASH' }],
      AttributeDefinitions: [
        { AttributeName: 'message_id', AttributeType: 'S' },
        { AttributeName: 'run_index', AttributeType: 'S' },
        { AttributeName: 'started_at', AttributeType: 'N' },
      ],
      // The run ledger's sparse index: only run items carry run_index.
      GlobalSecondaryIndexes: [
        {
          IndexName: 'runs',
          KeySchema: [
            { AttributeName: 'run_index', KeyType: 'HASH' },
            { AttributeName: 'started_at', KeyType: 'RANGE' },
          ],
          Projection: { ProjectionType: 'ALL' },
        },
      ],
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

  /** PutEvents on the default bus, for events whose source is `fanout` only. */
  const putEvents = {
    Effect: 'Allow',
    Action: 'events:PutEvents',
    Resource: DEFAULT_BUS,
    Condition: { StringEquals: { 'events:source': 'fanout' } },
  };

  test('the producer may publish to its topic, keep the run ledger, read the list home, put run events and write its logs', () => {
    assert.deepEqual(statements('ProducerRole/Resource'), [
      {
        Effect: 'Allow',
        Action: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        Resource: arn('ProducerLogs/Resource'),
      },
      { Effect: 'Allow', Action: 'sns:Publish', Resource: ref(TOPIC) },
      {
        Effect: 'Allow',
        Action: ['dynamodb:BatchGetItem', 'dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem'],
        Resource: arn(TABLE),
      },
      // Query on the runs index only, never on the table (no listing of idempotency records).
      { Effect: 'Allow', Action: 'dynamodb:Query', Resource: { 'Fn::Join': ['', [arn(TABLE), '/index/runs']] } },
      // The list home, read-only, under its prefix only.
      {
        Effect: 'Allow',
        Action: ['s3:GetObject', 's3:GetObjectVersion'],
        Resource: { 'Fn::Join': ['', [arn(LISTS), '/lists/*']] },
      },
      {
        Effect: 'Allow',
        Action: 's3:ListBucket',
        Resource: arn(LISTS),
        Condition: { StringLike: { 's3:prefix': ['lists/*'] } },
      },
      putEvents,
    ]);
  });

  test('no role may put events on a bus other than the default one', () => {
    const all = policies.flatMap((p) => p.Properties.PolicyDocument.Statement);
    const puts = all.filter((s) => list(s.Action).some((a: string) => a.startsWith('events:')));
    assert.equal(puts.length, 2, 'producer and consumer');
    for (const s of puts) assert.deepEqual(s, putEvents);
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
      // The consumer that settles a run's last job puts its completion event.
      putEvents,
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
    assert.equal(alarms().length, 8);
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

describe('runs', () => {
  test('a second schedule invokes the producer every 5 minutes as the watchdog', () => {
    const schedule = resources[idByPath(template, 'Fanout/Default/Watchdog/Resource')].Properties;
    assert.deepEqual(schedule, {
      Description: 'Finishes fanout runs whose completion was missed; reports runs past their deadline',
      FlexibleTimeWindow: { Mode: 'OFF' },
      ScheduleExpression: 'rate(5 minutes)',
      ScheduleExpressionTimezone: 'Etc/UTC',
      State: 'ENABLED',
      Target: {
        Arn: arn(PRODUCER),
        Input: '{"watchdog":true}',
        RetryPolicy: { MaximumEventAgeInSeconds: 86_400, MaximumRetryAttempts: 185 },
        RoleArn: arn('Fanout/Default/SchedulerRole/Resource'),
      },
    });
  });

  test('FANOUT_PIPELINE is the stack name, so stacks side by side keep their runs apart', () => {
    const t = synth({ stackName: 'FanoutBilling' });
    assert.equal(env(PRODUCER, t).FANOUT_PIPELINE, 'FanoutBilling');
    assert.equal(env(CONSUMER, t).FANOUT_PIPELINE, 'FanoutBilling');
    const rule = (Object.values(t.findResources('AWS::Events::Rule')) as any[]).find((r) => r.Properties.EventPattern);
    assert.deepEqual(rule.Properties.EventPattern.detail, { pipeline: ['FanoutBilling'] });
  });

  test('consumer variables may not override FANOUT_PIPELINE or FANOUT_EVENT_BUS', () => {
    assert.throws(() => synth({ consumerEnvironment: { FANOUT_PIPELINE: 'x' } }), /may not set FANOUT_PIPELINE/);
    assert.throws(() => synth({ consumerEnvironment: { FANOUT_EVENT_BUS: 'x' } }), /may not set FANOUT_EVENT_BUS/);
  });
});

describe('run notifications', () => {
  test('RunEvents matches this pipeline\'s completion events on the default bus and targets the topic', () => {
    const rule = resources[idByPath(template, RUN_RULE)].Properties;
    assert.equal(rule.EventBusName, undefined, 'default bus');
    assert.deepEqual(rule.EventPattern, {
      source: ['fanout'],
      'detail-type': ['Run Succeeded', 'Run Failed'],
      detail: { pipeline: ['Fanout'] },
    });
    assert.deepEqual(rule.Targets, [{ Arn: ref(RUN_TOPIC), Id: 'Target0' }]);
  });

  test('only that rule may publish to the topic (events.amazonaws.com with aws:SourceArn), over TLS only', () => {
    const policy = (Object.values(template.findResources('AWS::SNS::TopicPolicy')) as any[]).find((p) =>
      p.Properties.Topics.some((t: any) => t.Ref === idByPath(template, RUN_TOPIC)),
    );
    assert.ok(policy, 'topic policy');
    const statements: any[] = policy.Properties.PolicyDocument.Statement;
    assert.deepEqual(
      statements.filter((s) => s.Effect === 'Allow'),
      [
        {
          Sid: 'RunEventsRulePublishes',
          Effect: 'Allow',
          Principal: { Service: 'events.amazonaws.com' },
          Action: 'sns:Publish',
          Resource: ref(RUN_TOPIC),
          Condition: { ArnEquals: { 'aws:SourceArn': arn(RUN_RULE) } },
        },
      ],
    );
    assert.ok(statements.some((s) => s.Effect === 'Deny' && s.Condition?.Bool?.['aws:SecureTransport'] === 'false'));
  });

  test('the topic is encrypted with a rotated key of its own that EventBridge may use', () => {
    const topic = resources[idByPath(template, RUN_TOPIC)].Properties;
    assert.deepEqual(topic.KmsMasterKeyId, arn(RUN_KEY));
    const key = resources[idByPath(template, RUN_KEY)];
    assert.equal(key.Properties.EnableKeyRotation, true);
    assert.equal(key.DeletionPolicy, 'Delete');
    const forEvents = key.Properties.KeyPolicy.Statement.filter((s: any) => s.Principal?.Service === 'events.amazonaws.com');
    assert.deepEqual(forEvents, [
      {
        Sid: 'EventBridgeEncryptsRunNotifications',
        Effect: 'Allow',
        Principal: { Service: 'events.amazonaws.com' },
        Action: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        Resource: '*',
      },
    ]);
  });

  test('runNotificationEmails subscribe email addresses; none by default', () => {
    const emails = (t: typeof template) =>
      (Object.values(t.findResources('AWS::SNS::Subscription')) as any[])
        .filter((s) => s.Properties.Protocol === 'email')
        .map((s) => [s.Properties.Endpoint, s.Properties.TopicArn]);
    assert.deepEqual(emails(template), []);
    const t = synth({ runNotificationEmails: ['ops@example.com', 'dev@example.com'] });
    const topic = { Ref: idByPath(t, RUN_TOPIC) };
    assert.deepEqual(emails(t), [
      ['ops@example.com', topic],
      ['dev@example.com', topic],
    ]);
  });
});

describe('run alarms', () => {
  const alarm = (t: typeof template, suffix: string) => (t.toJSON().Resources as any)[idByPath(t, `Alarms/${suffix}/Resource`)].Properties;

  test('ProducerNotRunning: no tick for two schedule periods, missing data breaching', () => {
    const { AlarmDescription, ...props } = alarm(template, 'ProducerNotRunning-tick');
    assert.deepEqual(props, {
      Namespace: 'Fanout',
      MetricName: 'Ticks',
      // The producer counts each tick per schedule too.
      Dimensions: [
        { Name: 'Pipeline', Value: 'Fanout' },
        { Name: 'Schedule', Value: 'tick' },
      ],
      Statistic: 'Sum',
      Period: 1800, // 2 × rate(15 minutes)
      EvaluationPeriods: 1,
      ComparisonOperator: 'LessThanThreshold',
      Threshold: 1,
      TreatMissingData: 'breaching',
    });
    assert.match(AlarmDescription, /Runbook: docs\/runbook\.md#producer-not-running$/);
    const daily = alarm(synth({ scheduleExpression: 'cron(0 6 * * ? *)', schedulePeriodSeconds: 86_400 }), 'ProducerNotRunning-tick');
    assert.equal(daily.Period, 86_400);
    assert.equal(daily.EvaluationPeriods, 2);
    // In a zone with daylight saving a tick may come an hour late (or early): an hour more.
    const hourlyInBerlin = alarm(synth({ scheduleExpression: 'cron(0 * * * ? *)', schedulePeriodSeconds: 3600, scheduleTimeZone: 'Europe/Berlin' }), 'ProducerNotRunning-tick');
    assert.equal(hourlyInBerlin.Period, 2 * 3600 + 3600);
    assert.match(hourlyInBerlin.AlarmDescription, /plus 3600s for Europe\/Berlin's clock changes/);
  });

  test('the tick window stays within CloudWatch\'s evaluation limits', () => {
    assert.deepEqual(tickWindow(60), { periodSeconds: 120, evaluationPeriods: 1 });
    assert.deepEqual(tickWindow(900), { periodSeconds: 1800, evaluationPeriods: 1 });
    assert.deepEqual(tickWindow(43_200), { periodSeconds: 86_400, evaluationPeriods: 1 });
    assert.deepEqual(tickWindow(46_800), { periodSeconds: 86_400, evaluationPeriods: 2 });
    assert.deepEqual(tickWindow(302_400), { periodSeconds: 86_400, evaluationPeriods: 7 });
    for (let p = 60; p <= 302_400; p += 60) {
      // Without and with a daylight-saving hour.
      for (const shift of [0, 3600]) {
        const { periodSeconds, evaluationPeriods } = tickWindow(p, shift);
        const total = periodSeconds * evaluationPeriods;
        assert.equal(periodSeconds % 60, 0, `${p}`);
        assert.ok(total >= Math.min(2 * p + shift, 604_800), `${p} + ${shift}: window ${total} covers two periods and the shift`);
        assert.ok(total <= (periodSeconds < 3600 ? 86_400 : 604_800), `${p} + ${shift}: ${total} within CloudWatch's limit`);
      }
    }
  });

  test('RunOverdue and RunFailed watch the run metrics of this pipeline', () => {
    const common = {
      Namespace: 'Fanout',
      Dimensions: [{ Name: 'Pipeline', Value: 'Fanout' }],
      Period: 300,
      EvaluationPeriods: 1,
      ComparisonOperator: 'GreaterThanOrEqualToThreshold',
      Threshold: 1,
      TreatMissingData: 'notBreaching',
    };
    const { AlarmDescription: overdueDescription, ...overdue } = alarm(template, 'RunOverdue');
    assert.deepEqual(overdue, { ...common, MetricName: 'RunsOverdue', Statistic: 'Maximum' });
    assert.match(overdueDescription, /Runbook: docs\/runbook\.md#run-overdue$/);
    const { AlarmDescription: failedDescription, ...failed } = alarm(template, 'RunFailed');
    assert.deepEqual(failed, { ...common, MetricName: 'RunsFailed', Statistic: 'Sum' });
    assert.match(failedDescription, /Runbook: docs\/runbook\.md#run-failed$/);
  });
});

describe('dashboard', () => {
  const { resource } = only(template, 'AWS::CloudWatch::Dashboard');
  // The body is a Fn::Join of JSON text and references; the text parts are what the tests read.
  const body = JSON.stringify(resource.Properties.DashboardBody);

  test('shows every metric the functions publish for throughput, outcomes, waits, latency and runs', () => {
    const metrics = [
      'OutboundCalls',
      'Succeeded',
      'DeadLettered',
      'Retried',
      'Deferred',
      'Held',
      'DuplicatesSkipped',
      'LockedElsewhere',
      'Requeued',
      'RateLimitWait',
      'CallLatency',
      'RunsSucceeded',
      'RunsFailed',
      'RunDuration',
      'Ticks',
      'RunsSkipped',
      'ApproximateNumberOfMessagesVisible',
      'ApproximateNumberOfMessagesNotVisible',
      'ApproximateAgeOfOldestMessage',
    ];
    for (const m of metrics) assert.ok(body.includes(`\\"${m}\\"`), `dashboard shows ${m}`);
    for (const stat of ['p50', 'p95', 'p99', 'Maximum']) assert.ok(body.includes(`\\"stat\\":\\"${stat}\\"`), stat);
  });

  test('consumer metrics by Function = the consumer, run metrics by Pipeline = the stack', () => {
    assert.ok(body.includes(`\\"Fanout\\",\\"OutboundCalls\\",\\"Function\\",\\"\",{\"Ref\":\"${idByPath(template, CONSUMER)}\"}`));
    assert.ok(body.includes('\\"Fanout\\",\\"RunsFailed\\",\\"Pipeline\\",\\"Fanout\\"'));
  });

  test('calls per second are Sum ÷ the period, against a line at the global budget that runs', () => {
    assert.ok(body.includes('calls / PERIOD(calls)'));
    // No budget anywhere (the fixture config has no rate_limit): no line.
    assert.doesNotMatch(body, /horizontal/);
    const t = synth({ ratePerSecond: 2.5 });
    const other = JSON.stringify(only(t, 'AWS::CloudWatch::Dashboard').resource.Properties.DashboardBody);
    assert.match(other, /\\"horizontal\\":\[\{\\"value\\":2\.5,/);
  });
});

test('outputs: TopicArn, QueueUrl, DlqUrl, TableName, ListsLocation (and the log groups, producer, schedules, run topic, dashboard, pipeline name)', () => {
  const outputs = template.toJSON().Outputs as Record<string, any>;
  assert.deepEqual(Object.keys(outputs).sort(), [
    'ConsumerLogGroup',
    'DashboardName',
    'DlqUrl',
    'ListsLocation',
    'PipelineName',
    'ProducerFunctionName',
    'ProducerLogGroup',
    'QueueUrl',
    'RunNotificationsTopicArn',
    'ScheduleNames',
    'TableName',
    'TopicArn',
  ]);
  assert.deepEqual(outputs.TopicArn.Value, ref(TOPIC));
  assert.deepEqual(outputs.QueueUrl.Value, ref(QUEUE));
  assert.deepEqual(outputs.DlqUrl.Value, ref(DLQ));
  assert.deepEqual(outputs.TableName.Value, ref(TABLE));
  assert.deepEqual(outputs.ListsLocation.Value, LISTS_LOCATION);
  assert.deepEqual(outputs.ConsumerLogGroup.Value, ref('ConsumerLogs/Resource'));
  // `fanout trigger` invokes the producer with the input a schedule sends.
  assert.deepEqual(outputs.ProducerFunctionName.Value, ref(PRODUCER));
  assert.deepEqual(outputs.ScheduleNames.Value, 'tick');
  assert.deepEqual(outputs.PipelineName.Value, 'Fanout');
  assert.deepEqual(outputs.RunNotificationsTopicArn.Value, ref(RUN_TOPIC));
  assert.deepEqual(outputs.DashboardName.Value, ref('Dashboard/Resource/Resource'));
});

test('extraPipelines: further pipelines with their own packages, schedule and prefixed outputs', () => {
  const report = { name: 'Report', ...PACKAGES, scheduleExpression: 'rate(1 day)' };
  const t = synth({ extraPipelines: [report] });
  const outputs = t.toJSON().Outputs as Record<string, { Value: unknown }>;
  assert.equal(outputs.PipelineName.Value, 'Fanout');
  assert.equal(outputs.ReportPipelineName.Value, 'Fanout-Report');
  assert.ok(outputs.ReportTopicArn && outputs.ReportScheduleNames, Object.keys(outputs).join(' '));
  const ticks = (Object.values(t.findResources('AWS::Scheduler::Schedule')) as any[])
    .map((r) => r.Properties)
    .filter((p) => p.Target.Input.includes('scheduled_time'))
    .map((p) => p.ScheduleExpression)
    .sort();
  assert.deepEqual(ticks, ['rate(1 day)', 'rate(15 minutes)']);
  const pipelines = (Object.values(t.findResources('AWS::Lambda::Function')) as any[])
    .map((f) => f.Properties.Environment.Variables.FANOUT_PIPELINE)
    .sort();
  assert.deepEqual(pipelines, ['Fanout', 'Fanout', 'Fanout-Report', 'Fanout-Report']);
  assert.throws(() => synth({ extraPipelines: [{ ...report, name: 'the-report' }] }), /extraPipelines: name must be 1-32 letters and digits/);
  assert.throws(
    () => synth({ extraPipelines: [{ ...report, scheduleExpression: 'cron(0 0 * * ? *)' }] }),
    /fanout stack settings of pipeline Report:\n  - schedulePeriodSeconds is required with a cron/,
  );
  const read = (values: Record<string, unknown>) => (key: string) => values[key];
  assert.deepEqual(extraPipelinesFromContext(read({}), '/x'), undefined);
  assert.deepEqual(
    extraPipelinesFromContext(read({ extraPipelines: '[{"name":"Report","producerAssetDir":"p","consumerAssetDir":"c","scheduleExpression":"rate(1 day)"}]' }), '/x'),
    [{ name: 'Report', producerAssetDir: '/x/p', consumerAssetDir: '/x/c', scheduleExpression: 'rate(1 day)', schedulePeriodSeconds: undefined }],
  );
  assert.throws(() => extraPipelinesFromContext(read({ extraPipelines: '[{"name":"Report"}]' })), /extraPipelines\[0\]\.producerAssetDir is required/);
});
