// `npm run bench`: relgate's durable round trips against a raw grpc-js echo
// and against the same pattern on etcd and NATS, all measured in this run,
// each side in its own process. Prints the table and writes JSON and
// markdown to bench/results/.
//
//   npm run bench                       full run (10-13 minutes)
//   npm run bench -- --quick            short run, for development
//   npm run bench -- --only echo,relgate-session
//   npm run bench -- --only scale,watch    the scenarios measured as figures
//   npm run bench -- --cpu-prof         CPU profiles of relgate's processes
//   npm run bench -- --docs             also put the results into docs/benchmarks.md
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import { ECHO_METHOD, ECHO_PROTO, ECHO_TEXT } from './echo.ts';
import { findGhz, GHZ_VERSION, runGhz } from './lib/ghz.ts';
import type { LoadOptions, LoadResult } from './lib/load.ts';
import { cpuMs, spawnEtcd, spawnNats, spawnRelgate, tempDir, type ServerProcess } from './lib/processes.ts';
import { REQUESTER_UNIT, setUpRelation } from './lib/relgate.ts';
import { compare, cpuCell, markdownFigures, markdownTable, systemsTable, textFigures, textTable, type Comparison, type FigureRow, type Row, type SystemResult } from './lib/report.ts';
import { startRole, type RoleHandle } from './lib/role.ts';
import { runScale } from './scale.ts';
import { runWatchScenarios } from './watch.ts';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const PROJECT_DIR = path.dirname(BENCH_DIR);
const RESULTS_DIR = path.join(BENCH_DIR, 'results');
const DOCS = path.join(PROJECT_DIR, 'docs', 'benchmarks.md');
const LEVELS = [1, 16, 64];

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    'cpu-prof': { type: 'boolean', default: false },
    docs: { type: 'boolean', default: false },
  },
});

const timing = flags.quick ? { warmupMs: 500, durationMs: 2_000 } : { warmupMs: 2_000, durationMs: 10_000 };
const profileDir = path.join(RESULTS_DIR, 'profiles');
const relgateExecArgv = flags['cpu-prof'] ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [];

/** A process taking part in a measurement, for its CPU time. */
interface Participant {
  process: string;
  pid: number | undefined;
}

/**
 * Measures one system at every level with the given requester role; the rest
 * of the set-up is the caller's. Each participant's CPU time over the
 * measured period is divided by the round trips it completed.
 */
async function measureLevels(requester: RoleHandle, participants: readonly Participant[]): Promise<LoadResult[]> {
  const results: LoadResult[] = [];
  for (const inFlight of LEVELS) {
    const options: LoadOptions = { inFlight, ...timing };
    let atStart: number[] = [];
    let atEnd: number[] = [];
    const sample = () => participants.map((participant) => cpuMs(participant.pid));
    const measured = await requester.measure(options, (edge) => (edge === 'start' ? (atStart = sample()) : (atEnd = sample())));
    const cpu = participants.map((participant, i) => ({
      process: participant.process,
      usPerRoundTrip: (((atEnd[i] ?? 0) - (atStart[i] ?? 0)) * 1000) / measured.roundTrips,
    }));
    const result = { ...measured, cpu };
    process.stdout.write(`    ${String(inFlight).padStart(2)} in flight: ${Math.round(result.perSecond)} rt/s, p50 ${result.p50Ms.toFixed(2)} ms, p99 ${result.p99Ms.toFixed(2)} ms; CPU µs per round trip: ${cpuCell(result)}\n`);
    results.push(result);
  }
  return results;
}

/** Starts roles in order (responders before requesters), measures with the last one, stops them all. */
async function withRoles(roles: { file: string; name: string; config: Record<string, unknown>; execArgv?: string[] }[], servers: readonly Participant[] = []): Promise<LoadResult[]> {
  const started: RoleHandle[] = [];
  try {
    for (const role of roles) started.push(await startRole(path.join(BENCH_DIR, role.file), role.name, role.config, { execArgv: role.execArgv ?? [] }));
    const requester = started.at(-1);
    if (!requester) throw new Error('no roles');
    return await measureLevels(requester, [...servers, ...started.map((handle, i) => ({ process: roles[i]?.name ?? '', pid: handle.pid }))]);
  } finally {
    for (const role of started.reverse()) await role.stop();
  }
}

async function withServer<S extends ServerProcess>(start: () => Promise<S>, use: (server: S) => Promise<LoadResult[]>): Promise<LoadResult[]> {
  const server = await start();
  try {
    return await use(server);
  } finally {
    await server.stop();
  }
}

