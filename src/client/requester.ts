// The requester side of a relation, typed by its interface: create requests,
// read them and their responses, call and wait, watch.
import type { ListRequestsResponse__Output } from '../../gen/relgate/v1/ListRequestsResponse.ts';
import type { ListResponsesResponse__Output } from '../../gen/relgate/v1/ListResponsesResponse.ts';
import type { Request__Output } from '../../gen/relgate/v1/Request.ts';
import type { ResponseByFieldResponse__Output } from '../../gen/relgate/v1/ResponseByFieldResponse.ts';
import type { Response__Output } from '../../gen/relgate/v1/Response.ts';
import type { CallAllResponse__Output } from '../../gen/relgate/v1/CallAllResponse.ts';
import type { RequesterServiceClient } from '../../gen/relgate/v1/RequesterService.ts';
import { unary } from './connect.ts';
import { Endpoint, allPages, condition, firstOfPages, struct } from './endpoint.ts';
import { Code, RelgateError, cannotStart, toRelgateError } from './errors.ts';
import type { CallOptions, ConditionalOptions, CreateOptions, InterfaceName, Request, RequestFields, RequestFilter, RequesterFlags, Response, ResponseFields, WatchOptions } from './types.ts';
import { Watch, serverStreamWatch, toRequest, toResponse } from './watch.ts';

export interface CallResult<Req, Res> {
  request: Request<Req>;
  response: Response<Res>;
}

export interface CallAllResult<Req, Res> {
  request: Request<Req>;
  /** Responses in arrival order. */
  responses: Response<Res>[];
  /** True when every expected unit answered before the deadline. */
  complete: boolean;
  /** Units that did not answer in time. */
  missingUnits: string[];
}

const FILTERS = { all: 'REQUEST_FILTER_ALL', new: 'REQUEST_FILTER_NEW', answered: 'REQUEST_FILTER_ANSWERED' } as const;

export class Requester<I extends InterfaceName> extends Endpoint<I> {
  protected readonly remoteSide = 'SIDE_RESPONDER';

  /** Creates a request; acknowledged once durable. */
  async create(fields: RequestFields<I>, options: CreateOptions = {}): Promise<Request<RequestFields<I>>> {
    const body = this.createBody(fields, options);
    const result = await this.command('create', body, (cb) => this.connection.requesterClient.CreateRequest(body, this.metadata, this.connection.callOptions(), cb));
    return this.#request(result.request);
  }

