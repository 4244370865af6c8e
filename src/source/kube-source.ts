// The cluster-mode `Source`: VirtualMachines and VirtualMachineInstances as custom resources and core v1 Events, read, written and watched through the Kubernetes API server.

import { KubeConfig, Watch } from '@kubernetes/client-node';
import { pino } from 'pino';
import { VmletError, isVmletError } from '../errors.js';
import { ClientNodeApi, type KubeApi, type RawList } from './kube-client.js';
import { listKubeEvents, writeEvent } from './kube-events.js';
import {
  byNamespaceThenName,
  checkKubeKind,
  checkName,
  checkNamespace,
  checkObjectInput,
  createBody,
  eventInput,
  eventName,
  normalise,
  resourceOf,
  resourcePath,
  updateBody,
  type GroupVersion,
  type ResourceRef,
} from './kube-objects.js';
import { backoffMs, KubeWatch, type WatchOpener } from './kube-watch.js';
import { KeyedMutex } from './keyed-mutex.js';
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
  WatchOptions,
} from './source.js';
import { copy, deepEqual, type StoreLogger } from './store-core.js';
import { isRecord, positiveInt } from './store-keys.js';

export interface KubeSourceOptions {
  /** The cluster to talk to, or a function that loads it on first use (default: `KubeConfig.loadFromDefault()`). */
  kubeConfig?: KubeConfig | (() => KubeConfig);
  /** Group of the custom resources: `vmlet.io` (default), or `kubevirt.io` for the compat overlay. */
  group?: string;
  /** Their version: `v1alpha1` (default), or `v1` with `kubevirt.io`. */
  version?: string;
  logger?: StoreLogger;
  now?: () => Date;
  /** Default per-watcher buffer (events waiting for a slow consumer). Default 1000. */
  watchBufferSize?: number;
  /** Server-side timeout of one watch connection, after which it resumes from the last resourceVersion. Default 300. */
  watchTimeoutSeconds?: number;
  /** How long a watch (and the initial list of one) retries an unreachable API server before failing with KUBE_API_UNAVAILABLE. Default 60000. */
  watchRetryMs?: number;
  /** Tries of a read-modify-write (updateStatus, update without expectedResourceVersion, recordEvent) that meets conflicts. Default 10. */
  conflictRetries?: number;
  /** How long delete waits for its own DELETED event (for the deletion's resourceVersion). Default 5000. */
  deleteConfirmMs?: number;
  /** For tests: the requests and the watch connections (default: client-node over `kubeConfig`). */
  api?: KubeApi;
  openWatch?: WatchOpener;
}

/** KubeSource's own list options (not part of `Source`: the local store has no label selectors). */
export interface KubeListOptions {
  labelSelector?: string | undefined;
}

/** KubeSource's own watch options: `labelSelector` (e.g. `vmlet.io/nodeName=node-1`) on top of the Source's. */
export interface KubeWatchOptions extends WatchOptions {
  labelSelector?: string | undefined;
}

interface Conn {
  api: KubeApi;
  open: WatchOpener;
}

