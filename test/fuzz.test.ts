// Generated bad input against a running server (fast-check): random JSON in
// fields, random ids, selectors, revisions, page tokens, page sizes and
// durations, any Unicode (lone surrogates included, which encode to invalid
// UTF-8), huge and empty strings, and raw protobuf bytes with invalid UTF-8 in
// string fields. The server never crashes and never answers UNKNOWN or
// INTERNAL; a refused call carries ErrorInfo, INVALID_ARGUMENT names its
// fields, and a refused call leaves the store exactly as it was.
// RELGATE_FUZZ_RUNS scales the number of generated requests per property.
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import protobuf from 'protobufjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Code, fromServiceError, type RelgateError } from '../src/errors.ts';
import { newRoot } from '../src/protos.ts';
import { startHarness, struct, type Harness, type Rpc } from './helpers/harness.ts';
import { watch, type Msg } from './helpers/streams.ts';
import { makeWorld, snapshot, type World } from './helpers/world.ts';

const RUNS = Number(process.env.RELGATE_FUZZ_RUNS ?? 150);

let h: Harness;
let w: World;
let pendingId: string;

beforeAll(async () => {
  h = await startHarness({ durability: 'normal' });
  w = await makeWorld(h, { responders: 2 });
  pendingId = (await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: 'pending.example' }) })).request.request_id;
});
afterAll(() => h.close());

// ---- generators ----

const huge = fc.constantFrom(70_000, 1_000_000).map((n) => 'ä'.repeat(n));
/** Any text: printable, any code point (lone surrogates included), empty, huge, and near-valid ids. */
const text = fc.oneof(
  { weight: 4, arbitrary: fc.string() },
  { weight: 3, arbitrary: fc.string({ unit: 'binary' }) },
  { weight: 2, arbitrary: fc.string({ unit: fc.constantFrom('\ud800', '\udfff', '\u0000', '\ufffd', '\u202e', 'é', '😀', '/', '=') }) },
  { weight: 1, arbitrary: fc.constant('') },
  { weight: 1, arbitrary: fc.uuid() },
  { weight: 1, arbitrary: fc.uuid().map((id) => id.slice(0, -1)) },
  { weight: 1, arbitrary: huge },
);
const relationId = fc.oneof(fc.constant(undefined as unknown as string), text).map((value) => value ?? w.relationId);
const requestId = fc.oneof(fc.constant('pending'), text).map((value) => (value === 'pending' ? pendingId : value));
const unitName = fc.oneof(text, fc.constantFrom('ca/0', 'web/1', 'Web/0', 'a/01', 'a/-1'));
const selector = fc.oneof(text, fc.string({ unit: fc.constantFrom('a', 'zone', '=', '==', '!=', '!', ',', '(', ')', ' ', 'in', 'notin', '-', '.', '/', 'x'.repeat(70)) }));
const revision = fc.oneof(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String), fc.integer({ min: -5, max: 10_000 }).map(String));
const pageToken = fc.oneof(text, fc.base64String(), fc.uint8Array().map((bytes) => Buffer.from(bytes).toString('base64url')));
const duration = fc.record({ seconds: revision, nanos: fc.integer({ min: -2_000_000_000, max: 2_000_000_000 }) }, { requiredKeys: [] });
const jsonKey = fc.oneof(fc.constantFrom('common_name', 'sans', 'key', 'cert', 'ca'), text);
const jsonFields = fc.dictionary(jsonKey, fc.jsonValue({ maxDepth: 3 }), { maxKeys: 5 }).map((object) => struct(object as never));
const enumValue = (names: string[]) => fc.oneof(fc.constantFrom(...names), fc.integer({ min: -3, max: 1_000 }));
const delivery = fc.record(
  { mode: enumValue(['DELIVERY_MODE_ANY', 'DELIVERY_MODE_UNIT', 'DELIVERY_MODE_SELECTOR']), unit: unitName, selector },
  { requiredKeys: [] },
);
const watchOptions = fc.record(
  {
    relation_id: relationId,
    filter: enumValue(['REQUEST_FILTER_ALL', 'REQUEST_FILTER_NEW', 'REQUEST_FILTER_ANSWERED']),
    start: enumValue(['WATCH_START_SNAPSHOT', 'WATCH_START_NOW', 'WATCH_START_AFTER_REVISION']),
    after_revision: revision,
    progress_interval_ms: fc.integer({ min: 0, max: 2 ** 32 - 1 }),
  },
  { requiredKeys: [] },
);

