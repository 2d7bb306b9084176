// One error type for the whole gateway. Service code throws RelgateError;
// toServiceError() turns it into a gRPC status with google.rpc.Status details
// in exactly one place, and fromServiceError() reads it back on the client.
import { Metadata, status as Code, type ServerInterceptingCall, type ServerInterceptor, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import { newRoot } from './protos.ts';

export { Code };

/** ErrorInfo domain of every relgate error. */
export const ERROR_DOMAIN = 'relgate.dev';

export interface FieldViolation {
  /** Dotted path into the request message, e.g. "fields.sans[1]". */
  field: string;
  description: string;
}

export interface RelgateErrorOptions {
  /** UPPER_SNAKE_CASE reason for ErrorInfo. */
  reason: string;
  metadata?: Record<string, string>;
  fieldViolations?: FieldViolation[];
  cause?: unknown;
}

export class RelgateError extends Error {
  override readonly name = 'RelgateError';
  readonly code: Code;
  readonly reason: string;
  readonly metadata: Record<string, string>;
  readonly fieldViolations: FieldViolation[];

  constructor(code: Code, message: string, options: RelgateErrorOptions) {
    super(message, { cause: options.cause });
    this.code = code;
    this.reason = options.reason;
    this.metadata = options.metadata ?? {};
    this.fieldViolations = options.fieldViolations ?? [];
  }
}

export function isRelgateError(error: unknown): error is RelgateError {
  return error instanceof RelgateError;
}

/** True when error is a RelgateError with the given reason. */
export function hasReason(error: unknown, reason: string): error is RelgateError {
  return isRelgateError(error) && error.reason === reason;
}

// Constructors for the errors that recur across the gateway.

export function invalidArgument(violations: FieldViolation[], reason = 'INVALID_ARGUMENT'): RelgateError {
  const first = violations[0];
  const summary = first ? `${first.field}: ${first.description}` : 'invalid argument';
  const more = violations.length > 1 ? ` (and ${violations.length - 1} more)` : '';
  return new RelgateError(Code.INVALID_ARGUMENT, `${summary}${more}`, { reason, fieldViolations: violations });
}

export function notFound(kind: string, name: string): RelgateError {
  const reason = `${kind.toUpperCase().replace(/[^A-Z]+/g, '_')}_NOT_FOUND`;
  return new RelgateError(Code.NOT_FOUND, `${kind} "${name}" not found`, { reason, metadata: { [kind.replace(/ /g, '_')]: name } });
}

export function failedPrecondition(reason: string, message: string, metadata?: Record<string, string>): RelgateError {
  return new RelgateError(Code.FAILED_PRECONDITION, message, { reason, ...(metadata ? { metadata } : {}) });
}

const rpcRoot = newRoot();
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
const StatusType = rpcRoot.lookupType('google.rpc.Status');
const ErrorInfoType = rpcRoot.lookupType('google.rpc.ErrorInfo');
const BadRequestType = rpcRoot.lookupType('google.rpc.BadRequest');
const TYPE_URL_PREFIX = 'type.googleapis.com/';
export const STATUS_DETAILS_KEY = 'grpc-status-details-bin';

// Errors echo client input (names, ids), and the status travels in HTTP/2
// trailers: bounded in bytes as they are sent, so that a huge or non-ASCII
// input cannot produce trailers the client rejects. grpcio refuses trailers
// over 16 KB, and some between 8 and 16 KB; grpc-message is percent-encoded
// (a CJK character takes 9 bytes) and the details go in base64 (4 bytes for
// every 3), with the message once more.
const MAX_MESSAGE_BYTES = 1024;
const MAX_DETAIL_BYTES = 256;
const MAX_VIOLATIONS_BYTES = 2048;
const MAX_VIOLATIONS = 16;

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
const ELLIPSIS = '…';

/** Bytes of text in grpc-message, which grpc-js percent-encodes. */
const encodedBytes = (text: string) => encodeURI(text).length;
/** Bytes of text in the details' protobuf encoding. */
const utf8Bytes = (text: string) => Buffer.byteLength(text, 'utf8');

/** Well-formed text (no lone surrogates, which HTTP/2 trailers cannot carry) of at most max bytes by the measure. */
function clip(text: string, max: number, bytes: (text: string) => number): string {
  const whole = text.replace(LONE_SURROGATE, '\ufffd');
  if (bytes(whole) <= max) return whole;
  let used = bytes(ELLIPSIS);
  let cut = '';
  for (const char of whole) {
    used += bytes(char);
    if (used > max) break;
    cut += char;
  }
  return cut + ELLIPSIS;
}

function bounded(error: RelgateError): RelgateError {
  const detail = (text: string) => clip(text, MAX_DETAIL_BYTES, utf8Bytes);
  const metadata = Object.fromEntries(Object.entries(error.metadata).map(([key, value]) => [detail(key), detail(value)]));
  const fieldViolations: FieldViolation[] = [];
  let used = 0;
  for (const violation of error.fieldViolations) {
    const kept = { field: detail(violation.field), description: detail(violation.description) };
    used += utf8Bytes(kept.field) + utf8Bytes(kept.description) + 8;
    if (fieldViolations.length === MAX_VIOLATIONS || used > MAX_VIOLATIONS_BYTES) break;
    fieldViolations.push(kept);
  }
  const left = error.fieldViolations.length - fieldViolations.length;
  const note = left > 0 ? ` (and ${left} more problem${left === 1 ? '' : 's'} not listed)` : '';
  const message = clip(error.message, MAX_MESSAGE_BYTES - encodedBytes(note), encodedBytes) + note;
  return new RelgateError(error.code, message, { reason: error.reason, metadata, fieldViolations, cause: error.cause });
}

/** The google.rpc.Status of an error, as a plain object (for session acks). */
export function toRpcStatus(unbounded: RelgateError): { code: number; message: string; details: { type_url: string; value: Uint8Array }[] } {
  const error = bounded(unbounded);
  const details = [
    { type_url: TYPE_URL_PREFIX + 'google.rpc.ErrorInfo', value: ErrorInfoType.encode({ reason: error.reason, domain: ERROR_DOMAIN, metadata: error.metadata }).finish() },
  ];
  if (error.fieldViolations.length > 0) {
    details.push({
      type_url: TYPE_URL_PREFIX + 'google.rpc.BadRequest',
      value: BadRequestType.encode({ field_violations: error.fieldViolations }).finish(),
    });
  }
  return { code: error.code, message: error.message, details };
}

/** Any error becomes a RelgateError; unexpected ones are INTERNAL. */
export function asRelgateError(error: unknown): RelgateError {
  if (isRelgateError(error)) return error;
  return new RelgateError(Code.INTERNAL, 'internal error', { reason: 'INTERNAL', cause: error });
}

/**
 * The gRPC status for an error: the same code and message in the call status
 * and in the google.rpc.Status details, as grpcio-status requires.
 */
export function toServiceError(error: unknown): Partial<StatusObject> & { code: Code; details: string; metadata: Metadata } {
  const relgateError = asRelgateError(error);
  const statusProto = toRpcStatus(relgateError);
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_KEY, Buffer.from(StatusType.encode(statusProto).finish()));
  return { code: statusProto.code, details: statusProto.message, metadata };
}

