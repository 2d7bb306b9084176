// PostgreSQL store (node-postgres) for several relgate replicas on one
// database.
//
// Revisions: every write transaction first locks the single row of `state`,
// which holds the global revision. Writers therefore commit one after the
// other in revision order, so a reader that has seen revision R can never
// later meet a change below R that was still uncommitted (the problem with
// plain sequences, whose values commit out of order).
//
// Group commit: like the SQLite store, the writes of one replica that queue
// up while a batch is open share its transaction, each in its own savepoint.
//
// Replicas: a commit NOTIFYs the channel with its revision. Every replica
// LISTENs and, on a notification (or a reconnection, or a periodic poll),
// reads the change log after the last revision it has delivered, so a lost
// notification delays changes but never loses them. Changes reach onCommit
// listeners exactly once, in revision order, whichever replica wrote them.
import pg from 'pg';
import { Code, RelgateError } from '../errors.ts';
import { changeLogRow, changesOfLogRows } from './change-log.ts';
import { compactedError, storeUnavailable } from './store-errors.ts';
import { migrate } from './postgres-migrations.ts';
import { DEFAULT_PRESENCE, PostgresPresence, type PresenceOptions } from './postgres-presence.ts';
import { copyFlags, copyRelation, DeferredRows, flagsKey, flagsKeyParts, recordCaches, UndoLog, type RecordCache } from './record-cache.ts';
import { dueTime } from './sqlite-store.ts';
import type {
  ApplicationRecord,
  Change,
  ChangeData,
  CommitListener,
  FlagsRecord,
  RelationRecord,
  RelationUnitRecord,
  RequestPage,
  RequestRecord,
  ResponsePage,
  ResponseRecord,
  SideName,
  Store,
  StoreLog,
  StoreTx,
  UnitRecord,
} from './store.ts';
import { revisionAfterRestore } from './store.ts';

export interface PostgresStoreOptions {
  /** postgres:// connection string. */
  url: string;
  /** NOTIFY channel shared by the replicas of one database. */
  channel?: string;
  /** Connections for reads and change-log catch-up. */
  poolSize?: number;
  /** Milliseconds between change-log polls that cover a notification lost with its connection. */
  pollIntervalMs?: number;
  /** Revisions fetched per change-log page when catching up. */
  catchUpPage?: number;
  /** Heartbeats of this replica's watcher records. */
  presence?: Partial<PresenceOptions>;
  /** Records of each kind a batch remembers; the default is far more than one batch of writes reads. */
  batchCacheEntries?: number;
  /** Hears when the LISTEN connection or the heartbeat fails, and when it works again. */
  log?: StoreLog;
}

const DEFAULTS = { channel: 'relgate', poolSize: 8, pollIntervalMs: 1_000, catchUpPage: 1_000, batchCacheEntries: 1_000 };

/** How every connection of the store is made (the pool's, the writer's, the listener's). */
const connection = (url: string) => ({
  connectionString: url,
  // BIGINT columns come back as numbers: revisions and times stay far below 2^53.
  types: {
    getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
      oid === pg.types.builtins.INT8 ? Number : pg.types.getTypeParser(oid, format ?? 'text')) as typeof pg.types.getTypeParser,
  },
  // No JIT compilation: the planner takes the one-row state table for about 1,500 rows until it is first analysed,
  // so a change-log read looked costly enough to compile, and compiling took 3-5 ms of a read that runs in 0.1 ms.
  // An `options` parameter in the URL replaces this one.
  options: '-c jit=off',
});

/**
 * SqliteStore.startOverAfterRestore for PostgreSQL: a database restored from a backup, before replicas serve it,
 * gets a revision past every one handed out (the clock in microseconds, when later) and its change log compacted
 * there. Refused while a replica's heartbeat is recent. Returns the new revision.
 */
export async function startOverAfterRestore(url: string, now = Date.now()): Promise<number> {
  const client = new pg.Client(connection(url));
  await client.connect();
  try {
    // A mistyped database name, or a restore that did not happen, would otherwise get a new schema and go on.
    const { rows: found } = await client.query<{ state: string | null }>("SELECT to_regclass('state')::text AS state");
    if (!found[0]?.state) throw new RelgateError(Code.FAILED_PRECONDITION, 'the database holds no relgate data; name the restored one', { reason: 'NOT_RELGATE_DATABASE' });
    await migrate(client);
    await client.query('BEGIN');
    const { rows: live } = await client.query<{ n: number }>('SELECT count(*)::int AS n FROM replicas WHERE heartbeat > now() - make_interval(secs => $1::float8 / 1000)', [DEFAULT_PRESENCE.staleMs]);
    if ((live[0]?.n ?? 0) > 0) {
      throw new RelgateError(Code.FAILED_PRECONDITION, `${live[0]?.n} replicas serve this database; stop them first`, { reason: 'DATABASE_IN_USE' });
    }
    const { rows } = await client.query<{ revision: number }>('SELECT revision FROM state FOR UPDATE');
    const revision = revisionAfterRestore(rows[0]?.revision ?? 0, now);
    await client.query('DELETE FROM changes');
    await client.query('UPDATE state SET revision = $1, compacted = $1', [revision]);
    await client.query('COMMIT');
    return revision;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  } finally {
    await client.end();
  }
}

