// Kubernetes mode: builds a VMI's binding (bridge, tap, nftables, DHCP) inside the netns CNI made for its launcher pod, hands out the tap fds, and stops serving it again.
import fs from 'node:fs';
import path from 'node:path';
import { VmletError } from '../errors.js';
import { closeFds } from '../sys/libc.js';
import { withNetns } from '../sys/netns.js';
import { openTap } from '../sys/tun.js';
import { DhcpServer, dhcpLeaseConfig, type DhcpLeaseConfig, type NetLogger } from './dhcp-server.js';
import { execRunner, type CommandRunner } from './exec.js';
import { listCountersArgs, parseNftCounters, sandboxSysctls, type CounterValue } from './guest-filter.js';
import { IpTools } from './ip-tools.js';
import { checkNftName } from './names.js';
import { planNetwork } from './plan.js';
import { planPodAttach, podInterfacesStatus, readPodState, type IpLink, type PodAttachPlan, type PodRecord, type PodState } from './pod-plan.js';
import { readHostDns, type DnsSettings } from './resolv.js';
import type { InterfaceStatus, SandboxRequest } from './sandbox-types.js';
import type { BindingKind, IpRoute, NetworkPlan, NicModel, PlannedInterface } from './types.js';

export interface PodNetworkOptions {
  /** nftables table in the pod's netns (family ip for masquerade's NAT, bridge for the guest filter); default `vmlet` */
  nftTable?: string;
  /** the guest may reach 169.254.169.254 (the guest filter drops it by default; config `network.allowMetadata`) */
  allowMetadata?: boolean;
  /** default /proc (the daemon's own netns is <proc>/thread-self/ns/net; sysctls are <proc>/sys/…) */
  proc?: string;
  /** default /dev/net/tun */
  tun?: string;
  /** programs; nsenter only serves a runner without `inNetns` (the default runner starts programs inside a netns itself) */
  bins?: { ip?: string; nft?: string; nsenter?: string };
  runner?: CommandRunner;
  log?: NetLogger;
  /** share the daemon's one DHCP server (e.g. a NetManager's); default: a server of its own */
  dhcp?: DhcpServer;
  /** DHCP lease time; default 86400 s */
  leaseSeconds?: number;
  /** guest DNS when the pod's resolv.conf is not given or names no usable server */
  dns?: DnsSettings & { domain?: string };
  now?: () => Date;
}

/** The VMI's uid, hostname (DHCP), interfaces, networks and plan options, as for a standalone sandbox, and where its pod is. */
export interface PodAttachRequest extends Omit<SandboxRequest, 'tap'> {
  /** the pod's netns, e.g. /proc/<launcher pid>/ns/net */
  netnsPath: string;
  /** the pod's resolv.conf as the daemon sees it, e.g. /proc/<launcher pid>/root/etc/resolv.conf: the guest's DNS */
  resolvConfPath?: string;
  /** the VMI's child logger */
  logger?: NetLogger;
}

/** What qemuNicArgs needs for one NIC (index, mac, model, queues), and where it is in the pod. */
export interface PodNic {
  name: string;
  index: number;
  binding: BindingKind;
  mac: string;
  model: NicModel;
  queues: number;
  tap: string;
  bridge: string;
}

export interface PodAttachment {
  uid: string;
  netnsPath: string;
  nics: PodNic[];
  /** `status.interfaces` entries (name, mac, the pod IP) */
  status: InterfaceStatus[];
}

export interface PodAttachResult extends PodAttachment {
  /** per NIC (same order), one tap fd per queue, close-on-exec; the caller passes them to QEMU and closes them */
  fds: number[][];
}

const DEFAULT_LEASE_SECONDS = 86400;
const silent: NetLogger = { info: () => {}, warn: () => {}, debug: () => {} };

function nicOf(i: PlannedInterface): PodNic {
  return { name: i.name, index: i.index, binding: i.binding, mac: i.mac, model: i.model, queues: i.queues, tap: i.tap, bridge: i.bridge };
}

/**
 * The VM's network inside launcher pods. Construction does nothing. Only the pod's netns is
 * touched (nothing in the host's); what is made there dies with the netns, so `detach` only stops
 * DHCP — which it must, because the DHCP socket keeps the netns alive.
 */
