// Dedicated CPUs through the real daemon (root, cgroup v1 cpuset): each vCPU thread in its own `vcpuN` group on its own host CPU, the other QEMU threads in `emulator`; more vCPUs than host CPUs is refused before anything is made.
import { existsSync, readFileSync, readdirSync, rmdirSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { detectCgroupLayout, parseCpuList, type CgroupLayout } from '../../src/cgroups/index.js';
import { daemonSkipReason, qemuProcessesFor, startTestDaemon, vmiObject } from '../support/daemon.js';

let layout: CgroupLayout | undefined;
let skip: string | false = daemonSkipReason();
const online = existsSync('/sys/devices/system/cpu/online') ? parseCpuList(readFileSync('/sys/devices/system/cpu/online', 'utf8').trim()) : [];
if (!skip) {
  try {
    layout = await detectCgroupLayout({ root: '/sys/fs/cgroup', mountinfoPath: '/proc/self/mountinfo' });
    if (layout.mode === 'v2') skip = 'needs cgroup v1 or hybrid hierarchies (this host is pure v2)';
    else if (layout.hierarchies.cpuset === undefined) skip = 'needs the v1 cpuset hierarchy';
    else if (online.length < 2) skip = 'needs at least 2 online host CPUs';
  } catch (e) {
    skip = `no cgroup mounts: ${(e as Error).message}`;
  }
}

const parent = `vmlet-pin-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
const cpusetDir = (...rest: string[]): string => path.join(layout!.hierarchies.cpuset!, parent, ...rest);

/** The cpuset group of a thread, from /proc/PID/task/TID/cgroup. */
function cpusetGroupOf(pid: number, tid: number): string | undefined {
  for (const line of readFileSync(`/proc/${pid}/task/${tid}/cgroup`, 'utf8').split('\n')) {
    const [, ctrls, group] = line.split(':');
    if (ctrls?.split(',').includes('cpuset')) return group;
  }
  return undefined;
}

function cpusAllowed(pid: number, tid: number): number[] {
  const m = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'));
  return m ? parseCpuList(m[1]!) : [];
}

function vmiYaml(name: string, cores: number): string {
  const obj = vmiObject(name, { memory: '64Mi', graceSeconds: 1 }) as { spec: { domain: Record<string, unknown> } };
  obj.spec.domain.cpu = { sockets: 1, cores, threads: 1, dedicatedCpuPlacement: true };
  return YAML.stringify(obj);
}

t.teardown(async () => {
  if (!layout || skip) return;
  for (const c of new Set(Object.values(layout.hierarchies))) {
    const dir = path.join(c, parent);
    if (!existsSync(dir)) continue;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (!e.isDirectory()) continue;
      const vm = path.join(dir, e.name);
      for (const s of readdirSync(vm, { withFileTypes: true }))
        if (s.isDirectory())
          try {
            rmdirSync(path.join(vm, s.name));
          } catch {
            /* busy */
          }
      try {
        rmdirSync(vm);
      } catch {
        /* busy */
      }
    }
    try {
      rmdirSync(dir);
    } catch {
      /* busy */
    }
  }
});

t.test('dedicated CPU placement through the daemon', { skip }, async (t) => {
  const d = await startTestDaemon(t, { config: { cgroupParent: parent } });
  await d.apply(vmiYaml('one', 1));
  await d.apply(vmiYaml('two', 2));
  await d.apply(vmiYaml('three', online.length + 1));

  await t.test('more vCPUs than host CPUs fails before a group or QEMU exists', async (t) => {
    const v = await d.waitPhase('three', 'Failed', 20_000);
    const msg = (v as { status?: { message?: string } }).status?.message ?? '';
    t.match(msg, /dedicatedCpuPlacement: \d+ dedicated vCPUs need \d+ host CPUs, only \d+ available/, `clear message: ${msg}`);
    t.notOk(existsSync(cpusetDir(v.metadata.uid)), 'no cgroup was made');
    t.same(qemuProcessesFor(v.metadata.uid), [], 'no QEMU was started');
  });

  for (const [name, vcpus] of [
    ['one', 1],
    ['two', 2],
  ] as const) {
    await t.test(`${vcpus} vCPU(s): each vCPU thread in vcpuN on its own CPU, the rest in emulator`, async (t) => {
      const v = await d.waitPhase(name, 'Running', 60_000);
      const uid = v.metadata.uid;
      const pid = v.status?.vmlet?.qemuPid;
      t.ok(pid, 'QEMU runs');
      const threads = readFileSync(path.join(cpusetDir(uid), 'vcpu0', 'tasks'), 'utf8');
      t.ok(threads.trim().length > 0, 'vcpu0 holds a thread');
      const host = online.slice().sort((a, b) => a - b);
      const vcpuTids = new Set<number>();
      for (let i = 0; i < vcpus; i++) {
        const dir = cpusetDir(uid, `vcpu${i}`);
        t.equal(readFileSync(path.join(dir, 'cpuset.cpus'), 'utf8').trim(), String(host[i]), `vcpu${i} cpuset.cpus = ${host[i]}`);
        const tids = readFileSync(path.join(dir, 'tasks'), 'utf8').trim().split('\n').filter(Boolean).map(Number);
        t.equal(tids.length, 1, `vcpu${i} holds one thread`);
        const tid = tids[0]!;
        vcpuTids.add(tid);
        t.equal(cpusetGroupOf(pid!, tid), `/${parent}/${uid}/vcpu${i}`, `/proc/${pid}/task/${tid}/cgroup names vcpu${i}`);
        t.same(cpusAllowed(pid!, tid), [host[i]], `Cpus_allowed_list of the vCPU ${i} thread is ${host[i]}`);
      }
      const emuCpus = host.length > vcpus ? host.slice(vcpus) : [host[0]!];
      t.same(parseCpuList(readFileSync(cpusetDir(uid, 'emulator', 'cpuset.cpus'), 'utf8').trim()), emuCpus, `emulator cpuset = ${emuCpus.join(',')}`);
      const others = readdirSync(`/proc/${pid}/task`)
        .map(Number)
        .filter((tid) => !vcpuTids.has(tid));
      t.ok(others.length > 0, `${others.length} emulator threads`);
      for (const tid of others) {
        let g: string | undefined;
        try {
          g = cpusetGroupOf(pid!, tid);
        } catch {
          continue;
        } // ended meanwhile
        t.equal(g, `/${parent}/${uid}/emulator`, `thread ${tid} in emulator`);
        t.same(cpusAllowed(pid!, tid), emuCpus, `thread ${tid} may run on ${emuCpus.join(',')}`);
      }
    });
  }

  await t.test('delete removes the sub-groups with the VM group', async (t) => {
    const uids = await Promise.all(['one', 'two', 'three'].map(async (n) => (await d.vmi(n))!.metadata.uid));
    for (const n of ['one', 'two', 'three']) await d.cliOk(['delete', 'vmi', n, '--wait'], { timeoutMs: 30_000 });
    for (const uid of uids) t.notOk(existsSync(cpusetDir(uid)), `no cpuset group left for ${uid}`);
  });
});
