// The ingest baselines: raw better-sqlite3 inserts in their own process, WAL
// with the same synchronous setting as relgate's default (FULL: fsync per
// commit). `insert` commits each insert alone, a plain loop; `insert-grouped`
// commits the inserts of one event-loop turn together, as relgate groups its
// writes, so that its ratio at 16 and 64 in flight is not group commit alone.
// Keys as relgate's clients make them: time-ordered UUIDv7.
import path from 'node:path';
import Database from 'better-sqlite3';
import { newRequestId } from '../src/request-id.ts';
import { serveRoles, type Config } from './lib/role.ts';

/** About the size of the request document relgate stores. */
const DOC = JSON.stringify({ relation_id: newRequestId(), source_unit: 'webapp/0', fields: { common_name: 'bench.example.com' }, delivery: { mode: 'any' }, state: 'pending', create_time: Date.now() });

function open(config: Config) {
  const db = new Database(path.join(config.dir as string, 'insert.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec('CREATE TABLE requests (id TEXT PRIMARY KEY, doc TEXT NOT NULL) STRICT');
  return { db, statement: db.prepare('INSERT INTO requests (id, doc) VALUES (?, ?)') };
}

async function insert(config: Config) {
  const { db, statement } = open(config);
  // better-sqlite3 is synchronous: every slot's insert runs to its commit in turn.
  const roundTrip = async () => void statement.run(newRequestId(), DOC);
  return { roundTrip, close: async () => void db.close() };
}

async function insertGrouped(config: Config) {
  const { db, statement } = open(config);
  const commit = db.transaction((count: number) => {
    for (let i = 0; i < count; i++) statement.run(newRequestId(), DOC);
  });
  let waiting: (() => void)[] = [];
  // The inserts asked for in one event-loop turn, in one transaction and one fsync; each is done once it commits.
  const commitTurn = () => {
    const done = waiting;
    waiting = [];
    commit(done.length);
    for (const resolve of done) resolve();
  };
  const roundTrip = () =>
    new Promise<void>((resolve) => {
      if (waiting.push(resolve) === 1) setImmediate(commitTurn);
    });
  return { roundTrip, close: async () => void db.close() };
}

serveRoles({ insert, 'insert-grouped': insertGrouped });
