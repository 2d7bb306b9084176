// RegistryService against a real server and SQLite file: interfaces and
// their schemas, applications, units, relations, joining and leaving.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Code } from '../src/errors.ts';
import { InterfaceRegistry } from '../src/interfaces.ts';
import { Rpc, clientsOf, startHarness, struct, type Harness } from './helpers/harness.ts';
import { startServer, type RunningServer } from '../src/server.ts';
import { appName, expectOneRelationFromCreatesAtOnce, makeWorld } from './helpers/world.ts';
import { watch } from './helpers/streams.ts';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(() => h.close());

const field = (name: string, type: string, required: boolean, description: string, repeated = false) => ({
  name,
  type,
  repeated,
  map: false,
  description,
  required,
  fields: [],
  enum_values: [],
});

const TLS = {
  name: 'tls-certificates',
  version: 1,
  description: 'A certificate authority issues X.509 certificates to the requesting units.',
  source_file: 'relgate/interfaces/tls_certificates/v1/tls_certificates.proto',
  request: {
    full_name: 'relgate.interfaces.tls_certificates.v1.CertificateRequest',
    fields: [
      field('common_name', 'string', true, 'The common name (CN) the certificate is issued for.'),
      field('sans', 'string', false, 'Subject alternative names: DNS names or IP addresses the certificate is also valid for.', true),
    ],
  },
  response: {
    full_name: 'relgate.interfaces.tls_certificates.v1.CertificateResponse',
    fields: [
      field('key', 'string', true, 'The private key of the certificate, PEM-encoded.'),
      field('cert', 'string', true, 'The certificate, PEM-encoded.'),
      field('ca', 'string', false, 'The certificate of the issuing authority, PEM-encoded.'),
    ],
  },
};

const HTTP = {
  name: 'http',
  version: 1,
  description: 'Web servers tell a reverse proxy the host and port they serve on.',
  source_file: 'relgate/interfaces/http/v1/http.proto',
  request: {
    full_name: 'relgate.interfaces.http.v1.HttpRequest',
    fields: [field('service_name', 'string', false, "Name under which the proxy groups the answering units; the requesting application's name when empty.")],
  },
  response: {
    full_name: 'relgate.interfaces.http.v1.HttpResponse',
    fields: [field('hostname', 'string', true, 'Host name or address the unit serves on.'), field('port', 'uint32', true, 'TCP port the unit serves on.')],
  },
};

describe('interfaces', () => {
  test('ListInterfaces lists the built-in interfaces by name with their schemas', async () => {
    const { interfaces } = await h.registry.call('ListInterfaces');
    expect(interfaces).toEqual([HTTP, TLS]);
  });

  test('GetInterface returns one interface; version 0 means the highest', async () => {
    expect((await h.registry.call('GetInterface', { name: 'tls-certificates' })).interface).toEqual(TLS);
    expect((await h.registry.call('GetInterface', { name: 'http', version: 1 })).interface).toEqual(HTTP);
  });

  test('GetInterface of an unknown name or version is NOT_FOUND', async () => {
    const unknown = await h.registry.fail('GetInterface', { name: 'ftp' });
    expect([unknown.code, unknown.reason]).toEqual([Code.NOT_FOUND, 'INTERFACE_NOT_FOUND']);
    const version = await h.registry.fail('GetInterface', { name: 'http', version: 2 });
    expect([version.code, version.reason]).toEqual([Code.NOT_FOUND, 'INTERFACE_NOT_FOUND']);
    expect(version.message).toContain('http v2');
    const empty = await h.registry.fail('GetInterface', {});
    expect([empty.code, empty.fieldViolations.map((v) => v.field)]).toEqual([Code.INVALID_ARGUMENT, ['name']]);
  });
});

