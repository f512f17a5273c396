import { Annotations, CfnOutput, Duration, RemovalPolicy, Size, Stack, Validations } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as scheduler from 'aws-cdk-lib/aws-scheduler';
import * as schedulerTargets from 'aws-cdk-lib/aws-scheduler-targets';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { PipelineAlarms } from './alarms';
import { PipelineDashboard } from './dashboard';
import { lambdaAsset } from './lambda-asset';
import { type FanoutPipelineProps, PROP_NAMING, toSettings } from './pipeline-props';
import { EVENT_SOURCE, RunNotifications } from './run-events';
import { type ResolvedSchedule, resolveSchedules } from './schedules';
import { type SettingSources, packagedSettingSources } from './setting-sources';
import { type FanoutSettings, minVisibilityTimeout, resolveSettings } from './settings';

export type { FanoutPipelineProps } from './pipeline-props';
export type { FanoutScheduleProps } from './schedules';

/** One of the pipeline's tick schedules. */
export interface PipelineSchedule {
  /** Its name in the pipeline (run IDs `schedule/NAME@TIME`, `fanout trigger --schedule`). */
  readonly name: string;
  /** The EventBridge Scheduler schedule. */
  readonly schedule: scheduler.Schedule;
}

/** A pipeline name as the dashboard name and metric dimension accept it. */
const PIPELINE_NAME = /^[A-Za-z0-9_-]{1,200}$/;

/**
 * A fanout pipeline: schedule → producer → SNS topic → SQS queue (+ DLQ) → consumer, with the
 * idempotency table (which also holds the run ledger), least-privilege roles, alarms, the run
 * notifications and a dashboard. Several fit in one stack: every resource name is generated or
 * derived from `pipelineName`. Outputs are added on request ({@link FanoutPipeline.addOutputs}:
 * the ones `fanout --stack` reads), so an app decides which pipelines an operator reaches.
 *
 * Encryption at rest uses AWS-managed keys (SNS `alias/aws/sns`, SSE-SQS, DynamoDB `aws/dynamodb`):
 * their key policies already let principals of the account use them through the service, so no
 * KMS statement is needed in the roles, and SNS can deliver to an SSE-SQS queue without a key
 * policy of ours. The run-notification topic is the exception: EventBridge publishes to it, so it
 * has a key of its own (see run-events.ts).
 */
export class FanoutPipeline extends Construct {
  /** The settings after defaults and validation. */
  readonly settings: FanoutSettings;
  /** `FANOUT_PIPELINE`: how runs, run metrics and run events of this pipeline are told apart. */
  readonly pipelineName: string;
  /** Which value of each setting the config file can also give runs. */
  readonly settingSources: SettingSources;
  readonly topic: sns.Topic;
  readonly queue: sqs.Queue;
  readonly dlq: sqs.Queue;
  readonly table: dynamodb.ITable;
  /** The list home's bucket (created, or `existingListsBucketObj`). */
  readonly listsBucket: s3.IBucket;
  /** The list home, `s3://bucket/prefix/`: `FANOUT_LISTS`, where `lists://` sources are. */
  readonly listsLocation: string;
  readonly producer: lambda.Function;
  readonly consumer: lambda.Function;
  /** The schedules that start runs, in the order given (the first is `fanout trigger`'s default). */
  readonly schedules: PipelineSchedule[];
  /** The schedule that invokes the producer every 5 minutes as the watchdog. */
  readonly watchdogSchedule: scheduler.Schedule;
  readonly alarms: PipelineAlarms;
  readonly runNotifications: RunNotifications;
  readonly dashboard: PipelineDashboard;

