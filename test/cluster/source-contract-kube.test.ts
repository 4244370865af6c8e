// The Source contract (test/support/source-contract.ts) run against KubeSource on the test cluster, each subtest in namespaces of its own (h1-<random>-<name>), seen through a view that maps the contract's namespace names.
import { randomBytes } from 'node:crypto';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { pino } from 'pino';
import t from 'tap';
import { KubeSource } from '../../src/source/kube-source.js';
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
} from '../../src/source/source.js';
import { clusterSkipReason, testCluster } from '../support/cluster.js';
import { sourceContract } from '../support/source-contract.js';

const PREFIX = 'h1-';
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** The CRD schema's defaults, written out, so that what the contract writes is what it reads back. */
const VMI_SPEC = {
  domain: { devices: { autoattachGraphicsDevice: false, autoattachSerialConsole: true }, machine: { type: 'q35' } },
  terminationGracePeriodSeconds: 180,
};
function vmSpec(variant?: number | string): unknown {
  if (variant === undefined) return { runStrategy: 'Always', template: { spec: VMI_SPEC } };
  if (variant === 'Halted') return { runStrategy: 'Halted', template: { spec: VMI_SPEC } };
  return { runStrategy: 'Always', template: { metadata: { labels: { n: String(variant) } }, spec: VMI_SPEC } };
}

/**
 * A Source that maps the contract's namespaces ("default", "ns1", …) to `h1-<id>-<name>` on the shared cluster, makes
 * them on first write, and hides every other namespace from cluster-wide lists and watches.
 */
class NamespacedView implements Source {
  readonly made = new Set<string>();
  readonly #prefix: string;

  constructor(
    readonly inner: KubeSource,
    private readonly core: CoreV1Api,
  ) {
    this.#prefix = `${PREFIX}${randomBytes(3).toString('hex')}-`;
  }

  ns(logical: string): string;
  ns(logical: string | undefined): string | undefined;
  ns(logical: string | undefined): string | undefined {
    if (logical === undefined || !DNS_LABEL.test(logical)) return logical; // invalid ones reach the source as they are
    return `${this.#prefix}${logical}`;
  }

  mine(real: string): boolean {
    return real.startsWith(this.#prefix);
  }

  back<T extends KubeObject>(o: T): T {
    const out = structuredClone(o);
    out.metadata.namespace = out.metadata.namespace.slice(this.#prefix.length);
    if ('involvedObject' in out) {
      const inv = out.involvedObject;
      if (typeof inv === 'object' && inv !== null && 'namespace' in inv && typeof inv.namespace === 'string') {
        inv.namespace = inv.namespace.slice(this.#prefix.length);
      }
    }
    return out;
  }

  there<T extends { metadata: { namespace: string } }>(o: T): T {
    return { ...o, metadata: { ...o.metadata, namespace: this.ns(o.metadata.namespace) } };
  }

  async ensure(logical: string): Promise<void> {
    const real = this.ns(logical);
    if (real === logical || this.made.has(real)) return;
    this.made.add(real);
    try {
      await this.core.createNamespace({ body: { metadata: { name: real, labels: { 'vmlet.io/test': 'source-contract-kube' } } } });
    } catch (e) {
      if (!(e instanceof Error && Reflect.get(e, 'code') === 409)) throw e;
    }
  }

  async dispose(): Promise<void> {
    this.inner.close();
    await Promise.all([...this.made].map((name) => this.core.deleteNamespace({ name }).catch(() => undefined)));
  }

  async get<K extends Kind>(kind: K, namespace: string, name: string): Promise<KubeObject<K> | undefined> {
    const o = await this.inner.get(kind, this.ns(namespace), name);
    return o === undefined ? undefined : this.back(o);
  }

  async list<K extends Kind>(kind: K, namespace?: string): Promise<Array<KubeObject<K>>> {
    return (await this.listWithVersion(kind, namespace)).items;
  }

  async listWithVersion<K extends Kind>(kind: K, namespace?: string): Promise<ObjectList<K>> {
    const l = await this.inner.listWithVersion(kind, this.ns(namespace));
    return { items: l.items.filter((o) => this.mine(o.metadata.namespace)).map((o) => this.back(o)), resourceVersion: l.resourceVersion };
  }

  async create<K extends Kind>(obj: NewObject<K>): Promise<KubeObject<K>> {
    await this.ensure(obj.metadata.namespace);
    return this.back(await this.inner.create(this.there(obj)));
  }

  async update<K extends Kind>(obj: KubeObject<K>, opts?: UpdateOptions): Promise<KubeObject<K>> {
    return this.back(await this.inner.update(this.there(obj), opts));
  }

  async updateStatus<S = unknown, K extends Kind = Kind>(
    kind: K,
    namespace: string,
    name: string,
    mutate: (status: S | undefined) => S | undefined,
    opts?: StatusWriteOptions,
  ): Promise<KubeObject<K>> {
    return this.back(await this.inner.updateStatus(kind, this.ns(namespace), name, mutate, opts));
  }

  async delete<K extends Kind>(kind: K, namespace: string, name: string, opts?: DeleteOptions): Promise<KubeObject<K>> {
    return this.back(await this.inner.delete(kind, this.ns(namespace), name, opts));
  }

  watch<K extends Kind>(kind: K, namespace?: string, name?: string, opts?: WatchOptions): SourceWatch<K> {
    const w = this.inner.watch(kind, this.ns(namespace), name, opts);
    const next = async (): Promise<IteratorResult<WatchEvent<K>>> => {
      for (;;) {
        const r = await w.next();
        if (r.done === true) return r;
        if (this.mine(r.value.object.metadata.namespace)) return { value: { type: r.value.type, object: this.back(r.value.object) }, done: false };
      }
    };
    const view: SourceWatch<K> = {
      next,
      close: () => w.close(),
      get closed() {
        return w.closed;
      },
      return: async () => {
        w.close();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]: () => view,
    };
    return view;
  }

  async recordEvent(input: RecordEventInput): Promise<EventObject> {
    await this.ensure(input.involvedObject.namespace);
    const inv = { ...input.involvedObject, namespace: this.ns(input.involvedObject.namespace) };
    return this.back(await this.inner.recordEvent({ ...input, involvedObject: inv }));
  }

  async listEvents(namespace?: string, objectName?: string, opts?: ListEventsOptions): Promise<EventObject[]> {
    const l = await this.inner.listEvents(this.ns(namespace), objectName, opts);
    return l.filter((e) => this.mine(e.metadata.namespace)).map((e) => this.back(e));
  }
}

const reason = clusterSkipReason();
if (reason !== null) {
  t.test('KubeSource contract', { skip: reason }, () => undefined);
} else {
  const c = await testCluster(t);
  if (c !== undefined) {
    await c.installCrds();
    const kc = new KubeConfig();
    kc.loadFromFile(c.kubeconfigPath);
    const core = kc.makeApiClient(CoreV1Api);
    sourceContract('KubeSource', async () => new NamespacedView(new KubeSource({ kubeConfig: kc, logger: pino({ level: 'silent' }) }), core), {
      dispose: async (s) => {
        if (s instanceof NamespacedView) await s.dispose();
      },
      staleResourceVersion: '1',
      vmSpec,
      vmiSpec: VMI_SPEC,
    });
  }
}
