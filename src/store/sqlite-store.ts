// SQLite store (better-sqlite3, WAL). better-sqlite3 is synchronous, so every
// operation runs through one queue; writes that arrive in the same event-loop
// turn share one transaction and one fsync (group commit), each inside its own
// savepoint so a failing write leaves the others intact. Callers hear back
// only after COMMIT, so an acknowledged write is on disk and no reader ever
// sees a write that might still be rolled back. At full durability the WAL is
// fsynced on the thread pool rather than inside COMMIT, so the event loop keeps
// serving while the disk works; callers, readers and watchers still hear of a
// commit only once it is on disk. The small records every write reads come
// from a write-through cache (record-cache.ts): this store is their only writer.
// A worker thread copies the WAL into the database file (checkpointer.ts).
import { closeSync, fdatasync, openSync } from 'node:fs';
import Database from 'better-sqlite3';
import { RelgateError, Code, failedPrecondition } from '../errors.ts';
import { onceWhileFailing, type RunReport } from '../logger.ts';
import { Checkpointer } from './checkpointer.ts';
import { changeLogRow, changesOfLogRows } from './change-log.ts';
import { compactedError, storeUnavailable } from './store-errors.ts';
import { type DatabaseLock, lockDatabaseFile, realPathOf } from './sqlite-lock.ts';
import { copyRelation, DeferredRows, flagsKey, recordCaches, UndoLog } from './record-cache.ts';
import type {
  ApplicationRecord,
  Change,
  ChangeData,
  CheckpointResult,
  CommitListener,
  FlagsRecord,
  RelationRecord,
  RelationUnitRecord,
  RequestPage,
  RequestRecord,
  ResponsePage,
  ResponseRecord,
  Store,
  StoreLog,
  StoreTx,
  UnitRecord,
} from './store.ts';
import { revisionAfterRestore } from './store.ts';

export type Durability = 'full' | 'normal';

export interface SqliteStoreOptions {
  /** File path, or ":memory:". */
  path: string;
  /** full: fsync every commit (survives power loss); normal: survives a process kill. */
  durability?: Durability;
  /** Records each cache of units, relations, memberships and flags keeps at most. */
  cacheEntries?: number;
  /** Commits between two checkpoints of the checkpoint thread; 0 leaves every checkpoint to SQLite's own, inside COMMIT. */
  checkpointEveryCommits?: number;
  /** Where the store tells of checkpoint failures; a process warning without it. */
  log?: StoreLog;
  /** Bytes the WAL file is cut back to when it starts over, after a long reader or a stalled checkpoint grew it. */
  walSizeLimitBytes?: number;
}

/** How often the checkpoint thread copies the WAL: every so many commits (under load, a few times a second). */
export const DEFAULT_CHECKPOINT_EVERY_COMMITS = 64;

/** Above the 10,000 pages (about 40 MB) the WAL reaches under load, so that only a WAL grown past them is cut back. */
export const DEFAULT_WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024;

