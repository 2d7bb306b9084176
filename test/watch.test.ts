// Watch guarantees against a real server and SQLite file, each with its own
// test: revision order, no gap, no duplicate, whole revisions per message,
// progress events, the three start modes, relation events and flags in one
// stream, and resuming at and below the compaction boundary.
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Code } from '../src/errors.ts';
import type { Change } from '../src/store/store.ts';
import { splitEvents, type WatchEventMessage } from '../src/watch-hub.ts';
import { startHarness, struct, type Harness } from './helpers/harness.ts';
import { ANY, CERT, CSR, create, expectError, ids, relate, respond, type Relation } from './helpers/fixture.ts';
import { changeEvents, expectWellFormed, revisionsOf } from './helpers/watch-log.ts';
import { isType, requestEvent, snapshotComplete, watch, watchReady, type Event, type Msg, type Watch } from './helpers/streams.ts';
import { eventually } from './helpers/world.ts';

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ durability: 'normal' });
});
afterAll(() => h.close());

const NOW = { start: 'WATCH_START_NOW' };
const after = (revision: number | string) => ({ start: 'WATCH_START_AFTER_REVISION', after_revision: String(revision) });

/** Every change-log entry after the revision, read from the server's store. */
async function changeLog(afterRevision: number): Promise<Change[]> {
  const all: Change[] = [];
  for (let cursor = afterRevision; ; ) {
    const { changes, upTo } = await h.server.store.changesSince(cursor, 10_000);
    all.push(...changes);
    if (upTo === cursor) return all;
    cursor = upTo;
  }
}

/** Waits until the watch has delivered a batch at or beyond the revision. */
async function reached(w: Watch, revision: number, timeoutMs = 10_000): Promise<void> {
  if (w.batches.some((batch) => Number(batch.revision) >= revision)) return;
  await w.events.next((event) => Number(event.batchRevision) >= revision, timeoutMs);
}

/** Request ids of request events of the type, in stream order. */
const requestIds = (events: readonly Event[], type = 'ADDED') => events.filter(requestEvent(type)).map((event) => event.request.request_id as string);

/** The current revision, as the hub has published it. */
const currentRevision = () => h.server.hub.revision;

