// A throw-away PostgreSQL cluster for tests: initdb in a temporary folder,
// started on a free loopback port, removed afterwards. Uses the server
// binaries of Debian's postgresql package (or any on PATH). initdb refuses to
// run as root, so as root the cluster runs as the `postgres` system user.
import { execFileSync, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { freePort } from '../../bench/lib/processes.ts';

export interface PostgresCluster {
  /** Connection string of the `postgres` maintenance database. */
  url: string;
  port: number;
  /** Creates an empty database and returns its connection string. */
  createDatabase(): Promise<string>;
  stop(): Promise<void>;
}

const SUPERUSER = 'relgate';

/** The folder holding initdb and pg_ctl: the newest Debian version, else PATH. */
export function postgresBinDir(): string {
  const root = '/usr/lib/postgresql';
  if (existsSync(root)) {
    const versions = readdirSync(root)
      .filter((name) => existsSync(path.join(root, name, 'bin', 'initdb')))
      .sort((a, b) => Number(b) - Number(a));
    if (versions[0]) return path.join(root, versions[0], 'bin');
  }
  const found = spawnSync('sh', ['-c', 'command -v initdb'], { encoding: 'utf8' }).stdout.trim();
  if (found) return path.dirname(found);
  throw new Error('PostgreSQL server binaries not found: install Debian package postgresql (apt-get install -y postgresql)');
}

/** Runs a PostgreSQL binary as an unprivileged user (root cannot run the server). */
function runAsOwner(binary: string, args: string[]): void {
  const asRoot = process.getuid?.() === 0;
  const [command, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', binary, ...args]] : [binary, args];
  execFileSync(command, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
}


export interface ClusterOptions {
  /** Keep PostgreSQL's default durability (fsync, synchronous commit), as benchmarks need. */
  durable?: boolean;
}

export async function startPostgres(options: ClusterOptions = {}): Promise<PostgresCluster> {
  const bin = postgresBinDir();
  const dir = mkdtempSync(path.join(tmpdir(), 'relgate-pg-'));
  if (process.getuid?.() === 0) {
    const owner = execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim();
    const group = execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim();
    chownSync(dir, Number(owner), Number(group));
  }
  const data = path.join(dir, 'data');
  runAsOwner(path.join(bin, 'initdb'), ['-D', data, '-U', SUPERUSER, '--auth=trust', '-E', 'UTF8', '--locale=C', '--no-sync']);
  const port = await freePort();
  // Tests throw the cluster away, so by default it skips fsync.
  const durability = options.durable ? '' : ' -c fsync=off -c synchronous_commit=off';
  const serverOptions = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c max_connections=200${durability}`;
  runAsOwner(path.join(bin, 'pg_ctl'), ['-D', data, '-o', serverOptions, '-l', path.join(dir, 'server.log'), '-w', 'start']);
  const base = `postgres://${SUPERUSER}@127.0.0.1:${port}`;
  let databases = 0;
  let stopped = false;
  const stopNow = () => {
    if (stopped) return;
    stopped = true;
    try {
      runAsOwner(path.join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  // A test run that ends without reaching stop() must not leave a server behind.
  process.once('exit', stopNow);
  return {
    url: `${base}/postgres`,
    port,
    async createDatabase() {
      const name = `relgate_${process.pid}_${++databases}`;
      const client = new pg.Client({ connectionString: `${base}/postgres` });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE ${name}`);
      } finally {
        await client.end();
      }
      return `${base}/${name}`;
    },
    async stop() {
      process.off('exit', stopNow);
      stopNow();
    },
  };
}

/** Runs one statement as the superuser (tests cut connections with it). */
export async function sql(url: string, text: string, values: unknown[] = []): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await client.query(text, values);
  } finally {
    await client.end();
  }
}
