// Waiting on a supervisor's state (its exit, a pending launch): a promise settled by the next change, bounded by a timer, never a poll.

export class Changes {
  private readonly waiters = new Set<() => void>();

  /** Checks after the current synchronous step, so a transition and what follows it (e.g. a pending launch) are seen together. */
  notify(): void {
    queueMicrotask(() => {
      for (const w of [...this.waiters]) w();
    });
  }

  /** Resolves true once `ok()` holds, or with `ok()` after `ms`. */
  until(ok: () => boolean, ms: number): Promise<boolean> {
    if (ok()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const finish = (v: boolean): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(v);
      };
      const check = (): void => {
        if (ok()) finish(true);
      };
      const timer = setTimeout(() => finish(ok()), ms);
      this.waiters.add(check);
    });
  }
}
