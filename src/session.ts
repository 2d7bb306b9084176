// The session: one bidirectional stream per unit. Commands go up with a
// correlation id and are acknowledged once durable (or with their own error
// status; a bad command never ends the stream); the unit's watches come down
// the same stream. Same service logic as the unary RPCs, same hub as the
// server-streaming watches: only the transport differs.
import type * as grpc from '@grpc/grpc-js';
import { Code, RelgateError, asRelgateError, toRpcStatus, toServiceError } from './errors.ts';
import { undecodableError, wireSize } from './utf8.ts';
import type { WatchSink, WatchSpec, Watcher } from './watch-hub.ts';

/** Commands executing at once per session; beyond it the stream stops reading. */
export const MAX_IN_FLIGHT = 1024;
/**
 * Bytes of commands executing at once per session, as they came on the wire; beyond it the stream stops reading too.
 * Commands pile up while the store is slow, and 1024 commands of the largest size would hold gigabytes.
 */
export const MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024;

/**
 * ErrorInfo metadata of a session the gateway wound down (one of its watches
 * ended, a shutdown, a revoked token): every command it read was carried out
 * and acknowledged first, so a command without an acknowledgement was not
 * carried out and may be sent again.
 */
export const UNACKNOWLEDGED_COMMANDS = 'unacknowledged_commands';
export const NOT_CARRIED_OUT = 'not_carried_out';

type Req = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
type Command = (unit: string, body: Req) => Promise<unknown>;

export interface SessionDeps {
  /** Parses a command's body into service input; shared with the unary handlers. */
  commands: Record<string, Command>;
  /** Builds a watch spec for the session's unit from WatchOptions. */
  watchSpec(unit: string, side: 'requester' | 'responder', options: Req): WatchSpec;
  /** Starts a watch with the same membership checks as the RPCs. */
  startWatch(spec: WatchSpec, sink: WatchSink): Promise<Watcher>;
  /** Called once when the session ends, with its status code. */
  onEnd(code: number, error?: unknown): void;
}

export class Session {
  readonly #call: grpc.ServerDuplexStream<Req, unknown>;
  readonly #unit: string;
  readonly #deps: SessionDeps;
  readonly #watchers: Watcher[] = [];
  #inFlight = 0;
  #inFlightBytes = 0;
  #started = false;
  #ended = false;
  #halfClosed = false;
  #paused = false;
  #blocked = false;
  /** Set when a watch ended: the session reads no more commands and ends with this once those read are acknowledged. */
  #endWith: RelgateError | undefined;
  /** Settles once the start message's watches are running: commands wait for it. */
  #watching: Promise<void> = Promise.resolve();

