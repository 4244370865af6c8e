// Finds a launcher pod's disks through /proc, with no mount on the node: a containerDisk's file in its container's root, a claim's disk.img or device in the launcher's mount namespace.
import fs from 'node:fs/promises';
import path from 'node:path';
import {
  CLAIM_DISK_FILE,
  CONTAINER_DISK_DIR,
  DISK_WAIT_BINARY,
  claimDevicePath,
  claimDiskBytes,
  claimMountPath,
  DEFAULT_FILESYSTEM_OVERHEAD,
} from '../api/pod-volumes.js';
import { parseQuantity } from '../api/quantity.js';
import type { Volume, VirtualMachineInstance } from '../api/types.js';
import { probeImage } from '../disk/image-format.js';
import { VmletError } from '../errors.js';
import { podUidOfPid } from '../qemu/pod-identity.js';
import type { ResolvedImage } from '../qemu/volumes.js';

export interface PodDiskOptions {
  procRoot: string;
  /** Who owns the files the daemon makes in the pod (QEMU's uid there). */
  owner: { uid: number; gid: number };
}

async function cmdline(procRoot: string, pid: number): Promise<string[]> {
  try {
    return (await fs.readFile(path.join(procRoot, String(pid), 'cmdline'), 'utf8')).split('\0').filter((a) => a !== '');
  } catch {
    return [];
  }
}

/** The pid of the pod's containerDisk container for `volume`: vmlet's waiting program with that argument, in the launcher's pod. */
async function diskWaitPid(o: PodDiskOptions, launcherPid: number, volume: string): Promise<number | undefined> {
  const pod = await podUidOfPid(launcherPid, o.procRoot);
  if (pod === undefined) return undefined;
  for (const entry of await fs.readdir(o.procRoot)) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const argv = await cmdline(o.procRoot, pid);
    if (argv[0] !== DISK_WAIT_BINARY || argv[1] !== volume) continue;
    if ((await podUidOfPid(pid, o.procRoot)) === pod) return pid;
  }
  return undefined;
}

/**
 * `p` inside a container whose root is `root` (/proc/PID/root), with the container's symlinks followed inside that
 * root (through /proc/PID/root an absolute link would resolve on the node: /var/run → /run is one).
 */
export async function resolveInRoot(root: string, p: string): Promise<string> {
  const todo = p.split('/').filter((x) => x !== '' && x !== '.');
  const done: string[] = [];
  for (let links = 0; todo.length > 0;) {
    const part = todo.shift()!;
    if (part === '..') {
      done.pop();
      continue;
    }
    const here = path.join(root, ...done, part);
    const st = await fs.lstat(here).catch(() => undefined);
    if (st?.isSymbolicLink()) {
      if (++links > 40) throw new VmletError('IMAGE_NO_DISK', `${p}: too many symlinks in the container`);
      const target = await fs.readlink(here);
      if (target.startsWith('/')) done.length = 0;
      todo.unshift(...target.split('/').filter((x) => x !== '' && x !== '.'));
      continue;
    }
    done.push(part);
  }
  return path.join(root, ...done);
}

/** A directory or file reached through /proc/PID/root must not be a symlink: it would resolve against the node's root, not the container's. */
async function noSymlink(p: string, what: string, want: 'dir' | 'file'): Promise<void> {
  const st = await fs.lstat(p).catch(() => undefined);
  const ok = st !== undefined && (want === 'dir' ? st.isDirectory() : st.isFile() || st.isBlockDevice());
  if (!ok)
    throw new VmletError(
      'IMAGE_NO_DISK',
      `${what}: ${st?.isSymbolicLink() ? 'is a symlink, which vmlet does not follow' : `is not a ${want === 'dir' ? 'folder' : 'regular file'}`}`,
    );
}

