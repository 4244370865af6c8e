// One watch of the Kubernetes source: a bounded queue fed by client-node Watch connections, resumed from the last resourceVersion when the server ends them, retried with backoff while the API server is unreachable.

import { VmletError } from '../errors.js';
import { errorForStatus, isTransient, kubeError, statusOf } from './kube-errors.js';
import type { RawList } from './kube-client.js';
import type { Kind, KubeObject, SourceWatch, WatchEvent, WatchEventType } from './source.js';
import type { StoreLogger } from './store-core.js';
import { deepFreeze } from './store-core.js';
import { isRecord } from './store-keys.js';
import { Watcher } from './store-watch.js';

/** Opens one watch connection: client-node's `Watch.watch` (path, query, per-event callback, end callback). */
export type WatchOpener = (
  path: string,
  query: Record<string, string | number | boolean | undefined>,
  onEvent: (type: string, obj: unknown) => void,
  onDone: (err: unknown) => void,
) => Promise<AbortController>;

export interface KubeWatchDeps<K extends Kind> {
  open: WatchOpener;
  /** Lists the watched objects (only one when `rvOnly`: the list is read for its resourceVersion). */
  list: (rvOnly: boolean) => Promise<RawList>;
  normalise: (raw: unknown) => KubeObject<K>;
  log: StoreLogger;
  /** Milliseconds of a monotonic-enough clock. */
  now: () => number;
  /** How long a watch keeps retrying an unreachable API server before it fails with KUBE_API_UNAVAILABLE. */
  retryMs: number;
  /** Asked of the server per connection; it then ends the connection and the watch resumes from the last resourceVersion. */
  timeoutSeconds: number;
  /** For messages: e.g. `watch VirtualMachine ns/`. */
  what: string;
}

export interface KubeWatchTarget {
  path: string;
  fieldSelector?: string | undefined;
  labelSelector?: string | undefined;
  sendInitialEvents: boolean;
  resourceVersion?: string | undefined;
  bufferSize: number;
}

const WATCH_TYPES: ReadonlySet<string> = new Set(['ADDED', 'MODIFIED', 'DELETED']);
const MAX_BACKOFF_MS = 5000;

/** Backoff before retry `attempt` (1, 2, …): 200 ms doubling up to 5 s, ±20 % jitter. */
export function backoffMs(attempt: number, random: () => number = Math.random): number {
  const base = Math.min(MAX_BACKOFF_MS, 200 * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.8 + 0.4 * random()));
}

export class KubeWatch<K extends Kind> implements SourceWatch<K> {
  /** The delivery queue is the local store's: same buffering, overflow, failure and iteration rules. */
  readonly #out: Watcher<K>;
  #rv = '';
  #abort: AbortController | undefined;
  #wake: (() => void) | undefined;
  #started: Promise<void> | undefined;

