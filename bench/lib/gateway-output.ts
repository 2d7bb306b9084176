// What a gateway under load prints, read over a measured period: its access
// log gives each RPC's time in the handler, and --trace-gc its pauses.
import type { ServerProcess } from './processes.ts';

/** Collects, between open() and close(), the gateway's access-log durations by method and its GC pauses. */
export interface GatewayOutput {
  address: string;
  open(): void;
  close(): void;
  taken(method: string): { handlerMs: Float64Array; gcMs: number[] };
}

export function gatewayOutput(server: ServerProcess & { address: string }): GatewayOutput {
  let collecting = false;
  let handler: { method: string; ms: number }[] = [];
  let gc: number[] = [];
  let partial = '';
  server.child.stdout?.on('data', (data: Buffer) => {
    const lines = (partial + data.toString()).split('\n');
    partial = lines.pop() ?? '';
    if (!collecting) return;
    for (const line of lines) {
      const pause = gcPauseOf(line);
      if (pause !== undefined) gc.push(pause);
      else if (line.includes('"msg":"rpc"')) {
        const entry = JSON.parse(line) as { method: string; duration_ms: number };
        handler.push({ method: entry.method, ms: entry.duration_ms });
      }
    }
  });
  return {
    address: server.address,
    open: () => {
      collecting = true;
      handler = [];
      gc = [];
    },
    close: () => (collecting = false),
    taken: (method) => ({ handlerMs: Float64Array.from(handler.filter((entry) => entry.method === method).map((entry) => entry.ms)).sort(), gcMs: gc }),
  };
}

/** The pause (ms) a --trace-gc line reports, e.g. "Scavenge 52.2 (72.3) -> 40.3 (72.8) MB, pooled: 0 MB, 1.27 / 0.00 ms". */
export function gcPauseOf(line: string): number | undefined {
  const pause = GC_PAUSE.exec(line);
  return pause ? Number(pause[1]) : undefined;
}

const GC_PAUSE = /ms: (?:Scavenge|Mark-Compact|Minor Mark-Sweep)\b.*?([\d.]+) \/ [\d.]+ ms/;
