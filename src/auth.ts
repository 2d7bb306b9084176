// Who a call acts as, decided in one place for every RPC.
//  - open mode: the unit named in the relgate-unit metadata (local use);
//  - token mode: an admin bearer token for the registry, a per-unit bearer
//    token for requester, responder and session calls and for reading the
//    relations of the unit's application and the units joined to them;
//  - with mutual TLS, a client certificate whose subject CN is a unit name
//    identifies that unit in either mode.
// Metadata can never override a token's or a certificate's identity.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { Code, RelgateError } from './errors.ts';
import type { Store } from './store/store.ts';
import { UNIT_NAME } from './validate.ts';

export type AuthMode = 'open' | 'token';
export const UNIT_METADATA_KEY = 'relgate-unit';
const AUTHORIZATION = 'authorization';

export type Identity = { kind: 'admin' } | { kind: 'unit'; unit: string } | { kind: 'anonymous' };

interface CallLike {
  metadata: grpc.Metadata;
  getAuthContext?(): { sslPeerCertificate?: { subject?: { CN?: string | string[] } } } | null;
}

export function newToken(): string {
  return `rgu_${randomBytes(32).toString('base64url')}`;
}

/** Tokens are 256 random bits, so a plain SHA-256 is a safe verifier. */
export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export class Authenticator {
  readonly mode: AuthMode;
  readonly #adminHash: Buffer | undefined;
  readonly #store: Store;
  /** Only with mutual TLS can a call carry a verified client certificate. */
  readonly #clientCertificates: boolean;

  constructor(mode: AuthMode, adminToken: string | undefined, store: Store, clientCertificates: boolean) {
    if (mode === 'token' && !adminToken) throw new Error('authenticated mode needs an admin token (--admin-token-file or RELGATE_ADMIN_TOKEN)');
    this.mode = mode;
    this.#adminHash = adminToken ? Buffer.from(hashToken(adminToken), 'hex') : undefined;
    this.#store = store;
    this.#clientCertificates = clientCertificates;
  }

  /** The identity of a call, or UNAUTHENTICATED for bad credentials. */
  async identify(call: CallLike): Promise<Identity> {
    const certUnit = this.#clientCertificates ? certificateUnit(call) : undefined;
    const bearer = bearerToken(call.metadata);
    if (certUnit) return this.#checkClaim(call.metadata, { kind: 'unit', unit: certUnit });
    if (this.mode === 'open') {
      const named = namedUnit(call.metadata);
      return named ? { kind: 'unit', unit: named } : { kind: 'anonymous' };
    }
    if (bearer === undefined) throw unauthenticated('TOKEN_REQUIRED', 'send "authorization: Bearer <token>" metadata');
    const hash = Buffer.from(hashToken(bearer), 'hex');
    if (this.#adminHash && timingSafeEqual(hash, this.#adminHash)) return { kind: 'admin' };
    const unit = await this.#store.read((tx) => tx.findUnitByTokenHash(hash.toString('hex')));
    if (!unit) throw unauthenticated('INVALID_TOKEN', 'the token is not valid (unknown, rotated or revoked)');
    return this.#checkClaim(call.metadata, { kind: 'unit', unit: unit.name });
  }

  /** For registry writes: the admin in token mode, anyone in open mode. */
  async requireAdmin(call: CallLike): Promise<void> {
    const identity = await this.identify(call);
    if (this.mode === 'open' || identity.kind === 'admin') return;
    throw new RelgateError(Code.PERMISSION_DENIED, 'this method needs the admin token', { reason: 'ADMIN_REQUIRED' });
  }

  /** For requester, responder and session calls: the acting unit. */
  async requireUnit(call: CallLike): Promise<string> {
    return actingUnit(await this.identify(call));
  }

  /**
   * For registry reads: undefined when the call may read everything (the admin in token mode, anyone in open mode),
   * else the unit whose application's relations bound what it reads.
   */
  async registryReader(call: CallLike): Promise<string | undefined> {
    const identity = await this.identify(call);
    return this.mode === 'open' || identity.kind === 'admin' ? undefined : actingUnit(identity);
  }

  /** A relgate-unit header next to a token or certificate must name the same unit. */
  #checkClaim(metadata: grpc.Metadata, identity: Identity): Identity {
    const named = namedUnit(metadata);
    if (identity.kind === 'unit' && named !== undefined && named !== identity.unit) {
      throw new RelgateError(Code.PERMISSION_DENIED, `credentials belong to ${identity.unit}, which cannot act as ${named}`, { reason: 'IMPERSONATION', metadata: { unit: identity.unit } });
    }
    return identity;
  }
}

function actingUnit(identity: Identity): string {
  if (identity.kind === 'unit') return identity.unit;
  if (identity.kind === 'admin') throw new RelgateError(Code.PERMISSION_DENIED, 'the admin token cannot act as a unit; use the unit\'s token', { reason: 'UNIT_REQUIRED' });
  throw unauthenticated('UNIT_REQUIRED', `name the calling unit in the "${UNIT_METADATA_KEY}" metadata, e.g. ${UNIT_METADATA_KEY}: webapp/0`);
}

function unauthenticated(reason: string, message: string): RelgateError {
  return new RelgateError(Code.UNAUTHENTICATED, message, { reason });
}

function namedUnit(metadata: grpc.Metadata): string | undefined {
  const values = metadata.get(UNIT_METADATA_KEY);
  if (values.length === 0) return undefined;
  const name = values[0];
  if (values.length > 1 || typeof name !== 'string' || !UNIT_NAME.test(name)) {
    throw unauthenticated('INVALID_UNIT', `"${UNIT_METADATA_KEY}" must hold one unit name "<application>/<number>"`);
  }
  return name;
}

function bearerToken(metadata: grpc.Metadata): string | undefined {
  const value = metadata.get(AUTHORIZATION)[0];
  if (typeof value !== 'string') return undefined;
  const match = /^Bearer\s+(\S+)$/i.exec(value);
  if (!match?.[1]) throw unauthenticated('INVALID_TOKEN', 'authorization metadata must be "Bearer <token>"');
  return match[1];
}

/** The unit named by a verified client certificate's subject CN. */
function certificateUnit(call: CallLike): string | undefined {
  const cn = call.getAuthContext?.()?.sslPeerCertificate?.subject?.CN;
  const name = Array.isArray(cn) ? cn[0] : cn;
  return name && UNIT_NAME.test(name) ? name : undefined;
}
