// Pure helpers of the Kubernetes source: key checks, the Source's object shape from API server JSON, request bodies, and Event names and order.

import { createHash } from 'node:crypto';
import { VmletError } from '../errors.js';
import type { EventObject, Kind, KubeObject, ObjectReference, RecordEventInput } from './source.js';
import { isRecord, isStoreKind, PLURALS, STORE_KINDS, userMetaProblem } from './store-keys.js';

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** Fields of metadata that the API server owns; create drops them, update takes them from the stored object. */
const SYSTEM_META = [
  'uid',
  'resourceVersion',
  'generation',
  'creationTimestamp',
  'deletionTimestamp',
  'deletionGracePeriodSeconds',
  'managedFields',
  'selfLink',
];

/** Group and version of the custom resources (`vmlet.io`/`v1alpha1`, or `kubevirt.io`/`v1` for the compat overlay). */
export interface GroupVersion {
  group: string;
  version: string;
}

/** Where a kind lives in the API: `/api/v1/…/events` or `/apis/GROUP/VERSION/…/PLURAL`. */
export interface ResourceRef {
  kind: Kind;
  apiVersion: string;
  plural: string;
  core: boolean;
}

export function resourceOf(kind: Kind, gv: GroupVersion): ResourceRef {
  if (kind === 'Event') return { kind, apiVersion: 'v1', plural: 'events', core: true };
  return { kind, apiVersion: `${gv.group}/${gv.version}`, plural: PLURALS[kind], core: false };
}

/** The URL path of a collection (or of one object with `name`), for watches. */
export function resourcePath(r: ResourceRef, gv: GroupVersion, namespace?: string, name?: string): string {
  const base = r.core ? '/api/v1' : `/apis/${encodeURIComponent(gv.group)}/${encodeURIComponent(gv.version)}`;
  const ns = namespace === undefined ? '' : `/namespaces/${encodeURIComponent(namespace)}`;
  return `${base}${ns}/${r.plural}${name === undefined ? '' : `/${encodeURIComponent(name)}`}`;
}

function invalidKey(what: string, value: unknown, why: string): VmletError {
  const shown = typeof value === 'string' ? JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value) : typeof value;
  return new VmletError('STORE_INVALID_KEY', `invalid ${what} ${shown}: ${why}`);
}

export function checkKubeKind<K extends Kind>(kind: K): K;
export function checkKubeKind(kind: unknown): Kind;
export function checkKubeKind(kind: unknown): Kind {
  if (!isStoreKind(kind)) throw invalidKey('kind', kind, `not one of ${STORE_KINDS.join(', ')}`);
  return kind;
}

/** A namespace is a DNS-1123 label (at most 63 characters). */
export function checkNamespace(v: unknown): string {
  if (typeof v !== 'string') throw invalidKey('namespace', v, 'not a string');
  if (v.length === 0 || v.length > 63 || !DNS_LABEL.test(v)) throw invalidKey('namespace', v, 'not a DNS-1123 label (a-z, 0-9, -, at most 63)');
  return v;
}

/** A name is a DNS-1123 subdomain (at most 253 characters), what Kubernetes takes for custom resources and Events. */
export function checkName(v: unknown): string {
  if (typeof v !== 'string') throw invalidKey('name', v, 'not a string');
  if (v.length === 0 || v.length > 253 || !DNS_SUBDOMAIN.test(v)) throw invalidKey('name', v, 'not a DNS-1123 subdomain (a-z, 0-9, -, ., at most 253)');
  return v;
}

/**
 * The Source's shape of an object the API server returned: `managedFields` gone, `kind`/`apiVersion` filled in
 * (lists omit them per item), generation a number (Events have none: 1). UNEXPECTED when it is not an object.
 */
export function normalise<K extends Kind>(raw: unknown, r: ResourceRef & { kind: K }): KubeObject<K> {
  if (!isRecord(raw) || !isRecord(raw['metadata'])) throw new VmletError('KUBE_API_UNEXPECTED', `the API server returned no ${r.kind} object`);
  const m: Record<string, unknown> = { ...raw['metadata'] };
  delete m['managedFields'];
  delete m['selfLink'];
  if (typeof m['name'] !== 'string' || typeof m['namespace'] !== 'string' || typeof m['resourceVersion'] !== 'string') {
    throw new VmletError('KUBE_API_UNEXPECTED', `the API server returned a ${r.kind} without name, namespace or resourceVersion`);
  }
  if (typeof m['generation'] !== 'number') m['generation'] = 1;
  if (typeof m['creationTimestamp'] !== 'string') m['creationTimestamp'] = toIso(m['creationTimestamp']);
  const out: Record<string, unknown> = { ...raw, apiVersion: r.apiVersion, kind: r.kind, metadata: m };
  if (r.kind === 'Event') {
    for (const f of ['firstTimestamp', 'lastTimestamp', 'eventTime']) if (out[f] instanceof Date) out[f] = toIso(out[f]);
    if (typeof out['count'] !== 'number') out['count'] = 1;
  }
  return out as KubeObject<K>;
}

function toIso(v: unknown): string {
  if (v instanceof Date) return v.toISOString().replace(/\.000Z$/, 'Z');
  return typeof v === 'string' ? v : '';
}

