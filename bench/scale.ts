// Scale: `relgate serve` on a database of many stored requests across many
// relations. Measures the gateway's RSS, its start-up time (spawn until the
// "relgate serving" log line) and the latency of listing one relation's new
// requests from a client in its own process. Baselines from the same run: the
// same gateway on an empty database for RSS and start-up, a raw grpc-js unary
// echo for the listing latency.
//
// The database is seeded in this process through the store and the service
// code the gateway runs, so the rows are exactly what it writes, with fsync
// per commit off for the seeding only. The seeded file is kept in
// bench/results/ under a name holding the counts, so later runs skip the
// seeding; delete it to seed afresh.
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { InterfaceRegistry } from '../src/interfaces.ts';
import { RegistryService } from '../src/registry-service.ts';
import { RequestService } from '../src/request-service.ts';
import { DEFAULT_CONFIG } from '../src/server.ts';
import { lockFileOf, realPathOf } from '../src/store/sqlite-lock.ts';
import { SQLITE_SCHEMA_VERSION, SqliteStore } from '../src/store/sqlite-store.ts';
import { jsonToStruct } from '../src/struct.ts';
import { gcPauses, percentile, type GcPauses, type LoadOptions, type LoadResult } from './lib/load.ts';
import { gatewayOutput, type GatewayOutput } from './lib/gateway-output.ts';
import { procStatusKb, spawnRelgate, tempDir } from './lib/processes.ts';
import { RESPONSE_FIELDS, relgateClient, unary, unitMetadata } from './lib/relgate.ts';
import type { FigureRow } from './lib/report.ts';
import { serveRoles, startRole, type Config } from './lib/role.ts';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
/** Bumped whenever the seeded data changes shape, so that stale cached files are not reused. */
const SEED_FORMAT = 2;
/** Of each relation's requests, the newest this many are left unanswered: the rest have one response. */
const NEW_PER_RELATION = 10;
/** Relations served by one responder application. */
const RELATIONS_PER_RESPONDER = 100;
/** Writes issued together: the store commits each group as one transaction. */
const SEED_GROUP = 5_000;
const STARTS = 3;

export interface ScaleOptions {
  requests: number;
  relations: number;
  /** Warm-up and measured period of the listing load. */
  timing: Omit<LoadOptions, 'inFlight'>;
  /** Node flags for the gateway, such as --cpu-prof. */
  execArgv: readonly string[];
  /** Where the seeded database is cached. */
  cacheDir: string;
}

/** One relation of the seeded database with its requester and responder units. */
interface SeededRelation {
  id: string;
  requester: string;
  responder: string;
}

interface Layout {
  relations: SeededRelation[];
  newPerRelation: number;
}

const fmt = (value: number, digits = 0) => value.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

/** Runs `make(i)` for i in [0, count), SEED_GROUP at a time. */
async function inGroups<T>(count: number, make: (i: number) => Promise<T>): Promise<T[]> {
  const results: T[] = [];
  for (let start = 0; start < count; start += SEED_GROUP) {
    const group = Array.from({ length: Math.min(SEED_GROUP, count - start) }, (_, k) => make(start + k));
    results.push(...(await Promise.all(group)));
  }
  return results;
}

const unitProperties = (name: string) => ({ name, ingress_address: '127.0.0.1', egress_subnets: ['127.0.0.0/8'], labels: {} });

/** Registers one requester application per relation and one responder application per RELATIONS_PER_RESPONDER relations. */
async function seedRelations(registry: RegistryService, count: number): Promise<SeededRelation[]> {
  const responders = Math.ceil(count / RELATIONS_PER_RESPONDER);
  const name = (prefix: string, i: number) => `${prefix}-${String(i).padStart(5, '0')}`;
  await inGroups(responders, (i) => registry.registerApplication(name('ca', i)));
  await inGroups(responders, (i) => registry.registerUnit(unitProperties(`${name('ca', i)}/0`)));
  await inGroups(count, (i) => registry.registerApplication(name('app', i)));
  await inGroups(count, (i) => registry.registerUnit(unitProperties(`${name('app', i)}/0`)));
  // One at a time: relation numbers then follow i.
  const relations: SeededRelation[] = [];
  for (let i = 0; i < count; i++) {
    const requesterApplication = name('app', i);
    const responderApplication = name('ca', i % responders);
    const { relation } = await registry.createRelation({
      interface: 'tls-certificates',
      version: 0,
      requester_application: requesterApplication,
      requester_endpoint: 'certificates',
      responder_application: responderApplication,
      responder_endpoint: 'certificates',
    });
    relations.push({ id: relation.id, requester: `${requesterApplication}/0`, responder: `${responderApplication}/0` });
  }
  await inGroups(count, (i) => registry.joinRelation(relations[i]?.id as string, relations[i]?.requester as string, 'requester'));
  await inGroups(count, (i) => registry.joinRelation(relations[i]?.id as string, relations[i]?.responder as string, 'responder'));
  return relations;
}