  /**
   * Updates the first request whose fields named in matchOn equal those of
   * `fields`, or creates one. An update that changes the fields drops its
   * responses and makes the request new again. With `expectedRevision`, only
   * a matching request still at that revision is updated (none is created).
   */
  async createOrUpdate(
    matchOn: readonly (keyof RequestFields<I> & string)[],
    fields: RequestFields<I>,
    options: Omit<CreateOptions, 'requestId'> & ConditionalOptions = {},
  ): Promise<{ request: Request<RequestFields<I>>; created: boolean; updated: boolean }> {
    const { request_id: _generatedId, ...create } = this.createBody(fields, options); // an update keeps its id
    const body = { ...create, match_fields: [...matchOn], ...condition(options) };
    const result = await this.command('create_or_update', body, (cb) => this.connection.requesterClient.CreateOrUpdateRequest(body, this.metadata, this.connection.callOptions(), cb));
    return { request: this.#request(result.request), created: result.created, updated: result.updated };
  }

  /** The first request (in creation order) whose fields equal matchFields. */
  async find(matchFields: Partial<RequestFields<I>>): Promise<Request<RequestFields<I>> | undefined> {
    return firstOfPages((token) => this.#page('all', matchFields, token, 1));
  }

  /** Every request whose fields equal matchFields. */
  findAll(matchFields: Partial<RequestFields<I>>, filter: RequestFilter = 'all'): Promise<Request<RequestFields<I>>[]> {
    return this.#listAll(filter, matchFields);
  }

  /** One request by id. */
  async get(requestId: string): Promise<Request<RequestFields<I>>> {
    const { request } = await unary<{ request: Request__Output | null }>((cb) => this.connection.requesterClient.GetRequest({ request_id: requestId }, this.metadata, this.connection.callOptions(), cb));
    return this.#request(request);
  }

  /** Several requests by id, in the order given. */
  getAll(requestIds: readonly string[]): Promise<Request<RequestFields<I>>[]> {
    return Promise.all(requestIds.map((id) => this.get(id)));
  }

  /** The unit's requests on the endpoint: all, not yet fully answered (new), or answered. */
  requests(filter: RequestFilter = 'all'): Promise<Request<RequestFields<I>>[]> {
    return this.#listAll(filter, {});
  }

  /** The responses to one request, or to every request of the endpoint, in arrival order. */
  async responses(requestId?: string): Promise<Response<ResponseFields<I>>[]> {
    if (requestId !== undefined) return this.#responsesOf(requestId);
    const all = await Promise.all((await this.requests('all')).map((request) => this.#responsesOf(request.request_id)));
    return all.flat();
  }

  /** The first request whose fields equal matchFields, with all its responses (the first page comes with the request). */
  async responseByField(matchFields: Partial<RequestFields<I>>): Promise<{ request: Request<RequestFields<I>>; responses: Response<ResponseFields<I>>[] } | undefined> {
    const result = await unary<ResponseByFieldResponse__Output>((cb) =>
      this.connection.requesterClient.ResponseByField({ ...this.scope, match_fields: struct(matchFields) }, this.metadata, this.connection.callOptions(), cb),
    );
    if (!result.request) return undefined;
    const request = this.#request(result.request);
    const rest = result.next_page_token === '' ? [] : await this.#responsesOf(request.request_id, result.next_page_token);
    return { request, responses: [...result.responses.map((response) => toResponse<ResponseFields<I>>(response)), ...rest] };
  }

  /** available, has_responses, all_responses. */
  async flags(): Promise<RequesterFlags> {
    const { flags } = await unary<{ flags: RequesterFlags | null }>((cb) => this.connection.requesterClient.GetRequesterFlags(this.scope, this.metadata, this.connection.callOptions(), cb));
    return flags ?? { available: false, has_responses: false, all_responses: false };
  }

  /** Withdraws (deletes) a request and its responses (with `expectedRevision`, only if it is still at that revision); returns the revision of the withdrawal. */
  async withdraw(requestId: string, options: ConditionalOptions = {}): Promise<number> {
    const body = { request_id: requestId, ...condition(options) };
    const result = await this.command('withdraw', body, (cb) => this.connection.requesterClient.WithdrawRequest(body, this.metadata, this.connection.callOptions(), cb));
    return Number(result.revision);
  }

  /** Creates a request and waits for its response until the deadline (DEADLINE_EXCEEDED then; the request stays stored). */
  async call(fields: RequestFields<I>, options: CallOptions = {}): Promise<CallResult<RequestFields<I>, ResponseFields<I>>> {
    const body = { ...this.createBody(fields, options), wait_for_responders: options.waitForResponders ?? false };
    const result = await unary<{ request: Request__Output | null; response: Response__Output | null }>(
      (cb) => this.connection.requesterClient.Call(body, this.metadata, this.connection.callOptions(options.deadline), cb),
      options.signal,
    );
    return { request: this.#request(result.request), response: toResponse<ResponseFields<I>>(result.response ?? {}) };
  }

  /** Creates a request (usually to a selector) and collects every expected response until the deadline. */
  callAll(fields: RequestFields<I>, options: CallOptions = {}): Promise<CallAllResult<RequestFields<I>, ResponseFields<I>>> {
    const body = { ...this.createBody(fields, options), wait_for_responders: options.waitForResponders ?? false };
    let stream: ReturnType<RequesterServiceClient['CallAll']>;
    try {
      stream = this.connection.requesterClient.CallAll(body, this.metadata, this.connection.callOptions(options.deadline));
    } catch (error) {
      return Promise.reject(cannotStart('the call', error));
    }
    const cancel = () => stream.cancel();
    if (options.signal?.aborted) cancel();
    else options.signal?.addEventListener('abort', cancel, { once: true });
    return new Promise((resolve, reject) => {
      let request: Request<RequestFields<I>> | undefined;
      let result: CallAllResult<RequestFields<I>, ResponseFields<I>> | undefined;
      const responses: Response<ResponseFields<I>>[] = [];
      stream.on('data', (message: CallAllResponse__Output) => {
        if (message.started) request = this.#request(message.started.request);
        if (message.response) responses.push(toResponse<ResponseFields<I>>(message.response));
        if (message.finished && request) result = { request, responses, complete: message.finished.complete, missingUnits: message.finished.missing_units };
      });
      stream.on('status', (status: { code: number }) => {
        options.signal?.removeEventListener('abort', cancel);
        if (status.code !== Code.OK) return; // 'error' carries the failure
        if (result) resolve(result);
        else reject(new RelgateError(Code.INTERNAL, 'the call ended without its final message', { reason: 'INCOMPLETE_CALL' }));
      });
      stream.on('error', (error) => reject(toRelgateError(error)));
    });
  }

  /** Watches the unit's requests, their responses, relation events and flags. */
  watch(options: WatchOptions = {}): Watch<RequestFields<I>, ResponseFields<I>> {
    const open = serverStreamWatch((start) => this.connection.requesterClient.WatchResponses({ options: start }, this.metadata));
    return this.connection.track(new Watch(open, { base: this.scope, options }));
  }

  #request(message: Request__Output | null | undefined): Request<RequestFields<I>> {
    return toRequest<RequestFields<I>>(message ?? {});
  }

  /** Every page of a request's responses from the one pageToken names. */
  #responsesOf(requestId: string, pageToken = ''): Promise<Response<ResponseFields<I>>[]> {
    return allPages(async (token) => {
      const query = { request_id: requestId, page_size: 1000, page_token: token };
      const page = await unary<ListResponsesResponse__Output>((cb) => this.connection.requesterClient.ListResponses(query, this.metadata, this.connection.callOptions(), cb));
      return { items: page.responses.map((response) => toResponse<ResponseFields<I>>(response)), next: page.next_page_token };
    }, pageToken);
  }

  async #page(filter: RequestFilter, matchFields: object, pageToken: string, pageSize = 1000): Promise<{ items: Request<RequestFields<I>>[]; next: string }> {
    const query = { ...this.scope, filter: FILTERS[filter], match_fields: struct(matchFields), page_size: pageSize, page_token: pageToken };
    const page = await unary<ListRequestsResponse__Output>((cb) => this.connection.requesterClient.ListRequests(query, this.metadata, this.connection.callOptions(), cb));
    return { items: page.requests.map((request) => this.#request(request)), next: page.next_page_token };
  }

  #listAll(filter: RequestFilter, matchFields: object): Promise<Request<RequestFields<I>>[]> {
    return allPages((token) => this.#page(filter, matchFields, token));
  }
}
