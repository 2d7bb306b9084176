// Watches under load and across restarts, against real servers: a watcher
// that never reads (cut off with RESOURCE_EXHAUSTED, lossless resume, server
// memory bounded, a healthy watcher unaffected), a thousand watchers on one
// server, and shutdown and restart with open watches.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, describe, expect, test } from 'vitest';
import { Code } from '../src/errors.ts';
import { startServer, type RunningServer } from '../src/server.ts';
import { Rpc, clientsOf, json, startHarness, struct, v1, type Harness } from './helpers/harness.ts';
import { requestEvent, watch, type Event, type Msg, type Watch } from './helpers/streams.ts';
import { expectWellFormed } from './helpers/watch-log.ts';
import { eventually, makeWorld, type Clients } from './helpers/world.ts';
import { freePort, rssMb } from '../bench/lib/processes.ts';
import { spawnWatchClients, type StreamReport, type WatchClients } from '../bench/lib/watch-clients.ts';
import { serveArgv } from '../src/cli/serve-process.ts';

/**
 * Changes written while one watcher does not read. The figure is
 * 100,000 (WATCH_SLOW_CHANGES=100000); the default keeps CI short and still
 * overflows the watcher's buffer (SLOW_BUFFER events) thirty times over.
 */
const SLOW_CHANGES = Number(process.env.WATCH_SLOW_CHANGES ?? 30_000);
const SLOW_BUFFER = 1_000;
/** Allowed growth of the server's RSS while the changes are written. */
const RSS_BOUND_MB = 48;

const after = (revision: number | string) => ({ start: 'WATCH_START_AFTER_REVISION', after_revision: String(revision) });
const NOW = { start: 'WATCH_START_NOW' };


/** Runs `work` on every item with at most `inFlight` at a time; results in item order. */
async function pool<T, R>(items: readonly T[], inFlight: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const slot = async () => {
    for (let i = next++; i < items.length; i = next++) results[i] = await work(items[i] as T);
  };
  await Promise.all(Array.from({ length: inFlight }, slot));
  return results;
}

/**
 * Waits until the watch has delivered a batch at or beyond the revision.
 * It listens to the stream itself: tens of thousands of events may arrive first.
 */
async function reached(w: Watch, revision: number, timeoutMs = 20_000): Promise<void> {
  if (w.batches.some((batch) => Number(batch.revision) >= revision)) return;
  await new Promise<void>((resolve, reject) => {
    const done = (error?: Error) => {
      clearTimeout(timer);
      w.call.off('data', onData);
      if (error) reject(error);
      else resolve();
    };
    const onData = (message: Msg) => {
      if (Number(message.batch.revision) >= revision) done();
    };
    const timer = setTimeout(() => done(new Error(`revision ${revision} not reached within ${timeoutMs} ms; last batch ${lastRevision(w)}`)), timeoutMs);
    w.call.on('data', onData);
    void w.status.then((status) => done(new Error(`stream ended (${status?.message ?? 'OK'}) before revision ${revision}; last batch ${lastRevision(w)}`)));
  });
}

const lastRevision = (w: Watch) => Number(w.batches.at(-1)?.revision ?? 0);
/** The requests a watch in another process received as ADDED, in order, with when each batch arrived. */
const addedWithArrival = (report: StreamReport) =>
  report.batches.flatMap(({ events, arrivedAt }) => events.filter((event) => event.type === 'EVENT_TYPE_ADDED' && event.object === 'request').map((event) => ({ id: event.request.request_id as string, arrivedAt })));
const addedIds = (events: readonly Event[]) => events.filter(requestEvent('ADDED')).map((event) => event.request.request_id as string);
const percentile = (values: number[], p: number) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor(values.length * p))] ?? NaN;

