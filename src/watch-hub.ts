// One shared path from committed writes to every watcher: the store hands
// each commit's changes to the hub once, the hub translates them for the
// watchers of the touched relations and queues one batch per watcher.
// Watchers that start behind (snapshot or resume) read the change log until
// they reach the hub's revision, then switch to the live path in the same
// tick, so no change is missed or delivered twice.
import { Code, RelgateError, asRelgateError } from './errors.ts';
import { textSize } from './message-size.ts';
import { isAddressedTo, isNewFor, relationUnitMessage, requestMessage, responseMessage, type Viewer } from './present.ts';
import { ofInterface } from './relation-id.ts';
import { SetMap } from './set-map.ts';
import { compactedError } from './store/store-errors.ts';
import type { Change, RelationUnitRecord, RequestState, SideName, Store, StoreTx } from './store/store.ts';

export type WatchStartName = 'snapshot' | 'now' | 'after';

export interface WatchSpec {
  unit: string;
  side: SideName;
  /** One relation, or '' for every relation the unit joins on the side. */
  relationId: string;
  /** Only relations of this interface, or '' for every interface. */
  interface: string;
  /** Responder watches: every request addressed to the unit, or only new ones. */
  filter: 'all' | 'new';
  start: WatchStartName;
  afterRevision: number;
  progressIntervalMs: number;
}

export interface WatchEventMessage {
  type: string;
  revision: number;
  relation_id: string;
  [object: string]: unknown;
}

export interface WatchBatchMessage {
  events: WatchEventMessage[];
  revision: number;
}

/** Where a watcher's batches go: a server stream or a session. */
export interface WatchSink {
  /** Returns false when the transport is full; then wait for onDrain. */
  write(batch: WatchBatchMessage): boolean;
  onDrain(callback: () => void): void;
  /** Ends the watch: with an error, or cleanly when error is undefined. */
  end(error?: RelgateError): void;
}

export interface HubOptions {
  /** Most events queued for one watcher before it is cut off. */
  maxBufferedEvents: number;
  /** Most bytes (as estimated) queued for one watcher before it is cut off. */
  maxBufferedBytes: number;
  /** Default interval of progress events. */
  progressIntervalMs: number;
  /** Revisions read per change-log page during catch-up. */
  catchUpPage: number;
  /** Largest stream message the transport sends: a message of events stays well below it. */
  maxMessageBytes: number;
}

/** Progress intervals in a row a watcher not yet live may hold more than its byte budget without taking any of it. */
const STALLED_CHECKS = 6;

/** Events per stream message; a revision is never split, so one may hold more. */
const MAX_BATCH_EVENTS = 500;

/**
 * A unit joining or leaving a relation, kept so resumes know where the unit belonged; or a unit removed, before which
 * its name belonged to another unit, whose memberships a unit registered since under that name must not inherit.
 */
type MembershipChange =
  | { revision: number; relationId: string; unit: string; side: SideName; joined: boolean; removed?: never }
  | { revision: number; unit: string; removed: true };

export const DEFAULT_HUB_OPTIONS: HubOptions = {
  maxBufferedEvents: 10_000,
  maxBufferedBytes: 64 * 1024 * 1024,
  progressIntervalMs: 10_000,
  catchUpPage: 500,
  maxMessageBytes: 16 * 1024 * 1024,
};

export class WatchHub {
  readonly #store: Store;
  readonly #options: HubOptions;
  readonly #byRelation = new SetMap<Watcher>();
  /** Watchers of every relation of a unit, by unit: they follow its joins. */
  readonly #following = new SetMap<Watcher>();
  readonly #watchers = new Set<Watcher>();
  /** Progress timers by interval, each shared by the watchers using that interval. */
  readonly #tickers = new Map<number, { timer: NodeJS.Timeout; watchers: Set<Watcher> }>();
  readonly #commitListeners = new Set<(changes: readonly Change[]) => void>();
  /** Every join and departure after #indexedAfter, in revision order. */
  #memberships: MembershipChange[] = [];
  #indexedAfter: number;
  #indexing: Promise<void> = Promise.resolve();
  #revision: number;
  #closed = false;
  /** Every progress interval, cuts off watchers stuck before going live; see Watcher.cutOffIfStalled. */
  readonly #stallTimer: NodeJS.Timeout;

