// Number flags of the command line, shared by `serve` and the operator commands.
import { InvalidArgumentError } from 'commander';

/** A whole number written in digits: Number() alone also reads "", " ", "1e3" and "0x10". */
export function wholeNumber(value: string): number {
  const parsed = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(parsed)) throw new InvalidArgumentError(`"${value}" is not a whole number`);
  return parsed;
}

/**
 * The longest deadline a grpc-js server reads right: the client sends it as
 * whole seconds, rounded up, and the server keeps it in a 32-bit integer of ms.
 */
export const MAX_DEADLINE_MS = 2_147_483_000;

export function deadlineMs(value: string): number {
  const parsed = wholeNumber(value);
  if (parsed > MAX_DEADLINE_MS) throw new InvalidArgumentError(`"${value}" is over ${MAX_DEADLINE_MS} ms (24.8 days), the longest deadline a grpc-js server reads right`);
  return parsed;
}
