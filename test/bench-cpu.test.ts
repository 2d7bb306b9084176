// The benchmark's CPU accounting: what it reads from /proc, when the load
// runner marks the measured period, and how a level's CPU is reported.
import { describe, expect, it } from 'vitest';
import { runLoad } from '../bench/lib/load.ts';
import { cpuMs } from '../bench/lib/processes.ts';
import { cpuCell } from '../bench/lib/report.ts';

/** Keeps this thread busy until the process has used `ms` more CPU time (by its own count). */
function spin(ms: number): void {
  const from = process.cpuUsage();
  for (let used = 0; used < ms * 1000; ) {
    const delta = process.cpuUsage(from);
    used = delta.user + delta.system;
  }
}

describe('benchmark CPU accounting', () => {
  it('reads a process CPU time from /proc in step with what the process itself counts', () => {
    const before = { proc: cpuMs(process.pid), own: process.cpuUsage() };
    spin(300);
    const procMs = cpuMs(process.pid) - before.proc;
    const own = process.cpuUsage(before.own);
    const ownMs = (own.user + own.system) / 1000;
    expect(procMs).toBeGreaterThanOrEqual(250);
    // /proc counts in ticks of 10 ms and covers every thread.
    expect(Math.abs(procMs - ownMs)).toBeLessThan(60);
  });

  it('marks the measured period after the warm-up and after the last measured round trip', async () => {
    const log: string[] = [];
    let roundTrips = 0;
    const result = await runLoad(
      async () => {
        roundTrips += 1;
        log.push('rt');
        await new Promise((resolve) => setImmediate(resolve));
      },
      { inFlight: 2, warmupMs: 20, durationMs: 40 },
      async (edge) => void log.push(edge),
    );
    const start = log.indexOf('start');
    const end = log.indexOf('end');
    expect(start).toBeGreaterThan(0);
    expect(end).toBe(log.length - 1);
    // Every round trip between the edges is a measured one, and no measured one lies outside them.
    expect(log.slice(start + 1, end).length).toBe(result.roundTrips);
    expect(roundTrips).toBe(start + result.roundTrips);
  });

  it('reports each process and the sum per round trip', () => {
    const level = { inFlight: 64, roundTrips: 1, seconds: 1, perSecond: 1, p50Ms: 1, p99Ms: 1 };
    expect(cpuCell(level)).toBe('');
    expect(cpuCell({ ...level, cpu: [{ process: 'core', usPerRoundTrip: 137.6 }] })).toBe('core 138');
    expect(cpuCell({ ...level, cpu: [{ process: 'server', usPerRoundTrip: 359.2 }, { process: 'client', usPerRoundTrip: 142.4 }] })).toBe('server 359 + client 142 = 502');
  });
});
