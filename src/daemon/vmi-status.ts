// Pure edits of a VMI's status: phase with its transition timestamps, conditions, interfaces, and the vmlet runtime block.
import type { Condition, VirtualMachineInstanceStatus, VMIInterfaceStatus, VMIPhase, VmletRuntimeStatus } from '../api/types.js';

export type ConditionType = 'Ready' | 'Paused' | 'SoftwareEmulation' | 'AgentConnected' | 'QmpResponsive' | 'ImageAvailable' | 'QmpPassthrough';

export function withPhase(s: VirtualMachineInstanceStatus, phase: VMIPhase, now: string, reason?: string): VirtualMachineInstanceStatus {
  if (s.phase === phase && (reason === undefined || s.reason === reason)) return s;
  const out: VirtualMachineInstanceStatus = { ...s, phase };
  if (s.phase !== phase) out.phaseTransitionTimestamps = [...(s.phaseTransitionTimestamps ?? []), { phase, phaseTransitionTimestamp: now }];
  if (reason !== undefined) out.reason = reason;
  else delete out.reason;
  return out;
}

export function withCondition(
  s: VirtualMachineInstanceStatus,
  type: ConditionType,
  status: boolean,
  now: string,
  reason?: string,
  message?: string,
): VirtualMachineInstanceStatus {
  const conditions = s.conditions ?? [];
  const prev = conditions.find((c) => c.type === type);
  const value = status ? 'True' : 'False';
  if (prev && prev.status === value && prev.reason === reason && prev.message === message) return s;
  const next: Condition = { type, status: value, lastProbeTime: null, lastTransitionTime: prev?.status === value ? (prev.lastTransitionTime ?? now) : now };
  if (reason !== undefined) next.reason = reason;
  if (message !== undefined) next.message = message;
  return { ...s, conditions: [...conditions.filter((c) => c.type !== type), next] };
}

export function withoutCondition(s: VirtualMachineInstanceStatus, type: ConditionType): VirtualMachineInstanceStatus {
  if (!s.conditions?.some((c) => c.type === type)) return s;
  return { ...s, conditions: s.conditions.filter((c) => c.type !== type) };
}

export function withRuntime(s: VirtualMachineInstanceStatus, patch: Partial<VmletRuntimeStatus>): VirtualMachineInstanceStatus {
  return { ...s, vmlet: { ...s.vmlet, ...patch } };
}

export function conditionTrue(s: VirtualMachineInstanceStatus | undefined, type: ConditionType): boolean {
  return s?.conditions?.some((c) => c.type === type && c.status === 'True') ?? false;
}

/** Replaces status.interfaces; undefined leaves them as they are. */
export function withInterfaces(s: VirtualMachineInstanceStatus, interfaces: VMIInterfaceStatus[] | undefined): VirtualMachineInstanceStatus {
  return interfaces === undefined ? s : { ...s, interfaces };
}
