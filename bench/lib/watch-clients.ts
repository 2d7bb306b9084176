// Watch streams held by their own Node process, so that the process under
// measurement is only the server. The runner forks this module with a
// config; the process opens `streams` server-streaming watches over
// `channels` connections and answers over IPC: `ready` once every stream has
// delivered its first message, `reached` once every stream has delivered a
// batch at or beyond a revision, and a `report` of what each stream got.
// Any server of relgate's watch methods will do, a bare one included.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { fromServiceError } from '../../src/errors.ts';
import { loadApi } from '../../src/protos.ts';

export interface WatchClientsConfig {
  address: string;
  /** relgate.v1 service and its server-streaming method, e.g. ResponderService / WatchIncomingRequests. */
  service: string;
  method: string;
  /** The unit the streams act as (relgate-unit metadata). */
  unit: string;
  /** The request message, e.g. { options: {...} }. */
  request: Record<string, unknown>;
  streams: number;
  channels: number;
  /** Keep each stream's batches for report(). */
  record: boolean;
}

/** A batch as a stream received it, each event cut down to what identifies it. */
export interface ReceivedBatch {
  revision: string;
  events: Message[];
  /** Milliseconds since the epoch (performance.timeOrigin + performance.now()), comparable across processes. */
  arrivedAt: number;
}

export interface StreamReport {
  /** Every batch, in arrival order (when recording). */
  batches: ReceivedBatch[];
  /** How the stream ended; null while it is open or when it ended OK. */
  status: { code: number; details: string; reason: string; metadata: Record<string, string> } | null;
  ended: boolean;
}

type ToChild = { type: 'await'; id: number; revision: number } | { type: 'await-end'; id: number } | { type: 'report'; id: number } | { type: 'close' };
type FromChild =
  | { type: 'ready' }
  | { type: 'reached'; id: number }
  | { type: 'all-ended'; id: number }
  | { type: 'report'; id: number; streams: StreamReport[] }
  | { type: 'failed'; message: string };

export interface WatchClients {
  child: ChildProcess;
  /** Resolves once every stream has delivered a batch at or beyond the revision. */
  reached(revision: number): Promise<void>;
  /** Resolves once every stream has ended. */
  ended(): Promise<void>;
  report(): Promise<StreamReport[]>;
  close(): Promise<void>;
}

const SELF = fileURLToPath(import.meta.url);

/** Forks a process holding the watch streams; resolves once each has delivered a message. */
export function spawnWatchClients(config: WatchClientsConfig, readyTimeoutMs = 120_000): Promise<WatchClients> {
  const child = fork(SELF, ['watch-clients', JSON.stringify(config)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const waiting = new Map<number, (message: FromChild) => void>();
  let next = 0;
  const ask = <T extends FromChild>(message: ToChild & { id: number }): Promise<T> =>
    new Promise((resolve) => {
      waiting.set(message.id, resolve as (message: FromChild) => void);
      child.send(message);
    });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const handle: WatchClients = {
    child,
    reached: async (revision) => void (await ask({ type: 'await', id: ++next, revision })),
    ended: async () => void (await ask({ type: 'await-end', id: ++next })),
    report: async () => (await ask<{ type: 'report'; id: number; streams: StreamReport[] }>({ type: 'report', id: ++next })).streams,
    close: async () => {
      if (child.exitCode === null && child.signalCode === null) child.send({ type: 'close' } satisfies ToChild);
      await exited;
    },
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`watch clients not ready within ${readyTimeoutMs} ms`)), readyTimeoutMs);
    child.on('message', (message: FromChild) => {
      if (message.type === 'ready') {
        clearTimeout(timer);
        resolve(handle);
      } else if (message.type === 'failed') {
        clearTimeout(timer);
        reject(new Error(message.message));
      } else {
        waiting.get(message.id)?.(message);
        waiting.delete(message.id);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`watch clients exited with ${code}`));
    });
  });
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Message = Record<string, any>;
type Ctor = new (address: string, credentials: grpc.ChannelCredentials, options?: object) => grpc.Client & Record<string, (...args: unknown[]) => unknown>;

