// The same request/response pattern built on the systems users would pick
// instead of relgate, each side in its own process:
// - etcd: the requester puts the request under the relation's prefix, the
//   responder watches the prefix and puts the response, the requester
//   watches the responses;
// - NATS JetStream: requests go to a work-queue stream, responses to a
//   second stream, both consumed with explicit acks;
// - NATS request-reply: core NATS, nothing stored.
import { jetstream, jetstreamManager, AckPolicy, DeliverPolicy, RetentionPolicy, StorageType, type JsMsg } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { Etcd3 } from 'etcd3';
import { PendingRoundTrips } from './lib/load.ts';
import { serveRoles, type Config } from './lib/role.ts';

/** The request body, about the size of relgate's (JSON fields). */
const REQUEST_BODY = JSON.stringify({ common_name: 'bench.example.com' });
const RESPONSE_BODY = JSON.stringify({ code: 0, fields: { key: 'k', cert: 'c' } });
const RELATION = 'relations/bench';

async function etcdResponder(config: Config) {
  const client = new Etcd3({ hosts: config.endpoint as string });
  const watcher = await client.watch().prefix(`${RELATION}/requests/`).create();
  watcher.on('put', (kv) => {
    const id = kv.key.toString().slice(`${RELATION}/requests/`.length);
    client.put(`${RELATION}/responses/${id}`).value(RESPONSE_BODY).catch((error: Error) => process.stderr.write(`put response ${id} failed: ${error.message}\n`));
  });
  return { close: async () => (await watcher.cancel(), client.close()) };
}

async function etcdRequester(config: Config) {
  const client = new Etcd3({ hosts: config.endpoint as string });
  const pending = new PendingRoundTrips();
  const watcher = await client.watch().prefix(`${RELATION}/responses/`).create();
  watcher.on('put', (kv) => pending.complete(kv.key.toString().slice(`${RELATION}/responses/`.length)));
  let next = 0;
  const roundTrip = async () => {
    const id = `${process.pid}-${(next += 1)}`;
    const done = pending.begin(id);
    await client.put(`${RELATION}/requests/${id}`).value(REQUEST_BODY);
    await done;
  };
  return { roundTrip, close: async () => (await watcher.cancel(), client.close()) };
}

const STREAMS = { requests: 'REQUESTS', responses: 'RESPONSES' } as const;

/** Creates the two file-backed streams; the responder owns them, so it starts first. */
async function jetstreamResponder(config: Config) {
  const nc = await connect({ servers: config.url as string });
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: STREAMS.requests, subjects: ['requests.>'], retention: RetentionPolicy.Workqueue, storage: StorageType.File });
  await jsm.streams.add({ name: STREAMS.responses, subjects: ['responses.>'], retention: RetentionPolicy.Limits, storage: StorageType.File });
  await jsm.consumers.add(STREAMS.requests, { durable_name: 'responder', ack_policy: AckPolicy.Explicit });
  const js = jetstream(nc);
  const consumer = await js.consumers.get(STREAMS.requests, 'responder');
  const messages = await consumer.consume({
    callback: (message: JsMsg) => {
      const id = message.subject.slice('requests.'.length);
      // Acknowledge the request only once the response is stored.
      js.publish(`responses.${id}`, RESPONSE_BODY).then(
        () => message.ack(),
        (error: Error) => process.stderr.write(`publish response ${id} failed: ${error.message}\n`),
      );
    },
  });
  return { close: async () => (messages.stop(), await nc.close()) };
}

async function jetstreamRequester(config: Config) {
  const nc = await connect({ servers: config.url as string });
  const jsm = await jetstreamManager(nc);
  await jsm.consumers.add(STREAMS.responses, { durable_name: 'requester', ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.New });
  const js = jetstream(nc);
  const pending = new PendingRoundTrips();
  const consumer = await js.consumers.get(STREAMS.responses, 'requester');
  const messages = await consumer.consume({
    callback: (message: JsMsg) => {
      message.ack();
      pending.complete(message.subject.slice('responses.'.length));
    },
  });
  let next = 0;
  const roundTrip = async () => {
    const id = `${process.pid}-${(next += 1)}`;
    const done = pending.begin(id);
    await js.publish(`requests.${id}`, REQUEST_BODY);
    await done;
  };
  return { roundTrip, close: async () => (messages.stop(), await nc.close()) };
}

async function natsResponder(config: Config) {
  const nc = await connect({ servers: config.url as string });
  nc.subscribe('certificates', {
    callback: (error, message) => {
      if (error) process.stderr.write(`${error.message}\n`);
      else message.respond(RESPONSE_BODY);
    },
  });
  await nc.flush();
  return { close: () => nc.close() };
}

async function natsRequester(config: Config) {
  const nc = await connect({ servers: config.url as string });
  const roundTrip = async () => {
    await nc.request('certificates', REQUEST_BODY, { timeout: 10_000 });
  };
  return { roundTrip, close: () => nc.close() };
}

serveRoles({
  'etcd-responder': etcdResponder,
  'etcd-requester': etcdRequester,
  'jetstream-responder': jetstreamResponder,
  'jetstream-requester': jetstreamRequester,
  'nats-responder': natsResponder,
  'nats-requester': natsRequester,
});
