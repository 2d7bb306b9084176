// Shared by the reliability tests: clients of a server in another process
// (re-exported), that process's resident memory, and polling for state without an event.
import { readFileSync } from 'node:fs';
export { clientsOf } from '../helpers/harness.ts';

/** Resident memory of a process, in MiB. */
export function rssMb(pid: number | undefined): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!match) throw new Error(`no VmRSS for process ${pid}`);
  return Number(match[1]) / 1024;
}

/** Polls until check() holds, for state that changes without an event; resolves with the time it took. */
export async function until(check: () => boolean, timeoutMs: number, everyMs = 20): Promise<number> {
  const started = performance.now();
  while (!check()) {
    if (performance.now() - started > timeoutMs) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
  return performance.now() - started;
}
