// The CLI's client for the Kubernetes API server: ApiClient's surface and paths, over HTTPS with a kubeconfig's server, CA and credentials.
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import type net from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';
import { isErrorCode, type ErrorCode } from '../error-codes.js';
import { VmletError } from '../errors.js';
import { ApiError, GROUP_PATH, jsonLines, parseJson, SUBRESOURCE_PATH, type ApiResponse, type RequestOptions } from './client.js';
import type { CliClient } from './commands.js';

/**
 * The API server's Status reasons that have a vmlet code, so scripts see the same code as against the daemon.
 * A reason that already is a vmlet code (the admission webhook's) is kept; any other reason is shown as it is.
 */
const REASON_CODES: Readonly<Record<string, ErrorCode>> = {
  NotFound: 'NOT_FOUND',
  AlreadyExists: 'ALREADY_EXISTS',
  Conflict: 'CONFLICT',
  Unauthorized: 'KUBE_API_FORBIDDEN',
  Forbidden: 'KUBE_API_FORBIDDEN',
  ServiceUnavailable: 'KUBE_API_UNAVAILABLE',
  TooManyRequests: 'KUBE_API_UNAVAILABLE',
  Timeout: 'KUBE_API_UNAVAILABLE',
  ServerTimeout: 'KUBE_API_UNAVAILABLE',
  InternalError: 'KUBE_API_UNAVAILABLE',
};

/** The webhook's message repeats its code (`… denied the request: OUT_OF_RANGE: field: …`); the code is shown once, at the end. */
function readable(message: string, code: string): string {
  const m = /^(admission webhook "[^"]*" denied the request: )([A-Z][A-Z0-9_]*): /.exec(message);
  return m && m[2] === code ? `${m[1]}${message.slice(m[0].length)}` : message;
}

/** A non-2xx answer of the API server as an ApiError: its Status reason mapped to a vmlet code where there is one. */
export function kubeErrorFromResponse(status: number, body: unknown, text: string, requestPath = ''): ApiError {
  if (typeof body === 'object' && body !== null && (body as { kind?: unknown }).kind === 'Status') {
    const s = body as { message?: unknown; reason?: unknown };
    const reason = typeof s.reason === 'string' && s.reason !== '' ? s.reason : '';
    let code: string = isErrorCode(reason) ? reason : (REASON_CODES[reason] ?? (reason || `HTTP_${status}`));
    if (reason === '' && (status === 401 || status === 403)) code = 'KUBE_API_FORBIDDEN';
    let message = readable(typeof s.message === 'string' && s.message !== '' ? s.message : `HTTP ${status}`, code);
    // A group the API server does not serve: say what is missing rather than only "could not find".
    if (status === 404 && message === 'the server could not find the requested resource' && requestPath.startsWith(GROUP_PATH))
      message += ` (is the vmlet.io/v1alpha1 API installed? kubectl apply -k deploy/crds)`;
    return new ApiError(code, message, status, body);
  }
  const snippet = text.trim().split('\n')[0]?.slice(0, 200) ?? '';
  const code = status === 401 || status === 403 ? 'KUBE_API_FORBIDDEN' : `HTTP_${status}`;
  return new ApiError(code, `the API server answered HTTP ${status}${snippet ? `: ${snippet}` : ''}`, status, body);
}

/** Where the kubeconfig came from: `--kubeconfig FILE`, or the files of `$KUBECONFIG` (merged as kubectl does: the first one wins). */
export function loadKubeConfig(files: readonly string[], from: string): KubeConfig {
  const kc = new KubeConfig();
  const fail = (why: string, cause?: unknown): VmletError =>
    new VmletError('KUBECONFIG_INVALID', `kubeconfig ${files.join(path.delimiter)} (${from}): ${why}`, cause === undefined ? {} : { cause });
  // kubectl skips files of $KUBECONFIG that do not exist; a file named with --kubeconfig must exist.
  const present = from === 'KUBECONFIG' ? files.filter((f) => fs.existsSync(f)) : files;
  if (present.length === 0) throw fail('no such file');
  try {
    present.forEach((file, i) => {
      if (i === 0) return kc.loadFromFile(file);
      const more = new KubeConfig();
      more.loadFromFile(file);
      if (!kc.getCurrentContext() && more.getCurrentContext()) kc.setCurrentContext(more.getCurrentContext());
      for (const c of more.getClusters()) if (!kc.getCluster(c.name)) kc.addCluster(c);
      for (const u of more.getUsers()) if (!kc.getUser(u.name)) kc.addUser(u);
      for (const c of more.getContexts()) if (!kc.getContextObject(c.name)) kc.addContext(c);
    });
  } catch (e) {
    throw fail((e as NodeJS.ErrnoException).code ?? (e as Error).message, e);
  }
  const cluster = kc.getCurrentCluster();
  if (!cluster?.server) throw fail(`the current context ${JSON.stringify(kc.getCurrentContext() ?? '')} names no cluster with a server`);
  return kc;
}

interface Base {
  url: URL;
  options: https.RequestOptions;
}

export class KubeApiClient implements CliClient {
  private base: Promise<Base> | undefined;

  constructor(readonly kubeConfig: KubeConfig) {}

  /** The API server's URL, for messages. */
  get server(): string {
    return this.kubeConfig.getCurrentCluster()?.server ?? '';
  }

  /** The namespace of the kubeconfig's current context, as kubectl uses it when -n is not given. */
  get contextNamespace(): string | undefined {
    return this.kubeConfig.getContextObject(this.kubeConfig.getCurrentContext())?.namespace || undefined;
  }

