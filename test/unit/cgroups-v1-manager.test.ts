import { join } from 'node:path';
import t from 'tap';
import { V1Manager, cgroupManager, type CgroupFs } from '../../src/cgroups/index.js';
import { FakeCgroupTree, type FakeOptions } from '../support/cgroups-fake.js';

type TestT = { teardown(fn: () => unknown): void };

async function setup(t: TestT, opts: Partial<FakeOptions> = {}): Promise<FakeCgroupTree> {
  const fake = await FakeCgroupTree.make({ version: 1, ...opts });
  t.teardown(() => fake.cleanup());
  return fake;
}

function manager(fake: FakeCgroupTree, group: string, timeoutMs = 200): V1Manager {
  return new V1Manager(fake.hierarchies(), group, { fs: fake, sleep: fake.sleep, signal: fake.signal, timeoutMs });
}

t.test('create makes the group in every hierarchy, seeds cpuset, writes resources', async (t) => {
  const fake = await setup(t);
  const m = manager(fake, 'vmlet/vm-1');
  const res = await m.create({
    resources: { cpu: { shares: 512, quota: 50000 }, memory: { max: 1 << 30, swapMax: 0, high: 5 }, pids: { max: 100 }, io: { weight: 100 } },
  });
  for (const h of fake.hierarchyNames()) t.equal(await fake.exists(join(fake.root, h, 'vmlet/vm-1/cgroup.procs')), true, `${h} dir`);
  // The hierarchies are written side by side: the order holds within each one.
  const byHierarchy = (ws: Array<{ file: string; value: string }>): Record<string, Array<{ file: string; value: string }>> => {
    const out: Record<string, Array<{ file: string; value: string }>> = {};
    for (const w of ws) (out[w.file.split('/')[0]!] ??= []).push(w);
    return out;
  };
  t.same(
    byHierarchy(fake.writes),
    byHierarchy([
      { file: 'cpuset/vmlet/cpuset.cpus', value: '0-3' },
      { file: 'cpuset/vmlet/cpuset.mems', value: '0' },
      { file: 'cpuset/vmlet/vm-1/cpuset.cpus', value: '0-3' },
      { file: 'cpuset/vmlet/vm-1/cpuset.mems', value: '0' },
      { file: 'cpu/vmlet/vm-1/cpu.shares', value: '512' },
      { file: 'cpu/vmlet/vm-1/cpu.cfs_period_us', value: '100000' },
      { file: 'cpu/vmlet/vm-1/cpu.cfs_quota_us', value: '50000' },
      { file: 'memory/vmlet/vm-1/memory.limit_in_bytes', value: '1073741824' },
      { file: 'memory/vmlet/vm-1/memory.memsw.limit_in_bytes', value: '1073741824' },
      { file: 'pids/vmlet/vm-1/pids.max', value: '100' },
      { file: 'blkio/vmlet/vm-1/blkio.weight', value: '20' },
    ]),
  );
  t.same(
    res.written.map(([f]) => f.slice(fake.root.length + 1)),
    [
      'cpu/vmlet/vm-1/cpu.shares',
      'cpu/vmlet/vm-1/cpu.cfs_period_us',
      'cpu/vmlet/vm-1/cpu.cfs_quota_us',
      'memory/vmlet/vm-1/memory.limit_in_bytes',
      'memory/vmlet/vm-1/memory.memsw.limit_in_bytes',
      'pids/vmlet/vm-1/pids.max',
      'blkio/vmlet/vm-1/blkio.weight',
    ],
    'written is reported in plan order',
  );
  t.same(res.skipped, ['memory.high'], 'no v1 counterpart');
  const p = m.paths();
  t.equal(p.version, 1);
  if (p.version === 1) {
    t.equal(p.byController['memory'], join(fake.root, 'memory/vmlet/vm-1'));
    t.equal(p.dirs.length, 7);
  }
  // growing memory later: memsw must go first or the kernel refuses
  fake.writes.length = 0;
  await m.apply({ memory: { max: 2 * 1024 ** 3, swapMax: 0 } });
  t.same(
    fake.writes.map((w) => w.file),
    ['memory/vmlet/vm-1/memory.memsw.limit_in_bytes', 'memory/vmlet/vm-1/memory.limit_in_bytes'],
  );
  fake.writes.length = 0;
  await m.apply({ memory: { max: 1 << 29, swapMax: 0 } });
  t.same(
    fake.writes.map((w) => w.file),
    ['memory/vmlet/vm-1/memory.limit_in_bytes', 'memory/vmlet/vm-1/memory.memsw.limit_in_bytes'],
  );
  fake.writes.length = 0;
  await m.apply({ memory: { max: 'max' } });
  t.same(
    fake.writes.map((w) => `${w.file}=${w.value}`),
    ['memory/vmlet/vm-1/memory.memsw.limit_in_bytes=-1', 'memory/vmlet/vm-1/memory.limit_in_bytes=-1'],
  );
});

