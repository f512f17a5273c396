import { Duration, Size, Stack, type StackProps, TimeZone } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as logs from 'aws-cdk-lib/aws-logs';
import * as sns from 'aws-cdk-lib/aws-sns';
import type { Construct } from 'constructs';
import { FanoutPipeline, type FanoutPipelineProps } from './fanout-pipeline';
import { checkPackage } from './lambda-asset';
import { packagedSettingSources } from './setting-sources';
import { CONTEXT_NAMING, type FanoutSettings, resolveSettings } from './settings';

/** Stack props: the usual CDK ones plus any subset of {@link FanoutSettings}. */
export interface FanoutStackProps extends StackProps, Partial<FanoutSettings> {}

/**
 * The app's stack: one {@link FanoutPipeline} configured from flat settings (the `-c` context
 * keys of docs/deploy.md), plus the outputs `fanout --stack` reads. The pipeline's id is
 * `Default`, which CDK leaves out of logical IDs, so its resources keep the logical IDs they had
 * when the stack held them itself: an existing deployment updates in place.
 */
export class FanoutStack extends Stack {
  /** The settings after defaults and validation. */
  readonly settings: FanoutSettings;
  readonly pipeline: FanoutPipeline;

  constructor(scope: Construct, id: string, props: FanoutStackProps = {}) {
    super(scope, id, props);
    // Checked here first so that problems name the context keys; the construct checks the same
    // values again under its props' names.
    const s = (this.settings = resolveSettings(props));
    checkPackage(s.producerAssetDir, s.configFile, s.architecture);
    checkPackage(s.consumerAssetDir, s.configFile, s.architecture);
    packagedSettingSources(s, CONTEXT_NAMING);

    this.pipeline = new FanoutPipeline(this, 'Default', {
      ...pipelineProps(s),
      // Run events and metrics carry the stack name, as they did before the construct existed.
      pipelineName: this.stackName,
      alarmTopic: s.alarmTopicArn ? sns.Topic.fromTopicArn(this, 'AlarmTopic', s.alarmTopicArn) : undefined,
    });
    const p = this.pipeline;

    // The outputs `fanout --stack` reads, unprefixed: the operator exports them as FANOUT_*.
    p.addOutputs();
  }
}

/** The construct's props for validated settings (all but the pipeline name and the alarm topic). */
export function pipelineProps(s: FanoutSettings): FanoutPipelineProps {
  const seconds = (n?: number) => (n === undefined ? undefined : Duration.seconds(n));
  const millis = (n?: number) => (n === undefined ? undefined : Duration.millis(n));
  return {
    producerAssetDir: s.producerAssetDir,
    consumerAssetDir: s.consumerAssetDir,
    configFile: s.configFile,
    architecture: s.architecture === 'arm64' ? lambda.Architecture.ARM_64 : lambda.Architecture.X86_64,
    schedule: events.Schedule.expression(s.scheduleExpression),
    schedulePeriod: seconds(s.schedulePeriodSeconds),
    scheduleTimeZone: TimeZone.of(s.scheduleTimeZone),
    schedulesEnabled: s.schedulesEnabled,
    producerTimeout: seconds(s.producerTimeoutSeconds),
    producerMemorySize: s.producerMemoryMb,
    producerEphemeralStorageSize: Size.mebibytes(s.producerTmpMb),
    publishConcurrency: s.publishConcurrency,
    consumerTimeout: seconds(s.consumerTimeoutSeconds),
    consumerMemorySize: s.consumerMemoryMb,
    maxConcurrency: s.maxConcurrency,
    ratePerSecond: s.ratePerSecond,
    batchSize: s.batchSize,
    maxBatchingWindow: seconds(s.maxBatchingWindowSeconds),
    maxReceiveCount: s.maxReceiveCount,
    recordTtl: seconds(s.recordTtlSeconds),
    retryBase: millis(s.retryBaseMs),
    retryCap: millis(s.retryCapMs),
    maxAttempts: s.maxAttempts,
    hostStateTtl: millis(s.hostStateTtlMs),
    filterPolicy: s.filterPolicy
      ? Object.fromEntries(Object.entries(s.filterPolicy).map(([attr, conditions]) => [attr, new sns.SubscriptionFilter(conditions)]))
      : undefined,
    consumerEnvironment: s.consumerEnvironment,
    queueProps: s.visibilityTimeoutSeconds === undefined ? undefined : { visibilityTimeout: seconds(s.visibilityTimeoutSeconds) },
    oldestMessageAgeAlarmThreshold: seconds(s.oldestMessageAgeAlarmSeconds),
    runbookUrl: s.runbookUrl,
    runNotificationEmails: s.runNotificationEmails,
    retainData: s.retainData,
    logRetention: s.logRetentionDays as logs.RetentionDays,
  };
}
