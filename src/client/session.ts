// The client side of a unit's session: one bidirectional stream carrying
// commands up (each acknowledged once durable) and the unit's watches down.
// When the stream breaks, commands waiting for their acknowledgement fail
// with the stream's error, the session's watches resume from their last
// revisions on a new stream, and until it is up again the endpoints send
// their commands as unary calls. A watch whose reader falls behind does not
// stall the commands: the session ends its stream gracefully (every command
// sent is still acknowledged) and opens a new one, resuming the watches, once
// the reader has caught up.
import type * as grpc from '@grpc/grpc-js';
import type { OpenRequest } from '../../gen/relgate/v1/OpenRequest.ts';
import type { OpenResponse__Output } from '../../gen/relgate/v1/OpenResponse.ts';
import type { SessionAck__Output } from '../../gen/relgate/v1/SessionAck.ts';
import type { SessionCommand } from '../../gen/relgate/v1/SessionCommand.ts';
import type { Connection } from './connect.ts';
import { Code, RelgateError, fromAckStatus, toRelgateError } from './errors.ts';
import type { InterfaceName, RequestFields, ResponseFields, WatchOptions } from './types.ts';
import { Watch, backoff, type WatchOptionsMessage, type WatchSink } from './watch.ts';

type WatchName = 'incoming_requests' | 'responses';
/** Session commands by name, with their request bodies. */
type Commands = Required<Omit<SessionCommand, 'correlation_id' | 'command'>>;
export type CommandName = keyof Commands;
export type CommandBody<K extends CommandName> = NonNullable<Commands[K]>;
export type CommandResult<K extends CommandName> = NonNullable<SessionAck__Output[K]>;

export interface SessionWatchOptions extends WatchOptions {
  /** One relation; every relation the unit joined on that side when unset. */
  relation?: string;
}

export interface SessionOptions {
  /** Carry a watch of the requests addressed to the unit (responder side). */
  incomingRequests?: SessionWatchOptions & { filter?: 'all' | 'new' };
  /** Carry a watch of the responses to the unit's requests (requester side). */
  responses?: SessionWatchOptions;
}

interface Registered {
  watch: Watch<unknown, unknown>;
  /** Set while the watch waits for (or rides on) a stream. */
  sink?: WatchSink;
  options?: WatchOptionsMessage;
  paused: boolean;
}

interface Pending {
  name: CommandName;
  resolve(result: unknown): void;
  reject(error: RelgateError): void;
}

const RETRIABLE = new Set<number>([Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED, Code.OUT_OF_RANGE]);

export class ClientSession {
  /** Resolves when the session ends: with the error that ended it, or undefined when closed. */
  readonly closed: Promise<RelgateError | undefined>;
  /** Times the stream was opened again after a break. */
  readonly stats = { reconnects: 0 };
  readonly #connection: Connection;
  readonly #watches = new Map<WatchName, Registered>();
  readonly #pending = new Map<string, Pending>();
  #resolveClosed!: (error: RelgateError | undefined) => void;
  #call: grpc.ClientDuplexStream<OpenRequest, OpenResponse__Output> | undefined;
  #wantStream = true;
  #attempt = 0;
  #retryTimer: NodeJS.Timeout | undefined;
  #nextId = 0;
  #closing = false;
  /** The stream was half-closed because a watch's reader fell behind. */
  #draining = false;
  #closed = false;

