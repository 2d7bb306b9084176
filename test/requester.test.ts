// RequesterService against a real server and SQLite file: the charms.reactive
// request model as the requester sees it.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { connect } from '../src/client/index.ts';
import { Code } from '../src/errors.ts';
import { MAX_SCANNED_PER_PAGE } from '../src/request-service.ts';
import { json, startHarness, struct, type Harness } from './helpers/harness.ts';
import { UUID_V7, ids, listAll, makeWorld, millis, type World } from './helpers/world.ts';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(() => h.close());

type Fields = Parameters<typeof struct>[0];

async function create(w: World, fields: Fields, extra: object = {}, requester = 0) {
  return (await w.req(requester).call('CreateRequest', { relation_id: w.relationId, fields: struct(fields), ...extra })).request;
}

async function answer(w: World, requestId: string, responder = 0, fields: Fields = { key: 'K', cert: 'C' }) {
  return (await w.res(responder).call('Respond', { request_id: requestId, fields: struct(fields) })).response;
}

async function flags(w: World, requester = 0, relationId = w.relationId) {
  return (await w.req(requester).call('GetRequesterFlags', { relation_id: relationId })).flags;
}

describe('CreateRequest', () => {
  test('generates a UUID and stores the request with the source unit properties', async () => {
    const w = await makeWorld(h);
    const before = Date.now();
    const request = await create(w, { common_name: 'web.example', sans: ['a.example', '10.0.0.5'] });
    expect(request.request_id).toMatch(UUID_V7);
    expect(request).toMatchObject({
      relation_id: w.relationId,
      interface: 'tls-certificates',
      source_unit: w.requesters[0],
      source_ingress_address: '10.1.0.1',
      source_egress_subnets: ['10.1.0.0/24', 'fd00::/64'],
      source_labels: { role: 'web' },
      delivery: { mode: 'DELIVERY_MODE_ANY', unit: '', selector: '' },
      expected_units: [],
      expected_count: 1,
      response_count: 0,
      state: 'REQUEST_STATE_PENDING',
      claim: null,
      expire_time: null,
      is_created: true,
      is_received: false,
      is_new: false,
      revision: String(h.server.store.currentRevision()),
    });
    expect(json(request.fields)).toEqual({ common_name: 'web.example', sans: ['a.example', '10.0.0.5'] });
    expect(request.create_revision).toBe(request.revision);
    expect(request.sequence).toBe(request.create_revision);
    expect(millis(request.create_time)).toBeGreaterThanOrEqual(before - 1);
    expect(millis(request.create_time)).toBeLessThanOrEqual(Date.now());
    expect(request.update_time).toEqual(request.create_time);
    expect((await w.req().call('GetRequest', { request_id: request.request_id })).request).toEqual(request);
    // Time-ordered: a later request's id sorts after it.
    const next = await create(w, { common_name: 'later.example' });
    expect(next.request_id > request.request_id).toBe(true);
  });

  test('the source properties are those of the creating unit when it was created', async () => {
    const w = await makeWorld(h, { requesters: 2 });
    const second = await create(w, { common_name: 'b.example' }, {}, 1);
    expect([second.source_unit, second.source_ingress_address, second.source_egress_subnets]).toEqual([w.requesters[1], '10.1.0.2', ['10.1.1.0/24', 'fd00::/64']]);
    // Another unit of the requester application reads it, but did not create it.
    const seenByFirst = (await w.req(0).call('GetRequest', { request_id: second.request_id })).request;
    expect([seenByFirst.is_created, seenByFirst.is_received, seenByFirst.is_new]).toEqual([false, false, false]);
    // A later change of the unit does not rewrite the stored request.
    await h.registry.call('UpdateUnit', { name: w.requesters[1], ingress_address: '10.1.9.9', egress_subnets: [] });
    const again = (await w.req(1).call('GetRequest', { request_id: second.request_id })).request;
    expect([again.source_ingress_address, again.source_egress_subnets]).toEqual(['10.1.0.2', ['10.1.1.0/24', 'fd00::/64']]);
    const third = await create(w, { common_name: 'c.example' }, {}, 1);
    expect([third.source_ingress_address, third.source_egress_subnets]).toEqual(['10.1.9.9', []]);
  });

  test('a client-supplied request_id is kept (lower-cased)', async () => {
    const w = await makeWorld(h);
    const id = randomUUID();
    const request = await create(w, { common_name: 'x.example' }, { request_id: id.toUpperCase() });
    expect(request.request_id).toBe(id);
    expect((await w.req().call('GetRequest', { request_id: id.toUpperCase() })).request.request_id).toBe(id);
  });

  test('replaying the same request_id and body returns the original without a write', async () => {
    const w = await makeWorld(h);
    const id = randomUUID();
    const first = await w.req().call('CreateRequest', { relation_id: w.relationId, request_id: id, fields: struct({ common_name: 'r.example', sans: ['s'] }) });
    expect(first.replayed).toBe(false);
    const revision = h.server.store.currentRevision();
    // Same body, fields in another key order.
    const replay = await w.req().call('CreateRequest', { relation_id: w.relationId, request_id: id, fields: struct({ sans: ['s'], common_name: 'r.example' }) });
    expect(replay.replayed).toBe(true);
    expect(replay.request).toEqual(first.request);
    expect(h.server.store.currentRevision()).toBe(revision);
    expect(ids(await listAll(w.req(), 'ListRequests', { relation_id: w.relationId }))).toEqual([id]);

    // A replay after the request was answered returns its current state.
    await answer(w, id);
    const later = await w.req().call('CreateRequest', { relation_id: w.relationId, request_id: id, fields: struct({ common_name: 'r.example', sans: ['s'] }) });
    expect([later.replayed, later.request.state, later.request.response_count]).toEqual([true, 'REQUEST_STATE_ANSWERED', 1]);
    expect((await w.req().call('ListResponses', { request_id: id })).responses).toHaveLength(1);
  });

  test('the same request_id with a different body is ALREADY_EXISTS (REQUEST_ID_CONFLICT) and writes nothing', async () => {
    const w = await makeWorld(h, { responders: 2 });
    const id = randomUUID();
    const original = await create(w, { common_name: 'one.example' }, { request_id: id });
    const revision = h.server.store.currentRevision();
    for (const extra of [
      { fields: struct({ common_name: 'two.example' }) },
      { fields: struct({ common_name: 'one.example', sans: [] }) },
      { fields: struct({ common_name: 'one.example' }), delivery: { mode: 'DELIVERY_MODE_UNIT', unit: w.responders[1] } },
      { fields: struct({ common_name: 'one.example' }), ttl: { seconds: 60 } },
    ]) {
      const error = await w.req().fail('CreateRequest', { relation_id: w.relationId, request_id: id, ...extra });
      expect([error.code, error.reason, error.metadata]).toEqual([Code.ALREADY_EXISTS, 'REQUEST_ID_CONFLICT', { request_id: id }]);
    }
    expect(h.server.store.currentRevision()).toBe(revision);
    expect((await w.req().call('GetRequest', { request_id: id })).request).toEqual(original);
  });

  test('a request_id used on another relation is a conflict too', async () => {
    const w = await makeWorld(h);
    const other = await makeWorld(h, { requesterApp: w.requesterApp, responderApp: w.responderApp, endpoint: 'more' });
    await h.registry.call('JoinRelation', { relation_id: other.relationId, unit: w.requesters[0] });
    const id = randomUUID();
    await create(w, { common_name: 'a.example' }, { request_id: id });
    const error = await w.req().fail('CreateRequest', { relation_id: other.relationId, request_id: id, fields: struct({ common_name: 'a.example' }) });
    expect([error.code, error.reason]).toEqual([Code.ALREADY_EXISTS, 'REQUEST_ID_CONFLICT']);
    expect(await listAll(w.req(), 'ListRequests', { relation_id: other.relationId })).toEqual([]);
  });

  test('a time to live sets expire_time', async () => {
    const w = await makeWorld(h);
    const request = await create(w, { common_name: 't.example' }, { ttl: { seconds: 120, nanos: 500_000_000 } });
    expect(millis(request.expire_time) - millis(request.create_time)).toBe(120_500);
  });
});