  constructor(call: grpc.ServerDuplexStream<Req, unknown>, unit: string, deps: SessionDeps) {
    this.#call = call;
    this.#unit = unit;
    this.#deps = deps;
    call.on('data', (message: Req) => this.#onMessage(message));
    call.on('end', () => {
      this.#halfClosed = true;
      this.#maybeFinish();
    });
    call.on('cancelled', () => this.#stop(undefined, true));
    call.on('error', () => this.#stop(undefined, true));
  }

  /** Ends the session with an error (the gateway shuts down, the unit's token is revoked), once the commands it read are acknowledged. */
  end(error: RelgateError): void {
    this.#windDown(error);
  }

  #onMessage(message: Req): void {
    if (this.#ended || this.#endWith) return;
    if (message.kind === 'start') {
      if (this.#started) {
        return this.#ack({ correlation_id: '', error: toRpcStatus(new RelgateError(Code.FAILED_PRECONDITION, 'start must be the first message of a session', { reason: 'LATE_START' })) });
      }
      const invalidStart = undecodableError(message);
      if (invalidStart) return this.#stop(invalidStart);
      return void (this.#watching = this.#start(message.start));
    }
    this.#started = true; // watches may only be chosen before the first command
    const command = message.command as Req | null;
    const name = command?.command as string | undefined;
    const run = name ? this.#deps.commands[name] : undefined;
    const correlationId = (command?.correlation_id as string | undefined) ?? '';
    const invalidText = undecodableError(message);
    if (invalidText) return this.#ack({ correlation_id: correlationId, error: toRpcStatus(invalidText) });
    if (!run || !name) {
      return this.#ack({ correlation_id: correlationId, error: toRpcStatus(new RelgateError(Code.INVALID_ARGUMENT, 'a session message must be start (first) or a command', { reason: 'INVALID_COMMAND' })) });
    }
    const bytes = wireSize(message);
    this.#inFlight += 1;
    this.#inFlightBytes += bytes;
    this.#throttle();
    // After the watches started, so that their snapshots come before the session's own changes;
    // not at all when starting them ended the session, as nobody would learn the outcome.
    this.#watching.then(() => (this.#ended ? undefined : run(this.#unit, command?.[name] as Req))).then(
      (result) => this.#ack({ correlation_id: correlationId, [name]: result }),
      (error: unknown) => this.#ack({ correlation_id: correlationId, error: toRpcStatus(asRelgateError(error)) }),
    ).finally(() => {
      this.#inFlight -= 1;
      this.#inFlightBytes -= bytes;
      this.#throttle();
      this.#maybeFinish();
    });
  }

  async #start(start: Req | null): Promise<void> {
    this.#started = true;
    // Counted as in flight: a half-close right after start still gets the watches' snapshots.
    this.#inFlight += 1;
    const wanted: ['incoming_requests' | 'responses', 'responder' | 'requester'][] = [
      ['incoming_requests', 'responder'],
      ['responses', 'requester'],
    ];
    try {
      for (const [watch, side] of wanted) {
        const options = start?.[watch] as Req | null | undefined;
        if (!options) continue;
        const spec = this.#deps.watchSpec(this.#unit, side, options);
        const watcher = await this.#deps.startWatch(spec, this.#sink(watch));
        // The session may have ended, or begun to, while the watch started: nothing would stop it later.
        if (this.#ended || this.#endWith) return watcher.stop();
        this.#watchers.push(watcher);
      }
    } catch (error) {
      this.#stop(asRelgateError(error));
    } finally {
      this.#inFlight -= 1;
      this.#maybeFinish();
    }
  }

  #sink(watch: string): WatchSink {
    return {
      // Once the session winds down (a revoked token among the reasons), only acknowledgements go out.
      write: (batch) => (this.#endWith ? true : this.#write({ events: { watch, batch } })),
      onDrain: (callback) => this.#call.once('drain', callback),
      end: (error) =>
        this.#windDown(
          error ?? new RelgateError(Code.FAILED_PRECONDITION, `the ${watch} watch ended: the unit left its relation, or the relation was removed`, { reason: 'WATCH_ENDED' }),
          watch,
        ),
    };
  }

  /**
   * The session ends (a watch of it ended, the gateway shuts down...), but commands already read may be committing.
   * They are carried out and acknowledged first, none is read after, and the status says so: the client can tell what
   * was not carried out.
   */
  #windDown(error: RelgateError, watch?: string): void {
    if (this.#ended || this.#endWith) return;
    this.#endWith = new RelgateError(error.code, error.message, {
      reason: error.reason,
      metadata: { ...error.metadata, ...(watch ? { watch } : {}), [UNACKNOWLEDGED_COMMANDS]: NOT_CARRIED_OUT },
      cause: error,
    });
    for (const watcher of this.#watchers) watcher.stop();
    this.#throttle();
    this.#maybeFinish();
  }

  #ack(ack: Req): void {
    this.#write({ ack });
  }

  #write(message: Req): boolean {
    if (this.#ended) return true;
    const ok = this.#call.write(message);
    if (!ok && !this.#blocked) {
      // Stop taking commands until the client reads its acks and events.
      this.#blocked = true;
      this.#call.once('drain', () => {
        this.#blocked = false;
        this.#throttle();
      });
      this.#throttle();
    }
    return ok;
  }

  #throttle(): void {
    const pause = this.#endWith !== undefined || this.#blocked || this.#inFlight >= MAX_IN_FLIGHT || this.#inFlightBytes >= MAX_IN_FLIGHT_BYTES;
    if (pause && !this.#paused) this.#call.pause();
    if (!pause && this.#paused) this.#call.resume();
    this.#paused = pause;
  }

  #maybeFinish(): void {
    if (this.#endWith) {
      if (this.#inFlight === 0) this.#stop(this.#endWith);
      return;
    }
    if (!this.#halfClosed || this.#inFlight > 0 || this.#finishing) return;
    this.#finishing = true;
    // What the watches owe (a snapshot, the changes of acknowledged commands) reaches the client before the OK.
    void Promise.all(this.#watchers.map((watcher) => watcher.drained())).then(() => this.#stop());
  }

  #finishing = false;

  #stop(error?: RelgateError, cancelled = false): void {
    if (this.#ended) return;
    this.#ended = true;
    for (const watcher of this.#watchers) watcher.stop();
    if (cancelled) return this.#deps.onEnd(Code.CANCELLED);
    this.#deps.onEnd(error?.code ?? Code.OK, error);
    if (error) this.#call.emit('error', toServiceError(error));
    else this.#call.end();
  }
}
