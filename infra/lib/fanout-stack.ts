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

/**
 * A further pipeline of the stack, beside the one the settings describe, with the same settings
 * but packages and a schedule of its own (`scripts/local-cloud up --pipeline NAME=CONFIG@EXPR`
 * passes these as the context key `extraPipelines`).
 */
export interface ExtraPipeline {
  /** Its id in the stack and the prefix of its outputs (letters and digits); its pipelineName is `<stack>-<name>`. */
  readonly name: string;
  /** Its producer's package (bootstrap and config). */
  readonly producerAssetDir: string;
  /** Its consumer's package. */
  readonly consumerAssetDir: string;
  /** Its schedule, `rate(...)` or `cron(...)` (with `schedulePeriodSeconds` for cron). @default the stack's */
  readonly scheduleExpression?: string;
  /** @default the stack's, with the stack's schedule */
  readonly schedulePeriodSeconds?: number;
}

/** Stack props: the usual CDK ones plus any subset of {@link FanoutSettings}, and further pipelines. */
export interface FanoutStackProps extends StackProps, Partial<FanoutSettings> {
  /** Pipelines beside the one the settings describe, each with its outputs under its name. */
  readonly extraPipelines?: ExtraPipeline[];
}

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
  /** Where every pipeline's alarms notify (`alarmTopicArn`). */
  private readonly alarmTopic?: sns.ITopic;
  /** The {@link FanoutStackProps.extraPipelines}, in order. */
  readonly extraPipelines: FanoutPipeline[];

  constructor(scope: Construct, id: string, props: FanoutStackProps = {}) {
    super(scope, id, props);
    // Checked here first so that problems name the context keys; the construct checks the same
    // values again under its props' names.
    const s = (this.settings = resolveSettings(props));
    this.alarmTopic = s.alarmTopicArn ? sns.Topic.fromTopicArn(this, 'AlarmTopic', s.alarmTopicArn) : undefined;
    checkPackage(s.producerAssetDir, s.configFile, s.architecture);
    checkPackage(s.consumerAssetDir, s.configFile, s.architecture);
    packagedSettingSources(s, CONTEXT_NAMING);

    this.pipeline = new FanoutPipeline(this, 'Default', {
      ...pipelineProps(s),
      // Run events and metrics carry the stack name, as they did before the construct existed.
      pipelineName: this.stackName,
      alarmTopic: this.alarmTopic,
    });
    const p = this.pipeline;

    // The outputs `fanout --stack` reads, unprefixed: the operator exports them as FANOUT_*.
    p.addOutputs();
    this.extraPipelines = (props.extraPipelines ?? []).map((extra) => this.extraPipeline(props, s, extra));
  }

  /** A further pipeline: the stack's settings with its own packages and schedule, its outputs prefixed by its name. */
  private extraPipeline(props: FanoutStackProps, s: FanoutSettings, extra: ExtraPipeline): FanoutPipeline {
    if (!/^[A-Za-z0-9]{1,32}$/.test(extra.name) || extra.name === 'Default') {
      throw new Error(`extraPipelines: name must be 1-32 letters and digits (and not Default), got ${JSON.stringify(extra.name)}`);
    }
    const naming = { ...CONTEXT_NAMING, subject: `fanout stack settings of pipeline ${extra.name}` };
    const own = resolveSettings(
      {
        ...props,
        producerAssetDir: extra.producerAssetDir,
        consumerAssetDir: extra.consumerAssetDir,
        scheduleExpression: extra.scheduleExpression ?? s.scheduleExpression,
        schedulePeriodSeconds: extra.scheduleExpression === undefined ? s.schedulePeriodSeconds : extra.schedulePeriodSeconds,
      },
      naming,
    );
    checkPackage(own.producerAssetDir, own.configFile, own.architecture);
    checkPackage(own.consumerAssetDir, own.configFile, own.architecture);
    packagedSettingSources(own, naming);
    const pipeline = new FanoutPipeline(this, extra.name, {
      ...pipelineProps(own),
      pipelineName: `${this.stackName}-${extra.name}`,
      alarmTopic: this.alarmTopic,
    });
    pipeline.addOutputs(extra.name);
    return pipeline;
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
    maxInFlight: s.maxInFlight,
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
