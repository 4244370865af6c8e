// The standalone daemon's embedded object store, the local `Source`: one atomic JSON file per object, optimistic concurrency, ordered watches and kubectl-style events.

import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { pino } from 'pino';
import { VmletError } from '../errors.js';
import { errnoCode } from './atomic-file.js';
import type {
  DeleteOptions,
  EventObject,
  Kind,
  KubeObject,
  ListEventsOptions,
  NewObject,
  ObjectList,
  RecordEventInput,
  Source,
  SourceWatch,
  StatusWriteOptions,
  UpdateOptions,
  WatchEvent,
  WatchOptions,
} from './source.js';
import { copy, deepEqual, StoreCore, withRv, type StoreLogger } from './store-core.js';
import { listEvents, pruneOrphanEvents, recordEvent, removeEventsOf } from './store-events.js';
import { checkInput, checkKeyPart, checkKind, lockKey, positiveInt } from './store-keys.js';
import { loadStore } from './store-recovery.js';
import { parseWatchRv, Watcher } from './store-watch.js';

export type {
  DeleteOptions,
  EventObject,
  EventType,
  Kind,
  KubeObject,
  ListEventsOptions,
  NewObject,
  ObjectList,
  ObjectMeta,
  ObjectReference,
  RecordEventInput,
  Source,
  SourceWatch,
  UpdateOptions,
  WatchEvent,
  WatchEventType,
  WatchOptions,
} from './source.js';
export type { StoreLogger } from './store-core.js';
export { isStoreKind, MAX_NAME_BYTES, STORE_KINDS } from './store-keys.js';

/** The local store's names for the Source types. */
export type StoreKind = Kind;
export type StoredObject = KubeObject;
export type StoreWatch<K extends Kind = Kind> = SourceWatch<K>;

export interface LocalStoreOptions {
  /** The daemon's state directory; the store uses `objects/` and `quarantine/` below it. */
  dir: string;
  logger?: StoreLogger;
  now?: () => Date;
  /** Events kept per involved object; the least recently seen are removed beyond it. Default 50. */
  maxEventsPerObject?: number;
  /** Default per-watcher buffer. Default 1000. */
  watchBufferSize?: number;
  /** Changes kept per kind for watches that start from a resourceVersion. Default 1000. */
  watchHistorySize?: number;
  /** Largest serialised object accepted. Default 1 MiB. */
  maxObjectBytes?: number;
}

export class LocalStore implements Source {
  readonly #core: StoreCore;

