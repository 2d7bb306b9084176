import { afterAll, beforeAll, expect, test } from 'vitest';
import { json, setupRelation, startHarness, struct, type Harness } from './helpers/harness.ts';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(() => h.close());

test('create, list new, respond, read', async () => {
  const relationId = await setupRelation(h);
  const req = h.requester('webapp/0');
  const res = h.responder('ca/0');
  const { request } = await req.call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: 'web.example', sans: ['a.example'] }) });
  expect(request.state).toBe('REQUEST_STATE_PENDING');
  const listed = await res.call('ListIncomingRequests', { relation_id: relationId, filter: 'REQUEST_FILTER_NEW' });
  expect(listed.requests.map((r: { request_id: string }) => r.request_id)).toEqual([request.request_id]);
  await res.call('Respond', { request_id: request.request_id, fields: struct({ key: 'K', cert: 'C' }) });
  const { responses } = await req.call('ListResponses', { request_id: request.request_id });
  expect(json(responses[0].fields)).toEqual({ key: 'K', cert: 'C' });
  const { flags } = await req.call('GetRequesterFlags', { relation_id: relationId });
  expect(flags).toEqual({ available: true, has_responses: true, all_responses: true });
  const bad = await req.fail('CreateRequest', { relation_id: relationId, fields: struct({ sans: [1] }) });
  expect(bad.fieldViolations.map((v) => v.field).sort()).toEqual(['fields.common_name', 'fields.sans[0]']);
});
