#!/usr/bin/env node
// Soak: `relgate serve` in its own process under mixed load for a long time
// (10 minutes by default). Requesters create requests and wait for their
// responses, responders watch and answer, readers list and get, watchers come
// and go, and some requests expire. Requests are withdrawn once done and the
// change log is compacted, so the working set is steady and any growth is the
// gateway's own. Every interval the server's resident memory and the window's
// round-trip latency are sampled into a CSV and, at the end, plotted into a
// PNG. Exits 1 when the RSS was not flat (judged on runs of 3 minutes or more).
//
//   node scripts/soak.ts [--duration 600] [--interval 10] [--concurrency 16] [--out DIR]
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { PNG } from 'pngjs';
import { freePort, rssMb } from '../bench/lib/processes.ts';
import { loadApi } from '../src/protos.ts';
import { jsonToStruct, structToJson } from '../src/struct.ts';
import { serveArgv } from '../src/cli/serve-process.ts';

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '600' },
    interval: { type: 'string', default: '10' },
    concurrency: { type: 'string', default: '16' },
    out: { type: 'string' },
  },
});
const DURATION_MS = Number(args.duration) * 1000;
const INTERVAL_MS = Number(args.interval) * 1000;
const CONCURRENCY = Number(args.concurrency);
const OUT = args.out ?? mkdtempSync(path.join(tmpdir(), 'relgate-soak-'));
const RESPONDERS = 4;
/** Common-name prefix of requests the responders leave to expire. */
const UNANSWERED = 'expire-';
const EXPIRY_MS = 2_000;
/** Change-log revisions the gateway keeps: history stays bounded like the working set. */
const HISTORY_REVISIONS = 100_000;
/** Allowed RSS growth from the middle third of the run to the last third. */
const FLAT_SHARE = 0.1;
const FLAT_SLACK_MIB = 8;
/** Shorter runs are mostly warm-up: their RSS is reported, not judged. */
const JUDGED_MS = 180_000;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Msg = Record<string, any>;
type Client = grpc.Client & Record<string, (...args: unknown[]) => unknown>;
type Ctor = new (address: string, credentials: grpc.ChannelCredentials) => Client;
const v1 = (grpc.loadPackageDefinition(loadApi()) as unknown as { relgate: { v1: Record<string, Ctor> } }).relgate.v1;

interface Sample {
  elapsedS: number;
  rssMib: number;
  roundTrips: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
}

// ---- the server ----


