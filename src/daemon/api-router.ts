// Routing of the vmlet API: request path → route (names checked as DNS labels), the methods each route allows, its error context, and the query's selectors.
import { VmletError } from '../errors.js';
import type { Kind, ObjectRef, VmAction, VmiAction } from './backend.js';
import type { StatusContext } from './status.js';
import { KINDS, kindOfPlural } from '../api/vocabulary.js';

export const API_GROUP = 'vmlet.io';
export const SUBRESOURCE_GROUP = 'subresources.vmlet.io';
export const API_VERSION = 'v1alpha1';

const VMI_ACTIONS: readonly VmiAction[] = ['pause', 'unpause', 'softreboot', 'reset'];
const VM_ACTIONS: readonly VmAction[] = ['start', 'stop', 'restart'];

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

export type Route =
  | { type: 'healthz' }
  | { type: 'version' }
  | { type: 'startTraces' }
  | { type: 'list'; kind: Kind; namespace: string | undefined }
  | { type: 'object'; ref: ObjectRef }
  | { type: 'vmiAction'; ref: ObjectRef; action: VmiAction }
  | { type: 'vmAction'; ref: ObjectRef; action: VmAction }
  | { type: 'console'; ref: ObjectRef }
  | { type: 'qmp'; ref: ObjectRef }
  | { type: 'events'; namespace: string | undefined }
  | { type: 'images' }
  | { type: 'image'; image: string };

export interface ParsedRequest {
  route: Route;
  query: URLSearchParams;
}

function notFound(): VmletError {
  return new VmletError('NOT_FOUND', 'the server could not find the requested resource');
}

function checkLabel(what: string, value: string): string {
  if (!DNS_LABEL.test(value)) throw new VmletError('INVALID_PATH', `invalid ${what} in path: must be a DNS label (lowercase letters, digits, '-', at most 63)`);
  return value;
}

function vmiAction(verb: string): VmiAction | undefined {
  return VMI_ACTIONS.find((a) => a === verb);
}

function vmAction(verb: string): VmAction | undefined {
  return VM_ACTIONS.find((a) => a === verb);
}

/** Decodes and checks the path; names and namespaces must be DNS labels, so nothing like `..%2F` reaches the backend. */
export function parseRequestUrl(url: string): ParsedRequest {
  if (!url.startsWith('/')) throw notFound();
  const q = url.indexOf('?');
  const rawPath = q < 0 ? url : url.slice(0, q);
  const query = new URLSearchParams(q < 0 ? '' : url.slice(q + 1));
  const seg = rawPath
    .slice(1)
    .split('/')
    .map((s) => {
      try {
        return decodeURIComponent(s);
      } catch {
        throw new VmletError('INVALID_PATH', 'malformed percent-encoding in path');
      }
    });
  if (seg.some((s) => s === '')) throw notFound();
  const [a, b, c, ...rest] = seg;
  if (seg.length === 1 && a === 'healthz') return { route: { type: 'healthz' }, query };
  if (seg.length === 1 && a === 'version') return { route: { type: 'version' }, query };
  if (seg.length === 2 && a === 'debug' && b === 'start-traces') return { route: { type: 'startTraces' }, query };
  // The node image store; a reference (with its '/' and ':') is one percent-encoded segment.
  if (a === 'images' && seg.length <= 2) return { route: b === undefined ? { type: 'images' } : { type: 'image', image: b }, query };
  if (a === 'api' && b === 'v1') {
    if (c === 'events' && rest.length === 0) return { route: { type: 'events', namespace: undefined }, query };
    if (c === 'namespaces' && rest.length === 2 && rest[1] === 'events') {
      return { route: { type: 'events', namespace: checkLabel('namespace', rest[0] ?? '') }, query };
    }
    throw notFound();
  }
  if (a !== 'apis' || (b !== API_GROUP && b !== SUBRESOURCE_GROUP) || c !== API_VERSION) throw notFound();
  const sub = b === SUBRESOURCE_GROUP;
  if (rest.length === 1 && !sub) {
    const kind = kindOfPlural(rest[0] ?? '');
    if (!kind) throw notFound();
    return { route: { type: 'list', kind, namespace: undefined }, query };
  }
  if (rest[0] !== 'namespaces' || rest.length < 3 || rest.length > 5) throw notFound();
  const namespace = checkLabel('namespace', rest[1] ?? '');
  const kind = kindOfPlural(rest[2] ?? '');
  if (!kind) throw notFound();
  if (rest.length === 3) {
    if (sub) throw notFound();
    return { route: { type: 'list', kind, namespace }, query };
  }
  const ref: ObjectRef = { kind, namespace, name: checkLabel('name', rest[3] ?? '') };
  if (rest.length === 4) {
    if (sub) throw notFound();
    return { route: { type: 'object', ref }, query };
  }
  const verb = rest[4] ?? '';
  if (kind === 'VirtualMachineInstance') {
    const action = vmiAction(verb);
    if (action !== undefined) return { route: { type: 'vmiAction', ref, action }, query };
    if (verb === 'console') return { route: { type: 'console', ref }, query };
    if (verb === 'qmp') return { route: { type: 'qmp', ref }, query };
  } else {
    const action = vmAction(verb);
    if (action !== undefined) return { route: { type: 'vmAction', ref, action }, query };
  }
  throw notFound();
}

