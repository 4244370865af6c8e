// The back-off both inline-or-pool lanes share (cgroupfs calls, store fsyncs): after a call made inline on the event loop was slow, send the next ones to libuv's thread pool for a while.

export interface SlowCallBackoffOptions {
  /** An inline call slower than this starts a back-off. */
  slowMs: number;
  /** How long a back-off lasts. */
  backoffMs: number;
  now?: () => number;
}

export class SlowCallBackoff {
  #until = -Infinity;
  readonly #slowMs: number;
  readonly #backoffMs: number;
  readonly #now: () => number;

  constructor(o: SlowCallBackoffOptions) {
    this.#slowMs = o.slowMs;
    this.#backoffMs = o.backoffMs;
    this.#now = o.now ?? (() => performance.now());
  }

  /** True while a back-off lasts: calls go to the pool. */
  get pooling(): boolean {
    return this.#now() < this.#until;
  }

  /** Runs `fn` on the event loop and times it; a slow one (or one that throws slowly) starts a back-off. */
  inline<T>(fn: () => T): T {
    const t0 = this.#now();
    try {
      return fn();
    } finally {
      const t1 = this.#now();
      if (t1 - t0 > this.#slowMs) this.#until = t1 + this.#backoffMs;
    }
  }
}
