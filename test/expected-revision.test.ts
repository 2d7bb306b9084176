// Optimistic concurrency against a real server: create-or-update, withdraw,
// respond and claim with an expected_revision, as unary calls and as session
// commands. The request's current revision writes; a stale one is ABORTED
// (REVISION_MISMATCH) naming both revisions, and nothing is written; every
// other error (invalid, not found, already answered, claimed) comes first.
import { randomUUID } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Code, ERROR_DOMAIN, fromServiceError, type RelgateError } from '../src/errors.ts';
import { CERT, CSR, expectError, relate, toUnit, type Relation } from './helpers/fixture.ts';
import { startHarness, struct, type Harness } from './helpers/harness.ts';
import { rawFail, statusDetails } from './helpers/status.ts';
import { ackError, type Msg } from './helpers/streams.ts';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(() => h.close());

type Transport = 'unary' | 'session';
type Command = 'create_or_update' | 'withdraw' | 'respond' | 'claim';

/** Each command's side and unary method. */
const RPC = {
  create_or_update: ['requester', 'CreateOrUpdateRequest'],
  withdraw: ['requester', 'WithdrawRequest'],
  respond: ['responder', 'Respond'],
  claim: ['responder', 'ClaimRequest'],
} as const;

/** Runs a command as a unit of its side (the first unless `unit` says), as a unary call or on a session of its own. */
async function run(r: Relation, transport: Transport, command: Command, body: Msg, unit = 0): Promise<{ result?: Msg; error?: RelgateError }> {
  const [side, method] = RPC[command];
  if (transport === 'unary') {
    try {
      return { result: await (side === 'requester' ? r.req(unit) : r.res(unit)).call(method, body) };
    } catch (error) {
      return { error: fromServiceError(error as grpc.ServiceError) };
    }
  }
  const session = await r.session((side === 'requester' ? r.requesters : r.responders)[unit] as string);
  try {
    const ack = await session.send({ [command]: body });
    return ack.error ? { error: ackError(ack) } : { result: ack[command] as Msg };
  } finally {
    session.end();
    await session.closed;
  }
}

async function succeeds(r: Relation, transport: Transport, command: Command, body: Msg): Promise<Msg> {
  const { result, error } = await run(r, transport, command, body);
  if (error) throw new Error(`${command} failed: ${error.message}`);
  return result as Msg;
}

async function fails(r: Relation, transport: Transport, command: Command, body: Msg, unit = 0): Promise<RelgateError> {
  const { error } = await run(r, transport, command, body, unit);
  if (!error) throw new Error(`${command} succeeded but was expected to fail`);
  return error;
}

const MATCH = ['common_name'];
const upsert = (r: Relation, sans: string[], extra: Msg = {}) => ({ relation_id: r.id, match_fields: MATCH, fields: struct({ ...CSR, sans }), ...extra });

/** A request changed once since it was created: its first (stale) and its current revision. */
async function changedRequest(r: Relation): Promise<{ id: string; stale: string; current: string }> {
  const created = (await r.req().call('CreateOrUpdateRequest', upsert(r, ['a.example']))).request;
  const updated = (await r.req().call('CreateOrUpdateRequest', upsert(r, ['b.example']))).request;
  expect(updated.request_id).toBe(created.request_id);
  expect(Number(updated.revision)).toBeGreaterThan(Number(created.revision));
  return { id: created.request_id, stale: created.revision, current: updated.revision };
}

/** The request and its responses as its requester reads them. */
async function stored(r: Relation, requestId: string) {
  const { request } = await r.req().call('GetRequest', { request_id: requestId });
  const { responses } = await r.req().call('ListResponses', { request_id: requestId });
  return { request, responses };
}

/** The refusal is ABORTED, REVISION_MISMATCH, naming both revisions; the request and the store are as they were. */
async function expectStale(r: Relation, requestId: string, refuse: () => Promise<RelgateError>, expected: string, current: string): Promise<void> {
  const before = await stored(r, requestId);
  const revision = h.server.store.currentRevision();
  const error = await refuse();
  expectError(error, Code.ABORTED, 'REVISION_MISMATCH');
  expect(error.metadata).toEqual({ request_id: requestId, expected_revision: expected, current_revision: current });
  expect(error.message).toBe(`expected revision ${expected}, but request ${requestId} is at revision ${current}; nothing was written`);
  expect(h.server.store.currentRevision()).toBe(revision);
  expect(await stored(r, requestId)).toEqual(before);
}

