// Requester and responder logic: requests, responses, claims, expiry and
// flags. Every operation acts as one calling unit.
import { Code, RelgateError, failedPrecondition, invalidArgument, notFound } from './errors.ts';
import { mergeRequesterFlags, mergeResponderFlags, requesterFlags, responderFlags } from './flags.ts';
import type protobuf from 'protobufjs';
import { canonicalFields, canonicalMatch, canonicalValue, validateFields } from './fields.ts';
import type { InterfaceRegistry, InterfaceDefinition } from './interfaces.ts';
import { textSize } from './message-size.ts';
import { isAddressedTo, isNewFor, requestMessage, responseMessage, type Viewer } from './present.ts';
import { joinedRelation, joinedRelationIds, recordRequestChange, requireCaller, requireUnit } from './relations.ts';
import { checkInterface, ofInterface } from './relation-id.ts';
import { newRequestId } from './request-id.ts';
import { matches, parseSelector } from './selector.ts';
import type { DeliveryModeName, RelationRecord, RequestRecord, ResponseRecord, SideName, Store, StoreTx, UnitRecord } from './store/store.ts';
import { canonicalJson, jsonEqual, ownValue, structToJson, type JsonObject, type StructMessage } from './struct.ts';
import { DEFAULT_PAGE_SIZE, MAX_MATCH_FIELDS, Violations, decodePageToken, durationMs, encodePageToken, expectedRevision, pageSize, type DurationMessage } from './validate.ts';

export type RequestFilterName = 'all' | 'new' | 'answered';

export interface DeliveryInput {
  mode: DeliveryModeName;
  unit: string;
  selector: string;
}

export interface CreateInput {
  relation_id: string;
  request_id: string;
  fields: StructMessage | null;
  delivery: DeliveryInput;
  ttl: DurationMessage | null;
}

/**
 * A write's condition on the revision of the request it acts on (an int64 as proto-loader gives it): unset or 0 sets
 * none. It is checked after every other check, just before the write: a call refused for another reason (not found,
 * invalid, already answered...) says so, and ABORTED means that only the request's change since the caller read it
 * stood in the way.
 */
export interface Conditional {
  expected_revision?: string | number | undefined;
}

export interface CreateOrUpdateInput extends Omit<CreateInput, 'request_id'>, Conditional {
  match_fields: string[];
}

export interface WithdrawInput extends Conditional {
  request_id: string;
}

export interface RespondInput extends Conditional {
  request_id: string;
  code: number;
  error: string;
  fields: StructMessage | null;
}

export interface ClaimInput extends Conditional {
  request_id: string;
  lease: DurationMessage | null;
}

export interface ListInput {
  relation_id: string;
  /** Only relations of this interface; '' for every interface. */
  interface: string;
  filter: RequestFilterName;
  match_fields: StructMessage | null;
  page_size: number;
  page_token: string;
}

export interface ResponsesInput {
  request_id: string;
  page_size: number;
  page_token: string;
}

/** What a list or flags call covers: one relation, or every joined one; of one interface, or of all. */
export interface RelationScope {
  relationId: string;
  /** An interface name, or '' for every interface. */
  iface: string;
}

const MAX_TTL_MS = 30 * 24 * 3600 * 1000;
const MAX_LEASE_MS = 3600 * 1000;
const DEFAULT_LEASE_MS = 30 * 1000;
const SCAN_CHUNK = 256;
/**
 * Stored requests a page of a list looks at, matching or not: a filter that matches few of a large relation's requests
 * would otherwise hold the store (and every other client) for the whole relation in one call. Past it the page ends,
 * perhaps empty, with a token that goes on from there.
 */
export const MAX_SCANNED_PER_PAGE = 5_000;
/** Room in a listed request's or response's estimate for its tags and scalar fields. */
const ITEM_OVERHEAD_BYTES = 512;
/**
 * Stored responses a page reads at a time: each may be as large as a received message, so a page reads few more than
 * it sends.
 */
const RESPONSE_CHUNK = 16;

export interface RequestServiceOptions {
  /** The largest message the gateway sends: a page of a list takes up to a quarter of it, as a watch batch does. */
  maxMessageBytes: number;
}

export class RequestService {
  readonly #store: Store;
  readonly #interfaces: InterfaceRegistry;
  readonly #pageBytes: number;

