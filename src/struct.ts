// google.protobuf.Struct as proto-loader represents it <-> plain JSON values.
// protobufjs defines the well-known types itself with camelCase field names,
// so keepCase does not apply to them.

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export interface ValueMessage {
  kind?: string;
  nullValue?: unknown;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: StructMessage | null;
  listValue?: { values?: ValueMessage[] } | null;
}
export interface StructMessage {
  fields?: Record<string, ValueMessage>;
}

export function structToJson(struct: StructMessage | null | undefined): JsonObject {
  const out: JsonObject = {};
  for (const [key, value] of Object.entries(struct?.fields ?? {})) setOwn(out, key, valueToJson(value));
  return out;
}

/** Sets an own property, even "__proto__", which plain assignment takes for the object's prototype and loses. */
export function setOwn<T>(object: Record<string, T>, key: string, value: T): void {
  if (key === '__proto__') Object.defineProperty(object, key, { value, enumerable: true, writable: true, configurable: true });
  else object[key] = value;
}

function valueToJson(value: ValueMessage): Json {
  switch (value.kind) {
    case 'numberValue':
      return value.numberValue ?? 0;
    case 'stringValue':
      return value.stringValue ?? '';
    case 'boolValue':
      return value.boolValue ?? false;
    case 'structValue':
      return structToJson(value.structValue);
    case 'listValue':
      return (value.listValue?.values ?? []).map(valueToJson);
    default:
      return null;
  }
}

export function jsonToStruct(json: JsonObject): StructMessage {
  const fields: Record<string, ValueMessage> = {};
  for (const [key, value] of Object.entries(json)) setOwn(fields, key, jsonToValue(value));
  return { fields };
}

function jsonToValue(json: Json): ValueMessage {
  if (json === null) return { nullValue: 'NULL_VALUE', kind: 'nullValue' };
  if (typeof json === 'number') return { numberValue: json, kind: 'numberValue' };
  if (typeof json === 'string') return { stringValue: json, kind: 'stringValue' };
  if (typeof json === 'boolean') return { boolValue: json, kind: 'boolValue' };
  if (Array.isArray(json)) return { listValue: { values: json.map(jsonToValue) }, kind: 'listValue' };
  return { structValue: jsonToStruct(json), kind: 'structValue' };
}

/** An object's own value under a key: a key such as "toString" must not find what every object inherits. */
export function ownValue<T>(object: Record<string, T>, key: string): T | undefined {
  return Object.hasOwn(object, key) ? object[key] : undefined;
}

/** Deep equality of JSON values; object key order does not matter. */
export function jsonEqual(a: Json | undefined, b: Json | undefined): boolean {
  if (a === b) return true;
  if (a === null || b === null || a === undefined || b === undefined) return false;
  if (typeof a !== 'object' || typeof b !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((item, i) => jsonEqual(item, b[i]));
  const ao = a as JsonObject;
  const bo = b as JsonObject;
  const keys = Object.keys(ao);
  return keys.length === Object.keys(bo).length && keys.every((key) => Object.hasOwn(bo, key) && jsonEqual(ao[key], bo[key]));
}

/** A canonical string of a JSON value (object keys sorted). */
export function canonicalJson(value: Json): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const keys = Object.keys(value).sort();
  return `{${keys.map((key) => `${JSON.stringify(key)}:${canonicalJson(value[key] as Json)}`).join(',')}}`;
}
