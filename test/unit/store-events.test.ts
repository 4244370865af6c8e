import t from 'tap';
import { readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { LocalStore, type ObjectReference, type StoredObject } from '../../src/source/local-store.js';
import { fsyncPolicy } from '../../src/source/fsync-policy.js';
import { captureLogger, steppingClock, vm, vmi } from '../support/store-helpers.js';

const ref = (o: StoredObject): ObjectReference => ({ kind: o.kind, namespace: o.metadata.namespace, name: o.metadata.name, uid: o.metadata.uid });

t.test('recordEvent stores a kubectl-shaped Event named <object>.<hex>', async (t) => {
  const dir = t.testdir({});
  const s = await LocalStore.open({ dir, logger: captureLogger().logger, now: steppingClock() });
  t.teardown(() => s.close());
  const a = await s.create(vmi('web'));
  const ev = await s.recordEvent({ involvedObject: ref(a), type: 'Normal', reason: 'Started', message: 'VM started' });
  t.match(ev.metadata.name, /^web\.[0-9a-f]{16}$/);
  t.match(ev, {
    apiVersion: 'v1',
    kind: 'Event',
    metadata: { namespace: 'default' },
    involvedObject: { kind: 'VirtualMachineInstance', namespace: 'default', name: 'web', uid: a.metadata.uid },
    type: 'Normal',
    reason: 'Started',
    message: 'VM started',
    count: 1,
    source: { component: 'vmlet' },
  });
  t.equal(ev.firstTimestamp, ev.lastTimestamp);
  t.same(await readdir(path.join(dir, 'objects/events/default')), [`${ev.metadata.name}.json`]);
  t.same(await s.get('Event', 'default', ev.metadata.name), ev);
});

t.test('repeats aggregate into count and lastTimestamp', async (t) => {
  const s = await LocalStore.open({ dir: t.testdir({}), logger: captureLogger().logger, now: steppingClock() });
  t.teardown(() => s.close());
  const a = await s.create(vmi('web'));
  const first = await s.recordEvent({ involvedObject: ref(a), type: 'Warning', reason: 'BackOff', message: 'restarting' });
  await s.recordEvent({ involvedObject: ref(a), type: 'Warning', reason: 'BackOff', message: 'restarting' });
  const third = await s.recordEvent({ involvedObject: ref(a), type: 'Warning', reason: 'BackOff', message: 'restarting' });
  t.equal(third.metadata.name, first.metadata.name);
  t.equal(third.count, 3);
  t.equal(third.firstTimestamp, first.firstTimestamp);
  t.ok(third.lastTimestamp > first.lastTimestamp);
  const other = await s.recordEvent({ involvedObject: ref(a), type: 'Warning', reason: 'BackOff', message: 'restarting again' });
  t.not(other.metadata.name, first.metadata.name, 'a different message is a different event');
  // concurrent repeats also aggregate
  await Promise.all(Array.from({ length: 10 }, () => s.recordEvent({ involvedObject: ref(a), type: 'Normal', reason: 'Ping', message: 'same' })));
  const pings = (await s.listEvents('default', 'web')).filter((e) => e.reason === 'Ping');
  t.equal(pings.length, 1);
  t.equal(pings[0]?.count, 10);
});

t.test('at most maxEventsPerObject are kept; the least recently seen go first', async (t) => {
  const s = await LocalStore.open({ dir: t.testdir({}), logger: captureLogger().logger, now: steppingClock(), maxEventsPerObject: 5 });
  t.teardown(() => s.close());
  const a = await s.create(vm('web'));
  const b = await s.create(vm('db'));
  for (let i = 0; i < 8; i++) await s.recordEvent({ involvedObject: ref(a), type: 'Normal', reason: 'Step', message: `step ${i}` });
  await s.recordEvent({ involvedObject: ref(b), type: 'Normal', reason: 'Step', message: 'db step' });
  // Seeing "step 3" again makes it the most recent, so it survives the next eviction.
  await s.recordEvent({ involvedObject: ref(a), type: 'Normal', reason: 'Step', message: 'step 3' });
  await s.recordEvent({ involvedObject: ref(a), type: 'Normal', reason: 'Step', message: 'step 8' });
  const mine = await s.listEvents('default', 'web');
  t.same(
    mine.map((e) => e.message),
    ['step 5', 'step 6', 'step 7', 'step 3', 'step 8'],
  );
  t.equal((await s.listEvents('default', 'db')).length, 1, "another object's events are not touched");
  t.equal((await s.list('Event')).length, 6);
});

t.test('listEvents filters by namespace, object name and kind', async (t) => {
  const s = await LocalStore.open({ dir: t.testdir({}), logger: captureLogger().logger, now: steppingClock() });
  t.teardown(() => s.close());
  const v = await s.create(vm('web'));
  const i = await s.create(vmi('web'));
  const o = await s.create(vm('web', 'prod'));
  await s.recordEvent({ involvedObject: ref(v), type: 'Normal', reason: 'A', message: 'vm' });
  await s.recordEvent({ involvedObject: ref(i), type: 'Normal', reason: 'B', message: 'vmi' });
  await s.recordEvent({ involvedObject: ref(o), type: 'Normal', reason: 'C', message: 'prod' });
  t.same(
    (await s.listEvents()).map((e) => e.reason),
    ['A', 'B', 'C'],
  );
  t.same(
    (await s.listEvents('default')).map((e) => e.reason),
    ['A', 'B'],
  );
  t.same(
    (await s.listEvents('default', 'web', { kind: 'VirtualMachineInstance' })).map((e) => e.reason),
    ['B'],
  );
  t.same(await s.listEvents('default', 'nobody'), []);
});

t.test('events appear on watch and are deleted with their object', async (t) => {
  const s = await LocalStore.open({ dir: t.testdir({}), logger: captureLogger().logger, now: steppingClock() });
  t.teardown(() => s.close());
  const a = await s.create(vmi('web'));
  const b = await s.create(vm('web'));
  const w = s.watch('Event', 'default');
  const e1 = await s.recordEvent({ involvedObject: ref(a), type: 'Normal', reason: 'Started', message: 'x' });
  await s.recordEvent({ involvedObject: ref(a), type: 'Normal', reason: 'Started', message: 'x' });
  await s.recordEvent({ involvedObject: ref(b), type: 'Normal', reason: 'Created', message: 'y' });
  await s.delete('VirtualMachineInstance', 'default', 'web');
  const evs = [];
  for (let n = 0; n < 4; n++) {
    const r = await w.next();
    if (r.done === true) break;
    evs.push(`${r.value.type} ${r.value.object.metadata.name === e1.metadata.name ? 'e1' : 'other'}`);
  }
  t.same(evs, ['ADDED e1', 'MODIFIED e1', 'ADDED other', 'DELETED e1']);
  t.same(
    (await s.listEvents('default')).map((e) => e.involvedObject.kind),
    ['VirtualMachine'],
    "the VM's events stay",
  );
});

t.test('events of objects that vanished while the store was down are pruned on open', async (t) => {
  const dir = t.testdir({});
  const s1 = await LocalStore.open({ dir, logger: captureLogger().logger, now: steppingClock() });
  const a = await s1.create(vmi('web'));
  const b = await s1.create(vmi('keep'));
  await s1.recordEvent({ involvedObject: ref(a), type: 'Normal', reason: 'Started', message: 'x' });
  await s1.recordEvent({ involvedObject: ref(b), type: 'Normal', reason: 'Started', message: 'x' });
  await s1.recordEvent({ involvedObject: { ...ref(b), uid: 'an-older-namesake' }, type: 'Normal', reason: 'Old', message: 'x' });
  await s1.recordEvent({ involvedObject: { kind: 'Node', namespace: 'default', name: 'host', uid: 'n1' }, type: 'Normal', reason: 'Up', message: 'x' });
  await s1.close();
  // Simulate a crash between removing the VMI file and removing its events.
  const { unlink } = await import('node:fs/promises');
  await unlink(path.join(dir, 'objects/virtualmachineinstances/default/web.json'));
  const s2 = await LocalStore.open({ dir, logger: captureLogger().logger, now: steppingClock() });
  t.teardown(() => s2.close());
  t.same((await s2.listEvents()).map((e) => `${e.involvedObject.name}:${e.reason}`).sort(), ['host:Up', 'keep:Started']);
});

t.test('event input is bounded and checked', async (t) => {
  const s = await LocalStore.open({ dir: t.testdir({}), logger: captureLogger().logger, now: steppingClock() });
  t.teardown(() => s.close());
  const a = await s.create(vmi('x'.repeat(250)));
  const ev = await s.recordEvent({ involvedObject: ref(a), type: 'Warning', reason: 'R'.repeat(500), message: 'm'.repeat(5000) });
  t.ok(Buffer.byteLength(ev.metadata.name) <= 250, 'event name fits a file name');
  t.equal(ev.reason.length, 128);
  t.equal(ev.message.length, 1024);
  await t.rejects(s.recordEvent({ involvedObject: { ...ref(a), name: '../x' }, type: 'Normal', reason: 'r', message: 'm' }), { code: 'STORE_INVALID_KEY' });
  await t.rejects(s.recordEvent({ involvedObject: ref(a), type: 'Info' as 'Normal', reason: 'r', message: 'm' }), { code: 'STORE_INVALID_OBJECT' });
});

t.test('events cost no fsync (diagnostics); objects are written durably; a torn event is quarantined at open', async (t) => {
  const dir = t.testdir({});
  const s = await LocalStore.open({ dir, logger: captureLogger().logger, now: steppingClock() });
  const fsyncs = (): number => fsyncPolicy.counts.inline + fsyncPolicy.counts.pooled;
  // The first object and event of a namespace make their folders (durably, once).
  await s.recordEvent({ involvedObject: ref(await s.create(vmi('first'))), type: 'Normal', reason: 'Created', message: 'made' });
  let n = fsyncs();
  const a = await s.create(vmi('web'));
  t.equal(fsyncs() - n, 2, "the object's file and its directory");
  n = fsyncs();
  const ev = await s.recordEvent({ involvedObject: ref(a), type: 'Normal', reason: 'Started', message: 'VM started' });
  t.equal(fsyncs() - n, 0, 'the event is written without fsync');
  n = fsyncs();
  await s.delete('VirtualMachineInstance', 'default', 'web');
  t.notOk((await readdir(path.join(dir, 'objects/events/default'))).includes(`${ev.metadata.name}.json`), 'the event went with its object');
  t.ok(fsyncs() - n >= 1, 'the object removal is made durable');
  await s.close();
  // What a power loss can leave of an event written without fsync: an empty file.
  await writeFile(path.join(dir, 'objects/events/default', `${ev.metadata.name}.json`), '');
  const log = captureLogger();
  const s2 = await LocalStore.open({ dir, logger: log.logger, now: steppingClock() });
  t.teardown(() => s2.close());
  t.notOk(
    (await s2.list('Event')).some((e) => e.metadata.name === ev.metadata.name),
    'the torn event is not loaded',
  );
  t.ok(
    log.lines.some((l) => /quarantined/.test(String(l.msg))),
    'and was quarantined with a log line',
  );
});
