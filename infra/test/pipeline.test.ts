import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Duration, Size, type Stack, TimeZone } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as events from 'aws-cdk-lib/aws-events';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { ScheduleExpression } from 'aws-cdk-lib/aws-scheduler';
import * as sns from 'aws-cdk-lib/aws-sns';
import { FanoutPipeline, type FanoutPipelineProps } from '../lib';
import { pipelineProps } from '../lib/fanout-stack';
import { PROP_NAMING, toSettings } from '../lib/pipeline-props';
import { resolveSettings } from '../lib/settings';
import { PACKAGES, consumerPackage, emptyStack, newApp } from './helpers';

/** A pipeline on the placeholder packages in a fresh stack. */
function pipeline(props: Partial<FanoutPipelineProps> = {}, stack: Stack = emptyStack(), id = 'Sync'): FanoutPipeline {
  return new FanoutPipeline(stack, id, { ...PACKAGES, ...props });
}

/** Asserts that building a pipeline with these props throws a message matching `pattern`. */
function rejects(props: Partial<FanoutPipelineProps>, pattern: RegExp) {
  assert.throws(() => pipeline(props), pattern);
}

/** Every resource's Properties of one type in a template. */
function all(t: Template, type: string): any[] {
  return Object.values(t.findResources(type)).map((r) => r.Properties);
}

describe('FanoutStack is a thin layer over FanoutPipeline', () => {
  test('settings → props → settings is the identity, every setting included', () => {
    const s = resolveSettings({
      ...PACKAGES,
      architecture: 'x86_64',
      configFile: 'pipeline.yaml',
      scheduleExpression: 'cron(0 6 * * ? *)',
      schedulePeriodSeconds: 86_400,
      producerTimeoutSeconds: 60,
      producerMemoryMb: 512,
      producerTmpMb: 4096,
      publishConcurrency: 4,
      consumerTimeoutSeconds: 45,
      consumerMemoryMb: 1024,
      maxConcurrency: 7,
      ratePerSecond: 2.5,
      recordTtlSeconds: 3600,
      retryBaseMs: 250,
      retryCapMs: 30_000,
      maxAttempts: 4,
      hostStateTtlMs: 500,
      maxInFlight: 40,
      batchSize: 50,
      maxBatchingWindowSeconds: 5,
      visibilityTimeoutSeconds: 600,
      maxReceiveCount: 3,
      filterPolicy: { target_host: ['api.example.com'] },
      consumerEnvironment: { API_TOKEN: 'x' },
      oldestMessageAgeAlarmSeconds: 600,
      runbookUrl: 'https://example.com/runbook.md',
      runNotificationEmails: ['ops@example.com'],
      retainData: false,
      logRetentionDays: 90,
    });
    const props = pipelineProps(s);
    const back = resolveSettings(toSettings(props, props.queueProps?.visibilityTimeout), PROP_NAMING);
    assert.deepEqual(back, s);
  });
});

