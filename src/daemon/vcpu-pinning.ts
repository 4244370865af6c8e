// Dedicated CPU placement (`domain.cpu.dedicatedCpuPlacement`): each vCPU thread in a threaded sub-group `vcpuN` on a host CPU of its own, QEMU's other threads in `emulator` on the CPUs left over.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { formatCpuList, parseCpuList, planDedicatedCpus, type CgroupManager } from '../cgroups/index.js';
import { VmletError } from '../errors.js';
import type { QmpClient } from '../qmp/client.js';
import type { VirtualMachineInstance } from '../api/types.js';
import type { VmCgroups } from './vm-cgroup.js';
import { DEFAULT_PROC_ROOT } from '../api/vocabulary.js';

export interface VcpuThread {
  index: number;
  tid: number;
}

export interface PinningPlan {
  /** One entry per vCPU, in vCPU index order: its thread, host CPU and sub-group name. */
  vcpus: { index: number; tid: number; cpu: number; group: string }[];
  /** Host CPUs of the `emulator` sub-group. */
  emulatorCpus: number[];
  /** True when no host CPU was left over and the emulator threads share vCPU 0's CPU. */
  emulatorShared: boolean;
}

/** True when the VMI asks for dedicated CPUs. */
export function wantsDedicatedCpus(vmi: VirtualMachineInstance): boolean {
  return vmi.spec.domain.cpu?.dedicatedCpuPlacement === true;
}

/** The VMI's vCPU count (sockets × cores × threads; the API has defaulted them). */
export function vcpuCount(vmi: Pick<VirtualMachineInstance, 'spec'>): number {
  const c = vmi.spec.domain.cpu ?? {};
  return (c.sockets ?? 1) * (c.cores ?? 1) * (c.threads ?? 1);
}

/** `query-cpus-fast` → vCPU threads sorted by index; a malformed answer is VCPU_PINNING_FAILED. */
export function vcpuThreads(cpus: readonly { 'cpu-index': number; 'thread-id': number }[]): VcpuThread[] {
  const out = cpus.map((c) => ({ index: c['cpu-index'], tid: c['thread-id'] }));
  for (const v of out) {
    if (!Number.isSafeInteger(v.index) || v.index < 0 || !Number.isSafeInteger(v.tid) || v.tid <= 0) {
      throw new VmletError('VCPU_PINNING_FAILED', `query-cpus-fast returned a bad vCPU entry (cpu-index ${String(v.index)}, thread-id ${String(v.tid)})`);
    }
  }
  if (new Set(out.map((v) => v.tid)).size !== out.length)
    throw new VmletError('VCPU_PINNING_FAILED', 'query-cpus-fast returned one thread for several vCPUs (TCG without MTTCG?)');
  return out.sort((a, b) => a.index - b.index);
}

/**
 * Pure: vCPU i gets the i-th lowest host CPU (`planDedicatedCpus`, which throws
 * CGROUP_CPUSET_TOO_SMALL), the emulator gets every host CPU no vCPU got, or vCPU 0's CPU when
 * none is left.
 */
export function planPinning(vcpus: readonly VcpuThread[], hostCpus: readonly number[]): PinningPlan {
  const plan = planDedicatedCpus(vcpus.length, hostCpus);
  const used = new Set(plan.vcpuToCpu);
  const rest = [...new Set(hostCpus)].filter((c) => !used.has(c)).sort((a, b) => a - b);
  const shared = rest.length === 0;
  return {
    vcpus: vcpus.map((v, i) => ({ index: v.index, tid: v.tid, cpu: plan.vcpuToCpu[i]!, group: `vcpu${v.index}` })),
    emulatorCpus: shared ? [plan.vcpuToCpu[0]!] : rest,
    emulatorShared: shared,
  };
}

/** Pure: QEMU's threads that are no vCPU thread. */
export function emulatorThreads(allTids: readonly number[], vcpus: readonly VcpuThread[]): number[] {
  const v = new Set(vcpus.map((x) => x.tid));
  return allTids.filter((t) => !v.has(t));
}

/** Host CPUs from a kernel CPU list file (e.g. /sys/devices/system/cpu/online or a cpuset.cpus). */
export async function readCpuListFile(file: string): Promise<number[]> {
  return parseCpuList((await fs.readFile(file, 'utf8')).trim());
}

/** The CPUs a VM's group may use: its cpuset (v1 `cpuset.cpus`, v2 `cpuset.cpus.effective`), undefined when unreadable. */
export async function groupCpus(cg: CgroupManager): Promise<number[] | undefined> {
  const p = cg.paths();
  const file =
    p.version === 2
      ? path.join(p.dirs[0] ?? '', 'cpuset.cpus.effective')
      : p.byController.cpuset === undefined
        ? undefined
        : path.join(p.byController.cpuset, 'cpuset.cpus');
  if (file === undefined) return undefined;
  const cpus = await readCpuListFile(file).catch(() => [] as number[]);
  return cpus.length > 0 ? cpus : undefined;
}

