// The local store's engine: the in-memory cache, resourceVersions, durable writes and removals applied in resourceVersion order, and fan-out of changes to watchers and history.

import path from 'node:path';
import type { Logger } from 'pino';
import { VmletError } from '../errors.js';
import { errnoCode, mkdirDurable, NotDurableError, stageFileAtomic, unlinkDurable, writeFileAtomic, type StagedFile } from './atomic-file.js';
import { fsyncPolicy } from './fsync-policy.js';
import { KeyedMutex } from './keyed-mutex.js';
import type { Kind, KubeObject, WatchEvent } from './source.js';
import { isStoredObject, objectProblem, ofKind, PLURALS, STORE_KINDS } from './store-keys.js';
import { WatchHistory, type WatchSink } from './store-watch.js';

export type StoreLogger = Pick<Logger, 'info' | 'warn' | 'error'>;

export const RV_FILE = 'resource-version.json';
/** How far above the newest resourceVersion the persisted floor is set: a reopened store starts up to this far ahead. */
export const RV_FLOOR_HEADROOM = 1000;

/**
 * Events are diagnostics (Kubernetes' own expire after an hour): written and removed without fsync, they cost a start
 * no disk flushes. A power loss may lose the newest or leave a torn file, which the next open quarantines.
 */
function isDurable(kind: Kind): boolean {
  return kind !== 'Event';
}

export interface CoreOptions {
  root: string;
  log: StoreLogger;
  now: () => Date;
  maxEvents: number;
  watchBuffer: number;
  historySize: number;
  maxBytes: number;
}

/** One reserved resourceVersion on its way to disk; changes are applied to the cache and watchers in rv order. */
interface Slot {
  rv: number;
  settled: boolean;
  apply: (() => void) | undefined;
  done: () => void;
  /** A staged write waiting for its gate: it gives its rv up (`bumped`) rather than hold back a later change. */
  staged?: boolean;
  bumped?: boolean;
}

/** After a staged write gave its rv up, writes with a gate are made once it opens, for this long. */
const STAGING_PAUSE_MS = 5_000;

type Cache = Map<Kind, Map<string, Map<string, KubeObject>>>; // kind → namespace → name → frozen object

export class StoreCore {
  readonly root: string;
  readonly objectsDir: string;
  readonly quarantineDir: string;
  readonly log: StoreLogger;
  readonly now: () => Date;
  readonly maxEvents: number;
  readonly watchBuffer: number;
  readonly locks = new KeyedMutex();

  readonly #maxBytes: number;
  /** When a staged write last gave its rv up (performance.now()). */
  #bumpedAt = -Infinity;
  readonly #historySize: number;
  readonly #cache: Cache = new Map();
  readonly #watchers = new Set<WatchSink>();
  readonly #history = new Map<Kind, WatchHistory>();
  readonly #slots: Slot[] = [];
  readonly #inflight = new Set<Promise<unknown>>();
  readonly #knownDirs = new Set<string>();
  /** The newest resourceVersion reserved. */
  lastRv = 0;
  /** Every change up to this resourceVersion is in the cache and has gone to watchers; none after it. */
  appliedRv = 0;
  persistedRvFloor = 0;
  closed = false;

  constructor(opts: CoreOptions) {
    this.root = opts.root;
    this.objectsDir = path.join(opts.root, 'objects');
    this.quarantineDir = path.join(opts.root, 'quarantine');
    this.log = opts.log;
    this.now = opts.now;
    this.maxEvents = opts.maxEvents;
    this.watchBuffer = opts.watchBuffer;
    this.#maxBytes = opts.maxBytes;
    this.#historySize = opts.historySize;
    for (const k of STORE_KINDS) this.#cache.set(k, new Map());
  }

  /** After loading: resourceVersions continue from `lastRv`, and watch history starts there. */
  loaded(lastRv: number): void {
    this.lastRv = lastRv;
    this.appliedRv = lastRv;
    for (const k of STORE_KINDS) this.#history.set(k, new WatchHistory(this.#historySize, lastRv));
  }

  assertOpen(): void {
    if (this.closed) throw new VmletError('STORE_CLOSED', 'the object store is closed');
  }

  track<T>(work: Promise<T> | (() => Promise<T>)): Promise<T> {
    const p = typeof work === 'function' ? work() : work;
    this.#inflight.add(p);
    const forget = (): void => {
      this.#inflight.delete(p);
    };
    p.then(forget, forget);
    return p;
  }

