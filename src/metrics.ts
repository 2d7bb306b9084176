// Prometheus metrics: the standard gRPC server metrics under the names of
// go-grpc-prometheus (so existing dashboards and alerts apply), and relgate's
// own: waiting requests, request-to-response time, watches and their lag,
// slow-watcher cut-offs and the store's commits and revisions. Every label is
// bounded: gRPC method names, status codes, interface names, watch sides.
import * as grpc from '@grpc/grpc-js';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { onSendStatus } from './errors.ts';
import type { Change, LoggedRequest, RequestRecord, RequestState, Store } from './store/store.ts';
import { fieldsPreview } from './dashboard/state.ts';
import { pendingRequests } from './relations.ts';
import type { WatchHub } from './watch-hub.ts';

/** gRPC status codes as go-grpc-prometheus spells them in grpc_code. */
const CODE_NAMES = [
  'OK', 'Canceled', 'Unknown', 'InvalidArgument', 'DeadlineExceeded', 'NotFound', 'AlreadyExists', 'PermissionDenied',
  'ResourceExhausted', 'FailedPrecondition', 'Aborted', 'OutOfRange', 'Unimplemented', 'Internal', 'Unavailable', 'DataLoss', 'Unauthenticated',
];

/** A response as the dashboard shows it. */
export interface AnsweredRequest {
  request_id: string;
  relation_id: string;
  interface: string;
  responder_unit: string;
  code: number;
  error: string;
  /** The fields as JSON, cut as the dashboard shows them (see fieldsPreview). */
  fields: string;
  /** Epoch milliseconds of the response. */
  time: number;
  /** Milliseconds from the request's creation to this response. */
  latency_ms: number;
}

const METHOD_LABELS = ['grpc_type', 'grpc_service', 'grpc_method'] as const;
type MethodLabels = Record<(typeof METHOD_LABELS)[number], string>;

interface MethodSeries {
  started: Counter.Internal;
  received: Counter.Internal;
  sent: Counter.Internal;
  handling: Histogram.Internal<string>;
  handled(code: number): Counter.Internal;
}

/**
 * Node's process metrics, collected once per process: prom-client's
 * collectors cannot be stopped, and each would keep a stopped server's
 * registry, and with it the server, reachable.
 */
let processRegistry: Registry | undefined;

function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

export class Metrics {
  readonly registry = new Registry();
  readonly #store: Store;
  readonly #started: Counter<string>;
  readonly #handled: Counter<string>;
  readonly #handling: Histogram<string>;
  readonly #received: Counter<string>;
  readonly #sent: Counter<string>;
  readonly #waiting: Gauge<string>;
  readonly #answerTime: Histogram<string>;
  readonly #commitTime: Histogram<string>;
  /** Pending requests per interface, kept up to date from every commit: the waiting gauge. */
  readonly #pending = new Map<string, number>();
  /** Pending requests per relation, with its interface: what a relation's removal takes away. */
  readonly #pendingByRelation = new Map<string, { interface: string; count: number }>();
  readonly #recent: AnsweredRequest[] = [];
  readonly #recentLimit: number;

