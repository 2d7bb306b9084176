// The gRPC server: wires RPC handlers to the services, and owns reflection,
// health, limits, background sweeps and graceful shutdown.
import * as grpc from '@grpc/grpc-js';
import { addReflection } from './reflection.ts';
import { HealthImplementation } from 'grpc-health-check';
import { CallService, serverDeadline, type CallOutcome } from './call.ts';
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Authenticator, type AuthMode } from './auth.ts';
import { Code, RelgateError, asRelgateError, invalidArgument, isRelgateError, statusDetailsInterceptor, toServiceError } from './errors.ts';
import { Violations } from './validate.ts';
import { InterfaceRegistry } from './interfaces.ts';
import { createLogger, failureLog, type Logger } from './logger.ts';
import { startOpsServer, type OpsServer } from './http-server.ts';
import { Metrics } from './metrics.ts';
import { API_FILES, PROTO_DIR, compileDescriptors, loadApi, newRoot } from './protos.ts';
import { RegistryService, type RegistryReader } from './registry-service.ts';
import { joinedRelation, joinedRelationIds, requireCaller } from './relations.ts';
import { RequestService, type DeliveryInput, type RelationScope, type RequestFilterName } from './request-service.ts';
import { checkInterface, ofInterface } from './relation-id.ts';
import type { PostgresPresence } from './store/postgres-presence.ts';
import { PostgresStore } from './store/postgres-store.ts';
import { SqliteStore, type Durability } from './store/sqlite-store.ts';
import type { SideName, Store } from './store/store.ts';
import { Session } from './session.ts';
import { SentStatuses } from './sent-status.ts';
import { SetMap } from './set-map.ts';
import { WatchHub, type WatchBatchMessage, type WatchScope, type WatchSink, type WatchSpec, type WatchStartName, type Watcher } from './watch-hub.ts';
import { checkingUtf8, refusingMalformed, undecodableError } from './utf8.ts';

export interface ServerConfig {
  /** host:port; port 0 picks a free port. */
  listen: string;
  /** SQLite file, or ":memory:". */
  db: string;
  /** postgres:// connection string for replicas sharing one PostgreSQL; empty: the SQLite file `db`. */
  store: string;
  durability: Durability;
  /** Extra directories of interface .proto files. */
  interfaces: string[];
  logLevel: string;
  /** Largest message accepted, in bytes. */
  maxReceiveBytes: number;
  /** Largest message sent, in bytes; a larger response fails its call with RESOURCE_EXHAUSTED. */
  maxSendBytes: number;
  /** Watch and session streams one unit may hold open at once; 0 for no cap. */
  maxStreamsPerUnit: number;
  /** Milliseconds between keepalive pings on an idle connection. */
  keepaliveTimeMs: number;
  /** Milliseconds a ping may go unanswered before the connection and its streams are dropped. */
  keepaliveTimeoutMs: number;
  /** Age after which a connection is asked to go away (clients reconnect); 0 for never. */
  maxConnectionAgeMs: number;
  /** How long calls may continue on a connection past its age before they are cut. */
  maxConnectionAgeGraceMs: number;
  /** Events queued for one watcher before it is cut off. */
  watchBuffer: number;
  /** Bytes (as estimated from the fields events carry) queued for one watcher before it is cut off. */
  watchBufferBytes: number;
  /** Default milliseconds between watch progress events. */
  progressIntervalMs: number;
  /** Change-log revisions kept for resuming watches. */
  historyRevisions: number;
  /** Change-log age kept for resuming watches, in milliseconds. */
  historyAgeMs: number;
  /** How long shutdown waits for calls before cutting them. */
  shutdownGraceMs: number;
  /** open: units name themselves in metadata; token: bearer tokens. */
  auth: AuthMode;
  /** The admin token (token mode). */
  adminToken?: string | undefined;
  /** PEM files for TLS; with tlsClientCa, clients must present a certificate signed by it. */
  tlsCert?: string | undefined;
  tlsKey?: string | undefined;
  tlsClientCa?: string | undefined;
  /** Where logs go (default stdout). */
  logDestination?: NodeJS.WritableStream | undefined;
  /** host:port of the HTTP listener for /metrics, /healthz and the dashboard; none when unset. */
  metricsListen?: string | undefined;
}

export const DEFAULT_CONFIG: ServerConfig = {
  listen: '127.0.0.1:50051',
  db: 'relgate.db',
  store: '',
  durability: 'full',
  interfaces: [],
  logLevel: 'info',
  maxReceiveBytes: 4 * 1024 * 1024,
  maxSendBytes: 16 * 1024 * 1024,
  maxStreamsPerUnit: 1_000,
  keepaliveTimeMs: 60_000,
  keepaliveTimeoutMs: 20_000,
  maxConnectionAgeMs: 0,
  maxConnectionAgeGraceMs: 30_000,
  watchBuffer: 10_000,
  watchBufferBytes: 64 * 1024 * 1024,
  progressIntervalMs: 10_000,
  historyRevisions: 1_000_000,
  historyAgeMs: 24 * 3600 * 1000,
  shutdownGraceMs: 5_000,
  auth: 'open',
};

const SERVICES = ['relgate.v1.RegistryService', 'relgate.v1.RequesterService', 'relgate.v1.ResponderService', 'relgate.v1.SessionService'];