describe('interfaces of your own', () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });
  /** A directory holding one interface file; `types` are message declarations that the request and response use. */
  function interfaceDir(name: string, types: string, request: string, role = { request: 'INTERFACE_ROLE_REQUEST', response: 'INTERFACE_ROLE_RESPONSE' }) {
    const dir = mkdtempSync(path.join(tmpdir(), 'relgate-interfaces-'));
    dirs.push(dir);
    writeFileSync(
      path.join(dir, `${name.replaceAll('-', '_')}.proto`),
      `syntax = "proto3"; package test.${name.replaceAll('-', '_')}; import "relgate/v1/options.proto"; ${types}
       message Req { option (relgate.v1.interface) = { name: "${name}" version: 1 role: ${role.request} }; ${request} }
       message Res { option (relgate.v1.interface) = { name: "${name}" version: 1 role: ${role.response} }; string ok = 1; }`,
    );
    return dir;
  }
  const depthOf = (fields: { fields: unknown[] }[]): number => 1 + Math.max(0, ...fields.map((f) => depthOf(f.fields as { fields: unknown[] }[])));
  const entriesOf = (fields: { fields: unknown[] }[]): number => fields.reduce((n, f) => n + 1 + entriesOf(f.fields as { fields: unknown[] }[]), 0);

  test('types that use each other repeatedly are described once each, a long chain 16 levels deep, and a role may be a number', async () => {
    // Twelve types each holding three of the next: described at every use, 3^12 entries.
    const web = Array.from({ length: 12 }, (_, i) => `message W${i} { ${i === 11 ? 'string leaf = 1;' : [1, 2, 3].map((n) => `W${i + 1} f${n} = ${n};`).join(' ')} }`).join(' ');
    const chain = Array.from({ length: 60 }, (_, i) => `message C${i} { ${i === 59 ? 'string leaf = 1;' : `C${i + 1} next = 1;`} }`).join(' ');
    const dirs = [interfaceDir('web-of-types', web, 'W0 root = 1;', { request: '1', response: '2' }), interfaceDir('chain-of-types', chain, 'C0 head = 1;')];
    const own = await startHarness({ interfaces: dirs });
    try {
      const { interfaces } = await own.registry.call('ListInterfaces');
      const byName = new Map(interfaces.map((i: { name: string; request: { fields: { fields: unknown[] }[] } }) => [i.name, i.request.fields]));
      const webFields = byName.get('web-of-types') as { fields: { fields: unknown[] }[] }[];
      expect(entriesOf(webFields)).toBe(1 + 11 * 3 + 1);
      expect(webFields[0]?.fields.map((f) => (f as { fields: unknown[] }).fields.length)).toEqual([3, 0, 0]);
      expect(depthOf(byName.get('chain-of-types') as { fields: unknown[] }[])).toBe(17);
    } finally {
      await own.close();
    }
  });

  /**
   * Sets up a gateway with the interface directories `before`, then restarts it on the same database with `after` and
   * checks the restarted one; everything is closed however it ends.
   */
  async function acrossRestart<T>(before: string[], after: string[], setup: (own: Harness) => Promise<T>, check: (clients: ReturnType<typeof clientsOf>, server: RunningServer, state: T) => Promise<void>) {
    const own = await startHarness({ interfaces: before });
    let restarted: RunningServer | undefined;
    let clients: ReturnType<typeof clientsOf> | undefined;
    try {
      const state = await setup(own);
      await own.server.stop();
      restarted = await startServer({ listen: '127.0.0.1:0', db: own.db, logLevel: 'silent', interfaces: after });
      clients = clientsOf(restarted.address);
      await check(clients, restarted, state);
    } finally {
      clients?.close();
      await restarted?.stop();
      await own.close();
    }
  }

  test("a relation whose interface is no longer loaded keeps its requests listed; only matching or writing fields needs the interface", async () => {
    const setup = async (own: Harness) => {
      const gone = await makeWorld(own, { iface: 'gone-later' });
      const kept = await makeWorld(own, { requesterApp: gone.requesterApp, responderApp: gone.responderApp });
      for (const unit of [...gone.requesters, ...gone.responders]) await own.registry.call('JoinRelation', { relation_id: kept.relationId, unit });
      const { request: old } = await gone.req().call('CreateRequest', { relation_id: gone.relationId, fields: struct({ note: 'n' }) });
      const { request: tls } = await kept.req().call('CreateRequest', { relation_id: kept.relationId, fields: struct({ common_name: 'a.example' }) });
      return { gone, old, tls };
    };
    await acrossRestart([interfaceDir('gone-later', '', 'string note = 1;')], [], setup, async (clients, _server, { gone, old, tls }) => {
      const requester = clients.requester(gone.requesters[0] as string);
      const responder = clients.responder(gone.responders[0] as string);
      const listed = (reply: { requests: { request_id: string }[] }) => reply.requests.map((request) => request.request_id).sort();
      expect(listed(await requester.call('ListRequests', {}))).toEqual([old.request_id, tls.request_id].sort());
      expect(listed(await responder.call('ListIncomingRequests', {}))).toEqual([old.request_id, tls.request_id].sort());
      expect(listed(await requester.call('ListRequests', { interface: 'tls-certificates', match_fields: struct({ common_name: 'a.example' }) }))).toEqual([tls.request_id]);
      for (const error of [await requester.fail('ListRequests', { match_fields: struct({ common_name: 'a.example' }) }), await responder.fail('Respond', { request_id: old.request_id, fields: struct({ ok: 'y' }) })]) {
        expect([error.code, error.reason]).toEqual([Code.FAILED_PRECONDITION, 'INTERFACE_NOT_LOADED']);
      }
    });
  });

  test('a create sent again after its interface changed is a replay of the stored request, not a refusal', async () => {
    const before = interfaceDir('evolving', '', 'string note = 1; string kind = 2;');
    const after = interfaceDir('evolving', '', 'string note = 1;');
    const setup = async (own: Harness) => {
      const world = await makeWorld(own, { iface: 'evolving' });
      const create = { relation_id: world.relationId, request_id: '0190f0a0-0000-7000-8000-000000000001', fields: struct({ note: 'n', kind: 'k' }) };
      const { request } = await world.req().call('CreateRequest', create);
      return { world, create, request };
    };
    await acrossRestart([before], [after], setup, async (clients, restarted, { world, create, request }) => {
      const requester = clients.requester(world.requesters[0] as string);
      const revision = restarted.store.currentRevision();
      const replay = await requester.call('CreateRequest', create);
      expect([replay.request.request_id, replay.request.revision]).toEqual([request.request_id, request.revision]);
      // Another body under the same id is checked against today's interface first.
      const changed = await requester.fail('CreateRequest', { ...create, fields: struct({ note: 'other', kind: 'k' }) });
      expect([changed.code, changed.fieldViolations.map((violation) => violation.field)]).toEqual([Code.INVALID_ARGUMENT, ['fields.kind']]);
      const conflict = await requester.fail('CreateRequest', { ...create, fields: struct({ note: 'other' }) });
      expect([conflict.code, conflict.reason]).toEqual([Code.ALREADY_EXISTS, 'REQUEST_ID_CONFLICT']);
      expect(restarted.store.currentRevision()).toBe(revision);
    });
  });

  test('a mistake in an interface file stops the start naming its file, line and column', async () => {
    const dir = interfaceDir('with-mistake', '', 'string note = 1');
    const start = startServer({ listen: '127.0.0.1:0', db: ':memory:', logLevel: 'silent', interfaces: [dir] });
    await expect(start).rejects.toThrow(new RegExp(`^the interface files do not compile:\\n${dir}/with_mistake\\.proto:\\d+:\\d+:`));
    // In a folder of its own that happens to be named like buf's module folders.
    const nested = path.join(dir, 'm1');
    mkdirSync(nested);
    renameSync(path.join(dir, 'with_mistake.proto'), path.join(nested, 'with_mistake.proto'));
    const again = startServer({ listen: '127.0.0.1:0', db: ':memory:', logLevel: 'silent', interfaces: [dir] });
    await expect(again).rejects.toThrow(new RegExp(`^the interface files do not compile:\\n${dir}/m1/with_mistake\\.proto:\\d+:\\d+:`));
  });

  test('one path in two interface directories is refused, naming both', async () => {
    const [a, b] = [interfaceDir('same-path', '', 'string x = 1;'), interfaceDir('same-path', '', 'string x = 1;')];
    await expect(InterfaceRegistry.load([a as string, b as string])).rejects.toThrow(`interface file same_path.proto is in both ${a} and ${b}`);
  });
});

