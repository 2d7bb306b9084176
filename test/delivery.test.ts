// Addressing requests against a real server: to any responder unit (first
// answer wins), to one named unit, and to every unit matching a label
// selector; with the requester's properties delivered to each responder.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Code } from '../src/errors.ts';
import { json, startHarness, struct, type Harness } from './helpers/harness.ts';
import { ANY, CERT, CSR, create, expectError, incoming, relate, respond, toSelector, toUnit, type Relation } from './helpers/fixture.ts';
import { requestEvent, watchReady } from './helpers/streams.ts';
import { rawFail, statusDetails } from './helpers/status.ts';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(() => h.close());

async function flags(r: Relation, i: number) {
  return (await r.res(i).call('GetResponderFlags', { relation_id: r.id })).flags;
}

async function requestAs(r: Relation, i: number, requestId: string) {
  return (await r.res(i).call('GetIncomingRequest', { request_id: requestId })).request;
}

describe('delivery to any responder unit', () => {
  test('every responder unit sees it as new; the first answer completes it; a later one is refused', async () => {
    const r = await relate(h, { responders: 3 });
    const watches = await Promise.all([0, 1, 2].map((i) => watchReady(r.res(i), { relation_id: r.id })));
    const request = await create(r, { delivery: ANY });
    expect([request.expected_count, request.expected_units, request.delivery.mode]).toEqual([1, [], 'DELIVERY_MODE_ANY']);
    for (const [i, w] of watches.entries()) {
      const added = await w.events.next(requestEvent('ADDED', request.request_id));
      expect(added.request.is_new).toBe(true);
      expect(await incoming(r, i)).toEqual([request.request_id]);
      expect(await flags(r, i)).toEqual({ available: true, has_requests: true, new_requests: true });
    }
    const response = await respond(r, request.request_id, 1);
    expect(response.responder_unit).toBe(r.responders[1]);
    for (const [i, w] of watches.entries()) {
      const answered = await w.events.next(requestEvent('MODIFIED', request.request_id));
      expect([answered.request.state, answered.request.is_new]).toEqual(['REQUEST_STATE_ANSWERED', false]);
      expect(await incoming(r, i)).toEqual([]);
      expect(await flags(r, i)).toEqual({ available: true, has_requests: true, new_requests: false });
    }
    for (const i of [0, 2]) {
      expectError(await r.res(i).fail('Respond', { request_id: request.request_id, fields: struct(CERT) }), Code.FAILED_PRECONDITION, 'REQUEST_COMPLETED');
    }
    expectError(await r.res(1).fail('Respond', { request_id: request.request_id, fields: struct(CERT) }), Code.FAILED_PRECONDITION, 'ALREADY_ANSWERED');
    const { responses } = await r.req().call('ListResponses', { request_id: request.request_id });
    expect(responses.map((x: { responder_unit: string }) => x.responder_unit)).toEqual([r.responders[1]]);
    for (const w of watches) w.cancel();
  });

  test('two units answering at the same moment: exactly one wins, every time', async () => {
    const r = await relate(h, { responders: 2 });
    const rounds = 50;
    for (let round = 0; round < rounds; round++) {
      const request = await create(r, { fields: struct({ common_name: `race${round}.example` }) });
      const answers = await Promise.allSettled([0, 1].map((i) => respond(r, request.request_id, i)));
      const won = answers.filter((a) => a.status === 'fulfilled');
      const lost = answers.filter((a) => a.status === 'rejected');
      expect([won.length, lost.length], `round ${round}`).toEqual([1, 1]);
      expect((lost[0] as PromiseRejectedResult).reason.code).toBe(Code.FAILED_PRECONDITION);
      const { responses } = await r.req().call('ListResponses', { request_id: request.request_id });
      expect(responses).toHaveLength(1);
      expect(responses[0].responder_unit).toBe((won[0] as PromiseFulfilledResult<{ responder_unit: string }>).value.responder_unit);
    }
    const { flags: requesterFlags } = await r.req().call('GetRequesterFlags', { relation_id: r.id });
    expect(requesterFlags).toEqual({ available: true, has_responses: true, all_responses: true });
  });
});