export class PodNetwork {
  readonly dhcp: DhcpServer;
  private readonly nftTable: string;
  private readonly guests: { allowMetadata: boolean };
  private readonly proc: string;
  private readonly tun: string;
  private readonly tools: IpTools;
  private readonly log: NetLogger;
  private readonly served = new Set<string>();

  constructor(private readonly opts: PodNetworkOptions = {}) {
    this.nftTable = checkNftName(opts.nftTable ?? 'vmlet');
    this.guests = { allowMetadata: opts.allowMetadata === true };
    this.proc = opts.proc ?? '/proc';
    this.tun = opts.tun ?? '/dev/net/tun';
    this.log = opts.log ?? silent;
    this.tools = new IpTools(opts.runner ?? execRunner, { ip: opts.bins?.ip ?? 'ip', nft: opts.bins?.nft ?? 'nft', nsenter: opts.bins?.nsenter ?? 'nsenter' });
    this.dhcp = opts.dhcp ?? new DhcpServer({ log: this.log, selfNetns: this.selfNetns(), ...(opts.now ? { now: opts.now } : {}) });
  }

  private selfNetns(): string {
    return path.join(this.proc, 'thread-self/ns/net');
  }

  /** The plan of the request and what is in the pod's netns now; null when the VMI has no interface. */
  private async observe(req: PodAttachRequest): Promise<{ plan: NetworkPlan; state: PodState } | null> {
    if (!fs.existsSync(req.netnsPath)) {
      throw new VmletError('POD_NETNS_NOT_FOUND', `the pod's netns ${req.netnsPath} does not exist (is the launcher gone?)`);
    }
    const plan = planNetwork(req.interfaces, req.networks, req.uid, req.plan ?? {});
    if (plan.interfaces.length === 0) return null;
    // one process for both reads; -details (for the links) only adds route fields readPodState ignores
    const [links, routes] = await this.tools.ipJsonBatch<[IpLink[], IpRoute[]]>(
      [
        ['addr', 'show'],
        ['route', 'show', 'default'],
      ],
      ['-details'],
      req.netnsPath,
    );
    return { plan, state: readPodState(links, routes, plan.interfaces[0]!) };
  }

  private dhcpConfig(req: PodAttachRequest, p: PodAttachPlan): DhcpLeaseConfig {
    const fromPod = req.resolvConfPath !== undefined ? readHostDns([req.resolvConfPath]) : { nameservers: [], search: [] };
    const dns = fromPod.nameservers.length > 0 || !this.opts.dns ? fromPod : this.opts.dns;
    const leaseSeconds = this.opts.leaseSeconds ?? DEFAULT_LEASE_SECONDS;
    return dhcpLeaseConfig(
      { ...p.binding.dhcp, mac: p.iface.mac, binding: p.iface.binding },
      { nameservers: dns.nameservers, search: dns.search, domain: this.opts.dns?.domain, hostname: req.hostname, leaseSeconds },
    );
  }

  private async serveDhcp(req: PodAttachRequest, p: PodAttachPlan): Promise<void> {
    await this.dhcp.add({ key: `${req.uid}/${p.iface.name}`, netnsPath: req.netnsPath, device: p.iface.bridge, config: this.dhcpConfig(req, p) });
  }

  /** Writes sysctls of the pod's netns (paths relative to <proc>/sys/net/ipv4). */
  private enable(netnsPath: string, sysctls: [string, string][]): void {
    if (sysctls.length === 0) return;
    withNetns(netnsPath, () => sysctls.forEach(([f, v]) => fs.writeFileSync(path.join(this.proc, 'sys/net/ipv4', f), v)), { selfNetns: this.selfNetns() });
  }

