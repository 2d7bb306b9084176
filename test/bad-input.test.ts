// Every class of bad input: the exact status code, ErrorInfo reason and
// field-violation paths, a google.rpc.Status in grpc-status-details-bin that
// repeats the call's own code and message, and a store left untouched.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Code } from '../src/errors.ts';
import path from 'node:path';
import { json, startHarness, struct, type Harness, type Rpc } from './helpers/harness.ts';
import { requestEvent, watchReady } from './helpers/streams.ts';
import { rawFail, statusDetails } from './helpers/status.ts';
import { makeWorld, must, snapshot, type World } from './helpers/world.ts';
import { recordRequestChange } from '../src/relations.ts';
import { fromServiceError } from '../src/errors.ts';
import protobuf from 'protobufjs';
import { MAX_FIELD_DEPTH, canonicalFields, validateFields } from '../src/fields.ts';
import type { Json, JsonObject } from '../src/struct.ts';

let h: Harness;
let w: World;
let pendingId: string;
let answeredId: string;
/** A registered unit of the requester application that has not joined. */
let idle: string;
/** A registered unit of an application outside the relation. */
let stranger: string;

beforeAll(async () => {
  h = await startHarness();
  w = await makeWorld(h, { responders: 2 });
  idle = `${w.requesterApp}/5`;
  await h.registry.call('RegisterUnit', { name: idle });
  await h.registry.call('RegisterApplication', { name: 'outsider' });
  stranger = 'outsider/0';
  await h.registry.call('RegisterUnit', { name: stranger });
  answeredId = (await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: 'answered.example' }) })).request.request_id;
  await w.res().call('Respond', { request_id: answeredId, fields: struct({ key: 'K', cert: 'C' }) });
  pendingId = (await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: 'pending.example' }) })).request.request_id;
});
afterAll(() => h.close());

interface Case {
  name: string;
  rpc: () => Rpc;
  method: string;
  request: () => object;
  code: Code;
  reason: string;
  /** Field-violation paths, in the order reported. */
  fields?: string[];
  /** A substring of the (first) violation's description. */
  description?: string;
}

const requester = () => w.req();
const responder = () => w.res();
const registry = () => h.registry;
const create = (extra: object) => () => ({ relation_id: w.relationId, fields: struct({ common_name: 'x.example' }), ...extra });
const withFields = (fields: Parameters<typeof struct>[0]) => create({ fields: struct(fields) });
const selector = (text: string) => create({ delivery: { mode: 'DELIVERY_MODE_SELECTOR', selector: text } });
const names = (count: number) => Array.from({ length: count }, (_, i) => `f${i}`);
const requirements = (count: number) => names(count).map((name) => `${name}=a`).join(',');
const manyFields = (count: number) => struct(Object.fromEntries(names(count).map((name) => [name, 'x'])));
const INVALID = { code: Code.INVALID_ARGUMENT, reason: 'INVALID_ARGUMENT' };
const UUID_ONE_SHORT = '123e4567-e89b-42d3-a456-42661417400';

