// Where a durable change's fsyncs run: inline on the event loop for a lone change on a fast disk, else on libuv's thread pool.

import fs from 'node:fs';
import { promisify } from 'node:util';

/*
 * A thread-pool fsync costs two wake-ups on top of the disk's own time; on a host whose cores run guests those
 * wake-ups take milliseconds, against 0.2–0.5 ms for the fsync itself (docs/performance.md). Inline, though, a slow
 * disk would stall the whole daemon, and a burst of changes (many starts at once) would queue behind each other on
 * the one thread, where the pool runs them side by side and the journal commits them together. So a change goes
 * inline only when it is nearly alone (fewer than `burst` others began within `isolationMs`: one start makes its
 * changes a few ms apart), none is in the pool, and the last inline fsync was fast. Its fsyncs (the file's and its
 * directory's) all go the way chosen when it began.
 */

export type FsyncLane = 'inline' | 'pool';

export interface FsyncPolicyOptions {
  /** An inline fsync slower than this sends the next ones to the pool for `backoffMs`. Default 2 ms. */
  slowMs?: number;
  /** Default 10 s. */
  backoffMs?: number;
  /** A change that begins within this of `burst` others goes to the pool. Default 10 ms. */
  isolationMs?: number;
  /** Default 2. */
  burst?: number;
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
  #poolUntil = -Infinity;
  /** When the last `burst` changes began, oldest first. */
  #begins: number[] = [];
  readonly #slowMs: number;
  readonly #backoffMs: number;
  readonly #isolationMs: number;
  readonly #burst: number;
  readonly #now: () => number;
  readonly #sync: (fd: number) => void;
  readonly #async: (fd: number) => Promise<void>;

  constructor(o: FsyncPolicyOptions = {}) {
    this.#slowMs = o.slowMs ?? 2;
    this.#backoffMs = o.backoffMs ?? 10_000;
    this.#isolationMs = o.isolationMs ?? 10;
    this.#burst = o.burst ?? 2;
    this.#now = o.now ?? (() => performance.now());
    this.#sync = o.syncFsync ?? fs.fsyncSync;
    this.#async = o.asyncFsync ?? promisify(fs.fsync);
  }

  /** Chooses the lane of a change that begins now. */
  lane(): FsyncLane {
    const now = this.#now();
    const oldest = this.#begins.length < this.#burst ? -Infinity : this.#begins[0]!;
    this.#begins.push(now);
    if (this.#begins.length > this.#burst) this.#begins.shift();
    return now - oldest >= this.#isolationMs && this.#inPool === 0 && now >= this.#poolUntil ? 'inline' : 'pool';
  }

  async fsync(fd: number, lane: FsyncLane): Promise<void> {
    if (lane === 'inline') {
      this.counts.inline++;
      const t0 = this.#now();
      this.#sync(fd);
      if (this.#now() - t0 > this.#slowMs) this.#poolUntil = this.#now() + this.#backoffMs;
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
