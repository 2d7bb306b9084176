// SQLite-only behaviour: opening a database written by an older relgate, the
// revision a reopened store carries on from, and the bounded caches of
// records in front of the database.
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, mkdirSync, mkdtempSync, openSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { Code } from '../src/errors.ts';
import { Checkpointer } from '../src/store/checkpointer.ts';
import { RecordCache, UndoLog } from '../src/store/record-cache.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import type { ChangeData, CheckpointResult, RequestRecord } from '../src/store/store.ts';

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

function tempFile(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'relgate-sqlite-'));
  dirs.push(dir);
  return path.join(dir, 'relgate.db');
}

/** Rewrites the change log as relgate wrote it before version 2: a row per change, keyed by revision and position. */
function changeLogRowPerChange(db: Database.Database): void {
  db.exec(`
    CREATE TABLE changes_v1 (revision INTEGER NOT NULL, idx INTEGER NOT NULL, relation_id TEXT NOT NULL, time INTEGER NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (revision, idx)) STRICT;
    INSERT INTO changes_v1
      SELECT e.value ->> 0, row_number() OVER (PARTITION BY e.value ->> 0 ORDER BY c.revision, e.key) - 1, e.value ->> 2, e.value ->> 1, e.value -> 3
      FROM changes c, json_each(c.doc) e ORDER BY 1, 2 DESC;
    DROP TABLE changes;
    ALTER TABLE changes_v1 RENAME TO changes;
    CREATE INDEX changes_by_time ON changes (time);
    PRAGMA user_version = 1;`);
}

/** Rewrites the change log as relgate wrote it before version 3: a row per revision, its changes as [relation_id, change] pairs. */
function changeLogRowPerRevision(db: Database.Database): void {
  db.exec(`
    CREATE TABLE changes_v2 (revision INTEGER PRIMARY KEY, time INTEGER NOT NULL, doc TEXT NOT NULL) STRICT;
    INSERT INTO changes_v2
      SELECT e.value ->> 0, max(e.value ->> 1), json_group_array(json_array(e.value ->> 2, e.value -> 3) ORDER BY c.revision, e.key)
      FROM changes c, json_each(c.doc) e GROUP BY e.value ->> 0;
    DROP TABLE changes;
    ALTER TABLE changes_v2 RENAME TO changes;
    CREATE INDEX changes_by_time ON changes (time);
    PRAGMA user_version = 2;`);
}

const registered = (name: string): ChangeData => ({ kind: 'registry', what: 'test', name });

