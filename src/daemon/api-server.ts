// Serves the Kubernetes-shaped vmlet API over HTTP/1.1 on a unix socket: routing, limits, watches and the console upgrade.
import fs from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import YAML from 'yaml';
import { VmletError } from '../errors.js';
import type { Backend, ConsoleAttachment, Kind, ObjectRef, VmAction, VmiAction } from './backend.js';
import { failure, statusFromError, success, type StatusCause, type StatusContext, type StatusObject } from './status.js';

export const API_GROUP = 'vmlet.io';
export const SUBRESOURCE_GROUP = 'subresources.vmlet.io';
export const API_VERSION = 'v1alpha1';
export const CONSOLE_PROTOCOL = 'vmlet-console';

/** What GET /version reports: this daemon's version, its QEMU and the accelerator settings VMs are started with. */
export interface VersionInfo {
  vmlet: string;
  /** QEMU's own first line of `-version`. */
  qemu: string;
  /** Whether /dev/kvm is usable, and why not (`reason` is "ok" when it is). */
  kvm: { usable: boolean; reason: string; durationMs?: number };
  accel: 'auto' | 'kvm' | 'tcg';
  useEmulation: boolean;
}

/** GET /version's answer when the server was started without a probe result (tests). */
const UNPROBED: VersionInfo = { vmlet: 'unknown', qemu: 'unknown', kvm: { usable: false, reason: 'not probed' }, accel: 'auto', useEmulation: false };

/** A Status cause with the vmlet error code under `code` as well as Kubernetes' `reason`. */
export type ApiStatusCause = StatusCause & { code: string };

/** Every `details.causes[]` entry also carries `code` (the same value as `reason`), so clients need not know Kubernetes' name for it. */
export function withCauseCodes(status: StatusObject): StatusObject {
  const causes = status.details?.causes;
  if (causes === undefined) return status;
  const coded: ApiStatusCause[] = causes.map((c) => ({ ...(c.field === undefined ? {} : { field: c.field }), code: c.reason, message: c.message, reason: c.reason }));
  return { ...status, details: { ...status.details, causes: coded } };
}

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
}

const KINDS: Record<string, Kind> = { virtualmachineinstances: 'VirtualMachineInstance', virtualmachines: 'VirtualMachine' };
const PLURAL: Record<Kind, string> = { VirtualMachineInstance: 'virtualmachineinstances', VirtualMachine: 'virtualmachines' };
const VMI_ACTIONS: readonly string[] = ['pause', 'unpause', 'softreboot', 'reset'] satisfies VmiAction[];
const VM_ACTIONS: readonly string[] = ['start', 'stop', 'restart'] satisfies VmAction[];
/** How much of an unwanted body is read and thrown away so that the client sees the error answer. */
const DRAIN_LIMIT_BYTES = 64 * 1024 * 1024;
const DRAIN_TIMEOUT_MS = 5_000;

function drainBody(req: http.IncomingMessage, limit: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve) => {
    let n = 0;
    const done = (): void => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', done);
      req.off('error', done);
      req.off('close', done);
      resolve();
    };
    const onData = (c: Buffer): void => {
      n += c.length;
      if (n > limit) done();
    };
    const timer = setTimeout(done, timeoutMs);
    req.on('data', onData);
    req.on('end', done);
    req.on('error', done);
    req.on('close', done);
    req.resume();
  });
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

type Route =
  | { type: 'healthz' }
  | { type: 'version' }
  | { type: 'list'; kind: Kind; namespace: string | undefined }
  | { type: 'object'; ref: ObjectRef }
  | { type: 'vmiAction'; ref: ObjectRef; action: VmiAction }
  | { type: 'vmAction'; ref: ObjectRef; action: VmAction }
  | { type: 'console'; ref: ObjectRef }
  | { type: 'qmp'; ref: ObjectRef }
  | { type: 'events'; namespace: string | undefined };

interface ParsedRequest {
  route: Route;
  query: URLSearchParams;
}

function notFound(): VmletError {
  return new VmletError('NOT_FOUND', 'the server could not find the requested resource');
}

