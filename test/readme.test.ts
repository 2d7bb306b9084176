// Runs the README's grpcurl walkthrough, then its addressing and removal sections, verbatim
// against one real `relgate serve` process, command by command, and checks
// what each prints.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { PROJECT_DIR } from '../src/protos.ts';
import { findGrpcurl, parseMessages, shell, spawnServe, type RunResult, type ServeProcess } from './helpers/grpcurl.ts';

const README_ADDRESS = 'localhost:50051';
const REQUEST_ID = '6f1c2a4e-8b3d-4f5a-9c7e-2d1b0a9f8e7d';
const WALKTHROUGH_HEADING = '## Five-minute walkthrough with grpcurl';
const ADDRESSING_HEADING = '## Addressing requests, calls and sessions';
const REMOVAL_HEADING = '## Removing units and applications';
const ANY_ID = '3b0c8f2e-5d7a-4c1e-9f6b-1a2d3e4f5a6b';
const UNIT_ID = '7e4d2c1b-9a8f-4e6d-8c5b-4a3f2e1d0c9b';
const SELECTOR_ID = 'c5a9e3f1-2b4d-4f6a-8e0c-9d7b5a3c1e2f';
const CALL_ID = '0f9e8d7c-6b5a-4c3d-9e2f-1a0b9c8d7e6f';
/** The revision of the walkthrough's request once the conditional update of the addressing section changed it. */
const UPDATED_REVISION = '21';

/** Every ```sh block of a top-level README section that is a grpcurl command, verbatim. */
function sectionCommands(markdown: string, heading: string): string[] {
  const start = markdown.indexOf(`\n${heading}\n`);
  if (start < 0) throw new Error(`README.md has no "${heading}" section`);
  const next = markdown.indexOf('\n## ', start + 1);
  const section = markdown.slice(start, next < 0 ? undefined : next);
  return [...section.matchAll(/^```sh\n([\s\S]*?)^```$/gm)]
    .map((match) => (match[1] ?? '').trim())
    .filter((block) => block.startsWith('grpcurl'));
}

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
type Check = { name: string; match: RegExp; exitCode?: number; check(result: RunResult, command: string): void };

const only = (result: RunResult): Json => {
  const messages = parseMessages(result.stdout);
  expect(messages).toHaveLength(1);
  return messages[0] as Json;
};

