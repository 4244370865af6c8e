// Renders errors as Kubernetes Status objects, with the HTTP status the error registry (src/error-codes.ts) gives their code.
import { httpStatusOf } from '../error-codes.js';
import { isVmletError } from '../errors.js';

export interface StatusCause {
  field?: string;
  message: string;
  reason: string;
}

/** A Kubernetes `Status` (apiVersion v1); `reason` holds the vmlet error code. */
export interface StatusObject {
  kind: 'Status';
  apiVersion: 'v1';
  metadata: Record<string, never>;
  status: 'Failure' | 'Success';
  message: string;
  reason: string;
  code: number;
  details?: { name?: string; kind?: string; causes?: StatusCause[] };
}

/** The HTTP status of an error code: httpStatusOf of the registry (src/error-codes.ts). */
export function httpStatusFor(code: string): number {
  return httpStatusOf(code);
}

/** Context of the request, used to name the object in `details` and in Kubernetes-style messages. */
export interface StatusContext {
  /** Resource plural, e.g. `virtualmachineinstances`. */
  kind?: string;
  name?: string;
}

function causesOf(e: unknown, code: string): StatusCause[] | undefined {
  if (typeof e !== 'object' || e === null) return undefined;
  const details = (e as { details?: unknown }).details;
  if (!Array.isArray(details)) return undefined;
  const out: StatusCause[] = [];
  for (const d of details as unknown[]) {
    if (typeof d !== 'object' || d === null) continue;
    const { field, message, reason, code: own } = d as { field?: unknown; message?: unknown; reason?: unknown; code?: unknown };
    const why = typeof reason === 'string' ? reason : typeof own === 'string' ? own : code;
    const cause: StatusCause = { message: typeof message === 'string' ? message : String(message), reason: why };
    if (typeof field === 'string') cause.field = field;
    out.push(cause);
  }
  return out.length > 0 ? out : undefined;
}

/** Errors of the libraries that may not import VmletError (src/qmp) still carry a stable upper-case code. */
function isCodedError(e: unknown): e is Error & { code: string } {
  return e instanceof Error && 'code' in e && typeof e.code === 'string' && /^(QMP|QGA|SYS)_[A-Z0-9_]+$/.test(e.code);
}

/** Renders any thrown value (a per-field `details: {field, message, code|reason}[]` becomes `details.causes`) as a Failure Status; unknown errors become INTERNAL without leaking their message. */
export function statusFromError(e: unknown, ctx: StatusContext = {}): StatusObject {
  let code = 'INTERNAL';
  let message = 'internal error';
  if (isVmletError(e) || isCodedError(e)) {
    code = e.code;
    message = e.message;
  }
  const http = httpStatusFor(code);
  // Kubernetes words these two the same way whatever the store said; clients (and scripts) rely on it.
  if (ctx.kind && ctx.name && (code === 'NOT_FOUND' || code === 'STORE_NOT_FOUND')) message = `${ctx.kind} "${ctx.name}" not found`;
  if (ctx.kind && ctx.name && (code === 'ALREADY_EXISTS' || code === 'STORE_ALREADY_EXISTS')) message = `${ctx.kind} "${ctx.name}" already exists`;
  const status = failure(code, message.replace(/\s*\n\s*/g, ' '), http);
  const details: NonNullable<StatusObject['details']> = {};
  if (ctx.name !== undefined) details.name = ctx.name;
  if (ctx.kind !== undefined) details.kind = ctx.kind;
  const causes = causesOf(e, code);
  if (causes) details.causes = causes;
  if (Object.keys(details).length > 0) status.details = details;
  return status;
}

export function failure(code: string, message: string, http = httpStatusFor(code)): StatusObject {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason: code, code: http };
}

export function success(message: string, http = 200): StatusObject {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', message, reason: '', code: http };
}
