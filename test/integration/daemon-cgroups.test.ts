// VM cgroups through the real daemon (cgroup v1): QEMU and every thread in the VM's group, limits from the spec, live stats in get, OOM → Failed/OOMKilled, adoption and stray removal across a restart, nothing left after delete.
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, statSync, utimesSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { detectCgroupLayout, type CgroupLayout } from '../../src/cgroups/index.js';
import { memoryOverhead } from '../../src/daemon/vm-resources.js';
import { daemonSkipReason, READY_MARKER, sleep, startTestDaemon, vmiObject, waitFor, type KubeObj, type TestDaemon } from '../support/daemon.js';

const MiB = 1024 * 1024;
const CONTROLLERS = ['cpu', 'cpuacct', 'cpuset', 'memory', 'pids', 'freezer'];

let layout: CgroupLayout | undefined;
let skip: string | false = daemonSkipReason();
if (!skip) {
  try {
    layout = await detectCgroupLayout({ root: '/sys/fs/cgroup', mountinfoPath: '/proc/self/mountinfo' });
    if (layout.mode === 'v2') skip = 'needs cgroup v1 or hybrid hierarchies (this host is pure v2)';
    else if (CONTROLLERS.some((c) => layout?.hierarchies[c] === undefined)) skip = `needs the v1 hierarchies ${CONTROLLERS.join(', ')}`;
  } catch (e) {
    skip = `no cgroup mounts: ${(e as Error).message}`;
  }
}

interface VmStats {
  cgroup: string;
  cpuUsageUsec?: number;
  memoryCurrentBytes?: number;
  memoryPeakBytes?: number;
  memoryLimitBytes?: number;
  oomKills?: number;
  pidsCurrent?: number;
}
type Obj = KubeObj & { status?: KubeObj['status'] & { vmlet?: { stats?: VmStats } } };

