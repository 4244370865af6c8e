import t from 'tap';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import fs from 'node:fs';
import { RV_FLOOR_HEADROOM } from '../../src/source/store-core.js';
import { isVmletError } from '../../src/errors.js';
import { LocalStore, type StoredObject } from '../../src/source/local-store.js';
import { captureLogger, steppingClock, vm, vmi } from '../support/store-helpers.js';

const open = (dir: string): Promise<LocalStore> => LocalStore.open({ dir, logger: captureLogger().logger, now: steppingClock() });

const code = (c: string): { code: string } => ({ code: c });

t.test('create assigns system metadata and writes one file per object', async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  t.teardown(() => s.close());
  const a = await s.create(vm('a'));
  t.match(a.metadata, { name: 'a', namespace: 'default', resourceVersion: '1', generation: 1, creationTimestamp: '2026-01-01T00:00:00.000Z' });
  t.match(a.metadata.uid, /^[0-9a-f-]{36}$/);
  const b = await s.create(vmi('a', 'other'));
  t.equal(b.metadata.resourceVersion, '2');
  const onDisk = JSON.parse(await readFile(path.join(dir, 'objects/virtualmachines/default/a.json'), 'utf8')) as StoredObject;
  t.same(onDisk, a);
  t.ok(JSON.parse(await readFile(path.join(dir, 'objects/virtualmachineinstances/other/a.json'), 'utf8')));
  await t.rejects(s.create(vm('a')), code('STORE_ALREADY_EXISTS'));
  t.same(await s.get('VirtualMachine', 'default', 'a'), a);
  t.equal(await s.get('VirtualMachine', 'default', 'nope'), undefined);
  t.equal(await s.get('VirtualMachineInstance', 'default', 'a'), undefined);
});

t.test('create ignores caller-supplied system metadata', async (t) => {
  const s = await open(t.testdir({}));
  t.teardown(() => s.close());
  const fake = {
    ...vm('x'),
    metadata: { name: 'x', namespace: 'default', uid: 'mine', resourceVersion: '999', generation: 7, deletionTimestamp: 'yesterday' },
  };
  const x = await s.create(fake);
  t.not(x.metadata.uid, 'mine');
  t.equal(x.metadata.resourceVersion, '1');
  t.equal(x.metadata.generation, 1);
  t.notOk('deletionTimestamp' in x.metadata);
});

t.test('list is sorted and filters by namespace; results are private copies', async (t) => {
  const s = await open(t.testdir({}));
  t.teardown(() => s.close());
  await s.create(vm('b', 'ns2'));
  await s.create(vm('b', 'ns1'));
  await s.create(vm('a', 'ns2'));
  t.same(
    (await s.list('VirtualMachine')).map((o) => `${o.metadata.namespace}/${o.metadata.name}`),
    ['ns1/b', 'ns2/a', 'ns2/b'],
  );
  t.same(
    (await s.list('VirtualMachine', 'ns2')).map((o) => o.metadata.name),
    ['a', 'b'],
  );
  t.same(await s.list('VirtualMachine', 'empty'), []);
  const got = await s.get('VirtualMachine', 'ns1', 'b');
  if (got === undefined) throw new Error('missing');
  (got.spec as { runStrategy: string }).runStrategy = 'Halted';
  t.same((await s.get('VirtualMachine', 'ns1', 'b'))?.spec, { runStrategy: 'Always' }, 'mutating a result does not touch the store');
});

