// Structured JSON logs (pino). Payloads and credentials are never logged.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  const options = { level, base: { service: 'relgate' }, redact: ['metadata', 'token', '*.token', 'authorization'] };
  return destination ? pino(options, destination) : pino(options);
}