describe('delivery to one unit', () => {
  test('only the named unit sees it and may answer', async () => {
    const r = await relate(h, { responders: 3 });
    const watches = await Promise.all([0, 1].map((i) => watchReady(r.res(i), { relation_id: r.id })));
    const other = await create(r, { delivery: ANY, fields: struct({ common_name: 'marker.example' }) });
    const request = await create(r, { delivery: toUnit(r.responders[1] as string) });
    expect([request.expected_units, request.expected_count]).toEqual([[r.responders[1]], 1]);
    // Unit 0's watch carries the next request but never the one addressed to unit 1.
    const marker = await create(r, { delivery: ANY, fields: struct({ common_name: 'after.example' }) });
    await watches[0]?.events.next(requestEvent('ADDED', marker.request_id));
    expect(watches[0]?.events.items.some((e) => e.request?.request_id === request.request_id)).toBe(false);
    expect((await watches[1]?.events.next(requestEvent('ADDED', request.request_id)))?.request.is_new).toBe(true);
    for (const i of [0, 2]) {
      expect(await incoming(r, i, 'REQUEST_FILTER_ALL')).toEqual([other.request_id, marker.request_id]);
      expectError(await r.res(i).fail('GetIncomingRequest', { request_id: request.request_id }), Code.NOT_FOUND, 'REQUEST_NOT_FOUND');
      expectError(await r.res(i).fail('Respond', { request_id: request.request_id, fields: struct(CERT) }), Code.NOT_FOUND, 'REQUEST_NOT_FOUND');
    }
    await respond(r, request.request_id, 1);
    expect((await requestAs(r, 1, request.request_id)).state).toBe('REQUEST_STATE_ANSWERED');
    for (const w of watches) w.cancel();
  });

  test('an unknown unit, a unit that has not joined, or no unit at all is refused and nothing is stored', async () => {
    const r = await relate(h, { responders: 2, notJoined: [1] });
    const before = h.server.store.currentRevision();
    const unknown = await r.req().fail('CreateRequest', { relation_id: r.id, fields: struct(CSR), delivery: toUnit(`${r.responders[0]?.split('/')[0]}/99`) });
    expectError(unknown, Code.NOT_FOUND, 'UNIT_NOT_FOUND');
    const absent = await r.req().fail('CreateRequest', { relation_id: r.id, fields: struct(CSR), delivery: toUnit(r.responders[1] as string) });
    expectError(absent, Code.FAILED_PRECONDITION, 'UNIT_NOT_JOINED');
    expect(absent.message).toContain(r.responders[1]);
    const requester = await r.req().fail('CreateRequest', { relation_id: r.id, fields: struct(CSR), delivery: toUnit(r.requesters[0] as string) });
    expectError(requester, Code.FAILED_PRECONDITION, 'UNIT_NOT_JOINED');
    const empty = await r.req().fail('CreateRequest', { relation_id: r.id, fields: struct(CSR), delivery: { mode: 'DELIVERY_MODE_UNIT' } });
    expect([empty.code, empty.fieldViolations.map((v) => v.field)]).toEqual([Code.INVALID_ARGUMENT, ['delivery.unit']]);
    expect(h.server.store.currentRevision()).toBe(before);
  });
});

