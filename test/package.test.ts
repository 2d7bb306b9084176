// relgate as another project gets it from `npm install`: the package `npm
// pack` makes (scripts/build.ts builds it first) unpacked into that project's
// node_modules, where Node does not run TypeScript. Its command serves and
// answers operator commands, its SDK calls, and its types check.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../src/errors.ts';
import { PROJECT_DIR } from '../src/protos.ts';
import { grpcurl, runProgram, spawnServe, type ServeProcess } from './helpers/grpcurl.ts';
import { clientsOf, setupRelation, struct } from './helpers/harness.ts';

let dir: string;
/** The project that installed relgate. */
let app: string;
/** relgate inside its node_modules. */
let installed: string;
let bin: string;
let serve: ServeProcess | undefined;

/** Every file of the installed package, relative to it. */
function files(root: string, under = ''): string[] {
  return readdirSync(path.join(root, under), { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? files(root, path.join(under, entry.name)) : [path.join(under, entry.name)],
  );
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'relgate-package-'));
  const packed = await runProgram('npm', ['pack', '--pack-destination', dir], { timeoutMs: 120_000 });
  expect(packed.code, packed.stderr).toBe(0);
  const tarball = readdirSync(dir).find((name) => name.endsWith('.tgz'));
  app = path.join(dir, 'app');
  const modules = path.join(app, 'node_modules');
  mkdirSync(modules, { recursive: true });
  expect((await runProgram('tar', ['-xzf', path.join(dir, tarball as string), '-C', modules])).code).toBe(0);
  installed = path.join(modules, 'relgate');
  renameSync(path.join(modules, 'package'), installed);
  // relgate's dependencies beside it, where npm would put them.
  for (const name of readdirSync(path.join(PROJECT_DIR, 'node_modules'))) {
    if (!name.startsWith('.')) symlinkSync(path.join(PROJECT_DIR, 'node_modules', name), path.join(modules, name));
  }
  const manifest = JSON.parse(readFileSync(path.join(installed, 'package.json'), 'utf8')) as { bin: Record<string, string> };
  bin = path.join(installed, manifest.bin.relgate as string);
  serve = await spawnServe(['--db', path.join(app, 'gateway.db'), '--listen', '127.0.0.1:0', '--log-level', 'info', '--metrics-listen', '127.0.0.1:0'], app, bin);
}, 180_000);
afterAll(async () => {
  await serve?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the package npm pack makes', () => {
  it('holds JavaScript, type declarations and the protos: no TypeScript for Node to refuse', () => {
    const all = files(installed);
    expect(all.filter((file) => file.endsWith('.ts') && !file.endsWith('.d.ts'))).toEqual([]);
    expect(all).toEqual(
      expect.arrayContaining([
        'package.json',
        'dist/src/cli/main.js',
        'dist/src/store/checkpoint-worker.js',
        'dist/src/client/index.d.ts',
        'dist/gen/interfaces.d.ts',
        'dist/src/dashboard/app.js',
        'dist/proto/relgate/v1/requester.proto',
      ]),
    );
    expect(readFileSync(bin, 'utf8').split('\n')[0]).toMatch(/^#!\/usr\/bin\/env -S node/);
  });

  it('its relgate command serves reflection from its protos, the dashboard, and answers operator commands', async () => {
    const address = serve?.address as string;
    const listed = await grpcurl(['-plaintext', address, 'list']);
    expect(listed.stdout).toContain('relgate.v1.RequesterService');
    const lines = (serve?.log() ?? '').split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as { msg: string; address?: string });
    const metrics = lines.find((line) => line.msg === 'metrics and dashboard listening')?.address;
    expect((await fetch(`http://${metrics}/dashboard/app.js`)).status).toBe(200);
    const interfaces = await runProgram(process.execPath, [bin, 'interfaces', '--address', address], { cwd: app });
    expect([interfaces.code, interfaces.stderr]).toEqual([0, '']);
    expect(interfaces.stdout).toContain('tls-certificates');

    // The checkpoint thread runs from the package too: it reports after every 64 commits.
    const clients = clientsOf(address);
    const relation = await setupRelation(clients, { requesters: ['web/0'], responders: ['pki/0'] });
    for (let i = 0; i < 70; i++) await clients.requester('web/0').call('CreateRequest', { relation_id: relation, fields: struct({ common_name: `n${i}.example` }) });
    clients.close();
    const walFrames = async () => /^relgate_sqlite_wal_frames (\d+)$/m.exec(await (await fetch(`http://${metrics}/metrics`)).text())?.[1];
    // No event announces the report: poll the gauge for it.
    const deadline = Date.now() + 10_000;
    while (!(Number(await walFrames()) > 0) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    expect(Number(await walFrames())).toBeGreaterThan(0);
    expect(serve?.log()).not.toContain('Warning');
  });

  it("serves a project's own script through relgate/client: a Call answered over a watch, and errors it can test for", async () => {
    const address = serve?.address as string;
    const clients = clientsOf(address);
    const relation = await setupRelation(clients);
    clients.close();
    writeFileSync(
      path.join(app, 'call.mjs'),
      `import { connect, isRelgateError } from 'relgate/client';
const [address, relation] = process.argv.slice(2);
const ca = connect(address, { unit: 'ca/0' });
const web = connect(address, { unit: 'webapp/0' });
const responder = ca.responder('tls-certificates', { relation });
const requester = web.requester('tls-certificates', { relation });
const watch = responder.watch({ filter: 'new' });
for await (const event of watch) {
  if (event.type === 'SNAPSHOT_COMPLETE') {
    requester.call({ common_name: 'package.example' }, { deadline: Date.now() + 10_000 }).then(async ({ response }) => {
      const missing = await web.requester('tls-certificates', { relation: 'tls-certificates:999999' }).create({ common_name: 'x' }).catch((error) => error);
      console.log(JSON.stringify({ fields: response.fields, missing: isRelgateError(missing) ? [missing.code, missing.reason] : String(missing) }));
      watch.close();
    });
  }
  if (event.type === 'ADDED' && event.request) await responder.respond(event.request, { key: 'K', cert: 'for ' + event.request.fields.common_name });
}
ca.close();
web.close();
`,
    );
    const run = await runProgram(process.execPath, ['call.mjs', address, relation], { cwd: app });
    expect([run.code, run.stderr]).toEqual([0, '']);
    expect(JSON.parse(run.stdout)).toEqual({ fields: { key: 'K', cert: 'for package.example' }, missing: [Code.NOT_FOUND, 'RELATION_NOT_FOUND'] });
  });

  it("type-checks a project's TypeScript against its declarations, interfaces of its own included", async () => {
    writeFileSync(
      path.join(app, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { module: 'NodeNext', target: 'ES2023', strict: true, noEmit: true, types: ['node'] }, files: ['check.ts'] }),
    );
    writeFileSync(
      path.join(app, 'check.ts'),
      `import { connect, isRelgateError } from 'relgate/client';

declare module 'relgate/gen/interfaces' {
  interface Interfaces {
    mysql: { version: 1; request: { database: string }; response: { host: string; port: number } };
  }
}

const connection = connect('127.0.0.1:50051', { unit: 'web/0' });
const created = connection.requester('mysql').create({ database: 'orders' });
// @ts-expect-error: the mysql interface's request has no "table"
connection.requester('mysql').create({ table: 'orders' });
// @ts-expect-error: tls-certificates requires common_name
connection.requester('tls-certificates').create({ sans: [] });
export const length: Promise<number> = created.then(async (request) => (await connection.requester('mysql').get(request.request_id)).fields.database.length);
export const known = (error: unknown): boolean => isRelgateError(error);
`,
    );
    const checked = await runProgram(process.execPath, [path.join(PROJECT_DIR, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', app], { cwd: app, timeoutMs: 60_000 });
    expect(checked.stdout + checked.stderr).toBe('');
    expect(checked.code).toBe(0);
  });
});
