// One suite, two stores: every store-level behaviour the gateway relies on,
// run against SQLite (a real file) and PostgreSQL (a throw-away cluster).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, afterEach, describe, expect, it } from 'vitest';
import { Code, RelgateError } from '../src/errors.ts';
import { PostgresStore } from '../src/store/postgres-store.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import type { Change, ChangeData, RelationRecord, RequestRecord, ResponseRecord, Store, StoreTx, UnitRecord } from '../src/store/store.ts';
import { startPostgres, type PostgresCluster } from './helpers/postgres.ts';

/** Opens a store on a fresh location; `reopen` opens the same location again. */
interface Backend {
  name: string;
  setup(): Promise<void>;
  teardown(): Promise<void>;
  fresh(): Promise<{ open(): Promise<Store> }>;
}

const dirs: string[] = [];
let cluster: PostgresCluster | undefined;

/** SQLite on a real file in a fresh directory, with the given cache size. */
function sqliteBackend(name: string, cacheEntries?: number): Backend {
  return {
    name,
    async setup() {},
    async teardown() {
      for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
    },
    async fresh() {
      const dir = mkdtempSync(path.join(tmpdir(), 'relgate-store-'));
      dirs.push(dir);
      const file = path.join(dir, 'relgate.db');
      return { open: async () => new SqliteStore({ path: file, cacheEntries }) };
    },
  };
}

const BACKENDS: Backend[] = [
  sqliteBackend('sqlite'),
  // Caches of one record: reads past the last record written go to the database, and rollbacks meet evicted entries.
  sqliteBackend('sqlite with one-record caches', 1),
  postgresBackend('postgres'),
  // Batch caches of one record: reads of what the batch wrote past the last record go to what it has not yet written.
  postgresBackend('postgres with one-record batch caches', 1),
];

/** A fresh database on one throw-away cluster per backend. */
function postgresBackend(name: string, batchCacheEntries?: number): Backend {
  return {
    name,
    async setup() {
      cluster = await startPostgres();
    },
    async teardown() {
      await cluster?.stop();
    },
    async fresh() {
      if (!cluster) throw new Error('no cluster');
      const url = await cluster.createDatabase();
      return { open: () => PostgresStore.open({ url, ...(batchCacheEntries === undefined ? {} : { batchCacheEntries }) }) };
    },
  };
}

function request(id: string, relationId: string, createRevision: number, extra: Partial<RequestRecord> = {}): RequestRecord {
  return {
    request_id: id,
    relation_id: relationId,
    interface: 'tls-certificates',
    source_unit: 'web/0',
    source_ingress_address: '10.0.0.1',
    source_egress_subnets: ['10.0.0.0/24'],
    source_labels: {},
    fields: { common_name: 'web.example', nested: { z: 1, a: [true, null, 'x'] } },
    delivery: { mode: 'any', unit: '', selector: '' },
    expected_units: [],
    expected_count: 1,
    answered_units: [],
    response_count: 0,
    state: 'pending',
    claim: null,
    expire_time: null,
    body: '{"b":1}',
    create_time: 1,
    update_time: 1,
    create_revision: createRevision,
    revision: createRevision,
    ...extra,
  };
}

function unit(name: string, extra: Partial<UnitRecord> = {}): UnitRecord {
  return { name, application: name.split('/')[0] as string, ingress_address: '10.0.0.1', egress_subnets: [], labels: {}, revision: 1, ...extra };
}

function relation(id: string, createRevision: number): RelationRecord {
  return {
    id,
    interface: 'tls-certificates',
    version: 1,
    requester_application: 'web',
    requester_endpoint: 'certificates',
    responder_application: 'ca',
    responder_endpoint: 'certificates',
    create_revision: createRevision,
    revision: createRevision,
    counters: { requests: 0 },
  };
}

function response(requestId: string, responder: string, revision: number): ResponseRecord {
  return { request_id: requestId, relation_id: 'r1', responder_unit: responder, code: 0, error: '', fields: { cert: 'C' }, create_time: 2, revision };
}

/** Appends a registry change so the write takes a revision. */
async function bump(store: Store, relationId = 'r1', name = 'x'): Promise<number> {
  return store.write(async (tx) => {
    await tx.appendChange(relationId, { kind: 'registry', what: 'test', name });
    return tx.revision();
  });
}

function recordCommits(store: Store): Change[][] {
  const commits: Change[][] = [];
  store.onCommit((changes) => commits.push([...changes]));
  return commits;
}

class Planned extends Error {}