function checkLabel(what: string, value: string): string {
  if (!DNS_LABEL.test(value)) throw new VmletError('INVALID_PATH', `invalid ${what} in path: must be a DNS label (lowercase letters, digits, '-', at most 63)`);
  return value;
}

/** Decodes and checks the path; names and namespaces must be DNS labels, so nothing like `..%2F` reaches the backend. */
export function parseRequestUrl(url: string): ParsedRequest {
  if (!url.startsWith('/')) throw notFound();
  const q = url.indexOf('?');
  const rawPath = q < 0 ? url : url.slice(0, q);
  const query = new URLSearchParams(q < 0 ? '' : url.slice(q + 1));
  const seg = rawPath.slice(1).split('/').map((s) => {
    try {
      return decodeURIComponent(s);
    } catch {
      throw new VmletError('INVALID_PATH', 'malformed percent-encoding in path');
    }
  });
  if (seg.some((s) => s === '')) throw notFound();
  const [a, b, c, ...rest] = seg;
  if (seg.length === 1 && a === 'healthz') return { route: { type: 'healthz' }, query };
  if (seg.length === 1 && a === 'version') return { route: { type: 'version' }, query };
  if (a === 'api' && b === 'v1') {
    if (c === 'events' && rest.length === 0) return { route: { type: 'events', namespace: undefined }, query };
    if (c === 'namespaces' && rest.length === 2 && rest[1] === 'events') {
      return { route: { type: 'events', namespace: checkLabel('namespace', rest[0] ?? '') }, query };
    }
    throw notFound();
  }
  if (a !== 'apis' || (b !== API_GROUP && b !== SUBRESOURCE_GROUP) || c !== API_VERSION) throw notFound();
  const sub = b === SUBRESOURCE_GROUP;
  if (rest.length === 1 && !sub) {
    const kind = KINDS[rest[0] ?? ''];
    if (!kind) throw notFound();
    return { route: { type: 'list', kind, namespace: undefined }, query };
  }
  if (rest[0] !== 'namespaces' || rest.length < 3 || rest.length > 5) throw notFound();
  const namespace = checkLabel('namespace', rest[1] ?? '');
  const kind = KINDS[rest[2] ?? ''];
  if (!kind) throw notFound();
  if (rest.length === 3) {
    if (sub) throw notFound();
    return { route: { type: 'list', kind, namespace }, query };
  }
  const ref: ObjectRef = { kind, namespace, name: checkLabel('name', rest[3] ?? '') };
  if (rest.length === 4) {
    if (sub) throw notFound();
    return { route: { type: 'object', ref }, query };
  }
  const verb = rest[4] ?? '';
  if (kind === 'VirtualMachineInstance') {
    if (VMI_ACTIONS.includes(verb)) return { route: { type: 'vmiAction', ref, action: verb as VmiAction }, query };
    if (verb === 'console') return { route: { type: 'console', ref }, query };
    if (verb === 'qmp') return { route: { type: 'qmp', ref }, query };
  } else if (VM_ACTIONS.includes(verb)) {
    return { route: { type: 'vmAction', ref, action: verb as VmAction }, query };
  }
  throw notFound();
}

function methodsOf(route: Route): string[] {
  switch (route.type) {
    case 'list':
      return route.namespace === undefined ? ['GET'] : ['GET', 'POST'];
    case 'object':
      return ['GET', 'PUT', 'DELETE'];
    case 'vmiAction':
    case 'vmAction':
      return ['PUT'];
    case 'qmp':
      return ['POST'];
    default:
      return ['GET'];
  }
}

function contextOf(route: Route): StatusContext {
  if ('ref' in route) return { kind: PLURAL[route.ref.kind], name: route.ref.name };
  if (route.type === 'list') return { kind: PLURAL[route.kind] };
  if (route.type === 'events') return { kind: 'events' };
  return {};
}

/** `fieldSelector=key=value` (or `key==value`); only the one key given is understood. */
function selectedName(query: URLSearchParams, key: string): string | undefined {
  const sel = query.get('fieldSelector');
  if (sel === null || sel === '') return undefined;
  let name: string | undefined;
  for (const term of sel.split(',')) {
    const m = /^([^=!]+)==?(.*)$/.exec(term);
    if (!m || m[1] !== key) throw new VmletError('BAD_REQUEST', `unsupported fieldSelector "${term}" (only ${key}=NAME)`);
    name = checkLabel('name', m[2] ?? '');
  }
  return name;
}

