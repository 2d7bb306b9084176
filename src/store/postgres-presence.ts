// Which units watch which relations on any replica, so that a call on one
// replica knows about responders watching on another (NO_RESPONDERS). Each
// replica keeps its own rows in `watchers` and a heartbeat in `replicas`;
// rows of a replica whose heartbeat stopped (killed, cut off) stop counting
// and are removed by the survivors. Each row is written as the count this
// replica holds; a write that fails leaves the rows to the next heartbeat,
// which writes them all again, so a database outage leaves no phantom.
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { relationIdPrefix } from '../relation-id.ts';
import { onceWhileFailing, type RunReport } from '../logger.ts';
import { storeUnavailable } from './store-errors.ts';
import type { SideName, StoreLog } from './store.ts';

export interface WatcherKey {
  unit: string;
  side: SideName;
  /** One relation, or '' for every relation the unit joins on the side. */
  relationId: string;
  /** With no relation: only relations of this interface, or '' for every interface. */
  interface: string;
}

export interface PresenceOptions {
  heartbeatMs: number;
  /** A replica silent for this long no longer counts. */
  staleMs: number;
}

export const DEFAULT_PRESENCE: PresenceOptions = { heartbeatMs: 2_000, staleMs: 10_000 };


export class PostgresPresence {
  readonly replica = randomUUID();
  readonly #pool: pg.Pool;
  readonly #options: PresenceOptions;
  readonly #counts = new Map<string, number>();
  /** Row changes run one after another, so an add and its removal reach the table in order. */
  #chain: Promise<unknown> = Promise.resolve();
  /** A row write failed, or the replica's row was made again: the next heartbeat rewrites every row. */
  #stale = false;
  #timer: NodeJS.Timeout | undefined;
  /** The operator hears of the first failed heartbeat, and of the next that succeeds. */
  readonly #heartbeats: RunReport;

