// SessionService.Open against a real server: commands acknowledged once
// durable, per-command errors that leave the stream open, both sides' watch
// events, resuming by revision, the in-flight bound and a clean half-close.
import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Code, fromServiceError } from '../src/errors.ts';
import { MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES } from '../src/session.ts';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { startHarness, struct, v1, type Harness } from './helpers/harness.ts';
import { CERT, CSR, create, expectError, relate, respond, seconds, type Relation } from './helpers/fixture.ts';
import { SessionClient, ackError, isType, requestEvent, responseEvent, watch as watchFrom, watchReady, type Msg } from './helpers/streams.ts';

let h: Harness;
let db: Database.Database;
beforeAll(async () => {
  h = await startHarness();
  db = new Database(h.db, { readonly: true, fileMustExist: true });
});
afterAll(async () => {
  db.close();
  await h.close();
});

const WATCH_INCOMING = (r: Relation) => ({ incoming_requests: { relation_id: r.id } });
const WATCH_RESPONSES = (r: Relation) => ({ responses: { relation_id: r.id } });
const createCommand = (r: Relation, extra: Msg = {}) => ({ create: { relation_id: r.id, fields: struct(CSR), ...extra } });
const respondCommand = (requestId: string, fields = CERT) => ({ respond: { request_id: requestId, fields: struct(fields) } });

/** Reads the database file directly, through its own connection. */
function storedRequestRevision(requestId: string): number | undefined {
  const row = db.prepare<[string], { doc: string }>('SELECT doc FROM requests WHERE id = ?').get(requestId);
  return row ? (JSON.parse(row.doc) as { revision: number }).revision : undefined;
}

function storedResponseCount(requestId: string): number {
  return db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM responses WHERE request_id = ?').get(requestId)?.n ?? 0;
}

