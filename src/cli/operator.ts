// Operator commands of the relgate command line: everyday questions to a
// running gateway over its gRPC API. Tables for people, --json for scripts;
// the exit code is the gRPC status code of the failed call (0 on success,
// 3 INVALID_ARGUMENT for a bad command line).
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { Argument, type Command, type CommanderError, Option } from 'commander';
import { Code, RelgateError, fromServiceError, isRelgateError } from '../errors.ts';
import { loadApi } from '../protos.ts';
import { jsonToStruct, structToJson, type JsonObject, type StructMessage } from '../struct.ts';
import { deadlineMs, wholeNumber } from './numbers.ts';

type Message = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
type AnyClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;
type ClientCtor = new (address: string, credentials: grpc.ChannelCredentials, options?: object) => AnyClient;

interface ConnectionFlags {
  address: string;
  token?: string;
  tokenFile?: string;
  unit?: string;
  tls?: boolean;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  timeout: number;
  json?: boolean;
}


/** The flags every operator command takes: where the gateway is and who is asking. */
function withConnectionFlags(command: Command): Command {
  return command
    .addOption(new Option('--address <host:port>', 'gateway address').env('RELGATE_ADDRESS').default('127.0.0.1:50051'))
    .addOption(new Option('--unit <name>', 'act as this unit (open mode; with a token or certificate, must name the same unit)').env('RELGATE_UNIT'))
    // Their variables are read in Gateway, after both flags: a flag given beats a variable set.
    .addOption(new Option('--token <token>', 'bearer token: the admin token or a unit token (env: RELGATE_TOKEN)'))
    .addOption(new Option('--token-file <path>', 'file holding the bearer token (env: RELGATE_TOKEN_FILE)'))
    .addOption(new Option('--tls', 'connect with TLS, trusting the system roots'))
    .addOption(new Option('--tls-ca <path>', 'connect with TLS, trusting this PEM CA').env('RELGATE_TLS_CA'))
    .addOption(new Option('--tls-cert <path>', 'PEM client certificate (mutual TLS)'))
    .addOption(new Option('--tls-key <path>', 'PEM client key (mutual TLS)'))
    .addOption(new Option('--timeout <ms>', 'deadline of each call').argParser(deadlineMs).default(10_000))
    .addOption(new Option('--json', 'print JSON (one document, or one line per event when watching)'));
}

/** Adds `interfaces`, `relations`, `requests`, `watch` and `call` to the program. */
export function addOperatorCommands(program: Command): void {
  const commands = [
    program
      .command('interfaces')
      .description('List the interfaces the gateway serves.')
      .action(run(listInterfaces)),
    program
      .command('relations')
      .description("List relations with their joined units (in token mode, a unit's token shows only its application's).")
      .addOption(new Option('--application <name>', 'only relations of this application'))
      .addOption(new Option('--interface <name>', 'only relations of this interface'))
      .action(run(listRelations)),
    program
      .command('requests')
      .description("List a relation's requests as the unit sees them (its side is found out unless --side is given).")
      .requiredOption('--relation <id>', 'relation id')
      .addOption(new Option('--new', 'requesters: only requests still waiting; responders: only requests new for the unit'))
      .addOption(new Option('--side <side>', 'the side the unit acts on').choices(['requester', 'responder']))
      .action(run(listRequests)),
    program
      .command('watch')
      .description('Follow a relation live, one line per event: "requests" as a responder unit sees them, "responses" as a requester unit does.')
      .addArgument(new Argument('<what>', 'requests or responses').choices(['requests', 'responses']))
      .requiredOption('--relation <id>', 'relation id')
      .addOption(new Option('--new', 'requests: only the ones still new for the unit'))
      .addOption(new Option('--now', 'skip the snapshot: only what changes from now on'))
      .addOption(new Option('--after-revision <n>', 'resume after this revision').argParser(wholeNumber))
      .action(run(watch)),
    program
      .command('call')
      .description('Create a request and wait for its response (RequesterService/Call).')
      .requiredOption('--relation <id>', 'relation id')
      .requiredOption('--fields <json>', 'request fields as a JSON object')
      .addOption(new Option('--to <unit>', 'address one responder unit (default: any responder)'))
      .addOption(new Option('--request-id <uuid>', 'request id, for retries (default: generated)'))
      .addOption(new Option('--wait-for-responders', 'wait for a responder to watch instead of failing with UNAVAILABLE'))
      .action(run(call)),
  ];
  for (const command of commands) {
    withConnectionFlags(command);
    // A bad command line is INVALID_ARGUMENT, like a bad request.
    command.exitOverride((error: CommanderError) => process.exit(error.exitCode === 0 ? 0 : Code.INVALID_ARGUMENT));
  }
}

