// Server reflection: @grpc/reflection over the file descriptors buf compiled
// (protos.ts compileDescriptors). The library decodes each file with
// protobufjs and serves it encoded again, which drops every option protobufjs
// does not know, relgate's own on interface messages and fields among them;
// and it indexes extensions under names with a leading dot, which no client
// asks with. Both are put right on the library's own indexes. Bytes that are
// no reflection request end the stream INVALID_ARGUMENT, not INTERNAL.
import type * as grpc from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { descriptorFileName } from './protos.ts';
import { refusingMalformed } from './utf8.ts';

/** What this module relies on inside each of the library's implementations (v1 and v1alpha). */
interface Indexes {
  files: Record<string, object>;
  fileEncodings: Map<object, Uint8Array>;
  extensions: Record<string, Record<number, object>>;
}

export function addReflection(server: grpc.Server, descriptors: Uint8Array[]): void {
  const service = new ReflectionService({ relgate: { fileDescriptorProtos: descriptors } } as never);
  const { v1, v1Alpha } = service as unknown as Record<'v1' | 'v1Alpha', Partial<Indexes>>;
  for (const indexes of [v1, v1Alpha]) {
    if (!isIndexes(indexes)) throw new Error('@grpc/reflection no longer has the indexes relgate corrects; check src/reflection.ts against its version');
    // The library keeps the first file of each name, as buf's set has each once.
    for (const bytes of descriptors) {
      const file = indexes.files[descriptorFileName(bytes)];
      if (file && indexes.fileEncodings.has(file)) indexes.fileEncodings.set(file, bytes);
    }
    for (const [extendee, numbers] of Object.entries(indexes.extensions)) {
      if (extendee.startsWith('.')) indexes.extensions[extendee.slice(1)] ??= numbers;
    }
  }
  const checking = { addService: (definition: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation) => server.addService(...refusingMalformed(definition, implementation)) };
  service.addToServer(checking as unknown as grpc.Server);
}

function isIndexes(value: Partial<Indexes>): value is Indexes {
  return typeof value.files === 'object' && value.fileEncodings instanceof Map && typeof value.extensions === 'object';
}
