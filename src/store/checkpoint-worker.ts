// The checkpoint thread of checkpointer.ts. A PASSIVE checkpoint never waits
// for a lock and never blocks the gateway's connection: it copies what no
// reader still needs from the WAL, and stops short where one does.
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';

const port = parentPort;
if (!port) throw new Error('checkpoint-worker.ts runs as a worker thread');
const db = new Database((workerData as { path: string }).path, { fileMustExist: true });
db.pragma('busy_timeout = 0');

port.on('message', (message: 'checkpoint' | 'close') => {
  if (message === 'close') {
    db.close();
    port.close();
    return;
  }
  // A failure (a full disk, an I/O error) is reported, and the next checkpoint tries again.
  try {
    const [result] = db.pragma('wal_checkpoint(PASSIVE)') as { log: number; checkpointed: number }[];
    if (result) port.postMessage({ log: result.log, checkpointed: result.checkpointed });
  } catch (error) {
    port.postMessage({ error: error instanceof Error ? error.message : String(error) });
  }
});
