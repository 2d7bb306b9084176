// Makes `npm test` self-sufficient on a fresh machine with Go: the pinned
// grpcurl is installed into the cache folder .ci/run uses when it is missing.
import { execFileSync } from 'node:child_process';
import { homedir } from 'node:os';
import path from 'node:path';
import { GRPCURL_VERSION, findGrpcurl } from './helpers/grpcurl.ts';

export default function setup(): void {
  try {
    findGrpcurl();
    return;
  } catch {
    const cache = process.env.XDG_CACHE_HOME || path.join(homedir(), '.cache');
    const bin = path.join(cache, 'relgate-go', 'bin');
    console.log(`installing grpcurl ${GRPCURL_VERSION} into ${bin}`);
    execFileSync('go', ['install', `github.com/fullstorydev/grpcurl/cmd/grpcurl@${GRPCURL_VERSION}`], {
      env: { ...process.env, GOBIN: bin },
      stdio: 'inherit',
    });
  }
}