describe('stream guarantees', () => {
  test('events arrive in revision order, without gap, against the change log', async () => {
    const r = await relate(h);
    const from = currentRevision();
    const w = watch(r.res(), { relation_id: r.id, ...after(from) });
    // Concurrent writers: commits interleave and share group commits.
    const created = await Promise.all(Array.from({ length: 60 }, (_, i) => create(r, { fields: struct({ common_name: `o${i}.example` }) })));
    const answered = await Promise.all(created.slice(0, 30).map((request) => respond(r, request.request_id)));
    const last = Math.max(...answered.map((response) => Number(response.revision)));
    await reached(w, last);
    w.cancel();
    const expected = (await changeLog(from)).filter((change) => change.relation_id === r.id && change.data.kind === 'request' && change.revision <= last);
    const seen = w.events.items.filter((event) => event.object === 'request' && Number(event.revision) <= last);
    expect(seen.map((event) => Number(event.revision))).toEqual(expected.map((change) => change.revision));
    expect(revisionsOf(seen)).toEqual([...revisionsOf(seen)].sort((a, b) => a - b));
    expectWellFormed(w.batches);
  });

  test('no event is delivered twice within a stream, across snapshot and live changes', async () => {
    const r = await relate(h);
    const before = await Promise.all(Array.from({ length: 20 }, () => create(r)));
    const w = watch(r.req(), { relation_id: r.id });
    // Writes race the snapshot read: each object is ADDED once, by the snapshot or live.
    const during = await Promise.all(Array.from({ length: 20 }, () => create(r)));
    await w.events.next(snapshotComplete);
    const ids = [...before, ...during].map((request) => request.request_id as string);
    await eventually(async () => expect(new Set(requestIds(w.events.items))).toEqual(new Set(ids)));
    expect(requestIds(w.events.items)).toHaveLength(ids.length);
    w.cancel();
    expectWellFormed(w.batches);
  });

  test("a write touching many objects arrives in one message, live and from the change log", async () => {
    const r = await relate(h, { responders: 2 });
    const many = 520; // more than one message's worth of events in one revision
    const requests = await Promise.all(Array.from({ length: many }, () => create(r, { delivery: ANY })));
    for (const request of requests) await r.res(0).call('ClaimRequest', { request_id: request.request_id });
    const w = watch(r.res(1), { relation_id: r.id, ...NOW });
    await eventually(async () => expect(h.server.hub.isWatched(r.id, 'responder', r.responders[1])).toBe(true));
    const start = currentRevision();
    // Leaving releases every claim of the unit: one revision touching every request.
    const left = await h.registry.call('LeaveRelation', { relation_id: r.id, unit: r.responders[0] });
    const leaveRevision = Number(left.relation.revision);
    const created = await create(r);
    await reached(w, Number(created.revision));
    const ofLeave = w.batches.filter((batch) => batch.events.some((event: Event) => Number(event.revision) === leaveRevision));
    expect(ofLeave).toHaveLength(1);
    const leaveEvents = ofLeave[0]?.events as Event[];
    expect(leaveEvents.filter((event) => event.type === 'EVENT_TYPE_MODIFIED')).toHaveLength(many);
    expect(leaveEvents.map((event) => event.type)).toEqual(expect.arrayContaining(['EVENT_TYPE_UNIT_DEPARTED', 'EVENT_TYPE_FLAGS']));
    expectWellFormed(w.batches);
    // The same revision replayed from the change log is also one message.
    const replay = watch(r.res(1), { relation_id: r.id, ...after(start) });
    await reached(replay, Number(created.revision));
    replay.cancel();
    w.cancel();
    expect(replay.batches.filter((batch) => batch.events.some((event: Event) => Number(event.revision) === leaveRevision))).toHaveLength(1);
    expectWellFormed(replay.batches);
  });

  test("a request's events and the flags it changes arrive in one message", async () => {
    const r = await relate(h);
    const w = watch(r.res(), { relation_id: r.id, ...NOW });
    await eventually(async () => expect(h.server.hub.isWatched(r.id, 'responder', r.responders[0])).toBe(true));
    const created = await create(r);
    const answered = await respond(r, created.request_id);
    await reached(w, Number(answered.revision));
    w.cancel();
    const types = (revision: string) => w.batches.filter((batch) => batch.events.some((event: Event) => event.revision === revision)).map((batch) => batch.events.map((event: Event) => event.type));
    expect(types(created.revision)).toEqual([['EVENT_TYPE_ADDED', 'EVENT_TYPE_FLAGS']]);
    expect(types(answered.revision)).toEqual([['EVENT_TYPE_MODIFIED', 'EVENT_TYPE_FLAGS']]);
  });

  test('progress events carry the current revision at the configured interval while nothing matches', async () => {
    const r = await relate(h);
    const other = await relate(h);
    const interval = 100;
    const w = watch(r.res(), { relation_id: r.id, ...NOW, progress_interval_ms: interval });
    const first = await w.events.next(isType('BOOKMARK'));
    expect(Number(first.revision)).toBe(currentRevision());
    // Writes elsewhere move the revision; the next bookmarks say so.
    const elsewhere = await create(other);
    const moved = await w.events.next((event) => event.type === 'EVENT_TYPE_BOOKMARK' && event.revision === elsewhere.revision);
    expect(moved.batchRevision).toBe(elsewhere.revision);
    const arrivals: number[] = [];
    for (let i = 0; i < 4; i++) {
      await w.events.next(isType('BOOKMARK'));
      arrivals.push(performance.now());
    }
    w.cancel();
    const gaps = arrivals.slice(1).map((time, i) => time - (arrivals[i] as number));
    // Timers never fire early; a busy machine may fire them late.
    for (const gap of gaps) expect(gap).toBeGreaterThanOrEqual(interval * 0.8);
    expect(Math.min(...gaps)).toBeLessThan(interval * 10);
    expect(changeEvents(w.events.items)).toEqual([]);
  });
});

describe('the change log', () => {
  test('keeps a request once per change, without its body, and of the request before a change only its state', async () => {
    const r = await relate(h);
    const from = currentRevision();
    const answered = await create(r, { fields: struct({ common_name: 'logged.example' }) });
    await respond(r, answered.request_id);
    const withdrawn = await create(r, { fields: struct({ common_name: 'withdrawn.example' }) });
    await r.req().call('WithdrawRequest', { request_id: withdrawn.request_id });
    const logged = (await changeLog(from)).flatMap((change) => (change.data.kind === 'request' && change.relation_id === r.id ? [change.data] : []));
    expect(logged.map((change) => [change.before === null ? null : Object.keys(change.before).length > 7 ? 'request' : 'state', change.after?.state ?? null])).toEqual([
      [null, 'pending'],
      ['state', 'answered'],
      [null, 'pending'],
      ['request', null],
    ]);
    const [created, answer, , withdrawal] = logged;
    expect(created?.after).toMatchObject({ request_id: answered.request_id, fields: { common_name: 'logged.example' } });
    expect(answer?.before).toEqual({ request_id: answered.request_id, interface: 'tls-certificates', state: 'pending', delivery: { mode: 'any', unit: '', selector: '' }, expected_units: [], answered_units: [], claim: null });
    // A deletion keeps the whole request as it was, for the DELETED event.
    expect(withdrawal?.before).toMatchObject({ request_id: withdrawn.request_id, fields: { common_name: 'withdrawn.example' } });
    for (const change of logged) {
      expect(change.after ?? {}).not.toHaveProperty('body');
      expect(change.before ?? {}).not.toHaveProperty('body');
    }
  });
});

