// Maps vmlet error codes to HTTP statuses (one table) and renders errors as Kubernetes Status objects.
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

const VALIDATION = 422;

/** The one code → HTTP status table. Codes not listed (and non-vmlet errors) are 500; QMP_* fall back to 502. */
export const httpStatusByCode: Readonly<Record<string, number>> = {
  BAD_REQUEST: 400,
  INVALID_PATH: 400,
  NAME_MISMATCH: 400,
  NAMESPACE_MISMATCH: 400,
  NOT_FOUND: 404,
  STORE_NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  ALREADY_EXISTS: 409,
  STORE_ALREADY_EXISTS: 409,
  STORE_CONFLICT: 409,
  CONFLICT: 409,
  CONSOLE_BUSY: 409,
  CONSOLE_UNAVAILABLE: 409,
  VMI_NOT_RUNNING: 409,
  VMI_NOT_PAUSED: 409,
  VMI_ALREADY_PAUSED: 409,
  VM_NOT_RUNNING: 409,
  VM_ALREADY_RUNNING: 409,
  BODY_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  UPGRADE_REQUIRED: 426,
  INVALID_FIELD: VALIDATION,
  UNKNOWN_FIELD: VALIDATION,
  MISSING_FIELD: VALIDATION,
  INVALID_QUANTITY: VALIDATION,
  INVALID_NAME: VALIDATION,
  MISSING_VOLUME: VALIDATION,
  MANIFEST_PARSE: VALIDATION,
  UNSUPPORTED_API_VERSION: VALIDATION,
  UNSUPPORTED_KIND: VALIDATION,
  VALIDATION_FAILED: VALIDATION,
  OUT_OF_RANGE: VALIDATION,
  INVALID_RESOURCES: VALIDATION,
  UNUSED_VOLUME: VALIDATION,
  DUPLICATE_NAME: VALIDATION,
  CONFLICTING_FIELDS: VALIDATION,
  INVALID_HOST_PATH: VALIDATION,
  UNSAFE_VALUE: VALIDATION,
  UNSUPPORTED_MACHINE: VALIDATION,
  UNSUPPORTED_CPU_MODEL: VALIDATION,
  // what the network admission refuses (daemon/vm-network.ts)
  NET_DISABLED: VALIDATION,
  NET_UNKNOWN_BINDING: VALIDATION,
  NET_INTERFACE_WITHOUT_NETWORK: VALIDATION,
  NET_NETWORK_WITHOUT_INTERFACE: VALIDATION,
  NET_DUPLICATE_MAC: VALIDATION,
  NET_DUPLICATE_NAME: VALIDATION,
  NET_INVALID_MAC: VALIDATION,
  NET_INVALID_NAME: VALIDATION,
  NET_INVALID_PORT: VALIDATION,
  NET_INVALID_QUEUES: VALIDATION,
  NET_INVALID_SUBNET: VALIDATION,
  NET_SUBNET_CLASH: VALIDATION,
  NET_UNSUPPORTED_MODEL: VALIDATION,
  NET_UNSUPPORTED_NETWORK: VALIDATION,
  STORE_INVALID_OBJECT: VALIDATION,
  STORE_INVALID_KEY: 400,
  STORE_WATCH_OVERFLOW: 410,
  STORE_CLOSED: 503,
  VMI_SPEC_IMMUTABLE: VALIDATION,
  VMI_AGENT_UNAVAILABLE: 409,
  QMP_UNAVAILABLE: 503,
  STORE_WRITE_FAILED: 507,
  TIMEOUT: 504,
  INTERNAL: 500,
  QMP_TIMEOUT: 504,
  CONSOLE_TIMEOUT: 504,
  SHUTTING_DOWN: 503,
};

export function httpStatusFor(code: string): number {
  const direct = httpStatusByCode[code];
  if (direct !== undefined) return direct;
  if (code.startsWith('QMP_') || code.startsWith('QGA_')) return code.endsWith('_TIMEOUT') ? 504 : 502;
  return 500;
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
  return e instanceof Error && typeof (e as { code?: unknown }).code === 'string' && /^(QMP|QGA|SYS)_[A-Z0-9_]+$/.test((e as unknown as { code: string }).code);
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