describe('sqlite store upgrades', () => {
  it.each([
    { layout: 'a row per change', downgrade: changeLogRowPerChange, rows: 5 },
    { layout: 'a row per revision', downgrade: changeLogRowPerRevision, rows: 3 },
  ])('a change log with $layout becomes a row per commit, each change kept in order with its revision, relation and time', async ({ downgrade, rows }) => {
    const file = tempFile();
    const store = new SqliteStore({ path: file });
    await store.write(async (tx) => tx.appendChange('', registered('first')));
    // Two writes issued together: one commit, one row of the log.
    await Promise.all([
      store.write(async (tx) => {
        for (const [relationId, name] of [['r1', 'a'], ['r2', 'b'], ['r1', 'c']] as const) await tx.appendChange(relationId, registered(name));
      }),
      store.write(async (tx) => tx.appendChange('r2', registered('last'))),
    ]);
    const before = await store.changesSince(0, 100);
    await store.close();
    expect(before.changes.map((change) => [change.revision, change.index, change.relation_id])).toEqual([
      [1, 0, ''], [2, 0, 'r1'], [2, 1, 'r2'], [2, 2, 'r1'], [3, 0, 'r2'],
    ]);

    const db = new Database(file);
    expect(db.prepare('SELECT count(*) AS n FROM changes').get()).toEqual({ n: 2 });
    downgrade(db);
    expect(db.prepare('SELECT count(*) AS n FROM changes').get()).toEqual({ n: rows });
    db.close();

    const upgraded = new SqliteStore({ path: file });
    expect(await upgraded.changesSince(0, 100)).toEqual(before);
    expect(upgraded.currentRevision()).toBe(3);
    await upgraded.write(async (tx) => tx.appendChange('r1', registered('after')));
    expect((await upgraded.changesSince(3, 100)).changes.map((change) => [change.revision, change.data])).toEqual([[4, registered('after')]]);
    await upgraded.close();

    const check = new Database(file, { readonly: true });
    expect(check.pragma('user_version', { simple: true })).toBe(3);
    expect(check.prepare('SELECT count(*) AS n FROM changes').get()).toEqual({ n: 4 });
    check.close();
  });

  it('a database from before the pending index gets the column filled and the index built, keeping every request', async () => {
    const file = tempFile();
    const store = new SqliteStore({ path: file });
    await store.write(async (tx) => tx.appendChange('r', registered('web')));
    const states = ['pending', 'answered', 'pending', 'expired'] as const;
    await store.write(async (tx) => {
      for (const [i, state] of states.entries()) await tx.putRequest(request(`q${i}`, i + 1, state));
    });
    await store.close();

    // Back to the older schema: a row per change, no pending column, no index, user_version 0.
    const db = new Database(file);
    changeLogRowPerChange(db);
    db.exec('DROP INDEX requests_pending; ALTER TABLE requests DROP COLUMN pending; PRAGMA user_version = 0;');
    db.close();

    const upgraded = new SqliteStore({ path: file });
    const list = (pendingOnly: boolean) =>
      upgraded.read(async (tx) => (await tx.listRequests({ relationIds: ['r'], afterCreateRevision: 0, limit: 10, pendingOnly })).map((r) => r.request_id));
    expect(await list(true)).toEqual(['q0', 'q2']);
    expect(await list(false)).toEqual(['q0', 'q1', 'q2', 'q3']);
    expect((await upgraded.changesSince(0, 10)).changes.map((change) => change.data)).toEqual([registered('web')]);
    await upgraded.close();

    const check = new Database(file, { readonly: true });
    expect(check.pragma('user_version', { simple: true })).toBe(3);
    const plan = check.prepare("EXPLAIN QUERY PLAN SELECT doc FROM requests WHERE relation_id = 'r' AND create_revision > 0 AND pending = 1 ORDER BY create_revision").all() as { detail: string }[];
    expect(plan.map((row) => row.detail).join('\n')).toContain('requests_pending');
    check.close();
  });
});

describe('databases the store refuses', () => {
  /** The error opening a store on the file throws, and what the file's header says after. */
  function refusal(file: string): { error: unknown; header: unknown } {
    let error: unknown;
    try {
      new SqliteStore({ path: file });
    } catch (thrown) {
      error = thrown;
    }
    const db = new Database(file, { readonly: true });
    const header = { version: db.pragma('user_version', { simple: true }), application: db.pragma('application_id', { simple: true }), journal: db.pragma('journal_mode', { simple: true }) };
    db.close();
    return { error, header };
  }

  it('one a newer relgate wrote, changing nothing, also one that predates the application id', async () => {
    const file = tempFile();
    const store = new SqliteStore({ path: file });
    await store.write(async (tx) => tx.appendChange('r1', registered('kept')));
    await store.close();
    for (const application of [0x726c6774, 0]) {
      const db = new Database(file);
      db.pragma('user_version = 99');
      db.pragma(`application_id = ${application}`);
      db.close();
      const { error, header } = refusal(file);
      expect(error).toMatchObject({ code: Code.FAILED_PRECONDITION, reason: 'SCHEMA_TOO_NEW', message: expect.stringContaining('schema version 99; this one knows up to 3') });
      expect(header).toEqual({ version: 99, application, journal: 'wal' });
    }
  });

  it("another application's database, changing nothing; an empty file becomes relgate's", async () => {
    const file = tempFile();
    const db = new Database(file);
    db.exec('CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)');
    db.pragma('user_version = 1');
    db.close();
    const { error, header } = refusal(file);
    expect(error).toMatchObject({ code: Code.FAILED_PRECONDITION, reason: 'NOT_RELGATE_DATABASE', message: expect.stringContaining('holds tables accounts') });
    expect(header).toEqual({ version: 1, application: 0, journal: 'delete' });
    const check = new Database(file, { readonly: true });
    expect(check.prepare("SELECT name FROM sqlite_schema WHERE type = 'table'").pluck().all()).toEqual(['accounts']);
    check.close();

    const empty = tempFile();
    writeFileSync(empty, '');
    const store = new SqliteStore({ path: empty });
    await store.close();
    const created = new Database(empty, { readonly: true });
    expect([created.pragma('application_id', { simple: true }), created.pragma('user_version', { simple: true })]).toEqual([0x726c6774, 3]);
    created.close();
  });
});

