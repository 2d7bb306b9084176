// A relation's id is its interface's name and a number ("tls-certificates:3"),
// so that the id alone says which interface a relation is of: watches and
// replicas filter by interface without reading the relation.
import { invalidArgument } from './errors.ts';

export function relationIdOf(iface: string, number: number): string {
  return `${relationIdPrefix(iface)}${number}`;
}

/** What the ids of an interface's relations start with. */
export function relationIdPrefix(iface: string): string {
  return `${iface}:`;
}

/** The interface a relation id names (an interface name holds no colon). */
export function interfaceOfRelation(relationId: string): string {
  return relationId.slice(0, relationId.lastIndexOf(':'));
}

/** Whether the relation is of the interface; every relation is of '' (no filter). */
export function ofInterface(relationId: string, iface: string): boolean {
  return !iface || interfaceOfRelation(relationId) === iface;
}

/** A relation named together with an interface must be of it. */
export function checkInterface(relationId: string, iface: string): void {
  if (!ofInterface(relationId, iface)) {
    throw invalidArgument([{ field: 'interface', description: `relation ${relationId} is of interface ${interfaceOfRelation(relationId)}, not ${iface}` }]);
  }
}
