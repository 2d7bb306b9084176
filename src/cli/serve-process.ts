// How `relgate serve` runs as a process. `npm start`, the first line of the
// relgate command and every test, benchmark and script that spawns the
// gateway pass Node these flags.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Node 22 and later size the young generation by the machine's memory (two
 * 64 MB semi-spaces with 24 GB), and a burst of new streams grows it to that
 * and keeps it. 16 MB semi-spaces are Node 20's default and cost the round
 * trips nothing measurable (docs/benchmarks.md).
 */
export const SERVE_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=16'];

/** The command's entry point, beside this file: main.ts in the sources, main.js in a built package. */
export const MAIN = fileURLToPath(new URL(`./main${path.extname(import.meta.url)}`, import.meta.url));

/** Node's arguments (for process.execPath) that run `relgate serve ...args`, with extra Node flags if given. */
export function serveArgv(args: readonly string[], nodeFlags: readonly string[] = [], main = MAIN): string[] {
  return [...SERVE_NODE_FLAGS, ...nodeFlags, main, 'serve', ...args];
}