/**
 * Creates requests round-robin over the relations, as traffic from many
 * requesters arrives, and answers all but each relation's newest
 * NEW_PER_RELATION. The change log is compacted as it goes: stored requests
 * outlive the history a gateway keeps for resuming watches.
 */
async function seedRequests(store: SqliteStore, requests: RequestService, relations: SeededRelation[], total: number): Promise<void> {
  const perRelation = Math.floor(total / relations.length);
  const started = performance.now();
  for (let round = 0; round < perRelation; round++) {
    const ids = await inGroups(relations.length, async (r) => {
      const relation = relations[r] as SeededRelation;
      const requestId = randomUUID();
      await requests.create(relation.requester, {
        relation_id: relation.id,
        request_id: requestId,
        fields: jsonToStruct({ common_name: `host-${round}.${relation.requester.replace('/', '-')}.example.com` }),
        delivery: { mode: 'any', unit: '', selector: '' },
        ttl: null,
      });
      return requestId;
    });
    if (round < perRelation - NEW_PER_RELATION) {
      await inGroups(relations.length, (r) =>
        requests.respond((relations[r] as SeededRelation).responder, { request_id: ids[r] as string, code: 0, error: '', fields: RESPONSE_FIELDS }),
      );
    }
    await store.compact(store.currentRevision());
    if ((round + 1) % Math.max(1, Math.floor(perRelation / 10)) === 0) {
      process.stdout.write(`    seeded ${fmt((round + 1) * relations.length)} requests in ${fmt((performance.now() - started) / 1000, 1)} s\n`);
    }
  }
}

/** The cached database for the counts, seeded first if it is not there yet. */
async function seededDatabase(options: ScaleOptions): Promise<{ db: string; layout: string }> {
  // Keyed by the store's schema too: a database seeded by an older layout and migrated in place is not what a new one is.
  const base = path.join(options.cacheDir, `scale-${options.requests}-requests-${options.relations}-relations-v${SEED_FORMAT}-schema${SQLITE_SCHEMA_VERSION}`);
  const db = `${base}.db`;
  const layout = `${base}.json`;
  if (existsSync(db) && existsSync(layout)) {
    process.stdout.write(`    using the seeded database ${path.relative(path.dirname(BENCH_DIR), db)}\n`);
    return { db, layout };
  }
  mkdirSync(options.cacheDir, { recursive: true });
  const partial = `${base}.partial.db`;
  for (const file of [partial, `${partial}-wal`, `${partial}-shm`, lockFileOf(realPathOf(partial))]) rmSync(file, { force: true });
  const started = performance.now();
  const store = new SqliteStore({ path: partial, durability: 'normal' });
  const interfaces = await InterfaceRegistry.load();
  try {
    const relations = await seedRelations(new RegistryService(store, interfaces), options.relations);
    await seedRequests(store, new RequestService(store, interfaces, { maxMessageBytes: DEFAULT_CONFIG.maxSendBytes }), relations, options.requests);
    writeFileSync(layout, JSON.stringify({ relations, newPerRelation: NEW_PER_RELATION } satisfies Layout));
  } finally {
    // Closing checkpoints the WAL into the file.
    await store.close();
  }
  renameSync(partial, db);
  rmSync(lockFileOf(realPathOf(partial)));
  process.stdout.write(`    seeded ${path.relative(path.dirname(BENCH_DIR), db)} in ${fmt((performance.now() - started) / 1000, 1)} s\n`);
  return { db, layout };
}