describe('the revision after a reopen', () => {
  const reopened = async (file: string) => {
    const store = new SqliteStore({ path: file });
    const revision = store.currentRevision();
    await store.close();
    return revision;
  };

  it('is the last revision, whether the last write logged changes or only took a revision', async () => {
    const file = tempFile();
    const store = new SqliteStore({ path: file });
    for (let i = 0; i < 3; i++) await store.write(async (tx) => tx.appendChange('r1', registered(`n${i}`)));
    await store.close();
    expect(await reopened(file)).toBe(3);

    const again = new SqliteStore({ path: file });
    await again.write(async (tx) => tx.appendChange('r1', registered('logged')));
    await again.write(async (tx) => tx.putApplication({ name: 'web', revision: await tx.revision() }));
    await again.close();
    expect(await reopened(file)).toBe(5);
  });

  it('moves past the clock after a restore, the whole change log compacted there, and stays there', async () => {
    const file = tempFile();
    const store = new SqliteStore({ path: file });
    for (let i = 0; i < 3; i++) await store.write(async (tx) => tx.appendChange('r1', registered(`n${i}`)));
    const now = Date.now();
    const revision = await store.startOverAfterRestore(now);
    expect([revision, store.compactedRevision()]).toEqual([now * 1000, now * 1000]);
    await expect(store.changesSince(3, 100)).rejects.toMatchObject({ code: Code.OUT_OF_RANGE, reason: 'REVISION_COMPACTED' });
    expect(await store.write(async (tx) => tx.revision())).toBe(revision + 1);
    await store.close();
    expect(await reopened(file)).toBe(revision + 1);
    // A clock behind the revision (set back, or a second restore within a microsecond's worth of writes): one past it.
    const again = new SqliteStore({ path: file });
    expect(await again.startOverAfterRestore(0)).toBe(revision + 2);
    await again.close();
  });

  it('is not taken again after the whole change log is compacted', async () => {
    const file = tempFile();
    const store = new SqliteStore({ path: file });
    for (let i = 0; i < 3; i++) await store.write(async (tx) => tx.appendChange('r1', registered(`n${i}`)));
    await store.compact(3);
    await store.close();
    const db = new Database(file, { readonly: true });
    expect(db.prepare('SELECT count(*) AS n FROM changes').get()).toEqual({ n: 0 });
    db.close();

    const again = new SqliteStore({ path: file });
    expect(again.currentRevision()).toBe(3);
    expect(await again.write(async (tx) => tx.revision())).toBe(4);
    await again.close();
  });
});

describe('one store per file', () => {
  it('refuses a second store on a file another holds, and opens once it has closed, also after a start that failed', async () => {
    const file = tempFile();
    const first = new SqliteStore({ path: file });
    await first.write(async (tx) => tx.appendChange('r1', registered('kept')));
    let refused: unknown;
    try {
      new SqliteStore({ path: file });
    } catch (error) {
      refused = error;
    }
    expect(refused).toMatchObject({ code: Code.FAILED_PRECONDITION, reason: 'DATABASE_IN_USE', metadata: { path: file, lock_file: `${file}-lock` } });
    // The refused store wrote nothing and took nothing: the first goes on, and a reopen after it carries on from it.
    expect(await first.write(async (tx) => tx.revision())).toBe(2);
    await first.close();
    const second = new SqliteStore({ path: file });
    expect(second.currentRevision()).toBe(2);
    await second.close();

    // A second name of the file (a symbolic link) leads to the same lock, and a store opened by it works.
    const alias = path.join(path.dirname(file), 'alias.db');
    symlinkSync(file, alias);
    const byAlias = new SqliteStore({ path: alias });
    expect(() => new SqliteStore({ path: file })).toThrow(/is in use by another gateway/);
    expect(await byAlias.write(async (tx) => tx.revision())).toBe(3);
    await byAlias.close();
    // Also a link made before its target: SQLite makes the target, and the lock is the target's.
    const target = path.join(path.dirname(file), 'later.db');
    const early = path.join(path.dirname(file), 'early.db');
    symlinkSync(target, early);
    const byEarlyLink = new SqliteStore({ path: early });
    expect(() => new SqliteStore({ path: target })).toThrow(/is in use by another gateway/);
    await byEarlyLink.close();

    // A file that is no database fails the start, and the lock goes with it.
    const notDatabase = tempFile();
    writeFileSync(notDatabase, 'not a database, but long enough for SQLite to read a header from it: '.repeat(4));
    expect(() => new SqliteStore({ path: notDatabase })).toThrow(/not a database/);
    rmSync(notDatabase);
    const fresh = new SqliteStore({ path: notDatabase });
    expect(fresh.currentRevision()).toBe(0);
    await fresh.close();
  });
});

