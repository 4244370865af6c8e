// The local store's checks of what it is given: kinds, names and namespaces safe as path components, the shape of objects, and the lock keys derived from them.

import { VmletError } from '../errors.js';
import type { Kind, KubeObject } from './source.js';

export const PLURALS: Readonly<Record<Kind, string>> = {
  VirtualMachine: 'virtualmachines',
  VirtualMachineInstance: 'virtualmachineinstances',
  Event: 'events',
};
export const STORE_KINDS: readonly Kind[] = ['VirtualMachine', 'VirtualMachineInstance', 'Event'];

/** Longest name the store accepts: `<name>.json` must fit in one 255-byte file name. */
export const MAX_NAME_BYTES = 250;
const MAX_KEY_BYTES = 253;

export const RV_RE = /^[1-9][0-9]{0,15}$/;

export function isStoreKind(kind: unknown): kind is Kind {
  return typeof kind === 'string' && Object.hasOwn(PLURALS, kind);
}

/** Narrows an object of any kind to one of `kind`. */
export function ofKind<K extends Kind>(o: KubeObject, kind: K): o is KubeObject<K> {
  return o.kind === kind;
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isStringMap(v: unknown): v is Record<string, string> {
  return isRecord(v) && Object.values(v).every((x) => typeof x === 'string');
}

function invalidKey(what: string, value: unknown, why: string): VmletError {
  const shown = typeof value === 'string' ? JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value) : typeof value;
  return new VmletError('STORE_INVALID_KEY', `invalid ${what} ${shown}: ${why}`);
}

/** Defence in depth: refuse anything that is not a single, harmless path component. Callers validate DNS names first. */
export function checkKeyPart(what: 'namespace' | 'name', value: unknown): string {
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

export function isSafeKeyPart(what: 'namespace' | 'name', v: string): boolean {
  try {
    checkKeyPart(what, v);
    return true;
  } catch {
    return false;
  }
}

export function checkKind<K extends Kind>(kind: K): K;
export function checkKind(kind: unknown): Kind;
export function checkKind(kind: unknown): Kind {
  if (!isStoreKind(kind)) throw invalidKey('kind', kind, `not one of ${STORE_KINDS.join(', ')}`);
  return kind;
}

/** Why `v` is not a well-formed stored object, or undefined when it is. */
export function objectProblem(v: unknown): string | undefined {
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

/** Why caller-set metadata (labels, annotations, finalizers) is malformed, or undefined. */
export function userMetaProblem(m: Record<string, unknown>): string | undefined {
  if (m['labels'] !== undefined && !isStringMap(m['labels'])) return 'metadata.labels must map strings to strings';
  if (m['annotations'] !== undefined && !isStringMap(m['annotations'])) return 'metadata.annotations must map strings to strings';
  const f = m['finalizers'];
  if (f !== undefined && !(Array.isArray(f) && f.every((x) => typeof x === 'string'))) return 'metadata.finalizers must be a list of strings';
  return undefined;
}

export function isStoredObject(v: unknown): v is KubeObject {
  return objectProblem(v) === undefined;
}

/** The checked kind, namespace, name and metadata of an object handed to create or update. */
export function checkInput(obj: { apiVersion: unknown; kind: unknown; metadata: unknown }): {
  kind: Kind;
  ns: string;
  name: string;
  meta: Record<string, unknown>;
} {
  const kind = checkKind(obj.kind);
  const meta = obj.metadata;
  if (!isRecord(meta)) throw new VmletError('STORE_INVALID_OBJECT', 'metadata must be an object');
  const ns = checkKeyPart('namespace', meta['namespace']);
  const name = checkKeyPart('name', meta['name']);
  const problem = userMetaProblem(meta);
  if (problem !== undefined) throw new VmletError('STORE_INVALID_OBJECT', problem);
  if (typeof obj.apiVersion !== 'string' || obj.apiVersion === '') throw new VmletError('STORE_INVALID_OBJECT', 'apiVersion missing');
  return { kind, ns, name, meta };
}

export function lockKey(kind: Kind, ns: string, name: string): string {
  return `${kind}\0${ns}\0${name}`;
}

export function eventsLockKey(kind: string, ns: string, name: string): string {
  return `\0events\0${kind}\0${ns}\0${name}`;
}

export function rvOf(o: KubeObject): number {
  return Number(o.metadata.resourceVersion);
}

export function positiveInt(v: number | undefined, dflt: number, what: string): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < 1) throw new VmletError('STORE_INVALID_OPTION', `${what} must be a positive integer`);
  return v;
}