  /** Server URL and TLS/auth options (CA, client cert, bearer token, exec plugins), computed once. */
  private options(): Promise<Base> {
    this.base ??= (async (): Promise<Base> => {
      let url: URL;
      try {
        url = new URL(this.server);
      } catch (e) {
        throw new VmletError('KUBECONFIG_INVALID', `the cluster's server ${JSON.stringify(this.server)} is not a URL`, { cause: e });
      }
      const options: https.RequestOptions = {};
      try {
        await this.kubeConfig.applyToHTTPSOptions(options);
      } catch (e) {
        throw new VmletError('KUBECONFIG_INVALID', `cannot use the kubeconfig's credentials for ${this.server}: ${(e as Error).message}`, { cause: e });
      }
      return { url, options };
    })();
    return this.base;
  }

  private unreachable(e: Error): VmletError {
    return new VmletError('KUBE_API_UNAVAILABLE', `cannot reach the Kubernetes API server at ${this.server}: ${e.message}`, { cause: e });
  }

  private broken(e: unknown): VmletError {
    return new VmletError('KUBE_API_UNAVAILABLE', `the connection to the Kubernetes API server at ${this.server} broke`, { cause: e });
  }

  private async open(method: string, p: string, opts: RequestOptions): Promise<{ req: http.ClientRequest; payload: Buffer | undefined }> {
    const { url, options } = await this.options();
    const headers: Record<string, string | number> = { ...(options.headers as Record<string, string>), Accept: 'application/json', ...opts.headers };
    let payload: Buffer | undefined;
    if (opts.body !== undefined) {
      const raw = opts.contentType !== undefined;
      payload = raw ? (Buffer.isBuffer(opts.body) ? opts.body : Buffer.from(String(opts.body))) : Buffer.from(JSON.stringify(opts.body));
      headers['Content-Type'] = opts.contentType ?? 'application/json';
      headers['Content-Length'] = payload.length;
    }
    // A server URL may carry a path prefix (a proxy in front of the API server).
    const prefix = url.pathname.replace(/\/+$/, '');
    const target = { ...options, hostname: url.hostname.replace(/^\[(.*)\]$/, '$1'), port: url.port || undefined, path: `${prefix}${p}`, method, headers };
    const req = url.protocol === 'http:' ? http.request(target) : https.request(target);
    return { req, payload };
  }

  /** Resolves with the response head; failures before it are KUBE_API_UNAVAILABLE. */
  private async send(method: string, p: string, opts: RequestOptions, signal?: AbortSignal): Promise<http.IncomingMessage> {
    const { req, payload } = await this.open(method, p, opts);
    return new Promise((resolve, reject) => {
      req.on('error', (e: Error) => reject(this.unreachable(e)));
      req.on('response', resolve);
      if (signal) {
        if (signal.aborted) req.destroy();
        else signal.addEventListener('abort', () => req.destroy(), { once: true });
      }
      req.end(payload);
    });
  }

  private async readBody(res: http.IncomingMessage): Promise<string> {
    const chunks: Buffer[] = [];
    try {
      for await (const c of res) chunks.push(c as Buffer);
    } catch (e) {
      throw this.broken(e);
    }
    return Buffer.concat(chunks).toString('utf8');
  }

  /**
   * One request; resolves with any HTTP status. A 429 (the server busy, or a new CRD's storage still starting) is
   * tried again after its Retry-After, up to 3 times, as kubectl does.
   */
  async request(method: string, p: string, opts: RequestOptions = {}): Promise<ApiResponse> {
    for (let attempt = 1; ; attempt++) {
      const res = await this.send(method, p, opts, opts.signal);
      const text = await this.readBody(res);
      if (res.statusCode === 429 && attempt <= 3) {
        const after = Math.min(Number(res.headers['retry-after'] ?? 1) || 1, 10);
        await new Promise((r) => setTimeout(r, after * 1000));
        continue;
      }
      return { status: res.statusCode ?? 0, headers: res.headers, text, body: parseJson(text) };
    }
  }

  /** Like request, but a non-2xx status throws an ApiError; resolves with the parsed body. */
  async call(method: string, p: string, opts: RequestOptions = {}): Promise<unknown> {
    const res = await this.request(method, p, opts);
    if (res.status < 200 || res.status > 299) throw kubeErrorFromResponse(res.status, res.body, res.text, p);
    return res.body;
  }

  /** A watch (`watch=true` added): one parsed event per line, from the moment the API server answered 200. */
  async watch(p: string, signal: AbortSignal): Promise<AsyncIterable<unknown>> {
    const res = await this.send('GET', `${p}${p.includes('?') ? '&' : '?'}watch=true`, {}, signal);
    if (res.statusCode !== 200) {
      const text = await this.readBody(res);
      throw kubeErrorFromResponse(res.statusCode ?? 0, parseJson(text), text, p);
    }
    return jsonLines(res, signal, (e) => this.broken(e));
  }

  /** Consoles are served by the node's daemon, not by the API server. */
  upgrade(p: string): Promise<{ socket: net.Socket; head: Buffer; headers: http.IncomingHttpHeaders }> {
    const where = p.startsWith(SUBRESOURCE_PATH) ? p.slice(SUBRESOURCE_PATH.length) : p;
    return Promise.reject(
      new VmletError('NODE_LOCAL_VERB', `${where} is served by the daemon of the VMI's node, not by the API server: run vmlet there with --socket`),
    );
  }
}