const CASES: Case[] = [
  // Interface fields.
  { name: 'unknown field', rpc: requester, method: 'CreateRequest', request: withFields({ common_name: 'x', colour: 'red' }), ...INVALID, fields: ['fields.colour'], description: 'unknown field' },
  { name: 'wrong JSON types', rpc: requester, method: 'CreateRequest', request: withFields({ common_name: 5, sans: 'a.example' }), ...INVALID, fields: ['fields.common_name', 'fields.sans'] },
  { name: 'wrong JSON type in a list', rpc: requester, method: 'CreateRequest', request: withFields({ common_name: 'x', sans: ['a', 2, true] }), ...INVALID, fields: ['fields.sans[1]', 'fields.sans[2]'] },
  { name: 'missing required field', rpc: requester, method: 'CreateRequest', request: withFields({ sans: ['a'] }), ...INVALID, fields: ['fields.common_name'], description: 'required' },
  { name: 'empty required field', rpc: requester, method: 'CreateRequest', request: withFields({ common_name: '' }), ...INVALID, fields: ['fields.common_name'] },
  {
    name: 'every response violation at once',
    rpc: responder,
    method: 'Respond',
    request: () => ({ request_id: pendingId, fields: struct({ ca: 5, extra: 'x' }) }),
    ...INVALID,
    fields: ['fields.ca', 'fields.extra', 'fields.key', 'fields.cert'],
  },
  { name: 'unknown and mistyped match_fields', rpc: requester, method: 'ListRequests', request: () => ({ relation_id: w.relationId, match_fields: struct({ colour: 'x', common_name: 1 }) }), ...INVALID, fields: ['match_fields.colour', 'match_fields.common_name'] },
  { name: 'unknown field in ResponseByField', rpc: requester, method: 'ResponseByField', request: () => ({ relation_id: w.relationId, match_fields: struct({ colour: 'x' }) }), ...INVALID, fields: ['match_fields.colour'] },
  // Names every JavaScript object inherits are not fields.
  { name: 'inherited names as fields', rpc: requester, method: 'CreateRequest', request: withFields({ common_name: 'x', toString: 'a', constructor: 1 }), ...INVALID, fields: ['fields.toString', 'fields.constructor'], description: 'unknown field' },
  // Plain assignment would take "__proto__" for the prototype and drop it: it is refused like any unknown field.
  { name: '"__proto__" as a field', rpc: requester, method: 'CreateRequest', request: withFields(JSON.parse('{"common_name": "x", "__proto__": {"a": 1}}')), ...INVALID, fields: ['fields.__proto__'], description: 'unknown field' },
  { name: 'an inherited name in match_fields', rpc: requester, method: 'ListRequests', request: () => ({ relation_id: w.relationId, match_fields: struct({ toString: [] }) }), ...INVALID, fields: ['match_fields.toString'] },
  { name: 'an inherited name to match on', rpc: requester, method: 'CreateOrUpdateRequest', request: create({ match_fields: ['hasOwnProperty'] }), ...INVALID, fields: ['match_fields[0]'] },
  { name: 'an inherited name in a response', rpc: responder, method: 'Respond', request: () => ({ request_id: pendingId, fields: struct({ key: 'K', cert: 'C', valueOf: 'x' }) }), ...INVALID, fields: ['fields.valueOf'] },
  { name: 'failure without an error message', rpc: responder, method: 'Respond', request: () => ({ request_id: pendingId, code: 3 }), ...INVALID, fields: ['error'] },
  // Enum numbers the protos do not define.
  { name: 'an undefined delivery mode', rpc: requester, method: 'CreateRequest', request: create({ delivery: { mode: 7 } }), ...INVALID, fields: ['delivery.mode'], description: 'has no value 7' },
  { name: 'an undefined request filter', rpc: requester, method: 'ListRequests', request: () => ({ relation_id: w.relationId, filter: 9 }), ...INVALID, fields: ['filter'] },

  // Request-level fields, all reported at once.
  {
    name: 'every request-level violation at once',
    rpc: requester,
    method: 'CreateRequest',
    request: () => ({ relation_id: '', request_id: 'nope', ttl: { seconds: -1 }, delivery: { mode: 'DELIVERY_MODE_UNIT', unit: 'BAD' }, fields: struct({ common_name: 'x' }) }),
    ...INVALID,
    fields: ['relation_id', 'request_id', 'ttl', 'delivery.unit'],
  },
  { name: 'bad UUID on create', rpc: requester, method: 'CreateRequest', request: create({ request_id: 'not-a-uuid' }), ...INVALID, fields: ['request_id'], description: 'UUID' },
  { name: 'missing request_id on get', rpc: requester, method: 'GetRequest', request: () => ({ request_id: '' }), ...INVALID, fields: ['request_id'] },
  { name: 'bad UUID on respond', rpc: responder, method: 'Respond', request: () => ({ request_id: 'zzz', fields: struct({ key: 'K', cert: 'C' }) }), ...INVALID, fields: ['request_id'] },
  { name: 'short UUID on withdraw', rpc: requester, method: 'WithdrawRequest', request: () => ({ request_id: UUID_ONE_SHORT }), ...INVALID, fields: ['request_id'] },
  { name: 'bad UUID on claim', rpc: responder, method: 'ClaimRequest', request: () => ({ request_id: 'x' }), ...INVALID, fields: ['request_id'] },
  { name: 'negative ttl', rpc: requester, method: 'CreateRequest', request: create({ ttl: { seconds: -5 } }), ...INVALID, fields: ['ttl'], description: 'negative' },
  { name: 'negative ttl below a millisecond', rpc: requester, method: 'CreateRequest', request: create({ ttl: { seconds: 0, nanos: -1 } }), ...INVALID, fields: ['ttl'], description: 'negative' },
  { name: 'ttl over 30 days', rpc: requester, method: 'CreateRequest', request: create({ ttl: { seconds: 31 * 86400 } }), ...INVALID, fields: ['ttl'] },
  { name: 'negative lease', rpc: responder, method: 'ClaimRequest', request: () => ({ request_id: pendingId, lease: { seconds: -1 } }), ...INVALID, fields: ['lease'] },
  // A relation id is "<interface>:<number>": anything else names no relation, and is refused as such.
  { name: 'malformed relation id on create', rpc: requester, method: 'CreateRequest', request: create({ relation_id: 'a b:1' }), ...INVALID, fields: ['relation_id'], description: 'relation id' },
  { name: 'relation id without a number on list', rpc: responder, method: 'ListIncomingRequests', request: () => ({ relation_id: 'tls-certificates:' }), ...INVALID, fields: ['relation_id'] },
  { name: 'relation id with a number of letters on flags', rpc: requester, method: 'GetRequesterFlags', request: () => ({ relation_id: 'tls-certificates:abc' }), ...INVALID, fields: ['relation_id'] },
  { name: 'malformed relation id on get relation', rpc: registry, method: 'GetRelation', request: () => ({ relation_id: '%%%' }), ...INVALID, fields: ['relation_id'] },
  { name: 'relation number 0 on join', rpc: registry, method: 'JoinRelation', request: () => ({ relation_id: 'http:0', unit: w.requesters[0] }), ...INVALID, fields: ['relation_id'] },
  { name: 'page_size over 1000', rpc: requester, method: 'ListRequests', request: () => ({ relation_id: w.relationId, page_size: 1001 }), ...INVALID, fields: ['page_size'] },
  { name: 'selector on an any request', rpc: requester, method: 'CreateRequest', request: create({ delivery: { mode: 'DELIVERY_MODE_ANY', selector: 'a=b' } }), ...INVALID, fields: ['delivery.selector'] },
  { name: 'unit on a selector request', rpc: requester, method: 'CreateRequest', request: create({ delivery: { mode: 'DELIVERY_MODE_SELECTOR', unit: 'ca/0' } }), ...INVALID, fields: ['delivery.unit'] },

  // Selectors name the position of the problem.
  { name: 'selector: unclosed set', rpc: requester, method: 'CreateRequest', request: selector('zone=a,tier in (db'), ...INVALID, fields: ['delivery.selector'], description: 'at position 19' },
  { name: 'selector: empty requirement', rpc: requester, method: 'CreateRequest', request: selector('zone=a,,b'), ...INVALID, fields: ['delivery.selector'], description: 'expected a label key at position 8' },
  { name: 'selector: missing comma', rpc: requester, method: 'CreateRequest', request: selector('zone=a b'), ...INVALID, fields: ['delivery.selector'], description: 'at position 8' },
  { name: 'selector: bad key', rpc: requester, method: 'CreateRequest', request: selector('Zone_=a'), ...INVALID, fields: ['delivery.selector'], description: 'invalid label key "Zone_" at position 1' },
  { name: 'selector: set without parenthesis', rpc: requester, method: 'CreateRequest', request: selector('tier notin db'), ...INVALID, fields: ['delivery.selector'], description: 'at position 12' },
  { name: 'selector: bad value', rpc: requester, method: 'CreateRequest', request: selector('tier=a,zone!=-x'), ...INVALID, fields: ['delivery.selector'], description: 'at position 14' },
  { name: 'selector: dangling !', rpc: requester, method: 'CreateRequest', request: selector('zone,!'), ...INVALID, fields: ['delivery.selector'], description: 'expected a label key at position 7' },

  // Sizes refused before they are parsed or read.
  { name: 'selector over 4096 characters', rpc: requester, method: 'CreateRequest', request: selector(`${'zone=a,'.repeat(600)}zone=a`), ...INVALID, fields: ['delivery.selector'], description: 'must be at most 4096 characters (has 4206)' },
  { name: 'selector of over 64 requirements', rpc: requester, method: 'CreateRequest', request: selector(requirements(65)), ...INVALID, fields: ['delivery.selector'], description: 'must have at most 64 requirements (has 65)' },
  { name: 'over 64 match_fields to update on', rpc: requester, method: 'CreateOrUpdateRequest', request: create({ match_fields: names(65) }), ...INVALID, fields: ['match_fields'], description: 'must name at most 64 fields (has 65)' },
  { name: 'over 64 match_fields to list by', rpc: requester, method: 'ListRequests', request: () => ({ relation_id: w.relationId, match_fields: manyFields(65) }), ...INVALID, fields: ['match_fields'], description: 'at most 64' },
  { name: 'over 64 match_fields to list incoming requests by', rpc: responder, method: 'ListIncomingRequests', request: () => ({ relation_id: w.relationId, match_fields: manyFields(65) }), ...INVALID, fields: ['match_fields'], description: 'at most 64' },
  { name: 'over 64 match_fields in ResponseByField', rpc: requester, method: 'ResponseByField', request: () => ({ relation_id: w.relationId, match_fields: manyFields(65) }), ...INVALID, fields: ['match_fields'], description: 'at most 64' },

  // Registry input.
  { name: 'bad application name', rpc: registry, method: 'RegisterApplication', request: () => ({ name: 'Bad_Name' }), ...INVALID, fields: ['name'] },
  { name: 'bad unit name: upper case', rpc: registry, method: 'RegisterUnit', request: () => ({ name: 'WebApp/0' }), ...INVALID, fields: ['name'] },
  { name: 'bad unit name: no number', rpc: registry, method: 'RegisterUnit', request: () => ({ name: 'webapp' }), ...INVALID, fields: ['name'] },
  { name: 'bad unit name: leading zero', rpc: registry, method: 'RegisterUnit', request: () => ({ name: `${w.requesterApp}/01` }), ...INVALID, fields: ['name'] },
  { name: 'bad unit name: empty', rpc: registry, method: 'GetUnit', request: () => ({ name: '' }), ...INVALID, fields: ['name'] },
  { name: 'bad unit name on join', rpc: registry, method: 'JoinRelation', request: () => ({ relation_id: w.relationId, unit: 'web/x' }), ...INVALID, fields: ['unit'] },
  { name: 'an undefined side on join', rpc: registry, method: 'JoinRelation', request: () => ({ relation_id: w.relationId, unit: w.requesters[0], side: 7 }), ...INVALID, fields: ['side'] },
  { name: 'bad unit name in delivery', rpc: requester, method: 'CreateRequest', request: create({ delivery: { mode: 'DELIVERY_MODE_UNIT', unit: 'nope' } }), ...INVALID, fields: ['delivery.unit'] },
  {
    name: 'bad CIDRs',
    rpc: registry,
    method: 'RegisterUnit',
    request: () => ({ name: `${w.requesterApp}/7`, egress_subnets: ['10.0.0.0/33', '10.0.0.1', 'banana/8', '10.0.0.0/24', '::1/129', '10.0.0.0/8/8'] }),
    ...INVALID,
    fields: ['egress_subnets[0]', 'egress_subnets[1]', 'egress_subnets[2]', 'egress_subnets[4]', 'egress_subnets[5]'],
    description: 'CIDR',
  },
  {
    name: 'bad labels',
    rpc: registry,
    method: 'RegisterUnit',
    request: () => ({ name: `${w.requesterApp}/7`, labels: { '-bad': 'x', good: 'bad value!', 'a/b/c': 'x', fine: '' } }),
    ...INVALID,
    fields: ['labels.-bad', 'labels.good', 'labels.a/b/c'],
  },
  { name: 'bad ingress address', rpc: registry, method: 'UpdateUnit', request: () => ({ name: w.requesters[0], ingress_address: 'not an address!' }), ...INVALID, fields: ['ingress_address'] },
  {
    name: 'every unit violation at once',
    rpc: registry,
    method: 'RegisterUnit',
    request: () => ({ name: 'X', ingress_address: '::g', egress_subnets: ['x'], labels: { '!': 'v' } }),
    ...INVALID,
    fields: ['name', 'ingress_address', 'egress_subnets[0]', 'labels.!'],
  },
  {
    name: 'every relation violation at once',
    rpc: registry,
    method: 'CreateRelation',
    request: () => ({}),
    ...INVALID,
    fields: ['interface', 'requester_application', 'requester_endpoint', 'responder_application', 'responder_endpoint'],
  },

  // Not found.
  { name: 'unknown relation on create', rpc: requester, method: 'CreateRequest', request: create({ relation_id: 'tls-certificates:99999' }), code: Code.NOT_FOUND, reason: 'RELATION_NOT_FOUND' },
  { name: 'unknown relation on list', rpc: responder, method: 'ListIncomingRequests', request: () => ({ relation_id: 'tls-certificates:424242' }), code: Code.NOT_FOUND, reason: 'RELATION_NOT_FOUND' },
  { name: 'unknown relation on join', rpc: registry, method: 'JoinRelation', request: () => ({ relation_id: 'http:424242', unit: w.requesters[0] }), code: Code.NOT_FOUND, reason: 'RELATION_NOT_FOUND' },
  { name: 'unknown request', rpc: requester, method: 'GetRequest', request: () => ({ request_id: '123e4567-e89b-42d3-a456-426614174000' }), code: Code.NOT_FOUND, reason: 'REQUEST_NOT_FOUND' },

  // Who is calling.
  { name: 'missing relgate-unit (requester)', rpc: () => h.requester(''), method: 'CreateRequest', request: create({}), code: Code.UNAUTHENTICATED, reason: 'UNIT_REQUIRED' },
  { name: 'missing relgate-unit (responder)', rpc: () => h.responder(''), method: 'ListIncomingRequests', request: () => ({}), code: Code.UNAUTHENTICATED, reason: 'UNIT_REQUIRED' },
  { name: 'malformed relgate-unit', rpc: () => h.requester('Web App'), method: 'CreateRequest', request: create({}), code: Code.UNAUTHENTICATED, reason: 'INVALID_UNIT' },
  { name: 'unknown unit', rpc: () => h.requester(`${w.requesterApp}/42`), method: 'CreateRequest', request: create({}), code: Code.UNAUTHENTICATED, reason: 'UNKNOWN_UNIT' },
  { name: 'unknown unit (responder)', rpc: () => h.responder(`${w.responderApp}/42`), method: 'Respond', request: () => ({ request_id: pendingId, fields: struct({ key: 'K', cert: 'C' }) }), code: Code.UNAUTHENTICATED, reason: 'UNKNOWN_UNIT' },
  { name: 'responder unit as requester', rpc: () => h.requester(w.responders[0] as string), method: 'CreateRequest', request: create({}), code: Code.PERMISSION_DENIED, reason: 'NOT_A_MEMBER' },
  { name: 'requester unit as responder', rpc: () => h.responder(w.requesters[0] as string), method: 'ListIncomingRequests', request: () => ({ relation_id: w.relationId }), code: Code.PERMISSION_DENIED, reason: 'NOT_A_MEMBER' },
  { name: 'unit of an unrelated application', rpc: () => h.requester(stranger), method: 'ListRequests', request: () => ({ relation_id: w.relationId }), code: Code.PERMISSION_DENIED, reason: 'NOT_A_MEMBER' },
  { name: 'unrelated unit cannot read a request', rpc: () => h.requester(stranger), method: 'GetRequest', request: () => ({ request_id: pendingId }), code: Code.NOT_FOUND, reason: 'REQUEST_NOT_FOUND' },
  { name: 'unit not joined', rpc: () => h.requester(idle), method: 'CreateRequest', request: create({}), code: Code.FAILED_PRECONDITION, reason: 'UNIT_NOT_JOINED' },
  { name: 'unit not joined reads flags', rpc: () => h.requester(idle), method: 'GetRequesterFlags', request: () => ({ relation_id: w.relationId }), code: Code.FAILED_PRECONDITION, reason: 'UNIT_NOT_JOINED' },

  // Wrong state.
  { name: 'answer to an answered request', rpc: () => w.res(1), method: 'Respond', request: () => ({ request_id: answeredId, fields: struct({ key: 'K', cert: 'C' }) }), code: Code.FAILED_PRECONDITION, reason: 'REQUEST_COMPLETED' },
  { name: 'second answer by the same unit', rpc: responder, method: 'Respond', request: () => ({ request_id: answeredId, fields: struct({ key: 'K', cert: 'C' }) }), code: Code.FAILED_PRECONDITION, reason: 'ALREADY_ANSWERED' },
  { name: 'release without a claim', rpc: responder, method: 'ReleaseRequest', request: () => ({ request_id: pendingId }), code: Code.FAILED_PRECONDITION, reason: 'NOT_CLAIMED' },
  { name: 'registering an existing unit', rpc: registry, method: 'RegisterUnit', request: () => ({ name: w.requesters[0] }), code: Code.ALREADY_EXISTS, reason: 'UNIT_EXISTS' },
];

