// The one place that knows where relgate's .proto files live and how they
// are loaded: server, client, codegen and reflection all come through here.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

export const PROJECT_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const PROTO_DIR = path.join(PROJECT_DIR, 'proto');
/** protobufjs ships google/protobuf/descriptor.proto, which options.proto extends. */
const PROTOBUFJS_DIR = path.dirname(fileURLToPath(import.meta.resolve('protobufjs/package.json')));

/** The relgate.v1 API files that define services. */
export const API_FILES = [
  'relgate/v1/registry.proto',
  'relgate/v1/requester.proto',
  'relgate/v1/responder.proto',
  'relgate/v1/session.proto',
  'google/rpc/error_details.proto',
] as const;

/** Built-in interface definitions, always loaded. */
export const BUILTIN_INTERFACE_DIR = path.join(PROTO_DIR, 'relgate', 'interfaces');

/**
 * proto-loader options shared by everything that loads relgate's protos:
 * snake_case field names as in the .proto files (what grpcurl and every other
 * language's JSON mapping use), 64-bit integers as strings, enums by name,
 * defaults filled in and oneof discriminators present.
 */
export const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
} as const satisfies protoLoader.Options;

export function includeDirs(extra: readonly string[] = []): string[] {
  return [PROTO_DIR, ...extra, PROTOBUFJS_DIR];
}

/** Loads the relgate.v1 API as a grpc-js package definition. */
export function loadApi(): protoLoader.PackageDefinition {
  return protoLoader.loadSync([...API_FILES], { ...LOADER_OPTIONS, includeDirs: includeDirs() });
}

/** A protobufjs root that resolves imports against the include directories. */
export function newRoot(extraDirs: readonly string[] = []): protobuf.Root {
  const root = new protobuf.Root();
  const dirs = includeDirs(extraDirs);
  root.resolvePath = (origin, target) => {
    if (path.isAbsolute(target)) return target;
    for (const dir of dirs) {
      const candidate = path.join(dir, target);
      if (protobufFileExists(candidate)) return candidate;
    }
    return protobuf.util.path.resolve(origin, target);
  };
  return root;
}

function protobufFileExists(file: string): boolean {
  try {
    return protobuf.util.fs?.statSync?.(file).isFile() ?? false;
  } catch {
    return false;
  }
}

const run = promisify(execFile);
const packageDir = (name: string) => path.dirname(fileURLToPath(import.meta.resolve(`${name}/package.json`)));

/** Found as a dependency, wherever npm put it: relgate's own node_modules, or those of a project that installed it. */
const BUF = path.join(packageDir('@bufbuild/buf'), 'bin', 'buf');

/**
 * gRPC's own services that the server also serves (health, reflection), by
 * their canonical file names. Compiled alongside relgate's protos so that
 * reflection lists them and can describe them like any other service.
 */
const GRPC_SERVICE_PROTOS: Record<string, string> = {
  'grpc/health/v1/health.proto': path.join(packageDir('grpc-health-check'), 'proto', 'health', 'v1', 'health.proto'),
  'grpc/reflection/v1/reflection.proto': path.join(packageDir('@grpc/reflection'), 'build', 'proto', 'grpc', 'reflection', 'v1', 'reflection.proto'),
  'grpc/reflection/v1alpha/reflection.proto': path.join(packageDir('@grpc/reflection'), 'build', 'proto', 'grpc', 'reflection', 'v1alpha', 'reflection.proto'),
};

/**
 * Compiles the given proto roots with buf into serialized FileDescriptorProtos,
 * imports included, plus gRPC's health and reflection protos. Reflection serves
 * these real files so that clients such as grpcurl see true file names and
 * dependency lists (proto-loader's own descriptors drop imports).
 */
export async function compileDescriptors(roots: readonly string[]): Promise<Uint8Array[]> {
  const work = await mkdtemp(path.join(tmpdir(), 'relgate-buf-'));
  try {
    const modules = [...roots.map((_, i) => `m${i}`), 'grpc-services'].map((dir) => `  - path: ${dir}`).join('\n');
    await writeFile(path.join(work, 'buf.yaml'), `version: v2\nmodules:\n${modules}\n`);
    await Promise.all(roots.map((root, i) => symlink(path.resolve(root), path.join(work, `m${i}`))));
    for (const [name, source] of Object.entries(GRPC_SERVICE_PROTOS)) {
      const target = path.join(work, 'grpc-services', name);
      await mkdir(path.dirname(target), { recursive: true });
      await symlink(source, target);
    }
    const out = path.join(work, 'image.binpb');
    await run(BUF, ['build', '-o', out], { cwd: work }).catch((error: unknown) => {
      throw new Error(`the interface files do not compile:\n${bufProblems(error, roots)}`);
    });
    return splitFileDescriptorSet(await readFile(out));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** buf's messages of a failed build, each file named by its path instead of the build's module directory (m0, m1...). */
function bufProblems(error: unknown, roots: readonly string[]): string {
  const stderr = (error as { stderr?: unknown }).stderr;
  const text = (typeof stderr === 'string' && stderr.trim()) || (error instanceof Error ? error.message : String(error));
  // A module directory starts a path: at the start of a line, or after a quote.
  return text.replace(/(^|")m(\d+)(?=\/|")/gm, (found, before: string, index: string) => {
    const root = roots[Number(index)];
    return root === undefined ? found : `${before}${path.resolve(root)}`;
  });
}

/** The name (field 1) of a serialized FileDescriptorProto. */
export function descriptorFileName(file: Uint8Array): string {
  const reader = protobuf.Reader.create(file);
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag >>> 3 === 1) return reader.string();
    reader.skipType(tag & 7);
  }
  return '';
}

/** Splits a FileDescriptorSet into its files without re-encoding them. */
export function splitFileDescriptorSet(set: Uint8Array): Uint8Array[] {
  const reader = protobuf.Reader.create(set);
  const files: Uint8Array[] = [];
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag >>> 3 === 1) files.push(reader.bytes());
    else reader.skipType(tag & 7);
  }
  return files;
}