  /** Stop accepting writes, wait for those under way, and end every watch (queued events are still delivered). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
    for (const w of [...this.#watchers]) w.end(true);
  }

  peek<K extends Kind>(kind: K, ns: string, name: string): KubeObject<K> | undefined {
    const o = this.#cache.get(kind)?.get(ns)?.get(name);
    return o !== undefined && ofKind(o, kind) ? o : undefined;
  }

  mustPeek<K extends Kind>(kind: K, ns: string, name: string): KubeObject<K> {
    const o = this.peek(kind, ns, name);
    if (o === undefined) throw new VmletError('STORE_NOT_FOUND', `${kind} ${ns}/${name} not found`);
    return o;
  }

  /** Frozen objects, sorted by namespace then name. */
  snapshot<K extends Kind>(kind: K, ns: string | undefined): Array<KubeObject<K>> {
    const byNs = this.#cache.get(kind);
    if (byNs === undefined) return [];
    const spaces = ns === undefined ? [...byNs.keys()].sort() : [ns];
    const out: Array<KubeObject<K>> = [];
    for (const s of spaces) {
      const m = byNs.get(s);
      if (m === undefined) continue;
      for (const name of [...m.keys()].sort()) {
        const o = m.get(name);
        if (o !== undefined && ofKind(o, kind)) out.push(o);
      }
    }
    return out;
  }

  /** Every held change of `kind` after `rv`, or undefined when some of them are no longer held. */
  historySince(kind: Kind, rv: number): WatchEvent[] | undefined {
    return this.#history.get(kind)?.since(rv);
  }

  addWatcher(w: WatchSink): void {
    this.#watchers.add(w);
  }

  removeWatcher(w: WatchSink): void {
    this.#watchers.delete(w);
  }

  /** JSON round trip (what the file will hold), shape check and size check. Returns a fresh mutable object. */
  normalise(v: unknown): KubeObject {
    let text: string;
    try {
      text = JSON.stringify(v);
    } catch (e) {
      throw new VmletError('STORE_INVALID_OBJECT', 'object is not serialisable as JSON', { cause: e });
    }
    if (Buffer.byteLength(text, 'utf8') > this.#maxBytes) {
      throw new VmletError('STORE_INVALID_OBJECT', `object is larger than ${this.#maxBytes} bytes`);
    }
    const o: unknown = JSON.parse(text);
    const problem = objectProblem(o);
    if (problem !== undefined || !isStoredObject(o)) throw new VmletError('STORE_INVALID_OBJECT', problem ?? 'malformed object');
    return o;
  }

  file(kind: Kind, ns: string, name: string): string {
    return path.join(this.objectsDir, PLURALS[kind], ns, `${name}.json`);
  }

  setCached(o: KubeObject): void {
    const byNs = this.#cache.get(o.kind);
    if (byNs === undefined) return;
    let m = byNs.get(o.metadata.namespace);
    if (m === undefined) {
      m = new Map();
      byNs.set(o.metadata.namespace, m);
    }
    m.set(o.metadata.name, o);
  }

