// ResponderService against a real server and SQLite file: what responder
// units see, answering, claims, delivery modes and the responder flags.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Code } from '../src/errors.ts';
import { json, startHarness, struct, type Harness } from './helpers/harness.ts';
import { eventually, ids, listAll, makeWorld, millis, type World } from './helpers/world.ts';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(() => h.close());

type Fields = Parameters<typeof struct>[0];

async function create(w: World, fields: Fields, extra: object = {}) {
  return (await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct(fields), ...extra })).request;
}

const toUnit = (unit: string | undefined) => ({ delivery: { mode: 'DELIVERY_MODE_UNIT', unit } });
const toSelector = (selector: string) => ({ delivery: { mode: 'DELIVERY_MODE_SELECTOR', selector } });
const CERT = struct({ key: 'K', cert: 'C', ca: 'CA' });

async function incoming(w: World, responder: number, filter = 'REQUEST_FILTER_ALL', extra: object = {}) {
  return ids(await listAll(w.res(responder), 'ListIncomingRequests', { relation_id: w.relationId, filter, ...extra }));
}

async function flags(w: World, responder: number) {
  return (await w.res(responder).call('GetResponderFlags', { relation_id: w.relationId })).flags;
}

describe('ListIncomingRequests and GetIncomingRequest', () => {
  test('any-delivery requests reach every responder unit until one answers', async () => {
    const w = await makeWorld(h, { responders: 2 });
    const a = await create(w, { common_name: 'a.example' });
    const b = await create(w, { common_name: 'b.example' });
    for (const i of [0, 1]) {
      expect(await incoming(w, i)).toEqual(ids([a, b]));
      expect(await incoming(w, i, 'REQUEST_FILTER_NEW')).toEqual(ids([a, b]));
      const seen = (await w.res(i).call('GetIncomingRequest', { request_id: a.request_id })).request;
      expect(seen).toMatchObject({ request_id: a.request_id, is_created: false, is_received: true, is_new: true, source_unit: w.requesters[0], source_ingress_address: '10.1.0.1' });
      expect(json(seen.fields)).toEqual({ common_name: 'a.example' });
    }
    await w.res(1).call('Respond', { request_id: a.request_id, fields: CERT });
    for (const i of [0, 1]) {
      expect(await incoming(w, i)).toEqual(ids([a, b]));
      expect(await incoming(w, i, 'REQUEST_FILTER_NEW')).toEqual(ids([b]));
      const seen = (await w.res(i).call('GetIncomingRequest', { request_id: a.request_id })).request;
      expect([seen.is_received, seen.is_new, seen.state]).toEqual([true, false, 'REQUEST_STATE_ANSWERED']);
    }
    expect(await incoming(w, 0, 'REQUEST_FILTER_ALL', { match_fields: struct({ common_name: 'b.example' }) })).toEqual(ids([b]));
    const answered = await w.res(0).fail('ListIncomingRequests', { relation_id: w.relationId, filter: 'REQUEST_FILTER_ANSWERED' });
    expect([answered.code, answered.fieldViolations.map((v) => v.field)]).toEqual([Code.INVALID_ARGUMENT, ['filter']]);
  });

  test('unit-delivery requests reach only the named unit', async () => {
    const w = await makeWorld(h, { responders: 2 });
    const request = await create(w, { common_name: 'u.example' }, toUnit(w.responders[1]));
    expect([request.expected_units, request.expected_count]).toEqual([[w.responders[1]], 1]);
    expect(await incoming(w, 0)).toEqual([]);
    expect(await incoming(w, 1, 'REQUEST_FILTER_NEW')).toEqual([request.request_id]);
    const hidden = await w.res(0).fail('GetIncomingRequest', { request_id: request.request_id });
    expect([hidden.code, hidden.reason]).toEqual([Code.NOT_FOUND, 'REQUEST_NOT_FOUND']);
    const refused = await w.res(0).fail('Respond', { request_id: request.request_id, fields: CERT });
    expect([refused.code, refused.reason]).toEqual([Code.NOT_FOUND, 'REQUEST_NOT_FOUND']);
    expect(await flags(w, 0)).toEqual({ available: true, has_requests: false, new_requests: false });
    expect(await flags(w, 1)).toEqual({ available: true, has_requests: true, new_requests: true });
    await w.res(1).call('Respond', { request_id: request.request_id, fields: CERT });
    expect(await flags(w, 1)).toEqual({ available: true, has_requests: true, new_requests: false });
  });

  test('unit delivery to a unit that has not joined is refused', async () => {
    const w = await makeWorld(h, { responders: 2 });
    await h.registry.call('LeaveRelation', { relation_id: w.relationId, unit: w.responders[1] });
    const revision = h.server.store.currentRevision();
    const error = await w.req().fail('CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: 'x' }), ...toUnit(w.responders[1]) });
    expect([error.code, error.reason]).toEqual([Code.FAILED_PRECONDITION, 'UNIT_NOT_JOINED']);
    const unknown = await w.req().fail('CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: 'x' }), ...toUnit(`${w.responderApp}/9`) });
    expect([unknown.code, unknown.reason]).toEqual([Code.NOT_FOUND, 'UNIT_NOT_FOUND']);
    expect(h.server.store.currentRevision()).toBe(revision);
  });

  test('selector requests resolve the matching units at creation; each answers once', async () => {
    const w = await makeWorld(h, {
      responders: 4,
      labels: { 0: { zone: 'a', tier: 'db' }, 1: { zone: 'a', tier: 'cache', canary: 'yes' }, 2: { zone: 'b', tier: 'db' }, 3: { zone: 'a', tier: 'cache' } },
    });
    const request = await create(w, { common_name: 's.example' }, toSelector('zone=a,tier in (db,cache),!canary'));
    expect(request).toMatchObject({ expected_units: [w.responders[0], w.responders[3]], expected_count: 2, state: 'REQUEST_STATE_PENDING' });
    expect(request.delivery).toEqual({ mode: 'DELIVERY_MODE_SELECTOR', unit: '', selector: 'zone=a,tier in (db,cache),!canary' });
    expect(await incoming(w, 1)).toEqual([]);
    expect(await incoming(w, 2)).toEqual([]);
    // Later label changes do not change who is expected.
    await h.registry.call('UpdateUnit', { name: w.responders[2], labels: { zone: 'a', tier: 'db' } });
    expect(await incoming(w, 2)).toEqual([]);

    await w.res(3).call('Respond', { request_id: request.request_id, fields: CERT });
    let seen = (await w.req().call('GetRequest', { request_id: request.request_id })).request;
    expect([seen.state, seen.response_count]).toEqual(['REQUEST_STATE_PENDING', 1]);
    expect((await w.res(3).call('GetIncomingRequest', { request_id: request.request_id })).request.is_new).toBe(false);
    expect((await w.res(0).call('GetIncomingRequest', { request_id: request.request_id })).request.is_new).toBe(true);
    const twice = await w.res(3).fail('Respond', { request_id: request.request_id, fields: CERT });
    expect([twice.code, twice.reason]).toEqual([Code.FAILED_PRECONDITION, 'ALREADY_ANSWERED']);
    const outsider = await w.res(1).fail('Respond', { request_id: request.request_id, fields: CERT });
    expect(outsider.code).toBe(Code.NOT_FOUND);

    await w.res(0).call('Respond', { request_id: request.request_id, fields: CERT });
    seen = (await w.req().call('GetRequest', { request_id: request.request_id })).request;
    expect([seen.state, seen.response_count]).toEqual(['REQUEST_STATE_ANSWERED', 2]);
    const { responses } = await w.req().call('ListResponses', { request_id: request.request_id });
    expect(responses.map((r: { responder_unit: string }) => r.responder_unit)).toEqual([w.responders[3], w.responders[0]]);
  });

  test('a selector that matches no unit gives a request answered by nobody', async () => {
    const w = await makeWorld(h, { responders: 1, labels: { 0: { zone: 'a' } } });
    const request = await create(w, { common_name: 'n.example' }, toSelector('zone=z'));
    expect([request.expected_count, request.expected_units, request.state]).toEqual([0, [], 'REQUEST_STATE_ANSWERED']);
    expect(await incoming(w, 0)).toEqual([]);
  });

  test('pages of incoming requests', async () => {
    const w = await makeWorld(h);
    const created = [];
    for (let i = 0; i < 5; i += 1) created.push(await create(w, { common_name: `p${i}.example` }));
    const first = await w.res().call('ListIncomingRequests', { relation_id: w.relationId, page_size: 3 });
    expect(ids(first.requests)).toEqual(ids(created.slice(0, 3)));
    const second = await w.res().call('ListIncomingRequests', { relation_id: w.relationId, page_size: 3, page_token: first.next_page_token });
    expect([ids(second.requests), second.next_page_token]).toEqual([ids(created.slice(3)), '']);
  });
});

describe('Respond', () => {
  test('a success stores the response fields and completes an any-delivery request', async () => {
    const w = await makeWorld(h, { responders: 2 });
    const request = await create(w, { common_name: 'ok.example' });
    const before = h.server.store.currentRevision();
    const started = Date.now();
    const { response } = await w.res(0).call('Respond', { request_id: request.request_id, fields: CERT });
    expect(response).toMatchObject({ request_id: request.request_id, relation_id: w.relationId, responder_unit: w.responders[0], code: 0, error: '', revision: String(before + 1) });
    expect(json(response.fields)).toEqual({ key: 'K', cert: 'C', ca: 'CA' });
    expect(millis(response.create_time)).toBeGreaterThanOrEqual(started - 1);
    const after = (await w.req().call('GetRequest', { request_id: request.request_id })).request;
    expect(after).toMatchObject({ state: 'REQUEST_STATE_ANSWERED', response_count: 1, revision: String(before + 1), create_revision: request.create_revision });
    expect(millis(after.update_time)).toBeGreaterThanOrEqual(millis(after.create_time));

    const late = await w.res(1).fail('Respond', { request_id: request.request_id, fields: CERT });
    expect([late.code, late.reason, late.metadata.request_id]).toEqual([Code.FAILED_PRECONDITION, 'REQUEST_COMPLETED', request.request_id]);
    const again = await w.res(0).fail('Respond', { request_id: request.request_id, fields: CERT });
    expect([again.code, again.reason]).toEqual([Code.FAILED_PRECONDITION, 'ALREADY_ANSWERED']);
    expect(h.server.store.currentRevision()).toBe(before + 1);
    expect((await w.req().call('ListResponses', { request_id: request.request_id })).responses).toEqual([response]);
  });

  test('a failure carries code and error; required fields may be left out', async () => {
    const w = await makeWorld(h);
    const request = await create(w, { common_name: 'fail.example' });
    const { response } = await w.res().call('Respond', { request_id: request.request_id, code: 7, error: 'policy forbids this name', fields: struct({ ca: 'CA' }) });
    expect([response.code, response.error, json(response.fields)]).toEqual([7, 'policy forbids this name', { ca: 'CA' }]);
    const seen = (await w.req().call('GetRequest', { request_id: request.request_id })).request;
    expect([seen.state, seen.response_count]).toEqual(['REQUEST_STATE_ANSWERED', 1]);
    const { responses } = await w.req().call('ListResponses', { request_id: request.request_id });
    expect(responses.map((r: { code: number; error: string }) => [r.code, r.error])).toEqual([[7, 'policy forbids this name']]);
  });

  test('the response is validated against the interface response message', async () => {
    const w = await makeWorld(h, { iface: 'http' });
    const request = (await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct({ service_name: 'site' }) })).request;
    const revision = h.server.store.currentRevision();
    const bad = await w.res().fail('Respond', { request_id: request.request_id, fields: struct({ hostname: 'h', port: -1 }) });
    expect([bad.code, bad.fieldViolations.map((v) => v.field)]).toEqual([Code.INVALID_ARGUMENT, ['fields.port']]);
    const fraction = await w.res().fail('Respond', { request_id: request.request_id, fields: struct({ hostname: 'h', port: 80.5 }) });
    expect(fraction.fieldViolations.map((v) => v.field)).toEqual(['fields.port']);
    expect(h.server.store.currentRevision()).toBe(revision);
    const { response } = await w.res().call('Respond', { request_id: request.request_id, fields: struct({ hostname: 'web-0.internal', port: 8080 }) });
    expect(json(response.fields)).toEqual({ hostname: 'web-0.internal', port: 8080 });
  });
});

