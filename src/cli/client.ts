// A tiny HTTP client for the vmlet unix-socket API: JSON calls, newline-delimited watch streams and the console upgrade.
import http from 'node:http';
import type net from 'node:net';
import { isErrorCode } from '../error-codes.js';
import { VmletError } from '../errors.js';
import type { Plural } from '../api/vocabulary.js';

export const GROUP_PATH = '/apis/vmlet.io/v1alpha1';
export const SUBRESOURCE_PATH = '/apis/subresources.vmlet.io/v1alpha1';

export type { Plural } from '../api/vocabulary.js';

/** Kubernetes-shaped paths; names are percent-encoded (the server refuses anything that is not a DNS label). */
export const paths = {
  list: (plural: Plural, namespace: string | undefined): string =>
    namespace === undefined ? `${GROUP_PATH}/${plural}` : `${GROUP_PATH}/namespaces/${encodeURIComponent(namespace)}/${plural}`,
  object: (plural: Plural, namespace: string, name: string): string =>
    `${GROUP_PATH}/namespaces/${encodeURIComponent(namespace)}/${plural}/${encodeURIComponent(name)}`,
  subresource: (plural: Plural, namespace: string, name: string, sub: string): string =>
    `${SUBRESOURCE_PATH}/namespaces/${encodeURIComponent(namespace)}/${plural}/${encodeURIComponent(name)}/${sub}`,
  events: (namespace: string | undefined): string =>
    namespace === undefined ? '/api/v1/events' : `/api/v1/namespaces/${encodeURIComponent(namespace)}/events`,
};

export interface ApiResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  /** Parsed JSON, or undefined when the body is not JSON. */
  body: unknown;
}

/**
 * A failed API call: `reason` is the daemon's Status reason (its error code, or HTTP_<status>), `code` the same
 * when this CLI knows it (else DAEMON_ERROR), `httpStatus` the HTTP status.
 */
export class ApiError extends VmletError {
  readonly reason: string;
  readonly httpStatus: number;
  readonly status: unknown;
  constructor(reason: string, message: string, httpStatus: number, status: unknown) {
    super(isErrorCode(reason) ? reason : 'DAEMON_ERROR', message);
    this.reason = reason;
    this.name = 'ApiError';
    this.httpStatus = httpStatus;
    this.status = status;
  }
}

export interface RequestOptions {
  body?: unknown;
  /** Send `body` as is (a string or Buffer) with this Content-Type instead of JSON. */
  contentType?: string;
  signal?: AbortSignal;
  headers?: Record<string, string>;
}

export interface ClientOptions {
  socketPath: string;
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** A watch stream as one parsed value per line (undefined for a line that is not JSON); a break while `signal` is not aborted becomes `broken(e)`. */
export async function* jsonLines(body: AsyncIterable<unknown>, signal: AbortSignal, broken: (e: unknown) => Error): AsyncGenerator<unknown> {
  let buf = '';
  try {
    for await (const chunk of body) {
      buf += (chunk as Buffer).toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) yield parseJson(line);
      }
    }
  } catch (e) {
    if (!signal.aborted) throw broken(e);
  }
}

/** Turns a non-2xx response into an ApiError from its Status object (or from the bare HTTP status). */
export function errorFromResponse(status: number, body: unknown, text: string): ApiError {
  if (typeof body === 'object' && body !== null && (body as { kind?: unknown }).kind === 'Status') {
    const s = body as { message?: unknown; reason?: unknown };
    const code = typeof s.reason === 'string' && s.reason !== '' ? s.reason : `HTTP_${status}`;
    return new ApiError(code, typeof s.message === 'string' ? s.message : `HTTP ${status}`, status, body);
  }
  const snippet = text.trim().split('\n')[0]?.slice(0, 200) ?? '';
  return new ApiError(`HTTP_${status}`, `the daemon answered HTTP ${status}${snippet ? `: ${snippet}` : ''}`, status, body);
}

export class ApiClient {
  constructor(private readonly opts: ClientOptions) {}

  get socketPath(): string {
    return this.opts.socketPath;
  }

  private unreachable(e: NodeJS.ErrnoException): VmletError {
    const why = e.code && e.syscall ? `${e.syscall} ${e.code}` : e.message;
    return new VmletError('DAEMON_UNREACHABLE', `cannot reach vmlet daemon at ${this.opts.socketPath}: ${why}`, { cause: e });
  }

