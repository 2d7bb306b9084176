// Authenticated mode, per-relation authorization and TLS: every denial leaves
// the store unchanged and the answer carries no data.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { fromServiceError } from '../src/errors.ts';
import { Rpc, startHarness, struct, v1, type Harness } from './helpers/harness.ts';
import { makeCertificates } from './helpers/tls.ts';

const ADMIN = 'admin-secret-for-tests';
const logs: string[] = [];
let h: Harness;
let admin: Rpc;
const tokens: Record<string, string> = {};
let r1 = '';
let r2 = '';
let requestId = '';
/** What units register for the other side of their relations. */
const PROPERTIES: Record<string, object> = {
  'webapp/0': { ingress_address: '10.1.0.1', egress_subnets: ['10.1.0.0/24'], labels: { tier: 'web' } },
  'ca/0': { ingress_address: '10.2.0.1', egress_subnets: ['10.2.0.0/24', 'fd00::/64'], labels: { zone: 'a' } },
};

function client(service: string, token?: string, unitHeader?: string): Rpc {
  const Client = v1[service];
  if (!Client) throw new Error(service);
  const rpc = new Rpc(new Client(h.server.address, grpc.credentials.createInsecure()));
  if (token) rpc.metadata.set('authorization', `Bearer ${token}`);
  if (unitHeader) rpc.metadata.set('relgate-unit', unitHeader);
  return rpc;
}

beforeAll(async () => {
  const destination = new PassThrough();
  destination.on('data', (chunk: Buffer) => logs.push(chunk.toString()));
  h = await startHarness({ auth: 'token', adminToken: ADMIN, logLevel: 'info', logDestination: destination });
  admin = client('RegistryService', ADMIN);
  for (const app of ['webapp', 'ca', 'other', 'db']) await admin.call('RegisterApplication', { name: app });
  for (const unit of ['webapp/0', 'webapp/1', 'ca/0', 'other/0', 'db/0']) {
    const { token } = await admin.call('RegisterUnit', { name: unit, ...PROPERTIES[unit] });
    expect(token).toMatch(/^rgu_/);
    tokens[unit] = token;
  }
  const relate = async (requester: string, responder: string) => {
    const { relation } = await admin.call('CreateRelation', { interface: 'tls-certificates', requester_application: requester, requester_endpoint: 'certificates', responder_application: responder, responder_endpoint: 'certificates' });
    return relation.id as string;
  };
  r1 = await relate('webapp', 'ca');
  r2 = await relate('other', 'db');
  for (const unit of ['webapp/0', 'webapp/1', 'ca/0']) await admin.call('JoinRelation', { relation_id: r1, unit });
  for (const unit of ['other/0', 'db/0']) await admin.call('JoinRelation', { relation_id: r2, unit });
  const created = await client('RequesterService', tokens['webapp/0']).call('CreateRequest', { relation_id: r1, fields: struct({ common_name: 'secret.example' }) });
  requestId = created.request.request_id;
  await admin.call('RevokeUnitToken', { name: 'webapp/1' });
});
afterAll(() => h.close());