describe('applications', () => {
  test('RegisterApplication stores the application at a new revision; ListApplications lists by name', async () => {
    const [b, a] = [appName('zb'), appName('za')];
    const before = h.server.store.currentRevision();
    const first = await h.registry.call('RegisterApplication', { name: b });
    expect(first.application).toEqual({ name: b, revision: String(before + 1) });
    const second = await h.registry.call('RegisterApplication', { name: a });
    expect(Number(second.application.revision)).toBe(before + 2);
    expect(h.server.store.currentRevision()).toBe(before + 2);
    const { applications } = await h.registry.call('ListApplications');
    const names = applications.map((app: { name: string }) => app.name);
    expect(names).toEqual([...names].sort());
    expect(applications).toContainEqual(first.application);
    expect(applications).toContainEqual(second.application);
  });

  test('registering an application twice is ALREADY_EXISTS and writes nothing', async () => {
    const name = appName('dup');
    await h.registry.call('RegisterApplication', { name });
    const before = h.server.store.currentRevision();
    const error = await h.registry.fail('RegisterApplication', { name });
    expect([error.code, error.reason, error.metadata]).toEqual([Code.ALREADY_EXISTS, 'APPLICATION_EXISTS', { application: name }]);
    expect(h.server.store.currentRevision()).toBe(before);
  });

  test('RemoveApplication is refused while the application has units or relations (APPLICATION_IN_USE, naming them) and changes nothing; once they are gone it is removed and its name registers again', async () => {
    const w = await makeWorld(h, { requesters: 2, join: false });
    const app = w.requesterApp;
    const [web0, web1] = w.requesters as [string, string];
    const refuse = async (metadata: Record<string, string>) => {
      const before = h.server.store.currentRevision();
      const error = await h.registry.fail('RemoveApplication', { name: app });
      expect([error.code, error.reason, error.metadata]).toEqual([Code.FAILED_PRECONDITION, 'APPLICATION_IN_USE', { application: app, ...metadata }]);
      expect(h.server.store.currentRevision()).toBe(before);
    };
    await refuse({ units: `${web0},${web1}`, relation_ids: w.relationId });
    for (const unit of w.requesters) await h.registry.call('RemoveUnit', { name: unit });
    await refuse({ relation_ids: w.relationId });
    await h.registry.call('DeleteRelation', { relation_id: w.relationId });
    await h.registry.call('RegisterUnit', { name: web0 });
    await refuse({ units: web0 });
    await h.registry.call('RemoveUnit', { name: web0 });

    const { revision } = await h.registry.call('RemoveApplication', { name: app });
    expect(Number(revision)).toBe(h.server.store.currentRevision());
    const { changes } = await h.server.store.changesSince(Number(revision) - 1, 1);
    expect(changes.map((change) => change.data)).toEqual([{ kind: 'registry', what: 'application-removed', name: app }]);
    const names = (await h.registry.call('ListApplications')).applications.map((a: { name: string }) => a.name);
    expect(names).not.toContain(app);
    expect(names).toContain(w.responderApp);
    const unit = await h.registry.fail('RegisterUnit', { name: web0 });
    expect([unit.code, unit.reason]).toEqual([Code.NOT_FOUND, 'APPLICATION_NOT_FOUND']);
    const again = await h.registry.call('RegisterApplication', { name: app });
    expect(again.application).toEqual({ name: app, revision: String(h.server.store.currentRevision()) });
  });

  test('APPLICATION_IN_USE names the first ten units and counts the rest', async () => {
    const app = appName('many');
    await h.registry.call('RegisterApplication', { name: app });
    const units = Array.from({ length: 12 }, (_, i) => `${app}/${i}`);
    for (const name of units) await h.registry.call('RegisterUnit', { name });
    const error = await h.registry.fail('RemoveApplication', { name: app });
    const first = [...units].sort().slice(0, 10).join(',');
    expect(error.metadata).toEqual({ application: app, units: `${first},+2 more` });
    expect(error.message).toBe(`application ${app} still has 12 units (${first},+2 more); remove its units and delete its relations first`);
  });
});

