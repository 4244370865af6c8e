import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { V2Manager, clearCgroupLayoutCache, detectCgroupLayout, nodeCgroupFs, type CgroupFs } from '../../src/cgroups/index.js';
import { busy, hog, isRoot, procCgroups, rand, sleeper, threaded, tids, waitFor, type Child } from '../support/cgroups-procs.js';

const ROOT = process.env['VMLET_CGROUP_ROOT'] ?? '/sys/fs/cgroup';

async function mountOrReason(): Promise<string | { reason: string }> {
  if (!isRoot()) return { reason: 'needs root' };
  clearCgroupLayoutCache();
  try {
    const layout = await detectCgroupLayout({ root: ROOT, mountinfoPath: '/proc/self/mountinfo' });
    if (layout.unified === undefined) return { reason: `no cgroup2 mount under ${ROOT} (mode ${layout.mode})` };
    if (!existsSync(join(layout.unified, 'cgroup.procs'))) return { reason: `${layout.unified} is not usable` };
    return layout.unified;
  } catch (e) {
    return { reason: `no cgroups at ${ROOT}: ${(e as Error).message}` };
  }
}

const found = await mountOrReason();
if (typeof found !== 'string') {
  t.plan(0, `skip: ${found.reason}`);
} else {
  const mount = found;
  const offered = readFileSync(join(mount, 'cgroup.controllers'), 'utf8')
    .split(/\s+/)
    .filter((w) => w !== '');
  const resourceControllers = ['cpu', 'memory', 'pids'];
  const missing = resourceControllers.filter((c) => !offered.includes(c));
  const noResources =
    missing.length > 0
      ? `the cgroup2 mount ${mount} offers no ${missing.join('/')} controller (offered: ${offered.join(' ') || 'none'}; a hybrid host keeps them on v1)`
      : undefined;
  const children: Child[] = [];
  const groups: V2Manager[] = [];
  const track = (c: Child): Child => (children.push(c), c);
  const group = (name: string, fs?: CgroupFs): V2Manager => {
    const m = new V2Manager(mount, name, fs === undefined ? {} : { fs });
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

  t.test(`core v2 mechanics on ${mount} (no controller needed)`, async (t) => {
    await cg.create();
    t.ok(existsSync(join(mount, name, 'cgroup.procs')), 'created');
    const c = track(sleeper());
    await cg.addProcess(c.pid);
    t.equal(procCgroups(c.pid).get(''), `/${name}`, `/proc/${c.pid}/cgroup`);
    t.same(await cg.procs(), [c.pid]);
    await cg.freeze();
    t.match(readFileSync(join(mount, name, 'cgroup.events'), 'utf8'), /frozen 1/);
    t.match(readFileSync(`/proc/${c.pid}/status`, 'utf8'), /State:\s+S/, 'a frozen task sleeps');
    await cg.thaw();
    t.match(readFileSync(join(mount, name, 'cgroup.events'), 'utf8'), /frozen 0/);
    await cg.kill();
    t.equal((await c.exited).signal, 'SIGKILL');
    t.same(await cg.procs(), []);
  });

  t.test('threaded sub-groups hold single threads', async (t) => {
    const vm = group(`${name}-vm`);
    await vm.create();
    const q = track(threaded());
    await vm.addProcess(q.pid);
    t.ok(await waitFor(() => tids(q.pid).length >= 3), 'several threads');
    const [, a, b] = tids(q.pid);
    const v0 = await vm.createThreadedChild('vcpu0');
    const v1 = await vm.createThreadedChild('vcpu1');
    t.equal(readFileSync(join(mount, `${name}-vm`, 'vcpu0', 'cgroup.type'), 'utf8').trim(), 'threaded');
    t.equal(readFileSync(join(mount, `${name}-vm`, 'cgroup.type'), 'utf8').trim(), 'domain threaded', 'the parent became the thread root');
    await v0.addThread(a as number);
    await v1.addThread(b as number);
    t.equal(procCgroups(q.pid, a).get(''), `/${name}-vm/vcpu0`);
    t.equal(procCgroups(q.pid, b).get(''), `/${name}-vm/vcpu1`);
    t.equal(procCgroups(q.pid).get(''), `/${name}-vm`, 'the main thread stays');
    t.same(await v0.threads(), [a]);
    await vm.kill();
    t.equal((await q.exited).signal, 'SIGKILL');
    await vm.delete();
    t.notOk(existsSync(join(mount, `${name}-vm`)), 'removed with its threaded children');
  });

  t.test('CPU usage (cpu.stat usage_usec) grows while a busy process works', async (t) => {
    const g = group(`${name}-busy`);
    await g.create();
    const c = track(busy());
    await g.addProcess(c.pid);
    const before = (await g.stats()).cpuUsageUsec ?? 0;
    await new Promise((r) => setTimeout(r, 500));
    const after = (await g.stats()).cpuUsageUsec ?? 0;
    t.ok(after - before > 100_000, `used ${after - before} µs`);
    await g.kill();
    await g.delete();
  });

  t.test('kill without cgroup.kill (freeze, SIGKILL each, thaw) on a real v2 freezer', async (t) => {
    const hidden: CgroupFs = { ...nodeCgroupFs, exists: async (p) => !p.endsWith('cgroup.kill') && nodeCgroupFs.exists(p) };
    const g = group(`${name}-fallback`, hidden);
    await g.create();
    const a = track(sleeper());
    const b = track(sleeper());
    await g.addProcess(a.pid);
    await g.addProcess(b.pid);
    await g.kill();
    t.equal((await a.exited).signal, 'SIGKILL');
    t.equal((await b.exited).signal, 'SIGKILL');
    t.match(readFileSync(join(mount, `${name}-fallback`, 'cgroup.events'), 'utf8'), /frozen 0/, 'left thawed');
    await g.delete();
  });

  t.test('resources, stats and OOM on v2', { skip: noResources ?? false }, async (t) => {
    const g = group(`${name}-res`);
    await g.create({ resources: { cpu: { weight: 50, quota: 50000 }, memory: { max: 64 << 20, swapMax: 0 }, pids: { max: 32 } } });
    const f = (x: string): string => readFileSync(join(mount, `${name}-res`, x), 'utf8').trim();
    t.equal(f('cpu.weight'), '50');
    t.equal(f('cpu.max'), '50000 100000');
    t.equal(f('memory.max'), String(64 << 20));
    t.equal(f('pids.max'), '32');
    const c = track(hog());
    await g.addProcess(c.pid);
    c.proc.stdin?.write('go\n');
    t.equal((await c.exited).signal, 'SIGKILL');
    const s = await g.stats();
    t.ok((s.oomKills ?? 0) >= 1, `oom_kill ${String(s.oomKills)}`);
    await g.delete();
  });

  t.test('delete leaves nothing', async (t) => {
    await cg.createThreadedChild('leftover');
    await cg.delete();
    t.notOk(existsSync(join(mount, name)));
  });
}