describe.each(BACKENDS)('$name store', (backend) => {
  let store: Store;
  let location: { open(): Promise<Store> };
  const open: Store[] = [];

  beforeAll(() => backend.setup(), 60_000);
  afterAll(() => backend.teardown());
  beforeEach(async () => {
    location = await backend.fresh();
    store = await location.open();
    open.push(store);
  });
  afterEach(async () => {
    for (const s of open.splice(0)) await s.close();
  });

  async function reopen(): Promise<Store> {
    await store.close();
    const again = await location.open();
    open.push(again);
    return again;
  }

  describe('revisions and atomic writes', () => {
    it('starts empty at revision 0', async () => {
      expect(store.currentRevision()).toBe(0);
      expect(store.compactedRevision()).toBe(0);
      expect(await store.changesSince(0, 10)).toEqual({ changes: [], upTo: 0 });
    });

    it('allocates one revision per write, lazily and once', async () => {
      const seen = await store.write(async (tx) => [await tx.revision(), await tx.revision()]);
      expect(seen).toEqual([1, 1]);
      const untouched = await store.write(async (tx) => {
        await tx.putApplication({ name: 'web', revision: 0 });
        return store.currentRevision();
      });
      expect(untouched).toBe(1);
      expect(await bump(store)).toBe(2);
    });

    it('a write that throws leaves nothing behind and gives its revision back', async () => {
      await bump(store);
      const failed = store.write(async (tx) => {
        await tx.putApplication({ name: 'web', revision: await tx.revision() });
        await tx.appendChange('r1', { kind: 'registry', what: 'application', name: 'web' });
        await tx.nextRelationNumber();
        throw new Planned('no');
      });
      await expect(failed).rejects.toBeInstanceOf(Planned);
      expect(await store.read((tx) => tx.getApplication('web'))).toBeUndefined();
      expect(await bump(store)).toBe(2);
      expect(await store.write((tx) => tx.nextRelationNumber())).toBe(1);
      expect((await store.changesSince(0, 10)).changes.map((c) => c.revision)).toEqual([1, 2]);
    });

    it('a write that throws leaves units, relations, memberships and flags as they were, read before and after it', async () => {
      const ru = (unitName: string, side: 'requester' | 'responder', revision: number) => ({ relation_id: 'r1', unit: unitName, side, revision });
      await store.write(async (tx) => {
        await tx.putUnit(unit('web/0', { labels: { zone: 'a' } }));
        await tx.putRelation(relation('r1', 1));
        await tx.putRelationUnit(ru('web/0', 'requester', 1));
        await tx.putFlags('r1', 'web/0', { available: false });
      });
      const snapshot = () =>
        store.read(async (tx) => ({
          unit: await tx.getUnit('web/0'),
          relation: await tx.getRelation('r1'),
          units: await tx.listRelationUnits('r1'),
          flags: await tx.getFlags('r1', 'web/0'),
        }));
      const before = await snapshot();
      const failed = store.write(async (tx) => {
        await tx.putUnit(unit('web/0', { labels: { zone: 'b' } }));
        const read = await tx.getRelation('r1');
        if (read) read.counters.requests = 99; // changing what was read stores nothing
        await tx.putRelation({ ...relation('r1', 1), revision: 5 });
        await tx.putRelationUnit(ru('ca/0', 'responder', 5));
        await tx.putFlags('r1', 'web/0', { available: true });
        expect((await tx.getUnit('web/0'))?.labels).toEqual({ zone: 'b' });
        expect((await tx.listRelationUnits('r1')).map((u) => u.unit)).toEqual(['web/0', 'ca/0']);
        await tx.deleteUnit('web/0');
        expect(await tx.getUnit('web/0')).toBeUndefined();
        await tx.deleteRelation('r1');
        expect(await tx.getRelation('r1')).toBeUndefined();
        expect(await tx.getFlags('r1', 'web/0')).toBeUndefined();
        throw new Planned('no');
      });
      await expect(failed).rejects.toBeInstanceOf(Planned);
      expect(await snapshot()).toEqual(before);
      expect(before.relation?.counters).toEqual({ requests: 0 });
      expect(before.units.map((u) => u.unit)).toEqual(['web/0']);
    });

    it('a write that throws after reading back what it changed leaves no trace of it in later reads', async () => {
      await store.write(async (tx) => {
        await tx.putRelation(relation('r1', 1));
        await tx.putRelationUnit({ relation_id: 'r1', unit: 'web/0', side: 'requester', revision: 1 });
      });
      const read = async (tx: StoreTx) => [(await tx.getRelation('r1'))?.id, (await tx.listRelationUnits('r1')).map((member) => member.unit)];
      // Issued together, so that they share one batch where the store batches writes; the failing write is not the
      // batch's first, and finds r1's members not yet remembered.
      const afterFailure = async (change: (tx: StoreTx) => Promise<void>) => {
        const [, failed, later] = await Promise.allSettled([
          store.write((tx) => tx.putApplication({ name: 'web', revision: 1 })),
          store.write(async (tx) => {
            await change(tx);
            await read(tx);
            throw new Planned('no');
          }),
          store.write(read),
        ]);
        expect(failed.status === 'rejected' && failed.reason instanceof Planned).toBe(true);
        return later.status === 'fulfilled' ? later.value : later.reason;
      };
      const unchanged = ['r1', ['web/0']];
      expect(await afterFailure((tx) => tx.putRelationUnit({ relation_id: 'r1', unit: 'ca/0', side: 'responder', revision: 2 }))).toEqual(unchanged);
      expect(await afterFailure((tx) => tx.deleteRelationUnit('r1', 'web/0'))).toEqual(unchanged);
      expect(await afterFailure((tx) => tx.deleteRelation('r1'))).toEqual(unchanged);
      expect(await store.read(read)).toEqual(unchanged);
      expect(await (await reopen()).read(read)).toEqual(unchanged);
    });

    it('records put and got are copies: changing them afterwards changes nothing stored', async () => {
      const stored = relation('r1', 1);
      const labels = { zone: 'a' };
      await store.write(async (tx) => {
        await tx.putRelation(stored);
        await tx.putUnit(unit('web/0', { labels }));
      });
      stored.counters.requests = 7;
      labels.zone = 'z';
      const got = await store.read((tx) => tx.getRelation('r1'));
      if (got) got.counters.requests = 8;
      expect((await store.read((tx) => tx.getRelation('r1')))?.counters).toEqual({ requests: 0 });
      expect((await store.read((tx) => tx.getUnit('web/0')))?.labels).toEqual({ zone: 'a' });
    });

    it('writes in flight together commit together, and a failing one leaves the others intact', async () => {
      const commits = recordCommits(store);
      const fail = () =>
        store.write(async (tx) => {
          await tx.appendChange('r1', { kind: 'registry', what: 'test', name: 'doomed' });
          throw new Planned('no');
        });
      const results = await Promise.allSettled([
        fail(),
        bump(store, 'r1', 'a'),
        fail(),
        bump(store, 'r1', 'b'),
        bump(store, 'r2', 'c'),
      ]);
      expect(results.map((r) => r.status)).toEqual(['rejected', 'fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
      expect(results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))).toEqual([1, 2, 3]);
      const names = commits.flat().map((c) => (c.data.kind === 'registry' ? c.data.name : ''));
      expect(names).toEqual(['a', 'b', 'c']);
      expect(store.currentRevision()).toBe(3);
    });

    it('a relation rewritten by every write of a batch reads back as last written: in the batch, listed, after a failed write that listed it, and reopened', async () => {
      await store.write(async (tx) => {
        await tx.putRelation(relation('r1', 1));
        await tx.putRelation(relation('r2', 2));
      });
      const requestsOf = async (tx: StoreTx, id: string) => (await tx.getRelation(id))?.counters.requests;
      const increment = (id: string) =>
        store.write(async (tx) => {
          const before = await tx.getRelation(id);
          if (!before) throw new Error(`no relation ${id}`);
          await tx.putRelation({ ...before, counters: { requests: (before.counters.requests ?? 0) + 1 } });
          await tx.putRelation(relation(`other-${id}-${String(before.counters.requests)}`, 9)); // with one-record caches, evicts id
          return requestsOf(tx, id);
        });
      const listed = (tx: StoreTx) => tx.listRelations().then((all) => Object.fromEntries(all.filter((r) => !r.id.startsWith('other')).map((r) => [r.id, r.counters.requests])));
      // Issued together, so that they share one batch where the store batches writes.
      const results = await Promise.allSettled([
        increment('r1'),
        increment('r1'),
        increment('r2'),
        store.write(async (tx) => {
          const before = await tx.getRelation('r1');
          if (!before) throw new Error('no relation r1');
          await tx.putRelation({ ...before, counters: { requests: 100 } });
          expect(await listed(tx)).toEqual({ r1: 100, r2: 1 });
          throw new Planned('no');
        }),
        increment('r1'),
        store.write(listed),
      ]);
      expect(results.map((r) => (r.status === 'fulfilled' ? r.value : r.reason instanceof Planned))).toEqual([1, 2, 1, true, 3, { r1: 3, r2: 1 }]);
      expect(await store.read(async (tx) => [await requestsOf(tx, 'r1'), await requestsOf(tx, 'r2')])).toEqual([3, 1]);
      expect(await increment('r2')).toBe(2); // a batch that lists nothing
      const again = await reopen();
      expect(await again.read(listed)).toEqual({ r1: 3, r2: 2 });
      expect(await again.read(async (tx) => [await requestsOf(tx, 'r1'), await requestsOf(tx, 'r2')])).toEqual([3, 2]);
    });

    it('requests and flags put by earlier writes of a batch are read, listed and deleted by later ones, and committed as the batch left them', async () => {
      await store.write(async (tx) => {
        await tx.putRelation(relation('r1', 1));
        await tx.putRelation(relation('r2', 2));
      });
      const ids = (records: RequestRecord[]) => records.map((r) => r.request_id);
      // Each lists before anything else has, where a store writes out what it kept back before listing.
      const listAll = async (tx: StoreTx, first: 'due' | 'requests') => {
        const due = first === 'due' ? ids(await tx.listDue(200, 10)) : [];
        const requests = ids(await tx.listRequests({ relationIds: ['r1', 'r2'], afterCreateRevision: 0, limit: 10 }));
        const pending = ids(await tx.listRequests({ relationIds: ['r1', 'r2'], afterCreateRevision: 0, limit: 10, pendingOnly: true }));
        return { requests, pending, due: first === 'due' ? due : ids(await tx.listDue(200, 10)) };
      };
      let listedByFailedWrite: unknown;
      // Issued together, so that they share one batch where the store batches writes.
      const results = await Promise.allSettled([
        store.write(async (tx) => {
          await tx.putRequest(request('q1', 'r1', 3, { expire_time: 100 }));
          await tx.putRequest(request('q2', 'r1', 4));
          await tx.putRequest(request('q3', 'r2', 5));
          await tx.putFlags('r1', 'ca/0', { new: true });
          await tx.putFlags('r2', 'ca/0', { new: true });
        }),
        store.write(async (tx) => {
          const seen = { q1: (await tx.getRequest('q1'))?.expire_time, flags: await tx.getFlags('r1', 'ca/0') };
          await tx.putRequest(request('q2', 'r1', 4, { state: 'answered' }));
          await tx.putResponse(response('q2', 'ca/0', 6));
          await tx.putFlags('r1', 'ca/0', { new: false });
          return seen;
        }),
        store.write(async (tx) => {
          listedByFailedWrite = await listAll(tx, 'due');
          await tx.putRequest(request('q4', 'r1', 7));
          throw new Planned('no');
        }),
        store.write(async (tx) => {
          await tx.putFlags('r1', 'web/0', { ready: true });
          await tx.putFlags('r3', 'web/0', { ready: true });
          await tx.deleteRequest('q1');
          await tx.deleteFlags('r1', 'ca/0');
          await tx.deleteFlags('r3');
          await tx.deleteRelation('r2');
          return { q1: await tx.getRequest('q1'), flags: await tx.getFlags('r1', 'web/0'), listed: await listAll(tx, 'requests') };
        }),
      ]);
      expect(results.map((r) => (r.status === 'fulfilled' ? r.value : r.reason instanceof Planned))).toEqual([
        undefined,
        { q1: 100, flags: { new: true } },
        true,
        { q1: undefined, flags: { ready: true }, listed: { requests: ['q2'], pending: [], due: [] } },
      ]);
      expect(listedByFailedWrite).toEqual({ requests: ['q1', 'q2', 'q3'], pending: ['q1', 'q3'], due: ['q1'] });
      const stored = (s: Store) =>
        s.read(async (tx) => ({
          ...(await listAll(tx, 'requests')),
          states: (await tx.listRequests({ relationIds: ['r1', 'r2'], afterCreateRevision: 0, limit: 10 })).map((r) => r.state),
          q1: await tx.getRequest('q1'),
          q3: await tx.getRequest('q3'),
          responses: (await tx.listResponses('q2')).map((r) => r.responder_unit),
          flags: [await tx.getFlags('r1', 'ca/0'), await tx.getFlags('r2', 'ca/0'), await tx.getFlags('r3', 'web/0'), await tx.getFlags('r1', 'web/0')],
          relations: (await tx.listRelations()).map((r) => r.id),
        }));
      const expected = { requests: ['q2'], pending: [], due: [], states: ['answered'], q1: undefined, q3: undefined, responses: ['ca/0'], flags: [undefined, undefined, undefined, { ready: true }], relations: ['r1'] };
      expect(await stored(store)).toEqual(expected);
      expect(await stored(await reopen())).toEqual(expected);
    });

    it('many concurrent writers each get a distinct revision and read their own increments', async () => {
      const numbers = await Promise.all(Array.from({ length: 40 }, () => store.write((tx) => tx.nextRelationNumber())));
      expect([...numbers].sort((a, b) => a - b)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    });

    it('a write reads what earlier writes of the same batch wrote', async () => {
      const [, seen] = await Promise.all([
        store.write((tx) => tx.putApplication({ name: 'web', revision: 1 })),
        store.write(async (tx) => (await tx.getApplication('web'))?.name),
      ]);
      expect(seen).toBe('web');
    });

    it('keeps data, revision, relation numbers and compaction across a reopen', async () => {
      await store.write(async (tx) => {
        await tx.putUnit(unit('web/0', { revision: await tx.revision(), token_hash: 'h1' }));
        await tx.appendChange('', { kind: 'registry', what: 'unit', name: 'web/0' });
        await tx.nextRelationNumber();
      });
      await bump(store);
      await store.compact(1);
      const again = await reopen();
      expect(again.currentRevision()).toBe(2);
      expect(again.compactedRevision()).toBe(1);
      expect(await again.read((tx) => tx.findUnitByTokenHash('h1'))).toMatchObject({ name: 'web/0' });
      expect(await again.write((tx) => tx.nextRelationNumber())).toBe(2);
      expect(await bump(again)).toBe(3);
    });

    it('refuses work after close with UNAVAILABLE', async () => {
      await store.close();
      const error = await store.write(async () => undefined).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(RelgateError);
      expect((error as RelgateError).code).toBe(Code.UNAVAILABLE);
    });
  });

  describe('commit listeners', () => {
    it('hear each commit once, in revision order, only after it is readable', async () => {
      const readable: boolean[] = [];
      const commits: number[] = [];
      store.onCommit((changes) => {
        commits.push(...changes.map((c) => c.revision));
        readable.push(store.currentRevision() >= (changes.at(-1)?.revision ?? 0));
      });
      for (let i = 0; i < 5; i++) await bump(store);
      await Promise.all(Array.from({ length: 5 }, () => bump(store)));
      expect(commits).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      expect(readable.every(Boolean)).toBe(true);
    });

    it('have heard a write by the time it resolves, and never hear failed or change-less writes', async () => {
      const commits = recordCommits(store);
      const revision = await bump(store);
      expect(commits.flat().map((c) => c.revision)).toEqual([revision]);
      await store.write((tx) => tx.putApplication({ name: 'quiet', revision: 0 }));
      await store.write(async (tx) => {
        await tx.appendChange('r1', { kind: 'registry', what: 'test', name: 'x' });
        throw new Planned('no');
      }).catch(() => undefined);
      expect(commits).toHaveLength(1);
    });

    it('keep the order of changes within one write', async () => {
      const commits = recordCommits(store);
      await store.write(async (tx) => {
        for (const name of ['a', 'b', 'c']) await tx.appendChange('r9', { kind: 'registry', what: 'test', name });
      });
      expect(commits.flat().map((c) => [c.revision, c.index, c.relation_id])).toEqual([
        [1, 0, 'r9'],
        [1, 1, 'r9'],
        [1, 2, 'r9'],
      ]);
    });
  });

  describe('records', () => {
    it('applications: put replaces, list is ordered by name', async () => {
      await store.write(async (tx) => {
        for (const name of ['web', 'Zed', 'ca', 'web']) await tx.putApplication({ name, revision: name.length });
      });
      const apps = await store.read((tx) => tx.listApplications());
      expect(apps.map((a) => a.name)).toEqual(['Zed', 'ca', 'web']);
      expect(await store.read((tx) => tx.getApplication('nope'))).toBeUndefined();
    });

    it('applications: a deleted one is gone from get and list, and can be put again', async () => {
      await store.write(async (tx) => {
        for (const name of ['ca', 'web']) await tx.putApplication({ name, revision: 1 });
      });
      await store.write(async (tx) => {
        await tx.deleteApplication('web');
        await tx.deleteApplication('nope');
        expect(await tx.getApplication('web')).toBeUndefined();
      });
      expect(await store.read((tx) => tx.getApplication('web'))).toBeUndefined();
      expect((await store.read((tx) => tx.listApplications())).map((a) => a.name)).toEqual(['ca']);
      await store.write((tx) => tx.putApplication({ name: 'web', revision: 3 }));
      expect(await store.read((tx) => tx.getApplication('web'))).toEqual({ name: 'web', revision: 3 });
    });

    it('units: ordered by application then name, filtered by application, found by token hash', async () => {
      await store.write(async (tx) => {
        await tx.putUnit(unit('web/1'));
        await tx.putUnit(unit('ca/0', { token_hash: 'abc' }));
        await tx.putUnit(unit('web/0', { labels: { zone: 'a' }, egress_subnets: ['10.0.0.0/8'] }));
      });
      const all = await store.read((tx) => tx.listUnits());
      expect(all.map((u) => u.name)).toEqual(['ca/0', 'web/0', 'web/1']);
      expect((await store.read((tx) => tx.listUnits('web'))).map((u) => u.name)).toEqual(['web/0', 'web/1']);
      expect(await store.read((tx) => tx.getUnit('web/0'))).toEqual(unit('web/0', { labels: { zone: 'a' }, egress_subnets: ['10.0.0.0/8'] }));
      expect(await store.read((tx) => tx.findUnitByTokenHash('abc'))).toMatchObject({ name: 'ca/0' });
      await store.write((tx) => tx.putUnit(unit('ca/0', { token_hash: 'def' })));
      expect(await store.read((tx) => tx.findUnitByTokenHash('abc'))).toBeUndefined();
      expect(await store.read((tx) => tx.findUnitByTokenHash('def'))).toMatchObject({ name: 'ca/0' });
    });

    it('units: a deleted unit is gone from get, list and its token hash, in the write and after; its name can be put again', async () => {
      await store.write(async (tx) => {
        await tx.putUnit(unit('web/0', { token_hash: 'abc' }));
        await tx.putUnit(unit('web/1'));
      });
      // Read first, so that a cache holds it when it is deleted.
      expect(await store.read((tx) => tx.getUnit('web/0'))).toMatchObject({ name: 'web/0' });
      await store.write(async (tx) => {
        await tx.deleteUnit('web/0');
        await tx.deleteUnit('web/9');
        expect(await tx.getUnit('web/0')).toBeUndefined();
        expect(await tx.findUnitByTokenHash('abc')).toBeUndefined();
      });
      expect(await store.read((tx) => tx.getUnit('web/0'))).toBeUndefined();
      expect(await store.read((tx) => tx.findUnitByTokenHash('abc'))).toBeUndefined();
      expect((await store.read((tx) => tx.listUnits('web'))).map((u) => u.name)).toEqual(['web/1']);
      await store.write((tx) => tx.putUnit(unit('web/0', { token_hash: 'new', revision: 4 })));
      expect(await store.read((tx) => tx.getUnit('web/0'))).toEqual(unit('web/0', { token_hash: 'new', revision: 4 }));
      expect(await store.read((tx) => tx.findUnitByTokenHash('new'))).toMatchObject({ name: 'web/0' });
      const again = await reopen();
      expect((await again.read((tx) => tx.listUnits())).map((u) => u.name)).toEqual(['web/0', 'web/1']);
    });

    it('relations and memberships: ordered, and deleting a relation removes everything of it', async () => {
      await store.write(async (tx) => {
        await tx.putRelation(relation('r2', 5));
        await tx.putRelation(relation('r1', 3));
        await tx.putRelationUnit({ relation_id: 'r1', unit: 'ca/0', side: 'responder', revision: 7 });
        await tx.putRelationUnit({ relation_id: 'r1', unit: 'web/0', side: 'requester', revision: 6 });
        await tx.putRelationUnit({ relation_id: 'r2', unit: 'web/0', side: 'requester', revision: 8 });
        await tx.putRequest(request('q1', 'r1', 9));
        await tx.putResponse(response('q1', 'ca/0', 10));
        await tx.putFlags('r1', 'web/0', { ready: true });
        await tx.putFlags('r2', 'web/0', { ready: false });
      });
      expect((await store.read((tx) => tx.listRelations())).map((r) => r.id)).toEqual(['r1', 'r2']);
      expect((await store.read((tx) => tx.listRelationUnits('r1'))).map((u) => u.unit)).toEqual(['web/0', 'ca/0']);
      expect((await store.read((tx) => tx.listUnitRelations('web/0'))).map((u) => u.relation_id).sort()).toEqual(['r1', 'r2']);
      await store.write(async (tx) => {
        await tx.putRelation({ ...relation('r1', 3), counters: { requests: 4 } });
        await tx.deleteRelationUnit('r2', 'web/0');
      });
      expect((await store.read((tx) => tx.getRelation('r1')))?.counters).toEqual({ requests: 4 });
      expect(await store.read((tx) => tx.listUnitRelations('web/0'))).toHaveLength(1);
      await store.write((tx) => tx.deleteRelation('r1'));
      const left = await store.read(async (tx) => ({
        relation: await tx.getRelation('r1'),
        units: await tx.listRelationUnits('r1'),
        request: await tx.getRequest('q1'),
        responses: await tx.listResponses('q1'),
        flags: await tx.getFlags('r1', 'web/0'),
        other: await tx.getFlags('r2', 'web/0'),
      }));
      expect(left).toEqual({ relation: undefined, units: [], request: undefined, responses: [], flags: undefined, other: { ready: false } });
    });

    it('requests: round-trip exactly, page by creation revision over chosen relations', async () => {
      await store.write(async (tx) => {
        for (let i = 1; i <= 7; i++) await tx.putRequest(request(`q${i}`, i % 2 === 0 ? 'even' : 'odd', 10 + i));
        await tx.putRequest(request('other', 'elsewhere', 5));
      });
      expect(await store.read((tx) => tx.getRequest('q3'))).toEqual(request('q3', 'odd', 13));
      const first = await store.read((tx) => tx.listRequests({ relationIds: ['odd', 'even'], afterCreateRevision: 0, limit: 3 }));
      expect(first.map((r) => r.request_id)).toEqual(['q1', 'q2', 'q3']);
      const next = await store.read((tx) => tx.listRequests({ relationIds: ['odd', 'even'], afterCreateRevision: 13, limit: 3 }));
      expect(next.map((r) => r.request_id)).toEqual(['q4', 'q5', 'q6']);
      const odd = await store.read((tx) => tx.listRequests({ relationIds: ['odd'], afterCreateRevision: 0, limit: 100 }));
      expect(odd.map((r) => r.request_id)).toEqual(['q1', 'q3', 'q5', 'q7']);
      expect(await store.read((tx) => tx.listRequests({ relationIds: [], afterCreateRevision: 0, limit: 10 }))).toEqual([]);
      await store.write((tx) => tx.deleteRequest('q1'));
      expect(await store.read((tx) => tx.getRequest('q1'))).toBeUndefined();
    });

    it('requests: a pending-only page skips answered and expired requests, and follows updates', async () => {
      const states = ['pending', 'answered', 'pending', 'expired', 'pending'] as const;
      await store.write(async (tx) => {
        for (const [i, state] of states.entries()) await tx.putRequest(request(`p${i}`, 'r', 10 + i, { state }));
        await tx.putRequest(request('elsewhere', 'other', 20));
      });
      const pending = (after: number, limit: number) =>
        store.read(async (tx) => (await tx.listRequests({ relationIds: ['r'], afterCreateRevision: after, limit, pendingOnly: true })).map((r) => r.request_id));
      expect(await pending(0, 10)).toEqual(['p0', 'p2', 'p4']);
      expect(await pending(10, 1)).toEqual(['p2']);
      const both = await store.read((tx) => tx.listRequests({ relationIds: ['other', 'r'], afterCreateRevision: 11, limit: 10, pendingOnly: true }));
      expect(both.map((r) => r.request_id)).toEqual(['p2', 'p4', 'elsewhere']);
      await store.write((tx) => tx.putRequest(request('p2', 'r', 12, { state: 'answered' })));
      await store.write((tx) => tx.putRequest(request('p1', 'r', 11, { state: 'pending' })));
      expect(await pending(0, 10)).toEqual(['p0', 'p1', 'p4']);
      expect(await store.read((tx) => tx.getRequest('p2'))).toEqual(request('p2', 'r', 12, { state: 'answered' }));
    });

    it('requests: the due list holds pending requests whose expiry or claim lease ended', async () => {
      await store.write(async (tx) => {
        await tx.putRequest(request('ttl', 'r', 1, { expire_time: 100 }));
        await tx.putRequest(request('lease', 'r', 2, { claim: { unit: 'ca/0', expire_time: 50 } }));
        await tx.putRequest(request('both', 'r', 3, { expire_time: 300, claim: { unit: 'ca/0', expire_time: 400 } }));
        await tx.putRequest(request('answered', 'r', 4, { expire_time: 10, state: 'answered' }));
        await tx.putRequest(request('forever', 'r', 5));
      });
      expect((await store.read((tx) => tx.listDue(200, 10))).map((r) => r.request_id)).toEqual(['lease', 'ttl']);
      expect((await store.read((tx) => tx.listDue(1000, 2))).map((r) => r.request_id)).toEqual(['lease', 'ttl']);
      expect((await store.read((tx) => tx.listDue(1000, 10))).map((r) => r.request_id)).toEqual(['lease', 'ttl', 'both']);
      await store.write((tx) => tx.putRequest(request('ttl', 'r', 1, { expire_time: 100, state: 'expired' })));
      expect((await store.read((tx) => tx.listDue(200, 10))).map((r) => r.request_id)).toEqual(['lease']);
    });

    it('responses: ordered by revision, one per responder unit, deleted together', async () => {
      await store.write(async (tx) => {
        await tx.putResponse(response('q1', 'ca/1', 4));
        await tx.putResponse(response('q1', 'ca/0', 3));
        await tx.putResponse(response('q2', 'ca/0', 5));
      });
      expect((await store.read((tx) => tx.listResponses('q1'))).map((r) => r.responder_unit)).toEqual(['ca/0', 'ca/1']);
      await expect(store.write((tx) => tx.putResponse(response('q1', 'ca/0', 6)))).rejects.toThrow();
      expect(await store.read((tx) => tx.listResponses('q1'))).toHaveLength(2);
      await store.write((tx) => tx.deleteResponses('q1'));
      expect(await store.read((tx) => tx.listResponses('q1'))).toEqual([]);
      expect(await store.read((tx) => tx.listResponses('q2'))).toHaveLength(1);
    });

    it('responses: page by revision, after a revision and up to a limit', async () => {
      await store.write(async (tx) => {
        for (const [i, revision] of [12, 7, 30, 9, 21].entries()) await tx.putResponse(response('q1', `ca/${i}`, revision));
        await tx.putResponse(response('q2', 'ca/9', 8));
      });
      const page = (after: number, limit: number) => store.read(async (tx) => (await tx.listResponses('q1', { afterRevision: after, limit })).map((r) => r.revision));
      expect(await page(0, 2)).toEqual([7, 9]);
      expect(await page(9, 2)).toEqual([12, 21]);
      expect(await page(21, 2)).toEqual([30]);
      expect(await page(30, 2)).toEqual([]);
      expect(await page(8, 10)).toEqual([9, 12, 21, 30]);
    });

    it('flags: per relation and unit, deleted one by one or per relation', async () => {
      await store.write(async (tx) => {
        await tx.putFlags('r1', 'web/0', { a: true });
        await tx.putFlags('r1', 'web/0', { a: false, b: true });
        await tx.putFlags('r1', 'web/1', { a: true });
        await tx.putFlags('r2', 'web/0', { a: true });
      });
      expect(await store.read((tx) => tx.getFlags('r1', 'web/0'))).toEqual({ a: false, b: true });
      await store.write((tx) => tx.deleteFlags('r1', 'web/0'));
      expect(await store.read((tx) => tx.getFlags('r1', 'web/0'))).toBeUndefined();
      expect(await store.read((tx) => tx.getFlags('r1', 'web/1'))).toEqual({ a: true });
      await store.write((tx) => tx.deleteFlags('r1'));
      expect(await store.read((tx) => tx.getFlags('r1', 'web/1'))).toBeUndefined();
      expect(await store.read((tx) => tx.getFlags('r2', 'web/0'))).toEqual({ a: true });
    });

    it('more units, relations, memberships and flags than a cache holds all read back as last written', async () => {
      const names = Array.from({ length: 12 }, (_, i) => `r${i}`);
      await store.write(async (tx) => {
        for (const [i, id] of names.entries()) {
          await tx.putUnit(unit(`web/${i}`, { labels: { i: String(i) } }));
          await tx.putRelation(relation(id, i + 1));
          await tx.putRelationUnit({ relation_id: id, unit: `web/${i}`, side: 'requester', revision: i + 1 });
          await tx.putFlags(id, `web/${i}`, { i: true });
        }
      });
      await store.write(async (tx) => {
        for (const [i, id] of names.entries()) if (i % 2 === 0) await tx.putFlags(id, `web/${i}`, { i: false });
      });
      const failed = store.write(async (tx) => {
        for (const [i, id] of names.entries()) await tx.putFlags(id, `web/${i}`, { rolled_back: true });
        throw new Planned('no');
      });
      await expect(failed).rejects.toBeInstanceOf(Planned);
      for (const [i, id] of [...names.entries()].reverse()) {
        const read = await store.read(async (tx) => ({
          unit: (await tx.getUnit(`web/${i}`))?.labels,
          relation: (await tx.getRelation(id))?.id,
          members: (await tx.listRelationUnits(id)).map((member) => member.unit),
          flags: await tx.getFlags(id, `web/${i}`),
        }));
        expect(read).toEqual({ unit: { i: String(i) }, relation: id, members: [`web/${i}`], flags: { i: i % 2 !== 0 } });
      }
    });

    it('keep any text exactly: quotes, backslashes, placeholders, control characters, emoji', async () => {
      const tricky = `it's "quoted" \\ back\\slash $1 $$ E'\\x00' \n\t ünï 🎉 ; DROP TABLE requests; --`;
      // Inside documents even NUL is kept; names and ids never hold control characters.
      const inside = `${tricky} \u0000 \u0007`;
      const record = request(tricky, 'r1', 1, { fields: { [inside]: inside, list: [inside] }, body: inside });
      await store.write(async (tx) => {
        await tx.putRequest(record);
        await tx.putFlags('r1', tricky, { [tricky]: true });
        await tx.appendChange('r1', { kind: 'registry', what: inside, name: tricky });
      });
      expect(await store.read((tx) => tx.getRequest(tricky))).toEqual(record);
      expect(await store.read((tx) => tx.getFlags('r1', tricky))).toEqual({ [tricky]: true });
      expect((await store.changesSince(0, 1)).changes[0]?.data).toEqual({ kind: 'registry', what: inside, name: tricky });
    });

    it('relation numbers count up by one per call', async () => {
      const numbers = await store.write(async (tx) => [await tx.nextRelationNumber(), await tx.nextRelationNumber()]);
      expect(numbers).toEqual([1, 2]);
      expect(await store.write((tx) => tx.nextRelationNumber())).toBe(3);
    });

    it('a read reports the revision its state reflects', async () => {
      await bump(store);
      await store.write(async (tx) => {
        await tx.putApplication({ name: 'web', revision: await tx.revision() });
        await tx.appendChange('', { kind: 'registry', what: 'application', name: 'web' });
      });
      const seen = await store.read(async (tx) => ({ revision: tx.readRevision(), app: await tx.getApplication('web') }));
      expect(seen).toEqual({ revision: 2, app: { name: 'web', revision: 2 } });
    });
  });

  describe('change log', () => {
    it('returns changes after a revision, bounded by the limit and the committed revision', async () => {
      for (let i = 0; i < 6; i++) await bump(store, `r${i}`);
      const page = await store.changesSince(1, 3);
      expect(page.upTo).toBe(4);
      expect(page.changes.map((c) => [c.revision, c.relation_id])).toEqual([
        [2, 'r1'],
        [3, 'r2'],
        [4, 'r3'],
      ]);
      expect(page.changes[0]?.data).toEqual({ kind: 'registry', what: 'test', name: 'x' });
      expect(await store.changesSince(4, 100)).toMatchObject({ upTo: 6 });
      expect(await store.changesSince(6, 100)).toEqual({ changes: [], upTo: 6 });
    });

    it('writes committed together are paged, compacted and reopened at any revision among them', async () => {
      const named = (name: string): ChangeData => ({ kind: 'registry', what: 'test', name });
      await bump(store, 'r0');
      // Issued together, so that they share one commit where the store batches writes.
      await Promise.all(
        [2, 3, 4, 5, 6].map((n) =>
          store.write(async (tx) => {
            await tx.appendChange(`r${n}`, named(`a${n}`));
            await tx.appendChange(`r${n}`, named(`b${n}`));
          }),
        ),
      );
      await bump(store, 'r7');
      const page = async (s: Store, after: number, limit: number) => {
        const { changes, upTo } = await s.changesSince(after, limit);
        return { upTo, changes: changes.map((c) => `${c.revision}.${c.index} ${c.relation_id} ${c.data.kind === 'registry' ? c.data.name : ''}`) };
      };
      expect(await page(store, 1, 2)).toEqual({ upTo: 3, changes: ['2.0 r2 a2', '2.1 r2 b2', '3.0 r3 a3', '3.1 r3 b3'] });
      expect(await page(store, 3, 2)).toEqual({ upTo: 5, changes: ['4.0 r4 a4', '4.1 r4 b4', '5.0 r5 a5', '5.1 r5 b5'] });
      expect(await page(store, 5, 10)).toEqual({ upTo: 7, changes: ['6.0 r6 a6', '6.1 r6 b6', '7.0 r7 x'] });
      await store.compact(4);
      const later = ['5.0 r5 a5', '5.1 r5 b5', '6.0 r6 a6', '6.1 r6 b6', '7.0 r7 x'];
      expect(await page(store, 4, 10)).toEqual({ upTo: 7, changes: later });
      const error = (await store.changesSince(3, 10).catch((e: unknown) => e)) as RelgateError;
      expect([error.code, error.reason]).toEqual([Code.OUT_OF_RANGE, 'REVISION_COMPACTED']);
      const again = await reopen();
      expect(again.currentRevision()).toBe(7);
      expect(await page(again, 4, 10)).toEqual({ upTo: 7, changes: later });
      expect(await bump(again, 'r8')).toBe(8);
    });

    it('skips revisions that recorded no change', async () => {
      await bump(store);
      await store.write(async (tx) => void (await tx.revision()));
      await bump(store);
      const { changes, upTo } = await store.changesSince(0, 10);
      expect(changes.map((c) => c.revision)).toEqual([1, 3]);
      expect(upTo).toBe(3);
    });

    it('compaction drops old entries, never beyond the current revision, and older cursors get OUT_OF_RANGE', async () => {
      for (let i = 0; i < 4; i++) await bump(store);
      await store.compact(2);
      expect(store.compactedRevision()).toBe(2);
      expect((await store.changesSince(2, 10)).changes.map((c) => c.revision)).toEqual([3, 4]);
      const error = (await store.changesSince(1, 10).catch((e: unknown) => e)) as RelgateError;
      expect(error).toBeInstanceOf(RelgateError);
      expect([error.code, error.reason]).toEqual([Code.OUT_OF_RANGE, 'REVISION_COMPACTED']);
      await store.compact(1);
      expect(store.compactedRevision()).toBe(2);
      await store.compact(99);
      expect(store.compactedRevision()).toBe(4);
      expect(await store.changesSince(4, 10)).toEqual({ changes: [], upTo: 4 });
    });

    it('finds the newest revision at or before a time', async () => {
      const before = Date.now() - 1;
      expect(await store.revisionAt(before)).toBe(0);
      await bump(store);
      await bump(store);
      expect(await store.revisionAt(Date.now() + 1)).toBe(2);
      expect(await store.revisionAt(before)).toBe(0);
    });
  });
});