  constructor(store: Store, interfaces: InterfaceRegistry, options: RequestServiceOptions) {
    this.#store = store;
    this.#interfaces = interfaces;
    this.#pageBytes = options.maxMessageBytes / 4;
  }

  // ---- requester side ----

  async create(callerName: string, input: CreateInput) {
    const parsed = parseCreate(input);
    return this.#store.write(async (tx) => {
      const prepared = await this.#prepareCreate(tx, callerName, input, parsed);
      const { caller, relation } = prepared;
      if (prepared.existing) return { request: requestMessage(prepared.existing, requesterView(caller)), replayed: true };
      const request = newRequest(caller, relation, prepared.requestId, prepared.fields, input.delivery, prepared.expected, parsed.ttl, tx.now, await tx.revision());
      await recordRequestChange(tx, relation, null, request);
      return { request: requestMessage(request, requesterView(caller)), replayed: false };
    });
  }

  /** Makes every check create makes, storing nothing; says whether create would replay a stored request. */
  async checkCreate(callerName: string, input: CreateInput): Promise<{ replay: boolean }> {
    const parsed = parseCreate(input);
    return this.#store.read(async (tx) => ({ replay: (await this.#prepareCreate(tx, callerName, input, parsed)).existing !== undefined }));
  }

  /**
   * Membership, fields, a stored request with the same id (same body: a replay), else the resolved delivery. A
   * replay is recognised before the fields are checked: one sent again after the interface changed (a retry across
   * an upgrade) still gets its stored request, not a refusal that says nothing was stored.
   */
  async #prepareCreate(tx: StoreTx, callerName: string, input: CreateInput, parsed: ParsedCreate) {
    const caller = await requireCaller(tx, callerName);
    const { relation, units } = await joinedRelation(tx, input.relation_id, caller, 'requester');
    const type = this.#definition(relation).requestType;
    const fields = canonicalFields(type, parsed.fields);
    const requestId = input.request_id.toLowerCase() || newRequestId();
    const existing = input.request_id ? await tx.getRequest(requestId) : undefined;
    const body = requestBody(relation.id, fields, input.delivery, parsed.ttl);
    if (existing && (existing.body === body || canonicalBody(type, existing.body) === body)) return { caller, relation, requestId, fields, existing };
    invalidIfAny(validateFields(type, parsed.fields, 'fields', { checkRequired: true }));
    if (existing) {
      throw new RelgateError(Code.ALREADY_EXISTS, `request ${requestId} already exists with a different body`, {
        reason: 'REQUEST_ID_CONFLICT',
        metadata: { request_id: requestId },
      });
    }
    return { caller, relation, requestId, fields, existing: undefined, expected: await resolveDelivery(tx, relation, units, input.delivery, parsed.selector) };
  }

  async createOrUpdate(callerName: string, input: CreateOrUpdateInput) {
    const violations = new Violations().relationId('relation_id', input.relation_id);
    const ttl = durationMs(violations, 'ttl', input.ttl, MAX_TTL_MS);
    const condition = expectedRevision(violations, input.expected_revision);
    const given = structToJson(input.fields);
    const selector = checkDelivery(violations, input.delivery);
    if (input.match_fields.length === 0) violations.add('match_fields', 'name at least one field');
    violations.matchFieldCount(input.match_fields.length).throwIfAny();
    return this.#store.write(async (tx) => {
      const caller = await requireCaller(tx, callerName);
      const { relation, units } = await joinedRelation(tx, input.relation_id, caller, 'requester');
      const type = this.#definition(relation).requestType;
      const fieldViolations = validateFields(type, given, 'fields', { checkRequired: true });
      input.match_fields.forEach((name, i) => {
        if (!ownValue(type.fields, name)) fieldViolations.push({ field: `match_fields[${i}]`, description: `"${name}" is not a field of ${type.name}` });
      });
      invalidIfAny(fieldViolations);
      const fields = canonicalFields(type, given);
      const match = Object.fromEntries(input.match_fields.map((name) => [name, ownValue(fields, name) ?? null]));
      const existing = await firstMatch(tx, [relation.id], (request) => fieldsMatch(type, request.fields, match));
      if (!existing) {
        // The caller expected to update a request it read: creating another would hide that it is gone.
        if (condition !== 0) throw revisionMismatch(condition, 0, `no request of relation ${relation.id} matches match_fields (current revision 0)`, { relation_id: relation.id });
        const revision = await tx.revision();
        const expected = await resolveDelivery(tx, relation, units, input.delivery, selector);
        const request = newRequest(caller, relation, newRequestId(), fields, input.delivery, expected, ttl, tx.now, revision);
        await recordRequestChange(tx, relation, null, request);
        return { request: requestMessage(request, requesterView(caller)), created: true, updated: false };
      }
      // Before the unchanged case too, which writes nothing: an OK always means the request was where the caller expected.
      checkRevision(condition, existing);
      // Fields stored before values had one canonical form are compared in it. An expired match is reopened even
      // with the same fields: handing back a request nobody may answer would leave the caller stuck.
      const unchanged = jsonEqual(canonicalFields(type, existing.fields), fields);
      if (unchanged && !hasExpired(existing, tx.now)) return { request: requestMessage(existing, requesterView(caller)), created: false, updated: false };
      const revision = await tx.revision();
      const updated: RequestRecord = {
        ...existing,
        fields,
        body: requestBody(relation.id, fields, existing.delivery, ttl),
        answered_units: [],
        response_count: 0,
        state: existing.expected_count === 0 ? 'answered' : 'pending',
        claim: null,
        // A time to live that ran out (expired, or passed after an answer) does not carry over to the reopened request.
        expire_time: ttl > 0 ? tx.now + ttl : existing.expire_time !== null && existing.expire_time <= tx.now ? null : existing.expire_time,
        update_time: tx.now,
        revision,
      };
      await tx.deleteResponses(existing.request_id);
      await recordRequestChange(tx, relation, existing, updated);
      return { request: requestMessage(updated, requesterView(caller)), created: false, updated: true };
    });
  }

  async getRequest(callerName: string, requestId: string, side: SideName) {
    new Violations().uuid('request_id', requestId).throwIfAny();
    return this.#store.read(async (tx) => {
      const { caller, request } = await this.#visibleRequest(tx, callerName, requestId, side);
      return { request: requestMessage(request, { unit: caller.name, side }) };
    });
  }

  async listRequests(callerName: string, input: ListInput, side: SideName) {
    const violations = new Violations();
    const size = pageSize(violations, input.page_size);
    const match = matchOf(violations, input.match_fields);
    // Without an interface the query is what it was before lists took one: page tokens stay good across an upgrade.
    const query = canonicalJson({ side, relation_id: input.relation_id, ...(input.interface ? { interface: input.interface } : {}), filter: input.filter, match });
    const after = decodePageToken(violations, input.page_token, query);
    if (side === 'responder' && input.filter === 'answered') violations.add('filter', 'responders list ALL or NEW requests');
    violations.throwIfAny();
    return this.#store.read(async (tx) => {
      const caller = await requireCaller(tx, callerName);
      const { relationIds, matches } = await this.#scope(tx, caller, { relationId: input.relation_id, iface: input.interface }, side, match);
      const view = { unit: caller.name, side };
      const keep = (request: RequestRecord) =>
        matches(request) && (side === 'requester' ? requesterFilter(request, input.filter) : responderFilter(request, caller.name, input.filter));
      const { items, last, more } = await scan(tx, relationIds, after, { size, bytes: this.#pageBytes, scanned: MAX_SCANNED_PER_PAGE }, keep, input.filter === 'new');
      return { requests: items.map((request) => requestMessage(request, view)), next_page_token: more ? encodePageToken(last, query) : '' };
    });
  }

  async withdraw(callerName: string, input: WithdrawInput) {
    const violations = new Violations().uuid('request_id', input.request_id);
    const condition = expectedRevision(violations, input.expected_revision);
    violations.throwIfAny();
    return this.#store.write(async (tx) => {
      const { request, relation } = await this.#visibleRequest(tx, callerName, input.request_id, 'requester');
      checkRevision(condition, request);
      await tx.deleteResponses(request.request_id);
      await recordRequestChange(tx, relation, request, null);
      return { revision: await tx.revision() };
    });
  }

  async listResponses(callerName: string, input: ResponsesInput) {
    const violations = new Violations().uuid('request_id', input.request_id);
    const size = pageSize(violations, input.page_size);
    const after = decodePageToken(violations, input.page_token, responsesQuery(input.request_id.toLowerCase()));
    violations.throwIfAny();
    return this.#store.read(async (tx) => {
      const { request } = await this.#visibleRequest(tx, callerName, input.request_id, 'requester');
      return responsePage(tx, request.request_id, after, { size, bytes: this.#pageBytes });
    });
  }

  /** Every response to a request, for a replayed Call or CallAll: neither sends two responses in one message. */
  async allResponses(callerName: string, requestId: string) {
    return this.#store.read(async (tx) => {
      const { request } = await this.#visibleRequest(tx, callerName, requestId, 'requester');
      return (await tx.listResponses(request.request_id)).map(responseMessage);
    });
  }

  async responseByField(callerName: string, scope: RelationScope, matchFields: StructMessage | null) {
    const violations = new Violations();
    const match = matchOf(violations, matchFields);
    if (Object.keys(match).length === 0 && violations.list.length === 0) violations.add('match_fields', 'name at least one field');
    violations.throwIfAny();
    return this.#store.read(async (tx) => {
      const caller = await requireCaller(tx, callerName);
      const { relationIds, matches } = await this.#scope(tx, caller, scope, 'requester', match);
      const request = await firstMatch(tx, relationIds, matches);
      if (!request) return { request: null, responses: [], next_page_token: '' };
      // The request takes its share of the page's budget: its responses get the rest.
      const page = await responsePage(tx, request.request_id, 0, { size: DEFAULT_PAGE_SIZE, bytes: this.#pageBytes - requestBytes(request) });
      return { request: requestMessage(request, requesterView(caller)), ...page };
    });
  }

  async requesterFlags(callerName: string, scope: RelationScope) {
    return this.#store.read(async (tx) => {
      const caller = await requireCaller(tx, callerName);
      const relations = await this.#relationsInScope(tx, caller, scope, 'requester');
      const all = [];
      for (const { relation, units } of relations) {
        all.push({ counters: relation.counters, flags: requesterFlags(relation.counters, units.some((unit) => unit.side === 'responder')) });
      }
      return { flags: mergeRequesterFlags(all) };
    });
  }

  // ---- responder side ----

  async respond(callerName: string, input: RespondInput) {
    const violations = new Violations().uuid('request_id', input.request_id);
    const given = structToJson(input.fields);
    if (input.code !== 0 && input.error === '') violations.add('error', 'is required when code is not 0');
    const condition = expectedRevision(violations, input.expected_revision);
    violations.throwIfAny();
    return this.#store.write(async (tx) => {
      const { request, relation } = await this.#visibleRequest(tx, callerName, input.request_id, 'responder');
      const type = this.#definition(relation).responseType;
      invalidIfAny(validateFields(type, given, 'fields', { checkRequired: input.code === 0 }));
      const fields = canonicalFields(type, given);
      checkAnswerable(request, callerName, tx.now);
      checkRevision(condition, request);
      const revision = await tx.revision();
      const response = {
        request_id: request.request_id,
        relation_id: relation.id,
        responder_unit: callerName,
        code: input.code,
        error: input.error,
        fields,
        create_time: tx.now,
        revision,
      };
      await tx.putResponse(response);
      await tx.appendChange(relation.id, { kind: 'response', response });
      const answered = [...request.answered_units, callerName];
      const after: RequestRecord = {
        ...request,
        answered_units: answered,
        response_count: request.response_count + 1,
        state: request.response_count + 1 >= request.expected_count ? 'answered' : 'pending',
        claim: null,
        update_time: tx.now,
        revision,
      };
      await recordRequestChange(tx, relation, request, after);
      return { response: responseMessage(response) };
    });
  }

  async claim(callerName: string, input: ClaimInput) {
    const violations = new Violations().uuid('request_id', input.request_id);
    const leaseMs = durationMs(violations, 'lease', input.lease, MAX_LEASE_MS) || DEFAULT_LEASE_MS;
    const condition = expectedRevision(violations, input.expected_revision);
    violations.throwIfAny();
    return this.#store.write(async (tx) => {
      const { request, relation } = await this.#visibleRequest(tx, callerName, input.request_id, 'responder');
      if (request.delivery.mode !== 'any') throw failedPrecondition('CLAIM_NOT_APPLICABLE', 'only requests delivered to any responder can be claimed');
      checkAnswerable(request, callerName, tx.now);
      checkRevision(condition, request);
      const after = { ...request, claim: { unit: callerName, expire_time: tx.now + leaseMs }, update_time: tx.now, revision: await tx.revision() };
      await recordRequestChange(tx, relation, request, after);
      return { request: requestMessage(after, { unit: callerName, side: 'responder' }) };
    });
  }

  async release(callerName: string, requestId: string) {
    new Violations().uuid('request_id', requestId).throwIfAny();
    return this.#store.write(async (tx) => {
      const { request, relation } = await this.#visibleRequest(tx, callerName, requestId, 'responder');
      if (request.claim?.unit !== callerName) throw failedPrecondition('NOT_CLAIMED', `request ${requestId} is not claimed by ${callerName}`);
      const after = { ...request, claim: null, update_time: tx.now, revision: await tx.revision() };
      await recordRequestChange(tx, relation, request, after);
      return { request: requestMessage(after, { unit: callerName, side: 'responder' }) };
    });
  }

  async responderFlags(callerName: string, scope: RelationScope) {
    return this.#store.read(async (tx) => {
      const caller = await requireCaller(tx, callerName);
      const relations = await this.#relationsInScope(tx, caller, scope, 'responder');
      const all = relations.map(({ relation, units }) => responderFlags(relation.counters, caller.name, units.some((unit) => unit.side === 'requester')));
      return { flags: mergeResponderFlags(all) };
    });
  }

  /** Releases the unit's claims on a relation it leaves; returns the relation, whose counters the releases changed in place. */
  async releaseClaimsOf(tx: StoreTx, relation: RelationRecord, unit: string): Promise<RelationRecord> {
    let after = 0;
    for (;;) {
      const page = await tx.listRequests({ relationIds: [relation.id], afterCreateRevision: after, limit: SCAN_CHUNK });
      for (const request of page) {
        if (request.claim?.unit !== unit) continue;
        await recordRequestChange(tx, relation, request, { ...request, claim: null, update_time: tx.now, revision: await tx.revision() });
      }
      if (page.length < SCAN_CHUNK) return relation;
      after = page.at(-1)?.create_revision ?? after;
    }
  }

  /** Expires requests past their time to live and ends lapsed claims. Returns how many changed. */
  async sweep(limit = 100): Promise<number> {
    const due = await this.#store.read(async (tx) => (await tx.listDue(tx.now, 1)).length);
    if (due === 0) return 0;
    return this.#store.write(async (tx) => {
      const due = await tx.listDue(tx.now, limit);
      for (const request of due) {
        const relation = await tx.getRelation(request.relation_id);
        if (!relation) continue;
        const expired = request.expire_time !== null && request.expire_time <= tx.now;
        const after: RequestRecord = { ...request, state: expired ? 'expired' : request.state, claim: null, update_time: tx.now, revision: await tx.revision() };
        await recordRequestChange(tx, relation, request, after);
      }
      return due.length;
    });
  }

  #definition(relation: RelationRecord): InterfaceDefinition {
    const definition = this.#interfaces.get(relation.interface, relation.version);
    if (!definition) throw new RelgateError(Code.FAILED_PRECONDITION, `interface ${relation.interface} v${relation.version} is no longer loaded`, { reason: 'INTERFACE_NOT_LOADED' });
    return definition;
  }

  /** A request the caller may see on the side, with its relation; NOT_FOUND otherwise. */
  async #visibleRequest(tx: StoreTx, callerName: string, requestId: string, side: SideName) {
    const caller = await requireCaller(tx, callerName);
    const request = await tx.getRequest(requestId.toLowerCase());
    if (!request || (side === 'responder' && !isAddressedTo(request, caller.name))) throw notFound('request', requestId);
    const relation = await tx.getRelation(request.relation_id);
    if (!relation) throw notFound('request', requestId);
    const application = side === 'requester' ? relation.requester_application : relation.responder_application;
    if (application !== caller.application) throw notFound('request', requestId);
    const membership = await joinedRelation(tx, relation.id, caller, side);
    return { caller, request, relation: membership.relation, units: membership.units };
  }

  /**
   * Relation ids a list covers: the one named (checked), or every joined one (of the interface, when named);
   * and whether a request's fields match, in each relation's canonical form. Only matching fields needs the
   * relations' interfaces loaded.
   */
  async #scope(tx: StoreTx, caller: UnitRecord, scope: RelationScope, side: SideName, match: JsonObject) {
    const relations = await this.#relationsInScope(tx, caller, scope, side);
    const relationIds = relations.map(({ relation }) => relation.id);
    if (Object.keys(match).length === 0) return { relationIds, matches: (_request: RequestRecord) => true };
    const types = new Map(relations.map(({ relation }) => [relation.id, this.#definition(relation).requestType]));
    const violations = [...types.values()].flatMap((type) => validateFields(type, match, 'match_fields', { checkRequired: false }));
    invalidIfAny(scope.relationId ? violations : dedupe(violations));
    const scoped = new Map([...types].map(([id, type]) => [id, { type, match: canonicalMatch(type, match) }]));
    const matches = (request: RequestRecord) => {
      const entry = scoped.get(request.relation_id);
      return entry !== undefined && fieldsMatch(entry.type, request.fields, entry.match);
    };
    return { relationIds, matches };
  }

  async #relationsInScope(tx: StoreTx, caller: UnitRecord, { relationId, iface }: RelationScope, side: SideName) {
    if (relationId) {
      const membership = await joinedRelation(tx, relationId, caller, side);
      checkInterface(relationId, iface);
      return [membership];
    }
    const memberships = [];
    // The id says the interface: relations of others are not read.
    for (const id of await joinedRelationIds(tx, caller.name, side)) if (ofInterface(id, iface)) memberships.push(await joinedRelation(tx, id, caller, side));
    return memberships;
  }
}

