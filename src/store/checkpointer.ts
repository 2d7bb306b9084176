// Copies committed WAL frames into the SQLite database file from a worker
// thread with its own connection. SQLite's own checkpoint runs inside a COMMIT
// on the event loop: one of 10,000 pages held it for 16-32 ms. With most pages
// copied here first, the one inside COMMIT (kept as the fallback, and the
// only one that can start the WAL over) has little left to do. A thread that
// stops (it could not open the database) is started again at the next
// checkpoint, so a passing failure does not leave the WAL to grow for good.
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { CheckpointResult } from './store.ts';

export class Checkpointer {
  readonly #path: string;
  readonly #everyCommits: number;
  readonly #onResult: (result: CheckpointResult) => void;
  #worker: Worker | undefined;
  #exited: Promise<unknown> = Promise.resolve();
  #commits = 0;

  constructor(path: string, everyCommits: number, onResult: (result: CheckpointResult) => void) {
    this.#path = path;
    this.#everyCommits = everyCommits;
    this.#onResult = onResult;
  }

  /** Counts a commit; every `everyCommits` of them asks the worker (started on first use, or again) for a checkpoint. */
  committed(): void {
    if (++this.#commits < this.#everyCommits) return;
    this.#commits = 0;
    (this.#worker ??= this.#start()).postMessage('checkpoint');
  }

  /** Lets a running checkpoint finish, then closes the thread's connection. */
  async close(): Promise<void> {
    // Unref'd while it runs, so that it alone never keeps the process up; its close must, or a process with nothing
    // else left would exit before the store finished closing.
    this.#worker?.ref();
    this.#worker?.postMessage('close');
    await this.#exited;
  }

  #start(): Worker {
    // The worker's file has this module's extension: .ts in the sources, .js in a built package.
    const file = new URL(`./checkpoint-worker${path.extname(import.meta.url)}`, import.meta.url);
    const worker = new Worker(file, { workerData: { path: this.#path } });
    worker.unref();
    this.#exited = new Promise((resolve) => worker.once('exit', resolve));
    worker.on('message', (result: CheckpointResult) => this.#onResult(result));
    // The checkpoint inside COMMIT still runs, so nothing depends on this thread: say why it stopped, and go on.
    worker.on('error', (error) => {
      if (this.#worker === worker) this.#worker = undefined;
      this.#onResult({ error: `the checkpoint thread stopped: ${error.message}` });
    });
    return worker;
  }
}