export interface RunningServer {
  /** The bound address, host:port. */
  address: string;
  port: number;
  store: Store;
  hub: WatchHub;
  logger: Logger;
  /** The bound address of the metrics listener, host:port, when it is on. */
  metricsAddress?: string | undefined;
  /** Graceful shutdown: NOT_SERVING, watches end UNAVAILABLE, calls drain, then cut. */
  stop(): Promise<void>;
}

export async function startServer(overrides: Partial<ServerConfig> = {}): Promise<RunningServer> {
  const config = { ...DEFAULT_CONFIG, ...overrides };
  const logger = createLogger(config.logLevel, config.logDestination);
  // buf first: its messages name the file, line and column of a mistake in an interface file.
  const descriptors = await compileDescriptors([PROTO_DIR, ...config.interfaces]);
  const interfaces = await InterfaceRegistry.load(config.interfaces);
  const store = await openStore(config, logger);
  try {
    return await serve(config, logger, descriptors, interfaces, store);
  } catch (error) {
    // Nothing stays open behind a failed start: the store's file lock least of all, or a retry in this process fails.
    await store.close();
    throw error;
  }
}

async function serve(config: ServerConfig, logger: Logger, descriptors: Uint8Array[], interfaces: InterfaceRegistry, store: Store): Promise<RunningServer> {
  const hub = new WatchHub(store, {
    maxBufferedEvents: config.watchBuffer,
    maxBufferedBytes: config.watchBufferBytes,
    progressIntervalMs: config.progressIntervalMs,
    maxMessageBytes: config.maxSendBytes,
  });
  const registry = new RegistryService(store, interfaces);
  const requests = new RequestService(store, interfaces, { maxMessageBytes: config.maxSendBytes });
  const metrics = config.metricsListen ? new Metrics(store, hub, interfaces.list().map((i) => i.name)) : undefined;
  const sent = new SentStatuses();
  const server = new grpc.Server({ ...serverOptions(config), interceptors: [statusDetailsInterceptor, sent.interceptor, ...(metrics ? [metrics.interceptor] : [])] });
  const api = grpc.loadPackageDefinition(loadApi()) as unknown as { relgate: { v1: Record<string, { service: grpc.ServiceDefinition }> } };
  const v1 = api.relgate.v1;
  const auth = new Authenticator(config.auth, config.adminToken, store, Boolean(config.tlsClientCa));
  const handlers = new Handlers(logger, registry, requests, hub, auth, sent, config.maxStreamsPerUnit, store instanceof PostgresStore ? store.presence : undefined);
  const types = newRoot();
  types.loadSync([...API_FILES], { keepCase: true });
  const checked = (name: string) => checkingUtf8(required(v1[name]).service, `relgate.v1.${name}`, types);
  server.addService(checked('RegistryService'), handlers.registry());
  server.addService(checked('RequesterService'), handlers.requester());
  server.addService(checked('ResponderService'), handlers.responder());
  server.addService(checked('SessionService'), handlers.session());

  const health = new HealthImplementation(Object.fromEntries(['', ...SERVICES].map((name) => [name, 'SERVING'])));
  const healthWatches = addHealth(server, health);

  let stopping: Promise<void> | undefined;
  let listening = false;
  let ops: OpsServer | undefined;
  let port: number;
  try {
    addReflection(server, descriptors);
    await metrics?.start();
    // Before the gRPC port: a metrics address already taken fails the start before any client is served.
    ops = metrics && config.metricsListen ? await startOpsServer({ listen: config.metricsListen, metrics, store, hub, logger, serving: () => listening && !stopping }) : undefined;
    const credentials = await serverCredentials(config);
    port = await new Promise<number>((resolve, reject) => server.bindAsync(config.listen, credentials, (error, bound) => (error ? reject(error) : resolve(bound))));
  } catch (error) {
    // Nothing is left listening or open behind a failed start (startServer closes the store).
    server.forceShutdown();
    hub.close();
    await ops?.close();
    throw error;
  }
  listening = true;
  const host = config.listen.slice(0, config.listen.lastIndexOf(':'));
  const address = `${host}:${port}`;
  const timers = startBackgroundWork(config, store, requests, logger);
  logger.info({ address, ...(config.store ? { store: 'postgres' } : { db: config.db, durability: config.durability }), auth: config.auth, tls: Boolean(config.tlsCert), mtls: Boolean(config.tlsClientCa), interfaces: interfaces.list().map((i) => `${i.name}@${i.version}`) }, 'relgate serving');
  if (config.auth === 'open' && !isLoopback(host)) logger.warn({ address }, 'open mode on a non-loopback address: any client can act as any unit; use --auth token');

  const stop = () =>
    (stopping ??= (async () => {
      logger.info('shutting down');
      for (const name of ['', ...SERVICES]) health.setStatus(name, 'NOT_SERVING');
      // Told NOT_SERVING, health watches end like every other stream, instead of holding the shutdown for its grace.
      for (const watch of healthWatches) watch.emit('error', toServiceError(shuttingDownError()));
      for (const timer of timers) clearInterval(timer);
      hub.close();
      // Sessions without a watch, and calls waiting for an answer, are not the hub's.
      handlers.shutDown();
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, config.shutdownGraceMs);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      await ops?.close();
      await store.close();
      logger.info('stopped');
    })());
  return { address, port, store, hub, logger, metricsAddress: ops?.address, stop };
}