  constructor(connection: Connection, options: SessionOptions) {
    this.#connection = connection;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    if (options.incomingRequests) {
      const { relation, filter, ...watchOptions } = options.incomingRequests;
      this.#addWatch('incoming_requests', { relation_id: relation ?? '', filter: filter === 'new' ? 'REQUEST_FILTER_NEW' : 'REQUEST_FILTER_ALL' }, watchOptions);
    }
    if (options.responses) {
      const { relation, ...watchOptions } = options.responses;
      this.#addWatch('responses', { relation_id: relation ?? '' }, watchOptions);
    }
    this.#maybeStart();
  }

  /** True while commands go over the stream. */
  get isConnected(): boolean {
    return this.#call !== undefined && !this.#closing && !this.#draining;
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  /** The session's watch of requests addressed to the unit, typed by interface I. */
  incomingRequests<I extends InterfaceName>(): Watch<RequestFields<I>, ResponseFields<I>> {
    return this.#watch('incoming_requests') as Watch<RequestFields<I>, ResponseFields<I>>;
  }

  /** The session's watch of the unit's requests and their responses, typed by interface I. */
  responses<I extends InterfaceName>(): Watch<RequestFields<I>, ResponseFields<I>> {
    return this.#watch('responses') as Watch<RequestFields<I>, ResponseFields<I>>;
  }

  /** Sends a command and resolves with its result once the gateway has made it durable. */
  command<K extends CommandName>(name: K, body: CommandBody<K>): Promise<CommandResult<K>> {
    const call = this.#call;
    if (!call || this.#closing || this.#draining) return Promise.reject(new RelgateError(Code.UNAVAILABLE, 'the session is not connected', { reason: 'SESSION_CLOSED' }));
    this.#nextId += 1;
    const correlationId = String(this.#nextId);
    return new Promise((resolve, reject) => {
      this.#pending.set(correlationId, { name, resolve: resolve as (result: unknown) => void, reject });
      call.write({ command: { correlation_id: correlationId, [name]: body } });
    });
  }

  /** Ends the session once every command sent has been acknowledged; closes its watches. */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    clearTimeout(this.#retryTimer);
    for (const registered of this.#watches.values()) registered.watch.close();
    if (!this.#call) return this.#finish(undefined);
    this.#call.end();
  }

  #watch(name: WatchName): Watch<unknown, unknown> {
    const registered = this.#watches.get(name);
    if (!registered) throw new Error(`the session was opened without the ${name === 'responses' ? 'responses' : 'incomingRequests'} watch`);
    return registered.watch;
  }

  #addWatch(name: WatchName, base: WatchOptionsMessage, options: WatchOptions): void {
    // Registered before the watch exists: it asks for its stream from its constructor.
    const entry = { paused: false } as Registered;
    this.#watches.set(name, entry);
    entry.watch = new Watch<unknown, unknown>((startOptions, sink) => this.#register(name, startOptions, sink), {
      base,
      options,
      // The session paces reconnects for all its watches at once.
      retryDelayMs: () => 0,
    });
    void entry.watch.closed.then(() => {
      this.#watches.delete(name);
      this.#maybeStart(); // it may have been the watch a reconnection waited for
    });
  }

  /** A watch asks for a stream starting at options; the stream opens once every watch has asked. */
  #register(name: WatchName, options: WatchOptionsMessage, sink: WatchSink) {
    const registered = this.#watches.get(name);
    if (registered) {
      registered.sink = sink;
      registered.options = options;
    }
    queueMicrotask(() => this.#maybeStart());
    return {
      pause: () => this.#setPaused(name, true),
      resume: () => this.#setPaused(name, false),
      cancel: () => {
        const current = this.#watches.get(name);
        if (current) current.sink = undefined;
      },
    };
  }

  #maybeStart(): void {
    if (this.#call || this.#closing || !this.#wantStream) return;
    const watches = [...this.#watches.values()];
    if (watches.some((registered) => !registered.sink || registered.paused)) return;
    const call = this.#connection.sessionClient.Open(this.#connection.metadata());
    this.#call = call;
    this.#wantStream = false;
    call.on('data', (message: OpenResponse__Output) => this.#onMessage(message));
    call.on('error', (error) => this.#onStreamEnd(call, error));
    call.on('end', () => this.#onStreamEnd(call, undefined));
    const start: Partial<Record<WatchName, WatchOptionsMessage>> = {};
    for (const [name, registered] of this.#watches) start[name] = registered.options as WatchOptionsMessage;
    if (watches.length > 0) call.write({ start });
  }

  #onMessage(message: OpenResponse__Output): void {
    this.#attempt = 0;
    if (message.ack) return this.#onAck(message.ack);
    const events = message.events;
    if (!events?.batch) return;
    this.#watches.get(events.watch as WatchName)?.sink?.batch(events.batch);
  }

  #onAck(ack: SessionAck__Output): void {
    const pending = this.#pending.get(ack.correlation_id);
    if (!pending) return;
    this.#pending.delete(ack.correlation_id);
    if (ack.error) pending.reject(fromAckStatus(ack.error));
    else pending.resolve(ack[pending.name]);
  }

  #onStreamEnd(call: grpc.ClientDuplexStream<OpenRequest, OpenResponse__Output>, error: unknown): void {
    if (this.#call !== call) return;
    this.#call = undefined;
    const drained = this.#draining;
    this.#draining = false;
    const failure = error === undefined ? undefined : toRelgateError(error);
    const ended = new RelgateError(Code.UNAVAILABLE, 'the session stream ended', { reason: 'SESSION_CLOSED' });
    for (const pending of this.#pending.values()) pending.reject(failure ?? ended);
    this.#pending.clear();
    if (this.#closing) return this.#finish(undefined);
    // Each watch decides for itself: resume, start over, or fail.
    for (const registered of this.#watches.values()) {
      const sink = registered.sink;
      registered.sink = undefined;
      sink?.end(causedBy(registered.watch, failure) ? failure : ended);
    }
    if (failure && !RETRIABLE.has(failure.code)) return this.#finish(failure);
    this.stats.reconnects += 1;
    if (drained && !failure) {
      // Reopens as soon as the readers have caught up.
      this.#wantStream = true;
      return;
    }
    const delay = backoff(this.#attempt);
    this.#attempt += 1;
    this.#retryTimer = setTimeout(() => {
      this.#wantStream = true;
      this.#maybeStart();
    }, delay);
  }

  /** A watch's reader fell behind (paused) or caught up. */
  #setPaused(name: WatchName, paused: boolean): void {
    const registered = this.#watches.get(name);
    if (!registered) return;
    registered.paused = paused;
    if (paused && this.#call && !this.#draining && !this.#closing) {
      // The gateway acknowledges the commands sent so far, then ends the stream.
      this.#draining = true;
      this.#call.end();
    }
    if (!paused) queueMicrotask(() => this.#maybeStart());
  }

  #finish(error: RelgateError | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closing = true;
    for (const registered of this.#watches.values()) registered.watch.close();
    this.#resolveClosed(error);
  }
}

/**
 * Whether a session's error concerns this watch. OUT_OF_RANGE names the
 * revision a watch asked for: a watch that asked for another one can simply
 * resume instead of starting over from a snapshot.
 */
function causedBy(watch: Watch<unknown, unknown>, failure: RelgateError | undefined): failure is RelgateError {
  if (!failure) return false;
  if (failure.code !== Code.OUT_OF_RANGE) return true;
  const requested = failure.metadata.requested_revision;
  return requested === undefined || watch.revision === undefined || String(watch.revision) === requested;
}