export interface PinOptions {
  cgroup: CgroupManager;
  qmp: Pick<QmpClient, 'execute'>;
  qemuPid: number;
  /** Host CPUs to place the VM on (the VM group's cpuset, or the online CPUs). */
  hostCpus: readonly number[];
  procRoot?: string;
  log?: Logger;
}

/**
 * Moves the (paused) QEMU's threads into per-vCPU sub-groups and `emulator`. The cgroup cpuset
 * alone confines the threads (the kernel narrows each thread's affinity mask to its cpuset), so
 * no sched_setaffinity is done. Threads that QEMU starts later inherit the group of the thread
 * that starts them (usually the main thread, i.e. `emulator`).
 */
export async function pinVcpus(o: PinOptions): Promise<PinningPlan> {
  const threads = vcpuThreads(await o.qmp.execute('query-cpus-fast'));
  const plan = planPinning(threads, o.hostCpus);
  const procRoot = o.procRoot ?? DEFAULT_PROC_ROOT;
  try {
    for (const v of plan.vcpus) {
      const child = await o.cgroup.createThreadedChild(v.group, { resources: { cpu: { cpus: String(v.cpu) } } });
      await child.addThread(v.tid);
    }
    const emu = await o.cgroup.createThreadedChild('emulator', { resources: { cpu: { cpus: formatCpuList(plan.emulatorCpus) } } });
    const tids = (await fs.readdir(path.join(procRoot, String(o.qemuPid), 'task'))).filter((t) => /^\d+$/.test(t)).map(Number);
    for (const tid of emulatorThreads(tids, threads)) {
      await emu.addThread(tid).catch((e: unknown) => {
        // A short-lived worker thread may be gone already.
        if (!(e instanceof VmletError && e.errno === 'ESRCH')) throw e;
      });
    }
  } catch (e) {
    if (e instanceof VmletError && e.code === 'VCPU_PINNING_FAILED') throw e;
    throw new VmletError('VCPU_PINNING_FAILED', `could not place the vCPU threads in ${o.cgroup.group}`, { cause: e });
  }
  o.log?.info(
    {
      vcpus: plan.vcpus.map((v) => ({ vcpu: v.index, tid: v.tid, cpu: v.cpu })),
      emulatorCpus: formatCpuList(plan.emulatorCpus),
      emulatorShared: plan.emulatorShared,
    },
    'vCPUs pinned',
  );
  return plan;
}

export interface DedicatedCpuHost {
  /** The VM cgroups, when this daemon makes them (pinning needs them). */
  cgroups: Pick<VmCgroups, 'manager'> | undefined;
  onlineCpus: () => Promise<number[]>;
}

/**
 * With `dedicatedCpuPlacement`, `prepare` first checks that the host has a CPU per vCPU
 * (CGROUP_CPUSET_TOO_SMALL; or VCPU_PINNING_UNAVAILABLE without VM cgroups), so such a VMI
 * fails before its volumes, cgroup or QEMU exist (the supervisor has made only the empty run dir).
 */
export function withDedicatedCpuCheck<A extends unknown[], R>(
  vmi: VirtualMachineInstance,
  prepare: (v: VirtualMachineInstance, ...rest: A) => Promise<R>,
  host: DedicatedCpuHost,
): (v: VirtualMachineInstance, ...rest: A) => Promise<R> {
  if (!wantsDedicatedCpus(vmi)) return prepare;
  return async (v, ...rest) => {
    if (!host.cgroups) {
      throw new VmletError('VCPU_PINNING_UNAVAILABLE', 'domain.cpu.dedicatedCpuPlacement needs VM cgroups, but this daemon runs with cgroupParent ""');
    }
    try {
      planDedicatedCpus(vcpuCount(v), await host.onlineCpus());
    } catch (e) {
      if (e instanceof VmletError) throw new VmletError(e.code, `domain.cpu.dedicatedCpuPlacement: ${e.message}`, { cause: e });
      throw e;
    }
    return prepare(v, ...rest);
  };
}

/** The `beforeCont` hook that pins vCPUs (only with cgroups and `dedicatedCpuPlacement`). */
export function dedicatedCpuPinning(
  vmi: VirtualMachineInstance,
  host: DedicatedCpuHost & { procRoot: string; log: Logger },
): { beforeCont?: (qmp: QmpClient, qemuPid: number) => Promise<void> } {
  const cgroups = host.cgroups;
  if (!cgroups || !wantsDedicatedCpus(vmi)) return {};
  const uid = vmi.metadata.uid!;
  return {
    beforeCont: async (qmp, qemuPid) => {
      const cgroup = cgroups.manager(uid);
      // The VM group's cpuset (inherited from the parent) is what the threads may use; the online CPUs if unreadable.
      const hostCpus = (await groupCpus(cgroup)) ?? (await host.onlineCpus());
      await pinVcpus({ cgroup, qmp, qemuPid, hostCpus, procRoot: host.procRoot, log: host.log });
    },
  };
}
