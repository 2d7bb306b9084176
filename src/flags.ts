// Endpoint flags (charms.reactive's) derived from per-relation counters.
// Each request contributes a few counter keys; a write adjusts the counters
// by the difference between the request before and after it, so flags cost
// O(1) per write instead of a scan of the relation.
import type { FlagsRecord, RelationCounters, RequestRecord } from './store/store.ts';

export interface RequesterFlags {
  available: boolean;
  has_responses: boolean;
  all_responses: boolean;
}

export interface ResponderFlags {
  available: boolean;
  has_requests: boolean;
  new_requests: boolean;
}

/** The counter keys a request contributes to. */
export function contribution(request: RequestRecord | null): string[] {
  if (!request) return [];
  const keys = ['requests'];
  if (request.response_count > 0) keys.push('with_responses');
  if (request.state !== 'answered') keys.push('incomplete');
  if (request.delivery.mode === 'any') {
    keys.push('any');
    if (request.state === 'pending') keys.push(request.claim ? `any_claimed:${request.claim.unit}` : 'any_new');
    return keys;
  }
  for (const unit of request.expected_units) {
    keys.push(`to:${unit}`);
    if (request.state === 'pending' && !request.answered_units.includes(unit)) keys.push(`new:${unit}`);
  }
  return keys;
}

/** Applies a request's change to the counters in place. */
export function applyChange(counters: RelationCounters, before: RequestRecord | null, after: RequestRecord | null): void {
  for (const key of contribution(before)) bump(counters, key, -1);
  for (const key of contribution(after)) bump(counters, key, 1);
}

function bump(counters: RelationCounters, key: string, by: number): void {
  const value = (counters[key] ?? 0) + by;
  if (value === 0) delete counters[key];
  else counters[key] = value;
}

const count = (counters: RelationCounters, key: string): number => counters[key] ?? 0;

export function requesterFlags(counters: RelationCounters, respondersJoined: boolean): RequesterFlags {
  return {
    available: respondersJoined,
    has_responses: count(counters, 'with_responses') > 0,
    all_responses: count(counters, 'requests') > 0 && count(counters, 'incomplete') === 0,
  };
}

export function responderFlags(counters: RelationCounters, unit: string, requestersJoined: boolean): ResponderFlags {
  return {
    available: requestersJoined,
    has_requests: count(counters, 'any') > 0 || count(counters, `to:${unit}`) > 0,
    new_requests: count(counters, 'any_new') > 0 || count(counters, `any_claimed:${unit}`) > 0 || count(counters, `new:${unit}`) > 0,
  };
}

/** Flags over several relations: any relation's flag, but all_responses needs every relation with requests complete. */
export function mergeRequesterFlags(all: { flags: RequesterFlags; counters: RelationCounters }[]): RequesterFlags {
  const withRequests = all.filter(({ counters }) => count(counters, 'requests') > 0);
  return {
    available: all.some(({ flags }) => flags.available),
    has_responses: all.some(({ flags }) => flags.has_responses),
    all_responses: withRequests.length > 0 && withRequests.every(({ flags }) => flags.all_responses),
  };
}

export function mergeResponderFlags(all: ResponderFlags[]): ResponderFlags {
  return {
    available: all.some((flags) => flags.available),
    has_requests: all.some((flags) => flags.has_requests),
    new_requests: all.some((flags) => flags.new_requests),
  };
}

export function sameFlags(a: FlagsRecord | undefined, b: FlagsRecord): boolean {
  return a !== undefined && Object.keys(b).every((key) => a[key] === b[key]);
}
