// Many concurrent watch streams against `relgate serve` in its own process,
// with the streams held by another process so that the server's resident
// memory is measured alone: 10,000 streams over one connection, then 10,000
// over 100 connections, every stream receives a change, the per-unit stream
// cap answers RESOURCE_EXHAUSTED with ErrorInfo, and memory stays bounded.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { spawnWatchClients, type WatchClients } from '../../bench/lib/watch-clients.ts';
import { Code } from '../../src/errors.ts';
import { spawnServe, type ServeProcess } from '../helpers/grpcurl.ts';
import { startHarness, struct } from '../helpers/harness.ts';
import { statusDetails } from '../helpers/status.ts';
import { SessionClient, snapshotComplete, watch } from '../helpers/streams.ts';
import { makeWorld, type World } from '../helpers/world.ts';
import { clientsOf, rssMb, until } from './support.ts';

/** Streams per round; RELGATE_LOAD_STREAMS scales it (the figure is 10,000). */
const STREAMS = Number(process.env.RELGATE_LOAD_STREAMS ?? 10_000);
/**
 * The memory bound: growth of server RSS over the fresh server, per open
 * stream, at the peak of any round (garbage of closed rounds included). An
 * idle grpc-js server stream alone costs about 14 KiB; the peaks measured
 * are 25-46 KiB, depending on connections and collection timing. 64 KiB per
 * stream means 10,000 streams fit in 625 MiB.
 */
const KIB_PER_STREAM = 64;
// Peak RSS swings with garbage-collection timing, so a later round may peak
// higher; a leak of the streams would add what a whole round holds. Fail when
// a round adds more than half of that.
const LEAK_SHARE = 0.5;

describe(`${STREAMS} concurrent watch streams`, () => {
  let dir: string;
  let server: ServeProcess;
  let clients: ReturnType<typeof clientsOf>;
  let w: World;
  let held: WatchClients | undefined;
  let baseline = 0;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relgate-streams-'));
    server = await spawnServe(['--listen', '127.0.0.1:0', '--db', path.join(dir, 'relgate.db'), '--durability', 'normal', '--log-level', 'info', '--max-streams-per-unit', String(STREAMS)]);
    clients = clientsOf(server.address);
    // One unit per round (a unit's slots free only as the server sees each close), and one bystander.
    w = await makeWorld(clients, { responders: 4 });
    baseline = rssMb(server.child.pid);
  });
  afterAll(async () => {
    await held?.close();
    clients?.close();
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /**
   * Waits until the server has ended every stream of the closed rounds: it
   * logs one CANCELLED line per watch whose client went away.
   */
  async function drained(rounds: number): Promise<void> {
    const cancelled = () => server.log().split('"method":"ResponderService/WatchIncomingRequests","code":"CANCELLED"').length - 1;
    await until(() => cancelled() >= rounds * STREAMS, 60_000, 250);
  }

  /** Opens the streams as the unit, proves each receives a change, and measures the server. */
  async function round(unit: string, channels: number): Promise<number> {
    let peakMb = rssMb(server.child.pid);
    const sampler = setInterval(() => (peakMb = Math.max(peakMb, rssMb(server.child.pid))), 100);
    try {
      const started = performance.now();
      held = await spawnWatchClients(
        { address: server.address, service: 'ResponderService', method: 'WatchIncomingRequests', unit, request: { options: { relation_id: w.relationId } }, streams: STREAMS, channels, record: false },
        120_000,
      );
      const openMs = performance.now() - started;
      const fanOut = performance.now();
      const { request } = await w.req().call('CreateRequest', { relation_id: w.relationId, fields: struct({ common_name: `fan-out-${channels}.example` }) });
      await held.reached(Number(request.revision));
      const fanOutMs = performance.now() - fanOut;
      peakMb = Math.max(peakMb, rssMb(server.child.pid));
      expect((await held.report()).filter((report) => report.ended)).toEqual([]);
      const perStreamKib = ((peakMb - baseline) * 1024) / STREAMS;
      console.log(
        `${STREAMS} streams over ${channels} connection(s): opened in ${openMs.toFixed(0)} ms, a change reached all in ${fanOutMs.toFixed(0)} ms, ` +
          `server RSS ${baseline.toFixed(1)} -> peak ${peakMb.toFixed(1)} MiB (${perStreamKib.toFixed(1)} KiB per stream)`,
      );
      expect(perStreamKib).toBeLessThan(KIB_PER_STREAM);
      return peakMb;
    } finally {
      clearInterval(sampler);
    }
  }

  test('over one connection: every stream gets the change, the cap refuses one more, memory stays within the bound', async () => {
    const unit = w.responders[0] as string;
    await round(unit, 1);

    // The unit holds its cap: one more stream is refused with ErrorInfo naming the limit.
    const extra = watch(clients.responder(unit), { relation_id: w.relationId });
    const refused = await extra.status;
    expect(refused?.code).toBe(Code.RESOURCE_EXHAUSTED);
    expect(refused?.reason).toBe('TOO_MANY_STREAMS');
    expect(refused?.metadata).toEqual({ unit, limit: String(STREAMS) });
    // Another unit is not affected by this unit's cap.
    const other = watch(clients.responder(w.responders[3] as string), { relation_id: w.relationId });
    await other.events.next(snapshotComplete);
    other.cancel();
    await held?.close();
    held = undefined;
  }, 180_000);

  test('over 100 connections, twice after the first round closed: within the bound, and the server does not accumulate', async () => {
    await drained(1);
    const second = await round(w.responders[1] as string, 100);
    await held?.close();
    await drained(2);
    const third = await round(w.responders[2] as string, 100);
    expect(third, `third round peak vs second (${second.toFixed(1)} MiB, fresh server ${baseline.toFixed(1)} MiB)`).toBeLessThan(second + (second - baseline) * LEAK_SHARE);
  }, 240_000);
});

describe('the stream cap', () => {
  test('counts sessions and watches together, refuses one more with the google.rpc.Status details, and frees a slot when a stream ends', async () => {
    const h = await startHarness({ maxStreamsPerUnit: 2 });
    try {
      const w = await makeWorld(h);
      const unit = w.responders[0] as string;
      const watching = watch(w.res(), { relation_id: w.relationId });
      await watching.events.next(snapshotComplete);
      const session = new SessionClient(h.server.address, unit, { incoming_requests: { relation_id: w.relationId } });
      await session.incoming.next(snapshotComplete);

      const refused = new SessionClient(h.server.address, unit);
      const status = await refused.status;
      expect(status?.code).toBe(Code.RESOURCE_EXHAUSTED);
      const details = statusDetails(status?.cause as grpc.ServiceError);
      expect(details).toMatchObject({ code: Code.RESOURCE_EXHAUSTED, errorInfo: { reason: 'TOO_MANY_STREAMS', domain: 'relgate.dev', metadata: { unit, limit: '2' } } });

      // The watch ends; once the hub has dropped it, the unit may open another stream.
      const watchers = h.server.hub.watcherCount;
      watching.cancel();
      await until(() => h.server.hub.watcherCount === watchers - 1, 5_000);
      const again = watch(w.res(), { relation_id: w.relationId });
      await again.events.next(snapshotComplete);
      again.cancel();
      session.call.end();
      await session.closed;
    } finally {
      await h.close();
    }
  });
});
