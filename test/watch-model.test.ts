// A model test of watches against a running server: random interleavings of
// create, create-or-update, respond, withdraw, a responder leaving and
// rejoining, and watchers disconnecting and resuming. A small model of the
// relation predicts, for each watcher, exactly the changes its filter
// matches; each watcher's log over all its streams must equal that list
// (ordered, unique, reliable, with every revision whole).
import fc from 'fast-check';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { clientsOf, startHarness, struct, type Harness, type Rpc } from './helpers/harness.ts';
import { relate, type Relation } from './helpers/fixture.ts';
import { watch, type Event, type Msg, type Watch } from './helpers/streams.ts';
import { expectWellFormed } from './helpers/watch-log.ts';

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ durability: 'normal' });
});
afterAll(() => h.close());

const NAMES = ['a.example', 'b.example', 'c.example'];

type Op =
  | { kind: 'create'; name: number; to: number }
  | { kind: 'createOrUpdate'; name: number; variant: number }
  | { kind: 'respond'; responder: number; pick: number }
  | { kind: 'withdraw'; pick: number }
  | { kind: 'toggleMembership' }
  | { kind: 'disconnect'; watcher: number }
  | { kind: 'resume'; watcher: number }
  | { kind: 'burst'; count: number; watcher: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('create' as const), name: fc.nat(2), to: fc.nat(2) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('createOrUpdate' as const), name: fc.nat(2), variant: fc.nat(1) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('respond' as const), responder: fc.nat(1), pick: fc.nat(20) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('withdraw' as const), pick: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'toggleMembership' as const }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('disconnect' as const), watcher: fc.nat(2) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('resume' as const), watcher: fc.nat(2) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('burst' as const), count: fc.integer({ min: 2, max: 12 }), watcher: fc.nat(2) }) },
);

/** A request as the model knows it. */
interface ModelRequest {
  id: string;
  name: string;
  variant: number;
  /** '' for any responder, else the unit. */
  to: string;
  answered: string[];
  state: 'pending' | 'answered';
}

/** What a watcher watches: the unit, its side, one relation or all, and the filter. */
interface WatcherSpec {
  unit: string;
  side: 'requester' | 'responder';
  everyRelation: boolean;
  filter: 'all' | 'new';
}

const addressedTo = (request: ModelRequest, unit: string) => request.to === '' || request.to === unit;
const newFor = (request: ModelRequest, unit: string) => request.state === 'pending' && addressedTo(request, unit) && !request.answered.includes(unit);

function inSet(spec: WatcherSpec, request: ModelRequest | null): boolean {
  if (!request) return false;
  if (spec.side === 'requester') return true;
  return addressedTo(request, spec.unit) && (spec.filter === 'all' || newFor(request, spec.unit));
}

/** A watcher as the test drives it: its spec, the model's expected log and the streams' log. */
class ModelWatcher {
  readonly spec: WatcherSpec;
  readonly rpc: Rpc;
  readonly relationId: string;
  readonly expected: string[] = [];
  readonly logged: string[] = [];
  readonly batches: Msg[][] = [];
  /** Whether the watcher's unit currently belongs to the relation (it follows it). */
  following = true;
  #stream: Watch | undefined;
  #consumed = 0;

  constructor(spec: WatcherSpec, rpc: Rpc, relationId: string) {
    this.spec = spec;
    this.rpc = rpc;
    this.relationId = relationId;
  }

  get connected(): boolean {
    return this.#stream !== undefined;
  }

  /** The revision of the last message any of its streams delivered (or where the first began). */
  lastRevision = 0;

