import { join } from 'node:path';
import t from 'tap';
import { V2Manager, cgroupManager, type CgroupResources } from '../../src/cgroups/index.js';
import { FakeCgroupTree, type FakeOptions } from '../support/cgroups-fake.js';

type TestT = { teardown(fn: () => unknown): void };

async function setup(t: TestT, opts: Partial<FakeOptions> = {}): Promise<FakeCgroupTree> {
  const fake = await FakeCgroupTree.make({ version: 2, ...opts });
  t.teardown(() => fake.cleanup());
  return fake;
}

function manager(fake: FakeCgroupTree, group: string, timeoutMs = 200): V2Manager {
  return new V2Manager(fake.root, group, { fs: fake, sleep: fake.sleep, signal: fake.signal, timeoutMs });
}

const RES: CgroupResources = {
  cpu: { shares: 1024, quota: 200000, cpus: '0-1', mems: '0' },
  memory: { max: 1 << 30, high: 1 << 29, swapMax: 0 },
  pids: { max: 1000 },
  io: { weight: 200 },
};

t.test('create enables controllers from the root down, then writes the resources', async (t) => {
  const fake = await setup(t);
  const m = manager(fake, 'vmlet/vm-1');
  t.equal(await m.exists(), false);
  const res = await m.create({ resources: RES });
  t.same(fake.writes, [
    { file: 'cgroup.subtree_control', value: '+cpu +cpuset +memory +pids +io' },
    { file: 'vmlet/cgroup.subtree_control', value: '+cpu +cpuset +memory +pids +io' },
    { file: 'vmlet/vm-1/cpu.weight', value: '39' },
    { file: 'vmlet/vm-1/cpu.max', value: '200000 100000' },
    { file: 'vmlet/vm-1/cpuset.cpus', value: '0-1' },
    { file: 'vmlet/vm-1/cpuset.mems', value: '0' },
    { file: 'vmlet/vm-1/memory.max', value: '1073741824' },
    { file: 'vmlet/vm-1/memory.high', value: '536870912' },
    { file: 'vmlet/vm-1/memory.swap.max', value: '0' },
    { file: 'vmlet/vm-1/pids.max', value: '1000' },
    { file: 'vmlet/vm-1/io.weight', value: 'default 200' },
  ]);
  t.equal(res.written.length, 9);
  t.equal(res.written[0]?.[0], join(fake.root, 'vmlet/vm-1/cpu.weight'), 'absolute paths');
  t.same(res.skipped, []);
  t.equal(await fake.read('cgroup.subtree_control'), 'cpuset cpu io memory pids');
  t.equal(await fake.read('vmlet/vm-1/cgroup.controllers'), 'cpuset cpu io memory pids');
  t.equal(await fake.read('vmlet/vm-1/cgroup.subtree_control'), '', 'the leaf enables nothing');
  t.equal(await m.exists(), true);
  t.same(m.paths(), { version: 2, dir: join(fake.root, 'vmlet/vm-1'), dirs: [join(fake.root, 'vmlet/vm-1')] });

  fake.writes.length = 0;
  await m.create({ resources: { pids: { max: 'max' } } });
  t.same(fake.writes, [{ file: 'vmlet/vm-1/pids.max', value: 'max' }], 'idempotent: nothing re-enabled, only the new value');
});

t.test('only the controllers the root offers are enabled', async (t) => {
  const fake = await setup(t, { rootControllers: ['cpu', 'pids'] });
  await manager(fake, 'a/b').create({ resources: { cpu: { weight: 50 } } });
  t.same(
    fake.writesTo('cgroup.subtree_control').map((w) => w.value),
    ['+cpu +pids', '+cpu +pids'],
  );
});

t.test('already enabled controllers are not written again', async (t) => {
  const fake = await setup(t);
  await fake.set('cgroup.subtree_control', 'cpu memory');
  await manager(fake, 'x').create();
  t.same(fake.writes, [{ file: 'cgroup.subtree_control', value: '+cpuset +pids +io' }]);
});

