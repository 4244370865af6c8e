// The standalone daemon's embedded object store: one atomic JSON file per object, optimistic concurrency, ordered watches and kubectl-style events.

import { randomBytes, randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { VmletError } from '../errors.js';
import { errnoCode, isTempName, mkdirDurable, moveAside, NotDurableError, unlinkDurable, writeFileAtomic } from './atomic-file.js';
import { KeyedMutex } from './keyed-mutex.js';

// ---------------------------------------------------------------------------------------------------------------
// Types

export type StoreKind = 'VirtualMachine' | 'VirtualMachineInstance' | 'Event';

const PLURALS: Readonly<Record<StoreKind, string>> = {
  VirtualMachine: 'virtualmachines',
  VirtualMachineInstance: 'virtualmachineinstances',
  Event: 'events',
};
export const STORE_KINDS: readonly StoreKind[] = ['VirtualMachine', 'VirtualMachineInstance', 'Event'];

export function isStoreKind(kind: unknown): kind is StoreKind {
  return typeof kind === 'string' && Object.hasOwn(PLURALS, kind);
}

export interface ObjectMeta {
  name: string;
  namespace: string;
  uid: string;
  resourceVersion: string;
  generation: number;
  creationTimestamp: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
}

/** A stored object as it is on disk. `spec`/`status` are opaque here: callers narrow them. Events carry their fields at the top level, as in Kubernetes. */
export interface StoredObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  spec?: unknown;
  status?: unknown;
}

/** What `create` takes: system metadata (uid, resourceVersion, generation, timestamps) is assigned by the store and ignored if present. */
export interface NewObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    finalizers?: string[];
  };
  spec?: unknown;
  status?: unknown;
}

export interface ObjectReference {
  kind: string;
  namespace: string;
  name: string;
  uid: string;
  apiVersion?: string;
}

export type EventType = 'Normal' | 'Warning';

export interface EventObject extends StoredObject {
  kind: 'Event';
  involvedObject: ObjectReference;
  type: EventType;
  reason: string;
  message: string;
  count: number;
  firstTimestamp: string;
  lastTimestamp: string;
  source: { component: string };
}

export interface RecordEventInput {
  involvedObject: ObjectReference;
  type: EventType;
  reason: string;
  message: string;
  /** Reporting component; default 'vmlet'. */
  source?: string;
}

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED';

/** A change as watchers see it. `object` is deep-frozen and shared between watchers: copy it before changing it. */
export interface WatchEvent {
  type: WatchEventType;
  object: StoredObject;
}

export interface WatchOptions {
  /** Most events that may wait for this watcher before it is closed with STORE_WATCH_OVERFLOW (default: the store's). */
  bufferSize?: number;
  /** Start with a synthetic ADDED event for each matching object (a consistent snapshot), then the changes after it. */
  sendInitialEvents?: boolean;
}

/** An async iterable of changes. Iteration throws STORE_WATCH_OVERFLOW when the consumer fell too far behind, and ends when the watch or the store is closed. */
export interface StoreWatch extends AsyncIterableIterator<WatchEvent> {
  close(): void;
  readonly closed: boolean;
}

export type StoreLogger = Pick<Logger, 'info' | 'warn' | 'error'>;

export interface LocalStoreOptions {
  /** The daemon's state directory; the store uses `objects/` and `quarantine/` below it. */
  dir: string;
  logger?: StoreLogger;
  now?: () => Date;
  /** Events kept per involved object; the least recently seen are removed beyond it. Default 50. */
  maxEventsPerObject?: number;
  /** Default per-watcher buffer. Default 1000. */
  watchBufferSize?: number;
  /** Largest serialised object accepted. Default 1 MiB. */
  maxObjectBytes?: number;
}

export interface UpdateOptions {
  /** Fail with STORE_CONFLICT unless the stored object still has this resourceVersion. */
  expectedResourceVersion?: string;
}

export interface DeleteOptions {
  expectedResourceVersion?: string;
  /** Fail with STORE_CONFLICT unless the stored object has this uid (guards against deleting a re-created namesake). */
  expectedUid?: string;
}

export interface ListEventsOptions {
  /** Only events whose involvedObject has this kind. */
  kind?: string;
}

// ---------------------------------------------------------------------------------------------------------------
// Keys and validation

/** Longest name the store accepts: `<name>.json` must fit in one 255-byte file name. */
export const MAX_NAME_BYTES = 250;
const MAX_KEY_BYTES = 253;
const RV_FILE = 'resource-version.json';
const EVENT_REASON_MAX = 128;
const EVENT_MESSAGE_MAX = 1024;

function invalidKey(what: string, value: unknown, why: string): VmletError {
  const shown = typeof value === 'string' ? JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value) : typeof value;
  return new VmletError('STORE_INVALID_KEY', `invalid ${what} ${shown}: ${why}`);
}