const settle = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Median start-up seconds over STARTS spawns, and the RSS (MB) of the last one a second after it served. */
async function startUp(db: string, execArgv: readonly string[]): Promise<{ seconds: number; rssMb: number }> {
  const seconds: number[] = [];
  let rssMb = 0;
  for (let i = 0; i < STARTS; i++) {
    const started = performance.now();
    const server = await spawnRelgate(db, execArgv);
    seconds.push((performance.now() - started) / 1000);
    try {
      await settle(1_000);
      rssMb = procStatusKb(server.child.pid as number, 'VmRSS') / 1024;
    } finally {
      await server.stop();
    }
  }
  seconds.sort((a, b) => a - b);
  return { seconds: seconds[Math.floor(seconds.length / 2)] as number, rssMb };
}

type Side = 'responder' | 'requester';

/** A listing load's figures with what the gateway reported over the same period. */
interface Listing extends LoadResult {
  /** The handler's own time per listing, from the gateway's access log: the rest is transport, serialisation and pauses. */
  handler: { p50Ms: number; p99Ms: number };
  /** The gateway's garbage-collection pauses, from its --trace-gc lines. */
  gatewayGc: GcPauses;
}

/** Lists one random relation's new requests per round trip, as its responder or its requester, from its own process. */
async function listLoad(gateway: GatewayOutput, layout: string, side: Side, timing: ScaleOptions['timing']): Promise<Listing> {
  const lister = await startRole(fileURLToPath(import.meta.url), 'lister', { address: gateway.address, layout, side });
  try {
    const method = side === 'responder' ? 'ResponderService/ListIncomingRequests' : 'RequesterService/ListRequests';
    const result = await lister.measure({ inFlight: 1, ...timing }, (edge) => (edge === 'start' ? gateway.open() : gateway.close()));
    const { handlerMs, gcMs } = gateway.taken(method);
    return { ...result, handler: { p50Ms: percentile(handlerMs, 0.5), p99Ms: percentile(handlerMs, 0.99) }, gatewayGc: gcPauses(gcMs) };
  } finally {
    await lister.stop();
  }
}

/** A raw grpc-js unary echo at 1 in flight, client and server in their own processes: the floor under any unary call here. */
async function echoLoad(timing: ScaleOptions['timing']): Promise<LoadResult> {
  const file = path.join(BENCH_DIR, 'echo.ts');
  const server = await startRole(file, 'server', {});
  try {
    const client = await startRole(file, 'client', { address: server.info.address });
    try {
      return await client.measure({ inFlight: 1, ...timing });
    } finally {
      await client.stop();
    }
  } finally {
    await server.stop();
  }
}

interface Serving {
  responderList: Listing;
  requesterList: Listing;
  /** Peak RSS of the gateway over its start-up and both listing loads. */
  peakMb: number;
}

/** One gateway on the seeded database under each side's listing load. */
async function measureServing(db: string, layout: string, options: ScaleOptions): Promise<Serving> {
  // --trace-gc prints one line per pause: a dozen a second here, against about a thousand access-log lines.
  const server = await spawnRelgate(db, [...options.execArgv, '--trace-gc']);
  try {
    const gateway = gatewayOutput(server);
    const responderList = await listLoad(gateway, layout, 'responder', options.timing);
    const requesterList = await listLoad(gateway, layout, 'requester', options.timing);
    return { responderList, requesterList, peakMb: procStatusKb(server.child.pid as number, 'VmHWM') / 1024 };
  } finally {
    await server.stop();
  }
}

/** The scale figures: RSS, start-up and listing latency on the seeded database, with an empty database as the baseline. */
export async function runScale(options: ScaleOptions): Promise<FigureRow[]> {
  const { db, layout } = await seededDatabase(options);
  const empty = tempDir('relgate-bench-scale-');
  try {
    const emptyStart = await startUp(path.join(empty.dir, 'relgate.db'), options.execArgv);
    const seededStart = await startUp(db, options.execArgv);
    const serving = await measureServing(db, layout, options);
    const echo = await echoLoad(options.timing);
    const pauses = (gc: GcPauses | undefined) => (gc ? `${fmt(gc.count)} (median ${fmt(gc.medianMs, 1)}, max ${fmt(gc.maxMs, 1)} ms)` : '-');
    const list = (who: string, result: Listing) =>
      `    ${who} lists new: ${fmt(result.perSecond)} lists/s, p50 ${fmt(result.p50Ms, 2)} ms, p99 ${fmt(result.p99Ms, 2)} ms; ` +
      `in the gateway's handler p50 ${fmt(result.handler.p50Ms, 2)} ms, p99 ${fmt(result.handler.p99Ms, 2)} ms; ` +
      `GC pauses: gateway ${pauses(result.gatewayGc)}, lister ${pauses(result.gc)}\n`;
    process.stdout.write(
      `    start-up ${fmt(seededStart.seconds, 2)} s (empty ${fmt(emptyStart.seconds, 2)} s), RSS ${fmt(seededStart.rssMb)} MB (empty ${fmt(emptyStart.rssMb)} MB), peak RSS ${fmt(serving.peakMb)} MB\n` +
        list('responder', serving.responderList) +
        list('requester', serving.requesterList) +
        `    grpc-js echo: ${fmt(echo.perSecond)} calls/s, p50 ${fmt(echo.p50Ms, 2)} ms, p99 ${fmt(echo.p99Ms, 2)} ms; GC pauses: client ${pauses(echo.gc)}\n`,
    );
    return scaleRows(`${fmt(options.requests)} requests, ${fmt(options.relations)} relations`, emptyStart, seededStart, serving, echo);
  } finally {
    empty.remove();
  }
}