t.test('update: generation follows spec, status is kept, no-op writes nothing', async (t) => {
  const s = await open(t.testdir({}));
  t.teardown(() => s.close());
  const a = await s.create({ ...vm('a'), status: { printableStatus: 'Stopped' } });
  const labelled = await s.update({ ...a, metadata: { ...a.metadata, labels: { app: 'web' } } });
  t.equal(labelled.metadata.generation, 1, 'metadata change keeps generation');
  t.equal(labelled.metadata.resourceVersion, '2');
  t.same(labelled.metadata.labels, { app: 'web' });
  const halted = await s.update({ ...labelled, spec: { runStrategy: 'Halted' }, status: { printableStatus: 'Bogus' } });
  t.equal(halted.metadata.generation, 2, 'spec change bumps generation');
  t.same(halted.status, { printableStatus: 'Stopped' }, 'update never writes status');
  t.equal(halted.metadata.uid, a.metadata.uid);
  t.equal(halted.metadata.creationTimestamp, a.metadata.creationTimestamp);
  const same = await s.update(halted);
  t.equal(same.metadata.resourceVersion, halted.metadata.resourceVersion, 'no-op update keeps the resourceVersion');
  await t.rejects(s.update({ ...halted, metadata: { ...halted.metadata, name: 'ghost' } }), code('STORE_NOT_FOUND'));
  await t.rejects(s.update({ ...halted, metadata: { ...halted.metadata, uid: 'other' } }), code('STORE_CONFLICT'));
});

t.test('optimistic concurrency: a stale resourceVersion is a conflict', async (t) => {
  const s = await open(t.testdir({}));
  t.teardown(() => s.close());
  const a = await s.create(vm('a'));
  const a2 = await s.update({ ...a, spec: { runStrategy: 'Halted' } }, { expectedResourceVersion: a.metadata.resourceVersion });
  const err = await s.update({ ...a, spec: { runStrategy: 'Manual' } }, { expectedResourceVersion: a.metadata.resourceVersion }).catch((e: unknown) => e);
  t.ok(isVmletError(err, 'STORE_CONFLICT'), 'stale write refused');
  t.same((await s.get('VirtualMachine', 'default', 'a'))?.spec, { runStrategy: 'Halted' });
  await s.update({ ...a2, spec: { runStrategy: 'Manual' } }, { expectedResourceVersion: a2.metadata.resourceVersion });
  // Two racing writers from the same read: exactly one wins.
  const cur = await s.get('VirtualMachine', 'default', 'a');
  if (cur === undefined) throw new Error('missing');
  const results = await Promise.allSettled(
    [1, 2, 3].map((i) => s.update({ ...cur, spec: { n: i } }, { expectedResourceVersion: cur.metadata.resourceVersion })),
  );
  t.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
  t.equal(results.filter((r) => r.status === 'rejected' && isVmletError(r.reason, 'STORE_CONFLICT')).length, 2);
});

t.test('updateStatus serialises concurrent writers and skips no-ops', async (t) => {
  const s = await open(t.testdir({}));
  t.teardown(() => s.close());
  const a = await s.create(vmi('a'));
  await Promise.all(
    Array.from({ length: 25 }, (_, i) =>
      s.updateStatus<{ seen?: number[] }>('VirtualMachineInstance', 'default', 'a', (st) => ({ seen: [...(st?.seen ?? []), i] })),
    ),
  );
  const after = await s.get('VirtualMachineInstance', 'default', 'a');
  t.same(
    (after?.status as { seen: number[] }).seen.slice().sort((x, y) => x - y),
    Array.from({ length: 25 }, (_, i) => i),
    'no update lost',
  );
  t.equal(after?.metadata.generation, 1, 'status writes keep generation');
  t.same(after?.spec, a.spec);
  const again = await s.updateStatus('VirtualMachineInstance', 'default', 'a', (st) => st);
  t.equal(again.metadata.resourceVersion, after?.metadata.resourceVersion, 'unchanged status writes nothing');
  const cleared = await s.updateStatus('VirtualMachineInstance', 'default', 'a', () => undefined);
  t.notOk('status' in cleared);
  await t.rejects(
    s.updateStatus('VirtualMachineInstance', 'default', 'zz', (st) => st),
    code('STORE_NOT_FOUND'),
  );
  await t.rejects(
    s.updateStatus('VirtualMachineInstance', 'default', 'a', () => {
      throw new Error('boom');
    }),
    /boom/,
  );
});

