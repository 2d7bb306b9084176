// Helpers shared by every write on a relation: membership checks and the
// bookkeeping a request change needs (counters, change log, flags).
import { Code, RelgateError, failedPrecondition, notFound } from './errors.ts';
import { applyChange, requesterFlags, responderFlags, sameFlags } from './flags.ts';
import { Violations } from './validate.ts';
import type { LoggedRequest, RelationRecord, RelationUnitRecord, RequestChange, RequestRecord, RequestState, SideName, StoreTx, UnitRecord } from './store/store.ts';

export interface Membership {
  relation: RelationRecord;
  units: RelationUnitRecord[];
}

/** The calling unit's relation, checking it has joined on the given side. */
export async function joinedRelation(tx: StoreTx, relationId: string, caller: UnitRecord, side: SideName): Promise<Membership> {
  new Violations().relationId('relation_id', relationId).throwIfAny();
  const relation = await tx.getRelation(relationId);
  if (!relation) throw notFound('relation', relationId);
  const application = side === 'requester' ? relation.requester_application : relation.responder_application;
  if (caller.application !== application) {
    throw new RelgateError(Code.PERMISSION_DENIED, `unit ${caller.name} is not a ${side} on relation ${relationId}`, {
      reason: 'NOT_A_MEMBER',
      metadata: { relation_id: relationId, unit: caller.name, side },
    });
  }
  const units = await tx.listRelationUnits(relationId);
  if (!units.some((unit) => unit.unit === caller.name && unit.side === side)) {
    throw failedPrecondition('UNIT_NOT_JOINED', `unit ${caller.name} has not joined relation ${relationId} as ${side}; call RegistryService.JoinRelation first`, {
      relation_id: relationId,
      unit: caller.name,
    });
  }
  return { relation, units };
}

/** Relation ids the unit has joined, on the side or on either, in the order it joined them. */
export async function joinedRelationIds(tx: StoreTx, unit: string, side?: SideName): Promise<string[]> {
  return (await tx.listUnitRelations(unit))
    .filter((record) => side === undefined || record.side === side)
    .sort((a, b) => a.revision - b.revision)
    .map((record) => record.relation_id);
}

/** Every pending request of the relations, oldest first, read a page at a time. */
export async function* pendingRequests(tx: StoreTx, relationIds: string[], pageSize = 1000): AsyncGenerator<RequestRecord> {
  for (let after = 0; relationIds.length > 0; ) {
    const page = await tx.listRequests({ relationIds, afterCreateRevision: after, limit: pageSize, pendingOnly: true });
    yield* page;
    const last = page.at(-1);
    if (!last || page.length < pageSize) return;
    after = last.create_revision;
  }
}

/** Stores a request change with its counters, change-log entry and flags. */
export async function recordRequestChange(tx: StoreTx, relation: RelationRecord, before: RequestRecord | null, after: RequestRecord | null): Promise<void> {
  const revision = await tx.revision();
  if (after) await tx.putRequest(after);
  else if (before) await tx.deleteRequest(before.request_id);
  applyChange(relation.counters, before, after);
  await tx.putRelation({ ...relation, revision });
  await tx.appendChange(relation.id, requestChange(before, after));
  await refreshFlags(tx, relation);
}

/** The change-log entry of a request change: what watches need, and no more (fields are logged once, not twice). */
function requestChange(before: RequestRecord | null, after: RequestRecord | null): RequestChange {
  if (after) return { kind: 'request', before: before && requestState(before), after: logged(after) };
  if (before) return { kind: 'request', before: logged(before), after: null };
  throw new Error('a request change needs the request before or after it');
}

function requestState(request: RequestRecord): RequestState {
  const { request_id, interface: name, state, delivery, expected_units, answered_units, claim } = request;
  return { request_id, interface: name, state, delivery, expected_units, answered_units, claim };
}

function logged({ body: _body, ...request }: RequestRecord): LoggedRequest {
  return request;
}

/** Recomputes every joined unit's flags and logs the ones that changed. */
export async function refreshFlags(tx: StoreTx, relation: RelationRecord, units?: RelationUnitRecord[]): Promise<void> {
  const joined = units ?? (await tx.listRelationUnits(relation.id));
  const requestersJoined = joined.some((unit) => unit.side === 'requester');
  const respondersJoined = joined.some((unit) => unit.side === 'responder');
  for (const unit of joined) {
    const flags = unit.side === 'requester'
      ? requesterFlags(relation.counters, respondersJoined)
      : responderFlags(relation.counters, unit.unit, requestersJoined);
    const stored = await tx.getFlags(relation.id, unit.unit);
    if (sameFlags(stored, { ...flags })) continue;
    await tx.putFlags(relation.id, unit.unit, { ...flags });
    await tx.appendChange(relation.id, { kind: 'flags', unit: unit.unit, side: unit.side, flags: { ...flags } });
  }
}

export async function requireUnit(tx: StoreTx, name: string): Promise<UnitRecord> {
  const unit = await tx.getUnit(name);
  if (!unit) throw notFound('unit', name);
  return unit;
}

/** The unit a call acts as; an unknown name is an authentication failure. */
export async function requireCaller(tx: StoreTx, name: string): Promise<UnitRecord> {
  const unit = await tx.getUnit(name);
  if (!unit) {
    throw new RelgateError(Code.UNAUTHENTICATED, `unit "${name}" named in the relgate-unit metadata is not registered`, {
      reason: 'UNKNOWN_UNIT',
      metadata: { unit: name },
    });
  }
  return unit;
}
