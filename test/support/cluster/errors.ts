// The test cluster harness's error type: a stable code (listed in docs/cluster.md), a short message, and the wrapped cause.

export class ClusterError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ClusterError';
    this.code = code;
  }
}

export function isClusterError(e: unknown, code?: string): e is ClusterError {
  return e instanceof ClusterError && (code === undefined || e.code === code);
}
