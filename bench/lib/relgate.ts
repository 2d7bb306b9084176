// Plain grpc-js clients of relgate's API for benchmark roles, and the
// registry set-up every relgate scenario starts from.
import * as grpc from '@grpc/grpc-js';
import { loadApi } from '../../src/protos.ts';
import { jsonToStruct } from '../../src/struct.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Message = Record<string, any>;
export type RelgateClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;
type Ctor = new (address: string, credentials: grpc.ChannelCredentials, options?: object) => RelgateClient;

let services: Record<string, Ctor> | undefined;

/** A client of one relgate.v1 service, ready to use. */
export async function relgateClient(address: string, service: string): Promise<RelgateClient> {
  services ??= (grpc.loadPackageDefinition(loadApi()) as unknown as { relgate: { v1: Record<string, Ctor> } }).relgate.v1;
  const Client = services[service];
  if (!Client) throw new Error(`no service ${service}`);
  const client = new Client(address, grpc.credentials.createInsecure());
  await new Promise<void>((resolve, reject) => client.waitForReady(Date.now() + 10_000, (error) => (error ? reject(error) : resolve())));
  return client;
}

/** Metadata naming the unit a call acts as (the server runs with open auth). */
export function unitMetadata(unit: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set('relgate-unit', unit);
  return metadata;
}

/** Calls a unary method. */
export function unary<T = Message>(client: RelgateClient, method: string, request: Message, metadata = new grpc.Metadata()): Promise<T> {
  return new Promise((resolve, reject) => {
    const fn = client[method] as (req: Message, md: grpc.Metadata, options: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: T) => void) => void;
    fn.call(client, request, metadata, { deadline: Date.now() + 30_000 }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

export const REQUESTER_UNIT = 'webapp/0';
export const RESPONDER_UNIT = 'ca/0';
/** A small tls-certificates request and its answer. */
export const REQUEST_FIELDS = jsonToStruct({ common_name: 'bench.example.com' });
export const RESPONSE_FIELDS = jsonToStruct({ key: 'k', cert: 'c' });

/** Registers a requester unit and a responder unit on one tls-certificates relation; returns its id. */
export async function setUpRelation(address: string): Promise<string> {
  const registry = await relgateClient(address, 'RegistryService');
  try {
    for (const name of ['webapp', 'ca']) await unary(registry, 'RegisterApplication', { name });
    for (const name of [REQUESTER_UNIT, RESPONDER_UNIT]) await unary(registry, 'RegisterUnit', { name, ingress_address: '127.0.0.1', egress_subnets: ['127.0.0.0/8'] });
    const { relation } = await unary(registry, 'CreateRelation', {
      interface: 'tls-certificates',
      requester_application: 'webapp',
      requester_endpoint: 'certificates',
      responder_application: 'ca',
      responder_endpoint: 'certificates',
    });
    for (const unit of [REQUESTER_UNIT, RESPONDER_UNIT]) await unary(registry, 'JoinRelation', { relation_id: relation.id, unit });
    return relation.id as string;
  } finally {
    registry.close();
  }
}