function requesterView(caller: UnitRecord): Viewer {
  return { unit: caller.name, side: 'requester' };
}

function invalidIfAny(violations: { field: string; description: string }[]): void {
  if (violations.length > 0) throw invalidArgument(violations);
}

function dedupe(violations: { field: string; description: string }[]) {
  const seen = new Set<string>();
  return violations.filter((violation) => !seen.has(violation.field) && seen.add(violation.field));
}

/** The values a list or ResponseByField matches on; none are read when there are too many. */
function matchOf(violations: Violations, struct: StructMessage | null): JsonObject {
  const count = Object.keys(struct?.fields ?? {}).length;
  violations.matchFieldCount(count);
  return count > MAX_MATCH_FIELDS ? {} : structToJson(struct);
}

interface ParsedCreate {
  fields: JsonObject;
  ttl: number;
  selector: ReturnType<typeof parseSelector> | undefined;
}

/** The checks of a create that need no store. */
function parseCreate(input: CreateInput): ParsedCreate {
  const violations = new Violations().relationId('relation_id', input.relation_id).uuid('request_id', input.request_id, true);
  const ttl = durationMs(violations, 'ttl', input.ttl, MAX_TTL_MS);
  const fields = structToJson(input.fields);
  const selector = checkDelivery(violations, input.delivery);
  violations.throwIfAny();
  return { fields, ttl, selector };
}

