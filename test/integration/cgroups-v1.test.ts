import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { V1Manager, clearCgroupLayoutCache, detectCgroupLayout, parseCpuList, type CgroupLayout } from '../../src/cgroups/index.js';
import { busy, hog, isRoot, procCgroups, rand, sleeper, threaded, tids, waitFor, type Child } from '../support/cgroups-procs.js';

const ROOT = process.env['VMLET_CGROUP_ROOT'] ?? '/sys/fs/cgroup';
const NEEDED = ['cpu', 'cpuacct', 'cpuset', 'memory', 'pids', 'freezer'];

async function layoutOrReason(): Promise<CgroupLayout | string> {
  if (!isRoot()) return 'needs root';
  clearCgroupLayoutCache();
  let layout: CgroupLayout;
  try {
    layout = await detectCgroupLayout({ root: ROOT, mountinfoPath: '/proc/self/mountinfo' });
  } catch (e) {
    return `no cgroups at ${ROOT}: ${(e as Error).message}`;
  }
  if (layout.mode === 'v2') return 'host runs pure cgroup v2 (no v1 hierarchies)';
  const missing = NEEDED.filter((c) => layout.hierarchies[c] === undefined);
  if (missing.length > 0) return `v1 hierarchies missing: ${missing.join(', ')}`;
  return layout;
}

