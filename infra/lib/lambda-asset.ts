import * as fs from 'node:fs';
import * as path from 'node:path';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import type { Architecture } from './settings';

/** ELF `e_machine` values of the two Lambda architectures. */
const ELF_MACHINES: Record<number, Architecture> = { 0x3e: 'x86_64', 0xb7: 'arm64' };

/**
 * Reads the architecture of an ELF executable, or `undefined` if the file is not ELF (the
 * placeholder `bootstrap` files used by tests are shell scripts).
 */
export function elfArchitecture(file: string): Architecture | undefined {
  const fd = fs.openSync(file, 'r');
  try {
    const header = Buffer.alloc(20);
    const read = fs.readSync(fd, header, 0, header.length, 0);
    if (read < header.length || header.readUInt32BE(0) !== 0x7f454c46) return undefined;
    // e_machine sits at offset 18; EI_DATA (offset 5) says 1 = little, 2 = big endian.
    const machine = header[5] === 2 ? header.readUInt16BE(18) : header.readUInt16LE(18);
    return ELF_MACHINES[machine];
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The deployment package of one function: the cargo-lambda output directory with `bootstrap` and
 * the pipeline config next to it. Checked at synth time, because Lambda would otherwise accept
 * the package and fail only at the first cold start (missing file, or "exec format error" when
 * an x86_64 binary lands on arm64).
 */
export function lambdaAsset(dir: string, configFile: string, architecture: Architecture): lambda.Code {
  checkPackage(dir, configFile, architecture);
  // cargo-lambda's `--output-format zip` leaves bootstrap.zip beside the binary; CDK zips the
  // directory itself, so the inner zip would only be dead weight in the package.
  return lambda.Code.fromAsset(dir, { exclude: ['*.zip'] });
}

/** Throws unless `dir` holds an executable `bootstrap` for `architecture` and the config file. */
export function checkPackage(dir: string, configFile: string, architecture: Architecture): void {
  const bootstrap = path.join(dir, 'bootstrap');
  const hint = 'build it with scripts/package (see docs/deploy.md)';
  if (!fs.existsSync(bootstrap)) {
    throw new Error(`${bootstrap} does not exist: ${hint}`);
  }
  if (!fs.existsSync(path.join(dir, configFile))) {
    throw new Error(`${path.join(dir, configFile)} does not exist: scripts/package --config FILE copies it there`);
  }
  const built = elfArchitecture(bootstrap);
  if (built !== undefined && built !== architecture) {
    throw new Error(
      `${bootstrap} is an ${built} binary but the stack deploys ${architecture}: ` +
        `rebuild with scripts/package --arch ${architecture} or set -c architecture=${built}`,
    );
  }
}
