// A relation between freshly named applications, so tests sharing one server
// never share units; with clients acting as each unit and small helpers for
// the calls the delivery, call and session tests make again and again.
import { expect } from 'vitest';
import type { RelgateError } from '../../src/errors.ts';
import { struct, type Harness, type Rpc } from './harness.ts';
import { openSession, type Msg, type SessionClient } from './streams.ts';

export interface RelationOptions {
  iface?: string;
  requesters?: number;
  responders?: number;
  /** Labels per responder unit index. */
  labels?: Record<number, Record<string, string>>;
  /** Responder unit indexes registered but not joined to the relation. */
  notJoined?: number[];
}

export interface Relation {
  h: Harness;
  id: string;
  requesters: string[];
  responders: string[];
  req(i?: number): Rpc;
  res(i?: number): Rpc;
  /** Opens a session acting as the unit. */
  session(unit: string, start?: Msg): Promise<SessionClient>;
}

let counter = 0;
const prefix = `${process.pid % 10000}`;

/** A unique application name. */
export function app(kind: string): string {
  counter += 1;
  return `${kind}${prefix}n${counter}`;
}

export async function relate(h: Harness, options: RelationOptions = {}): Promise<Relation> {
  const requesterApp = app('web');
  const responderApp = app('ca');
  const requesters = Array.from({ length: options.requesters ?? 1 }, (_, i) => `${requesterApp}/${i}`);
  const responders = Array.from({ length: options.responders ?? 1 }, (_, i) => `${responderApp}/${i}`);
  await h.registry.call('RegisterApplication', { name: requesterApp });
  await h.registry.call('RegisterApplication', { name: responderApp });
  for (const [i, unit] of requesters.entries()) {
    await h.registry.call('RegisterUnit', { name: unit, ingress_address: `10.1.0.${i + 1}`, egress_subnets: [`10.1.${i}.0/24`, 'fd00::/64'], labels: { role: 'web', idx: String(i) } });
  }
  for (const [i, unit] of responders.entries()) {
    await h.registry.call('RegisterUnit', { name: unit, ingress_address: `10.2.0.${i + 1}`, egress_subnets: [`10.2.${i}.0/24`], labels: options.labels?.[i] ?? {} });
  }
  const { relation } = await h.registry.call('CreateRelation', {
    interface: options.iface ?? 'tls-certificates',
    requester_application: requesterApp,
    requester_endpoint: 'certificates',
    responder_application: responderApp,
    responder_endpoint: 'certificates',
  });
  const skip = new Set((options.notJoined ?? []).map((i) => responders[i]));
  for (const unit of [...requesters, ...responders]) {
    if (!skip.has(unit)) await h.registry.call('JoinRelation', { relation_id: relation.id, unit });
  }
  const reqClients = requesters.map((unit) => h.requester(unit));
  const resClients = responders.map((unit) => h.responder(unit));
  return {
    h,
    id: relation.id as string,
    requesters,
    responders,
    req: (i = 0) => must(reqClients[i], `requester ${i}`),
    res: (i = 0) => must(resClients[i], `responder ${i}`),
    session: (unit, start) => openSession(h.server.address, unit, start),
  };
}

export function must<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`no ${what}`);
  return value;
}

export type Fields = Parameters<typeof struct>[0];

export const CSR: Fields = { common_name: 'web.example', sans: ['a.example'] };
export const CERT: Fields = { key: 'K', cert: 'C' };

export const ANY = { mode: 'DELIVERY_MODE_ANY' };
export const toUnit = (unit: string) => ({ mode: 'DELIVERY_MODE_UNIT', unit });
export const toSelector = (selector: string) => ({ mode: 'DELIVERY_MODE_SELECTOR', selector });

/** Creates a request as the requester unit i; returns the stored request message. */
export async function create(r: Relation, extra: Msg = {}, i = 0): Promise<Msg> {
  return (await r.req(i).call('CreateRequest', { relation_id: r.id, fields: struct(CSR), ...extra })).request;
}

/** Answers a request as responder unit i; returns the stored response message. */
export async function respond(r: Relation, requestId: string, i = 0, fields: Fields = CERT): Promise<Msg> {
  return (await r.res(i).call('Respond', { request_id: requestId, fields: struct(fields) })).response;
}

/** Expects a failure with the code and ErrorInfo reason. */
export function expectError(error: RelgateError, code: number, reason: string): void {
  expect({ code: error.code, reason: error.reason }, error.message).toEqual({ code, reason });
}

/** Request ids of a list. */
export function ids(requests: { request_id: string }[]): string[] {
  return requests.map((request) => request.request_id);
}

/** Ids of the requests the responder unit lists with the filter. */
export async function incoming(r: Relation, i: number, filter: 'REQUEST_FILTER_NEW' | 'REQUEST_FILTER_ALL' = 'REQUEST_FILTER_NEW'): Promise<string[]> {
  return ids((await r.res(i).call('ListIncomingRequests', { relation_id: r.id, filter, page_size: 1000 })).requests);
}

export const seconds = (ms: number) => ({ seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 });
