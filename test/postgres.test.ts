// PostgreSQL-specific store behaviour: migrations, ordered visibility of
// revisions, and several stores (replicas) on one database hearing each
// other's commits exactly once and in order, even when notifications are lost.
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Code, RelgateError } from '../src/errors.ts';
import { MIGRATIONS } from '../src/store/postgres-migrations.ts';
import { PostgresStore, startOverAfterRestore, type PostgresStoreOptions } from '../src/store/postgres-store.ts';
import type { Change, RelationRecord, Store, UnitRecord } from '../src/store/store.ts';
import { sql, startPostgres, type PostgresCluster } from './helpers/postgres.ts';

let cluster: PostgresCluster;
const stores: Store[] = [];

beforeAll(async () => {
  cluster = await startPostgres();
}, 60_000);
afterAll(() => cluster.stop());
afterEach(async () => {
  for (const store of stores.splice(0)) await store.close();
});

async function open(url: string, options: Partial<PostgresStoreOptions> = {}): Promise<PostgresStore> {
  const store = await PostgresStore.open({ url, ...options });
  stores.push(store);
  return store;
}

function log(store: Store): Change[] {
  const changes: Change[] = [];
  store.onCommit((batch) => changes.push(...batch));
  return changes;
}

async function write(store: Store, name: string): Promise<number> {
  return store.write(async (tx) => {
    await tx.appendChange('r1', { kind: 'registry', what: 'test', name });
    return tx.revision();
  });
}

/** Polls until check passes; for states that announce themselves with no event. */
async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const names = (changes: Change[]) => changes.map((c) => (c.data.kind === 'registry' ? c.data.name : c.data.kind));
const revisions = (changes: Change[]) => changes.map((c) => c.revision);

describe('migrations', () => {
  it('are applied once at start-up, even by replicas starting together', async () => {
    const url = await cluster.createDatabase();
    await Promise.all([open(url), open(url), open(url)]);
    const { rows } = await sql(url, 'SELECT version FROM schema_migrations ORDER BY version');
    expect(rows.map((row) => row.version)).toEqual(MIGRATIONS.map((m) => m.version));
    const again = await open(url);
    expect(again.currentRevision()).toBe(0);
    const { rows: after } = await sql(url, 'SELECT count(*)::int AS n FROM schema_migrations');
    expect(after[0].n).toBe(MIGRATIONS.length);
  });

  const entry = (name: string) => JSON.stringify({ kind: 'registry', what: 'test', name });
  it.each([
    {
      layout: 'a row per change',
      version: 4,
      // As relgate wrote them before migration 4, inserted out of order within revision 2.
      rows: async (url: string) => {
        const rows: [number, number, string, number, string][] = [
          [1, 0, '', 100, entry('first')], [2, 2, 'r1', 200, entry('c')], [2, 0, 'r1', 200, entry('a')], [2, 1, 'r2', 200, entry('b')], [3, 0, 'r2', 300, entry('last')],
        ];
        for (const row of rows) await sql(url, 'INSERT INTO changes (revision, idx, relation_id, time, doc) VALUES ($1, $2, $3, $4, $5)', row);
      },
    },
    {
      layout: 'a row per revision',
      version: 5,
      // As relgate wrote them before migration 5: each revision's changes as [relation_id, change] pairs.
      rows: async (url: string) => {
        const rows: [number, number, string][] = [
          [1, 100, `[["", ${entry('first')}]]`], [2, 200, `[["r1", ${entry('a')}], ["r2", ${entry('b')}], ["r1", ${entry('c')}]]`], [3, 300, `[["r2", ${entry('last')}]]`],
        ];
        for (const row of rows) await sql(url, 'INSERT INTO changes (revision, time, doc) VALUES ($1, $2, $3)', row);
      },
    },
  ])('turn a change log with $layout into a row per commit, each change kept in order with its revision, relation and time', async ({ version, rows }) => {
    const url = await cluster.createDatabase();
    for (const migration of MIGRATIONS.filter((m) => m.version < version)) {
      await sql(url, migration.sql);
      await sql(url, 'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())');
      await sql(url, 'INSERT INTO schema_migrations (version, description) VALUES ($1, $2)', [migration.version, migration.description]);
    }
    await rows(url);
    await sql(url, 'UPDATE state SET revision = 3');

    const store = await open(url);
    const { changes } = await store.changesSince(0, 100);
    expect(changes.map((change) => [change.revision, change.index, change.relation_id, change.time, names([change])[0]])).toEqual([
      [1, 0, '', 100, 'first'], [2, 0, 'r1', 200, 'a'], [2, 1, 'r2', 200, 'b'], [2, 2, 'r1', 200, 'c'], [3, 0, 'r2', 300, 'last'],
    ]);
    expect(await write(store, 'after')).toBe(4);
    expect(names((await store.changesSince(3, 100)).changes)).toEqual(['after']);
    const { rows: stored } = await sql(url, 'SELECT count(*)::int AS n FROM changes');
    expect(stored[0].n).toBe(4);
  });
});

