// How `relgate serve` runs as a process. `npm start`, the first line of the
// relgate command and every test, benchmark and script that spawns the
// gateway pass Node these flags.
import path from 'node:path';
import { PROJECT_DIR } from '../protos.ts';

/**
 * Node 22 and later size the young generation by the machine's memory (two
 * 64 MB semi-spaces with 24 GB), and a burst of new streams grows it to that
 * and keeps it. 16 MB semi-spaces are Node 20's default and cost the round
 * trips nothing measurable (docs/benchmarks.md).
 */
export const SERVE_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=16'];

export const MAIN = path.join(PROJECT_DIR, 'src', 'cli', 'main.ts');

/** Node's arguments (for process.execPath) that run `relgate serve ...args`, with extra Node flags if given. */
export function serveArgv(args: readonly string[], nodeFlags: readonly string[] = []): string[] {
  return [...SERVE_NODE_FLAGS, ...nodeFlags, MAIN, 'serve', ...args];
}
