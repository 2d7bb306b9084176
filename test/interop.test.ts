// The TypeScript gateway with the Python and Go example clients, every one a
// real process: a Python responder and a Go requester create, watch, respond
// and read, survive a gateway restart, make a synchronous Call and read rich
// errors, passing unit tokens in authenticated mode; the other way round in
// open mode; and both read responses that come in several pages.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import { spawnServe, type ServeProcess } from './helpers/grpcurl.ts';
import { Rpc, v1 } from './helpers/harness.ts';
import { makeCertificates } from './helpers/tls.ts';
import { go, preparePolyglot, python, runOne, startClient, type ClientProcess, type Line } from './helpers/polyglot.ts';

const ADMIN_TOKEN = 'rga_interop-admin-token';
const INVALID_ARGUMENT = 3;

beforeAll(preparePolyglot, 15 * 60_000);

/** A registry client; with the admin token in authenticated mode. */
function registryClient(address: string, adminToken?: string, credentials = grpc.credentials.createInsecure()): Rpc {
  const registry = new Rpc(new v1.RegistryService!(address, credentials));
  if (adminToken) registry.metadata.set('authorization', `Bearer ${adminToken}`);
  return registry;
}

/** Registers webapp/0 and ca/0, relates them over tls-certificates and joins both; returns the relation id and unit tokens. */
async function relateWebappAndCa(registry: Rpc): Promise<{ relationId: string; tokens: Record<string, string> }> {
  const tokens: Record<string, string> = {};
  for (const app of ['webapp', 'ca']) {
    await registry.call('RegisterApplication', { name: app });
    tokens[app] = (await registry.call('RegisterUnit', { name: `${app}/0`, ingress_address: '127.0.0.1' })).token;
  }
  const { relation } = await registry.call('CreateRelation', {
    interface: 'tls-certificates',
    requester_application: 'webapp',
    requester_endpoint: 'certificates',
    responder_application: 'ca',
    responder_endpoint: 'certificates',
  });
  for (const unit of ['webapp/0', 'ca/0']) await registry.call('JoinRelation', { relation_id: relation.id, unit });
  return { relationId: relation.id, tokens };
}

const answeredTo = (requestId: string) => (line: Line) => line.event === 'answered' && line.request_id === requestId;

