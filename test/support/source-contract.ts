// The Source contract as one test suite: every implementation of src/source/source.ts (the local store, later the Kubernetes-backed source) runs it and must pass.

import t from 'tap';
import { isVmletError } from '../../src/errors.js';
import type { Kind, KubeObject, NewObject, Source, SourceWatch, WatchEvent } from '../../src/source/source.js';

/** A tap subtest (the callback parameter of `t.test`). */
type Test = Parameters<Parameters<typeof t.test>[0]>[0];

export interface SourceContractOptions {
  /** Ends a source after its subtest (the interface has no close: it belongs to whoever made the source). */
  dispose?: (source: Source) => Promise<void>;
  /**
   * How many changes of one kind are certain to push an old resourceVersion out of what the source keeps for
   * watches (the local store: its `watchHistorySize`). Without it the "too old" subtest is skipped.
   */
  watchHistoryLimit?: number;
  /**
   * A resourceVersion the source is certain to have forgotten, for the "too old" subtest instead of pushing one out
   * with `watchHistoryLimit` writes (Kubernetes: "1"; its watch cache holds a time window, not a count).
   */
  staleResourceVersion?: string;
  /**
   * The sample VirtualMachine spec (`variant` undefined) and distinct variants of it (a number or a word such as
   * 'Halted'), as the source stores them. Default: `{runStrategy: 'Always', template: {spec: {}}}` and `{n: variant}`
   * (`runStrategy: 'Halted'` for 'Halted'). A source that validates against the CRD schema and fills in its defaults
   * (Kubernetes) passes specs that the schema accepts and that are already defaulted.
   */
  vmSpec?: (variant?: number | string) => unknown;
  /** The sample VirtualMachineInstance spec, as the source stores it. Default `{domain: {}}`. */
  vmiSpec?: unknown;
}

function defaultVmSpec(variant?: number | string): unknown {
  if (variant === undefined) return { runStrategy: 'Always', template: { spec: {} } };
  if (variant === 'Halted') return { runStrategy: 'Halted', template: { spec: {} } };
  return { n: variant };
}

const API_VERSION = 'vmlet.io/v1alpha1';

// The sample specs of the running contract (sourceContract sets them from its options before registering subtests).
let spec: (variant?: number | string) => unknown = defaultVmSpec;
let vmiSpec: unknown = { domain: {} };

function vm(name: string, namespace = 'default', s: unknown = spec()): NewObject<'VirtualMachine'> {
  return { apiVersion: API_VERSION, kind: 'VirtualMachine', metadata: { name, namespace }, spec: s };
}

function vmi(name: string, namespace = 'default', extra: Partial<NewObject<'VirtualMachineInstance'>['metadata']> = {}): NewObject<'VirtualMachineInstance'> {
  return { apiVersion: API_VERSION, kind: 'VirtualMachineInstance', metadata: { name, namespace, ...extra }, spec: structuredClone(vmiSpec) };
}

const code = (c: string): { code: string } => ({ code: c });
const rv = (o: KubeObject): number => Number(o.metadata.resourceVersion);
const line = (e: WatchEvent): string => `${e.type} ${e.object.metadata.namespace}/${e.object.metadata.name} ${e.object.metadata.resourceVersion}`;

/** The next `n` events, failing the test instead of hanging when they do not come within `ms`. */
async function take<K extends Kind>(w: SourceWatch<K>, n: number, ms = 5000): Promise<Array<WatchEvent<K>>> {
  const out: Array<WatchEvent<K>> = [];
  const deadline = Date.now() + ms;
  while (out.length < n) {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), Math.max(0, deadline - Date.now()));
    });
    const r = await Promise.race([w.next(), timeout]).finally(() => clearTimeout(timer));
    if (r === 'timeout') throw new Error(`watch delivered ${out.length} of ${n} events in ${ms} ms: ${out.map(line).join(', ')}`);
    if (r.done === true) break;
    out.push(r.value);
  }
  return out;
}