function isWatch(query: URLSearchParams): boolean {
  const w = query.get('watch');
  return w === 'true' || w === '1';
}

const YAML_TYPES = new Set(['application/yaml', 'application/x-yaml', 'text/yaml', 'text/x-yaml']);

/** JSON or (single-document) YAML body → value; BAD_REQUEST when it does not parse. */
export function decodeBody(buf: Buffer, contentType: string | undefined): unknown {
  const type = (contentType ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
  if (buf.length === 0) throw new VmletError('BAD_REQUEST', 'the request body is empty');
  const text = buf.toString('utf8');
  if (type === '' || type === 'application/json') {
    try {
      return JSON.parse(text) as unknown;
    } catch (e) {
      throw new VmletError('BAD_REQUEST', `the request body is not valid JSON: ${(e as Error).message}`, { cause: e });
    }
  }
  if (YAML_TYPES.has(type)) {
    const docs = YAML.parseAllDocuments(text);
    if (docs.length !== 1) throw new VmletError('BAD_REQUEST', `the request body must hold exactly one YAML document, not ${docs.length}`);
    const doc = docs[0]!;
    if (doc.errors.length > 0) throw new VmletError('BAD_REQUEST', `the request body is not valid YAML: ${doc.errors[0]!.message}`);
    try {
      return doc.toJS({ maxAliasCount: 100 }) as unknown;
    } catch (e) {
      throw new VmletError('BAD_REQUEST', `the request body is not valid YAML: ${(e as Error).message}`, { cause: e });
    }
  }
  throw new VmletError('UNSUPPORTED_MEDIA_TYPE', `unsupported Content-Type "${type}" (use application/json or application/yaml)`);
}

function checkIdentity(body: unknown, namespace: string, name: string | undefined): void {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new VmletError('BAD_REQUEST', 'the request body must be an object');
  const md = (body as { metadata?: unknown }).metadata;
  if (typeof md !== 'object' || md === null) return;
  const m = md as { namespace?: unknown; name?: unknown };
  if (typeof m.namespace === 'string' && m.namespace !== namespace) {
    throw new VmletError('NAMESPACE_MISMATCH', `the namespace of the object (${m.namespace}) does not match the namespace of the request (${namespace})`);
  }
  if (name !== undefined && typeof m.name === 'string' && m.name !== name) {
    throw new VmletError('NAME_MISMATCH', `the name of the object (${m.name}) does not match the name in the path (${name})`);
  }
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function rawResponse(status: StatusObject, extra = ''): string {
  const text = JSON.stringify(status);
  const phrase = http.STATUS_CODES[status.code] ?? 'Error';
  return `HTTP/1.1 ${status.code} ${phrase}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n${extra}\r\n${text}`;
}

function waitWritable(stream: NodeJS.WritableStream & { destroyed?: boolean }): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      stream.off('drain', done);
      stream.off('close', done);
      resolve();
    };
    stream.on('drain', done);
    stream.on('close', done);
  });
}