/** Checks what `create`/`update` were given; returns the kind, namespace, name and metadata. */
export function checkObjectInput(
  obj: { apiVersion: unknown; kind: unknown; metadata: unknown },
  r: (kind: Kind) => ResourceRef,
): { ref: ResourceRef; ns: string; name: string; meta: Record<string, unknown> } {
  const kind = checkKubeKind(obj.kind);
  const meta = obj.metadata;
  if (!isRecord(meta)) throw new VmletError('STORE_INVALID_OBJECT', 'metadata must be an object');
  const ns = checkNamespace(meta['namespace']);
  const name = checkName(meta['name']);
  const problem = userMetaProblem(meta);
  if (problem !== undefined) throw new VmletError('STORE_INVALID_OBJECT', problem);
  const ref = r(kind);
  if (obj.apiVersion !== ref.apiVersion) {
    throw new VmletError('STORE_INVALID_OBJECT', `apiVersion ${JSON.stringify(obj.apiVersion)} is not this source's ${ref.apiVersion} for ${kind}`);
  }
  return { ref, ns, name, meta };
}

/** The body of a create: the caller's object without system metadata or status (the API server ignores status on create). */
export function createBody(obj: Record<string, unknown>, meta: Record<string, unknown>): Record<string, unknown> {
  const m = { ...meta };
  for (const f of SYSTEM_META) delete m[f];
  const body: Record<string, unknown> = { ...obj, metadata: m };
  delete body['status'];
  return body;
}

/**
 * The body of an update (PUT) from the caller's object and the stored one: the caller's spec, top-level fields and user
 * metadata, the stored system metadata, and the resourceVersion to write against.
 */
export function updateBody(obj: Record<string, unknown>, meta: Record<string, unknown>, cur: KubeObject, rv: string): Record<string, unknown> {
  const m: Record<string, unknown> = { ...meta };
  for (const f of SYSTEM_META) delete m[f];
  m['uid'] = cur.metadata.uid;
  m['resourceVersion'] = rv;
  const body: Record<string, unknown> = { ...obj, metadata: m };
  delete body['status'];
  return body;
}

/** Event fields as the API server keeps them: reason and message cut to what it accepts. */
const EVENT_REASON_MAX = 128;
const EVENT_MESSAGE_MAX = 1024;

function cut(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

/** The normalised input of recordEvent: checked reference, cut reason and message, the component. */
export function eventInput(input: RecordEventInput): { involved: ObjectReference; reason: string; message: string; component: string } {
  const inv = input.involvedObject;
  const namespace = checkNamespace(inv.namespace);
  const name = checkName(inv.name);
  if (typeof inv.kind !== 'string' || inv.kind === '') throw new VmletError('STORE_INVALID_OBJECT', 'involvedObject.kind missing');
  if (input.type !== 'Normal' && input.type !== 'Warning') throw new VmletError('STORE_INVALID_OBJECT', 'event type must be Normal or Warning');
  const involved: ObjectReference = { kind: inv.kind, namespace, name, uid: String(inv.uid) };
  if (inv.apiVersion !== undefined) involved.apiVersion = inv.apiVersion;
  return {
    involved,
    reason: cut(String(input.reason), EVENT_REASON_MAX),
    message: cut(String(input.message), EVENT_MESSAGE_MAX),
    component: input.source ?? 'vmlet',
  };
}

/**
 * A repeat's Event name: `<object name>.<hash>` of object uid, type, reason, message and component, so the same event
 * finds the same Event (even from another process or after a restart) and aggregates into it.
 */
export function eventName(e: { involved: ObjectReference; type: string; reason: string; message: string; component: string }): string {
  const key = JSON.stringify([e.involved.kind, e.involved.uid, e.type, e.reason, e.message, e.component]);
  const hash = createHash('sha256').update(key).digest('hex').slice(0, 16);
  return `${e.involved.name.slice(0, 253 - 17).replace(/[.-]+$/, '')}.${hash}`;
}

export function isEventObject(o: KubeObject): o is EventObject {
  return o.kind === 'Event' && 'involvedObject' in o && isRecord(o.involvedObject);
}

/** Oldest first: lastTimestamp has only seconds, so ties go by resourceVersion (a number in every Kubernetes we know). */
export function eventOrder(a: EventObject, b: EventObject): number {
  const la = a.lastTimestamp ?? '';
  const lb = b.lastTimestamp ?? '';
  if (la !== lb) return Date.parse(la) - Date.parse(lb) || (la < lb ? -1 : 1);
  return rvCompare(a.metadata.resourceVersion, b.metadata.resourceVersion);
}

/** Compares resourceVersions as numbers when both are, as strings otherwise. */
export function rvCompare(a: string, b: string): number {
  if (/^[0-9]+$/.test(a) && /^[0-9]+$/.test(b)) return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Sorted by namespace, then name (what `Source.list` promises). */
export function byNamespaceThenName(a: KubeObject, b: KubeObject): number {
  const x = `${a.metadata.namespace}\0${a.metadata.name}`;
  const y = `${b.metadata.namespace}\0${b.metadata.name}`;
  return x < y ? -1 : x > y ? 1 : 0;
}
