// Where a durable change runs (its fsyncs, and in atomic-file.ts its other steps): inline on the event loop for a lone change on a fast disk, else on libuv's thread pool.

import fs from 'node:fs';
import { promisify } from 'node:util';
import { SlowCallBackoff } from '../sys/slow-call-backoff.js';

/*
 * A thread-pool fsync costs two wake-ups on top of the disk's own time; on a host whose cores run guests those
 * wake-ups take milliseconds, against 0.2–0.5 ms for the fsync itself (docs/performance.md). Inline, though, a slow
 * disk would stall the whole daemon, and a burst of changes (many starts at once) would queue behind each other on
 * the one thread, where the pool runs them side by side and the journal commits them together. So a change goes
 * inline only when it is nearly alone (fewer than `burst` others began within `isolationMs`: one start makes its
 * changes a few ms apart), none is in the pool, and the last inline fsync was fast. Its fsyncs (the file's and its
 * directory's) all go the way chosen when it began.
 *
 * The lanes: `inline`; `pool` (a slow disk: the fsyncs on the pool, the quick page-cache steps still inline); `burst`
 * (many changes at once: every step on the pool, since a rename or an open then waits for the journal's commits).
 * Changes spread a little wider than `isolationMs` still meet the journal's commits: a page-cache step made inline
 * that took over `stepSlowMs` makes the next changes `burst` for `stepBackoffMs`.
 */

export type FsyncLane = 'inline' | 'pool' | 'burst';

export interface FsyncPolicyOptions {
  /** An inline fsync slower than this sends the next ones to the pool for `backoffMs`. Default 5 ms. */
  slowMs?: number;
  /** Default 5 s. */
  backoffMs?: number;
  /** A change that begins within this of `burst` others is a burst. Default 10 ms. */
  isolationMs?: number;
  /** Default 2. */
  burst?: number;
  /** An inline open, write, rename or unlink slower than this sends the next changes to the pool whole. Default 1 ms. */
  stepSlowMs?: number;
  /** Default 1 s. */
  stepBackoffMs?: number;
  now?: () => number;
  syncFsync?: (fd: number) => void;
  asyncFsync?: (fd: number) => Promise<void>;
}

export interface FsyncCounts {
  inline: number;
  pooled: number;
}

export class FsyncPolicy {
  readonly counts: FsyncCounts = { inline: 0, pooled: 0 };
  #inPool = 0;
  readonly #slow: SlowCallBackoff;
  readonly #steps: SlowCallBackoff;
  /** When the last `burst` changes began, oldest first. */
  #begins: number[] = [];
  readonly #isolationMs: number;
  readonly #burst: number;
  readonly #now: () => number;
  readonly #sync: (fd: number) => void;
  readonly #async: (fd: number) => Promise<void>;

  constructor(o: FsyncPolicyOptions = {}) {
    this.#isolationMs = o.isolationMs ?? 10;
    this.#burst = o.burst ?? 2;
    this.#now = o.now ?? (() => performance.now());
    this.#slow = new SlowCallBackoff({ slowMs: o.slowMs ?? 5, backoffMs: o.backoffMs ?? 5_000, now: this.#now });
    this.#steps = new SlowCallBackoff({ slowMs: o.stepSlowMs ?? 1, backoffMs: o.stepBackoffMs ?? 1_000, now: this.#now });
    this.#sync = o.syncFsync ?? fs.fsyncSync;
    this.#async = o.asyncFsync ?? promisify(fs.fsync);
  }

  /** Chooses the lane of a change that begins now; `counts: false` for a change that is no part of a burst (no fsync). */
  lane(opts: { counts?: boolean } = {}): FsyncLane {
    const crowded = this.crowded();
    const now = this.#now();
    if (opts.counts ?? true) {
      this.#begins.push(now);
      if (this.#begins.length > this.#burst) this.#begins.shift();
    }
    if (crowded || this.#steps.pooling) return 'burst';
    return this.#slow.pooling ? 'pool' : 'inline';
  }

  /** Runs one page-cache step of a change that is not `burst` (open, write, close, rename, unlink) on the event loop, timed. */
  step<T>(fn: () => T): T {
    return this.#steps.inline(fn);
  }

  /** Whether a change that began now would be part of a burst (counts nothing). */
  crowded(): boolean {
    const oldest = this.#begins.length < this.#burst ? -Infinity : this.#begins[0]!;
    return this.#now() - oldest < this.#isolationMs || this.#inPool > 0;
  }

  async fsync(fd: number, lane: FsyncLane): Promise<void> {
    if (lane === 'inline') {
      this.counts.inline++;
      this.#slow.inline(() => this.#sync(fd));
      return;
    }
    this.counts.pooled++;
    this.#inPool++;
    try {
      await this.#async(fd);
    } finally {
      this.#inPool--;
    }
  }
}

/** The process's policy: every durable write of the store and the lease file goes through it. */
export const fsyncPolicy = new FsyncPolicy();
