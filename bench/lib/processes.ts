// Servers under test as their own processes: relgate, etcd, nats-server.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PROJECT_DIR } from '../../src/protos.ts';
import { serveArgv } from '../../src/cli/serve-process.ts';

export interface ServerProcess {
  child: ChildProcess;
  /** The line that said the server is ready. */
  readyLine: string;
  stop(): Promise<void>;
}

/** A field of /proc/PID/status in kB, e.g. VmRSS (resident now) or VmHWM (its peak). */
export function procStatusKb(pid: number | undefined, field: 'VmRSS' | 'VmHWM'): number {
  const match = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!match) throw new Error(`no ${field} for process ${pid}`);
  return Number(match[1]);
}

/** Linux reports CPU time in /proc in USER_HZ ticks, 100 per second on every architecture Node runs on. */
const TICKS_PER_SECOND = 100;

/** CPU time a process has used so far (user and system, all its threads), in milliseconds. */
export function cpuMs(pid: number | undefined): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces: state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SECOND;
}

/** Resident memory of a process, in MiB. */
export function rssMb(pid: number | undefined): number {
  return procStatusKb(pid, 'VmRSS') / 1024;
}

/** A free TCP port on loopback (closed again before returning). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** A temporary directory removed by the returned function. */
export function tempDir(prefix: string): { dir: string; remove(): void } {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Spawns a program and resolves once a line of its output satisfies `ready`. */
export function spawnUntilReady(command: string, args: readonly string[], ready: (line: string) => boolean, timeoutMs = 30_000): Promise<ServerProcess> {
  const child = spawn(command, [...args], { cwd: PROJECT_DIR, stdio: ['ignore', 'pipe', 'pipe'] });
  // A program that cannot start emits 'error' and never 'exit'.
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.once('error', () => resolve());
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };
  let output = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`${command} was not ready within ${timeoutMs} ms:\n${output}`));
    }, timeoutMs);
    let done = false;
    const onData = (data: Buffer) => {
      if (done) return;
      output += data.toString();
      // Only complete lines: the last element may still be being written.
      const line = output.split('\n').slice(0, -1).find(ready);
      if (line === undefined) return;
      done = true;
      clearTimeout(timer);
      // The listeners stay, draining the pipes so that a chatty server never blocks on them.
      output = '';
      resolve({ child, readyLine: line, stop });
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (!done) reject(new Error(`${command} exited (${code ?? signal}) before it was ready:\n${output}`));
    });
    child.once('error', (error) => {
      clearTimeout(timer);
      if (!done) reject(new Error(`${command} could not start: ${error.message}`));
    });
  });
}

/**
 * `relgate serve` on a free loopback port with its database in `db`, at full durability: named, so that a
 * RELGATE_DURABILITY in the environment cannot change what the figures are labelled, and checked in its ready line.
 */
export async function spawnRelgate(db: string, execArgv: readonly string[] = []): Promise<ServerProcess & { address: string }> {
  const server = await spawnGateway(['--db', db, '--durability', 'full'], execArgv);
  const { durability } = JSON.parse(server.readyLine) as { durability?: string };
  if (durability !== 'full') {
    await server.stop();
    throw new Error(`relgate serve reported durability ${durability}, not full`);
  }
  return server;
}

/** `relgate serve` on a free loopback port with the given store flags (`--db` or `--store`). */
export async function spawnGateway(storeArgs: readonly string[], execArgv: readonly string[] = []): Promise<ServerProcess & { address: string }> {
  const server = await spawnUntilReady(process.execPath, serveArgv(['--listen', '127.0.0.1:0', ...storeArgs, '--log-level', 'info'], execArgv), (line) => line.includes('"relgate serving"'));
  const { address } = JSON.parse(server.readyLine) as { address: string };
  return { ...server, address };
}

/** A single-member etcd with a throw-away data dir, on free loopback ports, at its default durability (fsync per commit). */
export async function spawnEtcd(dataDir: string): Promise<ServerProcess & { endpoint: string }> {
  const [client, peer] = [await freePort(), await freePort()];
  const endpoint = `http://127.0.0.1:${client}`;
  const peerUrl = `http://127.0.0.1:${peer}`;
  const args = [
    '--name', 'bench',
    '--data-dir', dataDir,
    '--listen-client-urls', endpoint,
    '--advertise-client-urls', endpoint,
    '--listen-peer-urls', peerUrl,
    '--initial-advertise-peer-urls', peerUrl,
    '--initial-cluster', `bench=${peerUrl}`,
    '--logger', 'zap',
  ];
  const server = await spawnUntilReady('etcd', args, (line) => line.includes('serving client traffic'));
  return { ...server, endpoint };
}

/** nats-server on a free loopback port; with JetStream, file storage in `storeDir`. */
export async function spawnNats(storeDir: string | undefined): Promise<ServerProcess & { url: string }> {
  const port = await freePort();
  const args = ['-a', '127.0.0.1', '-p', String(port), ...(storeDir ? ['-js', '-sd', storeDir] : [])];
  const server = await spawnUntilReady('nats-server', args, (line) => line.includes('Server is ready'));
  return { ...server, url: `nats://127.0.0.1:${port}` };
}
