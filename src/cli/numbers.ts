// Number flags of the command line, shared by `serve` and the operator commands.
import { InvalidArgumentError } from 'commander';
import { MAX_DEADLINE_MS } from '../deadline.ts';

/** A whole number written in digits: Number() alone also reads "", " ", "1e3" and "0x10". */
export function wholeNumber(value: string): number {
  const parsed = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(parsed)) throw new InvalidArgumentError(`"${value}" is not a whole number`);
  return parsed;
}

/** Node fires a timer set past this at once, so no millisecond flag may exceed it. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** A whole number from min to max: for a flag that becomes a timer or a limit, where 0 or a huge value would misbehave. */
export function wholeNumberIn(min: number, max: number): (value: string) => number {
  return (value) => {
    const parsed = wholeNumber(value);
    if (parsed < min || parsed > max) throw new InvalidArgumentError(`"${value}" is not between ${min} and ${max}`);
    return parsed;
  };
}

export function deadlineMs(value: string): number {
  const parsed = wholeNumber(value);
  if (parsed > MAX_DEADLINE_MS) throw new InvalidArgumentError(`"${value}" is over ${MAX_DEADLINE_MS} ms (24.8 days), the longest deadline a grpc-js server reads right`);
  return parsed;
}
