// One VM's cgroup at launch and at its end: create the group with its limits before the launcher joins it, and tell afterwards whether the OOM killer ended QEMU.
import type { Logger } from 'pino';
import { VmletError } from '../errors.js';
import type { VmCgroups } from './vm-cgroup.js';
import type { VmResources } from './vm-resources.js';

/** Creates the VM's group with its limits; returns the directories the launcher joins. A failure removes what was made. */
export async function setUpVmCgroup(o: { cgroups: VmCgroups; uid: string; resources: VmResources; log: Logger }): Promise<string[]> {
  const res = o.resources;
  const cg = o.cgroups.manager(o.uid);
  try {
    const applied = await cg.create({ resources: res.resources });
    o.log.info(
      { cgroup: cg.group, memoryLimitBytes: res.memoryLimitBytes, overheadBytes: res.overheadBytes, cpu: res.resources.cpu, skipped: applied.skipped },
      'VM cgroup created',
    );
  } catch (e) {
    await cg.delete().catch(() => undefined);
    throw new VmletError('VM_CGROUP_FAILED', `cannot set up the VM's cgroup ${cg.group}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  return cg.paths().dirs;
}

/**
 * The early half of a launch: the VM's group without limits, for a launcher started while prepare runs (its cgroup
 * join overlaps prepare). `limitVmCgroup` must follow before QEMU is forked. A failure removes what was made.
 */
export async function createVmCgroup(o: { cgroups: VmCgroups; uid: string }): Promise<string[]> {
  const cg = o.cgroups.manager(o.uid);
  try {
    await cg.create();
  } catch (e) {
    await cg.delete().catch(() => undefined);
    throw new VmletError('VM_CGROUP_FAILED', `cannot create the VM's cgroup ${cg.group}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  return cg.paths().dirs;
}

/** Writes the limits of a group made by `createVmCgroup`. */
export async function limitVmCgroup(o: { cgroups: VmCgroups; uid: string; resources: VmResources; log: Logger }): Promise<void> {
  const res = o.resources;
  const cg = o.cgroups.manager(o.uid);
  try {
    const applied = await cg.apply(res.resources);
    o.log.info(
      { cgroup: cg.group, memoryLimitBytes: res.memoryLimitBytes, overheadBytes: res.overheadBytes, cpu: res.resources.cpu, skipped: applied.skipped },
      'VM cgroup created',
    );
  } catch (e) {
    throw new VmletError('VM_CGROUP_FAILED', `cannot set the limits of the VM's cgroup ${cg.group}: ${e instanceof Error ? e.message : String(e)}`, {
      cause: e,
    });
  }
}

/** True when the VM's group counts an OOM kill (QEMU is by far its largest process); false without VM cgroups or when unreadable. */
export async function oomKilled(cgroups: VmCgroups | undefined, uid: string): Promise<boolean> {
  if (!cgroups) return false;
  try {
    const s = await cgroups.manager(uid).stats();
    return (s.oomKills ?? 0) > 0 || s.underOom === true;
  } catch {
    return false;
  }
}
