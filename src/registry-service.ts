// RegistryService logic: interfaces, applications, units and relations.
import { hashToken, newToken } from './auth.ts';
import { Code, RelgateError, failedPrecondition, notFound } from './errors.ts';
import type { InterfaceRegistry, InterfaceDefinition } from './interfaces.ts';
import { relationIdOf } from './relation-id.ts';
import { joinedRelationIds, refreshFlags, requireCaller, requireUnit } from './relations.ts';
import { relationMessage, unitMessage } from './present.ts';
import type { RelationRecord, SideName, Store, StoreTx, UnitRecord } from './store/store.ts';
import { APPLICATION_NAME, ENDPOINT_NAME, UNIT_NAME, Violations } from './validate.ts';

export interface UnitProperties {
  name: string;
  ingress_address: string;
  egress_subnets: string[];
  labels: Record<string, string>;
}

export interface RelationSpec {
  interface: string;
  version: number;
  requester_application: string;
  requester_endpoint: string;
  responder_application: string;
  responder_endpoint: string;
}

/**
 * Who reads relations and units: a unit (authenticated mode), which sees only its application's relations and the
 * units joined to them; undefined for a caller that sees everything.
 */
export type RegistryReader = string | undefined;

export function interfaceMessage(definition: InterfaceDefinition) {
  const { requestType: _request, responseType: _response, ...message } = definition;
  return message;
}

export class RegistryService {
  readonly #store: Store;
  readonly #interfaces: InterfaceRegistry;

  constructor(store: Store, interfaces: InterfaceRegistry) {
    this.#store = store;
    this.#interfaces = interfaces;
  }

