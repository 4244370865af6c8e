// Pure planners: host bridge, sandbox, bindings and cleanup as lists of `ip` commands and nftables ruleset texts.
import { VmletError } from '../errors.js';
import { formatCidr, formatIPv4, isIPv4, overlaps, parseCidr, parseIPv4, type Cidr } from './ipv4.js';
import { deriveMac } from './mac.js';
import { guestFilterBody, hostGuardBody, type GuestFilterParams } from './guest-filter.js';
import { checkIfName, checkNetnsName, checkNftName } from './names.js';
import type { IpCommand, IpRoute, LeaseInterface, PlannedInterface, SandboxNames } from './types.js';

/** Address given to the sandbox bridge in the bridge binding, as the DHCP server's identity (as KubeVirt does). */
export const BRIDGE_BINDING_SERVER_IP = '169.254.75.10';

const TOKEN_RE = /^[A-Za-z0-9_.:/-]+$/;

/** One `ip -batch` line per command; every token is checked, so no quoting is ever needed. */
export function toBatch(cmds: readonly IpCommand[]): string {
  return (
    cmds
      .map((c) => {
        for (const tok of c) {
          if (!TOKEN_RE.test(tok)) throw new VmletError('NET_INVALID_NAME', `refusing to pass ${JSON.stringify(tok)} to ip`);
        }
        return c.join(' ');
      })
      .join('\n') + (cmds.length > 0 ? '\n' : '')
  );
}

/** The route as `ip route` would print it, for messages. */
export function describeRoute(r: IpRoute): string {
  return [r.dst, r.gateway ? `via ${r.gateway}` : '', r.dev ? `dev ${r.dev}` : '', r.protocol ? `proto ${r.protocol}` : ''].filter(Boolean).join(' ');
}

function routeCidr(dst: string): Cidr | null {
  if (dst === 'default') return null;
  const m = /^([0-9.]+)(?:\/(\d+))?$/.exec(dst);
  if (!m || !isIPv4(m[1]!)) return null;
  return parseCidr(`${m[1]}/${m[2] ?? '32'}`, false);
}

/**
 * Refuses a subnet that overlaps a host route (other than the default route and routes on vmlet's
 * own bridge) with NET_SUBNET_CLASH naming the route. `routes` is `ip -json route` output.
 */
export function checkSubnetClash(subnet: string, routes: readonly IpRoute[], ownBridge: string): void {
  const s = parseCidr(subnet);
  for (const r of routes) {
    if (r.dev === ownBridge) continue;
    if (r.type !== undefined && r.type !== 'unicast') continue;
    const c = routeCidr(r.dst);
    if (c && c.prefix > 0 && overlaps(s, c)) {
      throw new VmletError(
        'NET_SUBNET_CLASH',
        `subnet ${subnet} overlaps the host route "${describeRoute(r)}"; choose another network.subnet in the daemon config`,
      );
    }
  }
}

export interface HostNetParams {
  bridge: string;
  subnet: string;
  /** the nftables table (family ip) that holds vmlet's NAT */
  nftTable: string;
  /** masquerade only out of this interface; default: out of anything but the bridge */
  uplink?: string;
  mtu?: number;
  /** guests may open connections to the host itself; default false (see hostGuardBody) */
  allowHostAccess?: boolean;
  /** nameservers handed to guests: DNS to them stays open */
  dnsServers?: readonly string[];
  /** the host does not forward: drop guest traffic routed anywhere but back into the bridge */
  blockUplink?: boolean;
}

export interface HostNetState {
  /** the bridge exists */
  bridgeExists: boolean;
  /** its IPv4 addresses as `a.b.c.d/len` */
  bridgeAddresses: string[];
  bridgeUp: boolean;
  /** true if the link exists but is not a bridge */
  bridgeWrongKind?: boolean;
}

/** The gateway (the bridge's address) of a subnet: its first host address. */
export function gatewayOf(subnet: string): string {
  return formatIPv4(parseCidr(subnet).network + 1);
}

