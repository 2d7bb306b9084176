// Proto3 string fields must hold UTF-8, but protobufjs decodes invalid bytes
// leniently (dropping them or inventing characters), so a request could act
// on text its sender never wrote. The raw bytes of each request are checked
// against its type as they are decoded; a request with invalid UTF-8 is
// marked, and the handler refuses it with INVALID_ARGUMENT naming the fields.
// Bytes that are no message of the type at all are refused the same way.
import { isAscii, isUtf8 } from 'node:buffer';
import type * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { Code, invalidArgument, RelgateError, toServiceError } from './errors.ts';

const INVALID_UTF8 = Symbol('relgate.invalidUtf8');
/** The size on the wire of each request decoded, for what bounds the bytes a session holds. */
const wireSizes = new WeakMap<object, number>();
/** Marks what stands in for a request whose bytes are not a message of its type at all. */
const MALFORMED = Symbol('relgate.malformed');
const WIRE_LENGTH_DELIMITED = 2;

/**
 * Dotted paths of the string fields and map keys in a message's bytes that are
 * not UTF-8. Struct keys name the path as JSON does ("fields.common_name"),
 * Value adds nothing and list items add "[i]".
 */
export function invalidUtf8Paths(type: protobuf.Type, bytes: Uint8Array, path = ''): string[] {
  const reader = protobuf.Reader.create(bytes);
  const found: string[] = [];
  const counts = new Map<number, number>();
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    const field = type.fieldsById[tag >>> 3];
    if (!field || (tag & 7) !== WIRE_LENGTH_DELIMITED) {
      reader.skipType(tag & 7);
      continue;
    }
    const value = reader.bytes();
    const index = counts.get(field.id) ?? 0;
    counts.set(field.id, index + 1);
    const here = fieldPath(type, field, path, index);
    if (field instanceof protobuf.MapField) found.push(...invalidInMapEntry(field, value, here, type.fullName === '.google.protobuf.Struct'));
    else if (field.type === 'string' && !isUtf8(value)) found.push(here);
    else {
      const resolved = field.resolve().resolvedType;
      if (resolved instanceof protobuf.Type) found.push(...invalidUtf8Paths(resolved, value, here));
    }
  }
  return found;
}

function fieldPath(type: protobuf.Type, field: protobuf.Field, path: string, index: number): string {
  const name = type.fullName;
  if (name === '.google.protobuf.Value' || name === '.google.protobuf.Struct') return path;
  if (name === '.google.protobuf.ListValue') return `${path}[${index}]`;
  const own = path ? `${path}.${field.name}` : field.name;
  return field.repeated && !(field instanceof protobuf.MapField) ? `${own}[${index}]` : own;
}

function invalidInMapEntry(field: protobuf.MapField, entry: Uint8Array, path: string, keyIsPath: boolean): string[] {
  const reader = protobuf.Reader.create(entry);
  let key = '';
  let value: Uint8Array | undefined;
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag === ((1 << 3) | WIRE_LENGTH_DELIMITED) && field.keyType === 'string') {
      const raw = reader.bytes();
      if (!isUtf8(raw)) return [path];
      key = Buffer.from(raw).toString('utf8');
    } else if (tag === ((2 << 3) | WIRE_LENGTH_DELIMITED)) value = reader.bytes();
    else reader.skipType(tag & 7);
  }
  if (value === undefined) return [];
  const here = keyIsPath ? (path ? `${path}.${key}` : key) : `${path}[${JSON.stringify(key)}]`;
  if (field.type === 'string') return isUtf8(value) ? [] : [here];
  const resolved = field.resolve().resolvedType;
  return resolved instanceof protobuf.Type ? invalidUtf8Paths(resolved, value, here) : [];
}

/**
 * The service with every request checked as it is decoded. root must hold
 * the service's types (protobufjs names, as loaded from the same files).
 */
