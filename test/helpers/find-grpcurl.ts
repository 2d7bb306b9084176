// Where the pinned grpcurl lives: on PATH or where .ci/run and the test
// set-up install it (a missing grpcurl fails the tests; it is never skipped).
import { accessSync, constants } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';

/** The cache folder .ci/run uses (XDG_CACHE_HOME or ~/.cache). */
export function cacheDir(): string {
  return process.env.XDG_CACHE_HOME || path.join(homedir(), '.cache');
}

export const GRPCURL_VERSION = 'v1.9.3';

function executable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Absolute path of grpcurl; throws with install instructions when missing. */
export function findGrpcurl(): string {
  const cache = cacheDir();
  const candidates = [
    ...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean).map((dir) => path.join(dir, 'grpcurl')),
    path.join(cache, 'relgate-go', 'bin', 'grpcurl'), // .ci/run's GOBIN
    ...(process.env.GOBIN ? [path.join(process.env.GOBIN, 'grpcurl')] : []),
    path.join(process.env.GOPATH || path.join(homedir(), 'go'), 'bin', 'grpcurl'),
  ];
  const found = candidates.find(executable);
  if (!found) {
    throw new Error(
      `grpcurl not found (looked on PATH and in ${path.join(cache, 'relgate-go', 'bin')}). ` +
        `Install it with: GOBIN=${path.join(cache, 'relgate-go', 'bin')} go install github.com/fullstorydev/grpcurl/cmd/grpcurl@${GRPCURL_VERSION} ` +
        '(or run bash .ci/run, which does).',
    );
  }
  return found;
}