type Row = { doc: string };

const PUT_RELATION = 'INSERT INTO relations (id, create_revision, doc) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET create_revision = excluded.create_revision, doc = excluded.doc';
const PUT_FLAGS = 'INSERT INTO flags (relation_id, unit, doc) VALUES ($1, $2, $3) ON CONFLICT (relation_id, unit) DO UPDATE SET doc = excluded.doc';
const PUT_REQUEST =
  'INSERT INTO requests (id, relation_id, create_revision, due, pending, doc) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET relation_id = excluded.relation_id, create_revision = excluded.create_revision, due = excluded.due, pending = excluded.pending, doc = excluded.doc';

type SqlValue = string | number | boolean | null;

/** A request row waiting to be written: its statement's values, its JSON document among them. */
interface UnwrittenRow {
  values: SqlValue[];
  doc: string;
}

/** Rows are never changed, only replaced: no copy needed. */
const sameRow = (row: UnwrittenRow) => row;

/**
 * What one batch's writes read and wrote of units, relations, memberships and flags, and the relations, flags and
 * requests they wrote, kept to be written once (each request change also rewrites its relation's counters and its
 * units' flags; a request answered in the batch that created it is written in its final state): with the commit, in
 * its round trip, or before a statement that reads or deletes many rows of their tables. Each is an upsert that
 * cannot fail on its own. Responses are not kept: inserting a second response of one unit must fail its write alone.
 */
function batchCaches(cacheEntries: number) {
  const statements: string[] = [];
  const unwritten = {
    relations: new DeferredRows<RelationRecord>(copyRelation, (id, relation) =>
      statements.push(inline(PUT_RELATION, [id, relation.create_revision, JSON.stringify(relation)])),
    ),
    flags: new DeferredRows<FlagsRecord>(copyFlags, (key, flags) => statements.push(inline(PUT_FLAGS, [...flagsKeyParts(key), JSON.stringify(flags)]))),
    requests: new DeferredRows<UnwrittenRow>(sameRow, (_id, row) => statements.push(inline(PUT_REQUEST, row.values))),
  };
  return {
    ...recordCaches(cacheEntries),
    unwritten,
    /** Takes every unwritten row (back again if the write that took them rolls back), as statements for one round trip. */
    takeUnwritten(undo?: UndoLog): string {
      for (const rows of Object.values(unwritten)) rows.flush(undo);
      return statements.splice(0).join('');
    },
  };
}

type BatchCaches = ReturnType<typeof batchCaches>;

/** A statement with its values written in as literals, to be sent with others in one simple-protocol round trip. */
function inline(text: string, values: SqlValue[]): string {
  return `${text.replace(/\$(\d+)/g, (_, n: string) => literal(values[Number(n) - 1] ?? null))}; `;
}

function literal(value: SqlValue): string {
  if (value === null) return 'NULL';
  if (typeof value === 'number') return String(value);
  if (typeof value === 'boolean') return value ? 'TRUE' : 'FALSE';
  return pg.escapeLiteral(value);
}

/**
 * The change-log rows after `after` up to the first that reaches the bound (change-log.ts: a row holds a whole
 * commit, so it may reach past the bound). $1 is after; `bound` is an expression.
 */
const changeRowsUpTo = (bound: string) =>
  `c.revision > $1 AND c.revision <= coalesce((SELECT min(revision) FROM changes WHERE revision >= ${bound}), ${bound})`;

interface Waiter {
  resolve: () => void;
  reject: (error: unknown) => void;
}

/** A committed batch of this replica, delivered without a round trip when it is next in line. */
interface Segment {
  upTo: number;
  changes: Change[];
}

export class PostgresStore implements Store {
  readonly #options: typeof DEFAULTS & PostgresStoreOptions;
  readonly #pool: pg.Pool;
  /** This replica's watchers, as every replica sees them. */
  readonly presence: PostgresPresence;
  readonly #listeners: CommitListener[] = [];
  readonly #queue: (() => Promise<void>)[] = [];
  #writer: pg.Client | undefined;
  #listener: pg.Client | undefined;
  #running = false;
  #draining: Promise<void> | undefined;
  #closed = false;

  // The open batch.
  /** The connection the open batch began on: its writes and its commit use it, or fail with it. */
  #batchClient: pg.Client | undefined;
  /**
   * The open batch's records (batchCaches). The batch holds the sequencer lock, which every replica's writes take,
   * so nobody else changes them until it ends.
   */
  #batchCaches: BatchCaches | undefined;
  #batchStart = 0;
  #revision = 0;
  #batchChanges: Change[] = [];
  #batchWaiting: Waiter[] = [];