describe('start modes', () => {
  test('now: only changes after the start', async () => {
    const r = await relate(h);
    const old = await create(r);
    const w = watch(r.res(), { relation_id: r.id, ...NOW });
    await eventually(async () => expect(h.server.hub.isWatched(r.id, 'responder', r.responders[0])).toBe(true));
    const fresh = await create(r);
    const first = await w.events.next(requestEvent('ADDED'));
    w.cancel();
    expect(first.request.request_id).toBe(fresh.request_id);
    expect(w.events.items.some((event) => event.request?.request_id === old.request_id)).toBe(false);
  });

  test('snapshot: ADDED per current object, flags, the completion marker, then live changes', async () => {
    const r = await relate(h);
    const existing = await Promise.all([create(r), create(r), create(r)]);
    await respond(r, existing[0]?.request_id);
    const snapshotAt = currentRevision();
    const w = await watchReady(r.req(), { relation_id: r.id, start: 'WATCH_START_SNAPSHOT' });
    const snapshot = [...w.events.items];
    const marker = snapshot.at(-1) as Event;
    expect(marker).toMatchObject({ type: 'EVENT_TYPE_SNAPSHOT_COMPLETE', revision: String(snapshotAt), batchRevision: String(snapshotAt) });
    const added = snapshot.filter(isType('ADDED'));
    expect(new Set(requestIds(added))).toEqual(new Set(existing.map((request) => request.request_id)));
    expect(added.filter((event) => event.object === 'response').map((event) => event.response.request_id)).toEqual([existing[0]?.request_id]);
    expect(snapshot.filter(isType('FLAGS'))).toHaveLength(1);
    for (const event of snapshot) expect(event.revision).toBe(String(snapshotAt));
    const live = await create(r);
    const next = await w.events.next(requestEvent('ADDED'));
    w.cancel();
    expect([next.request.request_id, next.revision]).toEqual([live.request_id, live.revision]);
    expectWellFormed(w.batches);
  });

  test('after a revision: the change log, then live changes, without gap while writes race the catch-up', async () => {
    const r = await relate(h);
    const from = currentRevision();
    // Enough history that catch-up takes several change-log pages.
    for (let i = 0; i < 6; i++) await Promise.all(Array.from({ length: 100 }, () => create(r)));
    const w = watch(r.res(), { relation_id: r.id, ...after(from) });
    const racing = await Promise.all(Array.from({ length: 200 }, () => create(r)));
    const last = Math.max(...racing.map((request) => Number(request.revision)));
    await reached(w, last, 20_000);
    w.cancel();
    const expected = (await changeLog(from)).filter((change) => change.relation_id === r.id && change.revision <= last && change.data.kind === 'request');
    const seen = w.events.items.filter((event) => event.object === 'request' && Number(event.revision) <= last);
    expect(seen.map((event) => `${event.revision}/${event.request.request_id}`)).toEqual(
      expected.map((change) => `${change.revision}/${change.data.kind === 'request' ? change.data.after?.request_id : ''}`),
    );
    expect(seen).toHaveLength(800);
    expectWellFormed(w.batches);
  });

  test('a revision in the future is refused', async () => {
    const r = await relate(h);
    const w = watch(r.res(), { relation_id: r.id, ...after(currentRevision() + 1000) });
    const status = await w.status;
    expect(status?.code).toBe(Code.OUT_OF_RANGE);
    expect(status?.reason).toBe('FUTURE_REVISION');
  });
});

