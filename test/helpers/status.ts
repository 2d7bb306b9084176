// Reads the raw google.rpc.Status a failed call carries in its
// grpc-status-details-bin trailer, decoded here with protobufjs straight
// from proto/google/rpc so the test does not rely on the gateway's own
// decoder (errors.ts fromServiceError).
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { PROTO_DIR } from '../../src/protos.ts';
import type { Rpc } from './harness.ts';

const root = new protobuf.Root();
root.resolvePath = (_origin, target) => (target.startsWith('google/rpc/') ? path.join(PROTO_DIR, target) : target);
root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
const Status = root.lookupType('google.rpc.Status');
const ErrorInfo = root.lookupType('google.rpc.ErrorInfo');
const BadRequest = root.lookupType('google.rpc.BadRequest');

export interface DecodedStatus {
  code: number;
  message: string;
  typeUrls: string[];
  errorInfo?: { reason: string; domain: string; metadata: Record<string, string> };
  fieldViolations?: { field: string; description: string }[];
}

/** The call's own ServiceError (rejects if the call succeeds). */
export async function rawFail(rpc: Rpc, method: string, request: object): Promise<grpc.ServiceError> {
  try {
    await rpc.call(method, request);
  } catch (error) {
    return error as grpc.ServiceError;
  }
  throw new Error(`${method} succeeded but was expected to fail`);
}

/** Decodes the grpc-status-details-bin trailer of a failed call. */
export function statusDetails(error: grpc.ServiceError): DecodedStatus {
  const values = error.metadata?.get('grpc-status-details-bin') ?? [];
  if (values.length !== 1 || !(values[0] instanceof Buffer)) throw new Error(`expected one grpc-status-details-bin, got ${values.length}`);
  const status = Status.toObject(Status.decode(values[0]), { defaults: true }) as { code: number; message: string; details: { type_url: string; value: Uint8Array }[] };
  const decoded: DecodedStatus = { code: status.code, message: status.message, typeUrls: status.details.map((any) => any.type_url) };
  for (const any of status.details) {
    if (any.type_url === 'type.googleapis.com/google.rpc.ErrorInfo') decoded.errorInfo = ErrorInfo.toObject(ErrorInfo.decode(any.value), { defaults: true }) as never;
    if (any.type_url === 'type.googleapis.com/google.rpc.BadRequest') {
      decoded.fieldViolations = (BadRequest.toObject(BadRequest.decode(any.value), { defaults: true }) as { field_violations: DecodedStatus['fieldViolations'] }).field_violations;
    }
  }
  return decoded;
}
