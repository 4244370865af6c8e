// Pure QEMU arguments for a NIC on a tap: `-netdev tap,...` (by fd or by name) and the matching `-device`.
import fs from 'node:fs';
import { VmletError } from '../errors.js';
import { normalizeMac } from './mac.js';
import type { NicModel } from './types.js';

const QEMU_DEVICE: Record<NicModel, string> = {
  virtio: 'virtio-net-pci',
  e1000: 'e1000',
  e1000e: 'e1000e',
  rtl8139: 'rtl8139',
};

/** Escapes a QEMU option value (`,` → `,,`); control characters and empty values are refused. */
export function qemuOptValue(v: string): string {
  if (v === '' || /[\u0000-\u001f\u007f]/.test(v)) throw new VmletError('NET_INVALID_NAME', `value ${JSON.stringify(v)} cannot go into a QEMU option`);
  return v.replace(/,/g, ',,');
}

export type TapSource =
  /** fds open in the QEMU process (one per queue), e.g. received from the daemon */
  | { fds: number[]; vhostFds?: number[] }
  /** a tap that QEMU opens itself by name (QEMU must run in the sandbox netns) */
  | { ifname: string };

export interface NicArgsInput {
  /** netdev/device ids: net<index> / net<index>-nic */
  index: number;
  mac: string;
  model: NicModel;
  tap: TapSource;
  /** queues (fds.length when given by fd); > 1 enables virtio-net mq */
  queues?: number;
  /** vhost-net (virtio only): use vhostAvailable() to decide */
  vhost?: boolean;
  /** `''` disables the option ROM (romfile=); undefined leaves QEMU's default */
  romfile?: string;
  bootIndex?: number;
  /** PCI bus for the device (e.g. a pcie-root-port id on q35) */
  bus?: string;
}

function checkFd(n: number, what: string): number {
  if (!Number.isInteger(n) || n < 3) throw new VmletError('NET_INVALID_FD', `${what} ${n} is not a usable fd number (an integer ≥ 3)`);
  return n;
}

/** True if the host offers vhost-net (`/dev/vhost-net` exists). */
export function vhostAvailable(devVhostNet = '/dev/vhost-net'): boolean {
  return fs.existsSync(devVhostNet);
}

/**
 * `['-netdev', 'tap,id=net0,...', '-device', 'virtio-net-pci,netdev=net0,mac=...']` for one NIC.
 * By name: `ifname=X,script=no,downscript=no`. By fd: `fd=N` (one queue) or `fds=a:b` (several).
 * Multiqueue adds `queues=` to the netdev and `mq=on,vectors=2q+2` to a virtio device.
 */
export function qemuNicArgs(n: NicArgsInput): string[] {
  if (!Number.isInteger(n.index) || n.index < 0) throw new VmletError('NET_INVALID_PLAN', `bad NIC index ${n.index}`);
  const id = `net${n.index}`;
  const mac = normalizeMac(n.mac);
  const device = QEMU_DEVICE[n.model];
  if (device === undefined) throw new VmletError('NET_UNSUPPORTED_MODEL', `model ${JSON.stringify(n.model)} has no QEMU device`);
  const virtio = n.model === 'virtio';
  const nd: string[] = ['tap', `id=${id}`];
  let queues: number;
  if ('fds' in n.tap) {
    const fds = n.tap.fds.map((f) => checkFd(f, 'tap fd'));
    if (fds.length === 0) throw new VmletError('NET_INVALID_FD', 'no tap fd given');
    queues = fds.length;
    if (n.queues !== undefined && n.queues !== queues) throw new VmletError('NET_INVALID_FD', `${queues} tap fds for ${n.queues} queues`);
    nd.push(queues === 1 ? `fd=${fds[0]}` : `fds=${fds.join(':')}`);
    const vfds = n.tap.vhostFds?.map((f) => checkFd(f, 'vhost fd'));
    if (vfds !== undefined) {
      if (vfds.length !== queues) throw new VmletError('NET_INVALID_FD', `${vfds.length} vhost fds for ${queues} queues`);
      if (!virtio || n.vhost === false) throw new VmletError('NET_INVALID_FD', 'vhost fds need a virtio NIC with vhost');
      nd.push(queues === 1 ? `vhostfd=${vfds[0]}` : `vhostfds=${vfds.join(':')}`);
    }
  } else {
    if (!/^[A-Za-z0-9_.-]{1,15}$/.test(n.tap.ifname))
      throw new VmletError('NET_INVALID_NAME', `tap name ${JSON.stringify(n.tap.ifname)} is not a valid interface name`);
    queues = n.queues ?? 1;
    nd.push(`ifname=${qemuOptValue(n.tap.ifname)}`, 'script=no', 'downscript=no');
    if (queues > 1) nd.push(`queues=${queues}`);
  }
  if (!Number.isInteger(queues) || queues < 1 || queues > 64) throw new VmletError('NET_INVALID_QUEUES', `queues must be 1-64, not ${queues}`);
  if (queues > 1 && !virtio) throw new VmletError('NET_INVALID_QUEUES', `multiqueue needs model virtio, not ${n.model}`);
  if (n.vhost === true) {
    if (!virtio) throw new VmletError('NET_INVALID_PLAN', `vhost-net needs model virtio, not ${n.model}`);
    nd.push('vhost=on');
  }
  const dev: string[] = [device, `id=${id}-nic`, `netdev=${id}`, `mac=${mac}`];
  if (virtio && queues > 1) dev.push('mq=on', `vectors=${2 * queues + 2}`);
  if (n.bus !== undefined) dev.push(`bus=${qemuOptValue(n.bus)}`);
  if (n.bootIndex !== undefined) {
    if (!Number.isInteger(n.bootIndex) || n.bootIndex < 0) throw new VmletError('NET_INVALID_PLAN', `bad bootindex ${n.bootIndex}`);
    dev.push(`bootindex=${n.bootIndex}`);
  }
  if (n.romfile !== undefined) dev.push(n.romfile === '' ? 'romfile=' : `romfile=${qemuOptValue(n.romfile)}`);
  return ['-netdev', nd.join(','), '-device', dev.join(',')];
}