  constructor(scope: Construct, id: string, props: FanoutPipelineProps) {
    super(scope, id);
    const s = (this.settings = resolveSettings(toSettings(props, props.queueProps?.visibilityTimeout), PROP_NAMING));
    const name = (this.pipelineName = props.pipelineName ?? `${Stack.of(this).stackName}-${id}`);
    this.checkObjectProps(props);
    const tickSchedules = resolveSchedules(s, props.schedules, PROP_NAMING.subject);

    const dataRemoval = s.retainData ? RemovalPolicy.RETAIN : RemovalPolicy.DESTROY;
    const architecture = props.architecture ?? lambda.Architecture.ARM_64;
    const defaultBusArn = Stack.of(this).formatArn({ service: 'events', resource: 'event-bus', resourceName: 'default' });
    const runEnvironment = { FANOUT_PIPELINE: name, FANOUT_EVENT_BUS: 'default' };
    // Checked before the config is read, so a missing package is reported as such.
    const producerCode = lambdaAsset(s.producerAssetDir, s.configFile, s.architecture);
    const consumerCode = lambdaAsset(s.consumerAssetDir, s.configFile, s.architecture);
    const sources = (this.settingSources = packagedSettingSources(s, PROP_NAMING));
    for (const note of sources.notes) Annotations.of(this).addInfo(note);
    for (const warning of sources.warnings) Annotations.of(this).addWarningV2('fanout:noGlobalBudget', warning);

    this.topic = new sns.Topic(this, 'Topic', {
      masterKey: kms.Alias.fromAliasName(this, 'SnsKey', 'alias/aws/sns'),
      enforceSSL: true,
    });

    this.dlq = new sqs.Queue(this, 'Dlq', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      // A standard queue keeps the original enqueue time when it dead-letters a message, so the
      // DLQ must retain longer than the source queue (4 days) or messages expire on arrival.
      retentionPeriod: Duration.days(14),
      removalPolicy: dataRemoval,
      ...props.deadLetterQueueProps,
    });

