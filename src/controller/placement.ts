// Where a VMI may run, as Kubernetes writes it (nodeSelector, affinity, tolerations): the shape the controller reads from a VMI spec for node assignment and the launcher pod.
import type { V1Affinity, V1Toleration } from '@kubernetes/client-node';
import type { VirtualMachineInstance, VMISpec } from '../api/types.js';

/** KubeVirt's placement fields of a VMI spec (the same as a pod's). */
export interface Placement {
  nodeSelector?: Record<string, string>;
  affinity?: V1Affinity;
  tolerations?: V1Toleration[];
}

/** A VMI with its placement fields seen as Kubernetes' own types (a plain VirtualMachineInstance is one). */
export type PlacedVmi = Omit<VirtualMachineInstance, 'spec'> & { spec: VMISpec & Placement };

/** The placement fields of a VMI, the absent ones left out. */
export function placementOf(vmi: PlacedVmi): Placement {
  const { nodeSelector, affinity, tolerations } = vmi.spec;
  return {
    ...(nodeSelector !== undefined ? { nodeSelector } : {}),
    ...(affinity !== undefined ? { affinity } : {}),
    ...(tolerations !== undefined ? { tolerations } : {}),
  };
}