/** Defence in depth: refuse anything that is not a single, harmless path component. Callers validate DNS names first. */
function checkKeyPart(what: 'namespace' | 'name', value: unknown): string {
  if (typeof value !== 'string') throw invalidKey(what, value, 'not a string');
  if (value.length === 0) throw invalidKey(what, value, 'empty');
  const bytes = Buffer.byteLength(value, 'utf8');
  const max = what === 'name' ? MAX_NAME_BYTES : MAX_KEY_BYTES;
  if (bytes > max) throw invalidKey(what, value, `longer than ${max} bytes`);
  if (value.includes('/') || value.includes('\\')) throw invalidKey(what, value, 'contains a path separator');
  if (value.includes('\0')) throw invalidKey(what, value, 'contains NUL');
  if (value.includes('..')) throw invalidKey(what, value, "contains '..'");
  if (value.startsWith('.')) throw invalidKey(what, value, "starts with '.'");
  if (/[\u0000-\u001f\u007f]/.test(value)) throw invalidKey(what, value, 'contains a control character');
  return value;
}

function checkKind(kind: unknown): StoreKind {
  if (!isStoreKind(kind)) throw invalidKey('kind', kind, `not one of ${STORE_KINDS.join(', ')}`);
  return kind;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isStringMap(v: unknown): v is Record<string, string> {
  return isRecord(v) && Object.values(v).every((x) => typeof x === 'string');
}

const RV_RE = /^[1-9][0-9]{0,15}$/;

/** Why `v` is not a well-formed stored object, or undefined when it is. */
function objectProblem(v: unknown): string | undefined {
  if (!isRecord(v)) return 'not a JSON object';
  if (typeof v['apiVersion'] !== 'string' || v['apiVersion'] === '') return 'apiVersion missing';
  if (!isStoreKind(v['kind'])) return 'kind missing or unknown';
  const m = v['metadata'];
  if (!isRecord(m)) return 'metadata missing';
  if (typeof m['name'] !== 'string' || typeof m['namespace'] !== 'string') return 'metadata.name/namespace missing';
  if (typeof m['uid'] !== 'string' || m['uid'] === '') return 'metadata.uid missing';
  if (typeof m['resourceVersion'] !== 'string' || !RV_RE.test(m['resourceVersion'])) return 'metadata.resourceVersion invalid';
  if (typeof m['generation'] !== 'number' || !Number.isSafeInteger(m['generation']) || m['generation'] < 1) return 'metadata.generation invalid';
  if (typeof m['creationTimestamp'] !== 'string') return 'metadata.creationTimestamp missing';
  if (m['deletionTimestamp'] !== undefined && typeof m['deletionTimestamp'] !== 'string') return 'metadata.deletionTimestamp invalid';
  return userMetaProblem(m);
}

function userMetaProblem(m: Record<string, unknown>): string | undefined {
  if (m['labels'] !== undefined && !isStringMap(m['labels'])) return 'metadata.labels must map strings to strings';
  if (m['annotations'] !== undefined && !isStringMap(m['annotations'])) return 'metadata.annotations must map strings to strings';
  const f = m['finalizers'];
  if (f !== undefined && !(Array.isArray(f) && f.every((x) => typeof x === 'string'))) return 'metadata.finalizers must be a list of strings';
  return undefined;
}

function isStoredObject(v: unknown): v is StoredObject {
  return objectProblem(v) === undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Small JSON helpers

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  }
  const ra = a as Record<string, unknown>;
  const rb = b as Record<string, unknown>;
  const ka = Object.keys(ra);
  if (ka.length !== Object.keys(rb).length) return false;
  return ka.every((k) => Object.hasOwn(rb, k) && deepEqual(ra[k], rb[k]));
}

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

/** A mutable deep copy for callers (the cache only holds frozen objects). */
function copy<T>(v: T): T {
  return structuredClone(v);
}

