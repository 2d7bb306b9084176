// Message size limits against a real server: a message over the receive
// limit is refused with RESOURCE_EXHAUSTED before any handler runs (the
// handler logs every call it runs, and the store does not move), and a
// response over the send limit fails that call only, logged with the status
// the client got, while other calls and a watch on the same connection carry on.
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Code } from '../../src/errors.ts';
import { startHarness, struct, type Harness } from '../helpers/harness.ts';
import { SessionClient, requestEvent, watch } from '../helpers/streams.ts';
import { makeWorld, snapshot, type World } from '../helpers/world.ts';

const RECEIVE_LIMIT = 64 * 1024;
const SEND_LIMIT = 96 * 1024;
/** One request's fields: well under both limits on its own. */
const FIELD_BYTES = 40 * 1024;
/** A request's fields just under the receive limit. */
const LARGE_REQUEST_BYTES = 60 * 1024;

/** Server log lines, parsed. */
class LogLines extends Writable {
  readonly lines: { method?: string; msg?: string; code?: string }[] = [];
  override _write(chunk: Buffer, _encoding: string, done: () => void): void {
    for (const line of chunk.toString().split('\n').filter(Boolean)) this.lines.push(JSON.parse(line) as never);
    done();
  }
  calls(method: string) {
    return this.lines.filter((line) => line.msg === 'rpc' && line.method === method);
  }
}

let h: Harness;
let w: World;
const log = new LogLines();

beforeAll(async () => {
  h = await startHarness({ maxReceiveBytes: RECEIVE_LIMIT, maxSendBytes: SEND_LIMIT, logLevel: 'info', logDestination: log });
  w = await makeWorld(h);
});
afterAll(() => h.close());

const fieldsOf = (bytes: number) => struct({ common_name: 'big.example', sans: [`${'a'.repeat(bytes)}.example`] });

describe('receive limit', () => {
  test('a message over the limit is refused with RESOURCE_EXHAUSTED before any handler runs', async () => {
    const before = await snapshot(h, [w]);
    const revision = h.server.store.currentRevision();
    const handled = log.calls('RequesterService/CreateRequest').length;

    const error = await w.req().fail('CreateRequest', { relation_id: w.relationId, fields: fieldsOf(RECEIVE_LIMIT) });

    expect(error.code).toBe(Code.RESOURCE_EXHAUSTED);
    expect(error.message).toMatch(/larger than max/i);
    expect(log.calls('RequesterService/CreateRequest')).toHaveLength(handled);
    expect(h.server.store.currentRevision()).toBe(revision);
    expect(await snapshot(h, [w])).toEqual(before);
    // The connection stays usable: a message under the limit goes through.
    const { request } = await w.req().call('CreateRequest', { relation_id: w.relationId, fields: fieldsOf(FIELD_BYTES) });
    expect(Number(request.revision)).toBeGreaterThan(revision);
    expect(log.calls('RequesterService/CreateRequest')).toHaveLength(handled + 1);
  });

  test('a session command over the limit ends the stream with RESOURCE_EXHAUSTED and changes nothing', async () => {
    const revision = h.server.store.currentRevision();
    const session = new SessionClient(h.server.address, w.requesters[0] as string);
    const acked = session.send({ create: { relation_id: w.relationId, fields: fieldsOf(RECEIVE_LIMIT) } });
    await expect(acked).rejects.toThrow(/RESOURCE_EXHAUSTED/);
    expect((await session.status)?.code).toBe(Code.RESOURCE_EXHAUSTED);
    expect(h.server.store.currentRevision()).toBe(revision);
  });
});

describe('send limit', () => {
  test('a response over the limit fails that call only, and its log line says RESOURCE_EXHAUSTED', async () => {
    const one = await makeWorld(h);
    const requester = one.req();
    // A watch on the same connection that must live through the failure: of another relation of the unit, as a
    // watch of this one would carry the large request and its answer too.
    const other = await makeWorld(h, { requesterApp: one.requesterApp, responderApp: one.responderApp, endpoint: 'more', join: false });
    await h.registry.call('JoinRelation', { relation_id: other.relationId, unit: one.requesters[0] });
    const live = watch(requester, { relation_id: other.relationId, start: 'WATCH_START_NOW', progress_interval_ms: 100 });
    await live.events.next((event) => event.type === 'EVENT_TYPE_BOOKMARK');
    // A request near the receive limit and an answer that each fit a message; ResponseByField sends both in one, which
    // passes the send limit (the page of responses holds at least one, however large).
    const { request } = await requester.call('CreateRequest', { relation_id: one.relationId, fields: fieldsOf(LARGE_REQUEST_BYTES) });
    await one.res().call('Respond', { request_id: request.request_id, fields: struct({ key: 'k'.repeat(FIELD_BYTES), cert: 'C' }) });

    const error = await requester.fail('ResponseByField', { relation_id: one.relationId, match_fields: struct({ common_name: 'big.example' }) });
    expect(error.code).toBe(Code.RESOURCE_EXHAUSTED);
    expect(error.message).toMatch(/larger than max/i);
    // The handler gave grpc-js the reply; the log says what the client got.
    expect(log.calls('RequesterService/ResponseByField').at(-1)?.code).toBe('RESOURCE_EXHAUSTED');

    // The same connection still answers, and the watch still delivers.
    const got = await requester.call('GetRequest', { request_id: request.request_id });
    expect(got.request.response_count).toBe(1);
    expect(log.calls('RequesterService/GetRequest').at(-1)?.code).toBe('OK');
    const next = (await requester.call('CreateRequest', { relation_id: other.relationId, fields: fieldsOf(10) })).request.request_id;
    await live.events.next(requestEvent('ADDED', next));
    live.cancel();
  });
});
