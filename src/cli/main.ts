#!/usr/bin/env -S node --max-semi-space-size=16
// relgate command line: `relgate serve` and its flags, each mirrored by a
// RELGATE_* environment variable; `relgate mark-restored` for a database
// restored from a backup; and the operator commands (operator.ts).
import { access, readFile } from 'node:fs/promises';
import { Command, InvalidArgumentError, type CommanderError, Option } from 'commander';
import { Code } from '../errors.ts';
import { DEFAULT_CONFIG, MAX_PROGRESS_MS, MIN_PROGRESS_MS, startServer } from '../server.ts';
import { startOverAfterRestore } from '../store/postgres-store.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import { MAX_TIMER_MS, wholeNumber, wholeNumberIn } from './numbers.ts';
import { addOperatorCommands } from './operator.ts';

const program = new Command()
  .name('relgate')
  .description('A durable gRPC gateway for request/response interfaces between related applications.')
  .showHelpAfterError();

const integer = wholeNumber;
const bytes = wholeNumberIn(1, MAX_TIMER_MS);
const positive = wholeNumberIn(1, Number.MAX_SAFE_INTEGER);
const timer = wholeNumberIn(1, MAX_TIMER_MS);
const orNever = wholeNumberIn(0, MAX_TIMER_MS);
// grpc-js adds up to 10% jitter to the age before it sets the timer.
const connectionAge = wholeNumberIn(0, Math.floor(MAX_TIMER_MS / 1.1));
const progressInterval = wholeNumberIn(MIN_PROGRESS_MS, MAX_PROGRESS_MS);
/** A path that may not be given empty, and why. */
const nonEmpty = (why: string) => (value: string) => {
  if (value === '') throw new InvalidArgumentError(why);
  return value;
};
/** Empty, a TLS path would quietly mean none: TLS off, or mutual TLS off. */
const pemFile = nonEmpty('an empty path names no file');
/** Empty, it would be SQLite's temporary database, deleted at exit: nothing acknowledged would survive. */
const dbPath = nonEmpty('an empty path is no database file; name a file, or :memory:');
const collect = (value: string, previous: string[] = []) => [...previous, value];
/** The one kind of store URL there is; empty (a templated RELGATE_STORE left blank) is none. */
const postgresUrl = (value: string) => {
  if (value !== '' && !/^postgres(ql)?:\/\//.test(value)) throw new InvalidArgumentError('must be a postgres:// connection string');
  return value;
};

program
  .command('serve')
  .description('Start the gateway.')
  .addOption(new Option('--listen <host:port>', 'address to listen on').env('RELGATE_LISTEN').default(DEFAULT_CONFIG.listen))
  .addOption(new Option('--db <path>', 'SQLite database file, or :memory:').argParser(dbPath).env('RELGATE_DB').default(DEFAULT_CONFIG.db))
  .addOption(new Option('--store <url>', 'postgres:// connection string: replicas on one PostgreSQL instead of the SQLite file').argParser(postgresUrl).env('RELGATE_STORE'))
  .addOption(new Option('--durability <level>', 'full: fsync every commit; normal: survive a process kill only').choices(['full', 'normal']).env('RELGATE_DURABILITY').default(DEFAULT_CONFIG.durability))
  .addOption(new Option('--interfaces <dir>', 'directory of interface .proto files (repeatable; RELGATE_INTERFACES takes a colon-separated list)').argParser(collect).env('RELGATE_INTERFACES'))
  .addOption(new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).env('RELGATE_LOG_LEVEL').default(DEFAULT_CONFIG.logLevel))
  .addOption(new Option('--max-message-bytes <n>', 'largest message accepted').argParser(bytes).env('RELGATE_MAX_MESSAGE_BYTES').default(DEFAULT_CONFIG.maxReceiveBytes))
  .addOption(new Option('--max-send-bytes <n>', 'largest message sent; a larger response fails its call with RESOURCE_EXHAUSTED').argParser(bytes).env('RELGATE_MAX_SEND_BYTES').default(DEFAULT_CONFIG.maxSendBytes))
  .addOption(new Option('--max-streams-per-unit <n>', 'watch and session streams one unit may hold open at once (0: no cap)').argParser(integer).env('RELGATE_MAX_STREAMS_PER_UNIT').default(DEFAULT_CONFIG.maxStreamsPerUnit))
  .addOption(new Option('--keepalive-time <ms>', 'milliseconds between keepalive pings on a connection').argParser(timer).env('RELGATE_KEEPALIVE_TIME').default(DEFAULT_CONFIG.keepaliveTimeMs))
  .addOption(new Option('--keepalive-timeout <ms>', 'milliseconds a ping may go unanswered before the connection is dropped').argParser(timer).env('RELGATE_KEEPALIVE_TIMEOUT').default(DEFAULT_CONFIG.keepaliveTimeoutMs))
  .addOption(new Option('--max-connection-age <ms>', 'age after which a connection is asked to go away (0: never)').argParser(connectionAge).env('RELGATE_MAX_CONNECTION_AGE').default(DEFAULT_CONFIG.maxConnectionAgeMs))
  .addOption(new Option('--max-connection-age-grace <ms>', 'how long calls continue on an aged connection before they are cut').argParser(orNever).env('RELGATE_MAX_CONNECTION_AGE_GRACE').default(DEFAULT_CONFIG.maxConnectionAgeGraceMs))
  .addOption(new Option('--watch-buffer <events>', 'events queued for one watcher before it is cut off').argParser(positive).env('RELGATE_WATCH_BUFFER').default(DEFAULT_CONFIG.watchBuffer))
  .addOption(new Option('--watch-buffer-bytes <n>', 'bytes queued for one watcher before it is cut off').argParser(positive).env('RELGATE_WATCH_BUFFER_BYTES').default(DEFAULT_CONFIG.watchBufferBytes))
  .addOption(new Option('--progress-interval <ms>', 'milliseconds between watch progress events').argParser(progressInterval).env('RELGATE_PROGRESS_INTERVAL').default(DEFAULT_CONFIG.progressIntervalMs))
  .addOption(new Option('--history-revisions <n>', 'change-log revisions kept for resuming watches').argParser(integer).env('RELGATE_HISTORY_REVISIONS').default(DEFAULT_CONFIG.historyRevisions))
  .addOption(new Option('--history-age <seconds>', 'change-log age kept for resuming watches').argParser(integer).env('RELGATE_HISTORY_AGE').default(DEFAULT_CONFIG.historyAgeMs / 1000))
  .addOption(new Option('--shutdown-grace <ms>', 'how long shutdown waits for calls').argParser(orNever).env('RELGATE_SHUTDOWN_GRACE').default(DEFAULT_CONFIG.shutdownGraceMs))
  .addOption(new Option('--auth <mode>', 'open: units name themselves in metadata (local use); token: admin and per-unit bearer tokens').choices(['open', 'token']).env('RELGATE_AUTH').default(DEFAULT_CONFIG.auth))
  .addOption(new Option('--admin-token-file <path>', 'file holding the admin token (or set RELGATE_ADMIN_TOKEN)').env('RELGATE_ADMIN_TOKEN_FILE'))
  .addOption(new Option('--tls-cert <path>', 'PEM certificate chain of the server').argParser(pemFile).env('RELGATE_TLS_CERT'))
  .addOption(new Option('--tls-key <path>', 'PEM private key of the server').argParser(pemFile).env('RELGATE_TLS_KEY'))
  .addOption(new Option('--tls-client-ca <path>', 'PEM CA that client certificates must chain to (mutual TLS; required)').argParser(pemFile).env('RELGATE_TLS_CLIENT_CA'))
  .addOption(new Option('--metrics-listen <host:port>', 'HTTP address for /metrics, /healthz and the dashboard (off when unset; no authentication)').env('RELGATE_METRICS_LISTEN'))
  .action(async (options: Record<string, unknown>, command: Command) => {
    const listed = (options.interfaces as string[] | undefined) ?? [];
    // The environment variable holds a colon-separated list; each flag holds one directory.
    const interfaces = command.getOptionValueSource('interfaces') === 'env' ? listed.flatMap((dirs) => dirs.split(':')).filter(Boolean) : listed;
    try {
      await serve(options, interfaces);
    } catch (error) {
      console.error(`relgate serve: cannot start: ${error instanceof Error ? error.message : String(error)}`);
      process.exit(1);
    }
  });

