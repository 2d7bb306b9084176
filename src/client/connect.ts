// connect(): one channel to the gateway, the unit's credentials on every
// call, and the requester and responder endpoints built on it.
import * as grpc from '@grpc/grpc-js';
import type { ProtoGrpcType as RegistryProto } from '../../gen/registry.ts';
import type { ProtoGrpcType as RequesterProto } from '../../gen/requester.ts';
import type { ProtoGrpcType as ResponderProto } from '../../gen/responder.ts';
import type { ProtoGrpcType as SessionProto } from '../../gen/session.ts';
import type { RegistryServiceClient } from '../../gen/relgate/v1/RegistryService.ts';
import type { RequesterServiceClient } from '../../gen/relgate/v1/RequesterService.ts';
import type { ResponderServiceClient } from '../../gen/relgate/v1/ResponderService.ts';
import type { SessionServiceClient } from '../../gen/relgate/v1/SessionService.ts';
import { UNIT_METADATA_KEY } from '../auth.ts';
import { MAX_DEADLINE_MS } from '../deadline.ts';
import { loadApi } from '../protos.ts';
import { cannotStart, toRelgateError } from './errors.ts';
import { Requester } from './requester.ts';
import { Responder } from './responder.ts';
import { ClientSession, type SessionOptions } from './session.ts';
import type { InterfaceName } from './types.ts';
import type { Watch } from './watch.ts';

export interface TlsOptions {
  /** PEM of the CA that signed the gateway's certificate; the system roots when unset. */
  ca?: string | Buffer;
  /** PEM client certificate and key, for mutual TLS (the certificate's CN names the unit). */
  cert?: string | Buffer;
  key?: string | Buffer;
}

export interface ConnectOptions {
  /** The unit's bearer token (token mode), sent as "authorization: Bearer <token>". */
  token?: string;
  /** TLS; `true` uses the system roots. Plaintext when unset. */
  tls?: TlsOptions | true;
  /**
   * The unit to act as, sent as "relgate-unit" metadata: how units name
   * themselves in open mode. With a token or client certificate it must
   * name the same unit.
   */
  unit?: string;
  /**
   * How long a call without its own deadline may take, connecting included:
   * calls wait for the gateway to be reachable (after a restart, say) rather
   * than failing at once. Default 30 s.
   */
  timeoutMs?: number;
  /** Extra grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
}

export interface EndpointOptions {
  /** One relation; every relation of the endpoint the unit joined when unset. */
  relation?: string;
}

type Api = RegistryProto & RequesterProto & ResponderProto & SessionProto;
let api: Api | undefined;

function loadClients(): Api['relgate']['v1'] {
  api ??= grpc.loadPackageDefinition(loadApi()) as unknown as Api;
  return api.relgate.v1;
}

/** Connects to a gateway at host:port. The channel connects lazily and reconnects by itself. */
export function connect(address: string, options: ConnectOptions = {}): Connection {
  return new Connection(address, options);
}

export class Connection {
  readonly address: string;
  readonly unit: string | undefined;
  readonly timeoutMs: number;
  readonly requesterClient: RequesterServiceClient;
  readonly responderClient: ResponderServiceClient;
  readonly sessionClient: SessionServiceClient;
  /** For the relations and units the unit may read (Endpoint.remoteUnits). */
  readonly registryClient: RegistryServiceClient;
  #session: ClientSession | undefined;
  readonly #watches = new Set<Watch<unknown, unknown>>();
  readonly #metadata: grpc.Metadata;