t.test("a VM's group below a parent that exists: only its own directory is made, and the walk runs when it must", async (t) => {
  const fake = await setup(t);
  const mkdirs: string[] = [];
  const recording: CgroupFs = {
    readFile: (p) => fake.readFile(p),
    writeFile: (p, v) => fake.writeFile(p, v),
    mkdir: (p) => {
      mkdirs.push(p.slice(fake.root.length + 1));
      return fake.mkdir(p);
    },
    rmdir: (p) => fake.rmdir(p),
    subdirs: (p) => fake.subdirs(p),
    exists: (p) => fake.exists(p),
  };
  const m = (group: string): V1Manager => new V1Manager(fake.hierarchies(), group, { fs: recording });
  await m('vmlet/vm-1').create();
  t.same(
    mkdirs.filter((d) => d.startsWith('cpuset/')),
    ['cpuset/vmlet/vm-1', 'cpuset/vmlet', 'cpuset/vmlet/vm-1'],
    'the first VM: its group alone fails (no parent), then every level',
  );
  mkdirs.length = 0;
  fake.writes.length = 0;
  await m('vmlet/vm-2').create();
  t.same(
    mkdirs.sort(),
    fake
      .hierarchyNames()
      .map((h) => `${h}/vmlet/vm-2`)
      .sort(),
    'the second: one mkdir per hierarchy',
  );
  t.same(
    fake.writes.map((w) => `${w.file}=${w.value}`),
    ['cpuset/vmlet/vm-2/cpuset.cpus=0-3', 'cpuset/vmlet/vm-2/cpuset.mems=0'],
    "its cpuset seeded from the parent's",
  );
  // Someone emptied the parent's cpus: the walk seeds the parent again before the group.
  await fake.writeFile(join(fake.root, 'cpuset/vmlet/cpuset.cpus'), '');
  mkdirs.length = 0;
  fake.writes.length = 0;
  await m('vmlet/vm-3').create();
  t.same(
    fake.writes.map((w) => `${w.file}=${w.value}`),
    ['cpuset/vmlet/cpuset.cpus=0-3', 'cpuset/vmlet/vm-3/cpuset.cpus=0-3', 'cpuset/vmlet/vm-3/cpuset.mems=0'],
    'the parent first, then the group',
  );
  t.equal((await fake.readFile(join(fake.root, 'cpuset/vmlet/vm-3/cpuset.cpus'))).trim(), '0-3');
});

t.test('a cpuset root with no cpus: a clear error, not a group that refuses its tasks later', async (t) => {
  const fake = await setup(t);
  await fake.writeFile(join(fake.root, 'cpuset/cpuset.cpus'), '');
  await t.rejects(manager(fake, 'vmlet/vm-1').create(), { code: 'CGROUP_CREATE_FAILED', message: /empty cpuset\.cpus or cpuset\.mems .*set both there/ });
});

t.test('co-mounted hierarchies share one directory', async (t) => {
  const fake = await setup(t, { hierarchies: ['cpu', 'memory'] });
  const h = { ...fake.hierarchies(), cpuacct: join(fake.root, 'cpu') };
  const m = new V1Manager(h, 'g', { fs: fake });
  await m.create();
  const p = m.paths();
  t.same(p.dirs, [join(fake.root, 'cpu/g'), join(fake.root, 'memory/g')]);
  if (p.version === 1) t.equal(p.byController['cpuacct'], join(fake.root, 'cpu/g'));
});

t.test('without swap accounting or blkio.weight, those writes are skipped', async (t) => {
  const fake = await setup(t, { swap: false, ioWeight: false });
  const res = await manager(fake, 'vm').create({ resources: { memory: { max: 4096 * 1000, swapMax: 0 }, io: { weight: 500 } } });
  t.same(res.skipped, ['memory.memsw.limit_in_bytes', 'blkio.weight']);
  t.same(
    res.written.map((w) => w[1]),
    ['4096000'],
  );
});

t.test('errors before anything is created', async (t) => {
  const fake = await setup(t, { hierarchies: ['cpu', 'cpuset'] });
  await t.rejects(manager(fake, 'vm').create({ resources: { memory: { max: 4096 } } }), { code: 'CGROUP_CONTROLLER_UNAVAILABLE', message: /memory/ });
  await t.rejects(manager(fake, 'vm').create({ resources: { cpu: { shares: 1 } } }), { code: 'CGROUP_INVALID_RESOURCES' });
  await t.rejects(manager(fake, 'vm').create({ resources: { memory: { swapMax: 4096 } } }), { code: 'CGROUP_INVALID_RESOURCES' });
  t.equal(await fake.exists(join(fake.root, 'cpu/vm')), false);
  t.same(fake.writes, []);
  await t.rejects(manager(fake, 'vm').freeze(), { code: 'CGROUP_CONTROLLER_UNAVAILABLE', message: /freezer/ });
});