export class ApiServer {
  private readonly server: http.Server;
  private readonly upgraded = new Set<Duplex>();
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
      // How often Node checks the two timeouts above; its default (30 s) would make short timeouts meaningless.
      connectionsCheckingInterval: Math.max(50, Math.min(1_000, Math.floor(headersTimeout / 4))),
      maxHeaderSize: 16 * 1024,
    });
    this.server.maxConnections = opts.maxConnections ?? 256;
    this.server.setTimeout(opts.idleTimeoutMs ?? 120_000);
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
            ? new VmletError('SOCKET_IN_USE', `another process is listening on ${p}`, { cause: e })
            : new VmletError('LISTEN_FAILED', `cannot listen on ${p}: ${e.code ?? e.message}`, { cause: e }),
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

  private onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    const status =
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? failure('REQUEST_TIMEOUT', 'the request was not received in time', 408)
        : err.code === 'HPE_HEADER_OVERFLOW'
          ? failure('BAD_REQUEST', 'request headers too large', 431)
          : failure('BAD_REQUEST', 'malformed HTTP request', 400);
    this.opts.logger.debug({ code: err.code }, 'client error');
    // No answer on a reset connection, or where a response is already being written.
    if (err.code !== 'ECONNRESET' && socket.writable && !(socket as net.Socket & { _httpMessage?: unknown })._httpMessage) {
      socket.end(rawResponse(status));
    }
    socket.destroy();
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
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
    if (status.code === 405) res.setHeader('Allow', (e as { allow?: string }).allow ?? '');
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
      const allowed = methodsOf(route);
      const method = req.method ?? 'GET';
      if (!allowed.includes(method)) {
        throw Object.assign(new VmletError('METHOD_NOT_ALLOWED', `method ${method} is not allowed here (allowed: ${allowed.join(', ')})`), {
          allow: allowed.join(', '),
        });
      }
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
      case 'version':
        sendJson(res, 200, { ...(this.opts.version ?? UNPROBED), apiVersion: `${API_GROUP}/${API_VERSION}`, nodejs: process.version });
        return;
      case 'list': {
        if (method === 'POST') {
          const ns = route.namespace!;
          const body = await this.readBody(req);
          checkIdentity(body, ns, undefined);
          const name = (body as { metadata?: { name?: unknown } }).metadata?.name;
          if (typeof name === 'string') ctx.name = name;
          sendJson(res, 201, await b.create(route.kind, ns, body));
          return;
        }
        const name = selectedName(query, 'metadata.name');
        if (isWatch(query)) return this.serveWatch(req, res, route.kind, route.namespace, name, ctx, log);
        let items = await b.list(route.kind, route.namespace);
        if (name !== undefined) items = items.filter((o) => o.metadata.name === name);
        sendJson(res, 200, { apiVersion: `${API_GROUP}/${API_VERSION}`, kind: `${route.kind}List`, metadata: {}, items });
        return;
      }
      case 'events': {
        const name = selectedName(query, 'involvedObject.name');
        if (isWatch(query)) return this.serveWatch(req, res, 'Event', route.namespace, name, { kind: 'events' }, log);
        sendJson(res, 200, { apiVersion: 'v1', kind: 'EventList', metadata: {}, items: await b.events(route.namespace, name) });
        return;
      }
      case 'object': {
        const ref = route.ref;
        if (method === 'GET') sendJson(res, 200, await b.get(ref));
        else if (method === 'DELETE') sendJson(res, 200, await b.delete(ref));
        else {
          const body = await this.readBody(req);
          checkIdentity(body, ref.namespace, ref.name);
          sendJson(res, 200, await b.replace(ref, body));
        }
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
        const body = await this.readBody(req);
        if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new VmletError('BAD_REQUEST', 'the QMP command must be a JSON object');
        sendJson(res, 200, (await b.qmp(route.ref, body)) ?? null);
        return;
      }
      case 'console':
        throw new VmletError('UPGRADE_REQUIRED', `the console needs "Connection: Upgrade" and "Upgrade: ${CONSOLE_PROTOCOL}"`);
    }
  }

  /** Reads at most maxBodyBytes; BODY_TOO_LARGE as soon as the declared or received size exceeds it. */
  private async readBody(req: http.IncomingMessage): Promise<unknown> {
    const declared = req.headers['content-length'];
    const tooLarge = (): VmletError => new VmletError('BODY_TOO_LARGE', `the request body exceeds ${this.maxBody} bytes`);
    if (declared !== undefined && Number(declared) > this.maxBody) throw tooLarge();
    const buf = await new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let n = 0;
      const cleanup = (): void => {
        req.off('data', onData);
        req.off('end', onEnd);
        req.off('error', onErr);
      };
      const onData = (c: Buffer): void => {
        n += c.length;
        if (n > this.maxBody) {
          cleanup();
          req.pause();
          reject(tooLarge());
          return;
        }
        chunks.push(c);
      };
      const onEnd = (): void => {
        cleanup();
        resolve(Buffer.concat(chunks));
      };
      const onErr = (e: Error): void => {
        cleanup();
        reject(new VmletError('BAD_REQUEST', 'the request body could not be read', { cause: e }));
      };
      req.on('data', onData);
      req.on('end', onEnd);
      req.on('error', onErr);
    });
    return decodeBody(buf, req.headers['content-type']);
  }

  /** Newline-delimited JSON WatchEvents until the backend ends or the client goes away (which aborts the backend). */
  private async serveWatch(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    kind: Kind | 'Event',
    namespace: string | undefined,
    name: string | undefined,
    ctx: StatusContext,
    log: Logger,
  ): Promise<void> {
    const ac = new AbortController();
    const onClose = (): void => ac.abort();
    res.on('close', onClose);
    req.socket.setTimeout(0);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache' });
    res.flushHeaders();
    log.debug({ kind, namespace, name }, 'watch started');
    try {
      for await (const ev of this.opts.backend.watch(kind, namespace, name, ac.signal)) {
        if (ac.signal.aborted) break;
        if (!res.write(`${JSON.stringify(ev)}\n`)) await waitWritable(res);
      }
    } catch (e) {
      if (!ac.signal.aborted && !res.destroyed) res.write(`${JSON.stringify({ type: 'ERROR', object: withCauseCodes(statusFromError(e, ctx)) })}\n`);
    } finally {
      res.off('close', onClose);
      ac.abort();
      if (!res.writableEnded) res.end();
      log.debug('watch ended');
    }
  }

  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const log = this.opts.logger.child({ req: ++this.seq, method: req.method, url: req.url, upgrade: true });
    this.upgraded.add(socket);
    socket.on('close', () => this.upgraded.delete(socket));
    socket.on('error', (e) => log.debug({ err: e }, 'console socket error'));
    this.serveConsole(req, socket, head, log).catch((e: unknown) => {
      log.error({ err: e }, 'console handler failed');
      socket.destroy();
    });
  }

  private async serveConsole(req: http.IncomingMessage, socket: Duplex, head: Buffer, log: Logger): Promise<void> {
    let ctx: StatusContext = {};
    let att: ConsoleAttachment;
    try {
      const { route, query } = parseRequestUrl(req.url ?? '/');
      ctx = contextOf(route);
      if (route.type !== 'console') throw new VmletError('BAD_REQUEST', 'only the console subresource can be upgraded');
      if (req.method !== 'GET') throw new VmletError('METHOD_NOT_ALLOWED', `method ${req.method ?? ''} is not allowed here (allowed: GET)`);
      if ((req.headers.upgrade ?? '').toLowerCase() !== CONSOLE_PROTOCOL) throw new VmletError('BAD_REQUEST', `unsupported upgrade protocol (use ${CONSOLE_PROTOCOL})`);
      const w = query.get('write');
      att = await this.opts.backend.console(route.ref, { write: w === 'true' || w === '1' });
    } catch (e) {
      const status = withCauseCodes(statusFromError(e, ctx));
      log.debug({ code: status.reason }, 'console refused');
      if (socket.writable) socket.end(rawResponse(status));
      return;
    }
    if (socket.destroyed) {
      att.close();
      return;
    }
    (socket as net.Socket).setTimeout?.(0);
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${CONSOLE_PROTOCOL}\r\nVmlet-Console-Writable: ${att.writable}\r\n\r\n`,
    );
    log.info({ writable: att.writable }, 'console attached');
    const input = (data: Buffer): void => {
      if (!att.writable) return; // a read-only attachment ignores keystrokes
      try {
        att.write(data);
      } catch (e) {
        log.debug({ err: e }, 'console write refused');
      }
    };
    if (head.length > 0) input(head);
    socket.on('data', input);
    // The client half-closing (or going away) ends the attachment; the output loop then ends our side.
    socket.on('end', () => att.close());
    socket.on('close', () => att.close());
    try {
      for await (const chunk of att.output) {
        if (socket.destroyed) break;
        if (!socket.write(chunk)) await waitWritable(socket);
      }
    } finally {
      att.close();
      socket.end();
      log.info('console detached');
    }
  }
}

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
  if (err.code !== 'ECONNREFUSED') throw new VmletError('SOCKET_PATH_INVALID', `cannot tell whether ${p} is in use: ${err.code ?? err.message}`, { cause: err });
  await fs.unlink(p).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw new VmletError('LISTEN_FAILED', `cannot remove the stale socket ${p}`, { cause: e });
  });
}
