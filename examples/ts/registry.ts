#!/usr/bin/env node
// Sets up the examples' applications, units and relations on a gateway.
//
//   node examples/ts/registry.ts relate <interface> <requester-unit> <responder-unit>...
//       registers the applications and units, relates the applications and
//       joins the units; prints the relation id (the existing one when the
//       applications are related already)
//   node examples/ts/registry.ts join <relation-id> <unit>
//   node examples/ts/registry.ts leave <relation-id> <unit>
//
// The gateway address comes from RELGATE_ADDRESS (default 127.0.0.1:50051),
// the admin token, in token mode, from RELGATE_ADMIN_TOKEN; each unit it
// registers in token mode has its token printed on standard error.
import * as grpc from '@grpc/grpc-js';
import type { ProtoGrpcType } from '../../gen/registry.ts';
import { loadApi } from '../../src/protos.ts';
import { Code, hasCode, hasReason, toRelgateError } from '../../src/client/errors.ts';

const address = process.env.RELGATE_ADDRESS ?? '127.0.0.1:50051';
const api = grpc.loadPackageDefinition(loadApi()) as unknown as ProtoGrpcType;
const registry = new api.relgate.v1.RegistryService(address, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
if (process.env.RELGATE_ADMIN_TOKEN) metadata.set('authorization', `Bearer ${process.env.RELGATE_ADMIN_TOKEN}`);
metadata.setOptions({ waitForReady: true });

type Method = (request: object, metadata: grpc.Metadata, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response?: unknown) => void) => unknown;

/** Calls a registry method; a failure is a RelgateError. */
function request(method: keyof typeof registry, body: object): Promise<unknown> {
  const fn = registry[method] as unknown as Method;
  return new Promise((resolve, reject) => {
    fn.call(registry, body, metadata, { deadline: Date.now() + 10_000 }, (error, response) => (error ? reject(toRelgateError(error)) : resolve(response)));
  });
}

/** Calls a registry method; ALREADY_EXISTS counts as done, so setup can run twice. */
function call(method: keyof typeof registry, body: object): Promise<unknown> {
  return request(method, body).catch((error: unknown) => (hasCode(error, Code.ALREADY_EXISTS) ? undefined : Promise.reject(error)));
}

const application = (unit: string) => unit.split('/')[0] as string;

async function registerUnit(unit: string): Promise<void> {
  await call('RegisterApplication', { name: application(unit) });
  const registered = (await call('RegisterUnit', { name: unit, ingress_address: '127.0.0.1' })) as { token?: string } | undefined;
  // In token mode the gateway shows a unit's token this once: the unit's example needs it (--token).
  if (registered?.token) process.stderr.write(`${unit} token: ${registered.token}\n`);
}

async function relate(iface: string, requester: string, responders: string[]): Promise<string> {
  for (const unit of [requester, ...responders]) await registerUnit(unit);
  const endpoint = iface;
  const relationId = await request('CreateRelation', {
    interface: iface,
    requester_application: application(requester),
    requester_endpoint: endpoint,
    responder_application: application(responders[0] as string),
    responder_endpoint: endpoint,
  }).then(
    (created) => (created as { relation: { id: string } }).relation.id,
    // Related before: the gateway names the relation these endpoints already have.
    (error: unknown) => (hasReason(error, 'RELATION_EXISTS') ? (error.metadata.relation_id as string) : Promise.reject(error)),
  );
  for (const unit of [requester, ...responders]) await call('JoinRelation', { relation_id: relationId, unit });
  return relationId;
}

async function main([command, ...args]: string[]): Promise<void> {
  if (command === 'relate' && args.length >= 3) {
    const [iface, requester, ...responders] = args as [string, string, ...string[]];
    process.stdout.write(`${await relate(iface, requester, responders)}\n`);
  } else if (command === 'join' && args.length === 2) {
    const [relationId, unit] = args as [string, string];
    await registerUnit(unit);
    await call('JoinRelation', { relation_id: relationId, unit });
  } else if (command === 'leave' && args.length === 2) {
    await call('LeaveRelation', { relation_id: args[0], unit: args[1] });
  } else {
    throw new Error('usage: registry.ts relate <interface> <requester-unit> <responder-unit>... | join <relation-id> <unit> | leave <relation-id> <unit>');
  }
}

try {
  await main(process.argv.slice(2));
} catch (error) {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
} finally {
  registry.close();
}
