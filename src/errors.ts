// Base error type for vmlet: every error carries a stable code (listed in docs/errors.md) and wraps its cause.

export class VmletError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VmletError';
    this.code = code;
  }
}

export function isVmletError(e: unknown, code?: string): e is VmletError {
  return e instanceof VmletError && (code === undefined || e.code === code);
}