const measureInserts = (role: 'insert' | 'insert-grouped') => async () => {
  const dir = tempDir('sqlite-bench-');
  try {
    return await withRoles([{ file: 'sqlite-insert.ts', name: role, config: { dir: dir.dir } }]);
  } finally {
    dir.remove();
  }
};

const measureCore = async () => {
  const dir = tempDir('relgate-core-');
  try {
    return await withRoles([{ file: 'core.ts', name: 'core', config: { dir: dir.dir }, execArgv: relgateExecArgv }]);
  } finally {
    dir.remove();
  }
};

const measureEcho = async () => {
  const server = await startRole(path.join(BENCH_DIR, 'echo.ts'), 'server', {});
  try {
    return await withRoles([{ file: 'echo.ts', name: 'client', config: { address: server.info.address } }], [{ process: 'server', pid: server.pid }]);
  } finally {
    await server.stop();
  }
};

/** A relgate server on a fresh database file, one relation, and the given responder (if any) and requester roles. */
function measureRelgate(responder: string | undefined, requester: string) {
  return async () => {
    const dir = tempDir('relgate-bench-');
    try {
      return await withServer(
        () => spawnRelgate(path.join(dir.dir, 'relgate.db'), relgateExecArgv),
        async (server) => {
          const config = { address: server.address, relationId: await setUpRelation(server.address) };
          const roles = [responder, requester].filter((name) => name !== undefined);
          return withRoles(roles.map((name) => ({ file: 'relgate.ts', name, config, execArgv: relgateExecArgv })), [{ process: 'server', pid: server.child.pid }]);
        },
      );
    } finally {
      dir.remove();
    }
  };
}

function measurePeer<S extends ServerProcess>(start: (dir: string) => Promise<S>, config: (server: S) => Record<string, unknown>, prefix: string) {
  return async () => {
    const dir = tempDir(`${prefix}-bench-`);
    try {
      return await withServer(
        () => start(dir.dir),
        (server) =>
          withRoles(
            [
              { file: 'peers.ts', name: `${prefix}-responder`, config: config(server) },
              { file: 'peers.ts', name: `${prefix}-requester`, config: config(server) },
            ],
            [{ process: 'server', pid: server.child.pid }],
          ),
      );
    } finally {
      dir.remove();
    }
  };
}

/** ghz at 1 and 64 concurrent calls over one connection, like the Node clients. */
function measureGhz(target: 'echo' | 'relgate-call') {
  return async () => {
    const ghz = await findGhz();
    const levels = [1, 64];
    const runAll = async (options: Omit<Parameters<typeof runGhz>[1], 'concurrency' | 'connections' | 'durationMs'>) => {
      const results: LoadResult[] = [];
      for (const concurrency of levels) {
        await runGhz(ghz, { ...options, concurrency, connections: 1, durationMs: timing.warmupMs }); // warm-up
        const result = await runGhz(ghz, { ...options, concurrency, connections: 1, durationMs: timing.durationMs });
        process.stdout.write(`    ${String(concurrency).padStart(2)} concurrent: ${Math.round(result.perSecond)} calls/s, p50 ${result.p50Ms.toFixed(2)} ms, p99 ${result.p99Ms.toFixed(2)} ms\n`);
        results.push(result);
      }
      return results;
    };
    if (target === 'echo') {
      const server = await startRole(path.join(BENCH_DIR, 'echo.ts'), 'server', {});
      try {
        return await runAll({ address: server.info.address as string, call: ECHO_METHOD, data: { text: ECHO_TEXT }, proto: { file: ECHO_PROTO, importPaths: [path.dirname(ECHO_PROTO)] } });
      } finally {
        await server.stop();
      }
    }
    const dir = tempDir('relgate-bench-');
    try {
      return await withServer(
        () => spawnRelgate(path.join(dir.dir, 'relgate.db'), relgateExecArgv),
        async (server) => {
          const relationId = await setUpRelation(server.address);
          const responder = await startRole(path.join(BENCH_DIR, 'relgate.ts'), 'responder-session', { address: server.address, relationId }, { execArgv: relgateExecArgv });
          try {
            // ghz asks relgate's reflection service for the method.
            return await runAll({ address: server.address, call: 'relgate.v1.RequesterService.Call', data: { relation_id: relationId, fields: { common_name: ECHO_TEXT } }, metadata: { 'relgate-unit': REQUESTER_UNIT } });
          } finally {
            await responder.stop();
          }
        },
      );
    } finally {
      dir.remove();
    }
  };
}