describe('relation events and flags', () => {
  test('joins, departures, relation removal and flags travel in one ordered stream', async () => {
    const r = await relate(h, { requesters: 2 });
    const w = watch(r.res(), { relation_id: r.id, ...NOW });
    await eventually(async () => expect(h.server.hub.isWatched(r.id, 'responder', r.responders[0])).toBe(true));
    const request = await create(r);
    const left = await h.registry.call('LeaveRelation', { relation_id: r.id, unit: r.requesters[1] });
    const joined = await h.registry.call('JoinRelation', { relation_id: r.id, unit: r.requesters[1] });
    const answered = await respond(r, request.request_id);
    const removed = await h.registry.call('DeleteRelation', { relation_id: r.id });
    // A watch of one relation ends cleanly once the relation is gone.
    expect(await w.status).toBeNull();
    const log = w.events.items.map((event) => [event.type.replace('EVENT_TYPE_', ''), Number(event.revision), event.unit?.unit ?? event.request?.request_id ?? '']);
    expect(log).toEqual([
      ['ADDED', Number(request.revision), request.request_id],
      ['FLAGS', Number(request.revision), ''],
      ['UNIT_DEPARTED', Number(left.relation.revision), r.requesters[1]],
      ['UNIT_JOINED', Number(joined.relation.revision), r.requesters[1]],
      ['MODIFIED', Number(answered.revision), request.request_id],
      ['FLAGS', Number(answered.revision), ''],
      ['RELATION_REMOVED', Number(removed.revision), ''],
    ]);
    const flags = w.events.items.filter(isType('FLAGS')).map((event) => event.responder_flags);
    expect(flags).toEqual([
      { available: true, has_requests: true, new_requests: true },
      { available: true, has_requests: true, new_requests: false },
    ]);
    expectWellFormed(w.batches);
  });

  test("a watch of every relation ends just before its unit joins another relation, so that a snapshot brings that relation's waiting requests; a watch of one relation goes on", async () => {
    const r = await relate(h);
    const { relation: second } = await h.registry.call('CreateRelation', {
      interface: 'tls-certificates',
      requester_application: r.requesters[0]?.split('/')[0],
      requester_endpoint: 'certificates',
      responder_application: r.responders[0]?.split('/')[0],
      responder_endpoint: 'more',
    });
    await h.registry.call('JoinRelation', { relation_id: second.id, unit: r.requesters[0] });
    const waiting = (await r.req().call('CreateRequest', { relation_id: second.id, fields: struct(CSR) })).request;
    const every = await watchReady(r.res(), { relation_id: '' });
    const one = await watchReady(r.res(), { relation_id: r.id });
    const inFirst = await create(r);
    await every.events.next(requestEvent('ADDED', inFirst.request_id));
    const { relation: joinedRelation } = await h.registry.call('JoinRelation', { relation_id: second.id, unit: r.responders[0] });
    const joined = joinedRelation.revision as string;
    const ended = await every.status;
    expect([ended?.code, ended?.reason, ended?.metadata]).toEqual([Code.OUT_OF_RANGE, 'SNAPSHOT_REQUIRED', { relation_id: second.id, joined_revision: String(joined) }]);
    const last = Math.max(...every.batches.map((batch) => Number(batch.revision)));
    expect(last).toBeLessThan(Number(joined));
    expect(every.events.items.some((event) => event.relation_id === second.id)).toBe(false);
    expectWellFormed(every.batches);
    // Resumed from where it ended, it ends the same way; from a snapshot it has both relations.
    expect((await watch(r.res(), { relation_id: '', ...after(last) }).status)?.reason).toBe('SNAPSHOT_REQUIRED');
    const again = await watchReady(r.res(), { relation_id: '' });
    expect(requestIds(again.events.items).sort()).toEqual([waiting.request_id, inFirst.request_id].sort());
    again.cancel();
    const inFirstAgain = await create(r);
    await one.events.next(requestEvent('ADDED', inFirstAgain.request_id));
    expect(one.events.items.some((event) => event.relation_id === second.id)).toBe(false);
    one.cancel();
  });

  test('a watch of every relation resumed from before a relation was removed replays what happened in it, then the removal', async () => {
    const r = await relate(h);
    const live = await watchReady(r.res(), { relation_id: '' });
    const from = h.server.hub.revision;
    const request = await create(r);
    await h.registry.call('DeleteRelation', { relation_id: r.id });
    await live.events.next(isType('RELATION_REMOVED'));
    live.cancel();
    const resumed = watch(r.res(), { relation_id: '', ...after(from) });
    await resumed.events.next(isType('RELATION_REMOVED'));
    resumed.cancel();
    const seen = (w: Watch) => w.events.items.filter((event) => Number(event.revision) > from && event.relation_id === r.id).map((event) => [event.type, event.request?.request_id, event.revision]);
    expect(seen(resumed)).toEqual(seen(live));
    expect(seen(resumed).map(([type, id]) => [type, id])).toEqual([
      ['EVENT_TYPE_ADDED', request.request_id],
      ['EVENT_TYPE_FLAGS', undefined],
      ['EVENT_TYPE_RELATION_REMOVED', undefined],
    ]);
  });

  test.each(['LeaveRelation', 'DeleteRelation'])(
    'a watch of one relation resumed from before %s replays what its unit missed until then, and ends as the live one did',
    async (method) => {
      const r = await relate(h);
      const watcher = { relation_id: r.id };
      const live = await watchReady(r.req(), watcher);
      const from = currentRevision();
      const request = await create(r);
      await respond(r, request.request_id);
      await h.registry.call(method, method === 'LeaveRelation' ? { relation_id: r.id, unit: r.requesters[0] } : { relation_id: r.id });
      expect(await live.status).toBeNull();
      const resumed = watch(r.req(), { ...watcher, ...after(from) });
      expect(await resumed.status).toBeNull();
      const seen = (w: Watch) => w.events.items.filter((event) => Number(event.revision) > from).map((event) => [event.type, event.object, event.revision]);
      expect(seen(resumed)).toEqual(seen(live));
      expect(seen(resumed).map(([type]) => type)).toEqual(expect.arrayContaining(['EVENT_TYPE_ADDED', 'EVENT_TYPE_MODIFIED', method === 'LeaveRelation' ? 'EVENT_TYPE_UNIT_DEPARTED' : 'EVENT_TYPE_RELATION_REMOVED']));
      // From after the departure there is nothing of the relation left to replay: it is the unit's no longer.
      const late = await watch(r.req(), { ...watcher, ...after(currentRevision()) }).status;
      expect(late?.code).toBe(method === 'LeaveRelation' ? Code.FAILED_PRECONDITION : Code.NOT_FOUND);
    },
  );

  test('a watch of one relation resumed while its unit leaves replays up to the departure, however the two interleave', async () => {
    for (let round = 0; round < 10; round++) {
      const r = await relate(h);
      const from = currentRevision();
      const request = await create(r);
      const leaving = h.registry.call('LeaveRelation', { relation_id: r.id, unit: r.requesters[0] });
      const resumed = watch(r.req(), { relation_id: r.id, ...after(from) });
      await leaving;
      expect(await resumed.status, `round ${round}`).toBeNull();
      expect(resumed.events.items.filter((event) => event.request?.request_id === request.request_id).map((event) => event.type)).toEqual(['EVENT_TYPE_ADDED']);
      expect(resumed.events.items.at(-1)?.type).toBe('EVENT_TYPE_UNIT_DEPARTED');
    }
  });

  test('new-only watches see a request leave when it is answered; all-request watches see it change', async () => {
    const r = await relate(h);
    const all = watch(r.res(), { relation_id: r.id, ...NOW, filter: 'REQUEST_FILTER_ALL' });
    const fresh = watch(r.res(), { relation_id: r.id, ...NOW, filter: 'REQUEST_FILTER_NEW' });
    await eventually(async () => expect(h.server.hub.watcherCount).toBeGreaterThanOrEqual(2));
    await eventually(async () => expect(h.server.hub.isWatched(r.id, 'responder', r.responders[0])).toBe(true));
    const request = await create(r);
    await r.res().call('Respond', { request_id: request.request_id, fields: struct(CERT) });
    const again = await create(r);
    for (const w of [all, fresh]) await w.events.next(requestEvent('ADDED', again.request_id));
    all.cancel();
    fresh.cancel();
    const kinds = (w: Watch) => w.events.items.filter((event) => event.object === 'request').map((event) => [event.type.replace('EVENT_TYPE_', ''), event.request.request_id]);
    expect(kinds(all)).toEqual([
      ['ADDED', request.request_id],
      ['MODIFIED', request.request_id],
      ['ADDED', again.request_id],
    ]);
    expect(kinds(fresh)).toEqual([
      ['ADDED', request.request_id],
      ['DELETED', request.request_id],
      ['ADDED', again.request_id],
    ]);
  });
});