function checkDelivery(violations: Violations, delivery: DeliveryInput) {
  if (delivery.mode === 'unit') violations.unitName('delivery.unit', delivery.unit);
  else if (delivery.unit !== '') violations.add('delivery.unit', 'is only for DELIVERY_MODE_UNIT');
  if (delivery.mode === 'selector') {
    try {
      return parseSelector(delivery.selector);
    } catch (error) {
      if (error instanceof RelgateError) violations.addAll(error.fieldViolations);
      else throw error;
    }
  } else if (delivery.selector !== '') violations.add('delivery.selector', 'is only for DELIVERY_MODE_SELECTOR');
  return undefined;
}

async function resolveDelivery(tx: StoreTx, relation: RelationRecord, units: { unit: string; side: SideName }[], delivery: DeliveryInput, selector: ReturnType<typeof parseSelector> | undefined) {
  const responders = units.filter((unit) => unit.side === 'responder').map((unit) => unit.unit);
  if (delivery.mode === 'any') return { units: [] as string[], count: 1 };
  if (delivery.mode === 'unit') {
    await requireUnit(tx, delivery.unit);
    if (!responders.includes(delivery.unit)) {
      throw failedPrecondition('UNIT_NOT_JOINED', `unit ${delivery.unit} has not joined relation ${relation.id} as responder`, { relation_id: relation.id, unit: delivery.unit });
    }
    return { units: [delivery.unit], count: 1 };
  }
  const matched: string[] = [];
  for (const name of responders) {
    const unit = await tx.getUnit(name);
    if (unit && matches(selector ?? [], unit.labels)) matched.push(name);
  }
  matched.sort();
  return { units: matched, count: matched.length };
}