describe('CreateOrUpdateRequest', () => {
  const cou = (w: World, match: string[], fields: Fields, extra: object = {}) =>
    w.req().call('CreateOrUpdateRequest', { relation_id: w.relationId, match_fields: match, fields: struct(fields), ...extra });

  test('creates when nothing matches, and is a no-op when the match is identical', async () => {
    const w = await makeWorld(h);
    const created = await cou(w, ['common_name'], { common_name: 'a.example', sans: ['x'] });
    expect([created.created, created.updated]).toEqual([true, false]);
    expect(created.request.request_id).toMatch(UUID_V7);
    expect(json(created.request.fields)).toEqual({ common_name: 'a.example', sans: ['x'] });
    const revision = h.server.store.currentRevision();
    const same = await cou(w, ['common_name'], { sans: ['x'], common_name: 'a.example' });
    expect([same.created, same.updated]).toEqual([false, false]);
    expect(same.request).toEqual(created.request);
    expect(h.server.store.currentRevision()).toBe(revision);
    const other = await cou(w, ['common_name'], { common_name: 'b.example' });
    expect([other.created, other.updated]).toEqual([true, false]);
    expect(ids(await listAll(w.req(), 'ListRequests', { relation_id: w.relationId }))).toEqual([created.request.request_id, other.request.request_id]);
  });

  test('updates the first match in creation order, drops its responses and makes it new again', async () => {
    const w = await makeWorld(h);
    const first = await create(w, { common_name: 'dup.example', sans: ['one'] });
    const second = await create(w, { common_name: 'dup.example', sans: ['two'] });
    await answer(w, first.request_id);
    await answer(w, second.request_id);
    const secondAnswered = (await w.req().call('GetRequest', { request_id: second.request_id })).request;
    expect(await flags(w)).toEqual({ available: true, has_responses: true, all_responses: true });

    const result = await cou(w, ['common_name'], { common_name: 'dup.example', sans: ['three'] });
    expect([result.created, result.updated]).toEqual([false, true]);
    expect(result.request).toMatchObject({
      request_id: first.request_id,
      state: 'REQUEST_STATE_PENDING',
      response_count: 0,
      create_revision: first.create_revision,
      revision: String(h.server.store.currentRevision()),
      delivery: first.delivery,
    });
    expect(json(result.request.fields)).toEqual({ common_name: 'dup.example', sans: ['three'] });
    expect((await w.req().call('ListResponses', { request_id: first.request_id })).responses).toEqual([]);
    // The second match is untouched.
    const untouched = (await w.req().call('GetRequest', { request_id: second.request_id })).request;
    expect(untouched).toEqual(secondAnswered);
    expect([untouched.state, json(untouched.fields)]).toEqual(['REQUEST_STATE_ANSWERED', { common_name: 'dup.example', sans: ['two'] }]);
    expect((await w.req().call('ListResponses', { request_id: second.request_id })).responses).toHaveLength(1);
    // The responder sees it as new again and may answer it again.
    const incoming = (await w.res().call('GetIncomingRequest', { request_id: first.request_id })).request;
    expect([incoming.is_received, incoming.is_new]).toEqual([true, true]);
    expect(ids(await listAll(w.res(), 'ListIncomingRequests', { relation_id: w.relationId, filter: 'REQUEST_FILTER_NEW' }))).toEqual([first.request_id]);
    expect(await flags(w)).toEqual({ available: true, has_responses: true, all_responses: false });
    await answer(w, first.request_id, 0, { key: 'K2', cert: 'C2' });
    const { responses } = await w.req().call('ListResponses', { request_id: first.request_id });
    expect(responses.map((r: { fields: object }) => json(r.fields as never))).toEqual([{ key: 'K2', cert: 'C2' }]);
  });

  test('matches on several field names, with values taken from fields', async () => {
    const w = await makeWorld(h);
    const a = await create(w, { common_name: 'm.example', sans: ['a'] });
    const b = await create(w, { common_name: 'm.example', sans: ['b'] });
    // match on both: only b has sans ['b'] — identical, so a no-op on b.
    const same = await cou(w, ['common_name', 'sans'], { common_name: 'm.example', sans: ['b'] });
    expect([same.created, same.updated, same.request.request_id]).toEqual([false, false, b.request_id]);
    // A field absent from `fields` matches requests where it is absent.
    const absent = await cou(w, ['sans'], { common_name: 'n.example' });
    expect([absent.created, absent.updated]).toEqual([true, false]);
    const again = await cou(w, ['sans'], { common_name: 'o.example' });
    expect([again.created, again.updated, again.request.request_id]).toEqual([false, true, absent.request.request_id]);
    expect((await w.req().call('GetRequest', { request_id: a.request_id })).request.revision).toBe(a.revision);
  });

  test('matches only within the relation', async () => {
    const w = await makeWorld(h);
    const other = await makeWorld(h, { requesterApp: w.requesterApp, responderApp: w.responderApp, endpoint: 'more' });
    await h.registry.call('JoinRelation', { relation_id: other.relationId, unit: w.requesters[0] });
    await h.registry.call('JoinRelation', { relation_id: other.relationId, unit: w.responders[0] });
    const elsewhere = (await w.req().call('CreateRequest', { relation_id: other.relationId, fields: struct({ common_name: 'scoped.example', sans: ['old'] }) })).request;
    await w.res().call('Respond', { request_id: elsewhere.request_id, fields: struct({ key: 'K', cert: 'C' }) });
    const answered = (await w.req().call('GetRequest', { request_id: elsewhere.request_id })).request;

    const result = await cou(w, ['common_name'], { common_name: 'scoped.example', sans: ['new'] });
    expect([result.created, result.updated, result.request.relation_id]).toEqual([true, false, w.relationId]);
    expect(result.request.request_id).not.toBe(elsewhere.request_id);
    expect((await w.req().call('GetRequest', { request_id: elsewhere.request_id })).request).toEqual(answered);
    expect((await w.req().call('ListResponses', { request_id: elsewhere.request_id })).responses).toHaveLength(1);
  });

  test('an update keeps the original delivery', async () => {
    const w = await makeWorld(h, { responders: 2 });
    const created = await cou(w, ['common_name'], { common_name: 'd.example' }, { delivery: { mode: 'DELIVERY_MODE_UNIT', unit: w.responders[1] } });
    expect(created.request.expected_units).toEqual([w.responders[1]]);
    const updated = await cou(w, ['common_name'], { common_name: 'd.example', sans: ['z'] });
    expect(updated.updated).toBe(true);
    expect(updated.request.delivery).toEqual({ mode: 'DELIVERY_MODE_UNIT', unit: w.responders[1], selector: '' });
    expect(updated.request.expected_units).toEqual([w.responders[1]]);
  });

  test('match_fields must name fields of the request message', async () => {
    const w = await makeWorld(h);
    const revision = h.server.store.currentRevision();
    const unknown = await w.req().fail('CreateOrUpdateRequest', { relation_id: w.relationId, match_fields: ['common_name', 'colour'], fields: struct({ common_name: 'x' }) });
    expect([unknown.code, unknown.fieldViolations.map((v) => v.field)]).toEqual([Code.INVALID_ARGUMENT, ['match_fields[1]']]);
    const none = await w.req().fail('CreateOrUpdateRequest', { relation_id: w.relationId, match_fields: [], fields: struct({ common_name: 'x' }) });
    expect([none.code, none.fieldViolations.map((v) => v.field)]).toEqual([Code.INVALID_ARGUMENT, ['match_fields']]);
    expect(h.server.store.currentRevision()).toBe(revision);
    expect(await listAll(w.req(), 'ListRequests', { relation_id: w.relationId })).toEqual([]);
  });
});

