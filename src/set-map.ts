// Sets of values by key, for the indexes the server keeps of its open calls
// and watchers: a key is dropped as soon as its set empties, so keys of
// finished calls never pile up.

export class SetMap<V> {
  readonly #sets = new Map<string, Set<V>>();

  /** The values under key (none: an empty iterable). */
  get(key: string): ReadonlySet<V> {
    return this.#sets.get(key) ?? EMPTY;
  }

  /** Whether any key holds a value. */
  get isEmpty(): boolean {
    return this.#sets.size === 0;
  }

  add(key: string, value: V): void {
    let set = this.#sets.get(key);
    if (!set) this.#sets.set(key, (set = new Set()));
    set.add(value);
  }

  /** Every value under every key. */
  *values(): IterableIterator<V> {
    for (const set of this.#sets.values()) yield* set;
  }

  delete(key: string, value: V): void {
    const set = this.#sets.get(key);
    if (!set?.delete(value)) return;
    if (set.size === 0) this.#sets.delete(key);
  }
}

const EMPTY: ReadonlySet<never> = new Set();