describe('a watcher that never reads', () => {
  let server: { child: ChildProcess; address: string } | undefined;
  let stalled: WatchClients | undefined;
  let dir: string | undefined;
  let clients: ReturnType<typeof clientsOf> | undefined;
  let healthy: WatchClients | undefined;
  afterAll(async () => {
    clients?.close();
    await healthy?.close();
    stalled?.child.kill('SIGCONT');
    await stalled?.close();
    if (server && server.child.exitCode === null) {
      const exited = new Promise((resolve) => server?.child.once('exit', resolve));
      server.child.kill('SIGTERM');
      await exited;
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test(`is cut off with RESOURCE_EXHAUSTED while ${SLOW_CHANGES} changes are written, resumes without loss, and neither grows the server nor slows a healthy watcher`, async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relgate-slow-'));
    // A stopped process answers no keepalive pings either; this test is about a slow reader, not a dead one.
    const keepalive = ['--keepalive-time', String(3_600_000)];
    server = await serveInChild(path.join(dir, 'relgate.db'), ['--durability', 'normal', '--watch-buffer', String(SLOW_BUFFER), ...keepalive]);
    const pid = server.child.pid;
    clients = clientsOf(server.address);
    const w = await makeWorld(clients);
    const createOne = async () => (await w.req().call('CreateRequest', { relation_id: w.relationId, fields: LARGE_FIELDS })).request as Msg;
    // The healthy watcher reads in a process of its own, as a responder would. (Reading in this
    // process, it would share one core with the writers and fall behind them at 100,000 changes.)
    healthy = await spawnWatchClients({
      address: server.address,
      service: 'ResponderService',
      method: 'WatchIncomingRequests',
      unit: w.responders[0] as string,
      request: { options: { relation_id: w.relationId, ...NOW, progress_interval_ms: 200 } },
      streams: 1,
      channels: 1,
      record: true,
    });
    // Warm up (JIT, SQLite cache, the heap's steady size under this load) before the baselines.
    await pool(Array.from({ length: SLOW_CHANGES / 2 }), 64, createOne);
    const baselineLatency = await probeLatency(healthy, createOne);
    const baselineRss = rssMb(pid);

    // The stalled watcher's process stops reading its socket, so the server's writes back up.
    // (A grpc-js client that merely leaves messages unconsumed still drains the socket into
    // its own memory, and the server would never feel it.)
    const start = Number((await createOne()).revision);
    stalled = await spawnWatchClients({
      address: server.address,
      service: 'ResponderService',
      method: 'WatchIncomingRequests',
      unit: w.responders[0] as string,
      request: { options: { relation_id: w.relationId, ...after(start), progress_interval_ms: 100 } },
      streams: 1,
      channels: 1,
      record: true,
    });
    stalled.child.kill('SIGSTOP');
    const acked = new Map<string, number>();
    let peakRss = baselineRss;
    const sampler = setInterval(() => (peakRss = Math.max(peakRss, rssMb(pid))), 100);
    const created = await pool(Array.from({ length: SLOW_CHANGES }), 64, async () => {
      const request = await createOne();
      acked.set(request.request_id, performance.timeOrigin + performance.now());
      return request;
    });
    clearInterval(sampler);
    peakRss = Math.max(peakRss, rssMb(pid));
    const final = Math.max(...created.map((request) => Number(request.revision)));
    await within(healthy.reached(final), 60_000, `the healthy watcher reaching revision ${final}`);
    const loadedLatency = await probeLatency(healthy, createOne);

    // The healthy watcher got every change, in order, promptly, and is still open.
    const [report] = await healthy.report();
    if (!report) throw new Error('no report from the healthy watcher');
    expect([report.ended, report.status]).toEqual([false, null]);
    const createdIds = created.map((request) => request.request_id as string);
    const inRevisionOrder = [...created].sort((a, b) => Number(a.revision) - Number(b.revision)).map((request) => request.request_id);
    const received = addedWithArrival(report);
    expect(received.map(({ id }) => id).filter((id) => acked.has(id))).toEqual(inRevisionOrder);
    expectWellFormed(report.batches);
    const arrivals = new Map(received.map(({ id, arrivedAt }) => [id, arrivedAt]));
    const lags = createdIds.map((id) => (arrivals.get(id) as number) - (acked.get(id) as number));
    expect(percentile(lags, 0.99), 'p99 of healthy delivery after the write was acknowledged (ms)').toBeLessThan(2_000);
    expect(loadedLatency, `healthy p50 ${loadedLatency.toFixed(1)} ms vs ${baselineLatency.toFixed(1)} ms before`).toBeLessThan(baselineLatency * 5 + 20);

    // Holding the stalled watcher's backlog would have cost far more than the server grew.
    const backlogMb = (SLOW_CHANGES * requestBytes(created[0] as Msg)) / 2 ** 20;
    expect(peakRss - baselineRss, `server RSS ${baselineRss.toFixed(1)} -> peak ${peakRss.toFixed(1)} MB; backlog ${backlogMb.toFixed(1)} MB`).toBeLessThan(RSS_BOUND_MB);
    expect(backlogMb).toBeGreaterThan(1.5 * RSS_BOUND_MB);

    // Once it reads again it drains what the transport held, then the status.
    stalled.child.kill('SIGCONT');
    await stalled.ended();
    const [slow] = await stalled.report();
    expect(slow?.status?.code).toBe(Code.RESOURCE_EXHAUSTED);
    expect(slow?.status?.reason).toBe('SLOW_WATCHER');
    const lastDelivered = Number(slow?.status?.metadata.last_revision);
    expect(lastDelivered).toBe(Number(slow?.batches.at(-1)?.revision));
    expect(lastDelivered).toBeLessThan(final);

    // Resuming from the last delivered revision loses nothing and repeats nothing.
    const resumed = watch(w.res(), { relation_id: w.relationId, ...after(lastDelivered) });
    await reached(resumed, final, 60_000);
    resumed.cancel();
    expectWellFormed(resumed.batches);
    const seen = [...(slow ? addedWithArrival(slow) : []).map(({ id }) => id), ...addedIds(resumed.events.items)].filter((id) => acked.has(id));
    expect(seen).toHaveLength(SLOW_CHANGES);
    expect(new Set(seen)).toEqual(new Set(createdIds));
  }, 600_000);
});

/** Request fields of about 3 KB, so that a held-back backlog would show in the server's memory. */
const LARGE_FIELDS = struct({ common_name: 'load.example', sans: Array.from({ length: 100 }, (_, i) => `san-${i}.load.example`) });

/** Size of a request as a watch event carries it, its fields as plain JSON: about its encoded size. */
function requestBytes(request: Msg): number {
  return Buffer.byteLength(JSON.stringify({ ...request, fields: json(request.fields) }));
}

/** Median time from a create's start until the watcher has it, over sequential probes. */
async function probeLatency(healthy: WatchClients, createOne: () => Promise<Msg>): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < 20; i++) {
    const started = performance.now();
    const request = await createOne();
    await within(healthy.reached(Number(request.revision)), 10_000, `the healthy watcher receiving revision ${request.revision}`);
    times.push(performance.now() - started);
  }
  return percentile(times, 0.5);
}