function defaultConfig(): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromDefault();
  return kc;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A `Source` over the Kubernetes API. Differences from the local store, all within the contract: create with a
 * status writes it in a second request (the API server drops status on create); names and namespaces must be DNS
 * names; specs come back with the CRD schema's defaults; Events are core v1 Events named `<object>.<hash of
 * uid, type, reason, message, component>` so repeats aggregate across processes; the API server expires them (1 h).
 * Watches resume transparently after the server ends a connection and retry an unreachable server for `watchRetryMs`
 * before failing with KUBE_API_UNAVAILABLE; a 410 Gone fails them with STORE_WATCH_OVERFLOW.
 */
function isEmptyStatus(s: unknown): boolean {
  return typeof s === 'object' && s !== null && Object.keys(s).length === 0;
}

export class KubeSource implements Source {
  readonly #gv: GroupVersion;
  readonly #log: StoreLogger;
  readonly #now: () => Date;
  readonly #buffer: number;
  readonly #timeoutSeconds: number;
  readonly #retryMs: number;
  readonly #retries: number;
  readonly #confirmMs: number;
  readonly #opts: KubeSourceOptions;
  readonly #locks = new KeyedMutex();
  readonly #watches = new Set<{ close(): void }>();
  /** Watches whose starting resourceVersion is not fixed yet: writes wait for them, so a watch misses no later write of ours. */
  readonly #starting = new Set<Promise<void>>();
  #conn: Conn | undefined;
  #closed = false;

  constructor(opts: KubeSourceOptions = {}) {
    this.#opts = opts;
    this.#gv = { group: opts.group ?? 'vmlet.io', version: opts.version ?? 'v1alpha1' };
    this.#log = opts.logger ?? pino({ name: 'vmlet-kube-source' }, pino.destination(2));
    this.#now = opts.now ?? (() => new Date());
    this.#buffer = positiveInt(opts.watchBufferSize, 1000, 'watchBufferSize');
    this.#timeoutSeconds = positiveInt(opts.watchTimeoutSeconds, 300, 'watchTimeoutSeconds');
    this.#retryMs = positiveInt(opts.watchRetryMs, 60_000, 'watchRetryMs');
    this.#retries = positiveInt(opts.conflictRetries, 10, 'conflictRetries');
    this.#confirmMs = positiveInt(opts.deleteConfirmMs, 5000, 'deleteConfirmMs');
  }

  /** `group/version` of the custom resources. */
  get apiVersion(): string {
    return `${this.#gv.group}/${this.#gv.version}`;
  }

  #c(): Conn {
    if (this.#closed) throw new VmletError('STORE_CLOSED', 'the Kubernetes source is closed');
    if (this.#conn !== undefined) return this.#conn;
    const o = this.#opts;
    let api = o.api;
    let open = o.openWatch;
    if (api === undefined || open === undefined) {
      const kc = typeof o.kubeConfig === 'function' ? o.kubeConfig() : (o.kubeConfig ?? defaultConfig());
      api ??= new ClientNodeApi(kc, this.#gv);
      const w = new Watch(kc);
      open ??= (path, query, onEvent, onDone) => w.watch(path, query, onEvent, onDone);
    }
    this.#conn = { api, open };
    return this.#conn;
  }

  #ref<K extends Kind>(kind: K): ResourceRef & { kind: K } {
    return { ...resourceOf(checkKubeKind(kind), this.#gv), kind };
  }

  /** Lets every starting watch fix its resourceVersion before a write goes out. */
  async #barrier(): Promise<void> {
    while (this.#starting.size > 0) await Promise.all([...this.#starting]);
    this.#c();
  }

  async #read<K extends Kind>(r: ResourceRef & { kind: K }, ns: string, name: string): Promise<KubeObject<K>> {
    return normalise(await this.#c().api.get(r, ns, name), r);
  }

  // ----- reads -----

  async get<K extends Kind>(kind: K, namespace: string, name: string): Promise<KubeObject<K> | undefined> {
    const r = this.#ref(kind);
    const ns = checkNamespace(namespace);
    const n = checkName(name);
    try {
      return await this.#read(r, ns, n);
    } catch (e) {
      if (isVmletError(e, 'STORE_NOT_FOUND')) return undefined;
      throw e;
    }
  }

  async list<K extends Kind>(kind: K, namespace?: string, opts: KubeListOptions = {}): Promise<Array<KubeObject<K>>> {
    return (await this.listWithVersion(kind, namespace, opts)).items;
  }

  async listWithVersion<K extends Kind>(kind: K, namespace?: string, opts: KubeListOptions = {}): Promise<ObjectList<K>> {
    const r = this.#ref(kind);
    const ns = namespace === undefined ? undefined : checkNamespace(namespace);
    const l = await this.#c().api.list(r, ns, { labelSelector: opts.labelSelector });
    return { items: l.items.map((raw) => normalise(raw, r)).sort(byNamespaceThenName), resourceVersion: l.resourceVersion };
  }

  // ----- writes -----

  /** Creates the object; a given status is written right after by the status subresource (the API server drops it on create). */
  create<K extends Kind>(obj: NewObject<K>): Promise<KubeObject<K>>;
  create(obj: NewObject): Promise<KubeObject>;
  async create(obj: NewObject): Promise<KubeObject> {
    this.#c();
    const { ref, ns, meta } = checkObjectInput(obj, (k) => resourceOf(k, this.#gv));
    await this.#barrier();
    const created = normalise(await this.#c().api.create(ref, ns, createBody({ ...obj }, meta)), ref);
    if (obj.status === undefined || ref.core) return created;
    // The API server drops status on create; it follows as a second write, unless a controller wrote one in between
    // (the launcher controller can place a VMI before this write: its status must not be set back).
    return this.updateStatus(ref.kind, ns, created.metadata.name, (cur) => (cur === undefined || isEmptyStatus(cur) ? copy(obj.status) : cur));
  }

  /**
   * Replaces spec, top-level fields and user metadata (labels, annotations, finalizers); status and system metadata
   * stay as stored. Without expectedResourceVersion it writes against what it just read, retrying conflicts.
   */
  async update<K extends Kind>(obj: KubeObject<K>, opts: UpdateOptions = {}): Promise<KubeObject<K>> {
    this.#c();
    const { ns, name, meta } = checkObjectInput(obj, (k) => resourceOf(k, this.#gv));
    const r = this.#ref(obj.kind);
    const uid = typeof meta['uid'] === 'string' && meta['uid'] !== '' ? meta['uid'] : undefined;
    await this.#barrier();
    return this.#locks.run(`${r.kind}\0${ns}\0${name}`, () =>
      this.#retrying(async () => {
        const cur = await this.#read(r, ns, name);
        checkPreconditions(cur, opts.expectedResourceVersion, uid);
        const body = updateBody({ ...obj }, meta, cur, opts.expectedResourceVersion ?? cur.metadata.resourceVersion);
        const raw = await this.#c().api.replace(r, ns, name, body);
        return isObjectJson(raw) ? normalise(raw, r) : ((await this.get(r.kind, ns, name)) ?? cur);
      }),
    );
  }

  /** Read, mutate, write the status subresource against the read resourceVersion; conflicts read again (`conflictRetries` tries). */
  async updateStatus<S = unknown, K extends Kind = Kind>(
    kind: K,
    namespace: string,
    name: string,
    mutate: (status: S | undefined) => S | undefined,
    opts: StatusWriteOptions = {},
  ): Promise<KubeObject<K>> {
    const r = this.#ref(kind);
    const ns = checkNamespace(namespace);
    const n = checkName(name);
    if (r.core) throw new VmletError('STORE_INVALID_KEY', 'Events have no status subresource');
    await opts.after;
    await this.#barrier();
    return this.#locks.run(`${r.kind}\0${ns}\0${n}`, () =>
      this.#retrying(async () => {
        const cur = await this.#read(r, ns, n);
        // The caller names the status type; the source does not look inside it.
        const status = mutate(copy(cur.status) as S | undefined);
        if (deepEqual(status ?? null, cur.status ?? null)) return cur;
        const body: Record<string, unknown> = { ...cur, status };
        if (status === undefined) delete body['status'];
        return normalise(await this.#c().api.replaceStatus(r, ns, n, body), r);
      }),
    );
  }

  /**
   * Deletes with preconditions (the read uid and resourceVersion, which also carry the caller's). Returns the marked
   * object when finalizers hold it, else its last state with the deletion's resourceVersion, taken from the DELETED
   * event (the API server answers a custom resource's delete with a bare Status).
   */
  async delete<K extends Kind>(kind: K, namespace: string, name: string, opts: DeleteOptions = {}): Promise<KubeObject<K>> {
    const r = this.#ref(kind);
    const ns = checkNamespace(namespace);
    const n = checkName(name);
    await this.#barrier();
    return this.#locks.run(`${r.kind}\0${ns}\0${n}`, () =>
      this.#retrying(async () => {
        const l = await this.#c().api.list(r, ns, { fieldSelector: `metadata.name=${n}` });
        const found = l.items[0];
        if (found === undefined) throw new VmletError('STORE_NOT_FOUND', `delete ${r.kind} ${ns}/${n}: not found`);
        const cur = normalise(found, r);
        checkPreconditions(cur, opts.expectedResourceVersion, opts.expectedUid);
        const raw = await this.#c().api.delete(r, ns, n, { uid: cur.metadata.uid, resourceVersion: cur.metadata.resourceVersion });
        if (isObjectJson(raw)) return normalise(raw, r);
        return (await this.#deletedState(r, ns, n, cur, l)) ?? cur;
      }),
    );
  }

  /** The DELETED event of `cur`, from a watch that starts at the list it was read in. */
  async #deletedState<K extends Kind>(
    r: ResourceRef & { kind: K },
    ns: string,
    name: string,
    cur: KubeObject<K>,
    l: RawList,
  ): Promise<KubeObject<K> | undefined> {
    const w = this.#newWatch(r, ns, name, { resourceVersion: l.resourceVersion }, false);
    void w.start();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.#confirmMs);
    });
    try {
      for (;;) {
        const ev = await Promise.race([w.next(), timeout]);
        if (ev === 'timeout' || ev.done === true) break;
        if (ev.value.type === 'DELETED' && ev.value.object.metadata.uid === cur.metadata.uid) return copy(ev.value.object);
      }
    } catch (e) {
      this.#log.warn({ err: e, namespace: ns, name }, 'kube source: could not see the DELETED event; returning the state before the delete');
      return undefined;
    } finally {
      clearTimeout(timer);
      w.close();
    }
    this.#log.warn({ namespace: ns, name }, 'kube source: no DELETED event in time; returning the state before the delete');
    return undefined;
  }

  /**
   * Runs `fn`, and again (jittered backoff, up to `conflictRetries` tries) when the API server answers 409 Conflict:
   * `fn` reads afresh, so a caller's own precondition then fails for good (checkPreconditions' errors are final).
   */
  async #retrying<T>(fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        if (!isVmletError(e, 'STORE_CONFLICT') || FINAL.has(e) || attempt >= this.#retries || this.#closed) throw e;
        await sleep(Math.min(backoffMs(attempt) / 4, 500));
      }
    }
  }

  // ----- watch -----

  /**
   * Watches `kind` (in `namespace`, only `name`, only `labelSelector` if given). Synchronous; the source's own writes
   * wait until the watch's start is fixed, so none after this call is missed (others' writes race as in Kubernetes).
   */
  watch<K extends Kind>(kind: K, namespace?: string, name?: string, opts: KubeWatchOptions = {}): SourceWatch<K> {
    this.#c();
    const r = this.#ref(kind);
    const ns = namespace === undefined ? undefined : checkNamespace(namespace);
    const n = name === undefined ? undefined : checkName(name);
    if (opts.resourceVersion !== undefined && opts.sendInitialEvents === true) {
      throw new VmletError('STORE_INVALID_OPTION', 'a watch takes sendInitialEvents or resourceVersion, not both');
    }
    if (opts.resourceVersion !== undefined && (typeof opts.resourceVersion !== 'string' || opts.resourceVersion === '')) {
      throw new VmletError('STORE_INVALID_OPTION', `resourceVersion ${JSON.stringify(opts.resourceVersion)} is not a resourceVersion`);
    }
    const w = this.#newWatch(r, ns, n, opts, true);
    const started = w.start();
    this.#starting.add(started);
    void started.finally(() => this.#starting.delete(started));
    return w;
  }

  #newWatch<K extends Kind>(
    r: ResourceRef & { kind: K },
    ns: string | undefined,
    name: string | undefined,
    opts: KubeWatchOptions,
    track: boolean,
  ): KubeWatch<K> {
    const conn = this.#c();
    const fieldSelector = name === undefined ? undefined : `metadata.name=${name}`;
    const what = `watch ${r.kind}${ns === undefined ? '' : ` ${ns}/`}${name ?? ''}`;
    const w = new KubeWatch<K>(
      {
        open: conn.open,
        list: (rvOnly) => conn.api.list(r, ns, { fieldSelector, labelSelector: opts.labelSelector, limit: rvOnly ? 1 : undefined }),
        normalise: (raw) => normalise(raw, r),
        log: this.#log,
        now: () => this.#now().getTime(),
        retryMs: this.#retryMs,
        timeoutSeconds: this.#timeoutSeconds,
        what,
      },
      {
        path: resourcePath(r, this.#gv, ns),
        fieldSelector,
        labelSelector: opts.labelSelector,
        sendInitialEvents: opts.sendInitialEvents === true,
        resourceVersion: opts.resourceVersion,
        bufferSize: positiveInt(opts.bufferSize, this.#buffer, 'bufferSize'),
      },
      (x) => this.#watches.delete(x),
    );
    if (track) this.#watches.add(w);
    return w;
  }

  // ----- events -----

  /** Records an Event, or bumps count and lastTimestamp of the one with the same object, type, reason, message and component. */
  async recordEvent(input: RecordEventInput): Promise<EventObject> {
    const e = eventInput(input);
    const name = eventName({ ...e, type: input.type });
    await this.#barrier();
    return this.#locks.run(`Event\0${e.involved.namespace}\0${name}`, () =>
      this.#retrying(() => writeEvent(this.#c().api, this.#ref('Event'), { ...e, type: input.type, name, now: this.#now() })),
    );
  }

  /** Events in `namespace` (all if omitted) about objects named `objectName` (all if omitted), oldest first by lastTimestamp. */
  async listEvents(namespace?: string, objectName?: string, opts: ListEventsOptions = {}): Promise<EventObject[]> {
    const ns = namespace === undefined ? undefined : checkNamespace(namespace);
    return listKubeEvents(this.#c().api, this.#ref('Event'), ns, objectName === undefined ? undefined : checkName(objectName), opts.kind);
  }

  // ----- lifecycle -----

  /** Ends every watch; later calls fail with STORE_CLOSED. Requests under way finish on their own. */
  close(): void {
    this.#closed = true;
    for (const w of [...this.#watches]) w.close();
  }
}

function isObjectJson(v: unknown): v is Record<string, unknown> {
  return isRecord(v) && v['kind'] !== 'Status' && isRecord(v['metadata']);
}

/** Conflicts with the caller's own preconditions: retrying cannot help. */
const FINAL = new WeakSet<VmletError>();

function checkPreconditions(cur: KubeObject, rv: string | undefined, uid: string | undefined): void {
  const id = `${cur.kind} ${cur.metadata.namespace}/${cur.metadata.name}`;
  let err: VmletError | undefined;
  if (rv !== undefined && rv !== cur.metadata.resourceVersion) {
    err = new VmletError('STORE_CONFLICT', `${id} is at resourceVersion ${cur.metadata.resourceVersion}, not ${rv}; read it again and retry`);
  } else if (uid !== undefined && uid !== cur.metadata.uid) {
    err = new VmletError('STORE_CONFLICT', `${id} has uid ${cur.metadata.uid}, not ${uid}`);
  }
  if (err === undefined) return;
  FINAL.add(err);
  throw err;
}
