// The daemon's side of a VM's network in Kubernetes mode: the binding built in its launcher pod's netns, the tap fds and QEMU args, status.interfaces, adoption after a restart, release.
import path from 'node:path';
import type { Logger } from 'pino';
import type { VMIInterfaceStatus, VirtualMachineInstance } from '../api/types.js';
import type { Accel } from '../api/vocabulary.js';
import { PodNetwork, type PodAttachRequest } from '../net/pod-network.js';
import { closeFds } from '../sys/libc.js';
import { nicLaunchArgs, nicQueues, type VmNetworkLaunch } from './vm-network.js';

export interface PodVmNetworkOptions {
  logger: Logger;
  /** The host's procfs (hostPID): the pod's netns and resolv.conf are reached through its launcher's pid. */
  procRoot: string;
  /** Test seam; default a PodNetwork of its own. */
  podNetwork?: PodNetwork;
  devVhostNet?: string;
  /** config `network.allowMetadata`: guests may reach 169.254.169.254 */
  allowMetadata?: boolean;
}

export class PodVmNetwork {
  private readonly net: PodNetwork;

  constructor(private readonly o: PodVmNetworkOptions) {
    this.net = o.podNetwork ?? new PodNetwork({ log: o.logger, proc: o.procRoot, allowMetadata: o.allowMetadata === true });
  }

  private request(vmi: VirtualMachineInstance, launcherPid: number): PodAttachRequest {
    const spec = vmi.spec;
    return {
      netnsPath: path.join(this.o.procRoot, String(launcherPid), 'ns', 'net'),
      uid: vmi.metadata.uid!,
      hostname: vmi.metadata.name,
      interfaces: spec.domain.devices.interfaces,
      networks: spec.networks,
      plan: { queues: nicQueues(spec), autoattachPodInterface: spec.domain.devices.autoattachPodInterface ?? true },
      resolvConfPath: path.join(this.o.procRoot, String(launcherPid), 'root', 'etc', 'resolv.conf'),
      logger: this.o.logger,
    };
  }

  /** Builds the binding in the pod of `launcherPid` and returns QEMU's NIC args and tap fds; undefined for a VMI without NICs. */
  async prepare(
    vmi: VirtualMachineInstance,
    o: { fdBase: number; accel: Accel; launcherPid: number },
  ): Promise<Omit<VmNetworkLaunch, 'netnsPath'> | undefined> {
    const att = await this.net.attach(this.request(vmi, o.launcherPid));
    if (att.nics.length === 0) return undefined;
    try {
      const { args, fds } = nicLaunchArgs(att.nics, (nic) => att.fds[att.nics.indexOf(nic)] ?? [], o.fdBase, o.accel, this.o.devVhostNet);
      return { args, fds, interfaces: statusOf(att.status) };
    } catch (e) {
      closeFds(att.fds.flat());
      await this.net.detach(att.uid);
      throw e;
    }
  }

  /** After a daemon restart: DHCP served again for a running VM; its status.interfaces. */
  async adopt(vmi: VirtualMachineInstance, launcherPid: number): Promise<VMIInterfaceStatus[]> {
    return statusOf((await this.net.adopt(this.request(vmi, launcherPid))).status);
  }

  /** Stops serving `uid` (the binding dies with the pod's netns). */
  async release(uid: string): Promise<void> {
    await this.net.detach(uid);
  }

  async close(): Promise<void> {
    await this.net.close();
  }
}

function statusOf(s: ReadonlyArray<{ name: string; mac: string; ipAddress?: string; ipAddresses?: string[] }>): VMIInterfaceStatus[] {
  return s.map((x) => ({ ...x, infoSource: 'domain' }));
}
