// The gateway as its own process: `npm start`, the relgate command and every
// spawn in this project give Node the same flags, and with them a burst of
// new streams leaves the young generation at Node 20's size.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAIN, SERVE_NODE_FLAGS } from '../src/cli/serve-process.ts';
import { PROJECT_DIR } from '../src/protos.ts';
import { freePort } from '../bench/lib/processes.ts';
import { spawnServe, type ServeProcess } from './helpers/grpcurl.ts';
import { clientsOf, setupRelation } from './helpers/harness.ts';
import { watchReady, type Watch } from './helpers/streams.ts';

const FLAGS = SERVE_NODE_FLAGS.join(' ');

describe('how the gateway is started', () => {
  it('npm start and the relgate command pass the same Node flags', () => {
    const { scripts } = JSON.parse(readFileSync(path.join(PROJECT_DIR, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(scripts.start).toBe(`node ${FLAGS} src/cli/main.ts serve`);
    const shebang = readFileSync(MAIN, 'utf8').split('\n')[0];
    expect(shebang).toBe(`#!/usr/bin/env -S node ${FLAGS}`);
    // What the kernel runs for that first line; Node refuses a flag it does not know.
    const help = spawnSync('/usr/bin/env', ['-S', `${process.execPath} ${FLAGS}`, MAIN, 'serve', '--help'], { encoding: 'utf8' });
    expect([help.status, help.stderr]).toEqual([0, '']);
    expect(help.stdout).toContain('--listen');
  });
});

describe('a burst of streams', () => {
  const STREAMS = 3_000;
  const NEW_SPACE_LIMIT = 2 * 16 * 1024 * 1024;
  let serve: ServeProcess;
  let metrics: string;
  let clients: ReturnType<typeof clientsOf>;

  beforeAll(async () => {
    metrics = `127.0.0.1:${await freePort()}`;
    serve = await spawnServe(['--listen', '127.0.0.1:0', '--db', ':memory:', '--metrics-listen', metrics, '--max-streams-per-unit', '0']);
    clients = clientsOf(serve.address);
  }, 30_000);
  afterAll(async () => {
    clients?.close();
    await serve?.stop();
  });

  it(`leaves the young generation within two 16 MB semi-spaces (${STREAMS} watches)`, async () => {
    const relationId = await setupRelation(clients);
    const responder = clients.responder('ca/0');
    const watches: Watch[] = [];
    // Opened in waves of 500, all held open at the end; without the flags V8 grows it to 64 MB and more.
    for (let opened = 0; opened < STREAMS; opened += 500) {
      watches.push(...(await Promise.all(Array.from({ length: 500 }, () => watchReady(responder, { relation_id: relationId })))));
    }
    const text = await (await fetch(`http://${metrics}/metrics`)).text();
    const line = text.split('\n').find((each) => each.startsWith('nodejs_heap_space_size_total_bytes{space="new"}'));
    const newSpace = Number(line?.split(' ')[1]);
    expect(newSpace).toBeGreaterThan(0);
    expect(newSpace).toBeLessThanOrEqual(NEW_SPACE_LIMIT);
    for (const watch of watches) watch.cancel();
  }, 60_000);
});
