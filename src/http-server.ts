// The operations listener (--metrics-listen): Prometheus metrics, a health
// check and the read-only dashboard with its live feed (server-sent events).
// It has no authentication: bind it to loopback or a private network.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readDashboardState, type DashboardState } from './dashboard/state.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import type { Store } from './store/store.ts';
import type { WatchHub } from './watch-hub.ts';

const DASHBOARD_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'dashboard');
/** The page and its script, loaded once: they never change while the gateway runs. */
const ASSETS: Record<string, { type: string; body: Buffer }> = {
  '/dashboard/': { type: 'text/html; charset=utf-8', body: readFileSync(path.join(DASHBOARD_DIR, 'index.html')) },
  '/dashboard/app.js': { type: 'text/javascript; charset=utf-8', body: readFileSync(path.join(DASHBOARD_DIR, 'app.js')) },
};
/** The page runs only its own script and loads nothing from elsewhere. */
const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};
/** Commits are coalesced: the live feed sends at most one state per interval. */
const FEED_INTERVAL_MS = 200;
const FEED_KEEPALIVE_MS = 15_000;

export interface OpsServerOptions {
  /** host:port; port 0 picks a free port. */
  listen: string;
  metrics: Metrics;
  store: Store;
  hub: WatchHub;
  logger: Logger;
  /** False once the gateway is shutting down (/healthz then answers 503). */
  serving: () => boolean;
}

export interface OpsServer {
  /** The bound address, host:port. */
  address: string;
  close(): Promise<void>;
}

export async function startOpsServer(options: OpsServerOptions): Promise<OpsServer> {
  const feed = new DashboardFeed(options);
  const server = http.createServer((request, response) => {
    route(options, feed, request, response).catch((error: unknown) => {
      options.logger.error({ err: error, path: request.url }, 'operations request failed');
      if (!response.headersSent) response.writeHead(500, { 'content-type': 'text/plain' });
      response.end('internal error\n');
    });
  });
  const { host, port } = splitAddress(options.listen);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const bound = server.address();
  const address = `${host.includes(':') ? `[${host}]` : host}:${typeof bound === 'object' && bound ? bound.port : port}`;
  options.logger.info({ address }, 'metrics and dashboard listening');
  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        feed.close();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

async function route(options: OpsServerOptions, feed: DashboardFeed, request: http.IncomingMessage, response: http.ServerResponse): Promise<void> {
  const url = URL.parse(request.url ?? '/', 'http://relgate');
  if (!url) return send(response, 400, 'text/plain', 'bad request target\n');
  if (request.method !== 'GET' && request.method !== 'HEAD') return send(response, 405, 'text/plain', 'only GET\n', { allow: 'GET, HEAD' });
  switch (url.pathname) {
    case '/metrics': {
      const { contentType, body } = await options.metrics.text();
      return send(response, 200, contentType, body);
    }
    case '/healthz':
      return options.serving() ? send(response, 200, 'text/plain', 'ok\n') : send(response, 503, 'text/plain', 'shutting down\n');
    case '/':
    case '/dashboard':
      response.writeHead(302, { location: '/dashboard/' });
      return void response.end();
    case '/dashboard/state':
      return send(response, 200, 'application/json', JSON.stringify(await feed.state()), SECURITY_HEADERS);
    case '/dashboard/events':
      return request.method === 'HEAD' ? send(response, 200, 'text/event-stream', '', SECURITY_HEADERS) : feed.subscribe(response);
  }
  const asset = ASSETS[url.pathname];
  if (asset) return send(response, 200, asset.type, asset.body, SECURITY_HEADERS);
  send(response, 404, 'text/plain', 'not found\n');
}

function send(response: http.ServerResponse, status: number, type: string, body: string | Buffer, headers: Record<string, string> = {}): void {
  response.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...headers });
  response.end(body);
}

/** The live feed: every subscriber gets the state at once, then after each burst of commits. */
class DashboardFeed {
  readonly #options: OpsServerOptions;
  readonly #subscribers = new Set<http.ServerResponse>();
  /** Subscribers whose last write filled their buffer: nothing more until they drain, then the newest state. */
  readonly #behind = new WeakSet<http.ServerResponse>();
  /** The newest state sent, as an event. */
  #latest = '';
  #pending: NodeJS.Timeout | undefined;
  readonly #keepalive: NodeJS.Timeout;
  readonly #unsubscribe: () => void;

  constructor(options: OpsServerOptions) {
    this.#options = options;
    this.#unsubscribe = options.hub.onCommit(() => this.#schedule());
    this.#keepalive = setInterval(() => {
      for (const subscriber of this.#subscribers) this.#send(subscriber, ': keepalive\n\n');
    }, FEED_KEEPALIVE_MS);
    this.#keepalive.unref();
  }

  state(): Promise<DashboardState> {
    return readDashboardState(this.#options.store, this.#options.metrics.recentResponses());
  }

  async subscribe(response: http.ServerResponse): Promise<void> {
    response.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive', ...SECURITY_HEADERS });
    response.flushHeaders();
    this.#subscribers.add(response);
    response.on('close', () => this.#subscribers.delete(response));
    this.#write(response, event(await this.state()));
  }

  close(): void {
    this.#unsubscribe();
    clearInterval(this.#keepalive);
    clearTimeout(this.#pending);
    for (const subscriber of this.#subscribers) subscriber.end();
  }

  #schedule(): void {
    if (this.#pending || this.#subscribers.size === 0) return;
    this.#pending = setTimeout(() => {
      this.#pending = undefined;
      this.state().then(
        (state) => {
          this.#latest = event(state);
          for (const subscriber of this.#subscribers) this.#send(subscriber);
        },
        (error: unknown) => this.#options.logger.warn({ err: error }, 'dashboard state could not be read'),
      );
    }, FEED_INTERVAL_MS);
  }

  /** Sends the newest state (or a message), unless the subscriber has not read what it was sent: a stalled reader holds one state, not every one. */
  #send(subscriber: http.ServerResponse, message = this.#latest): void {
    if (!this.#behind.has(subscriber)) this.#write(subscriber, message);
  }

  #write(subscriber: http.ServerResponse, message: string): void {
    if (subscriber.write(message)) return;
    this.#behind.add(subscriber);
    const sent = this.#latest;
    subscriber.once('drain', () => {
      this.#behind.delete(subscriber);
      if (this.#latest !== sent) this.#send(subscriber);
    });
  }
}

function event(state: DashboardState): string {
  return `event: state\ndata: ${JSON.stringify(state)}\n\n`;
}

function splitAddress(listen: string): { host: string; port: number } {
  const colon = listen.lastIndexOf(':');
  const digits = listen.slice(colon + 1);
  const port = Number(digits);
  if (colon < 0 || !/^\d{1,5}$/.test(digits) || port > 65535) throw new Error(`--metrics-listen must be host:port, got "${listen}"`);
  return { host: listen.slice(0, colon).replace(/^\[(.*)\]$/, '$1') || '0.0.0.0', port };
}