/** What each kind of walkthrough command must print, chosen by matching the command. */
const CHECKS: Check[] = [
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

/** A grpcurl failure: its exit status is 64 + the gRPC code, its details on stderr. */
const failure = (code: string, reason: string) => ({ stdout, stderr }: RunResult) => {
  expect(stdout).toBe('');
  expect(stderr).toContain(`Code: ${code}`);
  expect(stderr).toContain(`"reason": "${reason}"`);
};

/** What each command of the addressing section must print; it runs after the walkthrough. */
const ADDRESSING_CHECKS: Check[] = [
  {
    name: 'RegisterUnit ca/1',
    match: /"name": "ca\/1"[\s\S]*RegistryService\/RegisterUnit$/,
    check: (result) => {
      expect(only(result).unit).toMatchObject({ name: 'ca/1', labels: { zone: 'b' } });
    },
  },
  {
    name: 'JoinRelation ca/1',
    match: /"unit": "ca\/1"[\s\S]*RegistryService\/JoinRelation$/,
    check: (result) => {
      expect(only(result).relation.units.map((u: Json) => u.unit)).toEqual(['webapp/0', 'ca/0', 'ca/1']);
    },
  },
  {
    name: 'CreateRequest to any unit',
    match: new RegExp(`"request_id": "${ANY_ID}"[\\s\\S]*RequesterService/CreateRequest$`),
    check: (result) => {
      const { request } = only(result);
      expect(request).toMatchObject({ requestId: ANY_ID, delivery: { mode: 'DELIVERY_MODE_ANY' }, expectedCount: 1, state: 'REQUEST_STATE_PENDING' });
      expect(Date.parse(request.expireTime) - Date.parse(request.createTime)).toBe(3600_000);
    },
  },
  {
    name: 'ClaimRequest',
    match: /ResponderService\/ClaimRequest$/,
    check: (result) => {
      const { request } = only(result);
      expect(request).toMatchObject({ requestId: ANY_ID, claim: { unit: 'ca/1' }, isNew: true });
    },
  },
  {
    name: 'Respond by the claimer',
    match: new RegExp(`relgate-unit: ca/1' -d '\\{"request_id": "${ANY_ID}"[\\s\\S]*ResponderService/Respond$`),
    check: (result) => {
      expect(only(result).response).toMatchObject({ requestId: ANY_ID, responderUnit: 'ca/1' });
    },
  },
  {
    name: 'Respond too late',
    match: new RegExp(`relgate-unit: ca/0' -d '\\{"request_id": "${ANY_ID}"[\\s\\S]*ResponderService/Respond$`),
    exitCode: 64 + 9,
    check: failure('FailedPrecondition', 'REQUEST_COMPLETED'),
  },
  {
    name: 'CreateRequest to one unit',
    match: new RegExp(`"request_id": "${UNIT_ID}"[\\s\\S]*RequesterService/CreateRequest$`),
    check: (result) => {
      expect(only(result).request).toMatchObject({ requestId: UNIT_ID, delivery: { mode: 'DELIVERY_MODE_UNIT', unit: 'ca/1' }, expectedUnits: ['ca/1'], expectedCount: 1 });
    },
  },
  {
    name: 'CreateRequest to a selector',
    match: new RegExp(`"request_id": "${SELECTOR_ID}"[\\s\\S]*RequesterService/CreateRequest$`),
    check: (result) => {
      const { request } = only(result);
      expect(request).toMatchObject({ requestId: SELECTOR_ID, expectedUnits: ['ca/0', 'ca/1'], expectedCount: 2, state: 'REQUEST_STATE_PENDING' });
      expect(request.delivery).toEqual({ mode: 'DELIVERY_MODE_SELECTOR', selector: 'zone in (a,b),!canary' });
    },
  },
  {
    name: 'Respond to the selector request',
    match: new RegExp(`relgate-unit: ca/0' -d '\\{"request_id": "${SELECTOR_ID}"[\\s\\S]*ResponderService/Respond$`),
    check: (result) => {
      expect(only(result).response).toMatchObject({ requestId: SELECTOR_ID, responderUnit: 'ca/0' });
    },
  },
  {
    name: 'Call without responders',
    match: /now\.example\.com[\s\S]*RequesterService\/Call$/,
    exitCode: 64 + 14,
    check: failure('Unavailable', 'NO_RESPONDERS'),
  },
  {
    name: 'Call past its deadline',
    match: /-max-time 2[\s\S]*RequesterService\/Call$/,
    exitCode: 64 + 4,
    check: ({ stderr }) => {
      expect(stderr).toContain('Code: DeadlineExceeded');
    },
  },
  {
    name: 'Respond late',
    match: new RegExp(`relgate-unit: ca/0' -d '\\{"request_id": "${CALL_ID}"[\\s\\S]*ResponderService/Respond$`),
    check: (result) => {
      expect(only(result).response).toMatchObject({ requestId: CALL_ID, responderUnit: 'ca/0' });
    },
  },
  {
    name: 'Call again',
    match: new RegExp(`^grpcurl -plaintext -H 'relgate-unit: webapp/0'[\\s\\S]*"request_id": "${CALL_ID}"[\\s\\S]*RequesterService/Call$`),
    check: (result) => {
      const { request, response } = only(result);
      expect(request).toMatchObject({ requestId: CALL_ID, state: 'REQUEST_STATE_ANSWERED', responseCount: 1 });
      expect(response).toMatchObject({ requestId: CALL_ID, responderUnit: 'ca/0' });
    },
  },
  {
    name: 'CallAll',
    match: /RequesterService\/CallAll$/,
    check: ({ stdout }) => {
      const messages = parseMessages(stdout) as Json[];
      expect(messages.map((m) => Object.keys(m)[0])).toEqual(['started', 'response', 'finished']);
      expect(messages[0]?.started).toMatchObject({ expectedCount: 2, expectedUnits: ['ca/0', 'ca/1'], request: { requestId: SELECTOR_ID } });
      expect(messages[1]?.response).toMatchObject({ requestId: SELECTOR_ID, responderUnit: 'ca/0' });
      expect(messages[2]?.finished).toEqual({ missingUnits: ['ca/1'] });
    },
  },
  {
    name: 'Session',
    match: /SessionService\/Open <<'EOF'\n/,
    check: ({ stdout }) => {
      const messages = parseMessages(stdout) as Json[];
      const acks = messages.filter((m) => m.ack).map((m) => m.ack);
      expect(acks).toHaveLength(1);
      expect(acks[0]).toMatchObject({ correlationId: 'answer-1', respond: { response: { requestId: SELECTOR_ID, responderUnit: 'ca/1' } } });
      const events = messages.filter((m) => m.events).flatMap((m) => m.events.batch.events.map((e: Json) => ({ watch: m.events.watch, ...e })));
      expect(events.every((e) => e.watch === 'incoming_requests')).toBe(true);
      const changes = events.filter((e) => e.request).map((e) => [e.type, e.request.requestId, e.request.state]);
      expect(changes).toEqual([
        ['EVENT_TYPE_ADDED', UNIT_ID, 'REQUEST_STATE_PENDING'],
        ['EVENT_TYPE_ADDED', SELECTOR_ID, 'REQUEST_STATE_PENDING'],
        // Answered, it is no longer new: it leaves the watch's NEW filter.
        ['EVENT_TYPE_DELETED', SELECTOR_ID, 'REQUEST_STATE_ANSWERED'],
      ]);
      expect(events.some((e) => e.type === 'EVENT_TYPE_SNAPSHOT_COMPLETE')).toBe(true);
      // As the README shows them: the snapshot, the answer's change, then its acknowledgement.
      expect(messages.map((m) => (m.ack ? 'ack' : 'events'))).toEqual(['events', 'events', 'ack']);
    },
  },
  {
    name: 'CreateOrUpdateRequest at the expected revision',
    match: /"example\.com"\]\},\n  "expected_revision": 9\n[\s\S]*RequesterService\/CreateOrUpdateRequest$/,
    check: (result) => {
      const { request, updated } = only(result);
      expect(updated).toBe(true);
      expect(request).toMatchObject({ requestId: REQUEST_ID, state: 'REQUEST_STATE_PENDING', revision: UPDATED_REVISION });
      // The update dropped the answer: grpcurl leaves a count of 0 out.
      expect(request.responseCount).toBeUndefined();
      expect(request.fields).toEqual({ common_name: 'web.example.com', sans: ['www.example.com', 'example.com'] });
    },
  },
  {
    name: 'CreateOrUpdateRequest at a stale revision',
    match: /web\.example\.net[\s\S]*RequesterService\/CreateOrUpdateRequest$/,
    exitCode: 64 + 10,
    check: (result) => {
      failure('Aborted', 'REVISION_MISMATCH')(result);
      expect(result.stderr).toContain(`Message: expected revision 9, but request ${REQUEST_ID} is at revision ${UPDATED_REVISION}; nothing was written`);
      expect(result.stderr).toContain(`"current_revision": "${UPDATED_REVISION}"`);
      expect(result.stderr).toContain('"expected_revision": "9"');
    },
  },
];

