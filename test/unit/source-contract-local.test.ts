// The Source contract (test/support/source-contract.ts) run against LocalStore, each subtest on a fresh store in its own temp dir.
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import t from 'tap';
import { LocalStore } from '../../src/source/local-store.js';
import type { Source } from '../../src/source/source.js';
import { sourceContract } from '../support/source-contract.js';

const HISTORY = 5;
const dirs: string[] = [];
t.teardown(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

// The compiler checks here, too, that LocalStore is a Source.
const open = async (): Promise<Source> => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlet-source-contract-'));
  dirs.push(dir);
  return LocalStore.open({ dir, logger: pino({ level: 'silent' }), watchHistorySize: HISTORY });
};

sourceContract('LocalStore', open, {
  dispose: async (s) => {
    if (s instanceof LocalStore) await s.close();
  },
  watchHistoryLimit: HISTORY,
});

// What the contract leaves to each source: how the local store keeps changes for watches.

t.test('LocalStore: watch history is per kind, starts at open, and refuses malformed resourceVersions', async (t) => {
  const dir = t.testdir({});
  const opts = { dir, logger: pino({ level: 'silent' }), watchHistorySize: 2 };
  const s1 = await LocalStore.open(opts);
  const a = await s1.create({ apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachine', metadata: { name: 'a', namespace: 'default' }, spec: {} });
  const ref = { kind: 'VirtualMachine', namespace: 'default', name: 'a', uid: a.metadata.uid };
  for (let i = 0; i < 5; i++) await s1.recordEvent({ involvedObject: ref, type: 'Normal', reason: `R${i}`, message: 'm' });
  const fromA = s1.watch('VirtualMachine', undefined, undefined, { resourceVersion: a.metadata.resourceVersion });
  const b = await s1.create({ apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachine', metadata: { name: 'b', namespace: 'default' }, spec: {} });
  t.equal((await fromA.next()).value?.object.metadata.resourceVersion, b.metadata.resourceVersion, 'many Events do not push VM changes out');
  fromA.close();
  t.throws(() => s1.watch('VirtualMachine', undefined, undefined, { resourceVersion: 'x1' }), { code: 'STORE_INVALID_OPTION' });
  t.throws(() => s1.watch('VirtualMachine', undefined, undefined, { resourceVersion: '1', sendInitialEvents: true }), { code: 'STORE_INVALID_OPTION' });
  await s1.close();

  const s2 = await LocalStore.open(opts);
  t.teardown(() => s2.close());
  const old = s2.watch('VirtualMachine', undefined, undefined, { resourceVersion: a.metadata.resourceVersion });
  await t.rejects(old.next(), { code: 'STORE_WATCH_OVERFLOW' }, 'changes before a restart are not held');
  const listed = await s2.listWithVersion('VirtualMachine');
  t.equal(listed.resourceVersion, s2.resourceVersion, 'an idle store lists at its newest resourceVersion');
  const w = s2.watch('VirtualMachine', undefined, undefined, { resourceVersion: listed.resourceVersion });
  const gone = await s2.delete('VirtualMachine', 'default', 'b');
  t.same((await w.next()).value, { type: 'DELETED', object: gone });
  w.close();
});