describe('acknowledgements', () => {
  test('each command is acknowledged once durable, with its revision and correlation id', async () => {
    const r = await relate(h);
    const requester = await r.session(r.requesters[0] as string);
    const responder = await r.session(r.responders[0] as string);
    const requestId = randomUUID();
    const ack = await requester.send(createCommand(r, { request_id: requestId }), 'my-create');
    expect([ack.correlation_id, ack.result, ack.error]).toEqual(['my-create', 'create', null]);
    const revision = Number(ack.create.request.revision);
    expect(revision).toBeGreaterThan(0);
    // Already in the database file when the acknowledgement arrives.
    expect(storedRequestRevision(requestId)).toBe(revision);
    const answered = await responder.send(respondCommand(requestId), 'my-answer');
    expect([answered.correlation_id, answered.result]).toEqual(['my-answer', 'respond']);
    expect(Number(answered.respond.response.revision)).toBeGreaterThan(revision);
    expect(storedResponseCount(requestId)).toBe(1);
    const withdrawn = await requester.ok({ withdraw: { request_id: requestId } });
    expect(Number(withdrawn.revision)).toBeGreaterThan(Number(answered.respond.response.revision));
    expect(storedRequestRevision(requestId)).toBeUndefined();
    requester.end();
    responder.end();
    await Promise.all([requester.closed, responder.closed]);
  });

  test('claim, release and create-or-update act as their unary RPCs', async () => {
    const r = await relate(h, { responders: 2 });
    const requester = await r.session(r.requesters[0] as string);
    const responder = await r.session(r.responders[0] as string);
    const first = await requester.ok({ create_or_update: { relation_id: r.id, match_fields: ['common_name'], fields: struct(CSR) } });
    expect([first.created, first.updated]).toEqual([true, false]);
    const requestId = first.request.request_id as string;
    const claimed = await responder.ok({ claim: { request_id: requestId, lease: seconds(60_000) } });
    expect(claimed.request.claim.unit).toBe(r.responders[0]);
    expectError(await r.res(1).fail('Respond', { request_id: requestId, fields: struct(CERT) }), Code.FAILED_PRECONDITION, 'REQUEST_CLAIMED');
    const released = await responder.ok({ release: { request_id: requestId } });
    expect(released.request.claim).toBeNull();
    const updated = await requester.ok({ create_or_update: { relation_id: r.id, match_fields: ['common_name'], fields: struct({ ...CSR, sans: ['b.example'] }) } });
    expect([updated.created, updated.updated, updated.request.request_id]).toEqual([false, true, requestId]);
    requester.end();
    responder.end();
    await Promise.all([requester.closed, responder.closed]);
  });

  test('replaying a request id gives what CreateRequest gives: the original, or ALREADY_EXISTS for a different body', async () => {
    const r = await relate(h);
    const session = await r.session(r.requesters[0] as string);
    const requestId = randomUUID();
    const unary = await create(r, { request_id: requestId });
    const replay = await session.ok(createCommand(r, { request_id: requestId }));
    expect(replay.replayed).toBe(true);
    expect(replay.request).toEqual(unary);
    const conflict = await session.send(createCommand(r, { request_id: requestId, fields: struct({ common_name: 'other.example' }) }));
    expectError(ackError(conflict), Code.ALREADY_EXISTS, 'REQUEST_ID_CONFLICT');
    const unaryConflict = await r.req().fail('CreateRequest', { relation_id: r.id, request_id: requestId, fields: struct({ common_name: 'other.example' }) });
    expect([unaryConflict.code, unaryConflict.reason, unaryConflict.message]).toEqual([Code.ALREADY_EXISTS, 'REQUEST_ID_CONFLICT', ackError(conflict).message]);
    session.end();
    await session.closed;
  });
  test('two responder sessions answering an any request at the same moment: exactly one wins, every time', async () => {
    const r = await relate(h, { responders: 2 });
    const sessions = await Promise.all(r.responders.map((unit) => r.session(unit)));
    for (let round = 0; round < 25; round++) {
      const request = await create(r, { fields: struct({ common_name: `race${round}.example` }) });
      const acks = await Promise.all(sessions.map((session) => session.send(respondCommand(request.request_id))));
      const won = acks.filter((ack) => ack.error === null);
      expect(won, `round ${round}`).toHaveLength(1);
      const lost = acks.find((ack) => ack.error !== null);
      expect(lost && ackError(lost).code).toBe(Code.FAILED_PRECONDITION);
      const { responses } = await r.req().call('ListResponses', { request_id: request.request_id });
      expect(responses).toEqual([won[0]?.respond.response]);
    }
    for (const session of sessions) session.end();
    await Promise.all(sessions.map((session) => session.closed));
  });
});