program
  .command('mark-restored')
  .description('Prepare a database restored from a backup, before a gateway serves it: watches resuming from any earlier revision start over from a snapshot.')
  .addOption(new Option('--db <path>', 'the restored SQLite database file').argParser(dbPath).conflicts('store'))
  .addOption(new Option('--store <url>', 'the restored PostgreSQL database (postgres:// connection string)').argParser(postgresUrl))
  .action(async (options: { db?: string; store?: string }, command: Command) => {
    if (!options.db && !options.store) command.error('error: name the restored database: --db <path> or --store <url>');
    try {
      const revision = await markRestored(options);
      console.log(`${options.db ?? 'the database'}: revisions go on from ${revision}; watches that resume from before it start over from a snapshot`);
    } catch (error) {
      console.error(`relgate mark-restored: ${error instanceof Error ? error.message : String(error)}`);
      process.exit(1);
    }
  });

async function markRestored({ db, store }: { db?: string; store?: string }): Promise<number> {
  if (store) return startOverAfterRestore(store);
  // The file must be there: a wrong path would otherwise be a new, empty database.
  await access(db as string);
  const sqlite = new SqliteStore({ path: db as string });
  try {
    return await sqlite.startOverAfterRestore();
  } finally {
    await sqlite.close();
  }
}