/** The one disk file of a containerDisk volume, in its running container; IMAGE_NOT_FOUND while the container is not running (yet). */
export async function containerDiskImage(o: PodDiskOptions, vmi: VirtualMachineInstance, vol: Volume, launcherPid: number): Promise<ResolvedImage> {
  const image = vol.containerDisk?.image ?? '';
  const pid = await diskWaitPid(o, launcherPid, vol.name);
  if (pid === undefined) {
    throw new VmletError(
      'IMAGE_NOT_FOUND',
      `containerDisk ${vol.name}: the container of image ${image} is not running in the launcher pod yet (pulling, or failing: see the pod's events)`,
    );
  }
  const dir = await resolveInRoot(path.join(o.procRoot, String(pid), 'root'), CONTAINER_DISK_DIR);
  const what = `containerDisk ${vol.name} (image ${image})`;
  await noSymlink(dir, `${what}: ${CONTAINER_DISK_DIR}`, 'dir');
  const names = (await fs.readdir(dir)).filter((n) => !n.startsWith('.'));
  if (names.length !== 1)
    throw new VmletError(
      'IMAGE_NO_DISK',
      `${what}: ${CONTAINER_DISK_DIR} holds ${names.length} files (${names.join(', ') || 'none'}); it must hold exactly one disk`,
    );
  const file = path.join(dir, names[0]!);
  await noSymlink(file, `${what}: ${CONTAINER_DISK_DIR}/${names[0]}`, 'file');
  const probed = await probeImage(file, what);
  return { file: { path: file }, format: probed.format, virtualSize: probed.virtualSize, digest: '' };
}

/** What the controller recorded for a claim volume: its capacity and the share kept free on a Filesystem claim. */
function claimInfo(vmi: VirtualMachineInstance, volume: string): { capacityBytes: number | undefined; overhead: number; block: boolean } {
  const info = vmi.status?.volumeStatus?.find((v) => v.name === volume)?.persistentVolumeClaimInfo;
  const storage = info?.capacity?.storage;
  const overhead = info?.filesystemOverhead !== undefined ? Number(info.filesystemOverhead) : DEFAULT_FILESYSTEM_OVERHEAD;
  return {
    capacityBytes: storage !== undefined ? Number(parseQuantity(storage)) : undefined,
    overhead: Number.isFinite(overhead) ? overhead : DEFAULT_FILESYSTEM_OVERHEAD,
    block: info?.volumeMode === 'Block',
  };
}

/**
 * The disk of a persistentVolumeClaim (or ephemeral) volume as the daemon reaches it in the launcher's mount
 * namespace: the Block device, or `disk.img` at the root of a Filesystem claim, made sparse on first use at the
 * capacity less the filesystem overhead (a read-only claim without one is refused). Raw, as KubeVirt's.
 */
export async function claimDisk(o: PodDiskOptions, vmi: VirtualMachineInstance, vol: Volume, launcherPid: number, readOnly: boolean): Promise<ResolvedImage> {
  const root = path.join(o.procRoot, String(launcherPid), 'root');
  const info = claimInfo(vmi, vol.name);
  const what = `volume ${vol.name} (claim ${vol.persistentVolumeClaim?.claimName ?? vol.ephemeral?.persistentVolumeClaim.claimName})`;
  if (info.block) {
    const dev = await resolveInRoot(root, claimDevicePath(vol.name));
    await noSymlink(dev, what, 'file');
    const probed = await probeImage(dev, what);
    return { file: { path: dev, device: true }, format: 'raw', virtualSize: probed.virtualSize, digest: '' };
  }
  const dir = await resolveInRoot(root, claimMountPath(vol.name));
  await noSymlink(dir, `${what}: its mount`, 'dir');
  const file = path.join(dir, CLAIM_DISK_FILE);
  const st = await fs.lstat(file).catch(() => undefined);
  if (st === undefined) {
    if (readOnly) throw new VmletError('IMAGE_NO_DISK', `${what}: the claim is read-only and has no ${CLAIM_DISK_FILE}`);
    if (info.capacityBytes === undefined)
      throw new VmletError('PREPARE_FAILED', `${what}: the controller has not recorded the claim's capacity in status.volumeStatus`);
    const size = claimDiskBytes(info.capacityBytes, info.overhead);
    const fh = await fs.open(file, 'wx', 0o660);
    try {
      await fh.truncate(size);
      await fh.chown(o.owner.uid, o.owner.gid);
    } finally {
      await fh.close();
    }
    return { file: { path: file }, format: 'raw', virtualSize: size, digest: '' };
  }
  await noSymlink(file, `${what}: ${CLAIM_DISK_FILE}`, 'file');
  return { file: { path: file }, format: 'raw', virtualSize: st.size, digest: '' };
}
