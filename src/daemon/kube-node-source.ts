// The Kubernetes source as one node daemon uses it: only the VMIs labelled with its node, read from the API server or, while it cannot be reached, from a watch-fed cache (so the node-local socket answers during an outage), and status writes that wait out an outage, in order, without holding their caller.
import type { KubeSource } from '../source/kube-source.js';
import type { Kind, KubeObject, SourceWatch, StatusWriteOptions, WatchOptions } from '../source/source.js';
import { VmletError } from '../errors.js';
import type { NodeSource } from './node-reconciler.js';
import type { Source } from '../source/source.js';

export interface KubeNodeSourceOptions {
  source: KubeSource;
  node: string;
  labelSelector: string;
  logger: { warn(o: object, msg: string): void; info(o: object, msg: string): void };
  /** How long a status write holds its caller before it goes on in the background (default 2 s). */
  holdMs?: number;
}

const key = (ns: string, name: string): string => `${ns}/${name}`;
const unreachable = (e: unknown): boolean => e instanceof VmletError && e.code === 'KUBE_API_UNAVAILABLE';

/** A node's view of the source. `start()` fills the cache; `close()` ends its watch. */
export class KubeNodeSource implements NodeSource {
  private readonly cache = new Map<string, KubeObject<'VirtualMachineInstance'>>();
  private readonly writes = new Map<string, Promise<unknown>>();
  private cacheWatch: SourceWatch<'VirtualMachineInstance'> | undefined;
  private outage = false;

  constructor(private readonly o: KubeNodeSourceOptions) {}

  /** Follows this node's VMIs into the cache (the KubeSource's watch resumes by itself after an outage). */
  start(): void {
    const w = this.o.source.watch('VirtualMachineInstance', undefined, undefined, { sendInitialEvents: true, labelSelector: this.o.labelSelector });
    this.cacheWatch = w;
    void (async () => {
      try {
        for await (const ev of w) {
          const k = key(ev.object.metadata.namespace, ev.object.metadata.name);
          if (ev.type === 'DELETED') this.cache.delete(k);
          else this.cache.set(k, ev.object);
        }
      } catch (err) {
        this.o.logger.warn({ err }, 'the node cache watch failed; restarting it');
      }
      if (this.cacheWatch === w) setTimeout(() => this.cacheWatch === w && this.start(), 1000).unref();
    })();
  }

  close(): void {
    const w = this.cacheWatch;
    this.cacheWatch = undefined;
    w?.close();
  }

  /** Fresh from the API server; this node's VMIs from the cache while the server cannot be reached. */
  async get<K extends Kind>(kind: K, ns: string, name: string): Promise<KubeObject<K> | undefined> {
    try {
      return await this.o.source.get(kind, ns, name);
    } catch (e) {
      const hit = kind === 'VirtualMachineInstance' && unreachable(e) ? this.cache.get(key(ns, name)) : undefined;
      if (!hit) throw e;
      return structuredClone(hit) as KubeObject<K>;
    }
  }

  async list<K extends Kind>(kind: K, ns?: string): Promise<Array<KubeObject<K>>> {
    try {
      return await this.o.source.list(kind, ns, { labelSelector: this.o.labelSelector });
    } catch (e) {
      if (kind !== 'VirtualMachineInstance' || !unreachable(e) || !this.cacheWatch) throw e;
      return [...this.cache.values()].filter((v) => ns === undefined || v.metadata.namespace === ns).map((v) => structuredClone(v) as KubeObject<K>);
    }
  }

  update<K extends Kind>(obj: KubeObject<K>, opts?: Parameters<Source['update']>[1]): Promise<KubeObject<K>> {
    return this.o.source.update(obj, opts);
  }

  recordEvent(input: Parameters<Source['recordEvent']>[0]): ReturnType<Source['recordEvent']> {
    return this.o.source.recordEvent(input);
  }

  watch<K extends Kind>(kind: K, ns?: string, name?: string, opts: WatchOptions = {}): SourceWatch<K> {
    return this.o.source.watch(kind, ns, name, { ...opts, labelSelector: this.o.labelSelector });
  }

  /**
   * Status changes go out one after another per VMI; while the API server is unreachable each waits and is
   * retried, so the status catches up when it returns. The caller is held at most `holdMs`: a supervisor
   * must not stall (a pause through the node socket answers during an outage).
   */
  updateStatus<S = unknown, K extends Kind = Kind>(
    kind: K,
    ns: string,
    name: string,
    mutate: (status: S | undefined) => S | undefined,
    opts: StatusWriteOptions = {},
  ): Promise<KubeObject<K>> {
    const k = `${kind}/${key(ns, name)}`;
    opts.after?.catch(() => undefined); // awaited after the writes before this one
    const prev = this.writes.get(k) ?? Promise.resolve();
    const write = prev
      .catch(() => undefined)
      .then(() => opts.after)
      .then(() => this.retrying(() => this.o.source.updateStatus(kind, ns, name, mutate)));
    this.writes.set(k, write);
    const done = (): void => {
      if (this.writes.get(k) === write) this.writes.delete(k);
    };
    // Both ways: a failed write reaches its caller through the race below, not as an unhandled rejection here.
    write.then(done, done);
    const hold = this.o.holdMs ?? 2000;
    const placeholder = (): KubeObject<K> => {
      const cached = kind === 'VirtualMachineInstance' ? this.cache.get(key(ns, name)) : undefined;
      if (!cached) throw new VmletError('KUBE_API_UNAVAILABLE', `the status of ${k} waits for the API server`);
      return structuredClone(cached) as KubeObject<K>;
    };
    const held = new Promise<KubeObject<K>>((resolve, reject) => {
      setTimeout(() => {
        try {
          resolve(placeholder());
        } catch (e) {
          reject(e);
        }
      }, hold).unref();
    });
    return Promise.race([write, held]);
  }

  private async retrying<T>(fn: () => Promise<T>): Promise<T> {
    for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
      try {
        const r = await fn();
        if (this.outage) this.o.logger.info({}, 'the API server is back: status written');
        this.outage = false;
        return r;
      } catch (e) {
        if (!unreachable(e)) throw e;
        if (!this.outage) this.o.logger.warn({ err: e }, 'the API server is away: status changes wait for it');
        this.outage = true;
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }
}

/** The node-local API's view: this node's VMIs from the cache, everything else from the API server. */
export function nodeApiSource(source: KubeSource, node: KubeNodeSource): Source {
  return {
    get: (kind, ns, name) => node.get(kind, ns, name),
    list: (kind, ns) => (kind === 'VirtualMachineInstance' ? node.list(kind, ns) : source.list(kind, ns)),
    listWithVersion: (kind, ns) => source.listWithVersion(kind, ns),
    create: (obj) => source.create(obj),
    update: (obj, opts) => source.update(obj, opts),
    updateStatus: (kind, ns, name, mutate, opts) => node.updateStatus(kind, ns, name, mutate, opts),
    delete: (kind, ns, name, opts) => source.delete(kind, ns, name, opts),
    watch: (kind, ns, name, opts) => source.watch(kind, ns, name, opts),
    recordEvent: (input) => source.recordEvent(input),
    listEvents: (ns, name, opts) => source.listEvents(ns, name, opts),
  };
}