/** The promise, or a failure naming what did not happen within the time. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}


/** `relgate serve` as its own process on a free loopback port. */
async function serveInChild(db: string, args: string[]): Promise<{ child: ChildProcess; address: string }> {
  const address = `127.0.0.1:${await freePort()}`;
  const child = spawn(process.execPath, serveArgv(['--listen', address, '--db', db, '--log-level', 'warn', ...args]), { stdio: 'inherit' });
  const probe = new v1.RegistryService!(address, grpc.credentials.createInsecure());
  await new Promise<void>((resolve, reject) => probe.waitForReady(Date.now() + 20_000, (error) => (error ? reject(error) : resolve())));
  probe.close();
  return { child, address };
}

describe('many watchers', () => {
  test('1,000 concurrent watchers on one server all receive a change', async () => {
    const h = await startHarness({ durability: 'normal' });
    try {
      const w = await makeWorld(h, { responders: 10 });
      // Ten units with a client each, a hundred streams per client.
      const channels = w.responders.map((unit) => h.responder(unit));
      const watches = channels.flatMap((rpc) => Array.from({ length: 100 }, () => watch(rpc, { relation_id: w.relationId })));
      await Promise.all(watches.map((one) => one.events.next((event) => event.type === 'EVENT_TYPE_SNAPSHOT_COMPLETE', 30_000)));
      expect(h.server.hub.watcherCount).toBeGreaterThanOrEqual(1_000);
      const request = (await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: 'all.example' }) })).request;
      const events = await Promise.all(watches.map((one) => one.events.next(requestEvent('ADDED', request.request_id), 30_000)));
      expect(events.map((event) => event.revision)).toEqual(Array(1_000).fill(request.revision));
      for (const one of watches) one.cancel();
    } finally {
      await h.close();
    }
  }, 120_000);
});

