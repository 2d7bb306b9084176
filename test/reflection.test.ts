// Server reflection as real grpcurl sees it: every service and every type
// reachable from the relgate.v1 services, including imported well-known types,
// must list and describe.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { PROTO_DIR, descriptorFileName } from '../src/protos.ts';
import { findGrpcurl, grpcurl, type RunResult } from './helpers/grpcurl.ts';
import { startHarness, type Harness } from './helpers/harness.ts';

const RELGATE_SERVICES = ['relgate.v1.RegistryService', 'relgate.v1.RequesterService', 'relgate.v1.ResponderService', 'relgate.v1.SessionService'];
const GRPC_SERVICES = ['grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'];

let h: Harness;
beforeAll(async () => {
  findGrpcurl(); // fails here, clearly, when grpcurl is missing
  h = await startHarness();
});
afterAll(() => h?.close());

/** grpcurl -plaintext [flags] ADDRESS [args]. */
const call = (flags: string[], ...args: string[]): Promise<RunResult> => grpcurl(['-plaintext', ...flags, h.server.address, ...args]);

async function describeSymbol(symbol: string): Promise<string> {
  const result = await call([], 'describe', symbol);
  expect(result.code, `grpcurl describe ${symbol}:\n${result.stderr}`).toBe(0);
  expect(result.stdout.split('\n')[0]).toMatch(new RegExp(`^${symbol.replaceAll('.', '\\.')} is an? (service|message|enum):?$`));
  return result.stdout;
}

/** Fully-qualified type names (".pkg.Type") that a describe output refers to, comments skipped. */
function referencedTypes(described: string): string[] {
  const types = new Set<string>();
  for (const line of described.split('\n')) {
    if (line.trim().startsWith('//')) continue;
    for (const match of line.matchAll(/(?<![\w.])\.([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+)/g)) types.add(match[1] as string);
  }
  return [...types];
}

/** Runs fn over items, a few at a time. */
async function eachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await fn(items[next++] as T);
    }),
  );
}

test('list shows the relgate.v1 services, health and reflection', async () => {
  const result = await call([], 'list');
  expect(result.code, result.stderr).toBe(0);
  const services = result.stdout.trim().split('\n');
  expect(services).toEqual(expect.arrayContaining([...RELGATE_SERVICES, ...GRPC_SERVICES]));
  for (const service of services) expect(service).toMatch(/^(relgate\.v1|grpc\.health\.v1|grpc\.reflection\.v1(alpha)?)\.\w+$/);
});

test('list of one service shows its methods', async () => {
  const result = await call([], 'list', 'relgate.v1.RequesterService');
  expect(result.code, result.stderr).toBe(0);
  expect(result.stdout.trim().split('\n')).toEqual(expect.arrayContaining(['relgate.v1.RequesterService.CreateRequest', 'relgate.v1.RequesterService.WatchResponses']));
});

test('describe works for every service and every type reachable from the relgate.v1 services', { timeout: 120_000 }, async () => {
  const described = new Map<string, string>();
  let frontier = [...RELGATE_SERVICES];
  while (frontier.length > 0) {
    const found = new Set<string>();
    await eachLimited(frontier, 4, async (symbol) => {
      const output = await describeSymbol(symbol);
      described.set(symbol, output);
      for (const type of referencedTypes(output)) if (!described.has(type) && !frontier.includes(type)) found.add(type);
    });
    frontier = [...found];
  }
  const names = [...described.keys()];
  // Imported well-known and google.rpc types resolve through their real files.
  expect(names).toEqual(
    expect.arrayContaining([
      'google.protobuf.Struct',
      'google.protobuf.Value',
      'google.protobuf.ListValue',
      'google.protobuf.NullValue',
      'google.protobuf.Timestamp',
      'google.protobuf.Duration',
      'google.protobuf.Any',
      'google.rpc.Status',
      'relgate.v1.WatchEvent',
      'relgate.v1.Request',
    ]),
  );
  // Every RPC's request and response message is among them.
  for (const service of RELGATE_SERVICES) {
    for (const [, input, output] of (described.get(service) ?? '').matchAll(/rpc \w+ \( (?:stream )?\.([\w.]+) \) returns \( (?:stream )?\.([\w.]+) \)/g)) {
      expect(described.has(input as string), input).toBe(true);
      expect(described.has(output as string), output).toBe(true);
    }
  }
  expect(names.length).toBeGreaterThan(60);
});

