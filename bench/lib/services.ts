// relgate's service code on a store, without gRPC: the relation the
// in-process benchmarks (bench/core.ts, bench/wal-pages.ts) start from.
import { InterfaceRegistry } from '../../src/interfaces.ts';
import { RegistryService } from '../../src/registry-service.ts';
import { RequestService } from '../../src/request-service.ts';
import { DEFAULT_CONFIG } from '../../src/server.ts';
import type { Store } from '../../src/store/store.ts';
import { REQUESTER_UNIT, RESPONDER_UNIT } from './relgate.ts';

/** The request service on the store, with a tls-certificates relation whose requester and responder units have joined. */
export async function servicesWithRelation(store: Store): Promise<{ requests: RequestService; relationId: string }> {
  const interfaces = await InterfaceRegistry.load([]);
  const registry = new RegistryService(store, interfaces);
  for (const name of ['webapp', 'ca']) await registry.registerApplication(name);
  for (const name of [REQUESTER_UNIT, RESPONDER_UNIT]) await registry.registerUnit({ name, ingress_address: '127.0.0.1', egress_subnets: ['127.0.0.0/8'], labels: {} });
  const { relation } = await registry.createRelation({ interface: 'tls-certificates', version: 0, requester_application: 'webapp', requester_endpoint: 'certificates', responder_application: 'ca', responder_endpoint: 'certificates' });
  for (const unit of [REQUESTER_UNIT, RESPONDER_UNIT]) await registry.joinRelation(relation.id, unit, undefined);
  return { requests: new RequestService(store, interfaces, { maxMessageBytes: DEFAULT_CONFIG.maxSendBytes }), relationId: relation.id };
}
