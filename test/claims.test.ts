// Claims and expiry against a real server: a responder unit's lease on an
// any-delivery request hides it from the other units until it is released
// or lapses; a request's time to live ends it as EXPIRED for both sides.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Code } from '../src/errors.ts';
import { startHarness, struct, type Harness } from './helpers/harness.ts';
import { CERT, CSR, create, expectError, ids, incoming, relate, respond, seconds, toSelector, toUnit, type Relation } from './helpers/fixture.ts';
import { requestEvent, watchReady, type Event } from './helpers/streams.ts';
import { millis } from './helpers/world.ts';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(() => h.close());

const claim = (r: Relation, i: number, requestId: string, leaseMs = 30_000) => r.res(i).call('ClaimRequest', { request_id: requestId, lease: seconds(leaseMs) });
const newFlag = async (r: Relation, i: number) => (await r.res(i).call('GetResponderFlags', { relation_id: r.id })).flags.new_requests;
const claimedBy = (unit: string | null) => (event: Event) => (event.request.claim?.unit ?? null) === unit;

describe('claims', () => {
  test('a claim hides the request from the other units; they cannot answer or claim it', async () => {
    const r = await relate(h, { responders: 3 });
    const request = await create(r);
    const watch = await watchReady(r.res(1), { relation_id: r.id });
    const { request: claimed } = await claim(r, 0, request.request_id, 60_000);
    expect(claimed.claim.unit).toBe(r.responders[0]);
    expect(claimed.is_new).toBe(true);
    const seen = await watch.events.next(requestEvent('MODIFIED', request.request_id));
    expect([seen.request.claim.unit, seen.request.is_new]).toEqual([r.responders[0], false]);
    expect(await incoming(r, 0)).toEqual([request.request_id]);
    expect(await incoming(r, 1)).toEqual([]);
    expect(await incoming(r, 2)).toEqual([]);
    expect([await newFlag(r, 0), await newFlag(r, 1), await newFlag(r, 2)]).toEqual([true, false, false]);
    for (const i of [1, 2]) {
      expectError(await r.res(i).fail('Respond', { request_id: request.request_id, fields: struct(CERT) }), Code.FAILED_PRECONDITION, 'REQUEST_CLAIMED');
      expectError(await r.res(i).fail('ClaimRequest', { request_id: request.request_id }), Code.FAILED_PRECONDITION, 'REQUEST_CLAIMED');
      expectError(await r.res(i).fail('ReleaseRequest', { request_id: request.request_id }), Code.FAILED_PRECONDITION, 'NOT_CLAIMED');
    }
    await respond(r, request.request_id, 0);
    const done = await watch.events.next(requestEvent('MODIFIED', request.request_id));
    expect([done.request.state, done.request.claim]).toEqual(['REQUEST_STATE_ANSWERED', null]);
    watch.cancel();
  });

  test('the claimer renews its lease; a renewed claim outlives the first lease', async () => {
    const r = await relate(h, { responders: 2 });
    const kept = await create(r, { fields: struct({ common_name: 'kept.example' }) });
    const lapsing = await create(r, { fields: struct({ common_name: 'lapsing.example' }) });
    const watch = await watchReady(r.res(1), { relation_id: r.id });
    const first = (await claim(r, 0, kept.request_id, 300)).request;
    await claim(r, 0, lapsing.request_id, 300);
    const renewed = (await claim(r, 0, kept.request_id, 60_000)).request;
    expect(millis(renewed.claim.expire_time) - millis(first.claim.expire_time)).toBeGreaterThan(50_000);
    // The lease that was not renewed lapses; the renewed one, taken at the same time, does not.
    await watch.events.next(requestEvent('MODIFIED', lapsing.request_id, claimedBy(null)), 10_000);
    expect(await incoming(r, 1)).toEqual([lapsing.request_id]);
    expectError(await r.res(1).fail('Respond', { request_id: kept.request_id, fields: struct(CERT) }), Code.FAILED_PRECONDITION, 'REQUEST_CLAIMED');
    watch.cancel();
  });

  test('release makes the request new again for every unit', async () => {
    const r = await relate(h, { responders: 2 });
    const request = await create(r);
    const watch = await watchReady(r.res(1), { relation_id: r.id });
    await claim(r, 0, request.request_id);
    await watch.events.next(requestEvent('MODIFIED', request.request_id, claimedBy(r.responders[0] as string)));
    const { request: released } = await r.res(0).call('ReleaseRequest', { request_id: request.request_id });
    expect(released.claim).toBeNull();
    const event = await watch.events.next(requestEvent('MODIFIED', request.request_id, claimedBy(null)));
    expect(event.request.is_new).toBe(true);
    expect(await incoming(r, 1)).toEqual([request.request_id]);
    expect(await newFlag(r, 1)).toBe(true);
    expectError(await r.res(0).fail('ReleaseRequest', { request_id: request.request_id }), Code.FAILED_PRECONDITION, 'NOT_CLAIMED');
    await respond(r, request.request_id, 1);
    watch.cancel();
  });

  test('a lapsed lease makes the request new again, with an event in the watch', async () => {
    const r = await relate(h, { responders: 2 });
    const request = await create(r);
    const watch = await watchReady(r.res(1), { relation_id: r.id });
    await claim(r, 0, request.request_id, 200);
    await watch.events.next(requestEvent('MODIFIED', request.request_id, claimedBy(r.responders[0] as string)));
    const lapsed = await watch.events.next(requestEvent('MODIFIED', request.request_id, claimedBy(null)), 10_000);
    expect([lapsed.request.is_new, lapsed.request.state]).toEqual([true, 'REQUEST_STATE_PENDING']);
    const flags = await watch.events.next((e) => e.type === 'EVENT_TYPE_FLAGS' && e.revision === lapsed.revision);
    expect(flags.responder_flags.new_requests).toBe(true);
    expect(await incoming(r, 1)).toEqual([request.request_id]);
    const response = await respond(r, request.request_id, 1);
    expect(response.responder_unit).toBe(r.responders[1]);
    watch.cancel();
  });

  test('only requests delivered to any responder can be claimed', async () => {
    const r = await relate(h, { responders: 2, labels: { 0: { zone: 'a' } } });
    for (const delivery of [toUnit(r.responders[0] as string), toSelector('zone=a')]) {
      const request = await create(r, { delivery });
      expectError(await r.res(0).fail('ClaimRequest', { request_id: request.request_id }), Code.FAILED_PRECONDITION, 'CLAIM_NOT_APPLICABLE');
    }
  });

  test('a lease longer than an hour or negative is refused', async () => {
    const r = await relate(h);
    const request = await create(r);
    for (const lease of [{ seconds: '3601', nanos: 0 }, { seconds: '-1', nanos: 0 }]) {
      const error = await r.res(0).fail('ClaimRequest', { request_id: request.request_id, lease });
      expect([error.code, error.fieldViolations.map((v) => v.field)]).toEqual([Code.INVALID_ARGUMENT, ['lease']]);
    }
  });

  test('a unit leaving the relation gives up its claims', async () => {
    const r = await relate(h, { responders: 2 });
    const request = await create(r);
    await claim(r, 0, request.request_id);
    await h.registry.call('LeaveRelation', { relation_id: r.id, unit: r.responders[0] });
    expect(await incoming(r, 1)).toEqual([request.request_id]);
  });
});

