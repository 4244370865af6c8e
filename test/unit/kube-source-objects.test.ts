// KubeSource's pure parts: key checks, the Source's shape of API server JSON, request bodies, Event names and order, Event model conversion.
import t from 'tap';
import { eventJson, eventModel } from '../../src/source/kube-client.js';
import {
  checkName,
  checkNamespace,
  checkObjectInput,
  createBody,
  eventName,
  eventOrder,
  normalise,
  resourceOf,
  resourcePath,
  rvCompare,
  updateBody,
} from '../../src/source/kube-objects.js';
import type { EventObject, KubeObject } from '../../src/source/source.js';

const gv = { group: 'vmlet.io', version: 'v1alpha1' };
const kv = { group: 'kubevirt.io', version: 'v1' };

t.test('resources and paths follow the group/version option', async (t) => {
  t.same(resourceOf('VirtualMachineInstance', gv), {
    kind: 'VirtualMachineInstance',
    apiVersion: 'vmlet.io/v1alpha1',
    plural: 'virtualmachineinstances',
    core: false,
  });
  t.same(resourceOf('VirtualMachine', kv).apiVersion, 'kubevirt.io/v1');
  t.same(resourceOf('Event', kv), { kind: 'Event', apiVersion: 'v1', plural: 'events', core: true });
  t.equal(resourcePath(resourceOf('VirtualMachine', gv), gv), '/apis/vmlet.io/v1alpha1/virtualmachines');
  t.equal(resourcePath(resourceOf('VirtualMachine', kv), kv, 'ns1'), '/apis/kubevirt.io/v1/namespaces/ns1/virtualmachines');
  t.equal(resourcePath(resourceOf('Event', gv), gv, 'ns1', 'e.1'), '/api/v1/namespaces/ns1/events/e.1');
});

t.test('names are DNS subdomains, namespaces DNS labels', async (t) => {
  for (const ok of ['a', 'web-1', 'a.b.c', 'x'.repeat(253)]) t.equal(checkName(ok), ok);
  for (const bad of ['', 'A', 'a/b', '..', '../x', '-a', 'a_b', 'x'.repeat(254), 7]) t.throws(() => checkName(bad), { code: 'STORE_INVALID_KEY' }, String(bad));
  t.equal(checkNamespace('ns-1'), 'ns-1');
  for (const bad of ['', 'a.b', 'x'.repeat(64), 'Default']) t.throws(() => checkNamespace(bad), { code: 'STORE_INVALID_KEY' }, bad);
});

t.test("normalise gives the Source's shape", async (t) => {
  const r = resourceOf('VirtualMachine', gv);
  const raw = {
    spec: { runStrategy: 'Always' },
    metadata: {
      name: 'a',
      namespace: 'n',
      uid: 'u',
      resourceVersion: '12',
      generation: 2,
      creationTimestamp: '2026-01-01T00:00:00Z',
      managedFields: [{ manager: 'x' }],
    },
  };
  const o = normalise(raw, r);
  t.same(o, {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachine',
    spec: { runStrategy: 'Always' },
    metadata: { name: 'a', namespace: 'n', uid: 'u', resourceVersion: '12', generation: 2, creationTimestamp: '2026-01-01T00:00:00Z' },
  });
  t.ok('managedFields' in raw.metadata, 'the input is left alone');
  const ev = normalise(
    { metadata: { name: 'e', namespace: 'n', resourceVersion: '3', creationTimestamp: '2026-01-01T00:00:00Z' }, involvedObject: {} },
    resourceOf('Event', gv),
  );
  t.equal(ev.metadata.generation, 1, 'Events have no generation: 1');
  t.equal((ev as EventObject).count, 1, 'count defaults to 1');
  t.throws(() => normalise({ kind: 'Status', status: 'Success' }, r), { code: 'KUBE_API_UNEXPECTED' });
  t.throws(() => normalise({ metadata: { name: 'a' } }, r), { code: 'KUBE_API_UNEXPECTED' });
});