  private constructor(opts: LocalStoreOptions) {
    this.#core = new StoreCore({
      root: path.resolve(opts.dir),
      log: opts.logger ?? pino({ name: 'vmlet-store' }, pino.destination(2)),
      now: opts.now ?? (() => new Date()),
      maxEvents: positiveInt(opts.maxEventsPerObject, 50, 'maxEventsPerObject'),
      watchBuffer: positiveInt(opts.watchBufferSize, 1000, 'watchBufferSize'),
      historySize: positiveInt(opts.watchHistorySize, 1000, 'watchHistorySize'),
      maxBytes: positiveInt(opts.maxObjectBytes, 1024 * 1024, 'maxObjectBytes'),
    });
  }

  /** Open (creating if needed) the store under `dir`: load every object, remove leftover temp files, quarantine unreadable files. */
  static async open(opts: LocalStoreOptions): Promise<LocalStore> {
    const store = new LocalStore(opts);
    const core = store.#core;
    try {
      await loadStore(core);
    } catch (e) {
      if (e instanceof VmletError) throw e;
      throw new VmletError('STORE_OPEN_FAILED', `cannot open the object store in ${core.root}: ${errnoCode(e) ?? String(e)}`, { cause: e });
    }
    await pruneOrphanEvents(core);
    return store;
  }

  /** The state directory this store lives in. */
  get dir(): string {
    return this.#core.root;
  }

  /** The newest resourceVersion handed out (as a string), "0" for an empty new store. */
  get resourceVersion(): string {
    return String(this.#core.lastRv);
  }

  // ----- reads -----

  async get<K extends Kind>(kind: K, namespace: string, name: string): Promise<KubeObject<K> | undefined> {
    const k = checkKind(kind);
    const o = this.#core.peek(k, checkKeyPart('namespace', namespace), checkKeyPart('name', name));
    return o === undefined ? undefined : copy(o);
  }

  /** Objects of `kind` (in `namespace` if given), sorted by namespace then name. */
  async list<K extends Kind>(kind: K, namespace?: string): Promise<Array<KubeObject<K>>> {
    return this.#core.snapshot(checkKind(kind), namespace === undefined ? undefined : checkKeyPart('namespace', namespace)).map(copy);
  }

  /** Like `list`, with the resourceVersion the list was read at (to watch from). */
  async listWithVersion<K extends Kind>(kind: K, namespace?: string): Promise<ObjectList<K>> {
    const k = checkKind(kind);
    const ns = namespace === undefined ? undefined : checkKeyPart('namespace', namespace);
    // Synchronous: the snapshot and appliedRv describe the same moment.
    return { items: this.#core.snapshot(k, ns).map(copy), resourceVersion: String(this.#core.appliedRv) };
  }

  // ----- writes -----

  /** Store a new object; assigns uid, resourceVersion, generation 1 and creationTimestamp. STORE_ALREADY_EXISTS if present. */
  create<K extends Kind>(obj: NewObject<K>): Promise<KubeObject<K>>;
  create(obj: NewObject): Promise<KubeObject>;
  async create(obj: NewObject): Promise<KubeObject> {
    const core = this.#core;
    core.assertOpen();
    const { kind, ns, name, meta } = checkInput(obj);
    return core.track(
      core.locks.run(lockKey(kind, ns, name), async () => {
        if (core.peek(kind, ns, name) !== undefined) {
          throw new VmletError('STORE_ALREADY_EXISTS', `${kind} ${ns}/${name} already exists`);
        }
        const stamp = core.now().toISOString();
        const written = await core.write('ADDED', kind, ns, name, (rv) => {
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
  async update<K extends Kind>(obj: KubeObject<K>, opts: UpdateOptions = {}): Promise<KubeObject<K>> {
    const core = this.#core;
    core.assertOpen();
    const { ns, name, meta } = checkInput(obj);
    const kind = checkKind(obj.kind);
    let removed = false;
    return core.track(async () => {
      const result = await core.locks.run(lockKey(kind, ns, name), async () => {
        const cur = core.mustPeek(kind, ns, name);
        checkPreconditions(cur, opts.expectedResourceVersion, typeof meta['uid'] === 'string' ? meta['uid'] : undefined);
        const next = core.normalise({ ...obj, status: cur.status, metadata: { ...meta, ...systemMeta(cur) } });
        if (!deepEqual(next.spec, cur.spec)) next.metadata.generation = cur.metadata.generation + 1;
        if (deepEqual(next, cur)) return copy(cur);
        if (next.metadata.deletionTimestamp !== undefined && (next.metadata.finalizers ?? []).length === 0) {
          removed = true;
          return copy(await core.remove(kind, ns, name, { ...next, kind }));
        }
        const written = await core.write('MODIFIED', kind, ns, name, (rv) => withRv(next, rv));
        return copy(written);
      });
      if (removed) await removeEventsOf(core, kind, ns, name);
      return result;
    });
  }

  /**
   * Change an object's status: `mutate` gets a private copy of the current status (undefined if none) and returns
   * the new one. Runs serialised with every other write to the object, so concurrent status writers never lose
   * each other's changes. A mutation that changes nothing writes nothing. STORE_NOT_FOUND if the object is absent.
   */
  async updateStatus<S = unknown, K extends Kind = Kind>(
    kind: K,
    namespace: string,
    name: string,
    mutate: (status: S | undefined) => S | undefined,
    opts: StatusWriteOptions = {},
  ): Promise<KubeObject<K>> {
    const core = this.#core;
    core.assertOpen();
    const k = checkKind(kind);
    const ns = checkKeyPart('namespace', namespace);
    const n = checkKeyPart('name', name);
    // Awaited only once the new file is staged: a rejection meanwhile is no unhandled one.
    opts.after?.catch(() => undefined);
    return core.track(
      core.locks.run(lockKey(k, ns, n), async () => {
        const cur = core.mustPeek(k, ns, n);
        // The caller names the status type; the store does not look inside it.
        const status = mutate(copy(cur.status) as S | undefined);
        const next = core.normalise({ ...cur, status });
        if (deepEqual(next, cur)) {
          await opts.after;
          return copy(cur);
        }
        const written = await core.write('MODIFIED', k, ns, n, (rv) => withRv(next, rv), opts);
        return copy(written);
      }),
    );
  }

  /**
   * Delete an object. Without finalizers it is removed at once (with its events) and the returned object is its
   * last state. With finalizers it only gets metadata.deletionTimestamp (and a generation bump) and stays until an
   * update removes the last finalizer; the returned object then shows deletionTimestamp. STORE_NOT_FOUND if absent.
   */
  async delete<K extends Kind>(kind: K, namespace: string, name: string, opts: DeleteOptions = {}): Promise<KubeObject<K>> {
    const core = this.#core;
    core.assertOpen();
    const k = checkKind(kind);
    const ns = checkKeyPart('namespace', namespace);
    const n = checkKeyPart('name', name);
    let removed = false;
    return core.track(async () => {
      const result = await core.locks.run(lockKey(k, ns, n), async () => {
        const cur = core.mustPeek(k, ns, n);
        checkPreconditions(cur, opts.expectedResourceVersion, opts.expectedUid);
        if ((cur.metadata.finalizers ?? []).length > 0) {
          if (cur.metadata.deletionTimestamp !== undefined) return copy(cur);
          const next = core.normalise({
            ...cur,
            metadata: { ...cur.metadata, deletionTimestamp: core.now().toISOString(), generation: cur.metadata.generation + 1 },
          });
          return copy(await core.write('MODIFIED', k, ns, n, (rv) => withRv(next, rv)));
        }
        removed = true;
        return copy(await core.remove(k, ns, n, cur));
      });
      if (removed) await removeEventsOf(core, k, ns, n);
      return result;
    });
  }

  // ----- watch -----

  /**
   * Watch changes of `kind`, optionally only in `namespace`, optionally only the object `name`. Synchronous: no change
   * after this call is missed. With `resourceVersion`, the changes after it that are still held come first; when
   * some are no longer held, the first `next()` rejects with STORE_WATCH_OVERFLOW.
   */
  watch<K extends Kind>(kind: K, namespace?: string, name?: string, opts: WatchOptions = {}): SourceWatch<K> {
    const core = this.#core;
    core.assertOpen();
    const k = checkKind(kind);
    const ns = namespace === undefined ? undefined : checkKeyPart('namespace', namespace);
    const n = name === undefined ? undefined : checkKeyPart('name', name);
    const from = opts.resourceVersion === undefined ? undefined : parseWatchRv(opts.resourceVersion);
    if (from !== undefined && opts.sendInitialEvents === true) {
      throw new VmletError('STORE_INVALID_OPTION', 'a watch takes sendInitialEvents or resourceVersion, not both');
    }
    const matchesObject = (o: KubeObject): boolean => (ns === undefined || o.metadata.namespace === ns) && (n === undefined || o.metadata.name === n);
    const matches = (ev: WatchEvent): ev is WatchEvent<K> => ev.object.kind === k && matchesObject(ev.object);
    const initial: Array<WatchEvent<K>> = [];
    if (opts.sendInitialEvents === true) {
      for (const o of core.snapshot(k, ns)) if (matchesObject(o)) initial.push({ type: 'ADDED', object: o });
    }
    const replay = from === undefined ? [] : core.historySince(k, from);
    if (replay !== undefined) for (const ev of replay) if (matches(ev)) initial.push(ev);
    const buffer = positiveInt(opts.bufferSize, core.watchBuffer, 'bufferSize');
    const w = new Watcher(matches, buffer + initial.length, (x) => core.removeWatcher(x));
    if (replay === undefined) {
      w.fail(
        new VmletError(
          'STORE_WATCH_OVERFLOW',
          `resourceVersion ${String(from)} is too old: changes after it are no longer held; list again and watch from the list's resourceVersion`,
        ),
      );
      return w;
    }
    for (const ev of initial) w.push(ev);
    core.addWatcher(w);
    return w;
  }

  // ----- events -----

  /**
   * Record an event about an object, like kubectl's events: a repeat (same object, type, reason and message) bumps
   * count and lastTimestamp of the existing Event; at most maxEventsPerObject are kept per object, the least
   * recently seen go first. Events are removed together with their object. Returns the stored Event.
   */
  async recordEvent(input: RecordEventInput): Promise<EventObject> {
    return recordEvent(this.#core, input);
  }

  /** Events in `namespace` (all if omitted) about objects named `objectName` (all if omitted), oldest first by lastTimestamp. */
  async listEvents(namespace?: string, objectName?: string, opts: ListEventsOptions = {}): Promise<EventObject[]> {
    return listEvents(this.#core, namespace, objectName, opts);
  }

  // ----- lifecycle -----

  /** Stop accepting writes, wait for those under way, and end every watch (queued events are still delivered). */
  async close(): Promise<void> {
    await this.#core.close();
  }
}

function systemMeta(cur: KubeObject): Record<string, unknown> {
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

function checkPreconditions(cur: KubeObject, rv: string | undefined, uid: string | undefined): void {
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