function newRequest(caller: UnitRecord, relation: RelationRecord, requestId: string, fields: JsonObject, delivery: DeliveryInput, expected: { units: string[]; count: number }, ttl: number, now: number, revision: number): RequestRecord {
  return {
    request_id: requestId,
    relation_id: relation.id,
    interface: relation.interface,
    source_unit: caller.name,
    source_ingress_address: caller.ingress_address,
    source_egress_subnets: caller.egress_subnets,
    source_labels: caller.labels,
    fields,
    delivery: { ...delivery },
    expected_units: expected.units,
    expected_count: expected.count,
    answered_units: [],
    response_count: 0,
    state: expected.count === 0 ? 'answered' : 'pending',
    claim: null,
    expire_time: ttl > 0 ? now + ttl : null,
    body: requestBody(relation.id, fields, delivery, ttl),
    create_time: now,
    update_time: now,
    create_revision: revision,
    revision,
  };
}

/** A body stored before values had one canonical form (in the spelling first sent), in that form. */
function canonicalBody(type: protobuf.Type, stored: string): string {
  const body = JSON.parse(stored) as JsonObject;
  return canonicalJson({ ...body, fields: canonicalFields(type, (body.fields ?? {}) as JsonObject) });
}

/** What makes two creates with the same request id the same request. */
function requestBody(relationId: string, fields: JsonObject, delivery: DeliveryInput, ttl: number): string {
  return canonicalJson({ relation_id: relationId, fields, delivery: { mode: delivery.mode, unit: delivery.unit, selector: delivery.selector }, ttl });
}