describe('ListRequests', () => {
  test('finds by field equality and state, in creation order', async () => {
    const w = await makeWorld(h);
    const a = await create(w, { common_name: 'a.example', sans: ['x'] });
    const b = await create(w, { common_name: 'b.example', sans: ['x', 'y'] });
    const c = await create(w, { common_name: 'a.example' });
    const d = await create(w, { common_name: 'c.example', sans: ['x'] });
    await answer(w, b.request_id);
    await answer(w, c.request_id);
    const list = async (extra: object) => ids(await listAll(w.req(), 'ListRequests', { relation_id: w.relationId, ...extra }));
    expect(await list({})).toEqual(ids([a, b, c, d]));
    expect(await list({ filter: 'REQUEST_FILTER_ALL' })).toEqual(ids([a, b, c, d]));
    expect(await list({ filter: 'REQUEST_FILTER_NEW' })).toEqual(ids([a, d]));
    expect(await list({ filter: 'REQUEST_FILTER_ANSWERED' })).toEqual(ids([b, c]));
    expect(await list({ match_fields: struct({ common_name: 'a.example' }) })).toEqual(ids([a, c]));
    expect(await list({ match_fields: struct({ common_name: 'a.example' }), filter: 'REQUEST_FILTER_NEW' })).toEqual(ids([a]));
    expect(await list({ match_fields: struct({ sans: ['x'] }) })).toEqual(ids([a, d]));
    expect(await list({ match_fields: struct({ sans: ['x', 'y'] }) })).toEqual(ids([b]));
    expect(await list({ match_fields: struct({ common_name: 'a.example', sans: ['x'] }) })).toEqual(ids([a]));
    expect(await list({ match_fields: struct({ common_name: 'zzz' }) })).toEqual([]);
  });

  test('pages with page_size and next_page_token; the last page has no token', async () => {
    const w = await makeWorld(h);
    const created = [];
    for (let i = 0; i < 5; i += 1) created.push(await create(w, { common_name: `p${i}.example`, sans: i % 2 === 0 ? ['even'] : [] }));
    const pages: string[][] = [];
    let page_token = '';
    do {
      const page = await w.req().call('ListRequests', { relation_id: w.relationId, page_size: 2, page_token });
      pages.push(ids(page.requests));
      page_token = page.next_page_token;
    } while (page_token !== '' && pages.length < 10);
    expect(pages).toEqual([ids(created.slice(0, 2)), ids(created.slice(2, 4)), ids(created.slice(4))]);

    // Filtered pages: 3 matches in pages of 3 is one page with no token.
    const even = await w.req().call('ListRequests', { relation_id: w.relationId, page_size: 3, match_fields: struct({ sans: ['even'] }) });
    expect(ids(even.requests)).toEqual(ids([created[0], created[2], created[4]] as never));
    expect(even.next_page_token).toBe('');
    // 4 items in pages of 2: the second page is the last.
    const four = await w.req().call('ListRequests', { relation_id: w.relationId, page_size: 4 });
    expect([four.requests.length, four.next_page_token !== '']).toEqual([4, true]);
    const rest = await w.req().call('ListRequests', { relation_id: w.relationId, page_size: 4, page_token: four.next_page_token });
    expect([ids(rest.requests), rest.next_page_token]).toEqual([ids(created.slice(4)), '']);
    const exact = await w.req().call('ListRequests', { relation_id: w.relationId, page_size: 5 });
    expect([exact.requests.length, exact.next_page_token]).toEqual([5, '']);
  });

  test('pages stop at a quarter of the largest message sent: large requests are listed in full over several pages, on both sides', async () => {
    const maxSendBytes = 64 * 1024;
    const small = await startHarness({ maxSendBytes });
    try {
      const w = await makeWorld(small);
      // 100 KB of requests in all, more than one message holds; each large one fits a message alone.
      const names = ['large-a', 'small-b', 'small-c', 'large-d', 'small-e', 'large-f', 'large-g', 'large-h'];
      const created = [];
      for (const name of names) created.push(await create(w, { common_name: name.startsWith('large') ? name.padEnd(20_000, 'x') : name }));
      const byName = (requests: { fields: Parameters<typeof json>[0] }[]) => requests.map((request) => String(json(request.fields).common_name).slice(0, 7));
      for (const [rpc, method] of [
        [w.req(), 'ListRequests'],
        [w.res(), 'ListIncomingRequests'],
      ] as const) {
        const pages: string[][] = [];
        let page_token = '';
        do {
          const page = await rpc.call(method, { relation_id: w.relationId, page_token });
          pages.push(byName(page.requests));
          page_token = page.next_page_token;
        } while (page_token !== '' && pages.length < 20);
        expect(pages.flat(), method).toEqual(names);
        // A large request (some 60 KB by the estimate) fills a page alone; the small ones share one.
        expect(pages, method).toEqual([['large-a'], ['small-b', 'small-c'], ['large-d'], ['small-e'], ['large-f'], ['large-g'], ['large-h']]);
      }
      expect(ids(await listAll(w.req(), 'ListRequests', { relation_id: w.relationId }))).toEqual(ids(created));
    } finally {
      await small.close();
    }
  });

  test('a page looks at no more stored requests than its limit: a match past them comes on a later page, which tokens and the SDK reach', async () => {
    const w = await makeWorld(h);
    const filler = { relation_id: w.relationId, fields: struct({ common_name: 'filler.example' }) };
    for (let done = 0; done < MAX_SCANNED_PER_PAGE; done += 500) {
      await Promise.all(Array.from({ length: 500 }, () => w.req().call('CreateRequest', filler)));
    }
    const needle = await create(w, { common_name: 'needle.example' });
    const match_fields = struct({ common_name: 'needle.example' });
    for (const [rpc, method] of [
      [w.req(), 'ListRequests'],
      [w.res(), 'ListIncomingRequests'],
    ] as const) {
      const first = await rpc.call(method, { relation_id: w.relationId, match_fields });
      expect([first.requests.length, first.next_page_token === ''], method).toEqual([0, false]);
      const second = await rpc.call(method, { relation_id: w.relationId, match_fields, page_token: first.next_page_token });
      expect([ids(second.requests), second.next_page_token], method).toEqual([[needle.request_id], '']);
    }
    const connection = connect(h.server.address, { unit: w.requesters[0] as string });
    try {
      const found = await connection.requester('tls-certificates', { relation: w.relationId }).find({ common_name: 'needle.example' });
      expect(found?.request_id).toBe(needle.request_id);
    } finally {
      connection.close();
    }
  }, 60_000);

  test('a page token is refused for a different query', async () => {
    const w = await makeWorld(h);
    for (let i = 0; i < 3; i += 1) await create(w, { common_name: `t${i}.example` });
    const first = await w.req().call('ListRequests', { relation_id: w.relationId, page_size: 1 });
    expect(first.next_page_token).not.toBe('');
    for (const changed of [
      { filter: 'REQUEST_FILTER_NEW' },
      { match_fields: struct({ common_name: 't1.example' }) },
      { relation_id: '' },
    ]) {
      const error = await w.req().fail('ListRequests', { relation_id: w.relationId, page_size: 1, page_token: first.next_page_token, ...changed });
      expect([error.code, error.reason, error.fieldViolations.map((v) => v.field)]).toEqual([Code.INVALID_ARGUMENT, 'INVALID_ARGUMENT', ['page_token']]);
    }
    // The responder side is another query too.
    const responder = await w.res().fail('ListIncomingRequests', { relation_id: w.relationId, page_size: 1, page_token: first.next_page_token });
    expect(responder.fieldViolations.map((v) => v.field)).toEqual(['page_token']);
    const garbage = await w.req().fail('ListRequests', { relation_id: w.relationId, page_token: 'not a token' });
    expect(garbage.fieldViolations.map((v) => v.field)).toEqual(['page_token']);
    // The same query with another page size may continue.
    const next = await w.req().call('ListRequests', { relation_id: w.relationId, page_size: 5, page_token: first.next_page_token });
    expect(next.requests).toHaveLength(2);
  });

  test('without relation_id, lists every relation the unit joined as requester', async () => {
    const w = await makeWorld(h);
    const other = await makeWorld(h, { requesterApp: w.requesterApp, responderApp: w.responderApp, endpoint: 'more' });
    await h.registry.call('JoinRelation', { relation_id: other.relationId, unit: w.requesters[0] });
    const a = await create(w, { common_name: 'one.example' });
    const b = (await w.req().call('CreateRequest', { relation_id: other.relationId, fields: struct({ common_name: 'two.example' }) })).request;
    const c = await create(w, { common_name: 'three.example' });
    expect(ids(await listAll(w.req(), 'ListRequests', {}))).toEqual(ids([a, b, c]));
    const page = await w.req().call('ListRequests', { page_size: 2 });
    expect(ids(page.requests)).toEqual(ids([a, b]));
  });
});