t.test('delete removes the file and returns the last state', async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  t.teardown(() => s.close());
  const a = await s.create(vm('a'));
  await t.rejects(s.delete('VirtualMachine', 'default', 'a', { expectedUid: 'nope' }), code('STORE_CONFLICT'));
  const gone = await s.delete('VirtualMachine', 'default', 'a', { expectedUid: a.metadata.uid });
  t.equal(gone.metadata.uid, a.metadata.uid);
  t.ok(Number(gone.metadata.resourceVersion) > Number(a.metadata.resourceVersion), 'the deletion has its own resourceVersion');
  t.equal(await s.get('VirtualMachine', 'default', 'a'), undefined);
  t.same(await readdir(path.join(dir, 'objects/virtualmachines/default')), []);
  await t.rejects(s.delete('VirtualMachine', 'default', 'a'), code('STORE_NOT_FOUND'));
  const again = await s.create(vm('a'));
  t.not(again.metadata.uid, a.metadata.uid, 'a re-created namesake is a new object');
});

t.test('finalizers hold a deleted object until the last one is removed', async (t) => {
  const s = await open(t.testdir({}));
  t.teardown(() => s.close());
  const a = await s.create({ ...vmi('a'), metadata: { name: 'a', namespace: 'default', finalizers: ['vmlet.io/stop'] } });
  const marked = await s.delete('VirtualMachineInstance', 'default', 'a');
  t.ok(marked.metadata.deletionTimestamp, 'deletionTimestamp set');
  t.equal(marked.metadata.generation, 2);
  t.ok(await s.get('VirtualMachineInstance', 'default', 'a'), 'still there');
  const twice = await s.delete('VirtualMachineInstance', 'default', 'a');
  t.equal(twice.metadata.resourceVersion, marked.metadata.resourceVersion, 'a second delete changes nothing');
  const st = await s.updateStatus('VirtualMachineInstance', 'default', 'a', () => ({ phase: 'Succeeded' }));
  t.equal(st.metadata.deletionTimestamp, marked.metadata.deletionTimestamp, 'status writes keep deletionTimestamp');
  const tryUndelete = await s.update({ ...st, metadata: { ...st.metadata, deletionTimestamp: undefined as unknown as string, labels: { x: 'y' } } });
  t.equal(tryUndelete.metadata.deletionTimestamp, marked.metadata.deletionTimestamp, 'update cannot clear deletionTimestamp');
  const last = await s.update({ ...tryUndelete, metadata: { ...tryUndelete.metadata, finalizers: [] } });
  t.equal(last.metadata.uid, a.metadata.uid);
  t.equal(await s.get('VirtualMachineInstance', 'default', 'a'), undefined, 'removing the last finalizer removes it');
});

t.test('keys that could escape the directory are refused', async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  t.teardown(() => s.close());
  const bad = ['', '..', '.', '../etc', 'a/b', 'a\\b', 'a\0b', '.hidden', 'x'.repeat(254), 'a\nb', 'a..b'];
  for (const name of bad) {
    await t.rejects(s.create(vm(name)), code('STORE_INVALID_KEY'), `name ${JSON.stringify(name)}`);
    await t.rejects(s.create(vm('ok', name)), code('STORE_INVALID_KEY'), `namespace ${JSON.stringify(name)}`);
    await t.rejects(s.get('VirtualMachine', 'default', name), code('STORE_INVALID_KEY'));
    await t.rejects(s.delete('VirtualMachine', name, 'x'), code('STORE_INVALID_KEY'));
    t.throws(() => s.watch('VirtualMachine', name), code('STORE_INVALID_KEY'));
  }
  await t.rejects(s.create({ ...vm('a'), kind: 'Secret' }), code('STORE_INVALID_KEY'));
  await t.rejects(s.get('Pod' as 'VirtualMachine', 'default', 'a'), code('STORE_INVALID_KEY'));
  await t.rejects(s.create({ ...vm('a'), metadata: { name: 'a', namespace: 5 as unknown as string } }), code('STORE_INVALID_KEY'));
  await t.rejects(s.create(vm('x'.repeat(251))), code('STORE_INVALID_KEY'), 'a name must leave room for ".json" in 255 bytes');
  t.ok(await s.create(vm('x'.repeat(250))), 'a 250-byte name fits');
  t.same((await readdir(path.join(dir, 'objects/virtualmachines'))).sort(), ['default']);
});

