// Several relgate replicas on one PostgreSQL: requests, responses, watches and
// calls behave as on one gateway, whichever replica each client talks to.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code, fromServiceError } from '../src/errors.ts';
import { clientsOf, startHarness, struct, Rpc, type Harness } from './helpers/harness.ts';
import { PROJECT_DIR } from '../src/protos.ts';
import { findGrpcurl, parseMessages, shell, spawnServe, type ServeProcess } from './helpers/grpcurl.ts';
import { sql, startPostgres, type PostgresCluster } from './helpers/postgres.ts';
import { requestEvent, responseEvent, watch, watchReady, type Event, type Msg } from './helpers/streams.ts';
import { changeEvents, eventKey, expectWellFormed } from './helpers/watch-log.ts';
import { expectOneRelationFromCreatesAtOnce, makeWorld, type Clients, type World } from './helpers/world.ts';

const CSR = { common_name: 'web.example' };
const CERT = { key: 'K', cert: 'C' };

let cluster: PostgresCluster;
let url: string;
let a: Harness;
let b: Harness;

beforeAll(async () => {
  cluster = await startPostgres();
  url = await cluster.createDatabase();
  [a, b] = await Promise.all([startHarness({ store: url }), startHarness({ store: url })]);
}, 60_000);
afterAll(async () => {
  await Promise.all([a?.close(), b?.close()]);
  await cluster?.stop();
});


/** The world's units as clients of another replica. */
function on(replica: Clients, world: World) {
  return { req: (i = 0) => replica.requester(world.requesters[i] as string), res: (i = 0) => replica.responder(world.responders[i] as string) };
}

function callOn(rpc: Rpc, request: Msg, timeoutMs: number): Promise<Msg> {
  const method = rpc.client.Call as unknown as (req: Msg, md: grpc.Metadata, options: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: Msg) => void) => void;
  return new Promise((resolve, reject) => method.call(rpc.client, request, rpc.metadata, { deadline: Date.now() + timeoutMs }, (e, r) => (e ? reject(e) : resolve(r))));
}

async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const keys = (events: readonly Event[]) => changeEvents(events).map(eventKey);