/** What the removal section's commands must print; it runs after the addressing section. */
const REMOVAL_CHECKS: Check[] = [
  {
    name: 'LeaveRelation',
    match: /"unit": "ca\/1"\}' localhost:50051 relgate\.v1\.RegistryService\/LeaveRelation$/,
    check: (result) => {
      const { relation } = only(result);
      expect(relation.id).toBe('tls-certificates:1');
      expect(relation.units.map((unit: Json) => unit.unit)).not.toContain('ca/1');
    },
  },
  {
    name: 'RemoveUnit',
    match: /RegistryService\/RemoveUnit$/,
    check: (result) => expect(Number(only(result).revision)).toBeGreaterThan(Number(UPDATED_REVISION)),
  },
];

const readme = readFileSync(path.join(PROJECT_DIR, 'README.md'), 'utf8');
const sections = [
  { heading: WALKTHROUGH_HEADING, commands: sectionCommands(readme, WALKTHROUGH_HEADING), checks: CHECKS },
  { heading: ADDRESSING_HEADING, commands: sectionCommands(readme, ADDRESSING_HEADING), checks: ADDRESSING_CHECKS },
  { heading: REMOVAL_HEADING, commands: sectionCommands(readme, REMOVAL_HEADING), checks: REMOVAL_CHECKS },
];

test.each(sections)('$heading has every step, each with a check', ({ commands, checks }) => {
  expect(commands.length).toBeGreaterThan(0);
  for (const { name, match } of checks) {
    expect(commands.some((command) => match.test(command)), `README section has a "${name}" command`).toBe(true);
  }
  for (const command of commands) {
    expect(checks.filter(({ match }) => match.test(command)), `exactly one check for:\n${command}`).toHaveLength(1);
    expect(command, 'every README command talks to the README address').toContain(README_ADDRESS);
  }
});

test('the walkthrough starts a fresh in-memory gateway and names its request', () => {
  expect(readme).toContain(REQUEST_ID);
  expect(readme).toContain('npm start -- --db :memory:');
});

describe('README walkthrough, then addressing, calls and sessions', () => {
  let serve: ServeProcess;

  beforeAll(async () => {
    findGrpcurl(); // fails here, clearly, when grpcurl is missing
    // What the walkthrough starts (`npm start -- --db :memory:`), on a free port.
    serve = await spawnServe(['--listen', '127.0.0.1:0', '--db', ':memory:', '--log-level', 'info']);
  });

  afterAll(async () => {
    await serve?.stop();
  });

  let step = 0;
  for (const { commands, checks } of sections) {
    for (const command of commands) {
      step += 1;
      const check = checks.find(({ match }) => match.test(command));
      test(`step ${step}: ${check?.name ?? command.split('\n')[0]}`, async () => {
        const result = await shell(command.replaceAll(README_ADDRESS, serve.address), 20_000);
        const expectedCode = check?.exitCode ?? 0;
        expect(result.code, `exit status of:\n${command}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`).toBe(expectedCode);
        check?.check(result, command);
      });
    }
  }
});