async function serve(options: Record<string, unknown>, interfaces: string[]): Promise<void> {
  process.once('SIGTERM', () => shutdown());
  process.once('SIGINT', () => shutdown());
  const tokenFile = options.adminTokenFile as string | undefined;
  const adminToken = tokenFile ? (await readFile(tokenFile, 'utf8')).trim() : process.env.RELGATE_ADMIN_TOKEN;
  const server = await startServer({
    listen: options.listen as string,
    db: options.db as string,
    store: (options.store as string | undefined) ?? '',
    durability: options.durability as 'full' | 'normal',
    interfaces,
    logLevel: options.logLevel as string,
    maxReceiveBytes: options.maxMessageBytes as number,
    maxSendBytes: options.maxSendBytes as number,
    maxStreamsPerUnit: options.maxStreamsPerUnit as number,
    keepaliveTimeMs: options.keepaliveTime as number,
    keepaliveTimeoutMs: options.keepaliveTimeout as number,
    maxConnectionAgeMs: options.maxConnectionAge as number,
    maxConnectionAgeGraceMs: options.maxConnectionAgeGrace as number,
    watchBuffer: options.watchBuffer as number,
    watchBufferBytes: options.watchBufferBytes as number,
    progressIntervalMs: options.progressInterval as number,
    historyRevisions: options.historyRevisions as number,
    historyAgeMs: (options.historyAge as number) * 1000,
    shutdownGraceMs: options.shutdownGrace as number,
    auth: options.auth as 'open' | 'token',
    adminToken,
    tlsCert: options.tlsCert as string | undefined,
    tlsKey: options.tlsKey as string | undefined,
    tlsClientCa: options.tlsClientCa as string | undefined,
    metricsListen: options.metricsListen as string | undefined,
  });
  // What nothing caught ends the process, as it would anyway, but with a log line a log pipeline can read: a failed
  // fsync of the WAL, after which nothing more may be acknowledged, is one.
  process.on('uncaughtException', (error) => {
    // With the log silenced, the error still goes somewhere.
    if (!server.logger.isLevelEnabled('fatal')) console.error(error);
    server.logger.fatal({ err: error }, 'relgate stopped on an error it cannot recover from; start it again');
    process.exit(1);
  });
  shutdown = () => void server.stop().then(() => process.exit(0));
  if (stopAsked) shutdown();
}

/** Until the gateway serves, a signal is noted (stopped once it serves); a process manager may send one at any time. */
let stopAsked = false;
let shutdown = () => {
  stopAsked = true;
};

addOperatorCommands(program);
// An unknown command or option is a bad command line, as for each command.
program.exitOverride((error: CommanderError) => process.exit(error.exitCode === 0 ? 0 : Code.INVALID_ARGUMENT));
// A reader that goes away (`relgate watch ... | head`) ends the output, not with a stack trace.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code !== 'EPIPE') throw error;
  process.exit(0);
});

await program.parseAsync();
