// KubeWatch with a fake connection opener: resume from the last resourceVersion, bookmarks, 410 Gone, retries of an unreachable server, the buffer rule.
import { pino } from 'pino';
import t from 'tap';
import type { RawList } from '../../src/source/kube-client.js';
import { normalise, resourceOf } from '../../src/source/kube-objects.js';
import { KubeWatch, type WatchOpener } from '../../src/source/kube-watch.js';

const r = resourceOf('VirtualMachine', { group: 'vmlet.io', version: 'v1alpha1' });
const obj = (name: string, rv: string): unknown => ({
  metadata: { name, namespace: 'n', uid: name, resourceVersion: rv, generation: 1, creationTimestamp: 'c' },
});

interface Conn {
  rv: unknown;
  query: Record<string, unknown>;
  emit: (type: string, o: unknown) => void;
  end: (err: unknown) => void;
}

/** An opener that records each connection and lets the test drive it; `fail` makes the next opens fail at once. */
function fakeOpener(): { open: WatchOpener; conns: Conn[]; failWith: unknown[]; waitConn: (n: number) => Promise<Conn> } {
  const conns: Conn[] = [];
  const failWith: unknown[] = [];
  const waiters: Array<() => void> = [];
  const open: WatchOpener = async (_path, query, onEvent, onDone) => {
    const ac = new AbortController();
    const f = failWith.shift();
    if (f !== undefined) {
      onDone(f);
      return ac;
    }
    conns.push({ rv: query['resourceVersion'], query, emit: onEvent, end: onDone });
    for (const w of waiters.splice(0)) w();
    return ac;
  };
  const waitConn = async (n: number): Promise<Conn> => {
    while (conns.length < n) await new Promise<void>((resolve) => waiters.push(resolve));
    const c = conns[n - 1];
    if (c === undefined) throw new Error('no connection');
    return c;
  };
  return { open, conns, failWith, waitConn };
}

function makeWatch(
  open: WatchOpener,
  over: Partial<{ list: () => Promise<RawList>; retryMs: number; bufferSize: number; sendInitialEvents: boolean; rv: string }> = {},
) {
  return new KubeWatch(
    {
      open,
      list: over.list ?? (async () => ({ items: [], resourceVersion: '100' })),
      normalise: (raw) => normalise(raw, r),
      log: pino({ level: 'silent' }),
      now: () => Date.now(),
      retryMs: over.retryMs ?? 60_000,
      timeoutSeconds: 300,
      what: 'watch VirtualMachine',
    },
    {
      path: '/apis/vmlet.io/v1alpha1/virtualmachines',
      fieldSelector: 'metadata.name=a',
      sendInitialEvents: over.sendInitialEvents ?? false,
      resourceVersion: over.rv,
      bufferSize: over.bufferSize ?? 10,
    },
  );
}

t.test('starts at the list resourceVersion, resumes after a normal end from the last event or bookmark', async (t) => {
  const f = fakeOpener();
  const w = makeWatch(f.open);
  await w.start();
  const c1 = await f.waitConn(1);
  t.equal(c1.rv, '100', 'from the list');
  t.match(c1.query, { fieldSelector: 'metadata.name=a', allowWatchBookmarks: true, timeoutSeconds: 300 });
  c1.emit('ADDED', obj('a', '101'));
  t.same((await w.next()).value?.object.metadata.resourceVersion, '101');
  c1.emit('BOOKMARK', { metadata: { resourceVersion: '150' } });
  await new Promise((resolve) => setTimeout(resolve, 1100)); // a connection that lasted over a second resumes at once
  c1.end(null);
  const c2 = await f.waitConn(2);
  t.equal(c2.rv, '150', 'resumed from the bookmark');
  c2.emit('MODIFIED', obj('a', '160'));
  const ev = (await w.next()).value;
  t.equal(ev?.type, 'MODIFIED');
  t.ok(Object.isFrozen(ev?.object), 'events are frozen');
  w.close();
  t.same(await w.next(), { value: undefined, done: true });
});

t.test('sendInitialEvents: the listed objects first, not counted against the buffer', async (t) => {
  const f = fakeOpener();
  const items = [obj('a', '5'), obj('b', '6'), obj('c', '7')];
  const w = makeWatch(f.open, { sendInitialEvents: true, bufferSize: 1, list: async () => ({ items, resourceVersion: '8' }) });
  await w.start();
  const names = [];
  for (let i = 0; i < 3; i++) names.push((await w.next()).value?.object.metadata.name);
  t.same(names, ['a', 'b', 'c']);
  t.equal((await f.waitConn(1)).rv, '8');
  w.close();
});

t.test('a 410 in the stream (ERROR event) or as the answer fails the watch with STORE_WATCH_OVERFLOW', async (t) => {
  const f = fakeOpener();
  const w = makeWatch(f.open, { rv: '1' });
  await w.start();
  const c = await f.waitConn(1);
  t.equal(c.rv, '1');
  c.emit('ERROR', { kind: 'Status', code: 410, reason: 'Expired', message: 'too old resource version: 1 (304)' });
  await t.rejects(w.next(), { code: 'STORE_WATCH_OVERFLOW', message: /too old/ });
  t.equal(w.closed, true);
  const g = fakeOpener();
  g.failWith.push(Object.assign(new Error('Gone'), { statusCode: 410 }));
  const w2 = makeWatch(g.open, { rv: '1' });
  await w2.start();
  await t.rejects(w2.next(), { code: 'STORE_WATCH_OVERFLOW' });
});

t.test('an unreachable server is retried, then the watch fails with KUBE_API_UNAVAILABLE', async (t) => {
  const refused = (): Error => Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
  const f = fakeOpener();
  f.failWith.push(refused(), refused());
  const w = makeWatch(f.open, { rv: '10' });
  await w.start();
  const c = await f.waitConn(1);
  t.equal(c.rv, '10', 'connected after two failures, from the same resourceVersion');
  w.close();

  const g = fakeOpener();
  for (let i = 0; i < 50; i++) g.failWith.push(refused());
  const w2 = makeWatch(g.open, { rv: '10', retryMs: 300 });
  await w2.start();
  await t.rejects(w2.next(), { code: 'KUBE_API_UNAVAILABLE', message: /unreachable/ });
  t.ok(g.failWith.length < 50 && g.failWith.length > 40, 'a few tries with backoff, not a tight loop');
});

t.test('a consumer that falls more than bufferSize behind gets STORE_WATCH_OVERFLOW', async (t) => {
  const f = fakeOpener();
  const w = makeWatch(f.open, { rv: '1', bufferSize: 2 });
  await w.start();
  const c = await f.waitConn(1);
  for (let i = 0; i < 3; i++) c.emit('ADDED', obj(`o${i}`, String(10 + i)));
  await t.rejects(w.next(), { code: 'STORE_WATCH_OVERFLOW' });
});

t.test('a forbidden watch fails at once', async (t) => {
  const f = fakeOpener();
  f.failWith.push(Object.assign(new Error('Forbidden'), { statusCode: 403 }));
  const w = makeWatch(f.open, { rv: '1' });
  await w.start();
  await t.rejects(w.next(), { code: 'KUBE_API_FORBIDDEN' });
});