async function startGateway(dir: string) {
  const address = `127.0.0.1:${await freePort()}`;
  const child = spawn(process.execPath, serveArgv(['--listen', address, '--db', path.join(dir, 'relgate.db'), '--log-level', 'warn', '--history-revisions', String(HISTORY_REVISIONS)]), {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const probe = new (v1.RegistryService as Ctor)(address, grpc.credentials.createInsecure());
  await new Promise<void>((resolve, reject) => probe.waitForReady(Date.now() + 20_000, (error) => (error ? reject(error) : resolve())));
  probe.close();
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return { address, child, stop: async () => (child.kill('SIGTERM'), await exited) };
}


// ---- clients ----

function unary(client: Client, unit: string | undefined, method: string, request: Msg): Promise<Msg> {
  const metadata = new grpc.Metadata();
  if (unit) metadata.set('relgate-unit', unit);
  return new Promise((resolve, reject) => {
    (client[method] as (r: Msg, m: grpc.Metadata, cb: (e: grpc.ServiceError | null, r: Msg) => void) => void).call(client, request, metadata, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

function stream(client: Client, unit: string, method: string, request: Msg): grpc.ClientReadableStream<Msg> {
  const metadata = new grpc.Metadata();
  metadata.set('relgate-unit', unit);
  return (client[method] as (r: Msg, m: grpc.Metadata) => grpc.ClientReadableStream<Msg>).call(client, request, metadata);
}

async function setUp(address: string) {
  const registry = new (v1.RegistryService as Ctor)(address, grpc.credentials.createInsecure());
  for (const name of ['soakweb', 'soakca']) await unary(registry, undefined, 'RegisterApplication', { name });
  const units = ['soakweb/0', ...Array.from({ length: RESPONDERS }, (_, i) => `soakca/${i}`)];
  for (const name of units) await unary(registry, undefined, 'RegisterUnit', { name });
  const { relation } = await unary(registry, undefined, 'CreateRelation', {
    interface: 'tls-certificates',
    requester_application: 'soakweb',
    requester_endpoint: 'certificates',
    responder_application: 'soakca',
    responder_endpoint: 'certificates',
  });
  for (const unit of units) await unary(registry, undefined, 'JoinRelation', { relation_id: relation.id, unit });
  registry.close();
  return relation.id as string;
}

// ---- the load ----

class Load {
  readonly #address: string;
  readonly #relationId: string;
  readonly #requester: Client;
  readonly #responder: Client;
  readonly #waiting = new Map<string, () => void>();
  /** Responses that arrived before their create call returned. */
  readonly #early = new Set<string>();
  /** Requests left to expire, withdrawn once they have. */
  readonly #expiring: { id: string; at: number }[] = [];
  readonly #streams: grpc.ClientReadableStream<Msg>[] = [];
  #latencies: number[] = [];
  #errors = 0;
  readonly #seenErrors = new Set<string>();
  #running = true;

  constructor(address: string, relationId: string) {
    this.#address = address;
    this.#relationId = relationId;
    this.#requester = new (v1.RequesterService as Ctor)(address, grpc.credentials.createInsecure());
    this.#responder = new (v1.ResponderService as Ctor)(address, grpc.credentials.createInsecure());
  }

  /** Opens the watches, and once each has its snapshot starts the loops; resolves when they stop. */
  async start(): Promise<void> {
    await Promise.all([this.#watchResponses(), ...Array.from({ length: RESPONDERS }, (_, i) => this.#answer(`soakca/${i}`))]);
    const loops = Array.from({ length: CONCURRENCY }, (_, i) => this.#requestLoop(i));
    await Promise.all([...loops, this.#readLoop(), this.#churnLoop()]);
  }

  /** Latencies and errors since the last call. */
  window(): { latencies: number[]; errors: number } {
    const window = { latencies: this.#latencies, errors: this.#errors };
    this.#latencies = [];
    this.#errors = 0;
    return window;
  }

  stop(): void {
    this.#running = false;
    for (const one of this.#streams) one.cancel();
    this.#requester.close();
    this.#responder.close();
  }

  #watchResponses(): Promise<void> {
    const watch = stream(this.#requester, 'soakweb/0', 'WatchResponses', { options: { relation_id: this.#relationId } });
    this.#streams.push(watch);
    watch.on('data', (message: Msg) => {
      for (const event of message.batch.events as Msg[]) {
        if (event.object !== 'response') continue;
        const waiter = this.#waiting.get(event.response.request_id);
        if (waiter) waiter();
        else this.#early.add(event.response.request_id);
      }
    });
    watch.on('error', (error: grpc.ServiceError) => this.#restart(error, () => void this.#watchResponses()));
    return snapshotLoaded(watch);
  }

  /** A responder unit answers every new request addressed to it. */
  #answer(unit: string): Promise<void> {
    const watch = stream(this.#responder, unit, 'WatchIncomingRequests', { options: { relation_id: this.#relationId, filter: 'REQUEST_FILTER_NEW' } });
    this.#streams.push(watch);
    watch.on('data', (message: Msg) => {
      for (const event of message.batch.events as Msg[]) {
        if (event.type !== 'EVENT_TYPE_ADDED' || event.object !== 'request') continue;
        if (String(structToJson(event.request.fields).common_name).startsWith(UNANSWERED)) continue;
        unary(this.#responder, unit, 'Respond', { request_id: event.request.request_id, fields: jsonToStruct({ key: 'K', cert: 'C' }) }).catch(() => undefined);
      }
    });
    watch.on('error', (error: grpc.ServiceError) => this.#restart(error, () => void this.#answer(unit)));
    return snapshotLoaded(watch);
  }

  /** Counts an error, and prints the first of each kind. */
  #fail(error: unknown): void {
    if (!this.#running) return; // the load stopping cuts its own calls
    this.#errors += 1;
    const kind = error instanceof Error ? error.message : String(error);
    if (this.#seenErrors.has(kind)) return;
    this.#seenErrors.add(kind);
    console.error(`soak: first "${kind}"`);
  }

  #restart(error: grpc.ServiceError, again: () => void): void {
    if (!this.#running || error.code === grpc.status.CANCELLED) return;
    this.#fail(error);
    setTimeout(again, 100);
  }

  /** Create, then wait for the response: one round trip. Every tenth request expires unanswered instead. */
  async #requestLoop(loop: number): Promise<void> {
    for (let n = 0; this.#running; n++) {
      const started = performance.now();
      try {
        const expiring = n % 10 === 9;
        const { request } = await unary(this.#requester, 'soakweb/0', 'CreateRequest', {
          relation_id: this.#relationId,
          fields: jsonToStruct({ common_name: `${expiring ? UNANSWERED : 'l'}${loop}-${n}.example` }),
          ttl: { seconds: expiring ? EXPIRY_MS / 1000 : 60 },
        });
        if (expiring) {
          this.#expiring.push({ id: request.request_id, at: performance.now() });
          continue;
        }
        if (!this.#early.delete(request.request_id)) {
          await new Promise<void>((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error('no response within 10 s')), 10_000);
            this.#waiting.set(request.request_id, () => (clearTimeout(timer), resolve()));
          }).finally(() => this.#waiting.delete(request.request_id));
        }
        this.#latencies.push(performance.now() - started);
        // Done with it, as an application would be: the working set stays steady.
        await unary(this.#requester, 'soakweb/0', 'WithdrawRequest', { request_id: request.request_id });
      } catch (error) {
        this.#fail(error);
      }
    }
  }

  /** Lists a page and reads one request, and withdraws expired requests, a few times a second. */
  async #readLoop(): Promise<void> {
    while (this.#running) {
      try {
        while ((this.#expiring[0]?.at ?? Infinity) < performance.now() - EXPIRY_MS * 2) {
          await unary(this.#requester, 'soakweb/0', 'WithdrawRequest', { request_id: this.#expiring.shift()?.id });
        }
        const page = await unary(this.#requester, 'soakweb/0', 'ListRequests', { relation_id: this.#relationId, page_size: 50 });
        const first = page.requests[0];
        if (first) await unary(this.#requester, 'soakweb/0', 'GetRequest', { request_id: first.request_id });
      } catch (error) {
        this.#fail(error);
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  /** Watchers that connect, read a snapshot and leave, over their own connections. */
  async #churnLoop(): Promise<void> {
    while (this.#running) {
      const client = new (v1.ResponderService as Ctor)(this.#address, grpc.credentials.createInsecure());
      const watch = stream(client, 'soakca/0', 'WatchIncomingRequests', { options: { relation_id: this.#relationId } });
      await snapshotLoaded(watch);
      watch.cancel();
      client.close();
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
}

/** Resolves once the watch has delivered its snapshot (or ended). */
function snapshotLoaded(watch: grpc.ClientReadableStream<Msg>): Promise<void> {
  return new Promise((resolve) => {
    const onData = (message: Msg) => {
      if (!(message.batch.events as Msg[]).some((event) => event.type === 'EVENT_TYPE_SNAPSHOT_COMPLETE')) return;
      watch.off('data', onData);
      resolve();
    };
    watch.on('data', onData);
    watch.once('error', () => resolve());
  });
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? NaN;
}

// ---- the plot ----

/** 5x7 glyphs for the plot's labels. */
const GLYPHS: Record<string, string> = {
  '0': '01110100011001110101110011000101110', '1': '00100011000010000100001000010001110', '2': '01110100010000100010001000100011111',
  '3': '11111000100010000010000011000101110', '4': '00010001100101010010111110001000010', '5': '11111100001111000001000011000101110',
  '6': '00110010001000011110100011000101110', '7': '11111000010001000100010000100001000', '8': '01110100011000101110100011000101110',
  '9': '01110100011000101111000010001001100', '.': '00000000000000000000000000110001100', ' ': '00000000000000000000000000000000000',
  '(': '00010001000100001000010000010000010', ')': '01000001000001000010000100010001000', '-': '00000000000000011111000000000000000',
  A: '01110100011000111111100011000110001', B: '11110100011000111110100011000111110', D: '11100100101000110001100011001011100',
  E: '11111100001000011110100001000011111', I: '01110001000010000100001000010001110', L: '10000100001000010000100001000011111',
  M: '10001110111010110101100011000110001', N: '10001100011100110101100111000110001', O: '01110100011000110001100011000101110',
  P: '11110100011000111110100001000010000', R: '11110100011000111110101001001010001', S: '01111100001000001110000010000111110',
  T: '11111001000010000100001000010000100', U: '10001100011000110001100011000101110', V: '10001100011000110001100010101000100',
  W: '10001100011000110101101011010101010', K: '10001100101010011000101001001010001',
};

class Canvas {
  readonly png: PNG;
  constructor(width: number, height: number) {
    this.png = new PNG({ width, height });
    this.png.data.fill(255);
  }
  dot(x: number, y: number, [r, g, b]: readonly number[], size = 1): void {
    for (let dx = 0; dx < size; dx++) {
      for (let dy = 0; dy < size; dy++) {
        const px = Math.round(x) + dx;
        const py = Math.round(y) + dy;
        if (px < 0 || py < 0 || px >= this.png.width || py >= this.png.height) continue;
        const i = (py * this.png.width + px) * 4;
        this.png.data[i] = r as number;
        this.png.data[i + 1] = g as number;
        this.png.data[i + 2] = b as number;
      }
    }
  }
  line(x0: number, y0: number, x1: number, y1: number, color: readonly number[], size = 1): void {
    const steps = Math.max(1, Math.ceil(Math.hypot(x1 - x0, y1 - y0)));
    for (let i = 0; i <= steps; i++) this.dot(x0 + ((x1 - x0) * i) / steps, y0 + ((y1 - y0) * i) / steps, color, size);
  }
  text(x: number, y: number, text: string, scale = 2): void {
    for (const [n, char] of [...text.toUpperCase()].entries()) {
      const glyph = GLYPHS[char] ?? GLYPHS[' '] ?? '';
      for (let bit = 0; bit < 35; bit++) if (glyph[bit] === '1') this.dot(x + (n * 6 + (bit % 5)) * scale, y + Math.floor(bit / 5) * scale, [0, 0, 0], scale);
    }
  }
}

/** One panel: a series against elapsed seconds, with its range written on the axis. */
function panel(canvas: Canvas, top: number, height: number, title: string, xs: number[], ys: number[], color: readonly number[]): void {
  const left = 110;
  const right = canvas.png.width - 30;
  const bottom = top + height;
  const finite = ys.filter(Number.isFinite);
  const max = Math.max(1, ...finite) * 1.1;
  const xMax = Math.max(1, ...xs);
  canvas.text(left, top - 24, title);
  canvas.line(left, top, left, bottom, [0, 0, 0]);
  canvas.line(left, bottom, right, bottom, [0, 0, 0]);
  for (let i = 0; i <= 4; i++) {
    const y = bottom - (height * i) / 4;
    canvas.line(left + 1, y, right, y, [225, 225, 225]);
    canvas.text(10, y - 7, ((max * i) / 4).toFixed(max < 10 ? 1 : 0));
  }
  canvas.text(left, bottom + 8, '0');
  canvas.text(right - 60, bottom + 8, xMax.toFixed(0));
  const point = (i: number) => [left + ((xs[i] as number) / xMax) * (right - left), bottom - ((ys[i] as number) / max) * height] as const;
  for (let i = 1; i < xs.length; i++) {
    if (!Number.isFinite(ys[i]) || !Number.isFinite(ys[i - 1])) continue;
    canvas.line(...point(i - 1), ...point(i), color, 2);
  }
  for (let i = 0; i < xs.length; i++) if (Number.isFinite(ys[i])) canvas.dot(point(i)[0] - 2, point(i)[1] - 2, color, 5);
}

function plot(samples: Sample[], file: string): void {
  const canvas = new Canvas(900, 640);
  const xs = samples.map((sample) => sample.elapsedS);
  panel(canvas, 50, 220, 'SERVER RSS (MIB)', xs, samples.map((sample) => sample.rssMib), [31, 119, 180]);
  panel(canvas, 360, 220, 'ROUND TRIP P99 (MS)', xs, samples.map((sample) => sample.p99Ms), [214, 39, 40]);
  canvas.text(380, 612, 'ELAPSED (S)');
  writeFileSync(file, PNG.sync.write(canvas.png));
}

// ---- the run ----

function flatness(samples: Sample[]): { middle: number; last: number; flat: boolean } {
  const third = Math.max(1, Math.floor(samples.length / 3));
  const mean = (part: Sample[]) => part.reduce((sum, sample) => sum + sample.rssMib, 0) / Math.max(1, part.length);
  const middle = mean(samples.slice(third, 2 * third));
  const last = mean(samples.slice(2 * third));
  return { middle, last, flat: last <= middle * (1 + FLAT_SHARE) + FLAT_SLACK_MIB };
}

async function main(): Promise<void> {
  mkdirSync(OUT, { recursive: true });
  const dir = mkdtempSync(path.join(tmpdir(), 'relgate-soak-db-'));
  const gateway = await startGateway(dir);
  const pid = gateway.child.pid as number;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => void gateway.stop().then(() => process.exit(130)));
  const load = new Load(gateway.address, await setUp(gateway.address));
  const csv = path.join(OUT, 'soak.csv');
  const png = path.join(OUT, 'soak.png');
  const samples: Sample[] = [];
  const rows = ['elapsed_s,rss_mib,round_trips,p50_ms,p99_ms,errors'];
  console.log(`soak: ${DURATION_MS / 1000} s against ${gateway.address}, sampling every ${INTERVAL_MS / 1000} s into ${csv}`);
  const started = performance.now();
  const running = load.start();
  const sampler = setInterval(() => {
    const { latencies, errors } = load.window();
    const sorted = latencies.sort((a, b) => a - b);
    const sample = { elapsedS: Math.round((performance.now() - started) / 1000), rssMib: rssMb(pid), roundTrips: sorted.length, p50Ms: percentile(sorted, 0.5), p99Ms: percentile(sorted, 0.99), errors };
    samples.push(sample);
    rows.push([sample.elapsedS, sample.rssMib.toFixed(1), sample.roundTrips, sample.p50Ms.toFixed(2), sample.p99Ms.toFixed(2), sample.errors].join(','));
    writeFileSync(csv, `${rows.join('\n')}\n`);
    console.log(`${sample.elapsedS}s rss=${sample.rssMib.toFixed(1)} MiB round trips=${sample.roundTrips} p50=${sample.p50Ms.toFixed(2)} ms p99=${sample.p99Ms.toFixed(2)} ms errors=${sample.errors}`);
  }, INTERVAL_MS);
  await new Promise((resolve) => setTimeout(resolve, DURATION_MS));
  clearInterval(sampler);
  load.stop();
  await running;
  await gateway.stop();
  rmSync(dir, { recursive: true, force: true });
  plot(samples, png);
  const { middle, last, flat } = flatness(samples);
  console.log(`wrote ${csv} and ${png}`);
  const verdict = DURATION_MS < JUDGED_MS ? `not judged (runs under ${JUDGED_MS / 1000} s are mostly warm-up)` : flat ? 'flat' : 'GROWING';
  console.log(`RSS: middle third ${middle.toFixed(1)} MiB, last third ${last.toFixed(1)} MiB: ${verdict}`);
  process.exitCode = DURATION_MS >= JUDGED_MS && !flat ? 1 : 0;
}

await main();
