// Stored records -> relgate.v1 messages (plain objects for grpc-js), as seen
// by the calling unit.
import type { LoggedRequest, RelationRecord, RelationUnitRecord, RequestState, ResponseRecord, UnitRecord } from './store/store.ts';
import { jsonToStruct } from './struct.ts';

// 64-bit fields (revisions, seconds) are given to protobuf.js as numbers, which
// it takes as they are; decimal strings it would parse into a Long each time.
// Clients still receive them as the proto-loader options say (strings).

export interface TimestampMessage {
  seconds: number;
  nanos: number;
}

export function timestamp(ms: number): TimestampMessage {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

const SIDE = { requester: 'SIDE_REQUESTER', responder: 'SIDE_RESPONDER' } as const;
const STATE = { pending: 'REQUEST_STATE_PENDING', answered: 'REQUEST_STATE_ANSWERED', expired: 'REQUEST_STATE_EXPIRED' } as const;
const MODE = { any: 'DELIVERY_MODE_ANY', unit: 'DELIVERY_MODE_UNIT', selector: 'DELIVERY_MODE_SELECTOR' } as const;

export function unitMessage(unit: UnitRecord) {
  const { name, application, ingress_address, egress_subnets, labels, revision } = unit;
  return { name, application, ingress_address, egress_subnets, labels, revision };
}

export function relationUnitMessage(unit: RelationUnitRecord) {
  return { unit: unit.unit, side: SIDE[unit.side], revision: unit.revision };
}

export function relationMessage(relation: Omit<RelationRecord, 'counters'>, units: RelationUnitRecord[]) {
  return {
    id: relation.id,
    interface: relation.interface,
    version: relation.version,
    requester_application: relation.requester_application,
    requester_endpoint: relation.requester_endpoint,
    responder_application: relation.responder_application,
    responder_endpoint: relation.responder_endpoint,
    units: units.map(relationUnitMessage),
    create_revision: relation.create_revision,
    revision: relation.revision,
  };
}

/** Whether a request still waits for the given responder unit's answer. */
export function isNewFor(request: RequestState, unit: string): boolean {
  if (request.state !== 'pending') return false;
  if (request.delivery.mode === 'any') return !request.claim || request.claim.unit === unit;
  return request.expected_units.includes(unit) && !request.answered_units.includes(unit);
}

/** Whether a request is addressed to the given responder unit. */
export function isAddressedTo(request: RequestState, unit: string): boolean {
  return request.delivery.mode === 'any' || request.expected_units.includes(unit);
}

export type Viewer = { unit: string; side: 'requester' | 'responder' };

export function requestMessage(request: LoggedRequest, viewer: Viewer) {
  const received = viewer.side === 'responder' && isAddressedTo(request, viewer.unit);
  return {
    request_id: request.request_id,
    relation_id: request.relation_id,
    interface: request.interface,
    source_unit: request.source_unit,
    source_ingress_address: request.source_ingress_address,
    source_egress_subnets: request.source_egress_subnets,
    source_labels: request.source_labels,
    fields: jsonToStruct(request.fields),
    delivery: { mode: MODE[request.delivery.mode], unit: request.delivery.unit, selector: request.delivery.selector },
    expected_units: request.expected_units,
    expected_count: request.expected_count,
    response_count: request.response_count,
    state: STATE[request.state],
    claim: request.claim ? { unit: request.claim.unit, expire_time: timestamp(request.claim.expire_time) } : null,
    expire_time: request.expire_time === null ? null : timestamp(request.expire_time),
    is_created: viewer.side === 'requester' && request.source_unit === viewer.unit,
    is_received: received,
    is_new: received && isNewFor(request, viewer.unit),
    sequence: request.create_revision,
    create_time: timestamp(request.create_time),
    update_time: timestamp(request.update_time),
    create_revision: request.create_revision,
    revision: request.revision,
  };
}

export function responseMessage(response: ResponseRecord) {
  return {
    request_id: response.request_id,
    relation_id: response.relation_id,
    responder_unit: response.responder_unit,
    code: response.code,
    error: response.error,
    fields: jsonToStruct(response.fields),
    create_time: timestamp(response.create_time),
    revision: response.revision,
  };
}
