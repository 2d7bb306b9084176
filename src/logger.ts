// Structured JSON logs (pino). Payloads and credentials are never logged.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  const options = { level, base: { service: 'relgate' }, redact: ['metadata', 'token', '*.token', 'authorization'] };
  // Written as each line comes, in order: pino's default buffers, and flushing that buffer at exit retried forever
  // when stdout's reader had gone (a broken log pipe), so the process never exited.
  return pino(options, destination ?? pino.destination({ dest: 1, sync: true }));
}
