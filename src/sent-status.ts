// The status grpc-js actually sends on a unary call, for its access log line: a reply over the send limit never
// leaves, and grpc-js ends the call with RESOURCE_EXHAUSTED itself, past the handler that gave it OK.
import { status as Code, type ServerInterceptingCall, type ServerInterceptor, type ServerUnaryCall } from '@grpc/grpc-js';
import { onSendStatus } from './errors.ts';

type Done = (code: Code) => void;

export class SentStatuses {
  /**
   * Calls waiting for their status, by the call's metrics recorder: the one object grpc-js gives both the
   * interceptor and the handler of a call.
   */
  readonly #waiting = new WeakMap<object, Done>();
  /** Statuses grpc-js sent before the handler finished: a passed deadline. */
  readonly #early = new WeakMap<object, Code>();

  /** Sees every status sent on the innermost call, grpc-js's own too; the same call goes on, as in errors.ts. */
  readonly interceptor: ServerInterceptor = (_method, call) => {
    onSendStatus(call, (status, sendStatus) => {
      const key = call.getMetricsRecorder();
      const code = status.code ?? Code.UNKNOWN;
      const waiting = this.#waiting.get(key);
      if (waiting) waiting(code);
      else this.#early.set(key, code);
      sendStatus(status);
    });
    return call as ServerInterceptingCall;
  };

  /** Calls done once with the status sent on the call, or CANCELLED when the client went away before one was. */
  onSent(call: ServerUnaryCall<unknown, unknown>, done: Done): void {
    const key = call.getMetricsRecorder();
    let ended = false;
    const end = (code: Code) => {
      if (ended) return;
      ended = true;
      this.#waiting.delete(key);
      done(code);
    };
    const early = this.#early.get(key);
    if (early !== undefined) return end(early);
    if (call.cancelled) return end(Code.CANCELLED);
    this.#waiting.set(key, end);
    // grpc-js emits it at the end of every call, after the status it sent: only a call that ended without one gets CANCELLED.
    call.once('cancelled', () => end(Code.CANCELLED));
  }
}