describe('bad input', () => {
  test.each(CASES.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const revision = h.server.store.currentRevision();
    const contents = await snapshot(h, [w]);
    const raw = await rawFail(c.rpc(), c.method, c.request());
    const error = fromServiceError(raw);

    expect(raw.code).toBe(c.code);
    expect(error.reason).toBe(c.reason);
    expect(raw.details).not.toBe('');
    expect(error.fieldViolations.map((v) => v.field)).toEqual(c.fields ?? []);
    if (c.description) expect(error.fieldViolations[0]?.description).toContain(c.description);
    for (const violation of error.fieldViolations) expect(violation.description).not.toBe('');

    // The details trailer repeats the call's own code and message.
    const details = statusDetails(raw);
    expect(details.code).toBe(raw.code);
    expect(details.message).toBe(raw.details);
    expect(details.errorInfo).toMatchObject({ reason: c.reason, domain: 'relgate.dev' });
    expect(details.typeUrls[0]).toBe('type.googleapis.com/google.rpc.ErrorInfo');
    expect(details.fieldViolations?.map((v) => v.field) ?? []).toEqual(c.fields ?? []);

    // Nothing was written.
    expect(h.server.store.currentRevision()).toBe(revision);
    expect(await snapshot(h, [w])).toEqual(contents);
  });

  test('a selector and match_fields at their limits pass the size checks', async () => {
    const longest = `tier in (${['aa', ...Array(2042).fill('a')].join(',')})`;
    expect(longest.length).toBe(4096);
    for (const text of [requirements(64), longest]) {
      const { request } = await w.req().call('CreateRequest', create({ delivery: { mode: 'DELIVERY_MODE_SELECTOR', selector: text } })());
      expect(request.delivery.selector).toBe(text);
      await w.req().call('WithdrawRequest', { request_id: request.request_id });
    }
    // 64 names are each checked against the interface, and refused for what they are, not for how many.
    const listed = await w.req().fail('ListRequests', { relation_id: w.relationId, match_fields: manyFields(64) });
    expect(listed.fieldViolations[0]?.field).toBe('match_fields.f0');
    const upserted = await w.req().fail('CreateOrUpdateRequest', create({ match_fields: names(64) })());
    expect(upserted.fieldViolations[0]?.field).toBe('match_fields[0]');
  });

  test('the message names the first violation and counts the rest', async () => {
    const error = await w.res().fail('Respond', { request_id: pendingId, fields: struct({}) });
    expect(error.message).toBe('fields.key: required field is missing or empty (and 1 more)');
  });

  test('bad input never crashes the server', async () => {
    const after = await w.req().call('GetRequest', { request_id: pendingId });
    expect(after.request.state).toBe('REQUEST_STATE_PENDING');
    const { interfaces } = await h.registry.call('ListInterfaces');
    expect(interfaces.length).toBeGreaterThan(0);
  });
});

