// The client side of a unit's session: one bidirectional stream carrying
// commands up (each acknowledged once durable) and the unit's watches down.
// When the stream breaks, commands waiting for their acknowledgement fail
// with the stream's error, the session's watches resume from their last
// revisions on a new stream, and until it is up again the endpoints send
// their commands as unary calls. A watch whose reader falls behind does not
// stall the commands: the session ends its stream gracefully (every command
// sent is still acknowledged) and opens a new one, resuming the watches, once
// the reader has caught up. Flow control: at most `maxInFlight` commands
// are sent and not yet acknowledged, and none is written while the stream's
// write buffer is full; the rest wait here, in order.
import type * as grpc from '@grpc/grpc-js';
import type { OpenRequest } from '../../gen/relgate/v1/OpenRequest.ts';
import type { OpenResponse__Output } from '../../gen/relgate/v1/OpenResponse.ts';
import type { SessionAck__Output } from '../../gen/relgate/v1/SessionAck.ts';
import type { SessionCommand } from '../../gen/relgate/v1/SessionCommand.ts';
import type { Connection } from './connect.ts';
import { NOT_CARRIED_OUT, UNACKNOWLEDGED_COMMANDS } from '../session.ts';
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
  /** Only relations of this interface (its name); every interface when unset. */
  interface?: string;
}

