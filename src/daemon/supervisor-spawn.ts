// Standalone: a VM's cgroup and its vmlet-launch, started while prepare still runs, so that the launcher's cgroup join (an RCU grace period, 5–13 ms on an idle v1 host) overlaps the sandbox's set-up; the limits follow as soon as prepare has chosen the accelerator, before QEMU is forked.
import type { Logger } from 'pino';
import { spawnLauncher, type SpawnedLauncher } from '../qemu/launch.js';
import { startTraces } from './start-trace.js';
import { killVmProcesses } from './supervisor-exit.js';
import type { SupervisorDeps } from './supervisor-deps.js';
import { createVmCgroup, limitVmCgroup, setUpVmCgroup } from './vm-cgroup-setup.js';
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

/** Creates the VM's group and spawns vmlet-launch into it (it joins the netns later, when told with NETNS). */
export async function spawnVmLauncher(o: VmLauncherSpawn): Promise<SpawnedLauncher> {
  const cgroups = o.deps.cgroups;
  const args = {
    launcherBinary: o.deps.launcherBinary,
    uid: o.uid,
    socket: o.deps.launcherSocket,
    runDir: o.deps.runDir,
    ...(o.deps.launcherSandbox ? { sandbox: o.deps.launcherSandbox } : {}),
  };
  // A spare already in a group of its own (renamed to the VM's): its limits follow with limit(), as for an early spawn.
  const spare = o.resources || !cgroups ? undefined : await o.deps.launcherSpare?.take(o.uid, args);
  if (spare) {
    startTraces.mark(o.uid, 'launcher.spare');
    return spare;
  }
  let dirs: string[] = [];
  if (cgroups) {
    dirs = o.resources ? await setUpVmCgroup({ cgroups, uid: o.uid, resources: o.resources, log: o.log }) : await createVmCgroup({ cgroups, uid: o.uid });
  }
  startTraces.mark(o.uid, 'cgroup.ready');
  const spawned = await spawnLauncher({ ...args, cgroups: dirs });
  startTraces.mark(o.uid, 'launcher.spawned');
  return spawned;
}

/** Standalone: the launcher spawned while prepare runs, and its group's limits, written once prepare has chosen the accelerator so that QEMU's argv need not wait for them. */
export class EarlyLauncher {
  readonly pid: Promise<number>;
  #limited: Promise<void> | undefined;
  #unreaped: number | undefined;

  constructor(private readonly o: VmLauncherSpawn & { stopRequested(): boolean }) {
    this.pid = spawnEarly(o, (child) => {
      this.#unreaped = child.pid;
      void child.exited.then(() => (this.#unreaped = undefined));
    });
  }

  /** True when `pid` is this launcher and it was not reaped yet: no other process can hold that pid then, so its HELLO needs no look at procfs. */
  holds(pid: number): boolean {
    return this.#unreaped === pid;
  }

  /** Writes the limits once the group exists; the first call's are the ones written. */
  limit(resources: VmResources): Promise<void> {
    const cgroups = this.o.deps.cgroups;
    this.#limited ??= this.pid
      .then(() => (cgroups ? limitVmCgroup({ cgroups, uid: this.o.uid, resources, log: this.o.log }) : undefined))
      .then(() => startTraces.mark(this.o.uid, 'cgroup.limited'));
    this.#limited.catch(() => undefined);
    return this.#limited;
  }
}

/** `spawnVmLauncher` beside prepare: a launcher that arrives after a stop was asked for is killed at once (the stop found none). */
function spawnEarly(o: VmLauncherSpawn & { stopRequested(): boolean }, spawned: (child: SpawnedLauncher) => void): Promise<number> {
  const early = spawnVmLauncher(o).then((child) => {
    spawned(child);
    if (o.stopRequested()) void killVmProcesses([undefined, child.pid], o.uid, o.deps.procRoot);
    return child.pid;
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
