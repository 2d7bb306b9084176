#!/usr/bin/env node
// A reverse proxy: the requiring (requester) side of http. It asks every
// web-server unit of the relation where it serves, and keeps services()
// current as units join (it asks the newcomer) and leave (it drops their
// address). Each change prints the services as one JSON line.
//
//   node examples/ts/http/proxy.ts --unit proxy/0 --relation <id> [--service web]
import type { Requester, WatchEvent } from '../../../src/client/index.ts';
import type { RequestFields, ResponseFields } from '../../../src/client/index.ts';
import { closeOnSignal, exampleArgs } from '../args.ts';

interface Service {
  service_name: string;
  hosts: { hostname: string; port: number }[];
}

type Event = WatchEvent<RequestFields<'http'>, ResponseFields<'http'>>;

class ReverseProxy {
  readonly #requester: Requester<'http'>;
  readonly #serviceName: string;
  /** The latest address of each web-server unit, by unit name. */
  readonly #hosts = new Map<string, { hostname: string; port: number }>();

  constructor(requester: Requester<'http'>, serviceName: string) {
    this.#requester = requester;
    this.#serviceName = serviceName;
  }

  /** The services behind the proxy, with the hosts of every unit that answered and has not left. */
  services(): Service[] {
    const hosts = [...this.#hosts.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([, host]) => host);
    return hosts.length === 0 ? [] : [{ service_name: this.#serviceName, hosts }];
  }

  /**
   * Asks every web-server unit of the relation now: a selector request with
   * no requirements addresses them all. Returns the revision that created it.
   */
  async askEveryUnit(): Promise<number> {
    for (const old of await this.#requester.requests()) await this.#requester.withdraw(old.request_id);
    const request = await this.#requester.create({ service_name: this.#serviceName }, { delivery: { selector: '' } });
    return Number(request.create_revision);
  }

  /** Applies one watch event; true when services() changed. */
  async apply(event: Event): Promise<boolean> {
    const unit = event.unit;
    if (event.type === 'UNIT_JOINED' && unit?.side === 'SIDE_RESPONDER') {
      await this.#requester.create({ service_name: this.#serviceName }, { delivery: { unit: unit.unit } });
      return false;
    }
    if (event.type === 'UNIT_DEPARTED' && unit?.side === 'SIDE_RESPONDER') return this.#hosts.delete(unit.unit);
    const response = event.response;
    if (event.type !== 'ADDED' || !response || response.code !== 0) return false;
    const before = JSON.stringify(this.#hosts.get(response.responder_unit));
    this.#hosts.set(response.responder_unit, { hostname: response.fields.hostname, port: response.fields.port });
    return before !== JSON.stringify(this.#hosts.get(response.responder_unit));
  }
}

const { values, connection } = exampleArgs({ service: { type: 'string', default: 'web' } });
if (typeof values.relation !== 'string') throw new Error('--relation <id> is required');
const requester = connection.requester('http', { relation: values.relation });
const proxy = new ReverseProxy(requester, values.service as string);
closeOnSignal(() => connection.close());
// Watching from just before the request misses neither its answers nor a unit joining meanwhile.
const asked = await proxy.askEveryUnit();
const watch = requester.watch({ start: { afterRevision: asked - 1 } });
process.stdout.write(`${JSON.stringify({ services: proxy.services() })}\n`);
try {
  for await (const event of watch) {
    if (await proxy.apply(event)) process.stdout.write(`${JSON.stringify({ services: proxy.services() })}\n`);
  }
} catch (error) {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
}
