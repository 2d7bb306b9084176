// Generated request ids: valid UUIDv7, distinct across refills of the random
// pool, and in time order between milliseconds (what keeps new rows side by
// side in the store's indexes).
import { expect, test } from 'vitest';
import { newRequestId } from '../src/request-id.ts';
import { UUID_V7 } from './helpers/world.ts';

test('request ids are distinct UUIDv7 across several refills of the random pool', () => {
  const ids = Array.from({ length: 2_000 }, newRequestId);
  for (const id of ids) expect(id).toMatch(UUID_V7);
  expect(new Set(ids).size).toBe(ids.length);
});

test('an id made in a later millisecond sorts after the earlier ones', () => {
  const earlier = Array.from({ length: 100 }, newRequestId);
  const millisecond = Date.now();
  while (Date.now() === millisecond); // the next millisecond
  const later = newRequestId();
  for (const id of earlier) expect(id < later).toBe(true);
});
