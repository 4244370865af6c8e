// Serves the Kubernetes-shaped vmlet API over HTTP/1.1 on a unix socket: the socket's life, connection limits and timeouts, and dispatch of each route to the backend.
import { performance } from 'node:perf_hooks';
import { startTraces } from './start-trace.js';
import fs from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { httpStatusOf } from '../error-codes.js';
import { VmletError } from '../errors.js';
import type { Backend } from './backend.js';
import { checkReadOnly, peerAllowed, peerOf, type SocketAccess } from './api-access.js';
import type { ClientConnections } from './api-client-limit.js';
import type { PeerCred } from '../sys/scm.js';
import { checkIdentity, DRAIN_LIMIT_BYTES, DRAIN_TIMEOUT_MS, drainBody, nameOf, readBody } from './api-body.js';
import { CONSOLE_PROTOCOL, serveConsole } from './api-console.js';
import { rawResponse, sendJson, withCauseCodes } from './api-response.js';
import { allowHeaderOf, API_GROUP, API_VERSION, checkMethod, contextOf, isWatch, parseRequestUrl, selectedName, type Route } from './api-router.js';
import { serveWatch } from './api-watch.js';
import { failure, statusFromError, success, type StatusContext, type StatusObject } from './status.js';
import { isRecord, type AccelSetting } from '../api/vocabulary.js';

export { API_GROUP, API_VERSION, SUBRESOURCE_GROUP, parseRequestUrl } from './api-router.js';
export { decodeBody } from './api-body.js';
export { CONSOLE_PROTOCOL } from './api-console.js';
export { withCauseCodes, type ApiStatusCause } from './api-response.js';

/** What GET /version reports: this daemon's version, its QEMU and the accelerator settings VMs are started with. */
export interface VersionInfo {
  vmlet: string;
  /** QEMU's own first line of `-version`. */
  qemu: string;
  /** Whether /dev/kvm is usable, and why not (`reason` is "ok" when it is). */
  kvm: { usable: boolean; reason: string; durationMs?: number };
  accel: AccelSetting;
  useEmulation: boolean;
}

/** GET /version's answer when the server was started without a probe result (tests). */
const UNPROBED: VersionInfo = { vmlet: 'unknown', qemu: 'unknown', kvm: { usable: false, reason: 'not probed' }, accel: 'auto', useEmulation: false };

export interface ApiServerOptions {
  backend: Backend;
  socketPath: string;
  logger: Logger;
  /** Reported by GET /version. */
  version?: VersionInfo;
  /** Request body limit in bytes; default 1 MiB. */
  maxBodyBytes?: number;
  /** Time allowed to receive the request headers; default 10 s. */
  headersTimeoutMs?: number;
  /** Time allowed to receive the whole request (headers and body); default 30 s. Never applies to a response in progress. */
  requestTimeoutMs?: number;
  /** A connection with no traffic for this long is closed (not watches and consoles); default 120 s. */
  idleTimeoutMs?: number;
  /** Keep-alive wait between requests; default 5 s. */
  keepAliveTimeoutMs?: number;
  /** Concurrent connections; more are dropped at accept. Default 256. */
  maxConnections?: number;
  /** Mode of the socket file; default 0o660. */
  socketMode?: number;
  /** Who may connect (root, and the group the file is given to) and whether only reads are served. */
  access?: SocketAccess;
  /** The node image store (standalone); absent: /images answers NOT_FOUND. */
  images?: ImageApi;
  /** Open connections per client uid (limits.maxConnectionsPerClient), shared by the daemon's sockets; absent: no limit. */
  clientConnections?: ClientConnections;
}

/** The node image store as the API serves it: records are plain JSON. */
export interface ImageApi {
  list(): object[];
  /** IMAGE_NOT_FOUND when absent. */
  get(ref: string): object;
  /** Imports a file on the node (an image archive, or a qcow2/raw disk). */
  import(file: string, name: string | undefined): Promise<object>;
  /** IMAGE_IN_USE while a VMI uses it. */
  remove(ref: string): Promise<object>;
}

/** Whether Node is already writing a response on this socket (then no raw answer may be written). */
function hasResponseInProgress(socket: Duplex): boolean {
  return '_httpMessage' in socket && Boolean(socket._httpMessage);
}

export class ApiServer {
  private readonly server: http.Server;
  private readonly upgraded = new Set<Duplex>();
  /** Each accepted connection's peer, for the log of what it changes. */
  private readonly peers = new WeakMap<object, PeerCred>();
  /** Connections from peers that may not use this socket: answered once, never served. */
  private readonly refused = new WeakSet<object>();
  private readonly maxBody: number;
  private seq = 0;
  private listening = false;

