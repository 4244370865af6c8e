// The Kubernetes source's requests: get, list, create, replace, replace status and delete of custom resources and core Events, as plain JSON, failures mapped to VmletErrors.

import {
  CoreV1Api,
  CoreV1Event,
  CustomObjectsApi,
  type KubeConfig,
  type V1DeleteOptions,
  type V1EventSource,
  type V1ObjectReference,
} from '@kubernetes/client-node';
import { kubeError } from './kube-errors.js';
import type { GroupVersion, ResourceRef } from './kube-objects.js';
import { isRecord } from './store-keys.js';

export interface ListQuery {
  fieldSelector?: string | undefined;
  labelSelector?: string | undefined;
  limit?: number | undefined;
}

/** The JSON of a list: its items (kind and apiVersion may be missing per item) and the resourceVersion it was read at. */
export interface RawList {
  items: unknown[];
  resourceVersion: string;
}

export interface Preconditions {
  uid?: string | undefined;
  resourceVersion?: string | undefined;
}

/** What the source asks of the API server; one object per source (fakes in tests). */
export interface KubeApi {
  get(r: ResourceRef, ns: string, name: string): Promise<unknown>;
  list(r: ResourceRef, ns: string | undefined, q?: ListQuery): Promise<RawList>;
  create(r: ResourceRef, ns: string, body: Record<string, unknown>): Promise<unknown>;
  replace(r: ResourceRef, ns: string, name: string, body: Record<string, unknown>): Promise<unknown>;
  replaceStatus(r: ResourceRef, ns: string, name: string, body: Record<string, unknown>): Promise<unknown>;
  /** The deleted object, the marked object (finalizers), or a `Status` (custom resources removed at once). */
  delete(r: ResourceRef, ns: string, name: string, pre?: Preconditions): Promise<unknown>;
}

const PAGE = 500;
/** Kubernetes drops fields a schema does not know; a source that wrote something else than it was given would lie. */
const STRICT = 'Strict';
const FIELD_MANAGER = 'vmlet';

/** Timestamps the typed Event model holds as Date; JSON has them as RFC 3339 strings (seconds, as the API server writes them). */
const TIME_KEYS = new Set(['creationTimestamp', 'deletionTimestamp', 'firstTimestamp', 'lastTimestamp', 'time', 'lastObservedTime']);