/** Runs a command: prints its failure as the gRPC status and exits with the status code. */
function run<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args) => {
    try {
      await fn(...args);
    } catch (error) {
      const failure = asFailure(error);
      process.stderr.write(`${Code[failure.code]}: ${failure.message}${failure.reason ? ` (${failure.reason})` : ''}\n`);
      // The message already names the first violation; list them all when there are more.
      if (failure.fieldViolations.length > 1) for (const violation of failure.fieldViolations) process.stderr.write(`  ${violation.field}: ${violation.description}\n`);
      process.exitCode = failure.code;
    }
  };
}

function asFailure(error: unknown): RelgateError {
  if (isRelgateError(error)) return error;
  if (error && typeof error === 'object' && 'code' in error && typeof error.code === 'number' && 'metadata' in error) return fromServiceError(error as grpc.ServiceError);
  // Local failures (an unreadable token file, say) are the command line's fault.
  return badCommandLine(error instanceof Error ? error.message : String(error));
}

function badCommandLine(message: string): RelgateError {
  return new RelgateError(Code.INVALID_ARGUMENT, message, { reason: '' });
}

// ---- the gateway connection ----

let api: Record<string, ClientCtor> | undefined;

class Gateway {
  readonly #flags: ConnectionFlags;
  readonly #credentials: grpc.ChannelCredentials;
  readonly #metadata = new grpc.Metadata();
  readonly #clients: AnyClient[] = [];

  constructor(flags: ConnectionFlags) {
    this.#flags = flags;
    this.#credentials = credentials(flags);
    const token = tokenOf(flags.token, flags.tokenFile) ?? tokenOf(process.env.RELGATE_TOKEN, process.env.RELGATE_TOKEN_FILE);
    if (token) this.#metadata.set('authorization', `Bearer ${token}`);
    if (flags.unit) this.#metadata.set('relgate-unit', flags.unit);
  }

