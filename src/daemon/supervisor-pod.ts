// Kubernetes mode of a supervisor and the node reconciler: the launcher is the pod's entrypoint (it calls in and, after a restart, says what runs), what the reconciler needs of the launcher pods, and a running QEMU's accelerator.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Accel } from '../api/vocabulary.js';
import { VmletError } from '../errors.js';
import { accelFromCmdline } from '../qemu/argv.js';
import type { ExitStatus } from '../qemu/launch.js';
import type { LauncherLink } from '../qemu/launcher-server.js';
import type { VMIInterfaceStatus, VirtualMachineInstance } from '../api/types.js';

/** How long a HELLO waits for `prepare` while the pod's network is built. */
export const POD_HELLO_WAIT_MS = 60_000;
/** How long the pod's launcher may take to call (image pull, container start). */
export const POD_ARRIVE_MS = 10 * 60_000;
/** After a daemon restart: how long the pod's launcher may take to reconnect (it retries every ≤ 2 s). */
export const POD_RECONNECT_MS = 10_000;

/** What the launcher said in its HELLO (its pid in the daemon's namespace, …); LAUNCHER_TIMEOUT after `ms`. */
export async function podLauncherArrival<T>(arrived: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new VmletError('LAUNCHER_TIMEOUT', `the launcher of the VMI's pod did not connect within ${Math.round(ms / 1000)} s`)), ms);
  });
  try {
    return await Promise.race([arrived, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export interface PodLauncherView {
  launcherPid: number | undefined;
  qemuPid: number | undefined;
  launcherAlive: boolean;
  qemuAlive: boolean;
  exit: ExitStatus | undefined;
}

/** What runs in the pod, from the launcher's reconnect (the run dir's pids are the pod's, not the daemon's). */
export async function inspectPodLauncher(link: LauncherLink, waitMs = POD_RECONNECT_MS): Promise<PodLauncherView> {
  if (!link.connected) await link.waitFor('hello', waitMs).catch(() => undefined);
  const st = link.connected ? link.state : undefined;
  return {
    launcherPid: link.connected ? link.peer?.pid : undefined,
    qemuPid: st?.kind === 'running' ? st.qemuPid : undefined,
    launcherAlive: link.connected,
    qemuAlive: st?.kind === 'running',
    exit: st?.kind === 'exited' ? st.status : undefined,
  };
}

/** The accelerator a running QEMU was started with, from its command line (`-accel X,…`, or `-machine …,accel=X` before tb-size was set). */
export async function accelOfProcess(pid: number, procRoot: string): Promise<Accel | undefined> {
  const cmdline = await fs.readFile(path.join(procRoot, String(pid), 'cmdline'), 'utf8').catch(() => '');
  return accelFromCmdline(cmdline.split('\0'));
}

/** What the node reconciler needs of the launcher pods on its node (Kubernetes mode). */
export interface PodLaunchers {
  /** The uid of the VMI's launcher pod on this node, once known. */
  podOf(vmiUid: string): string | undefined;
  /** Listens on the pod's launcher socket; resolves with the pod's run dir as the daemon reaches it. */
  open(podUid: string, vmiUid: string): Promise<string>;
  /** Stops listening and forgets the pod's run dir. */
  close(podUid: string): Promise<void>;
  /** Builds nothing: serves DHCP again for a re-adopted VM (its launcher's pid names the pod). */
  adoptNetwork?(vmi: VirtualMachineInstance, launcherPid: number): Promise<VMIInterfaceStatus[]>;
  releaseNetwork?(vmiUid: string): Promise<void>;
}
