// Shared by the reliability tests: clients of a server in another process
// and that process's resident memory (both re-exported), and polling for state without an event.
export { rssMb } from '../../bench/lib/processes.ts';
export { clientsOf } from '../helpers/harness.ts';

/** Polls until check() holds, for state that changes without an event; resolves with the time it took. */
export async function until(check: () => boolean, timeoutMs: number, everyMs = 20): Promise<number> {
  const started = performance.now();
  while (!check()) {
    if (performance.now() - started > timeoutMs) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
  return performance.now() - started;
}
