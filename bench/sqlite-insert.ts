// The ingest baseline: a raw better-sqlite3 insert loop in its own process,
// one transaction per insert, WAL with the same synchronous setting as
// relgate's default (FULL: fsync per commit).
// Keys as relgate's clients make them: time-ordered UUIDv7.
import path from 'node:path';
import Database from 'better-sqlite3';
import { newRequestId } from '../src/request-id.ts';
import { serveRoles, type Config } from './lib/role.ts';

/** About the size of the request document relgate stores. */
const DOC = JSON.stringify({ relation_id: newRequestId(), source_unit: 'webapp/0', fields: { common_name: 'bench.example.com' }, delivery: { mode: 'any' }, state: 'pending', create_time: Date.now() });

async function insert(config: Config) {
  const db = new Database(path.join(config.dir as string, 'insert.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec('CREATE TABLE requests (id TEXT PRIMARY KEY, doc TEXT NOT NULL) STRICT');
  const statement = db.prepare('INSERT INTO requests (id, doc) VALUES (?, ?)');
  // better-sqlite3 is synchronous: every slot's insert runs to its commit in turn.
  const roundTrip = async () => void statement.run(newRequestId(), DOC);
  return { roundTrip, close: async () => void db.close() };
}

serveRoles({ insert });