export interface SessionOptions {
  /** Carry a watch of the requests addressed to the unit (responder side). */
  incomingRequests?: SessionWatchOptions & { filter?: 'all' | 'new' };
  /** Carry a watch of the responses to the unit's requests (requester side). */
  responses?: SessionWatchOptions;
  /** Commands sent and not yet acknowledged, at most (default 1024, the gateway's own bound per session). */
  maxInFlight?: number;
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

interface Queued extends Pending {
  message: OpenRequest;
}

/** The reason of a command the session gave up before writing it: any command may go as a unary call instead. */
export const COMMAND_NOT_SENT = 'COMMAND_NOT_SENT';
/** The gateway's reason for ending a session whose watch ended (the unit left the relation, or it was removed). */
const WATCH_ENDED = 'WATCH_ENDED';

const RETRIABLE = new Set<number>([Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED, Code.OUT_OF_RANGE]);

export class ClientSession {
  /** Resolves when the session ends: with the error that ended it, or undefined when closed. */
  readonly closed: Promise<RelgateError | undefined>;
  /** Times the stream was opened again after a break. */
  readonly stats = { reconnects: 0 };
  readonly #connection: Connection;
  readonly #watches = new Map<WatchName, Registered>();
  /** Commands written and waiting for their acknowledgement, by correlation id. */
  readonly #pending = new Map<string, Pending>();
  /** Commands waiting to be written: the window is full or the stream's write buffer is. */
  readonly #queued: Queued[] = [];
  readonly #maxInFlight: number;
  #writeBlocked = false;
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
    this.#maxInFlight = options.maxInFlight ?? 1024;
    if (!Number.isInteger(this.#maxInFlight) || this.#maxInFlight < 1) throw new RangeError('maxInFlight must be a whole number of at least 1');
    if (options.incomingRequests) {
      const { relation, interface: iface, filter, ...watchOptions } = options.incomingRequests;
      this.#addWatch('incoming_requests', { relation_id: relation ?? '', interface: iface ?? '', filter: filter === 'new' ? 'REQUEST_FILTER_NEW' : 'REQUEST_FILTER_ALL' }, watchOptions);
    }
    if (options.responses) {
      const { relation, interface: iface, ...watchOptions } = options.responses;
      this.#addWatch('responses', { relation_id: relation ?? '', interface: iface ?? '' }, watchOptions);
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

  /** Commands sent and not yet acknowledged. */
  get inFlight(): number {
    return this.#pending.size;
  }

  /** Commands waiting to be sent, behind the in-flight bound or a full write buffer. */
  get queued(): number {
    return this.#queued.length;
  }

  /** The session's watch of requests addressed to the unit, typed by interface I. */
  incomingRequests<I extends InterfaceName>(): Watch<RequestFields<I>, ResponseFields<I>> {
    return this.#watch('incoming_requests') as Watch<RequestFields<I>, ResponseFields<I>>;
  }

  /** The session's watch of the unit's requests and their responses, typed by interface I. */
  responses<I extends InterfaceName>(): Watch<RequestFields<I>, ResponseFields<I>> {
    return this.#watch('responses') as Watch<RequestFields<I>, ResponseFields<I>>;
  }

  /**
   * Sends a command and resolves with its result once the gateway has made it
   * durable. A command the session gives up before sending it (the stream
   * ends or drains first) rejects with UNAVAILABLE and reason COMMAND_NOT_SENT.
   */
  command<K extends CommandName>(name: K, body: CommandBody<K>): Promise<CommandResult<K>> {
    if (!this.isConnected) return Promise.reject(notSent('the session is not connected'));
    this.#nextId += 1;
    const correlationId = String(this.#nextId);
    return new Promise((resolve, reject) => {
      this.#queued.push({ name, resolve: resolve as (result: unknown) => void, reject, message: { command: { correlation_id: correlationId, [name]: body } } });
      this.#sendQueued();
    });
  }

  /** Ends the session once every command handed to it has been sent and acknowledged; closes its watches. */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    clearTimeout(this.#retryTimer);
    for (const registered of this.#watches.values()) registered.watch.close();
    if (!this.#call) return this.#finish(undefined);
    this.#sendQueued();
  }

  /** Writes queued commands while the window and the stream's write buffer allow; half-closes a closing stream once none is left. */
  #sendQueued(): void {
    const call = this.#call;
    if (!call || this.#draining) return;
    while (!this.#writeBlocked && this.#pending.size < this.#maxInFlight) {
      const next = this.#queued.shift();
      if (!next) break;
      const { message, ...pending } = next;
      this.#pending.set(message.command?.correlation_id as string, pending);
      if (!call.write(message)) {
        this.#writeBlocked = true;
        call.once('drain', () => {
          this.#writeBlocked = false;
          if (this.#call === call) this.#sendQueued();
        });
      }
    }
    if (this.#closing && this.#queued.length === 0 && !call.writableEnded) call.end();
  }

  /** Rejects the commands not sent yet: the caller may send them another way. */
  #dropQueued(why: string): void {
    for (const queued of this.#queued.splice(0)) queued.reject(notSent(why));
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
    this.#sendQueued();
  }

  #onStreamEnd(call: grpc.ClientDuplexStream<OpenRequest, OpenResponse__Output>, error: unknown): void {
    if (this.#call !== call) return;
    this.#call = undefined;
    this.#writeBlocked = false;
    const drained = this.#draining;
    this.#draining = false;
    const failure = error === undefined ? undefined : toRelgateError(error);
    const ended = new RelgateError(Code.UNAVAILABLE, 'the session stream ended', { reason: 'SESSION_CLOSED' });
    // The gateway wound the stream down (a watch ended, a shutdown, a revoked token) after acknowledging every command it had read.
    const windDown = failure?.metadata[UNACKNOWLEDGED_COMMANDS] === NOT_CARRIED_OUT ? failure : undefined;
    for (const pending of this.#pending.values()) pending.reject(windDown ? notSent(`not carried out: ${windDown.message}`) : (failure ?? ended));
    this.#pending.clear();
    this.#dropQueued('the session stream ended before the command was sent');
    if (this.#closing) return this.#finish(undefined);
    // Each watch decides for itself: resume, start over, or fail. One whose relation the unit left ends, as a watch
    // of its own would; the session goes on without it.
    const watchEnded = windDown?.reason === WATCH_ENDED ? windDown.metadata.watch : undefined;
    // A wind-down that names no watch, and that a new stream would not get past (a revoked token), ends every watch.
    const final = windDown && !windDown.metadata.watch && !RETRIABLE.has(windDown.code) ? windDown : undefined;
    for (const [name, registered] of this.#watches) {
      const sink = registered.sink;
      registered.sink = undefined;
      if (final) sink?.end(final);
      else if (!windDown) sink?.end(causedBy(registered.watch, failure) ? failure : ended);
      // The watch that ended the stream hears why (to resume, or to start over from a snapshot); the others resume.
      else if (name === windDown.metadata.watch) sink?.end(name === watchEnded ? undefined : windDown);
      else sink?.end(ended);
    }
    // A wind-down that names a watch is that watch's; one that names none (a revoked token) is the session's.
    if (failure && !windDown?.metadata.watch && !RETRIABLE.has(failure.code)) return this.#finish(failure);
    this.stats.reconnects += 1;
    if ((drained && !failure) || watchEnded) {
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
      this.#dropQueued('the session stream is draining');
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

function notSent(why: string): RelgateError {
  return new RelgateError(Code.UNAVAILABLE, why, { reason: COMMAND_NOT_SENT });
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
