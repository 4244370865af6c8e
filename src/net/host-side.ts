// The host side of standalone networking: the bridge with the gateway address, vmlet's host table (NAT and the guard against guests), forwarding, and the bridge's sysctls that let isolated sandboxes meet through the gateway.
import fs from 'node:fs';
import path from 'node:path';
import { checkSubnetClash, deleteNftTableRuleset, hostNftRuleset, planHostBridge, type HostNetParams } from './commands.js';
import type { NetLogger } from './dhcp-server.js';
import { isGone, type IpTools } from './ip-tools.js';
import { checkIfName } from './names.js';
import type { IpRoute } from './types.js';

/**
 * Sysctls of the host bridge (relative to /proc/sys/net/ipv4). Its ports are isolated, so a
 * sandbox's ARP reaches only the host: proxy ARP with proxy_arp_pvlan answers it with the bridge's
 * MAC (at once: proxy_delay 0, not up to 0.8 s) and the host routes sandbox to sandbox back out of
 * the bridge, which needs forwarding on the bridge itself (even when the host's ip_forward is 0).
 * Strict rp_filter: what enters from the bridge must come from the bridge's side.
 */
export function bridgeSysctls(bridge: string): [string, string][] {
  const br = checkIfName(bridge, 'bridge name');
  return [
    [`conf/${br}/forwarding`, '1'],
    [`conf/${br}/proxy_arp`, '1'],
    [`conf/${br}/proxy_arp_pvlan`, '1'],
    [`conf/${br}/rp_filter`, '1'],
    [`neigh/${br}/proxy_delay`, '0'],
  ];
}

export interface HostSideOptions {
  tools: IpTools;
  /** bridge, subnet, table, uplink, MTU, and what guests may reach (allowHostAccess, dnsServers) */
  params: HostNetParams;
  /** the /proc to write sysctls under */
  proc: string;
  /** set the host's net.ipv4.ip_forward=1 */
  hostForwarding: boolean;
  log: NetLogger;
}

function readSysctl(proc: string, rel: string): string | null {
  try {
    return fs.readFileSync(path.join(proc, 'sys/net/ipv4', rel), 'utf8').trim();
  } catch {
    return null;
  }
}

/**
 * Checks the subnet against the host's routes (NET_SUBNET_CLASH), then creates the bridge with the
 * gateway address if missing, loads the host table and sets the sysctls. When vmlet does not turn
 * forwarding on and the host has it off, the table also drops guest traffic to anything but the
 * bridge, so the bridge's own forwarding (for sandbox to sandbox) opens no way to the uplink.
 */
export async function ensureHostNetwork(o: HostSideOptions): Promise<void> {
  const { tools, params: p } = o;
  type Link = { ifname: string; flags?: string[]; linkinfo?: { info_kind?: string }; addr_info?: { family: string; local: string; prefixlen: number }[] };
  // two reads side by side; nothing is written before the clash check
  const [routes, links] = await Promise.all([
    tools.ipJson<IpRoute[]>(['route', 'show']),
    tools.ipJson<Link[]>(['-details', 'addr', 'show', 'dev', p.bridge]).catch((e: unknown) => {
      if (isGone(e)) return [];
      throw e;
    }),
  ]);
  checkSubnetClash(p.subnet, routes, p.bridge);
  const br = links[0];
  const cmds = planHostBridge(p, {
    bridgeExists: br !== undefined,
    bridgeWrongKind: br !== undefined && br.linkinfo?.info_kind !== 'bridge',
    bridgeAddresses: (br?.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`),
    bridgeUp: br?.flags?.includes('UP') ?? false,
  });
  const blockUplink = !o.hostForwarding && readSysctl(o.proc, 'ip_forward') === '0';
  // the ruleset names the bridge only as a string, so both load side by side
  const steps = await Promise.allSettled([tools.ipBatch(cmds), tools.nft(hostNftRuleset({ ...p, blockUplink }))]);
  for (const r of steps) if (r.status === 'rejected') throw r.reason;
  const sysctls: [string, string][] = [...(o.hostForwarding ? ([['ip_forward', '1']] as [string, string][]) : []), ...bridgeSysctls(p.bridge)];
  for (const [rel, value] of sysctls) fs.writeFileSync(path.join(o.proc, 'sys/net/ipv4', rel), value);
  o.log.info(
    { bridge: p.bridge, subnet: p.subnet, nftTable: p.nftTable, created: cmds.length > 0, allowHostAccess: p.allowHostAccess === true, blockUplink },
    'host network ready',
  );
}

/** Removes vmlet's host table and the bridge (other tables and links are not touched). */
export async function removeHostNetwork(tools: IpTools, bridge: string, nftTable: string): Promise<void> {
  const steps = await Promise.allSettled([
    tools.nft(deleteNftTableRuleset('ip', nftTable)),
    tools.ip(['link', 'del', bridge]).catch((e: unknown) => {
      if (!isGone(e)) throw e;
    }),
  ]);
  for (const r of steps) if (r.status === 'rejected') throw r.reason;
}
