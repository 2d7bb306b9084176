// relgate's sides of a round trip, each run as its own process:
// responders answer every new request (over a session, or a unary watch plus
// unary Respond); requesters create requests and wait for the response event
// (over a session, over unary CreateRequest plus a response watch, or with
// one unary Call); a creator only creates requests, for the ingest rate.
// Request ids as the SDK makes them: time-ordered UUIDv7.
import type * as grpc from '@grpc/grpc-js';
import { newRequestId } from '../src/request-id.ts';
import { PendingRoundTrips } from './lib/load.ts';
import { REQUEST_FIELDS, REQUESTER_UNIT, RESPONDER_UNIT, RESPONSE_FIELDS, relgateClient, unary, unitMetadata, type RelgateClient } from './lib/relgate.ts';
import { serveRoles, type Config } from './lib/role.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Message = Record<string, any>;
type Duplex = grpc.ClientDuplexStream<Message, Message>;

/** Watch options: every new request or response from the snapshot on, so readiness is the snapshot's end. */
const watchOptions = (relationId: string) => ({ relation_id: relationId, filter: 'REQUEST_FILTER_NEW', start: 'WATCH_START_SNAPSHOT' });

/** Calls `onEvent` for each watch event and resolves once the snapshot is complete. */
function followEvents(stream: grpc.ClientReadableStream<Message> | Duplex, batchOf: (message: Message) => Message | undefined, onEvent: (event: Message) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.on('data', (message: Message) => {
      for (const event of (batchOf(message)?.events ?? []) as Message[]) {
        if (event.type === 'EVENT_TYPE_SNAPSHOT_COMPLETE') resolve();
        else onEvent(event);
      }
    });
    stream.on('error', (error: grpc.ServiceError) => {
      if (error.code !== 1) process.stderr.write(`stream failed: ${error.message}\n`); // 1: CANCELLED by close()
      reject(error);
    });
  });
}

const sessionBatch = (message: Message) => (message.kind === 'events' ? (message.events.batch as Message) : undefined);
const watchBatch = (message: Message) => message.batch as Message | undefined;
const isNewRequest = (event: Message) => event.type === 'EVENT_TYPE_ADDED' && event.object === 'request';
const isResponse = (event: Message) => event.type === 'EVENT_TYPE_ADDED' && event.object === 'response';

/** Reports failed session commands: a benchmark must not count them as round trips. */
function watchAcks(stream: Duplex, onFailed: (correlationId: string, message: string) => void): void {
  stream.on('data', (message: Message) => {
    if (message.kind === 'ack' && message.ack.error) onFailed(message.ack.correlation_id as string, message.ack.error.message as string);
  });
}

async function openSession(address: string, unit: string, start: Message): Promise<{ client: RelgateClient; stream: Duplex }> {
  const client = await relgateClient(address, 'SessionService');
  const stream = (client.Open as (md: grpc.Metadata) => Duplex).call(client, unitMetadata(unit));
  stream.write({ start });
  return { client, stream };
}

function closer(client: RelgateClient, stream: grpc.ClientReadableStream<Message> | Duplex) {
  return async () => {
    stream.cancel();
    client.close();
  };
}

async function responderSession(config: Config) {
  const relationId = config.relationId as string;
  const { client, stream } = await openSession(config.address as string, RESPONDER_UNIT, { incoming_requests: watchOptions(relationId) });
  watchAcks(stream, (id, message) => process.stderr.write(`respond ${id} failed: ${message}\n`));
  await followEvents(stream, sessionBatch, (event) => {
    if (!isNewRequest(event)) return;
    const requestId = event.request.request_id as string;
    stream.write({ command: { correlation_id: requestId, respond: { request_id: requestId, code: 0, fields: RESPONSE_FIELDS } } });
  });
  return { close: closer(client, stream) };
}

