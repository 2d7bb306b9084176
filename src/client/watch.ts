// Watches as async iterables. A watch remembers the revision of the last
// whole batch it received; when the stream breaks with UNAVAILABLE (gateway
// restarting, connection lost) or RESOURCE_EXHAUSTED (the consumer fell
// behind and was cut off) it reopens after that revision, and when the
// gateway no longer has that history (OUT_OF_RANGE) it starts again from a
// snapshot, announced by a RESYNC event. Batches never split a revision, so
// dropping events at or below the last revision makes every event arrive
// exactly once. A watch from now learns its first revision from the
// gateway's first (empty) batch; a snapshot's messages before its last one
// carry revision 0 and are no point to resume from, so a break in the middle
// of a snapshot starts it over, announced by RESYNC like any other.
import type { ClientReadableStream } from '@grpc/grpc-js';
import type { WatchBatch__Output } from '../../gen/relgate/v1/WatchBatch.ts';
import type { WatchEvent__Output } from '../../gen/relgate/v1/WatchEvent.ts';
import type { WatchOptions as WatchOptionsMessage } from '../../gen/relgate/v1/WatchOptions.ts';
import { structToJson, type StructMessage } from '../struct.ts';
import { Code, RelgateError, cannotStart, toRelgateError } from './errors.ts';
import type { Request, Response, WatchEvent, WatchEventType, WatchOptions } from './types.ts';

export type { WatchOptionsMessage };

/** Where batches go while a watch's stream runs. */
export interface WatchSink {
  batch(batch: WatchBatch__Output): void;
  /** The stream ended: cleanly when error is undefined. */
  end(error?: unknown): void;
}

/** A running stream of batches. */
export interface WatchStream {
  pause(): void;
  resume(): void;
  cancel(): void;
}

/** Opens a stream of batches from the given options. */
export type OpenWatch = (options: WatchOptionsMessage, sink: WatchSink) => WatchStream;

export interface WatchConfig {
  /** The gateway's WatchOptions without a start (relation, filter). */
  base: WatchOptionsMessage;
  options: WatchOptions;
  /** Delay before reopening, by attempt (0 for the first retry); the session paces its own reconnects. */
  retryDelayMs?: (attempt: number) => number;
}

const RETRIABLE = new Set<number>([Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED]);
const DEFAULT_HIGH_WATER_MARK = 1_000;

/** 50 ms doubling to 2 s, with jitter so that many watches do not return at once. */
export function backoff(attempt: number): number {
  const base = Math.min(2_000, 50 * 2 ** attempt);
  return base / 2 + Math.random() * (base / 2);
}

export class Watch<Req, Res> implements AsyncIterableIterator<WatchEvent<Req, Res>> {
  /** Resolves when the watch ends: with the error that ended it, or undefined when closed. */
  readonly closed: Promise<RelgateError | undefined>;
  /** Times the stream was reopened after a break, and of those, how many started over from a snapshot. */
  readonly stats = { resumes: 0, resyncs: 0 };
  readonly #open: OpenWatch;
  readonly #config: WatchConfig;
  readonly #queue: WatchEvent<Req, Res>[] = [];
  readonly #waiters: { resolve: (result: IteratorResult<WatchEvent<Req, Res>>) => void; reject: (error: unknown) => void }[] = [];
  readonly #highWaterMark: number;
  #resolveClosed!: (error: RelgateError | undefined) => void;
  #stream: WatchStream | undefined;
  #revision: number | undefined;
  #resync = false;
  /** Events of a snapshot that has not reached its last message were delivered. */
  #partialSnapshot = false;
  #attempt = 0;
  #retryTimer: NodeJS.Timeout | undefined;
  #paused = false;
  #error: RelgateError | undefined;
  #done = false;
  readonly #onAbort = () => this.close();
  /** Stops listening to the caller's signal, which may outlive the watch. */
  #unlisten = () => {};

