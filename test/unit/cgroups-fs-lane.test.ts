import t from 'tap';
import { cgroupCallLane } from '../../src/cgroups/fs.js';
import { SlowCallBackoff } from '../../src/sys/slow-call-backoff.js';

t.test('cgroupfs calls: reads and plain limit writes inline, lock-taking ones behind the back-off, joins and rmdir on the pool', async (t) => {
  const g = '/sys/fs/cgroup/memory/vmlet/vm-1';
  t.equal(cgroupCallLane('read', `${g}/memory.limit_in_bytes`), 'inline');
  t.equal(cgroupCallLane('exists', `${g}/memory.memsw.limit_in_bytes`), 'inline');
  t.equal(cgroupCallLane('list', g), 'inline');
  for (const f of ['cpu.shares', 'cpu.cfs_quota_us', 'cpu.max', 'pids.max', 'blkio.weight', 'io.weight'])
    t.equal(cgroupCallLane('write', `${g}/${f}`), 'inline', f);
  for (const f of [
    'cpuset.cpus',
    'cpuset.mems',
    'cgroup.subtree_control',
    'cgroup.freeze',
    'cgroup.type',
    'freezer.state',
    'memory.limit_in_bytes',
    'memory.max',
  ])
    t.equal(cgroupCallLane('write', `${g}/${f}`), 'backoff', f);
  t.equal(cgroupCallLane('mkdir', g), 'backoff');
  for (const f of ['cgroup.procs', 'cgroup.threads', 'tasks']) t.equal(cgroupCallLane('write', `${g}/${f}`), 'pool', f);
  t.equal(cgroupCallLane('rmdir', g), 'pool');
});

t.test('the back-off: a slow inline call sends the next ones to the pool until it ends', async (t) => {
  const clock = { t: 0 };
  const b = new SlowCallBackoff({ slowMs: 1, backoffMs: 1000, now: () => clock.t });
  t.equal(b.pooling, false);
  t.equal(
    b.inline(() => {
      clock.t += 0.5;
      return 'fast';
    }),
    'fast',
  );
  t.equal(b.pooling, false, 'a fast call changes nothing');
  b.inline(() => {
    clock.t += 3;
  });
  t.equal(b.pooling, true, 'a slow one starts the back-off');
  clock.t += 999;
  t.equal(b.pooling, true, 'which lasts backoffMs from its end');
  clock.t += 1;
  t.equal(b.pooling, false, 'then calls are made inline again');
  t.throws(
    () =>
      b.inline(() => {
        clock.t += 2;
        throw new Error('EBUSY');
      }),
    /EBUSY/,
  );
  t.equal(b.pooling, true, 'a call that fails slowly counts too');
});
