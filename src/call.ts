// Synchronous calls on top of the durable model: the request is stored like
// any other, then the call waits on the hub for its responses.
import { Code, RelgateError, failedPrecondition } from './errors.ts';
import { requestMessage, responseMessage } from './present.ts';
import { newRequestId } from './request-id.ts';
import { SetMap } from './set-map.ts';
import type { CreateInput, RequestService } from './request-service.ts';
import type { Change, LoggedRequest } from './store/store.ts';
import type { WatchHub } from './watch-hub.ts';

export interface CallOptions extends CreateInput {
  wait_for_responders: boolean;
}

type ResponseMessage = ReturnType<typeof responseMessage>;

export interface CallOutcome {
  /** Every expected response arrived. */
  complete: boolean;
  /** The request's time to live ended the wait. */
  expired: boolean;
  /** The request was withdrawn (or its relation removed) before every answer came. */
  withdrawn?: boolean;
  /** Expected units that did not answer (none for any-delivery). */
  missing: string[];
  /** The request as stored by the call. */
  request: Record<string, unknown>;
  /** The request as the last response left it, when the call saw that change (not for a replay answered before). */
  answered?: Record<string, unknown> | undefined;
}

/** Responders watching through other replicas that share the store. */
export interface RemoteWatchers {
  isWatched(relationId: string, side: 'responder', unit?: string): Promise<boolean>;
}

/** A running call's view of the commits that concern its request. */
interface CallWaiter {
  /** The calling requester unit. */
  unit: string;
  arrivals: ResponseMessage[];
  expired: boolean;
  withdrawn?: boolean;
  /** Set when the caller left the relation: it may no longer read the response. */
  departed?: RelgateError;
  /** The request after the latest change to it. */
  latest?: LoggedRequest | undefined;
  wake?: (() => void) | undefined;
}

export class CallService {
  readonly #requests: RequestService;
  readonly #hub: WatchHub;
  readonly #elsewhere: RemoteWatchers | undefined;
  /** Running calls by request id; one listener serves them all. */
  readonly #waiting = new SetMap<CallWaiter>();
  /** The same calls by relation, which a removal of the relation ends. */
  readonly #byRelation = new SetMap<CallWaiter>();