function serverOptions(config: ServerConfig): grpc.ServerOptions {
  return {
    'grpc.max_receive_message_length': config.maxReceiveBytes,
    'grpc.max_send_message_length': config.maxSendBytes,
    'grpc.keepalive_time_ms': config.keepaliveTimeMs,
    'grpc.keepalive_timeout_ms': config.keepaliveTimeoutMs,
    // Nothing serves channelz, and its per-call accounting costs about 1% of a busy gateway's CPU.
    'grpc.enable_channelz': 0,
    // grpc-js reads 0 as "at once", so "never" is leaving the option out.
    ...(config.maxConnectionAgeMs > 0 ? { 'grpc.max_connection_age_ms': config.maxConnectionAgeMs, 'grpc.max_connection_age_grace_ms': config.maxConnectionAgeGraceMs } : {}),
  };
}

/** What ends a unit's open streams after a registry change, if the change took its credentials away. */
function credentialsEnded(what: string, unit: string): RelgateError | undefined {
  if (what.startsWith('unit-token')) return new RelgateError(Code.UNAUTHENTICATED, `the token of ${unit} was rotated or revoked`, { reason: 'TOKEN_REVOKED' });
  if (what === 'unit-removed') return new RelgateError(Code.UNAUTHENTICATED, `unit ${unit} was removed`, { reason: 'UNIT_REMOVED' });
  return undefined;
}

function shuttingDownError(): RelgateError {
  return new RelgateError(Code.UNAVAILABLE, 'the gateway is shutting down; reconnect, and resume from the last revision', { reason: 'SHUTTING_DOWN' });
}

/** What ended a Call or CallAll after its request was stored, naming the request: a retry can replay it. */
function storedRequestError(error: RelgateError, outcome: CallOutcome): RelgateError {
  const requestId = String(outcome.request.request_id);
  return new RelgateError(error.code, `${error.message}; request ${requestId} stays stored and can still be answered`, {
    reason: error.reason,
    metadata: { ...error.metadata, request_id: requestId },
    cause: error,
  });
}

/** A Call or CallAll whose request was withdrawn, or whose relation was removed, before every answer came. */
function withdrawnError(outcome: CallOutcome): RelgateError {
  const requestId = String(outcome.request.request_id);
  return new RelgateError(Code.FAILED_PRECONDITION, `request ${requestId} was withdrawn, or its relation removed, before it was answered`, {
    reason: 'REQUEST_WITHDRAWN',
    metadata: { request_id: requestId },
  });
}

async function openStore(config: ServerConfig, logger: Logger): Promise<Store> {
  if (!config.store) {
    const store = new SqliteStore({ path: config.db, durability: config.durability, log: logger });
    // A path that missed its volume, or a typo, would otherwise start an empty gateway looking like any other.
    if (store.created && config.db !== ':memory:') logger.info({ db: config.db }, 'created a new database: nothing was stored at this path');
    return store;
  }
  if (!/^postgres(ql)?:\/\//.test(config.store)) throw new Error(`--store must be a postgres:// connection string, not "${config.store}"`);
  return PostgresStore.open({ url: config.store, log: logger });
}

async function serverCredentials(config: ServerConfig): Promise<grpc.ServerCredentials> {
  if (!config.tlsCert && !config.tlsKey) {
    if (config.tlsClientCa) throw new Error('--tls-client-ca needs --tls-cert and --tls-key');
    return grpc.ServerCredentials.createInsecure();
  }
  if (!config.tlsCert || !config.tlsKey) throw new Error('TLS needs both --tls-cert and --tls-key');
  const [cert, key, ca] = await Promise.all([readFile(config.tlsCert), readFile(config.tlsKey), config.tlsClientCa ? readFile(config.tlsClientCa) : null]);
  // Without one, mutual TLS would start and then refuse every client, saying nothing.
  if (ca !== null && !holdsCertificate(ca)) throw new Error(`--tls-client-ca ${config.tlsClientCa} holds no PEM certificate`);
  return grpc.ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], ca !== null);
}

/** Serves grpc.health.v1 (grpc-health-check) and returns its open Watch calls, which the library never ends. */
function addHealth(server: grpc.Server, health: HealthImplementation): Set<grpc.ServerWritableStream<unknown, unknown>> {
  const watches = new Set<grpc.ServerWritableStream<unknown, unknown>>();
  const tracking = {
    addService(service: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation) {
      const watch = implementation.watch as grpc.handleServerStreamingCall<unknown, unknown>;
      server.addService(
        ...refusingMalformed(service, {
          ...implementation,
          watch: (call: grpc.ServerWritableStream<unknown, unknown>) => {
            watches.add(call);
            call.once('cancelled', () => watches.delete(call));
            call.once('error', () => watches.delete(call));
            watch(call);
          },
        }),
      );
    },
  };
  health.addToServer(tracking as unknown as grpc.Server);
  return watches;
}