/** Expired, or past its time to live and not yet marked so by the sweep; an answered request never expires. */
function hasExpired(request: RequestRecord, now: number): boolean {
  return request.state === 'expired' || (request.state === 'pending' && request.expire_time !== null && request.expire_time <= now);
}

function checkAnswerable(request: RequestRecord, unit: string, now: number): void {
  const meta = { request_id: request.request_id };
  if (request.answered_units.includes(unit)) throw failedPrecondition('ALREADY_ANSWERED', `unit ${unit} has already answered request ${request.request_id}`, meta);
  if (request.state === 'answered') throw failedPrecondition('REQUEST_COMPLETED', `request ${request.request_id} is already answered`, meta);
  if (hasExpired(request, now)) throw failedPrecondition('REQUEST_EXPIRED', `request ${request.request_id} has expired`, meta);
  if (request.claim && request.claim.unit !== unit && request.claim.expire_time > now) {
    throw failedPrecondition('REQUEST_CLAIMED', `request ${request.request_id} is claimed by ${request.claim.unit}`, { ...meta, claimed_by: request.claim.unit });
  }
}

/** ABORTED unless the request a write acts on is at the expected revision (0: no condition). */
function checkRevision(expected: number, request: RequestRecord): void {
  if (expected === 0 || expected === request.revision) return;
  throw revisionMismatch(expected, request.revision, `request ${request.request_id} is at revision ${request.revision}`, { request_id: request.request_id });
}

