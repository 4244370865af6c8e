// The daemon's side of standalone networking: admission checks of a VMI's interfaces, its sandbox and tap fds before launch, status.interfaces, teardown and adoption.
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { VMIInterfaceStatus, VMISpec, VirtualMachineInstance } from '../api/types.js';
import { VmletError } from '../errors.js';
import { overlaps, parseCidr } from '../net/ipv4.js';
import {
  DEFAULT_VM_NETWORK_CIDR,
  NetManager,
  planNetwork,
  qemuNicArgs,
  vhostAvailable,
  type AdoptResult,
  type CommandRunner,
  type NicArgsInput,
} from '../net/index.js';
import type { GuestNetworkInterface } from '../qmp/guest-agent-types.js';
import { closeFds } from '../sys/libc.js';
import type { NetworkConfig } from './config.js';
import { vcpuCount } from './vcpu-pinning.js';
import type { Accel } from '../api/vocabulary.js';

/** A placeholder uid for admission checks (names and MACs derived from it are never used). */
const CHECK_UID = '00000000-0000-0000-0000-000000000000';
/** The kernel and virtio-net limit tap queues; KubeVirt gives one queue per vCPU. */
const MAX_QUEUES = 16;

export interface VmNetworkOptions {
  config: NetworkConfig;
  stateDir: string;
  logger: Logger;
  /** Test seams: host paths, binaries and the command runner. */
  paths?: { netnsDir?: string; proc?: string; sys?: string; tun?: string; devVhostNet?: string };
  runner?: CommandRunner;
}

/** What a VMI's QEMU gets from its sandbox. */
export interface VmNetworkLaunch {
  /** `-netdev`/`-device` pairs referring to the fds below as 3 + fdBase, ... */
  args: string[];
  /** open tap fds (close-on-exec), in the order QEMU receives them; the caller closes them */
  fds: number[];
  /** the sandbox netns the launcher joins before it forks QEMU */
  netnsPath: string;
  interfaces: VMIInterfaceStatus[];
  /** Resolves once the sandbox is whole (its links, ruleset and DHCP are made while QEMU starts); `cont` waits for it. */
  networkFinished?: Promise<void>;
}

/** Tap queues per NIC: one per vCPU with `networkInterfaceMultiqueue` (as KubeVirt), else one. */
export function nicQueues(spec: VMISpec): number {
  return spec.domain.devices.networkInterfaceMultiqueue === true ? Math.min(Math.max(vcpuCount({ spec }), 1), MAX_QUEUES) : 1;
}

/** A NIC as QEMU is given it. */
export interface LaunchNic {
  index: number;
  mac: string;
  model: NicArgsInput['model'];
  queues: number;
}

/**
 * `-netdev`/`-device` pairs for NICs whose tap fds `open` returns (one per queue), numbered as QEMU receives them
 * after `fdBase` others; the fds are closed again if any NIC fails. Standalone sandboxes and pods share it.
 */
export function nicLaunchArgs<N extends LaunchNic>(
  nics: readonly N[],
  open: (nic: N) => number[],
  fdBase: number,
  accel: Accel,
  devVhostNet = '/dev/vhost-net',
): { args: string[]; fds: number[] } {
  const args: string[] = [];
  const fds: number[] = [];
  // vhost-net needs KVM's ioeventfd; under TCG QEMU would only warn and fall back.
  const vhost = accel === 'kvm' && vhostAvailable(devVhostNet);
  try {
    for (const nic of nics) {
      const tapFds = open(nic);
      const first = fdBase + fds.length + 3;
      fds.push(...tapFds);
      args.push(
        ...qemuNicArgs({
          index: nic.index,
          mac: nic.mac,
          model: nic.model,
          tap: { fds: tapFds.map((_, i) => first + i) },
          queues: nic.queues,
          ...(nic.model === 'virtio' ? { vhost } : {}),
          // Interfaces are no boot devices (as in KubeVirt, which has no NIC boot without a bootOrder): no PXE ROM
          // for the firmware to run at every boot.
          romfile: '',
        }),
      );
    }
  } catch (e) {
    closeFds(fds);
    throw e;
  }
  return { args, fds };
}

