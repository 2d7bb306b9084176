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
export const copyFlags = (flags: FlagsRecord): FlagsRecord => ({ ...flags });

/** The caches of the records every write reads, by key; flags by flagsKey. */
export function recordCaches(maxEntries: number) {
  return {
    units: new RecordCache<UnitRecord>((unit) => ({ ...unit, egress_subnets: [...unit.egress_subnets], labels: { ...unit.labels } }), maxEntries),
    relations: new RecordCache<RelationRecord>(copyRelation, maxEntries),
    relationUnits: new RecordCache<RelationUnitRecord[]>((units) => units.map((unit) => ({ ...unit })), maxEntries),
    flags: new RecordCache<FlagsRecord>(copyFlags, maxEntries),
  };
}

export const flagsKey = (relationId: string, unit: string) => `${relationId}\n${unit}`;

/** The relation id and unit of a flagsKey (relation ids hold no newline). */
export function flagsKeyParts(key: string): [relationId: string, unit: string] {
  const at = key.indexOf('\n');
  return [key.slice(0, at), key.slice(at + 1)];
}

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

/** Where records are kept: an LRUCache, or Unbounded for rows that must not be let go. */
interface Backing<V> {
  readonly size: number;
  get(key: string): V | undefined;
  /** Reads without counting as a use. */
  peek(key: string): V | undefined;
  set(key: string, value: V): unknown;
  delete(key: string): unknown;
  has(key: string): boolean;
  keys(): Iterable<string>;
  entries(): Iterable<[string, V]>;
  clear(): void;
}

/** A Backing that keeps everything. */
class Unbounded<V> extends Map<string, V> {
  peek(key: string): V | undefined {
    return this.get(key);
  }
}

/**
 * Records by key, stored and handed out as copies so that callers may change
 * what they put or got without changing them here; a write's changes are
 * undone with its UndoLog.
 */
class CopiedRecords<V extends object> {
  protected readonly backing: Backing<V>;
  protected readonly copy: (value: V) => V;

  constructor(copy: (value: V) => V, backing: Backing<V>) {
    this.copy = copy;
    this.backing = backing;
  }

  get size(): number {
    return this.backing.size;
  }

  get(key: string): V | undefined {
    const value = this.backing.get(key);
    return value === undefined ? undefined : this.copy(value);
  }

  set(key: string, value: V, undo: UndoLog): void {
    this.#remember(key, undo);
    this.backing.set(key, this.copy(value));
  }

  /** Forgets key; undone even when it held nothing, since a read later in the write may fill it with what rolls back. */
  delete(key: string, undo: UndoLog): void {
    this.#remember(key, undo);
    this.backing.delete(key);
  }

  /** Forgets every key for which `test` holds (rows a statement deleted in bulk). */
  deleteWhere(test: (key: string) => boolean, undo: UndoLog): void {
    for (const key of [...this.backing.keys()]) if (test(key)) this.delete(key, undo);
  }

  clear(): void {
    this.backing.clear();
  }

  #remember(key: string, undo: UndoLog): void {
    const old = this.backing.peek(key);
    undo.push(() => (old === undefined ? this.backing.delete(key) : this.backing.set(key, old)));
  }
}

/** A bounded cache of records: the least recently used goes first (always safe: the next read fills it again). */
export class RecordCache<V extends object> extends CopiedRecords<V> {
  constructor(copy: (value: V) => V, maxEntries: number) {
    // A bound by size, each record counting 1, rather than `max`, which allocates room for every entry up front.
    super(copy, new LRUCache<string, V>({ maxSize: maxEntries, sizeCalculation: () => 1 }));
  }

  /** Remembers what the database holds for key (read, not written: nothing to undo). */
  fill(key: string, value: V | undefined): V | undefined {
    if (value !== undefined) this.backing.set(key, this.copy(value));
    return value;
  }
}

/**
 * Rows that many writes of one batch rewrite (a relation's counters change
 * with each of its requests), kept here and written once each when the batch
 * commits, or before a statement that reads their table. Nothing is let go:
 * clear() is for a batch that rolled back.
 */
export class DeferredRows<V extends object> extends CopiedRecords<V> {
  readonly #write: (key: string, value: V) => void;

  constructor(copy: (value: V) => V, write: (key: string, value: V) => void) {
    super(copy, new Unbounded<V>());
    this.#write = write;
  }

  /** Writes every row; if the write that flushed them rolls back (undo), they wait again. */
  flush(undo?: UndoLog): void {
    if (this.backing.size === 0) return;
    const rows = [...this.backing.entries()];
    for (const [key, value] of rows) this.#write(key, value);
    this.backing.clear();
    undo?.push(() => {
      for (const [key, value] of rows) this.backing.set(key, value);
    });
  }
}
