// Each side of a benchmark runs in its own Node process (a "role"), forked by
// the runner and driven over the IPC channel: the role reports `ready` (with
// what the runner needs, such as an address), runs measured loads on request
// and closes on `stop`.
import { fork, type ChildProcess } from 'node:child_process';
import { runLoad, type LoadOptions, type LoadResult, type MeasureEdge } from './load.ts';

export type Config = Record<string, unknown>;

export interface Role {
  /** What the runner learns once the role is ready (an address, a port). */
  info?: Config;
  /** One round trip; only roles that drive load have it. */
  roundTrip?: () => Promise<void>;
  close(): Promise<void>;
}

export type RoleFactory = (config: Config) => Promise<Role>;

type ToRole = { type: 'measure'; options: LoadOptions } | { type: 'edge-taken' } | { type: 'stop' };
type FromRole = { type: 'ready'; info: Config } | { type: 'edge'; edge: MeasureEdge } | { type: 'result'; result: LoadResult } | { type: 'failed'; message: string };

/** Serves the role named on the command line when this module runs forked. */
export function serveRoles(roles: Record<string, RoleFactory>): void {
  const send = process.send?.bind(process);
  if (!send) return;
  const [name = '', json = '{}'] = process.argv.slice(2);
  const factory = roles[name];
  const fail = (error: unknown) => {
    send({ type: 'failed', message: error instanceof Error ? (error.stack ?? error.message) : String(error) } satisfies FromRole);
    setTimeout(() => process.exit(1), 100);
  };
  if (!factory) return fail(new Error(`unknown role ${name}`));
  factory(JSON.parse(json) as Config).then((role) => {
    let edgeTaken: (() => void) | undefined;
    // The runner samples every process's CPU time at each edge of the measured period, while nothing is in flight.
    const onEdge = (edge: MeasureEdge) =>
      new Promise<void>((resolve) => {
        edgeTaken = resolve;
        send({ type: 'edge', edge } satisfies FromRole);
      });
    process.on('message', (message: ToRole) => {
      if (message.type === 'stop') {
        void role.close().finally(() => process.exit(0));
        return;
      }
      if (message.type === 'edge-taken') return edgeTaken?.();
      if (!role.roundTrip) return fail(new Error(`role ${name} drives no load`));
      runLoad(role.roundTrip, message.options, onEdge).then((result) => send({ type: 'result', result } satisfies FromRole), fail);
    });
    send({ type: 'ready', info: role.info ?? {} } satisfies FromRole);
  }, fail);
}

export interface RoleHandle {
  info: Config;
  pid: number | undefined;
  /** Runs a load; `onEdge` is called at the start and the end of the measured period. */
  measure(options: LoadOptions, onEdge?: (edge: MeasureEdge) => void): Promise<LoadResult>;
  stop(): Promise<void>;
}

export interface ForkOptions {
  /** Node flags for the role's process, such as --cpu-prof. */
  execArgv?: string[];
  /** How long the role may take to become ready. */
  readyTimeoutMs?: number;
}

/** Forks `file` as role `name` and waits until it is ready. */
export function startRole(file: string, name: string, config: Config, options: ForkOptions = {}): Promise<RoleHandle> {
  const child = fork(file, [name, JSON.stringify(config)], { execArgv: options.execArgv ?? [], stdio: ['ignore', 'inherit', 'pipe', 'ipc'] });
  let stderr = '';
  child.stderr?.on('data', (data: Buffer) => (stderr += data.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`role ${name} was not ready within ${options.readyTimeoutMs ?? 30_000} ms\n${stderr}`));
    }, options.readyTimeoutMs ?? 30_000);
    const onEarlyExit = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`role ${name} exited (${code}) before it was ready\n${stderr}`));
    };
    child.once('exit', onEarlyExit);
    child.once('message', (message: FromRole) => {
      clearTimeout(timer);
      child.off('exit', onEarlyExit);
      if (message.type !== 'ready') return reject(new Error(`role ${name} failed: ${message.type === 'failed' ? message.message : message.type}\n${stderr}`));
      resolve({ info: message.info, pid: child.pid, measure: (load, onEdge) => measureOn(child, name, load, onEdge, () => stderr), stop: () => stopRole(child, exited) });
    });
  });
}

function measureOn(child: ChildProcess, name: string, options: LoadOptions, onEdge: ((edge: MeasureEdge) => void) | undefined, stderr: () => string): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    // A stuck round trip would hang the slot: bound the whole measurement.
    const limitMs = options.warmupMs + options.durationMs + 30_000;
    const timer = setTimeout(() => finish(new Error(`role ${name} did not finish its load within ${limitMs} ms\n${stderr()}`)), limitMs);
    const onExit = (code: number | null) => finish(new Error(`role ${name} exited (${code}) during its load\n${stderr()}`));
    const onMessage = (message: FromRole) => {
      if (message.type === 'edge') {
        onEdge?.(message.edge);
        child.send({ type: 'edge-taken' } satisfies ToRole);
      } else if (message.type === 'result') finish(undefined, message.result);
      else if (message.type === 'failed') finish(new Error(`role ${name} failed: ${message.message}`));
    };
    function finish(error: Error | undefined, result?: LoadResult) {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
      if (error || !result) reject(error);
      else resolve(result);
    }
    child.on('message', onMessage);
    child.once('exit', onExit);
    child.send({ type: 'measure', options } satisfies ToRole);
  });
}

async function stopRole(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  if (child.connected) child.send({ type: 'stop' } satisfies ToRole);
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}
