// Standalone-mode networking of a node: the host bridge and NAT, one netns sandbox per VMI with its binding, tap and DHCP, cleanup and adoption after a restart.
import fs from 'node:fs';
import path from 'node:path';
import { VmletError } from '../errors.js';
import { withNetns } from '../sys/netns.js';
import { openTap } from '../sys/tun.js';
import {
  freshNetnsRuleset,
  gatewayOf,
  leaseInterface,
  planBinding,
  planSandboxInside,
  planSandboxNetns,
  planSandboxVeth,
  type HostNetParams,
  type PodInterfaceState,
} from './commands.js';
import { DhcpServer, dhcpLeaseConfig, type DhcpEvent, type NetLogger } from './dhcp-server.js';
import { execRunner } from './exec.js';
import { listCountersArgs, parseNftCounters, sandboxSysctls } from './guest-filter.js';
import { ensureHostNetwork, removeHostNetwork } from './host-side.js';
import { IpTools, isGone } from './ip-tools.js';
import { Ipam } from './ipam.js';
import { LeaseRecorder } from './lease-recorder.js';
import { parseCidr } from './ipv4.js';
import { DEFAULT_NAMES, checkNameConfig, checkNftName, checkIfName, sandboxNames, type NameConfig } from './names.js';
import { planNetwork } from './plan.js';
import { readHostDns, type DnsSettings } from './resolv.js';
import type { AdoptResult, GuestDrops, InterfaceStatus, NetManagerOptions, NetPaths, SandboxInfo, SandboxRequest } from './sandbox-types.js';
import type { IpCommand, IpRoute, Lease, LeaseInterface, SandboxNames } from './types.js';

export type { AdoptResult, GuestDrops, InterfaceStatus, NetManagerOptions, NetPaths, SandboxInfo, SandboxRequest } from './sandbox-types.js';

/**
 * The default host subnet. 10.213.0.0/16 is not the default of any tool commonly found next to
 * vmlet (Docker 172.17+/16, libvirt 192.168.122/24, Podman 10.88/16, Kubernetes pods/services
 * 10.244/16, 10.96/12, k3s 10.42-43/16, LXD 10.x random /24, home routers 192.168.x/24); a clash is
 * still detected from the host's routes and refused with NET_SUBNET_CLASH.
 */
export const DEFAULT_SUBNET = '10.213.0.0/16';
export const DEFAULT_BRIDGE = 'vmlet0';
export const DEFAULT_NFT_TABLE = 'vmlet';
export const DEFAULT_LEASE_SECONDS = 86400;

const silent: NetLogger = { info: () => {}, warn: () => {}, debug: () => {} };

/**
 * Owns the node's standalone networking. Construction does nothing; `start()` loads the leases and
 * brings up the host side (bridge, NAT table). One DhcpServer serves every sandbox.
 */
export class NetManager {
  readonly subnet: string;
  readonly bridge: string;
  readonly nftTable: string;
  readonly gateway: string;
  readonly dhcp: DhcpServer;
  private readonly opts: NetManagerOptions;
  private readonly names: NameConfig;
  private readonly paths: NetPaths;
  private readonly tools: IpTools;
  private readonly log: NetLogger;
  private ipam: Ipam | null = null;
  private leaseUpdates: Promise<unknown> = Promise.resolve();

  constructor(opts: NetManagerOptions) {
    this.opts = opts;
    this.subnet = opts.subnet ?? DEFAULT_SUBNET;
    this.bridge = opts.bridge ?? DEFAULT_BRIDGE;
    this.nftTable = opts.nftTable ?? DEFAULT_NFT_TABLE;
    this.names = opts.names ?? DEFAULT_NAMES;
    this.gateway = gatewayOf(this.subnet);
    this.paths = {
      netnsDir: opts.paths?.netnsDir ?? '/run/netns',
      proc: opts.paths?.proc ?? '/proc',
      sys: opts.paths?.sys ?? '/sys',
      tun: opts.paths?.tun ?? '/dev/net/tun',
      resolvConf: opts.paths?.resolvConf ?? ['/etc/resolv.conf', '/run/systemd/resolve/resolv.conf'],
    };
    this.log = opts.log ?? silent;
    this.tools = new IpTools(
      opts.runner ?? execRunner,
      { ip: opts.bins?.ip ?? 'ip', nft: opts.bins?.nft ?? 'nft', nsenter: opts.bins?.nsenter ?? 'nsenter' },
      // netlink's `netns add` makes the sandbox where netnsPath() looks for it
      { netnsDir: this.paths.netnsDir },
    );
    this.dhcp = new DhcpServer({
      log: this.log,
      ...(opts.now ? { now: opts.now } : {}),
      selfNetns: path.join(this.paths.proc, 'thread-self/ns/net'),
      onEvent: (e) => this.onDhcpEvent(e),
    });
  }