function holdsCertificate(pem: Buffer): boolean {
  try {
    new X509Certificate(pem);
    return true;
  } catch {
    return false;
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '[::1]' || host === '::1' || host.startsWith('127.');
}

function required<T>(value: T | undefined): T {
  if (!value) throw new Error('relgate.v1 service definition missing from the loaded protos');
  return value;
}

function startBackgroundWork(config: ServerConfig, store: Store, requests: RequestService, logger: Logger): NodeJS.Timeout[] {
  let sweeping = false;
  const sweepLog = failureLog(logger, 'the expiry sweep');
  const sweep = setInterval(() => {
    if (sweeping) return;
    sweeping = true;
    requests
      .sweep()
      .then(sweepLog.worked, sweepLog.failed)
      .finally(() => (sweeping = false));
  }, 100);
  const compactLog = failureLog(logger, 'compaction');
  const compact = setInterval(() => {
    void (async () => {
      const byCount = store.currentRevision() - config.historyRevisions;
      const byAge = await store.revisionAt(Date.now() - config.historyAgeMs);
      const cutoff = Math.max(byCount, byAge);
      if (cutoff > store.compactedRevision()) await store.compact(cutoff);
    })().then(compactLog.worked, compactLog.failed);
  }, 5_000);
  sweep.unref();
  compact.unref();
  return [sweep, compact];
}

// ---- handlers ----

type UnaryCall = grpc.ServerUnaryCall<Record<string, never>, unknown>;
/** What authentication reads of a call. */
type CallLike = Parameters<Authenticator['requireUnit']>[0];
type Req = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const FILTER: Record<string, RequestFilterName> = {
  REQUEST_FILTER_UNSPECIFIED: 'all',
  REQUEST_FILTER_ALL: 'all',
  REQUEST_FILTER_NEW: 'new',
  REQUEST_FILTER_ANSWERED: 'answered',
};
const MODE: Record<string, DeliveryInput['mode']> = {
  DELIVERY_MODE_UNSPECIFIED: 'any',
  DELIVERY_MODE_ANY: 'any',
  DELIVERY_MODE_UNIT: 'unit',
  DELIVERY_MODE_SELECTOR: 'selector',
};
const START: Record<string, WatchStartName> = {
  WATCH_START_UNSPECIFIED: 'snapshot',
  WATCH_START_SNAPSHOT: 'snapshot',
  WATCH_START_NOW: 'now',
  WATCH_START_AFTER_REVISION: 'after',
};
const SIDE: Record<string, SideName | undefined> = { SIDE_UNSPECIFIED: undefined, SIDE_REQUESTER: 'requester', SIDE_RESPONDER: 'responder' };

function deliveryInput(delivery: Req | null | undefined): DeliveryInput {
  return { mode: enumValue(MODE, delivery?.mode, 'delivery.mode') ?? 'any', unit: delivery?.unit ?? '', selector: delivery?.selector ?? '' };
}

/** A proto enum field's value by name: undefined when unset, INVALID_ARGUMENT for a number the proto does not define. */
function enumValue<T>(table: Record<string, T>, value: unknown, field: string): T | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string' && Object.hasOwn(table, value)) return table[value];
  throw invalidArgument([{ field, description: `has no value ${String(value)}` }]);
}

class Handlers {
  readonly #logger: Logger;
  readonly #registry: RegistryService;
  readonly #requests: RequestService;
  readonly #hub: WatchHub;
  readonly #presence: PostgresPresence | undefined;

  readonly #calls: CallService;
  readonly #commands: ReturnType<typeof commandsOf>;
  readonly #auth: Authenticator;
  readonly #sent: SentStatuses;
  /** Closers of each unit's open watches and sessions, for revocation. */
  readonly #streams = new SetMap<(error: RelgateError) => void>();
  /** Watch and session streams admitted per unit, counted from admission to end. */
  readonly #admitted = new Map<string, number>();
  readonly #maxStreamsPerUnit: number;

  constructor(logger: Logger, registry: RegistryService, requests: RequestService, hub: WatchHub, auth: Authenticator, sent: SentStatuses, maxStreamsPerUnit: number, presence?: PostgresPresence) {
    this.#maxStreamsPerUnit = maxStreamsPerUnit;
    this.#logger = logger;
    this.#registry = registry;
    this.#requests = requests;
    this.#hub = hub;
    this.#presence = presence;
    this.#calls = new CallService(requests, hub, presence);
    this.#commands = commandsOf(requests);
    this.#auth = auth;
    this.#sent = sent;
    hub.onCommit((changes) => {
      for (const { data } of changes) {
        if (data.kind !== 'registry') continue;
        const ended = credentialsEnded(data.what, data.name);
        if (ended) this.#endStreams(data.name, ended);
      }
    });
  }

  /**
   * Tracks an open stream of a unit; returns its untracking function. One that was still being authenticated when
   * shutdown began is refused here, or it would hold the shutdown for its whole grace.
   */
  #track(unit: string, close: (error: RelgateError) => void): () => void {
    if (this.#closing) throw this.#closing;
    this.#streams.add(unit, close);
    return () => this.#streams.delete(unit, close);
  }

  /**
   * Tracks a stream or a waiting call of a unit, then checks its token once more before anything reaches it: a
   * revocation committed between the first check and the tracking would otherwise miss it.
   */
  async #guard(unit: string, call: CallLike, close: (error: RelgateError) => void): Promise<() => void> {
    const untrack = this.#track(unit, close);
    if (this.#auth.mode !== 'token') return untrack;
    try {
      await this.#auth.requireUnit(call);
    } catch (error) {
      untrack();
      throw error;
    }
    return untrack;
  }

  /** Counts a new stream of the unit against its cap; returns the (idempotent) release. */
  #admit(unit: string): () => void {
    const open = this.#admitted.get(unit) ?? 0;
    if (this.#maxStreamsPerUnit > 0 && open >= this.#maxStreamsPerUnit) {
      throw new RelgateError(Code.RESOURCE_EXHAUSTED, `unit ${unit} already holds ${open} open streams, the most allowed`, {
        reason: 'TOO_MANY_STREAMS',
        metadata: { unit, limit: String(this.#maxStreamsPerUnit) },
      });
    }
    this.#admitted.set(unit, open + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#admitted.get(unit) ?? 1) - 1;
      if (left === 0) this.#admitted.delete(unit);
      else this.#admitted.set(unit, left);
    };
  }

