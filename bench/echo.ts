// The raw gRPC baseline: a grpc-js unary echo server and a client, each in
// its own process.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { serveRoles, type Config } from './lib/role.ts';

export const ECHO_PROTO = path.join(path.dirname(fileURLToPath(import.meta.url)), 'proto', 'echo.proto');
export const ECHO_METHOD = 'bench.echo.v1.EchoService.Echo';
/** About the size of a small request's fields. */
export const ECHO_TEXT = 'bench.example.com';

type EchoClient = grpc.Client & { Echo(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null) => void): void };
type EchoPackage = { bench: { echo: { v1: { EchoService: grpc.ServiceClientConstructor } } } };

function echoService(): grpc.ServiceClientConstructor {
  const definition = protoLoader.loadSync(ECHO_PROTO, { keepCase: true });
  return (grpc.loadPackageDefinition(definition) as unknown as EchoPackage).bench.echo.v1.EchoService;
}

async function server() {
  const service = echoService();
  const server = new grpc.Server();
  server.addService(service.service, {
    Echo: (call: grpc.ServerUnaryCall<object, object>, callback: grpc.sendUnaryData<object>) => callback(null, call.request),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  return {
    info: { address: `127.0.0.1:${port}` },
    close: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  };
}

async function client(config: Config) {
  const Service = echoService();
  const client = new Service(config.address as string, grpc.credentials.createInsecure()) as unknown as EchoClient;
  await new Promise<void>((resolve, reject) => client.waitForReady(Date.now() + 10_000, (error) => (error ? reject(error) : resolve())));
  const roundTrip = () =>
    new Promise<void>((resolve, reject) => client.Echo({ text: ECHO_TEXT }, { deadline: Date.now() + 10_000 }, (error) => (error ? reject(error) : resolve())));
  return { roundTrip, close: async () => client.close() };
}

serveRoles({ server, client });