/** ip commands that bring the host bridge to the wanted state (create it, give it the gateway address, up). */
export function planHostBridge(p: HostNetParams, st: HostNetState): IpCommand[] {
  checkIfName(p.bridge, 'bridge name');
  const s = parseCidr(p.subnet);
  if (s.prefix > 29) throw new VmletError('NET_INVALID_SUBNET', `subnet ${p.subnet} is too small; use /29 or larger`);
  if (st.bridgeWrongKind) throw new VmletError('NET_BRIDGE_CONFLICT', `${p.bridge} exists and is not a bridge`);
  const want = `${gatewayOf(p.subnet)}/${s.prefix}`;
  const cmds: IpCommand[] = [];
  if (!st.bridgeExists) {
    // a fixed MAC: a bridge otherwise takes its lowest port's, which changes as sandboxes come and go,
    // and every sandbox reaches the others through the gateway's MAC (proxy ARP)
    const mac = deriveMac('vmlet-host-bridge', p.bridge);
    cmds.push(['link', 'add', p.bridge, 'address', mac, ...(p.mtu ? ['mtu', String(p.mtu)] : []), 'type', 'bridge']);
  } else {
    const others = st.bridgeAddresses.filter((a) => a !== want);
    if (others.length > 0) {
      throw new VmletError(
        'NET_BRIDGE_CONFLICT',
        `${p.bridge} has address ${others.join(', ')}, not ${want}: another subnet was configured; delete the bridge or set network.subnet back`,
      );
    }
  }
  if (!st.bridgeAddresses.includes(want)) cmds.push(['addr', 'add', want, 'dev', p.bridge]);
  if (!st.bridgeUp || !st.bridgeExists) cmds.push(['link', 'set', p.bridge, 'up']);
  return cmds;
}

/**
 * The host table: masquerade traffic from the subnet leaving through the uplink, and the guard
 * that keeps guests off the host (hostGuardBody). Replaces the table atomically (create empty,
 * delete, create) and touches no other table.
 */
export function hostNftRuleset(p: HostNetParams): string {
  const t = checkNftName(p.nftTable);
  const br = checkIfName(p.bridge, 'bridge name');
  const subnet = formatCidr(parseCidr(p.subnet));
  const out = p.uplink !== undefined ? `oifname "${checkIfName(p.uplink, 'uplink')}"` : `oifname != "${br}"`;
  return [
    `table ip ${t} {}`,
    `delete table ip ${t}`,
    `table ip ${t} {`,
    `  chain postrouting {`,
    `    type nat hook postrouting priority srcnat; policy accept;`,
    `    ip saddr ${subnet} ip daddr != ${subnet} ${out} masquerade comment "vmlet: sandboxes to the uplink"`,
    `  }`,
    ...hostGuardBody({
      bridge: br,
      ...(p.allowHostAccess !== undefined ? { allowHostAccess: p.allowHostAccess } : {}),
      ...(p.dnsServers !== undefined ? { dnsServers: p.dnsServers } : {}),
      ...(p.blockUplink !== undefined ? { blockUplink: p.blockUplink } : {}),
    }),
    `}`,
    '',
  ].join('\n');
}

const REPLACE_PREFIX = /^table (ip|inet|bridge) ([A-Za-z][A-Za-z0-9_-]*) \{\}\ndelete table \1 \2\n/gm;

/**
 * A replacing ruleset (`table F T {}` · `delete table F T` · the table, for each of its tables) for
 * a netns made just now, which holds no table: only the tables, the same rules. The delete would
 * cost the kernel a grace period in the commit (~10 ms of the ~14 ms load on the test machine) to
 * replace nothing.
 */
export function freshNetnsRuleset(ruleset: string): string {
  return ruleset.replace(REPLACE_PREFIX, '');
}

/** Deletes only vmlet's own table (the empty `table` line makes it idempotent). */
export function deleteNftTableRuleset(family: 'ip' | 'inet' | 'bridge', table: string): string {
  const t = checkNftName(table);
  return `table ${family} ${t} {}\ndelete table ${family} ${t}\n`;
}

export interface SandboxParams {
  names: SandboxNames;
  bridge: string;
  /** the sandbox's address on the host bridge */
  address: string;
  prefix: number;
  gateway: string;
  mtu?: number;
}

/** Host-side commands creating a sandbox: the netns, the veth pair (peer straight into the netns as eth0), the host end on the bridge. */
export function planSandboxHost(p: SandboxParams, podInterface = 'eth0'): IpCommand[] {
  return [...planSandboxNetns(p), ...planSandboxVeth(p, podInterface)];
}

/** The first step of planSandboxHost alone: once the netns exists, its ruleset can load while its links are made. */
export function planSandboxNetns(p: SandboxParams): IpCommand[] {
  return [['netns', 'add', checkNetnsName(p.names.netns)]];
}

/**
 * The rest of planSandboxHost: the veth pair (peer straight into the existing netns as eth0), the
 * host end on the bridge as an isolated port (it reaches only the bridge itself, never another
 * isolated port: sandboxes meet through the gateway), isolated before it goes up.
 */
