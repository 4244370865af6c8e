// Pure planning of a VM's binding inside a Kubernetes pod's netns: what CNI made (from `ip -json`), the record vmlet leaves on its bridge, and the commands that build or rebuild the binding.
import { VmletError } from '../errors.js';
import { planBinding, type BindingPlan, type PodInterfaceState } from './commands.js';
import { isIPv4 } from './ipv4.js';
import { normalizeMac } from './mac.js';
import { checkIfName } from './names.js';
import type { InterfaceStatus } from './sandbox-types.js';
import type { InterfaceSpec, IpCommand, IpRoute, NetworkPlan, PlannedInterface } from './types.js';

/** A link as `ip -json -details addr show` prints it (the fields read here). */
export interface IpLink {
  ifname: string;
  address?: string;
  mtu?: number;
  ifalias?: string;
  master?: string;
  addr_info?: { family: string; local: string; prefixlen: number; scope?: string }[];
}

/**
 * What vmlet writes on its bridge in the pod (as the link's alias, which only root in the pod's
 * netns can change): the pod interface as CNI made it and the guest's MAC. It lets a restarted
 * daemon, or a second attach, rebuild the binding after the bridge binding took eth0's address.
 */
export interface PodRecord {
  address: string;
  prefix: number;
  gateway: string | null;
  mtu: number;
  guestMac: string;
}

const RECORD_TAG = 'vmlet1';

export function formatPodRecord(r: PodRecord): string {
  return [RECORD_TAG, r.address, String(r.prefix), r.gateway ?? '-', String(r.mtu), normalizeMac(r.guestMac)].join('/');
}

/** The record from a bridge alias, or null when the alias is not one of vmlet's. */
export function parsePodRecord(alias: string | undefined): PodRecord | null {
  const f = alias?.split('/');
  if (!f || f.length !== 6 || f[0] !== RECORD_TAG) return null;
  const [, address, prefix, gateway, mtu, mac] = f as [string, string, string, string, string, string];
  const p = Number(prefix);
  const m = Number(mtu);
  if (!isIPv4(address) || !Number.isInteger(p) || p < 0 || p > 32 || !Number.isInteger(m) || m < 68) return null;
  if (gateway !== '-' && !isIPv4(gateway)) return null;
  try {
    return { address, prefix: p, gateway: gateway === '-' ? null : gateway, mtu: m, guestMac: normalizeMac(mac) };
  } catch {
    return null;
  }
}

/** The pod's netns as found, in the terms the plan needs. */
export interface PodState {
  /** the CNI interface (eth0); null when there is none */
  pod: { address: string | null; prefix: number | null; mtu: number; mac: string | null; master: string | null } | null;
  /** the default route's gateway on the pod interface */
  gateway: string | null;
  /** vmlet's bridge (k6t-eth0) exists; its record when the alias is vmlet's */
  bridge: { record: PodRecord | null } | null;
  tapExists: boolean;
}

/** Reads the pod's netns from `ip -json -details addr show` and `ip -json route show default` run inside it. */
export function readPodState(links: readonly IpLink[], routes: readonly IpRoute[], iface: Pick<PlannedInterface, 'podInterface' | 'bridge' | 'tap'>): PodState {
  const eth = links.find((l) => l.ifname === iface.podInterface);
  const inet = eth?.addr_info?.find((a) => a.family === 'inet' && (a.scope ?? 'global') === 'global');
  const br = links.find((l) => l.ifname === iface.bridge);
  const def = routes.find((r) => r.dst === 'default' && (r.dev === undefined || r.dev === iface.podInterface) && r.gateway !== undefined);
  return {
    pod: eth
      ? { address: inet?.local ?? null, prefix: inet?.prefixlen ?? null, mtu: eth.mtu ?? 1500, mac: eth.address ?? null, master: eth.master ?? null }
      : null,
    gateway: def?.gateway ?? null,
    bridge: br ? { record: parsePodRecord(br.ifalias) } : null,
    tapExists: links.some((l) => l.ifname === iface.tap),
  };
}

