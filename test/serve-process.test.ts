// The gateway as its own process: `npm start`, the relgate command and every
// spawn in this project give Node the same flags, and with them a burst of
// new streams leaves the young generation at Node 20's size.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAIN, SERVE_NODE_FLAGS, serveArgv } from '../src/cli/serve-process.ts';
import { createLogger, failureLog } from '../src/logger.ts';
import { startServer } from '../src/server.ts';
import { Writable } from 'node:stream';
import { PROJECT_DIR } from '../src/protos.ts';
import { freePort } from '../bench/lib/processes.ts';
import { runProgram, spawnServe, type ServeProcess } from './helpers/grpcurl.ts';
import { clientsOf, setupRelation } from './helpers/harness.ts';
import { watch, watchReady, type Watch } from './helpers/streams.ts';
import { Code } from '../src/errors.ts';
import { struct } from './helpers/harness.ts';
import { makeCertificates } from './helpers/tls.ts';

const FLAGS = SERVE_NODE_FLAGS.join(' ');

describe('how the gateway is started', () => {
  it('npm start and the relgate command pass the same Node flags', () => {
    const { scripts } = JSON.parse(readFileSync(path.join(PROJECT_DIR, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(scripts.start).toBe(`node ${FLAGS} src/cli/main.ts serve`);
    const shebang = readFileSync(MAIN, 'utf8').split('\n')[0];
    expect(shebang).toBe(`#!/usr/bin/env -S node ${FLAGS}`);
    // What the kernel runs for that first line; Node refuses a flag it does not know.
    const help = spawnSync('/usr/bin/env', ['-S', `${process.execPath} ${FLAGS}`, MAIN, 'serve', '--help'], { encoding: 'utf8' });
    expect([help.status, help.stderr]).toEqual([0, '']);
    expect(help.stdout).toContain('--listen');
  });
});

describe('a start that fails', () => {
  it('leaves the database free: a start in the same process after it opens it', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'relgate-failed-start-'));
    const db = path.join(dir, 'relgate.db');
    try {
      // Token mode without an admin token fails after the store is open.
      await expect(startServer({ listen: '127.0.0.1:0', db, logLevel: 'silent', auth: 'token' })).rejects.toThrow('authenticated mode needs an admin token');
      const server = await startServer({ listen: '127.0.0.1:0', db, logLevel: 'silent' });
      await server.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('a burst of streams', () => {
  const STREAMS = 3_000;
  const NEW_SPACE_LIMIT = 2 * 16 * 1024 * 1024;
  let serve: ServeProcess;
  let metrics: string;
  let clients: ReturnType<typeof clientsOf>;

  beforeAll(async () => {
    metrics = `127.0.0.1:${await freePort()}`;
    serve = await spawnServe(['--listen', '127.0.0.1:0', '--db', ':memory:', '--metrics-listen', metrics, '--max-streams-per-unit', '0']);
    clients = clientsOf(serve.address);
  }, 30_000);
  afterAll(async () => {
    clients?.close();
    await serve?.stop();
  });

  it(`leaves the young generation within two 16 MB semi-spaces (${STREAMS} watches)`, async () => {
    const relationId = await setupRelation(clients);
    const responder = clients.responder('ca/0');
    const watches: Watch[] = [];
    // Opened in waves of 500, all held open at the end; without the flags V8 grows it to 64 MB and more.
    for (let opened = 0; opened < STREAMS; opened += 500) {
      watches.push(...(await Promise.all(Array.from({ length: 500 }, () => watchReady(responder, { relation_id: relationId })))));
    }
    const text = await (await fetch(`http://${metrics}/metrics`)).text();
    const line = text.split('\n').find((each) => each.startsWith('nodejs_heap_space_size_total_bytes{space="new"}'));
    const newSpace = Number(line?.split(' ')[1]);
    expect(newSpace).toBeGreaterThan(0);
    expect(newSpace).toBeLessThanOrEqual(NEW_SPACE_LIMIT);
    for (const watch of watches) watch.cancel();
  }, 60_000);
});

describe('background work that fails', () => {
  it('is logged when it first fails and when it works again, not at every retry', () => {
    const lines: { level: number; msg: string; err?: { message: string } }[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString()));
        done();
      },
    });
    const log = failureLog(createLogger('info', destination), 'the expiry sweep');
    log.worked();
    for (let i = 0; i < 50; i++) log.failed(new Error(`disk full ${i}`));
    log.worked();
    log.worked();
    log.failed(new Error('disk full again'));
    expect(lines.map((line) => [line.level, line.msg, line.err?.message])).toEqual([
      [50, 'the expiry sweep failed; it is retried, and logged again once it works', 'disk full 0'],
      [30, 'the expiry sweep works again', undefined],
      [50, 'the expiry sweep failed; it is retried, and logged again once it works', 'disk full again'],
    ]);
  });
});

describe('relgate serve on the command line', () => {
  const run = (args: string[], env: NodeJS.ProcessEnv = {}) => runProgram(process.execPath, serveArgv(args), { env: { ...process.env, ...env } });
  const withoutStack = (stderr: string) => !/^\s+at /m.test(stderr);

  it('refuses a flag that is not a whole number, or an empty --db, with a message, not a stack trace', async () => {
    for (const value of ['abc', '', '1e3', '-5']) {
      const result = await run(['--max-message-bytes', value, '--db', ':memory:']);
      expect([result.code, withoutStack(result.stderr)], result.stderr).toEqual([1, true]);
      expect(result.stderr).toContain('is not a whole number');
    }
    // An empty path would be SQLite's temporary database, deleted at exit.
    const noFile = await run(['--db', '']);
    expect([noFile.code, withoutStack(noFile.stderr)], noFile.stderr).toEqual([1, true]);
    expect(noFile.stderr).toContain('an empty path is no database file');
  });

  it('refuses numbers that would misbehave as timers or limits, empty TLS paths and a client CA without a certificate', async () => {
    const refused = async (args: string[], message: string) => {
      const result = await run([...args, '--db', ':memory:', '--listen', '127.0.0.1:0']);
      expect([result.code, withoutStack(result.stderr)], `${args.join(' ')}: ${result.stderr}`).toEqual([1, true]);
      expect(result.stderr, args.join(' ')).toContain(message);
    };
    for (const [flag, value] of [
      ['--max-message-bytes', '0'],
      ['--max-send-bytes', '0'],
      ['--watch-buffer', '0'],
      ['--watch-buffer-bytes', '0'],
      ['--keepalive-time', '0'],
      ['--keepalive-timeout', '3000000000'],
      ['--shutdown-grace', '3000000000'],
      ['--max-connection-age', '2592000000'],
      ['--progress-interval', '0'],
      ['--progress-interval', '3000000000'],
    ] as const) {
      await refused([flag, value], `"${value}" is not between`);
    }
    const dir = mkdtempSync(path.join(tmpdir(), 'relgate-tls-flags-'));
    try {
      const certificates = makeCertificates(dir, []);
      const tls = ['--tls-cert', certificates.serverCert, '--tls-key', certificates.serverKey];
      await refused(['--tls-cert', '', '--tls-key', ''], 'an empty path names no file');
      await refused([...tls, '--tls-client-ca', ''], 'an empty path names no file');
      const empty = path.join(dir, 'no-certificate.pem');
      writeFileSync(empty, 'not a certificate\n');
      await refused([...tls, '--tls-client-ca', empty], 'holds no PEM certificate');
      const fromEnv = await run([...tls, '--db', ':memory:'], { RELGATE_TLS_CLIENT_CA: '' });
      expect([fromEnv.code, fromEnv.stderr.includes('an empty path names no file')], fromEnv.stderr).toEqual([1, true]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('exits on SIGTERM when the reader of its log has gone away', async () => {
    const child = spawn(process.execPath, serveArgv(['--listen', '127.0.0.1:0', '--db', ':memory:']), { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    // The reader takes the first line, then goes away: later lines meet a broken pipe.
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    child.stdout.destroy();
    const started = Date.now();
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    expect(await exited).toBe(0);
    clearTimeout(timer);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('says why it cannot start, without a stack trace, when its address is taken', async () => {
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const { port } = taken.address() as net.AddressInfo;
    try {
      const result = await run(['--listen', `127.0.0.1:${port}`, '--db', ':memory:']);
      expect([result.code, withoutStack(result.stderr)], result.stderr).toEqual([1, true]);
      expect(result.stderr).toMatch(/^relgate serve: cannot start: /m);
    } finally {
      taken.close();
    }
  });

  it('refuses a SQLite file another gateway serves, and takes it over once that gateway is killed; says when it created the file', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'relgate-owned-'));
    const db = path.join(dir, 'relgate.db');
    const first = await spawnServe(['--listen', '127.0.0.1:0', '--db', db]);
    try {
      const clients = clientsOf(first.address);
      const relationId = await setupRelation(clients);
      const second = await run(['--listen', '127.0.0.1:0', '--db', db]);
      expect([second.code, withoutStack(second.stderr)], second.stderr).toEqual([1, true]);
      expect(second.stderr).toContain(`the database ${db} is in use by another gateway`);
      // The refused gateway changed nothing: the first still serves its relation.
      expect(await clients.registry.call('GetRelation', { relation_id: relationId })).toMatchObject({ relation: { id: relationId } });
      clients.close();
      // A killed gateway leaves its lock file behind, but not its lock.
      const exited = new Promise((resolve) => first.child.once('exit', resolve));
      first.child.kill('SIGKILL');
      await exited;
      const next = await spawnServe(['--listen', '127.0.0.1:0', '--db', db]);
      const after = clientsOf(next.address);
      // Only the first start found no database at the path, and says so.
      expect([first.log().includes('created a new database'), next.log().includes('created a new database')]).toEqual([true, false]);
      try {
        expect(await after.registry.call('GetRelation', { relation_id: relationId })).toMatchObject({ relation: { id: relationId } });
      } finally {
        after.close();
        await next.stop();
      }
    } finally {
      await first.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('mark-restored makes watches that resume from after a backup start over, where they would skip what the restore took back', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'relgate-restore-'));
    const db = path.join(dir, 'relgate.db');
    const markRestored = () => runProgram(process.execPath, [MAIN, 'mark-restored', '--db', db]);
    try {
      let gateway = await spawnServe(['--listen', '127.0.0.1:0', '--db', db]);
      let clients = clientsOf(gateway.address);
      const relationId = await setupRelation(clients);
      await clients.requester('webapp/0').call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: 'kept.example' }) });
      // The backup docs/operations.md gives: VACUUM INTO from another connection, while the gateway serves.
      const backup = path.join(dir, 'backup.db');
      const reader = new Database(db, { readonly: true });
      reader.prepare('VACUUM INTO ?').run(backup);
      reader.close();
      const { request: lost } = await clients.requester('webapp/0').call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: 'lost.example' }) });
      const refused = await markRestored();
      expect([refused.code, refused.stderr]).toEqual([1, expect.stringContaining('is in use by another gateway')]);
      clients.close();
      await gateway.stop();

      // Restored as the docs say: the gateway stopped, its WAL gone with the database it belonged to.
      rmSync(`${db}-wal`, { force: true });
      rmSync(`${db}-shm`, { force: true });
      copyFileSync(backup, db);
      const marked = await markRestored();
      expect([marked.code, marked.stdout], marked.stderr).toEqual([0, expect.stringContaining('watches that resume from before it start over from a snapshot')]);
      gateway = await spawnServe(['--listen', '127.0.0.1:0', '--db', db]);
      clients = clientsOf(gateway.address);
      try {
        // More writes than the restore took back: without the mark, their revisions would be the lost ones'.
        for (const name of ['a', 'b', 'c']) await clients.requester('webapp/0').call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: `${name}.example` }) });
        const resumed = watch(clients.responder('ca/0'), { relation_id: relationId, start: 'WATCH_START_AFTER_REVISION', after_revision: String(lost.revision) });
        const ended = await resumed.status;
        expect([ended?.code, ended?.reason]).toEqual([Code.OUT_OF_RANGE, 'REVISION_COMPACTED']);
      } finally {
        clients.close();
        await gateway.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('stops with a fatal log line, not a bare stack, when the disk fails to make the WAL durable; nothing acknowledged is lost', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'relgate-fsync-'));
    const db = path.join(dir, 'relgate.db');
    const flag = path.join(dir, 'fail');
    const shim = path.join(dir, 'fail-fsync.so');
    try {
      execFileSync('cc', ['-shared', '-fPIC', '-o', shim, path.join(import.meta.dirname, 'helpers', 'fail-fsync.c'), '-ldl']);
      const env = { ...process.env, LD_PRELOAD: shim, RELGATE_FAIL_FSYNC_FLAG: flag };
      const gateway = await spawnServe(['--listen', '127.0.0.1:0', '--db', db], PROJECT_DIR, undefined, env);
      const exited = new Promise<number | null>((resolve) => gateway.child.once('exit', resolve));
      let clients = clientsOf(gateway.address);
      const relationId = await setupRelation(clients);
      const create = (requestId: string) => clients.requester('webapp/0').call('CreateRequest', { relation_id: relationId, request_id: requestId, fields: struct({ common_name: 'a.example' }) });
      const kept = '0190f0a0-0000-7000-8000-0000000000a1';
      const unsure = '0190f0a0-0000-7000-8000-0000000000a2';
      await create(kept);
      writeFileSync(flag, '');
      await expect(create(unsure)).rejects.toMatchObject({ code: Code.UNAVAILABLE });
      expect(await exited).toBe(1);
      clients.close();
      const fatal = gateway.log().split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as { level: number; msg: string; err?: { message: string } }).find((line) => line.level === 60);
      expect([fatal?.msg, fatal?.err?.message]).toEqual(['relgate stopped on an error it cannot recover from; start it again', expect.stringContaining('fsync of the SQLite WAL failed; restart to recover from the database file')]);

      const restarted = await spawnServe(['--listen', '127.0.0.1:0', '--db', db]);
      clients = clientsOf(restarted.address);
      try {
        const { request } = await clients.requester('webapp/0').call('GetRequest', { request_id: kept });
        expect(request.request_id).toBe(kept);
        // The unacknowledged create may or may not have reached the disk: sent again, it is stored once either way.
        expect((await create(unsure)).request.request_id).toBe(unsure);
      } finally {
        clients.close();
        await restarted.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('loads every directory of a colon-separated RELGATE_INTERFACES', async () => {
    const dirs = ['alpha', 'beta'].map((name) => {
      const dir = mkdtempSync(path.join(tmpdir(), `relgate-if-${name}-`));
      const message = (role: string, suffix: string) =>
        `message ${name}${suffix} {\n  option (relgate.v1.interface) = { name: "${name}" version: 1 role: ${role} };\n  string text = 1;\n}\n`;
      writeFileSync(path.join(dir, `${name}.proto`), `syntax = "proto3";\npackage test.${name}.v1;\nimport "relgate/v1/options.proto";\n${message('INTERFACE_ROLE_REQUEST', 'Request')}${message('INTERFACE_ROLE_RESPONSE', 'Response')}`);
      return dir;
    });
    // A RELGATE_STORE left blank by a template is no store: SQLite serves.
    const child = spawn(process.execPath, serveArgv(['--listen', '127.0.0.1:0', '--db', ':memory:']), { env: { ...process.env, RELGATE_INTERFACES: dirs.join(':'), RELGATE_STORE: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const serving = new Promise<string>((resolve, reject) => {
      child.stdout.on('data', (data: Buffer) => {
        output += data.toString();
        const line = output.split('\n').find((each) => each.includes('relgate serving'));
        if (line) resolve(line);
      });
      child.once('exit', () => reject(new Error(`relgate serve exited:\n${output}`)));
    });
    child.stderr.on('data', (data: Buffer) => (output += data.toString()));
    try {
      const interfaces = (JSON.parse(await serving) as { interfaces: string[] }).interfaces;
      expect(interfaces).toEqual(expect.arrayContaining(['alpha@1', 'beta@1']));
    } finally {
      child.kill('SIGTERM');
      for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
    }
  });
});