  constructor(store: Store, hub: WatchHub, interfaces: readonly string[], options: { recentResponses?: number } = {}) {
    this.#store = store;
    this.#recentLimit = options.recentResponses ?? 50;
    const registers = [this.registry];
    this.#started = new Counter({ name: 'grpc_server_started_total', help: 'Total number of RPCs started on the server.', labelNames: METHOD_LABELS, registers });
    this.#handled = new Counter({ name: 'grpc_server_handled_total', help: 'Total number of RPCs completed on the server, regardless of success or failure.', labelNames: [...METHOD_LABELS, 'grpc_code'], registers });
    this.#handling = new Histogram({ name: 'grpc_server_handling_seconds', help: 'Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.', labelNames: METHOD_LABELS, registers });
    this.#received = new Counter({ name: 'grpc_server_msg_received_total', help: 'Total number of RPC stream messages received on the server.', labelNames: METHOD_LABELS, registers });
    this.#sent = new Counter({ name: 'grpc_server_msg_sent_total', help: 'Total number of gRPC stream messages sent by the server.', labelNames: METHOD_LABELS, registers });
    this.#waiting = new Gauge({ name: 'relgate_requests_waiting', help: 'Requests waiting for a response (state PENDING), per interface.', labelNames: ['interface'], registers });
    this.#answerTime = new Histogram({
      name: 'relgate_request_response_seconds',
      help: 'Time from the creation of a request to each of its responses, per interface.',
      labelNames: ['interface'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600],
      registers,
    });
    this.#commitTime = new Histogram({
      name: 'relgate_store_commit_seconds',
      help: 'Time for one store commit (a batch of writes) to become durable.',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    new Gauge({
      name: 'relgate_watches_open',
      help: 'Open watches (watch RPCs and session watches), per side.',
      labelNames: ['side'],
      registers,
      collect() {
        const open = { requester: 0, responder: 0 };
        for (const watcher of hub.watchers) open[watcher.spec.side] += 1;
        for (const [side, count] of Object.entries(open)) this.set({ side }, count);
      },
    });
    new Gauge({
      name: 'relgate_watch_max_lag_revisions',
      help: 'Revisions the furthest-behind watcher still has to receive (0 when every watcher is caught up).',
      registers,
      collect() {
        let max = 0;
        for (const watcher of hub.watchers) max = Math.max(max, watcher.lagRevisions);
        this.set(max);
      },
    });
    new Gauge({
      name: 'relgate_watches_behind',
      help: 'Watchers that are behind the current revision (catching up or held back by a slow reader).',
      registers,
      collect() {
        let behind = 0;
        for (const watcher of hub.watchers) if (watcher.lagRevisions > 0) behind += 1;
        this.set(behind);
      },
    });
    new Counter({
      name: 'relgate_slow_watcher_cutoffs_total',
      help: 'Watchers cut off with RESOURCE_EXHAUSTED (SLOW_WATCHER) because they did not read.',
      registers,
      collect() {
        this.reset();
        this.inc(hub.slowWatcherCutOffs);
      },
    });
    new Gauge({ name: 'relgate_store_revision', help: 'The latest committed revision.', registers, collect: function () { this.set(store.currentRevision()); } });
    new Gauge({ name: 'relgate_store_compacted_revision', help: 'Change-log entries at or below this revision are compacted away.', registers, collect: function () { this.set(store.compactedRevision()); } });
    for (const name of interfaces) this.#pending.set(name, 0);
    store.onCommitTime?.((seconds) => this.#commitTime.observe(seconds));
    const walFrames = new Gauge({ name: 'relgate_sqlite_wal_frames', help: 'Pages in the SQLite WAL at its last checkpoint by the checkpoint thread.', registers });
    const walCopied = new Gauge({ name: 'relgate_sqlite_wal_checkpointed_frames', help: 'Of those pages, the ones already copied into the database file.', registers });
    const checkpointFailures = new Counter({ name: 'relgate_sqlite_checkpoint_failures_total', help: 'Checkpoints of the SQLite checkpoint thread that failed (the WAL then grows until one works).', registers });
    store.onCheckpoint?.((result) => {
      if ('error' in result) return checkpointFailures.inc();
      walFrames.set(result.log);
      walCopied.set(result.checkpointed);
    });
    hub.onCommit((changes) => this.#observe(changes));
  }

  /** Counts the requests already waiting (once, at start); later commits keep the count. */
  async start(): Promise<void> {
    const counted: RequestRecord[] = [];
    const revision = await this.#store.read(async (tx) => {
      for await (const request of pendingRequests(tx, (await tx.listRelations()).map((relation) => relation.id))) counted.push(request);
      return tx.readRevision();
    });
    for (const request of counted) this.#addPending(request.relation_id, request.interface, 1);
    // Changes committed while counting are in the count when the read saw them.
    for (const early of this.#early ?? []) if (early.revision > revision) early.apply();
    this.#early = undefined;
    this.#publishWaiting();
  }

  /** Changes to the waiting count seen before start() has counted what was stored. */
  #early: { revision: number; apply(): void }[] | undefined = [];

  /** Responses seen since start, newest first. */
  recentResponses(): readonly AnsweredRequest[] {
    return this.#recent;
  }

  /** The server interceptor that counts every RPC, its messages, status and duration. */
  readonly interceptor: grpc.ServerInterceptor = (method, call) => {
    const series = this.#seriesOf(method);
    const started = performance.now();
    let done = false;
    const finish = (code: number) => {
      if (done) return;
      done = true;
      series.handled(code).inc();
      series.handling.observe((performance.now() - started) / 1000);
    };
    series.started.inc();
    // grpc-js sends some statuses itself on the inner call, past sendStatus below: its deadline, its message size limits.
    onSendStatus(call, (status, sendStatus) => {
      finish(status.code ?? grpc.status.UNKNOWN);
      sendStatus(status);
    });
    return new grpc.ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMessage: (message, nextMessage) => {
            series.received.inc();
            nextMessage(message);
          },
          onCancel: () => finish(grpc.status.CANCELLED),
        }),
      sendMessage: (message, next) => {
        series.sent.inc();
        next(message);
      },
      sendStatus: (status, next) => {
        finish(status.code ?? grpc.status.UNKNOWN);
        next(status);
      },
    });
  };

  /** The labelled series of a method, made once: RPCs then skip the label lookups. */
  readonly #series = new Map<string, MethodSeries>();

  #seriesOf(method: grpc.ServerMethodDefinition<unknown, unknown>): MethodSeries {
    let series = this.#series.get(method.path);
    if (series) return series;
    const labels = methodLabels(method);
    const handled = new Map<number, Counter.Internal>();
    series = {
      started: this.#started.labels(labels),
      received: this.#received.labels(labels),
      sent: this.#sent.labels(labels),
      handling: this.#handling.labels(labels),
      handled: (code) => {
        let counter = handled.get(code);
        if (!counter) handled.set(code, (counter = this.#handled.labels({ ...labels, grpc_code: CODE_NAMES[code] ?? String(code) })));
        return counter;
      },
    };
    this.#series.set(method.path, series);
    return series;
  }

  #observe(changes: readonly Change[]): void {
    const requests = new Map<string, LoggedRequest>();
    for (const change of changes) {
      const data = change.data;
      // Removing a relation deletes its requests without a change of their own.
      if (data.kind === 'relation-removed') this.#whenCounted(change.revision, () => this.#removeRelation(change.relation_id));
      if (data.kind !== 'request') continue;
      this.#countPending(change.relation_id, data.before, -1, change.revision);
      this.#countPending(change.relation_id, data.after, 1, change.revision);
      const request = data.after === null ? data.before : data.after;
      requests.set(request.request_id, request);
    }
    for (const change of changes) {
      if (change.data.kind !== 'response') continue;
      const response = change.data.response;
      const request = requests.get(response.request_id);
      if (!request) continue;
      const latency = Math.max(0, response.create_time - request.create_time);
      this.#answerTime.observe({ interface: request.interface }, latency / 1000);
      const { request_id, relation_id, responder_unit, code, error } = response;
      this.#recent.unshift({ request_id, relation_id, responder_unit, code, error, fields: fieldsPreview(response.fields), interface: request.interface, time: response.create_time, latency_ms: latency });
      if (this.#recent.length > this.#recentLimit) this.#recent.pop();
    }
    this.#publishWaiting();
  }

  #countPending(relationId: string, request: RequestState | null, by: number, revision: number): void {
    if (request?.state !== 'pending') return;
    this.#whenCounted(revision, () => this.#addPending(relationId, request.interface, by));
  }

  /** Applies a change now, or once start() has counted, if the count did not see it. */
  #whenCounted(revision: number, apply: () => void): void {
    if (this.#early) this.#early.push({ revision, apply });
    else apply();
  }

  #addPending(relationId: string, name: string, by: number): void {
    const entry = this.#pendingByRelation.get(relationId) ?? { interface: name, count: 0 };
    entry.count += by;
    this.#pendingByRelation.set(relationId, entry);
    this.#pending.set(name, (this.#pending.get(name) ?? 0) + by);
  }

  #removeRelation(relationId: string): void {
    const entry = this.#pendingByRelation.get(relationId);
    if (!entry) return;
    this.#pendingByRelation.delete(relationId);
    this.#pending.set(entry.interface, (this.#pending.get(entry.interface) ?? 0) - entry.count);
  }

  #publishWaiting(): void {
    for (const [name, count] of this.#pending) this.#waiting.set({ interface: name }, count);
  }

  /** The text /metrics serves: this server's series, then the process's. */
  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: `${await this.registry.metrics()}\n${await processMetrics().metrics()}` };
  }
}

/** go-grpc-prometheus's labels of a method: its type and its service and method names. */
function methodLabels(method: grpc.ServerMethodDefinition<unknown, unknown>): MethodLabels {
  const [service = '', name = ''] = method.path.replace(/^\//, '').split('/');
  const type = method.requestStream ? (method.responseStream ? 'bidi_stream' : 'client_stream') : method.responseStream ? 'server_stream' : 'unary';
  return { grpc_type: type, grpc_service: service, grpc_method: name };
}
