// Test fixtures on top of the harness: relations between freshly named
// applications (so tests in one file never share units), a listing of
// everything the store holds as the API shows it, and small polling helpers.
import { expect } from 'vitest';
import { Code } from '../../src/errors.ts';
import type { Rpc } from './harness.ts';

/** What the fixtures need from a harness or from clients of a child server. */
export interface Clients {
  registry: Rpc;
  requester(unit: string): Rpc;
  responder(unit: string): Rpc;
}

export interface World {
  relationId: string;
  requesterApp: string;
  responderApp: string;
  /** Requester unit names, e.g. ["web3/0", "web3/1"]. */
  requesters: string[];
  /** Responder unit names. */
  responders: string[];
  /** Requester client acting as requesters[i]. */
  req(i?: number): Rpc;
  /** Responder client acting as responders[i]. */
  res(i?: number): Rpc;
}

export interface WorldOptions {
  iface?: string;
  /** Number of requester units (default 1). */
  requesters?: number;
  /** Number of responder units (default 1). */
  responders?: number;
  /** Labels per responder unit index. */
  labels?: Record<number, Record<string, string>>;
  /** Reuse existing applications instead of registering new ones. */
  requesterApp?: string;
  responderApp?: string;
  /** Endpoint name on both sides (default "certificates"): relating the same applications again needs another. */
  endpoint?: string;
  /** Skip joining (units are registered only). */
  join?: boolean;
}

let counter = 0;

/** A unique application name with the given prefix. */
export function appName(prefix: string): string {
  counter += 1;
  return `${prefix}${process.pid % 1000}x${counter}`;
}

/** Registers two applications with units, relates them and joins every unit. */
export async function makeWorld(c: Clients, options: WorldOptions = {}): Promise<World> {
  const requesterApp = options.requesterApp ?? appName('web');
  const responderApp = options.responderApp ?? appName('ca');
  const requesters = Array.from({ length: options.requesters ?? 1 }, (_, i) => `${requesterApp}/${i}`);
  const responders = Array.from({ length: options.responders ?? 1 }, (_, i) => `${responderApp}/${i}`);
  if (!options.requesterApp) await c.registry.call('RegisterApplication', { name: requesterApp });
  if (!options.responderApp) await c.registry.call('RegisterApplication', { name: responderApp });
  if (!options.requesterApp) {
    for (const [i, unit] of requesters.entries()) {
      await c.registry.call('RegisterUnit', { name: unit, ingress_address: `10.1.0.${i + 1}`, egress_subnets: [`10.1.${i}.0/24`, 'fd00::/64'], labels: { role: 'web' } });
    }
  }
  if (!options.responderApp) {
    for (const [i, unit] of responders.entries()) {
      await c.registry.call('RegisterUnit', { name: unit, ingress_address: `10.2.0.${i + 1}`, egress_subnets: [`10.2.${i}.0/24`], labels: options.labels?.[i] ?? {} });
    }
  }
  const { relation } = await c.registry.call('CreateRelation', {
    interface: options.iface ?? 'tls-certificates',
    requester_application: requesterApp,
    requester_endpoint: options.endpoint ?? 'certificates',
    responder_application: responderApp,
    responder_endpoint: options.endpoint ?? 'certificates',
  });
  if (options.join !== false) {
    for (const unit of [...requesters, ...responders]) await c.registry.call('JoinRelation', { relation_id: relation.id, unit });
  }
  const requesterClients = requesters.map((unit) => c.requester(unit));
  const responderClients = responders.map((unit) => c.responder(unit));
  return {
    relationId: relation.id as string,
    requesterApp,
    responderApp,
    requesters,
    responders,
    req: (i = 0) => must(requesterClients[i], `requester ${i}`),
    res: (i = 0) => must(responderClients[i], `responder ${i}`),
  };
}

/**
 * Sends one CreateRelation (an http relation between the world's applications) through each registry at once, and
 * checks that exactly one created it, every other was refused with RELATION_EXISTS naming it, and it is listed once.
 */
export async function expectOneRelationFromCreatesAtOnce(registries: Rpc[], w: Pick<World, 'requesterApp' | 'responderApp'>): Promise<void> {
  const spec = { interface: 'http', requester_application: w.requesterApp, requester_endpoint: 'website', responder_application: w.responderApp, responder_endpoint: 'website' };
  const outcomes = await Promise.all(registries.map((registry) => registry.call('CreateRelation', spec).then((reply) => reply.relation.id as string, () => registry.fail('CreateRelation', spec))));
  const ids = outcomes.filter((outcome) => typeof outcome === 'string');
  expect(ids).toHaveLength(1);
  for (const refused of outcomes.filter((outcome) => typeof outcome !== 'string')) {
    expect([refused.code, refused.reason, refused.metadata]).toEqual([Code.ALREADY_EXISTS, 'RELATION_EXISTS', { relation_id: ids[0] }]);
  }
  const listed = await (registries.at(-1) as Rpc).call('ListRelations', { application: w.requesterApp, interface: 'http' });
  expect(listed.relations.map((relation: { id: string }) => relation.id)).toEqual(ids);
}

export function must<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`no ${what}`);
  return value;
}

/** Every page of a list method, concatenated. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function listAll(rpc: Rpc, method: 'ListRequests' | 'ListIncomingRequests', request: object): Promise<any[]> {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const all: any[] = [];
  let page_token = '';
  do {
    const page = await rpc.call(method, { ...request, page_size: 1000, page_token });
    all.push(...page.requests);
    page_token = page.next_page_token;
  } while (page_token !== '');
  return all;
}

/**
 * Everything the store holds, as the API lists it: applications, units,
 * relations with their units, and each world's requests with their responses
 * (read by its first requester unit).
 */
export async function snapshot(c: Clients, worlds: World[]): Promise<unknown> {
  const { applications } = await c.registry.call('ListApplications');
  const { units } = await c.registry.call('ListUnits');
  const { relations } = await c.registry.call('ListRelations');
  const requests: Record<string, unknown> = {};
  for (const world of worlds) {
    for (const request of await listAll(world.req(), 'ListRequests', { relation_id: world.relationId })) {
      const { responses } = await world.req().call('ListResponses', { request_id: request.request_id });
      requests[request.request_id] = { request, responses };
    }
  }
  return { applications, units, relations, requests };
}

/** The ids of a list of requests. */
export function ids(requests: { request_id: string }[]): string[] {
  return requests.map((request) => request.request_id);
}

/**
 * Polls until check stops throwing, for state that changes on a server timer
 * (lease and time-to-live expiry) and so has no event to await.
 */
export async function eventually<T>(check: () => Promise<T>, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
}

/** A generated request id: a time-ordered UUIDv7. */
export const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** Milliseconds of a google.protobuf.Timestamp as grpc-js returns it. */
export function millis(timestamp: { seconds: string; nanos: number } | null): number {
  expect(timestamp).not.toBeNull();
  return Number(timestamp?.seconds) * 1000 + Math.round((timestamp?.nanos ?? 0) / 1e6);
}