export function checkingUtf8(service: grpc.ServiceDefinition, serviceName: string, root: protobuf.Root): grpc.ServiceDefinition {
  const methods = root.lookupService(serviceName).methods;
  const checked: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, method] of Object.entries(service)) {
    const type = (methods[name]?.resolve() as protobuf.Method | undefined)?.resolvedRequestType;
    if (!type) throw new Error(`no request type for ${serviceName}/${name}`);
    const decode = method.requestDeserialize;
    checked[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer) => {
        let message: object;
        let paths: string[];
        try {
          message = decode(bytes) as object;
          // Bytes all below 0x80 hold only ASCII text: nothing to walk. The walk reads fields by their wire
          // type, which decode does not check, so it may fail where decode did not.
          paths = isAscii(bytes) ? [] : invalidUtf8Paths(type, bytes);
        } catch (error) {
          // grpc-js would end the call INTERNAL: the handler refuses it instead (a session, only this message).
          return Object.defineProperty({}, MALFORMED, { value: `the message is not a valid ${type.fullName.slice(1)}: ${(error as Error).message}` });
        }
        if (paths.length > 0) Object.defineProperty(message, INVALID_UTF8, { value: paths });
        wireSizes.set(message, bytes.length);
        return message;
      },
    };
  }
  return checked as grpc.ServiceDefinition;
}

/** How many bytes a decoded request took on the wire; 0 when it was not decoded here. */
export function wireSize(message: object): number {
  return wireSizes.get(message) ?? 0;
}

/** INVALID_ARGUMENT for a request that was not a message of its type or held invalid UTF-8; undefined when it was valid. */
export function undecodableError(message: unknown): RelgateError | undefined {
  const malformed = (message as { [MALFORMED]?: string } | null)?.[MALFORMED];
  if (malformed) return new RelgateError(Code.INVALID_ARGUMENT, malformed, { reason: 'MALFORMED_MESSAGE' });
  const paths = (message as { [INVALID_UTF8]?: string[] } | null)?.[INVALID_UTF8];
  if (!paths) return undefined;
  return invalidArgument(paths.map((field) => ({ field, description: 'is not valid UTF-8' })));
}

/**
 * A service from a library (health, reflection) with its requests' bytes checked as they are decoded: bytes that are
 * no message of the type end the call with INVALID_ARGUMENT, where grpc-js would end it INTERNAL.
 */
export function refusingMalformed(service: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation): [grpc.ServiceDefinition, grpc.UntypedServiceImplementation] {
  const checked: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const [name, method] of Object.entries(service)) {
    const decode = method.requestDeserialize;
    checked[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer) => {
        try {
          return decode(bytes);
        } catch (error) {
          return Object.defineProperty({}, MALFORMED, { value: `the message is not a valid ${method.path.split('/')[1] ?? 'request'} request: ${(error as Error).message}` });
        }
      },
    };
    const handler = implementation[name] ?? implementation[method.originalName ?? ''];
    if (handler) handlers[name] = refusingMalformedIn(method, handler);
  }
  return [checked as grpc.ServiceDefinition, handlers];
}

function refusingMalformedIn(method: grpc.MethodDefinition<unknown, unknown>, handler: grpc.UntypedHandleCall): grpc.UntypedHandleCall {
  const refusal = (message: unknown) => {
    const error = undecodableError(message);
    return error && toServiceError(error);
  };
  if (method.requestStream) {
    // Each message is checked as the library's own listener would get it.
    return (call: grpc.ServerDuplexStream<unknown, unknown>) => {
      const emit = call.emit.bind(call);
      call.emit = (event: string | symbol, ...args: unknown[]) => {
        const error = event === 'data' ? refusal(args[0]) : undefined;
        return error ? emit('error', error) : emit(event, ...args);
      };
      (handler as grpc.handleBidiStreamingCall<unknown, unknown>)(call);
    };
  }
  if (method.responseStream) {
    return (call: grpc.ServerWritableStream<unknown, unknown>) => {
      const error = refusal(call.request);
      if (error) return void call.emit('error', error);
      (handler as grpc.handleServerStreamingCall<unknown, unknown>)(call);
    };
  }
  return (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
    const error = refusal(call.request);
    if (error) return callback(error);
    (handler as grpc.handleUnaryCall<unknown, unknown>)(call, callback);
  };
}