describe('units', () => {
  test('RegisterUnit, GetUnit, UpdateUnit and ListUnits carry ingress_address, egress_subnets and labels', async () => {
    const app = appName('svc');
    const other = appName('oth');
    await h.registry.call('RegisterApplication', { name: app });
    await h.registry.call('RegisterApplication', { name: other });
    const registered = await h.registry.call('RegisterUnit', {
      name: `${app}/0`,
      ingress_address: '192.168.1.10',
      egress_subnets: ['192.168.1.0/24', '2001:db8::/32'],
      labels: { zone: 'a', 'example.com/tier': 'db' },
    });
    const revision = h.server.store.currentRevision();
    expect(registered.unit).toEqual({
      name: `${app}/0`,
      application: app,
      ingress_address: '192.168.1.10',
      egress_subnets: ['192.168.1.0/24', '2001:db8::/32'],
      labels: { zone: 'a', 'example.com/tier': 'db' },
      revision: String(revision),
    });
    expect((await h.registry.call('GetUnit', { name: `${app}/0` })).unit).toEqual(registered.unit);

    await h.registry.call('RegisterUnit', { name: `${app}/1`, ingress_address: 'db-1.internal' });
    await h.registry.call('RegisterUnit', { name: `${other}/0` });

    const updated = await h.registry.call('UpdateUnit', { name: `${app}/0`, ingress_address: '192.168.1.11', egress_subnets: ['10.9.0.0/16'], labels: { zone: 'b' } });
    expect(updated.unit).toEqual({
      name: `${app}/0`,
      application: app,
      ingress_address: '192.168.1.11',
      egress_subnets: ['10.9.0.0/16'],
      labels: { zone: 'b' },
      revision: String(h.server.store.currentRevision()),
    });
    expect(Number(updated.unit.revision)).toBeGreaterThan(revision);
    expect((await h.registry.call('GetUnit', { name: `${app}/0` })).unit).toEqual(updated.unit);

    const { units } = await h.registry.call('ListUnits', { application: app });
    expect(units.map((unit: { name: string }) => unit.name)).toEqual([`${app}/0`, `${app}/1`]);
    expect(units[0]).toEqual(updated.unit);
    expect(units[1].ingress_address).toBe('db-1.internal');
    const all = await h.registry.call('ListUnits', {});
    expect(all.units.map((unit: { name: string }) => unit.name)).toEqual(expect.arrayContaining([`${app}/0`, `${app}/1`, `${other}/0`]));
  });

  test('unit errors: unregistered application, duplicate, unknown unit', async () => {
    const app = appName('ghost');
    const noApp = await h.registry.fail('RegisterUnit', { name: `${app}/0` });
    expect([noApp.code, noApp.reason]).toEqual([Code.NOT_FOUND, 'APPLICATION_NOT_FOUND']);
    await h.registry.call('RegisterApplication', { name: app });
    await h.registry.call('RegisterUnit', { name: `${app}/0` });
    const dup = await h.registry.fail('RegisterUnit', { name: `${app}/0` });
    expect([dup.code, dup.reason]).toEqual([Code.ALREADY_EXISTS, 'UNIT_EXISTS']);
    const unknown = await h.registry.fail('GetUnit', { name: `${app}/7` });
    expect([unknown.code, unknown.reason]).toEqual([Code.NOT_FOUND, 'UNIT_NOT_FOUND']);
    const update = await h.registry.fail('UpdateUnit', { name: `${app}/7` });
    expect([update.code, update.reason]).toEqual([Code.NOT_FOUND, 'UNIT_NOT_FOUND']);
    const before = h.server.store.currentRevision();
    const remove = await h.registry.fail('RemoveUnit', { name: `${app}/7` });
    expect([remove.code, remove.reason]).toEqual([Code.NOT_FOUND, 'UNIT_NOT_FOUND']);
    const removeApp = await h.registry.fail('RemoveApplication', { name: appName('ghost') });
    expect([removeApp.code, removeApp.reason]).toEqual([Code.NOT_FOUND, 'APPLICATION_NOT_FOUND']);
    expect(h.server.store.currentRevision()).toBe(before);
  });

  test('RemoveUnit is refused while the unit has joined a relation (UNIT_IN_RELATION, naming them) and changes nothing; after it leaves, the unit is removed, logged, and its name registers again', async () => {
    const w = await makeWorld(h, { requesters: 2 });
    const second = await makeWorld(h, { requesterApp: w.requesterApp, responderApp: w.responderApp, endpoint: 'other' });
    await h.registry.call('JoinRelation', { relation_id: second.relationId, unit: w.requesters[0] });
    const [web0, web1] = w.requesters as [string, string];
    const before = h.server.store.currentRevision();
    const refused = await h.registry.fail('RemoveUnit', { name: web0 });
    expect([refused.code, refused.reason, refused.metadata]).toEqual([Code.FAILED_PRECONDITION, 'UNIT_IN_RELATION', { unit: web0, relation_ids: `${w.relationId},${second.relationId}` }]);
    expect(h.server.store.currentRevision()).toBe(before);
    expect((await h.registry.call('GetUnit', { name: web0 })).unit.name).toBe(web0);

    for (const relationId of [w.relationId, second.relationId]) await h.registry.call('LeaveRelation', { relation_id: relationId, unit: web0 });
    const { revision } = await h.registry.call('RemoveUnit', { name: web0 });
    expect(Number(revision)).toBe(h.server.store.currentRevision());
    const { changes } = await h.server.store.changesSince(Number(revision) - 1, 1);
    expect(changes.map((change) => change.data)).toEqual([{ kind: 'registry', what: 'unit-removed', name: web0 }]);
    const gone = await h.registry.fail('GetUnit', { name: web0 });
    expect([gone.code, gone.reason]).toEqual([Code.NOT_FOUND, 'UNIT_NOT_FOUND']);
    expect((await h.registry.call('ListUnits', { application: w.requesterApp })).units.map((u: { name: string }) => u.name)).toEqual([web1]);
    // The other units and the relation are untouched.
    expect((await h.registry.call('GetRelation', { relation_id: w.relationId })).relation.units.map((u: { unit: string }) => u.unit)).toEqual([web1, w.responders[0]]);

    const again = await h.registry.call('RegisterUnit', { name: web0, ingress_address: '10.9.0.1' });
    expect(again.unit).toMatchObject({ name: web0, ingress_address: '10.9.0.1', revision: String(h.server.store.currentRevision()) });
    await h.registry.call('JoinRelation', { relation_id: w.relationId, unit: web0 });
  });

  test("a unit registered under a removed unit's name inherits none of its history: a resume from before the removal replays nothing of the old unit's relations", async () => {
    const w = await makeWorld(h);
    const web0 = w.requesters[0] as string;
    const before = h.server.store.currentRevision();
    await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: 'old-unit.example' }) });
    await h.registry.call('LeaveRelation', { relation_id: w.relationId, unit: web0 });
    await h.registry.call('RemoveUnit', { name: web0 });
    await h.registry.call('RegisterUnit', { name: web0 });
    const resume = { start: 'WATCH_START_AFTER_REVISION', after_revision: String(before), progress_interval_ms: 50 };
    // The old unit could have replayed this relation up to its departure; the new one is refused as a stranger.
    const one = await watch(w.req(), { ...resume, relation_id: w.relationId }).status;
    expect([one?.code, one?.reason]).toEqual([Code.FAILED_PRECONDITION, 'UNIT_NOT_JOINED']);
    // A watch of every relation catches up to now and goes live without a single event of the old unit's relation.
    const every = watch(w.req(), resume);
    await every.events.next((event) => event.type === 'EVENT_TYPE_BOOKMARK' && Number(event.revision) >= h.server.store.currentRevision());
    every.cancel();
    expect(every.events.items.filter((event) => event.type !== 'EVENT_TYPE_BOOKMARK')).toEqual([]);
  });
});

