// The end of one VMI's supervision: a stop's escalation (ACPI power-down and grace period, `quit`, SIGKILL) and, once QEMU is gone, the final status and the release of what the VMI held.
import fs from 'node:fs/promises';
import type { Logger } from 'pino';
import { isLiveProcessFor, type ExitStatus } from '../qemu/launch.js';
import { readQemuErrors } from '../qemu/qemu-log.js';
import type { QmpClient } from '../qmp/client.js';
import { finalOutcome, mayBeOomKill, oomMessage, withQemuSaid, type CoreState, type ExitReport } from './supervisor-core.js';
import type { SupervisorDeps } from './supervisor-deps.js';
import { finalStatus } from './supervisor-status.js';
import { oomKilled } from './vm-cgroup-setup.js';
import type { VmResources } from './vm-resources.js';
import { describeExit, type FailureReason } from './vmi-state.js';

const QUIT_WAIT_MS = 5_000;
const KILL_WAIT_MS = 5_000;

export interface EscalateInput {
  graceSeconds: number;
  /** The QMP client as it is now; asked again after each wait, since the connection may have dropped. */
  qmp: () => QmpClient | undefined;
  /** Resolves true once the VMI has exited, false when ms pass first. */
  waitExit: (ms: number) => Promise<boolean>;
  /** SIGKILLs QEMU and its launcher. */
  kill: () => Promise<void>;
  /** Even SIGKILL did not end it in time: declare the VMI exited. */
  giveUp: () => Promise<unknown>;
}

/** The stop of a launched VMI: ACPI power-down and the grace period, then `quit`, then SIGKILL. */
export async function escalateStop(i: EscalateInput): Promise<void> {
  const qmp = i.qmp();
  if (qmp && i.graceSeconds > 0) {
    await qmp.execute('system_powerdown').catch(() => undefined);
    if (await i.waitExit(i.graceSeconds * 1000)) return;
  }
  const again = i.qmp();
  if (again) {
    await again.execute('quit').catch(() => undefined);
    if (await i.waitExit(QUIT_WAIT_MS)) return;
  }
  await i.kill();
  if (await i.waitExit(KILL_WAIT_MS)) return;
  await i.giveUp();
}

/** SIGKILLs each pid that is still a live process of this VMI (checked against /proc, so a reused pid is left alone). */
export async function killVmProcesses(pids: readonly (number | undefined)[], uid: string, procRoot: string | undefined): Promise<void> {
  for (const pid of pids) {
    if (pid && (await isLiveProcessFor(pid, uid, procRoot))) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
}

/** Removes the VM's network sandbox; a failure is logged, not thrown (the next daemon start removes it). */
/** Removes the run dir and the VM's cgroup, and forgets the launcher link; only after QEMU is gone. */
export async function cleanupVm(deps: Pick<SupervisorDeps, 'launcherServer' | 'removeRunDir' | 'runDir' | 'cgroups'>, uid: string, log: Logger): Promise<void> {
  deps.launcherServer.detach(uid);
  await (deps.removeRunDir ? deps.removeRunDir() : fs.rm(deps.runDir, { recursive: true, force: true }));
  await deps.cgroups?.remove(uid, log);
}

export async function releaseVmNetwork(deps: Pick<SupervisorDeps, 'releaseNetwork'>, log: Logger): Promise<void> {
  try {
    await deps.releaseNetwork?.();
  } catch (e) {
    log.warn({ err: e }, 'could not remove the network sandbox; the next daemon start removes it');
  }
}

export interface FinalizeInput {
  deps: Pick<SupervisorDeps, 'cgroups' | 'runDir' | 'writeStatus' | 'event' | 'releaseNetwork'>;
  uid: string;
  log: Logger;
  /** The core's state, read when needed. */
  core: () => CoreState;
  /** The VM group's resources, if launch computed them. */
  resources: () => VmResources | undefined;
  exit: ExitStatus | undefined;
  failure: FailureReason | undefined;
  message: string | undefined;
  iso: () => string;
  /** Closes QMP, the guest agent and the serial console. */
  closeConnections: () => void;
}

/** QEMU is gone: writes the final phase once, records it as an event and releases the network; returns the report for `done`. */
export async function finalizeVmi(i: FinalizeInput): Promise<ExitReport> {
  const { deps, exit, log } = i;
  let failure = i.failure;
  let message = i.message;
  if (mayBeOomKill(i.core(), exit, failure) && (await oomKilled(deps.cgroups, i.uid))) {
    failure = 'OOMKilled';
    message = oomMessage(i.resources());
    deps.event('Warning', 'OOMKilled', message);
  }
  i.closeConnections();
  let outcome = finalOutcome(i.core(), exit, failure, message);
  // QEMU's own last words say why far better than a closed socket does.
  if (outcome.phase === 'Failed') outcome = withQemuSaid(outcome, await readQemuErrors(deps.runDir).catch(() => []));
  // The one line that says what happened; the stack was logged at debug level.
  if (outcome.phase === 'Failed') log.warn({ reason: outcome.reason, ...(exit ? { exit: describeExit(exit) } : {}) }, `VMI failed: ${outcome.text}`);
  const final = outcome;
  try {
    await deps.writeStatus((s) => finalStatus(s, final, i.iso()));
  } catch (e) {
    log.warn({ err: e }, 'could not write the final status');
  }
  deps.event(outcome.phase === 'Failed' ? 'Warning' : 'Normal', outcome.phase, `${outcome.reason}: ${outcome.text}`);
  // After the final phase is written (it must be seen at once), before anyone waiting on done
  // (a delete) goes on: the sandbox is gone when the VMI is.
  await releaseVmNetwork(deps, log);
  return outcome.report;
}
