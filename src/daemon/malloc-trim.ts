// Gives malloc's freed memory back to the kernel once a burst of daemon work (starts, stops, API calls) has been quiet for a while.
import { trimMalloc } from '../sys/malloc.js';

/*
 * A start allocates native memory (sockets, buffers, JSON) that is freed soon after; glibc keeps the freed pages in
 * its arenas, fragmented between live allocations, so the daemon's RSS after 100 starts stays megabytes above what
 * it uses (docs/performance.md). One malloc_trim after the work settles returns them; none runs while idle.
 */
export interface MallocTrimmerOptions {
  /** Quiet time after the last poke before the trim. Default 3000 ms. */
  quietMs?: number;
  trim?: () => boolean;
}

export class MallocTrimmer {
  #timer: NodeJS.Timeout | undefined;
  #trims = 0;
  readonly #quietMs: number;
  readonly #trim: () => boolean;

  constructor(o: MallocTrimmerOptions = {}) {
    this.#quietMs = o.quietMs ?? 3000;
    this.#trim = o.trim ?? trimMalloc;
  }

  /** Work happened: (re)arms the one timer; it does not keep the process alive. */
  poke(): void {
    if (this.#timer) {
      this.#timer.refresh();
      return;
    }
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#trims++;
      this.#trim();
    }, this.#quietMs);
    this.#timer.unref();
  }

  /** Trims made so far. */
  get trims(): number {
    return this.#trims;
  }

  close(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
