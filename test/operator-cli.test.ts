// The operator commands, run as the real `relgate` command line in child
// processes against a real gateway: tables, --json, live watches, calls,
// credentials and TLS, and exit codes equal to the gRPC status code.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RESPONSE_FAILED } from '../src/cli/operator.ts';
import { MAIN } from '../src/cli/serve-process.ts';
import { Code } from '../src/errors.ts';
import { PROJECT_DIR } from '../src/protos.ts';
import { shell, spawnServe, type ServeProcess } from './helpers/grpcurl.ts';
import { Rpc, setupRelation, startHarness, struct, v1, type Harness } from './helpers/harness.ts';
import { Feed, requestEvent, snapshotComplete, watchReady } from './helpers/streams.ts';
import { makeCertificates } from './helpers/tls.ts';
import { must } from './helpers/world.ts';

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function start(args: string[], extraEnv: Record<string, string> = {}): ChildProcess {
  // Only the flags given here count, not the environment of the test run.
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^RELGATE_(ADDRESS|UNIT|TOKEN|TOKEN_FILE|TLS_CA)$/.test(name)));
  return spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...env, ...extraEnv } });
}

function relgate(args: string[], env: Record<string, string> = {}): Promise<Result> {
  const child = start(args, env);
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

/** A long-running command's output lines as a feed, and its exit. */
function follow(args: string[]): { lines: Feed<string>; child: ChildProcess; exited: Promise<number | null>; stderr: () => string } {
  const child = start(args);
  const lines = new Feed<string>(`relgate ${args.join(' ')}`);
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => lines.push(line));
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { lines, child, exited, stderr: () => stderr };
}