type Side = 'requester' | 'responder' | 'registry';
interface Call {
  side: Side;
  method: string;
  request: object;
}
const call = (side: Side, method: string, request: fc.Arbitrary<object>) => request.map((body): Call => ({ side, method, request: body }));
const record = <T extends Record<string, fc.Arbitrary<unknown>>>(shape: T) => fc.record(shape, { requiredKeys: [] });

const anyCall = fc.oneof(
  call('requester', 'CreateRequest', record({ relation_id: relationId, request_id: text, fields: jsonFields, delivery, ttl: duration })),
  call('requester', 'CreateOrUpdateRequest', record({ relation_id: relationId, match_fields: fc.array(text, { maxLength: 3 }), fields: jsonFields, delivery, ttl: duration, expected_revision: revision })),
  call('requester', 'GetRequest', record({ request_id: requestId })),
  call('requester', 'ListRequests', record({ relation_id: relationId, filter: enumValue(['REQUEST_FILTER_ALL', 'REQUEST_FILTER_NEW', 'REQUEST_FILTER_ANSWERED']), match_fields: jsonFields, page_size: fc.integer({ min: 0, max: 2 ** 32 - 1 }), page_token: pageToken })),
  call('requester', 'WithdrawRequest', record({ request_id: text, expected_revision: revision })),
  call('requester', 'ListResponses', record({ request_id: requestId })),
  call('requester', 'ResponseByField', record({ relation_id: relationId, match_fields: jsonFields })),
  call('requester', 'GetRequesterFlags', record({ relation_id: relationId })),
  call('responder', 'ListIncomingRequests', record({ relation_id: relationId, page_size: fc.integer({ min: 0, max: 2 ** 32 - 1 }), page_token: pageToken })),
  call('responder', 'GetIncomingRequest', record({ request_id: requestId })),
  call('responder', 'Respond', record({ request_id: text, code: fc.integer({ min: -1, max: 20 }), error: text, fields: jsonFields, expected_revision: revision })),
  call('responder', 'ClaimRequest', record({ request_id: text, lease: duration, expected_revision: revision })),
  call('responder', 'ReleaseRequest', record({ request_id: text })),
  call('registry', 'GetUnit', record({ name: unitName })),
  call('registry', 'RegisterUnit', record({ name: unitName, ingress_address: text, egress_subnets: fc.array(text, { maxLength: 3 }), labels: fc.dictionary(text, text, { maxKeys: 3 }) })),
  call('registry', 'JoinRelation', record({ relation_id: relationId, unit: unitName, side: enumValue(['SIDE_REQUESTER', 'SIDE_RESPONDER']) })),
  call('registry', 'ListRequests', fc.constant({})).map((c) => ({ ...c, method: 'ListUnits' })),
  call('requester', 'WatchResponses', record({ options: watchOptions })),
  call('responder', 'WatchIncomingRequests', record({ options: watchOptions })),
);

// ---- running a call ----

const rpcFor = (side: Side): Rpc => (side === 'registry' ? h.registry : side === 'requester' ? w.req() : w.res());

