// Command-line options shared by the examples.
import { parseArgs } from 'node:util';
import { connect, type Connection } from '../../src/client/index.ts';

export interface ExampleArgs {
  values: Record<string, string | string[] | undefined>;
  connection: Connection;
}

/**
 * Parses --unit, --relation, --address (default RELGATE_ADDRESS or
 * 127.0.0.1:50051) and --token (default RELGATE_TOKEN) plus the example's own
 * options, and connects as the unit.
 */
export function exampleArgs(own: Record<string, { type: 'string'; multiple?: boolean; default?: string }>): ExampleArgs {
  const { values } = parseArgs({
    options: {
      unit: { type: 'string' },
      relation: { type: 'string' },
      address: { type: 'string', default: process.env.RELGATE_ADDRESS ?? '127.0.0.1:50051' },
      token: { type: 'string', default: process.env.RELGATE_TOKEN },
      ...own,
    },
  });
  if (typeof values.unit !== 'string') throw new Error('--unit <application/number> is required');
  const token = typeof values.token === 'string' && values.token !== '' ? values.token : undefined;
  const connection = connect(values.address as string, { unit: values.unit, ...(token ? { token } : {}) });
  return { values: values as ExampleArgs['values'], connection };
}

/** Closes the connection on SIGINT and SIGTERM so the process exits cleanly. */
export function closeOnSignal(close: () => void): void {
  const stop = () => close();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