describe('delivery to a label selector', () => {
  const LABELS = { 0: { zone: 'a', tier: 'db' }, 1: { zone: 'b', tier: 'cache' }, 2: { zone: 'a', canary: 'true' }, 3: {} };

  test.each([
    ['zone=a', [0, 2]],
    ['zone==b', [1]],
    ['zone!=a', [1, 3]],
    ['tier in (db,cache)', [0, 1]],
    ['tier notin (db)', [1, 2, 3]],
    ['canary', [2]],
    ['!canary', [0, 1, 3]],
    ['zone=a,!canary', [0]],
    ['zone in (a, b), tier', [0, 1]],
    ['zone=a,tier=db,canary', []],
  ])('%s is resolved at creation to the matching units', async (selector, matched) => {
    const r = await relate(h, { responders: 4, labels: LABELS });
    const expected = matched.map((i) => r.responders[i]);
    const request = await create(r, { delivery: toSelector(selector) });
    expect([request.expected_units, request.expected_count]).toEqual([expected, expected.length]);
    const stored = (await r.req().call('GetRequest', { request_id: request.request_id })).request;
    expect([stored.expected_units, stored.expected_count]).toEqual([expected, expected.length]);
    for (const i of [0, 1, 2, 3]) expect(await incoming(r, i, 'REQUEST_FILTER_ALL'), r.responders[i]).toEqual(matched.includes(i) ? [request.request_id] : []);
  });

  test('each matched unit answers once; complete when all have answered; flags and "new" per unit', async () => {
    const r = await relate(h, { responders: 3, labels: { 0: { zone: 'a' }, 1: { zone: 'a' }, 2: { zone: 'b' } } });
    const request = await create(r, { delivery: toSelector('zone=a') });
    expect(request.expected_count).toBe(2);
    await respond(r, request.request_id, 0);
    expectError(await r.res(0).fail('Respond', { request_id: request.request_id, fields: struct(CERT) }), Code.FAILED_PRECONDITION, 'ALREADY_ANSWERED');
    expectError(await r.res(2).fail('Respond', { request_id: request.request_id, fields: struct(CERT) }), Code.NOT_FOUND, 'REQUEST_NOT_FOUND');
    expect([(await requestAs(r, 0, request.request_id)).is_new, (await requestAs(r, 1, request.request_id)).is_new]).toEqual([false, true]);
    expect(await flags(r, 0)).toEqual({ available: true, has_requests: true, new_requests: false });
    expect(await flags(r, 1)).toEqual({ available: true, has_requests: true, new_requests: true });
    expect(await flags(r, 2)).toEqual({ available: true, has_requests: false, new_requests: false });
    const pending = (await r.req().call('GetRequest', { request_id: request.request_id })).request;
    expect([pending.state, pending.response_count]).toEqual(['REQUEST_STATE_PENDING', 1]);
    expect((await r.req().call('GetRequesterFlags', { relation_id: r.id })).flags.all_responses).toBe(false);
    await respond(r, request.request_id, 1);
    const done = (await r.req().call('GetRequest', { request_id: request.request_id })).request;
    expect([done.state, done.response_count]).toEqual(['REQUEST_STATE_ANSWERED', 2]);
    expect((await r.req().call('GetRequesterFlags', { relation_id: r.id })).flags).toEqual({ available: true, has_responses: true, all_responses: true });
    expect(await flags(r, 1)).toEqual({ available: true, has_requests: true, new_requests: false });
  });

  test('labels are read when the request is created: later label changes do not move it', async () => {
    const r = await relate(h, { responders: 2, labels: { 0: { zone: 'a' }, 1: { zone: 'b' } } });
    const request = await create(r, { delivery: toSelector('zone=a') });
    await h.registry.call('UpdateUnit', { name: r.responders[1], ingress_address: '10.2.0.2', egress_subnets: [], labels: { zone: 'a' } });
    expect(await incoming(r, 1, 'REQUEST_FILTER_ALL')).toEqual([]);
    expect((await r.req().call('GetRequest', { request_id: request.request_id })).request.expected_units).toEqual([r.responders[0]]);
    const later = await create(r, { delivery: toSelector('zone=a'), fields: struct({ common_name: 'later.example' }) });
    expect(later.expected_units).toEqual(r.responders);
  });

  test('a matched unit that leaves stays expected: the request waits for it, and it answers once it rejoins', async () => {
    const r = await relate(h, { responders: 2, labels: { 0: { zone: 'a' }, 1: { zone: 'a' } } });
    const request = await create(r, { delivery: toSelector('zone=a') });
    const departing = r.responders[1] as string;
    await h.registry.call('LeaveRelation', { relation_id: r.id, unit: departing });
    await respond(r, request.request_id, 0);
    const waiting = (await r.req().call('GetRequest', { request_id: request.request_id })).request;
    expect([waiting.state, waiting.response_count, waiting.expected_units]).toEqual(['REQUEST_STATE_PENDING', 1, r.responders]);
    expectError(await r.res(1).fail('Respond', { request_id: request.request_id, fields: struct(CERT) }), Code.FAILED_PRECONDITION, 'UNIT_NOT_JOINED');
    await h.registry.call('JoinRelation', { relation_id: r.id, unit: departing });
    expect(await incoming(r, 1)).toEqual([request.request_id]);
    await respond(r, request.request_id, 1);
    const done = (await r.req().call('GetRequest', { request_id: request.request_id })).request;
    expect([done.state, done.response_count]).toEqual(['REQUEST_STATE_ANSWERED', 2]);
  });

  test('no matching unit: count 0 and the request is complete at once', async () => {
    const r = await relate(h, { responders: 2, labels: { 0: { zone: 'a' }, 1: { zone: 'a' } } });
    const w = await watchReady(r.req(), { relation_id: r.id });
    const request = await create(r, { delivery: toSelector('zone=z') });
    expect([request.expected_count, request.expected_units, request.state]).toEqual([0, [], 'REQUEST_STATE_ANSWERED']);
    expect((await w.events.next(requestEvent('ADDED', request.request_id))).request.state).toBe('REQUEST_STATE_ANSWERED');
    expect((await r.req().call('GetRequesterFlags', { relation_id: r.id })).flags).toEqual({ available: true, has_responses: false, all_responses: true });
    for (const i of [0, 1]) expect(await incoming(r, i, 'REQUEST_FILTER_ALL')).toEqual([]);
    w.cancel();
  });

  test.each([
    ['zone in a', 9, 'expected "(" after in'],
    ['zone=a,,tier', 8, 'expected a label key'],
    ['zone=a b', 8, 'expected "," but found "b"'],
    ['zone in (a', 11, 'expected "," or ")"'],
    ['zone in ()', 10, 'expected a label value: in needs at least one'],
    ['zone notin ()', 13, 'expected a label value: notin needs at least one'],
    ['zone=a,-bad', 8, 'invalid label key "-bad"'],
    ['zone=a!', 7, 'expected "," but found "!"'],
    ['zone (a)', 6, 'unexpected "("'],
    ['zone=a,tier=$', 13, 'invalid label value "$"'],
    ['zone=a,\u00a0tier', 8, 'invalid label key "\u00a0tier"'],
    [`${'a'.repeat(254)}/zone=a`, 1, 'invalid label key'],
  ])('bad syntax %j: INVALID_ARGUMENT naming position %i', async (selector, position, message) => {
    const r = await relate(h);
    const before = h.server.store.currentRevision();
    const error = await rawFail(r.req(), 'CreateRequest', { relation_id: r.id, fields: struct(CSR), delivery: toSelector(selector) });
    expect(error.code).toBe(Code.INVALID_ARGUMENT);
    const details = statusDetails(error);
    expect(details.errorInfo?.reason).toBe('INVALID_ARGUMENT');
    expect(details.fieldViolations).toHaveLength(1);
    expect(details.fieldViolations?.[0]?.field).toBe('delivery.selector');
    expect(details.fieldViolations?.[0]?.description).toContain(message);
    expect(details.fieldViolations?.[0]?.description).toMatch(new RegExp(`at position ${position}$`));
    expect(h.server.store.currentRevision()).toBe(before);
  });
});

