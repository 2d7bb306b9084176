// Where a process's busy time goes, by part of the stack: each sample of a V8
// CPU profile counts once, for the innermost frame that belongs to a part
// (relgate's store, hub, session, services; protobuf.js; grpc-js), so a
// part's share includes what it calls in Node and in no other part; Node's
// own code counts alone only when no part is on the stack (HTTP/2 frames
// read from a socket, timers). Self time alone puts a statement's run in
// better-sqlite3's native code and a message's writing in Node's streams,
// far from the code that asked for them.

export interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

export interface CpuProfile {
  nodes: { id: number; callFrame: CallFrame; children?: number[] }[];
  samples: number[];
  timeDeltas: number[];
}

const NODE = "Node's HTTP/2, streams, timers";

/** Parts in the order they are tried on each frame; the first that matches names it. */
const PARTS: [string, (frame: CallFrame) => boolean][] = [
  ['request ids', (f) => f.url.includes('/uuid/') || f.url.endsWith('/request-id.ts')],
  ['access log', (f) => /\/(pino|sonic-boom)\//.test(f.url) || (f.url.endsWith('/src/server.ts') && f.functionName === '#log')],
  ['UTF-8 check', (f) => f.url.endsWith('/src/utf8.ts') && f.functionName !== 'requestDeserialize'],
  ['protobuf.js', (f) => /\/(protobufjs|@protobufjs|@grpc\/proto-loader|long)\//.test(f.url) || (f.url === '' && /\$(encode|decode|fromObject|toObject)$/.test(f.functionName))],
  ['SQLite store', (f) => /\/src\/store\/(sqlite-store|record-cache)\.ts$/.test(f.url) || f.url.includes('/lru-cache/') || f.functionName === 'fdatasync'],
  ['watch hub', (f) => f.url.endsWith('/src/watch-hub.ts')],
  ['session', (f) => f.url.endsWith('/src/session.ts')],
  ['services, Call, auth', (f) => /\/src\/[a-z-]+\.ts$/.test(f.url)],
  ['grpc-js', (f) => f.url.includes('/@grpc/grpc-js/')],
  ['garbage collection', (f) => f.functionName === '(garbage collector)'],
  ['V8 and native (program)', (f) => f.functionName === '(program)'],
];

/**
 * Busy time (idle samples left out) by part, in microseconds, over the
 * samples from `fromS` to `toS` seconds after the profile's start.
 */
export function busyByPart(profile: CpuProfile, fromS = 0, toS = Infinity): { busyUs: number; parts: Map<string, number> } {
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const frames = new Map(profile.nodes.map((node) => [node.id, node.callFrame]));
  const partOf = new Map<number, string | null>();
  const underNode = new Map<number, boolean>();
  // The part of the innermost frame at or above `id` that has one, else null.
  const partAbove = (id: number): string | null => {
    let known = partOf.get(id);
    if (known === undefined) {
      const frame = frames.get(id);
      const up = parent.get(id);
      known = (frame && PARTS.find(([, matches]) => matches(frame))?.[0]) ?? (up === undefined ? null : partAbove(up));
      partOf.set(id, known);
    }
    return known;
  };
  const isUnderNode = (id: number): boolean => {
    let known = underNode.get(id);
    if (known === undefined) {
      const up = parent.get(id);
      known = Boolean(frames.get(id)?.url.startsWith('node:')) || (up !== undefined && isUnderNode(up));
      underNode.set(id, known);
    }
    return known;
  };
  const part = (id: number): string => partAbove(id) ?? (isUnderNode(id) ? NODE : 'other');
  const parts = new Map<string, number>();
  let busyUs = 0;
  let clockUs = 0;
  profile.samples.forEach((id, i) => {
    const us = profile.timeDeltas[i] ?? 0;
    clockUs += us;
    if (clockUs < fromS * 1e6 || clockUs >= toS * 1e6 || frames.get(id)?.functionName === '(idle)') return;
    busyUs += us;
    const name = part(id);
    parts.set(name, (parts.get(name) ?? 0) + us);
  });
  return { busyUs, parts };
}
