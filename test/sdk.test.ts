// The TypeScript SDK against a real gateway: both sides of a relation, the
// session path against the unary path, watches that survive a restart, a
// slow-consumer cut and a compacted history, errors, credentials, and the
// example interfaces run as separate processes.
import { spawn, type ChildProcess } from 'node:child_process';
import { getEventListeners } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, Code, hasCode, hasReason, isRelgateError, RelgateError, type Connection, type Watch, type WatchEvent } from '../src/client/index.ts';
import { Watch as SdkWatch, type OpenWatch, type WatchOptionsMessage, type WatchSink } from '../src/client/watch.ts';
import type { WatchBatch__Output } from '../gen/relgate/v1/WatchBatch.ts';
import { InterfaceRegistry } from '../src/interfaces.ts';
import { RegistryService } from '../src/registry-service.ts';
import { startServer, type RunningServer } from '../src/server.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import { eventually, makeWorld, type World } from './helpers/world.ts';
import { runProgram, spawnServe, type ServeProcess } from './helpers/grpcurl.ts';
import { Rpc, startHarness, v1, type Harness } from './helpers/harness.ts';
import { makeCertificates } from './helpers/tls.ts';
import * as grpc from '@grpc/grpc-js';

/** Reads a watch until an event passes test; returns every event read. */
async function readUntil<Req, Res>(watch: Watch<Req, Res>, test: (event: WatchEvent<Req, Res>) => boolean, timeoutMs = 10_000): Promise<WatchEvent<Req, Res>[]> {
  const seen: WatchEvent<Req, Res>[] = [];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const remaining = deadline - Date.now();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no matching watch event within ${timeoutMs} ms; saw ${JSON.stringify(seen.map((e) => [e.type, e.revision]))}`)), Math.max(0, remaining));
    });
    const result = await Promise.race([watch.next(), timeout]).finally(() => clearTimeout(timer));
    if (result.done) throw new Error('the watch ended');
    seen.push(result.value);
    if (test(result.value)) return seen;
  }
}

const isChange = (event: WatchEvent<unknown, unknown>) => event.type !== 'BOOKMARK' && event.type !== 'FLAGS';

/** Replaces what differs between two runs of the same scenario (ids, times, revisions, names). */
function normalize(value: unknown, names: Record<string, string>): unknown {
  if (Array.isArray(value)) return value.map((item) => normalize(item, names));
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value).map(([key, item]) => [key, /(_time|revision|request_id|relation_id|sequence)$/.test(key) && item ? `<${key}>` : normalize(item, names)]),
    );
  }
  if (typeof value === 'string') return Object.entries(names).reduce((text, [name, placeholder]) => text.replaceAll(name, placeholder), value);
  return value;
}

describe('SDK on one gateway', () => {
  let h: Harness;
  const connections: Connection[] = [];
  const as = (unit: string) => {
    const connection = connect(h.server.address, { unit });
    connections.push(connection);
    return connection;
  };

  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    for (const connection of connections) connection.close();
    await h.close();
  });

  /** Both sides of a relation through the SDK; what each method returned, in order. */
  async function scenario(world: World, useSession: boolean) {
    const web = as(world.requesters[0] as string);
    const ca = as(world.responders[0] as string);
    const webSession = useSession ? web.openSession() : undefined;
    const caSession = useSession ? ca.openSession() : undefined;
    const requester = web.requester('tls-certificates', { relation: world.relationId });
    const responder = ca.responder('tls-certificates', { relation: world.relationId });
    const out: Record<string, unknown> = {};
    const first = await requester.create({ common_name: 'a.example', sans: ['a.example', '10.0.0.1'] });
    await requester.create({ common_name: 'b.example' });
    out.createOrUpdate = await requester.createOrUpdate(['common_name'], { common_name: 'b.example', sans: ['b2.example'] });
    out.createOrUpdateNew = await requester.createOrUpdate(['common_name'], { common_name: 'c.example' });
    out.requesterFlagsBefore = await requester.flags();
    out.responderFlagsBefore = await responder.flags();
    out.newRequests = await responder.newRequests();
    out.claim = await responder.claim(first, { leaseMs: 10_000 });
    out.respond = await responder.respond(first, { key: 'KEY', cert: 'CERT', ca: 'CA' });
    const second = await requester.find({ common_name: 'b.example' });
    out.fail = await responder.fail(second as { request_id: string }, 7, 'no such name', { ca: 'CA' });
    out.withdraw = typeof (await requester.withdraw((await requester.find({ common_name: 'c.example' }))?.request_id ?? ''));
    out.find = await requester.find({ common_name: 'a.example' });
    out.findMissing = await requester.find({ common_name: 'nobody.example' });
    out.findAllAnswered = await requester.findAll({}, 'answered');
    out.get = await requester.get(first.request_id);
    out.getAll = await requester.getAll([first.request_id, second?.request_id ?? '']);
    out.requests = await requester.requests();
    out.responses = await requester.responses();
    out.responsesOfFirst = await requester.responses(first.request_id);
    out.responseByField = await requester.responseByField({ common_name: 'b.example' });
    out.requesterFlags = await requester.flags();
    out.responderRequests = await responder.requests();
    out.responderNew = await responder.newRequests();
    out.responderFlags = await responder.flags();
    out.responderGet = await responder.get(first.request_id);
    out.responderFind = await responder.find({ common_name: 'a.example' });
    out.responderFindMissing = await responder.find({ common_name: 'nobody.example' });
    out.responderFindAll = await responder.findAll({ common_name: 'b.example' });
    out.responderFindAllNew = await responder.findAll({ common_name: 'b.example' }, 'new');
    out.responderGetAll = await responder.getAll([second?.request_id ?? '', first.request_id]);
    out.errors = await Promise.all([
      requester.create({ common_name: '' }).catch((error: unknown) => error),
      responder.respond(first, { key: 'again', cert: 'again' }).catch((error: unknown) => error),
      responder.claim('00000000-0000-4000-8000-000000000000').catch((error: unknown) => error),
    ]).then((errors) => errors.map((error) => (isRelgateError(error) ? { code: error.code, reason: error.reason, violations: error.fieldViolations } : String(error))));
    out.sessionUsed = [web.session !== undefined, ca.session !== undefined];
    webSession?.close();
    caSession?.close();
    const ended = await Promise.all([webSession?.closed, caSession?.closed]);
    expect(ended).toEqual([undefined, undefined]);
    return normalize(out, { [world.requesterApp]: '<web>', [world.responderApp]: '<ca>' });
  }

  it('gives the same results over the session as over unary calls', async () => {
    const unaryRun = await scenario(await makeWorld(h), false);
    const sessionRun = await scenario(await makeWorld(h), true);
    expect((unaryRun as { sessionUsed: boolean[] }).sessionUsed).toEqual([false, false]);
    expect((sessionRun as { sessionUsed: boolean[] }).sessionUsed).toEqual([true, true]);
    const { sessionUsed: _a, ...unaryResults } = unaryRun as Record<string, unknown>;
    const { sessionUsed: _b, ...sessionResults } = sessionRun as Record<string, unknown>;
    expect(sessionResults).toEqual(unaryResults);
    // The results are the real ones, not two identical failures.
    expect(unaryResults.respond).toMatchObject({ code: 0, fields: { key: 'KEY', cert: 'CERT', ca: 'CA' }, responder_unit: '<ca>/0' });
    expect(unaryResults.fail).toMatchObject({ code: 7, error: 'no such name', fields: { ca: 'CA' } });
    const commonNames = (requests: unknown) => (requests as { fields: { common_name: string } }[]).map((request) => request.fields.common_name);
    expect((unaryResults.responderFind as { fields: unknown }).fields).toEqual({ common_name: 'a.example', sans: ['a.example', '10.0.0.1'] });
    expect(unaryResults.responderFindMissing).toBeUndefined();
    // b.example was answered (with a failure) above: it is no longer new to the unit.
    expect([commonNames(unaryResults.responderFindAll), commonNames(unaryResults.responderFindAllNew)]).toEqual([['b.example'], []]);
    expect(commonNames(unaryResults.responderGetAll)).toEqual(['b.example', 'a.example']);
    expect(unaryResults.createOrUpdate).toMatchObject({ created: false, updated: true, request: { fields: { common_name: 'b.example', sans: ['b2.example'] } } });
    expect(unaryResults.requesterFlags).toEqual({ available: true, has_responses: true, all_responses: true });
    expect(unaryResults.responderNew).toEqual([]);
    expect(unaryResults.findMissing).toBeUndefined();
    expect((unaryResults.requests as unknown[]).length).toBe(2);
    expect((unaryResults.responses as unknown[]).length).toBe(2);
    expect(unaryResults.errors).toEqual([
      { code: Code.INVALID_ARGUMENT, reason: 'INVALID_ARGUMENT', violations: [{ field: 'fields.common_name', description: 'required field is missing or empty' }] },
      { code: Code.FAILED_PRECONDITION, reason: 'ALREADY_ANSWERED', violations: [] },
      { code: Code.NOT_FOUND, reason: 'REQUEST_NOT_FOUND', violations: [] },
    ]);
  });

  it('takes expectedRevision in createOrUpdate, withdraw, respond, fail and claim, over the session and over unary calls', async () => {
    for (const useSession of [false, true]) {
      const world = await makeWorld(h);
      const web = as(world.requesters[0] as string);
      const ca = as(world.responders[0] as string);
      const sessions = useSession ? [web.openSession(), ca.openSession()] : [];
      const requester = web.requester('tls-certificates', { relation: world.relationId });
      const responder = ca.responder('tls-certificates', { relation: world.relationId });
      const { request: first } = await requester.createOrUpdate(['common_name'], { common_name: 'a.example' });
      const { request: second, updated } = await requester.createOrUpdate(['common_name'], { common_name: 'a.example', sans: ['b.example'] }, { expectedRevision: first.revision });
      expect(updated).toBe(true);
      const stale = async (write: Promise<unknown>) => {
        const error = await write.then(() => undefined, (failure: unknown) => failure);
        expect(hasReason(error, 'REVISION_MISMATCH') && [error.code, error.metadata]).toEqual([
          Code.ABORTED,
          { request_id: first.request_id, expected_revision: first.revision, current_revision: second.revision },
        ]);
      };
      await stale(requester.createOrUpdate(['common_name'], { common_name: 'a.example', sans: ['c.example'] }, { expectedRevision: first.revision }));
      await stale(requester.withdraw(first.request_id, { expectedRevision: first.revision }));
      await stale(responder.respond(first, { key: 'K', cert: 'C' }, { expectedRevision: first.revision }));
      await stale(responder.fail(first, 1, 'refused', {}, { expectedRevision: first.revision }));
      await stale(responder.claim(first, { expectedRevision: first.revision }));
      expect(await requester.get(first.request_id)).toEqual(second);
      // A number does as well as the string revision a request carries.
      const claimed = await responder.claim(second, { leaseMs: 10_000, expectedRevision: Number(second.revision) });
      expect((await responder.respond(claimed, { key: 'K', cert: 'C' }, { expectedRevision: claimed.revision })).responder_unit).toBe(world.responders[0]);
      const { request: third } = await requester.createOrUpdate(['common_name'], { common_name: 'c.example' });
      expect((await responder.fail(third, 3, 'refused', {}, { expectedRevision: third.revision })).code).toBe(3);
      const answered = await requester.get(third.request_id);
      expect(await requester.withdraw(third.request_id, { expectedRevision: answered.revision })).toBeGreaterThan(Number(answered.revision));
      expect([web.session !== undefined, ca.session !== undefined]).toEqual([useSession, useSession]);
      for (const session of sessions) session.close();
      expect(await Promise.all(sessions.map((session) => session.closed))).toEqual(sessions.map(() => undefined));
    }
  });

  it('calls and waits for one response, and collects every response of a selector request', async () => {
    const world = await makeWorld(h, { responders: 2, labels: { 0: { zone: 'a' }, 1: { zone: 'a' } } });
    const watches = world.responders.map((unit) => {
      const responder = as(unit).responder('tls-certificates');
      const watch = responder.watch({ filter: 'new' });
      void (async () => {
        for await (const event of watch) {
          if (event.type === 'ADDED' && event.request) await responder.respond(event.request, { key: unit, cert: `cert for ${event.request.fields.common_name}` }).catch(() => undefined);
        }
      })();
      return watch;
    });
    await Promise.all(watches.map((watch) => readUntil(watch, (event) => event.type === 'SNAPSHOT_COMPLETE').catch(() => [])));
    const requester = as(world.requesters[0] as string).requester('tls-certificates', { relation: world.relationId });
    const { request, response } = await requester.call({ common_name: 'call.example' }, { deadline: Date.now() + 10_000 });
    expect(request.state).toBe('REQUEST_STATE_ANSWERED');
    expect(response.fields.cert).toBe('cert for call.example');
    const all = await requester.callAll({ common_name: 'all.example' }, { delivery: { selector: 'zone=a' }, deadline: Date.now() + 10_000 });
    expect(all.complete).toBe(true);
    expect(all.missingUnits).toEqual([]);
    expect(all.responses.map((r) => r.responder_unit).sort()).toEqual([...world.responders].sort());
    for (const watch of watches) watch.close();
  });

  it('goes on without a session watch whose relation is removed: the watch ends, and each command in flight is carried out once', async () => {
    const a = await makeWorld(h);
    const unit = a.requesters[0] as string;
    const { relation: b } = await h.registry.call('CreateRelation', {
      interface: 'tls-certificates',
      requester_application: unit.split('/')[0],
      requester_endpoint: 'other',
      responder_application: (a.responders[0] as string).split('/')[0],
      responder_endpoint: 'other',
    });
    await h.registry.call('JoinRelation', { relation_id: b.id, unit });
    const web = as(unit);
    const session = web.openSession({ responses: { relation: a.relationId } });
    const watch = session.responses<'tls-certificates'>();
    await readUntil(watch, (event) => event.type === 'SNAPSHOT_COMPLETE');
    const requester = web.requester('tls-certificates', { relation: b.id as string });
    const creates = Array.from({ length: 200 }, (_, i) => {
      if (i === 100) void h.registry.call('DeleteRelation', { relation_id: a.relationId });
      return requester.create({ common_name: `n${i}.example` }).then((request) => request.request_id);
    });
    const created = await Promise.all(creates);
    await readUntil(watch, (event) => event.type === 'RELATION_REMOVED');
    expect(await watch.next()).toEqual({ done: true, value: undefined });
    expect(await watch.closed).toBeUndefined();
    expect((await requester.requests()).map((request) => request.request_id).sort()).toEqual([...created].sort());
    const after = await requester.create({ common_name: 'after.example' });
    expect(after.request_id).toBeTruthy();
    expect([session.isClosed, session.stats.reconnects]).toEqual([false, 1]);
    session.close();
    expect(await session.closed).toBeUndefined();
  });

  it('a watch of every relation, alone or on a session, gets the waiting requests of a relation its unit joins later: it starts over from a snapshot', async () => {
    const a = await makeWorld(h);
    const unit = a.responders[0] as string;
    const ca = as(unit);
    const alone = ca.responder('tls-certificates').watch({ filter: 'new' });
    const session = ca.openSession({ incomingRequests: { filter: 'new' } });
    const onSession = session.incomingRequests<'tls-certificates'>();
    await Promise.all([alone, onSession].map((watch) => readUntil(watch, (event) => event.type === 'SNAPSHOT_COMPLETE')));
    const { relation: second } = await h.registry.call('CreateRelation', {
      interface: 'tls-certificates',
      requester_application: (a.requesters[0] as string).split('/')[0],
      requester_endpoint: 'other',
      responder_application: unit.split('/')[0],
      responder_endpoint: 'other',
    });
    await h.registry.call('JoinRelation', { relation_id: second.id, unit: a.requesters[0] });
    const waiting = await as(a.requesters[0] as string).requester('tls-certificates', { relation: second.id as string }).create({ common_name: 'waiting.example' });
    await h.registry.call('JoinRelation', { relation_id: second.id, unit });
    for (const watch of [alone, onSession]) {
      const seen = await readUntil(watch, (event) => event.type === 'ADDED' && event.request?.request_id === waiting.request_id);
      expect(seen.map((event) => event.type)).toContain('RESYNC');
      expect(watch.stats.resyncs).toBe(1);
      watch.close();
    }
    session.close();
    expect(await session.closed).toBeUndefined();
  });

  it('reports a call that times out as DEADLINE_EXCEEDED with its reason', async () => {
    const world = await makeWorld(h);
    const requester = as(world.requesters[0] as string).requester('tls-certificates', { relation: world.relationId });
    // The server ends a call a tenth (at most 250 ms) before the client's deadline, so that its own status arrives
    // first; with 300 ms that left 30 ms, which a busy machine missed, and the client's bare deadline won.
    const error = await requester.call({ common_name: 'late.example' }, { deadline: Date.now() + 2_000, waitForResponders: true }).catch((e: unknown) => e);
    expect(hasCode(error, Code.DEADLINE_EXCEEDED)).toBe(true);
    expect(hasReason(error, 'CALL_TIMEOUT')).toBe(true);
    const refused = await requester.call({ common_name: 'nobody.example' }, { deadline: Date.now() + 5_000 }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(RelgateError);
    expect((refused as RelgateError).code).toBe(Code.UNAVAILABLE);
  });

  it('keeps a call with a deadline weeks away waiting (at most 24.8 days, what a gRPC server reads right)', async () => {
    const world = await makeWorld(h);
    const requester = as(world.requesters[0] as string).requester('tls-certificates', { relation: world.relationId });
    const responder = as(world.responders[0] as string).responder('tls-certificates', { relation: world.relationId });
    const called = requester.call({ common_name: 'patient.example' }, { deadline: Date.now() + 30 * 86_400_000, waitForResponders: true });
    const outcome = called.then(() => 'answered', (error: unknown) => error);
    // Sent as 30 days, the deadline wrapped around in the server and ended the call at once, the request stored.
    await expect.poll(async () => (await responder.newRequests()).length, { timeout: 10_000 }).toBe(1);
    const [request] = await responder.newRequests();
    await responder.respond(request as { request_id: string }, { key: 'K', cert: 'C' });
    expect(await outcome).toBe('answered');
  });

  it('watches every relation of an endpoint, and ends a watch by close() or an AbortSignal', async () => {
    const world = await makeWorld(h);
    const web = as(world.requesters[0] as string);
    const endpoint = web.requester('tls-certificates');
    const controller = new AbortController();
    const watch = endpoint.watch({ signal: controller.signal });
    await readUntil(watch, (event) => event.type === 'SNAPSHOT_COMPLETE');
    const created = await web.requester('tls-certificates', { relation: world.relationId }).create({ common_name: 'w.example' });
    const seen = await readUntil(watch, (event) => event.type === 'ADDED');
    expect(seen.at(-1)?.request?.request_id).toBe(created.request_id);
    expect(seen.at(-1)?.request?.fields).toEqual({ common_name: 'w.example' });
    controller.abort();
    expect(await watch.closed).toBeUndefined();
    expect((await watch.next()).done).toBe(true);

    const other = endpoint.watch();
    other.close();
    expect(await other.closed).toBeUndefined();
  });

  it("covers, without a relation, only the relations of the endpoint's interface: lists, find, flags and watches", async () => {
    const tls = await makeWorld(h);
    const web = await makeWorld(h, { iface: 'http', requesterApp: tls.requesterApp, responderApp: tls.responderApp, join: false });
    for (const unit of [...tls.requesters, ...tls.responders]) await h.registry.call('JoinRelation', { relation_id: web.relationId, unit });
    const requesterUnit = as(tls.requesters[0] as string);
    const responderUnit = as(tls.responders[0] as string);
    const certificate = await requesterUnit.requester('tls-certificates', { relation: tls.relationId }).create({ common_name: 'c.example' });
    const site = await requesterUnit.requester('http', { relation: web.relationId }).create({ service_name: 'shop' });
    const http = responderUnit.responder('http');
    const watch = http.watch();
    const snapshot = await readUntil(watch, (event) => event.type === 'SNAPSHOT_COMPLETE');
    expect(snapshot.filter((event) => event.request).map((event) => event.request?.request_id)).toEqual([site.request_id]);
    expect((await http.requests()).map((request) => request.request_id)).toEqual([site.request_id]);
    expect((await requesterUnit.requester('http').find({ service_name: 'shop' }))?.request_id).toBe(site.request_id);
    expect((await requesterUnit.requester('tls-certificates').find({ common_name: 'c.example' }))?.request_id).toBe(certificate.request_id);
    await responderUnit.responder('tls-certificates', { relation: tls.relationId }).respond(certificate, { key: 'K', cert: 'C' });
    expect([(await http.flags()).new_requests, (await responderUnit.responder('tls-certificates').flags()).new_requests]).toEqual([true, false]);
    const next = await requesterUnit.requester('http', { relation: web.relationId }).create({ service_name: 'blog' });
    const seen = await readUntil(watch, (event) => event.type === 'ADDED');
    expect(seen.map((event) => event.request?.request_id)).toEqual([next.request_id]);
    watch.close();
  });

  it('delivers bookmarks while nothing changes, each at the revision reached', async () => {
    const world = await makeWorld(h);
    const watch = as(world.requesters[0] as string).requester('tls-certificates', { relation: world.relationId }).watch({ start: 'now', progressIntervalMs: 100 });
    const seen = await readUntil(watch, (event) => event.type === 'BOOKMARK');
    const again = await readUntil(watch, (event) => event.type === 'BOOKMARK');
    expect([seen.at(-1)?.revision, again.at(-1)?.revision]).toEqual([h.server.hub.revision, h.server.hub.revision]);
    watch.close();
  });

  it('lets go of a shared AbortSignal when its watches close, however they close', async () => {
    const world = await makeWorld(h);
    const endpoint = as(world.requesters[0] as string).requester('tls-certificates', { relation: world.relationId });
    const shared = new AbortController();
    const watches = Array.from({ length: 5 }, () => endpoint.watch({ signal: shared.signal }));
    expect(getEventListeners(shared.signal, 'abort')).toHaveLength(5);
    for (const watch of watches.slice(0, 3)) watch.close();
    for (const watch of watches.slice(3)) await watch.return?.();
    await Promise.all(watches.map((watch) => watch.closed));
    expect(getEventListeners(shared.signal, 'abort')).toHaveLength(0);
  });

  it('rejects with RelgateError on a closed connection, and a call cancelled before it starts at once', async () => {
    const world = await makeWorld(h);
    const connection = connect(h.server.address, { unit: world.requesters[0] as string });
    const requester = connection.requester('tls-certificates', { relation: world.relationId });
    const started = Date.now();
    const cancelled = await requester.callAll({ common_name: 'never.example' }, { signal: AbortSignal.abort(), waitForResponders: true, deadline: Date.now() + 20_000 }).catch((e: unknown) => e);
    expect([(cancelled as RelgateError).code, Date.now() - started < 10_000]).toEqual([Code.CANCELLED, true]);
    connection.close();
    const failures = await Promise.all([
      requester.create({ common_name: 'closed.example' }).catch((e: unknown) => e),
      requester.call({ common_name: 'closed.example' }).catch((e: unknown) => e),
      requester.callAll({ common_name: 'closed.example' }).catch((e: unknown) => e),
    ]);
    expect(failures.map((failure) => [failure instanceof RelgateError, (failure as RelgateError).code, (failure as RelgateError).reason])).toEqual(
      Array(3).fill([true, Code.UNAVAILABLE, 'CONNECTION_CLOSED']),
    );
  });

  it('ends a watch with the gateway error when it cannot be resumed', async () => {
    const stranger = as('nobody/0').responder('tls-certificates');
    const watch = stranger.watch();
    const error = await watch.closed;
    expect(error).toBeInstanceOf(RelgateError);
    // An unregistered unit: not a condition a retry can fix.
    expect(error?.code).toBe(Code.UNAUTHENTICATED);
    expect(error?.reason).toBe('UNKNOWN_UNIT');
    await expect(watch.next()).rejects.toBe(error);
  });
});

describe('SDK watches on aged connections', () => {
  it('resume when the gateway closes the connection under them at the end of --max-connection-age-grace', async () => {
    const aging = await startHarness({ maxConnectionAgeMs: 1_000, maxConnectionAgeGraceMs: 300 });
    const connections: Connection[] = [];
    const as = (unit: string) => connections[connections.push(connect(aging.server.address, { unit })) - 1] as Connection;
    try {
      const w = await makeWorld(aging);
      const responder = as(w.responders[0] as string).responder('tls-certificates', { relation: w.relationId });
      // Two watches on the SDK's one connection: grpc-js resets all but one of its streams without a status.
      const watches = [responder.watch({ filter: 'all' }), responder.watch({ filter: 'new' })];
      await Promise.all(watches.map((watch) => readUntil(watch, (event) => event.type === 'SNAPSHOT_COMPLETE')));
      // The connection's end announces itself to nobody but the watches: wait until both have resumed.
      const deadline = Date.now() + 15_000;
      while (watches.some((watch) => watch.stats.resumes === 0) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
      const created = await as(w.requesters[0] as string).requester('tls-certificates', { relation: w.relationId }).create({ common_name: 'aged.example' });
      for (const watch of watches) {
        await readUntil(watch, (event) => event.request?.request_id === created.request_id);
        expect(watch.stats.resumes).toBeGreaterThanOrEqual(1);
        watch.close();
        expect(await watch.closed).toBeUndefined();
      }
    } finally {
      for (const connection of connections) connection.close();
      await aging.close();
    }
  }, 30_000);
});

describe('SDK reading responses', () => {
  it('follows the pages of responses that together pass the send limit: responses() and responseByField return all of them', async () => {
    const small = await startHarness({ maxSendBytes: 64 * 1024 });
    const connections: Connection[] = [];
    const as = (unit: string) => connections[connections.push(connect(small.server.address, { unit })) - 1] as Connection;
    try {
      const w = await makeWorld(small, { responders: 6 });
      const requester = as(w.requesters[0] as string).requester('tls-certificates', { relation: w.relationId });
      const request = await requester.create({ common_name: 'many.example' }, { delivery: { selector: '' } });
      const answered = [];
      // Some 20 KB each, 120 KB in all: a page holds one.
      for (const unit of w.responders) answered.push(await as(unit).responder('tls-certificates', { relation: w.relationId }).respond(request, { key: unit, cert: 'x'.repeat(20_000) }));
      expect(await requester.responses(request.request_id)).toEqual(answered);
      expect(await requester.responses()).toEqual(answered);
      expect(await requester.responseByField({ common_name: 'many.example' })).toEqual({ request: await requester.get(request.request_id), responses: answered });
    } finally {
      for (const connection of connections) connection.close();
      await small.close();
    }
  }, 30_000);
});

describe('SDK watches across gateway restarts', () => {
  let dir: string;
  let db: string;
  let server: RunningServer;
  let address: string;
  const connections: Connection[] = [];

  const start = async (config: Parameters<typeof startServer>[0] = {}) => {
    server = await startServer({ listen: address, db, logLevel: 'silent', shutdownGraceMs: 200, ...config });
    // Clients share grpc-js subchannels: wait until the shared one has reconnected.
    const probe = connect(server.address);
    await new Promise<void>((resolve, reject) => probe.requesterClient.waitForReady(Date.now() + 10_000, (error) => (error ? reject(error) : resolve())));
    probe.close();
    return server;
  };

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relgate-sdk-'));
    db = path.join(dir, 'relgate.db');
    address = '127.0.0.1:0';
    await start();
    address = server.address;
  });
  afterAll(async () => {
    for (const connection of connections) connection.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A world on the current server, through plain clients of the harness kind. */
  async function world(): Promise<World> {
    const make = (service: string, unit?: string) => new Rpc(new (v1[service] as NonNullable<(typeof v1)[string]>)(address, grpc.credentials.createInsecure()), unit);
    return makeWorld({ registry: make('RegistryService'), requester: (unit) => make('RequesterService', unit), responder: (unit) => make('ResponderService', unit) });
  }

  const as = (unit: string) => {
    const connection = connect(address, { unit });
    connections.push(connection);
    return connection;
  };

  it('resumes after a restart mid-watch without losing or repeating an event', async () => {
    const w = await world();
    const web = as(w.requesters[0] as string).requester('tls-certificates', { relation: w.relationId });
    const watch = web.watch();
    await readUntil(watch, (event) => event.type === 'SNAPSHOT_COMPLETE');
    const before = await web.create({ common_name: 'before.example' });
    await readUntil(watch, (event) => event.request?.request_id === before.request_id);

    await server.stop();
    await start();
    const after = await web.create({ common_name: 'after.example' });
    const seen = await readUntil(watch, (event) => event.request?.request_id === after.request_id);
    const changes = seen.filter(isChange);
    expect(changes.map((event) => [event.type, event.request?.fields])).toEqual([['ADDED', { common_name: 'after.example' }]]);
    expect(watch.stats.resumes).toBeGreaterThanOrEqual(1);
    expect(watch.stats.resyncs).toBe(0);
    watch.close();
  });

  it('resumes a watch from now that broke before its first change from where it began', async () => {
    const w = await world();
    const requester = w.requesters[0] as string;
    const web = as(requester).requester('tls-certificates', { relation: w.relationId });
    // Bookmarks (which carry a revision too) a minute apart, so that only the first batch can say where the watch begins.
    const watch = web.watch({ start: 'now', progressIntervalMs: 60_000 });
    await expect.poll(() => watch.revision, { timeout: 5_000 }).toBeGreaterThan(0);

    await server.stop();
    // While the watch cannot reconnect, a gateway on another port (same database) takes a request.
    const elsewhere = await startServer({ listen: '127.0.0.1:0', db, logLevel: 'silent', shutdownGraceMs: 200 });
    const other = connect(elsewhere.address, { unit: requester });
    const meanwhile = await other.requester('tls-certificates', { relation: w.relationId }).create({ common_name: 'meanwhile.example' });
    other.close();
    await elsewhere.stop();
    await start();

    const seen = await readUntil(watch, (event) => event.request?.request_id === meanwhile.request_id);
    expect(seen.filter(isChange).map((event) => [event.type, event.request?.fields])).toEqual([['ADDED', { common_name: 'meanwhile.example' }]]);
    expect(watch.stats.resumes).toBeGreaterThanOrEqual(1);
    expect(watch.stats.resyncs).toBe(0);
    watch.close();
  });

  it('carries session watches and commands across a restart', async () => {
    const w = await world();
    const web = as(w.requesters[0] as string);
    const ca = as(w.responders[0] as string);
    const session = ca.openSession({ incomingRequests: { filter: 'new' } });
    const incoming = session.incomingRequests<'tls-certificates'>();
    await readUntil(incoming, (event) => event.type === 'SNAPSHOT_COMPLETE');
    const requester = web.requester('tls-certificates', { relation: w.relationId });
    const responder = ca.responder('tls-certificates', { relation: w.relationId });
    const one = await requester.create({ common_name: 'one.example' });
    await readUntil(incoming, (event) => event.request?.request_id === one.request_id);
    expect(ca.session).toBe(session);
    await responder.respond(one, { key: 'k', cert: 'c' });

    await server.stop();
    await start();
    const two = await requester.create({ common_name: 'two.example' });
    const seen = await readUntil(incoming, (event) => event.type === 'ADDED' && event.request?.request_id === two.request_id);
    // Answered before the restart, the first request left the NEW set exactly once; the second arrived once.
    const changes = seen.filter(isChange).map((event) => `${event.type} ${String(event.request?.fields.common_name)}`);
    expect(changes).toEqual(['DELETED one.example', 'ADDED two.example']);
    expect(session.stats.reconnects).toBeGreaterThanOrEqual(1);
    // Commands go over the new stream once it is up.
    await expect.poll(() => ca.session === session, { timeout: 10_000 }).toBe(true);
    const answer = await responder.respond(two, { key: 'k2', cert: 'c2' });
    expect(answer.fields).toEqual({ key: 'k2', cert: 'c2' });
    session.close();
    expect(await session.closed).toBeUndefined();
  });

  it('starts over from a snapshot (RESYNC) when the history it needs was compacted', async () => {
    const w = await world();
    const web = as(w.requesters[0] as string).requester('tls-certificates', { relation: w.relationId });
    const kept = await web.create({ common_name: 'kept.example' });
    const watch = web.watch();
    await readUntil(watch, (event) => event.type === 'SNAPSHOT_COMPLETE');

    await server.stop();
    // While the gateway is down, history moves on and is compacted past the watch's revision.
    const store = new SqliteStore({ path: db });
    await new RegistryService(store, await InterfaceRegistry.load()).registerApplication(`gap${process.pid}`);
    await store.compact(store.currentRevision());
    await store.close();
    await start();

    const seen = await readUntil(watch, (event) => event.type === 'SNAPSHOT_COMPLETE');
    const changes = seen.filter(isChange);
    expect(changes.map((event) => [event.type, event.request?.request_id])).toEqual([
      ['RESYNC', undefined],
      ['ADDED', kept.request_id],
      ['SNAPSHOT_COMPLETE', undefined],
    ]);
    expect(watch.stats.resyncs).toBe(1);
    watch.close();
  });

  it('resumes a slow consumer cut off by the gateway and delivers every event once', async () => {
    await server.stop();
    await start({ watchBuffer: 4 });
    const w = await world();
    const web = as(w.requesters[0] as string).requester('tls-certificates', { relation: w.relationId });
    const watch = web.watch({ start: 'now', bufferEvents: 1 });
    // The first bookmark or event proves the stream is up before we stop reading it.
    const padding = 'x'.repeat(2_000);
    const first = await web.create({ common_name: 'first.example', sans: [padding] });
    await readUntil(watch, (event) => event.request?.request_id === first.request_id);
    const created: string[] = [];
    for (let i = 0; i < 400; i++) created.push((await web.create({ common_name: `n${i}.example`, sans: [padding] })).request_id);
    const last = created.at(-1);
    const seen = await readUntil(watch, (event) => event.request?.request_id === last, 30_000);
    expect(seen.filter(isChange).map((event) => event.request?.request_id)).toEqual(created);
    expect(watch.stats.resumes).toBeGreaterThanOrEqual(1);
    watch.close();
  }, 60_000);

  it('reads its first snapshot whole, so a consumer that stops reading during a snapshot over the budget is not cut off and never starts over', async () => {
    await server.stop();
    // Messages of at most a quarter MiB: the large requests make a snapshot of many messages, over the 1 MiB budget.
    await start({ watchBufferBytes: 1024 * 1024, maxSendBytes: 1024 * 1024, progressIntervalMs: 100 });
    try {
      const w = await world();
      const web = as(w.requesters[0] as string).requester('tls-certificates', { relation: w.relationId });
      const large = 'x'.repeat(100_000);
      const created: string[] = [];
      for (let i = 0; i < 80; i++) created.push((await web.create({ common_name: `s${i}.example`, sans: [large] })).request_id);
      const cutOffs = server.hub.slowWatcherCutOffs;
      const watch = web.watch({ bufferEvents: 1 });
      // Nothing announces that a cut-off did not happen: the consumer reads nothing for ten stall checks, 6 in a row
      // of which would cut off a snapshot whose transport stopped moving.
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(server.hub.slowWatcherCutOffs).toBe(cutOffs);
      const seen = await readUntil(watch, (event) => event.type === 'SNAPSHOT_COMPLETE', 30_000);
      expect(seen.some((event) => event.type === 'RESYNC')).toBe(false);
      expect(seen.filter((event) => event.type === 'ADDED').map((event) => event.request?.request_id)).toEqual(created);
      expect(watch.stats.resyncs).toBe(0);
      watch.close();
    } finally {
      await server.stop();
      await start();
    }
  }, 60_000);

  it('keeps at most maxInFlight session commands unacknowledged, sends the rest in order, and sends them all before closing', async () => {
    const w = await world();
    const web = as(w.requesters[0] as string);
    const session = web.openSession({ maxInFlight: 8 });
    const requester = web.requester('tls-certificates', { relation: w.relationId });
    let mostInFlight = 0;
    const creates = Array.from({ length: 300 }, (_, i) =>
      requester.create({ common_name: `w${i}.example` }).then((request) => {
        mostInFlight = Math.max(mostInFlight, session.inFlight);
        return request.request_id;
      }),
    );
    expect([session.inFlight, session.queued]).toEqual([8, 292]);
    session.close();
    const created = await Promise.all(creates);
    expect(await session.closed).toBeUndefined();
    expect(mostInFlight).toBeLessThanOrEqual(8);
    expect((await requester.requests()).map((request) => request.request_id)).toEqual(created);
  });

  it("stops writing session commands while the stream's write buffer is full", async () => {
    const w = await world();
    const web = as(w.requesters[0] as string);
    const session = web.openSession();
    const requester = web.requester('tls-certificates', { relation: w.relationId });
    const padding = 'x'.repeat(200_000);
    const creates = Array.from({ length: 60 }, (_, i) => requester.create({ common_name: `big${i}.example`, sans: [padding] }));
    // Far below the in-flight bound (1024): what holds the rest back is write() returning false.
    expect(session.inFlight).toBeLessThan(60);
    expect(session.queued).toBe(60 - session.inFlight);
    expect(await Promise.all(creates)).toHaveLength(60);
    expect([session.inFlight, session.queued]).toEqual([0, 0]);
    session.close();
    expect(await session.closed).toBeUndefined();
  });

  it('sends as unary calls the commands still queued when a lagging watch drains the session', async () => {
    const w = await world();
    const web = as(w.requesters[0] as string);
    const session = web.openSession({ responses: { relation: w.relationId, start: 'now', bufferEvents: 20 }, maxInFlight: 1 });
    const watch = session.responses<'tls-certificates'>();
    const requester = web.requester('tls-certificates', { relation: w.relationId });
    const first = await requester.create({ common_name: 'first.example' });
    await readUntil(watch, (event) => event.request?.request_id === first.request_id);
    // One at a time over the stream; nobody reads the watch, so it falls behind and the session drains with commands queued.
    const created = await Promise.all(Array.from({ length: 200 }, (_, i) => requester.create({ common_name: `q${i}.example` }).then((request) => request.request_id)));
    expect(session.stats.reconnects).toBeGreaterThanOrEqual(1);
    const missing = new Set(created);
    await readUntil(watch, (event) => missing.delete(event.request?.request_id ?? '') && missing.size === 0, 30_000);
    session.close();
  });

  it('lets a session watch fall behind without stalling commands, missing no event', async () => {
    const w = await world();
    const web = as(w.requesters[0] as string);
    const session = web.openSession({ responses: { relation: w.relationId, start: 'now', bufferEvents: 50 } });
    const watch = session.responses<'tls-certificates'>();
    const requester = web.requester('tls-certificates', { relation: w.relationId });
    const padding = 'x'.repeat(2_000);
    const first = await requester.create({ common_name: 'first.example', sans: [padding] });
    await readUntil(watch, (event) => event.request?.request_id === first.request_id);
    // Nobody reads the watch meanwhile: the session drains its stream and creates go on as unary calls.
    const created: string[] = [];
    for (let i = 0; i < 400; i++) created.push((await requester.create({ common_name: `s${i}.example`, sans: [padding] })).request_id);
    const seen = await readUntil(watch, (event) => event.request?.request_id === created.at(-1), 30_000);
    expect(seen.filter(isChange).map((event) => event.request?.request_id)).toEqual(created);
    expect(session.stats.reconnects).toBeGreaterThanOrEqual(1);
    session.close();
    expect(await session.closed).toBeUndefined();
  }, 60_000);
});

// The resume rule on the wire the gateway speaks: a snapshot's messages before
// its last carry revision 0. Breaking a stream exactly between two messages of
// one snapshot cannot be timed against a real gateway, so these streams are
// scripted batches of that shape.
describe('SDK watch resume points', () => {
  type Opened = { options: WatchOptionsMessage; sink: WatchSink };
  const request = (id: string, revision: number) =>
    ({ type: 'EVENT_TYPE_ADDED', revision: String(revision), relation_id: 'r', request: { request_id: id, fields: null } }) as unknown as WatchBatch__Output['events'][number];
  const scripted = () => {
    const opened: Opened[] = [];
    const open: OpenWatch = (options, sink) => {
      opened.push({ options, sink });
      return { pause() {}, resume() {}, cancel() {} };
    };
    return { opened, open };
  };
  const unavailable = () => new RelgateError(Code.UNAVAILABLE, 'connection lost', { reason: 'CONNECTION_CLOSED' });

  it('starts a snapshot over, announced by RESYNC, when it broke before its last message', async () => {
    const { opened, open } = scripted();
    const watch = new SdkWatch<unknown, unknown>(open, { base: {}, options: { start: 'snapshot' }, retryDelayMs: () => 0 });
    const first = opened[0] as Opened;
    expect(first.options.start).toBe('WATCH_START_SNAPSHOT');
    first.sink.batch({ events: [request('a', 3), request('b', 5)], revision: '0' });
    first.sink.end(unavailable());
    await expect.poll(() => opened.length).toBe(2);
    expect((opened[1] as Opened).options.start).toBe('WATCH_START_SNAPSHOT');
    const types: string[] = [];
    for (let i = 0; i < 3; i++) types.push((await watch.next()).value?.type ?? 'end');
    expect(types).toEqual(['ADDED', 'ADDED', 'RESYNC']);
    expect(watch.stats.resyncs).toBe(1);
    watch.close();
  });

  it('resumes after the revision of the first batch of a watch from now, though it had no events', async () => {
    const { opened, open } = scripted();
    const watch = new SdkWatch<unknown, unknown>(open, { base: {}, options: { start: 'now' }, retryDelayMs: () => 0 });
    const first = opened[0] as Opened;
    expect(first.options.start).toBe('WATCH_START_NOW');
    first.sink.batch({ events: [], revision: '42' });
    expect(watch.revision).toBe(42);
    first.sink.end(unavailable());
    await expect.poll(() => opened.length).toBe(2);
    expect((opened[1] as Opened).options).toMatchObject({ start: 'WATCH_START_AFTER_REVISION', after_revision: '42' });
    expect(watch.stats.resyncs).toBe(0);
    watch.close();
  });
});

describe('SDK credentials', () => {
  it('sends the bearer token and surfaces authentication failures as RelgateError', async () => {
    const h = await startHarness({ auth: 'token', adminToken: 'admin-secret' });
    try {
      const connection = connect(h.server.address, { token: 'rgu_not-a-real-token' });
      const error = await connection.requester('tls-certificates').flags().catch((e: unknown) => e);
      expect(hasCode(error, Code.UNAUTHENTICATED)).toBe(true);
      expect(hasReason(error, 'INVALID_TOKEN')).toBe(true);
      const admin = connect(h.server.address, { token: 'admin-secret' });
      const denied = await admin.responder('tls-certificates').flags().catch((e: unknown) => e);
      expect(hasReason(denied, 'UNIT_REQUIRED')).toBe(true);
      connection.close();
      admin.close();
    } finally {
      await h.close();
    }
  });

  it("reads, with the unit's own token, the units of the other side joined to the endpoint's relation with their properties", async () => {
    const h = await startHarness({ auth: 'token', adminToken: 'admin-secret' });
    const registry = new Rpc(new (v1.RegistryService as NonNullable<typeof v1.RegistryService>)(h.server.address, grpc.credentials.createInsecure()));
    registry.metadata.set('authorization', 'Bearer admin-secret');
    const connections: Connection[] = [];
    try {
      const properties = (i: number) => ({ ingress_address: `10.0.0.${i}`, egress_subnets: [`10.0.${i}.0/24`], labels: { zone: `z${i}` } });
      for (const app of ['peerweb', 'peerca']) await registry.call('RegisterApplication', { name: app });
      const tokens: Record<string, string> = {};
      for (const [i, name] of ['peerweb/0', 'peerca/0', 'peerca/1'].entries()) tokens[name] = (await registry.call('RegisterUnit', { name, ...properties(i) })).token;
      const { relation } = await registry.call('CreateRelation', { interface: 'tls-certificates', requester_application: 'peerweb', requester_endpoint: 'certificates', responder_application: 'peerca', responder_endpoint: 'certificates' });
      for (const unit of ['peerca/1', 'peerweb/0', 'peerca/0']) await registry.call('JoinRelation', { relation_id: relation.id, unit });
      const as = (unit: string) => {
        const connection = connect(h.server.address, { token: tokens[unit] as string });
        connections.push(connection);
        return connection;
      };
      const requester = as('peerweb/0').requester('tls-certificates', { relation: relation.id });
      const unit = (name: string, i: number) => ({ name, application: name.split('/')[0], ...properties(i), revision: expect.any(String) });
      expect(await requester.remoteUnits()).toEqual([unit('peerca/1', 2), unit('peerca/0', 1)]);
      expect(await as('peerca/0').responder('tls-certificates', { relation: relation.id }).remoteUnits()).toEqual([unit('peerweb/0', 0)]);
      await registry.call('LeaveRelation', { relation_id: relation.id, unit: 'peerca/1' });
      expect((await requester.remoteUnits()).map((peer) => peer.name)).toEqual(['peerca/0']);
      await expect(as('peerweb/0').requester('tls-certificates').remoteUnits()).rejects.toThrow('needs an endpoint of one relation');
    } finally {
      for (const connection of connections) connection.close();
      registry.client.close();
      await h.close();
    }
  });

  it('leaves out of remoteUnits a unit that leaves and is removed between its two reads', async () => {
    const h = await startHarness();
    const w = await makeWorld(h, { responders: 2 });
    const connection = connect(h.server.address, { unit: w.requesters[0] as string });
    try {
      const registry = connection.registryClient;
      const getRelation = registry.GetRelation.bind(registry) as (...args: unknown[]) => unknown;
      // The relation is read with both responders joined; the second is gone before its unit is read.
      registry.GetRelation = ((request: unknown, metadata: unknown, options: unknown, callback: (error: unknown, reply: unknown) => void) =>
        getRelation(request, metadata, options, (error: unknown, reply: unknown) => {
          void h.registry
            .call('LeaveRelation', { relation_id: w.relationId, unit: w.responders[1] })
            .then(() => h.registry.call('RemoveUnit', { name: w.responders[1] }))
            .then(() => callback(error, reply));
        })) as unknown as typeof registry.GetRelation;
      const peers = await connection.requester('tls-certificates', { relation: w.relationId }).remoteUnits();
      expect(peers.map((peer) => peer.name)).toEqual([w.responders[0]]);
    } finally {
      connection.close();
      await h.close();
    }
  });

  it('ends a session whose token is revoked with TOKEN_REVOKED, without trying again', async () => {
    const h = await startHarness({ auth: 'token', adminToken: 'admin-secret' });
    try {
      const registry = new Rpc(new (v1.RegistryService as NonNullable<typeof v1.RegistryService>)(h.server.address, grpc.credentials.createInsecure()));
      registry.metadata.set('authorization', 'Bearer admin-secret');
      await registry.call('RegisterApplication', { name: 'revoked' });
      const { token } = await registry.call('RegisterUnit', { name: 'revoked/0' });
      const connection = connect(h.server.address, { token });
      const session = connection.openSession({ responses: {} });
      const responses = session.responses();
      await readUntil(responses, (event) => event.type === 'SNAPSHOT_COMPLETE');
      await registry.call('RevokeUnitToken', { name: 'revoked/0' });
      const ended = await session.closed;
      expect([ended?.code, ended?.reason, session.stats.reconnects]).toEqual([Code.UNAUTHENTICATED, 'TOKEN_REVOKED', 0]);
      // Its watch ends with the same error: a program that only reads it learns why.
      await expect(responses.next()).rejects.toMatchObject({ code: Code.UNAUTHENTICATED, reason: 'TOKEN_REVOKED' });
      expect(await responses.closed).toMatchObject({ reason: 'TOKEN_REVOKED' });
      registry.client.close();
      connection.close();
    } finally {
      await h.close();
    }
  });

  it('connects over mutual TLS, the client certificate naming the unit', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'relgate-sdk-tls-'));
    const certs = makeCertificates(dir, ['tlsweb/0']);
    const h = await startHarness({ tlsCert: certs.serverCert, tlsKey: certs.serverKey, tlsClientCa: certs.ca });
    const mine = certs.client('tlsweb/0');
    const tls = { ca: readFileSync(certs.ca), cert: readFileSync(mine.cert), key: readFileSync(mine.key) };
    const registry = new Rpc(new (v1.RegistryService as NonNullable<typeof v1.RegistryService>)(h.server.address, grpc.credentials.createSsl(tls.ca, tls.key, tls.cert)));
    try {
      await registry.call('RegisterApplication', { name: 'tlsweb' });
      await registry.call('RegisterUnit', { name: 'tlsweb/0' });
      const connection = connect(h.server.address, { tls });
      expect(await connection.requester('tls-certificates').flags()).toEqual({ available: false, has_responses: false, all_responses: false });
      const impersonating = connect(h.server.address, { tls, unit: 'ca/0' });
      const error = await impersonating.requester('tls-certificates').flags().catch((e: unknown) => e);
      expect(hasReason(error, 'IMPERSONATION')).toBe(true);
      expect((error as RelgateError).code).toBe(Code.PERMISSION_DENIED);
      connection.close();
      impersonating.close();
    } finally {
      registry.client.close();
      await h.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** A long-running example process whose stdout JSON lines can be awaited. */
class ExampleProcess {
  readonly lines: unknown[] = [];
  readonly child: ChildProcess;
  #output = '';
  #waiters: (() => void)[] = [];

  constructor(script: string, args: string[], address: string) {
    this.child = spawn(process.execPath, [path.join('examples', 'ts', script), ...args], { env: { ...process.env, RELGATE_ADDRESS: address }, stdio: ['ignore', 'pipe', 'pipe'] });
    let partial = '';
    this.child.stdout?.on('data', (data: Buffer) => {
      partial += data.toString();
      const complete = partial.split('\n');
      partial = complete.pop() ?? '';
      for (const line of complete) if (line.trim()) this.lines.push(JSON.parse(line));
      for (const wake of this.#waiters.splice(0)) wake();
    });
    this.child.stderr?.on('data', (data: Buffer) => (this.#output += data.toString()));
  }

  /** Waits for a line that passes test (checking lines already printed first). */
  async line(test: (line: unknown) => boolean, timeoutMs = 20_000): Promise<unknown> {
    const deadline = Date.now() + timeoutMs;
    for (let seen = 0; ; ) {
      for (; seen < this.lines.length; seen++) if (test(this.lines[seen])) return this.lines[seen];
      if (Date.now() > deadline || this.child.exitCode !== null) throw new Error(`no matching line; got ${JSON.stringify(this.lines)}; stderr: ${this.#output}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Stops the process with SIGTERM and waits for it. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGTERM');
    await exited;
  }
}

