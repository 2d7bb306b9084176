// Stream fixtures for tests: a feed of watch events that tests await (never
// sleep on), server-streaming watches as feeds, and a session client that
// pairs acknowledgements with commands by correlation id.
import * as grpc from '@grpc/grpc-js';
import { STATUS_DETAILS_KEY, fromServiceError, type RelgateError } from '../../src/errors.ts';
import { newRoot } from '../../src/protos.ts';
import { v1, type Rpc } from './harness.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Msg = Record<string, any>;

/** One watch event as grpc-js decodes it, with the batch it came in. */
export interface Event extends Msg {
  type: string;
  revision: string;
  relation_id: string;
  /** Revision of the batch that carried the event. */
  batchRevision: string;
}

export type Predicate<T> = (item: T) => boolean;

/**
 * Items in arrival order, with a read cursor: next() waits for the first
 * matching item after the cursor and moves the cursor past it. Every item
 * stays in `items`, so a test can also check the whole sequence.
 */
export class Feed<T> {
  readonly items: T[] = [];
  #cursor = 0;
  /** `scanned`: items before it already failed the waiter's test, so each arrival is tested once. */
  #waiters: { test: Predicate<T>; scanned: number; resolve: (item: T) => void; reject: (error: Error) => void; timer: NodeJS.Timeout }[] = [];
  #ended: Error | undefined;
  readonly name: string;

  constructor(name: string) {
    this.name = name;
  }

  push(item: T): void {
    this.items.push(item);
    this.#serve();
  }

  /** No more items will come: waiters that are not served fail with the reason. */
  end(reason: Error): void {
    this.#ended ??= reason;
    for (const waiter of this.#waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(new Error(`${this.name}: ended before a matching item arrived (${reason.message})`));
    }
  }

  /** Items after the cursor, without moving it. */
  get pending(): T[] {
    return this.items.slice(this.#cursor);
  }

  /** Moves the cursor to the end: what came so far is skipped. */
  skipAll(): void {
    this.#cursor = this.items.length;
  }

  /** The first item after the cursor that passes test; waits up to timeoutMs for it. */
  next(test: Predicate<T> = () => true, timeoutMs = 5_000): Promise<T> {
    const found = this.#take(test);
    if (found) return Promise.resolve(found.item);
    if (this.#ended) return Promise.reject(new Error(`${this.name}: ended before a matching item arrived (${this.#ended.message})`));
    const stack = new Error(`${this.name}: no matching item within ${timeoutMs} ms`);
    return new Promise((resolve, reject) => {
      const waiter = {
        test,
        scanned: this.items.length,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#waiters = this.#waiters.filter((w) => w !== waiter);
          stack.message += `; pending: ${JSON.stringify(this.pending.map(summary)).slice(0, 2000)}`;
          reject(stack);
        }, timeoutMs),
      };
      this.#waiters.push(waiter);
    });
  }

  /** Waits for n items passing test, in order. */
  async take(n: number, test: Predicate<T> = () => true, timeoutMs = 5_000): Promise<T[]> {
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(await this.next(test, timeoutMs));
    return out;
  }

  #take(test: Predicate<T>, from = this.#cursor): { item: T } | undefined {
    for (let i = Math.max(from, this.#cursor); i < this.items.length; i++) {
      const item = this.items[i] as T;
      if (test(item)) {
        this.#cursor = i + 1;
        return { item };
      }
    }
    return undefined;
  }

  #serve(): void {
    while (this.#waiters.length > 0) {
      const waiter = this.#waiters[0];
      if (!waiter) return;
      const found = this.#take(waiter.test, waiter.scanned);
      if (!found) {
        waiter.scanned = this.items.length;
        return;
      }
      this.#waiters.shift();
      clearTimeout(waiter.timer);
      waiter.resolve(found.item);
    }
  }
}

function summary(item: unknown): unknown {
  const event = item as Event;
  if (event && typeof event === 'object' && 'type' in event) {
    return { type: event.type, revision: event.revision, id: event.request?.request_id ?? event.response?.request_id, state: event.request?.state, unit: event.response?.responder_unit };
  }
  return item;
}