  private params(): HostNetParams {
    return {
      bridge: this.bridge,
      subnet: this.subnet,
      nftTable: this.nftTable,
      ...(this.opts.uplink !== undefined ? { uplink: this.opts.uplink } : {}),
      ...(this.opts.mtu !== undefined ? { mtu: this.opts.mtu } : {}),
      allowHostAccess: this.opts.allowHostAccess === true,
    };
  }

  private get leases(): Ipam {
    if (!this.ipam) throw new VmletError('NET_NOT_STARTED', 'NetManager.start() has not run');
    return this.ipam;
  }

  netnsPath(netns: string): string {
    return path.join(this.paths.netnsDir, netns);
  }

  /** Loads the leases and sets up the host side. Validates every name and the subnet first. */
  async start(): Promise<void> {
    checkNameConfig(this.names);
    checkIfName(this.bridge, 'bridge name');
    checkNftName(this.nftTable);
    parseCidr(this.subnet);
    await this.ensureHost();
    this.ipam ??= await Ipam.open({ stateDir: this.opts.stateDir, subnet: this.subnet, ...(this.opts.now ? { now: this.opts.now } : {}) });
  }

  /** Host routes (`ip -json route`) that a subnet must not overlap. */
  async hostRoutes(): Promise<IpRoute[]> {
    return this.tools.ipJson<IpRoute[]>(['route', 'show']);
  }

  /**
   * Checks the subnet against the host's routes (NET_SUBNET_CLASH), then creates the bridge with
   * the gateway address if missing, loads the host table (NAT, and unless `allowHostAccess` the
   * guard that keeps guests off the host) and sets the bridge's sysctls (host-side.ts).
   */
  async ensureHost(): Promise<void> {
    await ensureHostNetwork({
      tools: this.tools,
      params: { ...this.params(), dnsServers: this.dnsSettings().nameservers },
      proc: this.paths.proc,
      hostForwarding: this.opts.hostForwarding ?? true,
      log: this.log,
    });
  }

  /** Removes vmlet's host table and the bridge (other tables and links are not touched). */
  async removeHost(): Promise<void> {
    await removeHostNetwork(this.tools, this.bridge, this.nftTable);
  }

  private dnsSettings(): DnsSettings & { domain?: string } {
    return this.opts.dns ?? readHostDns(this.paths.resolvConf);
  }

  private async serveDhcp(lease: Lease): Promise<void> {
    if (!lease.netns) return;
    for (const li of lease.interfaces ?? []) {
      await this.dhcp.add({
        key: `${lease.uid}/${li.name}`,
        netnsPath: this.netnsPath(lease.netns),
        device: li.bridge,
        config: dhcpLeaseConfig(
          { ...li, clientIp: li.guestIp },
          { ...this.dnsSettings(), hostname: lease.hostname, leaseSeconds: this.opts.leaseSeconds ?? DEFAULT_LEASE_SECONDS },
        ),
      });
    }
  }

  #leaseRecorder: LeaseRecorder | undefined;

  /** Whether and when the lease file is written (lease-recorder.ts: not on every renewal; rate-limited per MAC). */
  get leaseRecorder(): LeaseRecorder {
    this.#leaseRecorder ??= new LeaseRecorder({ leases: () => this.ipam, log: this.log });
    return this.#leaseRecorder;
  }

  private onDhcpEvent(e: DhcpEvent): void {
    this.leaseRecorder.onEvent(e);
    this.leaseUpdates = this.leaseRecorder.settled();
  }

  /** Resolves once lease updates from DHCP events so far are written, those waiting for their interval at once (for tests and orderly shutdown). */
  async flushLeaseUpdates(): Promise<void> {
    await this.#leaseRecorder?.flush();
    await this.leaseUpdates;
  }