describe('example interfaces against relgate serve', () => {
  let gateway: ServeProcess;
  const running: ExampleProcess[] = [];
  const start = (script: string, ...args: string[]) => {
    const example = new ExampleProcess(script, args, gateway.address);
    running.push(example);
    return example;
  };
  const registry = async (...args: string[]) => {
    const result = await runProgram(process.execPath, [path.join('examples', 'ts', 'registry.ts'), ...args], { env: { ...process.env, RELGATE_ADDRESS: gateway.address } });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    return result.stdout.trim();
  };

  beforeAll(async () => {
    gateway = await spawnServe(['--listen', '127.0.0.1:0', '--db', ':memory:']);
  });
  afterAll(async () => {
    for (const example of running) await example.stop();
    await gateway?.stop();
  });

  it('issues a certificate that the requester verifies with node:crypto', async () => {
    const relation = await registry('relate', 'tls-certificates', 'webapp/0', 'ca/0');
    const ca = start('tls-certificates/ca.ts', '--unit', 'ca/0');
    await ca.line((line) => (line as { ready?: boolean }).ready === true);
    const requester = await runProgram(
      process.execPath,
      [path.join('examples', 'ts', 'tls-certificates', 'requester.ts'), '--unit', 'webapp/0', '--relation', relation, '--cn', 'web.example', '--san', 'web.example', '--san', '10.0.0.5'],
      { env: { ...process.env, RELGATE_ADDRESS: gateway.address }, timeoutMs: 30_000 },
    );
    expect(requester.stderr).toBe('');
    expect(requester.code).toBe(0);
    expect(JSON.parse(requester.stdout)).toEqual({
      subject: 'CN=web.example',
      subjectAltName: 'DNS:web.example, IP Address:10.0.0.5',
      issuer: 'CN=relgate example CA',
      checks: { subject: true, sans: true, issuer: true, signature: true, key: true },
    });
    await ca.line((line) => (line as { issued?: string }).issued === 'web.example');
  }, 60_000);

  it('keeps the proxy\'s services() current as web units join and leave', async () => {
    const relation = await registry('relate', 'http', 'proxy/0', 'web/0');
    const servicesAre = (hosts: { hostname: string; port: number }[]) => (line: unknown) =>
      JSON.stringify(line) === JSON.stringify({ services: hosts.length === 0 ? [] : [{ service_name: 'web', hosts }] });
    const proxy = start('http/proxy.ts', '--unit', 'proxy/0', '--relation', relation);
    await proxy.line(servicesAre([]));
    start('http/web.ts', '--unit', 'web/0', '--port', '8080', '--hostname', 'web-0');
    await proxy.line(servicesAre([{ hostname: 'web-0', port: 8080 }]));
    await registry('join', relation, 'web/1');
    start('http/web.ts', '--unit', 'web/1', '--port', '8081', '--hostname', 'web-1');
    await proxy.line(servicesAre([{ hostname: 'web-0', port: 8080 }, { hostname: 'web-1', port: 8081 }]));
    await registry('leave', relation, 'web/0');
    await proxy.line(servicesAre([{ hostname: 'web-1', port: 8081 }]));
  }, 60_000);
});
