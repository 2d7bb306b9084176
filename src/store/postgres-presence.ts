// Which units watch which relations on any replica, so that a call on one
// replica knows about responders watching on another (NO_RESPONDERS). Each
// replica keeps its own rows in `watchers` and a heartbeat in `replicas`;
// rows of a replica whose heartbeat stopped (killed, cut off) stop counting
// and are removed by the survivors.
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { Code, RelgateError } from '../errors.ts';
import type { SideName } from './store.ts';

export interface WatcherKey {
  unit: string;
  side: SideName;
  /** One relation, or '' for every relation the unit joins on the side. */
  relationId: string;
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
  #timer: NodeJS.Timeout | undefined;

  constructor(pool: pg.Pool, options: Partial<PresenceOptions> = {}) {
    this.#pool = pool;
    this.#options = { ...DEFAULT_PRESENCE, ...options };
  }

  async start(): Promise<void> {
    await this.#heartbeat();
    this.#timer = setInterval(() => void this.#heartbeat().catch(() => undefined), this.#options.heartbeatMs);
    this.#timer.unref();
  }

  /** Records a watcher before it starts; resolves once other replicas can see it. Returns its removal. */
  async add(key: WatcherKey): Promise<() => void> {
    const id = JSON.stringify([key.unit, key.side, key.relationId]);
    const count = (this.#counts.get(id) ?? 0) + 1;
    this.#counts.set(id, count);
    await this.#serially(() =>
      this.#query(
        'INSERT INTO watchers (replica, unit, side, relation_id, count) VALUES ($1, $2, $3, $4, 1) ON CONFLICT (replica, unit, side, relation_id) DO UPDATE SET count = watchers.count + 1',
        [this.replica, key.unit, key.side, key.relationId],
      ),
    );
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      const left = (this.#counts.get(id) ?? 1) - 1;
      if (left === 0) this.#counts.delete(id);
      else this.#counts.set(id, left);
      const where = 'WHERE replica = $1 AND unit = $2 AND side = $3 AND relation_id = $4';
      const statement = left === 0 ? `DELETE FROM watchers ${where}` : `UPDATE watchers SET count = count - 1 ${where}`;
      void this.#serially(() => this.#pool.query(statement, [this.replica, key.unit, key.side, key.relationId])).catch(() => undefined);
    };
  }

  /** Whether a live replica has a watcher of the relation on the side (by the unit, if given). */
  async isWatched(relationId: string, side: SideName, unit?: string): Promise<boolean> {
    const { rows } = await this.#query(
      `SELECT 1 FROM watchers w JOIN replicas r ON r.id = w.replica
       WHERE w.count > 0 AND w.side = $2 AND ($3::text IS NULL OR w.unit = $3)
         AND r.heartbeat > now() - make_interval(secs => $4::float8 / 1000)
         AND (w.relation_id = $1 OR (w.relation_id = '' AND EXISTS (
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

  async #heartbeat(): Promise<void> {
    const { rows } = await this.#pool.query<{ created: boolean }>(
      'INSERT INTO replicas (id, heartbeat) VALUES ($1, now()) ON CONFLICT (id) DO UPDATE SET heartbeat = now() RETURNING (xmax = 0) AS created',
      [this.replica],
    );
    // Silent long enough to be cleared away by another replica: write our watchers again.
    if (rows[0]?.created && this.#counts.size > 0) await this.#serially(() => this.#restore());
    await this.#pool.query('DELETE FROM replicas WHERE heartbeat < now() - make_interval(secs => $1::float8 / 1000)', [this.#options.staleMs * 3]);
  }

  async #restore(): Promise<void> {
    for (const [id, count] of this.#counts) {
      const [unit, side, relationId] = JSON.parse(id) as [string, SideName, string];
      await this.#pool.query(
        'INSERT INTO watchers (replica, unit, side, relation_id, count) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (replica, unit, side, relation_id) DO UPDATE SET count = excluded.count',
        [this.replica, unit, side, relationId, count],
      );
    }
  }

  async #query(text: string, values: unknown[]): Promise<pg.QueryResult> {
    try {
      return await this.#pool.query(text, values);
    } catch (error) {
      throw new RelgateError(Code.UNAVAILABLE, 'the store is unavailable', { reason: 'STORE_UNAVAILABLE', cause: error });
    }
  }

  #serially<T>(step: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(step);
    this.#chain = run.catch(() => undefined);
    return run;
  }
}
