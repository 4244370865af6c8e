// What a guest may send and reach, as nftables text: the per-VM clean-traffic filter in the sandbox (bridge family), the host's guard against guests (ip family), and reading their named drop counters.
import { VmletError } from '../errors.js';
import { formatIPv4, parseIPv4 } from './ipv4.js';
import { normalizeMac } from './mac.js';
import { checkIfName, checkNftName } from './names.js';

/** The cloud metadata address (AWS, GCP, Azure, OpenStack): guests never reach it unless the config allows. */
export const METADATA_ADDRESS = '169.254.169.254';

/** The sandbox filter's named counters: one per reason a frame from the guest's tap is dropped. */
export const GUEST_DROP_COUNTERS = ['mac_spoof', 'ip_spoof', 'arp_spoof', 'dhcp_server', 'router_advert', 'ipv6', 'metadata', 'other_proto'] as const;
export type GuestDropCounter = (typeof GUEST_DROP_COUNTERS)[number];

/** The host table's named counters: new connections from guests to the host, and guest traffic to the uplink when forwarding is off. */
export const HOST_DROP_COUNTERS = ['guest_to_host', 'guest_to_uplink'] as const;

export interface GuestFilterParams {
  /** the guest's tap in the sandbox */
  tap: string;
  /** the guest's MAC: the only Ethernet and ARP sender address allowed */
  mac: string;
  /** the address the DHCP server leases the guest: the only IPv4 and ARP sender address allowed */
  ip: string;
  /** let the guest reach 169.254.169.254; default false */
  allowMetadata?: boolean;
}

/**
 * Counters and chains to go inside `table bridge T { … }` in the sandbox (libvirt's clean-traffic):
 * every frame the guest sends through its tap passes `guest`, in both bindings, before it is bridged
 * or delivered. Passes: the guest's MAC with IPv4 from its leased address (0.0.0.0 only for a DHCP
 * DISCOVER/REQUEST to the broadcast address), and ARP for its own MAC and address (0.0.0.0: probes).
 * Dropped and counted: any other source MAC, IPv4 source or ARP sender, DHCP server replies, all
 * IPv6 (vmlet hands out no IPv6, and link-local IPv6 would reach the host past the IPv4 guard;
 * router advertisements get their own counter), the metadata address, and every other EtherType
 * (VLAN tags, STP, LLC, ...). Every value is checked before it is written into the text.
 */
export function guestFilterBody(p: GuestFilterParams): string[] {
  const tap = checkIfName(p.tap, 'tap name');
  const mac = normalizeMac(p.mac);
  const ip = formatIPv4(parseIPv4(p.ip));
  const drop = (name: GuestDropCounter): string => `counter name "${name}" drop`;
  return [
    ...GUEST_DROP_COUNTERS.map((c) => `  counter ${c} { }`),
    `  chain prerouting {`,
    `    type filter hook prerouting priority filter; policy accept;`,
    `    iifname "${tap}" jump guest`,
    `  }`,
    `  chain guest {`,
    `    ether saddr != ${mac} ${drop('mac_spoof')}`,
    `    ether type vmap { ip : goto guest_ip, arp : goto guest_arp, ip6 : goto guest_ip6 }`,
    `    ${drop('other_proto')}`,
    `  }`,
    `  chain guest_ip {`,
    `    ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept`,
    `    ip saddr != ${ip} ${drop('ip_spoof')}`,
    `    udp sport 67 ${drop('dhcp_server')}`,
    ...(p.allowMetadata === true ? [] : [`    ip daddr ${METADATA_ADDRESS} ${drop('metadata')}`]),
    `    accept`,
    `  }`,
    `  chain guest_arp {`,
    `    arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether ${mac} arp saddr ip { ${ip}, 0.0.0.0 } accept`,
    `    ${drop('arp_spoof')}`,
    `  }`,
    `  chain guest_ip6 {`,
    `    icmpv6 type nd-router-advert ${drop('router_advert')}`,
    `    ${drop('ipv6')}`,
    `  }`,
  ];
}

export interface HostGuardParams {
  bridge: string;
  /** guests may open connections to the host itself; default false */
  allowHostAccess?: boolean;
  /** nameservers handed to guests: DNS to these stays open when one is a host address */
  dnsServers?: readonly string[];
  /** drop what guests send through the host to anything but the bridge (the host does not forward) */
  blockUplink?: boolean;
}

/**
 * Counters and chains to go inside the host's `table ip T { … }`. input: a guest may answer the
 * host and ping it, and ask the nameservers it was given; any other packet from the bridge into the
 * host (its bridge address or any other of its addresses) is dropped, unless `allowHostAccess`.
 * forward (with `blockUplink`): the bridge forwards only back into itself, i.e. between sandboxes.
 */
export function hostGuardBody(p: HostGuardParams): string[] {
  const br = checkIfName(p.bridge, 'bridge name');
  const dns = (p.dnsServers ?? []).map((d) => formatIPv4(parseIPv4(d)));
  const input =
    p.allowHostAccess === true
      ? []
      : [
          `  counter guest_to_host { }`,
          `  chain input {`,
          `    type filter hook input priority filter; policy accept;`,
          `    iifname "${br}" ct state established,related accept`,
          `    iifname "${br}" icmp type echo-request accept`,
          ...(dns.length > 0 ? [`    iifname "${br}" ip daddr { ${dns.join(', ')} } meta l4proto { tcp, udp } th dport 53 accept`] : []),
          `    iifname "${br}" counter name "guest_to_host" drop`,
          `  }`,
        ];
  const forward =
    p.blockUplink === true
      ? [
          `  counter guest_to_uplink { }`,
          `  chain forward {`,
          `    type filter hook forward priority filter; policy accept;`,
          `    iifname "${br}" oifname != "${br}" counter name "guest_to_uplink" drop`,
          `  }`,
        ]
      : [];
  return [...input, ...forward];
}

/**
 * Sysctls (relative to /proc/sys/net/ipv4) of a sandbox's netns: strict reverse-path filtering on
 * every interface (`all` makes it the effective value of each; `default` for links made later), and
 * forwarding for the masquerade binding.
 */
export function sandboxSysctls(ipForward: boolean): [string, string][] {
  return [...(ipForward ? ([['ip_forward', '1']] as [string, string][]) : []), ['conf/all/rp_filter', '1'], ['conf/default/rp_filter', '1']];
}

export interface CounterValue {
  packets: number;
  bytes: number;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Named counters from `nft -j list counters …` output: name → packets and bytes. */
export function parseNftCounters(json: string): Record<string, CounterValue> {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch (e) {
    throw new VmletError('NET_COMMAND_FAILED', 'nft -j printed something that is not JSON', { cause: e, stderr: '' });
  }
  const items = isObject(doc) && Array.isArray(doc['nftables']) ? (doc['nftables'] as unknown[]) : [];
  const out: Record<string, CounterValue> = {};
  for (const item of items) {
    const c = isObject(item) ? item['counter'] : undefined;
    if (!isObject(c) || typeof c['name'] !== 'string') continue;
    out[c['name']] = { packets: Number(c['packets'] ?? 0), bytes: Number(c['bytes'] ?? 0) };
  }
  return out;
}

/** The argv of `nft -j list counters table FAMILY TABLE` (names checked). */
export function listCountersArgs(family: 'ip' | 'bridge', table: string): string[] {
  return ['-j', 'list', 'counters', 'table', family, checkNftName(table)];
}
