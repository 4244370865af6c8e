// Delivery of QMP events: synchronous listeners by name (or '*') and buffered async-iterator subscriptions that drop the oldest when full.
import type { QmpEventListener } from './client-types.js';
import { BoundedQueue } from './event-queue.js';
import type { QmpLogger } from './logger.js';
import type { QmpEvent } from './types.js';

interface Subscription {
  queue: BoundedQueue<QmpEvent>;
  names: Set<string> | undefined;
}

export interface EventHubOptions {
  log: QmpLogger;
  /** Buffer size of a subscription that names none. */
  bufferSize: number;
}

export class EventHub {
  private readonly listeners = new Map<string, Set<QmpEventListener<string>>>();
  private readonly subscriptions = new Set<Subscription>();
  private droppedCount = 0;

  constructor(private readonly opts: EventHubOptions) {}

  /** Events dropped so far by all subscriptions whose buffers overflowed. */
  get dropped(): number {
    return this.droppedCount;
  }

  /** Hands one event to its listeners, then to '*' listeners, then to the matching subscriptions; a throwing listener is logged. */
  dispatch(ev: QmpEvent): void {
    this.emit(ev.event, ev);
    this.emit('*', ev);
    for (const s of this.subscriptions) {
      if (s.names === undefined || s.names.has(ev.event)) s.queue.push(ev);
    }
  }

  private emit(key: string, ev: QmpEvent): void {
    const set = this.listeners.get(key);
    if (!set) return;
    for (const fn of set) {
      try {
        fn(ev.data, ev);
      } catch (e) {
        this.opts.log.error({ err: e, event: ev.event }, 'qmp event listener threw');
      }
    }
  }

  /** Adds a listener for one event name (or '*'); returns a function that removes it. */
  on(event: string, fn: QmpEventListener<string>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  off(event: string, fn: QmpEventListener<string>): void {
    this.listeners.get(event)?.delete(fn);
  }

  /** A new subscription (optionally only the given names); already ended when the connection is closed. */
  subscribe(opts: { names?: string[]; bufferSize?: number }, closed: boolean): BoundedQueue<QmpEvent> {
    const sub: Subscription = {
      queue: new BoundedQueue<QmpEvent>(
        opts.bufferSize ?? this.opts.bufferSize,
        (n) => {
          this.droppedCount += n;
          this.opts.log.warn({ dropped: this.droppedCount }, 'qmp: event buffer full, dropped the oldest event');
        },
        () => this.subscriptions.delete(sub),
      ),
      names: opts.names ? new Set(opts.names) : undefined,
    };
    if (closed) sub.queue.end();
    else this.subscriptions.add(sub);
    return sub.queue;
  }

  /** The connection is gone: every subscription ends after its buffered events. */
  endAll(): void {
    for (const s of this.subscriptions) s.queue.end();
    this.subscriptions.clear();
  }
}