describe('bad commands', () => {
  test('each gets its own error status; the stream stays open and later commands succeed', async () => {
    const r = await relate(h);
    const session = await r.session(r.requesters[0] as string, WATCH_RESPONSES(r));
    const missing = await session.send(createCommand(r, { fields: struct({ sans: ['x'] }) }), 'bad-fields');
    const invalid = ackError(missing);
    expect([missing.correlation_id, invalid.code]).toEqual(['bad-fields', Code.INVALID_ARGUMENT]);
    expect(invalid.fieldViolations.map((v) => v.field)).toEqual(['fields.common_name']);
    expectError(ackError(await session.send({ withdraw: { request_id: randomUUID() } })), Code.NOT_FOUND, 'REQUEST_NOT_FOUND');
    expectError(ackError(await session.send(createCommand(r, { relation_id: 'tls-certificates:999999' }))), Code.NOT_FOUND, 'RELATION_NOT_FOUND');
    expectError(ackError(await session.send({ claim: { request_id: 'not-a-uuid' } })), Code.INVALID_ARGUMENT, 'INVALID_ARGUMENT');
    const selector = ackError(await session.send(createCommand(r, { delivery: { mode: 'DELIVERY_MODE_SELECTOR', selector: 'zone in a' } })));
    expect(selector.fieldViolations[0]?.description).toMatch(/at position 9$/);
    expectError(ackError(await session.send({}, 'empty')), Code.INVALID_ARGUMENT, 'INVALID_COMMAND');
    const lateAck = session.ackFor('');
    session.call.write({ start: { responses: { relation_id: r.id } } });
    const late = await lateAck;
    expectError(ackError(late), Code.FAILED_PRECONDITION, 'LATE_START');
    const good = await session.ok(createCommand(r));
    await session.responses.next(requestEvent('ADDED', good.request.request_id));
    session.end();
    expect(await session.status).toBeNull();
  });

  test('bad watch options in start end the session with INVALID_ARGUMENT', async () => {
    const r = await relate(h);
    const session = new SessionClient(h.server.address, r.responders[0] as string, { incoming_requests: { relation_id: r.id, filter: 'REQUEST_FILTER_ANSWERED' } });
    const status = await session.status;
    expect([status?.code, status?.fieldViolations.map((v) => v.field)]).toEqual([Code.INVALID_ARGUMENT, ['options.filter']]);
  });

  test('a watch that cannot start ends the session; commands sent behind the start are not run', async () => {
    const r = await relate(h);
    const session = new SessionClient(h.server.address, r.requesters[0] as string, { responses: { relation_id: 'tls-certificates:999999' } });
    const before = h.server.store.currentRevision();
    const unacknowledged = session.send(createCommand(r)).catch((error: Error) => error);
    expectError((await session.status) as NonNullable<Awaited<typeof session.status>>, Code.NOT_FOUND, 'RELATION_NOT_FOUND');
    expect(await unacknowledged).toBeInstanceOf(Error);
    expect(h.server.store.currentRevision()).toBe(before);
    expect((await r.req().call('ListRequests', { relation_id: r.id })).requests).toEqual([]);
  });

  test('a unit that is not registered: each command is refused; a session with watches ends', async () => {
    const r = await relate(h);
    const commandsOnly = await r.session('nobody/0');
    expectError(ackError(await commandsOnly.send(createCommand(r))), Code.UNAUTHENTICATED, 'UNKNOWN_UNIT');
    expectError(ackError(await commandsOnly.send(createCommand(r))), Code.UNAUTHENTICATED, 'UNKNOWN_UNIT');
    commandsOnly.end();
    expect(await commandsOnly.status).toBeNull();
    const watching = new SessionClient(h.server.address, 'nobody/0', WATCH_INCOMING(r));
    expectError((await watching.status) as NonNullable<Awaited<typeof watching.status>>, Code.UNAUTHENTICATED, 'UNKNOWN_UNIT');
  });
});

