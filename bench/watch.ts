// Watch benchmarks: relgate against a bare grpc-js server of the same watch
// messages, each server in its own process, measured in the same run.
//   fan-out   one change to 1,000 watchers, deliveries/s
//   memory    server RSS per idle watch, at 10,000 watches
//   catch-up  a watcher 100,000 changes behind: time until it is live
// Usage: node bench/watch.ts [--quick]; `npm run bench` runs the same
// scenarios through runWatchScenarios.
import * as grpc from '@grpc/grpc-js';
import path from 'node:path';
import { spawnBareWatchServer, type BareWatchServer } from './lib/bare-watch-server.ts';
import { procStatusKb, spawnRelgate, tempDir, type ServerProcess } from './lib/processes.ts';
import { REQUEST_FIELDS, REQUESTER_UNIT, RESPONDER_UNIT, relgateClient, setUpRelation, unary, unitMetadata, type RelgateClient } from './lib/relgate.ts';
import { markdownFigures, type FigureRow } from './lib/report.ts';
import { spawnWatchClients, type WatchClientsConfig } from './lib/watch-clients.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Message = Record<string, any>;

const FANOUT_WATCHERS = 1_000;

/** How much each scenario does: a quick run does less. */
function sizes(quick: boolean) {
  return { fanOutRounds: quick ? 30 : 200, idleWatches: quick ? 2_000 : 10_000, catchUpChanges: quick ? 10_000 : 100_000 };
}

type Row = FigureRow;

/** A relgate server in its own process with one relation, and a requester client. */
interface RelgateUnderTest {
  server: ServerProcess & { address: string };
  relationId: string;
  requester: RelgateClient;
  close(): Promise<void>;
}

async function startRelgate(): Promise<RelgateUnderTest> {
  const dir = tempDir('relgate-bench-watch-');
  const server = await spawnRelgate(path.join(dir.dir, 'relgate.db'));
  const relationId = await setUpRelation(server.address);
  const requester = await relgateClient(server.address, 'RequesterService');
  return {
    server,
    relationId,
    requester,
    close: async () => {
      requester.close();
      await server.stop();
      dir.remove();
    },
  };
}

const createRequest = (target: { requester: RelgateClient; relationId: string }) =>
  unary(target.requester, 'CreateRequest', { relation_id: target.relationId, fields: REQUEST_FIELDS }, unitMetadata(REQUESTER_UNIT));

function watchers(address: string, request: Message, streams: number, channels: number): WatchClientsConfig {
  return { address, service: 'ResponderService', method: 'WatchIncomingRequests', unit: RESPONDER_UNIT, request, streams, channels, record: false };
}

/** One relgate watch event of a created request: the message both servers send. */
async function templateEvent(target: RelgateUnderTest): Promise<Message> {
  const client = await relgateClient(target.server.address, 'ResponderService');
  const call = (client.WatchIncomingRequests as (request: Message, md: grpc.Metadata) => grpc.ClientReadableStream<Message>).call(
    client,
    { options: { relation_id: target.relationId, start: 'WATCH_START_NOW', progress_interval_ms: 50 } },
    unitMetadata(RESPONDER_UNIT),
  );
  call.on('error', () => undefined); // CANCELLED by the cancel() below
  const event = new Promise<Message>((resolve) =>
    call.on('data', (message: Message) => {
      const added = (message.batch.events as Message[]).find((one) => one.type === 'EVENT_TYPE_ADDED');
      if (added) resolve(added);
    }),
  );
  // The first progress event says the watch is live.
  await new Promise((resolve) => call.once('data', resolve));
  await createRequest(target);
  const found = await event;
  call.cancel();
  client.close();
  return found;
}

interface FanOutTarget {
  address: string;
  trigger: () => Promise<Message>;
}

/**
 * Deliveries per second of one change at a time to FANOUT_WATCHERS watchers,
 * for relgate and the baseline: both sets of watchers stay open and the two
 * take turns in blocks of rounds, so that a busy machine weighs on both
 * alike. The figure is the median block's rate; the spread goes to stderr.
 */
