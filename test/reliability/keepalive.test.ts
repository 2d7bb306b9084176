// Connections that go bad, against a real server and clients in their own
// processes: a client that vanishes without closing (its process paused, so
// its socket stays open but nothing answers) has its watches freed within
// keepalive time + timeout, freeing its share of the per-unit stream cap; and
// connections that reach max_connection_age are asked to go away, so that a
// watching client reconnects and resumes without losing or repeating a change.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { spawnWatchClients, type WatchClients } from '../../bench/lib/watch-clients.ts';
import { connect, type Connection, type WatchEvent } from '../../src/client/index.ts';
import { Code } from '../../src/errors.ts';
import { startHarness, struct, type Harness } from '../helpers/harness.ts';
import { snapshotComplete, watch, type Watch } from '../helpers/streams.ts';
import { makeWorld, type World } from '../helpers/world.ts';
import { until } from './support.ts';

const KEEPALIVE_TIME_MS = 500;
const KEEPALIVE_TIMEOUT_MS = 500;
/** Scheduling slack on a loaded 2-core machine, on top of keepalive time + timeout. */
const SLACK_MS = 1_500;

describe('keepalive', () => {
  let h: Harness;
  let w: World;
  let vanished: WatchClients | undefined;
  const opened: Watch[] = [];

  beforeAll(async () => {
    h = await startHarness({ keepaliveTimeMs: KEEPALIVE_TIME_MS, keepaliveTimeoutMs: KEEPALIVE_TIMEOUT_MS, maxStreamsPerUnit: 2 });
    w = await makeWorld(h);
  });
  afterAll(async () => {
    for (const one of opened) one.cancel();
    vanished?.child.kill('SIGCONT');
    await vanished?.close();
    await h.close();
  });

  test('a client that vanishes without closing has its watches freed within keepalive time + timeout', async () => {
    const base = h.server.hub.watcherCount;
    vanished = await spawnWatchClients({
      address: h.server.address,
      service: 'ResponderService',
      method: 'WatchIncomingRequests',
      unit: w.responders[0] as string,
      request: { options: { relation_id: w.relationId } },
      streams: 2,
      channels: 1,
      record: false,
    });
    expect(h.server.hub.watcherCount).toBe(base + 2);
    // The unit holds its cap of two streams: a third is refused.
    const third = watch(w.res(), { relation_id: w.relationId });
    const refused = await third.status;
    expect(refused?.code).toBe(Code.RESOURCE_EXHAUSTED);
    expect(refused?.reason).toBe('TOO_MANY_STREAMS');

    // The process stops: its kernel keeps the socket open, but no ping is answered.
    vanished.child.kill('SIGSTOP');
    // The hub has no event for a stream being freed: poll its count.
    const freedAfter = await until(() => h.server.hub.watcherCount === base, KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS + SLACK_MS);
    expect(freedAfter).toBeLessThan(KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS + SLACK_MS);

    // Its share of the cap is free again.
    for (let i = 0; i < 2; i++) {
      const fresh = watch(w.res(), { relation_id: w.relationId });
      opened.push(fresh);
      await fresh.events.next(snapshotComplete);
    }
    expect(h.server.hub.watcherCount).toBe(base + 2);
  });
});

describe('max connection age', () => {
  const AGE_MS = 700;
  const GRACE_MS = 300;
  let h: Harness;
  let w: World;
  let connection: Connection | undefined;

  beforeAll(async () => {
    h = await startHarness({ maxConnectionAgeMs: AGE_MS, maxConnectionAgeGraceMs: GRACE_MS });
    w = await makeWorld(h);
  });
  afterAll(async () => {
    connection?.close();
    await h.close();
  });

  test('a live watch is cut with UNAVAILABLE once its connection is past age and grace', async () => {
    const started = performance.now();
    const raw = watch(w.res(), { relation_id: w.relationId });
    await raw.events.next(snapshotComplete);
    const status = await raw.status;
    expect(status?.code).toBe(Code.UNAVAILABLE);
    // grpc-js adds up to 10% jitter to the age.
    expect(performance.now() - started).toBeLessThan(AGE_MS * 1.1 + GRACE_MS + SLACK_MS);
  });

  test('a watching client reconnects and resumes without losing or repeating a change', async () => {
    connection = connect(h.server.address, { unit: w.responders[0] as string });
    const responder = connection.responder('tls-certificates', { relation: w.relationId });
    const live = responder.watch({ progressIntervalMs: 100 });
    const seen: string[] = [];
    let lastCreated: string | undefined;
    let loaded = () => {};
    let arrived = () => {};
    const snapshotLoaded = new Promise<void>((resolve) => (loaded = resolve));
    const lastArrived = new Promise<void>((resolve) => (arrived = resolve));
    const reading = (async () => {
      for await (const event of live as AsyncIterable<WatchEvent<unknown, unknown>>) {
        if (event.type === 'SNAPSHOT_COMPLETE') loaded();
        if (event.type === 'ADDED' && event.request) seen.push(event.request.request_id);
        if (lastCreated !== undefined && seen.includes(lastCreated)) arrived();
      }
    })();
    await snapshotLoaded;
    // Writes, paced, span several connection ages; only acknowledged writes count.
    const created: string[] = [];
    const writeUntil = performance.now() + AGE_MS * 4;
    while (performance.now() < writeUntil) {
      const { request } = await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: `n${created.length}.example` }) });
      created.push(request.request_id);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    lastCreated = created.at(-1);
    if (seen.includes(lastCreated as string)) arrived();
    await lastArrived;
    live.close();
    await reading;
    expect(live.stats.resumes).toBeGreaterThanOrEqual(2);
    expect(seen).toEqual(created);
  });
});