describe('responses', () => {
  test('ListResponses returns responses in arrival order; ResponseByField finds them by request fields', async () => {
    const w = await makeWorld(h, { responders: 3, labels: { 0: { tier: 'db' }, 1: { tier: 'db' }, 2: { tier: 'web' } } });
    const request = await create(w, { common_name: 'sel.example' }, { delivery: { mode: 'DELIVERY_MODE_SELECTOR', selector: 'tier=db' } });
    expect([request.expected_count, request.expected_units]).toEqual([2, [w.responders[0], w.responders[1]]]);
    const r1 = await answer(w, request.request_id, 1, { key: 'K1', cert: 'C1' });
    const r0 = (await w.res(0).call('Respond', { request_id: request.request_id, code: 5, error: 'no capacity' })).response;
    const { responses } = await w.req().call('ListResponses', { request_id: request.request_id });
    expect(responses).toEqual([r1, r0]);
    expect(responses.map((r: { responder_unit: string; code: number; error: string }) => [r.responder_unit, r.code, r.error])).toEqual([
      [w.responders[1], 0, ''],
      [w.responders[0], 5, 'no capacity'],
    ]);
    expect(json(r1.fields)).toEqual({ key: 'K1', cert: 'C1' });
    expect(json(r0.fields)).toEqual({});

    const byField = await w.req().call('ResponseByField', { relation_id: w.relationId, match_fields: struct({ common_name: 'sel.example' }) });
    expect(byField.request.request_id).toBe(request.request_id);
    expect(byField.responses).toEqual([r1, r0]);
    const none = await w.req().call('ResponseByField', { relation_id: w.relationId, match_fields: struct({ common_name: 'nothing.example' }) });
    expect(none).toEqual({ request: null, responses: [], next_page_token: '' });
  });

  test('ListResponses pages with page_size and next_page_token, and refuses a token of another request', async () => {
    const w = await makeWorld(h, { responders: 5 });
    const everyone = { delivery: { mode: 'DELIVERY_MODE_SELECTOR', selector: '' } };
    const request = await create(w, { common_name: 'five.example' }, everyone);
    const other = await create(w, { common_name: 'other.example' }, everyone);
    const answered = [];
    for (let i = 0; i < 5; i++) answered.push(await answer(w, request.request_id, i));
    await answer(w, other.request_id, 0);
    const pages = [];
    let page_token = '';
    do {
      const page = await w.req().call('ListResponses', { request_id: request.request_id, page_size: 2, page_token });
      pages.push(page.responses);
      page_token = page.next_page_token;
    } while (page_token !== '' && pages.length < 10);
    expect(pages).toEqual([answered.slice(0, 2), answered.slice(2, 4), answered.slice(4)]);
    const exact = await w.req().call('ListResponses', { request_id: request.request_id, page_size: 5 });
    expect([exact.responses.length, exact.next_page_token]).toEqual([5, '']);

    const first = await w.req().call('ListResponses', { request_id: request.request_id, page_size: 1 });
    for (const refused of [
      { request_id: other.request_id, page_token: first.next_page_token },
      { request_id: request.request_id, page_token: 'not a token' },
      { request_id: request.request_id, page_size: 1001 },
    ]) {
      const error = await w.req().fail('ListResponses', refused);
      expect([error.code, error.reason, error.fieldViolations.map((v) => v.field)]).toEqual([Code.INVALID_ARGUMENT, 'INVALID_ARGUMENT', [Object.keys(refused)[1]]]);
    }
    // The token is bound to the request, however its id is spelled.
    const next = await w.req().call('ListResponses', { request_id: request.request_id.toUpperCase(), page_size: 4, page_token: first.next_page_token });
    expect([next.responses, next.next_page_token]).toEqual([answered.slice(1), '']);
  });

  test('pages of responses stop at a quarter of the largest message sent: large responses are read in full over several pages; ResponseByField gives the first', async () => {
    const maxSendBytes = 64 * 1024;
    const small = await startHarness({ maxSendBytes });
    try {
      const w = await makeWorld(small, { responders: 8 });
      const request = await create(w, { common_name: 'many.example' }, { delivery: { mode: 'DELIVERY_MODE_SELECTOR', selector: '' } });
      const sizes = ['large', 'small', 'small', 'large', 'small', 'large', 'large', 'large'];
      const answered: { responder_unit: string }[] = [];
      for (const [i, size] of sizes.entries()) answered.push(await answer(w, request.request_id, i, { key: `K${i}`, cert: size === 'large' ? 'x'.repeat(20_000) : 'C' }));
      // 100 KB of responses in all: one message would pass the send limit, so every page that arrives is under it.
      expect(JSON.stringify(answered).length).toBeGreaterThan(maxSendBytes);
      const rest = async (from: string) => {
        const pages = [];
        for (let page_token = from; page_token !== '' && pages.length < 20; ) {
          const page = await w.req().call('ListResponses', { request_id: request.request_id, page_token });
          pages.push(page.responses);
          page_token = page.next_page_token;
        }
        return pages;
      };
      const first = await w.req().call('ListResponses', { request_id: request.request_id });
      const pages = [first.responses, ...(await rest(first.next_page_token))];
      expect(pages.flat()).toEqual(answered);
      // A large response (some 60 KB by the estimate) fills a page alone; the small ones share one.
      const unitsOf = (page: typeof answered) => page.map((response) => Number(response.responder_unit.split('/')[1]));
      expect(pages.map(unitsOf)).toEqual([[0], [1, 2], [3], [4], [5], [6], [7]]);

      const byField = await w.req().call('ResponseByField', { relation_id: w.relationId, match_fields: struct({ common_name: 'many.example' }) });
      expect([byField.request.request_id, byField.responses]).toEqual([request.request_id, answered.slice(0, 1)]);
      expect([...byField.responses, ...(await rest(byField.next_page_token)).flat()]).toEqual(answered);
    } finally {
      await small.close();
    }
  });

  test('ResponseByField takes the first matching request in creation order', async () => {
    const w = await makeWorld(h);
    const first = await create(w, { common_name: 'f.example', sans: ['1'] });
    const second = await create(w, { common_name: 'f.example', sans: ['2'] });
    await answer(w, second.request_id);
    const found = await w.req().call('ResponseByField', { match_fields: struct({ common_name: 'f.example' }) });
    expect([found.request.request_id, found.responses]).toEqual([first.request_id, []]);
    const bySans = await w.req().call('ResponseByField', { relation_id: w.relationId, match_fields: struct({ sans: ['2'] }) });
    expect([bySans.request.request_id, bySans.responses.length]).toEqual([second.request_id, 1]);
  });

  test('WithdrawRequest removes the request and its responses', async () => {
    const w = await makeWorld(h);
    const keep = await create(w, { common_name: 'keep.example' });
    const drop = await create(w, { common_name: 'drop.example' });
    await answer(w, drop.request_id);
    const before = h.server.store.currentRevision();
    const { revision } = await w.req().call('WithdrawRequest', { request_id: drop.request_id });
    expect(revision).toBe(String(before + 1));
    for (const method of ['GetRequest', 'ListResponses', 'WithdrawRequest']) {
      const error = await w.req().fail(method, { request_id: drop.request_id });
      expect([error.code, error.reason]).toEqual([Code.NOT_FOUND, 'REQUEST_NOT_FOUND']);
    }
    expect(ids(await listAll(w.req(), 'ListRequests', { relation_id: w.relationId }))).toEqual([keep.request_id]);
    expect(ids(await listAll(w.res(), 'ListIncomingRequests', { relation_id: w.relationId }))).toEqual([keep.request_id]);
    expect((await w.req().call('ResponseByField', { relation_id: w.relationId, match_fields: struct({ common_name: 'drop.example' }) })).request).toBeNull();
    expect(await flags(w)).toEqual({ available: true, has_responses: false, all_responses: false });
    await w.req().call('WithdrawRequest', { request_id: keep.request_id });
    expect(await flags(w)).toEqual({ available: true, has_responses: false, all_responses: false });
  });
});