describe('replicas on one PostgreSQL', () => {
  it('a request created on one replica reaches a responder watching on another, and the response comes back', async () => {
    const w = await makeWorld(a);
    const responderOnB = await watchReady(on(b, w).res(), { relation_id: w.relationId });
    const requesterOnA = await watchReady(w.req(), { relation_id: w.relationId });
    const { request } = await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct(CSR) });
    await responderOnB.events.next(requestEvent('ADDED', request.request_id));
    await on(b, w).res().call('Respond', { request_id: request.request_id, fields: struct(CERT) });
    const response = await requesterOnA.events.next(responseEvent(request.request_id));
    expect(response.response.responder_unit).toBe(w.responders[0]);
    const [onA, onB] = await Promise.all([a, b].map((replica) => on(replica, w).req().call('GetRequest', { request_id: request.request_id })));
    expect(onA).toEqual(onB);
    responderOnB.cancel();
    requesterOnA.cancel();
  });

  it('writes through both replicas at once keep one order, seen identically by watchers on each', async () => {
    const w = await makeWorld(a, { requesters: 2 });
    const watchers = [await watchReady(w.req(), { relation_id: w.relationId }), await watchReady(on(b, w).req(), { relation_id: w.relationId })];
    const ids = await Promise.all(
      Array.from({ length: 30 }, async (_, i) => {
        const replica = i % 2 === 0 ? a : b;
        const { request } = await replica.requester(w.requesters[i % 2] as string).call('CreateRequest', { relation_id: w.relationId, fields: struct(CSR) });
        return request.request_id as string;
      }),
    );
    for (const watcher of watchers) await watcher.events.take(30, requestEvent('ADDED'), 10_000);
    const [first, second] = watchers.map((watcher) => keys(watcher.events.items.filter((event) => event.object === 'request')));
    expect(first?.map((key) => key.split('|')[3]).sort()).toEqual([...ids].sort());
    expect(second).toEqual(first);
    for (const watcher of watchers) {
      expectWellFormed(watcher.batches);
      watcher.cancel();
    }
  });

  it('a unit removed through one replica has its watch on another ended with UNIT_REMOVED, and registers again through that other', async () => {
    const w = await makeWorld(a, { join: false });
    const unit = w.requesters[0] as string;
    const watchOnB = b.requester(unit).stream('WatchResponses', { options: { start: 'WATCH_START_NOW' } });
    const ended = new Promise<grpc.ServiceError>((resolve) => watchOnB.on('error', resolve));
    await new Promise((resolve) => watchOnB.once('data', resolve));
    await a.registry.call('RemoveUnit', { name: unit });
    const error = fromServiceError(await ended);
    expect([error.code, error.reason]).toEqual([Code.UNAUTHENTICATED, 'UNIT_REMOVED']);
    const gone = await b.registry.fail('GetUnit', { name: unit });
    expect([gone.code, gone.reason]).toEqual([Code.NOT_FOUND, 'UNIT_NOT_FOUND']);
    const again = await b.registry.call('RegisterUnit', { name: unit, ingress_address: '10.7.0.1' });
    expect((await a.registry.call('GetUnit', { name: unit })).unit).toEqual(again.unit);
  });

  it('one relation created on both replicas at once is created once; every other create is refused naming it', async () => {
    const w = await makeWorld(a, { join: false });
    await expectOneRelationFromCreatesAtOnce(Array.from({ length: 8 }, (_, i) => (i % 2 === 0 ? a : b).registry), w);
  });

  it('Call on one replica reaches a responder watching on another; NO_RESPONDERS counts every replica', async () => {
    const w = await makeWorld(a, { responders: 2 });
    const requester = w.req();
    const noOne = await requester.fail('Call', { relation_id: w.relationId, fields: struct(CSR) });
    expect([noOne.code, noOne.reason]).toEqual([Code.UNAVAILABLE, 'NO_RESPONDERS']);
    const responderOnB = await watchReady(on(b, w).res(1), { relation_id: w.relationId });
    const requestId = randomUUID();
    const answered = (async () => {
      await responderOnB.events.next(requestEvent('ADDED', requestId));
      await on(b, w).res(1).call('Respond', { request_id: requestId, fields: struct(CERT) });
    })();
    const result = await callOn(requester, { relation_id: w.relationId, request_id: requestId, fields: struct(CSR) }, 10_000);
    await answered;
    expect(result.response.responder_unit).toBe(w.responders[1]);
    // Addressed to the unit that does not watch anywhere: still nobody.
    const toZero = fromServiceError(
      await callOn(requester, { relation_id: w.relationId, fields: struct(CSR), delivery: { mode: 'DELIVERY_MODE_UNIT', unit: w.responders[0] } }, 10_000).then(
        () => {
          throw new Error('Call succeeded');
        },
        (error: grpc.ServiceError) => error,
      ),
    );
    expect([toZero.code, toZero.reason]).toEqual([Code.UNAVAILABLE, 'NO_RESPONDERS']);
    // A watch on every relation of the unit counts too.
    responderOnB.cancel();
    // Until the other replica hears that the watch ended, a Call still waits for it: give each try a deadline.
    const failsFast = () => callOn(requester, { relation_id: w.relationId, fields: struct(CSR) }, 2_000).then(() => false, (error: grpc.ServiceError) => fromServiceError(error).reason === 'NO_RESPONDERS');
    await until(failsFast, 'the ended watch stops counting');
    const everyRelation = await watchReady(on(b, w).res(0));
    const viaAll = randomUUID();
    const answeredAll = (async () => {
      await everyRelation.events.next(requestEvent('ADDED', viaAll));
      await on(b, w).res(0).call('Respond', { request_id: viaAll, fields: struct(CERT) });
    })();
    const second = await callOn(requester, { relation_id: w.relationId, request_id: viaAll, fields: struct(CSR) }, 10_000);
    await answeredAll;
    expect(second.response.responder_unit).toBe(w.responders[0]);
    everyRelation.cancel();
  });

  it('watchers on a replica miss nothing while its LISTEN connection is cut under writes', async () => {
    const w = await makeWorld(a);
    const watchers = [await watchReady(on(b, w).req(), { relation_id: w.relationId }), await watchReady(on(b, w).res(), { relation_id: w.relationId, filter: 'REQUEST_FILTER_ALL' })];
    const reference = await watchReady(w.req(), { relation_id: w.relationId });
    const store = b.server.store as unknown as { listenerPid(): Promise<number | undefined> };
    const ids: string[] = [];
    for (let i = 0; i < 40; i++) {
      const { request } = await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct(CSR) });
      ids.push(request.request_id);
      if (i % 10 === 3) {
        await until(async () => (await store.listenerPid()) !== undefined, 'replica b listens again');
        await sql(url, 'SELECT pg_terminate_backend($1)', [await store.listenerPid()]);
      }
    }
    const last = ids.at(-1) as string;
    for (const watcher of [...watchers, reference]) await watcher.events.next(requestEvent('ADDED', last), 10_000);
    expect(keys(watchers[0]?.events.items ?? [])).toEqual(keys(reference.events.items));
    expect(keys(watchers[1]?.events.items ?? []).filter((key) => key.startsWith('EVENT_TYPE_ADDED'))).toHaveLength(40);
    for (const watcher of [...watchers, reference]) {
      expectWellFormed(watcher.batches);
      watcher.cancel();
    }
  });

  it('a watch cut by killing its replica resumes on another with the identical sequence', async () => {
    const victim: ServeProcess = await spawnServe(['--listen', '127.0.0.1:0', '--store', url, '--log-level', 'info']);
    const onVictim = clientsOf(victim.address);
    try {
      const w = await makeWorld(a);
      const start = { relation_id: w.relationId, start: 'WATCH_START_AFTER_REVISION', after_revision: String(a.server.store.currentRevision()) };
      const reference = watch(w.req(), start);
      const cut = watch(onVictim.requester(w.requesters[0] as string), start);
      const create = async () => (await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct(CSR) })).request.request_id as string;
      const answer = (id: string) => w.res().call('Respond', { request_id: id, fields: struct(CERT) });
      for (let i = 0; i < 5; i++) await answer(await create());
      const seen = await create();
      await cut.events.next(requestEvent('ADDED', seen), 10_000);
      victim.child.kill('SIGKILL');
      const status = await cut.status;
      expect(status?.code).toBe(Code.UNAVAILABLE);
      // Writes go on while the watcher reconnects elsewhere.
      for (let i = 0; i < 3; i++) await answer(await create());
      const lastRevision = cut.batches.at(-1)?.revision as string;
      const resumed = watch(on(b, w).req(), { relation_id: w.relationId, start: 'WATCH_START_AFTER_REVISION', after_revision: lastRevision });
      const final = await create();
      for (const stream of [reference, resumed]) await stream.events.next(requestEvent('ADDED', final), 10_000);
      const joined = [...keys(cut.events.items), ...keys(resumed.events.items)];
      expect(joined).toEqual(keys(reference.events.items));
      expect(new Set(joined).size).toBe(joined.length);
      expectWellFormed([...cut.batches, ...resumed.batches]);
      reference.cancel();
      resumed.cancel();
    } finally {
      onVictim.close();
      await victim.stop();
    }
  });
});

