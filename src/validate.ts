// Checks of client input that are not interface fields. Each returns the
// violations it finds, so one error can report all of them.
import { isIP } from 'node:net';
import { createHash } from 'node:crypto';
import { invalidArgument, type FieldViolation } from './errors.ts';
import { isLabelKey, isLabelValue } from './selector.ts';

export const APPLICATION_NAME = /^[a-z][a-z0-9]*(-[a-z0-9]+)*$/;
export const UNIT_NAME = /^([a-z][a-z0-9]*(?:-[a-z0-9]+)*)\/(0|[1-9][0-9]{0,8})$/;
export const ENDPOINT_NAME = /^[a-z][a-z0-9]*(-[a-z0-9]+)*$/;
/** An interface's name (as interfaces.ts allows), a colon and the relation's number: "tls-certificates:1". */
export const RELATION_ID = /^[a-z][a-z0-9]*(-[a-z0-9]+)*:[1-9][0-9]{0,15}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export class Violations {
  readonly list: FieldViolation[] = [];

  add(field: string, description: string): this {
    this.list.push({ field, description });
    return this;
  }

  addAll(violations: readonly FieldViolation[]): this {
    this.list.push(...violations);
    return this;
  }

  /** Throws INVALID_ARGUMENT listing every violation, if there is any. */
  throwIfAny(): void {
    if (this.list.length > 0) throw invalidArgument(this.list);
  }

  required(field: string, value: string): this {
    if (value === '') this.add(field, 'is required');
    return this;
  }

  pattern(field: string, value: string, pattern: RegExp, what: string): this {
    if (value === '') return this.add(field, 'is required');
    if (!pattern.test(value)) this.add(field, `must be ${what}`);
    return this;
  }

  uuid(field: string, value: string, optional = false): this {
    if (value === '' && optional) return this;
    return this.pattern(field, value, UUID, 'a UUID such as "123e4567-e89b-42d3-a456-426614174000"');
  }

  relationId(field: string, value: string): this {
    return this.pattern(field, value, RELATION_ID, 'a relation id "<interface>:<number>" such as "tls-certificates:1"');
  }

  unitName(field: string, value: string): this {
    return this.pattern(field, value, UNIT_NAME, 'a unit name "<application>/<number>"');
  }

  subnets(field: string, values: readonly string[]): this {
    values.forEach((value, i) => {
      if (!isCidr(value)) this.add(`${field}[${i}]`, 'must be a CIDR subnet such as "10.0.0.0/24"');
    });
    return this;
  }

  labels(field: string, labels: Record<string, string>): this {
    for (const [key, value] of Object.entries(labels)) {
      if (!isLabelKey(key)) this.add(`${field}.${key}`, 'label key must be a Kubernetes-style name ([prefix/]name, up to 63 characters)');
      else if (!isLabelValue(value)) this.add(`${field}.${key}`, 'label value must be empty or up to 63 letters, digits, "-", "_", "."');
    }
    return this;
  }

  /** At most MAX_MATCH_FIELDS fields to match on, counted before any is read. */
  matchFieldCount(count: number): this {
    if (count > MAX_MATCH_FIELDS) this.add('match_fields', `must name at most ${MAX_MATCH_FIELDS} fields (has ${count})`);
    return this;
  }

  address(field: string, value: string): this {
    if (value !== '' && !isIP(value) && !/^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$/.test(value)) {
      this.add(field, 'must be an IP address or a host name');
    }
    return this;
  }
}

// More than any interface's identifying fields, and few enough that checking and comparing them costs next to nothing:
// 150,000 of them held the event loop for seconds before they were refused.
export const MAX_MATCH_FIELDS = 64;

export function isCidr(value: string): boolean {
  const [address, prefix, ...rest] = value.split('/');
  if (rest.length > 0 || address === undefined || prefix === undefined || !/^\d{1,3}$/.test(prefix)) return false;
  const family = isIP(address);
  return family !== 0 && Number(prefix) <= (family === 4 ? 32 : 128);
}

export interface DurationMessage {
  seconds?: string | number;
  nanos?: number;
}

/** A google.protobuf.Duration in milliseconds (0 when unset), with range checks. */
export function durationMs(violations: Violations, field: string, duration: DurationMessage | null | undefined, max: number): number {
  if (!duration) return 0;
  const seconds = Number(duration.seconds ?? 0);
  const nanos = duration.nanos ?? 0;
  // Up to the next millisecond: a duration under one is not none.
  const ms = seconds * 1000 + Math.ceil(nanos / 1e6);
  // Check the parts, not ms: a negative duration under a millisecond truncates to -0.
  if (!Number.isFinite(ms) || seconds < 0 || nanos < 0) violations.add(field, 'must not be negative');
  else if (ms > max) violations.add(field, `must be at most ${max / 1000} seconds`);
  return ms;
}

/**
 * The revision a conditional write expects its request at (an int64, which proto-loader gives as a decimal string):
 * 0 when unset, which sets no condition. Revisions are safe integers: a larger value was never one, and could not be
 * echoed exactly in the error that refuses it.
 */
export function expectedRevision(violations: Violations, value: string | number | undefined): number {
  const revision = Number(value ?? 0);
  if (!(revision >= 0)) violations.add('expected_revision', 'must not be negative (0 sets no condition)');
  else if (!Number.isSafeInteger(revision)) violations.add('expected_revision', `must be at most ${Number.MAX_SAFE_INTEGER}`);
  return revision;
}

export const DEFAULT_PAGE_SIZE = 100;
export const MAX_PAGE_SIZE = 1000;

export function pageSize(violations: Violations, value: number): number {
  if (value > MAX_PAGE_SIZE) violations.add('page_size', `must be at most ${MAX_PAGE_SIZE}`);
  return value === 0 ? DEFAULT_PAGE_SIZE : Math.min(value, MAX_PAGE_SIZE);
}

/**
 * Page tokens are opaque to clients: the position reached plus a hash of the
 * query, so a token cannot be replayed against a different query.
 */
export function encodePageToken(after: number, query: string): string {
  return Buffer.from(JSON.stringify({ a: after, q: queryHash(query) })).toString('base64url');
}

export function decodePageToken(violations: Violations, token: string, query: string): number {
  if (token === '') return 0;
  try {
    const parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as { a?: unknown; q?: unknown };
    if (typeof parsed.a === 'number' && Number.isSafeInteger(parsed.a) && parsed.a >= 0 && parsed.q === queryHash(query)) return parsed.a;
    violations.add('page_token', 'does not belong to this query');
  } catch {
    violations.add('page_token', 'is not a page token returned by this method');
  }
  return 0;
}

function queryHash(query: string): string {
  return createHash('sha256').update(query).digest('base64url').slice(0, 12);
}
