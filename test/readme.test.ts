// Runs the README's grpcurl walkthrough verbatim against a real `relgate serve`
// process, command by command, and checks what each prints.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { PROJECT_DIR } from '../src/protos.ts';
import { findGrpcurl, parseMessages, shell, spawnServe, type RunResult, type ServeProcess } from './helpers/grpcurl.ts';

const README_ADDRESS = 'localhost:50051';
const REQUEST_ID = '6f1c2a4e-8b3d-4f5a-9c7e-2d1b0a9f8e7d';
const WALKTHROUGH_HEADING = '## Five-minute walkthrough with grpcurl';

/** Every ```sh block of the walkthrough section that is a grpcurl command, verbatim. */
function walkthroughCommands(markdown: string): string[] {
  const start = markdown.indexOf(`\n${WALKTHROUGH_HEADING}\n`);
  if (start < 0) throw new Error(`README.md has no "${WALKTHROUGH_HEADING}" section`);
  const next = markdown.indexOf('\n## ', start + 1);
  const section = markdown.slice(start, next < 0 ? undefined : next);
  return [...section.matchAll(/^```sh\n([\s\S]*?)^```$/gm)]
    .map((match) => (match[1] ?? '').trim())
    .filter((block) => block.startsWith('grpcurl'));
}

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const only = (result: RunResult): Json => {
  const messages = parseMessages(result.stdout);
  expect(messages).toHaveLength(1);
  return messages[0] as Json;
};

/** What each kind of walkthrough command must print, chosen by matching the command. */
const CHECKS: { name: string; match: RegExp; exitCode?: number; check(result: RunResult, command: string): void }[] = [
  {
    name: 'list',
    match: /\slist$/,
    check: ({ stdout }) => {
      const services = stdout.trim().split('\n');
      for (const service of [
        'relgate.v1.RegistryService',
        'relgate.v1.RequesterService',
        'relgate.v1.ResponderService',
        'relgate.v1.SessionService',
        'grpc.health.v1.Health',
        'grpc.reflection.v1.ServerReflection',
      ]) {
        expect(services).toContain(service);
      }
    },
  },
  {
    name: 'describe',
    match: /\sdescribe relgate\.v1\.CreateRequestRequest$/,
    check: ({ stdout }) => {
      expect(stdout).toContain('relgate.v1.CreateRequestRequest is a message');
      expect(stdout).toContain('.google.protobuf.Struct fields = 3;');
      expect(stdout).toContain('.google.protobuf.Duration ttl = 5;');
    },
  },
  {
    name: 'GetInterface',
    match: /RegistryService\/GetInterface$/,
    check: (result) => {
      const { interface: iface } = only(result);
      expect(iface.name).toBe('tls-certificates');
      expect(iface.version).toBe(1);
      expect(iface.request.fullName).toBe('relgate.interfaces.tls_certificates.v1.CertificateRequest');
      expect(iface.request.fields[0]).toMatchObject({ name: 'common_name', type: 'string', required: true });
      expect(iface.response.fields.map((f: Json) => f.name)).toEqual(['key', 'cert', 'ca']);
    },
  },
  {
    name: 'RegisterApplication',
    match: /RegistryService\/RegisterApplication$/,
    check: (result, command) => {
      const name = /"name": "([^"]+)"/.exec(command)?.[1];
      expect(only(result).application.name).toBe(name);
    },
  },
  {
    name: 'RegisterUnit',
    match: /RegistryService\/RegisterUnit$/,
    check: (result, command) => {
      const name = /"name": "([^"]+)"/.exec(command)?.[1];
      expect(only(result).unit).toMatchObject({ name, application: name?.split('/')[0] });
    },
  },
  {
    name: 'CreateRelation',
    match: /RegistryService\/CreateRelation$/,
    check: (result) => {
      expect(only(result).relation).toMatchObject({
        id: 'tls-certificates:1',
        interface: 'tls-certificates',
        requesterApplication: 'webapp',
        responderApplication: 'ca',
        createRevision: '5',
      });
    },
  },
  {
    name: 'JoinRelation',
    match: /RegistryService\/JoinRelation$/,
    check: (result, command) => {
      const unit = /"unit": "([^"]+)"/.exec(command)?.[1];
      const { relation } = only(result);
      expect(relation.id).toBe('tls-certificates:1');
      expect(relation.units.map((u: Json) => u.unit)).toContain(unit);
    },
  },
  {
    name: 'CreateRequest',
    match: /RequesterService\/CreateRequest$/,
    check: (result) => {
      expect(only(result).request).toMatchObject({
        requestId: REQUEST_ID,
        relationId: 'tls-certificates:1',
        sourceUnit: 'webapp/0',
        fields: { common_name: 'web.example.com', sans: ['www.example.com'] },
        state: 'REQUEST_STATE_PENDING',
        createRevision: '8',
      });
    },
  },
  {
    name: 'ListIncomingRequests',
    match: /ResponderService\/ListIncomingRequests$/,
    check: (result) => {
      const { requests } = only(result);
      expect(requests).toHaveLength(1);
      expect(requests[0]).toMatchObject({ requestId: REQUEST_ID, isNew: true, isReceived: true });
    },
  },
  {
    name: 'Respond',
    match: /ResponderService\/Respond$/,
    check: (result) => {
      const { response } = only(result);
      expect(response).toMatchObject({ requestId: REQUEST_ID, responderUnit: 'ca/0', revision: '9' });
      expect(Object.keys(response.fields).sort()).toEqual(['ca', 'cert', 'key']);
    },
  },
  {
    name: 'ListResponses',
    match: /RequesterService\/ListResponses$/,
    check: (result) => {
      const { responses } = only(result);
      expect(responses).toHaveLength(1);
      expect(responses[0]).toMatchObject({ requestId: REQUEST_ID, responderUnit: 'ca/0' });
      expect(responses[0].fields.cert).toMatch(/^-----BEGIN CERTIFICATE-----/);
    },
  },
  {
    name: 'GetRequesterFlags',
    match: /RequesterService\/GetRequesterFlags$/,
    check: (result) => {
      expect(only(result)).toEqual({ flags: { available: true, hasResponses: true, allResponses: true } });
    },
  },
  {
    name: 'WatchIncomingRequests',
    match: /ResponderService\/WatchIncomingRequests$/,
    // -max-time ends the stream with DEADLINE_EXCEEDED: grpcurl exits 64 + 4.
    exitCode: 68,
    check: ({ stdout, stderr }) => {
      expect(stderr).toContain('DeadlineExceeded');
      const batches = parseMessages(stdout) as { batch: { events: Json[]; revision: string } }[];
      const events = batches.flatMap(({ batch }) => batch.events);
      const changes = events.filter((e) => e.type !== 'EVENT_TYPE_BOOKMARK');
      expect(changes.map((e) => [e.type, e.revision])).toEqual([
        ['EVENT_TYPE_ADDED', '8'],
        ['EVENT_TYPE_FLAGS', '8'],
        ['EVENT_TYPE_MODIFIED', '9'],
        ['EVENT_TYPE_FLAGS', '9'],
      ]);
      expect(changes[0]?.request).toMatchObject({ requestId: REQUEST_ID, state: 'REQUEST_STATE_PENDING', isNew: true });
      expect(changes[1]?.responderFlags).toEqual({ available: true, hasRequests: true, newRequests: true });
      expect(changes[2]?.request).toMatchObject({ requestId: REQUEST_ID, state: 'REQUEST_STATE_ANSWERED', responseCount: 1 });
      expect(changes[3]?.responderFlags).toEqual({ available: true, hasRequests: true });
      // Then it stays live: bookmarks at the reached revision until the time limit.
      const bookmarks = events.filter((e) => e.type === 'EVENT_TYPE_BOOKMARK');
      expect(bookmarks.length).toBeGreaterThanOrEqual(1);
      expect(bookmarks.every((e) => e.revision === '9')).toBe(true);
    },
  },
  {
    name: 'health',
    match: /grpc\.health\.v1\.Health\/Check$/,
    check: (result) => {
      expect(only(result)).toEqual({ status: 'SERVING' });
    },
  },
];