describe('one interface of the unit', () => {
  /** A relation of the interface between the applications of `r`, joined by its first requester and responder. */
  async function relateAlso(r: Relation, iface: string, endpoint: string, join = true): Promise<string> {
    const application = (unit: string | undefined) => unit?.split('/')[0];
    const { relation } = await h.registry.call('CreateRelation', {
      interface: iface,
      requester_application: application(r.requesters[0]),
      requester_endpoint: endpoint,
      responder_application: application(r.responders[0]),
      responder_endpoint: endpoint,
    });
    if (join) for (const unit of [r.requesters[0], r.responders[0]]) await h.registry.call('JoinRelation', { relation_id: relation.id, unit });
    return relation.id as string;
  }
  const HTTP = { service_name: 'shop' };

  test("lists and flags cover the unit's relations of the interface; fields of that interface match across them; a relation of another is refused", async () => {
    const r = await relate(h);
    const web = await relateAlso(r, 'http', 'website');
    const tls = await create(r);
    const { request: http } = await r.req().call('CreateRequest', { relation_id: web, fields: struct(HTTP) });
    expect(ids((await r.res().call('ListIncomingRequests', { interface: 'http' })).requests)).toEqual([http.request_id]);
    expect(ids((await r.res().call('ListIncomingRequests', { interface: 'tls-certificates' })).requests)).toEqual([tls.request_id]);
    expect(ids((await r.req().call('ListRequests', { interface: 'http', match_fields: struct(HTTP) })).requests)).toEqual([http.request_id]);
    expect((await r.req().call('ResponseByField', { interface: 'http', match_fields: struct(HTTP) })).request.request_id).toBe(http.request_id);
    // Without the interface, the fields must be of every relation's interface.
    expectError(await r.req().fail('ListRequests', { match_fields: struct(HTTP) }), Code.INVALID_ARGUMENT, 'INVALID_ARGUMENT');
    await respond(r, tls.request_id);
    const flags = (iface: string) => r.res().call('GetResponderFlags', { interface: iface }).then((reply) => reply.flags.new_requests);
    expect([await flags('http'), await flags('tls-certificates'), await flags('')]).toEqual([true, false, true]);
    const wrong = await r.req().fail('ListRequests', { relation_id: r.id, interface: 'http' });
    expect([wrong.code, wrong.fieldViolations]).toEqual([Code.INVALID_ARGUMENT, [{ field: 'interface', description: `relation ${r.id} is of interface tls-certificates, not http` }]]);
    expect((await watch(r.res(), { relation_id: r.id, interface: 'http' }).status)?.fieldViolations.map((violation) => violation.field)).toEqual(['interface']);
  });

  test('a watch of a relation id that is not "<interface>:<number>" ends INVALID_ARGUMENT naming relation_id, also when it resumes', async () => {
    const r = await relate(h);
    for (const options of [{ relation_id: 'tls-certificates:' }, { relation_id: 'nope', start: 'WATCH_START_AFTER_REVISION', after_revision: '1' }]) {
      const status = await watch(r.res(), options).status;
      expect([status?.code, status?.fieldViolations.map((violation) => violation.field)]).toEqual([Code.INVALID_ARGUMENT, ['relation_id']]);
    }
  });

  test("a watch of the interface's relations sees only theirs, ends only at joins of that interface, and resumes without the others", async () => {
    const r = await relate(h);
    const web = await relateAlso(r, 'http', 'website');
    const from = currentRevision();
    const http = await watchReady(r.res(), { interface: 'http' });
    const tls = await create(r);
    const { request: first } = await r.req().call('CreateRequest', { relation_id: web, fields: struct(HTTP) });
    await http.events.next(requestEvent('ADDED', first.request_id));
    // Joining a relation of another interface does not end it; leaving one is none of its business.
    const other = await relateAlso(r, 'tls-certificates', 'more', false);
    await h.registry.call('JoinRelation', { relation_id: other, unit: r.requesters[0] });
    await h.registry.call('JoinRelation', { relation_id: other, unit: r.responders[0] });
    await h.registry.call('LeaveRelation', { relation_id: r.id, unit: r.responders[0] });
    const { request: second } = await r.req().call('CreateRequest', { relation_id: web, fields: struct(HTTP) });
    await http.events.next(requestEvent('ADDED', second.request_id));
    expect(http.events.items.filter((event) => event.relation_id !== '' && event.relation_id !== web)).toEqual([]);
    expect(requestIds(http.events.items).includes(tls.request_id)).toBe(false);
    // Resumed from before the departure from the other interface's relation, it does not replay that relation.
    const resumed = watch(r.res(), { interface: 'http', ...after(from) });
    await resumed.events.next(requestEvent('ADDED', second.request_id));
    expect(resumed.events.items.filter((event) => event.relation_id !== '' && event.relation_id !== web)).toEqual([]);
    resumed.cancel();
    // A join of its own interface ends it, as it ends a watch of every interface.
    const more = await relateAlso(r, 'http', 'api', false);
    await h.registry.call('JoinRelation', { relation_id: more, unit: r.responders[0] });
    expect((await http.status)?.reason).toBe('SNAPSHOT_REQUIRED');
  });
});