t.test('create and update bodies: system metadata and status stay out; update writes against the given resourceVersion', async (t) => {
  const obj = {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachine',
    metadata: { name: 'x', namespace: 'n', uid: 'mine', resourceVersion: '9', generation: 7, deletionTimestamp: 'then', labels: { a: 'b' } },
    spec: { s: 1 },
    status: { ready: true },
  };
  const body = createBody(obj, obj.metadata);
  t.same(body, { apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachine', metadata: { name: 'x', namespace: 'n', labels: { a: 'b' } }, spec: { s: 1 } });
  const cur = { ...obj, metadata: { ...obj.metadata, uid: 'real', resourceVersion: '10', generation: 1, creationTimestamp: 'c' } } as KubeObject;
  const u = updateBody(obj, obj.metadata, cur, '10');
  t.same(u.metadata, { name: 'x', namespace: 'n', labels: { a: 'b' }, uid: 'real', resourceVersion: '10' });
  t.notOk('status' in u);
  const check = (o: { apiVersion: unknown; kind: unknown; metadata: unknown }): unknown => checkObjectInput(o, (k) => resourceOf(k, gv));
  t.throws(() => check({ ...obj, apiVersion: 'kubevirt.io/v1' }), { code: 'STORE_INVALID_OBJECT' }, "another group than the source's");
  t.throws(() => check({ ...obj, apiVersion: '' }), { code: 'STORE_INVALID_OBJECT' });
  t.throws(() => check({ ...obj, metadata: { ...obj.metadata, labels: { n: 1 } } }), { code: 'STORE_INVALID_OBJECT' });
  t.throws(() => check({ ...obj, kind: 'Pod' }), { code: 'STORE_INVALID_KEY' });
  t.match(check(obj), { ns: 'n', name: 'x' });
});

t.test('Event names are stable per object, type, reason, message and component, and valid names', async (t) => {
  const base = {
    involved: { kind: 'VirtualMachineInstance', namespace: 'n', name: 'web', uid: 'u1' },
    type: 'Warning',
    reason: 'BackOff',
    message: 'm',
    component: 'vmlet',
  };
  const a = eventName(base);
  t.equal(eventName(base), a, 'deterministic');
  t.match(a, /^web\.[0-9a-f]{16}$/);
  t.not(eventName({ ...base, message: 'other' }), a);
  t.not(eventName({ ...base, involved: { ...base.involved, uid: 'u2' } }), a, 'a re-created namesake gets its own Events');
  const long = eventName({ ...base, involved: { ...base.involved, name: `${'x'.repeat(240)}.-y` } });
  t.ok(long.length <= 253);
  t.doesNotThrow(() => checkName(long));
});

t.test('Events sort by lastTimestamp, ties by resourceVersion as a number', async (t) => {
  const ev = (name: string, last: string, rv: string): EventObject =>
    ({ metadata: { name, resourceVersion: rv }, lastTimestamp: last }) as unknown as EventObject;
  const sorted = [ev('c', '2026-01-01T00:00:01Z', '9'), ev('b', '2026-01-01T00:00:00Z', '100'), ev('a', '2026-01-01T00:00:00Z', '99')].sort(eventOrder);
  t.same(
    sorted.map((e) => e.metadata.name),
    ['a', 'b', 'c'],
  );
  t.ok(rvCompare('99', '100') < 0);
  t.equal(rvCompare('7', '7'), 0);
});

t.test('Event JSON and the typed model convert both ways', async (t) => {
  const json = {
    apiVersion: 'v1',
    kind: 'Event',
    metadata: { name: 'e.1', namespace: 'n', resourceVersion: '5' },
    involvedObject: { kind: 'VirtualMachine', namespace: 'n', name: 'a', uid: 'u' },
    type: 'Normal',
    reason: 'Started',
    message: 'VM started',
    count: 2,
    firstTimestamp: '2026-01-01T00:00:00Z',
    lastTimestamp: '2026-01-01T00:00:05Z',
    source: { component: 'vmlet' },
  };
  const model = eventModel(json);
  t.ok(model.firstTimestamp instanceof Date);
  t.same(eventJson(model), json, 'the same JSON back (timestamps in seconds)');
});