/** Calls a unary method, or opens a watch and waits for its first message or its status. */
async function run(c: Call): Promise<RelgateError | null> {
  const rpc = rpcFor(c.side);
  if (c.method.startsWith('Watch')) {
    const opened = watch(rpc, (c.request as { options?: object }).options ?? {});
    // A watch from now sends nothing until a change or a progress event: open and quiet is accepted.
    const quiet = new Promise<null>((resolve) => setTimeout(() => resolve(null), 500));
    const first = await Promise.race([opened.status, new Promise<null>((resolve) => opened.call.once('data', () => resolve(null))), quiet]);
    opened.cancel();
    return first;
  }
  try {
    await rpc.call(c.method, c.request);
    return null;
  } catch (error) {
    return fromServiceError(error as grpc.ServiceError);
  }
}

/** What every refusal must look like. */
function expectWellFormedRefusal(error: RelgateError, what: string): void {
  expect([Code.UNKNOWN, Code.INTERNAL], `${what}: ${Code[error.code]} ${error.message}`).not.toContain(error.code);
  // grpc-js itself refuses messages over the size limit, before relgate sees them.
  if (error.code === Code.RESOURCE_EXHAUSTED && /larger than max/.test(error.message)) return;
  expect(error.reason, `${what}: ErrorInfo reason`).not.toBe('');
  if (error.code === Code.INVALID_ARGUMENT) expect(error.fieldViolations.length, `${what}: field violations`).toBeGreaterThan(0);
}

const describeCall = (c: Call) => `${c.method} ${JSON.stringify(c.request).slice(0, 300)}`;

describe('generated requests', () => {
  test('never UNKNOWN or INTERNAL; refusals carry ErrorInfo and field violations and leave the store as it was', async () => {
    await fc.assert(
      fc.asyncProperty(anyCall, async (c) => {
        const before = h.server.store.currentRevision();
        const error = await run(c);
        if (!error) return;
        expectWellFormedRefusal(error, describeCall(c));
        expect(h.server.store.currentRevision(), `${describeCall(c)} refused but the store moved`).toBe(before);
      }),
      { numRuns: RUNS },
    );
  }, 120_000);

  test('invalid by construction: INVALID_ARGUMENT naming the field, and store contents unchanged', async () => {
    const before = await snapshot(h, [w]);
    const revision = h.server.store.currentRevision();
    const notUuid = text.filter((value) => value !== '' && !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(value));
    // Keys that survive encoding and fit a violation whole, so that it can name them (lone surrogates are the UTF-8 case below).
    const unknownKey = text.filter((key) => key.length < 200 && !/[\ud800-\udfff]/.test(key)).map((key) => `x_${key}`);
    const invalid = fc.oneof(
      fc.tuple(unknownKey, fc.jsonValue({ maxDepth: 2 })).map(([key, value]): [Call, string] => [
        { side: 'requester', method: 'CreateRequest', request: { relation_id: w.relationId, fields: struct({ common_name: 'a.example', [key]: value } as never) } },
        `fields.${key}`,
      ]),
      notUuid.map((id): [Call, string] => [{ side: 'requester', method: 'CreateRequest', request: { relation_id: w.relationId, request_id: id, fields: struct({ common_name: 'a.example' }) } }, 'request_id']),
      notUuid.map((id): [Call, string] => [{ side: 'responder', method: 'Respond', request: { request_id: id, fields: struct({ key: 'K', cert: 'C' }) } }, 'request_id']),
      fc.integer({ min: 1_001, max: 2 ** 32 - 1 }).map((size): [Call, string] => [{ side: 'requester', method: 'ListRequests', request: { relation_id: w.relationId, page_size: size } }, 'page_size']),
      fc.integer({ min: 1, max: 2 ** 31 }).map((seconds): [Call, string] => [
        { side: 'requester', method: 'CreateRequest', request: { relation_id: w.relationId, ttl: { seconds: -seconds }, fields: struct({ common_name: 'a.example' }) } },
        'ttl',
      ]),
      fc.tuple(fc.bigInt({ min: -(2n ** 63n), max: -1n }), fc.constantFrom('WithdrawRequest', 'ClaimRequest')).map(([expected, method]): [Call, string] => [
        { side: method === 'WithdrawRequest' ? 'requester' : 'responder', method, request: { request_id: pendingId, expected_revision: String(expected) } },
        'expected_revision',
      ]),
      fc.oneof(fc.integer({ min: 1, max: 49 }), fc.integer({ min: 86_400_001, max: 2 ** 32 - 1 })).map((ms): [Call, string] => [{ side: 'responder', method: 'WatchIncomingRequests', request: { options: { relation_id: w.relationId, progress_interval_ms: ms } } }, 'options.progress_interval_ms']),
    );
    await fc.assert(
      fc.asyncProperty(invalid, async ([c, field]) => {
        const error = await run(c);
        expect(error?.code, describeCall(c)).toBe(Code.INVALID_ARGUMENT);
        expect(error?.fieldViolations.map((violation) => violation.field)).toContain(field);
      }),
      { numRuns: RUNS },
    );
    expect(h.server.store.currentRevision()).toBe(revision);
    expect(await snapshot(h, [w])).toEqual(before);
  }, 120_000);
});

