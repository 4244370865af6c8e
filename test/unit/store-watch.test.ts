import t from 'tap';
import { LocalStore, type StoreWatch, type WatchEvent } from '../../src/source/local-store.js';
import { captureLogger, steppingClock, vm, vmi } from '../support/store-helpers.js';

const open = (dir: string, watchBufferSize?: number): Promise<LocalStore> =>
  LocalStore.open({ dir, logger: captureLogger().logger, now: steppingClock(), ...(watchBufferSize === undefined ? {} : { watchBufferSize }) });

async function take(w: StoreWatch, n: number): Promise<WatchEvent[]> {
  const out: WatchEvent[] = [];
  while (out.length < n) {
    const r = await w.next();
    if (r.done === true) break;
    out.push(r.value);
  }
  return out;
}

const summary = (evs: WatchEvent[]): string[] =>
  evs.map((e) => `${e.type} ${e.object.metadata.namespace}/${e.object.metadata.name} ${e.object.metadata.resourceVersion}`);

t.test('a watch sees ADDED, MODIFIED, DELETED in order, with the matching resourceVersions', async (t) => {
  const s = await open(t.testdir({}));
  t.teardown(() => s.close());
  const w = s.watch('VirtualMachine');
  const a = await s.create(vm('a'));
  const a2 = await s.update({ ...a, spec: { runStrategy: 'Halted' } });
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
  t.ok(Object.isFrozen(evs[0]?.object) && Object.isFrozen(evs[0]?.object.metadata), 'watch objects are frozen');
  w.close();
  t.equal(w.closed, true);
  t.same(await w.next(), { value: undefined, done: true });
});

t.test('parallel writes to different objects reach every watcher in resourceVersion order', async (t) => {
  const s = await open(t.testdir({}));
  t.teardown(() => s.close());
  const w1 = s.watch('VirtualMachine');
  const w2 = s.watch('VirtualMachine');
  const made = await Promise.all(Array.from({ length: 40 }, (_, i) => s.create(vm(`vm${i}`, i % 2 === 0 ? 'even' : 'odd'))));
  const rvs1 = (await take(w1, 40)).map((e) => Number(e.object.metadata.resourceVersion));
  const rvs2 = (await take(w2, 40)).map((e) => Number(e.object.metadata.resourceVersion));
  t.same(
    rvs1,
    [...rvs1].sort((x, y) => x - y),
    'strictly increasing',
  );
  t.same(rvs2, rvs1, 'every watcher sees the same sequence');
  t.same(new Set(rvs1), new Set(made.map((o) => Number(o.metadata.resourceVersion))));
});

t.test('watch filters by kind, namespace and name', async (t) => {
  const s = await open(t.testdir({}));
  t.teardown(() => s.close());
  const byNs = s.watch('VirtualMachine', 'ns1');
  const byName = s.watch('VirtualMachine', 'ns1', 'b');
  const vmis = s.watch('VirtualMachineInstance');
  await s.create(vm('a', 'ns1'));
  await s.create(vm('b', 'ns2'));
  await s.create(vm('b', 'ns1'));
  await s.create(vmi('b', 'ns1'));
  t.same(summary(await take(byNs, 2)), ['ADDED ns1/a 1', 'ADDED ns1/b 3']);
  t.same(summary(await take(byName, 1)), ['ADDED ns1/b 3']);
  t.same(summary(await take(vmis, 1)), ['ADDED ns1/b 4']);
});

t.test('sendInitialEvents gives a consistent snapshot then the changes after it', async (t) => {
  const s = await open(t.testdir({}));
  t.teardown(() => s.close());
  await s.create(vm('a'));
  await s.create(vm('b'));
  const racing = s.create(vm('c')); // under way while the watch starts: seen exactly once, one way or the other
  const w = s.watch('VirtualMachine', undefined, undefined, { sendInitialEvents: true, bufferSize: 2 });
  await racing;
  await s.delete('VirtualMachine', 'default', 'a');
  const evs = summary(await take(w, 4));
  t.same(evs.slice(0, 2), ['ADDED default/a 1', 'ADDED default/b 2'], 'initial objects do not count against the buffer');
  t.same(evs.slice(2), ['ADDED default/c 3', 'DELETED default/a 4']);
});

t.test('a watcher that falls behind is closed with STORE_WATCH_OVERFLOW; others are unaffected', async (t) => {
  const s = await open(t.testdir({}), 5);
  t.teardown(() => s.close());
  const slow = s.watch('VirtualMachine');
  const fast = s.watch('VirtualMachine');
  const seen: string[] = [];
  const consume = (async () => {
    for await (const ev of fast) {
      seen.push(ev.object.metadata.name);
      if (seen.length === 8) break;
    }
  })();
  for (let i = 0; i < 8; i++) await s.create(vm(`vm${i}`));
  await consume;
  t.equal(seen.length, 8);
  t.equal(fast.closed, true, 'breaking out of for-await closes the watch');
  t.equal(slow.closed, true);
  await t.rejects(slow.next(), { code: 'STORE_WATCH_OVERFLOW' });
  t.same(await slow.next(), { value: undefined, done: true }, 'the error is reported once');
  const fresh = s.watch('VirtualMachine', undefined, undefined, { bufferSize: 100 });
  await s.create(vm('later'));
  t.same(summary(await take(fresh, 1)), ['ADDED default/later 9']);
});

t.test('a reader that keeps up never overflows, even with a buffer of one', async (t) => {
  const s = await open(t.testdir({}), 1);
  t.teardown(() => s.close());
  const w = s.watch('VirtualMachine');
  const got: string[] = [];
  const reader = (async () => {
    for await (const ev of w) {
      got.push(ev.object.metadata.name);
      if (got.length === 20) return;
    }
  })();
  for (let i = 0; i < 20; i++) await s.create(vm(`vm${i}`));
  await reader;
  t.equal(got.length, 20);
});

t.test('closing the store ends watches after delivering what was queued', async (t) => {
  const s = await open(t.testdir({}));
  const w = s.watch('VirtualMachine');
  const pending = w.next();
  await s.create(vm('a'));
  await s.create(vm('b'));
  await s.close();
  t.equal((await pending).value?.object.metadata.name, 'a');
  t.same(summary(await take(w, 5)), ['ADDED default/b 2']);
  t.equal(w.closed, true);
});
