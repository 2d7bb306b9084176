// Request ids: UUIDv7, time-ordered so that new requests and responses sit
// side by side in the store's indexes. The uuid package keeps the ids one
// process makes increasing, within a millisecond too.
import { v7 } from 'uuid';

/** A new UUIDv7 request id, after every id this process made before. */
export function newRequestId(): string {
  return v7();
}