describe('expiry', () => {
  test('past its time to live a request is EXPIRED in both sides\' watches and answers are refused', async () => {
    const r = await relate(h, { responders: 2 });
    const requesterWatch = await watchReady(r.req(), { relation_id: r.id });
    const responderWatch = await watchReady(r.res(0), { relation_id: r.id });
    const request = await create(r, { ttl: seconds(1_000) });
    expect(millis(request.expire_time) - millis(request.create_time)).toBe(1_000);
    await claim(r, 1, request.request_id);
    const isExpired = requestEvent('MODIFIED', request.request_id, (e) => e.request.state === 'REQUEST_STATE_EXPIRED');
    const [forRequester, forResponder] = await Promise.all([requesterWatch.events.next(isExpired, 10_000), responderWatch.events.next(isExpired, 10_000)]);
    expect(forRequester.request.is_created).toBe(true);
    expect([forResponder.request.is_new, forResponder.request.claim]).toEqual([false, null]);
    for (const i of [0, 1]) {
      expectError(await r.res(i).fail('Respond', { request_id: request.request_id, fields: struct(CERT) }), Code.FAILED_PRECONDITION, 'REQUEST_EXPIRED');
      expectError(await r.res(i).fail('ClaimRequest', { request_id: request.request_id }), Code.FAILED_PRECONDITION, 'REQUEST_EXPIRED');
      expect(await newFlag(r, i)).toBe(false);
    }
    expect(await incoming(r, 0)).toEqual([]);
    expect(await incoming(r, 0, 'REQUEST_FILTER_ALL')).toEqual([request.request_id]);
    // Neither new nor answered: only ALL lists it, on the requester's side too.
    const listed = async (filter: string) => ids((await r.req().call('ListRequests', { relation_id: r.id, filter })).requests);
    expect([await listed('REQUEST_FILTER_ANSWERED'), await listed('REQUEST_FILTER_NEW'), await listed('REQUEST_FILTER_ALL')]).toEqual([[], [], [request.request_id]]);
    requesterWatch.cancel();
    responderWatch.cancel();
  });

  test('a request answered in time does not expire: a later answer is told it was answered, not that it expired', async () => {
    const r = await relate(h, { responders: 2 });
    const watch = await watchReady(r.req(), { relation_id: r.id });
    const request = await create(r, { ttl: seconds(1_000) });
    await respond(r, request.request_id, 0);
    // A later request with the same time to live expires; the answered one never changes again.
    const marker = await create(r, { ttl: seconds(1_000), fields: struct({ common_name: 'marker.example' }) });
    await watch.events.next(requestEvent('MODIFIED', marker.request_id, (e) => e.request.state === 'REQUEST_STATE_EXPIRED'), 10_000);
    expect((await r.req().call('GetRequest', { request_id: request.request_id })).request.state).toBe('REQUEST_STATE_ANSWERED');
    expect(watch.events.items.filter((e) => e.request?.request_id === request.request_id).map((e) => e.request.state)).toEqual(['REQUEST_STATE_PENDING', 'REQUEST_STATE_ANSWERED']);
    expectError(await r.res(1).fail('Respond', { request_id: request.request_id, fields: struct(CERT) }), Code.FAILED_PRECONDITION, 'REQUEST_COMPLETED');
    expectError(await r.res(1).fail('ClaimRequest', { request_id: request.request_id }), Code.FAILED_PRECONDITION, 'REQUEST_COMPLETED');
    watch.cancel();
  });

  test('create-or-update reopens an expired match even with the same fields, with the time to live it gives', async () => {
    const r = await relate(h);
    const watch = await watchReady(r.req(), { relation_id: r.id });
    const upsert = (ttl: unknown) => r.req().call('CreateOrUpdateRequest', { relation_id: r.id, match_fields: ['common_name'], fields: struct(CSR), ttl });
    const { request } = await upsert(seconds(300));
    await watch.events.next(requestEvent('MODIFIED', request.request_id, (e) => e.request.state === 'REQUEST_STATE_EXPIRED'), 10_000);
    const reopened = await upsert(seconds(3_600_000));
    expect([reopened.created, reopened.updated, reopened.request.request_id, reopened.request.state]).toEqual([false, true, request.request_id, 'REQUEST_STATE_PENDING']);
    expect(millis(reopened.request.expire_time) - millis(reopened.request.update_time)).toBe(3_600_000);
    await respond(r, request.request_id, 0);
    // Live again, the same call changes nothing.
    const again = await upsert(seconds(3_600_000));
    expect([again.created, again.updated, again.request.state]).toEqual([false, false, 'REQUEST_STATE_ANSWERED']);
    watch.cancel();
  });

  test('create-or-update reopens an answered request whose time to live has since passed without that expiry', async () => {
    const r = await relate(h);
    const watch = await watchReady(r.req(), { relation_id: r.id });
    const upsert = (common_name: string, ttl?: unknown) =>
      r.req().call('CreateOrUpdateRequest', { relation_id: r.id, match_fields: ['sans'], fields: struct({ ...CSR, common_name }), ...(ttl ? { ttl } : {}) });
    const { request } = await upsert('first.example', seconds(1_000));
    await respond(r, request.request_id, 0);
    // A later request with the same time to live expires: by then the answered one's has passed too.
    const marker = await create(r, { ttl: seconds(1_000), fields: struct({ common_name: 'marker.example' }) });
    await watch.events.next(requestEvent('MODIFIED', marker.request_id, (e) => e.request.state === 'REQUEST_STATE_EXPIRED'), 10_000);
    const reopened = await upsert('second.example');
    expect([reopened.updated, reopened.request.request_id, reopened.request.state, reopened.request.expire_time]).toEqual([true, request.request_id, 'REQUEST_STATE_PENDING', null]);
    await respond(r, request.request_id, 0);
    expect((await r.req().call('GetRequest', { request_id: request.request_id })).request.state).toBe('REQUEST_STATE_ANSWERED');
    watch.cancel();
  });

  test('a time to live under a millisecond is one millisecond, not none', async () => {
    const r = await relate(h);
    const watch = await watchReady(r.req(), { relation_id: r.id });
    const request = await create(r, { ttl: { seconds: '0', nanos: 1 } });
    expect(millis(request.expire_time) - millis(request.create_time)).toBe(1);
    await watch.events.next(requestEvent('MODIFIED', request.request_id, (e) => e.request.state === 'REQUEST_STATE_EXPIRED'), 10_000);
    watch.cancel();
  });

  test('a time to live above 30 days or negative is refused', async () => {
    const r = await relate(h);
    for (const ttl of [{ seconds: String(30 * 24 * 3600 + 1), nanos: 0 }, { seconds: '0', nanos: -1 }]) {
      const error = await r.req().fail('CreateRequest', { relation_id: r.id, fields: struct({ common_name: 'x' }), ttl });
      expect([error.code, error.fieldViolations.map((v) => v.field)]).toEqual([Code.INVALID_ARGUMENT, ['ttl']]);
    }
  });
});