describe('ClaimRequest and ReleaseRequest', () => {
  test('a claim hides an any-delivery request from other units until released', async () => {
    const w = await makeWorld(h, { responders: 2 });
    const request = await create(w, { common_name: 'c.example' });
    const started = Date.now();
    const claimed = (await w.res(0).call('ClaimRequest', { request_id: request.request_id, lease: { seconds: 60 } })).request;
    expect(claimed.claim.unit).toBe(w.responders[0]);
    const lease = millis(claimed.claim.expire_time) - started;
    expect(lease).toBeGreaterThanOrEqual(59_000);
    expect(lease).toBeLessThanOrEqual(61_000);
    expect([claimed.is_received, claimed.is_new]).toEqual([true, true]);

    expect(await incoming(w, 0, 'REQUEST_FILTER_NEW')).toEqual([request.request_id]);
    expect(await incoming(w, 1, 'REQUEST_FILTER_NEW')).toEqual([]);
    expect(await incoming(w, 1)).toEqual([request.request_id]);
    expect((await w.res(1).call('GetIncomingRequest', { request_id: request.request_id })).request.is_new).toBe(false);
    expect(await flags(w, 0)).toEqual({ available: true, has_requests: true, new_requests: true });
    expect(await flags(w, 1)).toEqual({ available: true, has_requests: true, new_requests: false });

    const revision = h.server.store.currentRevision();
    const steal = await w.res(1).fail('ClaimRequest', { request_id: request.request_id });
    expect([steal.code, steal.reason, steal.metadata.claimed_by]).toEqual([Code.FAILED_PRECONDITION, 'REQUEST_CLAIMED', w.responders[0]]);
    const answer = await w.res(1).fail('Respond', { request_id: request.request_id, fields: CERT });
    expect([answer.code, answer.reason]).toEqual([Code.FAILED_PRECONDITION, 'REQUEST_CLAIMED']);
    const release = await w.res(1).fail('ReleaseRequest', { request_id: request.request_id });
    expect([release.code, release.reason]).toEqual([Code.FAILED_PRECONDITION, 'NOT_CLAIMED']);
    expect(h.server.store.currentRevision()).toBe(revision);

    // Renewal by the holder moves the lease; the default lease is 30 s.
    const renewed = (await w.res(0).call('ClaimRequest', { request_id: request.request_id })).request;
    const renewedLease = millis(renewed.claim.expire_time) - Date.now();
    expect(renewedLease).toBeGreaterThan(28_000);
    expect(renewedLease).toBeLessThanOrEqual(30_000);

    const released = (await w.res(0).call('ReleaseRequest', { request_id: request.request_id })).request;
    expect(released.claim).toBeNull();
    expect(await incoming(w, 1, 'REQUEST_FILTER_NEW')).toEqual([request.request_id]);
    expect(await flags(w, 1)).toEqual({ available: true, has_requests: true, new_requests: true });
    await w.res(1).call('Respond', { request_id: request.request_id, fields: CERT });
    expect(await flags(w, 0)).toEqual({ available: true, has_requests: true, new_requests: false });
  });

  test('answering ends the claim', async () => {
    const w = await makeWorld(h, { responders: 2 });
    const request = await create(w, { common_name: 'a.example' });
    await w.res(0).call('ClaimRequest', { request_id: request.request_id });
    await w.res(0).call('Respond', { request_id: request.request_id, fields: CERT });
    const seen = (await w.req().call('GetRequest', { request_id: request.request_id })).request;
    expect([seen.claim, seen.state]).toEqual([null, 'REQUEST_STATE_ANSWERED']);
  });

  test('an expired lease makes the request new again for every unit', async () => {
    const w = await makeWorld(h, { responders: 2 });
    const request = await create(w, { common_name: 'lease.example' });
    await w.res(0).call('ClaimRequest', { request_id: request.request_id, lease: { nanos: 200_000_000 } });
    expect(await incoming(w, 1, 'REQUEST_FILTER_NEW')).toEqual([]);
    // Lease expiry is driven by the server's sweep timer; there is no event to await on this API.
    await eventually(async () => expect(await incoming(w, 1, 'REQUEST_FILTER_NEW')).toEqual([request.request_id]));
    const seen = (await w.res(1).call('GetIncomingRequest', { request_id: request.request_id })).request;
    expect([seen.claim, seen.is_new, seen.state]).toEqual([null, true, 'REQUEST_STATE_PENDING']);
    expect(await flags(w, 1)).toEqual({ available: true, has_requests: true, new_requests: true });
    await w.res(1).call('Respond', { request_id: request.request_id, fields: CERT });
  });

  test('leaving the relation releases the unit’s claims', async () => {
    const w = await makeWorld(h, { responders: 2 });
    const request = await create(w, { common_name: 'leave.example' });
    await w.res(0).call('ClaimRequest', { request_id: request.request_id });
    await h.registry.call('LeaveRelation', { relation_id: w.relationId, unit: w.responders[0] });
    expect((await w.res(1).call('GetIncomingRequest', { request_id: request.request_id })).request).toMatchObject({ claim: null, is_new: true });
  });

  test('claims are only for any-delivery requests, with a lease of at most an hour', async () => {
    const w = await makeWorld(h, { responders: 2 });
    const direct = await create(w, { common_name: 'd.example' }, toUnit(w.responders[0]));
    const notAny = await w.res(0).fail('ClaimRequest', { request_id: direct.request_id });
    expect([notAny.code, notAny.reason]).toEqual([Code.FAILED_PRECONDITION, 'CLAIM_NOT_APPLICABLE']);
    const any = await create(w, { common_name: 'a.example' });
    const long = await w.res(0).fail('ClaimRequest', { request_id: any.request_id, lease: { seconds: 3601 } });
    expect([long.code, long.fieldViolations.map((v) => v.field)]).toEqual([Code.INVALID_ARGUMENT, ['lease']]);
    await w.res(1).call('Respond', { request_id: any.request_id, fields: CERT });
    const done = await w.res(0).fail('ClaimRequest', { request_id: any.request_id });
    expect([done.code, done.reason]).toEqual([Code.FAILED_PRECONDITION, 'REQUEST_COMPLETED']);
  });
});

