// SQLite-only behaviour: opening a database written by an older relgate.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import type { RequestRecord } from '../src/store/store.ts';

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function request(id: string, createRevision: number, state: RequestRecord['state']): RequestRecord {
  return {
    request_id: id, relation_id: 'r', interface: 'tls-certificates', source_unit: 'web/0', source_ingress_address: '', source_egress_subnets: [],
    source_labels: {}, fields: {}, delivery: { mode: 'any', unit: '', selector: '' }, expected_units: [], expected_count: 1, answered_units: [],
    response_count: state === 'answered' ? 1 : 0, state, claim: null, expire_time: null, body: '{}', create_time: 1, update_time: 1,
    create_revision: createRevision, revision: createRevision,
  };
}

describe('sqlite store upgrades', () => {
  it('a database from before the pending index gets the column filled and the index built, keeping every request', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'relgate-upgrade-'));
    dirs.push(dir);
    const file = path.join(dir, 'relgate.db');
    const store = new SqliteStore({ path: file });
    const states = ['pending', 'answered', 'pending', 'expired'] as const;
    await store.write(async (tx) => {
      for (const [i, state] of states.entries()) await tx.putRequest(request(`q${i}`, i + 1, state));
    });
    await store.close();

    // Back to the older schema: no pending column, no index, user_version 0.
    const db = new Database(file);
    db.exec('DROP INDEX requests_pending; ALTER TABLE requests DROP COLUMN pending; PRAGMA user_version = 0;');
    db.close();

    const upgraded = new SqliteStore({ path: file });
    const list = (pendingOnly: boolean) =>
      upgraded.read(async (tx) => (await tx.listRequests({ relationIds: ['r'], afterCreateRevision: 0, limit: 10, pendingOnly })).map((r) => r.request_id));
    expect(await list(true)).toEqual(['q0', 'q2']);
    expect(await list(false)).toEqual(['q0', 'q1', 'q2', 'q3']);
    await upgraded.close();

    const check = new Database(file, { readonly: true });
    expect(check.pragma('user_version', { simple: true })).toBe(1);
    const plan = check.prepare("EXPLAIN QUERY PLAN SELECT doc FROM requests WHERE relation_id = 'r' AND create_revision > 0 AND pending = 1 ORDER BY create_revision").all() as { detail: string }[];
    expect(plan.map((row) => row.detail).join('\n')).toContain('requests_pending');
    check.close();
  });
});
