// Per-key FIFO mutual exclusion for async work: tasks on one key run one at a time, in call order; different keys run in parallel.

export class KeyedMutex {
  readonly #tails = new Map<string, Promise<void>>();

  /** Run `fn` once every earlier task on `key` has settled. Its result or rejection is passed through. */
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve();
    let release: () => void = () => undefined;
    const mine = new Promise<void>((resolve) => {
      release = resolve;
    });
    const tail = prev.then(() => mine);
    this.#tails.set(key, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }

  /** Number of keys with a task running or queued (for tests and metrics). */
  get busyKeys(): number {
    return this.#tails.size;
  }
}
