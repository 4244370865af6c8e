// What a supervisor is given: its VMI and run dir, the launcher server, and the callbacks through which it prepares, writes status and records events.
import type { Logger } from 'pino';
import type { VMIInterfaceStatus, VirtualMachineInstance, VirtualMachineInstanceStatus } from '../api/types.js';
import type { LauncherSandbox } from '../qemu/launch.js';
import type { LauncherServer } from '../qemu/launcher-server.js';
import type { QmpClient } from '../qmp/client.js';
import type { GuestNetworkInterface } from '../qmp/guest-agent-types.js';
import type { PreparedLaunch } from './supervisor-core.js';
import type { VmCgroups } from './vm-cgroup.js';
import type { LauncherSpare } from './launcher-spare.js';
import type { Accel } from '../api/vocabulary.js';

/** What `prepare` learns at launch time: in Kubernetes mode the launcher's pid (daemon's pid namespace), whose netns is the pod's. */
export interface PrepareContext {
  launcherPid?: number;
  /** Aborted when the VMI is stopped while it prepares (a prepare that waits gives up). */
  signal?: AbortSignal;
  /** Marks a step of the VMI's start trace (start-trace.ts). */
  trace?: (step: string) => void;
  /** The accelerator is chosen: the VM group's limits can be written while the rest of prepare runs. */
  accelChosen?: (accel: Accel) => void;
}

export interface SupervisorDeps {
  vmi: VirtualMachineInstance;
  runDir: string;
  logger: Logger;
  launcherServer: Pick<LauncherServer, 'link' | 'attach' | 'detach'>;
  launcherBinary: string;
  launcherSocket: string;
  /** Standalone: QEMU's user and private mount namespace, set up by the launcher (qemu-sandbox.ts); absent: QEMU runs as root. */
  launcherSandbox?: LauncherSandbox;
  /** Creates volumes and builds QEMU's argv; throws VmletError for anything the VMI asks that cannot be done. */
  prepare(vmi: VirtualMachineInstance, runDir: string, ctx?: PrepareContext): Promise<PreparedLaunch>;
  /**
   * Kubernetes mode: the launcher is the entrypoint of the VMI's pod and connects on its own (no spawn, no VM
   * cgroup: QEMU lives in the pod's). `prepare` waits for its HELLO, whose peer pid names the pod's netns.
   */
  pod?: { arriveTimeoutMs?: number };
  /** Removes the run dir once QEMU is gone (default: delete `runDir`). */
  removeRunDir?: () => Promise<void>;
  /**
   * Writes the VMI's status (serialised per object by the source). With `after`, the change is prepared now and shows
   * once `after` resolves; it is dropped if `after` rejects.
   */
  writeStatus(mutate: (s: VirtualMachineInstanceStatus) => VirtualMachineInstanceStatus, opts?: { after?: Promise<unknown> }): Promise<void>;
  event(type: 'Normal' | 'Warning', reason: string, message: string): void;
  now?: () => number;
  procRoot?: string;
  /** How long QEMU may take from launcher spawn to QMP ready. */
  startTimeoutMs?: number;
  /** Runs after set-action and before `cont` on a fresh start (e.g. vCPU pinning); a throw fails the launch. */
  beforeCont?: (qmp: QmpClient, qemuPid: number) => Promise<void>;
  /** The per-VM cgroups; absent = QEMU runs in the launcher's cgroups as spawned (config `cgroupParent: ""`). */
  cgroups?: VmCgroups;
  /** Standalone on v1 cgroups: a launcher kept ready in a group of its own, taken by a start that finds it ready. */
  launcherSpare?: Pick<LauncherSpare, 'take'>;
  /** Removes the VM's network sandbox once QEMU is gone (idempotent). */
  releaseNetwork?: () => Promise<void>;
  /** status.interfaces with what the guest agent reports merged in; undefined = leave them. */
  guestInterfaces?: (guest: GuestNetworkInterface[]) => VMIInterfaceStatus[] | undefined;
  /** After a restart: what a re-adopted QEMU still paused from -S waits for before `cont` (its sandbox is whole); a rejection fails it. */
  resumeGate?: () => Promise<void> | undefined;
}