describe('requester properties', () => {
  test('each responder gets the requesting unit\'s ingress address, egress subnets and labels, in reads and in watch events', async () => {
    const r = await relate(h, { requesters: 2, responders: 2 });
    const w = await watchReady(r.res(1), { relation_id: r.id });
    const request = await create(r, { delivery: ANY }, 1);
    const expected = {
      source_unit: r.requesters[1],
      source_ingress_address: '10.1.0.2',
      source_egress_subnets: ['10.1.1.0/24', 'fd00::/64'],
      source_labels: { role: 'web', idx: '1' },
    };
    expect(await requestAs(r, 0, request.request_id)).toMatchObject(expected);
    const [listed] = (await r.res(0).call('ListIncomingRequests', { relation_id: r.id })).requests;
    expect(listed).toMatchObject(expected);
    expect(json(listed.fields)).toEqual(CSR);
    expect((await w.events.next(requestEvent('ADDED', request.request_id))).request).toMatchObject(expected);
    w.cancel();
  });

  test('the properties are those of the moment the request was created', async () => {
    const r = await relate(h);
    const request = await create(r);
    await h.registry.call('UpdateUnit', { name: r.requesters[0], ingress_address: '10.9.9.9', egress_subnets: ['10.9.0.0/16'], labels: { role: 'moved' } });
    expect(await requestAs(r, 0, request.request_id)).toMatchObject({ source_ingress_address: '10.1.0.1', source_egress_subnets: ['10.1.0.0/24', 'fd00::/64'], source_labels: { role: 'web', idx: '0' } });
  });
});
