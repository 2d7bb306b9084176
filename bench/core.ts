// relgate's round trip without gRPC: the service logic, the SQLite store
// (same durability as the gateway's default) and the watch hub in one
// process, with two hub watchers standing in for the sessions. A round trip
// creates a request, the responder's watcher answers it when the hub hands it
// the new request, and it ends when the requester's watcher receives the
// response. What this reaches bounds what the gateway can reach over gRPC.
// Request ids as the SDK makes them: time-ordered UUIDv7.
import path from 'node:path';
import { newRequestId } from '../src/request-id.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import { WatchHub, type WatchBatchMessage, type WatchSink, type WatchSpec } from '../src/watch-hub.ts';
import { PendingRoundTrips } from './lib/load.ts';
import { REQUEST_FIELDS, REQUESTER_UNIT, RESPONDER_UNIT, RESPONSE_FIELDS } from './lib/relgate.ts';
import { serveRoles, type Config } from './lib/role.ts';
import { servicesWithRelation } from './lib/services.ts';

/** A watcher's sink that hands every event to `onEvent`; it never fills up. */
function sink(onEvent: (event: WatchBatchMessage['events'][number]) => void): WatchSink {
  return {
    write: (batch) => {
      for (const event of batch.events) onEvent(event);
      return true;
    },
    onDrain: () => {},
    end: (error) => {
      if (error) process.stderr.write(`watch ended: ${error.message}\n`);
    },
  };
}

const spec = (unit: string, side: WatchSpec['side'], relationId: string): WatchSpec => ({
  unit,
  side,
  relationId,
  interface: '',
  filter: 'new',
  start: 'now',
  afterRevision: 0,
  progressIntervalMs: 0,
});

async function core(config: Config) {
  const store = new SqliteStore({ path: path.join(config.dir as string, 'core.db'), durability: 'full' });
  const hub = new WatchHub(store);
  const { requests, relationId } = await servicesWithRelation(store);

  const pending = new PendingRoundTrips();
  const scope = async () => new Map([[relationId, 0]]);
  const answer = (requestId: string) =>
    requests.respond(RESPONDER_UNIT, { request_id: requestId, code: 0, error: '', fields: RESPONSE_FIELDS }).catch((error: Error) => pending.fail(requestId, error));
  await hub.watch(spec(RESPONDER_UNIT, 'responder', relationId), sink((event) => {
    if (event.type === 'EVENT_TYPE_ADDED' && event.object === 'request') void answer((event.request as { request_id: string }).request_id);
  }), scope);
  await hub.watch(spec(REQUESTER_UNIT, 'requester', relationId), sink((event) => {
    if (event.type === 'EVENT_TYPE_ADDED' && event.object === 'response') pending.complete((event.response as { request_id: string }).request_id);
  }), scope);

  const delivery = { mode: 'any' as const, unit: '', selector: '' };
  const roundTrip = () => {
    const requestId = newRequestId();
    const done = pending.begin(requestId);
    requests.create(REQUESTER_UNIT, { relation_id: relationId, request_id: requestId, fields: REQUEST_FIELDS, delivery, ttl: null }).catch((error: Error) => pending.fail(requestId, error));
    return done;
  };
  return {
    roundTrip,
    close: async () => {
      hub.close();
      await store.close();
    },
  };
}

serveRoles({ core });
