// Interfaces declared in .proto files with relgate's custom options: loading,
// and the schemas served by RegistryService (src/fields.ts validates values).
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import protobuf from 'protobufjs';
import { BUILTIN_INTERFACE_DIR, PROTO_DIR, newRoot } from './protos.ts';

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
  role?: string | number;
  description?: string;
}

const INTERFACE_OPTION = '(relgate.v1.interface)';
const FIELD_OPTION = '(relgate.v1.field)';
const INTERFACE_NAME = /^[a-z][a-z0-9]*(-[a-z0-9]+)*$/;
const ROLES = new Map<unknown, 'request' | 'response'>([['INTERFACE_ROLE_REQUEST', 'request'], [1, 'request'], ['INTERFACE_ROLE_RESPONSE', 'response'], [2, 'response']]);

export class InterfaceRegistry {
  readonly #byKey = new Map<string, InterfaceDefinition>();

  private constructor(definitions: InterfaceDefinition[]) {
    for (const definition of definitions) this.#byKey.set(key(definition.name, definition.version), definition);
  }

  /** Loads the built-in interfaces and every .proto file below the given directories. */
  static async load(userDirs: readonly string[] = []): Promise<InterfaceRegistry> {
    const roots = [BUILTIN_INTERFACE_DIR, ...userDirs];
    const byRoot = await Promise.all(roots.map((dir) => protoFiles(path.resolve(dir))));
    checkDistinctPaths([PROTO_DIR, ...userDirs.map((dir) => path.resolve(dir))], byRoot);
    const files = byRoot.flat();
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

/** Proto files are known by their path below their root (imports, reflection): one path in two roots is refused. */
function checkDistinctPaths(roots: string[], byRoot: string[][]): void {
  const seen = new Map<string, string>();
  byRoot.forEach((files, i) => {
    const root = roots[i] as string;
    for (const file of files) {
      const relative = path.relative(root, file).split(path.sep).join('/');
      const other = seen.get(relative);
      if (other !== undefined && other !== root) throw new Error(`interface file ${relative} is in both ${other} and ${root}: a path below the interface directories may be used once`);
      seen.set(relative, root);
    }
  });
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
    // An enum option may be written by name or by number.
    const role = ROLES.get(option.role);
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

/** Every message type under a namespace, nested ones included. */
export function* allTypes(namespace: protobuf.NamespaceBase): Generator<protobuf.Type> {
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

/** Required by relgate's field option, proto2's `required` or editions' LEGACY_REQUIRED. */
export function isRequired(field: protobuf.Field): boolean {
  return fieldOption(field).required === true || field.required;
}

function fieldOption(field: protobuf.Field): { description?: string; required?: boolean } {
  const options = field.options ?? {};
  return {
    description: options[`${FIELD_OPTION}.description`] as string | undefined,
    required: options[`${FIELD_OPTION}.required`] as boolean | undefined,
  };
}

/**
 * Levels of nested message fields a schema describes. Each level is two
 * levels of the reply message, which protobuf.js refuses past 100.
 */
const MAX_SCHEMA_DEPTH = 16;

function messageSchema(type: protobuf.Type): MessageSchema {
  return { full_name: type.fullName.slice(1), fields: fieldSchemas(type, new Set(), 1) };
}

/**
 * A message type's fields, each nested message type described once, at its
 * first occurrence: described at every use, a few types that use each other
 * repeatedly multiply into millions of entries.
 */
function fieldSchemas(type: protobuf.Type, described: Set<protobuf.Type>, depth: number): FieldSchema[] {
  described.add(type);
  return type.fieldsArray.map((field) => {
    field.resolve();
    const option = fieldOption(field);
    const resolved = field.resolvedType;
    const nested = resolved instanceof protobuf.Type && !described.has(resolved) && !isWellKnown(resolved) && depth < MAX_SCHEMA_DEPTH ? resolved : undefined;
    const isMap = field instanceof protobuf.MapField;
    return {
      name: field.name,
      type: isMap ? `map<${field.keyType},${typeName(field)}>` : typeName(field),
      repeated: field.repeated,
      map: isMap,
      description: option.description || (field.comment ?? '').replace(/\s*\n\s*/g, ' ').trim(),
      required: isRequired(field),
      fields: nested ? fieldSchemas(nested, described, depth + 1) : [],
      enum_values: field.resolvedType instanceof protobuf.Enum ? Object.keys(field.resolvedType.values) : [],
    };
  });
}

export function typeName(field: protobuf.Field): string {
  return field.resolvedType ? field.resolvedType.fullName.slice(1) : field.type;
}

function isWellKnown(type: protobuf.Type): boolean {
  return type.fullName.startsWith('.google.protobuf.');
}
