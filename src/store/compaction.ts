// The error every store returns for a revision below its retained history.
import { Code, RelgateError } from '../errors.ts';

export function compactedError(after: number, compacted: number): RelgateError {
  return new RelgateError(
    Code.OUT_OF_RANGE,
    `revision ${after} has been compacted; the oldest retained change is after revision ${compacted}: start again with a snapshot`,
    { reason: 'REVISION_COMPACTED', metadata: { requested_revision: String(after), compacted_revision: String(compacted), oldest_retained_revision: String(compacted + 1) } },
  );
}
