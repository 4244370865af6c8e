// Validates KubeVirt-shaped interfaces/networks of a VMI and turns them into a NetworkPlan, before anything is created.
import { VmletError, type ErrorCode } from '../errors.js';
import { formatIPv4, hostRange, parseCidr } from './ipv4.js';
import { deriveMac, normalizeMac } from './mac.js';
import { DEFAULT_NAMES, checkNameConfig, sandboxNames, type NameConfig } from './names.js';
import type { BindingKind, InterfaceSpec, NetworkPlan, NetworkSpec, NicModel, PlannedInterface, PortForward } from './types.js';

/** KubeVirt's default network for the masquerade binding. */
export const DEFAULT_VM_NETWORK_CIDR = '10.0.2.0/24';
/** Names inside the sandbox, as KubeVirt uses them. */
export const POD_INTERFACE = 'eth0';
export const SANDBOX_BRIDGE = 'k6t-eth0';
export const TAP_NAME = 'tap0';

export const NIC_MODELS: readonly NicModel[] = ['virtio', 'e1000', 'e1000e', 'rtl8139'];
const BINDING_KEYS = ['masquerade', 'bridge', 'slirp', 'sriov', 'macvtap', 'passt', 'binding'] as const;
const NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** tap queues: the kernel allows 256 queues per tap; virtio-net's vector count limits it further */
const MAX_QUEUES = 64;

export interface PlanOptions {
  names?: NameConfig;
  /** tap queues for virtio NICs (KubeVirt: networkInterfaceMultiqueue → one per vCPU); default 1 */
  queues?: number;
  /**
   * With no interfaces and no networks: add KubeVirt's default `{name: default, masquerade: {}}` on
   * the pod network (KubeVirt's autoattachPodInterface, default true). false: plan no interface.
   */
  autoattachPodInterface?: boolean;
}

function bad(code: ErrorCode, msg: string): never {
  throw new VmletError(code, msg);
}

function bindingOf(iface: InterfaceSpec): BindingKind {
  const present = BINDING_KEYS.filter((k) => iface[k] !== undefined && iface[k] !== null);
  if (present.length === 0) bad('NET_UNKNOWN_BINDING', `interface ${iface.name}: no binding; set one of masquerade: {} or bridge: {}`);
  if (present.length > 1) bad('NET_UNKNOWN_BINDING', `interface ${iface.name}: several bindings (${present.join(', ')}); set exactly one`);
  const b = present[0]!;
  if (b !== 'masquerade' && b !== 'bridge') {
    bad('NET_UNKNOWN_BINDING', `interface ${iface.name}: binding ${b} is not supported by vmlet; use masquerade or bridge`);
  }
  return b;
}

function portsOf(iface: InterfaceSpec, binding: BindingKind): PortForward[] | null {
  const ports = iface.ports;
  if (ports === undefined || ports.length === 0) return null;
  if (binding !== 'masquerade') bad('NET_INVALID_PORT', `interface ${iface.name}: ports are only used with the masquerade binding`);
  const seen = new Set<string>();
  return ports.map((p, i) => {
    if (typeof p !== 'object' || p === null || !Number.isInteger(p.port) || p.port < 1 || p.port > 65535) {
      bad('NET_INVALID_PORT', `interface ${iface.name}: ports[${i}].port must be an integer 1-65535`);
    }
    const proto = (p.protocol ?? 'TCP').toUpperCase();
    if (proto !== 'TCP' && proto !== 'UDP')
      bad('NET_INVALID_PORT', `interface ${iface.name}: ports[${i}].protocol ${JSON.stringify(p.protocol)} is not TCP or UDP`);
    const key = `${proto}/${p.port}`;
    if (seen.has(key)) bad('NET_INVALID_PORT', `interface ${iface.name}: port ${key} is listed twice`);
    seen.add(key);
    return { port: p.port, protocol: proto === 'TCP' ? 'tcp' : 'udp' };
  });
}

function guestNetworkOf(net: NetworkSpec): PlannedInterface['guestNetwork'] {
  const cidrText = net.pod?.vmNetworkCIDR ?? DEFAULT_VM_NETWORK_CIDR;
  let cidr;
  try {
    cidr = parseCidr(cidrText);
  } catch (e) {
    throw new VmletError('NET_INVALID_SUBNET', `network ${net.name}: vmNetworkCIDR ${JSON.stringify(cidrText)} is not an IPv4 CIDR`, { cause: e });
  }
  if (cidr.prefix > 30) bad('NET_INVALID_SUBNET', `network ${net.name}: vmNetworkCIDR ${cidrText} is too small (needs /30 or larger)`);
  const [first] = hostRange(cidr);
  return { cidr: cidrText, gateway: formatIPv4(first), address: formatIPv4(first + 1), prefix: cidr.prefix };
}

