// Makes `npm test` self-sufficient on a fresh machine with Node.js, Go and
// Python: scripts/test-tools.sh installs whatever the suite drives and is
// missing (PostgreSQL, Chromium, grpcurl, the Python and Go clients).
import { execFileSync } from 'node:child_process';

export default function setup(): void {
  execFileSync('bash', ['scripts/test-tools.sh'], { stdio: 'inherit' });
}