  constructor(requests: RequestService, hub: WatchHub, elsewhere?: RemoteWatchers) {
    this.#requests = requests;
    this.#hub = hub;
    this.#elsewhere = elsewhere;
    hub.onCommit((changes) => this.#route(changes));
  }

  /**
   * Creates the request and streams its responses until every expected one
   * arrived or the deadline passed. `onStart` sees the stored request first.
   */
  async run(
    caller: string,
    options: CallOptions,
    deadline: number,
    onStart: (request: Record<string, unknown>) => void,
    onResponse: (response: ResponseMessage) => void,
    cancelled: AbortSignal,
  ): Promise<CallOutcome> {
    await this.#checkResponders(caller, options);
    // The id is known before the request is stored, so no response can slip past the waiter.
    const input = { ...options, request_id: options.request_id || newRequestId() };
    const requestId = input.request_id.toLowerCase();
    const waiter: CallWaiter = { unit: caller, arrivals: [], expired: false };
    this.#waiting.add(requestId, waiter);
    this.#byRelation.add(input.relation_id, waiter);
    const seen = new Set<string>();
    try {
      const { request, replayed } = await this.#requests.create(caller, input);
      // A replayed request may already have answers; live ones dedupe by unit.
      if (replayed) waiter.arrivals.unshift(...(await this.#requests.allResponses(caller, requestId)));
      onStart(request);
      waiter.expired ||= request.state === 'REQUEST_STATE_EXPIRED';
      const expected = request.expected_count;
      const missing = () => (request.delivery.mode === 'DELIVERY_MODE_ANY' ? [] : request.expected_units.filter((unit) => !seen.has(unit)));
      for (;;) {
        for (const response of waiter.arrivals.splice(0)) {
          if (seen.has(response.responder_unit)) continue;
          seen.add(response.responder_unit);
          onResponse(response);
        }
        if (seen.size >= expected) {
          const answered = waiter.latest && requestMessage(waiter.latest, { unit: caller, side: 'requester' });
          return { complete: true, expired: false, missing: [], request, answered };
        }
        // Answers committed before the caller left were its own; none after reaches it.
        if (waiter.departed) throw waiter.departed;
        // An expired or withdrawn request takes no more answers: waiting on would only run out the deadline.
        if (waiter.expired) return { complete: false, expired: true, missing: missing(), request };
        if (waiter.withdrawn) return { complete: false, expired: false, withdrawn: true, missing: missing(), request };
        const timedOut = await waitFor(deadline, cancelled, (resolve) => (waiter.wake = resolve));
        waiter.wake = undefined;
        if (timedOut && waiter.arrivals.length === 0) return { complete: false, expired: false, missing: missing(), request };
      }
    } finally {
      this.#waiting.delete(requestId, waiter);
      this.#byRelation.delete(input.relation_id, waiter);
    }
  }

  /** Hands each response, expiry and withdrawal to the calls waiting for that request. */
  #route(changes: readonly Change[]): void {
    if (this.#waiting.isEmpty) return;
    for (const change of changes) {
      const data = change.data;
      if (data.kind === 'response') {
        for (const waiter of this.#waiting.get(data.response.request_id)) {
          if (waiter.departed) continue;
          waiter.arrivals.push(responseMessage(data.response));
          waiter.wake?.();
        }
      } else if (data.kind === 'relation-removed') {
        withdraw(this.#byRelation.get(change.relation_id));
      } else if (data.kind === 'unit-departed' && data.unit.side === 'requester') {
        departed(this.#byRelation.get(change.relation_id), data.unit.unit, change.relation_id);
      } else if (data.kind === 'request' && !data.after) {
        withdraw(this.#waiting.get(data.before.request_id));
      } else if (data.kind === 'request') {
        const expired = data.after.state === 'expired';
        for (const waiter of this.#waiting.get(data.after.request_id)) {
          waiter.latest = data.after;
          if (!expired) continue;
          waiter.expired = true;
          waiter.wake?.();
        }
      }
    }
  }

  /**
   * NO_RESPONDERS unless a responder watches (here or on another replica) or
   * the caller asked to wait. Bad input and membership errors come first and
   * a replay skips it (the stored request may already be answered): both are
   * known only from a dry run of the create, needed only when nobody watches here.
   */
  async #checkResponders(caller: string, options: CallOptions): Promise<void> {
    if (options.wait_for_responders) return;
    const unit = options.delivery.mode === 'unit' ? options.delivery.unit : undefined;
    if (this.#hub.isWatched(options.relation_id, 'responder', unit)) return;
    const { replay } = await this.#requests.checkCreate(caller, options);
    if (replay) return;
    if (await this.#elsewhere?.isWatched(options.relation_id, 'responder', unit)) return;
    throw new RelgateError(Code.UNAVAILABLE, `no responder unit${unit ? ` ${unit}` : ''} is watching relation ${options.relation_id}; set wait_for_responders to store the request anyway`, {
      reason: 'NO_RESPONDERS',
      metadata: { relation_id: options.relation_id, ...(unit ? { unit } : {}) },
    });
  }
}

/** Tells calls that their request is gone: withdrawn, or removed with its relation. */
function withdraw(waiters: Iterable<CallWaiter>): void {
  for (const waiter of waiters) {
    waiter.withdrawn = true;
    waiter.wake?.();
  }
}

/** Ends the calls of a requester unit that left the relation, as its watches end: what it waited for is no longer its to read. */
function departed(waiters: Iterable<CallWaiter>, unit: string, relationId: string): void {
  for (const waiter of waiters) {
    if (waiter.unit !== unit) continue;
    waiter.departed = failedPrecondition('UNIT_NOT_JOINED', `unit ${unit} left relation ${relationId} while its call waited`, { relation_id: relationId, unit });
    waiter.wake?.();
  }
}

/** Waits until woken (false) or until the deadline or cancellation (true). */
function waitFor(deadline: number, cancelled: AbortSignal, arm: (wake: () => void) => void): Promise<boolean> {
  return new Promise((resolve) => {
    if (cancelled.aborted) return resolve(true);
    const timer = setTimeout(() => finish(true), Math.max(0, deadline - Date.now()));
    const onAbort = () => finish(true);
    cancelled.addEventListener('abort', onAbort, { once: true });
    function finish(timedOut: boolean) {
      clearTimeout(timer);
      cancelled.removeEventListener('abort', onAbort);
      resolve(timedOut);
    }
    arm(() => finish(false));
  });
}

/**
 * The moment a call stops waiting: shortly before the client's own deadline,
 * so that our status (with details) or CallAll's `finished` arrives first,
 * even on a busy machine.
 */
export function serverDeadline(clientDeadline: Date | number, defaultMs: number): number {
  const at = clientDeadline instanceof Date ? clientDeadline.getTime() : clientDeadline;
  if (!Number.isFinite(at)) return Date.now() + defaultMs;
  const remaining = at - Date.now();
  return Date.now() + Math.max(0, remaining - Math.min(DEADLINE_MARGIN_MS, remaining * 0.1));
}

/** How much earlier than the client's deadline a call ends, at most. */
const DEADLINE_MARGIN_MS = 250;