describe('shutdown and restart', () => {
  let h: Harness | undefined;
  let restarted: RunningServer | undefined;
  afterAll(async () => {
    await restarted?.stop();
    await h?.close();
  });

  test('shutdown ends every stream with UNAVAILABLE; after a restart on the same database every watch resumes without loss', async () => {
    h = await startHarness({ durability: 'normal' });
    const w = await makeWorld(h, { responders: 2 });
    const from = h.server.hub.revision;
    const specs: { rpc: (c: Clients) => Rpc; options: Msg }[] = [
      { rpc: (c) => c.responder(w.responders[0] as string), options: { relation_id: w.relationId, ...NOW } },
      { rpc: (c) => c.responder(w.responders[1] as string), options: { relation_id: '', filter: 'REQUEST_FILTER_NEW' } },
      { rpc: (c) => c.requester(w.requesters[0] as string), options: { relation_id: w.relationId, ...after(from) } },
    ];
    const open = specs.map((spec) => watch(spec.rpc(h as Harness), spec.options));
    await eventually(async () => expect(h?.server.hub.watcherCount).toBe(3));
    await open[1]?.events.next((event) => event.type === 'EVENT_TYPE_SNAPSHOT_COMPLETE');
    const before = (await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: 'before.example' }) })).request;
    await Promise.all(open.map((one) => one.events.next(requestEvent('ADDED', before.request_id))));
    // Writes race the shutdown: whatever was acknowledged must reach every watch.
    const acked: string[] = [before.request_id];
    const writing = pool(Array.from({ length: 200 }), 16, async () => {
      try {
        const { request } = await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: 'race.example' }) });
        acked.push(request.request_id);
      } catch (error) {
        expect((error as grpc.ServiceError).code).toBe(Code.UNAVAILABLE);
      }
    });
    await open[0]?.events.next(requestEvent('ADDED', undefined, (event) => event.request.request_id !== before.request_id));
    await h.server.stop();
    await writing;
    for (const one of open) {
      const status = await one.status;
      expect([status?.code, status?.reason]).toEqual([Code.UNAVAILABLE, 'SHUTTING_DOWN']);
    }

    restarted = await startServer({ listen: '127.0.0.1:0', db: h.db, logLevel: 'silent', durability: 'normal', shutdownGraceMs: 500 });
    const c = clientsOf(restarted.address);
    try {
      for (let i = 0; i < 20; i++) {
        const { request } = await c.requester(w.requesters[0] as string).call('CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: 'after.example' }) });
        acked.push(request.request_id);
      }
      const final = restarted.hub.revision;
      const resumed = specs.map((spec, i) => watch(spec.rpc(c), { relation_id: spec.options.relation_id, filter: spec.options.filter, ...after(lastRevision(open[i] as Watch)) }));
      await Promise.all(resumed.map((one) => reached(one, final)));
      for (const [i, one] of resumed.entries()) {
        one.cancel();
        const first = open[i] as Watch;
        const seen = [...addedIds(first.events.items), ...addedIds(one.events.items)];
        expect(new Set(seen).size, `watch ${i}: no duplicate`).toBe(seen.length);
        expect(new Set(seen), `watch ${i}: every acknowledged request`).toEqual(new Set(acked));
        expectWellFormed(first.batches);
        expectWellFormed(one.batches);
      }
    } finally {
      c.close();
    }
  }, 120_000);
});