describe('the checkpoint thread', () => {
  it('copies the WAL into the database file while writes go on, every 64 commits, and the data stays whole', async () => {
    const file = tempFile();
    const store = new SqliteStore({ path: file });
    const sizeBefore = statSync(file).size;
    let checkpointed: (result: CheckpointResult) => void = () => {};
    const first = new Promise<CheckpointResult>((resolve) => (checkpointed = resolve));
    store.onCheckpoint((result) => checkpointed(result));
    for (let i = 0; i < 64; i++) await store.write(async (tx) => tx.appendChange('r1', registered(`n${i}`)));
    const result = await first;
    if ('error' in result) throw new Error(result.error);
    expect(result.checkpointed).toBeGreaterThan(0);
    expect(result.checkpointed).toBeLessThanOrEqual(result.log);
    // SQLite's own checkpoint waits for 10,000 pages: the file grew by the thread's copy.
    expect(statSync(file).size).toBeGreaterThan(sizeBefore);
    for (let i = 64; i < 200; i++) await store.write(async (tx) => tx.appendChange('r1', registered(`n${i}`)));
    await store.close();

    const again = new SqliteStore({ path: file });
    const { changes } = await again.changesSince(0, 1_000);
    expect(changes.map((change) => change.data)).toEqual(Array.from({ length: 200 }, (_, i) => registered(`n${i}`)));
    await again.close();
  });

  it('cuts a WAL that a long reader grew back to its limit once it starts over', async () => {
    const file = tempFile();
    const limit = 256 * 1024;
    const store = new SqliteStore({ path: file, checkpointEveryCommits: 1, walSizeLimitBytes: limit });
    // One checkpoint per commit, answered in order: after n commits, the n-th result describes the WAL they left.
    let commits = 0;
    const results: CheckpointResult[] = [];
    let heard = () => {};
    store.onCheckpoint((result) => {
      results.push(result);
      heard();
    });
    const write = async (i: number) => {
      await store.write(async (tx) => tx.appendChange('r1', registered(`${'x'.repeat(4_000)}${i}`)));
      commits += 1;
    };
    const lastCheckpoint = async () => {
      while (results.length < commits) await new Promise<void>((resolve) => (heard = resolve));
      return results[commits - 1] as CheckpointResult;
    };
    const reader = new Database(file, { readonly: true });
    reader.exec('BEGIN');
    reader.prepare('SELECT count(*) FROM meta').get();
    // The reader holds its view: nothing past it is copied, and the WAL grows.
    for (let i = 0; i < 300; i++) await write(i);
    expect(statSync(`${file}-wal`).size).toBeGreaterThan(4 * limit);
    reader.exec('COMMIT');
    reader.close();
    // Once a checkpoint has copied the whole WAL, the next write starts it over, and it is cut back.
    const copiedAll = (result: CheckpointResult) => !('error' in result) && result.checkpointed === result.log;
    for (let i = 300; i < 400 && !copiedAll(await lastCheckpoint()); i++) await write(i);
    expect(copiedAll(await lastCheckpoint())).toBe(true);
    await write(400);
    expect(statSync(`${file}-wal`).size).toBeLessThanOrEqual(limit);
    await store.close();
  });

  it('keeps a process with nothing else to do up until the store has closed', () => {
    const file = tempFile();
    const store = JSON.stringify(path.resolve('src/store/sqlite-store.ts'));
    // 64 commits start the thread, which is unref'd while it runs.
    const script = `const { SqliteStore } = await import(${store});
      const store = new SqliteStore({ path: ${JSON.stringify(file)} });
      for (let i = 0; i < 64; i++) await store.write(async (tx) => tx.appendChange('r1', { kind: 'registry', what: 'unit', name: 'n' + i }));
      await store.close();
      console.log('closed');`;
    // A file, not -e: workers inherit the process's --input-type, and refuse it.
    const program = path.join(path.dirname(file), 'close.mjs');
    writeFileSync(program, script);
    expect(execFileSync(process.execPath, [program], { encoding: 'utf8' })).toBe('closed\n');
  });

  it('that stops says why, starts again at the next checkpoint, and closing it afterwards still returns', async () => {
    const file = path.join(path.dirname(tempFile()), 'later', 'relgate.db');
    const results: CheckpointResult[] = [];
    let heard = () => {};
    const checkpointer = new Checkpointer(file, 1, (result) => {
      results.push(result);
      heard();
    });
    const next = () => new Promise<void>((resolve) => (heard = resolve));
    let arrived = next();
    checkpointer.committed();
    await arrived;
    expect(results).toEqual([{ error: expect.stringMatching(/^the checkpoint thread stopped: /) }]);
    // The database is there now: the next checkpoint starts a new thread, which finds it.
    mkdirSync(path.dirname(file));
    const db = new Database(file);
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE t (x INTEGER)');
    arrived = next();
    checkpointer.committed();
    await arrived;
    expect(results[1]).toEqual({ log: expect.any(Number), checkpointed: expect.any(Number) });
    await checkpointer.close();
    db.close();
  });

  it("that fails is logged once, and again once it works; without a log it is a process warning", async () => {
    const file = tempFile();
    const dir = path.dirname(file);
    const logged: [string, object, string][] = [];
    const log = { warn: (details: object, message: string) => logged.push(['warn', details, message]), info: (details: object, message: string) => logged.push(['info', details, message]) };
    const store = new SqliteStore({ path: file, checkpointEveryCommits: 1, log });
    const results: CheckpointResult[] = [];
    let heard = () => {};
    store.onCheckpoint((result) => {
      results.push(result);
      heard();
    });
    const checkpointAfterWrite = async () => {
      const arrived = new Promise<void>((resolve) => (heard = resolve));
      await store.write(async (tx) => tx.appendChange('r1', registered(`n${results.length}`)));
      await arrived;
    };
    // The thread opens the database by its path: moved away, the file cannot be found, while the store's own
    // connection, open already, goes on.
    renameSync(dir, `${dir}-moved`);
    try {
      await checkpointAfterWrite();
      await checkpointAfterWrite();
    } finally {
      renameSync(`${dir}-moved`, dir);
    }
    await checkpointAfterWrite();
    await checkpointAfterWrite();
    expect(results.map((result) => 'error' in result)).toEqual([true, true, false, false]);
    expect(logged).toEqual([
      ['warn', { error: expect.stringContaining('the checkpoint thread stopped') }, expect.stringContaining('the SQLite checkpoint thread failed')],
      ['info', {}, 'the SQLite checkpoint thread works again'],
    ]);
    await store.close();

    const warned = once(process, 'warning') as Promise<[Error & { code?: string }]>;
    const quiet = new SqliteStore({ path: path.join(dir, 'quiet.db'), checkpointEveryCommits: 1 });
    renameSync(dir, `${dir}-moved`);
    try {
      await quiet.write(async (tx) => tx.appendChange('r1', registered('n')));
      const [warning] = await warned;
      expect([warning.code, warning.message]).toEqual(['RELGATE_CHECKPOINTER', expect.stringContaining('the SQLite checkpoint thread failed')]);
    } finally {
      renameSync(`${dir}-moved`, dir);
    }
    await quiet.close();
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

describe('storage failures', () => {
  /** Opens a store and returns the database connection it made, for what a test must do to it underneath. */
  function openWithConnection(file: string): { store: SqliteStore; db: Database.Database } {
    const prepare = Database.prototype.prepare;
    let db: Database.Database | undefined;
    Database.prototype.prepare = function (this: Database.Database, ...args: Parameters<typeof prepare>) {
      db ??= this;
      return prepare.apply(this, args);
    } as typeof prepare;
    try {
      const store = new SqliteStore({ path: file, checkpointEveryCommits: 0 });
      if (!db) throw new Error('the store prepared no statement');
      return { store, db };
    } finally {
      Database.prototype.prepare = prepare;
    }
  }

  const putApplication = (store: SqliteStore, name: string) =>
    store.write(async (tx) => {
      await tx.putApplication({ name, revision: await tx.revision() });
      await tx.appendChange('', { kind: 'registry', what: 'application', name });
      return tx.revision();
    });

  const stored = (store: SqliteStore) => store.read(async (tx) => (await tx.listApplications()).map((app) => app.name));

  it('a damaged page fails the read that meets it with DATA_LOSS, not INTERNAL; the store goes on', async () => {
    const file = tempFile();
    const store = new SqliteStore({ path: file });
    for (let i = 0; i < 200; i++) await store.write(async (tx) => tx.appendChange('r1', registered(`${'x'.repeat(500)}${i}`)));
    await store.close();
    const db = new Database(file);
    const pages = db.prepare<[], number>("SELECT pageno FROM dbstat WHERE name = 'changes' AND pagetype = 'leaf' ORDER BY pageno").pluck().all();
    const pageSize = db.pragma('page_size', { simple: true }) as number;
    db.close();
    // A leaf in the middle of the log: opening the store reads only its last row.
    const damaged = pages[Math.floor(pages.length / 2)] as number;
    const fd = openSync(file, 'r+');
    writeSync(fd, Buffer.alloc(pageSize, 0xa5), 0, pageSize, (damaged - 1) * pageSize);
    closeSync(fd);
    const reopened = new SqliteStore({ path: file });
    await expect(reopened.changesSince(0, 1_000)).rejects.toMatchObject({ code: Code.DATA_LOSS, reason: 'STORE_CORRUPT' });
    expect(await reopened.write(async (tx) => tx.revision())).toBe(201);
    await reopened.close();
  });

  it('a full disk, on which SQLite rolls the whole transaction back, fails every write of the batch with UNAVAILABLE and keeps nothing of them; writes go on once there is room', async () => {
    const file = tempFile();
    const { store, db } = openWithConnection(file);
    expect(await putApplication(store, 'before')).toBe(1);
    // No page beyond those the database has: SQLite's own SQLITE_FULL, as from a full disk.
    db.pragma(`max_page_count = ${db.pragma('page_count', { simple: true }) as number}`);
    const results = await Promise.allSettled([
      putApplication(store, 'earlier-in-batch'),
      store.write(async (tx) => {
        // The relation waits for the commit; the request does not fit.
        await tx.putRelation({ id: 'r1', interface: 'i', version: 1, requester_application: 'a', requester_endpoint: 'e', responder_application: 'b', responder_endpoint: 'e', create_revision: 2, revision: 2, counters: { requests: 1 } });
        await tx.appendChange('r1', { kind: 'registry', what: 'relation', name: 'r1' });
        await tx.putRequest({ ...request('big', 2, 'pending'), fields: { blob: 'x'.repeat(1 << 20) } });
      }),
    ]);
    expect(results.map((r) => (r.status === 'fulfilled' ? r.value : [r.reason.code, r.reason.reason, r.reason.cause?.code]))).toEqual([
      [14, 'STORE_UNAVAILABLE', 'SQLITE_FULL'],
      [14, 'STORE_UNAVAILABLE', 'SQLITE_FULL'],
    ]);
    db.pragma('max_page_count = 1073741823');
    expect(await putApplication(store, 'after')).toBe(2);
    const state = async (s: SqliteStore) => [
      await stored(s),
      await s.read(async (tx) => [await tx.getRelation('r1'), await tx.getRequest('big')]),
      s.currentRevision(),
      (await s.changesSince(0, 10)).changes.map((c) => c.revision),
    ];
    const expected = [['after', 'before'], [undefined, undefined], 2, [1, 2]];
    expect(await state(store)).toEqual(expected);
    await store.close();
    const again = new SqliteStore({ path: file });
    expect(await state(again)).toEqual(expected);
    await again.close();
  });
});
