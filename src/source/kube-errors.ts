// Turns what @kubernetes/client-node throws (API exceptions, watch status errors, network failures) into the Source's VmletError codes.

import { VmletError } from '../errors.js';
import { isRecord } from './store-keys.js';

/** The parts of a Kubernetes `Status` the mapping reads; kept in `details` so callers see the API server's own words. */
export interface KubeStatus {
  code?: number;
  reason?: string;
  message?: string;
  details?: unknown;
}

/** Network errors (node and node-fetch `code`s) that mean the API server could not be reached. */
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', 'ECONNABORTED']);

function parseBody(body: unknown): unknown {
  if (typeof body !== 'string') return body;
  try {
    return JSON.parse(body) as unknown;
  } catch {
    return body.length > 0 ? { message: body.slice(0, 500) } : undefined;
  }
}

/** A `Status` object's fields, when `v` looks like one (or like its JSON text). */
export function statusOf(v: unknown): KubeStatus | undefined {
  const s = parseBody(v);
  if (!isRecord(s)) return undefined;
  const out: KubeStatus = {};
  if (typeof s['code'] === 'number') out.code = s['code'];
  if (typeof s['reason'] === 'string') out.reason = s['reason'];
  if (typeof s['message'] === 'string') out.message = s['message'];
  if (s['details'] !== undefined) out.details = s['details'];
  return out;
}

/** The HTTP status and Status body of a client-node failure: ApiException (`code`, `body`) or a Watch error (`statusCode`). */
export function httpFailure(e: unknown): { http: number; status: KubeStatus | undefined } | undefined {
  if (!(e instanceof Error)) return undefined;
  const http = Reflect.get(e, 'code') ?? Reflect.get(e, 'statusCode');
  if (typeof http !== 'number' || !Number.isInteger(http) || http < 100 || http > 599) return undefined;
  return { http, status: statusOf(Reflect.get(e, 'body')) };
}

/** The errno-like code of a network failure (node-fetch's FetchError, a socket error), or undefined. */
export function networkCode(e: unknown): string | undefined {
  let cur: unknown = e;
  for (let depth = 0; depth < 4 && cur instanceof Error; depth++) {
    const c = Reflect.get(cur, 'code') ?? Reflect.get(cur, 'errno');
    if (typeof c === 'string' && (NETWORK_CODES.has(c) || c.startsWith('ERR_TLS') || c.includes('CERT'))) return c;
    if (cur.name === 'AbortError' || Reflect.get(cur, 'type') === 'aborted') return 'ABORTED';
    if (Reflect.get(cur, 'type') === 'request-timeout') return 'ETIMEDOUT';
    cur = cur.cause;
  }
  return undefined;
}

/** What the request was, for messages: e.g. `get VirtualMachine ns/name`. */
export type What = string;

/** The VmletError for an HTTP status `http` with the API server's `status`, about `what`. */
export function errorForStatus(http: number, status: KubeStatus | undefined, what: What, cause?: unknown): VmletError {
  const said = status?.message !== undefined ? `: ${status.message}` : '';
  const details = { http, reason: status?.reason, message: status?.message, details: status?.details };
  const fields = { cause, details };
  if (http === 404) return new VmletError('STORE_NOT_FOUND', `${what}: not found${said}`, fields);
  if (http === 409 && status?.reason === 'AlreadyExists') return new VmletError('STORE_ALREADY_EXISTS', `${what}: already exists${said}`, fields);
  if (http === 409) return new VmletError('STORE_CONFLICT', `${what}: conflict${said}; read it again and retry`, fields);
  if (http === 410)
    return new VmletError('STORE_WATCH_OVERFLOW', `${what}: resourceVersion expired${said}; list again and watch from the list's resourceVersion`, fields);
  if (http === 422 || http === 400) return new VmletError('STORE_INVALID_OBJECT', `${what}: refused by the API server${said}`, fields);
  if (http === 401 || http === 403) return new VmletError('KUBE_API_FORBIDDEN', `${what}: the API server refused the request (${http})${said}`, fields);
  if (http === 429 || http >= 500) return new VmletError('KUBE_API_UNAVAILABLE', `${what}: the API server is unavailable (${http})${said}`, fields);
  return new VmletError('KUBE_API_UNEXPECTED', `${what}: unexpected answer ${http} from the API server${said}`, fields);
}

/** Any failure of a client-node call as the Source's VmletError; VmletErrors pass through unchanged. */
export function kubeError(e: unknown, what: What): VmletError {
  if (e instanceof VmletError) return e;
  const h = httpFailure(e);
  if (h !== undefined) return errorForStatus(h.http, h.status, what, e);
  const net = networkCode(e);
  const text = e instanceof Error ? e.message : String(e);
  return new VmletError(
    'KUBE_API_UNAVAILABLE',
    `${what}: the API server cannot be reached (${net ?? text})`,
    net === undefined ? { cause: e } : { cause: e, errno: net },
  );
}

/** Whether a failure is worth retrying later (the API server may come back), as opposed to an answer about the request. */
export function isTransient(e: VmletError): boolean {
  return e.code === 'KUBE_API_UNAVAILABLE';
}
