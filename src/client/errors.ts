// The SDK raises the gateway's own error class, RelgateError: the gRPC code,
// the ErrorInfo reason and metadata, and the BadRequest field violations.
import { Metadata, type ServiceError } from '@grpc/grpc-js';
import type { Status__Output } from '../../gen/google/rpc/Status.ts';
import { Code, RelgateError, STATUS_DETAILS_KEY, fromServiceError, hasReason, isRelgateError, type FieldViolation } from '../errors.ts';
import { newRoot } from '../protos.ts';

export { Code, RelgateError, hasReason, isRelgateError, type FieldViolation };

const StatusType = newRoot().loadSync('google/rpc/status.proto', { keepCase: true }).lookupType('google.rpc.Status');

/** True when error is a RelgateError with the given gRPC code. */
export function hasCode(error: unknown, code: Code): error is RelgateError {
  return isRelgateError(error) && error.code === code;
}

/** A failed call's status as a RelgateError. */
export function toRelgateError(error: unknown): RelgateError {
  if (isRelgateError(error)) return error;
  if (error && typeof error === 'object' && 'code' in error && typeof error.code === 'number') {
    const serviceError = error as ServiceError;
    if (isStreamReset(serviceError)) {
      return new RelgateError(Code.UNAVAILABLE, `the connection was closed under the call: ${serviceError.details}`, { reason: 'STREAM_RESET', cause: error });
    }
    return fromServiceError(serviceError);
  }
  return new RelgateError(Code.UNKNOWN, error instanceof Error ? error.message : String(error), { reason: '', cause: error });
}

/**
 * A stream the server reset without a status: what a connection closed at the end of --max-connection-age-grace
 * does to the calls still on it. grpc-js reports INTERNAL; it is a closed connection, and calls on a new one work.
 */
function isStreamReset(error: ServiceError): boolean {
  return error.code === Code.INTERNAL && /^Received RST_STREAM with code 0\b/.test(error.details);
}

/** A call that could not start: its connection was closed (or never usable). */
export function cannotStart(what: string, error: unknown): RelgateError {
  return new RelgateError(Code.UNAVAILABLE, `${what} cannot start: ${error instanceof Error ? error.message : String(error)}`, { reason: 'CONNECTION_CLOSED', cause: error });
}

/** A session acknowledgement's google.rpc.Status as a RelgateError. */
export function fromAckStatus(status: Status__Output): RelgateError {
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_KEY, Buffer.from(StatusType.encode(StatusType.fromObject(status)).finish()));
  return fromServiceError({ code: status.code, details: status.message, metadata });
}