  async ensureDir(dir: string): Promise<void> {
    if (this.#knownDirs.has(dir)) return;
    await mkdirDurable(dir);
    this.#knownDirs.add(dir);
  }

  /**
   * Write one object (caller holds its lock). `build` gets the new resourceVersion. Resolves with the frozen stored
   * object once applied. With `after`, the file is written and synced now but put in place only once `after`
   * resolves (nothing is written if it rejects, which rejects the write with its reason); the rv it holds meanwhile
   * is given up, and the write made again with a new one, if a later change would otherwise wait for it.
   */
  async write<K extends Kind>(
    type: 'ADDED' | 'MODIFIED',
    kind: K,
    ns: string,
    name: string,
    build: (rv: string) => unknown,
    opts: { after?: Promise<unknown> } = {},
  ): Promise<KubeObject<K>> {
    const after = opts.after;
    // In a burst a staged rv would be given up anyway (and its file written twice): wait, then write. So too beside
    // another staged write, or soon after one was given up: many starts at once, a few ms apart, which the fsync
    // lanes take for lone changes.
    if (after !== undefined && (fsyncPolicy.crowded() || !isDurable(kind) || !this.#mayStage())) {
      await after;
      return this.write(type, kind, ns, name, build);
    }
    const slot = this.#reserve();
    slot.staged = after !== undefined;
    let obj: KubeObject<K>;
    try {
      const built = deepFreeze(this.normalise(build(String(slot.rv))));
      if (!ofKind(built, kind)) throw new VmletError('STORE_INVALID_OBJECT', `kind ${built.kind} written as ${kind}`);
      obj = built;
    } catch (e) {
      await this.#settle(slot, undefined);
      throw e;
    }
    const apply = (): void => {
      this.setCached(obj);
      this.#emit({ type, object: obj });
    };
    const file = this.file(kind, ns, name);
    // Watchers get the change once the file is in place (its data synced); the write resolves after the directory's fsync.
    let settled: Promise<void> | undefined;
    const onVisible = (): void => {
      settled = this.#settle(slot, apply);
    };
    let staged: StagedFile;
    try {
      await this.ensureDir(path.dirname(file));
      staged = await stageFileAtomic(file, `${JSON.stringify(obj, null, 2)}\n`, { durable: isDurable(kind) });
    } catch (e) {
      if (!slot.bumped) await this.#settle(slot, undefined);
      throw writeFailed(`write ${kind} ${ns}/${name}`, e, false);
    }
    if (after !== undefined) {
      try {
        await after;
      } catch (e) {
        staged.abort();
        if (!slot.bumped) await this.#settle(slot, undefined);
        throw e;
      }
      slot.staged = false;
      if (slot.bumped) {
        staged.abort();
        return this.write(type, kind, ns, name, build);
      }
    }
    try {
      await staged.commit(onVisible);
    } catch (e) {
      const visible = e instanceof NotDurableError;
      await (settled ?? this.#settle(slot, visible ? apply : undefined));
      throw writeFailed(`write ${kind} ${ns}/${name}`, visible ? e.cause : e, visible);
    }
    await (settled ?? this.#settle(slot, apply));
    return obj;
  }

  /** Remove one object's file (caller holds its lock). The DELETED event carries the last state with a new resourceVersion. */
  async remove<K extends Kind>(kind: K, ns: string, name: string, cur: KubeObject<K>): Promise<KubeObject<K>> {
    const slot = this.#reserve();
    const last = deepFreeze(withRv(cur, String(slot.rv)));
    const apply = (): void => {
      this.#dropCached(kind, ns, name);
      this.#emit({ type: 'DELETED', object: last });
    };
    try {
      await this.#persistRvFloor(slot.rv);
      await unlinkDurable(this.file(kind, ns, name), { durable: isDurable(kind) });
    } catch (e) {
      const visible = e instanceof NotDurableError;
      await this.#settle(slot, visible ? apply : undefined);
      throw writeFailed(`delete ${kind} ${ns}/${name}`, visible ? e.cause : e, visible);
    }
    await this.#settle(slot, apply);
    return last;
  }

  #mayStage(): boolean {
    return performance.now() - this.#bumpedAt >= STAGING_PAUSE_MS && !this.#slots.some((x) => x.staged);
  }

  /** Reserve the next resourceVersion. Slots are created in rv order, so the queue is sorted. */
  #reserve(): Slot {
    const slot: Slot = { rv: ++this.lastRv, settled: false, apply: undefined, done: () => undefined };
    this.#slots.push(slot);
    return slot;
  }

  /** Mark a slot finished (with the change to apply, or none if it failed) and wait until it has been applied in rv order. */
  #settle(slot: Slot, apply: (() => void) | undefined): Promise<void> {
    const applied = new Promise<void>((resolve) => {
      slot.done = resolve;
    });
    slot.settled = true;
    slot.apply = apply;
    for (let head = this.#slots[0]; head !== undefined; head = this.#slots[0]) {
      if (!head.settled) {
        // A staged write still at its gate gives its rv up to the changes settled behind it.
        if (!head.staged || !this.#slots.some((x) => x.settled)) break;
        head.bumped = true;
        this.#bumpedAt = performance.now();
      }
      this.#slots.shift();
      if (head.settled && head.apply !== undefined) {
        try {
          head.apply();
        } catch (e) {
          this.log.error({ err: e }, 'store: applying a change failed');
        }
      }
      this.appliedRv = head.rv;
      if (head.settled) head.done();
    }
    return applied;
  }

  #emit(ev: WatchEvent): void {
    this.#history.get(ev.object.kind)?.add(ev);
    for (const w of this.#watchers) w.offer(ev);
  }

  #dropCached(kind: Kind, ns: string, name: string): void {
    const m = this.#cache.get(kind)?.get(ns);
    m?.delete(name);
    if (m !== undefined && m.size === 0) this.#cache.get(kind)?.delete(ns);
  }

  /**
   * resourceVersions must never go back, but the highest one in use can disappear with a delete. Before a delete we
   * therefore record a floor (the newest rv reserved so far) in objects/resource-version.json; open starts above it.
   */
  async #persistRvFloor(rv: number): Promise<void> {
    await this.locks.run('\0rv-floor', async () => {
      if (this.persistedRvFloor >= rv) return;
      // Headroom: the next deletes (each VMI's events go with it) need no write of their own.
      const floor = this.lastRv + RV_FLOOR_HEADROOM;
      await writeFileAtomic(path.join(this.objectsDir, RV_FILE), `${JSON.stringify({ resourceVersion: String(floor) })}\n`);
      this.persistedRvFloor = floor;
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Small JSON helpers

export function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  }
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => Object.hasOwn(b, k) && deepEqual(Reflect.get(a, k), Reflect.get(b, k)));
}

export function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

/** A mutable deep copy for callers (the cache only holds frozen objects). */
export function copy<T>(v: T): T {
  return structuredClone(v);
}

export function withRv<T extends KubeObject>(o: T, rv: string): T {
  return { ...o, metadata: { ...o.metadata, resourceVersion: rv } };
}

function writeFailed(what: string, cause: unknown, visible: boolean): VmletError {
  const code = errnoCode(cause) ?? 'error';
  const msg = visible ? `${what}: done but not confirmed on disk (${code})` : `${what} failed (${code}); the previous version is intact`;
  return new VmletError('STORE_WRITE_FAILED', msg, { cause });
}
