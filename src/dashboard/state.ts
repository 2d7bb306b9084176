// What the dashboard shows, read from the store in one consistent read:
// relations with their units and flags, the requests waiting for an answer,
// and the latest responses with their latency.
import type { AnsweredRequest } from '../metrics.ts';
import { pendingRequests } from '../relations.ts';
import type { RequestRecord, Store } from '../store/store.ts';

/** Waiting requests listed at most; the total is always given. */
const WAITING_SHOWN = 100;
/** Characters of a request's or response's fields (as JSON) the dashboard shows. */
const FIELDS_SHOWN = 300;

export interface DashboardState {
  revision: number;
  compacted_revision: number;
  /** Epoch milliseconds when this state was read. */
  time: number;
  relations: {
    id: string;
    interface: string;
    version: number;
    requester: string;
    responder: string;
    units: { unit: string; side: string; flags: Record<string, boolean> }[];
  }[];
  waiting: {
    request_id: string;
    relation_id: string;
    interface: string;
    source_unit: string;
    delivery: string;
    responses: string;
    claimed_by: string;
    create_time: number;
    /** The fields as JSON, cut to their first 300 characters and "…": a state carries many, each up to megabytes. */
    fields: string;
  }[];
  waiting_total: number;
  responses: readonly AnsweredRequest[];
}

export async function readDashboardState(store: Store, responses: readonly AnsweredRequest[]): Promise<DashboardState> {
  return store.read(async (tx) => {
    const relations: DashboardState['relations'] = [];
    for (const relation of await tx.listRelations()) {
      const units = [];
      for (const unit of await tx.listRelationUnits(relation.id)) {
        units.push({ unit: unit.unit, side: unit.side, flags: (await tx.getFlags(relation.id, unit.unit)) ?? {} });
      }
      relations.push({
        id: relation.id,
        interface: relation.interface,
        version: relation.version,
        requester: `${relation.requester_application}:${relation.requester_endpoint}`,
        responder: `${relation.responder_application}:${relation.responder_endpoint}`,
        units,
      });
    }
    const waiting: DashboardState['waiting'] = [];
    let total = 0;
    for await (const request of pendingRequests(tx, relations.map((relation) => relation.id))) {
      total += 1;
      if (waiting.length < WAITING_SHOWN) waiting.push(waitingRequest(request));
    }
    return { revision: tx.readRevision(), compacted_revision: store.compactedRevision(), time: tx.now, relations, waiting, waiting_total: total, responses };
  });
}

function waitingRequest(request: RequestRecord): DashboardState['waiting'][number] {
  const { delivery } = request;
  return {
    request_id: request.request_id,
    relation_id: request.relation_id,
    interface: request.interface,
    source_unit: request.source_unit,
    delivery: delivery.mode === 'unit' ? `unit ${delivery.unit}` : delivery.mode === 'selector' ? `selector ${delivery.selector}` : 'any',
    responses: `${request.response_count}/${request.expected_count}`,
    claimed_by: request.claim?.unit ?? '',
    create_time: request.create_time,
    fields: fieldsPreview(request.fields),
  };
}

export function fieldsPreview(fields: unknown): string {
  const text = JSON.stringify(fields ?? {});
  return text.length > FIELDS_SHOWN ? `${text.slice(0, FIELDS_SHOWN)}…` : text;
}
