// KubeVirt-shaped network input types (interfaces, networks) and the validated plan that the net library works from.

/** `spec.domain.devices.interfaces[].ports[]` (KubeVirt): a port forwarded to the guest (masquerade only). */
export interface InterfacePortSpec {
  name?: string;
  port: number;
  /** TCP (default) or UDP */
  protocol?: string;
}

/** `spec.domain.devices.interfaces[]` as KubeVirt spells it; exactly one binding key must be present. */
export interface InterfaceSpec {
  name: string;
  masquerade?: Record<string, unknown>;
  bridge?: Record<string, unknown>;
  /** bindings vmlet does not implement; listed so they can be refused by name */
  slirp?: Record<string, unknown>;
  sriov?: Record<string, unknown>;
  macvtap?: Record<string, unknown>;
  passt?: Record<string, unknown>;
  binding?: Record<string, unknown>;
  macAddress?: string;
  /** virtio (default), e1000, e1000e, rtl8139 */
  model?: string;
  ports?: InterfacePortSpec[];
}

/** `spec.networks[]`: only the pod network is supported (multus is refused). */
export interface NetworkSpec {
  name: string;
  pod?: { vmNetworkCIDR?: string };
  multus?: Record<string, unknown>;
}

export type BindingKind = 'masquerade' | 'bridge';
export type NicModel = 'virtio' | 'e1000' | 'e1000e' | 'rtl8139';

export interface PortForward {
  port: number;
  protocol: 'tcp' | 'udp';
}

export interface SandboxNames {
  /** 8 hex characters derived from the uid */
  id: string;
  /** network namespace name (a file under /run/netns) */
  netns: string;
  /** host end of the veth pair, enslaved to the host bridge */
  hostVeth: string;
}

export interface PlannedInterface {
  /** the interface name from the spec */
  name: string;
  /** 0-based position: QEMU ids are net<index> */
  index: number;
  binding: BindingKind;
  mac: string;
  model: NicModel;
  /** masquerade: null forwards every port, otherwise only these; always null for bridge */
  ports: PortForward[] | null;
  /** tap device inside the sandbox */
  tap: string;
  /** bridge inside the sandbox joining the tap (and eth0 for the bridge binding) */
  bridge: string;
  /** the sandbox's uplink interface (the veth peer, or the pod's CNI interface) */
  podInterface: string;
  /** tap queues (1 = no multiqueue) */
  queues: number;
  /** masquerade only: the guest-side network, gateway (on the sandbox bridge) and guest address */
  guestNetwork: { cidr: string; gateway: string; address: string; prefix: number } | null;
}

export interface NetworkPlan {
  uid: string;
  names: SandboxNames;
  interfaces: PlannedInterface[];
}

/** A route as `ip -json route` prints it (the fields vmlet reads). */
export interface IpRoute {
  dst: string;
  dev?: string;
  gateway?: string;
  protocol?: string;
  scope?: string;
  type?: string;
  prefsrc?: string;
}

/** One `ip` invocation's arguments (after `ip`, or after `ip -n NETNS`); joined into `ip -batch` lines. */
export type IpCommand = string[];

/** What vmlet remembers of one interface of a sandbox (in the IPAM file, so it survives restarts). */
export interface LeaseInterface {
  name: string;
  binding: BindingKind;
  mac: string;
  index: number;
  model: NicModel;
  queues: number;
  /** tap and bridge inside the sandbox */
  tap: string;
  bridge: string;
  /** the address the guest gets by DHCP, its prefix and router */
  guestIp: string;
  prefix: number;
  router: string | null;
  /** the DHCP server's address on the sandbox bridge */
  serverIp: string;
  mtu: number;
  /** set once the guest took its address from the DHCP server */
  dhcp?: { acquiredAt: string; expiresAt: string; clientMac: string };
}

/** One uid's allocation: its sandbox address on the host bridge and the objects made for it. */
export interface Lease {
  uid: string;
  /** the sandbox's address on the host bridge */
  address: string;
  allocatedAt: string;
  netns?: string;
  hostVeth?: string;
  /** the VMI name, handed out as the DHCP hostname */
  hostname?: string;
  interfaces?: LeaseInterface[];
}