describe('expiry', () => {
  test('a request past its time to live is expired and can no longer be answered', async () => {
    const w = await makeWorld(h);
    const request = await create(w, { common_name: 'ttl.example' }, { ttl: { nanos: 150_000_000 } });
    expect(request.state).toBe('REQUEST_STATE_PENDING');
    // Expiry is driven by the server's sweep timer; there is no event to await on this API.
    const expired = await eventually(async () => {
      const seen = (await w.req().call('GetRequest', { request_id: request.request_id })).request;
      expect(seen.state).toBe('REQUEST_STATE_EXPIRED');
      return seen;
    });
    expect(Number(expired.revision)).toBeGreaterThan(Number(request.revision));
    const late = await w.res().fail('Respond', { request_id: request.request_id, fields: CERT });
    expect([late.code, late.reason]).toEqual([Code.FAILED_PRECONDITION, 'REQUEST_EXPIRED']);
    expect(await incoming(w, 0, 'REQUEST_FILTER_NEW')).toEqual([]);
    expect(ids(await listAll(w.req(), 'ListRequests', { relation_id: w.relationId, filter: 'REQUEST_FILTER_NEW' }))).toEqual([]);
    expect(await flags(w, 0)).toEqual({ available: true, has_requests: true, new_requests: false });
  });
});

