// Write-through cache of the small records every write reads (units,
// relations, memberships, flags). The SQLite store is their only writer, so
// what it put is what the database holds; a write that rolls back undoes its
// cache changes with it. Each cache holds a bounded number of records, the
// least recently used going first, so memory does not grow with the number
// of relations and units ever touched.
import { LRUCache } from 'lru-cache';

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