describe('events', () => {
  test('the responder session carries incoming requests, the requester session their responses', async () => {
    const r = await relate(h, { responders: 2 });
    const requester = await r.session(r.requesters[0] as string, WATCH_RESPONSES(r));
    const responders = await Promise.all([0, 1].map((i) => r.session(r.responders[i] as string, WATCH_INCOMING(r))));
    const { request } = await requester.ok(createCommand(r));
    for (const [i, session] of responders.entries()) {
      const added = await session.incoming.next(requestEvent('ADDED', request.request_id));
      expect([added.request.is_new, added.request.source_unit, added.revision]).toEqual([true, r.requesters[0], request.revision]);
      expect(added.request.source_ingress_address, r.responders[i]).toBe('10.1.0.1');
    }
    expect((await requester.responses.next(requestEvent('ADDED', request.request_id))).request.is_created).toBe(true);
    const answer = await responders[1]?.ok(respondCommand(request.request_id));
    const delivered = await requester.responses.next(responseEvent(request.request_id, r.responders[1]));
    expect(delivered.response).toEqual(answer?.response);
    expect(delivered.revision).toBe(answer?.response.revision);
    const done = await responders[0]?.incoming.next(requestEvent('MODIFIED', request.request_id));
    expect([done?.request.state, done?.request.is_new]).toEqual(['REQUEST_STATE_ANSWERED', false]);
    // The same events a server-streaming watch carries, in the same revision order.
    const watch = watchFrom(r.res(0), { relation_id: r.id, start: 'WATCH_START_AFTER_REVISION', after_revision: Number(request.revision) - 1 });
    await watch.events.next(requestEvent('MODIFIED', request.request_id));
    const strip = (events: Msg[]) => events.filter((e) => e.type !== 'EVENT_TYPE_BOOKMARK' && Number(e.revision) >= Number(request.revision)).map(({ batchRevision: _, ...event }) => event);
    expect(strip(responders[0]?.incoming.items ?? [])).toEqual(strip(watch.events.items));
    watch.cancel();
    for (const session of [requester, ...responders]) session.end();
    await Promise.all([requester, ...responders].map((session) => session.closed));
  });

  test('commands sent right behind start run after the snapshot: it shows the state before them', async () => {
    const r = await relate(h);
    const request = await create(r);
    const session = new SessionClient(h.server.address, r.responders[0] as string, WATCH_INCOMING(r));
    const ack = await session.send(respondCommand(request.request_id));
    expect(ack.error).toBeNull();
    const changes = (await session.incoming.take(2, (e) => e.object === 'request')).map((e) => [e.type, e.request.state]);
    expect(changes).toEqual([
      ['EVENT_TYPE_ADDED', 'REQUEST_STATE_PENDING'],
      ['EVENT_TYPE_MODIFIED', 'REQUEST_STATE_ANSWERED'],
    ]);
    session.end();
    await session.closed;
  });

  test('a session resumes from a revision after reconnecting, without loss or duplicate', async () => {
    const r = await relate(h);
    const first = await r.session(r.responders[0] as string, WATCH_INCOMING(r));
    const before = [await create(r), await create(r)];
    for (const request of before) await first.incoming.next(requestEvent('ADDED', request.request_id));
    const lastSeen = first.received.filter((m) => m.kind === 'events').at(-1)?.events.batch.revision as string;
    first.cancel();
    await first.closed;
    const missed = [await create(r), await create(r)];
    await respond(r, before[0]?.request_id as string);
    const second = await r.session(r.responders[0] as string, { incoming_requests: { relation_id: r.id, start: 'WATCH_START_AFTER_REVISION', after_revision: lastSeen } });
    const during = { request: await create(r) };
    await second.incoming.next(requestEvent('ADDED', during.request.request_id));
    const changes = second.incoming.items.filter((e) => e.object === 'request').map((e) => [e.type, e.request.request_id]);
    expect(changes).toEqual([
      ['EVENT_TYPE_ADDED', missed[0]?.request_id],
      ['EVENT_TYPE_ADDED', missed[1]?.request_id],
      ['EVENT_TYPE_MODIFIED', before[0]?.request_id],
      ['EVENT_TYPE_ADDED', during.request.request_id],
    ]);
    const revisions = second.incoming.items.filter((e) => e.type !== 'EVENT_TYPE_BOOKMARK').map((e) => Number(e.revision));
    expect(revisions.every((revision, i) => revision > Number(lastSeen) && revision >= (revisions[i - 1] ?? 0))).toBe(true);
    second.end();
    await second.closed;
  });
});