interface SystemSpec {
  name: string;
  label: string;
  settings: string;
  measure: () => Promise<LoadResult[]>;
}

const SYSTEMS: SystemSpec[] = [
  { name: 'echo', label: 'grpc-js unary echo', settings: 'grpc-js server and client, one connection, no storage', measure: measureEcho },
  {
    name: 'relgate-session',
    label: 'relgate session',
    settings: 'create up the requester session, request event down the responder session, respond up it, response event down the requester session; SQLite WAL, synchronous=FULL (fsync per commit, commits grouped per event-loop turn)',
    measure: measureRelgate('responder-session', 'requester-session'),
  },
  {
    name: 'relgate-unary',
    label: 'relgate unary + watches',
    settings: 'unary CreateRequest, WatchIncomingRequests, unary Respond, WatchResponses; synchronous=FULL',
    measure: measureRelgate('responder-unary', 'requester-unary'),
  },
  {
    name: 'relgate-call',
    label: 'relgate Call',
    settings: 'unary Call; the responder answers over its session; synchronous=FULL',
    measure: measureRelgate('responder-session', 'requester-call'),
  },
  {
    name: 'relgate-core',
    label: 'relgate without gRPC',
    settings: 'service logic, SQLite store and watch hub in one process, hub watchers in place of sessions (bench/core.ts); synchronous=FULL',
    measure: measureCore,
  },
  {
    name: 'etcd',
    label: 'etcd put + watches',
    settings: 'etcd single member, throw-away data dir, default durability (WAL fsync before every acknowledged put); etcd3 npm client',
    measure: measurePeer(spawnEtcd, (server) => ({ endpoint: server.endpoint }), 'etcd'),
  },
  {
    name: 'jetstream',
    label: 'NATS JetStream',
    settings: 'nats-server -js, file storage, work-queue stream for requests, limits stream for responses, explicit acks, publish waits for the stream ack; the server does not fsync per message (its file store flushes to the OS per write, fsyncs periodically)',
    measure: measurePeer(spawnNats, (server) => ({ url: server.url }), 'jetstream'),
  },
  {
    name: 'nats',
    label: 'NATS request-reply',
    settings: 'nats-server, core request-reply: nothing is stored',
    measure: measurePeer(() => spawnNats(undefined), (server) => ({ url: server.url }), 'nats'),
  },
  {
    name: 'relgate-ingest',
    label: 'relgate durable creates',
    settings: 'create commands up one session, each round trip ending at its acknowledgement (durable); nobody answers; synchronous=FULL',
    measure: measureRelgate(undefined, 'creator-session'),
  },
  {
    name: 'sqlite-insert',
    label: 'better-sqlite3 inserts',
    settings: 'raw better-sqlite3 insert loop in its own process, one transaction per insert, WAL, synchronous=FULL',
    measure: measureInserts('insert'),
  },
  {
    name: 'sqlite-insert-grouped',
    label: 'better-sqlite3 grouped inserts',
    settings: 'raw better-sqlite3 inserts in their own process, those of one event-loop turn in one transaction (one fsync), as relgate groups its writes; WAL, synchronous=FULL',
    measure: measureInserts('insert-grouped'),
  },
  { name: 'ghz-echo', label: 'ghz on grpc-js echo', settings: `ghz ${GHZ_VERSION}, one connection`, measure: measureGhz('echo') },
  { name: 'ghz-call', label: 'ghz on relgate Call', settings: `ghz ${GHZ_VERSION}, one connection; the responder answers over its session`, measure: measureGhz('relgate-call') },
];

/** Scenarios that are not round trips: each yields its own rows of figures. */
interface ScenarioSpec {
  name: string;
  label: string;
  settings: string;
  run: () => Promise<FigureRow[]>;
}

const SCALE = flags.quick ? { requests: 100_000, relations: 1_000 } : { requests: 1_000_000, relations: 10_000 };