  client(service: string): AnyClient {
    api ??= (grpc.loadPackageDefinition(loadApi()) as unknown as { relgate: { v1: Record<string, ClientCtor> } }).relgate.v1;
    const Client = api[service];
    if (!Client) throw new Error(`no service ${service}`);
    const client = new Client(this.#flags.address, this.#credentials);
    this.#clients.push(client);
    return client;
  }

  unary(service: string, method: string, request: Message): Promise<Message> {
    const client = this.client(service);
    const fn = client[method] as (req: Message, md: grpc.Metadata, options: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: Message) => void) => void;
    return new Promise((resolve, reject) =>
      fn.call(client, request, this.#metadata, { deadline: Date.now() + this.#flags.timeout }, (error, response) => (error ? reject(error) : resolve(response))),
    );
  }

  stream(service: string, method: string, request: Message): grpc.ClientReadableStream<Message> {
    const client = this.client(service);
    const fn = client[method] as (req: Message, md: grpc.Metadata) => grpc.ClientReadableStream<Message>;
    return fn.call(client, request, this.#metadata);
  }

  close(): void {
    for (const client of this.#clients) client.close();
  }
}

function tokenOf(token: string | undefined, file: string | undefined): string | undefined {
  return token || (file ? readFileSync(file, 'utf8').trim() : undefined);
}

function credentials(flags: ConnectionFlags): grpc.ChannelCredentials {
  if (!flags.tls && !flags.tlsCa && !flags.tlsCert && !flags.tlsKey) return grpc.credentials.createInsecure();
  if (Boolean(flags.tlsCert) !== Boolean(flags.tlsKey)) throw badCommandLine('--tls-cert and --tls-key go together');
  const read = (file: string | undefined) => (file ? readFileSync(file) : null);
  return grpc.credentials.createSsl(read(flags.tlsCa), read(flags.tlsKey), read(flags.tlsCert));
}

async function withGateway(flags: ConnectionFlags, fn: (gateway: Gateway) => Promise<void>): Promise<void> {
  const gateway = new Gateway(flags);
  try {
    await fn(gateway);
  } finally {
    gateway.close();
  }
}

// ---- commands ----

async function listInterfaces(flags: ConnectionFlags): Promise<void> {
  await withGateway(flags, async (gateway) => {
    const { interfaces } = await gateway.unary('RegistryService', 'ListInterfaces', {});
    if (flags.json) return printJson(interfaces);
    printTable(
      ['NAME', 'VERSION', 'REQUEST', 'RESPONSE', 'DESCRIPTION'],
      (interfaces as Message[]).map((i) => [i.name, String(i.version), schemaText(i.request), schemaText(i.response), i.description]),
    );
  });
}

async function listRelations(flags: ConnectionFlags & { application?: string; interface?: string }): Promise<void> {
  await withGateway(flags, async (gateway) => {
    const { relations } = await gateway.unary('RegistryService', 'ListRelations', { application: flags.application ?? '', interface: flags.interface ?? '' });
    if (flags.json) return printJson(relations);
    printTable(
      ['ID', 'INTERFACE', 'REQUESTER', 'RESPONDER', 'UNITS'],
      (relations as Message[]).map((r) => [
        r.id,
        `${r.interface} v${r.version}`,
        `${r.requester_application}:${r.requester_endpoint}`,
        `${r.responder_application}:${r.responder_endpoint}`,
        (r.units as Message[]).map((u) => `${u.unit} (${sideName(u.side)})`).join(', ') || '-',
      ]),
    );
  });
}

async function listRequests(flags: ConnectionFlags & { relation: string; new?: boolean; side?: 'requester' | 'responder' }): Promise<void> {
  await withGateway(flags, async (gateway) => {
    const list = (side: 'requester' | 'responder') => allRequests(gateway, side, flags.relation, flags.new ? 'REQUEST_FILTER_NEW' : 'REQUEST_FILTER_ALL');
    let requests: Message[];
    if (flags.side) requests = await list(flags.side);
    else {
      // A unit acts on one side of a relation; ask as a requester first.
      requests = await list('requester').catch((error: unknown) => {
        if (asFailure(error).reason === 'NOT_A_MEMBER') return list('responder');
        throw error;
      });
    }
    if (flags.json) return printJson(requests);
    printTable(
      ['REQUEST', 'STATE', 'FROM', 'DELIVERY', 'RESPONSES', 'CREATED', 'FIELDS'],
      requests.map((r) => [r.request_id, enumName(r.state, 'REQUEST_STATE_'), r.source_unit, deliveryText(r.delivery), `${r.response_count}/${r.expected_count}`, timeText(r.create_time), fieldsText(r.fields)]),
    );
  });
}

async function allRequests(gateway: Gateway, side: 'requester' | 'responder', relation: string, filter: string): Promise<Message[]> {
  const [service, method] = side === 'requester' ? ['RequesterService', 'ListRequests'] : ['ResponderService', 'ListIncomingRequests'];
  const requests: Message[] = [];
  let pageToken = '';
  do {
    const page = await gateway.unary(service, method, { relation_id: relation, filter, page_size: 500, page_token: pageToken });
    requests.push(...(page.requests as Message[]));
    pageToken = page.next_page_token as string;
  } while (pageToken);
  return requests;
}

async function watch(what: 'requests' | 'responses', flags: ConnectionFlags & { relation: string; new?: boolean; now?: boolean; afterRevision?: number }): Promise<void> {
  const start = flags.afterRevision !== undefined ? 'WATCH_START_AFTER_REVISION' : flags.now ? 'WATCH_START_NOW' : 'WATCH_START_SNAPSHOT';
  const options = { relation_id: flags.relation, filter: flags.new ? 'REQUEST_FILTER_NEW' : 'REQUEST_FILTER_ALL', start, after_revision: String(flags.afterRevision ?? 0) };
  await withGateway(flags, async (gateway) => {
    const stream = what === 'requests' ? gateway.stream('ResponderService', 'WatchIncomingRequests', { options }) : gateway.stream('RequesterService', 'WatchResponses', { options });
    const stop = () => stream.cancel();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    try {
      await new Promise<void>((resolve, reject) => {
        stream.on('data', (message: Message) => {
          for (const event of message.batch.events as Message[]) printEvent(event, Boolean(flags.json));
        });
        stream.on('error', (error: grpc.ServiceError) => (error.code === grpc.status.CANCELLED ? resolve() : reject(error)));
        stream.on('end', () => resolve());
      });
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    }
  });
}

function printEvent(event: Message, json: boolean): void {
  if (json) return void process.stdout.write(`${JSON.stringify(plain(event))}\n`);
  const type = enumName(event.type, 'EVENT_TYPE_');
  if (type === 'BOOKMARK') return;
  const head = `${event.revision}\t${type}`;
  if (event.request) {
    const r = event.request;
    return line(head, event.relation_id, r.request_id, enumName(r.state, 'REQUEST_STATE_'), `from ${r.source_unit}`, fieldsText(r.fields));
  }
  if (event.response) {
    const r = event.response;
    return line(head, event.relation_id, r.request_id, `code ${r.code}${r.error ? ` ${r.error}` : ''}`, `by ${r.responder_unit}`, fieldsText(r.fields));
  }
  if (event.unit) return line(head, event.relation_id, `${event.unit.unit} (${sideName(event.unit.side)})`);
  const flags = event.requester_flags ?? event.responder_flags;
  if (flags) return line(head, event.relation_id, Object.keys(flags).filter((name) => flags[name]).join(',') || '-');
  line(head, event.relation_id);
}

function line(...parts: string[]): void {
  process.stdout.write(`${parts.filter((part) => part !== '').join('\t')}\n`);
}

async function call(flags: ConnectionFlags & { relation: string; fields: string; to?: string; requestId?: string; waitForResponders?: boolean }): Promise<void> {
  const fields = parseFields(flags.fields);
  await withGateway(flags, async (gateway) => {
    const result = await gateway.unary('RequesterService', 'Call', {
      relation_id: flags.relation,
      request_id: flags.requestId ?? '',
      fields: jsonToStruct(fields),
      // --to "" (an unset variable, say) is the gateway's to refuse, not "any responder".
      delivery: flags.to !== undefined ? { mode: 'DELIVERY_MODE_UNIT', unit: flags.to } : { mode: 'DELIVERY_MODE_ANY' },
      wait_for_responders: Boolean(flags.waitForResponders),
    });
    const { request, response } = result;
    // An answer that reports a failure is not a success for a script.
    if (response.code !== 0) process.exitCode = RESPONSE_FAILED;
    if (flags.json) return printJson(result);
    printTable(
      ['REQUEST', 'RESPONDER', 'CODE', 'FIELDS'],
      [[request.request_id, response.responder_unit, response.code === 0 ? '0' : `${response.code} ${response.error}`, fieldsText(response.fields)]],
    );
  });
}

function parseFields(text: string): JsonObject {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw badCommandLine(`--fields is not JSON: ${(error as Error).message}`);
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw badCommandLine('--fields must be a JSON object');
  return value as JsonObject;
}

/** The exit code of a `call` answered with a failure: past the gRPC codes, which exit codes 0-16 are. */
export const RESPONSE_FAILED = 20;

// ---- output ----

/** A message as plain JSON: Structs as objects, timestamps as RFC 3339 strings. */
function plain(value: unknown, key = ''): unknown {
  if (Array.isArray(value)) return value.map((item) => plain(item));
  if (!value || typeof value !== 'object') return value;
  const record = value as Message;
  if (key === 'fields' && 'fields' in record) return structToJson(record as StructMessage);
  if (Object.keys(record).length === 2 && 'seconds' in record && 'nanos' in record) return timeText(record);
  return Object.fromEntries(Object.entries(record).map(([name, item]) => [name, plain(item, name)]));
}

function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(plain(value), null, 2)}\n`);
}

function printTable(headers: string[], rows: string[][]): void {
  const widths = headers.map((header, i) => Math.max(header.length, ...rows.map((row) => (row[i] ?? '').length)));
  const format = (row: string[]) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('  ').trimEnd();
  process.stdout.write(`${[headers, ...rows].map(format).join('\n')}\n`);
}

function schemaText(schema: Message | null): string {
  return ((schema?.fields ?? []) as Message[]).map((field) => `${field.name}${field.required ? '*' : ''}`).join(',');
}

function fieldsText(struct: StructMessage | null): string {
  const text = JSON.stringify(structToJson(struct));
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

function deliveryText(delivery: Message | null): string {
  const mode = enumName(delivery?.mode ?? 'DELIVERY_MODE_ANY', 'DELIVERY_MODE_').toLowerCase();
  return mode === 'unit' ? `unit ${delivery?.unit}` : mode === 'selector' ? `selector ${delivery?.selector}` : 'any';
}

function timeText(timestamp: Message | null): string {
  if (!timestamp) return '-';
  return new Date(Number(timestamp.seconds) * 1000 + Math.floor(Number(timestamp.nanos) / 1e6)).toISOString();
}

function sideName(side: string): string {
  return enumName(side, 'SIDE_').toLowerCase();
}

function enumName(value: string, prefix: string): string {
  return String(value).replace(prefix, '');
}
