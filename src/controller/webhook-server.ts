// The admission webhook's HTTPS server: POST /validate judges AdmissionReviews, GET /healthz answers; its certificate can be swapped while it runs.
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { isRecord } from '../api/vocabulary.js';
import { VmletError } from '../errors.js';
import { reviewAdmission, type AdmissionOptions, type AdmissionReviewResponse } from './admission.js';

export const DEFAULT_WEBHOOK_PORT = 8443;
export const WEBHOOK_BODY_LIMIT = 3 << 20; // 3 MiB, the API server's own request limit

export interface WebhookTls {
  cert: string;
  key: string;
}

export interface WebhookServerOptions {
  /** Port (default 8443; 0 picks a free one) and address (default all) to listen on. */
  port?: number;
  host?: string;
  logger: Logger;
  /** Options of `reviewAdmission` (the schemas). */
  admission?: AdmissionOptions;
  /** The decision, default `reviewAdmission` (tests put in others). */
  review?: (input: unknown, opts: AdmissionOptions) => AdmissionReviewResponse;
  bodyLimit?: number;
}

class BodyError extends Error {
  constructor(
    readonly status: number,
    readonly code: 'BAD_REQUEST' | 'BODY_TOO_LARGE',
    message: string,
  ) {
    super(message);
  }
}

function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? '0');
    if (declared > limit) {
      reject(new BodyError(413, 'BODY_TOO_LARGE', `the body is ${declared} bytes, more than ${limit}`));
      req.resume();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        reject(new BodyError(413, 'BODY_TOO_LARGE', `the body is more than ${limit} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, {
    'content-type': typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

function fail(res: ServerResponse, status: number, code: string, message: string): void {
  send(res, status, { kind: 'Status', apiVersion: 'v1', status: 'Failure', code: status, reason: code, message: `${code}: ${message}` });
}

/** Who a review is about, for the log line. */
function subject(input: unknown): Record<string, unknown> {
  const req = isRecord(input) ? input['request'] : undefined;
  if (!isRecord(req)) return {};
  const kind = isRecord(req['kind']) ? req['kind']['kind'] : undefined;
  return {
    uid: req['uid'],
    operation: req['operation'],
    kind,
    namespace: req['namespace'],
    name: req['name'],
    user: isRecord(req['userInfo']) ? req['userInfo']['username'] : undefined,
  };
}

/** The webhook's HTTPS server. The constructor does nothing; `start` listens, `setCert` swaps the cert for new connections, `stop` closes. */
export class WebhookServer {
  private server: Server | undefined;
  private readonly log: Logger;
  private readonly limit: number;

  constructor(private readonly opts: WebhookServerOptions) {
    this.log = opts.logger.child({ component: 'webhook' });
    this.limit = opts.bodyLimit ?? WEBHOOK_BODY_LIMIT;
  }

  /** Listens with `tls`; resolves with the address it listens on. WEBHOOK_SERVER_FAILED when it cannot. */
  async start(tls: WebhookTls): Promise<AddressInfo> {
    if (this.server !== undefined) throw new VmletError('WEBHOOK_SERVER_FAILED', 'the webhook server is already started');
    let server: Server;
    try {
      server = createServer({ cert: tls.cert, key: tls.key, minVersion: 'TLSv1.2' }, (req, res) => void this.handle(req, res));
    } catch (cause) {
      throw new VmletError('WEBHOOK_SERVER_FAILED', 'the webhook certificate or key is not usable', { cause });
    }
    server.requestTimeout = 30_000;
    server.headersTimeout = 10_000;
    server.keepAliveTimeout = 60_000;
    const port = this.opts.port ?? DEFAULT_WEBHOOK_PORT;
    const host = this.opts.host;
    await new Promise<void>((resolve, reject) => {
      const onError = (cause: Error): void => reject(new VmletError('WEBHOOK_SERVER_FAILED', `cannot listen on ${host ?? '*'}:${port}`, { cause }));
      server.once('error', onError);
      server.listen(port, host, () => {
        server.off('error', onError);
        resolve();
      });
    });
    server.on('error', (err) => this.log.error({ err }, 'webhook server error'));
    server.on('tlsClientError', (err) => this.log.debug({ err }, 'TLS handshake failed'));
    this.server = server;
    const addr = server.address() as AddressInfo;
    this.log.info({ address: addr.address, port: addr.port }, 'admission webhook listening');
    return addr;
  }

  /** Serves `tls` on new connections from now on (a rotated cert). */
  setCert(tls: WebhookTls): void {
    if (this.server === undefined) throw new VmletError('WEBHOOK_SERVER_FAILED', 'the webhook server is not started');
    try {
      this.server.setSecureContext({ cert: tls.cert, key: tls.key, minVersion: 'TLSv1.2' });
    } catch (cause) {
      throw new VmletError('WEBHOOK_SERVER_FAILED', 'the new webhook certificate or key is not usable; keeping the old one', { cause });
    }
    this.log.info('webhook certificate swapped');
  }

  get address(): AddressInfo | undefined {
    const a = this.server?.address();
    return a === null || typeof a === 'string' ? undefined : a;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    this.server = undefined;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/healthz') {
      if (req.method !== 'GET' && req.method !== 'HEAD') return fail(res, 405, 'METHOD_NOT_ALLOWED', 'use GET');
      return send(res, 200, 'ok');
    }
    if (path !== '/validate') return fail(res, 404, 'NOT_FOUND', `no such path ${JSON.stringify(path)}; use POST /validate`);
    if (req.method !== 'POST') return fail(res, 405, 'METHOD_NOT_ALLOWED', 'use POST');
    let input: unknown;
    try {
      const body = await readBody(req, this.limit);
      try {
        input = JSON.parse(body.toString('utf8'));
      } catch (e) {
        throw new BodyError(400, 'BAD_REQUEST', `the body is not JSON: ${e instanceof Error ? e.message : String(e)}`);
      }
    } catch (e) {
      const be = e instanceof BodyError ? e : new BodyError(400, 'BAD_REQUEST', e instanceof Error ? e.message : String(e));
      this.log.warn({ status: be.status, code: be.code }, be.message);
      if (!res.headersSent && !res.destroyed) fail(res, be.status, be.code, be.message);
      return;
    }
    const out = (this.opts.review ?? reviewAdmission)(input, this.opts.admission ?? {});
    if (!out.response.allowed) {
      this.log.info({ ...subject(input), code: out.response.status?.reason, message: out.response.status?.message }, 'admission refused');
    }
    send(res, 200, out);
  }
}