const SCENARIOS: ScenarioSpec[] = [
  {
    name: 'scale',
    label: `Scale (${SCALE.requests.toLocaleString('en-US')} requests, ${SCALE.relations.toLocaleString('en-US')} relations${flags.quick ? ', quick: the full run has 1,000,000 and 10,000' : ''})`,
    settings:
      'relgate serve (synchronous=FULL) on a database seeded through relgate\'s own store and service code: 100 requests per relation created round-robin, all but the newest 10 of each answered, the change log compacted; ' +
      'RSS from /proc a second after start-up, start-up as the median of 3 spawns until the "relgate serving" line, both also on an empty database; ' +
      'the responder\'s ListIncomingRequests and the requester\'s ListRequests, NEW filter, on a random relation, 1 in flight, from a client in its own process, ' +
      'against a raw grpc-js unary echo at 1 in flight measured in the same scenario; the listing gateway runs with --trace-gc, and its access log gives each listing\'s time in the handler; ' +
      'delete bench/results/scale-*.db to seed afresh',
    run: () => runScale({ ...SCALE, timing, execArgv: relgateExecArgv, cacheDir: RESULTS_DIR }),
  },
  {
    name: 'watch',
    label: 'Watch fan-out, idle-watch memory and catch-up',
    settings: 'relgate against a bare grpc-js server sending the same watch messages, each server and the watch clients in their own processes (bench/watch.ts)',
    run: () => runWatchScenarios({ quick: flags.quick }),
  },
];

const COMPARISONS: Comparison[] = [
  { scenario: 'Session round trip vs echo', relgate: 'relgate-session', baseline: 'echo', throughput: { inFlight: 64, atLeast: 1.5 }, p50: { atMostMs: 1.0 } },
  { scenario: 'Unary create + watches + respond vs echo', relgate: 'relgate-unary', baseline: 'echo', throughput: { inFlight: 64, atLeast: 0.5 } },
  { scenario: 'Unary Call vs echo', relgate: 'relgate-call', baseline: 'echo', throughput: { inFlight: 64, atLeast: 0.5 }, p50: { atMostTimes: 2 } },
  { scenario: 'Call under ghz vs ghz on echo', relgate: 'ghz-call', baseline: 'ghz-echo', throughput: { inFlight: 64, atLeast: 0.35 } },
  { scenario: 'Session vs etcd', relgate: 'relgate-session', baseline: 'etcd', throughput: { inFlight: 64, atLeast: 3 }, p50: { below: true } },
  { scenario: 'Session vs JetStream', relgate: 'relgate-session', baseline: 'jetstream', throughput: { inFlight: 64, atLeast: 1.3 } },
  { scenario: 'Session vs NATS request-reply (stores nothing)', relgate: 'relgate-session', baseline: 'nats', throughput: { inFlight: 64, atLeast: 0.5 }, p50: { atMostTimes: 2 } },
  { scenario: 'Call vs NATS request-reply (stores nothing)', relgate: 'relgate-call', baseline: 'nats' },
  { scenario: 'Durable creates vs raw SQLite inserts', relgate: 'relgate-ingest', baseline: 'sqlite-insert' },
  { scenario: 'Durable creates vs raw SQLite inserts grouped per turn', relgate: 'relgate-ingest', baseline: 'sqlite-insert-grouped' },
  { scenario: 'Round trip without gRPC (ceiling) vs echo', relgate: 'relgate-core', baseline: 'echo' },
];

function version(command: string, args: string[], pattern: RegExp): string {
  try {
    return pattern.exec(execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }))?.[1] ?? 'unknown';
  } catch {
    return 'not installed';
  }
}

