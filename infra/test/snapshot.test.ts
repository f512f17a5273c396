import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { synth } from './helpers';

/**
 * The whole default template against test/__snapshots__/fanout.template.json, so any change to
 * the synthesized infrastructure shows up in review. After an intended change:
 *   UPDATE_SNAPSHOTS=1 npm test
 * Asset hashes are masked: they follow the placeholder packages, not the stack.
 */
const SNAPSHOT = path.join(__dirname, '__snapshots__', 'fanout.template.json');

test('the default template matches the snapshot', () => {
  const actual = JSON.parse(
    JSON.stringify(synth().toJSON()).replace(/\b[0-9a-f]{64}(\.zip)?\b/g, (_, zip) => `<asset-hash>${zip ?? ''}`),
  );
  if (process.env.UPDATE_SNAPSHOTS === '1' || (!fs.existsSync(SNAPSHOT) && !process.env.CI)) {
    fs.mkdirSync(path.dirname(SNAPSHOT), { recursive: true });
    fs.writeFileSync(SNAPSHOT, `${JSON.stringify(actual, null, 2)}\n`);
    return;
  }
  assert.deepEqual(actual, JSON.parse(fs.readFileSync(SNAPSHOT, 'utf8')), 'template changed: review, then UPDATE_SNAPSHOTS=1 npm test');
});