describe('flow control', () => {
  test(`more commands than the in-flight bound (${MAX_IN_FLIGHT}) at once: each is acknowledged exactly once`, async () => {
    const r = await relate(h);
    const session = await r.session(r.requesters[0] as string);
    const count = MAX_IN_FLIGHT + MAX_IN_FLIGHT / 2;
    const acks = await Promise.all(Array.from({ length: count }, (_, i) => session.send(createCommand(r, { fields: struct({ common_name: `n${i}.example` }) }), `burst${i}`)));
    expect(acks.every((ack) => ack.error === null)).toBe(true);
    expect(new Set(session.acks.map((ack) => ack.correlation_id)).size).toBe(count);
    expect(session.acks).toHaveLength(count);
    expect(new Set(acks.map((ack) => ack.create.request.request_id)).size).toBe(count);
    const { requests } = await r.req().call('ListRequests', { relation_id: r.id, page_size: 1000 });
    expect(requests).toHaveLength(1000);
    session.end();
    await session.closed;
  }, 60_000);

  test(`at most ${MAX_IN_FLIGHT} commands of a session run at once; the rest wait unread until one finishes`, async () => {
    const r = await relate(h);
    const session = await r.session(r.requesters[0] as string);
    const gate = gateWrites();
    const count = MAX_IN_FLIGHT + 200;
    let acks: Promise<unknown>[] = [];
    try {
      acks = Array.from({ length: count }, (_, i) => session.send(createCommand(r, { fields: struct({ common_name: `b${i}.example` }) })));
      expect(await settled(gate.started, 20_000)).toBe(MAX_IN_FLIGHT);
    } finally {
      gate.open();
    }
    await Promise.all(acks);
    expect(session.acks).toHaveLength(count);
    expect(session.acks.every((ack) => ack.error === null)).toBe(true);
    session.end();
    await session.closed;
  }, 60_000);

  test(`commands of a session running at once hold at most ${MAX_IN_FLIGHT_BYTES / 1024 / 1024} MiB as sent; the rest wait unread until some finish`, async () => {
    const r = await relate(h);
    const session = await r.session(r.requesters[0] as string);
    const gate = gateWrites();
    // Each command a little over 1 MiB: the bound is reached by the 64th, long before the count bound.
    const big = 'x'.repeat(1024 * 1024);
    const count = 100;
    let acks: Promise<unknown>[] = [];
    try {
      acks = Array.from({ length: count }, (_, i) => session.send(createCommand(r, { fields: struct({ common_name: `big${i}.example`, sans: [big] }) })));
      expect(await settled(gate.started, 20_000)).toBe(MAX_IN_FLIGHT_BYTES / (1024 * 1024));
    } finally {
      gate.open();
    }
    await Promise.all(acks);
    expect(session.acks.every((ack) => ack.error === null)).toBe(true);
    expect(session.acks).toHaveLength(count);
    session.end();
    await session.closed;
  }, 60_000);

  test('a client that stops reading stops the server taking its commands; reading again resumes them', async () => {
    const r = await relate(h);
    const session = await r.session(r.requesters[0] as string);
    session.call.pause();
    const count = 300;
    const before = h.server.store.currentRevision();
    // Each ack carries the request back (about 20 KB): far more than the transport buffers.
    const big = 'x'.repeat(20_000);
    const acks = Array.from({ length: count }, (_, i) => session.send(createCommand(r, { fields: struct({ common_name: `slow${i}.example`, sans: [big] }) }), `slow${i}`));
    // No event tells that the server stopped; wait until the store stops moving.
    const executed = (await settled(() => h.server.store.currentRevision(), 10_000)) - before;
    expect(executed).toBeGreaterThan(0);
    expect(executed).toBeLessThan(count);
    session.call.resume();
    expect((await Promise.all(acks)).every((ack) => ack.error === null)).toBe(true);
    expect(session.acks).toHaveLength(count);
    expect(h.server.store.currentRevision() - before).toBe(count);
    session.end();
    expect(await session.status).toBeNull();
  }, 60_000);
});

/** Holds every write at the store's door until open(), to see how many commands a session has started. */
function gateWrites(): { started: () => number; open: () => void } {
  const store = h.server.store;
  const write = store.write;
  let started = 0;
  let release = () => {};
  const gate = new Promise<void>((resolve) => (release = resolve));
  store.write = async function gated<T>(this: typeof store, fn: Parameters<typeof write<T>>[0]): Promise<T> {
    started += 1;
    await gate;
    return write.call(this, fn) as Promise<T>;
  };
  return {
    started: () => started,
    open: () => {
      store.write = write;
      release();
    },
  };
}

