import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FsyncPolicy } from '../../src/source/fsync-policy.js';
import { writeFileAtomic } from '../../src/source/atomic-file.js';

/** A policy whose clock, inline fsync and pooled fsync are scripted; `calls` records which ran for which fd. */
function scripted(inlineMs: number[]): { policy: FsyncPolicy; calls: string[]; release: () => void; clock: { t: number } } {
  const clock = { t: 0 };
  const calls: string[] = [];
  let pending: Array<() => void> = [];
  const policy = new FsyncPolicy({
    now: () => clock.t,
    syncFsync: (fd) => {
      calls.push(`inline:${fd}`);
      clock.t += inlineMs.shift() ?? 0.3;
    },
    asyncFsync: (fd) =>
      new Promise<void>((resolve) => {
        calls.push(`pool:${fd}`);
        pending.push(resolve);
      }),
  });
  const release = (): void => {
    const r = pending;
    pending = [];
    r.forEach((f) => f());
  };
  return { policy, calls, clock, release };
}

/** One durable change: the file's fsync and the directory's, in the lane chosen when it began. */
async function change(p: FsyncPolicy, fd: number): Promise<void> {
  const lane = p.lane();
  await p.fsync(fd, lane);
  await p.fsync(fd + 100, lane);
}

t.test('a lone change on a fast disk syncs inline, both of its fsyncs', async (t) => {
  const s = scripted([]);
  await change(s.policy, 1);
  s.clock.t += 50;
  await change(s.policy, 2);
  t.same(s.calls, ['inline:1', 'inline:101', 'inline:2', 'inline:102']);
  t.same(s.policy.counts, { inline: 4, pooled: 0 });
});

t.test('a burst of changes goes to the pool; the few of one start stay inline', async (t) => {
  const s = scripted([]);
  const lanes = [s.policy.lane()];
  s.clock.t += 3;
  lanes.push(s.policy.lane());
  s.clock.t += 3;
  lanes.push(s.policy.lane());
  s.clock.t += 1;
  lanes.push(s.policy.lane());
  t.same(lanes, ['inline', 'inline', 'burst', 'burst'], 'two within 10 ms stay inline; a third is a burst (many starts at once)');
  s.clock.t += 50;
  const p = s.policy.fsync(7, s.policy.lane());
  t.same(s.calls, ['inline:7'], 'alone again');
  await p;
});

t.test('while a change is in the pool, later ones join it there', async (t) => {
  const s = scripted([]);
  s.policy.lane();
  s.policy.lane();
  const pooled = s.policy.fsync(1, s.policy.lane());
  s.clock.t += 100;
  t.equal(s.policy.lane(), 'burst', 'one is still in the pool');
  s.release();
  await pooled;
  s.clock.t += 100;
  t.equal(s.policy.lane(), 'inline', 'inline again once the pool is empty');
});

t.test('after a slow inline fsync the pool is used until the backoff ends', async (t) => {
  const s = scripted([6]);
  await s.policy.fsync(1, s.policy.lane());
  s.clock.t += 100;
  t.equal(s.policy.lane(), 'pool', 'the disk was slow: the event loop is not blocked again');
  s.clock.t += 5_001;
  t.equal(s.policy.lane(), 'inline', 'tried inline again after the backoff');
});

t.test('failures reject like fs.fsync, and real writes go through the process policy', async (t) => {
  const failing = new FsyncPolicy({
    syncFsync: () => {
      throw Object.assign(new Error('EIO'), { code: 'EIO' });
    },
  });
  await t.rejects(failing.fsync(1, 'inline'), { code: 'EIO' });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-fsync-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const fd = fs.openSync(path.join(dir, 'f'), 'w');
  const real = new FsyncPolicy();
  await real.fsync(fd, real.lane());
  fs.closeSync(fd);
  await t.rejects(real.fsync(fd, 'inline'), { code: 'EBADF' });
  await t.rejects(real.fsync(fd, 'pool'), { code: 'EBADF' });
  await writeFileAtomic(path.join(dir, 'g'), 'data\n');
  t.equal(fs.readFileSync(path.join(dir, 'g'), 'utf8'), 'data\n');
});

t.test('changes without fsync are no part of a burst', async (t) => {
  const s = scripted([]);
  s.policy.lane();
  t.equal(s.policy.lane({ counts: false }), 'inline');
  t.equal(s.policy.lane({ counts: false }), 'inline');
  t.equal(s.policy.lane(), 'inline', 'the second durable change of the 10 ms is still alone enough');
  t.equal(s.policy.lane(), 'burst');
});

t.test('an inline page-cache step that waited (for the journal) makes the next changes burst for a second', async (t) => {
  const s = scripted([]);
  t.equal(
    s.policy.step(() => 'opened'),
    'opened',
    'a step returns what it did',
  );
  s.clock.t += 50;
  t.equal(s.policy.lane(), 'inline', 'a quick step changes nothing');
  s.policy.step(() => (s.clock.t += 0.9));
  s.clock.t += 50;
  t.equal(s.policy.lane(), 'inline', 'under the 1 ms line');
  t.throws(() => s.policy.step(() => ((s.clock.t += 2), fail())), /ENOSPC/, 'a step that throws rethrows');
  s.clock.t += 50;
  t.equal(s.policy.lane(), 'burst', 'a slow step, even a failed one: every step of the next change on the pool');
  s.clock.t += 1_000;
  t.equal(s.policy.lane(), 'inline', 'inline again after the back-off');
});

function fail(): never {
  throw new Error('ENOSPC');
}