describe('authenticated mode: Python responder, Go requester', () => {
  let dir: string;
  let serve: ServeProcess;
  let port: string;
  let relationId: string;
  let responder: ClientProcess;
  const tokenFile = (app: string) => path.join(dir, `${app}.token`);
  const serveArgs = (listen: string) => ['--listen', listen, '--db', path.join(dir, 'relgate.db'), '--auth', 'token', '--admin-token-file', path.join(dir, 'admin.token'), '--shutdown-grace', '500'];
  /** The Go requester acting as webapp/0 with its token. */
  const goRequester = (...args: string[]) => go('requester', '-target', serve.address, '-token-file', tokenFile('webapp'), ...args);
  const fields = (commonName: string) => JSON.stringify({ common_name: commonName, sans: [`www.${commonName}`] });
  const create = async (commonName: string) => (await runOne(goRequester('create', '-relation', relationId, '-fields', fields(commonName)))).request;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relgate-interop-'));
    writeFileSync(path.join(dir, 'admin.token'), `${ADMIN_TOKEN}\n`);
    serve = await spawnServe(serveArgs('127.0.0.1:0'));
    port = serve.address.split(':').pop() as string;
    const registry = registryClient(serve.address, ADMIN_TOKEN);
    const related = await relateWebappAndCa(registry);
    registry.client.close();
    relationId = related.relationId;
    for (const [app, token] of Object.entries(related.tokens)) writeFileSync(tokenFile(app), `${token}\n`);
    responder = startClient(python('responder', '--target', serve.address, '--token-file', tokenFile('ca'), '--relation', relationId));
    await responder.next((line) => line.event === 'live');
  });

  afterAll(async () => {
    await responder?.stop();
    await serve?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('(a) Go creates, the Python responder watches and responds, Go reads the response', async () => {
    const request = await create('web.example.com');
    expect(request).toMatchObject({ relation_id: relationId, source_unit: 'webapp/0', state: 'REQUEST_STATE_PENDING', fields: { common_name: 'web.example.com' } });

    const answered = await responder.next(answeredTo(request.request_id));
    expect(answered.common_name).toBe('web.example.com');
    expect(answered.request_revision).toBe(Number(request.revision));

    const { responses } = await runOne(goRequester('responses', '-request-id', request.request_id));
    // Go reads exactly what Python stored.
    expect(responses).toEqual([answered.response]);
    expect(responses[0]).toMatchObject({ request_id: request.request_id, responder_unit: 'ca/0' });
    expect(Object.keys(responses[0].fields).sort()).toEqual(['ca', 'cert', 'key']);
    expect(responses[0].fields.cert).toMatch(/^-----BEGIN CERTIFICATE-----\n/);
  });

  test('(b2) responders watching every relation, Python and Go, answer what already waits on a relation their unit joins later', async () => {
    const watchers = [
      startClient(python('responder', '--target', serve.address, '--token-file', tokenFile('ca'))),
      startClient(go('responder', '-target', serve.address, '-token-file', tokenFile('ca'))),
    ];
    try {
      await Promise.all(watchers.map((watcher) => watcher.next((line) => line.event === 'live')));
      const registry = registryClient(serve.address, ADMIN_TOKEN);
      const { relation } = await registry.call('CreateRelation', {
        interface: 'tls-certificates',
        requester_application: 'webapp',
        requester_endpoint: 'later',
        responder_application: 'ca',
        responder_endpoint: 'later',
      });
      await registry.call('JoinRelation', { relation_id: relation.id, unit: 'webapp/0' });
      const waiting = (await runOne(goRequester('create', '-relation', relation.id, '-fields', fields('later.example.com')))).request;
      await registry.call('JoinRelation', { relation_id: relation.id, unit: 'ca/0' });
      registry.client.close();
      // Each watch ends just before the join and starts over from a snapshot, which has the request: one of them answers it.
      for (const watcher of watchers) await watcher.next((line) => line.event === 'cut');
      const answered = await Promise.any(watchers.map((watcher) => watcher.next(answeredTo(waiting.request_id))));
      expect(answered.common_name).toBe('later.example.com');
      const { responses } = await runOne(goRequester('responses', '-request-id', waiting.request_id));
      expect(responses).toHaveLength(1);
    } finally {
      await Promise.all(watchers.map((watcher) => watcher.stop()));
    }
  });

  test('(b) watches cut by a gateway restart resume after their last revision and lose nothing', async () => {
    // The Go requester watches responses from just before this one's: the
    // first response it prints shows its stream is open before the restart.
    const before = await create('before.example.com');
    const beforeAnswer = await responder.next(answeredTo(before.request_id));
    const watchFrom = String(Number(beforeAnswer.response.revision) - 1);
    const watcher = startClient(goRequester('watch', '-relation', relationId, '-after-revision', watchFrom, '-count', '4'));
    onTestFinished(() => watcher.stop());
    expect((await watcher.next((line) => line.event === 'response')).response).toEqual(beforeAnswer.response);

    // The Python responder is frozen across the restart, so the requests made
    // meanwhile can only reach it through its resumed watch.
    responder.pause();
    await serve.stop();
    serve = await spawnServe(serveArgs(`127.0.0.1:${port}`));
    const goCut = await watcher.next((line) => line.event === 'cut');
    expect(goCut.code).toBe('Unavailable');
    const created = [await create('one.example.com'), await create('two.example.com'), await create('three.example.com')];
    responder.resume();

    const cut = await responder.next((line) => line.event === 'cut');
    expect(cut.code).toBe('UNAVAILABLE');
    const resumed = await responder.next((line) => line.event === 'watching');
    expect(resumed).toMatchObject({ start: 'WATCH_START_AFTER_REVISION', after_revision: cut.revision });
    for (const request of created) {
      expect(Number(request.create_revision)).toBeGreaterThan(cut.revision);
      await responder.next(answeredTo(request.request_id));
    }

    // Go's watch resumed after its own last revision: every response once, in order.
    expect(await watcher.exited).toBe(0);
    const lines = watcher.lines.items;
    const goResumed = lines[lines.indexOf(goCut) + 1];
    expect(goResumed).toMatchObject({ event: 'watching', start: 'WATCH_START_AFTER_REVISION', after_revision: goCut.revision });
    const seen = lines.filter((line) => line.event === 'response').map((line) => line.response.request_id);
    expect(seen).toEqual([before.request_id, ...created.map((request) => request.request_id)]);
    // Nothing was answered twice by the responder.
    const answeredIds = responder.lines.items.filter((line) => line.event === 'answered').map((line) => line.request_id);
    expect(new Set(answeredIds).size).toBe(answeredIds.length);
  });

  test('(c) a synchronous Call from Go is answered by the watching Python responder', async () => {
    const line = await runOne(goRequester('call', '-relation', relationId, '-fields', fields('call.example.com'), '-timeout', '15s'));
    expect(line.event).toBe('answered');
    expect(line.request).toMatchObject({ source_unit: 'webapp/0', state: 'REQUEST_STATE_ANSWERED', response_count: 1 });
    const answered = await responder.next(answeredTo(line.request.request_id));
    expect(line.response).toEqual(answered.response);
    expect(line.response.fields.cert).toBe(answered.response.fields.cert);
  });

  test('(d) a bad request: Python (grpc_status.rpc_status.from_call) and Go (status.FromError) read the same rich error', async () => {
    const bad = JSON.stringify({ sans: ['ok.example.com', 7] });
    const pythonError = await runOne(python('requester', '--target', serve.address, '--token-file', tokenFile('webapp'), 'create', '--relation', relationId, '--fields', bad), 1);
    const goError = await runOne(goRequester('create', '-relation', relationId, '-fields', bad), 1);

    // from_call succeeded, so the details' code and message equal the call's.
    expect(pythonError).toMatchObject({ event: 'error', code: 'INVALID_ARGUMENT', code_value: INVALID_ARGUMENT });
    expect(pythonError.status).toEqual({ code: pythonError.code_value, message: pythonError.message });
    expect(goError).toMatchObject({ event: 'error', code: 'InvalidArgument', code_value: INVALID_ARGUMENT, message: pythonError.message });
    for (const error of [pythonError, goError]) {
      expect(error.error_info).toMatchObject({ reason: 'INVALID_ARGUMENT', domain: 'relgate.dev' });
      expect(error.field_violations).toEqual([
        { field: 'fields.sans[1]', description: expect.stringContaining('string') },
        { field: 'fields.common_name', description: expect.stringContaining('required') },
      ]);
    }
    expect(goError.field_violations).toEqual(pythonError.field_violations);
  });

  test('an error echoing much non-ASCII input stays within what grpcio reads: Python gets INVALID_ARGUMENT and its details, not a lost stream', async () => {
    // Twenty unknown fields, each named with 300 CJK characters: 9 bytes each once percent-encoded in grpc-message.
    const fields = Object.fromEntries([['common_name', 'x'], ...Array.from({ length: 20 }, (_, i) => [`${String(i).padStart(2, '0')}${'中'.repeat(300)}`, 1])]);
    for (let attempt = 0; attempt < 5; attempt++) {
      const error = await runOne(python('requester', '--target', serve.address, '--token-file', tokenFile('webapp'), 'create', '--relation', relationId, '--fields', JSON.stringify(fields)), 1);
      expect(error).toMatchObject({ event: 'error', code: 'INVALID_ARGUMENT', error_info: { reason: 'INVALID_ARGUMENT' } });
      expect(error.status).toEqual({ code: error.code_value, message: error.message });
      expect(error.field_violations.length).toBeGreaterThan(0);
      expect(error.message).toMatch(/\(and \d+ more problems not listed\)/);
    }
  });

  test('credentials: a wrong token is UNAUTHENTICATED, a unit in the wrong role PERMISSION_DENIED, in both languages', async () => {
    const wrong = path.join(dir, 'wrong.token');
    writeFileSync(wrong, 'rgu_not-a-real-token\n');
    const requestId = '6f1c2a4e-8b3d-4f5a-9c7e-2d1b0a9f8e7d';
    const pythonError = await runOne(python('requester', '--target', serve.address, '--token-file', wrong, 'responses', '--request-id', requestId), 1);
    const goError = await runOne(go('requester', '-target', serve.address, '-token-file', wrong, 'responses', '-request-id', requestId), 1);
    expect(pythonError).toMatchObject({ code: 'UNAUTHENTICATED', error_info: { reason: 'INVALID_TOKEN' } });
    expect(goError).toMatchObject({ code: 'Unauthenticated', error_info: { reason: 'INVALID_TOKEN' } });

    // ca/0's own token, but ca is the responder of the relation.
    const asCa = await runOne(go('requester', '-target', serve.address, '-token-file', tokenFile('ca'), 'create', '-relation', relationId, '-fields', fields('x.example.com')), 1);
    expect(asCa).toMatchObject({ code: 'PermissionDenied', error_info: { reason: 'NOT_A_MEMBER' } });
  });
});

