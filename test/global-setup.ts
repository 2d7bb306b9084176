// Makes `npm test` self-sufficient on a fresh machine with Go: the pinned
// grpcurl is installed into the cache folder .ci/run uses when it is missing.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { GRPCURL_VERSION, cacheDir, findGrpcurl } from './helpers/find-grpcurl.ts';

export default function setup(): void {
  try {
    findGrpcurl();
  } catch {
    const bin = path.join(cacheDir(), 'relgate-go', 'bin');
    console.log(`installing grpcurl ${GRPCURL_VERSION} into ${bin}`);
    execFileSync('go', ['install', `github.com/fullstorydev/grpcurl/cmd/grpcurl@${GRPCURL_VERSION}`], {
      env: { ...process.env, GOBIN: bin },
      stdio: 'inherit',
    });
  }
}
