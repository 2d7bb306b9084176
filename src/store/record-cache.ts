// Write-through cache of the small records every write reads (units,
// relations, memberships, flags). The SQLite store is their only writer, so
// what it put is what the database holds; a write that rolls back undoes its
// cache changes with it.

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
export class RecordCache<V> {
  readonly #entries = new Map<string, V>();
  readonly #copy: (value: V) => V;

  constructor(copy: (value: V) => V) {
    this.#copy = copy;
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

  #remember(key: string, undo: UndoLog): void {
    const had = this.#entries.has(key);
    const old = this.#entries.get(key) as V;
    undo.push(() => (had ? this.#entries.set(key, old) : this.#entries.delete(key)));
  }
}