/** Flattens a WatchBatch into events that remember their batch's revision. */
export function eventsOf(batch: Msg): Event[] {
  return (batch.events as Msg[]).map((event) => ({ ...event, batchRevision: batch.revision }) as Event);
}

// ---- predicates on events ----

export const isType = (type: string) => (event: Event) => event.type === `EVENT_TYPE_${type}`;
export const requestEvent = (type: string, requestId?: string, extra: Predicate<Event> = () => true) => (event: Event) =>
  event.type === `EVENT_TYPE_${type}` && event.object === 'request' && (requestId === undefined || event.request.request_id === requestId) && extra(event);
export const responseEvent = (requestId?: string, unit?: string) => (event: Event) =>
  event.type === 'EVENT_TYPE_ADDED' && event.object === 'response' && (requestId === undefined || event.response.request_id === requestId) && (unit === undefined || event.response.responder_unit === unit);
export const snapshotComplete = isType('SNAPSHOT_COMPLETE');

// ---- server-streaming watches ----

export interface Watch {
  events: Feed<Event>;
  batches: Msg[];
  call: grpc.ClientReadableStream<unknown>;
  /** The status the stream ended with, once it ended. */
  status: Promise<RelgateError | null>;
  cancel(): void;
}

/** Opens WatchIncomingRequests (responder rpc) or WatchResponses (requester rpc) and feeds its events. */
export function watch(rpc: Rpc, options: Msg = {}): Watch {
  const method = 'WatchIncomingRequests' in rpc.client ? 'WatchIncomingRequests' : 'WatchResponses';
  const call = rpc.stream(method, { options });
  const events = new Feed<Event>(`${method}(${rpc.metadata.get('relgate-unit')[0]})`);
  const batches: Msg[] = [];
  call.on('data', (message: Msg) => {
    batches.push(message.batch);
    for (const event of eventsOf(message.batch)) events.push(event);
  });
  const status = new Promise<RelgateError | null>((resolve) => {
    call.on('error', (error: grpc.ServiceError) => {
      events.end(error);
      resolve(fromServiceError(error));
    });
    call.on('end', () => {
      events.end(new Error('stream ended'));
      resolve(null);
    });
  });
  return { events, batches, call, status, cancel: () => call.cancel() };
}

/** A watch that has delivered its initial snapshot. */
export async function watchReady(rpc: Rpc, options: Msg = {}): Promise<Watch> {
  const w = watch(rpc, options);
  await w.events.next(snapshotComplete);
  return w;
}

// ---- sessions ----

export interface SessionAck extends Msg {
  correlation_id: string;
  error: { code: number; message: string; details: { type_url: string; value: Buffer }[] } | null;
  result?: string;
}

/**
 * A SessionService.Open stream acting as a unit: send() resolves with the
 * command's acknowledgement, watch events go to feeds by watch name.
 */
export class SessionClient {
  readonly call: grpc.ClientDuplexStream<Msg, Msg>;
  readonly unit: string;
  /** Events of the incoming_requests watch (responder side). */
  readonly incoming: Feed<Event>;
  /** Events of the responses watch (requester side). */
  readonly responses: Feed<Event>;
  /** Every acknowledgement in arrival order. */
  readonly acks: SessionAck[] = [];
  /** Every message in arrival order. */
  readonly received: Msg[] = [];
  /** The final status: null for OK. */
  readonly status: Promise<RelgateError | null>;
  /** Resolves once the server ended the stream (OK or not). */
  readonly closed: Promise<void>;
  readonly #pending = new Map<string, { resolve: (ack: SessionAck) => void; reject: (error: Error) => void }>();
  #next = 0;