export function planSandboxVeth(p: SandboxParams, podInterface = 'eth0'): IpCommand[] {
  const ns = checkNetnsName(p.names.netns);
  const veth = checkIfName(p.names.hostVeth, 'host veth');
  checkIfName(podInterface);
  checkIfName(p.bridge, 'bridge name');
  const mtu = p.mtu ? ['mtu', String(p.mtu)] : [];
  return [
    ['link', 'add', veth, ...mtu, 'type', 'veth', 'peer', 'name', podInterface, 'netns', ns],
    ['link', 'set', veth, 'master', p.bridge],
    ['link', 'set', veth, 'type', 'bridge_slave', 'isolated', 'on'],
    ['link', 'set', veth, 'up'],
  ];
}

/** Commands run inside the sandbox (`ip -n NETNS`): loopback, the sandbox address on eth0, default route. */
export function planSandboxInside(p: SandboxParams, podInterface = 'eth0'): IpCommand[] {
  checkIfName(podInterface);
  parseIPv4(p.address);
  parseIPv4(p.gateway);
  return [
    ['link', 'set', 'lo', 'up'],
    ['addr', 'add', `${p.address}/${p.prefix}`, 'dev', podInterface],
    ['link', 'set', podInterface, 'up'],
    ['route', 'add', 'default', 'via', p.gateway, 'dev', podInterface],
  ];
}

export interface TapOptions {
  /** owner of the tap, so a non-root QEMU may open it */
  user?: number;
  group?: number;
}

/** What the sandbox's uplink looks like, read before binding (for the bridge binding it moves to the guest). */
export interface PodInterfaceState {
  address: string;
  prefix: number;
  gateway: string | null;
  mtu: number;
}

export interface BindingPlan {
  /** `ip -n NETNS` commands, in order */
  ip: IpCommand[];
  /** nftables ruleset to load inside the netns, or null */
  nft: string | null;
  /** net.ipv4.ip_forward must be 1 inside the netns */
  ipForward: boolean;
  /** what the DHCP server hands out on the sandbox bridge */
  dhcp: {
    serverIp: string;
    clientIp: string;
    prefix: number;
    router: string | null;
    mtu: number;
  };
}

function tapCommands(iface: PlannedInterface, mtu: number, tap: TapOptions): IpCommand[] {
  const owner = [...(tap.user !== undefined ? ['user', String(tap.user)] : []), ...(tap.group !== undefined ? ['group', String(tap.group)] : [])];
  return [
    ['tuntap', 'add', 'dev', checkIfName(iface.tap), 'mode', 'tap', ...owner, ...(iface.queues > 1 ? ['multi_queue'] : []), 'vnet_hdr'],
    ['link', 'set', iface.tap, 'mtu', String(mtu), 'master', iface.bridge, 'up'],
  ];
}

export interface BindingExtras {
  /**
   * masquerade with listed ports: the pod's own 127.0.0.1 on those ports reaches the guest too
   * (KubeVirt's rule for health probes; needs route_localnet on the sandbox bridge). Packets from the
   * guest to 127.0.0.0/8 are dropped, so the guest cannot reach the pod's loopback services.
   */
  loopbackToGuest?: boolean;
  /** the guest may reach 169.254.169.254 (the guest filter drops it by default) */
  allowMetadata?: boolean;
}

/**
 * The binding of one interface inside the sandbox. masquerade: bridge k6t-eth0 with the guest
 * gateway, the tap on it, NAT in the netns (DNAT of the sandbox address to the guest, masquerade of
 * the guest to eth0). bridge: eth0's address is removed (the guest gets it by DHCP), eth0 and the
 * tap are joined by k6t-eth0, which carries only a link-local address for the DHCP server.
 * Both: the guest filter (guestFilterBody) in `table bridge T` pins what leaves the tap to the
 * guest's MAC and the address DHCP leases it.
 */
