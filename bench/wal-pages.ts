// The pages each commit writes to the SQLite WAL, by the table or index they
// belong to. Round trips run one at a time through the service code and the
// store (create a request, then answer it: two commits, as at 1 in flight),
// with the checkpoint thread off so that the WAL keeps every commit; then
// the WAL's frames are counted against SQLite's dbstat.
//
//   node bench/wal-pages.ts [--round-trips 100]
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import { newRequestId } from '../src/request-id.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import { tempDir } from './lib/processes.ts';
import { REQUEST_FIELDS, REQUESTER_UNIT, RESPONDER_UNIT, RESPONSE_FIELDS } from './lib/relgate.ts';
import { servicesWithRelation } from './lib/services.ts';

const WAL_HEADER = 32;
const FRAME_HEADER = 24;

const { values: flags } = parseArgs({ options: { 'round-trips': { type: 'string', default: '100' } } });
const roundTrips = Number(flags['round-trips']);

/** The page number of each frame in the WAL, split into commits. */
function walCommits(file: string): number[][] {
  const wal = readFileSync(`${file}-wal`);
  const frameSize = FRAME_HEADER + wal.readUInt32BE(8);
  const commits: number[][] = [[]];
  for (let offset = WAL_HEADER; offset + frameSize <= wal.length; offset += frameSize) {
    commits.at(-1)?.push(wal.readUInt32BE(offset));
    if (wal.readUInt32BE(offset + 4) !== 0) commits.push([]);
  }
  return commits.slice(0, -1);
}

const scratch = tempDir('relgate-wal-pages-');
const file = path.join(scratch.dir, 'relgate.db');
try {
  const store = new SqliteStore({ path: file, durability: 'full', checkpointEveryCommits: 0 });
  const { requests, relationId } = await servicesWithRelation(store);
  const setUp = walCommits(file).length;
  const delivery = { mode: 'any' as const, unit: '', selector: '' };
  for (let i = 0; i < roundTrips; i++) {
    const requestId = newRequestId();
    await requests.create(REQUESTER_UNIT, { relation_id: relationId, request_id: requestId, fields: REQUEST_FIELDS, delivery, ttl: null });
    await requests.respond(RESPONDER_UNIT, { request_id: requestId, code: 0, error: '', fields: RESPONSE_FIELDS });
  }
  const commits = walCommits(file).slice(setUp);
  if (commits.length !== 2 * roundTrips) throw new Error(`the WAL holds ${commits.length} of the ${2 * roundTrips} commits: it started over; ask for fewer round trips`);

  const reader = new Database(file, { readonly: true });
  const owner = new Map((reader.prepare('SELECT pageno, name FROM dbstat').all() as { pageno: number; name: string }[]).map((row) => [row.pageno, row.name]));
  reader.close();
  const byTree = new Map<string, number>();
  for (const page of commits.flat()) {
    const name = owner.get(page) ?? `page ${page}`;
    byTree.set(name, (byTree.get(name) ?? 0) + 1);
  }
  const perCommit = (pages: number) => (pages / commits.length).toFixed(2);
  process.stdout.write(`${roundTrips} round trips, ${commits.length} commits: ${perCommit(commits.flat().length)} WAL pages per commit\n`);
  for (const [name, pages] of [...byTree].sort((a, b) => b[1] - a[1])) process.stdout.write(`  ${perCommit(pages).padStart(6)}  ${name}\n`);
  await store.close();
} finally {
  scratch.remove();
}
