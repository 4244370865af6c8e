// What the NetManager is configured with and what it reports: options, host paths, sandbox requests, sandbox and interface status, adoption results.
import type { TapOptions } from './commands.js';
import type { CounterValue } from './guest-filter.js';
import type { NetLogger } from './dhcp-server.js';
import type { CommandRunner } from './exec.js';
import type { NameConfig } from './names.js';
import type { PlanOptions } from './plan.js';
import type { DnsSettings } from './resolv.js';
import type { InterfaceSpec, LeaseInterface, NetworkSpec } from './types.js';

export interface NetPaths {
  /** where `ip netns add` puts netns files; ip itself always uses /run/netns */
  netnsDir: string;
  proc: string;
  sys: string;
  tun: string;
  /** resolv.conf files to take guest DNS from, first usable wins */
  resolvConf: string[];
}

export interface NetManagerOptions {
  /** holds the lease file (net-leases.json) */
  stateDir: string;
  subnet?: string;
  bridge?: string;
  /** nftables table name, on the host (family ip) and in each sandbox */
  nftTable?: string;
  names?: NameConfig;
  /** masquerade only out of this interface; default: out of anything but the bridge */
  uplink?: string;
  mtu?: number;
  /** set net.ipv4.ip_forward=1 on the host in ensureHost (needed for NAT to the uplink); default true */
  hostForwarding?: boolean;
  /** guests may open connections to the host itself (its bridge address or any other); default false: only replies, ping and DNS to the nameservers they are given */
  allowHostAccess?: boolean;
  /** guests may reach the cloud metadata address 169.254.169.254; default false */
  allowMetadata?: boolean;
  /** fixed DNS for guests instead of the host's resolv.conf */
  dns?: DnsSettings & { domain?: string };
  leaseSeconds?: number;
  paths?: Partial<NetPaths>;
  /** programs; nsenter only serves a runner without `inNetns` (the default runner starts programs inside a netns itself) */
  bins?: { ip?: string; nft?: string; nsenter?: string };
  runner?: CommandRunner;
  log?: NetLogger;
  now?: () => Date;
}

export interface SandboxRequest {
  uid: string;
  /** the VMI name: the guest's DHCP hostname */
  hostname?: string;
  interfaces?: readonly InterfaceSpec[] | undefined;
  networks?: readonly NetworkSpec[] | undefined;
  plan?: Omit<PlanOptions, 'names'>;
  /** owner of the taps (for a non-root QEMU that opens them by name) */
  tap?: TapOptions;
  /**
   * Return once the netns and its taps are made (what QEMU needs), while the veth, the addresses, routes and
   * bridges, the nftables ruleset (NAT, guest filter), the lease's interfaces and DHCP are still being made: the
   * result's `finished` settles with them. The caller must not let the guest run before it resolves, and tears the
   * sandbox down when it rejects (teardown waits for it). Until then `get()` answers from memory.
   */
  finishLater?: boolean;
}

export interface SandboxInfo {
  uid: string;
  netns: string;
  netnsPath: string;
  hostVeth: string;
  /** the sandbox's address on the host bridge (reachable from the host and other sandboxes) */
  address: string;
  prefix: number;
  gateway: string;
  interfaces: LeaseInterface[];
  /** Only from setup with `finishLater`: resolves once the sandbox is whole (links, ruleset, DHCP); rejects if a step failed. */
  finished?: Promise<void>;
}

export interface InterfaceStatus {
  name: string;
  mac: string;
  ipAddress: string;
  ipAddresses: string[];
}

export interface AdoptResult {
  /** live uids whose sandbox is there (DHCP serves them again) */
  kept: string[];
  /** live uids with a lease but no (or an incomplete or unfinished) netns: call setup() again (the address is kept) */
  missing: string[];
  /** what was removed: uids of stale leases, and netns / veth names without a live owner */
  removed: string[];
}

/** Named drop counters: the sandbox's guest filter (mac_spoof, ip_spoof, …) and the host's guard (guest_to_host, …). */
export interface GuestDrops {
  sandbox: Record<string, CounterValue>;
  host: Record<string, CounterValue>;
}
