// Interfaces declared in .proto files with relgate's custom options: loading,
// the schemas served by RegistryService, and validation of request and
// response fields against their messages.
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import protobuf from 'protobufjs';
import { BUILTIN_INTERFACE_DIR, PROTO_DIR, newRoot } from './protos.ts';
import type { FieldViolation } from './errors.ts';
import { ownValue, type Json, type JsonObject } from './struct.ts';

export interface FieldSchema {
  name: string;
  type: string;
  repeated: boolean;
  map: boolean;
  description: string;
  required: boolean;
  fields: FieldSchema[];
  enum_values: string[];
}

export interface MessageSchema {
  full_name: string;
  fields: FieldSchema[];
}

export interface InterfaceDefinition {
  name: string;
  version: number;
  description: string;
  request: MessageSchema;
  response: MessageSchema;
  source_file: string;
  requestType: protobuf.Type;
  responseType: protobuf.Type;
}

interface InterfaceOption {
  name?: string;
  version?: number;
  role?: string;
  description?: string;
}

const INTERFACE_OPTION = '(relgate.v1.interface)';
const FIELD_OPTION = '(relgate.v1.field)';
const INTERFACE_NAME = /^[a-z][a-z0-9]*(-[a-z0-9]+)*$/;

export class InterfaceRegistry {
  readonly #byKey = new Map<string, InterfaceDefinition>();

  private constructor(definitions: InterfaceDefinition[]) {
    for (const definition of definitions) this.#byKey.set(key(definition.name, definition.version), definition);
  }

  /** Loads the built-in interfaces and every .proto file below the given directories. */
  static async load(userDirs: readonly string[] = []): Promise<InterfaceRegistry> {
    const roots = [BUILTIN_INTERFACE_DIR, ...userDirs];
    const files = (await Promise.all(roots.map((dir) => protoFiles(path.resolve(dir))))).flat();
    const root = newRoot(userDirs.map((dir) => path.resolve(dir)));
    root.loadSync(files, { keepCase: true, alternateCommentMode: true });
    root.resolveAll();
    return new InterfaceRegistry(collectInterfaces(root, [PROTO_DIR, ...userDirs.map((dir) => path.resolve(dir))]));
  }

  list(): InterfaceDefinition[] {
    return [...this.#byKey.values()].sort((a, b) => a.name.localeCompare(b.name) || a.version - b.version);
  }

  /** The interface at a version, or its highest version when version is 0. */
  get(name: string, version = 0): InterfaceDefinition | undefined {
    if (version !== 0) return this.#byKey.get(key(name, version));
    return this.list().filter((definition) => definition.name === name).at(-1);
  }
}

function key(name: string, version: number): string {
  return `${name}@${version}`;
}

async function protoFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries
    .filter((entry) => entry.isFile() && entry.name.endsWith('.proto'))
    .map((entry) => path.join(entry.parentPath, entry.name))
    .sort();
}

function collectInterfaces(root: protobuf.Root, roots: string[]): InterfaceDefinition[] {
  const halves = new Map<string, { option: InterfaceOption; request?: protobuf.Type; response?: protobuf.Type }>();
  for (const type of allTypes(root)) {
    const option = interfaceOption(type);
    if (!option) continue;
    const where = `${type.fullName.slice(1)} (${type.filename ?? '?'})`;
    if (!option.name || !INTERFACE_NAME.test(option.name)) throw new Error(`${where}: interface name "${option.name ?? ''}" must be lower-case words joined by '-'`);
    if (!option.version || option.version < 1) throw new Error(`${where}: interface version must be 1 or more`);
    const entry = halves.get(key(option.name, option.version)) ?? { option: {} };
    const role = option.role === 'INTERFACE_ROLE_REQUEST' ? 'request' : option.role === 'INTERFACE_ROLE_RESPONSE' ? 'response' : undefined;
    if (!role) throw new Error(`${where}: interface role must be INTERFACE_ROLE_REQUEST or INTERFACE_ROLE_RESPONSE`);
    if (entry[role]) throw new Error(`${where}: interface ${option.name} v${option.version} already has a ${role} message (${entry[role].fullName.slice(1)})`);
    entry[role] = type;
    entry.option = { ...entry.option, ...option, description: entry.option.description || option.description || '' };
    halves.set(key(option.name, option.version), entry);
  }
  return [...halves.values()].map(({ option, request, response }) => {
    if (!request || !response) throw new Error(`interface ${option.name} v${option.version} needs both a request and a response message`);
    return {
      name: option.name ?? '',
      version: option.version ?? 0,
      description: option.description ?? '',
      request: messageSchema(request),
      response: messageSchema(response),
      source_file: relativeSource(request.filename ?? '', roots),
      requestType: request,
      responseType: response,
    };
  });
}