/** What identifies an event (its type, revisions, relation and object ids): the fields are left behind. */
function identity(event: Message): Message {
  const { type, revision, relation_id, object } = event;
  const kept: Message = { type, revision, relation_id, object };
  if (object === 'request') kept.request = { request_id: event.request.request_id };
  if (object === 'response') kept.response = { request_id: event.response.request_id, responder_unit: event.response.responder_unit };
  if (object === 'unit') kept.unit = { unit: event.unit.unit };
  return kept;
}

/** Runs in the forked process: opens the streams and serves the runner's questions. */
function runChild(config: WatchClientsConfig): void {
  const send = (message: FromChild) => process.send?.(message);
  const Client = (grpc.loadPackageDefinition(loadApi()) as unknown as { relgate: { v1: Record<string, Ctor> } }).relgate.v1[config.service];
  if (!Client) throw new Error(`no service ${config.service}`);
  // A local subchannel pool per client: one connection each.
  const clients = Array.from({ length: config.channels }, () => new Client(config.address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }));
  const metadata = new grpc.Metadata();
  metadata.set('relgate-unit', config.unit);
  const reports: StreamReport[] = [];
  const latest = new Float64Array(config.streams);
  let started = 0;
  const awaiting: { id: number; revision: number }[] = [];
  const awaitingEnd: number[] = [];
  const settleEnd = () => {
    if (!reports.every((report) => report.ended)) return;
    for (const id of awaitingEnd.splice(0)) send({ type: 'all-ended', id });
  };
  const settle = () => {
    for (let i = awaiting.length - 1; i >= 0; i--) {
      const wait = awaiting[i] as { id: number; revision: number };
      if (latest.every((revision) => revision >= wait.revision)) {
        awaiting.splice(i, 1);
        send({ type: 'reached', id: wait.id });
      }
    }
  };
  for (let i = 0; i < config.streams; i++) {
    const client = clients[i % config.channels] as InstanceType<Ctor>;
    const call = (client[config.method] as (request: Message, md: grpc.Metadata) => grpc.ClientReadableStream<Message>).call(client, config.request, metadata);
    const report: StreamReport = { batches: [], status: null, ended: false };
    reports.push(report);
    let first = true;
    call.on('data', (message: Message) => {
      const batch = message.batch as Message;
      const revision = Number(batch.revision);
      if (revision > (latest[i] as number)) latest[i] = revision;
      if (config.record) {
        const events = (batch.events as Message[]).map(identity);
        report.batches.push({ revision: batch.revision as string, events, arrivedAt: performance.timeOrigin + performance.now() });
      }
      if (first) {
        first = false;
        if (++started === config.streams) send({ type: 'ready' });
      }
      if (awaiting.length > 0) settle();
    });
    call.on('error', (error: grpc.ServiceError) => {
      report.ended = true;
      const { reason, metadata } = fromServiceError(error);
      report.status = { code: error.code, details: error.details, reason, metadata };
      settleEnd();
    });
    call.on('end', () => {
      report.ended = true;
      settleEnd();
    });
  }
  process.on('message', (message: ToChild) => {
    if (message.type === 'await') {
      awaiting.push({ id: message.id, revision: message.revision });
      settle();
    } else if (message.type === 'await-end') {
      awaitingEnd.push(message.id);
      settleEnd();
    } else if (message.type === 'report') {
      send({ type: 'report', id: message.id, streams: reports });
    } else {
      for (const client of clients) client.close();
      process.exit(0);
    }
  });
}

if (process.argv[2] === 'watch-clients' && process.send) {
  try {
    runChild(JSON.parse(process.argv[3] ?? '{}') as WatchClientsConfig);
  } catch (error) {
    process.send({ type: 'failed', message: error instanceof Error ? (error.stack ?? error.message) : String(error) } satisfies FromChild);
  }
}