async function fanOut(request: Message, targets: FanOutTarget[], fanOutRounds: number): Promise<number[]> {
  const clients = await Promise.all(targets.map((target) => spawnWatchClients(watchers(target.address, request, FANOUT_WATCHERS, 10))));
  const block = 10;
  const rates: number[][] = targets.map(() => []);
  const rounds = async (i: number, count: number) => {
    const target = targets[i] as FanOutTarget;
    const started = performance.now();
    for (let n = 0; n < count; n++) await clients[i]?.reached(Number((await target.trigger()).request.revision));
    return (count * FANOUT_WATCHERS) / ((performance.now() - started) / 1000);
  };
  for (let i = 0; i < targets.length; i++) await rounds(i, 5);
  for (let done = 0; done < fanOutRounds; done += block) {
    for (let i = 0; i < targets.length; i++) rates[i]?.push(await rounds(i, block));
  }
  await Promise.all(clients.map((client) => client.close()));
  return rates.map((blocks, i) => {
    const sorted = [...blocks].sort((a, b) => a - b);
    process.stderr.write(`fan-out ${i === 0 ? 'relgate' : 'baseline'} blocks of ${block}: min ${fmt(sorted[0] ?? 0)}, median ${fmt(median(sorted))}, max ${fmt(sorted.at(-1) ?? 0)} deliveries/s\n`);
    return median(sorted);
  });
}

const median = (sorted: number[]) => sorted[Math.floor(sorted.length / 2)] ?? 0;

/** Server RSS growth per idle watch, in KB, over `idleWatches` streams on 100 connections. */
async function memoryPerWatch(pid: number, address: string, request: Message, idleWatches: number): Promise<number> {
  const warm = await spawnWatchClients(watchers(address, request, 100, 10));
  await settle();
  const before = procStatusKb(pid, 'VmRSS');
  const idle = await spawnWatchClients(watchers(address, request, idleWatches, 100));
  await settle();
  const after = procStatusKb(pid, 'VmRSS');
  await idle.close();
  await warm.close();
  return (after - before) / idleWatches;
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 2_000));


/** Seconds from opening a watch after `afterRevision` until it has delivered `until`. */
async function catchUp(address: string, relationId: string, afterRevision: number, until: number): Promise<{ seconds: number; events: number }> {
  const client = await relgateClient(address, 'ResponderService');
  const started = performance.now();
  const call = (client.WatchIncomingRequests as (request: Message, md: grpc.Metadata) => grpc.ClientReadableStream<Message>).call(
    client,
    { options: { relation_id: relationId, start: 'WATCH_START_AFTER_REVISION', after_revision: String(afterRevision) } },
    unitMetadata(RESPONDER_UNIT),
  );
  let events = 0;
  await new Promise<void>((resolve, reject) => {
    call.on('data', (message: Message) => {
      events += (message.batch.events as Message[]).length;
      if (Number(message.batch.revision) >= until) resolve();
    });
    call.on('error', reject);
  });
  const seconds = (performance.now() - started) / 1000;
  call.cancel();
  client.close();
  return { seconds, events };
}

/** Writes `count` requests, 128 in flight; returns the last revision. */
async function populate(target: RelgateUnderTest, count: number): Promise<number> {
  let next = 0;
  let last = 0;
  const slot = async () => {
    while (next++ < count) last = Math.max(last, Number((await createRequest(target)).request.revision));
  };
  await Promise.all(Array.from({ length: 128 }, slot));
  return last;
}

const fmt = (value: number, digits = 0) => value.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

/**
 * Fan-out, idle-watch memory and catch-up, relgate against a bare grpc-js
 * server of the same watch messages; one row each.
 */
