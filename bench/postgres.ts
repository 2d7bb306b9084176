// Round trip across two relgate replicas on one PostgreSQL (requester on one,
// responder on the other) against the single-instance SQLite round trip, in
// the same run. Every side runs in its own process; PostgreSQL is a
// throw-away cluster at its default durability (fsync on, synchronous
// commit), relgate on SQLite at its default (synchronous=FULL).
//
//   node bench/postgres.ts            # 2 s warm-up, 10 s per level
//   node bench/postgres.ts --quick    # 0.5 s warm-up, 3 s per level
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startPostgres } from '../test/helpers/postgres.ts';
import type { LoadResult } from './lib/load.ts';
import { spawnGateway, spawnRelgate, tempDir, type ServerProcess } from './lib/processes.ts';
import { setUpRelation } from './lib/relgate.ts';
import { startRole, type RoleHandle } from './lib/role.ts';

const BENCH_DIR = import.meta.dirname;
const LEVELS = [1, 64];
const TARGET = 0.5;

const { values: flags } = parseArgs({ options: { quick: { type: 'boolean', default: false } } });
const timing = flags.quick ? { warmupMs: 500, durationMs: 3_000 } : { warmupMs: 2_000, durationMs: 10_000 };

/** Session responder at one address, session requester at another; measures every level. */
async function measure(label: string, requesterAddress: string, responderAddress: string): Promise<LoadResult[]> {
  const relationId = await setUpRelation(requesterAddress);
  const roles: RoleHandle[] = [];
  try {
    roles.push(await startRole(path.join(BENCH_DIR, 'relgate.ts'), 'responder-session', { address: responderAddress, relationId }));
    const requester = await startRole(path.join(BENCH_DIR, 'relgate.ts'), 'requester-session', { address: requesterAddress, relationId });
    roles.push(requester);
    const results: LoadResult[] = [];
    process.stdout.write(`${label}\n`);
    for (const inFlight of LEVELS) {
      const result = await requester.measure({ inFlight, ...timing });
      process.stdout.write(`  ${String(inFlight).padStart(2)} in flight: ${Math.round(result.perSecond)} rt/s, p50 ${result.p50Ms.toFixed(2)} ms, p99 ${result.p99Ms.toFixed(2)} ms\n`);
      results.push(result);
    }
    return results;
  } finally {
    for (const role of roles.reverse()) await role.stop();
  }
}

async function sqliteRun(): Promise<LoadResult[]> {
  const temp = tempDir('relgate-bench-sqlite-');
  const server = await spawnRelgate(path.join(temp.dir, 'relgate.db'));
  try {
    return await measure('relgate, one instance on SQLite', server.address, server.address);
  } finally {
    await server.stop();
    temp.remove();
  }
}

async function postgresRun(): Promise<LoadResult[]> {
  const cluster = await startPostgres({ durable: true });
  const replicas: ServerProcess[] = [];
  try {
    const store = await cluster.createDatabase();
    const a = await spawnGateway(['--store', store]);
    replicas.push(a);
    const b = await spawnGateway(['--store', store]);
    replicas.push(b);
    return await measure('relgate, two replicas on PostgreSQL (requester on one, responder on the other)', a.address, b.address);
  } finally {
    for (const replica of replicas) await replica.stop();
    await cluster.stop();
  }
}

const sqlite = await sqliteRun();
const postgres = await postgresRun();
const rows = LEVELS.map((inFlight, i) => {
  const [s, p] = [sqlite[i], postgres[i]] as [LoadResult, LoadResult];
  const ratio = p.perSecond / s.perSecond;
  return `| ${inFlight} | ${Math.round(s.perSecond)} rt/s, p50 ${s.p50Ms.toFixed(2)} ms | ${Math.round(p.perSecond)} rt/s, p50 ${p.p50Ms.toFixed(2)} ms, p99 ${p.p99Ms.toFixed(2)} ms | ${ratio.toFixed(2)}x${ratio >= TARGET ? '' : ` (target ${TARGET}x)`} |`;
});
process.stdout.write(['', '| In flight | SQLite, one instance | PostgreSQL, across two replicas | Ratio |', '| --- | --- | --- | --- |', ...rows, ''].join('\n'));