/** A typed Event (Date fields) as plain JSON. */
export function eventJson(ev: object): unknown {
  const replacer = (key: string, v: unknown): unknown => (TIME_KEYS.has(key) && typeof v === 'string' ? v.replace(/\.000Z$/, 'Z') : v);
  return JSON.parse(JSON.stringify(ev, replacer)) as unknown;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function date(v: unknown): Date | undefined {
  const t = typeof v === 'string' ? Date.parse(v) : NaN;
  return Number.isNaN(t) ? undefined : new Date(t);
}

function stringMap(v: unknown): Record<string, string> | undefined {
  return isRecord(v) && Object.values(v).every((x) => typeof x === 'string') ? (v as Record<string, string>) : undefined;
}

/** Plain Event JSON as the typed model that CoreV1Api serialises (it calls toISOString on the timestamp fields). */
export function eventModel(b: Record<string, unknown>): CoreV1Event {
  const ev = new CoreV1Event();
  const m = isRecord(b['metadata']) ? b['metadata'] : {};
  ev.apiVersion = 'v1';
  ev.kind = 'Event';
  ev.metadata = {};
  for (const k of ['name', 'namespace', 'uid', 'resourceVersion'] as const) {
    const v = str(m[k]);
    if (v !== undefined) ev.metadata[k] = v;
  }
  const labels = stringMap(m['labels']);
  if (labels !== undefined) ev.metadata.labels = labels;
  const annotations = stringMap(m['annotations']);
  if (annotations !== undefined) ev.metadata.annotations = annotations;
  // Shapes the API server checks; the source built them from checked input.
  ev.involvedObject = (isRecord(b['involvedObject']) ? b['involvedObject'] : {}) as V1ObjectReference;
  if (isRecord(b['source'])) ev.source = b['source'] as V1EventSource;
  for (const k of ['type', 'reason', 'message', 'action', 'reportingComponent', 'reportingInstance'] as const) {
    const v = str(b[k]);
    if (v !== undefined) ev[k] = v;
  }
  if (typeof b['count'] === 'number') ev.count = b['count'];
  for (const k of ['firstTimestamp', 'lastTimestamp'] as const) {
    const d = date(b[k]);
    if (d !== undefined) ev[k] = d;
  }
  return ev;
}

/** Only the defined fields: client-node's request types take no explicit undefined. */
function defined<T extends object>(o: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  const out: { [K in keyof T]?: Exclude<T[K], undefined> } = {};
  for (const k of Object.keys(o) as Array<keyof T>) {
    const v = o[k];
    if (v !== undefined) out[k] = v as Exclude<T[keyof T], undefined>;
  }
  return out;
}

function what(verb: string, r: ResourceRef, ns: string | undefined, name?: string): string {
  return `${verb} ${r.kind}${ns === undefined ? '' : ` ${ns}/`}${name ?? ''}`;
}

/** `KubeApi` over client-node's CustomObjectsApi (VM, VMI) and CoreV1Api (Events). */
export class ClientNodeApi implements KubeApi {
  readonly #custom: CustomObjectsApi;
  readonly #core: CoreV1Api;
  readonly #gv: GroupVersion;

  constructor(kc: KubeConfig, gv: GroupVersion) {
    this.#custom = kc.makeApiClient(CustomObjectsApi);
    this.#core = kc.makeApiClient(CoreV1Api);
    this.#gv = gv;
  }

  async get(r: ResourceRef, ns: string, name: string): Promise<unknown> {
    try {
      if (r.core) return eventJson(await this.#core.readNamespacedEvent({ name, namespace: ns }));
      const raw: unknown = await this.#custom.getNamespacedCustomObject({ ...this.#gv, plural: r.plural, namespace: ns, name });
      return raw;
    } catch (e) {
      throw kubeError(e, what('get', r, ns, name));
    }
  }

  async list(r: ResourceRef, ns: string | undefined, q: ListQuery = {}): Promise<RawList> {
    const items: unknown[] = [];
    let resourceVersion = '';
    let cont: string | undefined;
    try {
      do {
        const limit = q.limit ?? PAGE;
        const page = await this.#page(r, ns, { ...q, limit }, cont);
        if (resourceVersion === '') resourceVersion = page.resourceVersion; // every page is of the first page's snapshot
        items.push(...page.items);
        cont = q.limit === undefined ? page.cont : undefined;
      } while (cont !== undefined && cont !== '');
    } catch (e) {
      throw kubeError(e, what('list', r, ns));
    }
    return { items, resourceVersion };
  }

  async #page(r: ResourceRef, ns: string | undefined, q: ListQuery, cont: string | undefined): Promise<RawList & { cont: string | undefined }> {
    const common = defined({ fieldSelector: q.fieldSelector, labelSelector: q.labelSelector, limit: q.limit, _continue: cont });
    if (r.core) {
      const l = ns === undefined ? await this.#core.listEventForAllNamespaces(common) : await this.#core.listNamespacedEvent({ ...common, namespace: ns });
      return { items: l.items.map((ev) => eventJson(ev)), resourceVersion: l.metadata?.resourceVersion ?? '', cont: l.metadata?._continue };
    }
    const params = { ...common, ...this.#gv, plural: r.plural };
    const raw: unknown =
      ns === undefined
        ? await this.#custom.listCustomObjectForAllNamespaces(params)
        : await this.#custom.listNamespacedCustomObject({ ...params, namespace: ns });
    if (!isRecord(raw) || !Array.isArray(raw['items']) || !isRecord(raw['metadata'])) return { items: [], resourceVersion: '', cont: undefined };
    const meta = raw['metadata'];
    const rv = meta['resourceVersion'];
    const c = meta['continue'];
    return { items: raw['items'], resourceVersion: typeof rv === 'string' ? rv : '', cont: typeof c === 'string' ? c : undefined };
  }

  async create(r: ResourceRef, ns: string, body: Record<string, unknown>): Promise<unknown> {
    const name = isRecord(body['metadata']) ? String(body['metadata']['name']) : '';
    try {
      const opts = { fieldValidation: STRICT, fieldManager: FIELD_MANAGER };
      if (r.core) return eventJson(await this.#core.createNamespacedEvent({ namespace: ns, body: eventModel(body), ...opts }));
      const raw: unknown = await this.#custom.createNamespacedCustomObject({ ...this.#gv, plural: r.plural, namespace: ns, body, ...opts });
      return raw;
    } catch (e) {
      throw kubeError(e, what('create', r, ns, name));
    }
  }

  async replace(r: ResourceRef, ns: string, name: string, body: Record<string, unknown>): Promise<unknown> {
    try {
      const opts = { fieldValidation: STRICT, fieldManager: FIELD_MANAGER };
      if (r.core) return eventJson(await this.#core.replaceNamespacedEvent({ name, namespace: ns, body: eventModel(body), ...opts }));
      const raw: unknown = await this.#custom.replaceNamespacedCustomObject({ ...this.#gv, plural: r.plural, namespace: ns, name, body, ...opts });
      return raw;
    } catch (e) {
      throw kubeError(e, what('update', r, ns, name));
    }
  }

  async replaceStatus(r: ResourceRef, ns: string, name: string, body: Record<string, unknown>): Promise<unknown> {
    try {
      const opts = { fieldValidation: STRICT, fieldManager: FIELD_MANAGER };
      const raw: unknown = await this.#custom.replaceNamespacedCustomObjectStatus({ ...this.#gv, plural: r.plural, namespace: ns, name, body, ...opts });
      return raw;
    } catch (e) {
      throw kubeError(e, what('update status of', r, ns, name));
    }
  }

  async delete(r: ResourceRef, ns: string, name: string, pre: Preconditions = {}): Promise<unknown> {
    const body: V1DeleteOptions = { preconditions: defined(pre) };
    try {
      if (r.core) {
        return eventJson(await this.#core.deleteNamespacedEvent({ name, namespace: ns, body }));
      }
      const raw: unknown = await this.#custom.deleteNamespacedCustomObject({ ...this.#gv, plural: r.plural, namespace: ns, name, body });
      return raw;
    } catch (e) {
      throw kubeError(e, what('delete', r, ns, name));
    }
  }
}