function scaleRows(label: string, empty: { seconds: number; rssMb: number }, seeded: { seconds: number; rssMb: number }, serving: Serving, echo: LoadResult): FigureRow[] {
  const ratio = (ours: number, theirs: number) => `${fmt(ours / theirs, 2)}x`;
  const latency = (result: LoadResult) => `p99 ${fmt(result.p99Ms, 2)} (p50 ${fmt(result.p50Ms, 2)}, ${fmt(result.perSecond)}/s)`;
  const listingRow = (who: string, method: string, result: Listing): FigureRow => ({
    scenario: `Scale (${label}): ${who} lists a random relation's ${NEW_PER_RELATION} new requests (${method}), 1 in flight (ms)`,
    relgate: `${latency(result)}; handler p99 ${fmt(result.handler.p99Ms, 2)}`,
    baseline: `${latency(echo)} grpc-js echo`,
    ratio: `${ratio(result.p99Ms, echo.p99Ms)} p99`,
    target: 'p99 <= 5 ms',
    met: result.p99Ms <= 5,
  });
  return [
    { scenario: `Scale (${label}): RSS after start-up (MB)`, relgate: fmt(seeded.rssMb), baseline: `${fmt(empty.rssMb)} (empty database)`, ratio: ratio(seeded.rssMb, empty.rssMb), target: '<= 400 MB', met: seeded.rssMb <= 400 },
    { scenario: `Scale (${label}): peak RSS over start-up and listing (MB)`, relgate: fmt(serving.peakMb), baseline: '', ratio: '', target: '<= 400 MB', met: serving.peakMb <= 400 },
    { scenario: `Scale (${label}): start-up, spawn to serving (s, median of ${STARTS})`, relgate: fmt(seeded.seconds, 2), baseline: `${fmt(empty.seconds, 2)} (empty database)`, ratio: ratio(seeded.seconds, empty.seconds), target: '<= 2 s', met: seeded.seconds <= 2 },
    listingRow('responder', 'ListIncomingRequests, NEW', serving.responderList),
    listingRow('requester', 'ListRequests, NEW', serving.requesterList),
  ];
}

/**
 * The responder's ListIncomingRequests or the requester's ListRequests, NEW
 * filter, on one random relation; checks it got the relation's new requests.
 */
async function lister(config: Config) {
  const layout = JSON.parse(readFileSync(config.layout as string, 'utf8')) as Layout;
  const side = config.side as Side;
  const [service, method] = side === 'responder' ? ['ResponderService', 'ListIncomingRequests'] : ['RequesterService', 'ListRequests'];
  const client = await relgateClient(config.address as string, service);
  const unitOf = (relation: SeededRelation) => (side === 'responder' ? relation.responder : relation.requester);
  const metadata = new Map(layout.relations.map((relation) => [unitOf(relation), unitMetadata(unitOf(relation))]));
  const roundTrip = async () => {
    const relation = layout.relations[Math.floor(Math.random() * layout.relations.length)] as SeededRelation;
    const { requests } = await unary<{ requests: unknown[] }>(client, method, { relation_id: relation.id, filter: 'REQUEST_FILTER_NEW' }, metadata.get(unitOf(relation)));
    if (requests.length !== layout.newPerRelation) throw new Error(`${relation.id} listed ${requests.length} new requests, not ${layout.newPerRelation}`);
  };
  return { roundTrip, close: async () => client.close() };
}

serveRoles({ lister });
