// Connects to a unix socket, retrying while the server has not created or opened it yet, until a deadline.
import net from 'node:net';

export interface ConnectOptions {
  path: string;
  /** Absolute deadline, ms since epoch (from `now`). */
  deadline: number;
  /** Pause between attempts. */
  retryIntervalMs: number;
  signal?: AbortSignal | undefined;
  now: () => number;
}

/** Errors that mean "not there yet": the socket file is missing or nobody listens on it yet. */
const RETRYABLE = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN']);

export class ConnectAttemptError extends Error {
  constructor(
    message: string,
    readonly lastError: unknown,
    readonly attempts: number,
    readonly aborted: boolean,
  ) {
    super(message, { cause: lastError });
  }
}

function attempt(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection({ path });
    const onError = (err: Error): void => {
      sock.destroy();
      reject(err);
    };
    sock.once('error', onError);
    sock.once('connect', () => {
      sock.off('error', onError);
      resolve(sock);
    });
  });
}

/** Resolves with a connected socket or rejects with ConnectAttemptError once the deadline passes or a non-retryable error occurs. */
export async function connectWithRetry(opts: ConnectOptions): Promise<net.Socket> {
  let attempts = 0;
  let last: unknown;
  for (;;) {
    if (opts.signal?.aborted) throw new ConnectAttemptError('connect aborted', opts.signal.reason, attempts, true);
    attempts++;
    try {
      const sock = await attempt(opts.path);
      if (opts.signal?.aborted) {
        sock.destroy();
        throw new ConnectAttemptError('connect aborted', opts.signal.reason, attempts, true);
      }
      return sock;
    } catch (e) {
      if (e instanceof ConnectAttemptError) throw e;
      last = e;
      const code = (e as NodeJS.ErrnoException).code ?? '';
      if (!RETRYABLE.has(code)) throw new ConnectAttemptError(`connect to ${opts.path} failed: ${code || String(e)}`, e, attempts, false);
    }
    const left = opts.deadline - opts.now();
    if (left <= 0) {
      const code = (last as NodeJS.ErrnoException | undefined)?.code ?? 'no attempt';
      throw new ConnectAttemptError(`connect to ${opts.path} failed after ${attempts} attempt(s): ${code}`, last, attempts, false);
    }
    await sleep(Math.min(opts.retryIntervalMs, left), opts.signal);
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