export async function runWatchScenarios(options: { quick: boolean }): Promise<Row[]> {
  const { fanOutRounds, idleWatches, catchUpChanges } = sizes(options.quick);
  // The idle-watch scenario holds 10,000 streams of one unit: lift the per-unit cap for the servers started here.
  const streamCap = process.env.RELGATE_MAX_STREAMS_PER_UNIT;
  process.env.RELGATE_MAX_STREAMS_PER_UNIT = '0';
  const rows: Row[] = [];
  const relgate = await startRelgate();
  let bare: BareWatchServer | undefined;
  try {
    const template = await templateEvent(relgate);
    bare = await spawnBareWatchServer({ template, catchUpCount: catchUpChanges });
    const bareTarget = { requester: await relgateClient(bare.address, 'RequesterService'), relationId: relgate.relationId };

    const snapshotWatch = { options: { relation_id: relgate.relationId, start: 'WATCH_START_SNAPSHOT' } };
    const [relgateFanOut = 0, bareFanOut = 0] = await fanOut(
      snapshotWatch,
      [
        { address: relgate.server.address, trigger: () => createRequest(relgate) },
        { address: bare.address, trigger: () => createRequest(bareTarget) },
      ],
      fanOutRounds,
    );
    const fanOutRatio = relgateFanOut / bareFanOut;
    rows.push({ scenario: `Watch fan-out to ${fmt(FANOUT_WATCHERS)} watchers (deliveries/s, median)`, relgate: fmt(relgateFanOut), baseline: fmt(bareFanOut), ratio: `${fmt(fanOutRatio, 2)}x`, target: '>= 0.80x', met: fanOutRatio >= 0.8 });
    report(rows.at(-1) as Row);

    // Fresh servers on both sides: the RSS each grows by is the watches' alone.
    const idleServer = await startRelgate();
    const idleWatch = { options: { relation_id: idleServer.relationId, start: 'WATCH_START_SNAPSHOT' } };
    const relgateMemory = await memoryPerWatch(idleServer.server.child.pid as number, idleServer.server.address, idleWatch, idleWatches).finally(() => idleServer.close());
    const idleBare = await spawnBareWatchServer({ template, catchUpCount: 0 });
    const bareMemory = await memoryPerWatch(idleBare.child.pid as number, idleBare.address, idleWatch, idleWatches).finally(() => idleBare.stop());
    rows.push({ scenario: `Watch memory per idle watch at ${fmt(idleWatches)} (KB)`, relgate: fmt(relgateMemory, 1), baseline: fmt(bareMemory, 1), ratio: `${fmt(relgateMemory / bareMemory, 2)}x`, target: '<= 20 KB', met: relgateMemory <= 20 });
    report(rows.at(-1) as Row);

    const from = Number((await createRequest(relgate)).request.revision);
    const populateStarted = performance.now();
    const until = await populate(relgate, catchUpChanges);
    process.stderr.write(`wrote ${fmt(catchUpChanges)} changes in ${fmt((performance.now() - populateStarted) / 1000, 1)} s\n`);
    const relgateCatchUp = await catchUp(relgate.server.address, relgate.relationId, from, until);
    const bareCatchUp = await catchUp(bare.address, relgate.relationId, 0, catchUpChanges);
    if (relgateCatchUp.events < catchUpChanges) throw new Error(`catch-up delivered ${relgateCatchUp.events} events for ${catchUpChanges} changes`);
    const catchUpRatio = bareCatchUp.seconds / relgateCatchUp.seconds;
    rows.push({
      scenario: `Watch catch-up of ${fmt(catchUpChanges)} changes until live (s)`,
      relgate: fmt(relgateCatchUp.seconds, 2),
      baseline: fmt(bareCatchUp.seconds, 2),
      ratio: `${fmt(catchUpRatio, 2)}x`,
      target: '>= 0.50x',
      met: catchUpRatio >= 0.5,
    });
    report(rows.at(-1) as Row);
    bareTarget.requester.close();
  } finally {
    await bare?.stop();
    await relgate.close();
    if (streamCap === undefined) delete process.env.RELGATE_MAX_STREAMS_PER_UNIT;
    else process.env.RELGATE_MAX_STREAMS_PER_UNIT = streamCap;
  }
  return rows;
}

function report(row: Row): void {
  process.stderr.write(`${row.scenario}: relgate ${row.relgate}, baseline ${row.baseline}, ${row.ratio}\n`);
}

if (import.meta.main) {
  const quick = process.argv.includes('--quick');
  const rows = await runWatchScenarios({ quick });
  console.log(markdownFigures(rows).replace('| Baseline |', '| bare grpc-js |'));
  console.log(`\n${quick ? 'quick run; ' : ''}Node ${process.version}, each server and the watch clients in their own processes`);
}
