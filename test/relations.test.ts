// The bookkeeping of a request change (the relation's counters, the units'
// flags) inside a store write that fails afterwards: the write is rolled back,
// and so must be everything later writes build on.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, expect, test } from 'vitest';
import { InterfaceRegistry } from '../src/interfaces.ts';
import { RegistryService } from '../src/registry-service.ts';
import { recordRequestChange } from '../src/relations.ts';
import { RequestService } from '../src/request-service.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import { jsonToStruct } from '../src/struct.ts';

let dir: string;
let store: SqliteStore;

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'relgate-relations-'));
  store = new SqliteStore({ path: path.join(dir, 'relgate.db') });
});

afterEach(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

test('a write that fails after request changes leaves the relation counters and flags as they were', async () => {
  const interfaces = await InterfaceRegistry.load();
  const registry = new RegistryService(store, interfaces);
  const requests = new RequestService(store, interfaces, { maxMessageBytes: 16 * 1024 * 1024 });
  for (const application of ['web', 'ca']) await registry.registerApplication(application);
  for (const name of ['web/0', 'ca/0']) await registry.registerUnit({ name, ingress_address: '', egress_subnets: [], labels: {} });
  const { relation } = await registry.createRelation({ interface: 'tls-certificates', version: 1, requester_application: 'web', requester_endpoint: 'certificates', responder_application: 'ca', responder_endpoint: 'certificates' });
  for (const unit of ['web/0', 'ca/0']) await registry.joinRelation(relation.id, unit, undefined);
  const created: string[] = [];
  for (const name of ['a.example', 'b.example']) {
    const input = { relation_id: relation.id, request_id: '', fields: jsonToStruct({ common_name: name }), delivery: { mode: 'any' as const, unit: '', selector: '' }, ttl: null };
    created.push((await requests.create('web/0', input)).request.request_id);
  }
  const counters = structuredClone((await store.read((tx) => tx.getRelation(relation.id)))?.counters);
  const flags = { requester: await requests.requesterFlags('web/0', { relationId: relation.id, iface: '' }), responder: await requests.responderFlags('ca/0', { relationId: relation.id, iface: '' }) };
  expect(flags.responder.flags.new_requests).toBe(true);

  const failure = store.write(async (tx) => {
    // Both requests withdrawn, one change after the other, as a sweep or a unit leaving makes them.
    for (const requestId of created) {
      const stored = await tx.getRequest(requestId);
      const current = await tx.getRelation(relation.id);
      if (!stored || !current) throw new Error('set-up went wrong');
      await recordRequestChange(tx, current, stored, null);
    }
    expect((await tx.getRelation(relation.id))?.counters).toEqual({});
    throw new Error('a later statement failed');
  });
  await expect(failure).rejects.toThrow('a later statement failed');

  expect((await store.read((tx) => tx.getRelation(relation.id)))?.counters).toEqual(counters);
  expect({ requester: await requests.requesterFlags('web/0', { relationId: relation.id, iface: '' }), responder: await requests.responderFlags('ca/0', { relationId: relation.id, iface: '' }) }).toEqual(flags);
});