  /** Ends every session, watch and waiting call with UNAVAILABLE, and those still starting as soon as they are tracked. */
  shutDown(): void {
    this.#closing = shuttingDownError();
    for (const close of [...this.#streams.values()]) close(this.#closing);
  }

  #closing: RelgateError | undefined;

  #endStreams(unit: string, error: RelgateError): void {
    for (const close of [...this.#streams.get(unit)]) close(error);
  }

  /** A unary handler: runs fn, maps errors in one place, logs one line. */
  #unary(method: string, fn: (request: Req, call: UnaryCall) => unknown): grpc.handleUnaryCall<Req, unknown> {
    return (call, callback) => {
      const started = performance.now();
      Promise.resolve()
        .then(() => {
          const invalid = undecodableError(call.request);
          if (invalid) throw invalid;
          return fn(call.request, call as unknown as UnaryCall);
        })
        .then(
          (result) => {
            // Logged once sent: a reply over the send limit ends the call with RESOURCE_EXHAUSTED instead.
            this.#sent.onSent(call, (code) => this.#log(method, call, code, started));
            callback(null, result);
          },
          (error: unknown) => {
            const status = toServiceError(error);
            this.#log(method, call, status.code, started, error);
            callback(status);
          },
        );
    };
  }

  #log(method: string, call: { getPeer(): string }, code: number, started: number, error?: unknown): void {
    const entry = { method, code: grpc.status[code], duration_ms: Math.round((performance.now() - started) * 1000) / 1000, peer: call.getPeer() };
    const relgateError = error === undefined ? undefined : asRelgateError(error);
    if (relgateError?.code === Code.INTERNAL) this.#logger.error({ ...entry, err: relgateError.cause }, 'rpc failed');
    else this.#logger.info(relgateError ? { ...entry, reason: relgateError.reason } : entry, 'rpc');
  }

  registry(): grpc.UntypedServiceImplementation {
    const r = this.#registry;
    const u = (name: string, fn: (request: Req) => unknown) =>
      this.#unary(`RegistryService/${name}`, async (q, call) => {
        await this.#auth.requireAdmin(call);
        return fn(q);
      });
    const read = (name: string, fn: (request: Req) => unknown) =>
      this.#unary(`RegistryService/${name}`, async (q, call) => {
        await this.#auth.identify(call);
        return fn(q);
      });
    // Relations and units a unit may read: its application's relations and the units joined to them.
    const scoped = (name: string, fn: (request: Req, reader: RegistryReader) => unknown) =>
      this.#unary(`RegistryService/${name}`, async (q, call) => fn(q, await this.#auth.registryReader(call)));
    const issue = this.#auth.mode === 'token';
    return {
      ListInterfaces: read('ListInterfaces', () => r.listInterfaces()),
      GetInterface: read('GetInterface', (q) => r.getInterface(q.name, q.version)),
      RotateUnitToken: u('RotateUnitToken', (q) => r.rotateUnitToken(q.name)),
      RevokeUnitToken: u('RevokeUnitToken', (q) => r.revokeUnitToken(q.name)),
      RegisterApplication: u('RegisterApplication', (q) => r.registerApplication(q.name)),
      ListApplications: u('ListApplications', () => r.listApplications()),
      RemoveApplication: u('RemoveApplication', (q) => r.removeApplication(q.name)),
      RegisterUnit: u('RegisterUnit', (q) => r.registerUnit(unitProperties(q), issue)),
      UpdateUnit: u('UpdateUnit', (q) => r.updateUnit(unitProperties(q))),
      RemoveUnit: u('RemoveUnit', (q) => r.removeUnit(q.name)),
      GetUnit: scoped('GetUnit', (q, reader) => r.getUnit(q.name, reader)),
      ListUnits: u('ListUnits', (q) => r.listUnits(q.application)),
      CreateRelation: u('CreateRelation', (q) => r.createRelation(q as never)),
      GetRelation: scoped('GetRelation', (q, reader) => r.getRelation(q.relation_id, reader)),
      ListRelations: scoped('ListRelations', (q, reader) => r.listRelations(q.application, q.interface, reader)),
      DeleteRelation: u('DeleteRelation', (q) => r.deleteRelation(q.relation_id)),
      JoinRelation: u('JoinRelation', (q) => r.joinRelation(q.relation_id, q.unit, enumValue(SIDE, q.side, 'side'))),
      LeaveRelation: u('LeaveRelation', (q) => r.leaveRelation(q.relation_id, q.unit, (tx, relation, unit) => this.#requests.releaseClaimsOf(tx, relation, unit))),
    };
  }

  requester(): grpc.UntypedServiceImplementation {
    const s = this.#requests;
    const c = this.#commands;
    const u = (name: string, fn: (request: Req, unit: string, call: UnaryCall) => unknown) =>
      this.#unary(`RequesterService/${name}`, async (q, call) => fn(q, await this.#auth.requireUnit(call), call));
    return {
      CreateRequest: u('CreateRequest', (q, unit) => c.create(unit, q)),
      CreateOrUpdateRequest: u('CreateOrUpdateRequest', (q, unit) => c.create_or_update(unit, q)),
      GetRequest: u('GetRequest', (q, unit) => s.getRequest(unit, q.request_id, 'requester')),
      ListRequests: u('ListRequests', (q, unit) => s.listRequests(unit, listInput(q), 'requester')),
      WithdrawRequest: u('WithdrawRequest', (q, unit) => c.withdraw(unit, q)),
      ListResponses: u('ListResponses', (q, unit) => s.listResponses(unit, { request_id: q.request_id, page_size: q.page_size, page_token: q.page_token })),
      ResponseByField: u('ResponseByField', (q, unit) => s.responseByField(unit, relationScope(q), q.match_fields)),
      GetRequesterFlags: u('GetRequesterFlags', (q, unit) => s.requesterFlags(unit, relationScope(q))),
      WatchResponses: this.#watch('RequesterService/WatchResponses', 'requester'),
      Call: u('Call', (q, unit, call) => this.#call(unit, q, call)),
      CallAll: (call: grpc.ServerWritableStream<Req, unknown>) => this.#callAll(call),
    };
  }

  responder(): grpc.UntypedServiceImplementation {
    const s = this.#requests;
    const c = this.#commands;
    const u = (name: string, fn: (request: Req, unit: string) => unknown) =>
      this.#unary(`ResponderService/${name}`, async (q, call) => fn(q, await this.#auth.requireUnit(call)));
    return {
      ListIncomingRequests: u('ListIncomingRequests', (q, unit) => s.listRequests(unit, listInput(q), 'responder')),
      GetIncomingRequest: u('GetIncomingRequest', (q, unit) => s.getRequest(unit, q.request_id, 'responder')),
      Respond: u('Respond', (q, unit) => c.respond(unit, q)),
      ClaimRequest: u('ClaimRequest', (q, unit) => c.claim(unit, q)),
      ReleaseRequest: u('ReleaseRequest', (q, unit) => c.release(unit, q)),
      GetResponderFlags: u('GetResponderFlags', (q, unit) => s.responderFlags(unit, relationScope(q))),
      WatchIncomingRequests: this.#watch('ResponderService/WatchIncomingRequests', 'responder'),
    };
  }

  async #call(unit: string, q: Req, call: UnaryCall) {
    const aborted = abortOnCancel(call);
    // Nobody would hear the outcome: store nothing.
    if (aborted.aborted) throw new RelgateError(Code.CANCELLED, 'the client cancelled the call', { reason: 'CANCELLED' });
    const deadline = serverDeadline(call.getDeadline() as Date | number, DEFAULT_CALL_MS);
    const options = callOptions(q);
    if (options.delivery.mode === 'selector') {
      throw invalidArgument([{ field: 'delivery.mode', description: 'Call takes ANY or UNIT delivery; use CallAll for a selector' }]);
    }
    let response: unknown;
    const outcome = await this.#runCall(unit, call, aborted, (signal) => this.#calls.run(unit, options, deadline, () => undefined, (r) => (response ??= r), signal));
    if (outcome.expired) {
      throw new RelgateError(Code.DEADLINE_EXCEEDED, `request ${String(outcome.request.request_id)} expired (its time to live passed) before it was answered`, {
        reason: 'REQUEST_EXPIRED',
        metadata: { request_id: String(outcome.request.request_id) },
      });
    }
    if (outcome.withdrawn) throw withdrawnError(outcome);
    if (!outcome.complete) throw storedRequestError(new RelgateError(Code.DEADLINE_EXCEEDED, 'no response before the deadline', { reason: 'CALL_TIMEOUT' }), outcome);
    // The change that brought the response holds the request as it left it: no read needed (and none to wait for).
    const request = outcome.answered ?? (await this.#requests.getRequest(unit, String(outcome.request.request_id), 'requester')).request;
    return { request, response };
  }

  #callAll(call: grpc.ServerWritableStream<Req, unknown>): void {
    const method = 'RequesterService/CallAll';
    const started = performance.now();
    const aborted = abortOnCancel(call);
    const deadline = serverDeadline(call.getDeadline() as Date | number, DEFAULT_CALL_MS);
    this.#auth
      .requireUnit(call)
      .then((unit) => {
        const invalid = undecodableError(call.request);
        if (invalid) throw invalid;
        return unit;
      })
      .then((unit) =>
        this.#runCall(unit, call, aborted, (signal) =>
          this.#calls.run(
            unit,
            callOptions(call.request),
            deadline,
            (request) => call.write({ started: { request, expected_count: request.expected_count, expected_units: request.expected_units } }),
            (response) => call.write({ response }),
            signal,
          ),
        ),
      )
      .then(
        (outcome) => {
          // A client that cancelled hears nothing more.
          if (aborted.aborted) return this.#log(method, call, grpc.status.CANCELLED, started);
          // Not the end of waiting for slow responders, which `finished` reports: nobody can answer any more.
          if (outcome.withdrawn) return fail(withdrawnError(outcome));
          call.write({ finished: { complete: outcome.complete, missing_units: outcome.missing } });
          this.#log(method, call, grpc.status.OK, started);
          call.end();
        },
        (error: unknown) => fail(error),
      );
    const fail = (error: unknown) => {
      const status = toServiceError(error);
      this.#log(method, call, status.code, started, error);
      call.emit('error', status);
    };
  }

  /** Runs a Call or CallAll of the unit (`run`, until `signal`); a revocation of its token meanwhile ends it with that error. */
  async #runCall(unit: string, call: CallLike, cancelled: AbortSignal, run: (signal: AbortSignal) => Promise<CallOutcome>): Promise<CallOutcome> {
    const revoked = new AbortController();
    const untrack = await this.#guard(unit, call, (error) => revoked.abort(error));
    try {
      const outcome = await run(AbortSignal.any([cancelled, revoked.signal]));
      if (revoked.signal.aborted) throw storedRequestError(revoked.signal.reason as RelgateError, outcome);
      return outcome;
    } finally {
      untrack();
    }
  }

  session(): grpc.UntypedServiceImplementation {
    const commands = this.#commands;
    return {
      Open: (call: grpc.ServerDuplexStream<Req, unknown>) => {
        const method = 'SessionService/Open';
        const started = performance.now();
        // A revocation before the session exists ends it as soon as it does.
        let revoked: RelgateError | undefined;
        let end: (error: RelgateError) => void = (error) => {
          revoked ??= error;
        };
        this.#auth
          .requireUnit(call)
          .then(async (unit) => {
            const release = this.#admit(unit);
            try {
              // Revocation ends the session, once there is one.
              return { unit, release, untrack: await this.#guard(unit, call, (error) => end(error)) };
            } catch (error) {
              release();
              throw error;
            }
          })
          .then(
            ({ unit, release, untrack }) => {
              // grpc-js says 'cancelled' once: a client that cancelled while it was being authenticated is gone already.
              if (call.cancelled) {
                release();
                untrack();
                return this.#log(method, call, Code.CANCELLED, started);
              }
              call.on('cancelled', release);
              const session = new Session(call, unit, {
                commands,
                watchSpec: (caller, side, options) => watchSpec(caller, side, options),
                startWatch: (spec, sink) => this.#startWatch(spec, sink),
                onEnd: (code, error) => {
                  release();
                  untrack();
                  this.#log(method, call, code, started, error);
                },
              });
              end = (error) => session.end(error);
              if (revoked) session.end(revoked);
            },
            (error: unknown) => {
              this.#log(method, call, asRelgateError(error).code, started, error);
              call.emit('error', toServiceError(error));
            },
          );
      },
    };
  }

  #watch(method: string, side: SideName): grpc.handleServerStreamingCall<Req, unknown> {
    return (call) => {
      const stream = new WatchStream(call, method, this.#logCall);
      this.#auth
        .requireUnit(call)
        .then(async (unit) => {
          const invalid = undecodableError(call.request);
          if (invalid) throw invalid;
          const spec = watchSpec(unit, side, call.request.options);
          stream.admitted(this.#admit(unit));
          const untrack = await this.#guard(unit, call, (error) => stream.end(error));
          try {
            return { watcher: await this.#startWatch(spec, stream), untrack };
          } catch (error) {
            untrack();
            throw error;
          }
        })
        .then(
          ({ watcher, untrack }) => stream.watching(watcher, untrack),
          (error: unknown) => stream.end(asRelgateError(error)),
        );
    };
  }

  /** #log for objects outside this class. */
  readonly #logCall: LogCall = (method, call, code, started, error) => this.#log(method, call, code, started, error);

  /** Starts a watch; with replicas, it is first recorded where every replica's calls see it. */
  async #startWatch(spec: WatchSpec, sink: WatchSink) {
    if (!this.#presence) return this.#hub.watch(spec, sink, (tx) => this.#watchScope(tx, spec));
    const remove = await this.#presence.add(spec);
    const tracked: WatchSink = {
      write: (batch) => sink.write(batch),
      onDrain: (callback) => sink.onDrain(callback),
      end: (error) => {
        remove();
        sink.end(error);
      },
    };
    try {
      return await this.#hub.watch(spec, tracked, (tx) => this.#watchScope(tx, spec));
    } catch (error) {
      remove();
      throw error;
    }
  }

  async #watchScope(tx: Parameters<Parameters<WatchHub['watch']>[2]>[0], spec: WatchSpec): Promise<WatchScope> {
    const caller = await requireCaller(tx, spec.unit);
    // The id says the interface: relations of others are not read.
    const ids = spec.relationId ? [spec.relationId] : (await joinedRelationIds(tx, caller.name, spec.side)).filter((id) => ofInterface(id, spec.interface));
    const scope: WatchScope = new Map();
    for (const id of ids) {
      let membership: Awaited<ReturnType<typeof joinedRelation>>;
      try {
        membership = await joinedRelation(tx, id, caller, spec.side);
      } catch (error) {
        // A resume may still replay what the unit missed before it left (or the relation went): the hub decides, from
        // whether the unit belonged to the relation where the resume starts.
        if (!(spec.relationId && spec.start === 'after' && isRelgateError(error))) throw error;
        scope.set(id, error);
        continue;
      }
      if (spec.relationId) checkInterface(id, spec.interface);
      scope.set(id, membership.units.find((unit) => unit.unit === caller.name)?.revision ?? 0);
    }
    return scope;
  }
}

/** Calls without a deadline wait at most this long. */
const DEFAULT_CALL_MS = 60_000;
/** Bounds of a watch's progress interval, per watch and for --progress-interval. */
export const MIN_PROGRESS_MS = 50;
export const MAX_PROGRESS_MS = 86_400_000;

function abortOnCancel(call: { cancelled: boolean; on(event: 'cancelled', listener: () => void): unknown }): AbortSignal {
  const controller = new AbortController();
  // grpc-js says 'cancelled' once, perhaps already (while the caller was being authenticated).
  if (call.cancelled) controller.abort(CALL_CANCELLED);
  // A reason of our own: abort() without one builds a DOMException with a stack, on every cancelled call.
  call.on('cancelled', () => controller.abort(CALL_CANCELLED));
  return controller.signal;
}

const CALL_CANCELLED = new Error('the client cancelled the call');

function callOptions(q: Req) {
  return { ...createInput(q), wait_for_responders: Boolean(q.wait_for_responders) };
}

function unitProperties(q: Req) {
  return { name: q.name, ingress_address: q.ingress_address, egress_subnets: q.egress_subnets, labels: q.labels };
}

/**
 * The writes a session carries as commands, by command name. The unary RPCs of the same name run these too: one
 * parsing of each message, so both honour every field alike.
 */
function commandsOf(s: RequestService) {
  return {
    create: (unit: string, q: Req) => s.create(unit, createInput(q)),
    create_or_update: (unit: string, q: Req) => s.createOrUpdate(unit, { ...createInput(q), match_fields: q.match_fields, expected_revision: q.expected_revision }),
    withdraw: (unit: string, q: Req) => s.withdraw(unit, { request_id: q.request_id, expected_revision: q.expected_revision }),
    claim: (unit: string, q: Req) => s.claim(unit, { request_id: q.request_id, lease: q.lease, expected_revision: q.expected_revision }),
    release: (unit: string, q: Req) => s.release(unit, q.request_id),
    respond: (unit: string, q: Req) => s.respond(unit, { request_id: q.request_id, code: q.code, error: q.error, fields: q.fields, expected_revision: q.expected_revision }),
  };
}

function createInput(q: Req) {
  return { relation_id: q.relation_id, request_id: q.request_id ?? '', fields: q.fields, delivery: deliveryInput(q.delivery), ttl: q.ttl };
}

function relationScope(q: Req): RelationScope {
  return { relationId: q.relation_id, iface: q.interface };
}

function listInput(q: Req) {
  return { relation_id: q.relation_id, interface: q.interface, filter: enumValue(FILTER, q.filter, 'filter') ?? 'all', match_fields: q.match_fields, page_size: q.page_size, page_token: q.page_token };
}

function watchSpec(unit: string, side: SideName, options: Req | null | undefined): WatchSpec {
  const filter = enumValue(FILTER, options?.filter, 'options.filter') ?? 'all';
  const start = enumValue(START, options?.start, 'options.start') ?? 'snapshot';
  const afterRevision = Number(options?.after_revision ?? 0);
  const violations = new Violations();
  if (filter === 'answered') violations.add('options.filter', 'watches take ALL or NEW');
  if (start === 'after' && !(afterRevision >= 0)) violations.add('options.after_revision', 'must not be negative');
  if (start !== 'after' && afterRevision !== 0) violations.add('options.after_revision', 'is only for WATCH_START_AFTER_REVISION');
  const progress = Number(options?.progress_interval_ms ?? 0);
  if (progress !== 0 && (progress < MIN_PROGRESS_MS || progress > MAX_PROGRESS_MS)) {
    violations.add('options.progress_interval_ms', `must be 0 (server default) or from ${MIN_PROGRESS_MS} to ${MAX_PROGRESS_MS} (a day)`);
  }
  violations.throwIfAny();
  return { unit, side, relationId: options?.relation_id ?? '', interface: options?.interface ?? '', filter: filter === 'new' ? 'new' : 'all', start, afterRevision, progressIntervalMs: progress };
}


type LogCall = (method: string, call: { getPeer(): string }, code: number, started: number, error?: unknown) => void;

const nothing = () => {};

/**
 * One server-streaming watch call: the hub's sink for it, its cancellation,
 * its cap slot and its log line. A class rather than closures, as thousands
 * of idle watches each hold one.
 */
class WatchStream implements WatchSink {
  readonly #call: grpc.ServerWritableStream<Req, unknown>;
  readonly #method: string;
  readonly #log: LogCall;
  readonly #started = performance.now();
  #finished = false;
  #release: () => void = nothing;
  #untrack: () => void = nothing;
  #watcher: Watcher | undefined;

  constructor(call: grpc.ServerWritableStream<Req, unknown>, method: string, log: LogCall) {
    this.#call = call;
    this.#method = method;
    this.#log = log;
    call.on('cancelled', () => this.#cancelled());
  }

  /** The unit's stream cap counted this stream; released when it ends. */
  admitted(release: () => void): void {
    this.#release = release;
  }

  /** The watch runs; untrack stops the server's tracking of it. */
  watching(watcher: Watcher, untrack: () => void): void {
    this.#watcher = watcher;
    this.#untrack = untrack;
    // Ended or cancelled while the watch was starting: nobody will stop it later.
    if (!this.#finished) return;
    untrack();
    watcher.stop();
  }

  write(batch: WatchBatchMessage): boolean {
    // Ended (revoked, say) while the watch was starting: its snapshot goes nowhere.
    if (this.#finished) return true;
    return this.#call.write({ batch });
  }

  onDrain(callback: () => void): void {
    this.#call.once('drain', callback);
  }

  end(error?: RelgateError): void {
    this.#release();
    this.#untrack();
    if (this.#finished) return;
    this.#finished = true;
    if (error) {
      const status = toServiceError(error);
      this.#log(this.#method, this.#call, status.code, this.#started, error);
      this.#call.emit('error', status);
    } else {
      this.#log(this.#method, this.#call, grpc.status.OK, this.#started);
      this.#call.end();
    }
  }

  #cancelled(): void {
    this.#release();
    if (this.#finished) return;
    this.#finished = true;
    this.#log(this.#method, this.#call, grpc.status.CANCELLED, this.#started);
    this.#watcher?.stop();
  }
}
