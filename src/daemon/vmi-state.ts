// The supervisor's lifecycle as data: its states, the transitions allowed between them, and the VMI phase each one shows.
import type { ExitStatus } from '../qemu/launch.js';
import type { VmiPhase } from '../api/vocabulary.js';

export type SupervisorState =
  | 'New' // created, nothing done yet
  | 'Preparing' // run dir, volumes, argv
  | 'Launching' // launcher spawned, waiting for QEMU's pid
  | 'Starting' // QEMU paused (-S): QMP negotiation, set-action, cont
  | 'Reattaching' // after a daemon restart: checking and reconnecting to a QEMU that runs
  | 'Running'
  | 'Stopping' // ACPI power-down, grace period, quit, SIGKILL
  | 'Exited'; // QEMU is gone; final

const allowed: Record<SupervisorState, readonly SupervisorState[]> = {
  New: ['Preparing', 'Reattaching', 'Exited'],
  // Reattaching: in a pod, the launcher that calls in may already run the QEMU a dead daemon handed it.
  Preparing: ['Launching', 'Reattaching', 'Stopping', 'Exited'],
  Launching: ['Starting', 'Stopping', 'Exited'],
  Starting: ['Running', 'Stopping', 'Exited'],
  Reattaching: ['Starting', 'Running', 'Stopping', 'Exited'],
  Running: ['Stopping', 'Exited'],
  Stopping: ['Exited'],
  Exited: [],
};

/** Every state, in the order a VMI goes through them. */
export const SUPERVISOR_STATES = Object.keys(allowed) as readonly SupervisorState[];

export function canTransition(from: SupervisorState, to: SupervisorState): boolean {
  return allowed[from].includes(to);
}

export type { VmiPhase } from '../api/vocabulary.js';

export type FailureReason =
  | 'QemuCrashed' // QEMU exited non-zero or by a signal nobody asked for
  | 'LauncherLost' // vmlet-launch died; QEMU dies with it (PDEATHSIG)
  | 'LaunchFailed' // QEMU never came up
  | 'Lost' // after a restart, neither launcher nor QEMU nor an exit status was found
  | 'OOMKilled' // QEMU was killed by the OOM killer: the VM's cgroup hit its memory limit
  | 'InvalidResources' // CPU/memory values of the VMI that cannot become cgroup limits
  | 'KvmUnavailable';

/** The final phase for an exit: a requested stop or a guest power-off is success, anything else failure. */
export function finalPhase(exit: ExitStatus | undefined, stopRequested: boolean, guestShutdown: boolean): VmiPhase {
  if (stopRequested) return 'Succeeded';
  if (exit?.kind === 'exit' && exit.code === 0) return 'Succeeded';
  if (guestShutdown && exit?.kind === 'exit') return 'Succeeded';
  return 'Failed';
}

export function describeExit(exit: ExitStatus | undefined): string {
  if (!exit) return 'unknown exit';
  return exit.kind === 'exit' ? `exit code ${exit.code}` : `signal ${exit.signal}`;
}
