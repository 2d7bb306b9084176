// The metrics listener: after a known sequence of gRPC calls on a real
// server, /metrics holds exactly the counts those calls imply, with
// go-grpc-prometheus names and bounded labels; /healthz follows shutdown.
import * as grpc from '@grpc/grpc-js';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../src/errors.ts';
import { startServer } from '../src/server.ts';
import { freePort } from '../bench/lib/processes.ts';
import { setupRelation, startHarness, struct, type Harness } from './helpers/harness.ts';
import { snapshotComplete, watch, watchReady } from './helpers/streams.ts';
import { eventually } from './helpers/world.ts';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text format (the lines this gateway writes). */
function parse(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, key, value] of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[key as string] = value as string;
    samples.push({ name: match[1] as string, labels, value: Number(match[3]) });
  }
  return samples;
}

class Scrape {
  readonly text: string;
  readonly samples: Sample[];
  constructor(text: string) {
    this.text = text;
    this.samples = parse(text);
  }

  /** The value of the one sample with the name whose labels include `labels` (0 when absent). */
  value(name: string, labels: Record<string, string> = {}): number {
    const found = this.samples.filter((sample) => sample.name === name && Object.entries(labels).every(([key, value]) => sample.labels[key] === value));
    if (found.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} matches ${found.length} samples`);
    return found[0]?.value ?? 0;
  }
}

const CERTS = 'relgate.v1.RequesterService';
const RESPONDER = 'relgate.v1.ResponderService';

describe('metrics', () => {
  let h: Harness;
  let base: string;
  const scrape = async () => {
    const response = await fetch(`${base}/metrics`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    return new Scrape(await response.text());
  };

  beforeAll(async () => {
    h = await startHarness({ metricsListen: '127.0.0.1:0', watchBuffer: 20 });
    base = `http://${h.server.metricsAddress}`;
  });
  afterAll(() => h?.close());

  it('is off unless --metrics-listen is given', async () => {
    const plain = await startHarness();
    try {
      expect(plain.server.metricsAddress).toBeUndefined();
    } finally {
      await plain.close();
    }
  });

  it('counts the calls, messages, codes, waiting requests and response times of a known sequence', async () => {
    const relationId = await setupRelation(h);
    const requester = h.requester('webapp/0');
    const responder = h.responder('ca/0');
    const watcher = await watchReady(responder, { relation_id: relationId });
    const first = await requester.call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: 'a.example' }) });
    await requester.call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: 'b.example' }) });
    const invalid = await requester.fail('CreateRequest', { relation_id: relationId, fields: struct({}) });
    expect(invalid.code).toBe(Code.INVALID_ARGUMENT);
    await responder.call('Respond', { request_id: first.request.request_id, fields: struct({ key: 'K', cert: 'C' }) });
    const missing = await responder.fail('GetIncomingRequest', { request_id: '00000000-0000-4000-8000-000000000000' });
    expect(missing.code).toBe(Code.NOT_FOUND);

    // Every batch the gateway sent has arrived once the watcher saw the last commit.
    const last = String(h.server.store.currentRevision());
    await watcher.events.next((event) => event.revision === last);
    const m = await scrape();
    const create = { grpc_type: 'unary', grpc_service: CERTS, grpc_method: 'CreateRequest' };
    expect(m.value('grpc_server_started_total', create)).toBe(3);
    expect(m.value('grpc_server_handled_total', { ...create, grpc_code: 'OK' })).toBe(2);
    expect(m.value('grpc_server_handled_total', { ...create, grpc_code: 'InvalidArgument' })).toBe(1);
    expect(m.value('grpc_server_msg_received_total', create)).toBe(3);
    expect(m.value('grpc_server_msg_sent_total', create)).toBe(2);
    expect(m.value('grpc_server_handling_seconds_count', create)).toBe(3);
    expect(m.value('grpc_server_handled_total', { grpc_method: 'GetIncomingRequest', grpc_code: 'NotFound' })).toBe(1);
    expect(m.value('grpc_server_handled_total', { grpc_service: 'relgate.v1.RegistryService', grpc_method: 'JoinRelation', grpc_code: 'OK' })).toBe(2);

    const watchLabels = { grpc_type: 'server_stream', grpc_service: RESPONDER, grpc_method: 'WatchIncomingRequests' };
    expect(m.value('grpc_server_started_total', watchLabels)).toBe(1);
    expect(m.value('grpc_server_handled_total', watchLabels)).toBe(0);
    expect(m.value('grpc_server_msg_sent_total', watchLabels)).toBe(watcher.batches.length);
    expect(m.value('relgate_watches_open', { side: 'responder' })).toBe(1);
    expect(m.value('relgate_watches_open', { side: 'requester' })).toBe(0);
    expect(m.value('relgate_watch_max_lag_revisions')).toBe(0);

    expect(m.value('relgate_requests_waiting', { interface: 'tls-certificates' })).toBe(1);
    expect(m.value('relgate_requests_waiting', { interface: 'http' })).toBe(0);
    expect(m.value('relgate_request_response_seconds_count', { interface: 'tls-certificates' })).toBe(1);
    expect(m.value('relgate_store_commit_seconds_count')).toBeGreaterThanOrEqual(1);
    expect(m.value('relgate_store_revision')).toBe(h.server.store.currentRevision());
    expect(m.value('relgate_store_compacted_revision')).toBe(0);

    // Bounded labels: no request or relation ids, no unit names.
    expect(m.text).not.toContain(first.request.request_id);
    expect(m.text).not.toContain(relationId);
    expect(m.text).not.toContain('webapp/0');

    // A cancelled watch is handled with code Canceled and no longer open.
    watcher.cancel();
    await watcher.status;
    const after = await eventually(async () => {
      const s = await scrape();
      expect(s.value('grpc_server_handled_total', { ...watchLabels, grpc_code: 'Canceled' })).toBe(1);
      expect(s.value('relgate_watches_open', { side: 'responder' })).toBe(0);
      return s;
    }, 10_000);
    expect(after.value('relgate_slow_watcher_cutoffs_total')).toBe(0);
  });

  it('shows a watcher that does not read as lagging, then counts its cut-off', async () => {
    const relationId = await setupRelation(h, { requesters: ['lagweb/0'], responders: ['lagca/0'] });
    const requester = h.requester('lagweb/0');
    const stalled = watch(h.responder('lagca/0'), { relation_id: relationId });
    await stalled.events.next(snapshotComplete);
    stalled.call.pause();
    // Large requests fill the transport's buffers and flow-control windows; then the gateway holds events back.
    const big = 'x'.repeat(16 * 1024);
    const create = () => requester.call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: big }) });
    let created = 0;
    let lagging: Scrape | undefined;
    while (!lagging && created < 200) {
      await create();
      created += 1;
      const s = await scrape();
      if (s.value('relgate_watches_behind') === 1) lagging = s;
    }
    expect(lagging, `still not behind after ${created} requests`).toBeDefined();
    expect(lagging?.value('relgate_watch_max_lag_revisions')).toBeGreaterThan(0);
    expect(lagging?.value('relgate_watch_max_lag_revisions')).toBeLessThanOrEqual(h.server.store.currentRevision());
    // Past the watch buffer (20 events held back) it is cut off.
    for (let i = 0; i < 25; i++) await create();
    created += 25;
    stalled.call.resume();
    const status = await stalled.status;
    expect(status?.reason).toBe('SLOW_WATCHER');
    const cut = await scrape();
    expect(cut.value('relgate_slow_watcher_cutoffs_total')).toBe(1);
    expect(cut.value('relgate_watches_behind')).toBe(0);
    expect(cut.value('grpc_server_handled_total', { grpc_method: 'WatchIncomingRequests', grpc_code: 'ResourceExhausted' })).toBe(1);
    expect(cut.value('relgate_requests_waiting', { interface: 'tls-certificates' })).toBe(1 + created);
  });

  it('adds no series for methods the gateway does not serve', async () => {
    const client = new grpc.Client(h.server.address, grpc.credentials.createInsecure());
    const code = await new Promise<number>((resolve) =>
      client.makeUnaryRequest('/relgate.v1.NoSuchService/Invented', (value: Buffer) => value, (value: Buffer) => value, Buffer.alloc(0), (error) => resolve(error?.code ?? 0)),
    );
    client.close();
    expect(code).toBe(Code.UNIMPLEMENTED);
    const m = await scrape();
    expect(m.text).not.toContain('NoSuchService');
    expect(m.text).not.toContain('Invented');
  });

  it('answers /healthz while serving and 404 elsewhere', async () => {
    const health = await fetch(`${base}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.text()).toBe('ok\n');
    expect((await fetch(`${base}/nothing-here`)).status).toBe(404);
    expect((await fetch(`${base}/metrics`, { method: 'POST' })).status).toBe(405);
  });

  it('answers /healthz with 503 once shutdown begins, while calls drain', async () => {
    const draining = await startHarness({ metricsListen: '127.0.0.1:0', shutdownGraceMs: 10_000 });
    const healthz = `http://${draining.server.metricsAddress}/healthz`;
    try {
      const relationId = await setupRelation(draining);
      // A call waiting for a responder keeps the gateway draining until it ends.
      const requester = draining.requester('webapp/0');
      const call = (requester.client.Call as (...args: unknown[]) => grpc.ClientUnaryCall).call(
        requester.client,
        { relation_id: relationId, fields: struct({ common_name: 'drain.example' }), wait_for_responders: true },
        requester.metadata,
        () => undefined,
      );
      await expect.poll(async () => (await draining.server.store.read((tx) => tx.listRequests({ relationIds: [relationId], afterCreateRevision: 0, limit: 1 }))).length, { timeout: 10_000 }).toBe(1);
      expect((await fetch(healthz)).status).toBe(200);
      const stopped = draining.server.stop();
      const during = await fetch(healthz);
      expect(during.status).toBe(503);
      expect(await during.text()).toBe('shutting down\n');
      call.cancel();
      await stopped;
      await expect(fetch(healthz)).rejects.toThrow();
    } finally {
      await draining.close();
    }
  });

  it("shows how far the checkpoint thread has copied the SQLite WAL into the database file", async () => {
    const fresh = await startHarness({ metricsListen: '127.0.0.1:0' });
    try {
      const scrapeFresh = async () => new Scrape(await (await fetch(`http://${fresh.server.metricsAddress}/metrics`)).text());
      expect((await scrapeFresh()).value('relgate_sqlite_wal_frames')).toBe(0);
      const relationId = await setupRelation(fresh);
      // Each call commits on its own, and the thread checkpoints every 64 commits.
      for (let i = 0; i < 64; i++) await fresh.requester('webapp/0').call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: `wal${i}.example` }) });
      const metrics = await eventually(async () => {
        const m = await scrapeFresh();
        expect(m.value('relgate_sqlite_wal_frames')).toBeGreaterThan(0);
        return m;
      });
      expect(metrics.value('relgate_sqlite_wal_checkpointed_frames')).toBeGreaterThan(0);
      expect(metrics.value('relgate_sqlite_wal_checkpointed_frames')).toBeLessThanOrEqual(metrics.value('relgate_sqlite_wal_frames'));
    } finally {
      await fresh.close();
    }
  });

  it('drops the waiting count of a relation that is removed with its requests', async () => {
    const fresh = await startHarness({ metricsListen: '127.0.0.1:0' });
    try {
      const waiting = async () => new Scrape(await (await fetch(`http://${fresh.server.metricsAddress}/metrics`)).text()).value('relgate_requests_waiting', { interface: 'tls-certificates' });
      const kept = await setupRelation(fresh);
      const removed = await setupRelation(fresh, { requesters: ['shop/0'], responders: ['ca/1'] });
      await fresh.requester('webapp/0').call('CreateRequest', { relation_id: kept, fields: struct({ common_name: 'kept.example' }) });
      for (const name of ['a', 'b', 'c']) await fresh.requester('shop/0').call('CreateRequest', { relation_id: removed, fields: struct({ common_name: `${name}.example` }) });
      expect(await waiting()).toBe(4);
      await fresh.registry.call('DeleteRelation', { relation_id: removed });
      expect(await waiting()).toBe(1);
    } finally {
      await fresh.close();
    }
  });

  it('counts the statuses grpc-js sends itself under their own codes: a deadline, a message over the send limit', async () => {
    const small = await startHarness({ metricsListen: '127.0.0.1:0', maxSendBytes: 2048 });
    try {
      const relationId = await setupRelation(small);
      const responder = small.responder('ca/0');
      const late = (responder.client.WatchIncomingRequests as (...args: unknown[]) => grpc.ClientReadableStream<unknown>).call(responder.client, { options: { relation_id: relationId } }, responder.metadata, { deadline: Date.now() + 300 });
      const lateStatus = new Promise<grpc.StatusObject>((resolve) => late.on('status', resolve));
      late.on('data', () => undefined);
      late.on('error', () => undefined);
      expect((await lateStatus).code).toBe(grpc.status.DEADLINE_EXCEEDED);
      // A request too large to send back (the reply to its create fails too); a page holds it all the same.
      await small.requester('webapp/0').fail('CreateRequest', { relation_id: relationId, fields: struct({ common_name: 'a'.repeat(2100) }) });
      const tooBig = await responder.fail('ListIncomingRequests', { relation_id: relationId });
      expect(tooBig.code).toBe(Code.RESOURCE_EXHAUSTED);
      const m = await eventually(async () => {
        const scraped = new Scrape(await (await fetch(`http://${small.server.metricsAddress}/metrics`)).text());
        expect(scraped.value('grpc_server_handled_total', { grpc_method: 'ListIncomingRequests', grpc_code: 'ResourceExhausted' })).toBe(1);
        return scraped;
      });
      expect(m.value('grpc_server_handled_total', { grpc_method: 'WatchIncomingRequests', grpc_code: 'DeadlineExceeded' })).toBe(1);
      expect(m.value('grpc_server_handled_total', { grpc_method: 'WatchIncomingRequests', grpc_code: 'Canceled' })).toBe(0);
      expect(m.value('grpc_server_handled_total', { grpc_method: 'ListIncomingRequests', grpc_code: 'Canceled' })).toBe(0);
    } finally {
      await small.close();
    }
  });

  it('answers a request target it cannot parse with 400, HEAD of the live feed at once, and refuses a port that is not digits', async () => {
    const [host, port] = (h.server.metricsAddress as string).split(':') as [string, string];
    const raw = (line: string) =>
      new Promise<string>((resolve, reject) => {
        const socket = net.connect(Number(port), host, () => socket.end(`${line}\r\nHost: relgate\r\nConnection: close\r\n\r\n`));
        let text = '';
        socket.on('data', (chunk) => (text += chunk.toString()));
        socket.on('end', () => resolve(text));
        socket.on('error', reject);
      });
    expect(await raw('GET //[ HTTP/1.1')).toMatch(/^HTTP\/1\.1 400 /);
    const head = await raw('HEAD /dashboard/events HTTP/1.1');
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    expect(head).toContain('content-type: text/event-stream');
    for (const listen of ['127.0.0.1:', '127.0.0.1:0x2000', '127.0.0.1: 1e4']) {
      await expect(startHarness({ metricsListen: listen }), listen).rejects.toThrow(`--metrics-listen must be host:port, got "${listen}"`);
    }
  });

  it("sends the dashboard a preview of each request's and response's fields, not the fields", async () => {
    const relationId = await setupRelation(h, { requesters: ['preview/0'], responders: ['ca/2'] });
    const big = 'x'.repeat(10_000);
    const { request } = await h.requester('preview/0').call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: big }) });
    const waiting = await h.requester('preview/0').call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: 'small.example' }) });
    await h.responder('ca/2').call('Respond', { request_id: request.request_id, fields: struct({ key: big, cert: 'C' }) });
    const state = (await (await fetch(`${base}/dashboard/state`)).json()) as { waiting: { request_id: string; fields: string }[]; responses: { request_id: string; fields: string }[] };
    expect(state.waiting.find((w) => w.request_id === waiting.request.request_id)?.fields).toBe(JSON.stringify({ common_name: 'small.example' }));
    const response = state.responses.find((r) => r.request_id === request.request_id)?.fields ?? '';
    expect([response.length, response.endsWith('…'), response.startsWith('{"key":"xxx')]).toEqual([301, true, true]);
  });

  it('leaves nothing listening or open when the metrics address is taken', async () => {
    const taken = h.server.metricsAddress as string;
    const dir = mkdtempSync(path.join(tmpdir(), 'relgate-start-'));
    try {
      const listen = `127.0.0.1:${await freePort()}`;
      await expect(startServer({ listen, db: path.join(dir, 'r.db'), metricsListen: taken, logLevel: 'silent' })).rejects.toThrow(/EADDRINUSE/);
      // The gRPC port is free again and the database closed: a second start on both succeeds.
      const again = await startServer({ listen, db: path.join(dir, 'r.db'), logLevel: 'silent' });
      await again.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('counts the requests already stored when it starts', async () => {
    const first = await startHarness();
    const relationId = await setupRelation(first);
    for (const name of ['a', 'b', 'c']) await first.requester('webapp/0').call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: `${name}.example` }) });
    await first.server.stop();
    const again = await startHarness({ db: first.db, metricsListen: '127.0.0.1:0' });
    try {
      const text = await (await fetch(`http://${again.server.metricsAddress}/metrics`)).text();
      expect(new Scrape(text).value('relgate_requests_waiting', { interface: 'tls-certificates' })).toBe(3);
    } finally {
      await again.close();
      await first.close();
    }
  });
});