  // Delivery to onCommit listeners.
  #delivered = 0;
  #known = 0;
  /** A poll or reconnection asks for one look at the log even when nothing is known to be missing. */
  #recheck = false;
  /** Set once the starting revision is known: history before it is not replayed. */
  #following = false;
  #compacted = 0;
  readonly #segments = new Map<number, Segment>();
  #pumping: Promise<void> | undefined;
  #deliveryWaiters: { revision: number; resolve: () => void }[] = [];
  #poll: NodeJS.Timeout | undefined;

  private constructor(options: PostgresStoreOptions) {
    this.#options = { ...DEFAULTS, ...options };
    this.#pool = new pg.Pool({ ...connection(options.url), max: this.#options.poolSize });
    // An idle pooled connection that dies is replaced on next use.
    this.#pool.on('error', () => undefined);
    // pg-pool listens for a connection's death only while it is idle; one that dies while checked out (a database
    // restart, a terminated backend) would emit 'error' to nobody and end the process. Its statements fail on their
    // own, and the pool drops it when it comes back.
    this.#pool.on('connect', (client) => client.on('error', () => undefined));
    this.presence = new PostgresPresence(this.#pool, options.presence, options.log);
  }

  /** Connects, applies pending migrations and starts following the change log. */
  static async open(options: PostgresStoreOptions): Promise<PostgresStore> {
    const store = new PostgresStore(options);
    try {
      const client = await store.#pool.connect();
      try {
        await migrate(client);
      } finally {
        client.release();
      }
      // Listening before reading the head: a commit in between is announced, not missed.
      await store.#listen();
      const { revision, compacted } = await store.#state();
      store.#delivered = revision;
      store.#known = Math.max(store.#known, revision);
      store.#compacted = compacted;
      store.#following = true;
      store.#pump();
      await store.presence.start();
      store.#poll = setInterval(() => store.#wake(), store.#options.pollIntervalMs);
      store.#poll.unref();
      return store;
    } catch (error) {
      await store.close();
      throw error;
    }
  }

  onCommitTime(listener: (seconds: number) => void): void {
    this.#commitTimeListeners.push(listener);
  }

  readonly #commitTimeListeners: ((seconds: number) => void)[] = [];

  onCommit(listener: CommitListener): void {
    this.#listeners.push(listener);
  }

  readonly #gapListeners: ((compacted: number) => void)[] = [];

  onGap(listener: (compacted: number) => void): void {
    this.#gapListeners.push(listener);
  }

  /** The newest revision handed to onCommit listeners: everything below it is visible here. */
  currentRevision(): number {
    return this.#delivered;
  }

  compactedRevision(): number {
    return this.#compacted;
  }

  write<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    return this.#enqueue(async () => {
      // The first write of a batch needs no savepoint: if it fails, the whole transaction goes.
      const first = this.#batchClient === undefined;
      const client = await this.#openBatch();
      const revisionBefore = this.#revision;
      const tx = new PgTx(
        client,
        Date.now(),
        {
          allocate: () => ++this.#revision,
          latest: () => this.#revision,
        },
        this.#batchCaches,
      );
      if (!first) await client.query('SAVEPOINT w');
      let result: T;
      try {
        result = await fn(tx);
        if (!first) await client.query('RELEASE SAVEPOINT w');
      } catch (error) {
        this.#revision = revisionBefore;
        tx.undo.undo();
        await this.#undo(client, first);
        throw error;
      }
      this.#batchChanges.push(...tx.changes);
      return { committed: new Promise<T>((resolve, reject) => this.#batchWaiting.push({ resolve: () => resolve(result), reject })) };
    });
  }

