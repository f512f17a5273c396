import * as path from 'node:path';
import { type ConfigValues, type PipelineConfigFile, SHARED_SETTINGS, type SharedSetting, readPipelineConfig } from './pipeline-config';
import type { FanoutSettings, Naming } from './settings';

/** Which value of each shared setting the consumer will run with, and why. */
export interface SettingSources {
  /** Consumer variables to set: only for stack values the config does not give itself. */
  readonly environment: Record<string, string>;
  /** The values that will run, where known here (absent: the consumer's own default, or no limit). */
  readonly effective: ConfigValues;
  /** One line per shared setting given in either place, saying which value runs (a CDK info annotation). */
  readonly notes: string[];
  /** Things the user probably did not mean (CDK warning annotations). */
  readonly warnings: string[];
  /** Disagreements: synth must stop. */
  readonly problems: string[];
}

/**
 * One source of truth per setting. A setting the stack and the pipeline config can both give
 * (SHARED_SETTINGS) runs with the config's value unless only the stack gives it:
 *
 * - config only: the config's value runs and the stack sets no variable;
 * - stack only: the stack supplies it through the consumer variable (said in a note);
 * - both, equal: the config's value runs, no variable (nothing can drift apart later);
 * - both, different: a problem naming both, since one of them would be silently ignored.
 */
export function settingSources(
  stack: ConfigValues,
  config: PipelineConfigFile,
  label: Naming['label'] = (name) => name,
): SettingSources {
  const environment: Record<string, string> = {};
  const effective: ConfigValues = {};
  const notes: string[] = [];
  const warnings: string[] = [];
  const problems: string[] = [];
  for (const { setting, field, env } of SHARED_SETTINGS) {
    const fromStack = stack[setting];
    const fromConfig = config.values[setting];
    const where = `${config.name} ${field.join('.')}`;
    if (fromStack !== undefined && fromConfig !== undefined && fromStack !== fromConfig) {
      problems.push(`${label(setting)}=${fromStack} disagrees with ${where}=${fromConfig}: set one of them`);
    } else if (fromConfig !== undefined) {
      effective[setting] = fromConfig;
      notes.push(`${label(setting)}: ${where}=${fromConfig} runs`);
    } else if (fromStack !== undefined) {
      effective[setting] = fromStack;
      environment[env] = String(fromStack);
      notes.push(`${label(setting)}=${fromStack} runs (${env}): ${config.name} has no ${field.join('.')}`);
    } else if (setting === 'ratePerSecond') {
      warnings.push(
        `no global budget: neither ${label(setting)} nor ${where} is set, so the consumers call the targets ` +
          'as fast as the per-host budgets allow',
      );
    }
    // Neither gives a retry setting: the consumer's default runs, as it always did; no note.
  }
  const { retryBaseMs: base, retryCapMs: cap } = effective;
  if (base !== undefined && cap !== undefined && cap < base && problems.length === 0) {
    problems.push(
      `the retry cap (${cap}, ${describe('retryCapMs', config, label)}) is below the retry base ` +
        `(${base}, ${describe('retryBaseMs', config, label)}): the consumer would refuse to start`,
    );
  }
  return { environment, effective, notes, warnings, problems };
}

/** Where a shared setting's running value comes from, for messages. */
function describe(setting: SharedSetting, config: PipelineConfigFile, label: Naming['label']): string {
  const field = SHARED_SETTINGS.find((s) => s.setting === setting)!.field.join('.');
  return config.values[setting] !== undefined ? `${config.name} ${field}` : `stack ${label(setting)}`;
}

/**
 * {@link settingSources} for the config packaged with the consumer; throws on a disagreement,
 * naming the settings as `naming` does.
 */
export function packagedSettingSources(s: FanoutSettings, naming: Naming): SettingSources {
  const sources = settingSources(s, readPipelineConfig(path.join(s.consumerAssetDir, s.configFile)), naming.label);
  if (sources.problems.length > 0) {
    throw new Error(`Invalid ${naming.subject}:\n  - ${sources.problems.join('\n  - ')}`);
  }
  return sources;
}
