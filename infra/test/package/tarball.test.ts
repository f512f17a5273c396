import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';

/**
 * The package as a team with a CDK app of its own gets it: `npm pack` gives a tarball of compiled
 * JavaScript and type declarations; an app in a temporary directory outside the repository
 * installs it offline (the tarball itself; its peers aws-cdk-lib and constructs linked from this
 * repository's node_modules, as an app has its own), declares two pipelines in TypeScript
 * against the declarations, compiles and synthesizes. Slow (it builds the package): run by
 * scripts/test-infra, not `npm test`.
 */
const INFRA = path.resolve(__dirname, '..', '..');
const FIXTURES = path.join(INFRA, 'test', 'fixtures', 'lambda');

/** The whole app a user writes: two pipelines in one stack, on Tokyo's clock. */
const APP = `import { App, Duration, Stack, TimeZone } from 'aws-cdk-lib';
import { ScheduleExpression } from 'aws-cdk-lib/aws-scheduler';
import { FanoutPipeline } from 'fanout-infra';

const app = new App();
const stack = new Stack(app, 'Jobs');
const tokyo = (cron: string) => ScheduleExpression.expression(cron, TimeZone.ASIA_TOKYO);
new FanoutPipeline(stack, 'HourlySync', {
  producerAssetDir: 'build/sync/fanout-producer',
  consumerAssetDir: 'build/sync/fanout-consumer',
  schedules: [{ name: 'office-hours', expression: tokyo('cron(0 9-18 ? * MON-FRI *)'), period: Duration.days(3) }],
});
new FanoutPipeline(stack, 'NightlyReport', {
  producerAssetDir: 'build/report/fanout-producer',
  consumerAssetDir: 'build/report/fanout-consumer',
  schedules: [{ name: 'nightly', expression: tokyo('cron(0 0 * * ? *)'), period: Duration.days(1) }],
  consumerTimeout: Duration.seconds(60),
});
app.synth();
`;

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): string {
  return execFileSync(cmd, args, { cwd, env: { ...process.env, ...env }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

test('npm pack → install offline in an app outside the repo → two pipelines synthesize', () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-pack-'));
  try {
    // prepack builds dist/ first, so the tarball never carries stale JavaScript.
    const [packed] = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', work], INFRA)) as {
      filename: string;
      files: { path: string }[];
    }[];
    const files = packed.files.map((f) => f.path).sort();
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/fanout-pipeline.d.ts', 'dist/pipeline-props.d.ts', 'package.json']) {
      assert.ok(files.includes(f), `${f} missing from the tarball: ${files.join(' ')}`);
    }
    const stray = files.filter((f) => !/^dist\/.*\.(js|d\.ts)$/.test(f) && !['package.json', 'README.md'].includes(f));
    assert.deepEqual(stray, [], 'only compiled output, declarations, package.json and README');

    const app = path.join(work, 'app');
    assert.ok(!path.relative(path.resolve(INFRA, '..'), app).match(/^[^.]/), 'the app lives outside the repository');
    fs.mkdirSync(app);
    const tarball = path.join(work, packed.filename);
    fs.writeFileSync(
      path.join(app, 'package.json'),
      JSON.stringify({ name: 'my-cdk-app', private: true, dependencies: { 'fanout-infra': `file:${tarball}` } }),
    );
    // --legacy-peer-deps: npm would otherwise fetch the peers; the app brings its own below.
    run('npm', ['install', '--offline', '--legacy-peer-deps', '--ignore-scripts', '--no-audit', '--no-fund', '--no-package-lock'], app);
    for (const peer of ['aws-cdk-lib', 'constructs']) {
      fs.symlinkSync(path.join(INFRA, 'node_modules', peer), path.join(app, 'node_modules', peer), 'dir');
    }
    assert.ok(fs.existsSync(path.join(app, 'node_modules', 'fanout-infra', 'dist', 'index.js')), 'installed from the tarball');

    for (const job of ['sync', 'report']) {
      for (const fn of ['fanout-producer', 'fanout-consumer']) {
        fs.cpSync(path.join(FIXTURES, fn), path.join(app, 'build', job, fn), { recursive: true });
      }
    }
    fs.writeFileSync(path.join(app, 'build', 'report', 'fanout-consumer', 'fanout.json'), '{"rate_limit":{"per_second":5},"targets":[]}');
    fs.writeFileSync(path.join(app, 'app.ts'), APP);
    fs.writeFileSync(
      path.join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { target: 'ES2022', module: 'node16', moduleResolution: 'node16', strict: true, types: [], skipLibCheck: true, outDir: 'out' },
        files: ['app.ts'],
      }),
    );
    // Type-checks the app against the package's declarations, then runs it as `cdk synth` would.
    run(process.execPath, [path.join(INFRA, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', '.'], app);
    run(process.execPath, ['out/app.js'], app, { CDK_OUTDIR: path.join(app, 'cdk.out') });

    const template = JSON.parse(fs.readFileSync(path.join(app, 'cdk.out', 'Jobs.template.json'), 'utf8'));
    const resources = Object.values(template.Resources) as { Type: string; Properties: any }[];
    const functions = resources.filter((r) => r.Type === 'AWS::Lambda::Function');
    assert.deepEqual(functions.map((f) => f.Properties.Environment.Variables.FANOUT_PIPELINE).sort(), [
      'Jobs-HourlySync',
      'Jobs-HourlySync',
      'Jobs-NightlyReport',
      'Jobs-NightlyReport',
    ]);
    const schedules = resources
      .filter((r) => r.Type === 'AWS::Scheduler::Schedule')
      .map((r) => `${r.Properties.ScheduleExpression} ${r.Properties.ScheduleExpressionTimezone}`);
    // Each pipeline: its schedule, in Tokyo, and its watchdog.
    assert.deepEqual(schedules.sort(), [
      'cron(0 0 * * ? *) Asia/Tokyo',
      'cron(0 9-18 ? * MON-FRI *) Asia/Tokyo',
      'rate(5 minutes) Etc/UTC',
      'rate(5 minutes) Etc/UTC',
    ]);
    const alarms = resources.filter((r) => r.Type === 'AWS::CloudWatch::Alarm' && r.Properties.MetricName === 'Ticks');
    assert.deepEqual(alarms.map((a) => a.Properties.Dimensions[1].Value).sort(), ['nightly', 'office-hours']);
    // The report's packaged config gives its budget (its dashboard draws it, no variable is set);
    // the sync config has none.
    const budgets = functions.map((f) => f.Properties.Environment.Variables.FANOUT_RATE_PER_SECOND);
    assert.deepEqual(budgets, [undefined, undefined, undefined, undefined]);
    const dashboards = resources.filter((r) => r.Type === 'AWS::CloudWatch::Dashboard').map((r) => JSON.stringify(r.Properties));
    assert.equal(dashboards.length, 2);
    const report = dashboards.find((d) => d.includes('Jobs-NightlyReport-'));
    const sync = dashboards.find((d) => d.includes('Jobs-HourlySync-'));
    assert.match(report ?? '', /global budget 5\/s/);
    assert.doesNotMatch(sync ?? 'missing', /global budget/);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
});
