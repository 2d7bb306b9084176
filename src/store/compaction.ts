// The error every store returns for a revision below its retained history,
// and where a restored database's history starts over.
import { Code, RelgateError } from '../errors.ts';

export function compactedError(after: number, compacted: number): RelgateError {
  return new RelgateError(
    Code.OUT_OF_RANGE,
    `revision ${after} has been compacted; the oldest retained change is after revision ${compacted}: start again with a snapshot`,
    { reason: 'REVISION_COMPACTED', metadata: { requested_revision: String(after), compacted_revision: String(compacted), oldest_retained_revision: String(compacted + 1) } },
  );
}

/**
 * The revision a database restored from a backup goes on from: past every revision a gateway may have handed out
 * since the backup, taken as the clock in microseconds (a gateway hands out far fewer than a million a second), or
 * just past the current one when the clock is behind it.
 */
export function revisionAfterRestore(current: number, now: number): number {
  return Math.max(current + 1, now * 1000);
}
