// The baseline for watch benchmarks: a bare grpc-js server speaking
// relgate's watch API with no storage and no hub. WatchIncomingRequests
// answers with one empty batch (so clients know the stream is open), or with
// `catchUpCount` one-event messages written as fast as the client takes them
// when it starts after a revision; every CreateRequest broadcasts one batch
// holding the template event to every open stream. Forked by the runner,
// it reports its address over IPC and stops on `stop`.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { SERVE_NODE_FLAGS } from '../../src/cli/serve-process.ts';
import { loadApi } from '../../src/protos.ts';

export interface BareWatchServerConfig {
  /** The event every message carries (its revision is replaced). */
  template: Record<string, unknown>;
  /** Messages a stream starting after a revision is sent first. */
  catchUpCount: number;
}

export interface BareWatchServer {
  child: ChildProcess;
  address: string;
  stop(): Promise<void>;
}

const SELF = fileURLToPath(import.meta.url);

export function spawnBareWatchServer(config: BareWatchServerConfig): Promise<BareWatchServer> {
  // With the gateway's own Node flags, so that memory is compared on the same young generation.
  const child = fork(SELF, ['bare-watch-server', JSON.stringify(config)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [...process.execArgv, ...SERVE_NODE_FLAGS] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    child.once('message', (message: { address: string }) =>
      resolve({
        child,
        address: message.address,
        stop: async () => {
          child.send('stop');
          await exited;
        },
      }),
    );
    child.once('exit', (code) => reject(new Error(`bare watch server exited with ${code}`)));
  });
}

/** Events per catch-up message, as the gateway's watch hub sends at most. */
const CATCH_UP_BATCH = 500;

type Message = Record<string, unknown>;
type Stream = grpc.ServerWritableStream<Message, Message>;
type Definitions = { relgate: { v1: Record<string, { service: grpc.ServiceDefinition }> } };

async function serve(config: BareWatchServerConfig): Promise<void> {
  const v1 = (grpc.loadPackageDefinition(loadApi()) as unknown as Definitions).relgate.v1;
  const streams = new Set<Stream>();
  let revision = 0;
  const event = (at: number) => ({ ...config.template, revision: String(at) });
  const server = new grpc.Server();
  server.addService(v1.ResponderService!.service, {
    WatchIncomingRequests: (call: Stream) => {
      streams.add(call);
      call.on('cancelled', () => streams.delete(call));
      const options = (call.request.options ?? {}) as Message;
      if (options.start !== 'WATCH_START_AFTER_REVISION') return void call.write({ batch: { events: [], revision: String(revision) } });
      let sent = 0;
      // Batched as the gateway's catch-up sends the change log: up to 500 events a message.
      const pump = () => {
        while (sent < config.catchUpCount) {
          const events = Array.from({ length: Math.min(CATCH_UP_BATCH, config.catchUpCount - sent) }, (_, i) => event(sent + i + 1));
          sent += events.length;
          if (!call.write({ batch: { events, revision: String(sent) } })) return void call.once('drain', pump);
        }
      };
      pump();
    },
  });
  server.addService(v1.RequesterService!.service, {
    CreateRequest: (_call: grpc.ServerUnaryCall<Message, Message>, callback: grpc.sendUnaryData<Message>) => {
      revision += 1;
      const batch = { batch: { events: [event(revision)], revision: String(revision) } };
      for (const stream of streams) stream.write(batch);
      callback(null, { request: { revision: String(revision) } });
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  process.send?.({ address: `127.0.0.1:${port}` });
  process.on('message', () => {
    server.forceShutdown();
    process.exit(0);
  });
}

if (process.argv[2] === 'bare-watch-server' && process.send) await serve(JSON.parse(process.argv[3] ?? '{}') as BareWatchServerConfig);