describe('GetRequesterFlags', () => {
  test('follow the requests and responses of the relation', async () => {
    const w = await makeWorld(h, { responders: 2 });
    expect(await flags(w)).toEqual({ available: true, has_responses: false, all_responses: false });
    const a = await create(w, { common_name: 'a.example' });
    expect(await flags(w)).toEqual({ available: true, has_responses: false, all_responses: false });
    await answer(w, a.request_id);
    expect(await flags(w)).toEqual({ available: true, has_responses: true, all_responses: true });
    const b = await create(w, { common_name: 'b.example' }, { delivery: { mode: 'DELIVERY_MODE_SELECTOR', selector: '' } });
    expect(b.expected_count).toBe(2);
    expect(await flags(w)).toEqual({ available: true, has_responses: true, all_responses: false });
    await answer(w, b.request_id, 0);
    expect(await flags(w)).toEqual({ available: true, has_responses: true, all_responses: false });
    // A failure is a response too.
    await w.res(1).call('Respond', { request_id: b.request_id, code: 1, error: 'refused' });
    expect(await flags(w)).toEqual({ available: true, has_responses: true, all_responses: true });
  });

  test('without relation_id, merge every joined relation: all_responses needs each relation complete', async () => {
    const w = await makeWorld(h);
    const other = await makeWorld(h, { requesterApp: w.requesterApp, responderApp: w.responderApp, endpoint: 'more', join: false });
    await h.registry.call('JoinRelation', { relation_id: other.relationId, unit: w.requesters[0] });
    // other has no responder: not available there, available overall.
    expect(await flags(w, 0, other.relationId)).toEqual({ available: false, has_responses: false, all_responses: false });
    const a = await create(w, { common_name: 'a.example' });
    await answer(w, a.request_id);
    expect(await flags(w, 0, '')).toEqual({ available: true, has_responses: true, all_responses: true });
    await w.req().call('CreateRequest', { relation_id: other.relationId, fields: struct({ common_name: 'b.example' }) });
    expect(await flags(w, 0, '')).toEqual({ available: true, has_responses: true, all_responses: false });
  });
});
