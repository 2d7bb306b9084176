// How the benchmark starts programs, and its CPU and GC accounting: what it reads from /proc, when the
// load runner marks the measured period, how a level's CPU is reported, the
// garbage-collection pauses it counts, how a CPU profile is split into parts,
// and the count of the pages each commit writes to the WAL.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { describe, expect, it } from 'vitest';
import { gcPauseOf } from '../bench/lib/gateway-output.ts';
import { runLoad } from '../bench/lib/load.ts';
import { busyByPart, type CpuProfile } from '../bench/lib/profile-parts.ts';
import { cpuMs, spawnUntilReady } from '../bench/lib/processes.ts';
import { cpuCell } from '../bench/lib/report.ts';

/** Keeps this thread busy until the process has used `ms` more CPU time (by its own count). */
function spin(ms: number): void {
  const from = process.cpuUsage();
  for (let used = 0; used < ms * 1000; ) {
    const delta = process.cpuUsage(from);
    used = delta.user + delta.system;
  }
}

describe('benchmark processes', () => {
  it('reports a program that cannot start as an error of its own, not an unhandled event', async () => {
    await expect(spawnUntilReady('relgate-bench-no-such-program', [], () => true)).rejects.toThrow(/relgate-bench-no-such-program could not start: .*ENOENT/);
  });
});

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

describe('benchmark GC accounting', () => {
  it('counts the pauses of the process driving the load over the measured period', async () => {
    // A collection on demand, so that the count does not hang on how much the machine lets the load allocate.
    v8.setFlagsFromString('--expose-gc');
    const collect = vm.runInNewContext('gc') as () => void;
    let measuring = false;
    let collections = 0;
    const result = await runLoad(
      async () => {
        if (measuring && collections < 3) {
          collections += 1;
          collect();
        }
        await new Promise((resolve) => setImmediate(resolve));
      },
      { inFlight: 1, warmupMs: 10, durationMs: 100 },
      async (edge) => void (measuring = edge === 'start'),
    );
    expect(collections).toBe(3);
    expect(result.gc?.count).toBeGreaterThanOrEqual(3);
    expect(result.gc?.medianMs).toBeGreaterThan(0);
    expect(result.gc?.maxMs).toBeGreaterThanOrEqual(result.gc?.medianMs ?? Infinity);
  });

  it("reads the pause of every collection Node's --trace-gc prints, and nothing from other lines", () => {
    const script = 'let k = []; for (let i = 0; i < 300000; i++) { k.push({ i }); if (k.length > 50000) k = []; } globalThis.gc();';
    const output = execFileSync(process.execPath, ['--trace-gc', '--expose-gc', '--max-semi-space-size=1', '-e', script], { encoding: 'utf8' });
    const lines = output.split('\n').filter((line) => / ms: (Scavenge|Mark-Compact|Minor Mark-Sweep)\b/.test(line));
    expect(lines.some((line) => line.includes('Scavenge'))).toBe(true);
    expect(lines.some((line) => line.includes('Mark-Compact'))).toBe(true);
    for (const line of lines) expect(gcPauseOf(line)).toBeGreaterThanOrEqual(0);
    expect(gcPauseOf('{"level":30,"method":"ResponderService/ListIncomingRequests","duration_ms":0.21,"msg":"rpc"}')).toBeUndefined();
  });
});

describe('WAL pages per commit', () => {
  it('counts every commit of the round trips, split by the tables and indexes that hold the pages', () => {
    const output = execFileSync(process.execPath, [path.join(import.meta.dirname, '../bench/wal-pages.ts'), '--round-trips', '5'], { encoding: 'utf8' });
    const [summary, ...trees] = output.trim().split('\n');
    const total = Number(/^5 round trips, 10 commits: ([\d.]+) WAL pages per commit$/.exec(summary ?? '')?.[1]);
    const byTree = new Map(trees.map((line) => line.trim().split(/\s+/)).map(([pages, name]) => [name, Number(pages)]));
    // A round trip writes a request, its answer and their change-log rows: those B-trees are always there.
    for (const name of ['requests', 'responses', 'changes']) expect(byTree.get(name), name).toBeGreaterThan(0);
    expect([...byTree.values()].reduce((a, b) => a + b, 0)).toBeCloseTo(total, 1);
  });
});

describe('benchmark CPU profiles', () => {
  it("puts a real profile's busy time in the part that did the work, within the chosen stretch", () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'relgate-profile-'));
    try {
      const requestIds = path.resolve('src/request-id.ts');
      // The loop outlasts the stretch measured, its last 400 ms, so that start-up (module loading, which a busy
      // machine stretches to hundreds of milliseconds) stays out of it.
      const script = `const { newRequestId } = await import(${JSON.stringify(requestIds)});
        const end = performance.now() + 700;
        while (performance.now() < end) for (let i = 0; i < 1000; i++) newRequestId();`;
      execFileSync(process.execPath, ['--cpu-prof', `--cpu-prof-dir=${dir}`, '--input-type=module', '-e', script]);
      const [file] = readdirSync(dir);
      const profile = JSON.parse(readFileSync(path.join(dir, file as string), 'utf8')) as CpuProfile;
      const lengthS = profile.timeDeltas.reduce((a, b) => a + b, 0) / 1e6;
      const { busyUs, parts } = busyByPart(profile, lengthS - 0.4);
      expect(busyUs).toBeGreaterThan(300_000);
      expect(parts.get('request ids') ?? 0).toBeGreaterThan(busyUs / 2);
      expect([...parts.values()].reduce((a, b) => a + b, 0)).toBe(busyUs);
      expect(busyByPart(profile).busyUs).toBeGreaterThan(busyUs + 250_000);
      const late = busyByPart(profile, 60);
      expect(late.busyUs).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