describe('limits grpc-js enforces itself', () => {
  test('a message over the receive or send limit carries google.rpc.Status details like every other error', async () => {
    const small = await startHarness({ maxReceiveBytes: 8192, maxSendBytes: 4096 });
    try {
      const w = await makeWorld(small);
      const tooBigIn = await rawFail(w.req(), 'CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: 'x'.repeat(10000) }) });
      // A request that comes in whole but is too large to send back: stored, though the reply fails, and listed alone.
      const tooBigReply = await rawFail(w.req(), 'CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: 'a'.repeat(5000) }) });
      const tooBigOut = await rawFail(w.req(), 'ListRequests', { relation_id: w.relationId });
      for (const error of [tooBigIn, tooBigReply, tooBigOut]) {
        expect(error.code).toBe(Code.RESOURCE_EXHAUSTED);
        expect(statusDetails(error)).toMatchObject({ code: error.code, message: error.details, errorInfo: { reason: 'MESSAGE_TOO_LARGE', domain: 'relgate.dev' } });
      }
    } finally {
      await small.close();
    }
  });
});

describe('interface fields of float types', () => {
  test('NaN and the infinities are refused: they have no JSON form to be stored in', () => {
    const type = protobuf.parse('syntax = "proto3"; message Reading { double value = 1; float ratio = 2; }').root.lookupType('Reading');
    const violations = validateFields(type, { value: Number.NaN, ratio: Number.POSITIVE_INFINITY }, 'fields', { checkRequired: false });
    expect(violations).toEqual([
      { field: 'fields.value', description: 'must be a finite number, not number NaN' },
      { field: 'fields.ratio', description: "must be a finite number within float's range, not number Infinity" },
    ]);
    expect(validateFields(type, { value: -1.5, ratio: 0 }, 'fields', { checkRequired: false })).toEqual([]);
  });
});

/** A message type parsed from source, with the well-known types it imports. */
function parseType(source: string, name: string): protobuf.Type {
  const parsed = protobuf.parse(source);
  for (const file of parsed.imports ?? []) parsed.root.addJSON(protobuf.common.get(file)?.nested ?? {});
  parsed.root.resolveAll();
  return parsed.root.lookupType(name);
}

const fieldsOf = (violations: { field: string }[]) => violations.map((violation) => violation.field);

describe('interface fields of other kinds', () => {
  test('two members of one oneof are refused; a proto3 optional field is no oneof', () => {
    const type = parseType('syntax = "proto3"; message M { oneof choice { string a = 1; int32 b = 2; } optional string c = 3; optional string d = 4; }', 'M');
    expect(validateFields(type, { a: 'x', b: 2 }, 'fields', { checkRequired: false })).toEqual([{ field: 'fields.b', description: 'only one of choice (a, b) may be set, and a is' }]);
    expect(validateFields(type, { a: 'x', b: null, c: 'y', d: 'z' }, 'fields', { checkRequired: false })).toEqual([]);
  });

  test('map keys are checked against their type', () => {
    const type = parseType('syntax = "proto3"; message M { map<bool, string> flags = 1; map<int32, string> small = 2; map<uint64, string> big = 3; }', 'M');
    const bad = { flags: { banana: 'x' }, small: { '99999999999999999999': 'x' }, big: { '-5': 'x' } };
    expect(fieldsOf(validateFields(type, bad, 'fields', { checkRequired: false }))).toEqual(['fields.flags.banana', 'fields.small.99999999999999999999', 'fields.big.-5']);
    const good = { flags: { true: 'x', false: 'y' }, small: { '-2147483648': 'x' }, big: { '18446744073709551615': 'x' } };
    expect(validateFields(type, good, 'fields', { checkRequired: false })).toEqual([]);
    // One integer written twice: stored in one form, one of the values would be lost.
    expect(validateFields(type, { small: { '1': 'one', '01': 'uno' } }, 'fields', { checkRequired: false })).toEqual([{ field: 'fields.small.01', description: 'map key is 1, as "1" is' }]);
  });

  test("well-known types take protobuf's JSON forms and only those", () => {
    const type = parseType(
      `syntax = "proto3";
       import "google/protobuf/wrappers.proto"; import "google/protobuf/field_mask.proto"; import "google/protobuf/any.proto";
       import "google/protobuf/timestamp.proto"; import "google/protobuf/duration.proto";
       message Inner { string note = 1; }
       message M { google.protobuf.StringValue s = 1; google.protobuf.Int64Value n = 2; google.protobuf.FieldMask mask = 3;
         google.protobuf.Any any = 4; google.protobuf.Timestamp at = 5; google.protobuf.Duration took = 6; float ratio = 7; }`,
      'M',
    );
    const check = (value: Record<string, unknown>) => fieldsOf(validateFields(type, value as never, 'fields', { checkRequired: false }));
    expect(check({ s: 'hello', n: '5', mask: 'a.b,c', any: { '@type': 'type.googleapis.com/Inner', note: 'x' } })).toEqual([]);
    expect(check({ any: { '@type': 'type.googleapis.com/google.protobuf.Duration', value: '1s' }, at: '2026-01-31T12:00:00.5+05:30', took: '-1.5s', ratio: 3.4e38 })).toEqual([]);
    expect(check({ s: { value: 'hello' }, n: { value: 5 }, mask: { paths: ['a'] } })).toEqual(['fields.s', 'fields.n', 'fields.mask']);
    expect(check({ any: { note: 'x' } })).toEqual(['fields.any']);
    expect(check({ any: { '@type': 'type.googleapis.com/Nowhere' } })).toEqual(['fields.any']);
    expect(check({ any: { '@type': 'type.googleapis.com/Inner', other: 1 } })).toEqual(['fields.any.other']);
    // A type URL names a message by its full name, after a "/".
    expect(check({ any: { '@type': 'Inner', note: 'x' } })).toEqual(['fields.any']);
    for (const at of ['2020-01-01T00:00:00', '2021-02-30T00:00:00Z', '2020-01-01 00:00:00Z', '0000-12-31T00:00:00Z', '2020-01-01T24:00:00Z']) expect(check({ at }), at).toEqual(['fields.at']);
    expect(check({ took: '999999999999999s' })).toEqual(['fields.took']);
    expect(check({ ratio: 1e300 })).toEqual(['fields.ratio']);
  });

  test("numbers take protobuf's string forms too, and are stored as numbers; inside an Any as well", () => {
    const type = parseType(
      `syntax = "proto3"; import "google/protobuf/any.proto";
       message Inner { int64 big = 1; int32 small = 2; }
       message M { int32 small = 1; uint32 count = 2; double ratio = 3; float part = 4; google.protobuf.Any any = 5; }`,
      'M',
    );
    const sent = { small: '-5', count: '7', ratio: '1.5e2', part: '-0.25', any: { '@type': 'type.googleapis.com/Inner', big: 5, small: '6' } };
    expect(validateFields(type, sent, 'fields', { checkRequired: false })).toEqual([]);
    expect(canonicalFields(type, sent)).toEqual({ small: -5, count: 7, ratio: 150, part: -0.25, any: { '@type': 'type.googleapis.com/Inner', big: '5', small: 6 } });
    for (const ratio of ['NaN', 'Infinity', '-Infinity', '1.5x', '']) expect(fieldsOf(validateFields(type, { ratio }, 'fields', { checkRequired: false })), ratio).toEqual(['fields.ratio']);
    expect(fieldsOf(validateFields(type, { small: '1.5', count: '-1' }, 'fields', { checkRequired: false }))).toEqual(['fields.small', 'fields.count']);
  });

  test('type URLs a client makes up are looked up without growing what protobuf.js caches', () => {
    const type = parseType('syntax = "proto3"; import "google/protobuf/any.proto"; message Inner { string note = 1; } message M { google.protobuf.Any any = 1; }', 'M');
    // protobuf.js caches every name its lookup is asked for, found or not, on every namespace it passes.
    const cached = () => [type.root, ...type.root.nestedArray].reduce((sum, each) => sum + Object.keys((each as unknown as { _lookupCache?: object })._lookupCache ?? {}).length, 0);
    const before = cached();
    for (let i = 0; i < 2_000; i++) {
      const any = { '@type': `type.googleapis.com/made.up.Name${i}`, note: 'x' };
      expect(fieldsOf(validateFields(type, { any }, 'fields', { checkRequired: false }))).toEqual(['fields.any']);
      canonicalFields(type, { any });
    }
    expect(validateFields(type, { any: { '@type': 'type.googleapis.com/Inner', note: 'x' } }, 'fields', { checkRequired: false })).toEqual([]);
    expect(cached()).toBe(before);
  });

  test("proto2's required and an empty required map count as missing; 0 and false are values", () => {
    const legacy = parseType('syntax = "proto2"; message M { required string a = 1; optional int32 b = 2; }', 'M');
    expect(validateFields(legacy, { b: 1 }, 'fields', { checkRequired: true })).toEqual([{ field: 'fields.a', description: 'required field is missing or empty' }]);
    const type = parseType('syntax = "proto3"; message M { map<string, string> m = 1 [(relgate.v1.field).required = true]; int32 n = 2 [(relgate.v1.field).required = true]; }', 'M');
    expect(fieldsOf(validateFields(type, { m: {}, n: 0 }, 'fields', { checkRequired: true }))).toEqual(['fields.m']);
  });
});

describe('field values in the form protobuf writes them', () => {
  const type = parseType(
    `syntax = "proto3"; import "google/protobuf/timestamp.proto"; import "google/protobuf/duration.proto";
     import "google/protobuf/struct.proto"; import "google/protobuf/field_mask.proto";
     message M { google.protobuf.Timestamp at = 1; google.protobuf.Duration took = 2; float part = 3; double ratio = 4;
                 google.protobuf.Value tree = 5; google.protobuf.FieldMask mask = 6; }`,
    'M',
  );
  const form = (value: Record<string, unknown>) => canonicalFields(type, value as JsonObject);

  test('timestamps in UTC with 0, 3, 6 or 9 fractional digits; durations likewise; floats as the shortest decimal of their float32', () => {
    const times = {
      '2026-01-31T03:04:05+02:00': '2026-01-31T01:04:05Z',
      '2026-01-31T01:04:05.000Z': '2026-01-31T01:04:05Z',
      '2026-01-31T01:04:05.5Z': '2026-01-31T01:04:05.500Z',
      '2026-01-31T01:04:05.1234-00:00': '2026-01-31T01:04:05.123400Z',
      '2026-01-31T01:04:05.000000001Z': '2026-01-31T01:04:05.000000001Z',
      '0001-01-01T00:30:00+00:30': '0001-01-01T00:00:00Z',
      '0099-12-31T23:59:59Z': '0099-12-31T23:59:59Z',
    };
    for (const [sent, stored] of Object.entries(times)) expect(form({ at: sent }).at, sent).toBe(stored);
    const durations = { '1.5s': '1.500s', '01s': '1s', '-0.000s': '0s', '-0.5s': '-0.500s', '-1.000000001s': '-1.000000001s', '2.10s': '2.100s' };
    for (const [sent, stored] of Object.entries(durations)) expect(form({ took: sent }).took, sent).toBe(stored);
    for (const sent of [0.1, '0.1', 0.10000000149011612]) expect(form({ part: sent }).part, String(sent)).toBe(0.1);
    expect(form({ part: 3.4028234663852886e38 }).part).toBe(3.4028235e38);
    expect(validateFields(type, { part: 3.4028235e38 }, 'fields', { checkRequired: false })).toEqual([]);
    expect(fieldsOf(validateFields(type, { part: 3.5e38 }, 'fields', { checkRequired: false }))).toEqual(['fields.part']);
    expect(form({ ratio: 0.1, part: 16777217 })).toEqual({ ratio: 0.1, part: 16777216 });
    // A value stored before its field's type changed (a string field become a Timestamp, say) stays as it is.
    expect(form({ at: 'tomorrow', took: 'a while', part: 'some' })).toEqual({ at: 'tomorrow', took: 'a while', part: 'some' });
  });

  test('null is an unset field, except in a Value or a NullValue; an enum alias is the first name of its number', () => {
    const typed = parseType(
      `syntax = "proto3"; import "google/protobuf/struct.proto";
       enum Level { option allow_alias = true; LEVEL_UNSPECIFIED = 0; LEVEL_LOW = 1; LEVEL_MINOR = 1; LEVEL_HIGH = 2; }
       message Inner { string note = 1; int64 big = 2; }
       message M { string name = 1; Level level = 2; Inner inner = 3; google.protobuf.Value tree = 4; google.protobuf.NullValue nothing = 5;
                   repeated Level levels = 6; map<string, google.protobuf.Value> by_name = 7; }`,
      'M',
    );
    const canonical = (value: Record<string, unknown>) => canonicalFields(typed, value as JsonObject);
    expect(validateFields(typed, { name: null, level: 'LEVEL_MINOR', inner: { note: null, big: 5 } } as JsonObject, 'fields', { checkRequired: true })).toEqual([]);
    expect(canonical({ name: null, level: null, inner: { note: null, big: 5 } })).toEqual({ inner: { big: '5' } });
    expect(canonical({ inner: null })).toEqual({});
    expect(canonical({ tree: null, nothing: null, by_name: { a: null } })).toEqual({ tree: null, nothing: null, by_name: { a: null } });
    for (const nothing of ['NULL_VALUE', 0]) expect(canonical({ nothing }), String(nothing)).toEqual({ nothing: null });
    for (const level of ['LEVEL_LOW', 'LEVEL_MINOR', 1]) expect(canonical({ level, levels: [level] }), String(level)).toEqual({ level: 'LEVEL_LOW', levels: ['LEVEL_LOW'] });
  });

  test('a field mask is lowerCamelCase paths, as protobuf parsers read it back; NaN or an infinity inside a Value is refused where it is', () => {
    const check = (value: Record<string, unknown>) => validateFields(type, value as JsonObject, 'fields', { checkRequired: false });
    expect(check({ mask: 'user.displayName,photo' })).toEqual([]);
    expect(fieldsOf(check({ mask: 'user_name' }))).toEqual(['fields.mask']);
    expect(check({ tree: { a: [1, Number.NaN] } })).toEqual([{ field: 'fields.tree.a[1]', description: 'must be a finite number, not number NaN' }]);
    expect(check({ tree: Number.NEGATIVE_INFINITY })).toEqual([{ field: 'fields.tree', description: 'must be a finite number, not number -Infinity' }]);
  });
});

describe('field values through the gateway', () => {
  let vh: Harness;
  let v: World;
  beforeAll(async () => {
    vh = await startHarness({ interfaces: [path.join(import.meta.dirname, 'interfaces')] });
    v = await makeWorld(vh, { iface: 'values' });
  });
  afterAll(() => vh.close());

  test('an int64 as a number or a string, an enum by name or number, bytes in either base64 alphabet are one value: stored in one form, matched, updated and replayed as one', async () => {
    const sent = { name: 'a', count: 5, colour: 1, data: '-_8=', by_number: { '007': 'seven' } };
    const canonical = { name: 'a', count: '5', colour: 'COLOUR_RED', data: '+/8=', by_number: { '7': 'seven' } };
    const { request } = await v.req().call('CreateRequest', { relation_id: v.relationId, fields: struct(sent) });
    expect(json(request.fields)).toEqual(canonical);
    for (const match of [{ count: '5' }, { count: 5 }, { colour: 'COLOUR_RED' }, { colour: 1 }, { data: '+/8=' }] as JsonObject[]) {
      const { requests } = await v.req().call('ListRequests', { relation_id: v.relationId, match_fields: struct(match) });
      expect(requests.map((r: { request_id: string }) => r.request_id), JSON.stringify(match)).toEqual([request.request_id]);
    }
    const replay = await v.req().call('CreateRequest', { relation_id: v.relationId, request_id: request.request_id, fields: struct(canonical) });
    expect(replay.request.request_id).toBe(request.request_id);
    const upsert = await v.req().call('CreateOrUpdateRequest', { relation_id: v.relationId, match_fields: ['count'], fields: struct({ ...canonical, count: '05', name: 'b' }) });
    expect([upsert.created, upsert.updated, upsert.request.request_id, json(upsert.request.fields).count]).toEqual([false, true, request.request_id, '5']);
    const { response } = await v.res().call('Respond', { request_id: request.request_id, fields: struct({ total: 7 }) });
    expect(json(response.fields)).toEqual({ total: '7' });
  });

  test('a request stored before values had one canonical form still matches, updates and replays in the spelling it was sent in', async () => {
    const { request } = await v.req().call('CreateRequest', { relation_id: v.relationId, fields: struct({ name: 'older', count: 6 }) });
    // Rewrite it as an older relgate stored it: the value as sent, and the body of that spelling.
    await vh.server.store.write(async (tx) => {
      const stored = must(await tx.getRequest(request.request_id), 'stored request');
      const relation = must(await tx.getRelation(v.relationId), 'relation');
      const older = { ...stored, fields: { name: 'older', count: 6 }, body: stored.body.replace('"count":"6"', '"count":6'), revision: await tx.revision() };
      expect(older.body).not.toBe(stored.body);
      await recordRequestChange(tx, relation, stored, older);
    });
    const { requests } = await v.req().call('ListRequests', { relation_id: v.relationId, match_fields: struct({ count: 6 }) });
    expect(requests.map((r: { request_id: string }) => r.request_id)).toEqual([request.request_id]);
    for (const count of [6, '6', '06']) {
      const replay = await v.req().call('CreateRequest', { relation_id: v.relationId, request_id: request.request_id, fields: struct({ name: 'older', count }) });
      expect(replay.request.request_id, String(count)).toBe(request.request_id);
    }
    const same = await v.req().call('CreateOrUpdateRequest', { relation_id: v.relationId, match_fields: ['name'], fields: struct({ name: 'older', count: '6' }) });
    expect([same.created, same.updated, same.request.request_id]).toEqual([false, false, request.request_id]);
  });

  test('a field sent as null is the field left out: a create-or-update or a replay without it is the same request, and its answer stays', async () => {
    const sent = { name: 'unset', count: null, colour: 'COLOUR_BLUE', tree: null };
    const { request } = await v.req().call('CreateRequest', { relation_id: v.relationId, fields: struct(sent) });
    expect(json(request.fields)).toEqual({ name: 'unset', colour: 'COLOUR_BLUE', tree: null });
    await v.res().call('Respond', { request_id: request.request_id, fields: struct({ total: 1, tree: null }) });
    for (const fields of [{ name: 'unset', colour: 2, tree: null }, sent]) {
      const replay = await v.req().call('CreateRequest', { relation_id: v.relationId, request_id: request.request_id, fields: struct(fields) });
      expect(replay.request.request_id).toBe(request.request_id);
      const same = await v.req().call('CreateOrUpdateRequest', { relation_id: v.relationId, match_fields: ['name'], fields: struct(fields) });
      expect([same.created, same.updated, same.request.request_id, same.request.state]).toEqual([false, false, request.request_id, 'REQUEST_STATE_ANSWERED']);
    }
    const { responses } = await v.req().call('ListResponses', { request_id: request.request_id });
    expect(responses.map((response: { fields: unknown }) => json(response.fields as never))).toEqual([{ total: '1', tree: null }]);
    // In a match, null still means a field that is not set.
    const { request: counted } = await v.req().call('CreateRequest', { relation_id: v.relationId, fields: struct({ name: 'unset', count: 7 }) });
    const matching = async (match: JsonObject) => (await v.req().call('ListRequests', { relation_id: v.relationId, match_fields: struct(match) })).requests.map((r: { request_id: string }) => r.request_id);
    expect(await matching({ name: 'unset', count: null })).toEqual([request.request_id]);
    const unset = await matching({ count: null });
    expect([unset.includes(request.request_id), unset.includes(counted.request_id)]).toEqual([true, false]);
    expect((await v.req().call('ResponseByField', { relation_id: v.relationId, match_fields: struct({ name: 'unset', count: null }) })).request.request_id).toBe(request.request_id);
  });

  test(`fields nested more than ${MAX_FIELD_DEPTH} levels are refused with the path, storing nothing; ${MAX_FIELD_DEPTH} levels are stored and sent`, async () => {
    const nested = (lists: number): Json => (lists === 0 ? 'leaf' : [nested(lists - 1)]);
    // The fields object is the first level, so a tree of n lists reaches level n + 1.
    const revision = vh.server.store.currentRevision();
    const error = await v.req().fail('CreateRequest', { relation_id: v.relationId, fields: struct({ name: 'deep', tree: nested(MAX_FIELD_DEPTH) }) });
    expect([error.code, fieldsOf(error.fieldViolations)]).toEqual([Code.INVALID_ARGUMENT, [`fields.tree${'[0]'.repeat(MAX_FIELD_DEPTH - 1)}`]]);
    expect(vh.server.store.currentRevision()).toBe(revision);
    const watcher = await watchReady(v.res(), { relation_id: v.relationId });
    const { request } = await v.req().call('CreateRequest', { relation_id: v.relationId, fields: struct({ name: 'deepest', tree: nested(MAX_FIELD_DEPTH - 1) }) });
    const added = await watcher.events.next(requestEvent('ADDED', request.request_id));
    expect(json(added.request.fields).tree).toEqual(nested(MAX_FIELD_DEPTH - 1));
    expect((await v.res().call('ListIncomingRequests', { relation_id: v.relationId })).requests.length).toBeGreaterThan(0);
    watcher.cancel();
  });
});
