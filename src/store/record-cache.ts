// Write-through caches of the small records every write reads (units,
// relations, memberships, flags). The SQLite store is their only writer, so
// what it put is what the database holds, and it keeps them for as long as it
// runs; a PostgreSQL replica keeps them for one batch, while it holds the lock
// that every replica's writes take. A write that rolls back undoes its cache
// changes with it. Each cache holds a bounded number of records, the least
// recently used going first, so memory does not grow with the number of
// relations and units ever touched. Rows that every write of a batch rewrites
// wait in DeferredRows and are written once, when the batch ends.
import { LRUCache } from 'lru-cache';
import type { FlagsRecord, RelationRecord, RelationUnitRecord, UnitRecord } from './store.ts';

export const copyRelation = (relation: RelationRecord): RelationRecord => ({ ...relation, counters: { ...relation.counters } });

/** The caches of the records every write reads, by key; flags by flagsKey. */
export function recordCaches(maxEntries: number) {
  return {
    units: new RecordCache<UnitRecord>((unit) => ({ ...unit, egress_subnets: [...unit.egress_subnets], labels: { ...unit.labels } }), maxEntries),
    relations: new RecordCache<RelationRecord>(copyRelation, maxEntries),
    relationUnits: new RecordCache<RelationUnitRecord[]>((units) => units.map((unit) => ({ ...unit })), maxEntries),
    flags: new RecordCache<FlagsRecord>((flags) => ({ ...flags }), maxEntries),
  };
}

export type RecordCaches = ReturnType<typeof recordCaches>;

export const flagsKey = (relationId: string, unit: string) => `${relationId}\n${unit}`;

/** How to undo one write's cache changes, newest first. */
export class UndoLog {
  readonly #steps: (() => void)[] = [];

  push(step: () => void): void {
    this.#steps.push(step);
  }

  undo(): void {
    for (let step = this.#steps.pop(); step; step = this.#steps.pop()) step();
  }
}

/**
 * Records by key, stored and handed out as copies so that callers may change
 * what they put or got without changing the cache.
 */
export class RecordCache<V extends object> {
  readonly #entries: LRUCache<string, V>;
  readonly #copy: (value: V) => V;

  constructor(copy: (value: V) => V, maxEntries: number) {
    this.#copy = copy;
    // A bound by size, each record counting 1, rather than `max`, which allocates room for every entry up front.
    this.#entries = new LRUCache<string, V>({ maxSize: maxEntries, sizeCalculation: () => 1 });
  }

  get size(): number {
    return this.#entries.size;
  }

  get(key: string): V | undefined {
    const value = this.#entries.get(key);
    return value === undefined ? undefined : this.#copy(value);
  }

  /** Remembers what the database holds for key (read, not written: nothing to undo). */
  fill(key: string, value: V | undefined): V | undefined {
    if (value !== undefined) this.#entries.set(key, this.#copy(value));
    return value;
  }

  set(key: string, value: V, undo: UndoLog): void {
    this.#remember(key, undo);
    this.#entries.set(key, this.#copy(value));
  }

  delete(key: string, undo: UndoLog): void {
    if (!this.#entries.has(key)) return;
    this.#remember(key, undo);
    this.#entries.delete(key);
  }

  /** Forgets every key for which `test` holds (rows a statement deleted in bulk). */
  deleteWhere(test: (key: string) => boolean, undo: UndoLog): void {
    for (const key of [...this.#entries.keys()]) if (test(key)) this.delete(key, undo);
  }

  clear(): void {
    this.#entries.clear();
  }

  // Evicting an entry is always safe: the next read fills it from the database.
  #remember(key: string, undo: UndoLog): void {
    const old = this.#entries.peek(key);
    undo.push(() => (old === undefined ? this.#entries.delete(key) : this.#entries.set(key, old)));
  }
}

/**
 * Rows that many writes of one batch rewrite (a relation's counters change
 * with each of its requests), kept here and written once each when the batch
 * commits, or before a statement that reads their table.
 */
export class DeferredRows<V extends object> {
  readonly #rows = new Map<string, V>();
  readonly #copy: (value: V) => V;
  readonly #write: (key: string, value: V) => void;

  constructor(copy: (value: V) => V, write: (key: string, value: V) => void) {
    this.#copy = copy;
    this.#write = write;
  }

  get(key: string): V | undefined {
    const value = this.#rows.get(key);
    return value === undefined ? undefined : this.#copy(value);
  }

  set(key: string, value: V, undo: UndoLog): void {
    this.#remember(key, undo);
    this.#rows.set(key, this.#copy(value));
  }

  /** The row was deleted by a statement: nothing left to write. */
  delete(key: string, undo: UndoLog): void {
    if (!this.#rows.has(key)) return;
    this.#remember(key, undo);
    this.#rows.delete(key);
  }

  /** Writes every row; if the write that flushed them rolls back (undo), they wait again. */
  flush(undo?: UndoLog): void {
    if (this.#rows.size === 0) return;
    const rows = new Map(this.#rows);
    for (const [key, value] of rows) this.#write(key, value);
    this.#rows.clear();
    undo?.push(() => {
      for (const [key, value] of rows) this.#rows.set(key, value);
    });
  }

  /** The batch rolled back: its rows are gone with it. */
  clear(): void {
    this.#rows.clear();
  }

  #remember(key: string, undo: UndoLog): void {
    const old = this.#rows.get(key);
    undo.push(() => (old === undefined ? this.#rows.delete(key) : this.#rows.set(key, old)));
  }
}