const requesterCalls: [string, () => object][] = [
  ['CreateRequest', () => ({ relation_id: r1, fields: struct({ common_name: 'x' }) })],
  ['CreateOrUpdateRequest', () => ({ relation_id: r1, match_fields: ['common_name'], fields: struct({ common_name: 'secret.example', sans: ['y'] }) })],
  ['GetRequest', () => ({ request_id: requestId })],
  ['ListRequests', () => ({ relation_id: r1 })],
  ['WithdrawRequest', () => ({ request_id: requestId })],
  ['ListResponses', () => ({ request_id: requestId })],
  ['ResponseByField', () => ({ relation_id: r1, match_fields: struct({ common_name: 'secret.example' }) })],
  ['GetRequesterFlags', () => ({ relation_id: r1 })],
  ['Call', () => ({ relation_id: r1, fields: struct({ common_name: 'x' }), wait_for_responders: true })],
];
const responderCalls: [string, () => object][] = [
  ['ListIncomingRequests', () => ({ relation_id: r1 })],
  ['GetIncomingRequest', () => ({ request_id: requestId })],
  ['Respond', () => ({ request_id: requestId, fields: struct({ key: 'k', cert: 'c' }) })],
  ['ClaimRequest', () => ({ request_id: requestId })],
  ['ReleaseRequest', () => ({ request_id: requestId })],
  ['GetResponderFlags', () => ({ relation_id: r1 })],
];
const adminOnly: [string, () => object][] = [
  ['RegisterApplication', () => ({ name: 'evil' })],
  ['RegisterUnit', () => ({ name: 'webapp/9' })],
  ['UpdateUnit', () => ({ name: 'webapp/0', ingress_address: '10.9.9.9' })],
  ['CreateRelation', () => ({ interface: 'http', requester_application: 'webapp', requester_endpoint: 'x', responder_application: 'ca', responder_endpoint: 'y' })],
  ['DeleteRelation', () => ({ relation_id: r1 })],
  ['JoinRelation', () => ({ relation_id: r1, unit: 'webapp/1' })],
  ['LeaveRelation', () => ({ relation_id: r1, unit: 'ca/0' })],
  ['RotateUnitToken', () => ({ name: 'ca/0' })],
  ['RevokeUnitToken', () => ({ name: 'ca/0' })],
  ['RemoveUnit', () => ({ name: 'other/0' })],
  ['RemoveApplication', () => ({ name: 'db' })],
  ['ListUnits', () => ({})],
  ['ListApplications', () => ({})],
];

type Case = { who: string; token?: string; unitHeader?: string; codes: grpc.status[]; reason?: string };
const unauthenticated = [grpc.status.UNAUTHENTICATED];
const denied = [grpc.status.PERMISSION_DENIED, grpc.status.NOT_FOUND];
const credentialCases = (): Case[] => [
  { who: 'no token', codes: unauthenticated, reason: 'TOKEN_REQUIRED' },
  { who: 'bad token', token: 'rgu_not-a-real-token', codes: unauthenticated, reason: 'INVALID_TOKEN' },
  { who: 'revoked token', token: tokens['webapp/1'], codes: unauthenticated, reason: 'INVALID_TOKEN' },
  { who: 'relgate-unit header without a token', unitHeader: 'webapp/0', codes: unauthenticated, reason: 'TOKEN_REQUIRED' },
];

async function expectDenied(service: string, method: string, body: object, c: Case): Promise<void> {
  const before = h.server.store.currentRevision();
  const error = await client(service, c.token, c.unitHeader).fail(method, body);
  expect(c.codes, `${service}.${method} as ${c.who}: got ${grpc.status[error.code]} ${error.message}`).toContain(error.code);
  if (c.reason) expect(error.reason, `${method} as ${c.who}`).toBe(c.reason);
  expect(error.message).not.toContain('secret.example');
  expect(h.server.store.currentRevision(), `${method} as ${c.who} changed the store`).toBe(before);
}