export class VmNetwork {
  readonly enabled: boolean;
  private readonly mgr: NetManager | undefined;
  private readonly netnsDir: string;
  private readonly devVhostNet: string;

  constructor(private readonly opts: VmNetworkOptions) {
    const c = opts.config;
    this.enabled = c.enabled;
    this.netnsDir = opts.paths?.netnsDir ?? '/run/netns';
    this.devVhostNet = opts.paths?.devVhostNet ?? '/dev/vhost-net';
    if (!c.enabled) return;
    this.mgr = new NetManager({
      stateDir: opts.stateDir,
      subnet: c.subnet,
      bridge: c.bridge,
      nftTable: c.nftTable,
      names: { netnsPrefix: c.netnsPrefix, vethPrefix: c.vethPrefix },
      mtu: c.mtu,
      hostForwarding: c.hostForwarding,
      leaseSeconds: c.leaseSeconds,
      allowHostAccess: c.allowHostAccess,
      allowMetadata: c.allowMetadata,
      ...(c.uplink !== undefined ? { uplink: c.uplink } : {}),
      ...(c.dnsServers !== undefined
        ? { dns: { nameservers: c.dnsServers, search: c.dnsSearch ?? [], ...(c.dnsDomain !== undefined ? { domain: c.dnsDomain } : {}) } }
        : {}),
      ...(opts.runner ? { runner: opts.runner } : {}),
      paths: {
        netnsDir: this.netnsDir,
        ...(opts.paths?.proc ? { proc: opts.paths.proc } : {}),
        ...(opts.paths?.sys ? { sys: opts.paths.sys } : {}),
        ...(opts.paths?.tun ? { tun: opts.paths.tun } : {}),
      },
      log: opts.logger,
    });
  }

  /** The host side: subnet clash check (NET_SUBNET_CLASH), bridge, NAT table, leases. */
  async start(): Promise<void> {
    await this.mgr?.start();
  }

  /**
   * Admission: refuses (with a NET_* code) what setup() would refuse, before the object is stored.
   * Also refuses a masquerade vmNetworkCIDR that overlaps the node's sandbox subnet, and any
   * interface or network when networking is off.
   */
  check(spec: VMISpec): void {
    const ifaces = spec.domain.devices.interfaces;
    const nets = spec.networks;
    if (!this.enabled) {
      if ((ifaces?.length ?? 0) > 0 || (nets?.length ?? 0) > 0) {
        throw new VmletError(
          'NET_DISABLED',
          'this daemon runs with network.enabled: false, so VMIs cannot have interfaces or networks; remove them or enable networking in the daemon config',
        );
      }
      return;
    }
    const plan = planNetwork(ifaces, nets, CHECK_UID, {
      queues: nicQueues(spec),
      autoattachPodInterface: spec.domain.devices.autoattachPodInterface ?? true,
    });
    const node = parseCidr(this.opts.config.subnet);
    for (const i of plan.interfaces) {
      if (i.guestNetwork && overlaps(parseCidr(i.guestNetwork.cidr), node)) {
        throw new VmletError(
          'NET_SUBNET_CLASH',
          `interface ${i.name}: vmNetworkCIDR ${i.guestNetwork.cidr} overlaps the node's sandbox subnet ${this.opts.config.subnet}; pick another range (default ${DEFAULT_VM_NETWORK_CIDR})`,
        );
      }
    }
  }

  private netnsExists(netns: string): boolean {
    return fs.existsSync(path.join(this.netnsDir, netns));
  }

