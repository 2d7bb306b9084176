// Call and CallAll against a real server: the request is stored like any
// other and the call returns its responses; no responder watching fails at
// once unless the caller waits; a deadline leaves the request answerable.
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Code, fromServiceError } from '../src/errors.ts';
import { json, startHarness, struct, type Harness, type Rpc } from './helpers/harness.ts';
import { CERT, CSR, create, expectError, relate, respond, seconds, toSelector, toUnit, type Relation } from './helpers/fixture.ts';
import { Feed, requestEvent, watchReady, type Msg } from './helpers/streams.ts';
import { statusDetails } from './helpers/status.ts';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(() => h.close());

type Callback = (error: grpc.ServiceError | null, response: Msg) => void;

/** A unary Call with a client deadline (Rpc.call sets none). */
function call(rpc: Rpc, request: Msg, timeoutMs: number): Promise<Msg> {
  const method = rpc.client.Call as unknown as (req: Msg, md: grpc.Metadata, options: grpc.CallOptions, cb: Callback) => void;
  return new Promise((resolve, reject) => {
    method.call(rpc.client, request, rpc.metadata, { deadline: Date.now() + timeoutMs }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

async function callFails(rpc: Rpc, request: Msg, timeoutMs: number): Promise<grpc.ServiceError> {
  try {
    await call(rpc, request, timeoutMs);
  } catch (error) {
    return error as grpc.ServiceError;
  }
  throw new Error('Call succeeded but was expected to fail');
}

interface CallAllStream {
  messages: Feed<Msg>;
  status: Promise<grpc.ServiceError | null>;
}

function callAll(rpc: Rpc, request: Msg, timeoutMs: number): CallAllStream {
  const method = rpc.client.CallAll as unknown as (req: Msg, md: grpc.Metadata, options: grpc.CallOptions) => grpc.ClientReadableStream<Msg>;
  const stream = method.call(rpc.client, request, rpc.metadata, { deadline: Date.now() + timeoutMs });
  const messages = new Feed<Msg>('CallAll');
  stream.on('data', (message: Msg) => messages.push(message));
  const status = new Promise<grpc.ServiceError | null>((resolve) => {
    stream.on('error', (error: grpc.ServiceError) => {
      messages.end(error);
      resolve(error);
    });
    stream.on('end', () => {
      messages.end(new Error('stream ended'));
      resolve(null);
    });
  });
  return { messages, status };
}

const kind = (name: string) => (message: Msg) => message.event === name;

/** Answers the request as responder i once its watch shows it. */
async function answerWhenSeen(r: Relation, i: number, requestId: string, fields = CERT) {
  const watch = await watchReady(r.res(i), { relation_id: r.id });
  await watch.events.next(requestEvent('ADDED', requestId));
  const response = await respond(r, requestId, i, fields);
  watch.cancel();
  return response;
}

describe('Call', () => {
  test('returns the response and the answered request', async () => {
    const r = await relate(h, { responders: 2 });
    const watch = await watchReady(r.res(1), { relation_id: r.id });
    const requestId = randomUUID();
    const answered = (async () => {
      await watch.events.next(requestEvent('ADDED', requestId));
      return respond(r, requestId, 1, { key: 'K1', cert: 'C1' });
    })();
    const result = await call(r.req(), { relation_id: r.id, request_id: requestId, fields: struct(CSR) }, 10_000);
    await answered;
    expect(result.response.responder_unit).toBe(r.responders[1]);
    expect(json(result.response.fields)).toEqual({ key: 'K1', cert: 'C1' });
    expect(result.request).toMatchObject({ request_id: requestId, state: 'REQUEST_STATE_ANSWERED', response_count: 1, is_created: true });
    // The request returned is the request as stored once answered.
    expect(result.request).toEqual((await r.req().call('GetRequest', { request_id: requestId })).request);
    // Replaying the call returns the stored answer at once.
    const replay = await call(r.req(), { relation_id: r.id, request_id: requestId, fields: struct(CSR) }, 10_000);
    expect(replay.response).toEqual(result.response);
    expect(replay.request).toEqual(result.request);
    watch.cancel();
  });

  test('a call to one unit waits for that unit', async () => {
    const r = await relate(h, { responders: 2 });
    const requestId = randomUUID();
    const watch = await watchReady(r.res(1), { relation_id: r.id });
    const answered = answerWhenSeen(r, 0, requestId);
    // Unit 1 watches too, but the request is not addressed to it.
    const result = await call(r.req(), { relation_id: r.id, request_id: requestId, fields: struct(CSR), delivery: toUnit(r.responders[0] as string), wait_for_responders: true }, 10_000);
    await answered;
    expect(result.response.responder_unit).toBe(r.responders[0]);
    expect(watch.events.items.some((e) => e.request?.request_id === requestId)).toBe(false);
    watch.cancel();
  });

  test('no responder unit watching: UNAVAILABLE at once with reason NO_RESPONDERS, nothing stored', async () => {
    const r = await relate(h, { responders: 2 });
    const before = h.server.store.currentRevision();
    const started = Date.now();
    const error = await callFails(r.req(), { relation_id: r.id, fields: struct(CSR) }, 10_000);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(error.code).toBe(Code.UNAVAILABLE);
    const details = statusDetails(error);
    expect(details.errorInfo).toMatchObject({ reason: 'NO_RESPONDERS', domain: 'relgate.dev', metadata: { relation_id: r.id } });
    expect(h.server.store.currentRevision()).toBe(before);
    // A watching requester unit is not a responder; a watching unit other than the addressed one is not either.
    const requesterWatch = await watchReady(r.req(), { relation_id: r.id });
    expectError(fromServiceError(await callFails(r.req(), { relation_id: r.id, fields: struct(CSR) }, 10_000)), Code.UNAVAILABLE, 'NO_RESPONDERS');
    const other = await watchReady(r.res(1), { relation_id: r.id });
    const toZero = statusDetails(await callFails(r.req(), { relation_id: r.id, fields: struct(CSR), delivery: toUnit(r.responders[0] as string) }, 10_000));
    expect(toZero.errorInfo).toMatchObject({ reason: 'NO_RESPONDERS', metadata: { relation_id: r.id, unit: r.responders[0] } });
    expect(h.server.store.currentRevision()).toBe(before);
    requesterWatch.cancel();
    other.cancel();
  });

  test('bad input comes before NO_RESPONDERS, and nothing is stored', async () => {
    const r = await relate(h);
    const before = h.server.store.currentRevision();
    const violation = async (request: Msg) => {
      const error = fromServiceError(await callFails(r.req(), request, 10_000));
      expect(error.code, error.message).toBe(Code.INVALID_ARGUMENT);
      return error.fieldViolations.map((v) => v.field);
    };
    expect(await violation({ fields: struct(CSR) })).toEqual(['relation_id']);
    expect(await violation({ relation_id: r.id, fields: struct({ sans: ['x'] }) })).toEqual(['fields.common_name']);
    expect(await violation({ relation_id: r.id, fields: struct(CSR), delivery: toSelector('zone=a') })).toEqual(['delivery.mode']);
    const unknownUnit = fromServiceError(await callFails(r.req(), { relation_id: r.id, fields: struct(CSR), delivery: toUnit(`${r.responders[0]?.split('/')[0]}/42`) }, 10_000));
    expectError(unknownUnit, Code.NOT_FOUND, 'UNIT_NOT_FOUND');
    const badSelector = await callAll(r.req(), { relation_id: r.id, fields: struct(CSR), delivery: toSelector('zone in a') }, 10_000).status;
    expect(badSelector?.code).toBe(Code.INVALID_ARGUMENT);
    expect(h.server.store.currentRevision()).toBe(before);
  });

  test('replaying an answered call returns its answer even when no responder watches', async () => {
    const r = await relate(h);
    const requestId = randomUUID();
    await create(r, { request_id: requestId });
    const answer = await respond(r, requestId, 0);
    const replay = await call(r.req(), { relation_id: r.id, request_id: requestId, fields: struct(CSR) }, 10_000);
    expect(replay.response).toEqual(answer);
  });

  test('membership errors come before NO_RESPONDERS', async () => {
    const r = await relate(h);
    const stranger = h.requester(r.responders[0] as string);
    expectError(fromServiceError(await callFails(stranger, { relation_id: r.id, fields: struct(CSR) }, 10_000)), Code.PERMISSION_DENIED, 'NOT_A_MEMBER');
    expectError(fromServiceError(await callFails(r.req(), { relation_id: 'tls-certificates:999999', fields: struct(CSR) }, 10_000)), Code.NOT_FOUND, 'RELATION_NOT_FOUND');
  });

  test('wait_for_responders stores the request and waits for a responder to answer', async () => {
    const r = await relate(h);
    const requestId = randomUUID();
    const pending = call(r.req(), { relation_id: r.id, request_id: requestId, fields: struct(CSR), wait_for_responders: true }, 10_000);
    // No responder is watching: the request is there for the first one that looks.
    const requesterWatch = await watchReady(r.req(), { relation_id: r.id });
    const stored = requesterWatch.events.items.find((e) => e.request?.request_id === requestId) ?? (await requesterWatch.events.next(requestEvent('ADDED', requestId)));
    expect(stored.request.state).toBe('REQUEST_STATE_PENDING');
    await respond(r, requestId, 0);
    expect((await pending).response.responder_unit).toBe(r.responders[0]);
    requesterWatch.cancel();
  });

  test('deadline passed: DEADLINE_EXCEEDED, the request stays stored and a late answer is readable', async () => {
    const r = await relate(h);
    const watch = await watchReady(r.res(0), { relation_id: r.id });
    const requestId = randomUUID();
    const started = Date.now();
    const error = await callFails(r.req(), { relation_id: r.id, request_id: requestId, fields: struct(CSR) }, 2_000);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_500);
    expect(error.code).toBe(Code.DEADLINE_EXCEEDED);
    expect(statusDetails(error).errorInfo).toMatchObject({ reason: 'CALL_TIMEOUT', metadata: { request_id: requestId } });
    const stored = (await r.req().call('GetRequest', { request_id: requestId })).request;
    expect([stored.state, stored.response_count]).toEqual(['REQUEST_STATE_PENDING', 0]);
    expect((await watch.events.next(requestEvent('ADDED', requestId))).request.is_new).toBe(true);
    const late = await respond(r, requestId, 0);
    const { responses } = await r.req().call('ListResponses', { request_id: requestId });
    expect(responses).toEqual([late]);
    const again = await call(r.req(), { relation_id: r.id, request_id: requestId, fields: struct(CSR) }, 10_000);
    expect(again.response).toEqual(late);
    watch.cancel();
  });
  test.each([
    ['withdrawing its request', (r: Relation, requestId: string) => r.req().call('WithdrawRequest', { request_id: requestId })],
    ['removing its relation', (r: Relation) => h.registry.call('DeleteRelation', { relation_id: r.id })],
  ])('%s ends a waiting call at once with FAILED_PRECONDITION, not at the deadline', async (_how, remove) => {
    const r = await relate(h);
    const watch = await watchReady(r.res(0), { relation_id: r.id });
    const requestId = randomUUID();
    const started = Date.now();
    const failing = callFails(r.req(), { relation_id: r.id, request_id: requestId, fields: struct(CSR) }, 30_000);
    await watch.events.next(requestEvent('ADDED', requestId));
    await remove(r, requestId);
    const error = await failing;
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(error.code).toBe(Code.FAILED_PRECONDITION);
    expect(statusDetails(error).errorInfo).toMatchObject({ reason: 'REQUEST_WITHDRAWN', metadata: { request_id: requestId } });
    watch.cancel();
  });

  test('a requester unit leaving the relation ends its waiting Call and CallAll at once with UNIT_NOT_JOINED, as it ends its watches', async () => {
    const r = await relate(h, { responders: 1, labels: { 0: { zone: 'a' } } });
    const watch = await watchReady(r.res(0), { relation_id: r.id });
    const requestId = randomUUID();
    const failing = callFails(r.req(), { relation_id: r.id, request_id: requestId, fields: struct(CSR) }, 30_000);
    const stream = callAll(r.req(), { relation_id: r.id, fields: struct({ common_name: 'all.example' }), delivery: toSelector('zone=a') }, 30_000);
    await stream.messages.next(kind('started'));
    await watch.events.next(requestEvent('ADDED', requestId));
    const started = Date.now();
    await h.registry.call('LeaveRelation', { relation_id: r.id, unit: r.requesters[0] });
    const [error, status] = await Promise.all([failing, stream.status]);
    expect(Date.now() - started).toBeLessThan(15_000);
    for (const ended of [error, status]) {
      expect(ended?.code).toBe(Code.FAILED_PRECONDITION);
      expect(ended && statusDetails(ended).errorInfo).toMatchObject({ reason: 'UNIT_NOT_JOINED', metadata: { relation_id: r.id, unit: r.requesters[0] } });
    }
    watch.cancel();
  });

  test('an answer committed before its caller left still ends the Call with that answer; one after the departure does not reach it', async () => {
    for (let round = 0; round < 5; round++) {
      const r = await relate(h);
      const watch = await watchReady(r.res(0), { relation_id: r.id });
      const requestId = randomUUID();
      const calling = r.req().call('Call', { relation_id: r.id, request_id: requestId, fields: struct(CSR) }).then(
        (result: Msg) => ({ answered: result.response.request_id as string }),
        (error: grpc.ServiceError) => ({ refused: statusDetails(error).errorInfo?.reason }),
      );
      await watch.events.next(requestEvent('ADDED', requestId));
      const [answer, left] = await Promise.all([respond(r, requestId, 0), h.registry.call('LeaveRelation', { relation_id: r.id, unit: r.requesters[0] })]);
      const outcome = await calling;
      const answeredFirst = Number(answer.revision) < Number(left.relation.revision);
      expect(outcome, `round ${round}: answer at ${answer.revision}, departure at ${left.relation.revision}`).toEqual(answeredFirst ? { answered: requestId } : { refused: 'UNIT_NOT_JOINED' });
      watch.cancel();
    }
  });

  test('a request whose time to live passes ends the call at once, not at the deadline', async () => {
    const r = await relate(h);
    const watch = await watchReady(r.res(0), { relation_id: r.id });
    const requestId = randomUUID();
    const started = Date.now();
    const error = await callFails(r.req(), { relation_id: r.id, request_id: requestId, fields: struct(CSR), ttl: seconds(300) }, 30_000);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(error.code).toBe(Code.DEADLINE_EXCEEDED);
    expect(statusDetails(error).errorInfo).toMatchObject({ reason: 'REQUEST_EXPIRED', metadata: { request_id: requestId } });
    expect((await r.req().call('GetRequest', { request_id: requestId })).request.state).toBe('REQUEST_STATE_EXPIRED');
    // Replaying the call of an expired request fails the same way, at once.
    const again = await callFails(r.req(), { relation_id: r.id, request_id: requestId, fields: struct(CSR), ttl: seconds(300) }, 30_000);
    expect(statusDetails(again).errorInfo?.reason).toBe('REQUEST_EXPIRED');
    watch.cancel();
  });
});

describe('CallAll', () => {
  test('the expected count first, each response as it arrives, then who did not answer at the deadline', async () => {
    const r = await relate(h, { responders: 4, labels: { 0: { zone: 'a' }, 1: { zone: 'a' }, 2: { zone: 'a' }, 3: { zone: 'b' } } });
    const watch = await watchReady(r.res(0), { relation_id: r.id });
    const started = Date.now();
    const stream = callAll(r.req(), { relation_id: r.id, fields: struct(CSR), delivery: toSelector('zone=a') }, 2_500);
    const first = await stream.messages.next();
    expect(first.event).toBe('started');
    expect(first.started.expected_count).toBe(3);
    expect(first.started.expected_units).toEqual(r.responders.slice(0, 3));
    const requestId = first.started.request.request_id as string;
    expect(first.started.request.state).toBe('REQUEST_STATE_PENDING');
    // Each response comes down before the next unit answers.
    for (const i of [1, 0]) {
      await respond(r, requestId, i);
      const message = await stream.messages.next();
      expect([message.event, message.response?.responder_unit]).toEqual(['response', r.responders[i]]);
    }
    const last = await stream.messages.next(kind('finished'), 10_000);
    expect(last.finished).toEqual({ complete: false, missing_units: [r.responders[2]] });
    expect(Date.now() - started).toBeGreaterThanOrEqual(2_000);
    expect(await stream.status).toBeNull();
    expect(stream.messages.items.map((m) => m.event)).toEqual(['started', 'response', 'response', 'finished']);
    // The silent unit may still answer; the request then completes.
    await respond(r, requestId, 2);
    expect((await r.req().call('GetRequest', { request_id: requestId })).request.state).toBe('REQUEST_STATE_ANSWERED');
    watch.cancel();
  });

  test('ends as soon as every matched unit has answered', async () => {
    const r = await relate(h, { responders: 3, labels: { 0: { zone: 'a' }, 1: { zone: 'a' } } });
    const watch = await watchReady(r.res(2), { relation_id: r.id });
    const stream = callAll(r.req(), { relation_id: r.id, fields: struct(CSR), delivery: toSelector('zone=a') }, 30_000);
    const requestId = (await stream.messages.next(kind('started'))).started.request.request_id as string;
    await Promise.all([respond(r, requestId, 0), respond(r, requestId, 1)]);
    expect((await stream.messages.next(kind('finished'))).finished).toEqual({ complete: true, missing_units: [] });
    expect(await stream.status).toBeNull();
    const units = stream.messages.items.filter(kind('response')).map((m) => m.response.responder_unit).sort();
    expect(units).toEqual(r.responders.slice(0, 2));
    watch.cancel();
  });

  test('the time to live passing ends it with the units that did not answer', async () => {
    const r = await relate(h, { responders: 2, labels: { 0: { zone: 'a' }, 1: { zone: 'a' } } });
    const watch = await watchReady(r.res(0), { relation_id: r.id });
    const stream = callAll(r.req(), { relation_id: r.id, fields: struct(CSR), delivery: toSelector('zone=a'), ttl: seconds(1_500) }, 30_000);
    const requestId = (await stream.messages.next(kind('started'))).started.request.request_id as string;
    await respond(r, requestId, 1);
    const finished = await stream.messages.next(kind('finished'), 15_000);
    expect(finished.finished).toEqual({ complete: false, missing_units: [r.responders[0]] });
    expect(await stream.status).toBeNull();
    watch.cancel();
  });

  test.each([
    ['withdrawing its request', (r: Relation, requestId: string) => r.req().call('WithdrawRequest', { request_id: requestId })],
    ['removing its relation', (r: Relation) => h.registry.call('DeleteRelation', { relation_id: r.id })],
  ])('%s ends it at once with FAILED_PRECONDITION, after the responses so far, not with finished', async (_how, remove) => {
    const r = await relate(h, { responders: 2, labels: { 0: { zone: 'a' }, 1: { zone: 'a' } } });
    const watch = await watchReady(r.res(0), { relation_id: r.id });
    const stream = callAll(r.req(), { relation_id: r.id, fields: struct(CSR), delivery: toSelector('zone=a') }, 30_000);
    const requestId = (await stream.messages.next(kind('started'))).started.request.request_id as string;
    await respond(r, requestId, 1);
    await stream.messages.next(kind('response'));
    await remove(r, requestId);
    const error = await stream.status;
    expect(error?.code).toBe(Code.FAILED_PRECONDITION);
    expect(error && statusDetails(error).errorInfo).toMatchObject({ reason: 'REQUEST_WITHDRAWN', metadata: { request_id: requestId } });
    expect(stream.messages.items.map((m) => m.event)).toEqual(['started', 'response']);
    watch.cancel();
  });

  test('no matching unit: count 0 and complete at once', async () => {
    const r = await relate(h, { responders: 1, labels: { 0: { zone: 'a' } } });
    const watch = await watchReady(r.res(0), { relation_id: r.id });
    const stream = callAll(r.req(), { relation_id: r.id, fields: struct(CSR), delivery: toSelector('zone=nowhere') }, 30_000);
    expect(await stream.status).toBeNull();
    expect(stream.messages.items.map((m) => m.event)).toEqual(['started', 'finished']);
    expect(stream.messages.items[0]?.started.expected_count).toBe(0);
    expect(stream.messages.items[1]?.finished).toEqual({ complete: true, missing_units: [] });
    watch.cancel();
  });

  test('no responder watching: UNAVAILABLE NO_RESPONDERS; a bad selector: INVALID_ARGUMENT naming the position', async () => {
    const r = await relate(h, { responders: 1, labels: { 0: { zone: 'a' } } });
    const none = await callAll(r.req(), { relation_id: r.id, fields: struct(CSR), delivery: toSelector('zone=a') }, 10_000).status;
    expect(none?.code).toBe(Code.UNAVAILABLE);
    expect(none && statusDetails(none).errorInfo?.reason).toBe('NO_RESPONDERS');
    const bad = await callAll(r.req(), { relation_id: r.id, fields: struct(CSR), delivery: toSelector('zone in a') }, 10_000).status;
    expect(bad?.code).toBe(Code.INVALID_ARGUMENT);
    expect(bad && statusDetails(bad).fieldViolations).toEqual([{ field: 'delivery.selector', description: 'expected "(" after in at position 9' }]);
  });

  test('a request created earlier is not mixed in: only responses to the call\'s own request arrive', async () => {
    const r = await relate(h, { responders: 1, labels: { 0: { zone: 'a' } } });
    const watch = await watchReady(r.res(0), { relation_id: r.id });
    const earlier = await create(r, { delivery: toSelector('zone=a') });
    const stream = callAll(r.req(), { relation_id: r.id, fields: struct(CSR), delivery: toSelector('zone=a') }, 30_000);
    const requestId = (await stream.messages.next(kind('started'))).started.request.request_id as string;
    await respond(r, earlier.request_id, 0);
    await respond(r, requestId, 0);
    await stream.messages.next(kind('finished'));
    expect(stream.messages.items.filter(kind('response')).map((m) => m.response.request_id)).toEqual([requestId]);
    watch.cancel();
  });
});
