// Base error type for vmlet: every error carries a stable code (registered in src/error-codes.ts, explained in docs/errors.md), wraps its cause, and keeps machine-readable facts in fields rather than in its message.
import type { ErrorCode } from './error-codes.js';

export type { ErrorCode } from './error-codes.js';

/** Facts about a failure that code may act on (never parse the message for them). */
export interface ErrorFields {
  cause?: unknown;
  /** The errno name of the failed syscall (`EAGAIN`, `ENOENT`, …). */
  errno?: string;
  /** Exit code of a failed child process. */
  exitCode?: number;
  /** What a failed child process wrote to stderr (trimmed). */
  stderr?: string;
  /** Anything else structured: field lists, allowed methods, sizes. */
  details?: unknown;
}

export class VmletError extends Error {
  /** A code of src/error-codes.ts: the compiler refuses any other. */
  readonly code: ErrorCode;
  readonly errno: string | undefined;
  readonly exitCode: number | undefined;
  readonly stderr: string | undefined;
  readonly details: unknown;
  constructor(code: ErrorCode, message: string, fields?: ErrorFields) {
    super(message, fields?.cause === undefined ? undefined : { cause: fields.cause });
    this.name = 'VmletError';
    this.code = code;
    this.errno = fields?.errno;
    this.exitCode = fields?.exitCode;
    this.stderr = fields?.stderr;
    this.details = fields?.details;
  }
}

/** Whether `e` is a VmletError (of the given registered code). */
export function isVmletError(e: unknown, code?: ErrorCode): e is VmletError {
  return e instanceof VmletError && (code === undefined || e.code === code);
}