describe('denial matrix', () => {
  test('requester RPCs', async () => {
    const cases: Case[] = [
      ...credentialCases(),
      { who: 'unit of another relation', token: tokens['other/0'], codes: denied },
      { who: 'wrong role (responder unit)', token: tokens['ca/0'], codes: denied },
      { who: 'impersonation', token: tokens['ca/0'], unitHeader: 'webapp/0', codes: [grpc.status.PERMISSION_DENIED], reason: 'IMPERSONATION' },
    ];
    for (const [method, body] of requesterCalls) for (const c of cases) await expectDenied('RequesterService', method, body(), c);
  });

  test('responder RPCs', async () => {
    const cases: Case[] = [
      ...credentialCases(),
      { who: 'unit of another relation', token: tokens['db/0'], codes: denied },
      { who: 'wrong role (requester unit)', token: tokens['webapp/0'], codes: denied },
      { who: 'impersonation', token: tokens['webapp/0'], unitHeader: 'ca/0', codes: [grpc.status.PERMISSION_DENIED], reason: 'IMPERSONATION' },
    ];
    for (const [method, body] of responderCalls) for (const c of cases) await expectDenied('ResponderService', method, body(), c);
  });

  test('registry writes and listings of every unit or application need the admin token', async () => {
    const cases: Case[] = [...credentialCases(), { who: 'a unit token', token: tokens['webapp/0'], codes: [grpc.status.PERMISSION_DENIED], reason: 'ADMIN_REQUIRED' }];
    for (const [method, body] of adminOnly) for (const c of cases) await expectDenied('RegistryService', method, body(), c);
    // Interface schemas are readable by any authenticated caller.
    const { interfaces } = await client('RegistryService', tokens['webapp/0']).call('ListInterfaces');
    expect(interfaces.length).toBeGreaterThan(0);
  });

  test('watches and sessions refuse the same callers', async () => {
    for (const c of credentialCases()) {
      const stream = client('ResponderService', c.token, c.unitHeader).stream('WatchIncomingRequests', { options: { relation_id: r1 } });
      const error = await new Promise<grpc.ServiceError>((resolve) => stream.on('error', resolve));
      expect(error.code).toBe(grpc.status.UNAUTHENTICATED);
    }
    const foreign = client('ResponderService', tokens['db/0']).stream('WatchIncomingRequests', { options: { relation_id: r1 } });
    let leaked = 0;
    foreign.on('data', () => (leaked += 1));
    const error = await new Promise<grpc.ServiceError>((resolve) => foreign.on('error', resolve));
    expect(error.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(leaked).toBe(0);
  });

  test('a unit listing every relation sees only its own', async () => {
    const { requests } = await client('RequesterService', tokens['other/0']).call('ListRequests', {});
    expect(requests).toEqual([]);
  });
});

describe('a unit reading relations and units', () => {
  const registryAs = (unit: string) => client('RegistryService', tokens[unit]);
  const unitIds = (relation: { units: { unit: string; side: string }[] }) => relation.units.map(({ unit, side }) => [unit, side]);

  test("reads its application's relation and the other side's joined units with their properties", async () => {
    const { relation } = await registryAs('webapp/0').call('GetRelation', { relation_id: r1 });
    expect(relation).toMatchObject({ id: r1, requester_application: 'webapp', responder_application: 'ca' });
    expect(unitIds(relation)).toEqual([['webapp/0', 'SIDE_REQUESTER'], ['webapp/1', 'SIDE_REQUESTER'], ['ca/0', 'SIDE_RESPONDER']]);
    const { unit } = await registryAs('webapp/0').call('GetUnit', { name: 'ca/0' });
    expect(unit).toEqual({ name: 'ca/0', application: 'ca', ...PROPERTIES['ca/0'], revision: expect.any(String) });
    // The other side reads the requester's units the same way, and each unit reads itself.
    expect((await registryAs('ca/0').call('GetUnit', { name: 'webapp/0' })).unit).toMatchObject(PROPERTIES['webapp/0'] as object);
    expect((await registryAs('ca/0').call('GetRelation', { relation_id: r1 })).relation.id).toBe(r1);
    expect((await registryAs('db/0').call('GetUnit', { name: 'db/0' })).unit.name).toBe('db/0');
  });

  test('is refused a relation of other applications, and a unit sharing no relation, exactly like ones that do not exist', async () => {
    const refusals = [
      { who: 'webapp/0', method: 'GetRelation', field: 'relation_id', hidden: r2, absent: 'tls-certificates:999999' },
      { who: 'webapp/0', method: 'GetUnit', field: 'name', hidden: 'db/0', absent: 'nobody/0' },
      { who: 'db/0', method: 'GetUnit', field: 'name', hidden: 'ca/0', absent: 'ca/9' },
    ];
    for (const { who, method, field, hidden, absent } of refusals) {
      const before = h.server.store.currentRevision();
      const refusal = async (name: string) => {
        const { code, reason, metadata, message } = await registryAs(who).fail(method, { [field]: name });
        return { code, reason, metadata, message: message.replace(name, '<name>') };
      };
      const refused = await refusal(hidden);
      expect(refused, `${method} of ${hidden} as ${who}`).toEqual({ code: grpc.status.PERMISSION_DENIED, reason: 'NOT_A_MEMBER', metadata: { unit: who, [field]: hidden }, message: expect.any(String) });
      expect(await refusal(absent)).toEqual({ ...refused, metadata: { unit: who, [field]: absent } });
      expect(h.server.store.currentRevision()).toBe(before);
    }
    // The refusal a request call gets for a relation of other applications.
    const listed = await client('RequesterService', tokens['webapp/0']).fail('ListRequests', { relation_id: r2 });
    expect([listed.code, listed.reason]).toEqual([grpc.status.PERMISSION_DENIED, 'NOT_A_MEMBER']);
  });

  test("lists only its application's relations; the filters still apply", async () => {
    const ids = async (unit: string, filter: object = {}) => (await registryAs(unit).call('ListRelations', filter)).relations.map((relation: { id: string }) => relation.id);
    expect(await ids('webapp/0')).toEqual([r1]);
    expect(await ids('ca/0')).toEqual([r1]);
    expect(await ids('db/0')).toEqual([r2]);
    expect(await ids('webapp/0', { application: 'ca' })).toEqual([r1]);
    expect(await ids('webapp/0', { application: 'other' })).toEqual([]);
    expect(await ids('webapp/0', { interface: 'http' })).toEqual([]);
    expect(await ids('webapp/0', { interface: 'tls-certificates' })).toEqual([r1]);
    const all = (await admin.call('ListRelations', {})).relations.map((relation: { id: string }) => relation.id);
    expect(all).toEqual([r1, r2]);
  });
});

test('the owner is allowed, and a relgate-unit header naming itself is accepted', async () => {
  const { requests } = await client('RequesterService', tokens['webapp/0'], 'webapp/0').call('ListRequests', { relation_id: r1 });
  expect(requests.map((r: { request_id: string }) => r.request_id)).toContain(requestId);
});

test('rotation: the old token stops working, the new one works', async () => {
  const { token } = await admin.call('RotateUnitToken', { name: 'ca/0' });
  const old = await client('ResponderService', tokens['ca/0']).fail('GetResponderFlags', { relation_id: r1 });
  expect(old.code).toBe(grpc.status.UNAUTHENTICATED);
  const { flags } = await client('ResponderService', token).call('GetResponderFlags', { relation_id: r1 });
  expect(flags.has_requests).toBe(true);
  tokens['ca/0'] = token;
});

test('revocation mid-watch ends the stream and no event reaches it afterwards', async () => {
  const { token } = await admin.call('RotateUnitToken', { name: 'webapp/0' });
  const watch = client('RequesterService', token).stream('WatchResponses', { options: { relation_id: r1, start: 'WATCH_START_NOW' } });
  let events = 0;
  // A watch from now first says where it begins, in a batch without events.
  const begun = new Promise<{ batch: { events: unknown[]; revision: string } }>((resolve) => watch.once('data', resolve));
  watch.on('data', (message: { batch: { events: unknown[] } }) => (events += message.batch.events.length));
  const ended = new Promise<grpc.ServiceError>((resolve) => watch.on('error', resolve));
  const first = await begun;
  expect(first.batch.events).toEqual([]);
  expect(Number(first.batch.revision)).toBeGreaterThan(0);
  await admin.call('RevokeUnitToken', { name: 'webapp/0' });
  const error = fromServiceError(await ended);
  expect(error.code).toBe(grpc.status.UNAUTHENTICATED);
  expect(error.reason).toBe('TOKEN_REVOKED');
  await client('ResponderService', tokens['ca/0']).call('ClaimRequest', { request_id: requestId });
  expect(events).toBe(0);
});

test('revocation ends a call waiting for its answer with TOKEN_REVOKED', async () => {
  const { token } = await admin.call('RotateUnitToken', { name: 'webapp/0' });
  const incoming = client('ResponderService', tokens['ca/0']).stream('WatchIncomingRequests', { options: { relation_id: r1, start: 'WATCH_START_NOW' } });
  const stored = new Promise<string>((resolve) =>
    incoming.on('data', (message: { batch: { events: { request?: { request_id: string } }[] } }) => {
      const id = message.batch.events.find((event) => event.request)?.request?.request_id;
      if (id) resolve(id);
    }),
  );
  incoming.on('error', () => undefined);
  const waiting = client('RequesterService', token)
    .call('Call', { relation_id: r1, fields: struct({ common_name: 'revoked.example' }), wait_for_responders: true })
    .then(() => null, (error: grpc.ServiceError) => fromServiceError(error));
  const requestOfCall = await stored;
  await admin.call('RevokeUnitToken', { name: 'webapp/0' });
  const error = await waiting;
  expect([error?.code, error?.reason]).toEqual([grpc.status.UNAUTHENTICATED, 'TOKEN_REVOKED']);
  incoming.cancel();
  await client('ResponderService', tokens['ca/0']).call('Respond', { request_id: requestOfCall, fields: struct({ key: 'K', cert: 'C' }) });
});

/**
 * Holds the start of the next watch (as a large snapshot would hold it) until `release`: a revocation can commit
 * meanwhile. `starting` resolves once a watch is being started.
 */
function holdWatchStart() {
  const hub = h.server.hub;
  const watch = hub.watch.bind(hub);
  let entered = () => {};
  const starting = new Promise<void>((resolve) => (entered = resolve));
  let release = () => {};
  const held = new Promise<void>((resolve) => (release = resolve));
  hub.watch = async (...args: Parameters<typeof watch>) => {
    entered();
    await held;
    return watch(...args);
  };
  return { starting, release, restore: () => (hub.watch = watch) };
}

test('a revocation committed while a watch is starting ends it, and nothing of the watch reaches the unit', async () => {
  const { token } = await admin.call('RotateUnitToken', { name: 'webapp/0' });
  const { starting, release, restore } = holdWatchStart();
  try {
    const stream = client('RequesterService', token).stream('WatchResponses', { options: { relation_id: r1 } });
    let events = 0;
    stream.on('data', (message: { batch: { events: { request?: unknown }[] } }) => (events += message.batch.events.filter((event) => event.request).length));
    const ended = new Promise<grpc.ServiceError>((resolve) => stream.on('error', resolve));
    await starting;
    await admin.call('RevokeUnitToken', { name: 'webapp/0' });
    release();
    const error = fromServiceError(await ended);
    expect([error.code, error.reason]).toEqual([grpc.status.UNAUTHENTICATED, 'TOKEN_REVOKED']);
    await client('ResponderService', tokens['ca/0']).call('ClaimRequest', { request_id: requestId }).catch(() => undefined);
    expect(events).toBe(0);
  } finally {
    restore();
  }
});

test('a revocation committed while a session watch is starting ends the session, and nothing of the watch reaches the unit', async () => {
  const { token } = await admin.call('RotateUnitToken', { name: 'webapp/0' });
  const { starting, release, restore } = holdWatchStart();
  try {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${token}`);
    const Session = v1.SessionService as NonNullable<typeof v1.SessionService>;
    const session = (new Session(h.server.address, grpc.credentials.createInsecure()) as unknown as { Open(md: grpc.Metadata): grpc.ClientDuplexStream<object, { events?: { batch: { events: unknown[] } } }> }).Open(metadata);
    let events = 0;
    session.on('data', (message) => (events += message.events?.batch.events.length ?? 0));
    const ended = new Promise<grpc.ServiceError>((resolve) => session.on('error', resolve));
    session.write({ start: { responses: { relation_id: r1 } } });
    await starting;
    await admin.call('RevokeUnitToken', { name: 'webapp/0' });
    release();
    const error = fromServiceError(await ended);
    expect([error.code, error.reason]).toEqual([grpc.status.UNAUTHENTICATED, 'TOKEN_REVOKED']);
    expect(events).toBe(0);
  } finally {
    restore();
  }
});

test("removing a unit ends its open watch and session with UNIT_REMOVED; its token no longer authenticates, and the name registers again with a new one", async () => {
  await admin.call('RegisterApplication', { name: 'scaled' });
  const { token: old } = await admin.call('RegisterUnit', { name: 'scaled/0' });
  // A watch of every relation of the unit (none yet) and a session stay open until something ends them.
  const watch = client('RequesterService', old).stream('WatchResponses', { options: { start: 'WATCH_START_NOW' } });
  const watchEnded = new Promise<grpc.ServiceError>((resolve) => watch.on('error', resolve));
  await new Promise((resolve) => watch.once('data', resolve));
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${old}`);
  const Session = v1.SessionService as NonNullable<typeof v1.SessionService>;
  const session = (new Session(h.server.address, grpc.credentials.createInsecure()) as unknown as { Open(md: grpc.Metadata): grpc.ClientDuplexStream<object, object> }).Open(metadata);
  session.on('data', () => undefined);
  const sessionEnded = new Promise<grpc.ServiceError>((resolve) => session.on('error', resolve));
  session.write({ start: { responses: {} } });
  await new Promise((resolve) => session.once('data', resolve));

  const { revision } = await admin.call('RemoveUnit', { name: 'scaled/0' });
  expect(Number(revision)).toBe(h.server.store.currentRevision());
  for (const ended of [await watchEnded, await sessionEnded]) {
    const error = fromServiceError(ended);
    expect([error.code, error.reason]).toEqual([grpc.status.UNAUTHENTICATED, 'UNIT_REMOVED']);
  }
  const refused = await client('RegistryService', old).fail('GetUnit', { name: 'scaled/0' });
  expect([refused.code, refused.reason]).toEqual([grpc.status.UNAUTHENTICATED, 'INVALID_TOKEN']);

  const { token } = await admin.call('RegisterUnit', { name: 'scaled/0' });
  expect(token).not.toBe(old);
  expect((await client('RegistryService', token).call('GetUnit', { name: 'scaled/0' })).unit.name).toBe('scaled/0');
  const stillRefused = await client('RegistryService', old).fail('GetUnit', { name: 'scaled/0' });
  expect(stillRefused.reason).toBe('INVALID_TOKEN');
});

test('leaving the relation mid-watch ends the stream and no event of the relation reaches it afterwards', async () => {
  const relationId = (await admin.call('ListRelations', {})).relations.find((r: { requester_application: string }) => r.requester_application === 'other').id as string;
  const watch = client('ResponderService', tokens['db/0']).stream('WatchIncomingRequests', { options: { relation_id: relationId, start: 'WATCH_START_NOW' } });
  const kinds: string[] = [];
  watch.on('data', (message: { events?: { type?: string; kind?: string }[] }) => kinds.push(...(message.events ?? []).map((event) => JSON.stringify(event).slice(0, 80))));
  const ended = new Promise<void>((resolve) => {
    watch.on('end', resolve);
    watch.on('error', () => resolve());
  });
  await new Promise<void>((resolve) => {
    const check = () => (h.server.hub.isWatched(relationId, 'responder', 'db/0') ? resolve() : setImmediate(check));
    check();
  });
  await admin.call('LeaveRelation', { relation_id: relationId, unit: 'db/0' });
  await ended;
  const seen = kinds.length;
  await client('RequesterService', tokens['other/0']).call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: 'after.leave' }) });
  expect(kinds.length).toBe(seen);
  expect(h.server.hub.isWatched(relationId, 'responder', 'db/0')).toBe(false);
});

