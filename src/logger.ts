// Structured JSON logs (pino). Payloads and credentials are never logged.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string): Logger {
  return pino({ level, base: { service: 'relgate' }, redact: ['metadata', 'token', '*.token'] });
}