  constructor(address: string, options: ConnectOptions) {
    this.address = address;
    this.unit = options.unit;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.#metadata = new grpc.Metadata();
    if (options.unit) this.#metadata.set(UNIT_METADATA_KEY, options.unit);
    if (options.token) this.#metadata.set('authorization', `Bearer ${options.token}`);
    const credentials = channelCredentials(options.tls);
    const v1 = loadClients();
    // One channel shared by the four clients.
    this.requesterClient = new v1.RequesterService(address, credentials, options.channelOptions);
    const channelOverride = this.requesterClient.getChannel();
    this.responderClient = new v1.ResponderService(address, credentials, { ...options.channelOptions, channelOverride });
    this.sessionClient = new v1.SessionService(address, credentials, { ...options.channelOptions, channelOverride });
    this.registryClient = new v1.RegistryService(address, credentials, { ...options.channelOptions, channelOverride });
  }

  /**
   * Options of a unary call: its deadline, at most 24.8 days away. A grpc-js
   * server keeps a call's timeout in a 32-bit integer: a longer one wraps
   * around, and the call ends at once, its request stored.
   */
  callOptions(deadline?: Date | number): grpc.CallOptions {
    const latest = Date.now() + MAX_DEADLINE_MS;
    return { deadline: Math.min(Number(deadline ?? Date.now() + this.timeoutMs), latest) };
  }

  /** Metadata for a call: the unit's name and token; the call waits for the connection rather than failing at once. */
  metadata(): grpc.Metadata {
    const metadata = this.#metadata.clone();
    metadata.setOptions({ waitForReady: true });
    return metadata;
  }

  /** The requester endpoint of interface I: one relation, or every relation the unit joined as requester. */
  requester<I extends InterfaceName>(iface: I, options: EndpointOptions = {}): Requester<I> {
    return new Requester<I>(this, iface, options.relation ?? '');
  }

  /** The responder endpoint of interface I: one relation, or every relation the unit joined as responder. */
  responder<I extends InterfaceName>(iface: I, options: EndpointOptions = {}): Responder<I> {
    return new Responder<I>(this, iface, options.relation ?? '');
  }

  /**
   * Opens the unit's session: one bidirectional stream that carries commands
   * (create, createOrUpdate, withdraw, claim, release, respond), each
   * acknowledged once durable, and optionally the unit's watches. While it
   * is open, every endpoint of this connection sends its commands over it.
   */
  openSession(options: SessionOptions = {}): ClientSession {
    if (this.#session && !this.#session.isClosed) throw new Error('a session is already open on this connection');
    const session = new ClientSession(this, options);
    this.#session = session;
    return session;
  }

  /** The open session, when commands can go over it right now. */
  get session(): ClientSession | undefined {
    return this.#session?.isConnected ? this.#session : undefined;
  }

  /** Keeps a watch so that close() ends it. */
  track<Req, Res>(watch: Watch<Req, Res>): Watch<Req, Res> {
    const tracked = watch as Watch<unknown, unknown>;
    this.#watches.add(tracked);
    void watch.closed.then(() => this.#watches.delete(tracked));
    return watch;
  }

  /** Closes the watches, the session, if any, and the channel. */
  close(): void {
    for (const watch of this.#watches) watch.close();
    this.#session?.close();
    this.requesterClient.close();
  }
}

function channelCredentials(tls: ConnectOptions['tls']): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  if (tls === true) return grpc.credentials.createSsl();
  const asBuffer = (value: string | Buffer | undefined) => (value === undefined ? null : Buffer.from(value));
  return grpc.credentials.createSsl(asBuffer(tls.ca), asBuffer(tls.key), asBuffer(tls.cert));
}

/** Runs one unary call as a promise; failures become RelgateError. */
export function unary<T>(start: (callback: (error: grpc.ServiceError | null, response?: T) => void) => grpc.ClientUnaryCall, signal?: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    let call: grpc.ClientUnaryCall;
    try {
      call = start((error, response) => {
        signal?.removeEventListener('abort', cancel);
        if (error) reject(toRelgateError(error));
        else resolve(response as T);
      });
    } catch (error) {
      return reject(cannotStart('the call', error));
    }
    const cancel = () => call.cancel();
    if (signal?.aborted) cancel();
    else signal?.addEventListener('abort', cancel, { once: true });
  });
}
