// Status writes with a gate (`after`): the file is written and synced at once and put in place when the gate opens; a shut gate writes nothing; a staged write never holds back another object's change.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { LocalStore, type StoreWatch, type WatchEvent } from '../../src/source/local-store.js';
import { captureLogger, steppingClock, vmi } from '../support/store-helpers.js';

type Phase = { phase?: string };

const open = (dir: string): Promise<LocalStore> => LocalStore.open({ dir, logger: captureLogger().logger, now: steppingClock() });
const vmiDir = (root: string): string => path.join(root, 'objects', 'virtualmachineinstances', 'default');
const temps = (root: string): string[] => fs.readdirSync(vmiDir(root)).filter((f) => f.startsWith('.tmp-'));
const onDisk = (root: string, name: string): { status?: Phase; metadata: { resourceVersion: string } } =>
  JSON.parse(fs.readFileSync(path.join(vmiDir(root), `${name}.json`), 'utf8')) as { status?: Phase; metadata: { resourceVersion: string } };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A gate, and a pause long enough that the store sees the next change as a lone one (not part of a burst), so it stages. */
async function shutGate(): Promise<{ gate: Promise<void>; open: () => void; shut: (e: Error) => void }> {
  await sleep(30);
  let open!: () => void;
  let shut!: (e: Error) => void;
  const gate = new Promise<void>((res, rej) => {
    open = res;
    shut = rej;
  });
  return { gate, open, shut };
}

async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await sleep(5);
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

/** Every event of `w`, as it comes; `drain` hands over what came so far (after a short wait for any in flight). */
function collect(w: StoreWatch): { drain: () => Promise<WatchEvent[]> } {
  const seen: WatchEvent[] = [];
  void (async () => {
    for (;;) {
      const r = await w.next();
      if (r.done === true) return;
      seen.push(r.value);
    }
  })();
  return {
    drain: async () => {
      await sleep(30);
      return seen.splice(0);
    },
  };
}

const setPhase = (phase: string) => (s: Phase | undefined) => ({ ...s, phase });

t.test('the change is staged on disk at once and shows only once its gate opens', async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  t.teardown(() => s.close());
  const a = await s.create(vmi('a'));
  const w = s.watch('VirtualMachineInstance');
  const c = collect(w);
  const g = await shutGate();
  let done = false;
  const write = s.updateStatus<Phase>('VirtualMachineInstance', 'default', 'a', setPhase('Running'), { after: g.gate }).finally(() => (done = true));
  await until('the staged temp file', () => temps(dir).length === 1);
  t.match(
    JSON.parse(fs.readFileSync(path.join(vmiDir(dir), temps(dir)[0]!), 'utf8')),
    { status: { phase: 'Running' } },
    'the new content waits beside the file',
  );
  await sleep(20);
  t.notOk(done, 'the write waits for its gate');
  t.equal((await s.get('VirtualMachineInstance', 'default', 'a'))?.status, undefined, 'get still sees the old object');
  t.equal(onDisk(dir, 'a').status, undefined, 'and so does the file');
  t.same(await c.drain(), [], 'watchers saw nothing');
  g.open();
  const written = await write;
  t.same(written.status, { phase: 'Running' });
  t.ok(Number(written.metadata.resourceVersion) > Number(a.metadata.resourceVersion));
  t.same(
    onDisk(dir, 'a'),
    { ...onDisk(dir, 'a'), status: { phase: 'Running' }, metadata: { ...onDisk(dir, 'a').metadata, resourceVersion: written.metadata.resourceVersion } },
    'the file holds what was returned',
  );
  const evs = await c.drain();
  t.same(
    evs.map((e) => [e.type, e.object.metadata.resourceVersion]),
    [['MODIFIED', written.metadata.resourceVersion]],
  );
  t.same(temps(dir), [], 'no temp file left');
  w.close();
});

t.test('a gate that rejects writes nothing and passes its reason on', async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  t.teardown(() => s.close());
  const a = await s.create(vmi('a'));
  const g = await shutGate();
  const write = s.updateStatus<Phase>('VirtualMachineInstance', 'default', 'a', setPhase('Running'), { after: g.gate });
  await until('the staged temp file', () => temps(dir).length === 1);
  g.shut(new Error('the VMI did not move to Running'));
  await t.rejects(write, /did not move to Running/, 'the gate’s reason, not a write failure');
  t.same(temps(dir), [], 'the staged file is gone');
  t.equal(onDisk(dir, 'a').status, undefined, 'the old content stays');
  t.equal((await s.get('VirtualMachineInstance', 'default', 'a'))?.metadata.resourceVersion, a.metadata.resourceVersion);
  const next = await s.updateStatus<Phase>('VirtualMachineInstance', 'default', 'a', setPhase('Failed'));
  t.ok(Number(next.metadata.resourceVersion) > Number(a.metadata.resourceVersion), 'the store goes on');
});

