// The real grpcurl binary for tests, and helpers to run it and the gateway.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { PROJECT_DIR } from '../../src/protos.ts';
import { findGrpcurl } from './find-grpcurl.ts';
import { serveArgv } from '../../src/cli/serve-process.ts';

export { findGrpcurl };

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a program asynchronously (never blocks the event loop: the server may share it). */
export function runProgram(file: string, args: readonly string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      [...args],
      { cwd: options.cwd ?? PROJECT_DIR, env: options.env ?? process.env, timeout: options.timeoutMs ?? 20_000, maxBuffer: 32 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error && typeof error.code !== 'number' && !error.signal) {
          reject(error);
          return;
        }
        resolve({ code: error ? (typeof error.code === 'number' ? error.code : null) : 0, signal: error?.signal ?? null, stdout, stderr });
      },
    );
  });
}

/** Runs grpcurl with arguments. */
export function grpcurl(args: readonly string[], timeoutMs?: number): Promise<RunResult> {
  return runProgram(findGrpcurl(), args, timeoutMs === undefined ? {} : { timeoutMs });
}

/** Runs a shell command line with grpcurl's directory first on PATH. */
export function shell(command: string, timeoutMs?: number, cwd?: string): Promise<RunResult> {
  const env = { ...process.env, PATH: `${path.dirname(findGrpcurl())}${path.delimiter}${process.env.PATH ?? ''}` };
  return runProgram('bash', ['-c', command], { env, ...(timeoutMs === undefined ? {} : { timeoutMs }), ...(cwd === undefined ? {} : { cwd }) });
}

/** Splits grpcurl's output of several pretty-printed JSON messages and parses each. */
export function parseMessages(stdout: string): unknown[] {
  return stdout
    .split(/\n(?=\{)/)
    .map((chunk) => chunk.trim())
    .filter(Boolean)
    .map((chunk) => JSON.parse(chunk) as unknown);
}

export interface ServeProcess {
  address: string;
  child: ChildProcess;
  log(): string;
  stop(): Promise<void>;
}

/** Starts `relgate serve` (from the sources, or the given entry point) as its own process and waits for its "relgate serving" log line. */
export function spawnServe(args: readonly string[], cwd = PROJECT_DIR, main?: string, env: NodeJS.ProcessEnv = process.env): Promise<ServeProcess> {
  const child = spawn(process.execPath, serveArgv(args, [], main), {
    cwd,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`relgate serve did not start within 20 s:\n${output}`));
    }, 20_000);
    let started = false;
    const onData = (data: Buffer) => {
      output += data.toString();
      if (started) return;
      // Only complete lines: the last element is a line still being written.
      for (const line of output.split('\n').slice(0, -1)) {
        if (!line.includes('"relgate serving"')) continue;
        const { address } = JSON.parse(line) as { address: string };
        started = true;
        clearTimeout(timer);
        resolve({ address, child, log: () => output, stop });
        return;
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (data: Buffer) => (output += data.toString()));
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`relgate serve exited (${code ?? signal}) before serving:\n${output}`));
    });
  });
}
