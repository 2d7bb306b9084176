// Field values of requests and responses against their interface's messages:
// validation, collecting every violation with its dotted path, and the one
// canonical form an accepted value is stored, compared and matched in (an
// int64 as "5" or 5, an enum by name or number, are each one value).
import protobuf from 'protobufjs';
import type { FieldViolation } from './errors.ts';
import { allTypes, isRequired, typeName } from './interfaces.ts';
import { ownValue, setOwn, type Json, type JsonObject } from './struct.ts';

/**
 * Levels of objects and lists a value may nest. Replies wrap fields in a few
 * messages more, and protobuf.js refuses messages nested 100 deep (a JSON
 * level is two: a Struct or ListValue, then a Value): a value accepted deeper
 * could be stored and then never sent.
 */
export const MAX_FIELD_DEPTH = 32;

const INT32 = new Set(['int32', 'sint32', 'sfixed32']);
const UINT32 = new Set(['uint32', 'fixed32']);
const INT64 = new Set(['int64', 'sint64', 'sfixed64']);
const UINT64 = new Set(['uint64', 'fixed64']);
const BASE64 = /^(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2}(?:==)?|[A-Za-z0-9+/_-]{3}=?)?$/;
const TIMESTAMP = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:Z|([+-])(\d\d):(\d\d))$/;
const DURATION = /^(-?)(\d+)(?:\.(\d{1,9}))?s$/;
const INTEGER = /^-?\d+$/;
const DECIMAL = /^-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;
/** JSON's FieldMask: comma-separated paths of lowerCamelCase names, which protobuf's parsers refuse with an underscore. */
const FIELD_MASK = /^(?:[A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*(?:,[A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*)*)?$/;
/** 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, protobuf's Timestamp range, in ms. */
const [MIN_TIME, MAX_TIME] = [-62_135_596_800_000, 253_402_300_799_999];
const MAX_DURATION_S = 315_576_000_000n;
/** Well-known types carried as a bare value of the type they wrap. */
const WRAPPERS: Record<string, string> = Object.fromEntries(
  [['Double', 'double'], ['Float', 'float'], ['Int64', 'int64'], ['UInt64', 'uint64'], ['Int32', 'int32'], ['UInt32', 'uint32'], ['Bool', 'bool'], ['String', 'string'], ['Bytes', 'bytes']].map(([name, type]) => [`.google.protobuf.${name}Value`, type as string]),
);
const NULL_VALUE = '.google.protobuf.NullValue';
/** Well-known types with a JSON form of their own (a string, a list...), not an object of their fields. */
const OPAQUE = new Set(['Struct', 'Value', 'ListValue', 'Timestamp', 'Duration', 'FieldMask', 'Any'].map((name) => `.google.protobuf.${name}`));

export interface ValidateOptions {
  /** Check that required fields are present (not for match_fields or failures). */
  checkRequired: boolean;
}

export function validateFields(type: protobuf.Type, value: JsonObject, pathPrefix: string, options: ValidateOptions): FieldViolation[] {
  const deep = tooDeep(value, pathPrefix, 1);
  if (deep) return [{ field: deep, description: `nests objects and lists more than ${MAX_FIELD_DEPTH} levels deep` }];
  const violations: FieldViolation[] = [];
  validateMessage(type, value, pathPrefix, options, violations);
  return violations;
}

/**
 * Fields in their canonical form: 64-bit integers as decimal strings, enums by name (an alias by the first name of
 * its number), bytes in standard base64; a value of another shape than its field's, or of no field, stays as it is.
 * A field set to null is left out: in protobuf's JSON null means unset, except for a Value (whose null is a value)
 * and a NullValue.
 */
export function canonicalFields(type: protobuf.Type, value: JsonObject): JsonObject {
  const out: JsonObject = {};
  for (const [name, item] of Object.entries(value)) {
    const canonical = canonicalValue(type, name, item);
    if (canonical !== null || holdsNull(ownValue(type.fields, name))) setOwn(out, name, canonical);
  }
  return out;
}

/** Fields to match in their canonical form: unlike canonicalFields, a null stays, asking for a field that is not set. */
export function canonicalMatch(type: protobuf.Type, match: JsonObject): JsonObject {
  const out: JsonObject = {};
  for (const [name, item] of Object.entries(match)) setOwn(out, name, canonicalValue(type, name, item));
  return out;
}

/** One field's value in its canonical form; a value of no field of the type as it is, and null (unset) as null. */
export function canonicalValue(type: protobuf.Type, name: string, value: Json): Json {
  const field = ownValue(type.fields, name);
  return field && value !== null ? canonicalField(field, value) : value;
}

/** A field whose value may be null: a Value, or a NullValue. */
function holdsNull(field: protobuf.Field | undefined): boolean {
  if (!field || field.repeated || field instanceof protobuf.MapField) return false;
  field.resolve();
  return field.resolvedType?.fullName === '.google.protobuf.Value' || field.resolvedType?.fullName === NULL_VALUE;
}

/** A Value's number may be NaN or infinite in binary protobuf, which JSON cannot hold: it would be stored as null. */
function finiteProblem(value: Json, at: string, out: FieldViolation[]): string | undefined {
  const found = nonFinite(value, at);
  if (!found) return undefined;
  const description = `must be a finite number, not number ${String(found.number)}`;
  if (found.path === at) return description;
  out.push({ field: found.path, description });
  return undefined;
}

/** The first NaN or infinity in a JSON value, and its path. */
function nonFinite(value: Json, at: string): { path: string; number: number } | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? undefined : { path: at, number: value };
  if (value === null || typeof value !== 'object') return undefined;
  for (const [path, item] of children(value, at)) {
    const found = nonFinite(item, path);
    if (found) return found;
  }
  return undefined;
}

/** The items of a list or the members of an object, each with its path. */
function children(value: JsonObject | Json[], at: string): [string, Json][] {
  return Array.isArray(value) ? value.map((item, i) => [`${at}[${i}]`, item]) : Object.entries(value).map(([key, item]) => [`${at}.${key}`, item]);
}

/** The path of the first object or list nested past the bound, if any. */
function tooDeep(value: Json, at: string, depth: number): string | undefined {
  if (value === null || typeof value !== 'object') return undefined;
  if (depth > MAX_FIELD_DEPTH) return at;
  for (const [path, item] of children(value, at)) {
    const found = tooDeep(item, path, depth + 1);
    if (found) return found;
  }
  return undefined;
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
  for (const oneof of type.oneofsArray) {
    if (oneof.isProto3Optional) continue;
    const set = oneof.oneof.filter((name) => (ownValue(value, name) ?? null) !== null);
    if (set.length > 1) out.push({ field: `${at}.${set[1]}`, description: `only one of ${oneof.name} (${oneof.oneof.join(', ')}) may be set, and ${set[0]} is` });
  }
  if (!options.checkRequired) return;
  for (const field of type.fieldsArray) {
    if (isRequired(field) && isEmpty(ownValue(value, field.name))) out.push({ field: `${at}.${field.name}`, description: 'required field is missing or empty' });
  }
}

/** Missing, null, "", an empty list or an empty map; 0 and false are values. */
function isEmpty(value: Json | undefined): boolean {
  return value === undefined || value === null || value === '' || (Array.isArray(value) ? value.length === 0 : isObject(value) && Object.keys(value).length === 0);
}

function validateField(field: protobuf.Field, value: Json, at: string, options: ValidateOptions, out: FieldViolation[]): void {
  field.resolve();
  if (field instanceof protobuf.MapField) {
    if (!isObject(value)) return void out.push({ field: at, description: `must be an object (map<${field.keyType},${typeName(field)}>), not ${describe(value)}` });
    const keys = new Map<string, string>();
    for (const [mapKey, item] of Object.entries(value)) {
      const keyProblem = mapKeyProblem(field.keyType, mapKey);
      // "1" and "01" are one integer key: stored in one form, one value would be lost.
      const canonical = keyProblem ? undefined : canonicalKey(field.keyType, mapKey);
      const earlier = canonical === undefined ? undefined : keys.get(canonical);
      if (keyProblem) out.push({ field: `${at}.${mapKey}`, description: keyProblem });
      else if (earlier !== undefined) out.push({ field: `${at}.${mapKey}`, description: `map key is ${canonical}, as "${earlier}" is` });
      if (canonical !== undefined) keys.set(canonical, mapKey);
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

function mapKeyProblem(keyType: string, key: string): string | undefined {
  if (keyType === 'string') return undefined;
  if (keyType === 'bool') return key === 'true' || key === 'false' ? undefined : `map key must be true or false (bool), not "${key}"`;
  if (!INTEGER.test(key)) return `map key must be an integer (${keyType}), not "${key}"`;
  const problem = scalarProblem(keyType, INT64.has(keyType) || UINT64.has(keyType) ? key : Number(key));
  return problem && `map key ${problem}`;
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
  return scalarProblem(field.type, value);
}

function scalarProblem(type: string, value: Json): string | undefined {
  if (type === 'string') return typeof value === 'string' ? undefined : `must be a string, not ${describe(value)}`;
  if (type === 'bool') return typeof value === 'boolean' ? undefined : `must be a boolean, not ${describe(value)}`;
  if (type === 'bytes') return typeof value === 'string' && BASE64.test(value) ? undefined : `must be a base64 string, not ${describe(value)}`;
  // NaN and the infinities (and protobuf's "NaN" and "Infinity") are refused: a client reading them back as JSON numbers cannot.
  if (type === 'double') return Number.isFinite(numberOf(value)) ? undefined : `must be a finite number, not ${describe(value)}`;
  // Rounded to a float32 the way protobuf writes it: 3.4028235e38, the largest float printed short, is in range.
  if (type === 'float') return Number.isFinite(Math.fround(numberOf(value))) ? undefined : `must be a finite number within float's range, not ${describe(value)}`;
  if (INT32.has(type)) return integerProblem(integerOf(value), -(2 ** 31), 2 ** 31 - 1, type);
  if (UINT32.has(type)) return integerProblem(integerOf(value), 0, 2 ** 32 - 1, type);
  if (INT64.has(type)) return int64Problem(value, true, type);
  if (UINT64.has(type)) return int64Problem(value, false, type);
  return `has unsupported type ${type}`;
}

function messageProblem(type: protobuf.Type, value: Json, at: string, options: ValidateOptions, out: FieldViolation[]): string | undefined {
  const wrapped = WRAPPERS[type.fullName];
  if (wrapped) return scalarProblem(wrapped, value);
  switch (type.fullName) {
    case '.google.protobuf.Struct':
      return isObject(value) ? finiteProblem(value, at, out) : `must be an object, not ${describe(value)}`;
    case '.google.protobuf.Value':
      return finiteProblem(value, at, out);
    case '.google.protobuf.ListValue':
      return Array.isArray(value) ? finiteProblem(value, at, out) : `must be a list, not ${describe(value)}`;
    case '.google.protobuf.Timestamp':
      return typeof value === 'string' && isTimestamp(value) ? undefined : `must be an RFC 3339 timestamp with Z or an offset, between years 1 and 9999, such as "2026-01-31T12:00:00Z", not ${describe(value)}`;
    case '.google.protobuf.Duration':
      return typeof value === 'string' && isDuration(value) ? undefined : `must be a duration string such as "1.5s", within ±315576000000s, not ${describe(value)}`;
    case '.google.protobuf.FieldMask':
      return typeof value === 'string' && FIELD_MASK.test(value) ? undefined : `must be a field mask string of lowerCamelCase paths such as "user.displayName,photo", not ${describe(value)}`;
    case '.google.protobuf.Any':
      return anyProblem(type, value, at, options, out);
  }
  if (!isObject(value)) return `must be an object (${type.fullName.slice(1)}), not ${describe(value)}`;
  validateMessage(type, value, at, options, out);
  return undefined;
}

/** An Any in its JSON form: "@type" naming a message the loaded protos declare, then that message's fields (or "value" for a well-known type). */
function anyProblem(type: protobuf.Type, value: Json, at: string, options: ValidateOptions, out: FieldViolation[]): string | undefined {
  const url = isObject(value) ? ownValue(value, '@type') : undefined;
  if (typeof url !== 'string' || !url.includes('/')) return `must be an object with "@type" a type URL such as "type.googleapis.com/pkg.Message", not ${describe(value)}`;
  const inner = anyType(type, url);
  if (!inner) return `"@type" names ${JSON.stringify(url.slice(url.lastIndexOf('/') + 1))}, which no loaded proto declares by that full name`;
  const { '@type': _, ...rest } = value as JsonObject;
  if (WRAPPERS[inner.fullName] || OPAQUE.has(inner.fullName)) {
    const extra = Object.keys(rest).filter((key) => key !== 'value');
    if (extra.length > 0) return `holds ${inner.fullName.slice(1)} as "value" only, not ${extra.join(', ')}`;
    return messageProblem(inner, ownValue(rest, 'value') ?? null, `${at}.value`, options, out);
  }
  validateMessage(inner, rest, at, options, out);
  return undefined;
}

/** The message an Any's type URL names by its full name, if the loaded protos declare it. */
function anyType(any: protobuf.Type, url: string): protobuf.Type | undefined {
  return messagesOf(any.root).get(`.${url.slice(url.lastIndexOf('/') + 1)}`);
}

/**
 * Every message of a (loaded, no longer changing) root by full name, gathered once. protobuf.js's own lookup caches
 * every name it is asked for, found or not: names from clients' type URLs would grow that cache without bound.
 */
function messagesOf(root: protobuf.Namespace): Map<string, protobuf.Type> {
  let messages = messagesByRoot.get(root);
  if (!messages) messagesByRoot.set(root, (messages = new Map([...allTypes(root)].map((type) => [type.fullName, type]))));
  return messages;
}

const messagesByRoot = new WeakMap<protobuf.Namespace, Map<string, protobuf.Type>>();

function isTimestamp(text: string): boolean {
  return timestamp(text) !== undefined;
}

/** An RFC 3339 timestamp within protobuf's range: its whole seconds in ms, in UTC, and its fraction's digits. */
function timestamp(text: string): { ms: number; fraction: string | undefined } | undefined {
  const parts = TIMESTAMP.exec(text);
  if (!parts) return undefined;
  const [year, month, day, hour, minute, second] = parts.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const [sign, offsetHours, offsetMinutes] = [parts[8], Number(parts[9] ?? 0), Number(parts[10] ?? 0)];
  if (hour > 23 || minute > 59 || second > 59 || offsetHours > 23 || offsetMinutes > 59) return undefined;
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  if (date.getUTCFullYear() !== year || date.getUTCMonth() !== month - 1 || date.getUTCDate() !== day) return undefined;
  const offsetMs = (sign === '-' ? -1 : 1) * (offsetHours * 60 + offsetMinutes) * 60_000;
  const ms = date.getTime() + ((hour * 60 + minute) * 60 + second) * 1000 - offsetMs;
  return ms >= MIN_TIME && ms <= MAX_TIME ? { ms, fraction: parts[7] } : undefined;
}

function isDuration(text: string): boolean {
  const parts = DURATION.exec(text);
  return parts !== null && BigInt(parts[2] as string) <= MAX_DURATION_S;
}

/** A number, or a number written as a decimal string (protobuf's JSON takes both); NaN otherwise. */
function numberOf(value: Json): number {
  if (typeof value === 'number') return value;
  return typeof value === 'string' && DECIMAL.test(value) ? Number(value) : Number.NaN;
}

/** A whole number written as a string is the number; any other value is as it is, for integerProblem to judge. */
function integerOf(value: Json): Json {
  return typeof value === 'string' && INTEGER.test(value) ? Number(value) : value;
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

// Canonical forms are also taken of stored values, which an interface file
// edited since may no longer describe: a value of another shape stays as it is.

function canonicalField(field: protobuf.Field, value: Json): Json {
  field.resolve();
  if (field instanceof protobuf.MapField) {
    if (!isObject(value)) return value;
    const out: JsonObject = {};
    for (const [key, item] of Object.entries(value)) setOwn(out, canonicalKey(field.keyType, key), canonicalSingle(field, item));
    return out;
  }
  if (field.repeated) return Array.isArray(value) ? value.map((item) => canonicalSingle(field, item)) : value;
  return canonicalSingle(field, value);
}

function canonicalSingle(field: protobuf.Field, value: Json): Json {
  const resolved = field.resolvedType;
  if (value === null) return null;
  if (resolved instanceof protobuf.Enum) return canonicalEnum(resolved, value);
  if (resolved instanceof protobuf.Type) return canonicalMessage(resolved, value);
  return canonicalScalar(field.type, value);
}

/** An enum value by the first name declared for its number, as protobuf writes it; a NullValue as null. */
function canonicalEnum(type: protobuf.Enum, value: Json): Json {
  const number = typeof value === 'string' && Object.hasOwn(type.values, value) ? type.values[value] : value;
  if (typeof number !== 'number' || type.valuesById[number] === undefined) return value;
  return type.fullName === NULL_VALUE ? null : (type.valuesById[number] as string);
}

function canonicalMessage(type: protobuf.Type, value: Json): Json {
  const wrapped = WRAPPERS[type.fullName];
  if (wrapped) return canonicalScalar(wrapped, value);
  if (type.fullName === '.google.protobuf.Any') return canonicalAny(type, value);
  // A stored value of another shape (its field's type changed since) stays as it is.
  if (type.fullName === '.google.protobuf.Timestamp' && typeof value === 'string') return canonicalTimestamp(value) ?? value;
  if (type.fullName === '.google.protobuf.Duration' && typeof value === 'string') return canonicalDuration(value) ?? value;
  return OPAQUE.has(type.fullName) || !isObject(value) ? value : canonicalFields(type, value);
}

/** An Any with the message it holds in its canonical form, "@type" first. */
function canonicalAny(any: protobuf.Type, value: Json): Json {
  const url = isObject(value) ? ownValue(value, '@type') : undefined;
  const inner = typeof url === 'string' ? anyType(any, url) : undefined;
  if (!inner || !isObject(value)) return value;
  const { '@type': _, ...rest } = value;
  if (WRAPPERS[inner.fullName] || OPAQUE.has(inner.fullName)) return { '@type': url as string, value: canonicalMessage(inner, ownValue(rest, 'value') ?? null) };
  return { '@type': url as string, ...canonicalFields(inner, rest) };
}

function canonicalScalar(type: string, value: Json): Json {
  if ((INT64.has(type) || UINT64.has(type)) && (typeof value === 'string' || typeof value === 'number')) return canonicalInteger(value);
  if ((INT32.has(type) || UINT32.has(type)) && typeof value === 'string') return integerOf(value);
  if (type === 'float') return canonicalFloat(numberOf(value)) ?? value;
  if (type === 'double' && typeof value === 'string' && DECIMAL.test(value)) return Number(value);
  if (type === 'bytes' && typeof value === 'string') return Buffer.from(value, 'base64').toString('base64');
  return value;
}

/** Protobuf's own JSON form: UTC, "Z", and 0, 3, 6 or 9 fractional digits; undefined for no timestamp. */
function canonicalTimestamp(text: string): string | undefined {
  const parsed = timestamp(text);
  return parsed && `${new Date(parsed.ms).toISOString().slice(0, 19)}${fraction(parsed.fraction)}Z`;
}

/** Protobuf's own JSON form: seconds with 0, 3, 6 or 9 fractional digits; undefined for no duration. */
function canonicalDuration(text: string): string | undefined {
  const parts = DURATION.exec(text);
  if (!parts) return undefined;
  const seconds = BigInt(parts[2] as string);
  const digits = fraction(parts[3]);
  const negative = parts[1] === '-' && (seconds > 0n || digits !== '');
  return `${negative ? '-' : ''}${seconds.toString()}${digits}s`;
}

/** Nanoseconds written as "", ".123", ".123456" or ".123456789", whichever holds them. */
function fraction(digits: string | undefined): string {
  const nanos = (digits ?? '').padEnd(9, '0');
  if (/^0+$/.test(nanos)) return '';
  const trimmed = nanos.endsWith('000000') ? nanos.slice(0, 3) : nanos.endsWith('000') ? nanos.slice(0, 6) : nanos;
  return `.${trimmed}`;
}

/**
 * The float32 the value becomes, as the shortest decimal that becomes it again: 0.1 and 0.10000000149011612 are one
 * value. Undefined for no number (a stored value of another shape).
 */
function canonicalFloat(value: number): number | undefined {
  if (!Number.isFinite(value)) return undefined;
  const single = Math.fround(value);
  for (let digits = 1; digits < 9; digits++) {
    const shortest = Number(single.toPrecision(digits));
    if (Math.fround(shortest) === single) return shortest;
  }
  return Number(single.toPrecision(9));
}

function canonicalKey(keyType: string, key: string): string {
  return keyType === 'string' || keyType === 'bool' ? key : canonicalInteger(key);
}

function canonicalInteger<T extends string | number>(value: T): string | T {
  return INTEGER.test(String(value)) ? BigInt(value).toString() : value;
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