  constructor(open: OpenWatch, config: WatchConfig) {
    this.#open = open;
    this.#config = config;
    this.#highWaterMark = Math.max(1, config.options.bufferEvents ?? DEFAULT_HIGH_WATER_MARK);
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    const signal = config.options.signal;
    if (signal?.aborted) {
      this.close();
      return;
    }
    this.#unlisten = () => signal?.removeEventListener('abort', this.#onAbort);
    signal?.addEventListener('abort', this.#onAbort, { once: true });
    this.#connect();
  }

  /** The revision up to which every change has been delivered to the iterator's queue. */
  get revision(): number | undefined {
    return this.#revision;
  }

  /** Stops the watch; iteration ends after the events already queued. */
  close(): void {
    this.#finish(undefined);
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  next(): Promise<IteratorResult<WatchEvent<Req, Res>>> {
    const event = this.#queue.shift();
    if (event) {
      this.#relieve();
      return Promise.resolve({ value: event, done: false });
    }
    if (this.#error) return Promise.reject(this.#error);
    if (this.#done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /** Ends iteration early (break out of for await). */
  return(): Promise<IteratorResult<WatchEvent<Req, Res>>> {
    this.close();
    this.#queue.length = 0;
    return Promise.resolve({ value: undefined, done: true });
  }

  /** What to send the gateway: resume after the last revision, or the chosen start. */
  #startOptions(): WatchOptionsMessage {
    const base = { ...this.#config.base, progress_interval_ms: this.#config.options.progressIntervalMs ?? 0 };
    if (this.#revision !== undefined) return { ...base, start: 'WATCH_START_AFTER_REVISION', after_revision: String(this.#revision) };
    const start = this.#resync ? 'snapshot' : (this.#config.options.start ?? 'snapshot');
    if (start === 'snapshot') return { ...base, start: 'WATCH_START_SNAPSHOT' };
    if (start === 'now') return { ...base, start: 'WATCH_START_NOW' };
    return { ...base, start: 'WATCH_START_AFTER_REVISION', after_revision: String(start.afterRevision) };
  }

  #connect(): void {
    if (this.#done) return;
    let ended = false;
    const stream = this.#openSafely(this.#startOptions(), {
      batch: (batch) => {
        if (!ended) this.#onBatch(batch);
      },
      end: (error) => {
        if (ended) return;
        ended = true;
        this.#onEnd(error);
      },
    });
    this.#stream = stream;
    if (this.#paused) stream.pause();
  }

  /** Opens the stream; a channel that cannot start calls (closed) ends the watch. */
  #openSafely(options: WatchOptionsMessage, sink: WatchSink): WatchStream {
    try {
      return this.#open(options, sink);
    } catch (error) {
      queueMicrotask(() => this.#finish(cannotStart('the watch', error)));
      return { pause() {}, resume() {}, cancel() {} };
    }
  }

  #onBatch(batch: WatchBatch__Output): void {
    this.#attempt = 0;
    const last = this.#revision;
    for (const raw of batch.events) {
      const event = toWatchEvent<Req, Res>(raw);
      // A resumed stream never repeats a change's revision; this guards the rule. A bookmark repeats the revision
      // reached while nothing changes: that is its news.
      if (last !== undefined && (event.revision < last || (event.revision === last && event.type !== 'BOOKMARK'))) continue;
      this.#push(event);
    }
    const revision = Number(batch.revision);
    if (revision > 0) {
      this.#revision = Math.max(last ?? 0, revision);
      this.#partialSnapshot = false;
      this.#pushBackIfFull();
    } else if (batch.events.length > 0) {
      this.#partialSnapshot = true;
    }
  }

  #onEnd(error: unknown): void {
    this.#stream = undefined;
    if (this.#done) return;
    if (error === undefined) return this.#finish(undefined);
    const failure = toRelgateError(error);
    if (failure.code !== Code.OUT_OF_RANGE && !RETRIABLE.has(failure.code)) return this.#finish(failure);
    // The history after our revision is gone, or a snapshot broke off half-way: start over from a snapshot.
    if (failure.code === Code.OUT_OF_RANGE || (this.#revision === undefined && this.#partialSnapshot)) {
      this.#revision = undefined;
      this.#partialSnapshot = false;
      this.#resync = true;
      this.stats.resyncs += 1;
      this.#push({ type: 'RESYNC', revision: 0, relationId: '' });
    }
    this.stats.resumes += 1;
    const delay = (this.#config.retryDelayMs ?? backoff)(this.#attempt);
    this.#attempt += 1;
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }

  #push(event: WatchEvent<Req, Res>): void {
    const waiter = this.#waiters.shift();
    if (waiter) return waiter.resolve({ value: event, done: false });
    this.#queue.push(event);
    this.#pushBackIfFull();
  }

  /**
   * Lets the transport's flow control push back on the gateway once the queue is full; not while the first snapshot
   * comes (no revision yet), which is read whole: the gateway cuts off a snapshot that stops moving, and a snapshot
   * cut off starts over.
   */
  #pushBackIfFull(): void {
    if (this.#queue.length >= this.#highWaterMark && !this.#paused && this.#revision !== undefined) {
      this.#paused = true;
      this.#stream?.pause();
    }
  }

  #relieve(): void {
    if (this.#paused && this.#queue.length <= this.#highWaterMark / 2) {
      this.#paused = false;
      this.#stream?.resume();
    }
  }

  #finish(error: RelgateError | undefined): void {
    if (this.#done) return;
    this.#done = true;
    this.#error = error;
    this.#unlisten();
    clearTimeout(this.#retryTimer);
    this.#stream?.cancel();
    this.#stream = undefined;
    for (const waiter of this.#waiters.splice(0)) {
      if (error) waiter.reject(error);
      else waiter.resolve({ value: undefined, done: true });
    }
    this.#resolveClosed(error);
  }
}

/** Requests and responses with their fields as plain typed objects. */
export function toRequest<F>(request: { fields?: StructMessage | null } & object): Request<F> {
  return { ...(request as Request<unknown>), fields: structToJson(request.fields) as F };
}

export function toResponse<F>(response: { fields?: StructMessage | null } & object): Response<F> {
  return { ...(response as Response<unknown>), fields: structToJson(response.fields) as F };
}

function toWatchEvent<Req, Res>(raw: WatchEvent__Output): WatchEvent<Req, Res> {
  const event: WatchEvent<Req, Res> = {
    type: raw.type.replace(/^EVENT_TYPE_/, '') as WatchEventType,
    revision: Number(raw.revision),
    relationId: raw.relation_id,
  };
  if (raw.request) event.request = toRequest<Req>(raw.request);
  if (raw.response) event.response = toResponse<Res>(raw.response);
  if (raw.unit) event.unit = raw.unit;
  if (raw.requester_flags) event.requesterFlags = raw.requester_flags;
  if (raw.responder_flags) event.responderFlags = raw.responder_flags;
  return event;
}

/** Opens a server-streaming watch RPC as an OpenWatch. */
export function serverStreamWatch(
  start: (options: WatchOptionsMessage) => ClientReadableStream<{ batch: WatchBatch__Output | null }>,
): OpenWatch {
  return (options, sink) => {
    const call = start(options);
    let cancelled = false;
    call.on('data', (message: { batch: WatchBatch__Output | null }) => {
      if (message.batch) sink.batch(message.batch);
    });
    call.on('error', (error) => sink.end(cancelled ? undefined : error));
    call.on('end', () => sink.end(undefined));
    return {
      pause: () => call.pause(),
      resume: () => call.resume(),
      cancel: () => {
        cancelled = true;
        call.cancel();
      },
    };
  };
}