/** A conditional write refused because the request changed since the caller read it (or is gone). */
function revisionMismatch(expected: number, current: number, found: string, metadata: Record<string, string>): RelgateError {
  return new RelgateError(Code.ABORTED, `expected revision ${expected}, but ${found}; nothing was written`, {
    reason: 'REVISION_MISMATCH',
    metadata: { ...metadata, expected_revision: String(expected), current_revision: String(current) },
  });
}

/** Whether stored fields hold the (canonical) match's values; stored values are compared in their canonical form. */
function fieldsMatch(type: protobuf.Type, fields: JsonObject, match: JsonObject): boolean {
  return Object.entries(match).every(([name, value]) => jsonEqual(canonicalValue(type, name, ownValue(fields, name) ?? null), value));
}

function requesterFilter(request: RequestRecord, filter: RequestFilterName): boolean {
  if (filter === 'new') return request.state === 'pending';
  if (filter === 'answered') return request.state === 'answered';
  return true;
}

function responderFilter(request: RequestRecord, unit: string, filter: RequestFilterName): boolean {
  return isAddressedTo(request, unit) && (filter !== 'new' || isNewFor(request, unit));
}

async function firstMatch(tx: StoreTx, relationIds: string[], matches: (request: RequestRecord) => boolean): Promise<RequestRecord | undefined> {
  const { items } = await scan(tx, relationIds, 0, { size: 1, bytes: Infinity, scanned: Infinity }, matches);
  return items[0];
}