/** Registers the contract's subtests on tap's root test; `factory` makes a fresh, empty source for each. */
export function sourceContract(name: string, factory: () => Promise<Source>, opts: SourceContractOptions = {}): void {
  const dispose = opts.dispose ?? ((): Promise<void> => Promise.resolve());
  const specOf = opts.vmSpec ?? defaultVmSpec;
  const vmiSpecOf = opts.vmiSpec ?? { domain: {} };
  const it = (what: string, fn: (t: Test, s: Source) => Promise<void>, skip?: string): void => {
    t.test(`${name}: ${what}`, skip === undefined ? {} : { skip }, async (t) => {
      spec = specOf;
      vmiSpec = vmiSpecOf;
      const s = await factory();
      t.teardown(() => dispose(s));
      await fn(t, s);
    });
  };

  it('create assigns system metadata; get returns it; a taken name is STORE_ALREADY_EXISTS', async (t, s) => {
    const a = await s.create(vm('a'));
    t.match(a, { apiVersion: API_VERSION, kind: 'VirtualMachine', metadata: { name: 'a', namespace: 'default', generation: 1 } });
    t.type(a.metadata.uid, 'string');
    t.ok(a.metadata.uid.length > 0, 'uid assigned');
    t.match(a.metadata.resourceVersion, /^[0-9]+$/);
    t.ok(Number.isFinite(Date.parse(a.metadata.creationTimestamp)), 'creationTimestamp is a timestamp');
    t.notOk('deletionTimestamp' in a.metadata);
    t.same(await s.get('VirtualMachine', 'default', 'a'), a);
    t.equal(await s.get('VirtualMachine', 'default', 'absent'), undefined);
    t.equal(await s.get('VirtualMachineInstance', 'default', 'a'), undefined, 'kinds are separate');
    t.equal(await s.get('VirtualMachine', 'other', 'a'), undefined, 'namespaces are separate');
    await t.rejects(s.create(vm('a')), code('STORE_ALREADY_EXISTS'));
    const sameNameOtherKind = await s.create(vmi('a'));
    t.not(sameNameOtherKind.metadata.uid, a.metadata.uid);
  });

  it('create ignores caller-supplied system metadata', async (t, s) => {
    const fake = {
      ...vm('x'),
      metadata: { name: 'x', namespace: 'default', uid: 'mine', resourceVersion: '999999', generation: 7, deletionTimestamp: '2020-01-01T00:00:00Z' },
    };
    const x = await s.create(fake);
    t.not(x.metadata.uid, 'mine');
    t.not(x.metadata.resourceVersion, '999999');
    t.equal(x.metadata.generation, 1);
    t.notOk('deletionTimestamp' in x.metadata);
  });

  it('list is sorted by namespace then name, filters by namespace, and hands out private copies', async (t, s) => {
    await s.create(vm('b', 'ns2'));
    await s.create(vm('b', 'ns1'));
    await s.create(vm('a', 'ns2'));
    await s.create(vmi('z', 'ns1'));
    t.same(
      (await s.list('VirtualMachine')).map((o) => `${o.metadata.namespace}/${o.metadata.name}`),
      ['ns1/b', 'ns2/a', 'ns2/b'],
    );
    t.same(
      (await s.list('VirtualMachine', 'ns2')).map((o) => o.metadata.name),
      ['a', 'b'],
    );
    t.same(await s.list('VirtualMachine', 'empty'), []);
    t.same(
      (await s.list('VirtualMachineInstance')).map((o) => o.metadata.name),
      ['z'],
    );
    const got = await s.get('VirtualMachine', 'ns1', 'b');
    if (got === undefined) throw new Error('missing');
    got.spec = { changed: true };
    got.metadata.labels = { mutated: 'yes' };
    const again = await s.get('VirtualMachine', 'ns1', 'b');
    t.same(again?.spec, vm('b').spec, 'changing a result does not change the source');
    t.notOk(again?.metadata.labels, 'nor its metadata');
    const listed = await s.list('VirtualMachine', 'ns1');
    if (listed[0] !== undefined) listed[0].spec = { changed: true };
    t.same((await s.list('VirtualMachine', 'ns1'))[0]?.spec, vm('b').spec);
  });

  it('every write gets a higher resourceVersion', async (t, s) => {
    const a = await s.create(vm('a'));
    const b = await s.create(vm('b'));
    const a2 = await s.update({ ...a, spec: spec('Halted') });
    const a3 = await s.updateStatus('VirtualMachine', 'default', 'a', () => ({ ready: true }));
    const gone = await s.delete('VirtualMachine', 'default', 'b');
    const seq = [a, b, a2, a3, gone].map(rv);
    t.same(
      seq,
      [...seq].sort((x, y) => x - y),
      'increasing',
    );
    t.equal(new Set(seq).size, seq.length, 'never repeated');
  });

  it('update replaces spec and labels, bumps generation only for spec, never writes status', async (t, s) => {
    const a = await s.create({ ...vm('a'), status: { printableStatus: 'Stopped' } });
    t.same(a.status, { printableStatus: 'Stopped' }, 'create takes the initial status');
    const labelled = await s.update({ ...a, metadata: { ...a.metadata, labels: { app: 'web' } } });
    t.equal(labelled.metadata.generation, 1, 'a metadata change keeps generation');
    t.ok(rv(labelled) > rv(a));
    t.same(labelled.metadata.labels, { app: 'web' });
    const halted = await s.update({ ...labelled, spec: spec('Halted'), status: { printableStatus: 'Bogus' } });
    t.equal(halted.metadata.generation, 2, 'a spec change bumps generation');
    t.same(halted.status, { printableStatus: 'Stopped' }, 'status is kept as stored');
    t.equal(halted.metadata.uid, a.metadata.uid);
    t.equal(halted.metadata.creationTimestamp, a.metadata.creationTimestamp);
    t.same(await s.get('VirtualMachine', 'default', 'a'), halted);
    const same = await s.update(halted);
    t.equal(same.metadata.resourceVersion, halted.metadata.resourceVersion, 'an update that changes nothing writes nothing');
    await t.rejects(s.update({ ...halted, metadata: { ...halted.metadata, name: 'ghost' } }), code('STORE_NOT_FOUND'));
  });

  it('a stale resourceVersion or another uid is STORE_CONFLICT and changes nothing', async (t, s) => {
    const a = await s.create(vm('a'));
    const a2 = await s.update({ ...a, spec: spec(1) }, { expectedResourceVersion: a.metadata.resourceVersion });
    await t.rejects(s.update({ ...a, spec: spec(2) }, { expectedResourceVersion: a.metadata.resourceVersion }), code('STORE_CONFLICT'));
    await t.rejects(s.update({ ...a2, metadata: { ...a2.metadata, uid: 'someone-else' } }), code('STORE_CONFLICT'));
    await t.rejects(s.delete('VirtualMachine', 'default', 'a', { expectedResourceVersion: a.metadata.resourceVersion }), code('STORE_CONFLICT'));
    await t.rejects(s.delete('VirtualMachine', 'default', 'a', { expectedUid: 'someone-else' }), code('STORE_CONFLICT'));
    t.same(await s.get('VirtualMachine', 'default', 'a'), a2, 'the object is as the last successful write left it');
    const cur = await s.get('VirtualMachine', 'default', 'a');
    if (cur === undefined) throw new Error('missing');
    const results = await Promise.allSettled(
      [1, 2, 3].map((n) => s.update({ ...cur, spec: spec(10 + n) }, { expectedResourceVersion: cur.metadata.resourceVersion })),
    );
    t.equal(results.filter((r) => r.status === 'fulfilled').length, 1, 'of racing writers from one read exactly one wins');
    t.equal(results.filter((r) => r.status === 'rejected' && isVmletError(r.reason, 'STORE_CONFLICT')).length, 2);
    const gone = await s.delete('VirtualMachine', 'default', 'a', { expectedUid: a.metadata.uid });
    t.equal(gone.metadata.uid, a.metadata.uid, 'a matching uid deletes');
  });

  it('updateStatus changes status only, serialises writers and skips no-ops', async (t, s) => {
    const a = await s.create(vmi('a'));
    const st = await s.updateStatus<{ phase?: string }>('VirtualMachineInstance', 'default', 'a', (cur) => ({ ...cur, phase: 'Scheduled' }));
    t.same(st.status, { phase: 'Scheduled' });
    t.same(st.spec, a.spec, 'spec untouched');
    t.equal(st.metadata.generation, a.metadata.generation, 'generation untouched');
    t.ok(rv(st) > rv(a));
    await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        s.updateStatus<{ seen?: number[] }>('VirtualMachineInstance', 'default', 'a', (cur) => ({ ...cur, seen: [...(cur?.seen ?? []), i] })),
      ),
    );
    const after = await s.get('VirtualMachineInstance', 'default', 'a');
    const seen = (after?.status as { seen?: number[] } | undefined)?.seen ?? [];
    t.same(
      [...seen].sort((x, y) => x - y),
      Array.from({ length: 10 }, (_, i) => i),
      'no status write lost',
    );
    const again = await s.updateStatus('VirtualMachineInstance', 'default', 'a', (cur) => cur);
    t.equal(again.metadata.resourceVersion, after?.metadata.resourceVersion, 'an unchanged status writes nothing');
    await t.rejects(
      s.updateStatus('VirtualMachineInstance', 'default', 'a', () => {
        throw new Error('boom');
      }),
      /boom/,
    );
    t.same(await s.get('VirtualMachineInstance', 'default', 'a'), after, 'a throwing mutate writes nothing');
    await t.rejects(
      s.updateStatus('VirtualMachineInstance', 'default', 'absent', (cur) => cur),
      code('STORE_NOT_FOUND'),
    );
  });

  it('updateStatus with `after` shows the change only once it resolves, and writes nothing when it rejects', async (t, s) => {
    const a = await s.create(vmi('a'));
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    let done = false;
    const gated = s.updateStatus<{ phase?: string }>('VirtualMachineInstance', 'default', 'a', (cur) => ({ ...cur, phase: 'Running' }), { after: gate });
    void gated.finally(() => (done = true)).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
    t.notOk(done, 'the write waits');
    t.equal((await s.get('VirtualMachineInstance', 'default', 'a'))?.metadata.resourceVersion, a.metadata.resourceVersion, 'nothing shows meanwhile');
    open();
    t.same((await gated).status, { phase: 'Running' });
    const refused = Promise.reject(new Error('the VMI did not move'));
    await t.rejects(
      s.updateStatus<{ phase?: string }>('VirtualMachineInstance', 'default', 'a', (cur) => ({ ...cur, phase: 'Failed' }), { after: refused }),
      /did not move/,
    );
    t.same((await s.get('VirtualMachineInstance', 'default', 'a'))?.status, { phase: 'Running' }, 'a refused change is not written');
  });

  it('delete without finalizers removes the object and returns its last state', async (t, s) => {
    const a = await s.create(vm('a'));
    const gone = await s.delete('VirtualMachine', 'default', 'a');
    t.equal(gone.metadata.uid, a.metadata.uid);
    t.same(gone.spec, a.spec);
    t.ok(rv(gone) > rv(a), 'the deletion has its own resourceVersion');
    t.equal(await s.get('VirtualMachine', 'default', 'a'), undefined);
    t.same(await s.list('VirtualMachine'), []);
    await t.rejects(s.delete('VirtualMachine', 'default', 'a'), code('STORE_NOT_FOUND'));
    const again = await s.create(vm('a'));
    t.not(again.metadata.uid, a.metadata.uid, 'a re-created namesake is a new object');
  });

  it('delete with finalizers marks the object; removing the last finalizer removes it', async (t, s) => {
    const a = await s.create(vmi('a', 'default', { finalizers: ['example.com/hold'] }));
    const w = s.watch('VirtualMachineInstance', 'default', 'a');
    const marked = await s.delete('VirtualMachineInstance', 'default', 'a');
    t.type(marked.metadata.deletionTimestamp, 'string', 'deletionTimestamp set');
    t.ok(await s.get('VirtualMachineInstance', 'default', 'a'), 'still there');
    const twice = await s.delete('VirtualMachineInstance', 'default', 'a');
    t.equal(twice.metadata.resourceVersion, marked.metadata.resourceVersion, 'a second delete changes nothing');
    const st = await s.updateStatus('VirtualMachineInstance', 'default', 'a', () => ({ phase: 'Succeeded' }));
    t.equal(st.metadata.deletionTimestamp, marked.metadata.deletionTimestamp, 'status writes keep deletionTimestamp');
    const { deletionTimestamp: _dropped, ...metaWithout } = st.metadata;
    const tryUndelete = await s.update({ ...st, metadata: { ...metaWithout, labels: { x: 'y' } } });
    t.equal(tryUndelete.metadata.deletionTimestamp, marked.metadata.deletionTimestamp, 'update cannot clear deletionTimestamp');
    const last = await s.update({ ...tryUndelete, metadata: { ...tryUndelete.metadata, finalizers: [] } });
    t.equal(last.metadata.uid, a.metadata.uid);
    t.equal(await s.get('VirtualMachineInstance', 'default', 'a'), undefined, 'gone with its last finalizer');
    const evs = await take(w, 4);
    t.same(
      evs.map((e) => e.type),
      ['MODIFIED', 'MODIFIED', 'MODIFIED', 'DELETED'],
    );
    w.close();
  });

  it('watch sees ADDED, MODIFIED, DELETED in order with the resourceVersions of the writes', async (t, s) => {
    const w = s.watch('VirtualMachine');
    const a = await s.create(vm('a'));
    const a2 = await s.update({ ...a, spec: spec(1) });
    const a3 = await s.updateStatus('VirtualMachine', 'default', 'a', () => ({ ready: false }));
    const gone = await s.delete('VirtualMachine', 'default', 'a');
    const evs = await take(w, 4);
    t.same(
      evs.map((e) => e.type),
      ['ADDED', 'MODIFIED', 'MODIFIED', 'DELETED'],
    );
    t.same(
      evs.map((e) => e.object.metadata.resourceVersion),
      [a, a2, a3, gone].map((o) => o.metadata.resourceVersion),
    );
    t.same(evs[2]?.object.status, { ready: false });
    t.ok(evs.every((e) => e.object.kind === 'VirtualMachine'));
    w.close();
    t.equal(w.closed, true);
    t.same(await w.next(), { value: undefined, done: true }, 'a closed watch ends');
  });

  it('watch filters by kind, namespace and name; parallel writes arrive in resourceVersion order', async (t, s) => {
    const all = s.watch('VirtualMachine');
    const byNs = s.watch('VirtualMachine', 'ns1');
    const byName = s.watch('VirtualMachine', 'ns1', 'b');
    const vmis = s.watch('VirtualMachineInstance');
    const a = await s.create(vm('a', 'ns1'));
    await s.create(vm('b', 'ns2'));
    const b = await s.create(vm('b', 'ns1'));
    const i = await s.create(vmi('b', 'ns1'));
    t.same((await take(byNs, 2)).map(line), [`ADDED ns1/a ${a.metadata.resourceVersion}`, `ADDED ns1/b ${b.metadata.resourceVersion}`]);
    t.same((await take(byName, 1)).map(line), [`ADDED ns1/b ${b.metadata.resourceVersion}`]);
    t.same((await take(vmis, 1)).map(line), [`ADDED ns1/b ${i.metadata.resourceVersion}`]);
    t.equal((await take(all, 3)).length, 3);
    const made = await Promise.all(Array.from({ length: 12 }, (_, n) => s.create(vm(`p${n}`, n % 2 === 0 ? 'even' : 'odd'))));
    const rvs = (await take(all, 12)).map((e) => rv(e.object));
    t.same(
      rvs,
      [...rvs].sort((x, y) => x - y),
      'in resourceVersion order',
    );
    t.same(new Set(rvs), new Set(made.map(rv)), 'each write once');
    for (const w of [all, byNs, byName, vmis]) w.close();
  });

  it('sendInitialEvents starts with the objects there, then the changes', async (t, s) => {
    const a = await s.create(vm('a'));
    const b = await s.create(vm('b'));
    const w = s.watch('VirtualMachine', undefined, undefined, { sendInitialEvents: true });
    const gone = await s.delete('VirtualMachine', 'default', 'a');
    t.same((await take(w, 3)).map(line), [
      `ADDED default/a ${a.metadata.resourceVersion}`,
      `ADDED default/b ${b.metadata.resourceVersion}`,
      `DELETED default/a ${gone.metadata.resourceVersion}`,
    ]);
    w.close();
  });

  it('listWithVersion gives a resourceVersion; a watch from it sees every later change, once, and nothing earlier', async (t, s) => {
    await s.create(vm('a'));
    const racing = s.create(vm('r')); // under way while listing: seen exactly once, in the list or in the watch
    const listed = await s.listWithVersion('VirtualMachine');
    t.match(listed.resourceVersion, /^[0-9]+$/);
    const w = s.watch('VirtualMachine', undefined, undefined, { resourceVersion: listed.resourceVersion });
    const r = await racing;
    const b = await s.create(vm('b'));
    const gone = await s.delete('VirtualMachine', 'default', 'a');
    const inList = listed.items.some((o) => o.metadata.name === 'r');
    const expected = [
      ...(inList ? [] : [`ADDED default/r ${r.metadata.resourceVersion}`]),
      `ADDED default/b ${b.metadata.resourceVersion}`,
      `DELETED default/a ${gone.metadata.resourceVersion}`,
    ];
    t.same((await take(w, expected.length)).map(line), expected);
    t.ok(listed.items.some((o) => o.metadata.name === 'a'));
    t.ok(
      listed.items.every((o) => rv(o) <= Number(listed.resourceVersion)),
      'nothing listed is newer than the list',
    );
    w.close();
    const all = await s.listWithVersion('VirtualMachine');
    t.same(
      all.items.map((o) => o.metadata.name),
      ['b', 'r'],
    );
    t.same(all.items, await s.list('VirtualMachine'), 'the same items as list');
  });

  it('a watch from an earlier resourceVersion replays the changes after it, in order, then follows', async (t, s) => {
    const a = await s.create(vm('a'));
    const a2 = await s.update({ ...a, spec: spec(1) });
    const i = await s.create(vmi('i'));
    const b = await s.create(vm('b', 'other'));
    const gone = await s.delete('VirtualMachine', 'default', 'a');
    const w = s.watch('VirtualMachine', undefined, undefined, { resourceVersion: a.metadata.resourceVersion });
    const onlyOther = s.watch('VirtualMachine', 'other', undefined, { resourceVersion: a.metadata.resourceVersion });
    const c = await s.create(vm('c'));
    t.same(
      (await take(w, 4)).map(line),
      [
        `MODIFIED default/a ${a2.metadata.resourceVersion}`,
        `ADDED other/b ${b.metadata.resourceVersion}`,
        `DELETED default/a ${gone.metadata.resourceVersion}`,
        `ADDED default/c ${c.metadata.resourceVersion}`,
      ],
      'not the change at the resourceVersion itself, not other kinds',
    );
    t.same((await take(onlyOther, 1)).map(line), [`ADDED other/b ${b.metadata.resourceVersion}`], 'filters apply to the replay');
    t.ok(rv(i) > rv(a));
    w.close();
    onlyOther.close();
  });

  it(
    'a watch from a resourceVersion that is too old fails with STORE_WATCH_OVERFLOW (410 Gone)',
    async (t, s) => {
      const limit = opts.staleResourceVersion === undefined ? (opts.watchHistoryLimit ?? 0) : -1;
      const first = await s.create(vm('a'));
      let cur = first;
      for (let n = 0; n <= limit; n++) cur = await s.update({ ...cur, spec: spec(n) });
      const w = s.watch('VirtualMachine', undefined, undefined, { resourceVersion: opts.staleResourceVersion ?? first.metadata.resourceVersion });
      await t.rejects(w.next(), code('STORE_WATCH_OVERFLOW'));
      t.equal(w.closed, true);
      const listed = await s.listWithVersion('VirtualMachine');
      const fresh = s.watch('VirtualMachine', undefined, undefined, { resourceVersion: listed.resourceVersion });
      const later = await s.update({ ...cur, spec: spec('later') });
      t.same((await take(fresh, 1)).map(line), [`MODIFIED default/a ${later.metadata.resourceVersion}`], 'list again and watch from there');
      fresh.close();
    },
    opts.watchHistoryLimit === undefined && opts.staleResourceVersion === undefined
      ? 'this source does not say how many changes it keeps for watches'
      : undefined,
  );

  it('keys and objects it cannot take are refused with stable codes', async (t, s) => {
    for (const bad of ['', 'a/b', '..', '../x']) {
      await t.rejects(s.create(vm(bad)), code('STORE_INVALID_KEY'), `name ${JSON.stringify(bad)}`);
      await t.rejects(s.get('VirtualMachine', bad, 'x'), code('STORE_INVALID_KEY'), `namespace ${JSON.stringify(bad)}`);
    }
    await t.rejects(s.get('Pod' as Kind, 'default', 'a'), code('STORE_INVALID_KEY'), 'an unknown kind');
    const badLabels: unknown = { n: 1 };
    await t.rejects(
      s.create({ ...vm('a'), metadata: { name: 'a', namespace: 'default', labels: badLabels as Record<string, string> } }),
      code('STORE_INVALID_OBJECT'),
    );
    await t.rejects(s.create({ ...vm('a'), apiVersion: '' }), code('STORE_INVALID_OBJECT'));
    await t.rejects(s.delete('VirtualMachine', 'default', 'absent'), code('STORE_NOT_FOUND'));
    t.same(await s.list('VirtualMachine'), [], 'nothing was written');
  });

  it('recordEvent stores Events, aggregates repeats, and listEvents finds them by object', async (t, s) => {
    const a = await s.create(vmi('web'));
    const ref = { kind: a.kind, namespace: a.metadata.namespace, name: a.metadata.name, uid: a.metadata.uid };
    const first = await s.recordEvent({ involvedObject: ref, type: 'Warning', reason: 'BackOff', message: 'restarting' });
    t.match(first, {
      apiVersion: 'v1',
      kind: 'Event',
      metadata: { namespace: 'default' },
      involvedObject: ref,
      type: 'Warning',
      reason: 'BackOff',
      message: 'restarting',
      count: 1,
    });
    const again = await s.recordEvent({ involvedObject: ref, type: 'Warning', reason: 'BackOff', message: 'restarting' });
    t.equal(again.metadata.name, first.metadata.name, 'a repeat is the same Event');
    t.equal(again.count, 2);
    const other = await s.recordEvent({ involvedObject: ref, type: 'Normal', reason: 'Started', message: 'VM started' });
    t.not(other.metadata.name, first.metadata.name);
    await s.recordEvent({ involvedObject: { ...ref, name: 'db' }, type: 'Normal', reason: 'Started', message: 'x' });
    t.same(
      (await s.listEvents('default', 'web')).map((e) => e.reason),
      ['BackOff', 'Started'],
      'oldest first, only this object',
    );
    t.equal((await s.listEvents('default')).length, 3);
    t.same(await s.listEvents('elsewhere'), []);
    t.same(await s.get('Event', 'default', first.metadata.name), again, 'Events are objects of kind Event');
  });
}
