// Pure: the status writes of a supervisor (launch, re-adoption, Running, the end, and the core's status edits) as functions of the status they change.
import type { VirtualMachineInstanceStatus } from '../api/types.js';
import type { FinalOutcome, PreparedLaunch, StatusEdit } from './supervisor-core.js';
import { mergeVolumeStatus } from './volume-status.js';
import { withCondition, withInterfaces, withPhase, withRuntime } from './vmi-status.js';
import type { Accel } from '../api/vocabulary.js';

export const SOFTWARE_EMULATION_MESSAGE = 'QEMU runs with software emulation (TCG): expect it to be slow';

/** The SoftwareEmulation condition's reason and message for a launch. */
export function emulationCondition(prepared: Pick<PreparedLaunch, 'emulation'>): { reason: string; message: string } {
  const e = prepared.emulation;
  if (e === undefined) return { reason: 'SoftwareEmulation', message: SOFTWARE_EMULATION_MESSAGE };
  return { reason: e.reason, message: `${SOFTWARE_EMULATION_MESSAGE}; ${e.reason === 'KvmUnusable' ? `KVM is not usable: ${e.message}` : e.message}` };
}

export interface Runtime {
  qemuPid: number | undefined;
  launcherPid: number | undefined;
  runDir: string;
}

/** What a launch records, in one (fsync'd) status write: pids, accel, interfaces, SoftwareEmulation. */
export function launchedStatus(s: VirtualMachineInstanceStatus, prepared: PreparedLaunch, rt: Runtime, now: string): VirtualMachineInstanceStatus {
  let out = withRuntime(s, {
    qemuPid: rt.qemuPid,
    launcherPid: rt.launcherPid,
    runDir: rt.runDir,
    accel: prepared.accel,
    softwareEmulation: prepared.softwareEmulation,
  });
  out = withInterfaces(out, prepared.interfaces);
  if (prepared.volumeStatus !== undefined) out = { ...out, volumeStatus: mergeVolumeStatus(out.volumeStatus, prepared.volumeStatus) };
  if (prepared.softwareEmulation) {
    const c = emulationCondition(prepared);
    out = withCondition(out, 'SoftwareEmulation', true, now, c.reason, c.message);
  }
  return out;
}

/** A QEMU found running after a restart: its pids, and the accel from its command line when known. */
export function adoptedStatus(s: VirtualMachineInstanceStatus, rt: Runtime, accel: Accel | undefined, now: string): VirtualMachineInstanceStatus {
  let out = withRuntime(s, {
    qemuPid: rt.qemuPid,
    launcherPid: rt.launcherPid,
    runDir: rt.runDir,
    ...(accel ? { accel, softwareEmulation: accel === 'tcg' } : {}),
  });
  // The launch recorded why; only a daemon that died before that record leaves it to be guessed here.
  if (accel === 'tcg' && !(s.conditions ?? []).some((c) => c.type === 'SoftwareEmulation')) {
    out = withCondition(out, 'SoftwareEmulation', true, now, 'SoftwareEmulation', SOFTWARE_EMULATION_MESSAGE);
  }
  return out;
}

export function runningStatus(s: VirtualMachineInstanceStatus, paused: boolean, now: string): VirtualMachineInstanceStatus {
  let out = withPhase(s, 'Running', now);
  out = withCondition(out, 'Ready', !paused, now);
  out = paused ? withCondition(out, 'Paused', true, now, 'PausedByUser') : withCondition(out, 'Paused', false, now);
  return out;
}

export function finalStatus(s: VirtualMachineInstanceStatus, o: Pick<FinalOutcome, 'phase' | 'reason' | 'text'>, now: string): VirtualMachineInstanceStatus {
  let out = withPhase(s, o.phase, now, o.reason);
  out = withCondition(out, 'Ready', false, now, o.reason);
  return { ...out, message: o.text };
}

export function applyEdit(s: VirtualMachineInstanceStatus, edit: StatusEdit, now: string): VirtualMachineInstanceStatus {
  switch (edit.kind) {
    case 'paused': {
      const out = withCondition(s, 'Paused', edit.paused, now, edit.paused ? 'PausedByUser' : undefined);
      return withCondition(out, 'Ready', !edit.paused, now);
    }
    case 'agentConnected':
      // The guest's view of its NICs goes into status.interfaces together with the condition (one write).
      return withInterfaces(withCondition(s, 'AgentConnected', true, now), edit.interfaces);
    case 'agentPortClosed':
      return withCondition(s, 'AgentConnected', false, now, 'PortClosed');
    case 'qmpResponsive':
      return edit.responsive
        ? withCondition(s, 'QmpResponsive', true, now, 'QmpReconnected')
        : withCondition(s, 'QmpResponsive', false, now, 'QmpUnresponsive', 'QEMU does not answer QMP');
  }
}

/** Agent conditions are best effort: a failed write is not an error of anyone's request. */
export function editIsBestEffort(edit: StatusEdit): boolean {
  return edit.kind === 'agentConnected' || edit.kind === 'agentPortClosed';
}