describe('replicas when the database misbehaves', () => {
  const presenceOf = (h: Harness) => (h.server.store as unknown as { presence: { replica: string } }).presence.replica;
  const rowsOf = async (db: string, replica: string) => (await sql(db, 'SELECT unit, count FROM watchers WHERE replica = $1 ORDER BY unit', [replica])).rows;

  it('a read whose connection the database ends fails that read only; the process and the next reads go on', async () => {
    const db = await cluster.createDatabase();
    const own = await startHarness({ store: db });
    try {
      const w = await makeWorld(own);
      const read = () => w.req().call('ListRequests', { relation_id: w.relationId }).then(() => 'ok', (error: grpc.ServiceError) => fromServiceError(error).reason);
      const outcomes = new Set<string>();
      for (let round = 0; round < 10; round++) {
        const reads = Array.from({ length: 8 }, read);
        await sql(db, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()');
        for (const outcome of await Promise.all(reads)) outcomes.add(outcome);
      }
      // Connections ended mid-read reach the client as the store being unavailable, never as a crash.
      expect([...outcomes].every((outcome) => outcome === 'ok' || outcome === 'STORE_UNAVAILABLE'), [...outcomes].join()).toBe(true);
      await until(async () => (await read()) === 'ok', 'reads work again');
    } finally {
      await own.close();
    }
  });

  it('a replica that falls behind while another compacts ends its live watches with REVISION_COMPACTED, not a silent gap', async () => {
    const db = await cluster.createDatabase();
    const writer = await startHarness({ store: db });
    const lagging: ServeProcess = await spawnServe(['--listen', '127.0.0.1:0', '--store', db, '--log-level', 'info']);
    const onLagging = clientsOf(lagging.address);
    try {
      const w = await makeWorld(writer);
      const watcher = await watchReady(onLagging.responder(w.responders[0] as string), { relation_id: w.relationId, filter: 'REQUEST_FILTER_ALL' });
      const first = (await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct(CSR) })).request.request_id;
      await watcher.events.next(requestEvent('ADDED', first), 10_000);
      lagging.child.kill('SIGSTOP');
      for (let i = 0; i < 10; i++) await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct(CSR) });
      await writer.server.store.compact(writer.server.store.currentRevision() - 2);
      lagging.child.kill('SIGCONT');
      const status = await watcher.status;
      expect([status?.code, status?.reason]).toEqual([Code.OUT_OF_RANGE, 'REVISION_COMPACTED']);
      const added = watcher.events.items.filter((event) => event.type === 'EVENT_TYPE_ADDED');
      expect(added).toHaveLength(1);
    } finally {
      onLagging.close();
      await lagging.stop();
      await writer.close();
    }
  });

  it('a watch that ends while its row cannot be written, or starts after its replica was cleared away, leaves the rows right by the next heartbeat', async () => {
    const db = await cluster.createDatabase();
    const [one, other] = await Promise.all([startHarness({ store: db }), startHarness({ store: db })]);
    try {
      const w = await makeWorld(one, { responders: 2 });
      const replica = presenceOf(one);
      const watching = await watchReady(w.res(0), { relation_id: w.relationId });
      expect(await rowsOf(db, replica)).toEqual([{ unit: w.responders[0], count: 1 }]);
      // The watch ends while no row of watchers can change.
      await sql(db, "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$");
      await sql(db, 'CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON watchers FOR EACH ROW EXECUTE FUNCTION refuse()');
      watching.cancel();
      await until(() => !one.server.hub.isWatched(w.relationId, 'responder', w.responders[0] as string), 'the watch has ended');
      // A watch that cannot be recorded is refused, and leaves no count behind.
      const refused = await watch(w.res(1), { relation_id: w.relationId }).status;
      expect([refused?.code, refused?.reason]).toEqual([Code.UNAVAILABLE, 'STORE_UNAVAILABLE']);
      await sql(db, 'DROP TRIGGER refuse ON watchers');
      await until(async () => (await rowsOf(db, replica)).length === 0, 'the next heartbeat deletes the row of the ended watch');
      const noOne = await on(other, w).req().fail('Call', { relation_id: w.relationId, fields: struct(CSR) });
      expect([noOne.code, noOne.reason]).toEqual([Code.UNAVAILABLE, 'NO_RESPONDERS']);

      // Another replica clears this one away (as after 30 s of silence); a watch started then records it again.
      const kept = await watchReady(w.res(0), { relation_id: w.relationId });
      await sql(db, 'DELETE FROM replicas WHERE id = $1', [replica]);
      const started = await watchReady(w.res(1), { relation_id: w.relationId });
      await until(async () => (await rowsOf(db, replica)).length === 2, 'the heartbeat writes the rows the clearing took');
      expect(await rowsOf(db, replica)).toEqual([
        { unit: w.responders[0], count: 1 },
        { unit: w.responders[1], count: 1 },
      ]);
      kept.cancel();
      started.cancel();
    } finally {
      await Promise.all([one.close(), other.close()]);
    }
  });
});

