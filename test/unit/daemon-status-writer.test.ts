// A VMI's status writes: in order, batched while one is in flight, a failure settles the caller and is retried with backoff until it lands, a VMI that is gone ends the retries.
import t from 'tap';
import type { VirtualMachineInstanceStatus } from '../../src/api/types.js';
import { VmletError } from '../../src/errors.js';
import { STATUS_RETRY_MS, StatusWriter } from '../../src/daemon/supervisor-store.js';

type S = VirtualMachineInstanceStatus;

function fakeStore(): { status: S; fail: Error | undefined; writes: number; write: (m: (s: S) => S) => Promise<void> } {
  const st = {
    status: {} as S,
    fail: undefined as Error | undefined,
    writes: 0,
    write: async (m: (s: S) => S): Promise<void> => {
      st.writes++;
      await new Promise((r) => setImmediate(r));
      if (st.fail) throw st.fail;
      st.status = m(st.status);
    },
  };
  return st;
}

t.test('in order, and what queues meanwhile goes in one write', async (t) => {
  const store = fakeStore();
  const w = new StatusWriter(store.write);
  const done = [
    w.enqueue((s) => ({ ...s, phase: 'Scheduled' })),
    w.enqueue((s) => ({ ...s, phase: 'Running' })),
    w.enqueue((s) => ({ ...s, reason: `after ${s.phase}` })),
  ];
  await Promise.all(done);
  t.equal(store.status.phase, 'Running');
  t.equal(store.status.reason, 'after Running', 'applied in order');
  t.equal(store.writes, 2, 'the first write, then the two queued behind it together');
});

t.test('a failure settles the caller, is retried with backoff, and lands', async (t) => {
  const store = fakeStore();
  const sleeps: number[] = [];
  let release: () => void = () => undefined;
  const w = new StatusWriter(store.write, undefined, (ms) => {
    sleeps.push(ms);
    if (sleeps.length === 3) return new Promise<void>((r) => (release = r));
    return Promise.resolve();
  });
  store.fail = new VmletError('STORE_WRITE_FAILED', 'ENOSPC');
  await w.enqueue((s) => ({ ...s, phase: 'Running' }));
  t.pass('the caller is not held by a failing write');
  while (sleeps.length < 3) await new Promise((r) => setImmediate(r));
  t.same(sleeps, [STATUS_RETRY_MS.first, STATUS_RETRY_MS.first * 2, STATUS_RETRY_MS.first * 4], 'doubling backoff');
  const later = w.enqueue((s) => ({ ...s, reason: 'later' }));
  store.fail = undefined;
  release();
  await later;
  t.equal(store.status.phase, 'Running', 'the failed change landed');
  t.equal(store.status.reason, 'later', 'and what came after it, in order');
});

t.test('the backoff is capped', async (t) => {
  const store = fakeStore();
  const sleeps: number[] = [];
  const w = new StatusWriter(store.write, undefined, async (ms) => {
    sleeps.push(ms);
    if (sleeps.length === 12) store.fail = undefined;
  });
  store.fail = new Error('refused');
  await w.enqueue((s) => ({ ...s, phase: 'Running' }));
  while (store.status.phase !== 'Running') await new Promise((r) => setImmediate(r));
  t.equal(Math.max(...sleeps), STATUS_RETRY_MS.max);
});

t.test('a VMI that is gone ends it quietly', async (t) => {
  const store = fakeStore();
  let slept = 0;
  const w = new StatusWriter(store.write, undefined, async () => {
    slept++;
  });
  store.fail = new VmletError('STORE_NOT_FOUND', 'gone');
  await w.enqueue((s) => ({ ...s, phase: 'Failed' }));
  await new Promise((r) => setTimeout(r, 10));
  t.equal(store.writes, 1, 'not retried');
  t.equal(slept, 0);
});

t.test('a change with a gate goes alone, after what queued before it, and shows only once the gate opens', async (t) => {
  const written: Array<{ phase: string | undefined; gated: boolean }> = [];
  const st = { status: {} as S };
  const w = new StatusWriter(async (m, after) => {
    const next = m(st.status);
    await after;
    st.status = next;
    written.push({ phase: next.phase, gated: after !== undefined });
  });
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const first = w.enqueue((s) => ({ ...s, phase: 'Scheduled' }));
  const gated = w.enqueue((s) => ({ ...s, phase: 'Running' }), { after: gate });
  const later = w.enqueue((s) => ({ ...s, reason: 'later' }));
  await first;
  await new Promise((r) => setTimeout(r, 20));
  t.equal(st.status.phase, 'Scheduled', 'nothing of the gated change shows while its gate is shut');
  open();
  await gated;
  await later;
  t.same(written, [
    { phase: 'Scheduled', gated: false },
    { phase: 'Running', gated: true },
    { phase: 'Running', gated: false },
  ]);
  t.equal(st.status.reason, 'later', 'what queued behind the gated change came after it');
});

t.test('a gate that rejects drops its change (not retried) and settles; a failed gated write is retried behind its gate', async (t) => {
  const store = fakeStore();
  const w = new StatusWriter(async (m, after) => {
    await after;
    await store.write(m);
  });
  const refused = Promise.reject(new Error('did not move to Running'));
  await w.enqueue((s) => ({ ...s, phase: 'Running' }), { after: refused });
  await w.enqueue((s) => ({ ...s, reason: 'next' }));
  t.equal(store.status.phase, undefined, 'the refused change was dropped');
  t.equal(store.status.reason, 'next', 'and the writer went on');

  const sleeps: number[] = [];
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  let tries = 0;
  const failing = new StatusWriter(
    async (m, after) => {
      // The first try fails before its gate (say the disk is full); the retry must still wait for it.
      if (tries++ === 0) throw new VmletError('STORE_WRITE_FAILED', 'ENOSPC');
      await after;
      await store.write(m);
    },
    undefined,
    async (ms) => {
      sleeps.push(ms);
    },
  );
  await failing.enqueue((s) => ({ ...s, phase: 'Running' }), { after: gate });
  await new Promise((r) => setTimeout(r, 20));
  t.equal(tries, 2, 'retried');
  t.equal(store.status.phase, undefined, 'the retry waits for the gate');
  open();
  while (store.status.phase !== 'Running') await new Promise((r) => setTimeout(r, 5));
  t.pass('written once the gate opened');
});
