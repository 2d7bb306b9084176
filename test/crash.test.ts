// kill -9 under concurrent load, round after round: every acknowledged request
// and response survives, nothing is half-written, and a watch that resumes
// across every crash sees exactly the change log.
import { randomInt, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, expect, test } from 'vitest';
import { Rpc, json, setupRelation, struct, v1 } from './helpers/harness.ts';
import { spawnServe, type ServeProcess } from './helpers/grpcurl.ts';

const ROUNDS = Number(process.env.RELGATE_CRASH_ROUNDS ?? 20);
const WRITERS = 8;

const dir = mkdtempSync(path.join(tmpdir(), 'relgate-crash-'));
const db = path.join(dir, 'relgate.db');
/** The gateway of the running round, stopped even when the test fails. */
let current: Gateway | undefined;
afterAll(async () => {
  current?.close();
  await current?.serve.stop();
  rmSync(dir, { recursive: true, force: true });
});

interface Gateway {
  serve: ServeProcess;
  registry: Rpc;
  requester: Rpc;
  responder: Rpc;
  close(): void;
}

async function startGateway(): Promise<Gateway> {
  const serve = await spawnServe(['--listen', '127.0.0.1:0', '--db', db, '--log-level', 'info']);
  const clients: grpc.Client[] = [];
  const rpc = (service: string, unit?: string) => {
    const Client = v1[service];
    if (!Client) throw new Error(service);
    const client = new Client(serve.address, grpc.credentials.createInsecure());
    clients.push(client);
    return new Rpc(client, unit);
  };
  current = {
    serve,
    registry: rpc('RegistryService'),
    requester: rpc('RequesterService', 'webapp/0'),
    responder: rpc('ResponderService', 'ca/0'),
    close: () => clients.forEach((client) => client.close()),
  };
  return current;
}

/** One line per watch event: what a resumed log and a replayed log must agree on. */
type LogLine = string;
const line = (event: Record<string, any>): LogLine => // eslint-disable-line @typescript-eslint/no-explicit-any
  [event.revision, event.type, event.request?.request_id ?? event.unit?.unit ?? '', event.request?.state ?? '', JSON.stringify(event.responder_flags ?? null)].join(' ');

interface WatchLog {
  lines: LogLine[];
  last: string;
}

/** Follows the responder's watch until the stream breaks; resumes after `log.last`. */
function follow(responder: Rpc, relationId: string, log: WatchLog, until?: (log: WatchLog) => boolean): Promise<void> {
  const stream = responder.stream('WatchIncomingRequests', { options: { relation_id: relationId, start: 'WATCH_START_AFTER_REVISION', after_revision: log.last } });
  return new Promise((resolve) => {
    stream.on('data', ({ batch }: { batch: { events: Record<string, any>[]; revision: string } }) => { // eslint-disable-line @typescript-eslint/no-explicit-any
      for (const event of batch.events) if (event.type !== 'EVENT_TYPE_BOOKMARK') log.lines.push(line(event));
      if (batch.revision !== '0') log.last = batch.revision;
      if (until?.(log)) stream.cancel();
    });
    stream.on('error', () => resolve());
    stream.on('end', () => resolve());
  });
}

const acknowledged = { requests: new Map<string, string>(), responses: new Map<string, string>() };

/** Writers create and answer requests until the gateway dies; only acknowledged writes are recorded. */
async function load(gateway: Gateway, relationId: string, killAfter: number): Promise<void> {
  let acks = 0;
  let dead = false;
  const ack = () => {
    acks += 1;
    if (acks === killAfter) {
      dead = true;
      gateway.serve.child.kill('SIGKILL');
    }
  };
  const unanswered: string[] = [];
  const creator = async () => {
    while (!dead) {
      const id = randomUUID();
      const name = `${id.slice(0, 8)}.example`;
      try {
        await gateway.requester.call('CreateRequest', { relation_id: relationId, request_id: id, fields: struct({ common_name: name }) });
      } catch {
        return;
      }
      acknowledged.requests.set(id, name);
      unanswered.push(id);
      ack();
    }
  };
  const answerer = async () => {
    while (!dead) {
      const id = unanswered.shift();
      if (!id) {
        await new Promise((resolve) => setImmediate(resolve));
        continue;
      }
      const cert = `cert-for-${id}`;
      try {
        await gateway.responder.call('Respond', { request_id: id, fields: struct({ key: `key-for-${id}`, cert }) });
      } catch {
        return;
      }
      acknowledged.responses.set(id, cert);
      ack();
    }
  };
  await Promise.all([...Array.from({ length: WRITERS / 2 }, creator), ...Array.from({ length: WRITERS / 2 }, answerer)]);
}