/** Enough for the units and relations of a large deployment; about 1 KB each at most. */
export const DEFAULT_CACHE_ENTRIES = 50_000;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0), ('compacted', 0), ('relation_number', 0);
CREATE TABLE IF NOT EXISTS applications (name TEXT PRIMARY KEY, doc TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS units (name TEXT PRIMARY KEY, application TEXT NOT NULL, doc TEXT NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS units_by_token ON units (json_extract(doc, '$.token_hash'));
CREATE TABLE IF NOT EXISTS relations (id TEXT PRIMARY KEY, create_revision INTEGER NOT NULL, doc TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS relation_units (relation_id TEXT NOT NULL, unit TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (relation_id, unit)) STRICT;
CREATE INDEX IF NOT EXISTS relation_units_by_unit ON relation_units (unit);
CREATE TABLE IF NOT EXISTS requests (
  id TEXT PRIMARY KEY, relation_id TEXT NOT NULL, create_revision INTEGER NOT NULL,
  due INTEGER, doc TEXT NOT NULL, pending INTEGER NOT NULL DEFAULT 0) STRICT;
CREATE INDEX IF NOT EXISTS requests_by_relation ON requests (relation_id, create_revision);
CREATE INDEX IF NOT EXISTS requests_by_due ON requests (due) WHERE due IS NOT NULL;
-- Pending requests apart, so that NEW listings do not read a relation's history.
CREATE INDEX IF NOT EXISTS requests_pending ON requests (relation_id, create_revision) WHERE pending = 1;
CREATE TABLE IF NOT EXISTS responses (request_id TEXT NOT NULL, responder_unit TEXT NOT NULL, revision INTEGER NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (request_id, responder_unit)) STRICT;
CREATE TABLE IF NOT EXISTS flags (relation_id TEXT NOT NULL, unit TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (relation_id, unit)) STRICT;
-- One row per commit, keyed by its last revision: its changes, in order (see change-log.ts).
CREATE TABLE IF NOT EXISTS changes (revision INTEGER PRIMARY KEY, time INTEGER NOT NULL, doc TEXT NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS changes_by_time ON changes (time);
`;

/** Steps from older schemas, by the user_version they bring the database to; SCHEMA then adds what is new. */
const MIGRATIONS: readonly { version: number; sql: string }[] = [
  {
    version: 1,
    sql: "ALTER TABLE requests ADD COLUMN pending INTEGER NOT NULL DEFAULT 0; UPDATE requests SET pending = json_extract(doc, '$.state') = 'pending';",
  },
  {
    // A row per change wrote three B-trees per change (table, primary key, time); a row per revision writes two per write.
    version: 2,
    sql: `CREATE TABLE changes_by_revision (revision INTEGER PRIMARY KEY, time INTEGER NOT NULL, doc TEXT NOT NULL) STRICT;
INSERT INTO changes_by_revision (revision, time, doc)
  SELECT revision, min(time), json_group_array(json_array(relation_id, json(doc)) ORDER BY idx) FROM changes GROUP BY revision;
DROP TABLE changes;
ALTER TABLE changes_by_revision RENAME TO changes;`,
  },
  {
    // A row per revision wrote both B-trees once per write; a row per commit writes them once per batch of writes.
    version: 3,
    sql: `UPDATE changes SET doc = (
  SELECT json_group_array(json_array(changes.revision, changes.time, e.value ->> 0, e.value -> 1) ORDER BY e.key) FROM json_each(changes.doc) AS e);`,
  },
];

/** The schema version this store writes (SQLite's user_version). */
export const SQLITE_SCHEMA_VERSION = MIGRATIONS.at(-1)?.version ?? 0;

/** SQLite's application id of a relgate database ("rlgt"), in its header: so `file` and relgate itself know it. */
const APPLICATION_ID = 0x726c6774;

/**
 * The tables of a database this store may open. Refuses, before anything is written (journal mode included), a
 * database of another application, and one a newer relgate wrote: an older gateway would misread its change log.
 */
function tablesOfOwnDatabase(db: Database.Database): string[] {
  const tables = db.prepare<[], string>("SELECT name FROM sqlite_schema WHERE type = 'table'").pluck().all();
  // Databases relgate wrote before it set the application id hold its meta and requests tables.
  const ours = db.pragma('application_id', { simple: true }) === APPLICATION_ID || tables.length === 0 || (tables.includes('meta') && tables.includes('requests'));
  if (!ours) throw failedPrecondition('NOT_RELGATE_DATABASE', `${db.name} is not a relgate database (it holds tables ${tables.join(', ')}); name a new file, or one relgate wrote`);
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version > SQLITE_SCHEMA_VERSION) {
    throw failedPrecondition('SCHEMA_TOO_NEW', `the database ${db.name} was written by a newer relgate (schema version ${version}; this one knows up to ${SQLITE_SCHEMA_VERSION}): run that version, or a newer one`);
  }
  return tables;
}

/** Creates the schema, or brings an older database (of the tables found) up to date, in one transaction. */
function migrate(db: Database.Database, tables: readonly string[]): void {
  db.transaction(() => {
    const current = db.pragma('user_version', { simple: true }) as number;
    // A new database gets the whole schema at once; an older one first takes the steps it misses.
    if (tables.includes('requests')) for (const migration of MIGRATIONS) if (migration.version > current) db.exec(migration.sql);
    db.exec(SCHEMA);
    if (current < SQLITE_SCHEMA_VERSION) db.pragma(`user_version = ${SQLITE_SCHEMA_VERSION}`);
    if (db.pragma('application_id', { simple: true }) !== APPLICATION_ID) db.pragma(`application_id = ${APPLICATION_ID}`);
  }).immediate();
}

function prepareStatements(db: Database.Database) {
  return {
    begin: db.prepare('BEGIN IMMEDIATE'),
    commit: db.prepare('COMMIT'),
    savepoint: db.prepare('SAVEPOINT w'),
    release: db.prepare('RELEASE w'),
    rollbackTo: db.prepare('ROLLBACK TO w'),
    meta: db.prepare<[string], { value: number }>('SELECT value FROM meta WHERE key = ?'),
    setMeta: db.prepare('UPDATE meta SET value = ? WHERE key = ?'),
    getApplication: db.prepare<[string], { doc: string }>('SELECT doc FROM applications WHERE name = ?'),
    putApplication: db.prepare('INSERT INTO applications (name, doc) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET doc = excluded.doc'),
    listApplications: db.prepare<[], { doc: string }>('SELECT doc FROM applications ORDER BY name'),
    deleteApplication: db.prepare('DELETE FROM applications WHERE name = ?'),
    getUnit: db.prepare<[string], { doc: string }>('SELECT doc FROM units WHERE name = ?'),
    putUnit: db.prepare('INSERT INTO units (name, application, doc) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET application = excluded.application, doc = excluded.doc'),
    deleteUnit: db.prepare('DELETE FROM units WHERE name = ?'),
    listUnits: db.prepare<[], { doc: string }>('SELECT doc FROM units ORDER BY application, name'),
    listUnitsOf: db.prepare<[string], { doc: string }>('SELECT doc FROM units WHERE application = ? ORDER BY name'),
    unitByToken: db.prepare<[string], { doc: string }>("SELECT doc FROM units WHERE json_extract(doc, '$.token_hash') = ?"),
    getRelation: db.prepare<[string], { doc: string }>('SELECT doc FROM relations WHERE id = ?'),
    putRelation: db.prepare('INSERT INTO relations (id, create_revision, doc) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET create_revision = excluded.create_revision, doc = excluded.doc'),
    deleteRelation: db.prepare('DELETE FROM relations WHERE id = ?'),
    listRelations: db.prepare<[], { doc: string }>('SELECT doc FROM relations ORDER BY create_revision'),
    listRelationUnits: db.prepare<[string], { doc: string }>('SELECT doc FROM relation_units WHERE relation_id = ?'),
    listUnitRelations: db.prepare<[string], { doc: string }>('SELECT doc FROM relation_units WHERE unit = ?'),
    putRelationUnit: db.prepare('INSERT INTO relation_units (relation_id, unit, doc) VALUES (?, ?, ?) ON CONFLICT (relation_id, unit) DO UPDATE SET doc = excluded.doc'),
    deleteRelationUnit: db.prepare('DELETE FROM relation_units WHERE relation_id = ? AND unit = ?'),
    deleteRelationUnits: db.prepare('DELETE FROM relation_units WHERE relation_id = ?'),
    getRequest: db.prepare<[string], { doc: string }>('SELECT doc FROM requests WHERE id = ?'),
    putRequest: db.prepare(
      'INSERT INTO requests (id, relation_id, create_revision, due, pending, doc) VALUES (?, ?, ?, ?, ?, ?) ' +
        'ON CONFLICT (id) DO UPDATE SET due = excluded.due, pending = excluded.pending, doc = excluded.doc',
    ),
    deleteRequest: db.prepare('DELETE FROM requests WHERE id = ?'),
    deleteRelationRequests: db.prepare('DELETE FROM requests WHERE relation_id = ?'),
    listRequests: db.prepare<[string, number, number], { doc: string }>(
      'SELECT doc FROM requests WHERE relation_id IN (SELECT value FROM json_each(?)) AND create_revision > ? ORDER BY create_revision LIMIT ?',
    ),
    // One relation, the common case: the index gives the order, with no list to expand and no sort.
    listRelationRequests: db.prepare<[string, number, number], { doc: string }>(
      'SELECT doc FROM requests WHERE relation_id = ? AND create_revision > ? ORDER BY create_revision LIMIT ?',
    ),
    listRelationPendingRequests: db.prepare<[string, number, number], { doc: string }>(
      'SELECT doc FROM requests WHERE relation_id = ? AND create_revision > ? AND pending = 1 ORDER BY create_revision LIMIT ?',
    ),
    listPendingRequests: db.prepare<[string, number, number], { doc: string }>(
      'SELECT doc FROM requests WHERE relation_id IN (SELECT value FROM json_each(?)) AND create_revision > ? AND pending = 1 ORDER BY create_revision LIMIT ?',
    ),
    listDue: db.prepare<[number, number], { doc: string }>('SELECT doc FROM requests WHERE due IS NOT NULL AND due <= ? ORDER BY due LIMIT ?'),
    listResponses: db.prepare<[string, number, number], { doc: string }>('SELECT doc FROM responses WHERE request_id = ? AND revision > ? ORDER BY revision LIMIT ?'),
    putResponse: db.prepare('INSERT INTO responses (request_id, responder_unit, revision, doc) VALUES (?, ?, ?, ?)'),
    deleteResponses: db.prepare('DELETE FROM responses WHERE request_id = ?'),
    deleteRelationResponses: db.prepare('DELETE FROM responses WHERE request_id IN (SELECT id FROM requests WHERE relation_id = ?)'),
    getFlags: db.prepare<[string, string], { doc: string }>('SELECT doc FROM flags WHERE relation_id = ? AND unit = ?'),
    putFlags: db.prepare('INSERT INTO flags (relation_id, unit, doc) VALUES (?, ?, ?) ON CONFLICT (relation_id, unit) DO UPDATE SET doc = excluded.doc'),
    deleteFlags: db.prepare('DELETE FROM flags WHERE relation_id = ? AND unit = ?'),
    deleteRelationFlags: db.prepare('DELETE FROM flags WHERE relation_id = ?'),
    appendChanges: db.prepare('INSERT INTO changes (revision, time, doc) VALUES (?, ?, ?)'),
    // The rows up to the first that reaches upTo: a row holds a whole commit, so it may hold changes past upTo.
    changesSince: db.prepare<[{ after: number; upTo: number }], { doc: string }>(
      'SELECT doc FROM changes WHERE revision > @after AND revision <= coalesce((SELECT min(revision) FROM changes WHERE revision >= @upTo), @upTo) ORDER BY revision',
    ),
    compact: db.prepare('DELETE FROM changes WHERE revision <= ?'),
    lastLoggedRevision: db.prepare<[], { revision: number }>('SELECT revision FROM changes ORDER BY revision DESC LIMIT 1'),
    // Times grow with revisions, so the newest change by time is a B-tree seek (max(revision) scanned the log).
    revisionAt: db.prepare<[number], { revision: number | null }>(
      'SELECT revision FROM changes INDEXED BY changes_by_time WHERE time <= ? ORDER BY time DESC, revision DESC LIMIT 1',
    ),
  };
}

type Statements = ReturnType<typeof prepareStatements>;

type Caches = ReturnType<typeof newCaches>;

/** The records every write reads, and the relations written since the batch began. */
function newCaches(maxEntries: number, statements: Statements) {
  return {
    ...recordCaches(maxEntries),
    // Every request change rewrites its relation's counters: at 64 in flight a batch holds about 11 writes, mostly on one relation.
    unwrittenRelations: new DeferredRows<RelationRecord>(copyRelation, (id, relation) => statements.putRelation.run(id, relation.create_revision, JSON.stringify(relation))),
  };
}


type Task = () => Promise<void>;

export class SqliteStore implements Store {
  readonly #db: Database.Database;
  readonly #listeners: CommitListener[] = [];
  readonly #queue: Task[] = [];
  #running = false;
  #batchOpen = false;
  #commitScheduled = false;
  /** Settlements waiting for the open batch to commit. */
  #waiting: { resolve: () => void; reject: (error: unknown) => void }[] = [];
  #batchChanges: Change[] = [];
  #revision: number;
  #compacted: number;
  #closed = false;
  readonly #stmts: Statements;
  readonly #caches: Caches;
  /** The WAL, when the store fsyncs it itself (full durability). */
  readonly #walFd: number | undefined;
  readonly #checkpointer: Checkpointer | undefined;
  /** The operator hears of the first failed checkpoint of the checkpoint thread, and of the next that works. */
  readonly #checkpoints: RunReport;
  /** The file held no database yet: this store created it. */
  readonly created: boolean;
  /** This store's hold on its file; none for a database in memory. */
  readonly #lock: DatabaseLock | undefined;
  #syncing = false;
  /** A batch waits for the running fsync: it commits next, so one fsync covers all of it. */
  #commitAfterSync = false;
  /** What waits for the running fsync of the WAL, in commit order. */
  #afterSync: (() => void)[] = [];

  constructor(options: SqliteStoreOptions) {
    this.#checkpoints = checkpointReport(options.log);
    this.#lock = isFile(options.path) ? lockDatabaseFile(options.path) : undefined;
    let db: Database.Database | undefined;
    try {
      db = new Database(options.path);
      this.#db = db;
      const tables = tablesOfOwnDatabase(db);
      this.created = tables.length === 0;
      const wal = this.#db.pragma('journal_mode = WAL', { simple: true }) === 'wal';
      // NORMAL in WAL mode writes commits without fsync; at full durability the store then fsyncs the WAL before anyone hears of the commit.
      const syncWal = wal && options.durability !== 'normal';
      this.#db.pragma(`synchronous = ${syncWal || options.durability === 'normal' ? 'NORMAL' : 'FULL'}`);
      this.#db.pragma('busy_timeout = 5000');
      // The checkpoint thread copies the WAL as it grows; this checkpoint, inside a COMMIT on the event loop, copies
      // what is left and lets the WAL start over (rarely: fewer, larger ones copy a page rewritten by many commits once).
      this.#db.pragma('wal_autocheckpoint = 10000');
      // Without a limit, a WAL that a long reader grew to gigabytes keeps its size on disk until the gateway stops.
      this.#db.pragma(`journal_size_limit = ${options.walSizeLimitBytes ?? DEFAULT_WAL_SIZE_LIMIT_BYTES}`);
      migrate(this.#db, tables);
      // SQLite names the WAL after the database file a symbolic link leads to.
      this.#walFd = syncWal ? openSync(`${realPathOf(this.#db.name)}-wal`, 'r') : undefined;
      const checkpointEvery = options.checkpointEveryCommits ?? DEFAULT_CHECKPOINT_EVERY_COMMITS;
      this.#checkpointer = wal && checkpointEvery > 0 ? new Checkpointer(this.#db.name, checkpointEvery, (result) => this.#onCheckpoint(result)) : undefined;
      this.#stmts = prepareStatements(this.#db);
      this.#caches = newCaches(options.cacheEntries ?? DEFAULT_CACHE_ENTRIES, this.#stmts);
      this.#compacted = this.#stmts.meta.get('compacted')?.value ?? 0;
      // meta holds the revision only when the change log does not: see #commit.
      const logged = this.#stmts.lastLoggedRevision.get()?.revision ?? 0;
      this.#revision = Math.max(this.#stmts.meta.get('revision')?.value ?? 0, logged, this.#compacted);
      this.#loggedRevision = this.#revision;
    } catch (error) {
      if (this.#walFd !== undefined) closeSync(this.#walFd);
      db?.close();
      this.#lock?.release();
      throw error;
    }
  }

  onCommit(listener: CommitListener): void {
    this.#listeners.push(listener);
  }

  onCommitTime(listener: (seconds: number) => void): void {
    this.#commitTimeListeners.push(listener);
  }

  readonly #commitTimeListeners: ((seconds: number) => void)[] = [];

  /** Hears what each checkpoint of the checkpoint thread found in the WAL, or why it failed. */
  onCheckpoint(listener: (result: CheckpointResult) => void): void {
    this.#checkpointListeners.push(listener);
  }

  readonly #checkpointListeners: ((result: CheckpointResult) => void)[] = [];

  #onCheckpoint(result: CheckpointResult): void {
    if ('error' in result) this.#checkpoints.failed(result.error);
    else this.#checkpoints.worked();
    for (const listener of this.#checkpointListeners) listener(result);
  }

  currentRevision(): number {
    return this.#batchOpen ? this.#committedRevision : this.#revision;
  }

  compactedRevision(): number {
    return this.#compacted;
  }

  /** Revision at the start of the open batch. */
  #committedRevision = 0;
  /** Compaction point at the start of the open batch. */
  #committedCompacted = 0;
  /** The latest revision with a change-log row. */
  #loggedRevision = 0;

  write<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    return this.#enqueue(async () => {
      this.#openBatch();
      const revisionBefore = this.#revision;
      const tx = new SqliteTx(this, this.#stmts, this.#caches, Date.now());
      this.#stmts.savepoint.run();
      try {
        const result = await fn(tx);
        this.#stmts.release.run();
        this.#batchChanges.push(...tx.changes);
        return { result, afterCommit: true };
      } catch (error) {
        tx.undo.undo();
        this.#revision = revisionBefore;
        // SQLite may roll back the whole transaction on some errors (a full disk, I/O, memory): the batch is lost.
        if (!this.#db.inTransaction) this.#abandonBatch(storeUnavailable('the store lost the open batch', error));
        else {
          this.#stmts.rollbackTo.run();
          this.#stmts.release.run();
        }
        throw error;
      }
    });
  }

  read<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    return this.#enqueue(async () => ({ result: await fn(new SqliteTx(this, this.#stmts, this.#caches, Date.now())), afterCommit: this.#batchOpen }));
  }

  async changesSince(after: number, limit: number): Promise<{ changes: Change[]; upTo: number }> {
    return this.read(async () => {
      if (after < this.#compacted) throw compactedError(after, this.#compacted);
      const upTo = Math.min(this.#batchOpen ? this.#committedRevision : this.#revision, after + limit);
      const changes = changesOfLogRows(this.#stmts.changesSince.all({ after, upTo }), after, upTo);
      return { changes, upTo: Math.max(upTo, after) };
    });
  }

  async compact(revision: number): Promise<void> {
    await this.write(async () => {
      const upTo = Math.min(revision, this.#committedRevision);
      if (upTo > this.#compacted) this.#compactTo(upTo);
    });
  }

  /** Drops the change log up to the revision, which becomes the oldest a watch may resume from. */
  #compactTo(revision: number): void {
    this.#stmts.compact.run(revision);
    this.#stmts.setMeta.run(revision, 'compacted');
    this.#compacted = revision;
  }

  /**
   * For a database just restored from a backup, before a gateway serves it: moves the revision past every one a
   * gateway may have handed out since the backup (to the clock in microseconds, when that is later), and compacts the
   * whole change log up to it. Revisions handed out after the backup would otherwise be handed out again, and a watch
   * resuming from one would skip what the restore took back; now it gets REVISION_COMPACTED and starts over from a
   * snapshot. Returns the new revision.
   */
  async startOverAfterRestore(now = Date.now()): Promise<number> {
    return this.write(async () => {
      const revision = revisionAfterRestore(this.#revision, now);
      this.#compactTo(revision);
      // The commit writes the revision to meta, as for any write that logs no change.
      this.#revision = revision;
      return revision;
    });
  }

  async revisionAt(time: number): Promise<number> {
    return this.read(async () => this.#stmts.revisionAt.get(time)?.revision ?? 0);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.read(async () => undefined);
    this.#closed = true;
    await this.#checkpointer?.close();
    this.#db.close();
    if (this.#walFd !== undefined) closeSync(this.#walFd);
    this.#lock?.release();
  }

  /** The revision that reads see (the open batch included: they settle after it commits). */
  latestRevision(): number {
    return this.#revision;
  }

  /** Allocates the next revision for the running write. */
  allocateRevision(): number {
    this.#revision += 1;
    return this.#revision;
  }

  #enqueue<T>(task: () => Promise<{ result: T; afterCommit: boolean }>): Promise<T> {
    if (this.#closed) return Promise.reject(new RelgateError(Code.UNAVAILABLE, 'store is closed', { reason: 'SHUTTING_DOWN' }));
    return new Promise<T>((resolve, reject) => {
      this.#queue.push(async () => {
        try {
          const { result, afterCommit } = await task();
          if (afterCommit) this.#waiting.push({ resolve: () => resolve(result), reject });
          else this.#whenDurable(() => resolve(result), false);
        } catch (error) {
          reject(asStoreError(error));
        }
      });
      if (!this.#running) void this.#drain();
    });
  }

  async #drain(): Promise<void> {
    this.#running = true;
    for (let task = this.#queue.shift(); task; task = this.#queue.shift()) await task();
    this.#running = false;
  }

  #openBatch(): void {
    if (this.#batchOpen) return;
    this.#stmts.begin.run();
    this.#batchOpen = true;
    this.#committedRevision = this.#revision;
    this.#committedCompacted = this.#compacted;
    if (!this.#commitScheduled) {
      this.#commitScheduled = true;
      setImmediate(() => this.#commitWhenIdle());
    }
  }

  #commitWhenIdle(): void {
    // A task still awaiting something joins this batch; commit after it.
    if (this.#running) return void setImmediate(() => this.#commitWhenIdle());
    if (this.#syncing) return void (this.#commitAfterSync = true);
    this.#commitScheduled = false;
    // A batch abandoned meanwhile has nothing left to commit.
    if (this.#batchOpen) this.#commit();
  }

  #commit(): void {
    const changes = this.#batchChanges;
    const started = performance.now();
    const logRow = changes.length > 0 ? changeLogRow(changes) : undefined;
    try {
      this.#caches.unwrittenRelations.flush();
      if (logRow) this.#stmts.appendChanges.run(logRow.revision, logRow.time, logRow.doc);
      // A batch whose last revision has a change-log row needs no meta write: opening the store reads the log's last row.
      if (this.#revision !== (logRow?.revision ?? this.#loggedRevision)) this.#stmts.setMeta.run(this.#revision, 'revision');
      this.#stmts.commit.run();
    } catch (error) {
      this.#abandonBatch(storeUnavailable('the store could not commit', error));
      return;
    }
    const waiting = this.#waiting;
    this.#waiting = [];
    this.#batchChanges = [];
    this.#batchOpen = false;
    if (logRow) this.#loggedRevision = logRow.revision;
    this.#checkpointer?.committed();
    this.#whenDurable(() => {
      for (const listener of this.#commitTimeListeners) listener((performance.now() - started) / 1000);
      if (changes.length > 0) for (const listener of this.#listeners) listener(changes);
      for (const waiter of waiting) waiter.resolve();
    }, true);
  }

  /** Rolls the open batch back: its writes (and the reads that saw them) fail, and what they changed in memory goes. */
  #abandonBatch(failure: RelgateError): void {
    if (this.#db.inTransaction) this.#db.exec('ROLLBACK');
    for (const cache of Object.values(this.#caches)) cache.clear();
    this.#revision = this.#committedRevision;
    this.#compacted = this.#committedCompacted;
    this.#batchChanges = [];
    this.#batchOpen = false;
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const waiter of waiting) waiter.reject(failure);
  }

  /**
   * Runs `done` once everything committed so far is on disk: after an fsync
   * of the WAL when `committed` (a commit just wrote to it) or while one is
   * under way (it covers every commit: none starts during it), else at once.
   */
  #whenDurable(done: () => void, committed: boolean): void {
    if (this.#walFd === undefined || (!committed && !this.#syncing)) return done();
    this.#afterSync.push(done);
    if (committed) this.#syncWal();
  }

  #syncWal(): void {
    this.#syncing = true;
    fdatasync(this.#walFd as number, (error) => {
      // Committed, but perhaps never on disk: acknowledging anything now could lose it.
      if (error) throw new Error('fsync of the SQLite WAL failed; restart to recover from the database file', { cause: error });
      const waiting = this.#afterSync;
      this.#afterSync = [];
      this.#syncing = false;
      for (const done of waiting) done();
      if (this.#commitAfterSync) {
        this.#commitAfterSync = false;
        this.#commitWhenIdle();
      }
    });
  }
}

/** Checkpoint failures and recovery for the operator: in the store's log, or as a process warning without one. */
function checkpointReport(log: StoreLog | undefined): RunReport {
  const message = 'the SQLite checkpoint thread failed; checkpoints inside commits go on, but the WAL may grow until it works again';
  return onceWhileFailing({
    failed: (error) => (log ? log.warn({ error }, message) : process.emitWarning(`${message}: ${String(error)}`, { code: 'RELGATE_CHECKPOINTER' })),
    recovered: () => log?.info({}, 'the SQLite checkpoint thread works again'),
  });
}

/** SQLite's names for a database that lives in memory or in a temporary file gone at close. */
const isFile = (path: string): boolean => path !== '' && path !== ':memory:' && !path.startsWith('file::memory:');

/**
 * SQLite's storage failures (a full disk, I/O, memory, a locked or read-only file) become UNAVAILABLE, and a damaged
 * file DATA_LOSS; the rest pass unchanged.
 */
function asStoreError(error: unknown): unknown {
  const code = error instanceof Database.SqliteError ? error.code : '';
  if (/^SQLITE_(CORRUPT|NOTADB)/.test(code)) {
    return new RelgateError(Code.DATA_LOSS, 'the database file is damaged; restore it from a backup', { reason: 'STORE_CORRUPT', cause: error });
  }
  return /^SQLITE_(FULL|IOERR|NOMEM|BUSY|LOCKED|READONLY|CANTOPEN|PROTOCOL)/.test(code) ? storeUnavailable('the store is unavailable', error) : error;
}

const parse = <T>(row: { doc: string } | undefined): T | undefined => (row ? (JSON.parse(row.doc) as T) : undefined);
const parseAll = <T>(rows: { doc: string }[]): T[] => rows.map((row) => JSON.parse(row.doc) as T);

class SqliteTx implements StoreTx {
  readonly changes: Change[] = [];
  /** Undoes this write's cache changes when its savepoint rolls back. */
  readonly undo = new UndoLog();
  #revision = 0;
  readonly #store: SqliteStore;
  readonly #s: Statements;
  readonly #c: Caches;
  readonly now: number;

  constructor(store: SqliteStore, statements: Statements, caches: Caches, now: number) {
    this.#store = store;
    this.#s = statements;
    this.#c = caches;
    this.now = now;
  }

  async revision(): Promise<number> {
    if (this.#revision === 0) this.#revision = this.#store.allocateRevision();
    return this.#revision;
  }

  readRevision(): number {
    return this.#store.latestRevision();
  }

  async getApplication(name: string) {
    return parse<ApplicationRecord>(this.#s.getApplication.get(name));
  }
  async putApplication(record: ApplicationRecord) {
    this.#s.putApplication.run(record.name, JSON.stringify(record));
  }
  async listApplications() {
    return parseAll<ApplicationRecord>(this.#s.listApplications.all());
  }
  async deleteApplication(name: string) {
    this.#s.deleteApplication.run(name);
  }
  async getUnit(name: string) {
    return this.#c.units.get(name) ?? this.#c.units.fill(name, parse<UnitRecord>(this.#s.getUnit.get(name)));
  }
  async putUnit(record: UnitRecord) {
    this.#s.putUnit.run(record.name, record.application, JSON.stringify(record));
    this.#c.units.set(record.name, record, this.undo);
  }
  async deleteUnit(name: string) {
    this.#s.deleteUnit.run(name);
    this.#c.units.delete(name, this.undo);
  }
  async listUnits(application?: string) {
    return parseAll<UnitRecord>(application ? this.#s.listUnitsOf.all(application) : this.#s.listUnits.all());
  }
  async findUnitByTokenHash(hash: string) {
    return parse<UnitRecord>(this.#s.unitByToken.get(hash));
  }
  async nextRelationNumber() {
    const next = (this.#s.meta.get('relation_number')?.value ?? 0) + 1;
    this.#s.setMeta.run(next, 'relation_number');
    return next;
  }
  async getRelation(id: string) {
    // An unwritten relation is cached too, unless the cache has let it go since.
    return this.#c.relations.get(id) ?? this.#c.unwrittenRelations.get(id) ?? this.#c.relations.fill(id, parse<RelationRecord>(this.#s.getRelation.get(id)));
  }
  async putRelation(record: RelationRecord) {
    this.#c.unwrittenRelations.set(record.id, record, this.undo);
    this.#c.relations.set(record.id, record, this.undo);
  }
  async deleteRelation(id: string) {
    this.#s.deleteRelationResponses.run(id);
    this.#s.deleteRelationRequests.run(id);
    this.#s.deleteRelationUnits.run(id);
    await this.deleteFlags(id);
    this.#s.deleteRelation.run(id);
    this.#c.unwrittenRelations.delete(id, this.undo);
    this.#c.relations.delete(id, this.undo);
    this.#c.relationUnits.delete(id, this.undo);
  }
  async listRelations() {
    this.#c.unwrittenRelations.flush(this.undo);
    return parseAll<RelationRecord>(this.#s.listRelations.all());
  }
  async listRelationUnits(relationId: string) {
    const cached = this.#c.relationUnits.get(relationId);
    if (cached) return cached;
    const units = parseAll<RelationUnitRecord>(this.#s.listRelationUnits.all(relationId)).sort((a, b) => a.revision - b.revision);
    this.#c.relationUnits.fill(relationId, units);
    return units;
  }
  async listUnitRelations(unit: string) {
    return parseAll<RelationUnitRecord>(this.#s.listUnitRelations.all(unit));
  }
  async putRelationUnit(record: RelationUnitRecord) {
    this.#s.putRelationUnit.run(record.relation_id, record.unit, JSON.stringify(record));
    this.#c.relationUnits.delete(record.relation_id, this.undo);
  }
  async deleteRelationUnit(relationId: string, unit: string) {
    this.#s.deleteRelationUnit.run(relationId, unit);
    this.#c.relationUnits.delete(relationId, this.undo);
  }
  async getRequest(requestId: string) {
    return parse<RequestRecord>(this.#s.getRequest.get(requestId));
  }
  async putRequest(record: RequestRecord) {
    this.#s.putRequest.run(record.request_id, record.relation_id, record.create_revision, dueTime(record), record.state === 'pending' ? 1 : 0, JSON.stringify(record));
  }
  async deleteRequest(requestId: string) {
    this.#s.deleteRequest.run(requestId);
  }
  async listRequests(page: RequestPage) {
    const [only, ...others] = page.relationIds;
    if (only !== undefined && others.length === 0) {
      const statement = page.pendingOnly ? this.#s.listRelationPendingRequests : this.#s.listRelationRequests;
      return parseAll<RequestRecord>(statement.all(only, page.afterCreateRevision, page.limit));
    }
    const statement = page.pendingOnly ? this.#s.listPendingRequests : this.#s.listRequests;
    return parseAll<RequestRecord>(statement.all(JSON.stringify(page.relationIds), page.afterCreateRevision, page.limit));
  }
  async listDue(now: number, limit: number) {
    return parseAll<RequestRecord>(this.#s.listDue.all(now, limit));
  }
  async listResponses(requestId: string, page?: ResponsePage) {
    // A negative limit is none to SQLite.
    return parseAll<ResponseRecord>(this.#s.listResponses.all(requestId, page?.afterRevision ?? 0, page?.limit ?? -1));
  }
  async putResponse(record: ResponseRecord) {
    this.#s.putResponse.run(record.request_id, record.responder_unit, record.revision, JSON.stringify(record));
  }
  async deleteResponses(requestId: string) {
    this.#s.deleteResponses.run(requestId);
  }
  async getFlags(relationId: string, unit: string) {
    const key = flagsKey(relationId, unit);
    return this.#c.flags.get(key) ?? this.#c.flags.fill(key, parse<FlagsRecord>(this.#s.getFlags.get(relationId, unit)));
  }
  async putFlags(relationId: string, unit: string, flags: FlagsRecord) {
    this.#s.putFlags.run(relationId, unit, JSON.stringify(flags));
    this.#c.flags.set(flagsKey(relationId, unit), flags, this.undo);
  }
  async deleteFlags(relationId: string, unit?: string) {
    if (unit === undefined) {
      this.#s.deleteRelationFlags.run(relationId);
      const prefix = flagsKey(relationId, '');
      this.#c.flags.deleteWhere((key) => key.startsWith(prefix), this.undo);
    } else {
      this.#s.deleteFlags.run(relationId, unit);
      this.#c.flags.delete(flagsKey(relationId, unit), this.undo);
    }
  }
  async appendChange(relationId: string, data: ChangeData) {
    const revision = await this.revision();
    this.changes.push({ revision, index: this.changes.length, relation_id: relationId, time: this.now, data });
  }
}

/** When the sweeper must look at a pending request: its expiry or its claim's end. */
export function dueTime(record: RequestRecord): number | null {
  if (record.state !== 'pending') return null;
  const times = [record.expire_time, record.claim?.expire_time].filter((t): t is number => typeof t === 'number');
  return times.length > 0 ? Math.min(...times) : null;
}