  /**
   * Creates the sandbox of a VMI: validates the spec (nothing is created on a bad one), allocates
   * its address, creates netns + veth + bindings + taps, starts DHCP for it. A leftover sandbox of
   * the same uid (a crash during an earlier setup) is removed first; for a VM that is still running
   * after a daemon restart use adopt() instead. On failure everything made here is removed again.
   * With `finishLater` it returns once the netns and the taps exist (the lease holds the address only), and
   * `finished` settles with the rest.
   */
  async setup(req: SandboxRequest): Promise<SandboxInfo> {
    const plan = planNetwork(req.interfaces, req.networks, req.uid, { ...(req.plan ?? {}), names: this.names });
    const ipam = this.leases;
    const { names } = plan;
    for (const l of ipam.list()) {
      if (l.uid !== req.uid && l.netns === names.netns) {
        throw new VmletError('NET_NAME_COLLISION', `uid ${req.uid} maps to sandbox ${names.netns}, which belongs to uid ${l.uid}`);
      }
    }
    const started = Date.now();
    // leftovers of an earlier, interrupted setup of this uid (checked on the file system: no process spawned when clean)
    if (fs.existsSync(this.netnsPath(names.netns)) || fs.existsSync(path.join(this.paths.sys, 'class/net', names.hostVeth))) {
      await this.removeObjects(req.uid, names);
    }
    const subnet = parseCidr(this.subnet);
    const lease = await ipam.allocate(req.uid, {
      netns: names.netns,
      hostVeth: names.hostVeth,
      ...(req.hostname !== undefined ? { hostname: req.hostname } : {}),
    });
    const netnsPath = this.netnsPath(names.netns);
    const mtu = this.opts.mtu ?? 1500;
    let filters: Promise<void> = Promise.resolve();
    try {
      const sp = { names, bridge: this.bridge, address: lease.address, prefix: subnet.prefix, gateway: this.gateway, mtu };
      const pod: PodInterfaceState = { address: lease.address, prefix: subnet.prefix, gateway: this.gateway, mtu };
      const extras = { allowMetadata: this.opts.allowMetadata === true };
      const bindings = plan.interfaces.map((iface) => ({ iface, b: planBinding(iface, pod, req.tap ?? {}, this.nftTable, extras) }));
      const inside = [...planSandboxInside(sp), ...bindings.flatMap(({ b }) => b.ip)];
      // With finishLater the taps come first, alone: they are all QEMU needs before the guest runs.
      const early = req.finishLater ? inside.filter(isTapAdd) : [];
      const late = req.finishLater ? inside.filter((c) => !isTapAdd(c)) : inside;
      const rulesets = bindings.flatMap(({ b }) => (b.nft !== null ? [b.nft] : []));
      // the netns first; then its links (host side, then inside) while the NAT ruleset loads into
      // it: rulesets name interfaces only as strings, so they load before the links exist
      await this.tools.ipBatch(planSandboxNetns(sp));
      // strict rp_filter always, forwarding for masquerade: before any link or packet exists
      const sysctls = sandboxSysctls(bindings.some(({ b }) => b.ipForward));
      withNetns(netnsPath, () => sysctls.forEach(([rel, v]) => fs.writeFileSync(path.join(this.paths.proc, 'sys/net/ipv4', rel), v)), {
        selfNetns: path.join(this.paths.proc, 'thread-self/ns/net'),
      });
      // one ruleset into the netns made above: nothing to replace there
      filters =
        rulesets.length > 0 ? this.tools.nft(rulesets.length === 1 ? freshNetnsRuleset(rulesets[0]!) : rulesets.join(''), netnsPath) : Promise.resolve();
      filters.catch(() => undefined);
      const interfaces = bindings.map(({ iface, b }) => leaseInterface(iface, b));
      // The lease names the interfaces only once the links and the ruleset are in place: adopt() takes a lease
      // without them for a sandbox left unfinished.
      const finish = async (): Promise<Lease> => {
        await settleAll([this.tools.ipBatch(planSandboxVeth(sp)).then(() => this.tools.ipBatch(late, netnsPath)), filters]);
        // DHCP needs nothing of the lease write, so both run at once (both settle before a cleanup)
        const done = ipam.update(req.uid, { interfaces });
        await settleAll([done, this.serveDhcp({ ...lease, interfaces })]);
        this.log.info({ uid: req.uid, netns: names.netns, address: lease.address, ms: Date.now() - started }, 'sandbox ready');
        return done;
      };
      if (!req.finishLater) return this.info(await finish());
      await this.tools.ipBatch(early, netnsPath);
      const info = this.info({ ...lease, interfaces });
      // After a turn of the event loop: the argv (and a launcher's HELLO waiting for it) goes out before the batches hold the loop.
      const finished = new Promise((resolve) => setImmediate(resolve)).then(finish).then(() => undefined);
      this.#finishing.set(req.uid, { info, finished });
      const forget = (): void => void (this.#finishing.get(req.uid)?.finished === finished && this.#finishing.delete(req.uid));
      finished.then(forget, forget);
      return { ...info, finished };
    } catch (e) {
      // the ruleset's process settles before its netns goes
      await filters.catch(() => undefined);
      try {
        await this.teardown(req.uid);
      } catch (e2) {
        this.log.warn({ uid: req.uid, err: e2 }, 'cleanup after a failed setup failed');
      }
      throw e;
    }
  }

  /** Sandboxes whose links, ruleset and DHCP are still being made (setup with `finishLater`); teardown waits for them. */
  readonly #finishing = new Map<string, { info: SandboxInfo; finished: Promise<void> }>();

  private info(l: Lease): SandboxInfo {
    const names = l.netns !== undefined && l.hostVeth !== undefined ? { netns: l.netns, hostVeth: l.hostVeth } : sandboxNames(l.uid, this.names);
    return {
      uid: l.uid,
      netns: names.netns,
      netnsPath: this.netnsPath(names.netns),
      hostVeth: names.hostVeth,
      address: l.address,
      prefix: parseCidr(this.subnet).prefix,
      gateway: this.gateway,
      interfaces: l.interfaces ?? [],
    };
  }

  /** The sandbox of `uid` as recorded (or, while it is being finished, as it will be), or undefined. */
  get(uid: string): SandboxInfo | undefined {
    // a sandbox being finished carries its gate, so a caller that reuses it waits for the rest too
    const pending = this.#finishing.get(uid);
    if (pending) return { ...pending.info, finished: pending.finished };
    const l = this.leases.get(uid);
    return l ? this.info(l) : undefined;
  }

  /**
   * Opens the tap of interface `ifaceName` (default: the first) of `uid`'s sandbox: one fd per
   * queue, close-on-exec, for QEMU's `-netdev tap,fd=`/`fds=`. The caller closes them once passed.
   */
  openTapFds(uid: string, ifaceName?: string): number[] {
    const info = this.get(uid);
    if (!info) throw new VmletError('NET_SANDBOX_NOT_FOUND', `no sandbox for uid ${uid}`);
    const li = ifaceName === undefined ? info.interfaces[0] : info.interfaces.find((i) => i.name === ifaceName);
    if (!li) throw new VmletError('NET_SANDBOX_NOT_FOUND', `sandbox of ${uid} has no interface ${ifaceName ?? '(none)'}`);
    return openTap({
      netnsPath: info.netnsPath,
      name: li.tap,
      queues: li.queues,
      tunDevice: this.paths.tun,
      selfNetns: path.join(this.paths.proc, 'thread-self/ns/net'),
    });
  }

  /** The drop counters of `uid`'s guest filter (in its sandbox) and of the host's guard: evidence of what was stopped. */
  async guestDrops(uid: string): Promise<GuestDrops> {
    const info = this.get(uid);
    if (!info) throw new VmletError('NET_SANDBOX_NOT_FOUND', `no sandbox for uid ${uid}`);
    const [sandbox, host] = await Promise.all([
      this.tools.nftRead(listCountersArgs('bridge', this.nftTable), info.netnsPath),
      this.tools.nftRead(listCountersArgs('ip', this.nftTable)),
    ]);
    return { sandbox: parseNftCounters(sandbox), host: parseNftCounters(host) };
  }

  /** KubeVirt-style `status.interfaces` entries: the reachable address of each interface is the sandbox's. */
  interfacesStatus(uid: string): InterfaceStatus[] {
    const s = this.get(uid);
    if (!s) return [];
    return s.interfaces.map((li) => ({ name: li.name, mac: li.mac, ipAddress: s.address, ipAddresses: [s.address] }));
  }

  /**
   * Deletes the host veth (with its peer; the rest goes with the netns), then the netns, in one `ip -force -batch`; missing
   * ones are fine. The veth is deleted, not left to the netns, so its name is free on return (a netns dies asynchronously).
   */
  private async removeObjects(uid: string, names: Pick<SandboxNames, 'netns' | 'hostVeth'>): Promise<string[]> {
    for (const key of this.dhcp.keys()) if (key.startsWith(`${uid}/`)) await this.dhcp.remove(key);
    const cmds = [
      ['link', 'del', checkIfName(names.hostVeth)],
      ['netns', 'del', names.netns],
    ];
    const failed = await this.tools.ipEach(cmds);
    const errors = failed.flatMap((e) => (e !== null && !isGone(e) ? [e.message] : []));
    if (errors.length > 0) throw new VmletError('NET_CLEANUP_FAILED', `cleanup of ${uid}: ${errors.join('; ')}`);
    return cmds.flatMap((c, i) => (failed[i] === null ? [c[2]!] : []));
  }

  /** Removes the sandbox of `uid` (DHCP, veth, netns with its taps and nft table) and releases its lease. Idempotent. */
  async teardown(uid: string): Promise<void> {
    await this.#finishing.get(uid)?.finished.catch(() => undefined);
    const l = this.leases.get(uid);
    const names = l?.netns !== undefined && l.hostVeth !== undefined ? { netns: l.netns, hostVeth: l.hostVeth } : sandboxNames(uid, this.names);
    await this.removeObjects(uid, names);
    await this.leases.release(uid);
    this.log.info({ uid, netns: names.netns }, 'sandbox removed');
  }

  /**
   * After a restart: keeps the sandboxes of `liveUids` (and serves their DHCP again), removes
   * every other sandbox vmlet made: leases of other uids, netns named with vmlet's prefix and host
   * veths on the bridge that no live lease owns.
   */
  async adopt(liveUids: Iterable<string>): Promise<AdoptResult> {
    const live = new Set(liveUids);
    const res: AdoptResult = { kept: [], missing: [], removed: [] };
    let onDisk: string[] = [];
    try {
      onDisk = fs.readdirSync(this.paths.netnsDir).filter((n) => n.startsWith(this.names.netnsPrefix));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const keptNetns = new Set<string>();
    const keptVeths = new Set<string>();
    for (const l of this.leases.list()) {
      if (!live.has(l.uid)) {
        await this.teardown(l.uid);
        res.removed.push(l.uid);
        continue;
      }
      if (l.netns !== undefined && onDisk.includes(l.netns)) {
        keptNetns.add(l.netns);
        if (l.hostVeth !== undefined) keptVeths.add(l.hostVeth);
        if (!l.interfaces?.length) {
          // its links or ruleset were still being made (setup with finishLater) when the daemon stopped
          this.log.warn({ uid: l.uid }, 'sandbox was left unfinished');
          res.missing.push(l.uid);
          continue;
        }
        try {
          await this.serveDhcp(l);
          res.kept.push(l.uid);
        } catch (e) {
          // the netns is there but not whole (no sandbox bridge): setup() will rebuild it
          this.log.warn({ uid: l.uid, err: e }, 'sandbox is incomplete; DHCP cannot serve it');
          res.missing.push(l.uid);
        }
      } else {
        res.missing.push(l.uid);
      }
    }
    for (const ns of onDisk) {
      if (keptNetns.has(ns)) continue;
      try {
        await this.tools.ip(['netns', 'del', ns]);
        res.removed.push(ns);
      } catch (e) {
        if (!isGone(e)) throw e;
      }
    }
    let ports: { ifname: string }[] = [];
    try {
      ports = await this.tools.ipJson<{ ifname: string }[]>(['link', 'show', 'master', this.bridge]);
    } catch (e) {
      if (!isGone(e)) throw e;
    }
    for (const p of ports) {
      if (!p.ifname.startsWith(this.names.vethPrefix) || keptVeths.has(p.ifname)) continue;
      try {
        await this.tools.ip(['link', 'del', p.ifname]);
        res.removed.push(p.ifname);
      } catch (e) {
        if (!isGone(e)) throw e;
      }
    }
    this.log.info({ kept: res.kept.length, missing: res.missing.length, removed: res.removed }, 'network sandboxes adopted');
    return res;
  }

  /** Stops the DHCP server (sandboxes stay). */
  async close(): Promise<void> {
    await this.dhcp.close();
    await this.leaseUpdates;
  }
}

/** `tuntap add`: a tap, which QEMU opens before its guest runs. */
function isTapAdd(c: IpCommand): boolean {
  return c[0] === 'tuntap' && c[1] === 'add';
}

/** Waits for every step, then throws the first failure (no step is left running behind an error). */
async function settleAll(steps: Promise<unknown>[]): Promise<void> {
  for (const r of await Promise.allSettled(steps)) if (r.status === 'rejected') throw r.reason;
}
