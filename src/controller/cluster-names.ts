// The names of cluster mode (docs/cluster-mode.md) that node assignment and the launcher pod share: labels, the KVM device resource, the heartbeat Lease.

/** vmlet's own namespace: heartbeat Leases, the cluster config. */
export const VMLET_NAMESPACE = 'vmlet';
/** Node label set by the node daemon: vmlet runs there and takes VMIs. */
export const SCHEDULABLE_LABEL = 'vmlet.io/schedulable';
/** Node label set by the node daemon: `true` when its KVM probe ran a guest. */
export const KVM_LABEL = 'vmlet.io/kvm';
/** The device plugin's resource: one per VM that runs under KVM. */
export const KVM_RESOURCE = 'devices.vmlet.io/kvm';
/** VMI label that names its node, written with status.nodeName. */
export const NODE_NAME_LABEL = 'vmlet.io/nodeName';
/**
 * The node daemon's finalizer on a VMI (the controller sets it with its own when it assigns the node): released by
 * that node's daemon once QEMU is gone and the node's state of the VMI (DHCP, launcher socket link) is released.
 */
export const NODE_FINALIZER = 'vmlet.io/node-cleanup';

/** Labels of a launcher pod. */
export const LAUNCHER_LABELS = {
  component: 'vmlet.io/component',
  vmiName: 'vmlet.io/vmi-name',
  vmiUid: 'vmlet.io/vmi-uid',
} as const;
/** The value of LAUNCHER_LABELS.component on a launcher pod. */
export const LAUNCHER_COMPONENT = 'launcher';

/** Heartbeat Lease: `vmlet/vmlet-node-<node>`, renewed every 10 s, valid for 40 s. */
export const HEARTBEAT = { prefix: 'vmlet-node-', renewSeconds: 10, durationSeconds: 40 } as const;

/** The heartbeat Lease's name for a node. */
export function heartbeatLeaseName(node: string): string {
  return `${HEARTBEAT.prefix}${node}`;
}