const found = await layoutOrReason();
if (typeof found === 'string') {
  t.plan(0, `skip: ${found}`);
} else {
  const layout = found;
  const h = layout.hierarchies;
  const children: Child[] = [];
  const groups: V1Manager[] = [];
  const track = (c: Child): Child => (children.push(c), c);
  const group = (name: string): V1Manager => {
    const m = new V1Manager(h, name);
    groups.push(m);
    return m;
  };
  t.teardown(async () => {
    for (const c of children) if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
    await Promise.all(children.map((c) => c.exited));
    for (const g of groups) await g.delete().catch(() => undefined);
  });

  const name = `vmlet-test-${rand()}`;
  const cg = group(name);
  const file = (ctrl: string, f: string): string => readFileSync(join(h[ctrl] as string, name, f), 'utf8').trim();

  t.test('create and apply resources', async (t) => {
    const res = await cg.create({
      resources: {
        cpu: { shares: 512, quota: 50000, period: 100000 },
        memory: { max: 256 << 20, swapMax: 0 },
        pids: { max: 64 },
        io: { weight: 100 },
      },
    });
    for (const d of cg.paths().dirs) t.ok(existsSync(d), `created ${d}`);
    t.equal(file('cpu', 'cpu.shares'), '512');
    t.equal(file('cpu', 'cpu.cfs_period_us'), '100000');
    t.equal(file('cpu', 'cpu.cfs_quota_us'), '50000');
    t.equal(file('memory', 'memory.limit_in_bytes'), String(256 << 20));
    if (existsSync(join(h['memory'] as string, name, 'memory.memsw.limit_in_bytes'))) {
      t.equal(file('memory', 'memory.memsw.limit_in_bytes'), String(256 << 20), 'memsw = memory + 0 swap');
    } else {
      t.ok(res.skipped.includes('memory.memsw.limit_in_bytes'), 'no swap accounting: skipped');
    }
    t.equal(file('pids', 'pids.max'), '64');
    t.same(
      parseCpuList(file('cpuset', 'cpuset.cpus')),
      parseCpuList(readFileSync(join(h['cpuset'] as string, 'cpuset.cpus'), 'utf8')),
      'cpuset.cpus seeded from the parent',
    );
    t.equal(file('cpuset', 'cpuset.mems'), readFileSync(join(h['cpuset'] as string, 'cpuset.mems'), 'utf8').trim());
    if (existsSync(join(h['blkio'] ?? '/nonexistent', name, 'blkio.weight'))) t.equal(file('blkio', 'blkio.weight'), '20');
    else t.ok(res.skipped.includes('blkio.weight'), 'no blkio.weight on this kernel: skipped');
    // raising memory later needs memsw first: the manager orders it
    await cg.apply({ memory: { max: 512 << 20, swapMax: 0 } });
    t.equal(file('memory', 'memory.limit_in_bytes'), String(512 << 20));
    await cg.apply({ memory: { max: 256 << 20, swapMax: 0 } });
    t.equal(file('memory', 'memory.limit_in_bytes'), String(256 << 20));
  });

  t.test('a process joins every hierarchy', async (t) => {
    const c = track(sleeper());
    await cg.addProcess(c.pid);
    const where = procCgroups(c.pid);
    for (const ctrl of ['cpu', 'cpuacct', 'cpuset', 'memory', 'pids', 'freezer']) {
      const key = [...where.keys()].find((k) => k.split(',').includes(ctrl));
      t.equal(key === undefined ? undefined : where.get(key), `/${name}`, `${ctrl} of /proc/${c.pid}/cgroup`);
    }
    t.ok((await cg.procs()).includes(c.pid), 'procs() lists it');
    const s = await cg.stats();
    t.ok((s.pidsCurrent ?? 0) >= 1, `pids.current ${String(s.pidsCurrent)}`);
  });

  t.test('threads go to per-vCPU sub-groups', async (t) => {
    const vm = group(`${name}-vm`);
    await vm.create();
    const q = track(threaded());
    await vm.addProcess(q.pid);
    t.ok(await waitFor(() => tids(q.pid).length >= 3), 'several threads');
    const [, a, b] = tids(q.pid);
    const cpus = parseCpuList(readFileSync(join(h['cpuset'] as string, 'cpuset.cpus'), 'utf8'));
    const v0 = await vm.createThreadedChild('vcpu0', { resources: { cpu: { cpus: String(cpus[0]) } } });
    const v1 = await vm.createThreadedChild('vcpu1', { resources: { cpu: { cpus: String(cpus.at(-1)), shares: 256 } } });
    await v0.addThread(a as number);
    await v1.addThread(b as number);
    const ta = procCgroups(q.pid, a);
    const tb = procCgroups(q.pid, b);
    const key = (m: Map<string, string>, c: string): string | undefined => m.get([...m.keys()].find((k) => k.split(',').includes(c)) ?? '');
    t.equal(key(ta, 'cpuset'), `/${name}-vm/vcpu0`);
    t.equal(key(ta, 'cpu'), `/${name}-vm/vcpu0`);
    t.equal(key(ta, 'memory'), `/${name}-vm`, 'memory stays with the process');
    t.equal(key(tb, 'cpuset'), `/${name}-vm/vcpu1`);
    t.equal(key(procCgroups(q.pid), 'cpuset'), `/${name}-vm`, 'the main thread stays');
    t.same(await v0.threads(), [a]);
    t.equal(readFileSync(`/proc/${q.pid}/task/${a}/status`, 'utf8').match(/Cpus_allowed_list:\s*(\S+)/)?.[1], String(cpus[0]), 'affinity follows the cpuset');
    await vm.kill();
    t.equal((await q.exited).signal, 'SIGKILL');
    await vm.delete();
    for (const d of [...vm.paths().dirs, ...v0.paths().dirs]) t.notOk(existsSync(d), `removed ${d}`);
  });

  t.test('CPU usage grows while a busy process works, and the quota throttles it', async (t) => {
    const g = group(`${name}-busy`);
    await g.create({ resources: { cpu: { quota: 20000, period: 100000 } } });
    const before = (await g.stats()).cpuUsageUsec ?? 0;
    const c = track(busy());
    await g.addProcess(c.pid);
    await new Promise((r) => setTimeout(r, 800));
    const after = (await g.stats()).cpuUsageUsec ?? 0;
    t.ok(after - before > 50_000, `used ${after - before} µs of CPU`);
    t.ok(after - before < 600_000, 'capped near 20% of a CPU');
    const throttled = Number(/nr_throttled (\d+)/.exec(readFileSync(join(h['cpu'] as string, `${name}-busy`, 'cpu.stat'), 'utf8'))?.[1] ?? 0);
    t.ok(throttled > 0, `nr_throttled ${throttled}`);
    await g.kill();
    await g.delete();
  });

  const oomControl = readFileSync(join(h['memory'] as string, 'memory.oom_control'), 'utf8');
  const noOomKill = /oom_kill /.test(oomControl) ? false : 'memory.oom_control has no oom_kill counter on this kernel';
  t.test('a process past the memory limit is OOM-killed and counted', { skip: noOomKill }, async (t) => {
    const g = group(`${name}-oom`);
    const hasSwap = existsSync(join(h['memory'] as string, 'memory.memsw.limit_in_bytes'));
    await g.create({ resources: { memory: hasSwap ? { max: 64 << 20, swapMax: 0 } : { max: 64 << 20 } } });
    const c = track(hog());
    await g.addProcess(c.pid);
    c.proc.stdin?.write('go\n');
    const exit = await c.exited;
    t.equal(exit.signal, 'SIGKILL', 'killed by the OOM killer');
    const s = await g.stats();
    t.ok((s.oomKills ?? 0) >= 1, `oom_kill ${String(s.oomKills)}`);
    t.type(s.memoryFailcnt, 'number', `failcnt ${String(s.memoryFailcnt)} (the memsw counter may be the one that trips)`);
    t.ok((s.memoryPeak ?? 0) >= 60 << 20, `peak ${String(s.memoryPeak)}`);
    await g.delete();
  });

  t.test('freeze and thaw', async (t) => {
    const c = track(sleeper());
    await cg.addProcess(c.pid);
    await cg.freeze();
    t.equal(file('freezer', 'freezer.state'), 'FROZEN');
    await cg.thaw();
    t.equal(file('freezer', 'freezer.state'), 'THAWED');
  });

  t.test('kill empties the group', async (t) => {
    const before = await cg.procs();
    t.ok(before.length >= 1, `${before.length} processes`);
    await cg.kill();
    t.same(await cg.procs(), []);
    for (const c of children) if (before.includes(c.pid)) t.equal((await c.exited).signal, 'SIGKILL', `pid ${c.pid} got SIGKILL`);
    t.equal(file('freezer', 'freezer.state'), 'THAWED', 'left thawed');
  });

  t.test('delete leaves nothing', async (t) => {
    await cg.createThreadedChild('leftover');
    await cg.delete();
    for (const d of cg.paths().dirs) t.notOk(existsSync(d), `removed ${d}`);
    for (const ctrl of Object.keys(h)) t.notOk(existsSync(join(h[ctrl] as string, name)), `nothing in ${ctrl}`);
    await cg.delete();
    t.pass('second delete is a no-op');
  });
}