function describeMachine(): Record<string, string> {
  const cpus = os.cpus();
  const memory = new Database(':memory:');
  const sqlite = (memory.prepare('select sqlite_version() as v').get() as { v: string }).v;
  memory.close();
  const packageVersion = (name: string) => (JSON.parse(readFileSync(path.join(PROJECT_DIR, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
  return {
    cpu: `${cpus.length} x ${cpus[0]?.model ?? 'unknown'}`,
    memory: `${Math.round(os.totalmem() / 2 ** 30)} GiB`,
    os: `${os.type()} ${os.release()}`,
    load: os.loadavg().map((l) => l.toFixed(2)).join(' '),
    node: process.version,
    'grpc-js': packageVersion('@grpc/grpc-js'),
    sqlite,
    etcd: version('etcd', ['--version'], /etcd Version: (\S+)/),
    'nats-server': version('nats-server', ['--version'], /nats-server: v(\S+)/),
    ghz: GHZ_VERSION,
  };
}

function markdownReport(started: Date, machine: Record<string, string>, systems: SystemResult[], specs: (SystemSpec | ScenarioSpec)[], rows: Row[], figures: FigureRow[], missing: string[]): string {
  const mode = flags.quick ? 'quick' : 'full';
  return [
    `Run of ${started.toISOString()} (${mode}: ${timing.warmupMs / 1000} s warm-up and ${timing.durationMs / 1000} s measured per level), \`npm run bench${flags.quick ? ' -- --quick' : ''}\`.`,
    '',
    `Machine: ${Object.entries(machine).map(([key, value]) => `${key} ${value}`).join('; ')}.`,
    ...(rows.length > 0 ? ['', markdownTable(rows)] : []),
    ...(figures.length > 0 ? ['', markdownFigures(figures)] : []),
    ...(missing.length > 0 ? ['', 'Not compared in this run:', '', ...missing.map((line) => `- ${line.split('\n')[0]}`)] : []),
    ...(systems.length > 0 ? ['', 'Every system on its own:', '', systemsTable(systems)] : []),
    '',
    'Settings:',
    '',
    ...specs.map((spec) => `- **${spec.label}**: ${spec.settings}.`),
  ].join('\n');
}

const DOCS_START = '<!-- bench:results -->';
const DOCS_END = '<!-- /bench:results -->';

/** Replaces the generated region of docs/benchmarks.md, leaving the rest of the file as it is. */
function updateDocs(markdown: string): void {
  const text = readFileSync(DOCS, 'utf8');
  const start = text.indexOf(DOCS_START);
  const end = text.indexOf(DOCS_END);
  if (start < 0 || end < start) throw new Error(`${DOCS} has no ${DOCS_START} ... ${DOCS_END} region`);
  writeFileSync(DOCS, `${text.slice(0, start + DOCS_START.length)}\n${markdown}\n${text.slice(end)}`);
}

async function main(): Promise<void> {
  const only = flags.only?.split(',').map((name) => name.trim());
  const specs = SYSTEMS.filter((spec) => !only || only.includes(spec.name));
  const scenarios = SCENARIOS.filter((scenario) => !only || only.includes(scenario.name));
  const unknown = only?.filter((name) => ![...SYSTEMS, ...SCENARIOS].some((spec) => spec.name === name)) ?? [];
  if (unknown.length > 0) throw new Error(`--only: no system or scenario named ${unknown.join(', ')}`);
  const started = new Date();
  const machine = describeMachine();
  const systems = new Map<string, SystemResult>();
  for (const spec of specs) {
    process.stdout.write(`${spec.label}\n`);
    try {
      systems.set(spec.name, { name: spec.name, label: spec.label, levels: await spec.measure() });
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      process.stdout.write(`    failed: ${message}\n`);
      systems.set(spec.name, { name: spec.name, label: spec.label, levels: [], error: message });
    }
  }
  const figures: FigureRow[] = [];
  for (const scenario of scenarios) {
    process.stdout.write(`${scenario.label}\n`);
    try {
      figures.push(...(await scenario.run()));
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      process.stdout.write(`    failed: ${message}\n`);
      figures.push({ scenario: scenario.label, relgate: `failed: ${message.split('\n')[0]}`, baseline: '', ratio: '', target: '', met: false });
      process.exitCode = 1;
    }
  }
  const selected = COMPARISONS.filter((comparison) => systems.has(comparison.relgate) && systems.has(comparison.baseline));
  const { rows, missing } = compare(selected, systems);
  if (rows.length > 0) process.stdout.write(`\n${textTable(rows)}\n`);
  if (figures.length > 0) process.stdout.write(`\n${textFigures(figures)}\n`);
  for (const line of missing) process.stdout.write(`not compared: ${line.split('\n')[0]}\n`);

  const markdown = markdownReport(started, machine, [...systems.values()], [...specs, ...scenarios], rows, figures, missing);
  mkdirSync(RESULTS_DIR, { recursive: true });
  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const json = JSON.stringify({ started: started.toISOString(), quick: flags.quick, timing, machine, systems: [...systems.values()], rows, figures }, null, 2);
  for (const name of [stamp, 'latest']) {
    writeFileSync(path.join(RESULTS_DIR, `${name}.json`), `${json}\n`);
    writeFileSync(path.join(RESULTS_DIR, `${name}.md`), `${markdown}\n`);
  }
  process.stdout.write(`\nwrote ${path.relative(PROJECT_DIR, path.join(RESULTS_DIR, `${stamp}.{json,md}`))} and latest.{json,md}\n`);
  if (flags['cpu-prof']) process.stdout.write(`CPU profiles of relgate's processes: ${path.relative(PROJECT_DIR, profileDir)}\n`);
  if (flags.docs) {
    updateDocs(markdown);
    process.stdout.write(`updated ${path.relative(PROJECT_DIR, DOCS)}\n`);
  }
  if ([...systems.values()].some((system) => system.error)) process.exitCode = 1;
}

await main();