const parent = `vmlet-test-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
const dirOf = (c: string, ...rest: string[]): string => path.join(layout!.hierarchies[c]!, parent, ...rest);
const read = (c: string, uid: string, file: string): string => readFileSync(dirOf(c, uid, file), 'utf8').trim();

/** The group of `pid` (or `pid`'s thread) in each v1 hierarchy, from /proc/PID/cgroup. */
function groupsOf(procFile: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of readFileSync(procFile, 'utf8').split('\n')) {
    const [, ctrls, group] = line.split(':');
    if (ctrls === undefined || group === undefined) continue;
    for (const c of ctrls.split(',')) out.set(c, group);
  }
  return out;
}

async function getJson(d: TestDaemon, name: string): Promise<Obj> {
  return JSON.parse(await d.cliOk(['get', 'vmi', name, '-o', 'json'])) as Obj;
}

function vmiYaml(name: string, o: { memory: string; resources?: Record<string, unknown>; annotations?: Record<string, string> }): string {
  const obj = vmiObject(name, { memory: o.memory, graceSeconds: 1 }) as { metadata: Record<string, unknown>; spec: { domain: Record<string, unknown> } };
  if (o.resources) obj.spec.domain.resources = o.resources;
  if (o.annotations) obj.metadata.annotations = o.annotations;
  return YAML.stringify(obj);
}

t.teardown(async () => {
  if (!layout || skip) return;
  // Whatever a failed run left: empty groups below the test parent, then the parent.
  for (const c of new Set(Object.values(layout.hierarchies))) {
    const dir = path.join(c, parent);
    if (!existsSync(dir)) continue;
    for (const e of readdirSync(dir, { withFileTypes: true }))
      if (e.isDirectory())
        try {
          rmdirSync(path.join(dir, e.name));
        } catch {
          /* busy */
        }
    try {
      rmdirSync(dir);
    } catch {
      /* busy */
    }
  }
});

t.test('VM cgroups through the daemon', { skip }, async (t) => {
  const d = await startTestDaemon(t, { config: { cgroupParent: parent } });

  // Both guests boot at once to keep the file short.
  await d.apply(vmiYaml('cg', { memory: '128Mi', resources: { requests: { cpu: '500m' }, limits: { cpu: '1' } } }));
  await d.apply(vmiYaml('oom', { memory: '256Mi', annotations: { 'vmlet.io/memory-overhead': '32Mi' } }));
  await d.apply(vmiYaml('bad', { memory: '128Mi', annotations: { 'vmlet.io/memory-overhead': 'lots' } }));

  await t.test('values that cannot become limits fail the VMI before anything is made', async (t) => {
    const bad = await d.waitPhase('bad', 'Failed', 20_000);
    t.equal(bad.status?.reason, 'InvalidResources', 'reason InvalidResources');
    t.match((bad as { status?: { message?: string } }).status?.message ?? '', /vmlet\.io\/memory-overhead/, 'the message names the annotation');
    t.notOk(existsSync(dirOf('memory', bad.metadata.uid)), 'no group was made');
    t.notOk(existsSync(d.vmRunDir(bad.metadata.uid)), 'no run dir was made');
    await d.cliOk(['delete', 'vmi', 'bad', '--wait']);
  });

  const vmi = await d.waitPhase('cg', 'Running', 60_000);
  const uid = vmi.metadata.uid;
  const qemuPid = vmi.status?.vmlet?.qemuPid;
  t.ok(qemuPid, 'QEMU runs');

  await t.test('QEMU and all its threads are in the VM group', async (t) => {
    const want = `/${parent}/${uid}`;
    const g = groupsOf(`/proc/${qemuPid}/cgroup`);
    for (const c of CONTROLLERS) t.equal(g.get(c), want, `QEMU's ${c} group`);
    const tids = readdirSync(`/proc/${qemuPid}/task`);
    t.ok(tids.length > 1, `QEMU has ${tids.length} threads`);
    const outside = tids.filter((tid) => {
      try {
        const tg = groupsOf(`/proc/${qemuPid}/task/${tid}/cgroup`);
        return CONTROLLERS.some((c) => tg.get(c) !== want);
      } catch {
        return false; // thread ended meanwhile
      }
    });
    t.same(outside, [], 'no QEMU thread outside the group');
    const procs = read('memory', uid, 'cgroup.procs').split('\n').map(Number);
    t.ok(procs.includes(qemuPid!), 'cgroup.procs lists QEMU');
    const launcherPid = vmi.status?.vmlet?.launcherPid;
    t.ok(launcherPid !== undefined && procs.includes(launcherPid), 'and the launcher, which joined before forking QEMU');
  });

  await t.test('the limit files hold what the spec implies', async (t) => {
    const limit = 128 * MiB + memoryOverhead({ guestBytes: 128 * MiB, vcpus: 1, accel: 'tcg' });
    t.equal(Number(read('memory', uid, 'memory.limit_in_bytes')), limit, `memory limit = 128Mi + overhead = ${limit / MiB} MiB`);
    t.equal(read('cpu', uid, 'cpu.shares'), '512', 'requests.cpu 500m → 512 shares');
    t.equal(read('cpu', uid, 'cpu.cfs_period_us'), '100000', 'period 100 ms');
    t.equal(read('cpu', uid, 'cpu.cfs_quota_us'), '100000', 'limits.cpu 1 → quota 100 ms');
    const stats = (await getJson(d, 'cg')).status?.vmlet?.stats;
    t.equal(stats?.memoryLimitBytes, limit, 'status.vmlet.stats.memoryLimitBytes');
    t.equal(stats?.cgroup, `${parent}/${uid}`, 'status.vmlet.stats.cgroup');
  });

  await t.test('stats move when the guest works', async (t) => {
    await d.waitConsole(uid, READY_MARKER, 1, 90_000);
    const sample = async (): Promise<{ at: number; cpu: number; mem: number }> => {
      const s = (await getJson(d, 'cg')).status?.vmlet?.stats;
      return { at: Date.now(), cpu: s?.cpuUsageUsec ?? NaN, mem: s?.memoryCurrentBytes ?? NaN };
    };
    const i0 = await sample();
    t.ok(i0.mem > 64 * MiB, `memoryCurrentBytes ${Math.round(i0.mem / MiB)} MiB`);
    await sleep(2_000);
    const i1 = await sample();
    const idleRate = (i1.cpu - i0.cpu) / ((i1.at - i0.at) * 1000);
    const r = await d.cli(['console', 'cg'], { input: 'while :; do :; done &\n', timeoutMs: 20_000 });
    t.equal(r.code, 0, 'typed a busy loop into the guest');
    await sleep(1_000);
    const b0 = await sample();
    await sleep(2_000);
    const b1 = await sample();
    const busyRate = (b1.cpu - b0.cpu) / ((b1.at - b0.at) * 1000);
    t.comment(`CPU use of the VM group: idle ${idleRate.toFixed(2)}, busy ${busyRate.toFixed(2)} CPUs`);
    t.ok(b1.cpu > i0.cpu, 'cpuUsageUsec grows');
    t.ok(busyRate > idleRate && busyRate > 0.3, `a busy guest uses more CPU (${busyRate.toFixed(2)} > ${idleRate.toFixed(2)})`);
    t.ok(busyRate < 1.15, 'but no more than its 1-CPU quota');
  });

  await t.test('a guest past its memory limit is OOM-killed: Failed/OOMKilled', async (t) => {
    const o = await d.waitPhase('oom', 'Running', 60_000);
    const ouid = o.metadata.uid;
    t.equal(Number(read('memory', ouid, 'memory.limit_in_bytes')), 288 * MiB, 'the annotation sets the overhead: 256Mi + 32Mi');
    await d.waitConsole(ouid, READY_MARKER, 1, 90_000);
    const r = await d.cli(['console', 'oom'], { input: 'eatmem 220 600\n', timeoutMs: 20_000 });
    t.equal(r.code, 0, 'typed eatmem into the guest');
    const failed = await d.waitPhase('oom', 'Failed', 60_000);
    t.equal(failed.status?.reason, 'OOMKilled', 'reason OOMKilled');
    const ev = JSON.parse(await d.cliOk(['events', 'oom', '-o', 'json'])) as { items: Array<{ reason: string; message: string }> };
    const oomEv = ev.items.find((e) => e.reason === 'OOMKilled');
    t.ok(oomEv, `an OOMKilled event (have: ${ev.items.map((e) => e.reason).join(', ')})`);
    t.match(oomEv?.message ?? '', /OOM killer/, 'that says so');
    const stats = (await getJson(d, 'oom')).status?.vmlet?.stats;
    t.ok((stats?.oomKills ?? 0) >= 1, `stats count the OOM kill (${stats?.oomKills})`);
    await d.cliOk(['delete', 'vmi', 'oom', '--wait']);
    for (const c of CONTROLLERS) t.notOk(existsSync(dirOf(c, ouid)), `no ${c} group left after delete`);
  });

  await t.test('a restart adopts the running VM group and removes stray ones', async (t) => {
    const stray = 'stray-0000';
    const young = 'stray-young';
    const old = new Date(Date.now() - 3_600_000);
    for (const c of CONTROLLERS) {
      mkdirSync(dirOf(c, stray), { recursive: true });
      utimesSync(dirOf(c, stray), old, old); // an empty stray is removed only when it is not brand-new
      mkdirSync(dirOf(c, young), { recursive: true });
    }
    await d.kill('SIGKILL');
    await d.restart();
    await waitFor('the stray group to be removed', () => CONTROLLERS.every((c) => !existsSync(dirOf(c, stray))), 15_000);
    t.pass('a group of no VMI is removed at start');
    t.ok(existsSync(dirOf('memory', young)), "a brand-new empty one is left (it may be another daemon's, about to be used)");
    for (const c of CONTROLLERS) rmdirSync(dirOf(c, young));
    const again = await d.waitPhase('cg', 'Running', 30_000);
    t.equal(again.status?.vmlet?.qemuPid, qemuPid, 'the same QEMU is adopted');
    t.equal(groupsOf(`/proc/${qemuPid}/cgroup`).get('memory'), `/${parent}/${uid}`, 'still in its group');
    const stats = (await getJson(d, 'cg')).status?.vmlet?.stats;
    t.ok((stats?.cpuUsageUsec ?? 0) > 0, 'stats still answer after the restart');
  });

  await t.test('nothing is left after delete', async (t) => {
    await d.cliOk(['delete', 'vmi', 'cg', '--wait'], { timeoutMs: 30_000 });
    for (const c of CONTROLLERS) t.notOk(existsSync(dirOf(c, uid)), `no ${c} group left`);
    // The daemon keeps one spare launcher ready (launcher-spare.ts), in a group of its own.
    for (const c of CONTROLLERS)
      t.same(
        readdirSync(dirOf(c)).filter((n) => statIsDir(dirOf(c, n)) && !n.startsWith('.spare-')),
        [],
        `nothing but the spare launcher's group under ${parent} in ${c}`,
      );
    const spares = readdirSync(dirOf('memory')).filter((n) => n.startsWith('.spare-'));
    t.equal(spares.length, 1, 'one spare launcher group');
    const procs = readFileSync(dirOf('memory', spares[0] ?? '-', 'cgroup.procs'), 'utf8')
      .trim()
      .split('\n')
      .filter(Boolean);
    t.equal(procs.length, 1, 'holding one process');
    t.match(readFileSync(`/proc/${procs[0]}/cmdline`, 'utf8').split('\0').join(' '), /vmlet-launch --spare yes/, 'a spare vmlet-launch');
  });
});

function statIsDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}