describe('operator CLI', () => {
  let h: Harness;
  let relationId: string;
  let address: string[];

  beforeAll(async () => {
    h = await startHarness();
    relationId = await setupRelation(h);
    address = ['--address', h.server.address];
  });
  afterAll(() => h?.close());

  it('lists interfaces as a table and as JSON', async () => {
    const table = await relgate(['interfaces', ...address]);
    expect(table.code).toBe(0);
    const [header, ...rows] = table.stdout.trimEnd().split('\n');
    expect(header).toMatch(/^NAME\s+VERSION\s+REQUEST\s+RESPONSE\s+DESCRIPTION$/);
    expect(rows.find((row) => row.startsWith('tls-certificates '))).toMatch(/^tls-certificates\s+1\s+common_name\*,sans\s+key\*,cert\*,ca\s+A certificate authority/);

    const json = await relgate(['interfaces', '--json', ...address]);
    expect(json.code).toBe(0);
    const interfaces = JSON.parse(json.stdout) as { name: string; version: number }[];
    expect(interfaces.map((i) => i.name)).toEqual(['http', 'tls-certificates']);
  });

  it('lists relations with their units', async () => {
    const table = await relgate(['relations', ...address]);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(new RegExp(`^${relationId}\\s+tls-certificates v1\\s+webapp:certificates\\s+ca:certificates\\s+webapp/0 \\(requester\\), ca/0 \\(responder\\)$`, 'm'));
    const json = JSON.parse((await relgate(['relations', '--json', '--interface', 'http', ...address])).stdout);
    expect(json).toEqual([]);
  });

  it('lists requests from the side the unit acts on, all or only the new ones', async () => {
    const { request } = await h.requester('webapp/0').call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: 'list.example' }) });
    const asResponder = await relgate(['requests', '--relation', relationId, '--unit', 'ca/0', '--new', ...address]);
    expect(asResponder.code).toBe(0);
    expect(asResponder.stdout).toMatch(new RegExp(`^${request.request_id}\\s+PENDING\\s+webapp/0\\s+any\\s+0/1\\s+\\S+Z\\s+\\{"common_name":"list.example"\\}$`, 'm'));

    const asRequester = JSON.parse((await relgate(['requests', '--relation', relationId, '--unit', 'webapp/0', '--json', ...address])).stdout) as { request_id: string; fields: unknown; create_time: string }[];
    const listed = asRequester.find((r) => r.request_id === request.request_id);
    expect(listed?.fields).toEqual({ common_name: 'list.example' });
    expect(listed?.create_time).toMatch(/^\d{4}-\d\d-\d\dT.*Z$/);

    await h.responder('ca/0').call('Respond', { request_id: request.request_id, fields: struct({ key: 'K', cert: 'C' }) });
    const none = await relgate(['requests', '--relation', relationId, '--unit', 'ca/0', '--new', '--json', ...address]);
    expect(JSON.parse(none.stdout).map((r: { request_id: string }) => r.request_id)).not.toContain(request.request_id);
  });

  it('exits with the gRPC status code and prints the status', async () => {
    const [missing, anonymous, invalid, notJson, usage, unreachable, noUnit] = await Promise.all([
      relgate(['requests', '--relation', 'tls-certificates:999', '--unit', 'webapp/0', ...address]),
      relgate(['requests', '--relation', relationId, ...address]),
      relgate(['call', '--relation', relationId, '--unit', 'webapp/0', '--fields', '{"sans": ["x"]}', ...address]),
      relgate(['call', '--relation', relationId, '--unit', 'webapp/0', '--fields', '{oops', ...address]),
      relgate(['requests', ...address]),
      relgate(['interfaces', '--address', '127.0.0.1:1', '--timeout', '2000']),
      // An empty --to (an unset variable, say) is refused, not taken for "any responder".
      relgate(['call', '--relation', relationId, '--unit', 'webapp/0', '--fields', '{"common_name": "nobody.example"}', '--to', '', '--wait-for-responders', ...address]),
    ]);
    expect([noUnit.code, noUnit.stderr]).toEqual([Code.INVALID_ARGUMENT, expect.stringContaining('delivery.unit')]);
    for (const args of [['nosuchcommand'], ['--bogus'], ['interfaces', '--timeout', '1e3'], ['interfaces', '--timeout', ''], ['interfaces', '--timeout', '2147483001'], ['watch', 'requests', '--relation', relationId, '--after-revision', '0x10']]) {
      expect((await relgate([...args, ...address])).code, args.join(' ')).toBe(Code.INVALID_ARGUMENT);
    }
    expect(missing.code).toBe(Code.NOT_FOUND);
    expect(missing.stderr).toMatch(/^NOT_FOUND: .*tls-certificates:999.* \(RELATION_NOT_FOUND\)$/m);
    expect(anonymous.code).toBe(Code.UNAUTHENTICATED);
    expect(invalid.code).toBe(Code.INVALID_ARGUMENT);
    expect(invalid.stderr).toContain('fields.common_name');
    expect(notJson.code).toBe(Code.INVALID_ARGUMENT);
    expect(notJson.stderr).toMatch(/^INVALID_ARGUMENT: --fields is not JSON/);
    expect(usage.code).toBe(Code.INVALID_ARGUMENT);
    expect(usage.stderr).toContain("required option '--relation <id>' not specified");
    expect(unreachable.code).toBe(Code.UNAVAILABLE);
  });

  it('watches requests live, one JSON line per event, and ends cleanly on SIGINT', async () => {
    const watcher = follow(['watch', 'requests', '--relation', relationId, '--unit', 'ca/0', '--new', '--json', ...address]);
    const complete = JSON.parse(await watcher.lines.next((line) => snapshotComplete(JSON.parse(line))));
    expect(complete.type).toBe('EVENT_TYPE_SNAPSHOT_COMPLETE');
    const { request } = await h.requester('webapp/0').call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: 'watched.example' }) });
    const added = JSON.parse(await watcher.lines.next((line) => requestEvent('ADDED', request.request_id)(JSON.parse(line))));
    expect(added.request.fields).toEqual({ common_name: 'watched.example' });
    expect(added.revision).toBe(request.revision);
    watcher.child.kill('SIGINT');
    expect(await watcher.exited).toBe(0);
  });

  it('watches responses live as lines of text', async () => {
    const watcher = follow(['watch', 'responses', '--relation', relationId, '--unit', 'webapp/0', '--now', ...address]);
    // With --now there is no snapshot: wait until the gateway counts the watch.
    await expect.poll(() => h.server.hub.isWatched(relationId, 'requester', 'webapp/0'), { timeout: 10_000 }).toBe(true);
    const { request } = await h.requester('webapp/0').call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: 'text.example' }) });
    const { response } = await h.responder('ca/0').call('Respond', { request_id: request.request_id, fields: struct({ key: 'K', cert: 'C' }) });
    const line = await watcher.lines.next((text) => text.includes(request.request_id) && text.includes('code 0'));
    expect(line).toBe(`${response.revision}\tADDED\t${relationId}\t${request.request_id}\tcode 0\tby ca/0\t{"key":"K","cert":"C"}`);
    watcher.child.kill('SIGTERM');
    expect(await watcher.exited).toBe(0);
  });

  it('calls: creates a request and prints the response once a responder answers', async () => {
    const responder = h.responder('ca/0');
    const incoming = await watchReady(responder, { relation_id: relationId, filter: 'REQUEST_FILTER_NEW' });
    const called = relgate(['call', '--relation', relationId, '--unit', 'webapp/0', '--fields', '{"common_name": "call.example"}', '--json', ...address]);
    const event = await incoming.events.next((e) => requestEvent('ADDED')(e) && e.request.fields.fields.common_name.stringValue === 'call.example');
    await responder.call('Respond', { request_id: event.request.request_id, fields: struct({ key: 'K', cert: 'C' }) });
    const result = await called;
    expect(result.code).toBe(0);
    const { request, response } = JSON.parse(result.stdout);
    expect(request.request_id).toBe(event.request.request_id);
    expect(request.state).toBe('REQUEST_STATE_ANSWERED');
    expect(response).toMatchObject({ responder_unit: 'ca/0', code: 0, fields: { key: 'K', cert: 'C' } });

    // An answer reporting a failure is printed, and is no success for a script.
    const refused = relgate(['call', '--relation', relationId, '--unit', 'webapp/0', '--fields', '{"common_name": "refused.example"}', ...address]);
    const second = await incoming.events.next((e) => requestEvent('ADDED')(e) && e.request.fields.fields.common_name.stringValue === 'refused.example');
    await responder.call('Respond', { request_id: second.request.request_id, code: 7, error: 'policy forbids it' });
    const failed = await refused;
    expect([failed.code, failed.stdout]).toEqual([RESPONSE_FAILED, expect.stringMatching(/ca\/0\s+7 policy forbids it/)]);
    incoming.cancel();
  });

  it('prints field values as stored, also one shaped like a Timestamp; ends quietly when its reader goes away', async () => {
    const own = await startHarness({ interfaces: [path.join(import.meta.dirname, 'interfaces')] });
    try {
      const relation = await setupRelation(own, { iface: 'values', requesters: ['app/0'], responders: ['svc/0'] });
      const fields = { name: 'span', delay: { seconds: '5', nanos: 0 } };
      for (let i = 0; i < 300; i++) await own.requester('app/0').call('CreateRequest', { relation_id: relation, fields: struct({ ...fields, name: `span${i}` }) });
      const at = ['--relation', relation, '--unit', 'app/0', '--address', own.server.address];
      const listed = JSON.parse((await relgate(['requests', ...at, '--json'])).stdout) as { fields: unknown }[];
      expect(listed[0]?.fields).toEqual({ ...fields, name: 'span0' });
      const piped = await shell(`${JSON.stringify(process.execPath)} ${JSON.stringify(MAIN)} requests ${at.join(' ')} --json | head -c 100 > /dev/null; echo "exit \${PIPESTATUS[0]}"`);
      expect(piped.stdout.trim()).toBe('exit 0');
      expect(piped.stderr).toBe('');
    } finally {
      await own.close();
    }
  });

  it('uses tokens and TLS like any client', async () => {
    const certs = makeCertificates(h.dir, []);
    const admin = 'operator-admin-token';
    const secure = await startHarness({ auth: 'token', adminToken: admin, tlsCert: certs.serverCert, tlsKey: certs.serverKey });
    try {
      const tokenFile = path.join(h.dir, 'admin.token');
      writeFileSync(tokenFile, `${admin}\n`);
      const at = ['--address', `localhost:${secure.server.port}`, '--tls-ca', certs.ca];
      const ok = await relgate(['relations', '--token-file', tokenFile, '--json', ...at]);
      expect(ok.stderr).toBe('');
      expect(ok.code).toBe(0);
      expect(JSON.parse(ok.stdout)).toEqual([]);
      expect((await relgate(['relations', ...at])).code).toBe(Code.UNAUTHENTICATED);
      expect((await relgate(['relations', '--token', 'wrong', ...at])).code).toBe(Code.UNAUTHENTICATED);
      // A flag given beats a variable set; the variable serves when no flag is given.
      expect((await relgate(['relations', '--token-file', tokenFile, ...at], { RELGATE_TOKEN: 'wrong' })).code).toBe(0);
      expect((await relgate(['relations', ...at], { RELGATE_TOKEN_FILE: tokenFile })).code).toBe(0);
      // Plaintext to a TLS port never connects.
      expect((await relgate(['relations', '--token', admin, '--timeout', '2000', '--address', `localhost:${secure.server.port}`])).code).toBe(Code.UNAVAILABLE);
    } finally {
      await secure.close();
    }
  });
});