function truncate(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

function rvOf(o: StoredObject): number {
  return Number(o.metadata.resourceVersion);
}

function isEventObject(o: StoredObject): o is EventObject {
  const r = o as unknown as Record<string, unknown>;
  return o.kind === 'Event' && isRecord(r['involvedObject']) && typeof r['lastTimestamp'] === 'string';
}

function eventOrder(a: EventObject, b: EventObject): number {
  if (a.lastTimestamp !== b.lastTimestamp) return a.lastTimestamp < b.lastTimestamp ? -1 : 1;
  return rvOf(a) - rvOf(b);
}

// ---------------------------------------------------------------------------------------------------------------
// Watchers

interface Waiter {
  resolve: (r: IteratorResult<WatchEvent>) => void;
  reject: (e: unknown) => void;
}

class Watcher implements StoreWatch {
  #queue: WatchEvent[] = [];
  #waiter: Waiter | undefined;
  #state: 'open' | 'ended' | 'failed' = 'open';
  #error: VmletError | undefined;

  constructor(
    readonly matches: (o: StoredObject) => boolean,
    private readonly limit: number,
    private readonly detach: (w: Watcher) => void,
  ) {}

  get closed(): boolean {
    return this.#state !== 'open';
  }

  /** Called by the store; never blocks and never throws. */
  push(ev: WatchEvent): void {
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

  next(): Promise<IteratorResult<WatchEvent>> {
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

  return(): Promise<IteratorResult<WatchEvent>> {
    this.end(false);
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<WatchEvent> {
    return this;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The store

/** One reserved resourceVersion on its way to disk; changes are applied to the cache and watchers in rv order. */
interface Slot {
  rv: number;
  settled: boolean;
  apply: (() => void) | undefined;
  done: () => void;
}

type Cache = Map<StoreKind, Map<string, Map<string, StoredObject>>>; // kind → namespace → name → frozen object

export class LocalStore {
  readonly #root: string;
  readonly #objectsDir: string;
  readonly #quarantineDir: string;
  readonly #log: StoreLogger;
  readonly #now: () => Date;
  readonly #maxEvents: number;
  readonly #watchBuffer: number;
  readonly #maxBytes: number;

  readonly #cache: Cache = new Map();
  readonly #locks = new KeyedMutex();
  readonly #watchers = new Set<Watcher>();
  readonly #slots: Slot[] = [];
  readonly #inflight = new Set<Promise<unknown>>();
  readonly #knownDirs = new Set<string>();
  #lastRv = 0;
  #persistedRvFloor = 0;
  #closed = false;

  private constructor(opts: LocalStoreOptions) {
    this.#root = path.resolve(opts.dir);
    this.#objectsDir = path.join(this.#root, 'objects');
    this.#quarantineDir = path.join(this.#root, 'quarantine');
    this.#log = opts.logger ?? pino({ name: 'vmlet-store' }, pino.destination(2));
    this.#now = opts.now ?? (() => new Date());
    this.#maxEvents = positiveInt(opts.maxEventsPerObject, 50, 'maxEventsPerObject');
    this.#watchBuffer = positiveInt(opts.watchBufferSize, 1000, 'watchBufferSize');
    this.#maxBytes = positiveInt(opts.maxObjectBytes, 1024 * 1024, 'maxObjectBytes');
    for (const k of STORE_KINDS) this.#cache.set(k, new Map());
  }

  /** Open (creating if needed) the store under `dir`: load every object, remove leftover temp files, quarantine unreadable files. */
  static async open(opts: LocalStoreOptions): Promise<LocalStore> {
    const store = new LocalStore(opts);
    try {
      await store.#load();
    } catch (e) {
      if (e instanceof VmletError) throw e;
      throw new VmletError('STORE_OPEN_FAILED', `cannot open the object store in ${store.#root}: ${errnoCode(e) ?? String(e)}`, { cause: e });
    }
    await store.#pruneOrphanEvents();
    return store;
  }

  /** The state directory this store lives in. */
  get dir(): string {
    return this.#root;
  }

  /** The newest resourceVersion handed out (as a string), "0" for an empty new store. */
  get resourceVersion(): string {
    return String(this.#lastRv);
  }

  // ----- reads -----

  async get(kind: StoreKind, namespace: string, name: string): Promise<StoredObject | undefined> {
    const k = checkKind(kind);
    const o = this.#peek(k, checkKeyPart('namespace', namespace), checkKeyPart('name', name));
    return o === undefined ? undefined : copy(o);
  }

  /** Objects of `kind` (in `namespace` if given), sorted by namespace then name. */
  async list(kind: StoreKind, namespace?: string): Promise<StoredObject[]> {
    return this.#snapshot(checkKind(kind), namespace === undefined ? undefined : checkKeyPart('namespace', namespace)).map(copy);
  }

  // ----- writes -----

  /** Store a new object; assigns uid, resourceVersion, generation 1 and creationTimestamp. STORE_ALREADY_EXISTS if present. */
  async create(obj: NewObject): Promise<StoredObject> {
    this.#assertOpen();
    const kind = checkKind(obj.kind);
    const meta: unknown = obj.metadata;
    if (!isRecord(meta)) throw new VmletError('STORE_INVALID_OBJECT', 'metadata must be an object');
    const ns = checkKeyPart('namespace', meta['namespace']);
    const name = checkKeyPart('name', meta['name']);
    const problem = userMetaProblem(meta);
    if (problem !== undefined) throw new VmletError('STORE_INVALID_OBJECT', problem);
    if (typeof obj.apiVersion !== 'string' || obj.apiVersion === '') throw new VmletError('STORE_INVALID_OBJECT', 'apiVersion missing');
    return this.#track(
      this.#locks.run(lockKey(kind, ns, name), async () => {
        if (this.#peek(kind, ns, name) !== undefined) {
          throw new VmletError('STORE_ALREADY_EXISTS', `${kind} ${ns}/${name} already exists`);
        }
        const stamp = this.#now().toISOString();
        const written = await this.#write('ADDED', kind, ns, name, (rv) => {
          const m: Record<string, unknown> = { ...meta, name, namespace: ns, uid: randomUUID(), resourceVersion: rv, generation: 1, creationTimestamp: stamp };
          delete m['deletionTimestamp'];
          return { ...obj, metadata: m };
        });
        return copy(written);
      }),
    );
  }

  /**
   * Replace an object's spec and user metadata (labels, annotations, finalizers, other top-level fields). Status is
   * kept as stored: it changes only through updateStatus, so spec writers and status writers never undo each other.
   * System metadata (uid, creationTimestamp, resourceVersion, generation, deletionTimestamp) is the store's.
   * Bumps generation when spec changed; a change that changes nothing writes nothing and returns the stored object.
   * STORE_CONFLICT when `expectedResourceVersion` (or a given metadata.uid) does not match. Removing the last
   * finalizer of an object that is being deleted removes it (the returned object is its last state).
   */
  async update(obj: StoredObject, opts: UpdateOptions = {}): Promise<StoredObject> {
    this.#assertOpen();
    const kind = checkKind(obj.kind);
    const meta: unknown = obj.metadata;
    if (!isRecord(meta)) throw new VmletError('STORE_INVALID_OBJECT', 'metadata must be an object');
    const ns = checkKeyPart('namespace', meta['namespace']);
    const name = checkKeyPart('name', meta['name']);
    const problem = userMetaProblem(meta);
    if (problem !== undefined) throw new VmletError('STORE_INVALID_OBJECT', problem);
    if (typeof obj.apiVersion !== 'string' || obj.apiVersion === '') throw new VmletError('STORE_INVALID_OBJECT', 'apiVersion missing');
    let removed = false;
    return this.#track(async () => {
      const result = await this.#locks.run(lockKey(kind, ns, name), async () => {
        const cur = this.#mustPeek(kind, ns, name);
        checkPreconditions(cur, opts.expectedResourceVersion, typeof meta['uid'] === 'string' ? meta['uid'] : undefined);
        const next = this.#normalise({ ...obj, status: cur.status, metadata: { ...meta, ...systemMeta(cur) } });
        if (!deepEqual(next.spec, cur.spec)) next.metadata.generation = cur.metadata.generation + 1;
        if (deepEqual(next, cur)) return copy(cur);
        if (next.metadata.deletionTimestamp !== undefined && (next.metadata.finalizers ?? []).length === 0) {
          removed = true;
          return copy(await this.#remove(kind, ns, name, next));
        }
        const written = await this.#write('MODIFIED', kind, ns, name, (rv) => withRv(next, rv));
        return copy(written);
      });
      if (removed) await this.#removeEventsOf(kind, ns, name);
      return result;
    });
  }

  /**
   * Change an object's status: `mutate` gets a private copy of the current status (undefined if none) and returns
   * the new one. Runs serialised with every other write to the object, so concurrent status writers never lose
   * each other's changes. A mutation that changes nothing writes nothing. STORE_NOT_FOUND if the object is absent.
   */
  async updateStatus<S = unknown>(kind: StoreKind, namespace: string, name: string, mutate: (status: S | undefined) => S | undefined): Promise<StoredObject> {
    this.#assertOpen();
    const k = checkKind(kind);
    const ns = checkKeyPart('namespace', namespace);
    const n = checkKeyPart('name', name);
    return this.#track(
      this.#locks.run(lockKey(k, ns, n), async () => {
        const cur = this.#mustPeek(k, ns, n);
        const status = mutate(copy(cur.status) as S | undefined);
        const next = this.#normalise({ ...cur, status });
        if (deepEqual(next, cur)) return copy(cur);
        const written = await this.#write('MODIFIED', k, ns, n, (rv) => withRv(next, rv));
        return copy(written);
      }),
    );
  }

  /**
   * Delete an object. Without finalizers it is removed at once (with its events) and the returned object is its
   * last state. With finalizers it only gets metadata.deletionTimestamp (and a generation bump) and stays until an
   * update removes the last finalizer; the returned object then shows deletionTimestamp. STORE_NOT_FOUND if absent.
   */
  async delete(kind: StoreKind, namespace: string, name: string, opts: DeleteOptions = {}): Promise<StoredObject> {
    this.#assertOpen();
    const k = checkKind(kind);
    const ns = checkKeyPart('namespace', namespace);
    const n = checkKeyPart('name', name);
    let removed = false;
    return this.#track(async () => {
      const result = await this.#locks.run(lockKey(k, ns, n), async () => {
        const cur = this.#mustPeek(k, ns, n);
        checkPreconditions(cur, opts.expectedResourceVersion, opts.expectedUid);
        if ((cur.metadata.finalizers ?? []).length > 0) {
          if (cur.metadata.deletionTimestamp !== undefined) return copy(cur);
          const next = this.#normalise({
            ...cur,
            metadata: { ...cur.metadata, deletionTimestamp: this.#now().toISOString(), generation: cur.metadata.generation + 1 },
          });
          return copy(await this.#write('MODIFIED', k, ns, n, (rv) => withRv(next, rv)));
        }
        removed = true;
        return copy(await this.#remove(k, ns, n, cur));
      });
      if (removed) await this.#removeEventsOf(k, ns, n);
      return result;
    });
  }

  // ----- watch -----

  /** Watch changes of `kind`, optionally only in `namespace`, optionally only the object `name`. Synchronous: no change after this call is missed. */
  watch(kind: StoreKind, namespace?: string, name?: string, opts: WatchOptions = {}): StoreWatch {
    this.#assertOpen();
    const k = checkKind(kind);
    const ns = namespace === undefined ? undefined : checkKeyPart('namespace', namespace);
    const n = name === undefined ? undefined : checkKeyPart('name', name);
    const matches = (o: StoredObject): boolean =>
      o.kind === k && (ns === undefined || o.metadata.namespace === ns) && (n === undefined || o.metadata.name === n);
    const initial = opts.sendInitialEvents === true ? this.#snapshot(k, ns).filter(matches) : [];
    const buffer = positiveInt(opts.bufferSize, this.#watchBuffer, 'bufferSize');
    const w = new Watcher(matches, buffer + initial.length, (x) => this.#watchers.delete(x));
    for (const o of initial) w.push({ type: 'ADDED', object: o });
    this.#watchers.add(w);
    return w;
  }

  // ----- events -----

  /**
   * Record an event about an object, like kubectl's events: a repeat (same object, type, reason and message) bumps
   * count and lastTimestamp of the existing Event; at most maxEventsPerObject are kept per object, the least
   * recently seen go first. Events are removed together with their object. Returns the stored Event.
   */
  async recordEvent(input: RecordEventInput): Promise<EventObject> {
    this.#assertOpen();
    const inv = input.involvedObject;
    const ns = checkKeyPart('namespace', inv.namespace);
    const objName = checkKeyPart('name', inv.name);
    if (typeof inv.kind !== 'string' || inv.kind === '') throw new VmletError('STORE_INVALID_OBJECT', 'involvedObject.kind missing');
    if (input.type !== 'Normal' && input.type !== 'Warning') throw new VmletError('STORE_INVALID_OBJECT', `event type must be Normal or Warning`);
    const reason = truncate(String(input.reason), EVENT_REASON_MAX);
    const message = truncate(String(input.message), EVENT_MESSAGE_MAX);
    const involved: ObjectReference = { kind: inv.kind, namespace: ns, name: objName, uid: String(inv.uid) };
    if (inv.apiVersion !== undefined) involved.apiVersion = inv.apiVersion;
    const component = input.source ?? 'vmlet';

    return this.#track(
      this.#locks.run(eventsLockKey(inv.kind, ns, objName), async () => {
        const mine = this.#eventsOf(inv.kind, ns, objName);
        const same = mine.find(
          (e) => e.involvedObject.uid === involved.uid && e.type === input.type && e.reason === reason && e.message === message && e.source.component === component,
        );
        const stamp = this.#now().toISOString();
        if (same !== undefined) {
          const evName = same.metadata.name;
          const bumped = await this.#locks.run(lockKey('Event', ns, evName), async () => {
            const cur = this.#peek('Event', ns, evName);
            if (cur === undefined || !isEventObject(cur)) return undefined;
            const next = this.#normalise({ ...cur, count: cur.count + 1, lastTimestamp: stamp });
            return this.#write('MODIFIED', 'Event', ns, evName, (rv) => withRv(next, rv));
          });
          if (bumped !== undefined && isEventObject(bumped)) return copy(bumped);
        }
        const evName = `${objName.slice(0, MAX_NAME_BYTES - 17)}.${randomBytes(8).toString('hex')}`;
        const created = await this.#locks.run(lockKey('Event', ns, evName), () =>
          this.#write('ADDED', 'Event', ns, evName, (rv) => ({
            apiVersion: 'v1',
            kind: 'Event',
            metadata: { name: evName, namespace: ns, uid: randomUUID(), resourceVersion: rv, generation: 1, creationTimestamp: stamp },
            involvedObject: involved,
            type: input.type,
            reason,
            message,
            count: 1,
            firstTimestamp: stamp,
            lastTimestamp: stamp,
            source: { component },
          })),
        );
        // Enforce the cap: drop the least recently seen beyond maxEventsPerObject.
        const all = this.#eventsOf(inv.kind, ns, objName);
        for (const old of all.slice(0, Math.max(0, all.length - this.#maxEvents))) {
          await this.#deleteEventQuietly(old);
        }
        if (!isEventObject(created)) throw new VmletError('STORE_INVALID_OBJECT', 'stored event has the wrong shape');
        return copy(created);
      }),
    );
  }

  /** Events in `namespace` (all if omitted) about objects named `objectName` (all if omitted), oldest first by lastTimestamp. */
  async listEvents(namespace?: string, objectName?: string, opts: ListEventsOptions = {}): Promise<EventObject[]> {
    const ns = namespace === undefined ? undefined : checkKeyPart('namespace', namespace);
    const on = objectName === undefined ? undefined : checkKeyPart('name', objectName);
    return this.#snapshot('Event', ns)
      .filter(isEventObject)
      .filter((e) => (on === undefined || e.involvedObject.name === on) && (opts.kind === undefined || e.involvedObject.kind === opts.kind))
      .sort(eventOrder)
      .map(copy);
  }

  // ----- lifecycle -----

  /** Stop accepting writes, wait for those under way, and end every watch (queued events are still delivered). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
    for (const w of [...this.#watchers]) w.end(true);
  }

  // ---------------------------------------------------------------------------------------------------------------
  // internals

  #assertOpen(): void {
    if (this.#closed) throw new VmletError('STORE_CLOSED', 'the object store is closed');
  }

  #track<T>(work: Promise<T> | (() => Promise<T>)): Promise<T> {
    const p = typeof work === 'function' ? work() : work;
    this.#inflight.add(p);
    const forget = (): void => {
      this.#inflight.delete(p);
    };
    p.then(forget, forget);
    return p;
  }

  #peek(kind: StoreKind, ns: string, name: string): StoredObject | undefined {
    return this.#cache.get(kind)?.get(ns)?.get(name);
  }

  #mustPeek(kind: StoreKind, ns: string, name: string): StoredObject {
    const o = this.#peek(kind, ns, name);
    if (o === undefined) throw new VmletError('STORE_NOT_FOUND', `${kind} ${ns}/${name} not found`);
    return o;
  }

  /** Frozen objects, sorted by namespace then name. */
  #snapshot(kind: StoreKind, ns: string | undefined): StoredObject[] {
    const byNs = this.#cache.get(kind);
    if (byNs === undefined) return [];
    const spaces = ns === undefined ? [...byNs.keys()].sort() : [ns];
    const out: StoredObject[] = [];
    for (const s of spaces) {
      const m = byNs.get(s);
      if (m === undefined) continue;
      for (const name of [...m.keys()].sort()) {
        const o = m.get(name);
        if (o !== undefined) out.push(o);
      }
    }
    return out;
  }

  #eventsOf(kind: string, ns: string, name: string): EventObject[] {
    return this.#snapshot('Event', ns)
      .filter(isEventObject)
      .filter((e) => e.involvedObject.kind === kind && e.involvedObject.name === name)
      .sort(eventOrder);
  }

  /** JSON round trip (what the file will hold), shape check and size check. Returns a fresh mutable object. */
  #normalise(v: unknown): StoredObject {
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

  #file(kind: StoreKind, ns: string, name: string): string {
    return path.join(this.#objectsDir, PLURALS[kind], ns, `${name}.json`);
  }

  /** Reserve the next resourceVersion. Slots are created in rv order, so the queue is sorted. */
  #reserve(): Slot {
    const slot: Slot = { rv: ++this.#lastRv, settled: false, apply: undefined, done: () => undefined };
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
    for (let head = this.#slots[0]; head !== undefined && head.settled; head = this.#slots[0]) {
      this.#slots.shift();
      if (head.apply !== undefined) {
        try {
          head.apply();
        } catch (e) {
          this.#log.error({ err: e }, 'store: applying a change failed');
        }
      }
      head.done();
    }
    return applied;
  }

  #emit(ev: WatchEvent): void {
    for (const w of this.#watchers) if (w.matches(ev.object)) w.push(ev);
  }

  #setCached(kind: StoreKind, o: StoredObject): void {
    const byNs = this.#cache.get(kind);
    if (byNs === undefined) return;
    let m = byNs.get(o.metadata.namespace);
    if (m === undefined) {
      m = new Map();
      byNs.set(o.metadata.namespace, m);
    }
    m.set(o.metadata.name, o);
  }

  #dropCached(kind: StoreKind, ns: string, name: string): void {
    const m = this.#cache.get(kind)?.get(ns);
    m?.delete(name);
    if (m !== undefined && m.size === 0) this.#cache.get(kind)?.delete(ns);
  }

  async #ensureDir(dir: string): Promise<void> {
    if (this.#knownDirs.has(dir)) return;
    await mkdirDurable(dir);
    this.#knownDirs.add(dir);
  }

  /** Write one object (caller holds its lock). `build` gets the new resourceVersion. Resolves with the frozen stored object once applied. */
  async #write(type: 'ADDED' | 'MODIFIED', kind: StoreKind, ns: string, name: string, build: (rv: string) => unknown): Promise<StoredObject> {
    const slot = this.#reserve();
    let obj: StoredObject;
    try {
      obj = deepFreeze(this.#normalise(build(String(slot.rv))));
    } catch (e) {
      await this.#settle(slot, undefined);
      throw e;
    }
    const apply = (): void => {
      this.#setCached(kind, obj);
      this.#emit({ type, object: obj });
    };
    const file = this.#file(kind, ns, name);
    try {
      await this.#ensureDir(path.dirname(file));
      await writeFileAtomic(file, `${JSON.stringify(obj, null, 2)}\n`);
    } catch (e) {
      const visible = e instanceof NotDurableError;
      await this.#settle(slot, visible ? apply : undefined);
      throw writeFailed(`write ${kind} ${ns}/${name}`, visible ? e.cause : e, visible);
    }
    await this.#settle(slot, apply);
    return obj;
  }

  /** Remove one object's file (caller holds its lock). The DELETED event carries the last state with a new resourceVersion. */
  async #remove(kind: StoreKind, ns: string, name: string, cur: StoredObject): Promise<StoredObject> {
    const slot = this.#reserve();
    const last = deepFreeze(withRv(cur, String(slot.rv)));
    const apply = (): void => {
      this.#dropCached(kind, ns, name);
      this.#emit({ type: 'DELETED', object: last });
    };
    try {
      await this.#persistRvFloor(slot.rv);
      await unlinkDurable(this.#file(kind, ns, name));
    } catch (e) {
      const visible = e instanceof NotDurableError;
      await this.#settle(slot, visible ? apply : undefined);
      throw writeFailed(`delete ${kind} ${ns}/${name}`, visible ? e.cause : e, visible);
    }
    await this.#settle(slot, apply);
    return last;
  }

  /**
   * resourceVersions must never go back, but the highest one in use can disappear with a delete. Before a delete we
   * therefore record a floor (the newest rv reserved so far) in objects/resource-version.json; open starts above it.
   */
  async #persistRvFloor(rv: number): Promise<void> {
    await this.#locks.run('\0rv-floor', async () => {
      if (this.#persistedRvFloor >= rv) return;
      const floor = this.#lastRv;
      await writeFileAtomic(path.join(this.#objectsDir, RV_FILE), `${JSON.stringify({ resourceVersion: String(floor) })}\n`);
      this.#persistedRvFloor = floor;
    });
  }

  async #deleteEventQuietly(ev: EventObject): Promise<void> {
    const ns = ev.metadata.namespace;
    const name = ev.metadata.name;
    try {
      await this.#locks.run(lockKey('Event', ns, name), async () => {
        const cur = this.#peek('Event', ns, name);
        if (cur !== undefined) await this.#remove('Event', ns, name, cur);
      });
    } catch (e) {
      this.#log.warn({ err: e, namespace: ns, name }, 'store: could not remove an event; it is retried at the next open');
    }
  }

  /** Remove every event about an object that is gone. Failures are logged; open() prunes what is left. */
  async #removeEventsOf(kind: StoreKind, ns: string, name: string): Promise<void> {
    if (kind === 'Event') return;
    await this.#locks.run(eventsLockKey(kind, ns, name), async () => {
      for (const ev of this.#eventsOf(kind, ns, name)) await this.#deleteEventQuietly(ev);
    });
  }

  // ----- open -----

  async #load(): Promise<void> {
    await fsp.mkdir(this.#root, { recursive: true, mode: 0o700 });
    await this.#ensureDir(this.#objectsDir);
    let maxRv = 0;
    for (const ent of await fsp.readdir(this.#objectsDir, { withFileTypes: true })) {
      const p = path.join(this.#objectsDir, ent.name);
      if (isTempName(ent.name)) await this.#removeLeftover(p);
    }
    this.#persistedRvFloor = await this.#readRvFloor();
    for (const kind of STORE_KINDS) {
      const kindDir = path.join(this.#objectsDir, PLURALS[kind]);
      await this.#ensureDir(kindDir);
      for (const nsEnt of await fsp.readdir(kindDir, { withFileTypes: true })) {
        const nsDir = path.join(kindDir, nsEnt.name);
        if (!nsEnt.isDirectory() || !isSafeKeyPart('namespace', nsEnt.name)) {
          if (isTempName(nsEnt.name) && nsEnt.isFile()) await this.#removeLeftover(nsDir);
          else await this.#quarantine(nsDir, `${PLURALS[kind]}__${nsEnt.name}`, 'not a namespace directory');
          continue;
        }
        // Not marked known: the first write into it fsyncs its parent again, in case a crash came between its mkdir and that fsync.
        for (const ent of await fsp.readdir(nsDir, { withFileTypes: true })) {
          const file = path.join(nsDir, ent.name);
          if (isTempName(ent.name)) {
            await this.#removeLeftover(file);
            continue;
          }
          const qname = `${PLURALS[kind]}__${nsEnt.name}__${ent.name}`;
          const name = ent.name.endsWith('.json') ? ent.name.slice(0, -'.json'.length) : '';
          if (!ent.isFile() || name === '' || !isSafeKeyPart('name', name)) {
            await this.#quarantine(file, qname, 'not an object file');
            continue;
          }
          const loaded = await this.#readObject(file, kind, nsEnt.name, name);
          if (typeof loaded === 'string') {
            await this.#quarantine(file, qname, loaded);
            continue;
          }
          this.#setCached(kind, deepFreeze(loaded));
          maxRv = Math.max(maxRv, rvOf(loaded));
        }
      }
    }
    this.#lastRv = Math.max(maxRv, this.#persistedRvFloor);
  }

  async #readObject(file: string, kind: StoreKind, ns: string, name: string): Promise<StoredObject | string> {
    let text: string;
    try {
      text = await fsp.readFile(file, 'utf8');
    } catch (e) {
      return `unreadable: ${errnoCode(e) ?? String(e)}`;
    }
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      return 'not valid JSON';
    }
    const problem = objectProblem(v);
    if (problem !== undefined || !isStoredObject(v)) return problem ?? 'malformed object';
    if (v.kind !== kind) return `kind ${v.kind} in the ${PLURALS[kind]} directory`;
    if (v.metadata.namespace !== ns || v.metadata.name !== name) return 'metadata.namespace/name do not match the file path';
    return v;
  }

  async #readRvFloor(): Promise<number> {
    const file = path.join(this.#objectsDir, RV_FILE);
    let text: string;
    try {
      text = await fsp.readFile(file, 'utf8');
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') return 0;
      throw e;
    }
    try {
      const v: unknown = JSON.parse(text);
      if (isRecord(v) && typeof v['resourceVersion'] === 'string' && RV_RE.test(v['resourceVersion'])) return Number(v['resourceVersion']);
    } catch {
      // fall through to quarantine
    }
    await this.#quarantine(file, `objects__${RV_FILE}`, 'unreadable resourceVersion floor');
    return 0;
  }

  async #removeLeftover(file: string): Promise<void> {
    try {
      await unlinkDurable(file);
      this.#log.info({ file }, 'store: removed a temp file left by an interrupted write');
    } catch (e) {
      this.#log.warn({ file, err: e }, 'store: could not remove a leftover temp file');
    }
  }

  async #quarantine(file: string, baseName: string, reason: string): Promise<void> {
    try {
      const to = await moveAside(file, this.#quarantineDir, baseName);
      this.#log.warn({ file, quarantinedTo: to, reason }, 'store: quarantined a file that is not a valid object');
    } catch (e) {
      this.#log.error({ file, reason, err: e }, 'store: could not quarantine an invalid file; ignoring it');
    }
  }

  /** Events about VMs/VMIs that no longer exist (a crash between a delete and its event cleanup, or recorded after the delete). */
  async #pruneOrphanEvents(): Promise<void> {
    for (const ev of this.#snapshot('Event', undefined)) {
      if (!isEventObject(ev)) continue;
      const k = ev.involvedObject.kind;
      if (k !== 'VirtualMachine' && k !== 'VirtualMachineInstance') continue;
      const owner = this.#peek(k, ev.involvedObject.namespace, ev.involvedObject.name);
      if (owner === undefined || owner.metadata.uid !== ev.involvedObject.uid) await this.#deleteEventQuietly(ev);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// helpers used by the class

function lockKey(kind: StoreKind, ns: string, name: string): string {
  return `${kind}\0${ns}\0${name}`;
}

function eventsLockKey(kind: string, ns: string, name: string): string {
  return `\0events\0${kind}\0${ns}\0${name}`;
}

function isSafeKeyPart(what: 'namespace' | 'name', v: string): boolean {
  try {
    checkKeyPart(what, v);
    return true;
  } catch {
    return false;
  }
}

function systemMeta(cur: StoredObject): Record<string, unknown> {
  const m = cur.metadata;
  const out: Record<string, unknown> = {
    name: m.name,
    namespace: m.namespace,
    uid: m.uid,
    resourceVersion: m.resourceVersion,
    generation: m.generation,
    creationTimestamp: m.creationTimestamp,
    deletionTimestamp: m.deletionTimestamp, // undefined disappears in the JSON round trip
  };
  return out;
}

function withRv(o: StoredObject, rv: string): StoredObject {
  return { ...o, metadata: { ...o.metadata, resourceVersion: rv } };
}

function checkPreconditions(cur: StoredObject, rv: string | undefined, uid: string | undefined): void {
  if (rv !== undefined && rv !== cur.metadata.resourceVersion) {
    throw new VmletError(
      'STORE_CONFLICT',
      `${cur.kind} ${cur.metadata.namespace}/${cur.metadata.name} is at resourceVersion ${cur.metadata.resourceVersion}, not ${rv}; read it again and retry`,
    );
  }
  if (uid !== undefined && uid !== cur.metadata.uid) {
    throw new VmletError('STORE_CONFLICT', `${cur.kind} ${cur.metadata.namespace}/${cur.metadata.name} has uid ${cur.metadata.uid}, not ${uid}`);
  }
}

function writeFailed(what: string, cause: unknown, visible: boolean): VmletError {
  const code = errnoCode(cause) ?? 'error';
  const msg = visible ? `${what}: done but not confirmed on disk (${code})` : `${what} failed (${code}); the previous version is intact`;
  return new VmletError('STORE_WRITE_FAILED', msg, { cause });
}

function positiveInt(v: number | undefined, dflt: number, what: string): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < 1) throw new VmletError('STORE_INVALID_OPTION', `${what} must be a positive integer`);
  return v;
}