describe('history compaction', () => {
  let small: Harness;
  let r: Relation;
  beforeAll(async () => {
    small = await startHarness({ durability: 'normal', historyRevisions: 20 });
    r = await relate(small);
    for (let i = 0; i < 40; i++) await create(r);
    // The compactor runs on a timer; there is no event to await.
    await eventually(async () => expect(small.server.store.compactedRevision()).toBeGreaterThan(0), 15_000);
  }, 30_000);
  afterAll(() => small.close());

  test('resuming below the window fails with REVISION_COMPACTED naming the oldest retained revision', async () => {
    const compacted = small.server.store.compactedRevision();
    const w = watch(r.res(), { relation_id: r.id, ...after(compacted - 1) });
    const status = await w.status;
    expect(status).not.toBeNull();
    expectError(status!, Code.OUT_OF_RANGE, 'REVISION_COMPACTED');
    expect(status?.metadata).toMatchObject({ requested_revision: String(compacted - 1), oldest_retained_revision: String(compacted + 1) });
    expect(w.events.items).toEqual([]);
  });

  test('resuming exactly at the boundary replays every retained change', async () => {
    const compacted = small.server.store.compactedRevision();
    const current = small.server.hub.revision;
    const w = watch(r.res(), { relation_id: r.id, ...after(compacted) });
    await w.events.next((event) => Number(event.batchRevision) >= current);
    w.cancel();
    const revisions = revisionsOf(w.events.items.filter((event) => event.object === 'request'));
    expect(revisions[0]).toBe(compacted + 1);
    expect(revisions).toEqual(Array.from({ length: current - compacted }, (_, i) => compacted + 1 + i));
  });
});