describe('invalid UTF-8 on the wire', () => {
  const root = newRoot();
  root.loadSync(['relgate/v1/requester.proto', 'relgate/v1/session.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  const CreateRequestRequest = root.lookupType('relgate.v1.CreateRequestRequest');
  const OpenResponse = root.lookupType('relgate.v1.OpenResponse');
  const BadRequest = root.lookupType('google.rpc.BadRequest');

  /** Bytes that are not UTF-8, spliced into otherwise valid text. */
  const invalidUtf8 = fc
    .tuple(fc.string({ maxLength: 8 }), fc.constantFrom([0xff], [0xc3], [0x80], [0xed, 0xa0, 0x80], [0xe2, 0x82], [0xf8, 0x88, 0x80, 0x80, 0x80]), fc.string({ maxLength: 8 }))
    .map(([head, bad, tail]) => Buffer.concat([Buffer.from(head), Buffer.from(bad), Buffer.from(tail)]));

  /** A CreateRequestRequest whose field `target` holds raw bytes (encoded by hand: strings are length-delimited). */
  function encode(target: 'relation_id' | 'request_id' | 'common_name', bytes: Buffer): Buffer {
    const valid = CreateRequestRequest.encode(
      CreateRequestRequest.fromObject({ relation_id: target === 'relation_id' ? '' : w.relationId, fields: target === 'common_name' ? {} : struct({ common_name: 'a.example' }) }),
    ).finish();
    const writer = protobuf.Writer.create();
    if (target === 'relation_id') writer.uint32((1 << 3) | 2).bytes(bytes);
    if (target === 'request_id') writer.uint32((2 << 3) | 2).bytes(bytes);
    if (target === 'common_name') {
      // Struct{ fields: map<string, Value{ string_value }> } with the raw bytes as the value.
      const value = protobuf.Writer.create().uint32((3 << 3) | 2).bytes(bytes).finish();
      const entry = protobuf.Writer.create().uint32((1 << 3) | 2).string('common_name').uint32((2 << 3) | 2).bytes(value).finish();
      const structBytes = protobuf.Writer.create().uint32((1 << 3) | 2).bytes(entry).finish();
      writer.uint32((3 << 3) | 2).bytes(structBytes);
    }
    return Buffer.concat([Buffer.from(valid), Buffer.from(writer.finish())]);
  }

  function sendRaw(message: Buffer): Promise<RelgateError | null> {
    const client = w.req().client;
    const metadata = new grpc.Metadata();
    metadata.set('relgate-unit', w.requesters[0] as string);
    return new Promise((resolve) => {
      client.makeUnaryRequest(
        '/relgate.v1.RequesterService/CreateRequest',
        (bytes: Buffer) => bytes,
        (bytes: Buffer) => bytes,
        message,
        metadata,
        (error: grpc.ServiceError | null) => resolve(error ? fromServiceError(error) : null),
      );
    });
  }

  test('is refused with INVALID_ARGUMENT naming the field, and the store is unchanged', async () => {
    const before = await snapshot(h, [w]);
    const revision = h.server.store.currentRevision();
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('relation_id', 'request_id', 'common_name') as fc.Arbitrary<'relation_id' | 'request_id' | 'common_name'>, invalidUtf8, async (target, bytes) => {
        const error = await sendRaw(encode(target, bytes));
        expect(error?.code, `${target} = ${bytes.toString('hex')}`).toBe(Code.INVALID_ARGUMENT);
        expect(error?.fieldViolations.map((violation) => violation.field)).toEqual([target === 'common_name' ? 'fields.common_name' : target]);
      }),
      { numRuns: Math.max(30, RUNS / 5) },
    );
    expect(h.server.store.currentRevision()).toBe(revision);
    expect(await snapshot(h, [w])).toEqual(before);
  });

  test('a field sent with another wire type than its own is refused with INVALID_ARGUMENT, MALFORMED_MESSAGE', async () => {
    const revision = h.server.store.currentRevision();
    const relation = Buffer.from(w.relationId);
    // relation_id, then request_id (a string) as a varint followed by a non-ASCII byte.
    const error = await sendRaw(Buffer.concat([Buffer.from([0x0a, relation.length]), relation, Buffer.from([0x10, 0x02, 0x07, 0xc3])]));
    expect([error?.code, error?.reason]).toEqual([Code.INVALID_ARGUMENT, 'MALFORMED_MESSAGE']);
    expect(h.server.store.currentRevision()).toBe(revision);
  });

  /** A session of raw bytes up; `acked` resolves with the first two acknowledgements. */
  function rawSession() {
    const metadata = new grpc.Metadata();
    metadata.set('relgate-unit', w.requesters[0] as string);
    const session = w.req().client.makeBidiStreamRequest('/relgate.v1.SessionService/Open', (bytes: Buffer) => bytes, (bytes: Buffer) => OpenResponse.toObject(OpenResponse.decode(bytes)), metadata);
    const acks: Msg[] = [];
    const acked = new Promise<Msg[]>((resolve) => session.on('data', (message: Msg) => acks.push(message.ack) === 2 && resolve(acks)));
    return { session, acked };
  }

  /** OpenRequest{ command: SessionCommand{ correlation_id, create } }, the create as given. */
  const command = (id: string, create: Uint8Array) =>
    Buffer.from(protobuf.Writer.create().uint32((2 << 3) | 2).bytes(protobuf.Writer.create().uint32((1 << 3) | 2).string(id).uint32((2 << 3) | 2).bytes(create).finish()).finish());
  const goodCreate = () => CreateRequestRequest.encode(CreateRequestRequest.fromObject({ relation_id: w.relationId, fields: struct({ common_name: 'ok.example' }) })).finish();

  test('in a session command is acknowledged with INVALID_ARGUMENT naming the field; the session stays open', async () => {
    const revision = h.server.store.currentRevision();
    const { session, acked } = rawSession();
    // The create holding invalid UTF-8.
    session.write(command('bad', encode('common_name', Buffer.from([0x61, 0xff]))));
    session.write(command('good', goodCreate()));
    const [bad, good] = await acked;
    session.end();
    expect(bad?.correlation_id).toBe('bad');
    expect(bad?.error.code).toBe(Code.INVALID_ARGUMENT);
    const violations = (BadRequest.toObject(BadRequest.decode(bad?.error.details[1].value)) as { field_violations: { field: string }[] }).field_violations;
    expect(violations.map((violation) => violation.field)).toEqual(['command.create.fields.common_name']);
    expect(good?.correlation_id).toBe('good');
    expect(good?.error ?? null).toBeNull();
    expect(h.server.store.currentRevision()).toBe(revision + 1);
  });

  test.each([
    ['a length running past its end', [0x0a, 0x7f, 0x01]],
    // command{ correlation_id as a varint, then a non-ASCII byte }: protobuf.js decodes a string whatever its wire
    // type, the UTF-8 check reads by wire type and finds no valid message.
    ['a string field sent with the varint wire type', [0x12, 0x04, 0x08, 0x02, 0x07, 0xc3]],
  ])('a session message that is not an OpenRequest at all (%s) is acknowledged with INVALID_ARGUMENT; the session stays open', async (_, bytes) => {
    const revision = h.server.store.currentRevision();
    const { session, acked } = rawSession();
    const ended = new Promise<grpc.StatusObject>((resolve) => session.on('status', resolve));
    session.write(Buffer.from(bytes));
    session.write(command('good', goodCreate()));
    const [bad, good] = await acked;
    session.end();
    expect([bad?.error.code, bad?.error.message]).toEqual([Code.INVALID_ARGUMENT, expect.stringMatching(/^the message is not a valid relgate\.v1\.OpenRequest: /)]);
    expect([good?.correlation_id, good?.error ?? null]).toEqual(['good', null]);
    expect((await ended).code).toBe(grpc.status.OK);
    expect(h.server.store.currentRevision()).toBe(revision + 1);
  });
});

