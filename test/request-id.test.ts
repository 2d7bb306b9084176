// Generated request ids: valid, distinct UUIDv7 that increase in the order
// they are made (what keeps new rows side by side in the store's indexes).
import { expect, test } from 'vitest';
import { newRequestId } from '../src/request-id.ts';
import { UUID_V7 } from './helpers/world.ts';

test('request ids are distinct UUIDv7, each after the one made before it', () => {
  const ids = Array.from({ length: 2_000 }, newRequestId);
  for (const id of ids) expect(id).toMatch(UUID_V7);
  for (let i = 1; i < ids.length; i++) expect((ids[i] as string) > (ids[i - 1] as string)).toBe(true);
});

test('request ids carry fresh random bits, across refills of the random pool', () => {
  // The last five bytes are random only (the sequence sits before them): a repeat among
  // 4,096 ids would mean reused random bytes (by chance: about 1 in 130,000).
  const tails = Array.from({ length: 4_096 }, () => newRequestId().replaceAll('-', '').slice(22));
  expect(new Set(tails).size).toBe(tails.length);
});