describe('FanoutPipeline props are checked at synth, each bad prop named', () => {
  test('durations in the unit of the setting they become', () => {
    rejects({ consumerTimeout: Duration.seconds(901) }, /consumerTimeout \(s\) must be an integer from 1 to 900, got 901/);
    rejects({ producerTimeout: Duration.millis(1500) }, /producerTimeout \(s\) must be an integer from 1 to 900, got 1\.5/);
    rejects({ retryBase: Duration.millis(0) }, /retryBase \(ms\) must be an integer from 1 to 43200000, got 0/);
    rejects({ retryBase: Duration.seconds(2), retryCap: Duration.seconds(1) }, /retryCap \(ms\) \(1000\) must be at least retryBase \(ms\) \(2000\)/);
    rejects({ hostStateTtl: Duration.millis(50) }, /hostStateTtl \(ms\) must be an integer from 100 to 60000, got 50/);
    rejects({ maxBatchingWindow: Duration.minutes(6) }, /maxBatchingWindow \(s\) must be an integer from 0 to 300, got 360/);
    rejects({ oldestMessageAgeAlarmThreshold: Duration.seconds(30) }, /oldestMessageAgeAlarmThreshold \(s\) must be an integer from 60/);
  });

  test('numbers, names and lists', () => {
    rejects({ maxConcurrency: 1 }, /Invalid FanoutPipeline props:\n {2}- maxConcurrency must be an integer from 2 to 1000, got 1/);
    rejects({ producerMemorySize: 64 }, /producerMemorySize must be an integer from 128 to 10240, got 64/);
    rejects({ producerEphemeralStorageSize: Size.mebibytes(256) }, /producerEphemeralStorageSize \(MiB\) must be an integer from 512 to 10240, got 256/);
    rejects({ producerEphemeralStorageSize: Size.kibibytes(1_048_577) }, /producerEphemeralStorageSize \(MiB\) must be an integer from 512 to 10240, got 1024\.0009765625/);
    rejects({ ratePerSecond: 0 }, /ratePerSecond must be a number above 0/);
    rejects({ configFile: '../x.json' }, /configFile must be a plain file name/);
    rejects({ logRetention: 31 as never }, /logRetention must be one of/);
    rejects({ runNotificationEmails: ['nope'] }, /runNotificationEmails: "nope" is not an email address/);
    rejects({ consumerEnvironment: { FANOUT_PIPELINE: 'x' } }, /consumerEnvironment may not set FANOUT_PIPELINE/);
    rejects({ filterPolicy: { target_host: new sns.SubscriptionFilter([]) } }, /filterPolicy\.target_host must be a non-empty array/);
  });

  test('schedule: a rate gives the period, a cron needs schedulePeriod', () => {
    rejects({ schedule: events.Schedule.rate(Duration.days(4)) }, /schedule rate\(4 days\) is longer than 3\.5 days/);
    rejects({ schedule: events.Schedule.expression('cron(0 6 * * ? *)') }, /schedulePeriod \(s\) is required with a cron/);
    rejects({ schedulePeriod: Duration.minutes(10) }, /schedulePeriod \(s\) \(600\) contradicts rate\(15 minutes\)/);
    assert.doesNotThrow(() => pipeline({ schedule: events.Schedule.expression('cron(0 6 * * ? *)'), schedulePeriod: Duration.days(1) }));
    rejects({ scheduleTimeZone: TimeZone.of('Mars/Olympus') }, /scheduleTimeZone must be an IANA time zone such as Asia\/Tokyo or UTC, got "Mars\/Olympus"/);
  });

  test('schedules: each checked and named, not mixed with the single schedule props', () => {
    const midnightTokyo = ScheduleExpression.cron({ minute: '0', hour: '0', timeZone: TimeZone.ASIA_TOKYO });
    const problems = (schedules: NonNullable<FanoutPipelineProps['schedules']>) => {
      try {
        pipeline({ schedules });
      } catch (e) {
        return (e as Error).message;
      }
      return '';
    };
    const message = problems([
      { name: 'nightly', expression: midnightTokyo },
      { name: 'nightly', expression: ScheduleExpression.rate(Duration.hours(1)) },
      { name: 'bad name', expression: ScheduleExpression.rate(Duration.days(4)) },
      { name: 'odd', expression: ScheduleExpression.expression('every day') },
      { name: 'mars', expression: ScheduleExpression.expression('rate(1 hour)', TimeZone.of('Mars/Olympus')) },
      { name: 'once', expression: ScheduleExpression.at(new Date('2026-12-24T18:00:00Z')), period: Duration.days(1) },
      { name: 'loose', expression: ScheduleExpression.rate(Duration.hours(1)), period: Duration.minutes(30), flexibleWindow: Duration.seconds(30) },
    ]);
    for (const expected of [
      /schedules\[0\] \(nightly\)\.period is required with cron\(0 0 \* \* \? \*\)/,
      /schedules\[1\] \(nightly\)\.name is used twice/,
      /schedules\[2\] \(bad name\)\.name must be 1-64 letters/,
      /schedules\[2\] \(bad name\)\.expression rate\(4 days\) is longer than 3\.5 days/,
      /schedules\[3\] \(odd\)\.expression must be rate\(\.\.\.\), cron\(\.\.\.\) or at\(\.\.\.\), got "every day"/,
      /schedules\[4\] \(mars\)\.expression: "Mars\/Olympus" is not an IANA time zone/,
      /schedules\[5\] \(once\)\.period: a one-time at\(\.\.\.\) schedule has no period/,
      /schedules\[6\] \(loose\)\.period \(1800 s\) contradicts rate\(1 hour\)/,
      /schedules\[6\] \(loose\)\.flexibleWindow must be 1 to 1440 whole minutes, got 0\.5 min/,
    ]) {
      assert.match(message, expected);
    }
    assert.match(problems([]), /schedules is empty/);
    rejects(
      { schedules: [{ name: 'a', expression: midnightTokyo, period: Duration.days(1) }], schedule: events.Schedule.rate(Duration.hours(1)), scheduleTimeZone: TimeZone.ASIA_TOKYO },
      /schedules: not with schedule, scheduleTimeZone, which describe the one default schedule/,
    );
  });

  test('queue overrides: visibility, the DLQ wiring, FIFO, retention order', () => {
    rejects(
      { consumerTimeout: Duration.seconds(60), queueProps: { visibilityTimeout: Duration.seconds(300) } },
      /queueProps\.visibilityTimeout \(s\) \(300\) must be at least 6 × consumerTimeout \(s\) \+ maxBatchingWindow \(s\) = 360/,
    );
    const stack = emptyStack();
    const other = new FanoutPipeline(stack, 'Other', PACKAGES);
    rejects({ queueProps: { deadLetterQueue: { queue: other.dlq, maxReceiveCount: 3 } } }, /queueProps\.deadLetterQueue: the pipeline wires its own DLQ/);
    rejects({ deadLetterQueueProps: { fifo: true } }, /deadLetterQueueProps\.fifo: the pipeline's topic and queues are standard/);
    rejects(
      { queueProps: { retentionPeriod: Duration.days(14) } },
      /deadLetterQueueProps\.retentionPeriod \(1209600 s\) must exceed queueProps\.retentionPeriod \(1209600 s\)/,
    );
  });

  test('pipeline names: derived from the id, checked, unique per stack', () => {
    const stack = emptyStack('Jobs');
    assert.equal(pipeline({}, stack, 'Sync').pipelineName, 'Jobs-Sync');
    assert.throws(() => pipeline({ pipelineName: 'Jobs-Sync' }, stack, 'Other'), /pipelineName "Jobs-Sync" is already used by Jobs\/Sync: runs would mix/);
    assert.throws(() => pipeline({}, stack, 'nightly report'), /pipelineName must be 1-200 letters.*got "Jobs-nightly report": set pipelineName/);
  });

  test('a ratePerSecond or retry prop against the packaged config names the prop', () => {
    const dir = consumerPackage('{"rate_limit":{"per_second":20},"retry":{"base_ms":100},"targets":[]}');
    rejects({ consumerAssetDir: dir, ratePerSecond: 10 }, /ratePerSecond=10 disagrees with fanout\.json rate_limit\.per_second=20/);
    rejects({ consumerAssetDir: dir, retryBase: Duration.millis(250) }, /retryBase \(ms\)=250 disagrees with fanout\.json retry\.base_ms=100/);
  });
});

describe('parts the caller brings or overrides', () => {
  test('existingTableObj: no table of its own; grants, environment and index on the given one', () => {
    const stack = emptyStack();
    const table = dynamodb.Table.fromTableArn(stack, 'Shared', 'arn:aws:dynamodb:us-east-1:123456789012:table/shared');
    const p = pipeline({ existingTableObj: table }, stack);
    const t = Template.fromStack(stack);
    t.resourceCountIs('AWS::DynamoDB::Table', 0);
    assert.equal(p.table, table);
    const envs = all(t, 'AWS::Lambda::Function').map((f) => f.Environment.Variables.FANOUT_TABLE_NAME);
    assert.deepEqual(envs, ['shared', 'shared']);
    const policies = JSON.stringify(all(t, 'AWS::IAM::Policy'));
    assert.ok(policies.includes('"arn:aws:dynamodb:us-east-1:123456789012:table/shared/index/runs"'), policies);
    // The run ledger's index holds every run of the table: a second pipeline may not share it.
    assert.throws(() => pipeline({ existingTableObj: p.table }, stack, 'Other'), /existingTableObj is the table of Apps\/Sync: one table per pipeline/);
  });

  test('queueProps and deadLetterQueueProps reach the queues; alarmTopic gets every alarm', () => {
    const stack = emptyStack();
    const topic = sns.Topic.fromTopicArn(stack, 'Oncall', 'arn:aws:sns:us-east-1:123456789012:oncall');
    pipeline(
      { queueProps: { retentionPeriod: Duration.days(2) }, deadLetterQueueProps: { retentionPeriod: Duration.days(7) }, alarmTopic: topic },
      stack,
    );
    const t = Template.fromStack(stack);
    const retention = all(t, 'AWS::SQS::Queue').map((q) => q.MessageRetentionPeriod).sort();
    assert.deepEqual(retention, [172_800, 604_800]);
    const alarms = all(t, 'AWS::CloudWatch::Alarm');
    assert.equal(alarms.length, 8);
    for (const alarm of alarms) assert.deepEqual(alarm.AlarmActions, ['arn:aws:sns:us-east-1:123456789012:oncall']);
  });
});

describe('several pipelines', () => {
  test('two in one stack: everything twice, names apart, no outputs', () => {
    const stack = emptyStack('Jobs');
    const sync = pipeline({}, stack, 'Sync');
    // The report: nightly at midnight in Tokyo (daylight saving or not), and a weekly catch-up
    // disabled for now, and a one-time run on a fixed date.
    const report = pipeline(
      {
        schedules: [
          { name: 'nightly', expression: ScheduleExpression.cron({ minute: '0', hour: '0', timeZone: TimeZone.ASIA_TOKYO }), period: Duration.days(1) },
          {
            name: 'catch-up',
            expression: ScheduleExpression.expression('cron(0 6 ? * SUN *)', TimeZone.EUROPE_BERLIN),
            period: Duration.days(3.5),
            flexibleWindow: Duration.minutes(30),
            enabled: false,
          },
          { name: 'year-end', expression: ScheduleExpression.at(new Date('2026-12-31T12:00:00Z'), TimeZone.ASIA_TOKYO) },
        ],
      },
      stack,
      'Report',
    );
    const t = Template.fromStack(stack);
    for (const [type, count] of Object.entries({
      'AWS::Lambda::Function': 4,
      'AWS::SQS::Queue': 4,
      'AWS::SNS::Topic': 4,
      'AWS::DynamoDB::Table': 2,
      'AWS::CloudWatch::Dashboard': 2,
      // 7 each, and one ProducerNotRunning per schedule with a period: 1 + 2.
      'AWS::CloudWatch::Alarm': 17,
      // Each pipeline's run-event rule; the schedules are Scheduler's: 1 + 3 ticks, 2 watchdogs.
      'AWS::Events::Rule': 2,
      'AWS::Scheduler::Schedule': 6,
      'AWS::IAM::Role': 6,
      'AWS::KMS::Key': 2,
    })) {
      t.resourceCountIs(type, count);
    }
    assert.deepEqual([sync.pipelineName, report.pipelineName], ['Jobs-Sync', 'Jobs-Report']);
    const pipelines = all(t, 'AWS::Lambda::Function').map((f) => f.Environment.Variables.FANOUT_PIPELINE).sort();
    assert.deepEqual(pipelines, ['Jobs-Report', 'Jobs-Report', 'Jobs-Sync', 'Jobs-Sync']);
    const dashboards = all(t, 'AWS::CloudWatch::Dashboard').map((d) => JSON.stringify(d.DashboardName)).sort();
    assert.match(dashboards[0], /Jobs-Report-/);
    assert.match(dashboards[1], /Jobs-Sync-/);
    const runRules = all(t, 'AWS::Events::Rule').filter((r) => r.EventPattern).map((r) => r.EventPattern.detail.pipeline[0]).sort();
    assert.deepEqual(runRules, ['Jobs-Report', 'Jobs-Sync']);
    const schedules = all(t, 'AWS::Scheduler::Schedule')
      .filter((s) => s.Target.Input.includes('scheduled_time'))
      .map((s) => [JSON.parse(s.Target.Input).schedule, s.ScheduleExpression, s.ScheduleExpressionTimezone, s.State, s.FlexibleTimeWindow.Mode])
      .sort();
    assert.deepEqual(schedules, [
      ['catch-up', 'cron(0 6 ? * SUN *)', 'Europe/Berlin', 'DISABLED', 'FLEXIBLE'],
      ['nightly', 'cron(0 0 * * ? *)', 'Asia/Tokyo', 'ENABLED', 'OFF'],
      ['tick', 'rate(15 minutes)', 'UTC', 'ENABLED', 'OFF'],
      ['year-end', 'at(2026-12-31T12:00:00)', 'Asia/Tokyo', 'ENABLED', 'OFF'],
    ]);
    const notRunning = all(t, 'AWS::CloudWatch::Alarm')
      .filter((a) => a.MetricName === 'Ticks')
      .map((a) => [a.Dimensions.map((d: { Value: string }) => d.Value).join('/'), a.Period * a.EvaluationPeriods])
      .sort();
    // Two days, and an hour more in zones with clock changes; the one-time schedule has none.
    assert.deepEqual(notRunning, [
      // 3.5 days: two periods are CloudWatch's 7 days already, no room for the hour.
      ['Jobs-Report/catch-up', 7 * 86_400],
      ['Jobs-Report/nightly', 3 * 86_400],
      ['Jobs-Sync/tick', 1800],
    ]);
    assert.deepEqual(report.schedules.map((s) => s.name), ['nightly', 'catch-up', 'year-end']);
    assert.deepEqual(t.toJSON().Outputs ?? {}, {}, 'no outputs unless asked for');
  });

  test('two in one stack, each with its outputs under a prefix of its own', () => {
    const stack = emptyStack('Jobs');
    const sync = pipeline({}, stack, 'Sync');
    const report = pipeline({ pipelineName: 'nightly-report' }, stack, 'Report');
    sync.addOutputs('Sync');
    report.addOutputs('Report');
    assert.throws(() => report.addOutputs('Sync'), /Jobs\/Report: the outputs Sync… are taken in stack Jobs: give addOutputs a prefix of this pipeline's own/);
    assert.throws(() => report.addOutputs('nightly-report'), /addOutputs prefix must be letters and digits/);
    const outputs = Template.fromStack(stack).toJSON().Outputs as Record<string, { Value: unknown }>;
    const keys = Object.keys(outputs).sort();
    assert.equal(keys.length, 24);
    for (const prefix of ['Report', 'Sync']) {
      for (const key of ['TopicArn', 'QueueUrl', 'DlqUrl', 'TableName', 'ScheduleNames', 'PipelineName', 'ProducerFunctionName']) {
        assert.ok(keys.includes(`${prefix}${key}`), `${prefix}${key}`);
      }
    }
    // `fanout --pipeline NAME` finds a pipeline by this output.
    assert.deepEqual([outputs.SyncPipelineName.Value, outputs.ReportPipelineName.Value], ['Jobs-Sync', 'nightly-report']);
  });

  test('one each in two stacks of one app: the stack name keeps them apart', () => {
    const app = newApp();
    const a = pipeline({}, emptyStack('Hourly', app), 'Pipeline');
    const b = pipeline({}, emptyStack('Nightly', app), 'Pipeline');
    assert.deepEqual([a.pipelineName, b.pipelineName], ['Hourly-Pipeline', 'Nightly-Pipeline']);
    const assembly = app.synth();
    assert.deepEqual(assembly.stacks.map((s) => s.stackName).sort(), ['Hourly', 'Nightly']);
  });
});

describe('the list home', () => {
  test('a new versioned, encrypted, private bucket; the producer reads only its prefix', () => {
    const p = pipeline();
    const t = Template.fromStack(p.node.scope as Stack);
    const [bucket] = all(t, 'AWS::S3::Bucket');
    assert.deepEqual(bucket.VersioningConfiguration, { Status: 'Enabled' });
    assert.equal(bucket.BucketEncryption.ServerSideEncryptionConfiguration[0].ServerSideEncryptionByDefault.SSEAlgorithm, 'AES256');
    assert.deepEqual(bucket.PublicAccessBlockConfiguration, {
      BlockPublicAcls: true,
      BlockPublicPolicy: true,
      IgnorePublicAcls: true,
      RestrictPublicBuckets: true,
    });
    const policy = JSON.stringify(all(t, 'AWS::IAM::Policy'));
    assert.ok(policy.includes('"s3:prefix":["lists/*"]'), policy);
    // Nobody else is granted the bucket: no consumer statement mentions S3.
    const consumer = all(t, 'AWS::IAM::Policy').filter((r) => JSON.stringify(r.Roles).includes('Consumer'));
    assert.ok(!JSON.stringify(consumer).includes('s3:'), JSON.stringify(consumer));
  });

  test('an existing bucket and a prefix of yours: no bucket created, the grant follows the prefix', () => {
    const stack = emptyStack();
    const mine = s3.Bucket.fromBucketName(stack, 'Mine', 'team-lists');
    const p = pipeline({ existingListsBucketObj: mine, listsPrefix: 'fanout/sync/' }, stack);
    const t = Template.fromStack(stack);
    assert.equal(all(t, 'AWS::S3::Bucket').length, 0);
    assert.equal(p.listsLocation, 's3://team-lists/fanout/sync/');
    const env = all(t, 'AWS::Lambda::Function').find((f) => f.Environment.Variables.FANOUT_LISTS)?.Environment.Variables;
    assert.equal(env.FANOUT_LISTS, 's3://team-lists/fanout/sync/');
    assert.ok(JSON.stringify(all(t, 'AWS::IAM::Policy')).includes(':s3:::team-lists/fanout/sync/*'));
  });

  test('bad list-home props stop synth naming the prop', () => {
    rejects({ listsPrefix: 'no-slash' }, /listsPrefix must be empty or end in "\/"/);
    rejects({ listsPrefix: '/abs/' }, /listsPrefix must not start with "\/"/);
    rejects({ listsBucketProps: { versioned: false } }, /listsBucketProps.versioned/);
  });

  test('two pipelines in one stack get a list home each', () => {
    const stack = emptyStack();
    const a = pipeline({}, stack, 'Sync');
    const b = pipeline({}, stack, 'Report');
    assert.notEqual(a.listsBucket, b.listsBucket);
    assert.equal(all(Template.fromStack(stack), 'AWS::S3::Bucket').length, 2);
  });
});