  constructor(store: Store, options: Partial<HubOptions> = {}) {
    this.#store = store;
    this.#options = { ...DEFAULT_HUB_OPTIONS, ...options };
    this.#revision = store.currentRevision();
    this.#indexedAfter = this.#revision;
    store.onCommit((changes) => this.#publish(changes));
    store.onGap?.((compacted) => this.#missed(compacted));
    this.#stallTimer = setInterval(() => {
      for (const watcher of [...this.#watchers]) watcher.cutOffIfStalled();
    }, this.#options.progressIntervalMs);
    this.#stallTimer.unref();
  }

  /** The revision up to which every live watcher has been given its changes. */
  get revision(): number {
    return this.#revision;
  }

  get watcherCount(): number {
    return this.#watchers.size;
  }

  /** The open watchers, for metrics. */
  get watchers(): ReadonlySet<Watcher> {
    return this.#watchers;
  }

  /** Watchers cut off for falling behind (SLOW_WATCHER) since the hub started. */
  slowWatcherCutOffs = 0;

  /** Whether a unit on the side (or the given unit) currently watches the relation. */
  isWatched(relationId: string, side: SideName, unit?: string): boolean {
    for (const watcher of this.#byRelation.get(relationId)) {
      if (watcher.spec.side === side && (unit === undefined || watcher.spec.unit === unit)) return true;
    }
    return false;
  }

  /** Listens to every commit after the hub has fanned it out. */
  onCommit(listener: (changes: readonly Change[]) => void): () => void {
    this.#commitListeners.add(listener);
    return () => this.#commitListeners.delete(listener);
  }

  /**
   * Starts a watch. Membership checks happen in `scope`, which runs in the
   * same read as the snapshot and returns the relations covered and when the
   * unit joined each.
   */
  async watch(spec: WatchSpec, sink: WatchSink, scope: (tx: StoreTx) => Promise<WatchScope>): Promise<Watcher> {
    if (this.#closed) throw shuttingDown();
    const everyRelation = !spec.relationId;
    if (spec.start === 'after') await this.#indexMemberships(spec.afterRevision);
    const watcher = new Watcher(this, spec, sink, this.#options);
    const ready = await this.#store.read(async (tx) => {
      const relations = await scope(tx);
      const revision = tx.readRevision();
      const snapshot = spec.start === 'snapshot' ? await snapshotEvents(tx, spec, [...relations.keys()], revision) : [];
      return { relations, revision, snapshot };
    });
    if (this.#closed) throw shuttingDown();
    // 'now' is the revision the scope was read at: a join committed since is caught up.
    const from = spec.start === 'after' ? spec.afterRevision : ready.revision;
    if (spec.start === 'after') {
      if (from < this.#store.compactedRevision()) throw compactedError(from, this.#store.compactedRevision());
      if (from > this.#revision) {
        throw new RelgateError(Code.OUT_OF_RANGE, `revision ${from} is in the future; the current revision is ${this.#revision}`, {
          reason: 'FUTURE_REVISION',
          metadata: { requested_revision: String(from), current_revision: String(this.#revision) },
        });
      }
    }
    if (!everyRelation && spec.start === 'after') this.#checkResume(spec, from, ready.revision, ready.relations.get(spec.relationId));
    const joined = memberships(ready.relations);
    const relations = !everyRelation ? new Map([[spec.relationId, 0]]) : spec.start === 'after' ? this.#membershipAt(spec, from, ready.revision, joined) : joined;
    for (const [relationId, joinedAt] of relations) watcher.relations.set(relationId, joinedAt);
    this.#register(watcher);
    watcher.begin(from, ready.snapshot);
    return watcher;
  }

  /** Ends every watch with UNAVAILABLE so clients resume elsewhere. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#stallTimer);
    for (const watcher of [...this.#watchers]) watcher.stop(shuttingDown());
  }

  changesSince(after: number): Promise<{ changes: Change[]; upTo: number }> {
    return this.#store.changesSince(after, this.#options.catchUpPage);
  }

  follow(watcher: Watcher, relationId: string): void {
    this.#byRelation.add(relationId, watcher);
  }

  unfollow(watcher: Watcher, relationId: string): void {
    this.#byRelation.delete(relationId, watcher);
  }

  /** Ticks the watcher every interval; watchers of one interval share a timer. */
  tickEvery(interval: number, watcher: Watcher): void {
    let ticker = this.#tickers.get(interval);
    if (!ticker) {
      const watchers = new Set<Watcher>();
      const timer = setInterval(() => {
        for (const each of watchers) each.tick();
      }, interval);
      timer.unref();
      this.#tickers.set(interval, (ticker = { timer, watchers }));
    }
    ticker.watchers.add(watcher);
  }

  stopTicking(interval: number, watcher: Watcher): void {
    const ticker = this.#tickers.get(interval);
    if (!ticker) return;
    ticker.watchers.delete(watcher);
    if (ticker.watchers.size > 0) return;
    clearInterval(ticker.timer);
    this.#tickers.delete(interval);
  }

  remove(watcher: Watcher): void {
    this.#watchers.delete(watcher);
    for (const relationId of watcher.relations.keys()) this.unfollow(watcher, relationId);
    this.#following.delete(watcher.spec.unit, watcher);
  }

  /**
   * A watch of one relation resumes from any retained revision while its unit belongs to the relation (`now` is when
   * it joined). One that no longer does (`now` says why) may still replay what it missed before it left, or before
   * the relation went: if it belonged to the relation at `from` (read at `at`), up to its departure or the removal.
   */
  #checkResume(spec: WatchSpec, from: number, at: number, now: number | RelgateError | undefined): void {
    if (!(now instanceof RelgateError)) return;
    if (!this.#membershipAt(spec, from, at, new Map()).has(spec.relationId)) throw now;
  }

  /**
   * The relations the unit belonged to at `from`: today's memberships with
   * the unit's own joins and departures since then undone, so a resumed watch
   * replays a relation it has left since (and skips one it joined later until
   * the join itself). Memberships come from the hub's index, not a query.
   */
  #membershipAt(spec: WatchSpec, from: number, at: number, current: Map<string, number>): Map<string, number> {
    const relations = new Map(current);
    for (let i = this.#memberships.length - 1; i >= 0; i--) {
      const change = this.#memberships[i] as MembershipChange;
      if (change.revision <= from) break;
      if (change.revision > at || change.unit !== spec.unit) continue;
      // The name was another unit's before: what that unit belonged to is none of this one's.
      if (change.removed) break;
      if (change.side !== spec.side) continue;
      if (change.joined) relations.delete(change.relationId);
      else if (ofInterface(change.relationId, spec.interface)) relations.set(change.relationId, 0);
    }
    return relations;
  }

  /** Extends the membership index down to `from` from the change log (resumes from before this hub started). */
  #indexMemberships(from: number): Promise<void> {
    const run = this.#indexing.then(async () => {
      const until = this.#indexedAfter;
      if (from >= until) return;
      const found: MembershipChange[] = [];
      for (let cursor = from; cursor < until; ) {
        const { changes, upTo } = await this.#store.changesSince(cursor, this.#options.catchUpPage);
        for (const change of changes) {
          if (change.revision <= until) found.push(...membershipsOf(change));
        }
        if (upTo <= cursor) break;
        cursor = upTo;
        await otherClientsTurn();
      }
      // Pruned by a compaction meanwhile: the index then already covers what is still resumable.
      if (this.#indexedAfter !== until) return;
      this.#memberships = found.concat(this.#memberships);
      this.#indexedAfter = from;
    });
    this.#indexing = run.catch(() => undefined);
    return run;
  }

  #indexChange(change: Change): void {
    const memberships = membershipsOf(change);
    if (memberships.length === 0) return;
    this.#memberships.push(...memberships);
    const compacted = this.#store.compactedRevision();
    const first = this.#memberships[0];
    if (first && first.revision <= compacted) this.#forgetMembershipsUpTo(compacted);
  }

  /** The membership index past the compacted log: nobody can resume from there. */
  #forgetMembershipsUpTo(compacted: number): void {
    this.#memberships = this.#memberships.filter((entry) => entry.revision > compacted);
    this.#indexedAfter = Math.max(this.#indexedAfter, compacted);
  }

  /** Changes up to `compacted` will never come: live watchers behind it resume, and are told to start over. */
  #missed(compacted: number): void {
    this.#forgetMembershipsUpTo(compacted);
    for (const watcher of [...this.#watchers]) {
      if (watcher.isLive && watcher.lastSentRevision < compacted) watcher.stop(compactedError(watcher.lastSentRevision, compacted));
    }
  }

  #register(watcher: Watcher): void {
    this.#watchers.add(watcher);
    for (const relationId of watcher.relations.keys()) this.follow(watcher, relationId);
    if (!watcher.spec.relationId) this.#following.add(watcher.spec.unit, watcher);
  }

  #publish(changes: readonly Change[]): void {
    const touched = new Map<Watcher, WatchEventMessage[]>();
    for (const change of changes) {
      this.#indexChange(change);
      // Watchers with the same view of a change share its translation: built once, not once per watcher.
      const views = new Map<string, WatchEventMessage[]>();
      for (const watcher of this.#candidates(change)) {
        if (!watcher.isLive) continue;
        const events = watcher.translate(change, views);
        if (events.length === 0 && !watcher.joinedAnother) continue;
        const list = touched.get(watcher);
        if (list) list.push(...events);
        else touched.set(watcher, events.slice());
      }
    }
    const last = changes.at(-1);
    if (last) this.#revision = last.revision;
    for (const [watcher, events] of touched) watcher.deliver(events, this.#revision);
    for (const listener of this.#commitListeners) listener(changes);
  }

  #candidates(change: Change): Watcher[] {
    const found = [...this.#byRelation.get(change.relation_id)];
    if (change.data.kind === 'unit-joined') {
      for (const watcher of this.#following.get(change.data.unit.unit)) {
        if (!found.includes(watcher)) found.push(watcher);
      }
    }
    return found;
  }
}

/**
 * Events as stream messages of at most MAX_BATCH_EVENTS events and about a quarter of the largest message in bytes
 * (estimated from the text they carry), cut only between events that are not `together`: a group larger than that
 * goes whole, in a message of its own.
 */
export function splitEvents(events: WatchEventMessage[], maxMessageBytes: number, together: (a: WatchEventMessage, b: WatchEventMessage) => boolean): WatchEventMessage[][] {
  if (events.length <= 1) return events.length === 0 ? [] : [events];
  const budget = maxMessageBytes / 4;
  const messages: WatchEventMessage[][] = [];
  let start = 0;
  while (start < events.length) {
    let end = start;
    let bytes = 0;
    /** Where the last group up to `end` began: start when they are all one group. */
    let cut = start;
    for (; end < events.length; end++) {
      const event = events[end] as WatchEventMessage;
      if (end > start && !together(events[end - 1] as WatchEventMessage, event)) cut = end;
      bytes += eventBytes(event);
      if (end - start >= MAX_BATCH_EVENTS || bytes > budget) break;
    }
    if (end < events.length) {
      // One group fills the budget alone: it goes whole.
      if (cut === start) for (cut = start + 1; cut < events.length && together(events[cut - 1] as WatchEventMessage, events[cut] as WatchEventMessage); cut++);
    } else cut = events.length;
    messages.push(events.slice(start, cut));
    start = cut;
  }
  return messages;
}

/** A generous estimate of an event's encoded size: the text of the fields it carries, and room for the rest. */
function eventBytes(event: WatchEventMessage): number {
  let bytes = eventSizes.get(event);
  if (bytes === undefined) {
    const carried = event as { request?: { fields?: unknown }; response?: { fields?: unknown } };
    eventSizes.set(event, (bytes = 512 + textSize(carried.request?.fields) + textSize(carried.response?.fields)));
  }
  return bytes;
}

function bytesOf(events: readonly WatchEventMessage[]): number {
  let bytes = 0;
  for (const event of events) bytes += eventBytes(event);
  return bytes;
}

/** Lets other clients' I/O in before going on with a long read. */
function otherClientsTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Watchers of one view share their events: each is measured once. */
const eventSizes = new WeakMap<WatchEventMessage, number>();

/** The joins and departures a change records (removing a relation is a departure of each of its members), and removed units. */
function membershipsOf(change: Change): MembershipChange[] {
  const data = change.data;
  const of = (unit: RelationUnitRecord, joined: boolean) => ({ revision: change.revision, relationId: change.relation_id, unit: unit.unit, side: unit.side, joined });
  if (data.kind === 'unit-joined' || data.kind === 'unit-departed') return [of(data.unit, data.kind === 'unit-joined')];
  if (data.kind === 'relation-removed') return (data.units ?? []).map((unit) => of(unit, false));
  if (data.kind === 'registry' && data.what === 'unit-removed') return [{ revision: change.revision, unit: data.name, removed: true }];
  return [];
}

/** The relations a watch covers, with the revision each was joined at; why the unit is not in the others. */
export type WatchScope = Map<string, number | RelgateError>;

function memberships(scope: WatchScope): Map<string, number> {
  return new Map([...scope].filter((entry): entry is [string, number] => typeof entry[1] === 'number'));
}

function shuttingDown(): RelgateError {
  return new RelgateError(Code.UNAVAILABLE, 'the gateway is shutting down; resume the watch from the last revision', { reason: 'SHUTTING_DOWN' });
}

async function snapshotEvents(tx: StoreTx, spec: WatchSpec, relationIds: string[], revision: number): Promise<WatchEventMessage[]> {
  const viewer: Viewer = { unit: spec.unit, side: spec.side };
  const events: WatchEventMessage[] = [];
  const at = revision;
  let after = 0;
  for (;;) {
    const page = relationIds.length === 0 ? [] : await tx.listRequests({ relationIds, afterCreateRevision: after, limit: 500 });
    for (const request of page) {
      if (!inWatchedSet(spec, request)) continue;
      events.push({ type: 'EVENT_TYPE_ADDED', revision: at, relation_id: request.relation_id, object: 'request', request: requestMessage(request, viewer) });
      if (spec.side !== 'requester') continue;
      for (const response of await tx.listResponses(request.request_id)) {
        events.push({ type: 'EVENT_TYPE_ADDED', revision: at, relation_id: response.relation_id, object: 'response', response: responseMessage(response) });
      }
    }
    if (page.length < 500) break;
    after = page.at(-1)?.create_revision ?? after;
  }
  for (const relationId of relationIds) {
    const flags = await tx.getFlags(relationId, spec.unit);
    if (flags) events.push(flagsEvent(spec.side, relationId, at, flags));
  }
  events.push({ type: 'EVENT_TYPE_SNAPSHOT_COMPLETE', revision: at, relation_id: '' });
  return events;
}

function flagsEvent(side: SideName, relationId: string, revision: number, flags: Record<string, boolean>): WatchEventMessage {
  const object = side === 'requester' ? 'requester_flags' : 'responder_flags';
  return { type: 'EVENT_TYPE_FLAGS', revision, relation_id: relationId, object, [object]: flags };
}

function inWatchedSet(spec: WatchSpec, request: RequestState | null): boolean {
  if (!request) return false;
  if (spec.side === 'requester') return true;
  return isAddressedTo(request, spec.unit) && (spec.filter === 'all' || isNewFor(request, spec.unit));
}

export class Watcher {
  readonly spec: WatchSpec;
  /** Relations covered, with the revision from which the unit belongs to each. */
  readonly relations = new Map<string, number>();
  readonly #hub: WatchHub;
  readonly #sink: WatchSink;
  readonly #options: HubOptions;
  /** Batches the transport has not taken yet, each with its size once measured (only when the transport is full). */
  readonly #queue: { batch: WatchBatchMessage; bytes: number }[] = [];
  #queuedEvents = 0;
  #queuedBytes = 0;
  /** Batches handed to the transport, and how many at the last stall check. */
  #written = 0;
  #writtenAtStallCheck = 0;
  /** Stall checks in a row that found this watcher holding more than its budget and taking nothing. */
  #stalledChecks = 0;
  /** The snapshot's last message until it is handed to the transport: before that there is no revision to resume from. */
  #snapshotEnd: WatchBatchMessage | undefined;
  #live = false;
  #stopped = false;
  #waitingDrain = false;
  /** Highest revision handed to the transport. */
  #sent = 0;
  #sentSinceTick = false;
  /** Milliseconds between progress events. */
  #interval = 0;

  constructor(hub: WatchHub, spec: WatchSpec, sink: WatchSink, options: HubOptions) {
    this.#hub = hub;
    this.spec = spec;
    this.#sink = sink;
    this.#options = options;
  }

  get isLive(): boolean {
    return this.#live && !this.#stopped;
  }

  get lastSentRevision(): number {
    return this.#sent;
  }

  /** Revisions the watcher is behind the hub: 0 when it is live with nothing held back. */
  get lagRevisions(): number {
    if (this.#live && this.#idle) return 0;
    return Math.max(0, this.#hub.revision - this.#sent);
  }

  begin(from: number, snapshot: WatchEventMessage[]): void {
    this.#sent = from;
    // Only the snapshot's last message is a resume point; the ones before it say revision 0.
    const batches = splitEvents(snapshot, this.#options.maxMessageBytes, () => false).map((events, i, all) => ({ events, revision: i === all.length - 1 ? from : 0 }));
    this.#snapshotEnd = batches.at(-1);
    for (const batch of batches) this.#enqueue(batch);
    // A watch from now says at once where it begins: a client whose stream breaks before the first change resumes from there.
    if (this.spec.start === 'now') this.#enqueue({ events: [], revision: from });
    this.#interval = this.spec.progressIntervalMs || this.#options.progressIntervalMs;
    this.#hub.tickEvery(this.#interval, this);
    void this.#catchUp(from);
  }

  /** Stops the watch, ending the transport with the error (or cleanly). */
  stop(error?: RelgateError): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#hub.stopTicking(this.#interval, this);
    this.#hub.remove(this);
    this.#queue.length = 0;
    this.#sink.end(error);
    for (const resolve of this.#idleWaiters.splice(0)) resolve();
  }

  /** Live delivery of one commit's events; a watcher whose transport stays full is cut off. */
  deliver(events: WatchEventMessage[], revision: number): void {
    // Only events held back by a full transport count: a big commit to a reader that keeps up is fine.
    if (this.#waitingDrain) {
      if (this.#queuedEvents + events.length > this.#options.maxBufferedEvents) return this.#cutOff(`${this.#options.maxBufferedEvents} events`);
      if (this.#queuedBytes + bytesOf(events) > this.#options.maxBufferedBytes) return this.#cutOff(`${this.#options.maxBufferedBytes} bytes`);
    }
    if (events.length > 0) this.#enqueueEvents(events, this.#upTo(revision));
    if (this.#joined) this.#endForSnapshot();
  }

  /**
   * Called every progress interval. A watcher not yet live only takes changes once its snapshot or catch-up page is
   * sent, so one whose client stopped reading would hold them as long as the connection lasts: cut it off once it
   * holds more than the byte budget and took nothing for STALLED_CHECKS intervals in a row. A client that reads a
   * large snapshot slowly, a message at a time, takes one now and then and is not cut off: a snapshot it is cut off
   * from starts over, and would again.
   */
  cutOffIfStalled(): void {
    const moved = this.#written !== this.#writtenAtStallCheck;
    this.#writtenAtStallCheck = this.#written;
    const stalled = !this.#live && !moved && this.#waitingDrain && this.#queuedBytes > this.#options.maxBufferedBytes;
    this.#stalledChecks = stalled ? this.#stalledChecks + 1 : 0;
    if (this.#stalledChecks >= STALLED_CHECKS) this.#cutOff(`${this.#options.maxBufferedBytes} bytes`);
  }

  /** Ends a watcher that fell behind, telling its client where to resume: after the last revision sent, or from a new snapshot. */
  #cutOff(limit: string): void {
    this.#hub.slowWatcherCutOffs += 1;
    if (this.#snapshotEnd) {
      return this.stop(
        new RelgateError(Code.RESOURCE_EXHAUSTED, `watcher fell behind by more than ${limit} during its snapshot; start the watch again from a snapshot`, {
          reason: 'SLOW_WATCHER',
          metadata: { start_over: 'snapshot' },
        }),
      );
    }
    const last = String(this.#sent);
    this.stop(
      new RelgateError(Code.RESOURCE_EXHAUSTED, `watcher fell behind by more than ${limit}; resume after revision ${last}`, {
        reason: 'SLOW_WATCHER',
        metadata: { last_revision: last },
      }),
    );
  }

  /** Whether the unit joined another relation: the watch ends before that revision (a watch of every relation). */
  get joinedAnother(): boolean {
    return this.#joined !== undefined;
  }

  #joined: { relationId: string; revision: number } | undefined;

  /** The revision a batch may claim: everything up to it is delivered, and nothing from the unit's join on is. */
  #upTo(revision: number): number {
    return this.#joined ? Math.min(revision, this.#joined.revision - 1) : revision;
  }

  /** Ends the watch once what it holds is sent; later commits find it already ending. */
  #endForSnapshot(): void {
    const { relationId, revision } = this.#joined as { relationId: string; revision: number };
    this.#endAfterFlush ||= new RelgateError(
      Code.OUT_OF_RANGE,
      `unit ${this.spec.unit} joined relation ${relationId} at revision ${revision}; start the watch again from a snapshot, which has that relation's requests`,
      { reason: 'SNAPSHOT_REQUIRED', metadata: { relation_id: relationId, joined_revision: String(revision) } },
    );
    this.#flush();
  }

  /**
   * The events a change means for this watcher; also follows joins and
   * departures. Events of requests, responses and flags depend only on the
   * watcher's view (side, unit, filter): with `views`, watchers of one view share them.
   */
  translate(change: Change, views?: Map<string, WatchEventMessage[]>): WatchEventMessage[] {
    const joinedAt = this.relations.get(change.relation_id);
    const data = change.data;
    const revision = change.revision;
    const relationId = change.relation_id;
    if (this.#joined) return [];
    if (data.kind === 'unit-joined' && data.unit.unit === this.spec.unit && data.unit.side === this.spec.side && !this.spec.relationId && ofInterface(relationId, this.spec.interface)) {
      // The relation's requests are the unit's from here on, but no change will announce them: the watch ends just
      // before the join, and its client starts again from a snapshot, which has them.
      this.#joined = { relationId, revision };
      return [];
    }
    if (joinedAt === undefined || change.revision < joinedAt) return [];
    if (data.kind === 'request' || data.kind === 'response' || data.kind === 'flags') {
      if (!views) return this.#objectEvents(change);
      const view = `${this.spec.side}\n${this.spec.unit}\n${this.spec.filter}`;
      let events = views.get(view);
      if (!events) views.set(view, (events = this.#objectEvents(change)));
      return events;
    }
    switch (data.kind) {
      case 'unit-joined':
        return [{ type: 'EVENT_TYPE_UNIT_JOINED', revision, relation_id: relationId, object: 'unit', unit: relationUnitMessage(data.unit) }];
      case 'unit-departed': {
        const event = { type: 'EVENT_TYPE_UNIT_DEPARTED', revision, relation_id: relationId, object: 'unit', unit: relationUnitMessage(data.unit) };
        if (data.unit.unit === this.spec.unit) this.#leave(relationId);
        return [event];
      }
      case 'relation-removed':
        this.#leave(relationId);
        return [{ type: 'EVENT_TYPE_RELATION_REMOVED', revision, relation_id: relationId }];
      default:
        return [];
    }
  }

  /** Events of a request, response or flags change as this watcher's view shows them. */
  #objectEvents(change: Change): WatchEventMessage[] {
    const data = change.data;
    const revision = change.revision;
    const relationId = change.relation_id;
    switch (data.kind) {
      case 'request': {
        const inBefore = inWatchedSet(this.spec, data.before);
        const inAfter = inWatchedSet(this.spec, data.after);
        if (!inBefore && !inAfter) return [];
        const type = !inBefore ? 'EVENT_TYPE_ADDED' : inAfter ? 'EVENT_TYPE_MODIFIED' : 'EVENT_TYPE_DELETED';
        const request = data.after === null ? data.before : data.after;
        const viewer: Viewer = { unit: this.spec.unit, side: this.spec.side };
        return [{ type, revision, relation_id: relationId, object: 'request', request: requestMessage(request, viewer) }];
      }
      case 'response':
        if (this.spec.side !== 'requester') return [];
        return [{ type: 'EVENT_TYPE_ADDED', revision, relation_id: relationId, object: 'response', response: responseMessage(data.response) }];
      case 'flags':
        if (data.unit !== this.spec.unit || data.side !== this.spec.side) return [];
        return [flagsEvent(this.spec.side, relationId, revision, data.flags)];
      default:
        return [];
    }
  }

  /** The unit no longer belongs to the relation: stop following it. */
  #leave(relationId: string): void {
    this.relations.delete(relationId);
    this.#hub.unfollow(this, relationId);
    if (this.spec.relationId) this.#endAfterFlush = true;
  }

  /** Once everything queued is sent, the watch ends: cleanly (true), or with the error. */
  #endAfterFlush: RelgateError | boolean = false;

  async #catchUp(from: number): Promise<void> {
    let cursor = from;
    try {
      while (!this.#stopped) {
        // Live only once the snapshot or the last page is with the transport: a live change must never find the
        // watcher holding them, or a slow reader would be cut off at a point it cannot resume from.
        await this.#writable();
        if (this.#stopped) return;
        if (cursor >= this.#hub.revision) {
          // Same tick as the check: nothing can commit in between.
          this.#live = true;
          this.#flush();
          return;
        }
        const { changes, upTo } = await this.#hub.changesSince(cursor);
        // Reading the log takes no I/O wait: without a turn, pages of a quiet relation would hold every other client.
        await otherClientsTurn();
        const events = changes.flatMap((change) => this.translate(change));
        cursor = upTo;
        if (events.length > 0) this.#enqueueEvents(events, this.#upTo(upTo));
        if (this.#joined) return this.#endForSnapshot();
      }
    } catch (error) {
      this.stop(asRelgateError(error));
    }
  }

  /** Resolves once the watcher is live and has handed all it holds to the transport, or has stopped. */
  async drained(): Promise<void> {
    while (!(this.#live && this.#idle) && !this.#stopped) await new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Resolves once everything queued has been handed to the transport. */
  #writable(): Promise<void> {
    if (this.#idle) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  get #idle(): boolean {
    return this.#stopped || (!this.#waitingDrain && this.#queue.length === 0);
  }

  #idleWaiters: (() => void)[] = [];

  /** Queues events (in revision order) as messages of whole revisions; the last one says upTo. */
  #enqueueEvents(events: WatchEventMessage[], upTo: number): void {
    const messages = events.length === 0 ? [events] : splitEvents(events, this.#options.maxMessageBytes, (a, b) => a.revision === b.revision);
    messages.forEach((part, i) => this.#enqueue({ events: part, revision: i === messages.length - 1 ? upTo : (part.at(-1) as WatchEventMessage).revision }));
  }

  #enqueue(batch: WatchBatchMessage): void {
    if (this.#stopped) return;
    const entry = { batch, bytes: 0 };
    this.#queue.push(entry);
    this.#queuedEvents += batch.events.length;
    this.#flush();
    // Only what the transport did not take is held back: measured then, once, and not on the way of a reader that keeps up.
    if (this.#queue.at(-1) === entry) {
      entry.bytes = bytesOf(batch.events);
      this.#queuedBytes += entry.bytes;
    }
  }

  #flush(): void {
    while (!this.#waitingDrain && !this.#stopped) {
      const entry = this.#queue.shift();
      if (!entry) break;
      const { batch } = entry;
      this.#queuedEvents -= batch.events.length;
      this.#queuedBytes -= entry.bytes;
      this.#written += 1;
      if (batch === this.#snapshotEnd) this.#snapshotEnd = undefined;
      this.#sent = batch.revision;
      this.#sentSinceTick = true;
      if (!this.#sink.write(batch)) {
        this.#waitingDrain = true;
        this.#sink.onDrain(() => {
          this.#waitingDrain = false;
          this.#flush();
        });
      }
    }
    if (this.#endAfterFlush && this.#queue.length === 0 && !this.#stopped) this.stop(this.#endAfterFlush === true ? undefined : this.#endAfterFlush);
    if (this.#idle) for (const resolve of this.#idleWaiters.splice(0)) resolve();
  }

  /** A progress tick: a bookmark if nothing was sent since the last one. */
  tick(): void {
    if (!this.isLive || this.#sentSinceTick || this.#queue.length > 0 || this.#waitingDrain) {
      this.#sentSinceTick = false;
      return;
    }
    const revision = this.#hub.revision;
    this.#enqueue({ events: [{ type: 'EVENT_TYPE_BOOKMARK', revision, relation_id: '' }], revision });
    this.#sentSinceTick = false;
  }
}
