// Standalone: a VM's cgroup and its vmlet-launch, started while prepare still runs, so that the launcher's cgroup join (an RCU grace period, 5–13 ms on an idle v1 host) overlaps the sandbox's set-up; limits follow before QEMU is forked.
import type { Logger } from 'pino';
import { spawnLauncher } from '../qemu/launch.js';
import { startTraces } from './start-trace.js';
import { killVmProcesses } from './supervisor-exit.js';
import type { SupervisorDeps } from './supervisor-deps.js';
import { createVmCgroup, setUpVmCgroup } from './vm-cgroup-setup.js';
import type { VmResources } from './vm-resources.js';

/** How long a launcher started early waits for QEMU's argv (its own linger, 60 s, is the hard end). */
export const EARLY_HELLO_WAIT_MS = 50_000;

/**
 * Whether the launcher starts while prepare runs. Not in a pod (kubelet starts it), and not for a VMI whose prepare
 * can wait without bound (a containerDisk image not imported yet): such a launcher would give up waiting for argv.
 */
export function spawnsEarly(deps: Pick<SupervisorDeps, 'pod' | 'vmi'>): boolean {
  return !deps.pod && !(deps.vmi.spec.volumes ?? []).some((v) => v.containerDisk !== undefined);
}

export interface VmLauncherSpawn {
  deps: SupervisorDeps;
  uid: string;
  log: Logger;
  /** The group's limits now; absent: the group is made without them and limitVmCgroup follows before argv. */
  resources?: VmResources;
}

/** Creates the VM's group and spawns vmlet-launch into it (it joins the netns later, when told with NETNS); returns its pid. */
export async function spawnVmLauncher(o: VmLauncherSpawn): Promise<number> {
  const cgroups = o.deps.cgroups;
  let dirs: string[] = [];
  if (cgroups) {
    dirs = o.resources ? await setUpVmCgroup({ cgroups, uid: o.uid, resources: o.resources, log: o.log }) : await createVmCgroup({ cgroups, uid: o.uid });
  }
  startTraces.mark(o.uid, 'cgroup.ready');
  const spawned = await spawnLauncher({
    launcherBinary: o.deps.launcherBinary,
    uid: o.uid,
    socket: o.deps.launcherSocket,
    runDir: o.deps.runDir,
    cgroups: dirs,
    ...(o.deps.launcherSandbox ? { sandbox: o.deps.launcherSandbox } : {}),
  });
  startTraces.mark(o.uid, 'launcher.spawned');
  return spawned.pid;
}

/** `spawnVmLauncher` beside prepare: a launcher that arrives after a stop was asked for is killed at once (the stop found none). */
export function spawnEarly(o: VmLauncherSpawn & { stopRequested(): boolean }): Promise<number> {
  const early = spawnVmLauncher(o).then((pid) => {
    if (o.stopRequested()) void killVmProcesses([undefined, pid], o.uid, o.deps.procRoot);
    return pid;
  });
  early.catch(() => undefined);
  return early;
}

/** Prepare failed: the launcher started beside it goes, and so does its group (a failed prepare leaves none behind). */
export async function abandonEarly(early: Promise<number> | undefined, o: { deps: SupervisorDeps; uid: string; log: Logger }): Promise<void> {
  if (!early) return;
  const pid = await early.catch(() => undefined);
  if (pid !== undefined) await killVmProcesses([undefined, pid], o.uid, o.deps.procRoot);
  await o.deps.cgroups?.remove(o.uid, o.log).catch(() => undefined);
}
