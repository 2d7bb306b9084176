// Number flags of the command line, shared by `serve` and the operator commands.
import { InvalidArgumentError } from 'commander';
import { MAX_DEADLINE_MS } from '../deadline.ts';

/** A whole number written in digits: Number() alone also reads "", " ", "1e3" and "0x10". */
export function wholeNumber(value: string): number {
  const parsed = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(parsed)) throw new InvalidArgumentError(`"${value}" is not a whole number`);
  return parsed;
}


export function deadlineMs(value: string): number {
  const parsed = wholeNumber(value);
  if (parsed > MAX_DEADLINE_MS) throw new InvalidArgumentError(`"${value}" is over ${MAX_DEADLINE_MS} ms (24.8 days), the longest deadline a grpc-js server reads right`);
  return parsed;
}
