// A bounded async-iterable queue: the producer never waits; when the buffer is full the oldest item is dropped and counted.

export class BoundedQueue<T> implements AsyncIterableIterator<T> {
  private buf: T[] = [];
  private head = 0;
  private waiter: ((r: IteratorResult<T>) => void) | undefined;
  private ended = false;
  /** Items dropped because the consumer fell more than `capacity` behind. */
  dropped = 0;

  constructor(
    private readonly capacity: number,
    private readonly onDrop: (n: number) => void,
    private readonly onReturn: () => void,
  ) {}

  push(item: T): void {
    if (this.ended) return;
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w({ value: item, done: false });
      return;
    }
    if (this.buf.length - this.head >= this.capacity) {
      // Drop the oldest: the consumer then sees the latest state, and `dropped` tells it that it missed some.
      this.head++;
      this.dropped++;
      this.onDrop(1);
    }
    this.buf.push(item);
    if (this.head > 1024 && this.head * 2 > this.buf.length) {
      this.buf = this.buf.slice(this.head);
      this.head = 0;
    }
  }

  /** No more items will come; buffered items are still delivered, then the iterator is done. */
  end(): void {
    this.ended = true;
    const w = this.waiter;
    if (w && this.head >= this.buf.length) {
      this.waiter = undefined;
      w({ value: undefined, done: true });
    }
  }

  get size(): number {
    return this.buf.length - this.head;
  }

  next(): Promise<IteratorResult<T>> {
    if (this.head < this.buf.length) {
      const value = this.buf[this.head] as T;
      this.head++;
      if (this.head === this.buf.length) {
        this.buf = [];
        this.head = 0;
      }
      return Promise.resolve({ value, done: false });
    }
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    if (this.waiter) return Promise.reject(new Error('events(): next() called again before the previous call settled'));
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  return(): Promise<IteratorResult<T>> {
    this.buf = [];
    this.head = 0;
    if (!this.ended) this.onReturn();
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