t.test("a staged write gives its resourceVersion up to another object's change, and takes a newer one", async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  t.teardown(() => s.close());
  await s.create(vmi('a'));
  await s.create(vmi('b'));
  const w = s.watch('VirtualMachineInstance');
  const c = collect(w);
  const g = await shutGate();
  const write = s.updateStatus<Phase>('VirtualMachineInstance', 'default', 'a', setPhase('Running'), { after: g.gate });
  await until('the staged temp file', () => temps(dir).length === 1);
  const b = await Promise.race([s.updateStatus<Phase>('VirtualMachineInstance', 'default', 'b', setPhase('Scheduled')), sleep(2000).then(() => undefined)]);
  t.ok(b, "b's change is not held back by a's gate");
  const early = await c.drain();
  t.same(
    early.map((e) => `${e.object.metadata.name} ${e.object.metadata.resourceVersion}`),
    [`b ${b?.metadata.resourceVersion}`],
    'watchers saw b at once',
  );
  g.open();
  const a = await write;
  t.ok(Number(a.metadata.resourceVersion) > Number(b?.metadata.resourceVersion), 'a was written again with a newer resourceVersion');
  t.same(
    (await c.drain()).map((e) => `${e.object.metadata.name} ${e.object.metadata.resourceVersion}`),
    [`a ${a.metadata.resourceVersion}`],
  );
  t.same(temps(dir), [], 'the first staged file is gone');
  // Given up once, staging pauses: the next gated write is made only when its gate opens (not written twice).
  const g2 = await shutGate();
  const write2 = s.updateStatus<Phase>('VirtualMachineInstance', 'default', 'a', setPhase('Paused'), { after: g2.gate });
  await sleep(50);
  t.same(temps(dir), [], 'no file staged within a second of a give-up');
  g2.open();
  t.match(await write2, { status: { phase: 'Paused' } }, 'the write is made once its gate opens');
  t.same(
    (await c.drain()).map((e) => (e.object.status as Phase).phase),
    ['Paused'],
  );
  w.close();
  await s.close();
  const again = await open(dir);
  t.teardown(() => again.close());
  t.match(await again.get('VirtualMachineInstance', 'default', 'a'), { status: { phase: 'Paused' } }, 'a reopen finds the newest version');
});

t.test('another writer of the same object waits for the gate, then goes after the gated change', async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  t.teardown(() => s.close());
  await s.create(vmi('a'));
  const g = await shutGate();
  const first = s.updateStatus<Phase & { reason?: string }>('VirtualMachineInstance', 'default', 'a', setPhase('Running'), { after: g.gate });
  let secondDone = false;
  const second = s
    .updateStatus<Phase & { reason?: string }>('VirtualMachineInstance', 'default', 'a', (st) => ({ ...st, reason: `after ${st?.phase ?? 'nothing'}` }))
    .finally(() => (secondDone = true));
  await sleep(50);
  t.notOk(secondDone, 'held by the object’s lock');
  g.open();
  await first;
  t.match(await second, { status: { phase: 'Running', reason: 'after Running' } });
});

t.test('beside a staged write, another gated write waits for its gate unstaged (one of them would be given up)', async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  t.teardown(() => s.close());
  await s.create(vmi('a'));
  await s.create(vmi('b'));
  const ga = await shutGate();
  const wa = s.updateStatus<Phase>('VirtualMachineInstance', 'default', 'a', setPhase('Running'), { after: ga.gate });
  await until('the staged temp file', () => temps(dir).length === 1);
  const gb = await shutGate();
  const wb = s.updateStatus<Phase>('VirtualMachineInstance', 'default', 'b', setPhase('Running'), { after: gb.gate });
  await sleep(50);
  t.equal(temps(dir).length, 1, "b's change is not staged beside a's");
  gb.open();
  t.match(await wb, { status: { phase: 'Running' } }, 'b is written once its gate opens, a still waiting');
  ga.open();
  t.match(await wa, { status: { phase: 'Running' } });
  t.same(temps(dir), [], 'nothing left staged');
  t.match(JSON.parse(fs.readFileSync(path.join(vmiDir(dir), 'b.json'), 'utf8')), { status: { phase: 'Running' } }, 'on disk');
});