function relativeSource(file: string, roots: string[]): string {
  const root = roots.find((dir) => file.startsWith(dir + path.sep));
  return root ? path.relative(root, file) : path.basename(file);
}

function* allTypes(namespace: protobuf.NamespaceBase): Generator<protobuf.Type> {
  for (const nested of namespace.nestedArray) {
    if (nested instanceof protobuf.Type) yield nested;
    if (nested instanceof protobuf.Namespace || nested instanceof protobuf.Type) yield* allTypes(nested);
  }
}

function interfaceOption(type: protobuf.Type): InterfaceOption | undefined {
  for (const parsed of (type.parsedOptions ?? []) as Record<string, unknown>[]) {
    const value = parsed[INTERFACE_OPTION];
    if (value) return value as InterfaceOption;
  }
  return undefined;
}

function fieldOption(field: protobuf.Field): { description?: string; required?: boolean } {
  const options = field.options ?? {};
  return {
    description: options[`${FIELD_OPTION}.description`] as string | undefined,
    required: options[`${FIELD_OPTION}.required`] as boolean | undefined,
  };
}

function messageSchema(type: protobuf.Type): MessageSchema {
  return { full_name: type.fullName.slice(1), fields: fieldSchemas(type, new Set()) };
}

function fieldSchemas(type: protobuf.Type, seen: Set<protobuf.Type>): FieldSchema[] {
  seen.add(type);
  return type.fieldsArray.map((field) => {
    field.resolve();
    const option = fieldOption(field);
    const nested = field.resolvedType instanceof protobuf.Type && !seen.has(field.resolvedType) && !isWellKnown(field.resolvedType) ? field.resolvedType : undefined;
    const isMap = field instanceof protobuf.MapField;
    return {
      name: field.name,
      type: isMap ? `map<${field.keyType},${typeName(field)}>` : typeName(field),
      repeated: field.repeated,
      map: isMap,
      description: option.description || (field.comment ?? '').replace(/\s*\n\s*/g, ' ').trim(),
      required: option.required ?? false,
      fields: nested ? fieldSchemas(nested, new Set(seen)) : [],
      enum_values: field.resolvedType instanceof protobuf.Enum ? Object.keys(field.resolvedType.values) : [],
    };
  });
}

function typeName(field: protobuf.Field): string {
  return field.resolvedType ? field.resolvedType.fullName.slice(1) : field.type;
}

function isWellKnown(type: protobuf.Type): boolean {
  return type.fullName.startsWith('.google.protobuf.');
}

// Validation of JSON field values against a message type, collecting every
// violation with its dotted path.

const INT32 = new Set(['int32', 'sint32', 'sfixed32']);
const UINT32 = new Set(['uint32', 'fixed32']);
const INT64 = new Set(['int64', 'sint64', 'sfixed64']);
const UINT64 = new Set(['uint64', 'fixed64']);
const FLOAT = new Set(['float', 'double']);
const BASE64 = /^(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2}(?:==)?|[A-Za-z0-9+/_-]{3}=?)?$/;

export interface ValidateOptions {
  /** Check that required fields are present (not for match_fields or failures). */
  checkRequired: boolean;
}

export function validateFields(type: protobuf.Type, value: JsonObject, pathPrefix: string, options: ValidateOptions): FieldViolation[] {
  const violations: FieldViolation[] = [];
  validateMessage(type, value, pathPrefix, options, violations);
  return violations;
}

function validateMessage(type: protobuf.Type, value: JsonObject, at: string, options: ValidateOptions, out: FieldViolation[]): void {
  for (const [name, fieldValue] of Object.entries(value)) {
    const field = ownValue(type.fields, name);
    if (!field) {
      out.push({ field: `${at}.${name}`, description: `unknown field; ${type.name} has ${type.fieldsArray.map((f) => f.name).join(', ') || 'no fields'}` });
      continue;
    }
    if (fieldValue === null) continue;
    validateField(field, fieldValue, `${at}.${name}`, options, out);
  }
  if (!options.checkRequired) return;
  for (const field of type.fieldsArray) {
    if (!fieldOption(field).required) continue;
    if (isEmpty(ownValue(value, field.name))) out.push({ field: `${at}.${field.name}`, description: 'required field is missing or empty' });
  }
}

function isEmpty(value: Json | undefined): boolean {
  return value === undefined || value === null || value === '' || (Array.isArray(value) && value.length === 0);
}