describe('replicas of other versions', () => {
  it('a replica refuses to start on a database migrated by a newer relgate', async () => {
    const url = await cluster.createDatabase();
    await (await open(url)).close();
    await sql(url, "INSERT INTO schema_migrations (version, description) VALUES (999, 'from the future')");
    await expect(PostgresStore.open({ url })).rejects.toThrow(/migrated by a newer relgate \(schema versions 999; this one knows up to \d+\)/);
  });

  it('a change-log row in the layout of replicas from before migration 5 is refused, so such a replica fails to commit instead of writing rows newer ones misread', async () => {
    const url = await cluster.createDatabase();
    const store = await open(url);
    expect(await write(store, 'new')).toBe(1);
    const old = JSON.stringify([['r1', { kind: 'registry', what: 'test', name: 'old' }]]);
    await expect(sql(url, 'INSERT INTO changes (revision, time, doc) VALUES (2, 1, $1)', [old])).rejects.toThrow(/changes_entries_open_with_a_revision/);
    expect(await write(store, 'next')).toBe(2);
    expect(names((await store.changesSince(0, 10)).changes)).toEqual(['new', 'next']);
  });
});

describe('connections', () => {
  it('run without JIT compilation, which cost more than the statements it compiled, unless the URL sets its own options', async () => {
    const url = await cluster.createDatabase();
    const jit = async (tx: unknown) => ((await (tx as { client: pg.ClientBase }).client.query<{ jit: string }>('SHOW jit')).rows[0]?.jit);
    const store = await open(url);
    expect([await store.write(jit), await store.read(jit)]).toEqual(['off', 'off']);
    const own = await open(`${url}${url.includes('?') ? '&' : '?'}options=${encodeURIComponent('-c jit=on')}`);
    expect(await own.read(jit)).toBe('on');
  });

  it('tell the operator once when the LISTEN connection or the heartbeat fails, and again when each works', async () => {
    const url = await cluster.createDatabase();
    const lines: { level: string; message: string }[] = [];
    const record = (level: string) => (_details: object, message: string) => void lines.push({ level, message });
    const store = await open(url, { log: { warn: record('warn'), info: record('info') }, presence: { heartbeatMs: 20 } });
    const said = (text: string) => lines.filter((line) => line.message.includes(text)).map((line) => line.level);

    await sql(url, 'SELECT pg_terminate_backend($1)', [await store.listenerPid()]);
    await until(() => said('LISTEN connection restored').length > 0, 'the listener is back');
    expect(said('LISTEN connection')).toEqual(['warn', 'info']);

    // Every heartbeat fails; a sequence, which no rollback undoes, counts the attempts.
    await sql(
      url,
      `CREATE SEQUENCE heartbeats;
       CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM nextval('heartbeats'); RAISE EXCEPTION 'refused'; END $$;
       CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON replicas FOR EACH ROW EXECUTE FUNCTION refuse();`,
    );
    const attempts = async () => Number((await sql(url, 'SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM heartbeats')).rows[0].n);
    await until(async () => (await attempts()) >= 5, 'five heartbeats fail');
    await sql(url, 'DROP TRIGGER refuse ON replicas');
    await until(() => said('heartbeat restored').length > 0, 'a heartbeat succeeds');
    expect(said('heartbeat')).toEqual(['warn', 'info']);
  });
});

