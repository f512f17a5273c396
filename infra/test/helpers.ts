import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { App, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { FanoutStack, type FanoutStackProps } from '../lib/fanout-stack';

/** Placeholder packages (a shell-script `bootstrap` + config) so no test needs a Rust build. */
export const FIXTURES = path.join(__dirname, 'fixtures', 'lambda');

/** The feature flags of cdk.json, so unit tests render what `cdk synth` renders. */
const cdkJsonContext = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'cdk.json'), 'utf8')).context;

/** The placeholder packages as FanoutPipeline props. */
export const PACKAGES = {
  producerAssetDir: path.join(FIXTURES, 'fanout-producer'),
  consumerAssetDir: path.join(FIXTURES, 'fanout-consumer'),
};

/** An app as `cdk synth` makes it (cdk.json's feature flags, path metadata). */
export function newApp(): App {
  // No analytics: its metadata blob changes with every CDK release and would churn the snapshot.
  // Path metadata (the CLI turns it on) lets tests find resources by construct path.
  const context = { ...cdkJsonContext, 'aws:cdk:enable-path-metadata': true };
  return new App({ context, analyticsReporting: false });
}

/** An empty stack in a new app, for FanoutPipelines of a test's own. */
export function emptyStack(id = 'Apps', app = newApp()): Stack {
  return new Stack(app, id);
}

/** Builds the stack on the placeholder packages. */
export function buildStack(props: FanoutStackProps = {}): FanoutStack {
  const app = newApp();
  return new FanoutStack(app, 'Fanout', {
    producerAssetDir: path.join(FIXTURES, 'fanout-producer'),
    consumerAssetDir: path.join(FIXTURES, 'fanout-consumer'),
    ...props,
  });
}

/** Builds the stack and returns its template. */
export function synth(props: FanoutStackProps = {}): Template {
  return Template.fromStack(buildStack(props));
}

/** The only resource of a type; fails if there is not exactly one. */
export function only(template: Template, type: string): { id: string; resource: any } {
  const found = Object.entries(template.findResources(type));
  if (found.length !== 1) throw new Error(`expected one ${type}, found ${found.length}`);
  return { id: found[0][0], resource: found[0][1] };
}

/** The logical id of the resource whose construct path ends with `suffix`. */
export function idByPath(template: Template, suffix: string): string {
  const all = template.toJSON().Resources as Record<string, any>;
  const ids = Object.keys(all).filter((id) => String(all[id].Metadata?.['aws:cdk:path'] ?? '').endsWith(suffix));
  if (ids.length !== 1) throw new Error(`expected one resource at */${suffix}, found ${ids.length}`);
  return ids[0];
}

/**
 * A consumer package (the placeholder bootstrap) whose pipeline config file `name` holds `text`:
 * the stack reads the config from there at synth time.
 */
export function consumerPackage(text: string, name = 'fanout.json'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-consumer-'));
  fs.copyFileSync(path.join(FIXTURES, 'fanout-consumer', 'bootstrap'), path.join(dir, 'bootstrap'));
  fs.writeFileSync(path.join(dir, name), text);
  return dir;
}
