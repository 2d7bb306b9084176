// Schema migrations of the PostgreSQL store, applied in order at start-up.
// Each replica runs them under one advisory lock, so replicas starting
// together apply every migration exactly once. Append new steps; never edit
// one that has shipped.
import type pg from 'pg';

export interface Migration {
  version: number;
  description: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'records, the sequencer row and the change log',
    sql: `
CREATE TABLE state (
  id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
  revision BIGINT NOT NULL,
  compacted BIGINT NOT NULL,
  relation_number BIGINT NOT NULL);
INSERT INTO state (revision, compacted, relation_number) VALUES (0, 0, 0);
CREATE TABLE applications (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE units (name TEXT PRIMARY KEY, application TEXT NOT NULL, token_hash TEXT, doc TEXT NOT NULL);
CREATE INDEX units_by_application ON units (application, name);
CREATE INDEX units_by_token ON units (token_hash) WHERE token_hash IS NOT NULL;
CREATE TABLE relations (id TEXT PRIMARY KEY, create_revision BIGINT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE relation_units (relation_id TEXT NOT NULL, unit TEXT NOT NULL, side TEXT NOT NULL, revision BIGINT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (relation_id, unit));
CREATE INDEX relation_units_by_unit ON relation_units (unit);
CREATE TABLE requests (id TEXT PRIMARY KEY, relation_id TEXT NOT NULL, create_revision BIGINT NOT NULL, due BIGINT, doc TEXT NOT NULL);
CREATE INDEX requests_by_relation ON requests (relation_id, create_revision);
CREATE INDEX requests_by_due ON requests (due) WHERE due IS NOT NULL;
CREATE TABLE responses (request_id TEXT NOT NULL, responder_unit TEXT NOT NULL, revision BIGINT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (request_id, responder_unit));
CREATE TABLE flags (relation_id TEXT NOT NULL, unit TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (relation_id, unit));
CREATE TABLE changes (revision BIGINT NOT NULL, idx INTEGER NOT NULL, relation_id TEXT NOT NULL, time BIGINT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (revision, idx));
CREATE INDEX changes_by_time ON changes (time);
`,
  },
  {
    version: 2,
    description: 'live watchers of every replica, for NO_RESPONDERS across replicas',
    sql: `
CREATE TABLE replicas (id TEXT PRIMARY KEY, heartbeat TIMESTAMPTZ NOT NULL);
CREATE TABLE watchers (
  replica TEXT NOT NULL REFERENCES replicas (id) ON DELETE CASCADE,
  unit TEXT NOT NULL, side TEXT NOT NULL, relation_id TEXT NOT NULL, count INTEGER NOT NULL,
  PRIMARY KEY (replica, unit, side, relation_id));
CREATE INDEX watchers_by_relation ON watchers (relation_id, side);
`,
  },
  {
    version: 3,
    description: 'pending requests apart, so that NEW listings do not read a relation\'s history',
    sql: `
ALTER TABLE requests ADD COLUMN pending BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE requests SET pending = (doc::jsonb ->> 'state') = 'pending';
CREATE INDEX requests_pending ON requests (relation_id, create_revision) WHERE pending;
`,
  },
  {
    version: 4,
    description: 'the change log keeps a row per revision, not per change: one insert per write',
    sql: `
CREATE TABLE changes_by_revision (revision BIGINT PRIMARY KEY, time BIGINT NOT NULL, doc TEXT NOT NULL);
INSERT INTO changes_by_revision (revision, time, doc)
  SELECT revision, min(time), json_agg(json_build_array(relation_id, doc::json) ORDER BY idx)::text FROM changes GROUP BY revision;
DROP TABLE changes;
ALTER TABLE changes_by_revision RENAME TO changes;
CREATE INDEX changes_by_time ON changes (time);
`,
  },
  {
    version: 5,
    description: 'the change log keeps a row per commit, not per revision: one insert per batch of writes',
    sql: `
UPDATE changes SET doc = (
  SELECT json_agg(json_build_array(changes.revision, changes.time, e.value ->> 0, e.value -> 1) ORDER BY e.ordinality)::text
  FROM json_array_elements(changes.doc::json) WITH ORDINALITY AS e (value, ordinality));
`,
  },
  {
    version: 6,
    description: 'change-log rows must open with a revision, so that a replica from before migration 5 fails to write instead of writing rows newer ones misread',
    sql: `
ALTER TABLE changes ADD CONSTRAINT changes_entries_open_with_a_revision CHECK (substr(doc, 1, 2) = '[[' AND substr(doc, 3, 1) BETWEEN '0' AND '9');
`,
  },
];

/** An arbitrary constant naming relgate's migration lock. */
const MIGRATION_LOCK = 7_264_711_303;

/** Brings the schema up to the newest migration; returns the versions applied now. */
export async function migrate(client: pg.ClientBase): Promise<number[]> {
  const applied: number[] = [];
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
    await client.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())');
    const done = await client.query<{ version: number }>('SELECT version FROM schema_migrations');
    const have = new Set(done.rows.map((row) => row.version));
    const newest = Math.max(...MIGRATIONS.map((migration) => migration.version));
    const unknown = [...have].filter((version) => version > newest);
    if (unknown.length > 0) {
      throw new Error(`the database was migrated by a newer relgate (schema versions ${unknown.join(', ')}; this one knows up to ${newest}): run the newer version`);
    }
    for (const migration of MIGRATIONS) {
      if (have.has(migration.version)) continue;
      await client.query(migration.sql);
      await client.query('INSERT INTO schema_migrations (version, description) VALUES ($1, $2)', [migration.version, migration.description]);
      applied.push(migration.version);
    }
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK');
    throw error;
  }
  return applied;
}