describe('ordered visibility', () => {
  it('a higher revision never becomes visible while a lower one is still uncommitted', async () => {
    const url = await cluster.createDatabase();
    const [slow, fast, watcher] = [await open(url), await open(url), await open(url)];
    const seen = log(watcher);
    let release = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    let lowHeld = () => {};
    const held = new Promise<void>((resolve) => (lowHeld = resolve));
    const low = slow.write(async (tx) => {
      await tx.appendChange('r1', { kind: 'registry', what: 'test', name: 'low' });
      lowHeld();
      await gate;
      return tx.revision();
    });
    await held;
    const high = write(fast, 'high');
    // The higher write is parked behind the sequencer, not committed around it.
    await until(async () => (await sql(url, "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'")).rows[0].n > 0, 'the second writer waits');
    // A cursor reader on a third replica sees neither, however it looks.
    expect((await sql(url, 'SELECT count(*)::int AS n FROM changes')).rows[0].n).toBe(0);
    expect(await watcher.changesSince(0, 100)).toEqual({ changes: [], upTo: 0 });
    expect(await watcher.read(async (tx) => tx.readRevision())).toBe(0);
    release();
    expect(await Promise.all([low, high])).toEqual([1, 2]);
    await until(() => seen.length === 2, 'the watcher hears both');
    expect(names(seen)).toEqual(['low', 'high']);
    expect(revisions(seen)).toEqual([1, 2]);
  });

  it('a reader polling the log during concurrent writes from several replicas never skips a revision', async () => {
    const url = await cluster.createDatabase();
    const writers = [await open(url), await open(url), await open(url)];
    const reader = await open(url, { pollIntervalMs: 60_000 });
    const read: number[] = [];
    let cursor = 0;
    let writing = true;
    const polling = (async () => {
      while (writing || cursor < reader.currentRevision()) {
        const { changes, upTo } = await reader.changesSince(cursor, 7);
        read.push(...revisions(changes));
        cursor = upTo;
        await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    await Promise.all(writers.map((store, w) => Promise.all(Array.from({ length: 40 }, (_, i) => write(store, `${w}.${i}`)))));
    await until(() => reader.currentRevision() === 120, 'the reader reaches the last revision');
    writing = false;
    await polling;
    expect(read).toEqual(Array.from({ length: 120 }, (_, i) => i + 1));
  });
});

describe('replicas', () => {
  it("a write reads what other replicas wrote since its replica's last batch, not what that batch remembered", async () => {
    const url = await cluster.createDatabase();
    const [a, b] = [await open(url), await open(url)];
    const relation = (requests: number): RelationRecord => ({
      id: 'r1', interface: 'tls-certificates', version: 1, requester_application: 'web', requester_endpoint: 'certificates',
      responder_application: 'ca', responder_endpoint: 'certificates', create_revision: 1, revision: 1, counters: { requests },
    });
    const unit = (zone: string): UnitRecord => ({ name: 'web/0', application: 'web', ingress_address: '10.0.0.1', egress_subnets: [], labels: { zone }, revision: 1 });
    const put = (store: Store, n: number) =>
      store.write(async (tx) => {
        await tx.putRelation(relation(n));
        await tx.putUnit(unit(`z${n}`));
        await tx.putRelationUnit({ relation_id: 'r1', unit: 'web/0', side: 'requester', revision: n });
        await tx.putFlags('r1', 'web/0', { n: n % 2 === 0 });
      });
    const seen = (store: Store) =>
      store.write(async (tx) => ({
        requests: (await tx.getRelation('r1'))?.counters.requests,
        zone: (await tx.getUnit('web/0'))?.labels.zone,
        membership: (await tx.listRelationUnits('r1')).map((member) => member.revision),
        flags: await tx.getFlags('r1', 'web/0'),
      }));
    await put(a, 1);
    expect(await seen(a)).toEqual({ requests: 1, zone: 'z1', membership: [1], flags: { n: false } });
    await put(b, 2);
    expect(await seen(a)).toEqual({ requests: 2, zone: 'z2', membership: [2], flags: { n: true } });
    await b.write((tx) => tx.deleteRelation('r1'));
    expect(await seen(a)).toEqual({ requests: undefined, zone: 'z2', membership: [], flags: undefined });
  });

  it('every replica hears every commit once, in revision order, whoever wrote it', async () => {
    const url = await cluster.createDatabase();
    const replicas = [await open(url), await open(url)];
    const logs = replicas.map(log);
    for (let round = 0; round < 5; round++) {
      await Promise.all(replicas.map((store, r) => Promise.all([write(store, `${r}.${round}.a`), write(store, `${r}.${round}.b`)])));
    }
    await until(() => logs.every((changes) => changes.length === 20), 'both replicas hear 20 changes');
    expect(revisions(logs[0] as Change[])).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect(logs[1]).toEqual(logs[0]);
  });

  it('a batch whose connection is cut before its commit fails its writes, and is never committed on a new connection', async () => {
    const url = await cluster.createDatabase();
    const store = await open(url);
    let release = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    let cut = () => {};
    const cutting = new Promise<void>((resolve) => (cut = resolve));
    const doomed = store.write(async (tx) => {
      await tx.putApplication({ name: 'lost', revision: await tx.revision() });
      await tx.appendChange('', { kind: 'registry', what: 'application', name: 'lost' });
      const client = (tx as unknown as { client: pg.ClientBase }).client;
      const ended = new Promise((resolve) => client.once('end', resolve));
      const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      await sql(url, 'SELECT pg_terminate_backend($1)', [rows[0]?.pid]);
      await ended;
      cut();
      await gate;
    });
    await cutting;
    release();
    const error = (await doomed.catch((e: unknown) => e)) as RelgateError;
    expect([error.code, error.reason]).toEqual([Code.UNAVAILABLE, 'STORE_UNAVAILABLE']);
    expect((await sql(url, "SELECT count(*)::int AS n FROM applications WHERE name = 'lost'")).rows[0].n).toBe(0);
    expect(await write(store, 'after')).toBe(1);
    expect(names((await store.changesSince(0, 10)).changes)).toEqual(['after']);
  });

  it('a write that cannot take the sequencer lock in time fails UNAVAILABLE, and the next one works', async () => {
    const base = await cluster.createDatabase();
    const store = await open(`${base}${base.includes('?') ? '&' : '?'}options=${encodeURIComponent('-c lock_timeout=100')}`);
    // Another replica's batch holds the lock.
    const other = new pg.Client({ connectionString: base });
    await other.connect();
    try {
      await other.query('BEGIN; SELECT revision FROM state FOR UPDATE');
      const error = (await write(store, 'blocked').catch((e: unknown) => e)) as RelgateError;
      expect([error.code, error.reason]).toEqual([Code.UNAVAILABLE, 'STORE_UNAVAILABLE']);
      await other.query('COMMIT');
    } finally {
      await other.end();
    }
    expect(await write(store, 'after')).toBe(1);
    expect(names((await store.changesSince(0, 10)).changes)).toEqual(['after']);
  });

  it('loses nothing when the LISTEN connection is cut repeatedly under writes', async () => {
    const url = await cluster.createDatabase();
    const writer = await open(url);
    // No periodic poll within the test: recovery must come from reconnecting.
    const follower = await open(url, { pollIntervalMs: 600_000 });
    const heard = log(follower);
    let cuts = 0;
    const writes: Promise<number>[] = [];
    for (let i = 0; i < 60; i++) {
      writes.push(write(writer, `w${i}`));
      if (i % 15 === 5) {
        await until(async () => (await follower.listenerPid()) !== undefined, 'the follower listens again');
        const pid = await follower.listenerPid();
        const { rows } = await sql(url, 'SELECT pg_terminate_backend($1) AS done', [pid]);
        if (rows[0].done) cuts += 1;
      }
      if (i % 10 === 0) await Promise.all(writes);
    }
    await Promise.all(writes);
    expect(cuts).toBe(4);
    await until(() => heard.length === 60, 'the follower catches up');
    expect(revisions(heard)).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
    expect(names(heard)).toEqual(Array.from({ length: 60 }, (_, i) => `w${i}`));
  });

  it('a replica catches up on commits made while its notifications could not arrive', async () => {
    const url = await cluster.createDatabase();
    const writer = await open(url);
    const follower = await open(url, { pollIntervalMs: 600_000 });
    const heard = log(follower);
    const pid = await follower.listenerPid();
    await sql(url, 'SELECT pg_terminate_backend($1)', [pid]);
    for (let i = 0; i < 5; i++) await write(writer, `while-cut-${i}`);
    await until(() => heard.length === 5, 'the follower catches up after reconnecting');
    expect(names(heard)).toEqual(['while-cut-0', 'while-cut-1', 'while-cut-2', 'while-cut-3', 'while-cut-4']);
  });

  it('a read on one replica reflects writes acknowledged on another, and its listeners have heard them', async () => {
    const url = await cluster.createDatabase();
    const [a, b] = [await open(url), await open(url, { pollIntervalMs: 600_000 })];
    const heard = log(b);
    await a.write(async (tx) => {
      await tx.putApplication({ name: 'web', revision: await tx.revision() });
      await tx.appendChange('', { kind: 'registry', what: 'application', name: 'web' });
    });
    const seen = await b.read(async (tx) => ({ app: await tx.getApplication('web'), revision: tx.readRevision() }));
    expect(seen).toEqual({ app: { name: 'web', revision: 1 }, revision: 1 });
    expect(revisions(heard)).toEqual([1]);
    expect(b.currentRevision()).toBe(1);
  });

  it('compaction by one replica is seen by the others', async () => {
    const url = await cluster.createDatabase();
    const [a, b] = [await open(url), await open(url)];
    for (let i = 0; i < 4; i++) await write(a, `c${i}`);
    await a.compact(3);
    const error = await b.changesSince(1, 10).catch((e: unknown) => e);
    expect(error).toMatchObject({ reason: 'REVISION_COMPACTED' });
    await write(a, 'c4');
    await until(() => b.compactedRevision() === 3, 'b learns the compaction point');
  });
});

describe('a database restored from a backup', () => {
  it('goes on past the clock with its change log compacted there, and is refused while a replica serves it', async () => {
    // A database without relgate's data (a mistyped name, a restore that did not happen) is refused, and left empty.
    const empty = await cluster.createDatabase();
    await expect(startOverAfterRestore(empty)).rejects.toMatchObject({ code: Code.FAILED_PRECONDITION, reason: 'NOT_RELGATE_DATABASE' });
    expect((await sql(empty, "SELECT to_regclass('state')::text AS state")).rows[0].state).toBeNull();
    const url = await cluster.createDatabase();
    const store = await open(url);
    for (let i = 0; i < 3; i++) await store.write(async (tx) => tx.appendChange('r1', { kind: 'registry', what: 'test', name: `n${i}` }));
    await expect(startOverAfterRestore(url)).rejects.toMatchObject({ code: Code.FAILED_PRECONDITION, reason: 'DATABASE_IN_USE' });
    await store.close();
    const now = Date.now();
    expect(await startOverAfterRestore(url, now)).toBe(now * 1000);
    const restored = await open(url);
    try {
      expect([restored.currentRevision(), restored.compactedRevision()]).toEqual([now * 1000, now * 1000]);
      await expect(restored.changesSince(3, 100)).rejects.toMatchObject({ code: Code.OUT_OF_RANGE, reason: 'REVISION_COMPACTED' });
      expect(await restored.write(async (tx) => tx.revision())).toBe(now * 1000 + 1);
    } finally {
      await restored.close();
    }
  });
});

describe('watcher presence across replicas', () => {
  it('counts live watchers of every replica, until they end or their replica goes silent', async () => {
    const url = await cluster.createDatabase();
    const presence = { heartbeatMs: 100, staleMs: 1_000 };
    const [a, b] = [await open(url, { presence }), await open(url, { presence })];
    await a.write(async (tx) => {
      await tx.putRelationUnit({ relation_id: 'r1', unit: 'ca/0', side: 'responder', revision: await tx.revision() });
      await tx.appendChange('r1', { kind: 'registry', what: 'test', name: 'join' });
    });
    expect(await b.presence.isWatched('r1', 'responder')).toBe(false);
    const removeOne = await a.presence.add({ unit: 'ca/0', side: 'responder', relationId: 'r1', interface: '' });
    const removeAll = await a.presence.add({ unit: 'ca/0', side: 'responder', relationId: '', interface: '' });
    expect(await b.presence.isWatched('r1', 'responder')).toBe(true);
    expect(await b.presence.isWatched('r1', 'responder', 'ca/0')).toBe(true);
    expect(await b.presence.isWatched('r1', 'responder', 'ca/1')).toBe(false);
    expect(await b.presence.isWatched('r1', 'requester')).toBe(false);
    expect(await b.presence.isWatched('r2', 'responder')).toBe(false);
    removeOne();
    // The watch of every relation still covers r1, through the membership.
    await until(async () => (await sql(url, "SELECT count(*)::int AS n FROM watchers WHERE relation_id = 'r1'")).rows[0].n === 0, 'the ended watcher is gone');
    expect(await b.presence.isWatched('r1', 'responder')).toBe(true);
    // A replica that stops beating stops counting; its next beat brings it back.
    await sql(url, "UPDATE replicas SET heartbeat = now() - interval '1 hour' WHERE id = $1", [a.presence.replica]);
    expect(await b.presence.isWatched('r1', 'responder')).toBe(false);
    await until(() => b.presence.isWatched('r1', 'responder'), 'the heartbeat resumes');
    // Cleared away by another replica: the next beat writes its watchers again.
    await sql(url, 'DELETE FROM replicas WHERE id = $1', [a.presence.replica]);
    expect(await b.presence.isWatched('r1', 'responder')).toBe(false);
    await until(() => b.presence.isWatched('r1', 'responder'), 'the watchers are written again');
    removeAll();
    await until(async () => !(await b.presence.isWatched('r1', 'responder')), 'the last watcher is gone');
  });

  it("counts a watch of every relation of one interface for that interface's relations only", async () => {
    const url = await cluster.createDatabase();
    const [a, b] = [await open(url), await open(url)];
    await a.write(async (tx) => {
      for (const relationId of ['http:1', 'tls-certificates:2', 'http-proxy:3']) {
        await tx.putRelationUnit({ relation_id: relationId, unit: 'ca/0', side: 'responder', revision: await tx.revision() });
      }
      await tx.appendChange('', { kind: 'registry', what: 'test', name: 'joins' });
    });
    const remove = await a.presence.add({ unit: 'ca/0', side: 'responder', relationId: '', interface: 'http' });
    const watched = async () => Promise.all(['http:1', 'tls-certificates:2', 'http-proxy:3'].map((relationId) => b.presence.isWatched(relationId, 'responder')));
    expect(await watched()).toEqual([true, false, false]);
    remove();
    await until(async () => !(await watched()).includes(true), 'the watcher is gone');
  });
});