describe('relations', () => {
  test('CreateRelation resolves the interface version; GetRelation and ListRelations show it', async () => {
    const w = await makeWorld(h, { join: false });
    const { relation } = await h.registry.call('GetRelation', { relation_id: w.relationId });
    expect(relation).toEqual({
      id: w.relationId,
      interface: 'tls-certificates',
      version: 1,
      requester_application: w.requesterApp,
      requester_endpoint: 'certificates',
      responder_application: w.responderApp,
      responder_endpoint: 'certificates',
      units: [],
      create_revision: relation.revision,
      revision: relation.revision,
    });
    expect(w.relationId).toMatch(/^tls-certificates:\d+$/);

    const second = await h.registry.call('CreateRelation', {
      interface: 'http',
      version: 1,
      requester_application: w.requesterApp,
      requester_endpoint: 'website',
      responder_application: w.responderApp,
      responder_endpoint: 'website',
    });
    expect(second.relation.id).toMatch(/^http:\d+$/);

    const byApp = await h.registry.call('ListRelations', { application: w.requesterApp });
    expect(byApp.relations.map((r: { id: string }) => r.id)).toEqual([w.relationId, second.relation.id]);
    const byResponder = await h.registry.call('ListRelations', { application: w.responderApp, interface: 'http' });
    expect(byResponder.relations).toEqual([second.relation]);
    const all = await h.registry.call('ListRelations', {});
    const allIds = all.relations.map((r: { id: string }) => r.id);
    expect(allIds.indexOf(w.relationId)).toBeLessThan(allIds.indexOf(second.relation.id));
    const creates = all.relations.map((r: { create_revision: string }) => Number(r.create_revision));
    expect(creates).toEqual([...creates].sort((a, b) => a - b));
  });

  test('CreateRelation with an unknown interface or application is NOT_FOUND', async () => {
    const w = await makeWorld(h, { join: false });
    const iface = await h.registry.fail('CreateRelation', {
      interface: 'ftp',
      requester_application: w.requesterApp,
      requester_endpoint: 'x',
      responder_application: w.responderApp,
      responder_endpoint: 'y',
    });
    expect([iface.code, iface.reason]).toEqual([Code.NOT_FOUND, 'INTERFACE_NOT_FOUND']);
    const app = await h.registry.fail('CreateRelation', {
      interface: 'http',
      requester_application: w.requesterApp,
      requester_endpoint: 'x',
      responder_application: 'nobody-here',
      responder_endpoint: 'y',
    });
    expect([app.code, app.reason]).toEqual([Code.NOT_FOUND, 'APPLICATION_NOT_FOUND']);
  });

  test('CreateRelation between endpoints already related over the interface is ALREADY_EXISTS (RELATION_EXISTS) naming the relation, and writes nothing; other endpoints, another interface, the other direction, or after a delete are created', async () => {
    const w = await makeWorld(h, { join: false });
    const spec = { interface: 'tls-certificates', requester_application: w.requesterApp, requester_endpoint: 'certificates', responder_application: w.responderApp, responder_endpoint: 'certificates' };
    const before = h.server.store.currentRevision();
    for (const again of [spec, { ...spec, version: 1 }]) {
      const refused = await h.registry.fail('CreateRelation', again);
      expect([refused.code, refused.reason, refused.metadata]).toEqual([Code.ALREADY_EXISTS, 'RELATION_EXISTS', { relation_id: w.relationId }]);
    }
    expect(h.server.store.currentRevision()).toBe(before);
    const ids = async () => (await h.registry.call('ListRelations', { application: w.requesterApp })).relations.map((relation: { id: string }) => relation.id);
    expect(await ids()).toEqual([w.relationId]);

    const others = [
      { ...spec, requester_endpoint: 'more' },
      { ...spec, responder_endpoint: 'more' },
      { ...spec, interface: 'http' },
      { ...spec, requester_application: w.responderApp, responder_application: w.requesterApp },
    ];
    const created = [];
    for (const other of others) created.push((await h.registry.call('CreateRelation', other)).relation.id as string);
    expect(await ids()).toEqual([w.relationId, ...created]);

    await h.registry.call('DeleteRelation', { relation_id: w.relationId });
    const anew = (await h.registry.call('CreateRelation', spec)).relation.id as string;
    expect(anew).not.toBe(w.relationId);
  });

  test('identical CreateRelation calls at once create one relation; every other is refused naming it', async () => {
    const w = await makeWorld(h, { join: false });
    await expectOneRelationFromCreatesAtOnce(Array.from({ length: 8 }, () => h.registry), w);
  });

  test('in open mode registry reads stay open to every caller, whichever unit it names', async () => {
    const w = await makeWorld(h);
    const stranger = await makeWorld(h);
    const asStranger = new Rpc(h.registry.client, stranger.requesters[0]);
    expect((await asStranger.call('GetRelation', { relation_id: w.relationId })).relation.id).toBe(w.relationId);
    expect((await asStranger.call('GetUnit', { name: w.responders[0] })).unit.name).toBe(w.responders[0]);
    const listed = await asStranger.call('ListRelations', {});
    expect(listed.relations.map((relation: { id: string }) => relation.id)).toEqual(expect.arrayContaining([w.relationId, stranger.relationId]));
    expect((await asStranger.call('ListUnits', { application: w.requesterApp })).units.map((unit: { name: string }) => unit.name)).toEqual(w.requesters);
  });

  test('JoinRelation lists units per side and sets available when the other side joins', async () => {
    const w = await makeWorld(h, { requesters: 2, responders: 2, join: false });
    const [web0, web1] = w.requesters as [string, string];
    const [ca0, ca1] = w.responders as [string, string];
    const requesterFlags = () => w.req(0).call('GetRequesterFlags', { relation_id: w.relationId });
    const responderFlags = (i: number) => w.res(i).call('GetResponderFlags', { relation_id: w.relationId });

    const first = await h.registry.call('JoinRelation', { relation_id: w.relationId, unit: web0 });
    expect(first.relation.units).toEqual([{ unit: web0, side: 'SIDE_REQUESTER', revision: first.relation.revision }]);
    expect((await requesterFlags()).flags).toEqual({ available: false, has_responses: false, all_responses: false });

    const responder = await h.registry.call('JoinRelation', { relation_id: w.relationId, unit: ca0, side: 'SIDE_RESPONDER' });
    expect(responder.relation.units.map((u: { unit: string; side: string }) => [u.unit, u.side])).toEqual([
      [web0, 'SIDE_REQUESTER'],
      [ca0, 'SIDE_RESPONDER'],
    ]);
    expect((await requesterFlags()).flags.available).toBe(true);
    expect((await responderFlags(0)).flags).toEqual({ available: true, has_requests: false, new_requests: false });

    // Joining again on the same side changes nothing.
    const before = h.server.store.currentRevision();
    const again = await h.registry.call('JoinRelation', { relation_id: w.relationId, unit: ca0 });
    expect(again.relation).toEqual(responder.relation);
    expect(h.server.store.currentRevision()).toBe(before);

    await h.registry.call('JoinRelation', { relation_id: w.relationId, unit: ca1 });
    await h.registry.call('JoinRelation', { relation_id: w.relationId, unit: web1 });
    const { relation } = await h.registry.call('GetRelation', { relation_id: w.relationId });
    expect(relation.units.map((u: { unit: string; side: string }) => [u.unit, u.side])).toEqual([
      [web0, 'SIDE_REQUESTER'],
      [ca0, 'SIDE_RESPONDER'],
      [ca1, 'SIDE_RESPONDER'],
      [web1, 'SIDE_REQUESTER'],
    ]);
    expect(relation.revision).toBe(relation.units[3].revision);

    // Joining the wrong side is refused.
    const wrong = await h.registry.fail('JoinRelation', { relation_id: w.relationId, unit: web0, side: 'SIDE_RESPONDER' });
    expect([wrong.code, wrong.reason]).toEqual([Code.FAILED_PRECONDITION, 'WRONG_APPLICATION']);
  });

  test('LeaveRelation removes the unit; available turns false when the last unit of a side leaves', async () => {
    const w = await makeWorld(h, { responders: 2 });
    const [ca0, ca1] = w.responders as [string, string];
    const flags = async () => (await w.req().call('GetRequesterFlags', { relation_id: w.relationId })).flags.available;
    const left = await h.registry.call('LeaveRelation', { relation_id: w.relationId, unit: ca0 });
    expect(left.relation.units.map((u: { unit: string }) => u.unit)).toEqual([w.requesters[0], ca1]);
    expect(await flags()).toBe(true);
    await h.registry.call('LeaveRelation', { relation_id: w.relationId, unit: ca1 });
    expect(await flags()).toBe(false);
    // A unit that left can no longer act on the relation.
    const notJoined = await w.res(1).fail('ListIncomingRequests', { relation_id: w.relationId });
    expect([notJoined.code, notJoined.reason]).toEqual([Code.FAILED_PRECONDITION, 'UNIT_NOT_JOINED']);
    const again = await h.registry.fail('LeaveRelation', { relation_id: w.relationId, unit: ca1 });
    expect(again.code).toBe(Code.NOT_FOUND);
    // The requester side sees available false from the responder's point of view too.
    await h.registry.call('JoinRelation', { relation_id: w.relationId, unit: ca1 });
    await h.registry.call('LeaveRelation', { relation_id: w.relationId, unit: w.requesters[0] });
    expect((await w.res(1).call('GetResponderFlags', { relation_id: w.relationId })).flags.available).toBe(false);
  });

  test('DeleteRelation removes the relation with its requests and responses', async () => {
    const w = await makeWorld(h);
    const { request } = await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: 'gone.example' }) });
    await w.res().call('Respond', { request_id: request.request_id, fields: struct({ key: 'K', cert: 'C' }) });
    const before = h.server.store.currentRevision();
    const deleted = await h.registry.call('DeleteRelation', { relation_id: w.relationId });
    expect(deleted.revision).toBe(String(before + 1));
    expect(h.server.store.currentRevision()).toBe(before + 1);
    const get = await h.registry.fail('GetRelation', { relation_id: w.relationId });
    expect([get.code, get.reason]).toEqual([Code.NOT_FOUND, 'RELATION_NOT_FOUND']);
    const listed = await h.registry.call('ListRelations', { application: w.requesterApp });
    expect(listed.relations).toEqual([]);
    const gone = await w.req().fail('GetRequest', { request_id: request.request_id });
    expect([gone.code, gone.reason]).toEqual([Code.NOT_FOUND, 'REQUEST_NOT_FOUND']);
    const respond = await w.res().fail('Respond', { request_id: request.request_id, fields: struct({ key: 'K', cert: 'C' }) });
    expect(respond.code).toBe(Code.NOT_FOUND);
    const again = await h.registry.fail('DeleteRelation', { relation_id: w.relationId });
    expect([again.code, again.reason]).toEqual([Code.NOT_FOUND, 'RELATION_NOT_FOUND']);
    // The units remain registered and can join a new relation.
    const { units } = await h.registry.call('ListUnits', { application: w.requesterApp });
    expect(units.map((u: { name: string }) => u.name)).toEqual(w.requesters);
  });
});
