// Request ids: UUIDv7, time-ordered so that new requests and responses sit
// side by side in the store's indexes. The uuid package asks the operating
// system for 16 random bytes per id; drawing them from a pool makes that one
// call per 256 ids (about a quarter of a microsecond per id instead of two).
import { randomFillSync } from 'node:crypto';
import { v7 } from 'uuid';

const IDS_PER_FILL = 256;
const pool = new Uint8Array(16 * IDS_PER_FILL);
let next = pool.length;

/** A new UUIDv7 request id. Ids of different milliseconds sort in time order. */
export function newRequestId(): string {
  if (next === pool.length) {
    randomFillSync(pool);
    next = 0;
  }
  return v7({ random: pool.subarray(next, (next += 16)) });
}