describe('GetResponderFlags', () => {
  test('has_requests and new_requests per unit, available from the requester side, merged over relations', async () => {
    const w = await makeWorld(h, { responders: 2 });
    expect(await flags(w, 0)).toEqual({ available: true, has_requests: false, new_requests: false });
    const a = await create(w, { common_name: 'a.example' }, toUnit(w.responders[0]));
    expect(await flags(w, 0)).toEqual({ available: true, has_requests: true, new_requests: true });
    expect(await flags(w, 1)).toEqual({ available: true, has_requests: false, new_requests: false });
    await w.res(0).call('Respond', { request_id: a.request_id, fields: CERT });
    expect(await flags(w, 0)).toEqual({ available: true, has_requests: true, new_requests: false });

    // A second relation with the same applications: merged flags without relation_id.
    const other = await makeWorld(h, { requesterApp: w.requesterApp, responderApp: w.responderApp, endpoint: 'more', join: false });
    await h.registry.call('JoinRelation', { relation_id: other.relationId, unit: w.responders[1] });
    expect((await w.res(1).call('GetResponderFlags', { relation_id: other.relationId })).flags).toEqual({ available: false, has_requests: false, new_requests: false });
    await h.registry.call('JoinRelation', { relation_id: other.relationId, unit: w.requesters[0] });
    await w.req().call('CreateRequest', { relation_id: other.relationId, fields: struct({ common_name: 'b.example' }) });
    expect((await w.res(1).call('GetResponderFlags', {})).flags).toEqual({ available: true, has_requests: true, new_requests: true });
    expect(await flags(w, 1)).toEqual({ available: true, has_requests: false, new_requests: false });
  });
});