/** The ```sh blocks of a README section, each with the plain ``` block that follows it (its output), if any. */
function readmeExamples(heading: string): { command: string; output: string | undefined }[] {
  const markdown = readFileSync(path.join(PROJECT_DIR, 'README.md'), 'utf8');
  const start = markdown.indexOf(`\n${heading}\n`);
  if (start < 0) throw new Error(`README.md has no "${heading}" section`);
  const end = markdown.indexOf('\n## ', start + 1);
  const blocks = [...markdown.slice(start, end).matchAll(/^```(\w*)\n([\s\S]*?)^```$/gm)].map((match) => ({ lang: match[1], text: (match[2] ?? '').trimEnd() }));
  return blocks.flatMap((block, i) => (block.lang === 'sh' ? [{ command: block.text, output: blocks[i + 1]?.lang === '' ? blocks[i + 1]?.text : undefined }] : []));
}

const WALKTHROUGH_REQUEST = '6f1c2a4e-8b3d-4f5a-9c7e-2d1b0a9f8e7d';
const README_METRICS = '127.0.0.1:9464';
/** What differs from run to run: times and generated request ids. */
const normalize = (text: string) => text.replace(/\d{4}-\d\d-\d\dT[\d:.]+Z/g, '<time>').replace(/[0-9a-f]{8}-[0-9a-f]{4}-[47][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}/g, (id) => (id === WALKTHROUGH_REQUEST ? id : '<id>'));