export function methodsOf(route: Route): string[] {
  switch (route.type) {
    case 'list':
      return route.namespace === undefined ? ['GET'] : ['GET', 'POST'];
    case 'object':
      return ['GET', 'PUT', 'DELETE'];
    case 'vmiAction':
    case 'vmAction':
      return ['PUT'];
    case 'qmp':
      return ['POST'];
    case 'images':
      return ['GET', 'POST'];
    case 'image':
      return ['GET', 'DELETE'];
    default:
      return ['GET'];
  }
}

/** METHOD_NOT_ALLOWED unless the route takes this method; `details.allow` is the Allow header's value. */
export function checkMethod(route: Route, method: string): void {
  const allowed = methodsOf(route);
  if (allowed.includes(method)) return;
  throw new VmletError('METHOD_NOT_ALLOWED', `method ${method} is not allowed here (allowed: ${allowed.join(', ')})`, { details: { allow: allowed } });
}

/** The Allow header of a METHOD_NOT_ALLOWED error (empty for anything else). */
export function allowHeaderOf(e: unknown): string {
  if (!(e instanceof VmletError) || e.code !== 'METHOD_NOT_ALLOWED') return '';
  const d = e.details;
  const allow = typeof d === 'object' && d !== null && 'allow' in d ? d.allow : undefined;
  return Array.isArray(allow) ? allow.filter((m): m is string => typeof m === 'string').join(', ') : '';
}

export function contextOf(route: Route): StatusContext {
  if ('ref' in route) return { kind: KINDS[route.ref.kind].plural, name: route.ref.name };
  if (route.type === 'list') return { kind: KINDS[route.kind].plural };
  if (route.type === 'events') return { kind: 'events' };
  if (route.type === 'images') return { kind: 'images' };
  if (route.type === 'image') return { kind: 'images', name: route.image };
  return {};
}

/** `fieldSelector=key=value` (or `key==value`); only the one key given is understood. */
export function selectedName(query: URLSearchParams, key: string): string | undefined {
  const sel = query.get('fieldSelector');
  if (sel === null || sel === '') return undefined;
  let name: string | undefined;
  for (const term of sel.split(',')) {
    const m = /^([^=!]+)==?(.*)$/.exec(term);
    if (!m || m[1] !== key) throw new VmletError('BAD_REQUEST', `unsupported fieldSelector "${term}" (only ${key}=NAME)`);
    name = checkLabel('name', m[2] ?? '');
  }
  return name;
}

export function isWatch(query: URLSearchParams): boolean {
  const w = query.get('watch');
  return w === 'true' || w === '1';
}