describe('open mode: Go responder, Python requester', () => {
  let serve: ServeProcess;
  let relationId: string;
  let responder: ClientProcess;

  beforeAll(async () => {
    serve = await spawnServe(['--listen', '127.0.0.1:0', '--db', ':memory:']);
    const registry = registryClient(serve.address);
    relationId = (await relateWebappAndCa(registry)).relationId;
    registry.client.close();
    responder = startClient(go('responder', '-target', serve.address, '-unit', 'ca/0', '-relation', relationId));
    await responder.next((line) => line.event === 'live');
  });

  afterAll(async () => {
    await responder?.stop();
    await serve?.stop();
  });

  test('units named in relgate-unit metadata: a Python Call answered by the Go responder, read back from Python', async () => {
    const requester = (...args: string[]) => python('requester', '--target', serve.address, '--unit', 'webapp/0', ...args);
    const call = await runOne(requester('call', '--relation', relationId, '--fields', JSON.stringify({ common_name: 'open.example.com' })));
    expect(call.request).toMatchObject({ source_unit: 'webapp/0', state: 'REQUEST_STATE_ANSWERED' });
    const answered = await responder.next(answeredTo(call.request.request_id));
    expect(answered.common_name).toBe('open.example.com');
    expect(call.response).toEqual(answered.response);

    const { responses } = await runOne(requester('responses', '--request-id', call.request.request_id));
    expect(responses).toEqual([answered.response]);
  });
});