t.test('malformed objects are refused before anything is written', async (t) => {
  const s = await open(t.testdir({}));
  t.teardown(() => s.close());
  await t.rejects(s.create({ ...vm('a'), metadata: { name: 'a', namespace: 'default', labels: { a: 1 as unknown as string } } }), code('STORE_INVALID_OBJECT'));
  await t.rejects(s.create({ ...vm('a'), apiVersion: '' }), code('STORE_INVALID_OBJECT'));
  const cyclic: Record<string, unknown> = {};
  cyclic['self'] = cyclic;
  await t.rejects(s.create(vm('a', 'default', cyclic)), code('STORE_INVALID_OBJECT'));
  await t.rejects(s.create(vm('a', 'default', { blob: 'x'.repeat(1024 * 1024) })), code('STORE_INVALID_OBJECT'));
  t.same(await s.list('VirtualMachine'), []);
  const ok = await s.create(vm('a'));
  t.equal(ok.metadata.generation, 1, 'the store still works');
});

t.test('resourceVersion stays monotonic across reopen, even after deleting the newest object', async (t) => {
  const dir = t.testdir({});
  const s1 = await open(dir);
  await s1.create(vm('a'));
  await s1.create(vm('b'));
  const gone = await s1.delete('VirtualMachine', 'default', 'b');
  await s1.close();
  const s2 = await open(dir);
  t.teardown(() => s2.close());
  // The floor was persisted with headroom, so the next deletes need no write of their own.
  t.equal(Number(s2.resourceVersion), Number(gone.metadata.resourceVersion) + RV_FLOOR_HEADROOM, 'starts at the floor: above every rv used');
  const c = await s2.create(vm('c'));
  t.ok(Number(c.metadata.resourceVersion) > Number(gone.metadata.resourceVersion));
  t.equal((await s2.list('VirtualMachine')).length, 2);
});

t.test('deletes write the resourceVersion floor only when they pass it', async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  t.teardown(() => s.close());
  const floorFile = path.join(dir, 'objects', 'resource-version.json');
  await s.create(vm('a'));
  await s.create(vm('b'));
  await s.delete('VirtualMachine', 'default', 'a');
  const first = fs.statSync(floorFile).mtimeMs;
  const floor = Number(JSON.parse(fs.readFileSync(floorFile, 'utf8')).resourceVersion);
  t.ok(floor >= Number(s.resourceVersion) + RV_FLOOR_HEADROOM - 1, 'the floor is ahead of the newest rv');
  await new Promise((r) => setTimeout(r, 20));
  await s.delete('VirtualMachine', 'default', 'b');
  t.equal(fs.statSync(floorFile).mtimeMs, first, 'the second delete did not rewrite the floor');
});

t.test('a closed store refuses writes and waits for writes under way', async (t) => {
  const s = await open(t.testdir({}));
  const pending = s.create(vm('a'));
  await s.close();
  t.ok(await pending, 'write under way completed');
  await t.rejects(s.create(vm('b')), code('STORE_CLOSED'));
  t.throws(() => s.watch('VirtualMachine'), code('STORE_CLOSED'));
  await s.close();
});

t.test('different objects are written in parallel, one object strictly in order', async (t) => {
  const s = await open(t.testdir({}));
  t.teardown(() => s.close());
  await Promise.all(Array.from({ length: 20 }, (_, i) => s.create(vm(`vm${i}`))));
  t.equal((await s.list('VirtualMachine')).length, 20);
  const a = await s.get('VirtualMachine', 'default', 'vm0');
  if (a === undefined) throw new Error('missing');
  const writes = Array.from({ length: 10 }, (_, i) => s.update({ ...a, spec: { n: i } }));
  const done = await Promise.all(writes);
  const rvs = done.map((o) => Number(o.metadata.resourceVersion));
  t.same(
    rvs,
    [...rvs].sort((x, y) => x - y),
    'each write to one object gets a higher resourceVersion, in call order',
  );
  t.same((await s.get('VirtualMachine', 'default', 'vm0'))?.spec, { n: 9 }, 'the last call wins');
});