describe.each(['unary', 'session'] as const)('expected revision, %s', (transport) => {
  test('create-or-update: the current revision updates; a stale one is ABORTED and changes nothing', async () => {
    const r = await relate(h);
    const { id, stale, current } = await changedRequest(r);
    await expectStale(r, id, () => fails(r, transport, 'create_or_update', upsert(r, ['c.example'], { expected_revision: stale })), stale, current);
    // The same fields as stored, which would write nothing, are refused too: OK means the request was at that revision.
    await expectStale(r, id, () => fails(r, transport, 'create_or_update', upsert(r, ['b.example'], { expected_revision: stale })), stale, current);
    const updated = await succeeds(r, transport, 'create_or_update', upsert(r, ['c.example'], { expected_revision: current }));
    expect([updated.created, updated.updated, updated.request.request_id, updated.request.fields]).toEqual([false, true, id, struct({ ...CSR, sans: ['c.example'] })]);
    // 0 sets no condition.
    const unconditional = await succeeds(r, transport, 'create_or_update', upsert(r, ['d.example'], { expected_revision: '0' }));
    expect([unconditional.updated, unconditional.request.request_id]).toEqual([true, id]);
  });

  test('create-or-update: a revision expected where no request matches is ABORTED and creates nothing', async () => {
    const r = await relate(h);
    const { current } = await changedRequest(r);
    const list = async () => (await r.req().call('ListRequests', { relation_id: r.id })).requests;
    const before = await list();
    const revision = h.server.store.currentRevision();
    const fields = { common_name: 'other.example' };
    const error = await fails(r, transport, 'create_or_update', { relation_id: r.id, match_fields: MATCH, fields: struct(fields), expected_revision: current });
    expectError(error, Code.ABORTED, 'REVISION_MISMATCH');
    expect(error.metadata).toEqual({ relation_id: r.id, expected_revision: current, current_revision: '0' });
    expect(error.message).toBe(`expected revision ${current}, but no request of relation ${r.id} matches match_fields (current revision 0); nothing was written`);
    expect(h.server.store.currentRevision()).toBe(revision);
    expect(await list()).toEqual(before);
  });

  test('withdraw: a stale revision is ABORTED and the request stays; the current one withdraws it', async () => {
    const r = await relate(h);
    const { id, stale, current } = await changedRequest(r);
    await expectStale(r, id, () => fails(r, transport, 'withdraw', { request_id: id, expected_revision: stale }), stale, current);
    const withdrawn = await succeeds(r, transport, 'withdraw', { request_id: id, expected_revision: current });
    expect(Number(withdrawn.revision)).toBeGreaterThan(Number(current));
    expectError(await r.req().fail('GetRequest', { request_id: id }), Code.NOT_FOUND, 'REQUEST_NOT_FOUND');
  });

  test('respond: an answer to what the responder saw is refused once the requester updated the request', async () => {
    const r = await relate(h);
    const { id, stale, current } = await changedRequest(r);
    await expectStale(r, id, () => fails(r, transport, 'respond', { request_id: id, fields: struct(CERT), expected_revision: stale }), stale, current);
    // A failure answer is conditional alike.
    await expectStale(r, id, () => fails(r, transport, 'respond', { request_id: id, code: 2, error: 'no', expected_revision: stale }), stale, current);
    const { response } = await succeeds(r, transport, 'respond', { request_id: id, fields: struct(CERT), expected_revision: current });
    expect(response.responder_unit).toBe(r.responders[0]);
    const after = await stored(r, id);
    expect([after.request.state, after.responses.length]).toEqual(['REQUEST_STATE_ANSWERED', 1]);
  });

  test('claim: a stale revision is ABORTED and nothing is claimed; the current one claims', async () => {
    const r = await relate(h);
    const { id, stale, current } = await changedRequest(r);
    await expectStale(r, id, () => fails(r, transport, 'claim', { request_id: id, expected_revision: stale }), stale, current);
    const { request } = await succeeds(r, transport, 'claim', { request_id: id, expected_revision: current });
    expect(request.claim.unit).toBe(r.responders[0]);
    // The claim changed the request: renewing it expects the claim's revision.
    await expectStale(r, id, () => fails(r, transport, 'claim', { request_id: id, expected_revision: current }), current, request.revision);
    expect((await succeeds(r, transport, 'claim', { request_id: id, expected_revision: request.revision })).request.claim.unit).toBe(r.responders[0]);
  });

  test('a negative or too large expected_revision is INVALID_ARGUMENT naming the field, for each command', async () => {
    const r = await relate(h);
    const { id } = await changedRequest(r);
    const revision = h.server.store.currentRevision();
    const bodies: [Command, Msg][] = [
      ['create_or_update', upsert(r, ['x.example'])],
      ['withdraw', { request_id: id }],
      ['respond', { request_id: id, fields: struct(CERT) }],
      ['claim', { request_id: id }],
    ];
    for (const [command, body] of bodies) {
      for (const [value, description] of [
        ['-1', 'must not be negative (0 sets no condition)'],
        ['9223372036854775807', `must be at most ${Number.MAX_SAFE_INTEGER}`],
      ]) {
        const error = await fails(r, transport, command, { ...body, expected_revision: value });
        expectError(error, Code.INVALID_ARGUMENT, 'INVALID_ARGUMENT');
        expect(error.fieldViolations, command).toEqual([{ field: 'expected_revision', description }]);
      }
    }
    expect(h.server.store.currentRevision()).toBe(revision);
  });

  test('other errors come first: NOT_FOUND (revealing no revision), INVALID_ARGUMENT, ALREADY_ANSWERED, REQUEST_CLAIMED', async () => {
    const r = await relate(h, { responders: 2 });
    const { id, stale } = await changedRequest(r);
    const missing = randomUUID();
    expectError(await fails(r, transport, 'withdraw', { request_id: missing, expected_revision: '1' }), Code.NOT_FOUND, 'REQUEST_NOT_FOUND');
    expectError(await fails(r, transport, 'respond', { request_id: missing, fields: struct(CERT), expected_revision: '1' }), Code.NOT_FOUND, 'REQUEST_NOT_FOUND');
    // A request addressed to another unit does not exist for this one, and neither does its revision.
    const other = (await r.req().call('CreateRequest', { relation_id: r.id, fields: struct({ common_name: 'unit.example' }), delivery: toUnit(r.responders[1] as string) })).request;
    const hidden = await fails(r, transport, 'claim', { request_id: other.request_id, expected_revision: '1' });
    expectError(hidden, Code.NOT_FOUND, 'REQUEST_NOT_FOUND');
    expect(hidden.metadata.current_revision).toBeUndefined();
    // Bad fields are reported as such, whatever the revision.
    expectError(await fails(r, transport, 'respond', { request_id: id, fields: struct({ key: 'K' }), expected_revision: stale }), Code.INVALID_ARGUMENT, 'INVALID_ARGUMENT');
    // Claimed by another unit: REQUEST_CLAIMED, which re-reading would not change, not REVISION_MISMATCH.
    await r.res(1).call('ClaimRequest', { request_id: id });
    expectError(await fails(r, transport, 'respond', { request_id: id, fields: struct(CERT), expected_revision: stale }), Code.FAILED_PRECONDITION, 'REQUEST_CLAIMED');
    expectError(await fails(r, transport, 'claim', { request_id: id, expected_revision: stale }), Code.FAILED_PRECONDITION, 'REQUEST_CLAIMED');
    // A retried answer whose acknowledgement was lost learns that it was stored, though its own answer changed the request.
    const { request: seen } = await r.res(1).call('GetIncomingRequest', { request_id: id });
    await r.res(1).call('Respond', { request_id: id, fields: struct(CERT), expected_revision: seen.revision });
    expectError(await fails(r, transport, 'respond', { request_id: id, fields: struct(CERT), expected_revision: seen.revision }, 1), Code.FAILED_PRECONDITION, 'ALREADY_ANSWERED');
  });
});

test('a revision mismatch carries a google.rpc.Status with the call\'s code and message and the ErrorInfo', async () => {
  const r = await relate(h);
  const { id, stale, current } = await changedRequest(r);
  const error = await rawFail(r.req(), 'WithdrawRequest', { request_id: id, expected_revision: stale });
  const details = statusDetails(error);
  expect([error.code, details.code, details.message]).toEqual([Code.ABORTED, Code.ABORTED, error.details]);
  expect(details.errorInfo).toEqual({ reason: 'REVISION_MISMATCH', domain: ERROR_DOMAIN, metadata: { request_id: id, expected_revision: stale, current_revision: current } });
  expect(details.typeUrls).toEqual(['type.googleapis.com/google.rpc.ErrorInfo']);
});
