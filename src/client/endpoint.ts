// What requester and responder endpoints share: the relation they act on,
// and commands that go over the session when one is open, unary otherwise.
import type * as grpc from '@grpc/grpc-js';
import type { Delivery as DeliveryMessage } from '../../gen/relgate/v1/Delivery.ts';
import type { GetRelationResponse__Output } from '../../gen/relgate/v1/GetRelationResponse.ts';
import type { GetUnitResponse__Output } from '../../gen/relgate/v1/GetUnitResponse.ts';
import type { Side } from '../../gen/relgate/v1/Side.ts';
import type { Duration } from '../../gen/google/protobuf/Duration.ts';
import type { Struct } from '../../gen/google/protobuf/Struct.ts';
import { newRequestId } from '../request-id.ts';
import { jsonToStruct, type JsonObject } from '../struct.ts';
import { unary, type Connection } from './connect.ts';
import { hasReason } from './errors.ts';
import { COMMAND_NOT_SENT, type CommandBody, type CommandName, type CommandResult } from './session.ts';
import type { ConditionalOptions, CreateOptions, Delivery, InterfaceName, Unit } from './types.ts';

export abstract class Endpoint<I extends InterfaceName> {
  readonly connection: Connection;
  readonly iface: I;
  /** The relation, or '' for every relation the unit joined on this side. */
  readonly relation: string;

  /** The side of the relation this endpoint's units talk to. */
  protected abstract readonly remoteSide: Side;

  constructor(connection: Connection, iface: I, relation: string) {
    this.connection = connection;
    this.iface = iface;
    this.relation = relation;
  }

  /**
   * The units of the other side joined to the endpoint's relation, in the order they joined, with what each
   * registered for this side: ingress_address, egress_subnets and labels. Needs an endpoint of one relation.
   */
  async remoteUnits(): Promise<Unit[]> {
    if (!this.relation) throw new Error('remoteUnits() needs an endpoint of one relation: pass { relation } to requester() or responder()');
    const registry = this.connection.registryClient;
    const { relation } = await unary<GetRelationResponse__Output>((cb) => registry.GetRelation({ relation_id: this.relation }, this.metadata, this.connection.callOptions(), cb));
    const names = (relation?.units ?? []).filter((unit) => unit.side === this.remoteSide).map((unit) => unit.unit);
    const units = await Promise.all(
      names.map((name) =>
        unary<GetUnitResponse__Output>((cb) => registry.GetUnit({ name }, this.metadata, this.connection.callOptions(), cb)).then(
          (reply) => reply.unit,
          // Departed since the relation was read (and so out of sight), or removed since: no longer one of them.
          (error: unknown) => (hasReason(error, 'NOT_A_MEMBER') || hasReason(error, 'UNIT_NOT_FOUND') ? null : Promise.reject(error)),
        ),
      ),
    );
    return units.filter((unit) => unit !== null);
  }

  /** What list, flags and watch calls cover: the relation, and only relations of this endpoint's interface. */
  protected get scope(): { relation_id: string; interface: string } {
    return { relation_id: this.relation, interface: this.iface };
  }

  protected get metadata(): grpc.Metadata {
    return this.connection.metadata();
  }

  /** Runs a command over the open session, or as the equivalent unary call. */
  protected command<K extends CommandName>(name: K, body: CommandBody<K>, viaUnary: (callback: (error: grpc.ServiceError | null, response?: CommandResult<K>) => void) => grpc.ClientUnaryCall): Promise<CommandResult<K>> {
    const session = this.connection.session;
    if (!session) return unary(viaUnary);
    // Never sent, so never applied: the unary call is the command's only run.
    return session.command(name, body).catch((error: unknown) => (hasReason(error, COMMAND_NOT_SENT) ? unary(viaUnary) : Promise.reject(error)));
  }

  /** The body of a create: fields as a Struct, a request id chosen here so a retry is a replay. */
  protected createBody(fields: object, options: CreateOptions) {
    return {
      relation_id: options.relation ?? this.relation,
      request_id: options.requestId ?? newRequestId(),
      fields: struct(fields),
      ...(options.delivery ? { delivery: deliveryMessage(options.delivery) } : {}),
      ...(options.ttlMs !== undefined ? { ttl: duration(options.ttlMs) } : {}),
    };
  }
}

/** Plain fields as google.protobuf.Struct (src/struct.ts builds the same shape the generated type describes). */
export function struct(fields: object): Struct {
  return jsonToStruct(fields as JsonObject) as Struct;
}

/** The expected_revision field of a conditional command, when it has one. */
export function condition({ expectedRevision }: ConditionalOptions): { expected_revision?: string } {
  return expectedRevision !== undefined ? { expected_revision: String(expectedRevision) } : {};
}

export function deliveryMessage(delivery: Delivery): DeliveryMessage {
  return 'unit' in delivery ? { mode: 'DELIVERY_MODE_UNIT', unit: delivery.unit } : { mode: 'DELIVERY_MODE_SELECTOR', selector: delivery.selector };
}

export function duration(ms: number): Duration {
  return { seconds: String(Math.floor(ms / 1000)), nanos: Math.round((ms % 1000) * 1e6) };
}

/** The first item of a paged list: a page may come back empty with a token when the gateway stopped looking early. */
export async function firstOfPages<T>(page: (token: string) => Promise<{ items: T[]; next: string }>): Promise<T | undefined> {
  let token = '';
  do {
    const { items, next } = await page(token);
    if (items[0] !== undefined) return items[0];
    token = next;
  } while (token !== '');
  return undefined;
}

/** The items of every page from the one `from` names (the first page when empty). */
export async function allPages<T>(page: (token: string) => Promise<{ items: T[]; next: string }>, from = ''): Promise<T[]> {
  const all: T[] = [];
  let token = from;
  do {
    const { items, next } = await page(token);
    all.push(...items);
    token = next;
  } while (token !== '');
  return all;
}
