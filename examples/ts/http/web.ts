#!/usr/bin/env node
// A web-server unit: the providing (responder) side of http. configure()
// sets the host name and port the unit serves on; the unit answers every
// request addressed to it with them.
//
//   node examples/ts/http/web.ts --unit web/0 --port 8080 [--hostname web-0.internal]
import { hostname } from 'node:os';
import type { Responder } from '../../../src/client/index.ts';
import { closeOnSignal, exampleArgs } from '../args.ts';

interface WebServer {
  hostname: string;
  port: number;
}

/** What the unit tells a reverse proxy (interface-http's configure(port)). */
function configure(options: { port: number; hostname?: string }): WebServer {
  if (!Number.isInteger(options.port) || options.port < 1 || options.port > 65535) throw new Error(`--port must be 1-65535, got ${options.port}`);
  return { hostname: options.hostname ?? hostname(), port: options.port };
}

async function serve(responder: Responder<'http'>, server: WebServer): Promise<void> {
  const requests = responder.watch({ filter: 'new' });
  for await (const event of requests) {
    if (event.type !== 'ADDED' || !event.request) continue;
    await responder.respond(event.request, { hostname: server.hostname, port: server.port });
    process.stdout.write(`${JSON.stringify({ answered: event.request.source_unit, ...server })}\n`);
  }
}

const { values, connection } = exampleArgs({ port: { type: 'string', default: '8080' }, hostname: { type: 'string' } });
const server = configure({ port: Number(values.port), ...(typeof values.hostname === 'string' ? { hostname: values.hostname } : {}) });
const responder = connection.responder('http', values.relation ? { relation: values.relation as string } : {});
closeOnSignal(() => connection.close());
process.stdout.write(`${JSON.stringify({ web: values.unit, ready: true, ...server })}\n`);
try {
  await serve(responder, server);
} catch (error) {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
}
