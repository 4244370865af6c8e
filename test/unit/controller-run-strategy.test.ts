import t from 'tap';
import { backoffMs, decide, printableStatus, recordFailure, type DecideInput } from '../../src/controller/run-strategy.js';

const now = Date.parse('2026-01-01T00:00:00Z');
const base = (over: Partial<DecideInput>): DecideInput => ({ runStrategy: 'Always', vmi: undefined, startFailure: undefined, ranOnce: false, now, ...over });
const running = { phase: 'Running' as const, deleting: false, paused: false, runningSince: now - 1000 };

t.test('Always creates, keeps a running VMI, replaces a finished one', async (t) => {
  t.same(decide(base({})), { action: 'create' });
  t.same(decide(base({ vmi: running })), { action: 'none' });
  t.same(decide(base({ vmi: { ...running, phase: 'Failed' } })), { action: 'delete', reason: 'restart' });
  t.same(decide(base({ vmi: { ...running, phase: 'Succeeded' } })), { action: 'delete', reason: 'restart' });
  t.same(decide(base({ vmi: { ...running, deleting: true } })), { action: 'none' });
});

t.test('RerunOnFailure restarts only failures', async (t) => {
  t.same(decide(base({ runStrategy: 'RerunOnFailure', vmi: { ...running, phase: 'Succeeded' } })), { action: 'none' });
  t.same(decide(base({ runStrategy: 'RerunOnFailure', vmi: { ...running, phase: 'Failed' } })), { action: 'delete', reason: 'restart' });
  t.equal(printableStatus(base({ runStrategy: 'RerunOnFailure', vmi: { ...running, phase: 'Succeeded' } })), 'Stopped');
});

t.test('Halted stops a live VMI and never creates', async (t) => {
  t.same(decide(base({ runStrategy: 'Halted' })), { action: 'none' });
  t.same(decide(base({ runStrategy: 'Halted', vmi: running })), { action: 'delete', reason: 'halted' });
  t.equal(printableStatus(base({ runStrategy: 'Halted' })), 'Stopped');
});

t.test('Once runs one time; Manual waits for the user', async (t) => {
  t.same(decide(base({ runStrategy: 'Once' })), { action: 'create' });
  t.same(decide(base({ runStrategy: 'Once', ranOnce: true })), { action: 'none' });
  t.same(decide(base({ runStrategy: 'Once', vmi: { ...running, phase: 'Failed' } })), { action: 'none' });
  t.same(decide(base({ runStrategy: 'Manual' })), { action: 'none' });
});

t.test('backoff grows, caps and resets after a stable run', async (t) => {
  t.equal(backoffMs(1), 0);
  t.equal(backoffMs(2), 1000);
  t.equal(backoffMs(4), 4000);
  t.equal(backoffMs(40), 300_000);
  const f1 = recordFailure(undefined, { ...running, phase: 'Failed' }, now);
  t.equal(f1.consecutiveFailCount, 1);
  const f2 = recordFailure(f1, { ...running, phase: 'Failed' }, now);
  const f3 = recordFailure(f2, { ...running, phase: 'Failed' }, now);
  t.equal(f3.consecutiveFailCount, 3);
  t.equal(Date.parse(f3.retryAfterTimestamp!), now + 2000);
  t.same(decide(base({ startFailure: f3 })), { action: 'wait', untilMs: now + 2000 });
  t.equal(printableStatus(base({ startFailure: f3 })), 'CrashLoopBackOff');
  const stable = recordFailure(f3, { ...running, phase: 'Failed', runningSince: now - 120_000 }, now);
  t.equal(stable.consecutiveFailCount, 1);
});

t.test('printable status follows the VMI', async (t) => {
  t.equal(printableStatus(base({ vmi: { ...running, phase: 'Pending' } })), 'Starting');
  t.equal(printableStatus(base({ vmi: running })), 'Running');
  t.equal(printableStatus(base({ vmi: { ...running, paused: true } })), 'Paused');
  t.equal(printableStatus(base({ vmi: { ...running, deleting: true } })), 'Stopping');
});

t.test('a VMI that waits for its containerDisk image shows ErrImagePull', async (t) => {
  t.equal(printableStatus(base({ vmi: { phase: 'Scheduled', deleting: false, paused: false, imageMissing: true } })), 'ErrImagePull');
  t.equal(printableStatus(base({ vmi: { phase: 'Pending', deleting: false, paused: false, imageMissing: true } })), 'ErrImagePull');
  t.equal(printableStatus(base({ vmi: { phase: 'Scheduled', deleting: false, paused: false } })), 'Starting');
  t.same(
    decide(base({ vmi: { phase: 'Scheduled', deleting: false, paused: false, imageMissing: true } })),
    { action: 'none' },
    'and is left alone (no crash loop)',
  );
});

t.test('a VMI that waits for its claim shows ErrorPvcNotFound or WaitingForVolumeBinding', async (t) => {
  const pending = { phase: 'Pending' as const, deleting: false, paused: false };
  t.equal(printableStatus(base({ vmi: { ...pending, claimWait: 'missing' } })), 'ErrorPvcNotFound');
  t.equal(printableStatus(base({ vmi: { ...pending, claimWait: 'unbound' } })), 'WaitingForVolumeBinding');
});
