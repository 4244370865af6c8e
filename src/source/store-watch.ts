// The local store's watch queues: one bounded queue per watcher that never blocks a writer, and a per-kind history of recent changes that a watch can start from.

import { VmletError } from '../errors.js';
import type { Kind, SourceWatch, WatchEvent } from './source.js';
import { rvOf } from './store-keys.js';

/** What the store sees of a watcher: it offers every change and ends them all at close. */
export interface WatchSink {
  offer(ev: WatchEvent): void;
  end(drain: boolean): void;
}

interface Waiter<K extends Kind> {
  resolve: (r: IteratorResult<WatchEvent<K>>) => void;
  reject: (e: unknown) => void;
}

export class Watcher<K extends Kind> implements SourceWatch<K>, WatchSink {
  #queue: Array<WatchEvent<K>> = [];
  #waiter: Waiter<K> | undefined;
  #state: 'open' | 'ended' | 'failed' = 'open';
  #error: VmletError | undefined;

  constructor(
    private readonly matches: (ev: WatchEvent) => ev is WatchEvent<K>,
    private limit: number,
    private readonly detach: (w: WatchSink) => void,
  ) {}

  /** Lets `n` more events wait (a snapshot handed out at the start does not count against the buffer). */
  extendLimit(n: number): void {
    this.limit += n;
  }

  get closed(): boolean {
    return this.#state !== 'open';
  }

  /** Called by the store for every change; never blocks and never throws. */
  offer(ev: WatchEvent): void {
    if (this.matches(ev)) this.push(ev);
  }

  push(ev: WatchEvent<K>): void {
    if (this.#state !== 'open') return;
    const w = this.#waiter;
    if (w !== undefined) {
      this.#waiter = undefined;
      w.resolve({ value: ev, done: false });
      return;
    }
    if (this.#queue.length >= this.limit) {
      this.fail(new VmletError('STORE_WATCH_OVERFLOW', `watcher fell more than ${this.limit} events behind; list again and re-watch`));
      return;
    }
    this.#queue.push(ev);
  }

  fail(err: VmletError): void {
    if (this.#state !== 'open') return;
    this.#state = 'failed';
    this.#error = err;
    this.#queue = [];
    this.detach(this);
    const w = this.#waiter;
    this.#waiter = undefined;
    if (w !== undefined) {
      this.#error = undefined;
      w.reject(err);
    }
  }

  /** Stop delivering. With `drain`, events already queued are still handed out before the end. */
  end(drain: boolean): void {
    if (this.#state !== 'open') return;
    this.#state = 'ended';
    if (!drain) this.#queue = [];
    this.detach(this);
    const w = this.#waiter;
    this.#waiter = undefined;
    if (w !== undefined) w.resolve({ value: undefined, done: true });
  }

  close(): void {
    this.end(false);
  }

  next(): Promise<IteratorResult<WatchEvent<K>>> {
    const ev = this.#queue.shift();
    if (ev !== undefined) return Promise.resolve({ value: ev, done: false });
    if (this.#state === 'failed' && this.#error !== undefined) {
      const err = this.#error;
      this.#error = undefined; // reported once; afterwards the iterator is simply done
      return Promise.reject(err);
    }
    if (this.#state !== 'open') return Promise.resolve({ value: undefined, done: true });
    if (this.#waiter !== undefined) return Promise.reject(new VmletError('STORE_WATCH_BUSY', 'next() called again before the previous call settled'));
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  return(): Promise<IteratorResult<WatchEvent<K>>> {
    this.end(false);
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<WatchEvent<K>> {
    return this;
  }
}

/**
 * The latest changes of one kind, oldest first, so that a watch can start from a resourceVersion. It holds every
 * change with a resourceVersion above `floor`; older ones have been dropped (or happened before the store opened).
 */
export class WatchHistory {
  #events: WatchEvent[] = [];
  #floor: number;

  constructor(
    private readonly size: number,
    floor: number,
  ) {
    this.#floor = floor;
  }

  add(ev: WatchEvent): void {
    this.#events.push(ev);
    while (this.#events.length > this.size) {
      const dropped = this.#events.shift();
      if (dropped !== undefined) this.#floor = rvOf(dropped.object);
    }
  }

  /** Every held change after `rv`, oldest first; undefined when changes after `rv` have already been dropped. */
  since(rv: number): WatchEvent[] | undefined {
    if (rv < this.#floor) return undefined;
    return this.#events.filter((e) => rvOf(e.object) > rv);
  }
}

/** A watch's `resourceVersion` option as a number (decimal, "0" allowed); STORE_INVALID_OPTION otherwise. */
export function parseWatchRv(rv: string): number {
  if (typeof rv !== 'string' || !/^(0|[1-9][0-9]{0,15})$/.test(rv)) {
    throw new VmletError('STORE_INVALID_OPTION', `resourceVersion ${JSON.stringify(rv)} is not a resourceVersion of this store`);
  }
  return Number(rv);
}