  listInterfaces() {
    return { interfaces: this.#interfaces.list().map(interfaceMessage) };
  }

  getInterface(name: string, version: number) {
    new Violations().required('name', name).throwIfAny();
    const definition = this.#interfaces.get(name, version);
    if (!definition) throw notFound('interface', version ? `${name} v${version}` : name);
    return { interface: interfaceMessage(definition) };
  }

  async registerApplication(name: string) {
    new Violations().pattern('name', name, APPLICATION_NAME, 'lower-case letters, digits and "-", starting with a letter').throwIfAny();
    return this.#store.write(async (tx) => {
      if (await tx.getApplication(name)) throw alreadyExists('application', name);
      const record = { name, revision: await tx.revision() };
      await tx.putApplication(record);
      await tx.appendChange('', { kind: 'registry', what: 'application-registered', name });
      return { application: { name, revision: record.revision } };
    });
  }

  async listApplications() {
    const applications = await this.#store.read((tx) => tx.listApplications());
    return { applications: applications.map((app) => ({ name: app.name, revision: app.revision })) };
  }

  /** Removes an application that has no units and is part of no relation, whose records would otherwise name it. */
  async removeApplication(name: string) {
    new Violations().pattern('name', name, APPLICATION_NAME, 'an application name').throwIfAny();
    return this.#store.write(async (tx) => {
      if (!(await tx.getApplication(name))) throw notFound('application', name);
      const units = (await tx.listUnits(name)).map((unit) => unit.name);
      const relations = (await tx.listRelations()).filter((relation) => belongsTo(relation, name)).map((relation) => relation.id);
      if (units.length > 0 || relations.length > 0) throw applicationInUse(name, units, relations);
      const revision = await tx.revision();
      await tx.deleteApplication(name);
      await tx.appendChange('', { kind: 'registry', what: 'application-removed', name });
      return { revision };
    });
  }

  /** Registers a unit; with issueToken, returns its bearer token (only a hash is kept). */
  async registerUnit(properties: UnitProperties, issueToken = false) {
    validateUnit(properties);
    const application = UNIT_NAME.exec(properties.name)?.[1] ?? '';
    const token = issueToken ? newToken() : '';
    return this.#store.write(async (tx) => {
      if (!(await tx.getApplication(application))) throw notFound('application', application);
      if (await tx.getUnit(properties.name)) throw alreadyExists('unit', properties.name);
      const unit = { ...properties, application, revision: await tx.revision(), token_hash: token ? hashToken(token) : null };
      await tx.putUnit(unit);
      await tx.appendChange('', { kind: 'registry', what: 'unit-registered', name: unit.name });
      return { unit: unitMessage(unit), token };
    });
  }

  async rotateUnitToken(name: string) {
    new Violations().unitName('name', name).throwIfAny();
    const token = newToken();
    await this.#setTokenHash(name, hashToken(token), 'unit-token-rotated');
    return { token };
  }

  async revokeUnitToken(name: string) {
    new Violations().unitName('name', name).throwIfAny();
    return { revision: await this.#setTokenHash(name, null, 'unit-token-revoked') };
  }

  /** The change-log entry lets every replica drop the unit's open streams. */
  async #setTokenHash(name: string, hash: string | null, what: string): Promise<number> {
    return this.#store.write(async (tx) => {
      const unit = await requireUnit(tx, name);
      const revision = await tx.revision();
      await tx.putUnit({ ...unit, token_hash: hash, revision });
      await tx.appendChange('', { kind: 'registry', what, name });
      return revision;
    });
  }

  /**
   * Removes a unit that has joined no relation (leaving releases its claims and tells the other side, which removal
   * would skip). The change-log entry ends its open streams on every replica, as a revocation does.
   */
  async removeUnit(name: string) {
    new Violations().unitName('name', name).throwIfAny();
    return this.#store.write(async (tx) => {
      await requireUnit(tx, name);
      const joined = await joinedRelationIds(tx, name);
      if (joined.length > 0) throw unitInRelation(name, joined);
      const revision = await tx.revision();
      await tx.deleteUnit(name);
      await tx.appendChange('', { kind: 'registry', what: 'unit-removed', name });
      return { revision };
    });
  }

  async updateUnit(properties: UnitProperties) {
    validateUnit(properties);
    return this.#store.write(async (tx) => {
      const existing = await requireUnit(tx, properties.name);
      const unit = { ...existing, ...properties, revision: await tx.revision() };
      await tx.putUnit(unit);
      await tx.appendChange('', { kind: 'registry', what: 'unit-updated', name: unit.name });
      return { unit: unitMessage(unit) };
    });
  }

  /** A unit; a unit reader gets only itself and the units joined to its application's relations. */
  async getUnit(name: string, reader: RegistryReader) {
    new Violations().unitName('name', name).throwIfAny();
    return this.#store.read(async (tx) => {
      const viewer = await viewerOf(tx, reader);
      const unit = await tx.getUnit(name);
      if (viewer && !(unit && (await sharesRelation(tx, viewer, unit.name)))) {
        throw notAMember(viewer, `unit ${name} has joined no relation of application ${viewer.application}`, { name });
      }
      if (!unit) throw notFound('unit', name);
      return { unit: unitMessage(unit) };
    });
  }

  async listUnits(application: string) {
    const units = await this.#store.read((tx) => tx.listUnits(application || undefined));
    return { units: units.map(unitMessage) };
  }

  async createRelation(spec: RelationSpec) {
    const violations = new Violations()
      .required('interface', spec.interface)
      .pattern('requester_application', spec.requester_application, APPLICATION_NAME, 'an application name')
      .pattern('requester_endpoint', spec.requester_endpoint, ENDPOINT_NAME, 'an endpoint name (lower-case letters, digits and "-")')
      .pattern('responder_application', spec.responder_application, APPLICATION_NAME, 'an application name')
      .pattern('responder_endpoint', spec.responder_endpoint, ENDPOINT_NAME, 'an endpoint name (lower-case letters, digits and "-")');
    violations.throwIfAny();
    const definition = this.#interfaces.get(spec.interface, spec.version);
    if (!definition) throw notFound('interface', spec.version ? `${spec.interface} v${spec.version}` : spec.interface);
    return this.#store.write(async (tx) => {
      for (const app of [spec.requester_application, spec.responder_application]) {
        if (!(await tx.getApplication(app))) throw notFound('application', app);
      }
      // One relation per pair of endpoints, as in Juju: a create retried after a lost reply adds no second one. Writes
      // run one at a time (the store's transaction), so two creates at once cannot both miss each other.
      const existing = (await tx.listRelations()).find((relation) => relation.interface === definition.name && sameEndpoints(relation, spec));
      if (existing) throw relationExists(existing);
      const revision = await tx.revision();
      const relation: RelationRecord = {
        ...spec,
        id: relationIdOf(definition.name, await tx.nextRelationNumber()),
        version: definition.version,
        create_revision: revision,
        revision,
        counters: {},
      };
      await tx.putRelation(relation);
      const { counters: _counters, ...logged } = relation;
      await tx.appendChange(relation.id, { kind: 'relation-created', relation: logged });
      return { relation: relationMessage(relation, []) };
    });
  }

  /** A relation; a unit reader gets only its application's. */
  async getRelation(relationId: string, reader: RegistryReader) {
    new Violations().relationId('relation_id', relationId).throwIfAny();
    return this.#store.read(async (tx) => {
      const viewer = await viewerOf(tx, reader);
      const relation = await tx.getRelation(relationId);
      if (viewer && !(relation && belongsTo(relation, viewer.application))) {
        throw notAMember(viewer, `relation ${relationId} is not a relation of application ${viewer.application}`, { relation_id: relationId });
      }
      if (!relation) throw notFound('relation', relationId);
      return { relation: relationMessage(relation, await tx.listRelationUnits(relationId)) };
    });
  }

  /** Relations, filtered; a unit reader gets only its application's. */
  async listRelations(application: string, interfaceName: string, reader: RegistryReader) {
    return this.#store.read(async (tx) => {
      const viewer = await viewerOf(tx, reader);
      const relations = (await tx.listRelations()).filter(
        (relation) =>
          (!application || belongsTo(relation, application)) &&
          (!interfaceName || relation.interface === interfaceName) &&
          (!viewer || belongsTo(relation, viewer.application)),
      );
      const messages = [];
      for (const relation of relations) messages.push(relationMessage(relation, await tx.listRelationUnits(relation.id)));
      return { relations: messages };
    });
  }

  async deleteRelation(relationId: string) {
    new Violations().relationId('relation_id', relationId).throwIfAny();
    return this.#store.write(async (tx) => {
      const relation = await tx.getRelation(relationId);
      if (!relation) throw notFound('relation', relationId);
      const revision = await tx.revision();
      const units = await tx.listRelationUnits(relationId);
      await tx.deleteRelation(relationId);
      const { counters: _counters, ...logged } = relation;
      await tx.appendChange(relationId, { kind: 'relation-removed', relation: { ...logged, revision }, units });
      return { revision };
    });
  }

  async joinRelation(relationId: string, unitName: string, side: SideName | undefined) {
    new Violations().relationId('relation_id', relationId).unitName('unit', unitName).throwIfAny();
    return this.#store.write(async (tx) => {
      const { relation, unit } = await relationAndUnit(tx, relationId, unitName);
      const joinSide = side ?? inferSide(relation, unit.application);
      const sideApplication = joinSide === 'requester' ? relation.requester_application : relation.responder_application;
      if (unit.application !== sideApplication) {
        throw failedPrecondition('WRONG_APPLICATION', `unit ${unitName} is not of application ${sideApplication}, the ${joinSide} of relation ${relationId}`, {
          relation_id: relationId,
          unit: unitName,
        });
      }
      const units = await tx.listRelationUnits(relationId);
      const existing = units.find((record) => record.unit === unitName);
      if (existing?.side === joinSide) return { relation: relationMessage(relation, units) };
      if (existing) throw failedPrecondition('ALREADY_JOINED', `unit ${unitName} has already joined relation ${relationId} as ${existing.side}`);
      const revision = await tx.revision();
      const joined = { relation_id: relationId, unit: unitName, side: joinSide, revision };
      await tx.putRelationUnit(joined);
      const updated = { ...relation, revision };
      await tx.putRelation(updated);
      await tx.appendChange(relationId, { kind: 'unit-joined', unit: joined });
      await refreshFlags(tx, updated, [...units, joined]);
      return { relation: relationMessage(updated, [...units, joined]) };
    });
  }

  async leaveRelation(relationId: string, unitName: string, onLeave: (tx: StoreTx, relation: RelationRecord, unit: string) => Promise<RelationRecord>) {
    new Violations().relationId('relation_id', relationId).unitName('unit', unitName).throwIfAny();
    return this.#store.write(async (tx) => {
      const { relation } = await relationAndUnit(tx, relationId, unitName);
      const units = await tx.listRelationUnits(relationId);
      const leaving = units.find((record) => record.unit === unitName);
      if (!leaving) throw notFound('relation unit', `${unitName} in ${relationId}`);
      const revision = await tx.revision();
      await tx.deleteRelationUnit(relationId, unitName);
      await tx.deleteFlags(relationId, unitName);
      await tx.appendChange(relationId, { kind: 'unit-departed', unit: { ...leaving, revision } });
      const released = await onLeave(tx, { ...relation, revision }, unitName);
      await tx.putRelation(released);
      const remaining = units.filter((record) => record.unit !== unitName);
      await refreshFlags(tx, released, remaining);
      return { relation: relationMessage(released, remaining) };
    });
  }
}