t.test('errors come before anything is created', async (t) => {
  const fake = await setup(t, { rootControllers: ['cpu', 'pids'] });
  await t.rejects(manager(fake, 'vmlet/vm-1').create({ resources: { memory: { max: 1 << 20 } } }), {
    code: 'CGROUP_CONTROLLER_UNAVAILABLE',
    message: /memory/,
  });
  await t.rejects(manager(fake, 'vmlet/vm-1').create({ resources: { cpu: { weight: 0 } } }), { code: 'CGROUP_INVALID_RESOURCES' });
  t.same(fake.writes, []);
  t.equal(await fake.exists(join(fake.root, 'vmlet')), false, 'no directory made');
});

t.test('bad group paths', async (t) => {
  const fake = await setup(t);
  t.throws(() => manager(fake, '../etc'), { code: 'CGROUP_INVALID_PATH' });
  t.throws(() => manager(fake, '/'), { code: 'CGROUP_INVALID_PATH' });
  t.throws(() => manager(fake, 'a/./b'), { code: 'CGROUP_INVALID_PATH' });
  t.equal(manager(fake, '/a//b/').group, 'a/b');
  const m = manager(fake, 'a');
  await m.create();
  await t.rejects(m.createThreadedChild('x/y'), { code: 'CGROUP_INVALID_PATH' });
  await t.rejects(m.createThreadedChild('cgroup.procs'), { code: 'CGROUP_INVALID_PATH' });
});

t.test('an ancestor with processes of its own cannot enable controllers', async (t) => {
  const fake = await setup(t);
  await manager(fake, 'svc').create();
  await manager(fake, 'svc').addProcess(4242);
  await t.rejects(manager(fake, 'svc/vm').create(), { code: 'CGROUP_ENABLE_FAILED', message: /no-internal-process/ });
});

t.test('missing optional files are skipped, missing controllers are errors', async (t) => {
  const fake = await setup(t, { ioWeight: false, swap: false });
  const m = manager(fake, 'vm');
  const res = await m.create({ resources: { io: { weight: 100 }, memory: { max: 1 << 30, swapMax: 0 } } });
  t.same(res.skipped, ['memory.swap.max', 'io.weight']);
  t.same(
    res.written.map((w) => w[1]),
    ['1073741824'],
  );
  // a controller that is not enabled for the group
  const fake2 = await setup(t);
  const m2 = manager(fake2, 'vm');
  await m2.create();
  await fake2.set('vm/cgroup.controllers', 'cpu');
  await import('node:fs/promises').then((fs) => fs.rm(join(fake2.root, 'vm/memory.max')));
  await t.rejects(m2.apply({ memory: { max: 4096 } }), { code: 'CGROUP_CONTROLLER_UNAVAILABLE', message: /memory/ });
});

t.test('threaded children for vCPU placement', async (t) => {
  const fake = await setup(t);
  const vm = manager(fake, 'vmlet/vm-1');
  await vm.create({ resources: { memory: { max: 1 << 30 } } });
  await vm.addProcess(100);
  fake.writes.length = 0;
  const v0 = await vm.createThreadedChild('vcpu0', { resources: { cpu: { cpus: '0' } } });
  t.equal(v0.threaded, true);
  t.equal(v0.group, 'vmlet/vm-1/vcpu0');
  t.same(fake.writes, [
    { file: 'vmlet/vm-1/vcpu0/cgroup.type', value: 'threaded' },
    { file: 'vmlet/vm-1/cgroup.subtree_control', value: '+cpu +cpuset +pids' },
    { file: 'vmlet/vm-1/vcpu0/cpuset.cpus', value: '0' },
  ]);
  t.equal(await fake.read('vmlet/vm-1/vcpu0/cgroup.type'), 'threaded');
  fake.writes.length = 0;
  const v1 = await vm.createThreadedChild('vcpu1', { resources: { cpu: { cpus: '1', weight: 100 } } });
  t.same(
    fake.writes,
    [
      { file: 'vmlet/vm-1/vcpu1/cgroup.type', value: 'threaded' },
      { file: 'vmlet/vm-1/vcpu1/cpu.weight', value: '100' },
      { file: 'vmlet/vm-1/vcpu1/cpuset.cpus', value: '1' },
    ],
    'controllers already enabled on the parent',
  );
  await v0.addThread(101);
  await v1.addThread(102);
  t.same(await v0.threads(), [101]);
  t.same(await v1.threads(), [102]);
  t.same(
    fake.writesTo('cgroup.threads').map((w) => [w.file, w.value]),
    [
      ['vmlet/vm-1/vcpu0/cgroup.threads', '101'],
      ['vmlet/vm-1/vcpu1/cgroup.threads', '102'],
    ],
  );
  await t.rejects(vm.createThreadedChild('bad', { resources: { memory: { max: 4096 } } }), { code: 'CGROUP_INVALID_RESOURCES' });
  t.equal(await fake.exists(join(fake.root, 'vmlet/vm-1/bad')), false);
  await t.rejects(v0.kill(), { code: 'CGROUP_UNSUPPORTED' });
});