  constructor(private readonly opts: ApiServerOptions) {
    this.maxBody = opts.maxBodyBytes ?? 1024 * 1024;
    const headersTimeout = opts.headersTimeoutMs ?? 10_000;
    const requestTimeout = Math.max(opts.requestTimeoutMs ?? 30_000, headersTimeout);
    this.server = http.createServer({
      headersTimeout,
      requestTimeout,
      keepAliveTimeout: opts.keepAliveTimeoutMs ?? 5_000,
      // How often Node checks the two timeouts above: its default (30 s) would make short timeouts meaningless, and
      // every second was most of an idle daemon's CPU; half the headers timeout keeps a slow client's grace within 1.5×.
      connectionsCheckingInterval: Math.max(50, Math.floor(headersTimeout / 2)),
      maxHeaderSize: 16 * 1024,
    });
    this.server.maxConnections = opts.maxConnections ?? 256;
    this.server.setTimeout(opts.idleTimeoutMs ?? 120_000);
    this.server.on('connection', (sock: net.Socket) => this.onConnection(sock));
    this.server.on('request', (req, res) => this.onRequest(req, res));
    this.server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head));
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.onClientError(err, socket));
  }

  /** Creates and starts a server. */
  static async listen(opts: ApiServerOptions): Promise<ApiServer> {
    const s = new ApiServer(opts);
    await s.listen();
    return s;
  }

  get socketPath(): string {
    return this.opts.socketPath;
  }

  /** Removes a stale socket file (refusing when a live daemon answers on it), listens, and sets the file's mode. */
  async listen(): Promise<void> {
    const p = this.opts.socketPath;
    await fs.mkdir(path.dirname(p), { recursive: true });
    await removeStaleSocket(p);
    await new Promise<void>((resolve, reject) => {
      const onError = (e: NodeJS.ErrnoException): void => {
        reject(
          e.code === 'EADDRINUSE'
            ? new VmletError('SOCKET_IN_USE', `another process is listening on ${p}`, { cause: e, errno: e.code })
            : new VmletError('LISTEN_FAILED', `cannot listen on ${p}: ${e.code ?? e.message}`, {
                cause: e,
                ...(e.code === undefined ? {} : { errno: e.code }),
              }),
        );
      };
      this.server.once('error', onError);
      this.server.listen(p, () => {
        this.server.off('error', onError);
        resolve();
      });
    });
    this.listening = true;
    await fs.chmod(p, this.opts.socketMode ?? 0o660);
    if (this.opts.access?.gid !== undefined) await fs.chown(p, 0, this.opts.access.gid);
    this.server.on('error', (e) => this.opts.logger.error({ err: e }, 'api server error'));
    this.opts.logger.info({ socket: p }, 'api listening');
  }

  /** Stops accepting, ends every connection (watches and consoles too) and removes the socket file. */
  async close(): Promise<void> {
    if (!this.listening) return;
    this.listening = false;
    for (const s of this.upgraded) s.destroy();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
    await fs.unlink(this.opts.socketPath).catch(() => undefined);
  }

  /** The file's mode already keeps others out; the kernel's word on the peer is checked again, and kept for the log. */
  private onConnection(sock: net.Socket): void {
    const cred = peerOf(sock);
    if (!cred || !peerAllowed(cred, this.opts.access?.gid)) {
      this.opts.logger.warn({ peer: cred }, 'connection refused: the peer is neither root nor in the socket group');
      this.refuse(sock, failure('PEER_NOT_ALLOWED', 'only root and the socket group may use this socket', httpStatusOf('PEER_NOT_ALLOWED')));
      return;
    }
    const limit = this.opts.clientConnections;
    if (limit && !limit.acquire(cred.uid)) {
      this.opts.logger.warn({ peer: cred, max: limit.max }, 'connection refused: the client holds too many connections');
      const msg = `uid ${cred.uid} already holds ${limit.max} connections to this daemon (limits.maxConnectionsPerClient); close one and retry`;
      this.refuse(sock, failure('API_TOO_MANY_CONNECTIONS', msg, httpStatusOf('API_TOO_MANY_CONNECTIONS')), 'Retry-After: 1\r\n');
      return;
    }
    if (limit) sock.once('close', () => limit.release(cred.uid));
    this.peers.set(sock, cred);
  }

  /** Answers `status` and closes. The HTTP parser keeps reading (closing with unread bytes would reset the connection before the client reads the answer); what it parses is never served. */
  private refuse(sock: net.Socket, status: StatusObject, extraHeaders = ''): void {
    this.refused.add(sock);
    sock.end(rawResponse(status, extraHeaders));
    sock.setTimeout(2_000, () => sock.destroy());
  }

  private onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    const status =
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? failure('REQUEST_TIMEOUT', 'the request was not received in time', httpStatusOf('REQUEST_TIMEOUT'))
        : err.code === 'HPE_HEADER_OVERFLOW'
          ? failure('BAD_REQUEST', 'request headers too large', 431)
          : failure('BAD_REQUEST', 'malformed HTTP request', 400);
    this.opts.logger.debug({ code: err.code }, 'client error');
    // No answer on a reset connection, or where a response is already being written.
    if (err.code !== 'ECONNRESET' && socket.writable && !hasResponseInProgress(socket)) {
      socket.end(rawResponse(status));
    }
    socket.destroy();
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (this.refused.has(req.socket)) return;
    const log = this.opts.logger.child({ req: ++this.seq, method: req.method, url: req.url });
    const started = Date.now();
    res.on('finish', () => log.debug({ status: res.statusCode, ms: Date.now() - started }, 'request done'));
    this.handle(req, res, log).catch((e: unknown) => {
      log.error({ err: e }, 'request handler failed');
      if (!res.headersSent) sendJson(res, 500, failure('INTERNAL', 'internal error'));
      else res.destroy();
    });
  }

  private sendError(req: http.IncomingMessage, res: http.ServerResponse, e: unknown, ctx: StatusContext, log: Logger): void {
    const status = withCauseCodes(statusFromError(e, ctx));
    if (status.code >= 500) log.error({ err: e, code: status.reason }, 'request failed');
    else log.debug({ code: status.reason, message: status.message }, 'request refused');
    if (res.headersSent) {
      res.destroy();
      return;
    }
    if (status.code === 405) res.setHeader('Allow', allowHeaderOf(e));
    if (req.complete || req.destroyed) {
      sendJson(res, status.code, status);
      return;
    }
    // The client is still sending: discard the rest (bounded) so it reads our answer instead of EPIPE, then close.
    res.setHeader('Connection', 'close');
    void drainBody(req, DRAIN_LIMIT_BYTES, DRAIN_TIMEOUT_MS).then(() => sendJson(res, status.code, status));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse, log: Logger): Promise<void> {
    let ctx: StatusContext = {};
    try {
      const { route, query } = parseRequestUrl(req.url ?? '/');
      ctx = contextOf(route);
      const method = req.method ?? 'GET';
      checkMethod(route, method);
      if (this.opts.access?.readOnly) checkReadOnly(route, method);
      if (method !== 'GET') log.info({ peer: this.peers.get(req.socket) }, 'request');
      await this.dispatch(route, query, method, req, res, ctx, log);
    } catch (e) {
      this.sendError(req, res, e, ctx, log);
    }
  }

  /** `ctx` is the error context of the request; creating fills in the name from the body. */
  private async dispatch(
    route: Route,
    query: URLSearchParams,
    method: string,
    req: http.IncomingMessage,
    res: http.ServerResponse,
    ctx: StatusContext,
    log: Logger,
  ): Promise<void> {
    const b = this.opts.backend;
    switch (route.type) {
      case 'healthz':
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.end('ok');
        return;
      case 'startTraces':
        sendJson(res, 200, { items: startTraces.recent() });
        return;
      case 'version':
        sendJson(res, 200, { ...(this.opts.version ?? UNPROBED), apiVersion: `${API_GROUP}/${API_VERSION}`, nodejs: process.version });
        return;
      case 'list': {
        const ns = route.namespace;
        if (method === 'POST' && ns !== undefined) {
          const body = checkIdentity(await readBody(req, this.maxBody), ns, undefined);
          const name = nameOf(body);
          if (name !== undefined) ctx.name = name;
          const at = performance.now();
          const created = await b.create(route.kind, ns, body);
          if (route.kind === 'VirtualMachineInstance' && created.metadata.uid !== undefined) {
            startTraces.begin(created.metadata.uid, created.metadata.name, 'api.received', at);
            startTraces.mark(created.metadata.uid, 'api.created');
          }
          sendJson(res, 201, created);
          return;
        }
        const name = selectedName(query, 'metadata.name');
        if (isWatch(query)) return serveWatch(b, req, res, { kind: route.kind, namespace: ns, name, ctx }, log);
        let items = await b.list(route.kind, ns);
        if (name !== undefined) items = items.filter((o) => o.metadata.name === name);
        sendJson(res, 200, { apiVersion: `${API_GROUP}/${API_VERSION}`, kind: `${route.kind}List`, metadata: {}, items });
        return;
      }
      case 'events': {
        const name = selectedName(query, 'involvedObject.name');
        if (isWatch(query)) return serveWatch(b, req, res, { kind: 'Event', namespace: route.namespace, name, ctx: { kind: 'events' } }, log);
        sendJson(res, 200, { apiVersion: 'v1', kind: 'EventList', metadata: {}, items: await b.events(route.namespace, name) });
        return;
      }
      case 'object': {
        const ref = route.ref;
        if (method === 'GET') sendJson(res, 200, await b.get(ref));
        else if (method === 'DELETE') sendJson(res, 200, await b.delete(ref));
        else sendJson(res, 200, await b.replace(ref, checkIdentity(await readBody(req, this.maxBody), ref.namespace, ref.name)));
        return;
      }
      case 'vmiAction':
        await b.vmiAction(route.ref, route.action);
        sendJson(res, 202, success(`${route.action} accepted`, 202));
        return;
      case 'vmAction':
        await b.vmAction(route.ref, route.action);
        sendJson(res, 202, success(`${route.action} accepted`, 202));
        return;
      case 'qmp': {
        const body = await readBody(req, this.maxBody);
        if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new VmletError('BAD_REQUEST', 'the QMP command must be a JSON object');
        sendJson(res, 200, (await b.qmp(route.ref, body)) ?? null);
        return;
      }
      case 'images':
      case 'image':
        return this.images(route, method, req, res);
      case 'console':
        throw new VmletError('UPGRADE_REQUIRED', `the console needs "Connection: Upgrade" and "Upgrade: ${CONSOLE_PROTOCOL}"`);
    }
  }

  private async images(route: Route & { type: 'images' | 'image' }, method: string, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const images = this.opts.images;
    if (images === undefined) throw new VmletError('NOT_FOUND', 'this daemon has no image store (cluster mode)');
    if (route.type === 'image') {
      sendJson(res, 200, method === 'DELETE' ? await images.remove(route.image) : images.get(route.image));
      return;
    }
    if (method === 'GET') {
      sendJson(res, 200, { apiVersion: `${API_GROUP}/${API_VERSION}`, kind: 'ImageList', metadata: {}, items: images.list() });
      return;
    }
    const body = await readBody(req, this.maxBody);
    const file = isRecord(body) ? body['file'] : undefined;
    const name = isRecord(body) ? body['name'] : undefined;
    if (typeof file !== 'string' || !file.startsWith('/') || (name !== undefined && typeof name !== 'string')) {
      throw new VmletError('BAD_REQUEST', 'an import is {"file": "/absolute/path/on/the/node", "name": "optional name[:tag]"}');
    }
    sendJson(res, 201, await images.import(file, name));
  }

  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    if (this.refused.has(socket)) return void socket.destroy();
    const log = this.opts.logger.child({ req: ++this.seq, method: req.method, url: req.url, upgrade: true });
    this.upgraded.add(socket);
    socket.on('close', () => this.upgraded.delete(socket));
    socket.on('error', (e) => log.debug({ err: e }, 'console socket error'));
    if (this.opts.access?.readOnly) {
      const refusal = new VmletError('READ_ONLY_SOCKET', "this socket only reads (get, list, watch, events); consoles are served on the daemon's main socket");
      socket.end(rawResponse(statusFromError(refusal, {})));
      return;
    }
    log.info({ peer: this.peers.get(socket) }, 'console requested');
    serveConsole(this.opts.backend, req, socket, head, log).catch((e: unknown) => {
      log.error({ err: e }, 'console handler failed');
      socket.destroy();
    });
  }
}

/** Removes a socket file that no daemon answers on; refuses anything else at that path. */
async function removeStaleSocket(p: string): Promise<void> {
  let st;
  try {
    st = await fs.lstat(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new VmletError('LISTEN_FAILED', `cannot inspect ${p}`, { cause: e });
  }
  if (!st.isSocket()) throw new VmletError('SOCKET_PATH_INVALID', `${p} exists and is not a socket; refusing to remove it`);
  const err = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
    const c = net.connect(p);
    c.once('connect', () => {
      c.destroy();
      resolve(undefined);
    });
    c.once('error', (e: NodeJS.ErrnoException) => resolve(e));
  });
  if (err === undefined) throw new VmletError('SOCKET_IN_USE', `another vmlet daemon is listening on ${p}`);
  if (err.code === 'ENOENT') return;
  if (err.code !== 'ECONNREFUSED')
    throw new VmletError('SOCKET_PATH_INVALID', `cannot tell whether ${p} is in use: ${err.code ?? err.message}`, { cause: err });
  await fs.unlink(p).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw new VmletError('LISTEN_FAILED', `cannot remove the stale socket ${p}`, { cause: e });
  });
}