export interface PodAttachPlan {
  /** the planned interface, its `mac` being the guest's (eth0's own in the bridge binding without macAddress) */
  iface: PlannedInterface;
  record: PodRecord;
  binding: BindingPlan;
  /** inside the pod's netns, in order: removal of an earlier attach's links, the MAC swap, the binding, the record */
  ip: IpCommand[];
  /** the link that needs net.ipv4.conf.<link>.route_localnet=1 (loopback to the guest), or null */
  routeLocalnet: string | null;
}

function conflict(msg: string): never {
  throw new VmletError('POD_NET_CONFLICT', msg);
}

/**
 * Plans the binding of the VMI's one pod interface in the pod's netns. A bridge of vmlet's (its
 * record in the alias) is an earlier attach: it and the tap are removed and the binding rebuilt from
 * the record. A bridge or tap of that name without vmlet's record is refused (POD_NET_CONFLICT).
 * bridge binding without macAddress: as in KubeVirt the guest takes eth0's MAC and eth0 gets the
 * derived one, so a CNI that pinned the pod's MAC still sees it. `guests.allowMetadata` leaves the guest
 * filter's metadata rule out (config `network.allowMetadata`, as in standalone sandboxes).
 */
export function planPodAttach(
  plan: NetworkPlan,
  specs: readonly InterfaceSpec[] | undefined,
  state: PodState,
  nftTable: string,
  guests: { allowMetadata?: boolean } = {},
): PodAttachPlan {
  if (plan.interfaces.length !== 1) throw new VmletError('NET_INVALID_PLAN', `a pod network binds one interface, not ${plan.interfaces.length}`);
  const planned = plan.interfaces[0]!;
  const eth = checkIfName(planned.podInterface);
  const br = checkIfName(planned.bridge, 'sandbox bridge');
  const tap = checkIfName(planned.tap, 'tap name');
  if (state.bridge && !state.bridge.record) conflict(`the pod's netns already has a link ${br} that vmlet did not make`);
  if (!state.bridge && state.tapExists) conflict(`the pod's netns already has a link ${tap} that vmlet did not make`);
  if (!state.pod) throw new VmletError('POD_NET_NO_ADDRESS', `the pod's netns has no ${eth}: CNI did not set up the pod network`);
  let record = state.bridge?.record ?? null;
  if (!record) {
    const { address, prefix, mac, mtu } = state.pod;
    if (address === null || prefix === null) throw new VmletError('POD_NET_NO_ADDRESS', `${eth} in the pod's netns has no IPv4 address`);
    const keepsPodMac = planned.binding === 'bridge' && specs?.find((s) => s.name === planned.name)?.macAddress === undefined && mac !== null;
    record = { address, prefix, gateway: state.gateway, mtu, guestMac: keepsPodMac ? normalizeMac(mac) : planned.mac };
  }
  const iface: PlannedInterface = { ...planned, mac: record.guestMac };
  const pod: PodInterfaceState = { address: record.address, prefix: record.prefix, gateway: record.gateway, mtu: record.mtu };
  const binding = planBinding(iface, pod, {}, nftTable, { loopbackToGuest: true, allowMetadata: guests.allowMetadata === true });
  const ip: IpCommand[] = [];
  if (state.tapExists) ip.push(['link', 'del', tap]);
  if (state.bridge) ip.push(['link', 'del', br]);
  // the guest took eth0's MAC: eth0 takes the derived one (idempotent on a rebuild)
  if (iface.mac !== planned.mac) ip.push(['link', 'set', eth, 'down'], ['link', 'set', eth, 'address', planned.mac]);
  const [create, ...rest] = binding.ip;
  ip.push(create!, ['link', 'set', br, 'alias', formatPodRecord(record)], ...rest);
  const routeLocalnet = iface.binding === 'masquerade' && iface.ports !== null ? br : null;
  return { iface, record, binding, ip, routeLocalnet };
}

/** KubeVirt-style `status.interfaces`: the pod IP is what others reach (the guest's own in the bridge binding). */
export function podInterfacesStatus(iface: PlannedInterface, record: PodRecord): InterfaceStatus[] {
  return [{ name: iface.name, mac: iface.mac, ipAddress: record.address, ipAddresses: [record.address] }];
}
