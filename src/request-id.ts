// Request ids: UUIDv7, time-ordered so that new requests and responses sit
// side by side in the store's indexes. The uuid package lays out the bytes;
// the random bytes come from a pool filled 256 ids at a time, as asking the
// OS for 16 bytes per id cost more than the rest of the id. The package keeps
// ids increasing only when it draws its own random bytes, so the clock and
// sequence that do that are kept here, the way the package keeps them.
import { randomFillSync } from 'node:crypto';
import { v7 } from 'uuid';

const RANDOM_BYTES = 16;
const pool = new Uint8Array(256 * RANDOM_BYTES);
let poolOffset = pool.length;
let lastMs = -Infinity;
let sequence = 0;

/** A new UUIDv7 request id, after every id this process made before. */
export function newRequestId(): string {
  const random = nextRandomBytes();
  const now = Date.now();
  if (now > lastMs) {
    lastMs = now;
    // 31 random bits: room to count up within the millisecond.
    sequence = ((random[6]! & 0x7f) << 24) | (random[7]! << 16) | (random[8]! << 8) | random[9]!;
  } else {
    sequence = (sequence + 1) | 0;
    if (sequence === 0) lastMs += 1; // the counter wrapped: borrow the next millisecond
  }
  return v7({ random, msecs: lastMs, seq: sequence });
}

function nextRandomBytes(): Uint8Array {
  if (poolOffset === pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  poolOffset += RANDOM_BYTES;
  return pool.subarray(poolOffset - RANDOM_BYTES, poolOffset);
}