export function planBinding(
  iface: PlannedInterface,
  pod: PodInterfaceState,
  tap: TapOptions = {},
  nftTable = 'vmlet',
  extras: BindingExtras = {},
): BindingPlan {
  const br = checkIfName(iface.bridge, 'sandbox bridge');
  const eth = checkIfName(iface.podInterface);
  const t = checkNftName(nftTable);
  parseIPv4(pod.address);
  const filterOf = (ip: string): GuestFilterParams => ({ tap: iface.tap, mac: iface.mac, ip, allowMetadata: extras.allowMetadata === true });
  if (iface.binding === 'masquerade') {
    const g = iface.guestNetwork;
    if (!g) throw new VmletError('NET_INVALID_PLAN', `interface ${iface.name}: masquerade without a guest network`);
    const ip: IpCommand[] = [
      ['link', 'add', br, 'type', 'bridge'],
      ['addr', 'add', `${g.gateway}/${g.prefix}`, 'dev', br],
      ...tapCommands(iface, pod.mtu, tap),
      ['link', 'set', br, 'up'],
    ];
    // one rule per protocol when ports are listed, else one for every port
    const forwards = (match: string, action: string): string[] => {
      if (iface.ports === null) return [`    ${match} ${action}`];
      return (['tcp', 'udp'] as const).flatMap((proto) => {
        const ports = iface.ports!.filter((p) => p.protocol === proto).map((p) => p.port);
        return ports.length > 0 ? [`    ${match} ${proto} dport { ${ports.join(', ')} } ${action}`] : [];
      });
    };
    const dnat = forwards(`iifname "${eth}" ip daddr ${pod.address}`, `dnat to ${g.address}`);
    const loopback = extras.loopbackToGuest === true && iface.ports !== null;
    const loChains = loopback
      ? [
          `  chain output {`,
          `    type nat hook output priority -100; policy accept;`,
          ...forwards('ip daddr 127.0.0.1', `dnat to ${g.address}`),
          `  }`,
          `  chain guest_to_loopback {`,
          `    type filter hook prerouting priority raw; policy accept;`,
          `    iifname "${br}" ip daddr 127.0.0.0/8 drop`,
          `  }`,
        ]
      : [];
    const nft = [
      `table ip ${t} {}`,
      `delete table ip ${t}`,
      `table ip ${t} {`,
      `  chain prerouting {`,
      `    type nat hook prerouting priority dstnat; policy accept;`,
      ...dnat,
      `  }`,
      `  chain postrouting {`,
      `    type nat hook postrouting priority srcnat; policy accept;`,
      `    ip saddr ${g.cidr} oifname "${eth}" masquerade`,
      ...(loopback ? forwards(`ip saddr 127.0.0.1 oifname "${br}"`, `snat to ${g.gateway}`) : []),
      `  }`,
      ...loChains,
      `}`,
      `table bridge ${t} {}`,
      `delete table bridge ${t}`,
      `table bridge ${t} {`,
      ...guestFilterBody(filterOf(g.address)),
      `}`,
      '',
    ].join('\n');
    return {
      ip,
      nft,
      ipForward: true,
      dhcp: { serverIp: g.gateway, clientIp: g.address, prefix: g.prefix, router: g.gateway, mtu: pod.mtu },
    };
  }
  const ip: IpCommand[] = [
    ['link', 'add', br, 'type', 'bridge'],
    ['addr', 'flush', 'dev', eth],
    ['link', 'set', eth, 'master', br, 'up'],
    ...tapCommands(iface, pod.mtu, tap),
    ['addr', 'add', `${BRIDGE_BINDING_SERVER_IP}/32`, 'dev', br],
    ['link', 'set', br, 'up'],
    // the way back to the guest's address: strict rp_filter drops its broadcast renewals (REBINDING) without it
    ['route', 'add', `${pod.address}/32`, 'dev', br],
  ];
  // the guest's DHCP stays inside the sandbox: neither its requests nor our replies cross eth0
  const nft = [
    `table bridge ${t} {}`,
    `delete table bridge ${t}`,
    `table bridge ${t} {`,
    ...guestFilterBody(filterOf(pod.address)),
    `  chain forward {`,
    `    type filter hook forward priority filter; policy accept;`,
    `    udp dport { 67, 68 } drop`,
    `  }`,
    `  chain output {`,
    `    type filter hook output priority filter; policy accept;`,
    `    oifname "${eth}" udp dport { 67, 68 } drop`,
    `  }`,
    `}`,
    '',
  ].join('\n');
  return {
    ip,
    nft,
    ipForward: false,
    dhcp: { serverIp: BRIDGE_BINDING_SERVER_IP, clientIp: pod.address, prefix: pod.prefix, router: pod.gateway, mtu: pod.mtu },
  };
}

/** What the lease records of one interface and its binding (the tap, the bridge, what DHCP hands out). */
export function leaseInterface(iface: PlannedInterface, b: BindingPlan): LeaseInterface {
  return {
    name: iface.name,
    index: iface.index,
    binding: iface.binding,
    mac: iface.mac,
    model: iface.model,
    queues: iface.queues,
    tap: iface.tap,
    bridge: iface.bridge,
    guestIp: b.dhcp.clientIp,
    prefix: b.dhcp.prefix,
    router: b.dhcp.router,
    serverIp: b.dhcp.serverIp,
    mtu: b.dhcp.mtu,
  };
}

/** Host-side cleanup of a sandbox: the veth (its peer dies with it) and the netns. Each line may fail on its own (already gone). */
export function planSandboxDelete(names: SandboxNames): IpCommand[][] {
  return [[['link', 'del', checkIfName(names.hostVeth, 'host veth')]], [['netns', 'del', checkNetnsName(names.netns)]]];
}