  open(afterRevision: number): void {
    this.lastRevision = Math.max(this.lastRevision, afterRevision);
    const options = { relation_id: this.spec.everyRelation ? '' : this.relationId, filter: this.spec.filter === 'new' ? 'REQUEST_FILTER_NEW' : 'REQUEST_FILTER_ALL' };
    const stream = watch(this.rpc, { ...options, start: 'WATCH_START_AFTER_REVISION', after_revision: String(afterRevision), progress_interval_ms: 50 });
    this.batches.push(stream.batches);
    this.#stream = stream;
    this.#consumed = 0;
    stream.call.on('data', () => this.#collect());
  }

  /** Ends the stream; what it delivered so far stays in the log. */
  disconnect(): void {
    this.#collect();
    this.#stream?.cancel();
    this.#stream = undefined;
  }

  /** Set when its unit joined the relation while it was away: resumed, it ends just before the join and starts over from a snapshot. */
  snapshotDue = false;

  async resume(): Promise<void> {
    if (!this.snapshotDue) return this.open(this.lastRevision);
    this.open(this.lastRevision);
    await this.endedForSnapshot();
  }

  /** Its stream ends just before its unit's join (a watch of every relation); what it sent until then is logged. */
  async endedForSnapshot(): Promise<void> {
    const status = await this.#stream?.status;
    this.#collect();
    expect(status?.reason, `${this.spec.unit}'s watch at its join`).toBe('SNAPSHOT_REQUIRED');
    this.#stream = undefined;
  }

  /** Starts over from a snapshot; resolves with its revision once it is complete. */
  async openSnapshot(): Promise<number> {
    const options = { relation_id: '', filter: this.spec.filter === 'new' ? 'REQUEST_FILTER_NEW' : 'REQUEST_FILTER_ALL', progress_interval_ms: 50 };
    const stream = watch(this.rpc, options);
    this.batches.push(stream.batches);
    this.#stream = stream;
    this.#consumed = 0;
    stream.call.on('data', () => this.#collect());
    const complete = await stream.events.next((event) => event.type === 'EVENT_TYPE_SNAPSHOT_COMPLETE', 10_000);
    this.#collect();
    this.snapshotDue = false;
    return Number(complete.revision);
  }

  /** Waits until the stream has delivered everything up to the revision. */
  async reach(revision: number): Promise<void> {
    if (this.lastRevision >= revision) return;
    await this.#stream?.events.next((event) => Number(event.batchRevision) >= revision, 10_000);
    this.#collect();
  }

  #collect(): void {
    const stream = this.#stream;
    if (!stream) return;
    for (const batch of stream.batches.slice(this.#consumed)) {
      for (const event of batch.events as Event[]) {
        const entry = logEntry(event);
        if (entry) this.logged.push(entry);
      }
      this.lastRevision = Math.max(this.lastRevision, Number(batch.revision));
    }
    this.#consumed = stream.batches.length;
  }
}

/** An event as the log compares it; flags and progress events are left out. */
function logEntry(event: Msg): string | undefined {
  const type = (event.type as string).replace('EVENT_TYPE_', '');
  if (event.object === 'request') return `${type} ${event.revision} request ${event.request.request_id}`;
  if (event.object === 'response') return `${type} ${event.revision} response ${event.response.request_id} ${event.response.responder_unit}`;
  if (event.object === 'unit') return `${type} ${event.revision} unit ${event.unit.unit}`;
  return undefined;
}

/** Runs one interleaving against a fresh relation and checks every watcher's log. */
async function run(ops: Op[]): Promise<void> {
  const r = await relate(h, { responders: 2 });
  const [responder0, responder1] = r.responders as [string, string];
  // The run's streams get connections of their own: hundreds of runs cancel thousands of streams, and a
  // server's HTTP/2 closes a connection whose peer resets more than 1,000 streams at once or 33 a second.
  const streams = clientsOf(h.server.address, { ownConnection: true });
  const watchers = [
    new ModelWatcher({ unit: responder0, side: 'responder', everyRelation: false, filter: 'all' }, streams.responder(responder0), r.id),
    new ModelWatcher({ unit: responder1, side: 'responder', everyRelation: true, filter: 'new' }, streams.responder(responder1), r.id),
    new ModelWatcher({ unit: r.requesters[0] as string, side: 'requester', everyRelation: false, filter: 'all' }, streams.requester(r.requesters[0] as string), r.id),
  ];
  const start = h.server.hub.revision;
  for (const watcher of watchers) watcher.open(start);
  const model = new Model(r, watchers);
  try {
    for (const op of ops) await model.apply(op);
    for (const watcher of watchers) if (!watcher.connected) await model.resume(watcher);
    const final = h.server.hub.revision;
    await Promise.all(watchers.map((watcher) => watcher.reach(final)));
    for (const watcher of watchers) {
      expect(watcher.logged, `${watcher.spec.unit} ${watcher.spec.side}`).toEqual(watcher.expected);
      for (const batches of watcher.batches) expectWellFormed(batches);
    }
  } finally {
    for (const watcher of watchers) watcher.disconnect();
    streams.close();
  }
}

/** The relation as the model sees it; apply() performs an operation and records what each watcher must see. */
class Model {
  readonly #r: Relation;
  readonly #watchers: ModelWatcher[];
  /** Live requests in creation order. */
  readonly #requests: ModelRequest[] = [];
  #responder1Joined = true;

  constructor(r: Relation, watchers: ModelWatcher[]) {
    this.#r = r;
    this.#watchers = watchers;
  }

  async apply(op: Op): Promise<void> {
    switch (op.kind) {
      case 'create':
        return this.#create(op.name, op.to);
      case 'createOrUpdate':
        return this.#createOrUpdate(op.name, op.variant);
      case 'respond':
        return this.#respond(op.responder, op.pick);
      case 'withdraw':
        return this.#withdraw(op.pick);
      case 'toggleMembership':
        return this.#toggleMembership();
      case 'disconnect': {
        const watcher = this.#watchers[op.watcher] as ModelWatcher;
        if (watcher.connected) watcher.disconnect();
        return;
      }
      case 'resume': {
        const watcher = this.#watchers[op.watcher] as ModelWatcher;
        if (!watcher.connected) await this.resume(watcher);
        return;
      }
      case 'burst':
        return this.#burst(op.count, this.#watchers[op.watcher] as ModelWatcher);
    }
  }

  /** Reconnects a watcher; one whose unit joined meanwhile starts over from a snapshot, which the model predicts. */
  async resume(watcher: ModelWatcher): Promise<void> {
    if (!watcher.snapshotDue) return watcher.resume();
    await watcher.resume();
    await this.#snapshot(watcher);
  }

  /** A snapshot of every relation of the watcher's unit: the requests its filter matches, in creation order. */
  async #snapshot(watcher: ModelWatcher): Promise<void> {
    const revision = await watcher.openSnapshot();
    watcher.lastRevision = revision;
    watcher.following = this.#responder1Joined;
    if (!watcher.following) return;
    for (const request of this.#requests) if (inSet(watcher.spec, request)) watcher.expected.push(`ADDED ${revision} request ${request.id}`);
  }

  /** Concurrent creates while a watcher reconnects in their midst; the model takes them in revision order. */
  async #burst(count: number, watcher: ModelWatcher): Promise<void> {
    if (watcher.snapshotDue) await this.resume(watcher);
    const writes = Array.from({ length: count }, () => this.#r.req().call('CreateRequest', { relation_id: this.#r.id, fields: fields(0, 0) }));
    await writes[0];
    if (watcher.connected) watcher.disconnect();
    void watcher.resume();
    const created = (await Promise.all(writes)).map((result) => result.request).sort((a, b) => Number(a.revision) - Number(b.revision));
    for (const request of created) {
      const added: ModelRequest = { id: request.request_id, name: NAMES[0] as string, variant: 0, to: '', answered: [], state: 'pending' };
      this.#requests.push(added);
      this.#requestChanged(Number(request.revision), null, added);
    }
  }

  async #create(name: number, to: number): Promise<void> {
    const unit = to === 0 ? '' : (this.#r.responders[to - 1] as string);
    if (unit === this.#r.responders[1] && !this.#responder1Joined) return;
    const delivery = unit ? { mode: 'DELIVERY_MODE_UNIT', unit } : { mode: 'DELIVERY_MODE_ANY' };
    const { request } = await this.#r.req().call('CreateRequest', { relation_id: this.#r.id, fields: fields(name, 0), delivery });
    const created: ModelRequest = { id: request.request_id, name: NAMES[name] as string, variant: 0, to: unit, answered: [], state: 'pending' };
    this.#requests.push(created);
    this.#requestChanged(Number(request.revision), null, created);
  }

  async #createOrUpdate(name: number, variant: number): Promise<void> {
    const result = await this.#r.req().call('CreateOrUpdateRequest', { relation_id: this.#r.id, fields: fields(name, variant), match_fields: ['common_name'] });
    const existing = this.#requests.find((request) => request.name === NAMES[name]);
    if (!existing) {
      expect(result.created).toBe(true);
      const created: ModelRequest = { id: result.request.request_id, name: NAMES[name] as string, variant, to: '', answered: [], state: 'pending' };
      this.#requests.push(created);
      return this.#requestChanged(Number(result.request.revision), null, created);
    }
    expect([result.request.request_id, result.updated]).toEqual([existing.id, existing.variant !== variant]);
    if (existing.variant === variant) return;
    const before = { ...existing, answered: [...existing.answered] };
    Object.assign(existing, { variant, answered: [], state: 'pending' });
    this.#requestChanged(Number(result.request.revision), before, existing);
  }

  async #respond(responder: number, pick: number): Promise<void> {
    const unit = this.#r.responders[responder] as string;
    if (responder === 1 && !this.#responder1Joined) return;
    const open = this.#requests.filter((request) => newFor(request, unit));
    const request = open[pick % Math.max(open.length, 1)];
    if (!request) return;
    const { response } = await this.#r.res(responder).call('Respond', { request_id: request.id, fields: struct({ key: 'K', cert: 'C' }) });
    const revision = Number(response.revision);
    for (const watcher of this.#watchers) {
      if (watcher.spec.side === 'requester') watcher.expected.push(`ADDED ${revision} response ${request.id} ${unit}`);
    }
    const before = { ...request, answered: [...request.answered] };
    request.answered.push(unit);
    request.state = 'answered';
    this.#requestChanged(revision, before, request);
  }

  async #withdraw(pick: number): Promise<void> {
    const request = this.#requests[pick % Math.max(this.#requests.length, 1)];
    if (!request) return;
    const { revision } = await this.#r.req().call('WithdrawRequest', { request_id: request.id });
    this.#requests.splice(this.#requests.indexOf(request), 1);
    this.#requestChanged(Number(revision), request, null);
  }

  async #toggleMembership(): Promise<void> {
    const unit = this.#r.responders[1] as string;
    const method = this.#responder1Joined ? 'LeaveRelation' : 'JoinRelation';
    const { relation } = await h.registry.call(method, { relation_id: this.#r.id, unit });
    this.#responder1Joined = !this.#responder1Joined;
    const type = this.#responder1Joined ? 'UNIT_JOINED' : 'UNIT_DEPARTED';
    for (const watcher of this.#watchers) {
      const own = watcher.spec.unit === unit;
      // Its watch of every relation ends just before the join (when it is next connected): it starts over from a snapshot.
      if (own && watcher.spec.everyRelation && this.#responder1Joined) {
        watcher.following = false;
        watcher.snapshotDue = true;
        if (watcher.connected) {
          await watcher.endedForSnapshot();
          await this.#snapshot(watcher);
        }
        continue;
      }
      if (own && watcher.snapshotDue) continue;
      if (own) watcher.following = this.#responder1Joined;
      if (watcher.following || own) watcher.expected.push(`${type} ${relation.revision} unit ${unit}`);
    }
  }

  /** What a request's change means for each watcher that follows the relation. */
  #requestChanged(revision: number, before: ModelRequest | null, after: ModelRequest | null): void {
    const id = (after ?? before)?.id;
    for (const watcher of this.#watchers) {
      if (!watcher.following) continue;
      const wasIn = inSet(watcher.spec, before);
      const isIn = inSet(watcher.spec, after);
      if (!wasIn && !isIn) continue;
      const type = !wasIn ? 'ADDED' : isIn ? 'MODIFIED' : 'DELETED';
      watcher.expected.push(`${type} ${revision} request ${id}`);
    }
  }
}

function fields(name: number, variant: number) {
  return struct({ common_name: NAMES[name] as string, sans: [`v${variant}.example`] });
}

test('every watcher logs exactly the changes its filter matches, across disconnects and resumes', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(opArb, { minLength: 5, maxLength: 40 }), (ops) => run(ops)),
    { numRuns: Number(process.env.WATCH_MODEL_RUNS ?? 50) },
  );
}, 120_000);