  constructor(address: string, unit: string, start?: Msg) {
    const Client = v1.SessionService;
    if (!Client) throw new Error('no SessionService client');
    this.unit = unit;
    const client = new Client(address, grpc.credentials.createInsecure());
    const metadata = new grpc.Metadata();
    metadata.set('relgate-unit', unit);
    this.call = (client as unknown as { Open(md: grpc.Metadata): grpc.ClientDuplexStream<Msg, Msg> }).Open(metadata);
    this.incoming = new Feed(`session(${unit}).incoming_requests`);
    this.responses = new Feed(`session(${unit}).responses`);
    this.call.on('data', (message: Msg) => this.#receive(message));
    let settle: (status: RelgateError | null) => void = () => {};
    this.status = new Promise((resolve) => (settle = resolve));
    this.closed = this.status.then(() => undefined);
    const finish = (error: grpc.ServiceError | null) => {
      const reason = error ? fromServiceError(error) : null;
      const ended = new Error(error ? `session ended with ${grpc.status[error.code]}: ${error.details}` : 'session ended');
      this.incoming.end(ended);
      this.responses.end(ended);
      for (const pending of this.#pending.values()) pending.reject(ended);
      this.#pending.clear();
      client.close();
      settle(reason);
    };
    this.call.on('error', (error: grpc.ServiceError) => finish(error));
    this.call.on('status', (status: grpc.StatusObject) => {
      if (status.code === grpc.status.OK) finish(null);
    });
    if (start) this.call.write({ start });
  }

  #receive(message: Msg): void {
    this.received.push(message);
    if (message.kind === 'ack') {
      const ack = message.ack as SessionAck;
      this.acks.push(ack);
      const pending = this.#pending.get(ack.correlation_id);
      if (pending) {
        this.#pending.delete(ack.correlation_id);
        pending.resolve(ack);
      }
      return;
    }
    const feed = message.events.watch === 'incoming_requests' ? this.incoming : this.responses;
    for (const event of eventsOf(message.events.batch)) feed.push(event);
  }

  /** A fresh correlation id. */
  id(): string {
    this.#next += 1;
    return `c${this.#next}`;
  }

  /** Sends one command ({create: {...}} etc.) and resolves with its acknowledgement. */
  send(command: Msg, correlationId = this.id()): Promise<SessionAck> {
    const ack = this.ackFor(correlationId);
    this.call.write({ command: { correlation_id: correlationId, ...command } });
    return ack;
  }

  /** The next acknowledgement with this correlation id; ask before sending what it answers. */
  ackFor(correlationId: string): Promise<SessionAck> {
    return new Promise<SessionAck>((resolve, reject) => this.#pending.set(correlationId, { resolve, reject }));
  }

  /** Sends a command and returns its result, failing the test on an error ack. */
  async ok(command: Msg): Promise<Msg> {
    const ack = await this.send(command);
    if (ack.error) throw new Error(`${Object.keys(command)[0]} failed: ${ack.error.message}`);
    const name = Object.keys(command)[0] as string;
    return ack[name] as Msg;
  }

  /** Half-closes the client side. */
  end(): void {
    this.call.end();
  }

  cancel(): void {
    this.call.cancel();
  }
}

/** A session that has delivered the initial snapshots of the watches it started with. */
export async function openSession(address: string, unit: string, start?: Msg): Promise<SessionClient> {
  const session = new SessionClient(address, unit, start);
  const snapshot = (options: Msg | undefined) => options && (options.start ?? 'WATCH_START_SNAPSHOT') === 'WATCH_START_SNAPSHOT';
  if (snapshot(start?.incoming_requests)) await session.incoming.next(snapshotComplete);
  if (snapshot(start?.responses)) await session.responses.next(snapshotComplete);
  return session;
}

const rpcRoot = newRoot();
rpcRoot.loadSync(['google/rpc/status.proto'], { keepCase: true });
const StatusType = rpcRoot.lookupType('google.rpc.Status');

/** A session ack's google.rpc.Status read as an error, with its ErrorInfo and BadRequest details decoded. */
export function ackError(ack: SessionAck): RelgateError {
  if (!ack.error) throw new Error(`ack ${ack.correlation_id} carries no error`);
  const metadata = new grpc.Metadata();
  metadata.set(STATUS_DETAILS_KEY, Buffer.from(StatusType.encode(ack.error).finish()));
  return fromServiceError({ code: ack.error.code, details: ack.error.message, metadata });
}