  /**
   * The sandbox of a VMI, made now or kept from an earlier try (a daemon that died between
   * setup and launch), with one tap fd per queue of each NIC. Undefined when networking is off
   * or the VMI has no interface. `fdBase`: how many fds QEMU receives before these.
   */
  async prepare(vmi: VirtualMachineInstance, o: { fdBase: number; accel: Accel }): Promise<VmNetworkLaunch | undefined> {
    const mgr = this.mgr;
    if (!mgr) return undefined;
    const uid = vmi.metadata.uid!;
    const spec = vmi.spec;
    const autoattach = spec.domain.devices.autoattachPodInterface ?? true;
    if ((spec.domain.devices.interfaces?.length ?? 0) === 0 && (spec.networks?.length ?? 0) === 0 && !autoattach) return undefined;
    let info = mgr.get(uid);
    if (!(info && info.interfaces.length > 0 && this.netnsExists(info.netns))) {
      info = await mgr.setup({
        uid,
        hostname: vmi.metadata.name,
        interfaces: spec.domain.devices.interfaces,
        networks: spec.networks,
        plan: { queues: nicQueues(spec), autoattachPodInterface: autoattach },
        finishLater: true,
      });
    }
    const networkFinished = info.finished;
    if (info.interfaces.length === 0) return undefined;
    const { args, fds } = nicLaunchArgs(info.interfaces, (li) => mgr.openTapFds(uid, li.name), o.fdBase, o.accel, this.devVhostNet);
    return { args, fds, netnsPath: info.netnsPath, interfaces: this.interfaces(uid), ...(networkFinished ? { networkFinished } : {}) };
  }

  /** status.interfaces from the lease (the reachable address is the sandbox's). */
  interfaces(uid: string): VMIInterfaceStatus[] {
    return this.mgr?.interfacesStatus(uid).map((s) => ({ ...s, infoSource: 'domain' })) ?? [];
  }

  /**
   * Merges what the guest agent reports into status.interfaces, matched by MAC: the guest's
   * interface name, and for the bridge binding the guest's own addresses. With masquerade the
   * guest's 10.0.2.2 is not reachable from outside, so the sandbox address stays (as in KubeVirt).
   */
  withGuestInfo(uid: string, guest: readonly GuestNetworkInterface[]): VMIInterfaceStatus[] {
    const info = this.mgr?.get(uid);
    if (!info) return [];
    return this.interfaces(uid).map((s) => {
      const g = guest.find((x) => x['hardware-address']?.toLowerCase() === s.mac?.toLowerCase());
      if (!g) return s;
      const binding = info.interfaces.find((i) => i.name === s.name)?.binding;
      const out: VMIInterfaceStatus = { ...s, ...(g.name ? { interfaceName: g.name } : {}), infoSource: 'domain, guest-agent' };
      if (binding === 'bridge') {
        const ips = (g['ip-addresses'] ?? [])
          .filter((a) => a['ip-address-type'] === 'ipv4' || !a['ip-address'].startsWith('fe80:'))
          .map((a) => a['ip-address']);
        if (ips.length > 0) {
          out.ipAddresses = ips;
          out.ipAddress = ips[0]!;
        }
      }
      return out;
    });
  }

  /** Removes the sandbox and lease of `uid`; does nothing (and spawns nothing) when there is none. */
  async teardown(uid: string): Promise<void> {
    const mgr = this.mgr;
    if (!mgr) return;
    const info = mgr.get(uid);
    if (!info) return;
    await mgr.teardown(uid);
  }

  /** After a restart: keep the sandboxes of live VMIs (DHCP serves them again), remove every other. */
  async adopt(liveUids: Iterable<string>): Promise<AdoptResult | undefined> {
    const res = await this.mgr?.adopt(liveUids);
    this.#unwhole = new Set(res?.missing ?? []);
    return res;
  }

  /** VMIs whose sandbox adopt() found missing or unfinished. */
  #unwhole = new Set<string>();

  /**
   * After a restart, what a re-adopted QEMU still paused from -S waits for before its first `cont`: rejects
   * (NET_SANDBOX_UNFINISHED) when adopt() found its sandbox missing or unfinished, so the guest never runs in it.
   */
  resumeGate(uid: string): Promise<void> | undefined {
    if (!this.#unwhole.has(uid)) return undefined;
    const gate = Promise.reject(
      new VmletError(
        'NET_SANDBOX_UNFINISHED',
        `the daemon stopped before the network sandbox of VMI ${uid} was finished and before its guest first ran; the guest is not started in it: start the VMI again`,
      ),
    );
    gate.catch(() => undefined); // awaited only if QEMU still waits for its first `cont`
    return gate;
  }

  /** Stops DHCP; sandboxes stay for the VMs, which keep running. */
  async close(): Promise<void> {
    await this.mgr?.close();
  }
}