describe('README "Scaling out"', () => {
  const readme = readFileSync(path.join(PROJECT_DIR, 'README.md'), 'utf8');
  const start = readme.indexOf('\n## Scaling out\n');
  const section = readme.slice(start, readme.indexOf('\n## ', start + 1));
  const blocks = [...section.matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((match) => (match[1] ?? '').trim());

  it('starts both replicas on the database the setup commands create', () => {
    const replicas = blocks.filter((block) => block.startsWith('npm start'));
    expect(replicas).toEqual([
      'npm start -- --listen 127.0.0.1:50051 --store postgres://relgate@127.0.0.1:5433/relgate',
      'npm start -- --listen 127.0.0.1:50052 --store postgres://relgate@127.0.0.1:5433/relgate',
    ]);
    const setup = blocks.find((block) => block.includes('initdb')) ?? '';
    expect(setup).toContain('-U relgate --auth=trust');
    expect(setup).toContain('-p 5433');
    expect(setup).toContain('createdb -h 127.0.0.1 -p 5433 -U relgate relgate');
  });

  it('its grpcurl commands work against two replicas of one database', async () => {
    const fresh = await cluster.createDatabase();
    const replicas = await Promise.all([startHarness({ store: fresh }), startHarness({ store: fresh })]);
    const [first, second] = replicas.map((replica) => replica.server.address) as [string, string];
    const local = (command: string) => command.replaceAll('localhost:50051', first).replaceAll('localhost:50052', second);
    const commands = blocks.filter((block) => block.startsWith('grpcurl')).map(local);
    const watchAt = commands.findIndex((command) => command.includes('WatchIncomingRequests'));
    expect(watchAt).toBeGreaterThan(0);
    try {
      for (const command of commands.slice(0, watchAt)) expect((await shell(command)).code, command).toBe(0);
      const watcher = spawn('bash', ['-c', commands[watchAt] as string], { env: { ...process.env, PATH: `${path.dirname(findGrpcurl())}:${process.env.PATH ?? ''}` } });
      let watched = '';
      const seen = (text: string) =>
        new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`the watch did not print ${text}: ${watched}`)), 10_000);
          const look = () => watched.includes(text) && (clearTimeout(timer), resolve());
          watcher.stdout.on('data', (data: Buffer) => ((watched += data.toString()), look()));
          look();
        });
      await seen('EVENT_TYPE_SNAPSHOT_COMPLETE');
      const [create, respond, list, call] = commands.slice(watchAt + 1);
      expect((await shell(create as string)).code).toBe(0);
      await seen('web.example.com');
      expect((await shell(respond as string)).code).toBe(0);
      const listed = parseMessages((await shell(list as string)).stdout)[0] as Msg;
      expect(listed.responses).toMatchObject([{ responderUnit: 'ca/0', fields: { key: 'K', cert: 'C' } }]);
      const called = await shell(call as string);
      expect(called.stderr).toContain('DeadlineExceeded');
      expect(called.stderr).not.toContain('NO_RESPONDERS');
      watcher.kill();
    } finally {
      await Promise.all(replicas.map((replica) => replica.close()));
    }
  });
});