describe('responses over several pages: Python and Go read them all', () => {
  let serve: ServeProcess;

  beforeAll(async () => {
    serve = await spawnServe(['--listen', '127.0.0.1:0', '--db', ':memory:', '--max-send-bytes', String(64 * 1024)]);
  });

  afterAll(async () => {
    await serve?.stop();
  });

  test('the requesters follow next_page_token past the first page of a selector request with large answers', async () => {
    const registry = registryClient(serve.address);
    const { relationId } = await relateWebappAndCa(registry);
    const units = ['ca/0', 'ca/1', 'ca/2', 'ca/3'];
    for (const unit of units.slice(1)) {
      await registry.call('RegisterUnit', { name: unit, ingress_address: '127.0.0.1' });
      await registry.call('JoinRelation', { relation_id: relationId, unit });
    }
    registry.client.close();
    const webapp = new Rpc(new v1.RequesterService!(serve.address, grpc.credentials.createInsecure()), 'webapp/0');
    const fields = { fields: { common_name: { stringValue: 'paged.example.com' } } };
    const { request } = await webapp.call('CreateRequest', { relation_id: relationId, fields, delivery: { mode: 'DELIVERY_MODE_SELECTOR', selector: '' } });
    // Some 20 KB each: a page of the 64 KiB gateway holds one.
    for (const unit of units) {
      const ca = new Rpc(new v1.ResponderService!(serve.address, grpc.credentials.createInsecure()), unit);
      await ca.call('Respond', { request_id: request.request_id, fields: { fields: { key: { stringValue: unit }, cert: { stringValue: 'x'.repeat(20_000) } } } });
      ca.client.close();
    }
    const first = await webapp.call('ListResponses', { request_id: request.request_id });
    expect([first.responses.length, first.next_page_token !== '']).toEqual([1, true]);
    webapp.client.close();
    const fromPython = await runOne(python('requester', '--target', serve.address, '--unit', 'webapp/0', 'responses', '--request-id', request.request_id));
    const fromGo = await runOne(go('requester', '-target', serve.address, '-unit', 'webapp/0', 'responses', '-request-id', request.request_id));
    expect(fromPython.responses.map((response: { responder_unit: string }) => response.responder_unit)).toEqual(units);
    expect(fromGo.responses).toEqual(fromPython.responses);
  });
});