test('tokens never appear in logs', () => {
  const text = logs.join('');
  expect(text).toContain('"method"');
  for (const token of [ADMIN, ...Object.values(tokens)]) expect(text).not.toContain(token);
});

describe('TLS and mutual TLS', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'relgate-tls-'));
  const certs = makeCertificates(dir, ['webapp/0', 'intruder/0', 'ops']);
  const foreignDir = mkdtempSync(path.join(tmpdir(), 'relgate-tls-foreign-'));
  const foreign = makeCertificates(foreignDir, ['webapp/0']);
  const read = (file: string) => readFileSync(file);

  async function registryCall(server: Harness, credentials: grpc.ChannelCredentials) {
    const Client = v1.RegistryService!;
    const rpc = new Rpc(new Client(server.server.address, credentials));
    rpc.metadata.set('authorization', `Bearer ${ADMIN}`);
    try {
      return await rpc.call('ListInterfaces', {});
    } finally {
      rpc.client.close();
    }
  }

  test('TLS: the right CA connects, a foreign CA fails the handshake', async () => {
    const tls = await startHarness({ auth: 'token', adminToken: ADMIN, tlsCert: certs.serverCert, tlsKey: certs.serverKey, listen: '127.0.0.1:0' });
    try {
      const ok = await registryCall(tls, grpc.credentials.createSsl(read(certs.ca)));
      expect(ok.interfaces.length).toBeGreaterThan(0);
      await expect(registryCall(tls, grpc.credentials.createSsl(read(foreign.ca)))).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
      await expect(registryCall(tls, grpc.credentials.createInsecure())).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
    } finally {
      await tls.close();
    }
  });

  test('mTLS: no or foreign client certificate fails; a unit certificate identifies the unit and metadata cannot override it', async () => {
    const mtls = await startHarness({ tlsCert: certs.serverCert, tlsKey: certs.serverKey, tlsClientCa: certs.ca, listen: '127.0.0.1:0' });
    try {
      await expect(registryCall(mtls, grpc.credentials.createSsl(read(certs.ca)))).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
      const foreignClient = foreign.client('webapp/0');
      await expect(registryCall(mtls, grpc.credentials.createSsl(read(certs.ca), read(foreignClient.key), read(foreignClient.cert)))).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
      const mine = certs.client('webapp/0');
      const credentials = grpc.credentials.createSsl(read(certs.ca), read(mine.key), read(mine.cert));
      const Registry = v1.RegistryService!;
      const registry = new Rpc(new Registry(mtls.server.address, credentials));
      await registry.call('RegisterApplication', { name: 'webapp' });
      await registry.call('RegisterUnit', { name: 'webapp/0' });
      const Requester = v1.RequesterService!;
      const asCert = new Rpc(new Requester(mtls.server.address, credentials));
      const flags = await asCert.call('GetRequesterFlags', {});
      expect(flags.flags.all_responses).toBe(false);
      const impersonating = new Rpc(new Requester(mtls.server.address, credentials), 'ca/0');
      const error = await impersonating.fail('GetRequesterFlags', {});
      expect(error.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(error.reason).toBe('IMPERSONATION');
      for (const rpc of [registry, asCert, impersonating]) rpc.client.close();
    } finally {
      await mtls.close();
    }
  });

  test("mTLS in token mode: a unit certificate reads its application's relations, joined or not, and the units joined to them, and no others", async () => {
    const mtls = await startHarness({ auth: 'token', adminToken: ADMIN, tlsCert: certs.serverCert, tlsKey: certs.serverKey, tlsClientCa: certs.ca });
    const Registry = v1.RegistryService!;
    const registryAs = (cn: string) => {
      const mine = certs.client(cn);
      return new Rpc(new Registry(mtls.server.address, grpc.credentials.createSsl(read(certs.ca), read(mine.key), read(mine.cert))));
    };
    // A certificate whose common name is no unit name only opens the connection: the admin token decides.
    const operator = registryAs('ops');
    operator.metadata.set('authorization', `Bearer ${ADMIN}`);
    const unit = registryAs('webapp/0');
    try {
      for (const app of ['webapp', 'ca', 'other', 'db']) await operator.call('RegisterApplication', { name: app });
      for (const name of ['webapp/0', 'ca/0', 'db/0']) await operator.call('RegisterUnit', { name, ...PROPERTIES[name] });
      const relate = async (requester: string, responder: string) =>
        (await operator.call('CreateRelation', { interface: 'tls-certificates', requester_application: requester, requester_endpoint: 'certificates', responder_application: responder, responder_endpoint: 'certificates' })).relation.id as string;
      const [mine, theirs] = [await relate('webapp', 'ca'), await relate('other', 'db')];
      await operator.call('JoinRelation', { relation_id: mine, unit: 'ca/0' });
      await operator.call('JoinRelation', { relation_id: theirs, unit: 'db/0' });
      expect((await unit.call('ListRelations', {})).relations.map((relation: { id: string }) => relation.id)).toEqual([mine]);
      expect((await unit.call('GetUnit', { name: 'ca/0' })).unit).toMatchObject(PROPERTIES['ca/0'] as object);
      for (const [method, body] of [['GetRelation', { relation_id: theirs }], ['GetUnit', { name: 'db/0' }]] as const) {
        expect((await unit.fail(method, body)).reason).toBe('NOT_A_MEMBER');
      }
      expect((await unit.fail('ListUnits', {})).reason).toBe('ADMIN_REQUIRED');
    } finally {
      for (const rpc of [operator, unit]) rpc.client.close();
      await mtls.close();
    }
  });
});