/**
 * Checks the interfaces and networks of a VMI spec and plans its sandbox: names derived from the
 * uid, the binding, MAC (given, or derived from the uid), NIC model, forwarded ports and queues of
 * each interface. Throws a NET_* VmletError on the first problem; nothing is created here.
 */
export function planNetwork(
  interfaces: readonly InterfaceSpec[] | undefined,
  networks: readonly NetworkSpec[] | undefined,
  uid: string,
  opts: PlanOptions = {},
): NetworkPlan {
  const names = sandboxNames(uid, checkNameConfig(opts.names ?? DEFAULT_NAMES));
  let ifaces = [...(interfaces ?? [])];
  let nets = [...(networks ?? [])];
  if (ifaces.length === 0 && nets.length === 0 && (opts.autoattachPodInterface ?? true)) {
    ifaces = [{ name: 'default', masquerade: {} }];
    nets = [{ name: 'default', pod: {} }];
  }
  const queues = opts.queues ?? 1;
  if (!Number.isInteger(queues) || queues < 1 || queues > MAX_QUEUES) bad('NET_INVALID_QUEUES', `queues must be an integer 1-${MAX_QUEUES}, not ${queues}`);

  const netByName = new Map<string, NetworkSpec>();
  for (const n of nets) {
    if (typeof n?.name !== 'string' || !NAME_RE.test(n.name) || n.name.length > 63)
      bad('NET_INVALID_NAME', `network name ${JSON.stringify(n?.name)} is not a DNS label`);
    if (netByName.has(n.name)) bad('NET_DUPLICATE_NAME', `network ${n.name} is listed twice`);
    if (n.multus !== undefined) bad('NET_UNSUPPORTED_NETWORK', `network ${n.name}: multus networks are not supported; use pod: {}`);
    if (n.pod === undefined) bad('NET_UNSUPPORTED_NETWORK', `network ${n.name}: no network source; set pod: {}`);
    netByName.set(n.name, n);
  }

  const seenIface = new Set<string>();
  const macs = new Map<string, string>();
  const planned: PlannedInterface[] = [];
  ifaces.forEach((iface, index) => {
    if (typeof iface?.name !== 'string' || !NAME_RE.test(iface.name) || iface.name.length > 63)
      bad('NET_INVALID_NAME', `interface name ${JSON.stringify(iface?.name)} is not a DNS label`);
    if (seenIface.has(iface.name)) bad('NET_DUPLICATE_NAME', `interface ${iface.name} is listed twice`);
    seenIface.add(iface.name);
    const net = netByName.get(iface.name);
    if (!net) bad('NET_INTERFACE_WITHOUT_NETWORK', `interface ${iface.name} has no network of the same name in spec.networks`);
    const binding = bindingOf(iface);
    const mac = iface.macAddress !== undefined ? normalizeMac(iface.macAddress) : deriveMac(uid, iface.name);
    const other = macs.get(mac);
    if (other !== undefined) bad('NET_DUPLICATE_MAC', `interfaces ${other} and ${iface.name} have the same MAC ${mac}`);
    macs.set(mac, iface.name);
    const model = (iface.model ?? 'virtio') as NicModel;
    if (!NIC_MODELS.includes(model))
      bad('NET_UNSUPPORTED_MODEL', `interface ${iface.name}: model ${JSON.stringify(iface.model)} is not one of ${NIC_MODELS.join(', ')}`);
    if (queues > 1 && model !== 'virtio') bad('NET_INVALID_QUEUES', `interface ${iface.name}: multiqueue needs model virtio, not ${model}`);
    planned.push({
      name: iface.name,
      index,
      binding,
      mac,
      model,
      ports: portsOf(iface, binding),
      tap: TAP_NAME,
      bridge: SANDBOX_BRIDGE,
      podInterface: POD_INTERFACE,
      queues,
      guestNetwork: binding === 'masquerade' ? guestNetworkOf(net) : null,
    });
  });
  // checked after the interfaces so that a more specific problem (duplicate MAC, bad binding) is named first
  if (netByName.size > 1) bad('NET_UNSUPPORTED_NETWORK', `${netByName.size} pod networks (${[...netByName.keys()].join(', ')}); a VMI has at most one`);
  for (const n of netByName.keys()) {
    if (!seenIface.has(n)) bad('NET_NETWORK_WITHOUT_INTERFACE', `network ${n} is not used by any interface in spec.domain.devices.interfaces`);
  }
  return { uid, names, interfaces: planned };
}