async function checkEverythingAcknowledged(gateway: Gateway): Promise<void> {
  for (const [id, name] of acknowledged.requests) {
    const { request } = await gateway.requester.call('GetRequest', { request_id: id });
    expect(json(request.fields), `request ${id}`).toEqual({ common_name: name });
  }
  for (const [id, cert] of acknowledged.responses) {
    const { responses } = await gateway.requester.call('ListResponses', { request_id: id });
    expect(responses, `responses of ${id}`).toHaveLength(1);
    expect(json(responses[0].fields), `response of ${id}`).toEqual({ key: `key-for-${id}`, cert });
  }
}

/** No half-written rows: every stored request is whole, and answered only with a whole response. */
async function checkNothingHalfWritten(gateway: Gateway, relationId: string): Promise<void> {
  let page = '';
  do {
    const listed = await gateway.requester.call('ListRequests', { relation_id: relationId, page_size: 500, page_token: page });
    for (const request of listed.requests) {
      expect(json(request.fields).common_name).toBe(`${request.request_id.slice(0, 8)}.example`);
      if (request.state !== 'REQUEST_STATE_ANSWERED') continue;
      const { responses } = await gateway.requester.call('ListResponses', { request_id: request.request_id });
      expect(json(responses[0].fields)).toEqual({ key: `key-for-${request.request_id}`, cert: `cert-for-${request.request_id}` });
    }
    page = listed.next_page_token;
  } while (page);
}

test(`kill -9 under load, ${ROUNDS} rounds: nothing acknowledged is lost and the resumed watch log equals the change log`, async () => {
  let gateway = await startGateway();
  const relationId = await setupRelation(gateway);
  const resumed: WatchLog = { lines: [], last: '0' };
  for (let round = 0; round < ROUNDS; round++) {
    const watching = follow(gateway.responder, relationId, resumed);
    await load(gateway, relationId, randomInt(5, 80));
    await watching;
    gateway.close();
    await gateway.serve.stop();
    gateway = await startGateway();
    await checkEverythingAcknowledged(gateway);
  }
  await checkNothingHalfWritten(gateway, relationId);

  // A sentinel write closes both logs at the same revision.
  const { request } = await gateway.requester.call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: 'sentinel.example' }) });
  const reached = (log: WatchLog) => BigInt(log.last) >= BigInt(request.revision);
  await follow(gateway.responder, relationId, resumed, reached);
  const replayed: WatchLog = { lines: [], last: '0' };
  await follow(gateway.responder, relationId, replayed, reached);
  gateway.close();
  await gateway.serve.stop();

  expect(acknowledged.requests.size).toBeGreaterThan(ROUNDS * 2);
  expect(resumed.lines.length).toBe(replayed.lines.length);
  expect(resumed.lines).toEqual(replayed.lines);
  const revisions = replayed.lines.map((entry) => BigInt(entry.split(' ')[0] as string));
  for (let i = 1; i < revisions.length; i++) expect(revisions[i]! >= revisions[i - 1]!).toBe(true);
  for (const id of acknowledged.requests.keys()) expect(replayed.lines.some((entry) => entry.includes(`EVENT_TYPE_ADDED ${id}`))).toBe(true);
}, Math.max(240_000, ROUNDS * 5_000)); // Each round rechecks everything acknowledged so far, so rounds grow longer.
