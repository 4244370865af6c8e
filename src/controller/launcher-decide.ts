// What the cluster controller does next for one VMI, given its launcher pods: a pure decision, so each rule of the VMI/pod lifecycle is tested without a cluster.
import type { V1Pod } from '@kubernetes/client-node';
import type { VirtualMachineInstance } from '../api/types.js';

export type LauncherStep =
  /** Nothing to do now. */
  | { action: 'none' }
  /** Pick a node and create the launcher pod. */
  | { action: 'assign' }
  /** Delete these launcher pods (the VMI is finished or being deleted, or a pod is extra). */
  | { action: 'deletePods'; pods: string[] }
  /** The VMI's launcher pod is gone or ended while its VMI was not finished: the VMI fails. */
  | { action: 'fail'; reason: string; message: string }
  /** The VMI is being deleted and nothing of it runs any more: release the finalizer. */
  | { action: 'release' };

export interface LauncherDecideInput {
  vmi: Pick<VirtualMachineInstance, 'metadata' | 'status'>;
  /** Launcher pods labelled with this VMI's uid, as the cache shows them. */
  pods: readonly V1Pod[];
  /** A pod this controller created that the cache does not show yet. */
  expectedPod: string | undefined;
  /** The VMI carries the controller's finalizer. */
  hasFinalizer: boolean;
}

const FINAL = new Set(['Succeeded', 'Failed']);

function podEnded(p: V1Pod): boolean {
  return p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed';
}

/** Why a pod ended, in the words users look for (the kubelet's reason, e.g. OutOfmemory, UnexpectedAdmissionError). */
function endReason(p: V1Pod): { reason: string; message: string } {
  const name = p.metadata?.name ?? '?';
  const reason = p.status?.reason ?? (p.status?.phase === 'Succeeded' ? 'PodSucceeded' : 'PodFailed');
  const detail = p.status?.message ?? p.status?.containerStatuses?.find((c) => c.state?.terminated)?.state?.terminated?.reason;
  return { reason, message: `launcher pod ${name} ${p.status?.phase === 'Succeeded' ? 'ended' : 'failed'}${detail ? `: ${detail}` : ''}` };
}

export function decideLauncher(input: LauncherDecideInput): LauncherStep {
  const { vmi, pods, expectedPod } = input;
  const live = pods.filter((p) => !p.metadata?.deletionTimestamp);
  const phase = vmi.status?.phase ?? '';
  if (vmi.metadata.deletionTimestamp) {
    if (live.length > 0) return { action: 'deletePods', pods: live.map((p) => p.metadata!.name!) };
    if (pods.length > 0 || expectedPod !== undefined) return { action: 'none' };
    return input.hasFinalizer ? { action: 'release' } : { action: 'none' };
  }
  if (FINAL.has(phase)) {
    return live.length > 0 ? { action: 'deletePods', pods: live.map((p) => p.metadata!.name!) } : { action: 'none' };
  }
  const ended = pods.find(podEnded);
  if (ended) return { action: 'fail', ...endReason(ended) };
  if (live.length > 1) {
    // Only one launcher may hold a VMI: keep the oldest.
    const born = (p: V1Pod): number => new Date(p.metadata?.creationTimestamp ?? 0).getTime();
    const sorted = [...live].sort((a, b) => born(a) - born(b));
    return { action: 'deletePods', pods: sorted.slice(1).map((p) => p.metadata!.name!) };
  }
  if (live.length === 1 || expectedPod !== undefined) return { action: 'none' };
  if (pods.length > 0) return { action: 'none' }; // a pod is terminating; wait for it to go
  if (vmi.status?.nodeName) {
    return { action: 'fail', reason: 'PodDeleted', message: 'the launcher pod was deleted; its VM is gone' };
  }
  return { action: 'assign' };
}
