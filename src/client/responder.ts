// The responder side of a relation, typed by its interface: read the
// requests addressed to the unit, claim them, answer or fail them, watch.
import type { ListIncomingRequestsResponse__Output } from '../../gen/relgate/v1/ListIncomingRequestsResponse.ts';
import type { Request__Output } from '../../gen/relgate/v1/Request.ts';
import { unary } from './connect.ts';
import { Endpoint, allPages, condition, duration, firstOfPages, struct } from './endpoint.ts';
import type { ConditionalOptions, InterfaceName, Request, RequestFields, ResponderFlags, Response, ResponseFields, WatchOptions } from './types.ts';
import { Watch, serverStreamWatch, toRequest, toResponse } from './watch.ts';

/** A request, or its id. */
export type RequestRef = string | { request_id: string };

type ListFilter = 'REQUEST_FILTER_ALL' | 'REQUEST_FILTER_NEW';

const idOf = (request: RequestRef) => (typeof request === 'string' ? request : request.request_id);

export class Responder<I extends InterfaceName> extends Endpoint<I> {
  protected readonly remoteSide = 'SIDE_REQUESTER';

  /** Every request addressed to the unit on the endpoint. */
  requests(): Promise<Request<RequestFields<I>>[]> {
    return this.#listAll('REQUEST_FILTER_ALL', {});
  }

  /** Requests still waiting for the unit's answer. */
  newRequests(): Promise<Request<RequestFields<I>>[]> {
    return this.#listAll('REQUEST_FILTER_NEW', {});
  }

  /** The first request addressed to the unit (in creation order) whose fields equal matchFields. */
  async find(matchFields: Partial<RequestFields<I>>): Promise<Request<RequestFields<I>> | undefined> {
    return firstOfPages((token) => this.#page('REQUEST_FILTER_ALL', matchFields, token, 1));
  }

  /** Every request addressed to the unit whose fields equal matchFields: all of them, or those still waiting for its answer. */
  findAll(matchFields: Partial<RequestFields<I>>, filter: 'all' | 'new' = 'all'): Promise<Request<RequestFields<I>>[]> {
    return this.#listAll(filter === 'new' ? 'REQUEST_FILTER_NEW' : 'REQUEST_FILTER_ALL', matchFields);
  }

  /** One request addressed to the unit. */
  async get(requestId: string): Promise<Request<RequestFields<I>>> {
    const { request } = await unary<{ request: Request__Output | null }>((cb) => this.connection.responderClient.GetIncomingRequest({ request_id: requestId }, this.metadata, this.connection.callOptions(), cb));
    return toRequest<RequestFields<I>>(request ?? {});
  }

  /** Several requests addressed to the unit, by id, in the order given. */
  getAll(requestIds: readonly string[]): Promise<Request<RequestFields<I>>[]> {
    return Promise.all(requestIds.map((id) => this.get(id)));
  }

  /**
   * Answers a request successfully; acknowledged once durable. With `expectedRevision`, only if the request is still
   * at that revision: an answer to what the unit saw is refused once the request changed.
   */
  respond(request: RequestRef, fields: ResponseFields<I>, options: ConditionalOptions = {}): Promise<Response<ResponseFields<I>>> {
    return this.#respond({ request_id: idOf(request), code: 0, error: '', fields: struct(fields), ...condition(options) });
  }

  /** Answers a request with a failure: a non-zero code and an error message, optionally some fields; `expectedRevision` as for respond. */
  fail(request: RequestRef, code: number, error: string, fields: Partial<ResponseFields<I>> = {}, options: ConditionalOptions = {}): Promise<Response<ResponseFields<I>>> {
    return this.#respond({ request_id: idOf(request), code, error, fields: struct(fields), ...condition(options) });
  }

  /** Claims a request for a lease (default 30 s), or renews the unit's claim; with `expectedRevision`, only if the request is still at that revision. */
  async claim(request: RequestRef, options: { leaseMs?: number } & ConditionalOptions = {}): Promise<Request<RequestFields<I>>> {
    const body = { request_id: idOf(request), ...(options.leaseMs !== undefined ? { lease: duration(options.leaseMs) } : {}), ...condition(options) };
    const result = await this.command('claim', body, (cb) => this.connection.responderClient.ClaimRequest(body, this.metadata, this.connection.callOptions(), cb));
    return toRequest<RequestFields<I>>(result.request ?? {});
  }

  /** Releases the unit's claim: the request is new again for every unit. */
  async release(request: RequestRef): Promise<Request<RequestFields<I>>> {
    const body = { request_id: idOf(request) };
    const result = await this.command('release', body, (cb) => this.connection.responderClient.ReleaseRequest(body, this.metadata, this.connection.callOptions(), cb));
    return toRequest<RequestFields<I>>(result.request ?? {});
  }

  /** available, has_requests, new_requests. */
  async flags(): Promise<ResponderFlags> {
    const { flags } = await unary<{ flags: ResponderFlags | null }>((cb) => this.connection.responderClient.GetResponderFlags(this.scope, this.metadata, this.connection.callOptions(), cb));
    return flags ?? { available: false, has_requests: false, new_requests: false };
  }

  /** Watches requests addressed to the unit (all, or only those still waiting for its answer). */
  watch(options: WatchOptions & { filter?: 'all' | 'new' } = {}): Watch<RequestFields<I>, ResponseFields<I>> {
    const { filter, ...watchOptions } = options;
    const open = serverStreamWatch((start) => this.connection.responderClient.WatchIncomingRequests({ options: start }, this.metadata));
    const base = { ...this.scope, filter: filter === 'new' ? ('REQUEST_FILTER_NEW' as const) : ('REQUEST_FILTER_ALL' as const) };
    return this.connection.track(new Watch(open, { base, options: watchOptions }));
  }

  async #respond(body: { request_id: string; code: number; error: string; fields: ReturnType<typeof struct>; expected_revision?: string }): Promise<Response<ResponseFields<I>>> {
    const result = await this.command('respond', body, (cb) => this.connection.responderClient.Respond(body, this.metadata, this.connection.callOptions(), cb));
    return toResponse<ResponseFields<I>>(result.response ?? {});
  }

  async #page(filter: ListFilter, matchFields: object, pageToken: string, pageSize = 1000): Promise<{ items: Request<RequestFields<I>>[]; next: string }> {
    const query = { ...this.scope, filter, match_fields: struct(matchFields), page_size: pageSize, page_token: pageToken };
    const page = await unary<ListIncomingRequestsResponse__Output>((cb) => this.connection.responderClient.ListIncomingRequests(query, this.metadata, this.connection.callOptions(), cb));
    return { items: page.requests.map((request) => toRequest<RequestFields<I>>(request)), next: page.next_page_token };
  }

  #listAll(filter: ListFilter, matchFields: object): Promise<Request<RequestFields<I>>[]> {
    return allPages((token) => this.#page(filter, matchFields, token));
  }
}
