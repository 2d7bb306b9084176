// Structured JSON logs (pino). Payloads and credentials are never logged.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  const options = { level, base: { service: 'relgate' }, redact: ['metadata', 'token', '*.token', 'authorization'] };
  // Written as each line comes, in order: pino's default buffers, and flushing that buffer at exit retried forever
  // when stdout's reader had gone (a broken log pipe), so the process never exited.
  return pino(options, destination ?? pino.destination({ dest: 1, sync: true }));
}

/** What a repeated task reports of each run; see onceWhileFailing. */
export interface RunReport {
  failed(error: unknown): void;
  worked(): void;
}

/**
 * Passes on a repeated task's first failure and its recovery, not every failed run: a task retried ten times a second
 * against a full disk would otherwise fill the disk further with its own log.
 */
export function onceWhileFailing(tell: { failed(error: unknown): void; recovered(): void }): RunReport {
  let failing = false;
  return {
    failed(error) {
      if (!failing) tell.failed(error);
      failing = true;
    },
    worked() {
      if (failing) tell.recovered();
      failing = false;
    },
  };
}

/** A background task's failures and recovery in the log, once each while they last. */
export function failureLog(logger: Logger, task: string): RunReport {
  return onceWhileFailing({
    failed: (error) => logger.error({ err: error }, `${task} failed; it is retried, and logged again once it works`),
    recovered: () => logger.info(`${task} works again`),
  });
}
