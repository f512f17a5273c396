import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import { Construct } from 'constructs';

/** `source` of the events the producer and consumer put (shared::runs::EVENT_SOURCE). */
export const EVENT_SOURCE = 'fanout';
/** `detail-type` of a run's completion event, one of the two per finished run. */
export const RUN_DETAIL_TYPES = ['Run Succeeded', 'Run Failed'] as const;

export interface RunNotificationsProps {
  /** The `detail.pipeline` of this pipeline's events: the pipeline's name (`FANOUT_PIPELINE`). */
  readonly pipeline: string;
  /** Email addresses to subscribe; each must confirm. */
  readonly emails?: string[];
}

/**
 * Run notifications: the rule `RunEvents` on the default bus picks this pipeline's completion
 * events (one per finished run) and sends the whole event to the topic `RunNotifications`, which
 * anyone may subscribe to (email here; chat, queues or functions by hand).
 *
 * The topic is encrypted with a key of its own: EventBridge cannot publish to a topic under the
 * AWS-managed SNS key, whose policy cannot be changed to let events.amazonaws.com use it.
 */
export class RunNotifications extends Construct {
  readonly key: kms.Key;
  readonly topic: sns.Topic;
  readonly rule: events.Rule;

  constructor(scope: Construct, id: string, props: RunNotificationsProps) {
    super(scope, id);

    this.key = new kms.Key(this, 'Key', {
      description: `fanout ${props.pipeline}: encrypts the run-notification topic`,
      enableKeyRotation: true,
      // The key protects messages in transit through SNS only, nothing at rest that outlives the
      // stack: deleting it with the stack loses nothing (after KMS's shortest waiting period).
      removalPolicy: RemovalPolicy.DESTROY,
      pendingWindow: Duration.days(7),
    });
    // SNS asks KMS for data keys on behalf of the publisher, EventBridge. No aws:SourceArn or
    // aws:SourceAccount condition: SNS documents them as unsupported in a key policy for
    // EventBridge-to-encrypted-topic delivery (the publish would fail). What may publish is
    // limited by the topic policy below; the key serves this topic only.
    this.key.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'EventBridgeEncryptsRunNotifications',
        principals: [new iam.ServicePrincipal('events.amazonaws.com')],
        actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        resources: ['*'],
      }),
    );

    this.topic = new sns.Topic(this, 'RunNotifications', {
      displayName: `fanout ${props.pipeline} runs`,
      masterKey: this.key,
      enforceSSL: true,
    });

    this.rule = new events.Rule(this, 'RunEvents', {
      description: `Sends the completion event of every fanout ${props.pipeline} run to its notification topic`,
      eventPattern: {
        source: [EVENT_SOURCE],
        detailType: [...RUN_DETAIL_TYPES],
        detail: { pipeline: [props.pipeline] },
      },
    });
    // targets.SnsTopic would grant events.amazonaws.com sns:Publish from any rule of any account;
    // this target carries no grant, the statement after it allows this rule only.
    this.rule.addTarget({ bind: () => ({ arn: this.topic.topicArn }) });
    this.topic.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'RunEventsRulePublishes',
        principals: [new iam.ServicePrincipal('events.amazonaws.com')],
        actions: ['sns:Publish'],
        resources: [this.topic.topicArn],
        conditions: { ArnEquals: { 'aws:SourceArn': this.rule.ruleArn } },
      }),
    );

    for (const email of props.emails ?? []) {
      this.topic.addSubscription(new subscriptions.EmailSubscription(email));
    }
  }
}