  /**
   * Builds the binding in the pod's netns (or rebuilds an earlier attach's from its record), serves
   * DHCP there and opens the taps. Two processes run in the netns (ip and nft, side by side) after
   * one that reads it. On failure DHCP is stopped and no fd stays open; links already made stay for a
   * retry (which rebuilds them from the record) or die with the pod.
   */
  async attach(req: PodAttachRequest): Promise<PodAttachResult> {
    const log = req.logger ?? this.log;
    const started = Date.now();
    const seen = await this.observe(req);
    if (!seen) return { uid: req.uid, netnsPath: req.netnsPath, nics: [], status: [], fds: [] };
    const p = planPodAttach(seen.plan, req.interfaces, seen.state, this.nftTable, this.guests);
    const fds: number[] = [];
    try {
      // strict rp_filter in the pod's netns; forwarding for masquerade
      this.enable(req.netnsPath, sandboxSysctls(p.binding.ipForward));
      const [r1, r2] = await Promise.allSettled([
        this.tools.ipBatch(p.ip, req.netnsPath),
        p.binding.nft !== null ? this.tools.nft(p.binding.nft, req.netnsPath) : Promise.resolve(),
      ]);
      for (const r of [r1, r2]) if (r.status === 'rejected') throw r.reason;
      if (p.routeLocalnet !== null) this.enable(req.netnsPath, [[`conf/${p.routeLocalnet}/route_localnet`, '1']]);
      await this.serveDhcp(req, p);
      this.served.add(req.uid);
      fds.push(...openTap({ netnsPath: req.netnsPath, name: p.iface.tap, queues: p.iface.queues, tunDevice: this.tun, selfNetns: this.selfNetns() }));
    } catch (e) {
      closeFds(fds);
      await this.detach(req.uid);
      throw e;
    }
    log.info({ uid: req.uid, netns: req.netnsPath, binding: p.iface.binding, podIP: p.record.address, ms: Date.now() - started }, 'pod network ready');
    return { ...this.attachment(req, p.iface, p.record), fds: [fds] };
  }

  private attachment(req: PodAttachRequest, iface: PlannedInterface, record: PodRecord): PodAttachment {
    return { uid: req.uid, netnsPath: req.netnsPath, nics: [nicOf(iface)], status: podInterfacesStatus(iface, record) };
  }

  /**
   * After a daemon restart: the binding is there and QEMU holds the taps. Nothing is made or opened;
   * DHCP is served again from the record on vmlet's bridge. POD_NET_NOT_ATTACHED when the netns
   * holds no binding of vmlet's (then the VM never had its network: stop it, or attach before launch).
   */
  async adopt(req: PodAttachRequest): Promise<PodAttachment> {
    const log = req.logger ?? this.log;
    const seen = await this.observe(req);
    if (!seen) return { uid: req.uid, netnsPath: req.netnsPath, nics: [], status: [] };
    const { plan, state } = seen;
    const iface = plan.interfaces[0]!;
    if (!state.bridge?.record || !state.tapExists) {
      throw new VmletError(
        'POD_NET_NOT_ATTACHED',
        `the pod's netns ${req.netnsPath} holds no binding of vmlet's (${iface.bridge} with its record, ${iface.tap})`,
      );
    }
    const p = planPodAttach(plan, req.interfaces, state, this.nftTable, this.guests);
    await this.serveDhcp(req, p);
    this.served.add(req.uid);
    log.info({ uid: req.uid, netns: req.netnsPath, binding: p.iface.binding, podIP: p.record.address }, 'pod network adopted');
    return this.attachment(req, p.iface, p.record);
  }

  /** Stops DHCP for `uid` (closing its sockets lets the pod's netns go). Idempotent; needs nothing of the netns. */
  async detach(uid: string): Promise<void> {
    for (const key of this.dhcp.keys()) if (key.startsWith(`${uid}/`)) await this.dhcp.remove(key);
    this.served.delete(uid);
  }

  /** The named drop counters of the guest filter in the pod's netns (mac_spoof, ip_spoof, metadata, …). */
  async guestDrops(netnsPath: string): Promise<Record<string, CounterValue>> {
    return parseNftCounters(await this.tools.nftRead(listCountersArgs('bridge', this.nftTable), netnsPath));
  }

  /** Uids whose pod network this object serves now. */
  attached(): string[] {
    return [...this.served];
  }

  /** Stops the DHCP server when it is this object's own (bindings stay for the running VMs). */
  async close(): Promise<void> {
    if (!this.opts.dhcp) await this.dhcp.close();
  }
}
