// Test harness: a real relgate server on a free loopback port with a real
// SQLite file, and plain grpc-js clients that act as named units.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { fromServiceError, type RelgateError } from '../../src/errors.ts';
import { loadApi } from '../../src/protos.ts';
import { startServer, type RunningServer, type ServerConfig } from '../../src/server.ts';

type AnyClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;
type Ctor = new (address: string, credentials: grpc.ChannelCredentials, options?: object) => AnyClient;

const api = grpc.loadPackageDefinition(loadApi()) as unknown as { relgate: { v1: Record<string, Ctor> } };
export const v1 = api.relgate.v1;

export interface Harness {
  server: RunningServer;
  dir: string;
  db: string;
  registry: Rpc;
  requester(unit: string): Rpc;
  responder(unit: string): Rpc;
  close(): Promise<void>;
}

/** Calls unary methods as promises: rpc.call('CreateRequest', {...}). */
export class Rpc {
  readonly client: AnyClient;
  readonly metadata: grpc.Metadata;

  constructor(client: AnyClient, unit?: string) {
    this.client = client;
    this.metadata = new grpc.Metadata();
    if (unit) this.metadata.set('relgate-unit', unit);
  }

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  call<T = any>(method: string, request: object = {}): Promise<T> {
    return new Promise((resolve, reject) => {
      const fn = this.client[method] as (req: object, md: grpc.Metadata, cb: (e: grpc.ServiceError | null, r: T) => void) => void;
      fn.call(this.client, request, this.metadata, (error, response) => (error ? reject(error) : resolve(response)));
    });
  }

  /** The call's failure as a RelgateError (rejects if the call succeeds). */
  async fail(method: string, request: object = {}): Promise<RelgateError> {
    try {
      await this.call(method, request);
    } catch (error) {
      return fromServiceError(error as grpc.ServiceError);
    }
    throw new Error(`${method} succeeded but was expected to fail`);
  }

  stream(method: string, request: object): grpc.ClientReadableStream<unknown> {
    const fn = this.client[method] as (req: object, md: grpc.Metadata) => grpc.ClientReadableStream<unknown>;
    return fn.call(this.client, request, this.metadata);
  }
}

export async function startHarness(config: Partial<ServerConfig> = {}): Promise<Harness> {
  const dir = mkdtempSync(path.join(tmpdir(), 'relgate-test-'));
  const db = path.join(dir, 'relgate.db');
  const server = await startServer({ listen: '127.0.0.1:0', db, logLevel: 'silent', shutdownGraceMs: 500, ...config });
  const clients: grpc.Client[] = [];
  const make = (service: string, unit?: string) => {
    const Client = v1[service];
    if (!Client) throw new Error(`no ${service}`);
    const client = new Client(server.address, grpc.credentials.createInsecure());
    clients.push(client);
    return new Rpc(client, unit);
  };
  return {
    server,
    dir,
    db,
    registry: make('RegistryService'),
    requester: (unit) => make('RequesterService', unit),
    responder: (unit) => make('ResponderService', unit),
    async close() {
      for (const client of clients) client.close();
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Clients of a server at an address (e.g. one in another process); close() closes them all.
 * Clients share one connection per address unless each is to have its own (`ownConnection`).
 */
export function clientsOf(address: string, { ownConnection = false } = {}): { registry: Rpc; requester(unit: string): Rpc; responder(unit: string): Rpc; close(): void } {
  const made: grpc.Client[] = [];
  const make = (service: string, unit?: string) => {
    const Client = v1[service];
    if (!Client) throw new Error(`no ${service}`);
    const client = new Client(address, grpc.credentials.createInsecure(), ownConnection ? { 'grpc.use_local_subchannel_pool': 1 } : {});
    made.push(client);
    return new Rpc(client, unit);
  };
  return {
    registry: make('RegistryService'),
    requester: (unit) => make('RequesterService', unit),
    responder: (unit) => make('ResponderService', unit),
    close: () => made.forEach((client) => client.close()),
  };
}

/** Registers a requester app with units, a responder app with units, relates and joins them. */
export async function setupRelation(h: Pick<Harness, 'registry'>, options: { iface?: string; requesters?: string[]; responders?: string[]; labels?: Record<string, Record<string, string>> } = {}) {
  const requesters = options.requesters ?? ['webapp/0'];
  const responders = options.responders ?? ['ca/0'];
  const apps = new Set([...requesters, ...responders].map((unit) => unit.split('/')[0] as string));
  for (const app of apps) await h.registry.call('RegisterApplication', { name: app }).catch(() => undefined);
  for (const unit of [...requesters, ...responders]) {
    await h.registry.call('RegisterUnit', { name: unit, ingress_address: '10.0.0.1', egress_subnets: ['10.0.0.0/24'], labels: options.labels?.[unit] ?? {} });
  }
  const { relation } = await h.registry.call('CreateRelation', {
    interface: options.iface ?? 'tls-certificates',
    requester_application: requesters[0]?.split('/')[0],
    requester_endpoint: 'certificates',
    responder_application: responders[0]?.split('/')[0],
    responder_endpoint: 'certificates',
  });
  for (const unit of [...requesters, ...responders]) await h.registry.call('JoinRelation', { relation_id: relation.id, unit });
  return relation.id as string;
}

/** google.protobuf.Struct from JSON, as grpc-js clients send it. */
export { jsonToStruct as struct, structToJson as json } from '../../src/struct.ts';