    this.queue = new sqs.Queue(this, 'Queue', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(4),
      ...props.queueProps,
      visibilityTimeout: Duration.seconds(s.visibilityTimeoutSeconds ?? minVisibilityTimeout(s)),
      deadLetterQueue: { queue: this.dlq, maxReceiveCount: s.maxReceiveCount },
    });

    // Adds the queue policy statement: sqs:SendMessage for sns.amazonaws.com only when
    // aws:SourceArn is this topic.
    this.topic.addSubscription(
      new subscriptions.SqsSubscription(this.queue, { rawMessageDelivery: true, filterPolicy: props.filterPolicy }),
    );

    this.table = props.existingTableObj ?? this.newTable(dataRemoval);
    const listsPrefix = props.listsPrefix ?? 'lists/';
    this.listsBucket = props.existingListsBucketObj ?? this.newListsBucket(dataRemoval, props.listsBucketProps);
    this.listsLocation = `s3://${this.listsBucket.bucketName}/${listsPrefix}`;

    this.producer = this.rustFunction('Producer', s, producerCode, architecture, {
      timeout: s.producerTimeoutSeconds,
      memoryMb: s.producerMemoryMb,
      tmpMb: s.producerTmpMb,
      environment: {
        FANOUT_CONFIG: s.configFile,
        FANOUT_TOPIC_ARN: this.topic.topicArn,
        FANOUT_TABLE_NAME: this.table.tableName,
        FANOUT_LISTS: this.listsLocation,
        ...runEnvironment,
        ...optional('FANOUT_PUBLISH_CONCURRENCY', s.publishConcurrency),
      },
    });
    // PublishBatch is authorised by sns:Publish.
    this.producer.addToRolePolicy(
      new iam.PolicyStatement({ actions: ['sns:Publish'], resources: [this.topic.topicArn] }),
    );
    this.producer.addToRolePolicy(
      // The run ledger: PutItem creates a run (conditionally, once per tick) and its counters
      // item; UpdateItem finishes it and marks its event sent; GetItem/BatchGetItem read a run
      // and its counters. TransactWriteItems needs no action of its own (each item's action is
      // checked). No DeleteItem or Scan: TTL expires old runs.
      new iam.PolicyStatement({
        actions: ['dynamodb:GetItem', 'dynamodb:BatchGetItem', 'dynamodb:UpdateItem', 'dynamodb:PutItem'],
        resources: [this.table.tableArn],
      }),
    );
    this.producer.addToRolePolicy(
      // The watchdog and the overlap check list recent runs through the sparse index only.
      new iam.PolicyStatement({ actions: ['dynamodb:Query'], resources: [`${this.table.tableArn}/index/runs`] }),
    );
    // The list home, read-only and only under its prefix: GetObject (HeadObject too) and
    // GetObjectVersion (a re-run reads the version its run first read); ListBucket for
    // `lists://prefix/` sources, limited to the prefix.
    this.producer.addToRolePolicy(
      new iam.PolicyStatement({
        actions: ['s3:GetObject', 's3:GetObjectVersion'],
        resources: [this.listsBucket.arnForObjects(`${listsPrefix}*`)],
      }),
    );
    if (this.listsBucket instanceof s3.Bucket) {
      const bucketId = Stack.of(this).getLogicalId(this.listsBucket.node.defaultChild as s3.CfnBucket);
      Validations.of(this.producer.role as iam.Role).acknowledge({
        id: `AwsSolutions-IAM5[Resource::<${bucketId}.Arn>/${listsPrefix}*]`,
        reason: 'lists are objects whose keys operators choose (lists://KEY); the grant is read-only and stops at the list home prefix',
      });
    }
    this.producer.addToRolePolicy(
      new iam.PolicyStatement({
        actions: ['s3:ListBucket'],
        resources: [this.listsBucket.bucketArn],
        conditions: { StringLike: { 's3:prefix': [`${listsPrefix}*`] } },
      }),
    );

    this.consumer = this.rustFunction('Consumer', s, consumerCode, architecture, {
      timeout: s.consumerTimeoutSeconds,
      memoryMb: s.consumerMemoryMb,
      environment: {
        ...s.consumerEnvironment,
        FANOUT_CONFIG: s.configFile,
        FANOUT_TABLE_NAME: this.table.tableName,
        FANOUT_QUEUE_URL: this.queue.queueUrl,
        FANOUT_DLQ_URL: this.dlq.queueUrl,
        // Budget and retry: only what the config does not say itself (setting-sources.ts).
        ...sources.environment,
        ...optional('FANOUT_RECORD_TTL_SECS', s.recordTtlSeconds),
        ...optional('FANOUT_HOST_STATE_TTL_MS', s.hostStateTtlMs),
        ...optional('FANOUT_MAX_IN_FLIGHT', s.maxInFlight),
        // The most instances the mapping runs at once: while an instance cannot read the
        // fleet's leases (a throttled table) it splits each budget by this many.
        FANOUT_MAX_INSTANCES: String(s.maxConcurrency),
        ...runEnvironment,
      },
    });
    this.consumer.addToRolePolicy(
      new iam.PolicyStatement({
        // Receive/Delete/GetQueueAttributes: the event source mapping polls with the function's
        // role; ChangeMessageVisibility: the consumer hides a message for its delay when it
        // cannot send the delayed copy (below).
        actions: ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility', 'sqs:GetQueueAttributes'],
        resources: [this.queue.queueArn],
      }),
    );
    this.consumer.addToRolePolicy(
      // DLQ: permanent failures and exhausted retries go straight there. Job queue: a job that
      // waits (rate permit, paused host or open circuit, another consumer's lock) or retries with
      // backoff goes back as a delayed copy, then the original is acked.
      new iam.PolicyStatement({ actions: ['sqs:SendMessage'], resources: [this.dlq.queueArn, this.queue.queueArn] }),
    );
    this.consumer.addToRolePolicy(
      // Every state transition of the idempotency record, host state (`host#NAME`) and instance
      // leases (`fleet#leases`) is a conditional UpdateItem; GetItem reads an item back when a
      // condition fails; BatchGetItem reads host states and leases together. A job's terminal
      // transition stores its count; a batch of them is added to the run's counters with one
      // UpdateItem, and the consumer whose batch settles a run's last job finishes the run with
      // an UpdateItem. Nothing puts or deletes (TTL does).
      new iam.PolicyStatement({
        actions: ['dynamodb:BatchGetItem', 'dynamodb:GetItem', 'dynamodb:UpdateItem'],
        resources: [this.table.tableArn],
      }),
    );

    // A plain EventSourceMapping rather than SqsEventSource: the latter grants its own
    // (broader) queue permissions, the statement above is the exact set.
    this.consumer.addEventSourceMapping('QueueSource', {
      eventSourceArn: this.queue.queueArn,
      batchSize: s.batchSize,
      maxBatchingWindow: Duration.seconds(s.maxBatchingWindowSeconds),
      maxConcurrency: s.maxConcurrency,
      reportBatchItemFailures: true,
    });

    // Both functions put the completion event of a run (whichever finishes it: the consumer that
    // settles the last job, or the producer's watchdog), on the default bus and as `fanout` only.
    for (const fn of [this.producer, this.consumer]) {
      fn.addToRolePolicy(
        new iam.PolicyStatement({
          actions: ['events:PutEvents'],
          resources: [defaultBusArn],
          conditions: { StringEquals: { 'events:source': EVENT_SOURCE } },
        }),
      );
    }

    // One role for every schedule of the pipeline: Scheduler may invoke the producer, for this
    // account's schedules only (the confused-deputy guard AWS documents).
    const schedulerRole = new iam.Role(this, 'SchedulerRole', {
      assumedBy: new iam.ServicePrincipal('scheduler.amazonaws.com', {
        conditions: { StringEquals: { 'aws:SourceAccount': Stack.of(this).account } },
      }),
      description: 'EventBridge Scheduler invokes the fanout producer',
    });
    const producerId = Stack.of(this).getLogicalId(this.producer.node.defaultChild as lambda.CfnFunction);
    Validations.of(schedulerRole).acknowledge({
      id: `AwsSolutions-IAM5[Resource::<${producerId}.Arn>:*]`,
      reason: "the Scheduler target's own grant (grantInvoke): the producer and its versions, nothing else",
    });
    this.schedules = tickSchedules.map((tick) => ({
      name: tick.name,
      schedule: this.tickSchedule(tick, schedulerRole),
    }));
    this.watchdogSchedule = new scheduler.Schedule(this, 'Watchdog', {
      description: 'Finishes fanout runs whose completion was missed; reports runs past their deadline',
      schedule: scheduler.ScheduleExpression.rate(Duration.minutes(5)),
      target: new schedulerTargets.LambdaInvoke(this.producer, {
        input: scheduler.ScheduleTargetInput.fromObject({ watchdog: true }),
        role: schedulerRole,
      }),
      enabled: s.schedulesEnabled,
    });

    this.runNotifications = new RunNotifications(this, 'Runs', { pipeline: name, emails: s.runNotificationEmails });
    this.dashboard = new PipelineDashboard(this, 'Dashboard', {
      queue: this.queue,
      dlq: this.dlq,
      consumer: this.consumer,
      pipeline: name,
      ratePerSecond: sources.effective.ratePerSecond,
    });

    this.alarms = new PipelineAlarms(this, 'Alarms', {
      queue: this.queue,
      dlq: this.dlq,
      producer: this.producer,
      consumer: this.consumer,
      oldestMessageAgeAlarmSeconds: s.oldestMessageAgeAlarmSeconds,
      pipeline: name,
      schedules: tickSchedules,
      runbookUrl: s.runbookUrl,
      alarmTopic: props.alarmTopic,
    });
  }

  /**
   * Adds the outputs `fanout --stack STACK` reads to the pipeline's stack, each name starting
   * with `prefix`: `TopicArn`, `QueueUrl`, `DlqUrl`, `TableName` (the four `FANOUT_*`),
   * `ListsLocation`, `ProducerLogGroup`, `ConsumerLogGroup`, `ProducerFunctionName`,
   * `ScheduleNames` (`fanout trigger`), `RunNotificationsTopicArn`, `DashboardName` and
   * `PipelineName`. With several pipelines in a stack give each a prefix of its own (letters
   * and digits); `fanout --stack STACK --pipeline NAME` finds a pipeline's outputs by its
   * `PipelineName`, whatever the prefix.
   */
  addOutputs(prefix = ''): void {
    if (!/^[A-Za-z0-9]*$/.test(prefix)) {
      throw new Error(`${this.node.path}: addOutputs prefix must be letters and digits (it starts output names), got ${JSON.stringify(prefix)}`);
    }
    const stack = Stack.of(this);
    const taken = stack.node.tryFindChild(`${prefix}PipelineName`);
    if (taken) {
      throw new Error(
        `${this.node.path}: the outputs ${prefix || '(no prefix)'}… are taken in stack ${stack.stackName}: give addOutputs a prefix of this pipeline's own`,
      );
    }
    const out = (key: string, value: string, description?: string) => new CfnOutput(stack, `${prefix}${key}`, { value, description });
    out('PipelineName', this.pipelineName, 'FANOUT_PIPELINE: fanout --pipeline NAME picks this pipeline in a stack of several');
    out('TopicArn', this.topic.topicArn, 'FANOUT_TOPIC_ARN');
    out('QueueUrl', this.queue.queueUrl, 'FANOUT_QUEUE_URL');
    out('DlqUrl', this.dlq.queueUrl, 'FANOUT_DLQ_URL');
    out('TableName', this.table.tableName, 'FANOUT_TABLE_NAME');
    out('ListsLocation', this.listsLocation, 'FANOUT_LISTS: where lists:// sources are');
    // For `aws logs tail` in the runbook; the function names are generated.
    out('ProducerLogGroup', this.producer.logGroup.logGroupName);
    out('ConsumerLogGroup', this.consumer.logGroup.logGroupName);
    // For `fanout trigger`: invokes the producer with the input one of these schedules sends.
    out('ProducerFunctionName', this.producer.functionName);
    out(
      'ScheduleNames',
      this.schedules.map((schedule) => schedule.name).join(','),
      'the schedules by name, the first the default of fanout trigger --schedule',
    );
    out('RunNotificationsTopicArn', this.runNotifications.topic.topicArn, 'one message per finished run: subscribe to it');
    out('DashboardName', this.dashboard.dashboard.dashboardName);
  }

  /**
   * A schedule that ticks the producer with `{"schedule": NAME, "scheduled_time": TIME}`, TIME
   * being Scheduler's `<aws.scheduler.scheduled-time>`: the producer makes the run ID of both,
   * so a tick delivered twice is one run.
   */
  private tickSchedule(tick: ResolvedSchedule, role: iam.IRole): scheduler.Schedule {
    return new scheduler.Schedule(this, `Schedule-${tick.name}`, {
      description: `Starts a fanout producer run (schedule ${tick.name})`,
      schedule: tick.expression,
      target: new schedulerTargets.LambdaInvoke(this.producer, {
        input: scheduler.ScheduleTargetInput.fromObject({
          schedule: tick.name,
          scheduled_time: scheduler.ContextAttribute.scheduledTime,
        }),
        role,
      }),
      timeWindow: tick.flexibleWindow ? scheduler.TimeWindow.flexible(tick.flexibleWindow) : scheduler.TimeWindow.off(),
      enabled: tick.enabled,
    });
  }

  /** The props that are objects rather than settings, and the pipeline name. */
  private checkObjectProps(props: FanoutPipelineProps): void {
    const problems: string[] = [];
    if (!PIPELINE_NAME.test(this.pipelineName)) {
      problems.push(
        `pipelineName must be 1-200 letters, digits, - or _ (it names the dashboard), got ${JSON.stringify(this.pipelineName)}` +
          (props.pipelineName === undefined ? ': set pipelineName, the construct id does not make one' : ''),
      );
    }
    const twin = this.otherPipelines().find((p) => p.pipelineName === this.pipelineName);
    if (twin) {
      problems.push(`pipelineName ${JSON.stringify(this.pipelineName)} is already used by ${twin.node.path}: runs would mix`);
    }
    const sharer = props.existingTableObj && this.otherPipelines().find((p) => p.table === props.existingTableObj);
    if (sharer) {
      problems.push(`existingTableObj is the table of ${sharer.node.path}: one table per pipeline, or their run ledgers mix`);
    }
    if (props.schedules !== undefined) {
      const single = (['schedule', 'schedulePeriod', 'scheduleTimeZone'] as const).filter((p) => props[p] !== undefined);
      if (single.length > 0) {
        problems.push(`schedules: not with ${single.join(', ')}, which describe the one default schedule (give each schedule its own)`);
      }
    }
    if (props.queueProps?.deadLetterQueue) {
      problems.push('queueProps.deadLetterQueue: the pipeline wires its own DLQ (deadLetterQueueProps, maxReceiveCount)');
    }
    for (const [prop, queueProps] of [['queueProps', props.queueProps], ['deadLetterQueueProps', props.deadLetterQueueProps]] as const) {
      if (queueProps?.fifo) problems.push(`${prop}.fifo: the pipeline's topic and queues are standard`);
    }
    const queueRetention = (props.queueProps?.retentionPeriod ?? Duration.days(4)).toSeconds();
    const dlqRetention = (props.deadLetterQueueProps?.retentionPeriod ?? Duration.days(14)).toSeconds();
    if (dlqRetention <= queueRetention) {
      problems.push(
        `deadLetterQueueProps.retentionPeriod (${dlqRetention} s) must exceed queueProps.retentionPeriod (${queueRetention} s): ` +
          'SQS keeps the original enqueue time, so messages would expire as they reach the DLQ',
      );
    }
    if (props.listsPrefix !== undefined && props.listsPrefix !== '' && !props.listsPrefix.endsWith('/')) {
      problems.push(`listsPrefix must be empty or end in "/", got ${JSON.stringify(props.listsPrefix)}`);
    }
    if (props.listsPrefix?.startsWith('/')) {
      problems.push(`listsPrefix must not start with "/", got ${JSON.stringify(props.listsPrefix)}`);
    }
    if (props.existingListsBucketObj && props.listsBucketProps) {
      problems.push('listsBucketProps applies to the bucket the pipeline creates, not to existingListsBucketObj');
    }
    if (props.listsBucketProps?.versioned === false) {
      problems.push('listsBucketProps.versioned: false: runs record the version of each list they read; keep the bucket versioned');
    }
    if (problems.length > 0) {
      throw new Error(`Invalid ${PROP_NAMING.subject} (${this.node.path}):\n  - ${problems.join('\n  - ')}`);
    }
  }

  /** The pipelines built before this one in the same stack. */
  private otherPipelines(): FanoutPipeline[] {
    return Stack.of(this)
      .node.findAll()
      .filter((c): c is FanoutPipeline => c !== this && c instanceof FanoutPipeline);
  }

  /**
   * The list home's bucket: versioned (runs record the version they read), S3-managed
   * encryption, TLS only, no public access. Its access log would be one more bucket per
   * pipeline for a bucket only the producer reads and operators write: acknowledged, not built.
   */
  private newListsBucket(removalPolicy: RemovalPolicy, overrides?: s3.BucketProps): s3.Bucket {
    const bucket = new s3.Bucket(this, 'ListsBucket', {
      versioned: true,
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      removalPolicy,
      ...overrides,
    });
    Validations.of(bucket).acknowledge({
      id: 'AwsSolutions-S1',
      reason:
        'the list home is read by the producer role only and written by operators; CloudTrail data events cover who changed a list, a server access log bucket per pipeline adds cost, not control',
    });
    return bucket;
  }

  /** The idempotency table, which also holds the run ledger. */
  private newTable(removalPolicy: RemovalPolicy): dynamodb.Table {
    const table = new dynamodb.Table(this, 'IdempotencyTable', {
      partitionKey: { name: 'message_id', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      timeToLiveAttribute: 'expiration',
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      removalPolicy,
    });
    // The run ledger: `fanout runs list` and the watchdog find recent runs newest first. Sparse:
    // only run items carry run_index.
    table.addGlobalSecondaryIndex({
      indexName: 'runs',
      partitionKey: { name: 'run_index', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'started_at', type: dynamodb.AttributeType.NUMBER },
      projectionType: dynamodb.ProjectionType.ALL,
    });
    return table;
  }

  /**
   * A `provided.al2023` function with its own role and log group. The role gets no managed
   * policy (AWSLambdaBasicExecutionRole allows logs on every resource); it may write to its
   * own log group only.
   */
  private rustFunction(
    id: string,
    s: FanoutSettings,
    code: lambda.Code,
    architecture: lambda.Architecture,
    opts: { timeout: number; memoryMb: number; tmpMb?: number; environment: Record<string, string> },
  ): lambda.Function {
    const logGroup = new logs.LogGroup(this, `${id}Logs`, {
      retention: s.logRetentionDays as logs.RetentionDays,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const role = new iam.Role(this, `${id}Role`, {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
    });
    role.addToPolicy(
      new iam.PolicyStatement({
        actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        resources: [logGroup.logGroupArn],
      }),
    );
    return new lambda.Function(this, id, {
      runtime: lambda.Runtime.PROVIDED_AL2023,
      handler: 'bootstrap',
      architecture,
      code,
      timeout: Duration.seconds(opts.timeout),
      memorySize: opts.memoryMb,
      ephemeralStorageSize: opts.tmpMb === undefined ? undefined : Size.mebibytes(opts.tmpMb),
      role,
      logGroup,
      // The functions log JSON lines; this makes Lambda's own START/REPORT lines JSON as well,
      // so one Logs Insights query reads both.
      loggingFormat: lambda.LoggingFormat.JSON,
      environment: opts.environment,
    });
  }
}

/** `{ name: "value" }` when the value is set, `{}` otherwise (leaves the Rust default in charge). */
function optional(name: string, value: number | undefined): Record<string, string> {
  return value === undefined ? {} : { [name]: String(value) };
}
