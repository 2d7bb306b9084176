// The errors both stores return alike: a revision below the retained
// history, and storage that failed under a write or a read.
import { Code, RelgateError } from '../errors.ts';

export function compactedError(after: number, compacted: number): RelgateError {
  return new RelgateError(
    Code.OUT_OF_RANGE,
    `revision ${after} has been compacted; the oldest retained change is after revision ${compacted}: start again with a snapshot`,
    { reason: 'REVISION_COMPACTED', metadata: { requested_revision: String(after), compacted_revision: String(compacted), oldest_retained_revision: String(compacted + 1) } },
  );
}

/** Storage failed (a full disk, a lost connection...): the call may be retried once it is back. */
export function storeUnavailable(message: string, cause: unknown): RelgateError {
  return new RelgateError(Code.UNAVAILABLE, message, { reason: 'STORE_UNAVAILABLE', cause });
}