describe('README "Operating relgate", verbatim', () => {
  let serve: ServeProcess;
  let metricsAddress: string;
  const examples = readmeExamples('## Operating relgate');
  const example = (prefix: string) => {
    const found = examples.find((e) => e.command.startsWith(prefix));
    if (!found) throw new Error(`README "Operating relgate" has no command starting with "${prefix}"`);
    return found;
  };
  /** Runs a README command line in the project directory, talking to this test's gateway. */
  const run = (command: string) => shell(`RELGATE_ADDRESS=${serve.address} ${command.replaceAll(README_METRICS, metricsAddress)}`, 20_000);

  beforeAll(async () => {
    serve = await spawnServe(['--listen', '127.0.0.1:0', '--db', ':memory:', '--metrics-listen', '127.0.0.1:0']);
    const listening = serve.log().split('\n').find((line) => line.includes('"metrics and dashboard listening"'));
    metricsAddress = (JSON.parse(must(listening, 'the metrics listener log line')) as { address: string }).address;
    // The walkthrough, up to the request ca/0 has not answered.
    const clients = { registry: rpc('RegistryService', serve.address) };
    for (const name of ['webapp', 'ca']) await clients.registry.call('RegisterApplication', { name });
    await clients.registry.call('RegisterUnit', { name: 'webapp/0', ingress_address: '10.0.0.10', egress_subnets: ['10.0.0.0/24'] });
    await clients.registry.call('RegisterUnit', { name: 'ca/0', ingress_address: '10.0.1.10', labels: { zone: 'a' } });
    await clients.registry.call('CreateRelation', { interface: 'tls-certificates', requester_application: 'webapp', requester_endpoint: 'certificates', responder_application: 'ca', responder_endpoint: 'certificates' });
    for (const unit of ['webapp/0', 'ca/0']) await clients.registry.call('JoinRelation', { relation_id: 'tls-certificates:1', unit });
    await rpc('RequesterService', serve.address, 'webapp/0').call('CreateRequest', {
      relation_id: 'tls-certificates:1',
      request_id: WALKTHROUGH_REQUEST,
      fields: struct({ common_name: 'web.example.com', sans: ['www.example.com'] }),
    });
  }, 60_000);
  afterAll(() => serve?.stop());

  it('starts the gateway with the metrics listener', () => {
    expect(example('npm start').command).toBe(`npm start -- --db :memory: --metrics-listen ${README_METRICS}`);
  });

  it('shows the metrics it says', async () => {
    const { command, output } = example('curl');
    const result = await run(command);
    expect(result.code).toBe(0);
    expect(result.stdout.trimEnd()).toBe(output);
  });

  it('lists relations and waiting requests as shown', async () => {
    for (const prefix of ['node src/cli/main.ts relations', 'node src/cli/main.ts requests']) {
      const { command, output } = example(prefix);
      const result = await run(command);
      expect(result.stderr).toBe('');
      expect(normalize(result.stdout.trimEnd())).toBe(normalize(must(output, `output of ${prefix}`)));
    }
  });

  it('watches and calls as shown', async () => {
    const watched = example('node src/cli/main.ts watch');
    const live = spawn('bash', ['-c', `RELGATE_ADDRESS=${serve.address} exec ${watched.command}`], { cwd: PROJECT_DIR, stdio: ['ignore', 'pipe', 'pipe'] });
    const lines = new Feed<string>('README watch');
    createInterface({ input: live.stdout }).on('line', (line) => lines.push(line));
    const exited = new Promise((resolve) => live.on('close', resolve));
    await lines.next((line) => line.includes('SNAPSHOT_COMPLETE'));
    expect(lines.items.join('\n')).toBe(must(watched.output, 'watch output'));

    const called = example('node src/cli/main.ts call');
    const result = run(called.command);
    const added = await lines.next((line) => line.includes('ADDED') && line.includes('api.example.com'));
    const requestId = must(added.split('\t')[3], 'request id column');
    await rpc('ResponderService', serve.address, 'ca/0').call('Respond', { request_id: requestId, fields: struct({ key: '-----BEGIN PRIVATE KEY-----...', cert: '-----BEGIN CERTIFICATE-----...' }) });
    const answer = await result;
    expect(answer.stderr).toBe('');
    expect(answer.code).toBe(0);
    expect(normalize(answer.stdout.trimEnd())).toBe(normalize(must(called.output, 'call output')));
    live.kill('SIGINT');
    expect(await exited).toBe(0);
  });
});

function rpc(service: string, address: string, unit?: string): Rpc {
  const Client = v1[service];
  if (!Client) throw new Error(`no ${service}`);
  return new Rpc(new Client(address, grpc.credentials.createInsecure()), unit);
}
