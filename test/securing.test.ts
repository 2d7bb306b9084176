// Runs the README's "Securing relgate" section verbatim: openssl, a TLS
// gateway in token mode, then mutual TLS, driven by the real grpcurl.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { PROJECT_DIR } from '../src/protos.ts';
import { parseMessages, shell, spawnServe, type ServeProcess } from './helpers/grpcurl.ts';

const HEADING = '## Securing relgate';
const README_ADDRESS = 'localhost:50051';

function sectionBlocks(): string[] {
  const markdown = readFileSync(path.join(PROJECT_DIR, 'README.md'), 'utf8');
  const start = markdown.indexOf(`\n${HEADING}\n`);
  if (start < 0) throw new Error(`README.md has no "${HEADING}" section`);
  const next = markdown.indexOf('\n## ', start + 1);
  const section = markdown.slice(start, next < 0 ? undefined : next);
  return [...section.matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((match) => (match[1] ?? '').trim());
}

const blocks = sectionBlocks();
const dir = mkdtempSync(path.join(tmpdir(), 'relgate-securing-'));
let serve: ServeProcess | undefined;
afterAll(async () => {
  await serve?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** `npm start -- ARGS` runs `relgate serve ARGS`; the test adds a free port. */
async function start(block: string): Promise<void> {
  const args = block.replace(/^npm start -- /, '').split(/\s+/);
  await serve?.stop();
  serve = await spawnServe([...args, '--listen', '127.0.0.1:0', '--log-level', 'info'], dir);
}

async function run(block: string) {
  const port = serve?.address.split(':').at(-1);
  return shell(block.replaceAll(README_ADDRESS, `localhost:${port}`), 30_000, dir);
}

test('the section starts servers and calls them with grpcurl', () => {
  expect(blocks.filter((block) => block.startsWith('npm start -- '))).toHaveLength(2);
  expect(blocks.filter((block) => block.startsWith('grpcurl'))).toHaveLength(6);
});

test('every command of the section works verbatim, in order', async () => {
  const results: { block: string; code: number | null; stdout: string; stderr: string }[] = [];
  for (const block of blocks) {
    if (block.startsWith('npm start -- ')) {
      await start(block);
      continue;
    }
    const result = await run(block);
    results.push({ block, ...result });
    const failing = !block.includes('authorization') && !block.includes('-cert ') && block.startsWith('grpcurl');
    const context = `${block}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`;
    if (failing) {
      expect(result.code, context).toBe(80);
      expect(result.stderr, context).toContain('Code: Unauthenticated');
    } else {
      expect(result.code, context).toBe(0);
    }
  }
  const token = readFileSync(path.join(dir, 'certs', 'webapp-0.token'), 'utf8').trim();
  expect(token).toMatch(/^rgu_[A-Za-z0-9_-]{43}$/);
  // The unit's own calls answer (an empty list: it has no relations yet).
  const listings = results.filter(({ block }) => block.endsWith('RequesterService/ListRequests') && !block.startsWith('grpcurl -cacert certs/ca.crt -d'));
  expect(listings).toHaveLength(2);
  for (const { stdout } of listings) expect(parseMessages(stdout)).toEqual([{}]);
});

test('tokens and keys never reach the log', () => {
  const log = serve?.log() ?? '';
  expect(log).toContain('"method"');
  const token = readFileSync(path.join(dir, 'certs', 'webapp-0.token'), 'utf8').trim();
  const admin = readFileSync(path.join(dir, 'certs', 'admin.token'), 'utf8').trim();
  expect(log).not.toContain(token);
  expect(log).not.toContain(admin);
});

test('with mutual TLS a client without a certificate cannot connect', async () => {
  const port = serve?.address.split(':').at(-1);
  const token = readFileSync(path.join(dir, 'certs', 'webapp-0.token'), 'utf8').trim();
  const command = `grpcurl -connect-timeout 2 -cacert certs/ca.crt -H "authorization: Bearer ${token}" -d '{}' localhost:${port} relgate.v1.RequesterService/ListRequests`;
  const result = await shell(command, 30_000, dir);
  expect(result.code).toBe(1);
  // grpcurl retries a refused handshake until its connect timeout.
  expect(result.stderr).toMatch(/Failed to dial target host/);
  expect(result.stdout).toBe('');
});