describe('mutual TLS: the client certificate names the unit, in Python and Go', () => {
  let dir: string;
  let serve: ServeProcess;
  let relationId: string;
  let responder: ClientProcess;
  let certs: ReturnType<typeof makeCertificates>;
  /** --ca-cert, --client-cert and --client-key of a unit's certificate (no token, no unit name). */
  const tlsFlags = (dash: '-' | '--', unit: string) => [`${dash}ca-cert`, certs.ca, `${dash}client-cert`, certs.client(unit).cert, `${dash}client-key`, certs.client(unit).key];

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relgate-interop-tls-'));
    certs = makeCertificates(dir, ['webapp/0', 'ca/0', 'operator']);
    writeFileSync(path.join(dir, 'admin.token'), `${ADMIN_TOKEN}\n`);
    serve = await spawnServe([
      ...['--listen', '127.0.0.1:0', '--db', ':memory:', '--auth', 'token', '--admin-token-file', path.join(dir, 'admin.token')],
      ...['--tls-cert', certs.serverCert, '--tls-key', certs.serverKey, '--tls-client-ca', certs.ca],
    ]);
    const operator = certs.client('operator');
    const credentials = grpc.credentials.createSsl(readFileSync(certs.ca), readFileSync(operator.key), readFileSync(operator.cert));
    const registry = registryClient(serve.address, ADMIN_TOKEN, credentials);
    const related = await relateWebappAndCa(registry);
    registry.client.close();
    relationId = related.relationId;
    writeFileSync(path.join(dir, 'webapp.token'), `${related.tokens.webapp}\n`);
    responder = startClient(python('responder', '--target', serve.address, ...tlsFlags('--', 'ca/0'), '--relation', relationId));
    await responder.next((line) => line.event === 'live');
  });

  afterAll(async () => {
    await responder?.stop();
    await serve?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('a Go Call as webapp/0 is answered by the Python responder as ca/0', async () => {
    const call = await runOne(go('requester', '-target', serve.address, ...tlsFlags('-', 'webapp/0'), 'call', '-relation', relationId, '-fields', JSON.stringify({ common_name: 'tls.example.com' })));
    expect(call.request).toMatchObject({ source_unit: 'webapp/0', state: 'REQUEST_STATE_ANSWERED' });
    expect(call.response.responder_unit).toBe('ca/0');
    expect(call.response).toEqual((await responder.next(answeredTo(call.request.request_id))).response);
  });

  test('a certificate that names no unit opens the connection, and the unit token sent over TLS identifies the unit', async () => {
    const tokenFile = path.join(dir, 'webapp.token');
    const fields = JSON.stringify({ common_name: 'token.example.com' });
    const call = await runOne(go('requester', '-target', serve.address, ...tlsFlags('-', 'operator'), '-token-file', tokenFile, 'call', '-relation', relationId, '-fields', fields));
    expect(call.request.source_unit).toBe('webapp/0');
    const { responses } = await runOne(python('requester', '--target', serve.address, ...tlsFlags('--', 'operator'), '--token-file', tokenFile, 'responses', '--request-id', call.request.request_id));
    expect(responses).toEqual([call.response]);
  });

  test('without a client certificate the handshake fails', async () => {
    const line = await runOne(go('requester', '-target', serve.address, '-ca-cert', certs.ca, 'responses', '-request-id', '6f1c2a4e-8b3d-4f5a-9c7e-2d1b0a9f8e7d'), 1);
    expect(line).toMatchObject({ event: 'error', code: 'Unavailable' });
  });
});
