// The local store's kubectl-style Events: recording with aggregation of repeats, the per-object cap, listing, and removal together with the object they are about.

import { randomBytes, randomUUID } from 'node:crypto';
import { VmletError } from '../errors.js';
import type { EventObject, Kind, KubeObject, ListEventsOptions, ObjectReference, RecordEventInput } from './source.js';
import { copy, withRv, type StoreCore } from './store-core.js';
import { checkKeyPart, eventsLockKey, isRecord, lockKey, MAX_NAME_BYTES, rvOf } from './store-keys.js';

const EVENT_REASON_MAX = 128;
const EVENT_MESSAGE_MAX = 1024;

export function isEventObject(o: KubeObject): o is EventObject {
  return o.kind === 'Event' && 'involvedObject' in o && isRecord(o.involvedObject) && 'lastTimestamp' in o && typeof o.lastTimestamp === 'string';
}

function eventOrder(a: EventObject, b: EventObject): number {
  if (a.lastTimestamp !== b.lastTimestamp) return a.lastTimestamp < b.lastTimestamp ? -1 : 1;
  return rvOf(a) - rvOf(b);
}

function truncate(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

/** Events about the object `kind` `ns`/`name`, oldest first (frozen). */
function eventsOf(core: StoreCore, kind: string, ns: string, name: string): EventObject[] {
  return core
    .snapshot('Event', ns)
    .filter(isEventObject)
    .filter((e) => e.involvedObject.kind === kind && e.involvedObject.name === name)
    .sort(eventOrder);
}

/**
 * Record an event about an object, like kubectl's events: a repeat (same object, type, reason and message) bumps
 * count and lastTimestamp of the existing Event; at most maxEvents are kept per object, the least recently seen
 * go first. Events are removed together with their object. Returns the stored Event.
 */
export async function recordEvent(core: StoreCore, input: RecordEventInput): Promise<EventObject> {
  core.assertOpen();
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

  return core.track(
    core.locks.run(eventsLockKey(inv.kind, ns, objName), async () => {
      const mine = eventsOf(core, inv.kind, ns, objName);
      const same = mine.find(
        (e) =>
          e.involvedObject.uid === involved.uid && e.type === input.type && e.reason === reason && e.message === message && e.source.component === component,
      );
      const stamp = core.now().toISOString();
      if (same !== undefined) {
        const evName = same.metadata.name;
        const bumped = await core.locks.run(lockKey('Event', ns, evName), async () => {
          const cur = core.peek('Event', ns, evName);
          if (cur === undefined || !isEventObject(cur)) return undefined;
          const next = core.normalise({ ...cur, count: cur.count + 1, lastTimestamp: stamp });
          return core.write('MODIFIED', 'Event', ns, evName, (rv) => withRv(next, rv));
        });
        if (bumped !== undefined && isEventObject(bumped)) return copy(bumped);
      }
      const evName = `${objName.slice(0, MAX_NAME_BYTES - 17)}.${randomBytes(8).toString('hex')}`;
      const created = await core.locks.run(lockKey('Event', ns, evName), () =>
        core.write('ADDED', 'Event', ns, evName, (rv) => ({
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
      // Enforce the cap: drop the least recently seen beyond maxEvents.
      const all = eventsOf(core, inv.kind, ns, objName);
      for (const old of all.slice(0, Math.max(0, all.length - core.maxEvents))) {
        await deleteEventQuietly(core, old);
      }
      if (!isEventObject(created)) throw new VmletError('STORE_INVALID_OBJECT', 'stored event has the wrong shape');
      return copy(created);
    }),
  );
}

/** Events in `namespace` (all if omitted) about objects named `objectName` (all if omitted), oldest first by lastTimestamp. */
export function listEvents(core: StoreCore, namespace?: string, objectName?: string, opts: ListEventsOptions = {}): EventObject[] {
  const ns = namespace === undefined ? undefined : checkKeyPart('namespace', namespace);
  const on = objectName === undefined ? undefined : checkKeyPart('name', objectName);
  return core
    .snapshot('Event', ns)
    .filter(isEventObject)
    .filter((e) => (on === undefined || e.involvedObject.name === on) && (opts.kind === undefined || e.involvedObject.kind === opts.kind))
    .sort(eventOrder)
    .map(copy);
}

async function deleteEventQuietly(core: StoreCore, ev: EventObject): Promise<void> {
  const ns = ev.metadata.namespace;
  const name = ev.metadata.name;
  try {
    await core.locks.run(lockKey('Event', ns, name), async () => {
      const cur = core.peek('Event', ns, name);
      if (cur !== undefined) await core.remove('Event', ns, name, cur);
    });
  } catch (e) {
    core.log.warn({ err: e, namespace: ns, name }, 'store: could not remove an event; it is retried at the next open');
  }
}

/** Remove every event about an object that is gone. Failures are logged; open() prunes what is left. */
export async function removeEventsOf(core: StoreCore, kind: Kind, ns: string, name: string): Promise<void> {
  if (kind === 'Event') return;
  await core.locks.run(eventsLockKey(kind, ns, name), async () => {
    for (const ev of eventsOf(core, kind, ns, name)) await deleteEventQuietly(core, ev);
  });
}

/** Events about VMs/VMIs that no longer exist (a crash between a delete and its event cleanup, or recorded after the delete). */
export async function pruneOrphanEvents(core: StoreCore): Promise<void> {
  for (const ev of core.snapshot('Event', undefined)) {
    if (!isEventObject(ev)) continue;
    const k = ev.involvedObject.kind;
    if (k !== 'VirtualMachine' && k !== 'VirtualMachineInstance') continue;
    const owner = core.peek(k, ev.involvedObject.namespace, ev.involvedObject.name);
    if (owner === undefined || owner.metadata.uid !== ev.involvedObject.uid) await deleteEventQuietly(core, ev);
  }
}