  private open(method: string, path: string, opts: RequestOptions): { req: http.ClientRequest; payload: Buffer | undefined } {
    const headers: Record<string, string | number> = { Accept: 'application/json', ...opts.headers };
    let payload: Buffer | undefined;
    if (opts.body !== undefined) {
      if (opts.contentType !== undefined) {
        payload = Buffer.isBuffer(opts.body) ? opts.body : Buffer.from(String(opts.body));
        headers['Content-Type'] = opts.contentType;
      } else {
        payload = Buffer.from(JSON.stringify(opts.body));
        headers['Content-Type'] = 'application/json';
      }
      headers['Content-Length'] = payload.length;
    }
    const req = http.request({ socketPath: this.opts.socketPath, path, method, headers, agent: false });
    return { req, payload };
  }

  /** One request; resolves with any HTTP status. Connection failures are DAEMON_UNREACHABLE. */
  request(method: string, path: string, opts: RequestOptions = {}): Promise<ApiResponse> {
    return new Promise((resolve, reject) => {
      const { req, payload } = this.open(method, path, opts);
      let connected = false;
      req.on('socket', (s: net.Socket) => s.once('connect', () => (connected = true)));
      req.on('error', (e: NodeJS.ErrnoException) =>
        reject(connected ? new VmletError('DAEMON_CONNECTION_LOST', `connection to the vmlet daemon failed: ${e.message}`, { cause: e }) : this.unreachable(e)),
      );
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (e) => reject(new VmletError('DAEMON_CONNECTION_LOST', `connection to the vmlet daemon failed: ${e.message}`, { cause: e })));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, body: parseJson(text) });
        });
      });
      if (opts.signal) {
        if (opts.signal.aborted) req.destroy();
        else opts.signal.addEventListener('abort', () => req.destroy(), { once: true });
      }
      req.end(payload);
    });
  }

  /** Like request, but a non-2xx status throws an ApiError; resolves with the parsed body. */
  async call(method: string, path: string, opts: RequestOptions = {}): Promise<unknown> {
    const res = await this.request(method, path, opts);
    if (res.status < 200 || res.status > 299) throw errorFromResponse(res.status, res.body, res.text);
    return res.body;
  }

  /**
   * Streams a watch (`?watch=true` is added): one parsed event per line. Resolves once the server has answered
   * with 200, so the watch is established when the promise resolves; ends when the server ends or `signal` aborts.
   */
  async watch(path: string, signal: AbortSignal): Promise<AsyncIterable<unknown>> {
    const sep = path.includes('?') ? '&' : '?';
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const { req } = this.open('GET', `${path}${sep}watch=true`, {});
      let connected = false;
      req.on('socket', (s: net.Socket) => s.once('connect', () => (connected = true)));
      req.on('error', (e: NodeJS.ErrnoException) =>
        reject(connected ? new VmletError('DAEMON_CONNECTION_LOST', `connection to the vmlet daemon failed: ${e.message}`, { cause: e }) : this.unreachable(e)),
      );
      req.on('response', resolve);
      if (signal.aborted) req.destroy();
      else signal.addEventListener('abort', () => req.destroy(), { once: true });
      req.end();
    });
    if (res.statusCode !== 200) {
      const chunks: Buffer[] = [];
      for await (const c of res) chunks.push(c as Buffer);
      const text = Buffer.concat(chunks).toString('utf8');
      throw errorFromResponse(res.statusCode ?? 0, parseJson(text), text);
    }
    return jsonLines(res, signal, (e) => new VmletError('DAEMON_CONNECTION_LOST', 'the watch connection to the vmlet daemon broke', { cause: e }));
  }

  /** HTTP Upgrade (e.g. to `vmlet-console`); resolves with the raw socket, the bytes already read, and the response headers. */
  upgrade(path: string, protocol: string): Promise<{ socket: net.Socket; head: Buffer; headers: http.IncomingHttpHeaders }> {
    return new Promise((resolve, reject) => {
      const { req } = this.open('GET', path, { headers: { Connection: 'Upgrade', Upgrade: protocol } });
      let connected = false;
      req.on('socket', (s: net.Socket) => s.once('connect', () => (connected = true)));
      req.on('error', (e: NodeJS.ErrnoException) =>
        reject(connected ? new VmletError('DAEMON_CONNECTION_LOST', `connection to the vmlet daemon failed: ${e.message}`, { cause: e }) : this.unreachable(e)),
      );
      req.on('upgrade', (res: http.IncomingMessage, socket: net.Socket, head: Buffer) => resolve({ socket, head, headers: res.headers }));
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          reject(errorFromResponse(res.statusCode ?? 0, parseJson(text), text));
        });
      });
      req.end();
    });
  }
}
