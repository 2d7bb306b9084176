// Shared by the reliability tests: clients of a server in another process,
// that process's resident memory, and polling for state without an event.
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { Rpc, v1 } from '../helpers/harness.ts';
import type { Clients } from '../helpers/world.ts';

/** Clients of a server at the address; close() closes them all. */
export function clientsOf(address: string): Clients & { close(): void } {
  const made: grpc.Client[] = [];
  const make = (service: string, unit?: string) => {
    const Client = v1[service];
    if (!Client) throw new Error(`no ${service}`);
    const client = new Client(address, grpc.credentials.createInsecure());
    made.push(client);
    return new Rpc(client, unit);
  };
  return {
    registry: make('RegistryService'),
    requester: (unit) => make('RequesterService', unit),
    responder: (unit) => make('ResponderService', unit),
    close: () => made.forEach((client) => client.close()),
  };
}

/** Resident memory of a process, in MiB. */
export function rssMb(pid: number | undefined): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!match) throw new Error(`no VmRSS for process ${pid}`);
  return Number(match[1]) / 1024;
}

/** Polls until check() holds, for state that changes without an event; resolves with the time it took. */
export async function until(check: () => boolean, timeoutMs: number, everyMs = 20): Promise<number> {
  const started = performance.now();
  while (!check()) {
    if (performance.now() - started > timeoutMs) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
  return performance.now() - started;
}
