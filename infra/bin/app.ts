#!/usr/bin/env node
/**
 * CDK entry point. Settings come from context (`cdk deploy -c maxConcurrency=10 ...`, or the
 * "context" block of cdk.json); see docs/deploy.md for the list. The stack is environment-agnostic
 * (no account/region baked in), so `cdk synth` needs no AWS credentials; `cdk deploy` targets the
 * account and region of the current AWS profile.
 */
import { App } from 'aws-cdk-lib';
import { extraPipelinesFromContext, settingsFromContext } from '../lib/context';
import { FanoutStack } from '../lib/fanout-stack';

const app = new App();
const read = (key: string) => app.node.tryGetContext(key);
new FanoutStack(app, String(read('stackName') ?? 'Fanout'), {
  description: 'fanout: scheduled producer, SNS/SQS fan-out, rate-limited consumer',
  ...settingsFromContext(read),
  extraPipelines: extraPipelinesFromContext(read),
});
