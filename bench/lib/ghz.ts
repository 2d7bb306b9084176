// ghz, the gRPC load generator, pinned and installed with `go install` into
// the same cache as the project's other Go tools.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { LoadResult } from './load.ts';

const run = promisify(execFile);

export const GHZ_MODULE = 'github.com/bojand/ghz/cmd/ghz';
export const GHZ_VERSION = 'v0.121.0';
const GO_BIN = path.join(homedir(), '.cache', 'relgate-go', 'bin');

/** The ghz binary: from the cache, or installed there with `go install`. */
export async function findGhz(): Promise<string> {
  const cached = path.join(GO_BIN, 'ghz');
  if (existsSync(cached)) return cached;
  await run('go', ['install', `${GHZ_MODULE}@${GHZ_VERSION}`], { env: { ...process.env, GOBIN: GO_BIN }, timeout: 600_000, maxBuffer: 16 * 1024 * 1024 });
  return cached;
}

export interface GhzOptions {
  address: string;
  /** Fully qualified method, e.g. relgate.v1.RequesterService.Call. */
  call: string;
  data: object;
  metadata?: Record<string, string>;
  /** A .proto file; without it ghz asks the server's reflection service. */
  proto?: { file: string; importPaths: string[] };
  concurrency: number;
  connections: number;
  durationMs: number;
}

interface GhzReport {
  count: number;
  total: number;
  rps: number;
  latencyDistribution: { percentage: number; latency: number }[] | null;
  statusCodeDistribution: Record<string, number>;
  errorDistribution?: Record<string, number> | null;
}

/** Runs ghz for a fixed time; fails if any call did not succeed. */
export async function runGhz(ghz: string, options: GhzOptions): Promise<LoadResult> {
  const args = [
    '--insecure',
    '--call', options.call,
    '--data', JSON.stringify(options.data),
    '--concurrency', String(options.concurrency),
    '--connections', String(options.connections),
    '--duration', `${options.durationMs}ms`,
    // Without it ghz caps the run at 200 calls.
    '--total', '0',
    '--timeout', '10s',
    '--format', 'json',
    ...(options.metadata ? ['--metadata', JSON.stringify(options.metadata)] : []),
    ...(options.proto ? ['--proto', options.proto.file, ...options.proto.importPaths.flatMap((dir) => ['--import-paths', dir])] : []),
    options.address,
  ];
  const { stdout } = await run(ghz, args, { timeout: options.durationMs + 60_000, maxBuffer: 64 * 1024 * 1024 });
  const report = JSON.parse(stdout) as GhzReport;
  const ok = report.statusCodeDistribution.OK ?? 0;
  const failed = report.count - ok;
  // When the duration ends ghz closes its connection under the calls still in flight.
  const cutAtEnd = Object.entries(report.errorDistribution ?? {}).every(([message]) => /closed network connection|transport is closing|context canceled|client connection is closing/.test(message));
  if (failed > (cutAtEnd ? options.concurrency : 0)) throw new Error(`ghz saw failed calls: ${JSON.stringify(report.statusCodeDistribution)} ${JSON.stringify(report.errorDistribution ?? {})}`);
  const at = (percentage: number) => (report.latencyDistribution?.find((entry) => entry.percentage === percentage)?.latency ?? Number.NaN) / 1e6;
  const seconds = report.total / 1e9;
  return { inFlight: options.concurrency, roundTrips: ok, seconds, perSecond: ok / seconds, p50Ms: at(50), p99Ms: at(99) };
}