t.test('processes and threads join every hierarchy; per-thread groups only cpu/cpuacct/cpuset', async (t) => {
  const fake = await setup(t);
  const vm = manager(fake, 'vm');
  await vm.create();
  await vm.addProcess(100);
  t.equal(fake.writesTo('cgroup.procs').length, 7);
  t.same(await vm.procs(), [100]);
  const v0 = await vm.createThreadedChild('vcpu0', { resources: { cpu: { cpus: '1' } } });
  t.equal(v0.threaded, true);
  t.same(
    v0.paths().dirs,
    ['cpu', 'cpuacct', 'cpuset'].map((h) => join(fake.root, h, 'vm/vcpu0')),
  );
  t.equal(await fake.read('cpuset/vm/vcpu0/cpuset.cpus'), '1');
  t.equal(await fake.read('cpuset/vm/vcpu0/cpuset.mems'), '0', 'mems seeded from the parent');
  await v0.addThread(101);
  t.same(
    fake.writesTo('tasks').map((w) => w.file),
    ['cpu/vm/vcpu0/tasks', 'cpuacct/vm/vcpu0/tasks', 'cpuset/vm/vcpu0/tasks'],
  );
  t.same(await v0.threads(), [101]);
  await t.rejects(vm.createThreadedChild('x', { resources: { pids: { max: 5 } } }), { code: 'CGROUP_INVALID_RESOURCES' });
  await t.rejects(v0.kill(), { code: 'CGROUP_UNSUPPORTED' });
});

t.test('freeze waits for FROZEN; a stuck freeze times out and thaws', async (t) => {
  const fake = await setup(t);
  const m = manager(fake, 'vm');
  await m.create();
  await m.freeze();
  t.equal(await fake.read('freezer/vm/freezer.state'), 'FROZEN');
  await m.thaw();
  t.equal(await fake.read('freezer/vm/freezer.state'), 'THAWED');
  const stuck = await setup(t, { freezeStuck: true });
  const s = manager(stuck, 'vm', 60);
  await s.create();
  await t.rejects(s.freeze(), { code: 'CGROUP_FREEZE_TIMEOUT' });
  const states = stuck.writesTo('freezer.state').map((w) => w.value);
  t.equal(states[0], 'FROZEN');
  t.ok(states.length > 2, 'FROZEN written again while FREEZING');
  t.equal(states.at(-1), 'THAWED');
});

t.test('kill: freeze, SIGKILL each pid of the group and below, thaw, wait until empty', async (t) => {
  const fake = await setup(t);
  const m = manager(fake, 'vm');
  await m.create();
  await m.addProcess(10);
  const sub = manager(fake, 'vm/sub');
  await sub.create();
  await sub.addProcess(11);
  fake.writes.length = 0;
  await m.kill();
  t.same(
    fake.writesTo('freezer.state').map((w) => w.value),
    ['FROZEN', 'THAWED'],
  );
  t.same(fake.signals.sort(), [
    [10, 'SIGKILL'],
    [11, 'SIGKILL'],
  ]);
  t.same(await m.procs(), []);
  t.same(await sub.procs(), []);
});

t.test('delete: children first in every hierarchy, retries EBUSY', async (t) => {
  const fake = await setup(t, { hierarchies: ['cpu', 'memory'] });
  const slept: number[] = [];
  const m = new V1Manager(fake.hierarchies(), 'vm', { fs: fake, sleep: async (ms) => void slept.push(ms) });
  await m.create();
  await m.createThreadedChild('vcpu0');
  fake.busy.set('memory/vm', 2);
  await m.delete();
  t.same(fake.rmdirs, ['cpu/vm/vcpu0', 'cpu/vm', 'memory/vm']);
  t.same(slept, [10, 20]);
  t.equal(await m.exists(), false);
});

t.test('stats', async (t) => {
  const fake = await setup(t);
  const m = manager(fake, 'vm');
  await m.create();
  await fake.set('cpuacct/vm/cpuacct.usage', '5000999\n');
  await fake.set('memory/vm/memory.usage_in_bytes', '4096\n');
  await fake.set('memory/vm/memory.max_usage_in_bytes', '8192\n');
  await fake.set('memory/vm/memory.oom_control', 'oom_kill_disable 0\nunder_oom 0\noom_kill 2\n');
  await fake.set('memory/vm/memory.failcnt', '7\n');
  await fake.set('pids/vm/pids.current', '1\n');
  t.same(await m.stats(), { cpuUsageUsec: 5000, memoryCurrent: 4096, memoryPeak: 8192, oomKills: 2, underOom: false, memoryFailcnt: 7, pidsCurrent: 1 });
});

t.test('the factory picks V1Manager for v1 and hybrid', async (t) => {
  const fake = await setup(t);
  for (const mode of ['v1', 'hybrid'] as const) {
    const m = cgroupManager(
      { mode, root: fake.root, hierarchies: fake.hierarchies(), ...(mode === 'hybrid' ? { unified: join(fake.root, 'unified') } : {}) },
      'x',
      { fs: fake },
    );
    t.equal(m.version, 1, mode);
  }
});