function validateUnit(properties: UnitProperties): void {
  new Violations()
    .unitName('name', properties.name)
    .address('ingress_address', properties.ingress_address)
    .subnets('egress_subnets', properties.egress_subnets)
    .labels('labels', properties.labels)
    .throwIfAny();
}

async function relationAndUnit(tx: StoreTx, relationId: string, unitName: string) {
  const relation = await tx.getRelation(relationId);
  if (!relation) throw notFound('relation', relationId);
  return { relation, unit: await requireUnit(tx, unitName) };
}

function inferSide(relation: RelationRecord, application: string): SideName {
  if (relation.requester_application === relation.responder_application && relation.requester_application === application) {
    throw new RelgateError(Code.INVALID_ARGUMENT, 'both sides of this relation are the same application; set side', {
      reason: 'SIDE_REQUIRED',
      fieldViolations: [{ field: 'side', description: 'is required when both sides are the same application' }],
    });
  }
  return application === relation.requester_application ? 'requester' : 'responder';
}

function belongsTo(relation: RelationRecord, application: string): boolean {
  return relation.requester_application === application || relation.responder_application === application;
}

function sameEndpoints(relation: RelationRecord, spec: RelationSpec): boolean {
  return (
    relation.requester_application === spec.requester_application &&
    relation.requester_endpoint === spec.requester_endpoint &&
    relation.responder_application === spec.responder_application &&
    relation.responder_endpoint === spec.responder_endpoint
  );
}