/** The value once it has not changed for 300 ms: for server state that no event announces. */
async function settled(read: () => number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let value = read();
  let since = Date.now();
  while (Date.now() - since < 300) {
    if (Date.now() > deadline) throw new Error(`still changing after ${timeoutMs} ms (at ${value})`);
    await new Promise((resolve) => setTimeout(resolve, 25));
    const now = read();
    if (now !== value) [value, since] = [now, Date.now()];
  }
  return value;
}

describe('ending', () => {
  test('a client half-close ends the session cleanly once its commands are acknowledged', async () => {
    const r = await relate(h);
    const responder = await r.session(r.responders[0] as string, WATCH_INCOMING(r));
    const requester = await r.session(r.requesters[0] as string);
    const watchers = h.server.hub.watcherCount;
    expect(h.server.hub.isWatched(r.id, 'responder')).toBe(true);
    // Half-close right behind a command: its ack still arrives, then OK.
    const pending = requester.send(createCommand(r));
    requester.end();
    expect((await pending).error).toBeNull();
    expect(await requester.status).toBeNull();
    // The server sees the responder leave: its watch stops and calls find no responder.
    responder.end();
    expect(await responder.status).toBeNull();
    expect(h.server.hub.watcherCount).toBe(watchers - 1);
    expect(h.server.hub.isWatched(r.id, 'responder')).toBe(false);
    const noResponders = await r.req().fail('Call', { relation_id: r.id, fields: struct(CSR) });
    expectError(noResponders, Code.UNAVAILABLE, 'NO_RESPONDERS');
  });

  test('a half-close right behind start still delivers the snapshot and leaves no watch behind', async () => {
    const r = await relate(h);
    const request = await create(r);
    const session = new SessionClient(h.server.address, r.responders[0] as string, WATCH_INCOMING(r));
    session.end();
    expect(await session.status).toBeNull();
    expect(session.incoming.items.map((e) => [e.type, e.request?.request_id])).toEqual([
      ['EVENT_TYPE_ADDED', request.request_id],
      ['EVENT_TYPE_FLAGS', undefined],
      ['EVENT_TYPE_SNAPSHOT_COMPLETE', undefined],
    ]);
    expect(h.server.hub.isWatched(r.id, 'responder')).toBe(false);
  });

  test('a half-close right behind start delivers a snapshot larger than the transport holds, all of it, before the OK', async () => {
    const r = await relate(h);
    const creator = await r.session(r.requesters[0] as string);
    // 40 messages of 500 events: more than grpc-js takes before write() returns false.
    const count = 20_000;
    const acks = await Promise.all(Array.from({ length: count }, (_, i) => creator.send({ create: { relation_id: r.id, fields: struct({ common_name: `s${i}.example` }) } })));
    expect(acks.filter((ack) => ack.error)).toEqual([]);
    creator.end();
    const session = new SessionClient(h.server.address, r.responders[0] as string, WATCH_INCOMING(r));
    session.end();
    expect(await session.status).toBeNull();
    const types = session.incoming.items.map((e) => e.type);
    expect([types.filter((type) => type === 'EVENT_TYPE_ADDED').length, types.at(-1)]).toEqual([count, 'EVENT_TYPE_SNAPSHOT_COMPLETE']);
  }, 60_000);

  test.each(['LeaveRelation', 'DeleteRelation'])(
    'a watch that ends (%s) ends its session only after every command read is carried out and acknowledged; the status says the rest were not',
    async (method) => {
      const a = await relate(h);
      const unit = a.requesters[0] as string;
      const [requesterApp, responderApp] = [unit.split('/')[0], (a.responders[0] as string).split('/')[0]];
      const { relation: b } = await h.registry.call('CreateRelation', {
        interface: 'tls-certificates',
        requester_application: requesterApp,
        requester_endpoint: 'other',
        responder_application: responderApp,
        responder_endpoint: 'other',
      });
      await h.registry.call('JoinRelation', { relation_id: b.id, unit });
      const session = await a.session(unit, WATCH_RESPONSES(a));
      const ids = Array.from({ length: 300 }, () => randomUUID());
      const acks = ids.map((id, i) => {
        if (i === 150) void h.registry.call(method, method === 'LeaveRelation' ? { relation_id: a.id, unit } : { relation_id: a.id });
        return session.send(createCommand({ id: b.id } as Relation, { request_id: id })).then((ack) => (ack.error ? 'refused' : 'done'), () => 'unacknowledged');
      });
      const outcomes = await Promise.all(acks);
      const status = await session.status;
      expect([status?.code, status?.reason, status?.metadata.watch, status?.metadata.unacknowledged_commands]).toEqual([
        Code.FAILED_PRECONDITION,
        'WATCH_ENDED',
        'responses',
        'not_carried_out',
      ]);
      // Stored exactly when acknowledged.
      const stored = new Set(db.prepare<[string], { id: string }>('SELECT id FROM requests WHERE relation_id = ?').all(b.id as string).map((row) => row.id));
      expect(ids.filter((id, i) => stored.has(id) !== (outcomes[i] === 'done'))).toEqual([]);
      expect(outcomes).not.toContain('refused');
    },
  );

  test('a cancelled session stops its watches', async () => {
    const r = await relate(h);
    const responder = await r.session(r.responders[0] as string, WATCH_INCOMING(r));
    expect(h.server.hub.isWatched(r.id, 'responder', r.responders[0])).toBe(true);
    responder.cancel();
    await responder.closed;
    // Cancellation reaches the server asynchronously; there is no event to await on this side.
    const deadline = Date.now() + 5_000;
    while (h.server.hub.isWatched(r.id, 'responder') && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(h.server.hub.isWatched(r.id, 'responder')).toBe(false);
  });
});

describe('admission', () => {
  test('sessions cancelled while their token is being checked give their stream slot back', async () => {
    const ADMIN = 'admin-token-for-admission';
    const CAP = 5;
    const secure = await startHarness({ auth: 'token', adminToken: ADMIN, maxStreamsPerUnit: CAP });
    try {
      secure.registry.metadata.set('authorization', `Bearer ${ADMIN}`);
      const relation = await relate(secure);
      const bearer = async (unit: string) => {
        const metadata = new grpc.Metadata();
        metadata.set('authorization', `Bearer ${(await secure.registry.call('RotateUnitToken', { name: unit })).token}`);
        return metadata;
      };
      const responder = await bearer(relation.responders[0] as string);
      const requester = relation.req();
      requester.metadata.remove('relgate-unit');
      requester.metadata.set('authorization', (await bearer(relation.requesters[0] as string)).get('authorization')[0] as string);
      const Client = v1.SessionService as unknown as new (address: string, credentials: grpc.ChannelCredentials) => grpc.Client & { Open(md: grpc.Metadata): grpc.ClientDuplexStream<Msg, Msg> };
      const client = new Client(secure.server.address, grpc.credentials.createInsecure());
      // Writes keep the store busy, so that checking a token (a store read) waits on them while the client cancels.
      let writing = true;
      const load = (async () => {
        while (writing) await Promise.all(Array.from({ length: 20 }, () => requester.call('CreateRequest', { relation_id: relation.id, fields: struct(CSR) })));
      })();
      for (let i = 0; i < 200; i++) {
        const call = client.Open(responder);
        call.on('error', () => undefined);
        await new Promise((resolve) => setTimeout(resolve, i % 4));
        call.cancel();
      }
      writing = false;
      await load;
      // After every token check above: reads are served in order.
      await requester.call('GetRequest', { request_id: randomUUID() }).catch(() => undefined);
      const sessions = Array.from({ length: CAP }, () => {
        const call = client.Open(responder);
        const acked = new Promise<Msg>((resolve, reject) => {
          call.on('data', (message: Msg) => message.ack && resolve(message.ack));
          call.on('error', reject);
        });
        call.write({ command: { correlation_id: 'probe', release: { request_id: randomUUID() } } });
        return { call, acked };
      });
      const acks = await Promise.all(sessions.map((session) => session.acked));
      expect(acks.map((ack) => ack.correlation_id)).toEqual(Array(CAP).fill('probe'));
      for (const session of sessions) session.call.cancel();
      client.close();
    } finally {
      await secure.close();
    }
  }, 60_000);
});

describe('shutdown', () => {
  test('ends a session without watches, and a call waiting for its answer, with UNAVAILABLE', async () => {
    const own = await startHarness({ durability: 'normal' });
    const r = await relate(own);
    const session = await r.session(r.requesters[0] as string);
    const created = await session.send(createCommand(r));
    expect(created.error).toBeNull();
    const incoming = await watchReady(r.res(), { relation_id: r.id });
    const waiting = r.req().call('Call', { relation_id: r.id, fields: struct(CSR), wait_for_responders: true }).then(() => null, (error: grpc.ServiceError) => fromServiceError(error));
    // The call's request is stored before the server stops.
    const callsRequest = await incoming.events.next((event) => event.type === 'EVENT_TYPE_ADDED' && event.request.request_id !== created.create.request.request_id);
    await own.close();
    const [ended, call] = await Promise.all([session.status, waiting]);
    expect([ended?.code, ended?.reason]).toEqual([Code.UNAVAILABLE, 'SHUTTING_DOWN']);
    expect([call?.code, call?.reason]).toEqual([Code.UNAVAILABLE, 'SHUTTING_DOWN']);
    // The call says which request it stored, so that a retry replays it instead of making another.
    expect(call?.metadata.request_id).toBe(callsRequest.request.request_id);
  });

  test('tells health watches NOT_SERVING, then ends them with UNAVAILABLE instead of holding the shutdown for its grace', async () => {
    const own = await startHarness({ durability: 'normal', shutdownGraceMs: 20_000 });
    const definition = protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String });
    const Health = (grpc.loadPackageDefinition(definition) as never as { grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } } }).grpc.health.v1.Health;
    const client = new Health(own.server.address, grpc.credentials.createInsecure());
    try {
      const watch = (client.Watch as (request: object) => grpc.ClientReadableStream<{ status: string }>).call(client, { service: '' });
      const statuses: string[] = [];
      const serving = new Promise<void>((resolve) => watch.on('data', (message: { status: string }) => void (statuses.push(message.status) === 1 && resolve())));
      const ended = new Promise<grpc.ServiceError>((resolve) => watch.on('error', resolve));
      await serving;
      const started = Date.now();
      await own.server.stop();
      expect(Date.now() - started).toBeLessThan(10_000);
      const error = fromServiceError(await ended);
      expect([statuses, error.code, error.reason]).toEqual([['SERVING', 'NOT_SERVING'], Code.UNAVAILABLE, 'SHUTTING_DOWN']);
    } finally {
      client.close();
      await own.close();
    }
  });

  test('acknowledges every session command it read before the session ends: a command is stored exactly when it was acknowledged', async () => {
    const own = await startHarness();
    const r = await relate(own);
    const session = await r.session(r.requesters[0] as string);
    const ids = Array.from({ length: 600 }, () => randomUUID());
    const outcomes = ids.map((id) => session.send(createCommand(r, { request_id: id })).then((ack) => (ack.error ? 'refused' : 'done'), () => 'unacknowledged'));
    try {
      await outcomes[99];
      const stopping = own.server.stop();
      const results = await Promise.all(outcomes);
      await stopping;
      const ended = await session.status;
      expect([ended?.code, ended?.reason, ended?.metadata.unacknowledged_commands]).toEqual([Code.UNAVAILABLE, 'SHUTTING_DOWN', 'not_carried_out']);
      const file = new Database(own.db, { readonly: true, fileMustExist: true });
      const stored = new Set(file.prepare<[], { id: string }>('SELECT id FROM requests').all().map((row) => row.id));
      file.close();
      expect(ids.filter((id, i) => stored.has(id) !== (results[i] === 'done'))).toEqual([]);
      expect(results).not.toContain('refused');
    } finally {
      await own.close();
    }
  });
});