describe('a snapshot larger than the transport holds', () => {
  test('a reader that stalls during it is not cut off: it gets all of it, then the changes made meanwhile', async () => {
    const small = await startHarness({ durability: 'normal', watchBuffer: 100 });
    try {
      const r = await relate(small);
      const creator = await r.session(r.requesters[0] as string);
      // 40 messages of 500 events: more than the paused client buffers (16 messages) and HTTP/2 lets through.
      const count = 20_000;
      await Promise.all(Array.from({ length: count }, (_, i) => creator.send({ create: { relation_id: r.id, fields: struct({ common_name: `s${i}.example` }) } })));
      creator.end();
      const w = watch(r.res(), { relation_id: r.id, start: 'WATCH_START_SNAPSHOT' });
      // The reader stalls: the snapshot stays with the server, far more events than the 100 a live watcher may hold back.
      w.call.pause();
      const meanwhile = [];
      for (let i = 0; i < 20; i++) meanwhile.push(await create(r));
      w.call.resume();
      await w.events.next(requestEvent('ADDED', (meanwhile.at(-1) as Msg).request_id), 20_000);
      w.cancel();
      const added = w.events.items.filter(isType('ADDED')).map((event) => event.request.request_id);
      expect(added.length).toBe(count + meanwhile.length);
      expect(added.slice(count)).toEqual(meanwhile.map((request) => request.request_id));
      expect(w.events.items.findIndex(isType('SNAPSHOT_COMPLETE'))).toBeLessThan(w.events.items.findIndex(requestEvent('ADDED', (meanwhile[0] as Msg).request_id)));
      expectWellFormed(w.batches);
    } finally {
      await small.close();
    }
  }, 60_000);
});

describe('message size', () => {
  test('events are split into messages of at most 500 events and a quarter of the largest message, never inside a group, in order', () => {
    const event = (revision: number, text: number): WatchEventMessage =>
      ({ type: 'EVENT_TYPE_ADDED', revision, relation_id: 'r', request: { fields: { fields: { blob: { string_value: 'x'.repeat(text) } } } } }) as WatchEventMessage;
    const runs = fc.array(fc.record({ events: fc.integer({ min: 1, max: 40 }), text: fc.integer({ min: 0, max: 3_000 }) }), { maxLength: 40 });
    fc.assert(
      fc.property(runs, fc.boolean(), fc.integer({ min: 8_000, max: 400_000 }), (groups, byRevision, maxMessageBytes) => {
        const events = groups.flatMap((group, revision) => Array.from({ length: group.events }, () => event(revision + 1, group.text)));
        const together = byRevision ? (a: WatchEventMessage, b: WatchEventMessage) => a.revision === b.revision : () => false;
        const messages = splitEvents(events, maxMessageBytes, together);
        expect(messages.flat()).toEqual(events);
        expect(messages.every((message) => message.length > 0) || events.length === 0).toBe(true);
        for (const [i, message] of messages.entries()) {
          const next = messages[i + 1]?.[0];
          if (next) expect(together(message.at(-1) as WatchEventMessage, next)).toBe(false);
          // Over a bound only as one whole group (a single event is one).
          const text = message.reduce((sum, e) => sum + ((e as unknown as { request: { fields: { fields: { blob: { string_value: string } } } } }).request.fields.fields.blob.string_value).length, 0);
          if (message.length > 500 || text > maxMessageBytes / 4) expect(message.length === 1 || message.every((e) => together(message[0] as WatchEventMessage, e))).toBe(true);
        }
      }),
      { numRuns: 300 },
    );
  });

  test('requests too large to share one message reach a snapshot watch and a session in messages of their own', async () => {
    const r = await relate(h);
    const big = 'a'.repeat(3_500_000);
    const created = [];
    for (let i = 0; i < 5; i++) created.push((await r.req().call('CreateRequest', { relation_id: r.id, fields: struct({ common_name: `n${i}.example`, sans: [big] }) })).request.request_id);
    const w = await watchReady(r.res(), { relation_id: r.id });
    w.cancel();
    expect(w.events.items.filter(isType('ADDED')).map((event) => event.request.request_id)).toEqual(created);
    expect(w.batches.filter((batch) => batch.events.length > 0).length).toBeGreaterThanOrEqual(5);
    // Opening waits for the snapshot to complete.
    const session = await r.session(r.responders[0] as string, { incoming_requests: { relation_id: r.id } });
    session.end();
    expect(await session.status).toBeNull();
    expect(session.incoming.items.filter(isType('ADDED')).map((event) => event.request.request_id)).toEqual(created);
  }, 60_000);
});