async function viewerOf(tx: StoreTx, reader: RegistryReader): Promise<UnitRecord | undefined> {
  return reader === undefined ? undefined : requireCaller(tx, reader);
}

/** Whether the unit is the viewer or has joined a relation of the viewer's application. */
async function sharesRelation(tx: StoreTx, viewer: UnitRecord, unit: string): Promise<boolean> {
  if (unit === viewer.name) return true;
  for (const membership of await tx.listUnitRelations(unit)) {
    const relation = await tx.getRelation(membership.relation_id);
    if (relation && belongsTo(relation, viewer.application)) return true;
  }
  return false;
}

/**
 * What a unit reading a relation or unit outside its application's relations gets: the refusal request calls give
 * for a relation of others, the same whether or not the relation or unit exists.
 */
function notAMember(viewer: UnitRecord, message: string, metadata: Record<string, string>): RelgateError {
  return new RelgateError(Code.PERMISSION_DENIED, `${message}, the application of unit ${viewer.name}`, { reason: 'NOT_A_MEMBER', metadata: { unit: viewer.name, ...metadata } });
}

function relationExists(relation: RelationRecord): RelgateError {
  const ends = `${relation.requester_application}:${relation.requester_endpoint} and ${relation.responder_application}:${relation.responder_endpoint}`;
  return new RelgateError(Code.ALREADY_EXISTS, `relation ${relation.id} of interface ${relation.interface} already relates ${ends}`, {
    reason: 'RELATION_EXISTS',
    metadata: { relation_id: relation.id },
  });
}

function unitInRelation(unit: string, relationIds: string[]): RelgateError {
  return failedPrecondition('UNIT_IN_RELATION', `unit ${unit} has joined ${counted(relationIds, 'relation')}; LeaveRelation first`, {
    unit,
    relation_ids: listed(relationIds),
  });
}

function applicationInUse(application: string, units: string[], relationIds: string[]): RelgateError {
  const uses = [units.length > 0 ? counted(units, 'unit') : '', relationIds.length > 0 ? counted(relationIds, 'relation') : ''];
  return failedPrecondition('APPLICATION_IN_USE', `application ${application} still has ${uses.filter(Boolean).join(' and ')}; remove its units and delete its relations first`, {
    application,
    ...(units.length > 0 ? { units: listed(units) } : {}),
    ...(relationIds.length > 0 ? { relation_ids: listed(relationIds) } : {}),
  });
}

/** How many names an error lists: an application may have thousands of units, and metadata travels in a header. */
const LISTED = 10;

/** The first names, comma-separated, and how many more there are. */
function listed(names: string[]): string {
  const shown = names.slice(0, LISTED).join(',');
  return names.length > LISTED ? `${shown},+${names.length - LISTED} more` : shown;
}

/** "2 units (a/0,a/1)". */
function counted(names: string[], kind: string): string {
  return `${names.length} ${kind}${names.length === 1 ? '' : 's'} (${listed(names)})`;
}

function alreadyExists(kind: string, name: string): RelgateError {
  return new RelgateError(Code.ALREADY_EXISTS, `${kind} "${name}" already exists`, {
    reason: `${kind.toUpperCase()}_EXISTS`,
    metadata: { [kind]: name },
  });
}