t.test('processes: add, list, pid checks', async (t) => {
  const fake = await setup(t);
  const m = manager(fake, 'vm');
  await m.create();
  await m.addProcess(10);
  await m.addProcess(11);
  t.same(await m.procs(), [10, 11]);
  t.same(
    fake.writesTo('cgroup.procs').map((w) => w.value),
    ['10', '11'],
    'one pid per write',
  );
  await t.rejects(m.addProcess(0), { code: 'CGROUP_ADD_FAILED' });
  await t.rejects(m.addProcess(1.5), { code: 'CGROUP_ADD_FAILED' });
  await t.rejects(manager(fake, 'nope').addProcess(10), { code: 'CGROUP_ADD_FAILED' });
});

t.test('freeze and thaw', async (t) => {
  const fake = await setup(t);
  const m = manager(fake, 'vm');
  await m.create();
  await m.freeze();
  t.match(await fake.read('vm/cgroup.events'), /frozen 1/);
  await m.thaw();
  t.match(await fake.read('vm/cgroup.events'), /frozen 0/);
  t.same(
    fake.writesTo('cgroup.freeze').map((w) => w.value),
    ['1', '0'],
  );
});

t.test('freeze that never completes times out and thaws back', async (t) => {
  const fake = await setup(t, { freezeStuck: true });
  const m = manager(fake, 'vm', 100);
  await m.create();
  await t.rejects(m.freeze(), { code: 'CGROUP_FREEZE_TIMEOUT' });
  t.same(
    fake.writesTo('cgroup.freeze').map((w) => w.value),
    ['1', '0'],
  );
});

t.test('kill with cgroup.kill', async (t) => {
  const fake = await setup(t);
  const m = manager(fake, 'vm');
  await m.create();
  await m.addProcess(10);
  t.match(await fake.read('vm/cgroup.events'), /populated 1/);
  await m.kill();
  t.same(
    fake.writesTo('cgroup.kill').map((w) => w.value),
    ['1'],
  );
  t.same(fake.signals, [], 'no signals needed');
  t.same(await m.procs(), []);
});

t.test('kill without cgroup.kill: freeze, SIGKILL each pid (children too), thaw', async (t) => {
  const fake = await setup(t, { kill: false });
  const m = manager(fake, 'vm');
  const a = manager(fake, 'vm/a');
  const b = manager(fake, 'vm/b/c');
  await a.create();
  await b.create();
  await a.addProcess(10);
  await a.addProcess(12);
  await b.addProcess(11);
  fake.writes.length = 0;
  await m.kill();
  t.same(
    fake.writes.map((w) => `${w.file}=${w.value}`),
    ['vm/cgroup.freeze=1', 'vm/cgroup.freeze=0'],
  );
  t.same(fake.signals.sort(), [
    [10, 'SIGKILL'],
    [11, 'SIGKILL'],
    [12, 'SIGKILL'],
  ]);
  t.same(await a.procs(), []);
  t.same(await b.procs(), []);
  t.match(await fake.read('vm/cgroup.events'), /populated 0/);
});

