// The SDK's view of relgate's messages: requests and responses whose fields
// are typed by the interface, and watch events carrying them.
import type { Interfaces } from '../../gen/interfaces.ts';
import type { RelationUnit__Output } from '../../gen/relgate/v1/RelationUnit.ts';
import type { Request__Output } from '../../gen/relgate/v1/Request.ts';
import type { RequesterFlags__Output } from '../../gen/relgate/v1/RequesterFlags.ts';
import type { ResponderFlags__Output } from '../../gen/relgate/v1/ResponderFlags.ts';
import type { Response__Output } from '../../gen/relgate/v1/Response.ts';
import type { Unit__Output } from '../../gen/relgate/v1/Unit.ts';

export type { Interfaces };

/**
 * Interface names the SDK knows the field types of: the built-in ones from
 * gen/interfaces.ts. Interfaces of your own are added by declaration merging
 * (see docs/sdk.md): `declare module '<path>/gen/interfaces.ts' { interface Interfaces { ... } }`, or
 * `'relgate/gen/interfaces'` with the installed package.
 */
export type InterfaceName = keyof Interfaces;
/** What a requester of interface I sends. */
export type RequestFields<I extends InterfaceName> = Interfaces[I]['request'];
/** What a responder of interface I answers. */
export type ResponseFields<I extends InterfaceName> = Interfaces[I]['response'];

/** A stored request, its fields typed by the interface. */
export type Request<F> = Omit<Request__Output, 'fields'> & { fields: F };
/**
 * A stored response. A failure (code other than 0) may leave required
 * fields out; check `code` before relying on them.
 */
export type Response<F> = Omit<Response__Output, 'fields'> & { fields: F };

export type RequesterFlags = RequesterFlags__Output;
export type ResponderFlags = ResponderFlags__Output;
export type RelationUnit = RelationUnit__Output;
/** A unit with the properties it registered: ingress_address, egress_subnets, labels. */
export type Unit = Unit__Output;
/** Who a request is addressed to: one responder unit, or every unit whose labels match a selector. */
export type Delivery = { unit: string } | { selector: string };

export type RequestFilter = 'all' | 'new' | 'answered';

/**
 * What happened, as the gateway's EventType without its prefix, plus
 * RESYNC: the watch's history was compacted away while it was
 * disconnected; a fresh snapshot (ADDED events, then SNAPSHOT_COMPLETE)
 * follows and replaces everything delivered before.
 */
export type WatchEventType =
  | 'ADDED'
  | 'MODIFIED'
  | 'DELETED'
  | 'BOOKMARK'
  | 'SNAPSHOT_COMPLETE'
  | 'UNIT_JOINED'
  | 'UNIT_DEPARTED'
  | 'RELATION_REMOVED'
  | 'FLAGS'
  | 'RESYNC';

export interface WatchEvent<Req, Res> {
  type: WatchEventType;
  /** Revision of the change (for BOOKMARK: every change up to it was delivered). */
  revision: number;
  /** Relation of the event; empty for BOOKMARK, SNAPSHOT_COMPLETE and RESYNC. */
  relationId: string;
  request?: Request<Req>;
  response?: Response<Res>;
  unit?: RelationUnit;
  requesterFlags?: RequesterFlags;
  responderFlags?: ResponderFlags;
}

/** Where a watch begins: a snapshot of the current state, now, or after a revision already seen. */
export type WatchStart = 'snapshot' | 'now' | { afterRevision: number };

export interface WatchOptions {
  /** Where the watch begins (default: snapshot). */
  start?: WatchStart;
  /** Milliseconds between BOOKMARK events while nothing changes: 0 uses the gateway's default, otherwise 50 to 86,400,000 (a day). */
  progressIntervalMs?: number;
  /** Ends the watch when aborted. */
  signal?: AbortSignal;
  /**
   * Events held for a consumer that has not read them before the stream is
   * paused (default 1000). A paused stream pushes back on the gateway,
   * which cuts a watcher that stays behind; the watch then resumes. The
   * first snapshot is held whole: one cut off would start over.
   */
  bufferEvents?: number;
}

export interface CreateOptions {
  /** The relation to create the request on; defaults to the endpoint's relation. */
  relation?: string;
  /** UUID for idempotency: creating the same id with the same fields again returns the original. Generated when unset. */
  requestId?: string;
  /** Who the request is addressed to; any responder unit when unset. */
  delivery?: Delivery;
  /** The request expires unanswered after this many milliseconds. */
  ttlMs?: number;
}

/** A write that happens only if the request is still as the caller last saw it. */
export interface ConditionalOptions {
  /**
   * The request's revision as last read or watched (`request.revision`, the revision that last changed it). When the
   * request has changed since (or, for createOrUpdate, none matches), the call fails with ABORTED, reason
   * REVISION_MISMATCH, and writes nothing. 0 or unset: unconditionally.
   */
  expectedRevision?: number | string;
}

export interface CallOptions extends CreateOptions {
  /** When the call gives up with DEADLINE_EXCEEDED (the request stays stored). Default: the connection's timeoutMs (30 s). */
  deadline?: Date | number;
  /** Store the request and wait even when no responder unit is watching. */
  waitForResponders?: boolean;
  signal?: AbortSignal;
}
