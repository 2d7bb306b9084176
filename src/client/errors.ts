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
  if (error && typeof error === 'object' && 'code' in error && typeof error.code === 'number') return fromServiceError(error as ServiceError);
  return new RelgateError(Code.UNKNOWN, error instanceof Error ? error.message : String(error), { reason: '', cause: error });
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
