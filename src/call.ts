// Synchronous calls on top of the durable model: the request is stored like
// any other, then the call waits on the hub for its responses.
import { Code, RelgateError } from './errors.ts';
import { responseMessage } from './present.ts';
import type { CreateInput, RequestService } from './request-service.ts';
import type { Change } from './store/store.ts';
import type { WatchHub } from './watch-hub.ts';

export interface CallOptions extends CreateInput {
  wait_for_responders: boolean;
}

type ResponseMessage = ReturnType<typeof responseMessage>;

export class CallService {
  readonly #requests: RequestService;
  readonly #hub: WatchHub;

  constructor(requests: RequestService, hub: WatchHub) {
    this.#requests = requests;
    this.#hub = hub;
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
  ): Promise<{ complete: boolean; missing: string[]; request: Record<string, unknown> }> {
    // Membership errors come before NO_RESPONDERS, and nothing is stored for either.
    await this.#requests.requesterFlags(caller, options.relation_id);
    this.#checkResponders(options);
    const seen = new Set<string>();
    const arrivals: ResponseMessage[] = [];
    let wake: (() => void) | undefined;
    const unsubscribe = this.#hub.onCommit((changes: readonly Change[]) => {
      for (const change of changes) {
        if (change.data.kind === 'response' && change.data.response.request_id === requestId) {
          arrivals.push(responseMessage(change.data.response));
          wake?.();
        }
      }
    });
    let requestId = options.request_id.toLowerCase();
    try {
      const { request } = await this.#requests.create(caller, options);
      requestId = request.request_id;
      // A replayed request may already have answers; live ones dedupe by unit.
      arrivals.unshift(...(await this.#requests.listResponses(caller, requestId)).responses);
      onStart(request);
      const expected = request.expected_count;
      for (;;) {
        for (const response of arrivals.splice(0)) {
          if (seen.has(response.responder_unit)) continue;
          seen.add(response.responder_unit);
          onResponse(response);
        }
        if (seen.size >= expected) return { complete: true, missing: [], request };
        const timedOut = await waitFor(deadline, cancelled, (resolve) => (wake = resolve));
        wake = undefined;
        if (timedOut && arrivals.length === 0) {
          const missing = request.delivery.mode === 'DELIVERY_MODE_ANY' ? [] : request.expected_units.filter((unit) => !seen.has(unit));
          return { complete: false, missing, request };
        }
      }
    } finally {
      unsubscribe();
    }
  }

  #checkResponders(options: CallOptions): void {
    if (options.wait_for_responders) return;
    const unit = options.delivery.mode === 'unit' ? options.delivery.unit : undefined;
    if (this.#hub.isWatched(options.relation_id, 'responder', unit)) return;
    throw new RelgateError(Code.UNAVAILABLE, `no responder unit${unit ? ` ${unit}` : ''} is watching relation ${options.relation_id}; set wait_for_responders to store the request anyway`, {
      reason: 'NO_RESPONDERS',
      metadata: { relation_id: options.relation_id, ...(unit ? { unit } : {}) },
    });
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

/** The moment a call stops waiting: shortly before the client's own deadline, so our status (with details) arrives first. */
export function serverDeadline(clientDeadline: Date | number, defaultMs: number): number {
  const at = clientDeadline instanceof Date ? clientDeadline.getTime() : clientDeadline;
  if (!Number.isFinite(at)) return Date.now() + defaultMs;
  const remaining = at - Date.now();
  return Date.now() + Math.max(0, remaining - Math.min(100, remaining * 0.1));
}
