// Core v1 Events for the Kubernetes source: one write of recordEvent (create, or bump count of the same Event) and listing by involved object.

import { isVmletError, VmletError } from '../errors.js';
import type { KubeApi } from './kube-client.js';
import { eventOrder, isEventObject, normalise, type ResourceRef } from './kube-objects.js';
import type { EventObject, EventType, ObjectReference } from './source.js';

export interface EventWrite {
  involved: ObjectReference;
  type: EventType;
  reason: string;
  message: string;
  component: string;
  /** The Event's name (kube-objects' eventName). */
  name: string;
  now: Date;
}

/**
 * One try: bump count and lastTimestamp of the Event `name` against the read resourceVersion, or create it. A
 * conflict (someone else bumped or created it meanwhile) is STORE_CONFLICT, for the caller to try again.
 */
export async function writeEvent(api: KubeApi, r: ResourceRef & { kind: 'Event' }, w: EventWrite): Promise<EventObject> {
  const ns = w.involved.namespace;
  // Event timestamps are RFC 3339 with seconds.
  const stamp = w.now.toISOString().replace(/\.[0-9]+Z$/, 'Z');
  let cur: EventObject | undefined;
  try {
    const o = normalise(await api.get(r, ns, w.name), r);
    if (isEventObject(o)) cur = o;
  } catch (e) {
    if (!isVmletError(e, 'STORE_NOT_FOUND')) throw e;
  }
  let written: unknown;
  if (cur !== undefined) {
    written = await api.replace(r, ns, w.name, { ...cur, count: (cur.count ?? 1) + 1, lastTimestamp: stamp });
  } else {
    const body = {
      apiVersion: 'v1',
      kind: 'Event',
      metadata: { name: w.name, namespace: ns },
      involvedObject: w.involved,
      type: w.type,
      reason: w.reason,
      message: w.message,
      count: 1,
      firstTimestamp: stamp,
      lastTimestamp: stamp,
      source: { component: w.component },
    };
    try {
      written = await api.create(r, ns, body);
    } catch (e) {
      // Recorded by someone else first: aggregate into theirs on the next try.
      if (isVmletError(e, 'STORE_ALREADY_EXISTS')) throw new VmletError('STORE_CONFLICT', `Event ${ns}/${w.name} appeared meanwhile`, { cause: e });
      throw e;
    }
  }
  const ev = normalise(written, r);
  if (!isEventObject(ev)) throw new VmletError('KUBE_API_UNEXPECTED', `Event ${ns}/${w.name} came back without involvedObject`);
  return ev;
}

/** Events in `ns` (all namespaces if undefined) about objects named `objectName` and of `kind` (all if undefined), oldest first. */
export async function listKubeEvents(
  api: KubeApi,
  r: ResourceRef & { kind: 'Event' },
  ns: string | undefined,
  objectName: string | undefined,
  kind: string | undefined,
): Promise<EventObject[]> {
  const sel: string[] = [];
  if (objectName !== undefined) sel.push(`involvedObject.name=${objectName}`);
  if (kind !== undefined && !/^[A-Za-z][A-Za-z0-9]*$/.test(kind)) throw new VmletError('STORE_INVALID_KEY', `invalid kind ${JSON.stringify(kind)}`);
  if (kind !== undefined) sel.push(`involvedObject.kind=${kind}`);
  const l = await api.list(r, ns, sel.length === 0 ? {} : { fieldSelector: sel.join(',') });
  return l.items
    .map((raw) => normalise(raw, r))
    .filter(isEventObject)
    .sort(eventOrder);
}