async function responderUnary(config: Config) {
  const relationId = config.relationId as string;
  const client = await relgateClient(config.address as string, 'ResponderService');
  const metadata = unitMetadata(RESPONDER_UNIT);
  const stream = (client.WatchIncomingRequests as (req: Message, md: grpc.Metadata) => grpc.ClientReadableStream<Message>).call(client, { options: watchOptions(relationId) }, metadata);
  await followEvents(stream, watchBatch, (event) => {
    if (!isNewRequest(event)) return;
    const requestId = event.request.request_id as string;
    unary(client, 'Respond', { request_id: requestId, code: 0, fields: RESPONSE_FIELDS }, metadata).catch((error: Error) => process.stderr.write(`respond ${requestId} failed: ${error.message}\n`));
  });
  return { close: closer(client, stream) };
}

async function requesterSession(config: Config) {
  const relationId = config.relationId as string;
  const pending = new PendingRoundTrips();
  const { client, stream } = await openSession(config.address as string, REQUESTER_UNIT, { responses: watchOptions(relationId) });
  watchAcks(stream, (id, message) => pending.fail(id, new Error(`create ${id} failed: ${message}`)));
  await followEvents(stream, sessionBatch, (event) => isResponse(event) && pending.complete(event.response.request_id as string));
  const roundTrip = () => {
    const requestId = newRequestId();
    const done = pending.begin(requestId);
    stream.write({ command: { correlation_id: requestId, create: { relation_id: relationId, request_id: requestId, fields: REQUEST_FIELDS } } });
    return done;
  };
  return { roundTrip, close: closer(client, stream) };
}

/** Durable creates only: each round trip ends at the create's acknowledgement. */
async function creatorSession(config: Config) {
  const relationId = config.relationId as string;
  const pending = new PendingRoundTrips();
  const { client, stream } = await openSession(config.address as string, REQUESTER_UNIT, {});
  stream.on('data', (message: Message) => {
    if (message.kind !== 'ack') return;
    const id = message.ack.correlation_id as string;
    if (message.ack.error) pending.fail(id, new Error(`create ${id} failed: ${message.ack.error.message as string}`));
    else pending.complete(id);
  });
  const roundTrip = () => {
    const requestId = newRequestId();
    const done = pending.begin(requestId);
    stream.write({ command: { correlation_id: requestId, create: { relation_id: relationId, request_id: requestId, fields: REQUEST_FIELDS } } });
    return done;
  };
  return { roundTrip, close: closer(client, stream) };
}

async function requesterUnary(config: Config) {
  const relationId = config.relationId as string;
  const pending = new PendingRoundTrips();
  const client = await relgateClient(config.address as string, 'RequesterService');
  const metadata = unitMetadata(REQUESTER_UNIT);
  const stream = (client.WatchResponses as (req: Message, md: grpc.Metadata) => grpc.ClientReadableStream<Message>).call(client, { options: watchOptions(relationId) }, metadata);
  await followEvents(stream, watchBatch, (event) => isResponse(event) && pending.complete(event.response.request_id as string));
  const roundTrip = async () => {
    const requestId = newRequestId();
    const done = pending.begin(requestId);
    await unary(client, 'CreateRequest', { relation_id: relationId, request_id: requestId, fields: REQUEST_FIELDS }, metadata);
    await done;
  };
  return { roundTrip, close: closer(client, stream) };
}

async function requesterCall(config: Config) {
  const relationId = config.relationId as string;
  const client = await relgateClient(config.address as string, 'RequesterService');
  const metadata = unitMetadata(REQUESTER_UNIT);
  const roundTrip = async () => {
    const { response } = await unary(client, 'Call', { relation_id: relationId, fields: REQUEST_FIELDS }, metadata);
    if (response?.code !== 0) throw new Error(`Call answered with ${JSON.stringify(response)}`);
  };
  return { roundTrip, close: async () => client.close() };
}

serveRoles({
  'responder-session': responderSession,
  'responder-unary': responderUnary,
  'requester-session': requesterSession,
  'requester-unary': requesterUnary,
  'requester-call': requesterCall,
  'creator-session': creatorSession,
});