t.test('kill that does not empty the group times out', async (t) => {
  const fake = await setup(t);
  const m = manager(fake, 'vm', 50);
  await m.create();
  await m.addProcess(10);
  // a kernel that ignores cgroup.kill
  const fs = { ...fake, writeFile: async (p: string, v: string) => (p.endsWith('cgroup.kill') ? undefined : fake.writeFile(p, v)) };
  const stubborn = new V2Manager(fake.root, 'vm', { fs: Object.assign(Object.create(fake) as FakeCgroupTree, fs), sleep: fake.sleep, timeoutMs: 50 });
  await t.rejects(stubborn.kill(), { code: 'CGROUP_KILL_TIMEOUT' });
});

t.test('delete removes children first, rmdir only', async (t) => {
  const fake = await setup(t);
  const vm = manager(fake, 'vmlet/vm-1');
  await vm.create();
  await vm.createThreadedChild('vcpu0');
  await vm.createThreadedChild('vcpu1');
  await vm.delete();
  t.same(fake.rmdirs, ['vmlet/vm-1/vcpu0', 'vmlet/vm-1/vcpu1', 'vmlet/vm-1']);
  t.equal(await fake.exists(join(fake.root, 'vmlet')), true, 'the parent stays');
  t.equal(await vm.exists(), false);
  await vm.delete();
  t.pass('deleting a missing group is fine');
});

t.test('delete retries EBUSY with bounded backoff', async (t) => {
  const fake = await setup(t);
  const slept: number[] = [];
  const mk = (attempts: number): V2Manager => new V2Manager(fake.root, 'vm', { fs: fake, sleep: async (ms) => void slept.push(ms), deleteAttempts: attempts });
  await mk(8).create();
  fake.busy.set('vm', 3);
  await mk(8).delete();
  t.same(slept, [10, 20, 40]);
  t.equal(await fake.exists(join(fake.root, 'vm')), false);

  await mk(8).create();
  fake.busy.set('vm', 100);
  slept.length = 0;
  await t.rejects(mk(4).delete(), { code: 'CGROUP_DELETE_FAILED', message: /busy after 4 attempts/ });
  t.same(slept, [10, 20, 40]);
});

t.test('delete of a group with processes fails clearly', async (t) => {
  const fake = await setup(t);
  const m = new V2Manager(fake.root, 'vm', { fs: fake, sleep: async () => undefined, deleteAttempts: 2 });
  await m.create();
  await m.addProcess(5);
  await t.rejects(m.delete(), { code: 'CGROUP_DELETE_FAILED' });
});

t.test('stats', async (t) => {
  const fake = await setup(t);
  const m = manager(fake, 'vm');
  await m.create();
  await fake.set('vm/cpu.stat', 'usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\n');
  await fake.set('vm/memory.current', '1048576\n');
  await fake.set('vm/memory.peak', '2097152\n');
  await fake.set('vm/memory.events', 'low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\noom_group_kill 0\n');
  await fake.set('vm/pids.current', '3\n');
  t.same(await m.stats(), { cpuUsageUsec: 5000, memoryCurrent: 1048576, memoryPeak: 2097152, oomEvents: 2, oomKills: 1, pidsCurrent: 3 });
  const fake2 = await setup(t, { peak: false, rootControllers: ['cpu'] });
  const m2 = manager(fake2, 'vm');
  await m2.create();
  t.same(await m2.stats(), { cpuUsageUsec: 0 }, 'only what the kernel shows');
});

t.test('the factory picks V2Manager for a v2 layout', async (t) => {
  const fake = await setup(t);
  const m = cgroupManager({ mode: 'v2', root: fake.root, unified: fake.root, hierarchies: {} }, 'x', { fs: fake });
  t.equal(m.version, 2);
  await m.create();
  t.equal(await m.exists(), true);
});
