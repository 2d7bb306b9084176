// Closed-loop load: a fixed number of round trips in flight, each started as
// soon as the previous one of its slot completes. Latencies are kept per
// round trip, so the percentiles are exact.
import { PerformanceObserver } from 'node:perf_hooks';

export interface LoadOptions {
  inFlight: number;
  warmupMs: number;
  durationMs: number;
}

export interface LoadResult {
  inFlight: number;
  roundTrips: number;
  seconds: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  /** CPU time (user + system, all threads) per round trip of each process taking part, in microseconds. */
  cpu?: ProcessCpu[];
  /** Garbage-collection pauses of the process that drove the load, over the measured period. */
  gc?: GcPauses;
}

export interface GcPauses {
  count: number;
  medianMs: number;
  maxMs: number;
}

/** Summarises pause durations (ms). */
export function gcPauses(durations: readonly number[]): GcPauses {
  const sorted = Float64Array.from(durations).sort();
  return { count: sorted.length, medianMs: sorted.length ? percentile(sorted, 0.5) : 0, maxMs: sorted.at(-1) ?? 0 };
}

export interface ProcessCpu {
  process: string;
  usPerRoundTrip: number;
}

/** Edges of the measured period, for whoever samples the processes' CPU time. */
export type MeasureEdge = 'start' | 'end';

/** Runs `roundTrip` with `inFlight` slots: a warm-up, then the measured period. */
export async function runLoad(roundTrip: () => Promise<void>, options: LoadOptions, onEdge: (edge: MeasureEdge) => Promise<void> = async () => {}): Promise<LoadResult> {
  await drive(roundTrip, options.inFlight, options.warmupMs, undefined);
  const latencies: number[] = [];
  await onEdge('start');
  const pauses: number[] = [];
  const gc = new PerformanceObserver((list) => pauses.push(...list.getEntries().map((entry) => entry.duration)));
  gc.observe({ entryTypes: ['gc'] });
  const started = performance.now();
  await drive(roundTrip, options.inFlight, options.durationMs, latencies);
  const seconds = (performance.now() - started) / 1000;
  // Entries not yet delivered to the callback are still to be taken.
  pauses.push(...gc.takeRecords().map((entry) => entry.duration));
  gc.disconnect();
  await onEdge('end');
  return { ...summarize(options.inFlight, latencies, seconds), gc: gcPauses(pauses) };
}

async function drive(roundTrip: () => Promise<void>, inFlight: number, durationMs: number, latencies: number[] | undefined): Promise<void> {
  const until = performance.now() + durationMs;
  const slot = async () => {
    while (performance.now() < until) {
      const start = performance.now();
      await roundTrip();
      latencies?.push(performance.now() - start);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, slot));
}

export function summarize(inFlight: number, latencies: number[], seconds: number): LoadResult {
  const sorted = Float64Array.from(latencies).sort();
  return {
    inFlight,
    roundTrips: sorted.length,
    seconds,
    perSecond: sorted.length / seconds,
    p50Ms: percentile(sorted, 0.5),
    p99Ms: percentile(sorted, 0.99),
  };
}

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] as number;
}

/**
 * Round trips whose completion arrives as an event (a watch, a stream, a
 * subscription), keyed by the caller's id.
 */
export class PendingRoundTrips {
  readonly #waiting = new Map<string, { resolve(): void; reject(error: Error): void }>();

  /** A promise settled by `complete(id)` or `fail(id)`; ids must be unique among those waiting. */
  begin(id: string): Promise<void> {
    return new Promise<void>((resolve, reject) => this.#waiting.set(id, { resolve, reject }));
  }

  complete(id: string): void {
    this.#take(id)?.resolve();
  }

  fail(id: string, error: Error): void {
    this.#take(id)?.reject(error);
  }

  #take(id: string) {
    const waiter = this.#waiting.get(id);
    this.#waiting.delete(id);
    return waiter;
  }
}