test('describe shows imported types by their fully-qualified names', async () => {
  const output = await describeSymbol('relgate.v1.CreateRequestRequest');
  expect(output).toContain('.google.protobuf.Struct fields = 3;');
  expect(output).toContain('.google.protobuf.Duration ttl = 5;');
  expect(output).toContain('.relgate.v1.Delivery delivery = 4;');
  expect(await describeSymbol('relgate.v1.Request')).toContain('.google.protobuf.Timestamp create_time = 20;');
});

test('health, reflection and the built-in interface messages describe too', async () => {
  for (const symbol of [
    ...GRPC_SERVICES,
    'grpc.health.v1.HealthCheckRequest',
    'relgate.interfaces.tls_certificates.v1.CertificateRequest',
    'relgate.interfaces.tls_certificates.v1.CertificateResponse',
    'relgate.interfaces.http.v1.HttpRequest',
    'relgate.interfaces.http.v1.HttpResponse',
    'google.rpc.ErrorInfo',
    'google.rpc.BadRequest',
  ]) {
    await describeSymbol(symbol);
  }
});

/** Every top-level message and enum declared in proto/, by full name. */
function declaredTypes(): string[] {
  const names: string[] = [];
  for (const file of readdirSync(PROTO_DIR, { recursive: true, encoding: 'utf8' }).filter((name) => name.endsWith('.proto'))) {
    const text = readFileSync(path.join(PROTO_DIR, file), 'utf8');
    const pkg = /^package ([\w.]+);/m.exec(text)?.[1];
    for (const [, name] of text.matchAll(/^(?:message|enum) (\w+) \{/gm)) names.push(`${pkg}.${name}`);
  }
  return names;
}

test("describe shows relgate's own options on interface messages and fields, as buf compiled them", async () => {
  const output = await describeSymbol('relgate.interfaces.http.v1.HttpResponse');
  expect(output).toContain('option (.relgate.v1.interface) = {');
  expect(output).toContain('role: INTERFACE_ROLE_RESPONSE');
  expect(output).toContain('string hostname = 1 [(.relgate.v1.field) = { required: true }];');
});

interface ReflectionResponse {
  all_extension_numbers_response?: { extension_number: number[] };
  file_descriptor_response?: { file_descriptor_proto: Buffer[] };
}

test('extensions are found by the extended type and number, as clients ask for them', async () => {
  const protoPath = path.join(path.dirname(fileURLToPath(import.meta.resolve('@grpc/reflection/package.json'))), 'build', 'proto', 'grpc', 'reflection', 'v1', 'reflection.proto');
  const api = grpc.loadPackageDefinition(protoLoader.loadSync(protoPath, { keepCase: true, longs: String, oneofs: true })) as never as {
    grpc: { reflection: { v1: { ServerReflection: new (address: string, credentials: grpc.ChannelCredentials) => grpc.Client & { ServerReflectionInfo(): grpc.ClientDuplexStream<object, ReflectionResponse> } } } };
  };
  const client = new api.grpc.reflection.v1.ServerReflection(h.server.address, grpc.credentials.createInsecure());
  const ask = (request: object) =>
    new Promise<ReflectionResponse>((resolve, reject) => {
      const stream = client.ServerReflectionInfo();
      stream.once('data', resolve);
      stream.once('error', reject);
      stream.end(request);
    });
  try {
    const numbers = await ask({ all_extension_numbers_of_type: 'google.protobuf.MessageOptions' });
    expect(numbers.all_extension_numbers_response?.extension_number).toContain(51820);
    const file = await ask({ file_containing_extension: { containing_type: 'google.protobuf.FieldOptions', extension_number: 51820 } });
    const names = (file.file_descriptor_response?.file_descriptor_proto ?? []).map((bytes) => descriptorFileName(bytes));
    expect(names[0]).toBe('relgate/v1/options.proto');
  } finally {
    client.close();
  }
});

test('describe works for every message and enum declared in proto/, options included', { timeout: 120_000 }, async () => {
  const names = declaredTypes();
  expect(names).toEqual(expect.arrayContaining(['relgate.v1.InterfaceMessage', 'relgate.v1.FieldSpec', 'relgate.v1.InterfaceRole']));
  await eachLimited(names, 4, async (symbol) => void (await describeSymbol(symbol)));
});

test('the health check answers SERVING for the server and each service', async () => {
  for (const service of ['', ...RELGATE_SERVICES]) {
    const result = await call(['-d', JSON.stringify({ service })], 'grpc.health.v1.Health/Check');
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual({ status: 'SERVING' });
  }
});

test('an unknown symbol is NOT_FOUND, not a crash', async () => {
  const result = await call([], 'describe', 'relgate.v1.NoSuchThing');
  expect(result.code).not.toBe(0);
  expect(result.stderr).toMatch(/not found/i);
  expect((await call([], 'list')).code).toBe(0);
});