  constructor(pool: pg.Pool, options: Partial<PresenceOptions> = {}, log?: StoreLog) {
    this.#pool = pool;
    this.#options = { ...DEFAULT_PRESENCE, ...options };
    this.#heartbeats = onceWhileFailing({
      failed: (error) =>
        log?.warn(
          { replica: this.replica, err: error, stale_after_ms: this.#options.staleMs },
          'PostgreSQL heartbeat failed: other replicas stop counting this replica\'s watchers (Call may answer NO_RESPONDERS) until it succeeds',
        ),
      recovered: () => log?.info({ replica: this.replica }, 'PostgreSQL heartbeat restored: other replicas count this replica\'s watchers again'),
    });
  }

  async start(): Promise<void> {
    await this.#heartbeat();
    this.#timer = setInterval(() => this.#beat(), this.#options.heartbeatMs);
    this.#timer.unref();
  }

  /** Records a watcher before it starts; resolves once other replicas can see it. Returns its removal. */
  async add(key: WatcherKey): Promise<() => void> {
    // A watch of every relation of one interface is kept as the prefix of those relations' ids ("http:").
    const id = JSON.stringify([key.unit, key.side, key.relationId || (key.interface ? relationIdPrefix(key.interface) : '')]);
    this.#count(id, 1);
    try {
      await this.#serially(() => this.#write(id));
    } catch (error) {
      this.#count(id, -1);
      this.#stale = true;
      throw storeUnavailable('the store is unavailable', error);
    }
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      this.#count(id, -1);
      void this.#serially(() => this.#write(id)).catch(() => (this.#stale = true));
    };
  }

  /** Whether a live replica has a watcher of the relation on the side (by the unit, if given). */
  async isWatched(relationId: string, side: SideName, unit?: string): Promise<boolean> {
    const { rows } = await this.#query(
      `SELECT 1 FROM watchers w JOIN replicas r ON r.id = w.replica
       WHERE w.count > 0 AND w.side = $2 AND ($3::text IS NULL OR w.unit = $3)
         AND r.heartbeat > now() - make_interval(secs => $4::float8 / 1000)
         AND (w.relation_id = $1 OR ((w.relation_id = '' OR (right(w.relation_id, 1) = ':' AND left($1, length(w.relation_id)) = w.relation_id)) AND EXISTS (
           SELECT 1 FROM relation_units m WHERE m.relation_id = $1 AND m.unit = w.unit AND m.side = w.side)))
       LIMIT 1`,
      [relationId, side, unit ?? null, this.#options.staleMs],
    );
    return rows.length > 0;
  }

  /** Removes this replica's rows (its watches have ended). */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#chain;
    await this.#pool.query('DELETE FROM replicas WHERE id = $1', [this.replica]).catch(() => undefined);
  }

  #beat(): void {
    this.#heartbeat().then(this.#heartbeats.worked, this.#heartbeats.failed);
  }

  async #heartbeat(): Promise<void> {
    const { rows } = await this.#pool.query<{ created: boolean }>(
      'INSERT INTO replicas (id, heartbeat) VALUES ($1, now()) ON CONFLICT (id) DO UPDATE SET heartbeat = now() RETURNING (xmax = 0) AS created',
      [this.replica],
    );
    // Silent long enough to be cleared away by another replica, or a row write failed: write our watchers again.
    if (rows[0]?.created || this.#stale) await this.#serially(() => this.#restore());
    await this.#pool.query('DELETE FROM replicas WHERE heartbeat < now() - make_interval(secs => $1::float8 / 1000)', [this.#options.staleMs * 3]);
  }

  /** Makes this replica's rows what it holds: every count written, every other row of it deleted. */
  async #restore(): Promise<void> {
    this.#stale = false;
    try {
      const keys = [...this.#counts.keys()].map((id) => JSON.parse(id) as [string, SideName, string]);
      await this.#pool.query(
        `DELETE FROM watchers WHERE replica = $1
           AND (unit, side, relation_id) NOT IN (SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))`,
        [this.replica, keys.map((key) => key[0]), keys.map((key) => key[1]), keys.map((key) => key[2])],
      );
      for (const id of this.#counts.keys()) await this.#write(id);
    } catch (error) {
      this.#stale = true;
      throw error;
    }
  }

  #count(id: string, by: number): void {
    const count = (this.#counts.get(id) ?? 0) + by;
    if (count > 0) this.#counts.set(id, count);
    else this.#counts.delete(id);
  }

  /**
   * Writes one row as the count this replica holds now (none: deleted). The
   * replica's own row is made again if another replica cleared it away, and
   * the heartbeat then rewrites the rows that went with it.
   */
  async #write(id: string): Promise<void> {
    const [unit, side, relationId] = JSON.parse(id) as [string, SideName, string];
    const count = this.#counts.get(id) ?? 0;
    if (count === 0) {
      await this.#pool.query('DELETE FROM watchers WHERE replica = $1 AND unit = $2 AND side = $3 AND relation_id = $4', [this.replica, unit, side, relationId]);
      return;
    }
    const { rows } = await this.#pool.query<{ created: boolean }>(
      `WITH replica AS (
         INSERT INTO replicas (id, heartbeat) VALUES ($1, now()) ON CONFLICT (id) DO UPDATE SET heartbeat = replicas.heartbeat RETURNING (xmax = 0) AS created
       ), watcher AS (
         INSERT INTO watchers (replica, unit, side, relation_id, count) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (replica, unit, side, relation_id) DO UPDATE SET count = excluded.count
       )
       SELECT created FROM replica`,
      [this.replica, unit, side, relationId, count],
    );
    if (rows[0]?.created) this.#stale = true;
  }

  async #query(text: string, values: unknown[]): Promise<pg.QueryResult> {
    try {
      return await this.#pool.query(text, values);
    } catch (error) {
      throw storeUnavailable('the store is unavailable', error);
    }
  }

  #serially<T>(step: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(step);
    this.#chain = run.catch(() => undefined);
    return run;
  }
}
