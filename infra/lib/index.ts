/**
 * The package's entry point: the {@link FanoutPipeline} construct for CDK apps of their own, and
 * {@link FanoutStack}, the stack this repository's app (bin/app.ts) deploys.
 */
export { FanoutPipeline, type FanoutPipelineProps, type FanoutScheduleProps, type PipelineSchedule } from './fanout-pipeline';
export { FanoutStack, type FanoutStackProps } from './fanout-stack';
export { PipelineAlarms } from './alarms';
export { PipelineDashboard } from './dashboard';
export { RunNotifications } from './run-events';
export type { SettingSources } from './setting-sources';