/**
 * What one page holds: up to size requests, and past the first only as many as fit in bytes, by requestBytes; it ends
 * once it has looked at `scanned` stored requests.
 */
interface PageLimit {
  size: number;
  bytes: number;
  scanned: number;
}

/**
 * Walks requests in creation order, keeping those that pass keep until the page is full. It looks for one match
 * beyond the page so that the last page carries no token (a page that merely ends at the last match is still the
 * last page). A page holds at least one request, however large: a client could not read past it otherwise.
 */
async function scan(tx: StoreTx, relationIds: string[], after: number, page: PageLimit, keep: (request: RequestRecord) => boolean, pendingOnly = false) {
  const items: RequestRecord[] = [];
  let scanned = after;
  let looked = 0;
  let bytes = 0;
  if (relationIds.length === 0) return { items, last: after, more: false };
  const limit = Math.max(SCAN_CHUNK, page.size + 1);
  const full = () => ({ items, last: items.at(-1)?.create_revision ?? after, more: true });
  for (;;) {
    const chunk = await tx.listRequests({ relationIds, afterCreateRevision: scanned, limit, pendingOnly });
    for (const request of chunk) {
      // Every request up to `scanned` has been looked at: the token goes on after it.
      if (looked === page.scanned) return { items, last: scanned, more: true };
      looked += 1;
      scanned = request.create_revision;
      if (!keep(request)) continue;
      if (items.length === page.size) return full();
      bytes += requestBytes(request);
      if (items.length > 0 && bytes > page.bytes) return full();
      items.push(request);
    }
    if (chunk.length < limit) return { items, last: scanned, more: false };
  }
}

/** A generous estimate of a request's encoded size in a list: all it carries but its stored body, which is not sent. */
function requestBytes(request: RequestRecord): number {
  return ITEM_OVERHEAD_BYTES + textSize(request) - textSize(request.body);
}

/** What a page of a request's responses is bound to: a token from ResponseByField goes on in ListResponses. */
function responsesQuery(requestId: string): string {
  return canonicalJson({ responses_of: requestId });
}

/**
 * A page of a request's responses in arrival order after revision `after`: up to size, and past the first only as
 * many as fit in bytes, by responseBytes. It reads one response beyond the page, so that the last page carries no token.
 */
async function responsePage(tx: StoreTx, requestId: string, after: number, page: Omit<PageLimit, 'scanned'>) {
  const items: ResponseRecord[] = [];
  const limit = Math.min(page.size + 1, RESPONSE_CHUNK);
  const done = (more: boolean) => ({
    responses: items.map(responseMessage),
    next_page_token: more ? encodePageToken(items.at(-1)?.revision ?? after, responsesQuery(requestId)) : '',
  });
  let bytes = 0;
  let from = after;
  for (;;) {
    const chunk = await tx.listResponses(requestId, { afterRevision: from, limit });
    for (const response of chunk) {
      bytes += responseBytes(response);
      if (items.length === page.size || (items.length > 0 && bytes > page.bytes)) return done(true);
      items.push(response);
    }
    if (chunk.length < limit) return done(false);
    from = chunk.at(-1)?.revision ?? from;
  }
}

/** A generous estimate of a response's encoded size in a list. */
function responseBytes(response: ResponseRecord): number {
  return ITEM_OVERHEAD_BYTES + textSize(response);
}