const readme = readFileSync(path.join(PROJECT_DIR, 'README.md'), 'utf8');
const commands = walkthroughCommands(readme);

test('the walkthrough has every step, each with a check', () => {
  expect(commands.length).toBeGreaterThan(0);
  for (const { name, match } of CHECKS) {
    expect(commands.some((command) => match.test(command)), `README walkthrough has a "${name}" command`).toBe(true);
  }
  for (const command of commands) {
    expect(CHECKS.filter(({ match }) => match.test(command)), `exactly one check for:\n${command}`).toHaveLength(1);
    expect(command, 'every walkthrough command talks to the README address').toContain(README_ADDRESS);
  }
  expect(readme).toContain(REQUEST_ID);
  expect(readme).toContain('npm start -- --db :memory:');
});

describe('README walkthrough', () => {
  let serve: ServeProcess;

  beforeAll(async () => {
    findGrpcurl(); // fails here, clearly, when grpcurl is missing
    // What the walkthrough starts (`npm start -- --db :memory:`), on a free port.
    serve = await spawnServe(['--listen', '127.0.0.1:0', '--db', ':memory:', '--log-level', 'info']);
  });

  afterAll(async () => {
    await serve?.stop();
  });

  commands.forEach((command, index) => {
    const check = CHECKS.find(({ match }) => match.test(command));
    test(`step ${index + 1}: ${check?.name ?? command.split('\n')[0]}`, async () => {
      const result = await shell(command.replaceAll(README_ADDRESS, serve.address), 20_000);
      const expectedCode = check?.exitCode ?? 0;
      expect(result.code, `exit status of:\n${command}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`).toBe(expectedCode);
      check?.check(result, command);
    });
  });
});
