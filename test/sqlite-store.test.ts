// SQLite-only behaviour: opening a database written by an older relgate, and
// the bounded caches of records in front of the database.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { RecordCache, UndoLog } from '../src/store/record-cache.ts';
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

describe('record caches', () => {
  const copy = (value: { n: number }) => ({ ...value });

  it('hold at most their bound, dropping the least recently used record first', () => {
    const cache = new RecordCache(copy, 3);
    const undo = new UndoLog();
    for (const key of ['a', 'b', 'c']) cache.set(key, { n: key.charCodeAt(0) }, undo);
    expect(cache.get('a')).toEqual({ n: 97 }); // now b is the least recently used
    cache.set('d', { n: 100 }, undo);
    expect(cache.size).toBe(3);
    expect(cache.get('b')).toBeUndefined();
    expect([cache.get('a'), cache.get('c'), cache.get('d')]).toEqual([{ n: 97 }, { n: 99 }, { n: 100 }]);
    cache.fill('e', { n: 101 });
    expect(cache.size).toBe(3);
  });

  it("undo restores what a rolled-back write replaced, even after the bound evicted it", () => {
    const cache = new RecordCache(copy, 2);
    cache.fill('a', { n: 1 });
    const undo = new UndoLog();
    cache.set('a', { n: 2 }, undo);
    cache.set('b', { n: 3 }, undo);
    cache.set('c', { n: 4 }, undo); // evicts a
    expect(cache.get('a')).toBeUndefined();
    undo.undo();
    expect(cache.get('a')).toEqual({ n: 1 });
    expect(cache.get('b')).toBeUndefined();
    expect(cache.get('c')).toBeUndefined();
  });
});