  async read<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    const { result, revision } = await this.#snapshot(async (client, revision) => fn(new PgTx(client, Date.now(), { latest: () => revision })));
    // Listeners must have heard of everything this read saw before its caller acts on it.
    await this.#deliveredUpTo(revision);
    return result;
  }

  async changesSince(after: number, limit: number): Promise<{ changes: Change[]; upTo: number }> {
    const upTo = Math.min(this.#delivered, after + limit);
    const { result } = await this.#snapshot(async (client, _revision, compacted) => {
      if (after < compacted) throw compactedError(after, compacted);
      return upTo > after ? this.#changeRows(client, after, upTo) : [];
    });
    return { changes: result, upTo: Math.max(upTo, after) };
  }

  async compact(revision: number): Promise<void> {
    await this.write(async (tx) => {
      const client = (tx as PgTx).client;
      const { rows } = await client.query<{ compacted: number }>('SELECT compacted FROM state');
      const upTo = Math.min(revision, this.#batchStart);
      if (upTo <= (rows[0]?.compacted ?? 0)) return;
      await client.query('DELETE FROM changes WHERE revision <= $1', [upTo]);
      await client.query('UPDATE state SET compacted = $1', [upTo]);
    });
    this.#compacted = (await this.#state()).compacted;
  }

  async revisionAt(time: number): Promise<number> {
    const { rows } = await this.#query<{ revision: number | null }>('SELECT max(revision) AS revision FROM changes WHERE time <= $1', [time]);
    return rows[0]?.revision ?? 0;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#poll);
    // Queued writes finish and commit; new ones are refused.
    await this.#draining;
    await this.#pumping;
    for (const waiter of this.#deliveryWaiters.splice(0)) waiter.resolve();
    await this.presence.stop();
    const listener = this.#listener;
    this.#listener = undefined;
    await Promise.allSettled([listener?.end(), this.#writer?.end(), this.#pool.end()]);
  }

  // ---- writes ----

  /** Queues a write; the task settles once it ran, `committed` once its batch committed. */
  #enqueue<T>(task: () => Promise<{ committed: Promise<T> }>): Promise<T> {
    if (this.#closed) return Promise.reject(closedError());
    return new Promise<T>((resolve, reject) => {
      this.#queue.push(async () => {
        try {
          const { committed } = await task();
          committed.then(resolve, reject);
        } catch (error) {
          reject(asStoreError(error));
        }
      });
      if (!this.#running) this.#draining = this.#drain();
    });
  }

  async #drain(): Promise<void> {
    this.#running = true;
    for (;;) {
      const task = this.#queue.shift();
      if (task) {
        await task();
        continue;
      }
      if (this.#batchClient === undefined) break;
      await this.#commit();
    }
    // Same synchronous step as the last look at the queue: no task can slip in between.
    this.#running = false;
  }

  /** Begins a batch if none is open: takes the sequencer lock and reads the revision. */
  async #openBatch(): Promise<pg.ClientBase> {
    // Never another connection for an open batch: what it wrote so far is only in its own transaction.
    if (this.#batchClient) return this.#batchClient;
    const client = await this.#writerClient();
    let revision: number | undefined;
    try {
      const results = (await client.query('BEGIN; SELECT revision FROM state FOR UPDATE')) as unknown as pg.QueryResult<{ revision: number }>[];
      revision = results[1]?.rows[0]?.revision;
      if (revision === undefined) throw new Error('the state row of the relgate schema is missing');
    } catch (error) {
      // The lock can fail (a lock_timeout, a cancel) after BEGIN: the connection is then inside a failed transaction,
      // which would refuse every later write.
      this.#dropWriter(client);
      throw storeUnavailable('the store could not begin a write', error);
    }
    this.#batchClient = client;
    this.#batchCaches = batchCaches(this.#options.batchCacheEntries);
    this.#batchStart = this.#revision = revision;
    return client;
  }

  /** Undoes a failed write: its savepoint, or the batch it opened. */
  async #undo(client: pg.ClientBase, first: boolean): Promise<void> {
    if (!first) return void (await client.query('ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w'));
    this.#batchClient = undefined;
    this.#batchCaches = undefined;
    try {
      await client.query('ROLLBACK');
    } catch {
      this.#dropWriter();
    }
  }

  async #commit(): Promise<void> {
    const waiting = this.#batchWaiting;
    const changes = this.#batchChanges;
    const start = this.#batchStart;
    const end = this.#revision;
    this.#batchWaiting = [];
    this.#batchChanges = [];
    const client = this.#batchClient;
    const caches = this.#batchCaches;
    this.#batchClient = undefined;
    this.#batchCaches = undefined;
    const started = performance.now();
    try {
      if (!client || !caches) throw new Error('no batch is open');
      // Numbers and escaped literals only: safe to inline, and one round trip for all the statements.
      const rows = caches.takeUnwritten();
      const row = changes.length > 0 ? changeLogRow(changes) : undefined;
      const log = row ? `INSERT INTO changes (revision, time, doc) VALUES (${row.revision}, ${row.time}, ${pg.escapeLiteral(row.doc)}); ` : '';
      const publish = end > start ? `UPDATE state SET revision = ${end}; SELECT pg_notify(${pg.escapeLiteral(this.#options.channel)}, '${end}'); ` : '';
      await client.query(`${rows}${log}${publish}COMMIT`);
      for (const listener of this.#commitTimeListeners) listener((performance.now() - started) / 1000);
    } catch (error) {
      this.#dropWriter(client);
      const failure = storeUnavailable('the store could not commit', error);
      for (const waiter of waiting) waiter.reject(failure);
      return;
    }
    if (end > start) {
      this.#segments.set(start, { upTo: end, changes });
      await this.#deliveredUpTo(end);
    }
    for (const waiter of waiting) waiter.resolve();
  }

  async #writerClient(): Promise<pg.Client> {
    if (this.#writer) return this.#writer;
    const client = new pg.Client(connection(this.#options.url));
    client.on('error', () => this.#dropWriter(client));
    await client.connect();
    // A replica that stalls while holding the sequencer lock must not stall every other replica.
    await client.query("SET idle_in_transaction_session_timeout = '10s'");
    this.#writer = client;
    return client;
  }

  /** Forgets a broken writer connection (its open transaction is gone with it). */
  #dropWriter(client = this.#writer): void {
    if (!client || client !== this.#writer) return;
    this.#writer = undefined;
    client.end().catch(() => undefined);
  }

  // ---- reads ----

  /** Runs fn in a read-only snapshot; also returns the revision and compaction point it saw. */
  async #snapshot<T>(fn: (client: pg.ClientBase, revision: number, compacted: number) => Promise<T>): Promise<{ result: T; revision: number }> {
    if (this.#closed) throw closedError();
    let client: pg.PoolClient;
    try {
      client = await this.#pool.connect();
    } catch (error) {
      throw asStoreError(error);
    }
    let broken = false;
    try {
      const results = (await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT revision, compacted FROM state')) as unknown as pg.QueryResult<{
        revision: number;
        compacted: number;
      }>[];
      const state = results[1]?.rows[0] ?? { revision: 0, compacted: 0 };
      const result = await fn(client, state.revision, state.compacted);
      // Ending a read-only transaction cannot fail but by losing the connection, which the
      // pool then drops; the next user's statements queue behind it on the same connection.
      client.query('COMMIT').catch(() => undefined);
      return { result, revision: state.revision };
    } catch (error) {
      broken = !(await client.query('ROLLBACK').then(() => true, () => false));
      throw asStoreError(error);
    } finally {
      client.release(broken);
    }
  }

  async #query<R extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<pg.QueryResult<R>> {
    if (this.#closed) throw closedError();
    try {
      return await this.#pool.query<R>(text, values);
    } catch (error) {
      throw asStoreError(error);
    }
  }

  async #state(): Promise<{ revision: number; compacted: number }> {
    const { rows } = await this.#query<{ revision: number; compacted: number }>('SELECT revision, compacted FROM state');
    return rows[0] ?? { revision: 0, compacted: 0 };
  }

  async #changeRows(client: pg.ClientBase, after: number, upTo: number): Promise<Change[]> {
    const { rows } = await client.query<Row>(`SELECT c.doc FROM changes c WHERE ${changeRowsUpTo('$2')} ORDER BY c.revision`, [after, upTo]);
    return changesOfLogRows(rows, after, upTo);
  }

  // ---- delivery of every replica's commits ----

  /** Resolves once listeners have been given every change up to the revision. */
  #deliveredUpTo(revision: number): Promise<void> {
    if (revision <= this.#delivered || this.#closed) return Promise.resolve();
    const reached = new Promise<void>((resolve) => this.#deliveryWaiters.push({ revision, resolve }));
    this.#known = Math.max(this.#known, revision);
    this.#pump();
    return reached;
  }

  /** Something may have committed elsewhere: look at the log. */
  #wake(): void {
    this.#recheck = true;
    this.#pump();
  }

  #pump(): void {
    if (!this.#following) return;
    this.#pumping ??= this.#deliverPending().finally(() => {
      this.#pumping = undefined;
      if (this.#behind) this.#pump();
    });
  }

  get #behind(): boolean {
    return !this.#closed && (this.#recheck || this.#delivered < this.#known);
  }

  async #deliverPending(): Promise<void> {
    while (this.#behind) {
      const own = this.#segments.get(this.#delivered);
      if (own) {
        this.#segments.delete(this.#delivered);
        this.#emit(own.changes, own.upTo);
        continue;
      }
      try {
        await this.#fetchNext();
      } catch {
        // The database is unreachable: retry shortly; nothing is lost meanwhile.
        this.#recheck = true;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  }

  /** Reads the next page of the change log after the delivered revision. */
  async #fetchNext(): Promise<void> {
    const after = this.#delivered;
    this.#recheck = false;
    // One statement, so one snapshot: the head revision and the changes up to it agree.
    // Changes compacted by another replica before this one read them are gone: listeners hear of the gap first.
    const { rows } = await this.#query<{ head: number; compacted: number; doc: string | null }>(
      `WITH head AS (SELECT revision, compacted, LEAST(revision, $1::bigint + $2::bigint) AS bound FROM state)
       SELECT head.revision AS head, head.compacted, c.doc
       FROM head LEFT JOIN changes c ON ${changeRowsUpTo('head.bound')}
       ORDER BY c.revision`,
      [after, this.#options.catchUpPage],
    );
    const head = rows[0]?.head ?? after;
    const compacted = rows[0]?.compacted ?? 0;
    this.#compacted = Math.max(this.#compacted, compacted);
    this.#known = Math.max(this.#known, head);
    const upTo = Math.min(head, after + this.#options.catchUpPage);
    if (this.#delivered !== after || upTo <= after) return;
    if (compacted > after) for (const listener of this.#gapListeners) listener(compacted);
    // The left join gives one row without a change when there is none.
    this.#emit(changesOfLogRows(rows.flatMap((row) => (row.doc === null ? [] : [{ doc: row.doc }])), after, upTo), upTo);
  }

  #emit(changes: Change[], upTo: number): void {
    this.#delivered = upTo;
    for (const start of this.#segments.keys()) if (start < upTo) this.#segments.delete(start);
    if (changes.length > 0) for (const listener of this.#listeners) listener(changes);
    const ready = this.#deliveryWaiters.filter((waiter) => waiter.revision <= upTo);
    if (ready.length === 0) return;
    this.#deliveryWaiters = this.#deliveryWaiters.filter((waiter) => waiter.revision > upTo);
    for (const waiter of ready) waiter.resolve();
  }

  /** LISTENs on a dedicated connection; if it drops, reconnects and catches up. */
  async #listen(): Promise<void> {
    const client = new pg.Client(connection(this.#options.url));
    const lost = (error?: Error) => {
      if (this.#listener !== client) return;
      this.#listener = undefined;
      this.#options.log?.warn({ err: error }, 'lost the PostgreSQL LISTEN connection: changes from other replicas arrive by polling until it is back');
      client.end().catch(() => undefined);
      if (!this.#closed) setTimeout(() => void this.#relisten(), 100).unref();
    };
    client.on('error', lost);
    client.on('end', lost);
    client.on('notification', (message) => {
      const revision = Number(message.payload);
      if (Number.isSafeInteger(revision) && revision > this.#known) {
        this.#known = revision;
        this.#pump();
      }
    });
    await client.connect();
    await client.query(`LISTEN ${pg.escapeIdentifier(this.#options.channel)}`);
    this.#listener = client;
  }

  async #relisten(): Promise<void> {
    if (this.#closed || this.#listener) return;
    try {
      await this.#listen();
    } catch {
      if (!this.#closed) setTimeout(() => void this.#relisten(), 500).unref();
      return;
    }
    this.#options.log?.info({}, 'PostgreSQL LISTEN connection restored');
    // Commits while nobody listened announced themselves to no one.
    this.#wake();
  }

  /** Backend process id of the LISTEN connection, as pg_stat_activity shows it; undefined while reconnecting. */
  async listenerPid(): Promise<number | undefined> {
    const client = this.#listener;
    if (!client) return undefined;
    const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    return rows[0]?.pid;
  }
}

const statementNames = new Map<string, string>();

/** A named statement: each connection parses and plans it once, then only binds values. */
function prepared(text: string, values: unknown[]): pg.QueryConfig {
  let name = statementNames.get(text);
  if (name === undefined) statementNames.set(text, (name = `relgate_${statementNames.size + 1}`));
  return { name, text, values };
}

function closedError(): RelgateError {
  return new RelgateError(Code.UNAVAILABLE, 'store is closed', { reason: 'SHUTTING_DOWN' });
}

/** Connection failures become UNAVAILABLE; errors from service logic pass unchanged. */
function asStoreError(error: unknown): unknown {
  if (error instanceof RelgateError) return error;
  if (error instanceof Error && isConnectionFailure(error)) {
    return storeUnavailable('the store is unavailable', error);
  }
  return error;
}

function isConnectionFailure(error: Error): boolean {
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && (code.startsWith('08') || code.startsWith('57P') || code.startsWith('53'))) return true;
  return /ECONNREFUSED|ECONNRESET|terminat|Connection/i.test(error.message);
}

interface TxRevisions {
  /** Allocates the next revision (writes only). */
  allocate?: () => number;
  /** The revision the state read reflects. */
  latest: () => number;
}

const parse = <T>(rows: Row[]): T | undefined => (rows[0] ? (JSON.parse(rows[0].doc) as T) : undefined);
const parseAll = <T>(rows: Row[]): T[] => rows.map((row) => JSON.parse(row.doc) as T);

class PgTx implements StoreTx {
  readonly changes: Change[] = [];
  readonly client: pg.ClientBase;
  readonly now: number;
  /** Undoes this write's cache changes when its savepoint rolls back. */
  readonly undo = new UndoLog();
  readonly #revisions: TxRevisions;
  /** The batch's caches, for a write; a read has none. */
  readonly #c: BatchCaches | undefined;
  #revision = 0;

  constructor(client: pg.ClientBase, now: number, revisions: TxRevisions, caches?: BatchCaches) {
    this.client = client;
    this.now = now;
    this.#revisions = revisions;
    this.#c = caches;
  }

  async revision(): Promise<number> {
    if (this.#revision === 0) {
      if (!this.#revisions.allocate) throw new Error('a read cannot allocate a revision');
      this.#revision = this.#revisions.allocate();
    }
    return this.#revision;
  }

  readRevision(): number {
    return this.#revisions.latest();
  }

  async #rows(text: string, values: unknown[]): Promise<Row[]> {
    return (await this.client.query<Row>(prepared(text, values))).rows;
  }

  async #run(text: string, values: unknown[]): Promise<void> {
    await this.client.query(prepared(text, values));
  }

  /** The cached record, or the one `load` reads, remembered. */
  async #cached<V extends object>(cache: RecordCache<V> | undefined, key: string, load: () => Promise<V | undefined>): Promise<V | undefined> {
    const hit = cache?.get(key);
    if (hit) return hit;
    const loaded = await load();
    return cache ? cache.fill(key, loaded) : loaded;
  }

  async getApplication(name: string) {
    return parse<ApplicationRecord>(await this.#rows('SELECT doc FROM applications WHERE name = $1', [name]));
  }
  async putApplication(record: ApplicationRecord) {
    await this.#run('INSERT INTO applications (name, doc) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET doc = excluded.doc', [record.name, JSON.stringify(record)]);
  }
  async listApplications() {
    return parseAll<ApplicationRecord>(await this.#rows('SELECT doc FROM applications ORDER BY name COLLATE "C"', []));
  }
  async deleteApplication(name: string) {
    await this.#run('DELETE FROM applications WHERE name = $1', [name]);
  }
  async getUnit(name: string) {
    return this.#cached(this.#c?.units, name, async () => parse<UnitRecord>(await this.#rows('SELECT doc FROM units WHERE name = $1', [name])));
  }
  async putUnit(record: UnitRecord) {
    await this.#run(
      'INSERT INTO units (name, application, token_hash, doc) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET application = excluded.application, token_hash = excluded.token_hash, doc = excluded.doc',
      [record.name, record.application, record.token_hash ?? null, JSON.stringify(record)],
    );
    this.#c?.units.set(record.name, record, this.undo);
  }
  async deleteUnit(name: string) {
    await this.#run('DELETE FROM units WHERE name = $1', [name]);
    this.#c?.units.delete(name, this.undo);
  }
  async listUnits(application?: string) {
    return parseAll<UnitRecord>(
      application === undefined
        ? await this.#rows('SELECT doc FROM units ORDER BY application COLLATE "C", name COLLATE "C"', [])
        : await this.#rows('SELECT doc FROM units WHERE application = $1 ORDER BY name COLLATE "C"', [application]),
    );
  }
  async findUnitByTokenHash(hash: string) {
    return parse<UnitRecord>(await this.#rows('SELECT doc FROM units WHERE token_hash = $1', [hash]));
  }
  async nextRelationNumber() {
    const { rows } = await this.client.query<{ n: number }>('UPDATE state SET relation_number = relation_number + 1 RETURNING relation_number AS n');
    return rows[0]?.n ?? 1;
  }
  async getRelation(id: string) {
    // An unwritten relation is cached too, unless the cache has let it go since.
    const load = async () => this.#c?.unwritten.relations.get(id) ?? parse<RelationRecord>(await this.#rows('SELECT doc FROM relations WHERE id = $1', [id]));
    return this.#cached(this.#c?.relations, id, load);
  }
  async putRelation(record: RelationRecord) {
    if (!this.#c) return this.#run(PUT_RELATION, [record.id, record.create_revision, JSON.stringify(record)]);
    this.#c.unwritten.relations.set(record.id, record, this.undo);
    this.#c.relations.set(record.id, record, this.undo);
  }
  async deleteRelation(id: string) {
    await this.#writeUnwritten();
    await this.#run('DELETE FROM responses WHERE request_id IN (SELECT id FROM requests WHERE relation_id = $1)', [id]);
    for (const table of ['requests', 'relation_units', 'flags']) await this.#run(`DELETE FROM ${table} WHERE relation_id = $1`, [id]);
    await this.#run('DELETE FROM relations WHERE id = $1', [id]);
    this.#c?.unwritten.relations.delete(id, this.undo);
    this.#c?.relations.delete(id, this.undo);
    this.#c?.relationUnits.delete(id, this.undo);
    this.#forgetFlags(id);
  }
  async listRelations() {
    await this.#writeUnwritten();
    return parseAll<RelationRecord>(await this.#rows('SELECT doc FROM relations ORDER BY create_revision', []));
  }
  async listRelationUnits(relationId: string) {
    const load = async () => parseAll<RelationUnitRecord>(await this.#rows('SELECT doc FROM relation_units WHERE relation_id = $1 ORDER BY revision', [relationId]));
    return (await this.#cached(this.#c?.relationUnits, relationId, load)) ?? [];
  }
  async listUnitRelations(unit: string) {
    return parseAll<RelationUnitRecord>(await this.#rows('SELECT doc FROM relation_units WHERE unit = $1', [unit]));
  }
  async putRelationUnit(record: RelationUnitRecord) {
    await this.#run(
      'INSERT INTO relation_units (relation_id, unit, side, revision, doc) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (relation_id, unit) DO UPDATE SET side = excluded.side, revision = excluded.revision, doc = excluded.doc',
      [record.relation_id, record.unit, record.side satisfies SideName, record.revision, JSON.stringify(record)],
    );
    this.#c?.relationUnits.delete(record.relation_id, this.undo);
  }
  async deleteRelationUnit(relationId: string, unit: string) {
    await this.#run('DELETE FROM relation_units WHERE relation_id = $1 AND unit = $2', [relationId, unit]);
    this.#c?.relationUnits.delete(relationId, this.undo);
  }
  async getRequest(requestId: string) {
    const unwritten = this.#c?.unwritten.requests.get(requestId);
    return parse<RequestRecord>(unwritten ? [unwritten] : await this.#rows('SELECT doc FROM requests WHERE id = $1', [requestId]));
  }
  async putRequest(record: RequestRecord) {
    const doc = JSON.stringify(record);
    const values = [record.request_id, record.relation_id, record.create_revision, dueTime(record), record.state === 'pending', doc];
    if (!this.#c) return this.#run(PUT_REQUEST, values);
    this.#c.unwritten.requests.set(record.request_id, { values, doc }, this.undo);
  }
  async deleteRequest(requestId: string) {
    await this.#run('DELETE FROM requests WHERE id = $1', [requestId]);
    this.#c?.unwritten.requests.delete(requestId, this.undo);
  }
  async listRequests(page: RequestPage) {
    await this.#writeUnwritten();
    return parseAll<RequestRecord>(
      await this.#rows(`SELECT doc FROM requests WHERE relation_id = ANY($1::text[]) AND create_revision > $2${page.pendingOnly ? ' AND pending' : ''} ORDER BY create_revision LIMIT $3`, [
        page.relationIds,
        page.afterCreateRevision,
        page.limit,
      ]),
    );
  }
  async listDue(now: number, limit: number) {
    await this.#writeUnwritten();
    return parseAll<RequestRecord>(await this.#rows('SELECT doc FROM requests WHERE due IS NOT NULL AND due <= $1 ORDER BY due LIMIT $2', [now, limit]));
  }
  async listResponses(requestId: string, page?: ResponsePage) {
    // LIMIT NULL is none to PostgreSQL.
    return parseAll<ResponseRecord>(
      await this.#rows('SELECT doc FROM responses WHERE request_id = $1 AND revision > $2 ORDER BY revision LIMIT $3', [requestId, page?.afterRevision ?? 0, page?.limit ?? null]),
    );
  }
  async putResponse(record: ResponseRecord) {
    await this.#run('INSERT INTO responses (request_id, responder_unit, revision, doc) VALUES ($1, $2, $3, $4)', [
      record.request_id,
      record.responder_unit,
      record.revision,
      JSON.stringify(record),
    ]);
  }
  async deleteResponses(requestId: string) {
    await this.#run('DELETE FROM responses WHERE request_id = $1', [requestId]);
  }
  async getFlags(relationId: string, unit: string) {
    const key = flagsKey(relationId, unit);
    const load = async () =>
      this.#c?.unwritten.flags.get(key) ?? parse<FlagsRecord>(await this.#rows('SELECT doc FROM flags WHERE relation_id = $1 AND unit = $2', [relationId, unit]));
    return this.#cached(this.#c?.flags, key, load);
  }
  async putFlags(relationId: string, unit: string, flags: FlagsRecord) {
    if (!this.#c) return this.#run(PUT_FLAGS, [relationId, unit, JSON.stringify(flags)]);
    this.#c.unwritten.flags.set(flagsKey(relationId, unit), flags, this.undo);
    this.#c.flags.set(flagsKey(relationId, unit), flags, this.undo);
  }
  async deleteFlags(relationId: string, unit?: string) {
    if (unit === undefined) {
      await this.#run('DELETE FROM flags WHERE relation_id = $1', [relationId]);
      this.#forgetFlags(relationId);
    } else {
      await this.#run('DELETE FROM flags WHERE relation_id = $1 AND unit = $2', [relationId, unit]);
      this.#c?.unwritten.flags.delete(flagsKey(relationId, unit), this.undo);
      this.#c?.flags.delete(flagsKey(relationId, unit), this.undo);
    }
  }
  /** Writes the batch's unwritten rows, for a statement that reads or deletes many rows of their tables. */
  async #writeUnwritten(): Promise<void> {
    const statements = this.#c?.takeUnwritten(this.undo);
    if (statements) await this.client.query(statements);
  }
  /** Forgets a relation's flags, cached and unwritten, once its rows are deleted. */
  #forgetFlags(relationId: string): void {
    const ofRelation = (key: string) => key.startsWith(flagsKey(relationId, ''));
    this.#c?.unwritten.flags.deleteWhere(ofRelation, this.undo);
    this.#c?.flags.deleteWhere(ofRelation, this.undo);
  }
  async appendChange(relationId: string, data: ChangeData) {
    const revision = await this.revision();
    this.changes.push({ revision, index: this.changes.length, relation_id: relationId, time: this.now, data });
  }
}