describe('bytes that are no message, sent to the health and reflection services', () => {
  // A varint of more than ten bytes, then wire type 7, which does not exist.
  const notAMessage = Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
  const raw = (bytes: Buffer) => bytes;
  const refusal = (error: grpc.ServiceError | grpc.StatusObject) => {
    const refused = fromServiceError(error as grpc.ServiceError);
    return [refused.code, refused.reason];
  };

  test('Check and Watch of health end INVALID_ARGUMENT, MALFORMED_MESSAGE; a valid Check still answers', async () => {
    const client = w.req().client;
    const checked = (bytes: Buffer) =>
      new Promise<{ error: grpc.ServiceError | null; reply?: Buffer }>((resolve) =>
        client.makeUnaryRequest('/grpc.health.v1.Health/Check', raw, raw, bytes, (error, reply) => resolve({ error, reply })),
      );
    const bad = await checked(notAMessage);
    expect(refusal(bad.error as grpc.ServiceError)).toEqual([Code.INVALID_ARGUMENT, 'MALFORMED_MESSAGE']);
    const watch = client.makeServerStreamRequest('/grpc.health.v1.Health/Watch', raw, raw, notAMessage);
    watch.on('data', () => undefined);
    const watchEnd = await new Promise<grpc.ServiceError>((resolve) => watch.on('error', resolve));
    expect(refusal(watchEnd)).toEqual([Code.INVALID_ARGUMENT, 'MALFORMED_MESSAGE']);
    // HealthCheckRequest{} (the server as a whole) -> HealthCheckResponse{ status: SERVING (1) }.
    const good = await checked(Buffer.alloc(0));
    expect([good.error, good.reply?.toString('hex')]).toEqual([null, '0801']);
  });

  test.each(['v1', 'v1alpha'])('the %s reflection stream ends INVALID_ARGUMENT, MALFORMED_MESSAGE; a valid stream still answers', async (version) => {
    const client = w.req().client;
    const path = `/grpc.reflection.${version}.ServerReflection/ServerReflectionInfo`;
    const bad = client.makeBidiStreamRequest(path, raw, raw);
    bad.on('data', () => undefined);
    const ended = new Promise<grpc.ServiceError>((resolve) => bad.on('error', resolve));
    bad.write(notAMessage);
    expect(refusal(await ended)).toEqual([Code.INVALID_ARGUMENT, 'MALFORMED_MESSAGE']);
    const good = client.makeBidiStreamRequest(path, raw, raw);
    const reply = new Promise<Buffer>((resolve) => good.once('data', resolve));
    // ServerReflectionRequest{ list_services: "" } (field 7).
    good.write(Buffer.from([0x3a, 0x00]));
    expect((await reply).toString('latin1')).toContain('relgate.v1.RequesterService');
    good.end();
  });
});
