// The Python and Go example clients (examples/) as real processes: preparing
// them with scripts/setup-polyglot.sh, running one command, and following a
// long-running client's JSON lines.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { PROJECT_DIR } from '../../src/protos.ts';
import { cacheDir } from './find-grpcurl.ts';
import { runProgram, type RunResult } from './grpcurl.ts';
import { Feed, type Predicate } from './streams.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Line = { event: string } & Record<string, any>;

const SETUP_SCRIPT = path.join(PROJECT_DIR, 'scripts', 'setup-polyglot.sh');
const PYTHON = path.join(cacheDir(), 'relgate-py', 'bin', 'python');
const PYTHON_DIR = path.join(PROJECT_DIR, 'examples', 'python');
const GO_BIN = path.join(PROJECT_DIR, 'examples', 'go', 'bin');

/** A program and its arguments. */
export type Command = [file: string, ...args: string[]];

/** examples/python/<script>.py run by the venv's Python. */
export const python = (script: 'requester' | 'responder', ...args: string[]): Command => [PYTHON, path.join(PYTHON_DIR, `${script}.py`), ...args];

/** examples/go/bin/<binary>, built from examples/go/cmd/<binary>. */
export const go = (binary: 'requester' | 'responder', ...args: string[]): Command => [path.join(GO_BIN, binary), ...args];

/**
 * Creates the venv, generates the Python and Go code and builds the Go
 * binaries; each step is skipped when its inputs did not change. The first
 * run on a fresh machine downloads from PyPI and the Go module proxy.
 */
export async function preparePolyglot(): Promise<void> {
  const result = await runProgram('bash', [SETUP_SCRIPT], { timeoutMs: 15 * 60_000 });
  if (result.code !== 0) throw new Error(`scripts/setup-polyglot.sh failed (${result.code ?? result.signal}):\n${result.stdout}\n${result.stderr}`);
}

/** The JSON lines a client printed (every stdout line is one). */
export function parseLines(stdout: string): Line[] {
  return stdout
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as Line);
}

export interface Outcome extends RunResult {
  lines: Line[];
}

/** Runs a client command to completion. */
export async function run(command: Command, timeoutMs = 20_000): Promise<Outcome> {
  const [file, ...args] = command;
  const result = await runProgram(file, args, { timeoutMs });
  return { ...result, lines: parseLines(result.stdout) };
}

/** Runs a client command that must print exactly one line and exit with `code`. */
export async function runOne(command: Command, code = 0): Promise<Line> {
  const outcome = await run(command);
  const where = `${command.map((part) => path.basename(part)).join(' ')}\nstdout:\n${outcome.stdout}\nstderr:\n${outcome.stderr}`;
  if (outcome.code !== code) throw new Error(`exit status ${outcome.code ?? outcome.signal}, expected ${code}: ${where}`);
  if (outcome.lines.length !== 1) throw new Error(`expected one line: ${where}`);
  return outcome.lines[0] as Line;
}

export interface ClientProcess {
  /** Every line printed so far, with a cursor to await the next matching one. */
  lines: Feed<Line>;
  /** Waits for the next line after the cursor that matches. */
  next(test: Predicate<Line>, timeoutMs?: number): Promise<Line>;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  stderr(): string;
  /** SIGSTOP: the process and its connections freeze where they are. */
  pause(): void;
  /** SIGCONT. */
  resume(): void;
  stop(): Promise<void>;
}

/** Starts a long-running client, e.g. a responder. */
export function startClient(command: Command): ClientProcess {
  const [file, ...args] = command;
  const child = spawn(file, args, { cwd: PROJECT_DIR, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines = new Feed<Line>(path.basename(file));
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (data: Buffer) => {
    stdout += data.toString();
    const complete = stdout.split('\n');
    stdout = complete.pop() ?? '';
    for (const line of complete) if (line.trim()) lines.push(JSON.parse(line) as Line);
  });
  child.stderr.on('data', (data: Buffer) => (stderr += data.toString()));
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code, signal) => {
      lines.end(new Error(`exited (${code ?? signal}); stderr:\n${stderr}`));
      resolve(code);
    }),
  );
  return {
    lines,
    next: (test, timeoutMs = 10_000) => lines.next(test, timeoutMs),
    exited,
    stderr: () => stderr,
    pause: () => child.kill('SIGSTOP'),
    resume: () => child.kill('SIGCONT'),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGCONT');
      child.kill('SIGTERM');
      await exited;
    },
  };
}