  constructor(
    private readonly deps: KubeWatchDeps<K>,
    private readonly target: KubeWatchTarget,
    private readonly detach: (w: KubeWatch<K>) => void = () => undefined,
  ) {
    this.#out = new Watcher<K>(
      (ev): ev is WatchEvent<K> => true,
      target.bufferSize,
      () => this.#stop(),
    );
  }

  get closed(): boolean {
    return this.#out.closed;
  }

  /** The resourceVersion the watch continues from (the last event's or bookmark's). */
  get resourceVersion(): string {
    return this.#rv;
  }

  /** Starts the watch; resolves once its starting resourceVersion is fixed (a write after that is seen), or it failed. */
  start(): Promise<void> {
    if (this.#started !== undefined) return this.#started;
    let ready: () => void = () => undefined;
    this.#started = new Promise<void>((resolve) => {
      ready = resolve;
    });
    void this.#run(ready);
    return this.#started;
  }

  async #run(ready: () => void): Promise<void> {
    try {
      await this.#begin();
    } catch (e) {
      this.fail(kubeError(e, this.deps.what));
    } finally {
      ready();
    }
    await this.#follow();
  }

  /** Fixes the starting resourceVersion: the option, or a list's (with the synthetic ADDED events of sendInitialEvents). */
  async #begin(): Promise<void> {
    const t = this.target;
    if (t.resourceVersion !== undefined) {
      this.#rv = t.resourceVersion;
      return;
    }
    let attempt = 0;
    const since = this.deps.now();
    for (;;) {
      try {
        const l = await this.deps.list(!t.sendInitialEvents);
        this.#rv = l.resourceVersion;
        if (t.sendInitialEvents) {
          this.#out.extendLimit(l.items.length); // the snapshot does not count against the buffer
          for (const raw of l.items) this.#push({ type: 'ADDED', object: deepFreeze(this.deps.normalise(raw)) });
        }
        return;
      } catch (e) {
        const err = kubeError(e, this.deps.what);
        if (!isTransient(err) || this.deps.now() - since >= this.deps.retryMs || this.#out.closed) throw err;
        await this.#sleep(backoffMs(++attempt));
      }
    }
  }

  /** Connection after connection until closed or failed. */
  async #follow(): Promise<void> {
    let failingSince: number | undefined;
    let attempt = 0;
    while (!this.#out.closed) {
      const opened = this.deps.now();
      const r = await this.#connect();
      if (this.#out.closed) return;
      if (r.established) {
        failingSince = undefined;
        attempt = 0;
      }
      if (r.err === undefined) {
        // A normal end (the server's timeout): resume at once, unless the server ends connections as fast as they open.
        if (this.deps.now() - opened < 1000) await this.#sleep(backoffMs(++attempt));
        continue;
      }
      if (!isTransient(r.err)) {
        this.fail(r.err);
        return;
      }
      failingSince ??= opened;
      if (this.deps.now() - failingSince >= this.deps.retryMs) {
        this.fail(
          new VmletError('KUBE_API_UNAVAILABLE', `${this.deps.what}: the API server stayed unreachable for ${this.deps.retryMs} ms; the watch ends`, {
            cause: r.err,
          }),
        );
        return;
      }
      this.deps.log.warn({ err: r.err, attempt, resourceVersion: this.#rv }, 'kube source: watch connection failed; retrying');
      await this.#sleep(backoffMs(++attempt));
    }
  }

  /** One connection from the current resourceVersion; resolves when it ends (err undefined: ended normally). */
  #connect(): Promise<{ err: VmletError | undefined; established: boolean }> {
    return new Promise((resolve) => {
      let settled = false;
      let established = false;
      const finish = (err: VmletError | undefined): void => {
        if (settled) return;
        settled = true;
        this.#wake = undefined;
        const ac = this.#abort;
        this.#abort = undefined;
        ac?.abort();
        resolve({ err, established });
      };
      this.#wake = () => finish(undefined);
      const onEvent = (type: string, obj: unknown): void => {
        if (settled || this.#out.closed) return;
        established = true;
        if (type === 'BOOKMARK') {
          const rv = isRecord(obj) && isRecord(obj['metadata']) ? obj['metadata']['resourceVersion'] : undefined;
          if (typeof rv === 'string' && rv !== '') this.#rv = rv;
          return;
        }
        if (type === 'ERROR') {
          const st = statusOf(obj);
          finish(errorForStatus(st?.code ?? 500, st, this.deps.what));
          return;
        }
        if (!WATCH_TYPES.has(type)) return;
        let object: KubeObject<K>;
        try {
          object = deepFreeze(this.deps.normalise(obj));
        } catch (e) {
          finish(kubeError(e, this.deps.what));
          return;
        }
        this.#rv = object.metadata.resourceVersion;
        // WATCH_TYPES holds exactly the WatchEventType values.
        this.#push({ type: type as WatchEventType, object });
      };
      const t = this.target;
      const query = {
        resourceVersion: this.#rv,
        allowWatchBookmarks: true,
        timeoutSeconds: this.deps.timeoutSeconds,
        fieldSelector: t.fieldSelector,
        labelSelector: t.labelSelector,
      };
      this.deps
        .open(t.path, query, onEvent, (err) => finish(err === null || err === undefined ? undefined : kubeError(err, this.deps.what)))
        .then(
          (ac) => {
            if (settled) ac.abort();
            else {
              established = true;
              this.#abort = ac;
            }
          },
          (e: unknown) => finish(kubeError(e, this.deps.what)),
        );
    });
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#wake = undefined;
        resolve();
      }, ms);
      this.#wake = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
    });
  }

  #push(ev: WatchEvent<K>): void {
    this.#out.push(ev);
  }

  /** Ends the watch with `err`: the next `next()` (after nothing else is queued: at once) rejects with it. */
  fail(err: VmletError): void {
    this.#out.fail(err);
  }

  close(): void {
    this.#out.end(false);
  }

  #stop(): void {
    this.#abort?.abort();
    this.#abort = undefined;
    this.#wake?.();
    this.detach(this);
  }

  next(): Promise<IteratorResult<WatchEvent<K>>> {
    return this.#out.next();
  }

  return(): Promise<IteratorResult<WatchEvent<K>>> {
    this.close();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<WatchEvent<K>> {
    return this;
  }
}