/**
 * A server interceptor giving the status grpc-js sends on its own for a message over a size limit the
 * google.rpc.Status details every other error carries, with the same code and message. (Its other one, a passed
 * deadline, reaches no client: the client's own deadline ends the call at the same moment.)
 */
export const statusDetailsInterceptor: ServerInterceptor = (_method, call) => {
  onSendStatus(call, (status, sendStatus) => {
    if (status.code !== Code.RESOURCE_EXHAUSTED || status.metadata?.get(STATUS_DETAILS_KEY).length) return sendStatus(status);
    const error = toServiceError(new RelgateError(status.code, status.details ?? '', { reason: 'MESSAGE_TOO_LARGE' }));
    const metadata = status.metadata?.clone() ?? new Metadata();
    metadata.set(STATUS_DETAILS_KEY, error.metadata.get(STATUS_DETAILS_KEY)[0] as Buffer);
    sendStatus({ ...status, code: error.code, details: error.details, metadata });
  });
  // The same call, so that the next interceptor patches grpc-js's own statuses on it too (metrics counts them);
  // it has every method of the interface grpc-js calls.
  return call as ServerInterceptingCall;
};

type SendStatus = (status: Partial<StatusObject>) => void;

/**
 * Puts `handle` in front of every status the call sends, those grpc-js sends on its own too (a deadline, a message
 * over a size limit), which pass by an interceptor's own sendStatus.
 */
export function onSendStatus(call: unknown, handle: (status: Partial<StatusObject>, sendStatus: SendStatus) => void): void {
  const inner = call as { sendStatus: SendStatus };
  const sendStatus = inner.sendStatus.bind(inner);
  inner.sendStatus = (status) => handle(status, sendStatus);
}

/** Reads a RelgateError back from a failed call (client side). */
export function fromServiceError(error: ServiceError | StatusObject): RelgateError {
  const code = error.code;
  const message = 'details' in error ? error.details : '';
  const raw = error.metadata?.get(STATUS_DETAILS_KEY)[0];
  let reason = '';
  let metadata: Record<string, string> = {};
  let fieldViolations: FieldViolation[] = [];
  if (raw instanceof Buffer) {
    const decoded = StatusType.toObject(StatusType.decode(raw), { defaults: true }) as { details: { type_url: string; value: Uint8Array }[] };
    for (const any of decoded.details) {
      if (any.type_url === TYPE_URL_PREFIX + 'google.rpc.ErrorInfo') {
        const info = ErrorInfoType.toObject(ErrorInfoType.decode(any.value), { defaults: true }) as { reason: string; metadata: Record<string, string> };
        reason = info.reason;
        metadata = info.metadata;
      } else if (any.type_url === TYPE_URL_PREFIX + 'google.rpc.BadRequest') {
        fieldViolations = (BadRequestType.toObject(BadRequestType.decode(any.value), { defaults: true }) as { field_violations: FieldViolation[] }).field_violations;
      }
    }
  }
  return new RelgateError(code, message, { reason, metadata, fieldViolations, cause: error });
}