describe('a watcher that does not read, against the byte budget', () => {
  const BUDGET = 1024 * 1024;
  let b: Harness;
  beforeAll(async () => {
    // Messages of at most a quarter MiB: each large request goes alone, so a snapshot of them is many messages.
    b = await startHarness({ durability: 'normal', watchBufferBytes: BUDGET, maxSendBytes: BUDGET, progressIntervalMs: 100 });
  });
  afterAll(() => b.close());

  const large = (i: number) => ({ fields: struct({ common_name: `large${i}.example`, sans: ['x'.repeat(100_000)] }) });

  test('is cut off with RESOURCE_EXHAUSTED once what it holds back passes the byte budget, long before the event limit, and resumes without loss', async () => {
    const r = await relate(b);
    const w = watch(r.res(), { relation_id: r.id, ...NOW });
    await new Promise((resolve) => w.call.once('data', resolve));
    w.call.pause();
    const cutOffs = b.server.hub.slowWatcherCutOffs;
    const created: string[] = [];
    while (b.server.hub.slowWatcherCutOffs === cutOffs && created.length < 500) created.push((await create(r, large(created.length))).request_id);
    // One event per request: far below the 10,000 events a watcher may hold back.
    expect(created.length).toBeLessThan(100);
    for (let i = 0; i < 5; i++) created.push((await create(r, large(created.length))).request_id);
    w.call.resume();
    const status = await w.status;
    expectError(status!, Code.RESOURCE_EXHAUSTED, 'SLOW_WATCHER');
    expect(status?.message).toContain(`${BUDGET} bytes`);
    const last = Number(status?.metadata.last_revision);
    expect(last).toBe(Number(w.batches.at(-1)?.revision));
    const resumed = watch(r.res(), { relation_id: r.id, ...after(last) });
    await resumed.events.next(requestEvent('ADDED', created.at(-1)), 20_000);
    resumed.cancel();
    expect([...requestIds(w.events.items), ...requestIds(resumed.events.items)]).toEqual(created);
  }, 60_000);

  test('one that stops reading during a snapshot larger than the budget is cut off and told to start over, which gets all of it', async () => {
    const r = await relate(b);
    const created: string[] = [];
    for (let i = 0; i < 80; i++) created.push((await create(r, large(i))).request_id);
    const cutOffs = b.server.hub.slowWatcherCutOffs;
    const w = watch(r.res(), { relation_id: r.id, start: 'WATCH_START_SNAPSHOT' });
    w.call.pause();
    await eventually(async () => expect(b.server.hub.slowWatcherCutOffs).toBe(cutOffs + 1), 10_000);
    w.call.resume();
    const status = await w.status;
    expectError(status!, Code.RESOURCE_EXHAUSTED, 'SLOW_WATCHER');
    // No revision to resume from: the part of the snapshot it got is no resume point.
    expect(status?.metadata).toEqual({ start_over: 'snapshot' });
    expect(w.events.items.some(snapshotComplete)).toBe(false);
    expect(w.batches.every((batch) => batch.revision === '0')).toBe(true);
    const again = await watchReady(r.res(), { relation_id: r.id });
    again.cancel();
    expect(requestIds(again.events.items)).toEqual(created);
  }, 60_000);
});

describe('a watcher that reads its snapshot slowly', () => {
  test('a message now and then, is not cut off, however much more than the budget the snapshot holds', async () => {
    const b = await startHarness({ durability: 'normal', watchBufferBytes: 1024 * 1024, maxSendBytes: 1024 * 1024, progressIntervalMs: 100 });
    try {
      const r = await relate(b);
      const created: string[] = [];
      // More messages than the client's and the connection's buffers take in while it does not read.
      for (let i = 0; i < 80; i++) created.push((await create(r, { fields: struct({ common_name: `slow${i}.example`, sans: ['x'.repeat(100_000)] }) })).request_id);
      const cutOffs = b.server.hub.slowWatcherCutOffs;
      const w = watch(r.res(), { relation_id: r.id, start: 'WATCH_START_SNAPSHOT' });
      w.call.pause();
      // One message, then one and a half progress intervals without reading: a stall check or two in a row, not six.
      while (!w.events.items.some(snapshotComplete)) {
        const read = new Promise((resolve) => w.call.once('data', resolve));
        w.call.resume();
        await read;
        w.call.pause();
        await new Promise((resolve) => setTimeout(resolve, 150));
      }
      w.cancel();
      expect(b.server.hub.slowWatcherCutOffs).toBe(cutOffs);
      expect(requestIds(w.events.items)).toEqual(created);
    } finally {
      await b.close();
    }
  }, 60_000);
});

describe('a long catch-up', () => {
  test('lets other clients in between its pages, and still delivers every change once, in order', async () => {
    const c = await startHarness({ durability: 'normal' });
    try {
      const quiet = await relate(c);
      const busy = await relate(c);
      const from = c.server.hub.revision;
      const creator = await busy.session(busy.requesters[0] as string);
      await Promise.all(Array.from({ length: 30_000 }, (_, i) => creator.send({ create: { relation_id: busy.id, fields: struct({ common_name: `b${i}.example` }) } })));
      creator.end();
      const w = watch(quiet.res(), { relation_id: quiet.id, ...after(from) });
      const catchingUp = () => [...c.server.hub.watchers].find((watcher) => watcher.spec.relationId === quiet.id);
      await eventually(async () => expect(catchingUp()).toBeDefined());
      const during = await create(quiet);
      // The reply came while the watcher was still reading the change log: the catch-up let the call in.
      expect(catchingUp()?.isLive).toBe(false);
      await w.events.next(requestEvent('ADDED', during.request_id), 20_000);
      const later = await create(quiet);
      await w.events.next(requestEvent('ADDED', later.request_id));
      w.cancel();
      expect(requestIds(w.events.items)).toEqual([during.request_id, later.request_id]);
      expectWellFormed(w.batches);
    } finally {
      await c.close();
    }
  }, 120_000);
});