function validateField(field: protobuf.Field, value: Json, at: string, options: ValidateOptions, out: FieldViolation[]): void {
  field.resolve();
  if (field instanceof protobuf.MapField) {
    if (!isObject(value)) return void out.push({ field: at, description: `must be an object (map<${field.keyType},${typeName(field)}>), not ${describe(value)}` });
    for (const [mapKey, item] of Object.entries(value)) {
      if (field.keyType !== 'string' && field.keyType !== 'bool' && !/^-?\d+$/.test(mapKey)) out.push({ field: `${at}.${mapKey}`, description: `map key must be an integer` });
      validateSingle(field, item, `${at}.${mapKey}`, options, out);
    }
    return;
  }
  if (field.repeated) {
    if (!Array.isArray(value)) return void out.push({ field: at, description: `must be a list of ${typeName(field)}, not ${describe(value)}` });
    value.forEach((item, i) => validateSingle(field, item, `${at}[${i}]`, options, out));
    return;
  }
  validateSingle(field, value, at, options, out);
}

function validateSingle(field: protobuf.Field, value: Json, at: string, options: ValidateOptions, out: FieldViolation[]): void {
  const problem = singleProblem(field, value, at, options, out);
  if (problem) out.push({ field: at, description: problem });
}

function singleProblem(field: protobuf.Field, value: Json, at: string, options: ValidateOptions, out: FieldViolation[]): string | undefined {
  const resolved = field.resolvedType;
  if (resolved instanceof protobuf.Enum) {
    if (typeof value === 'string' && Object.hasOwn(resolved.values, value)) return undefined;
    if (typeof value === 'number' && Object.values(resolved.values).includes(value)) return undefined;
    return `must be one of ${Object.keys(resolved.values).join(', ')}, not ${describe(value)}`;
  }
  if (resolved instanceof protobuf.Type) return messageProblem(resolved, value, at, options, out);
  const type = field.type;
  if (type === 'string') return typeof value === 'string' ? undefined : `must be a string, not ${describe(value)}`;
  if (type === 'bool') return typeof value === 'boolean' ? undefined : `must be a boolean, not ${describe(value)}`;
  if (type === 'bytes') return typeof value === 'string' && BASE64.test(value) ? undefined : `must be a base64 string, not ${describe(value)}`;
  // NaN and the infinities have no JSON form: stored, they would read back as null.
  if (FLOAT.has(type)) return typeof value === 'number' && Number.isFinite(value) ? undefined : `must be a finite number, not ${describe(value)}`;
  if (INT32.has(type)) return integerProblem(value, -(2 ** 31), 2 ** 31 - 1, type);
  if (UINT32.has(type)) return integerProblem(value, 0, 2 ** 32 - 1, type);
  if (INT64.has(type)) return int64Problem(value, true, type);
  if (UINT64.has(type)) return int64Problem(value, false, type);
  return `has unsupported type ${type}`;
}

function messageProblem(type: protobuf.Type, value: Json, at: string, options: ValidateOptions, out: FieldViolation[]): string | undefined {
  switch (type.fullName) {
    case '.google.protobuf.Struct':
      return isObject(value) ? undefined : `must be an object, not ${describe(value)}`;
    case '.google.protobuf.Value':
      return undefined;
    case '.google.protobuf.ListValue':
      return Array.isArray(value) ? undefined : `must be a list, not ${describe(value)}`;
    case '.google.protobuf.Timestamp':
      return typeof value === 'string' && !Number.isNaN(Date.parse(value)) && /^\d{4}-\d\d-\d\dT/.test(value) ? undefined : `must be an RFC 3339 timestamp string, not ${describe(value)}`;
    case '.google.protobuf.Duration':
      return typeof value === 'string' && /^-?\d+(\.\d{1,9})?s$/.test(value) ? undefined : `must be a duration string such as "1.5s", not ${describe(value)}`;
  }
  if (!isObject(value)) return `must be an object (${type.fullName.slice(1)}), not ${describe(value)}`;
  validateMessage(type, value, at, options, out);
  return undefined;
}

function integerProblem(value: Json, min: number, max: number, type: string): string | undefined {
  if (typeof value !== 'number' || !Number.isInteger(value)) return `must be an integer (${type}), not ${describe(value)}`;
  if (value < min || value > max) return `must be between ${min} and ${max} (${type}), not ${value}`;
  return undefined;
}

function int64Problem(value: Json, signed: boolean, type: string): string | undefined {
  const text = typeof value === 'number' && Number.isSafeInteger(value) ? String(value) : typeof value === 'string' ? value : undefined;
  if (text === undefined || !(signed ? /^-?\d{1,19}$/ : /^\d{1,20}$/).test(text)) return `must be an integer (${type}) as a number or a decimal string, not ${describe(value)}`;
  const big = BigInt(text);
  const [min, max] = signed ? [-(2n ** 63n), 2n ** 63n - 1n] : [0n, 2n ** 64n - 1n];
  return big < min || big > max ? `is out of range for ${type}` : undefined;
}

function isObject(value: Json): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(value: Json): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'string') return `a string`;
  return `${typeof value} ${typeof value === 'number' ? String(value) : JSON.stringify(value)}`;
}
