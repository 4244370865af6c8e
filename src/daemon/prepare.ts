// Makes what a VMI's QEMU needs before it starts: the accelerator choice, its volume files, and its argv.
import { execFile } from 'node:child_process';
import { constants, open as openCb } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { VirtualMachineInstance } from '../api/types.js';
import { parseQuantity } from '../api/quantity.js';
import { VmletError } from '../errors.js';
import { buildArgv, qgaChardev, qmpChardev, runDirSockets, serialChardev } from '../qemu/argv.js';
import { probeQemu, resolveAccel, type ProbeOptions } from '../qemu/probe.js';
import { planVolumes, type PreparedFile, type ResolvedImage, type ResolvedVolume } from '../qemu/volumes.js';
import { createOverlay } from '../disk/qcow2-overlay.js';
import type { FormatRecords } from '../disk/format-records.js';
import { listenUnixFd } from '../sys/unix-listen.js';
import { closeFds } from '../sys/libc.js';
import { volumeStatuses } from './volume-status.js';
import { refusedHostPaths } from './host-paths.js';
import { prepareQemuDirs, qemuRunDirOf, type QemuUser } from './qemu-sandbox.js';
import { claimDisk, containerDiskImage } from './pod-disks.js';
import type { PodVmNetwork } from './kube-vm-network.js';
import type { PreparedLaunch } from './supervisor.js';
import type { PrepareContext } from './supervisor-deps.js';
import type { VmNetwork } from './vm-network.js';
import type { AccelSetting } from '../api/vocabulary.js';

const run = promisify(execFile);
const openFd = promisify(openCb);

/** A containerDisk image as the node image store knows it. */
export interface StoredImage {
  path: string;
  format: ResolvedImage['format'];
  virtualSize: number;
  digest: string;
}

/** The node image store as prepare sees it. */
export interface ImageLookup {
  resolve(ref: string): StoredImage | undefined;
}

export interface PrepareOptions {
  qemuBinary: string;
  accel: AccelSetting;
  /** A function when it is read live (the cluster config). */
  useEmulation: boolean | (() => boolean);
  /** The same options as the daemon's start-up probe, so both share one cached result. */
  probe?: ProbeOptions;
  genisoimage?: string;
  /** Standalone networking; absent = VMs get no NIC. */
  network?: VmNetwork;
  /**
   * Kubernetes mode: QEMU runs in the launcher pod and sees the run dir at `qemuRunDir` (the daemon reaches it
   * through the `runDir` it is given); files made there are given to `owner` (the pod's uid); the NICs are
   * built in the pod's netns.
   */
  pod?: { qemuRunDir: string; owner: { uid: number; gid: number }; network?: PodVmNetwork; procRoot?: string };
  /**
   * Standalone: the parent of each VMI's scratch folder (`<it>/<uid>`: emptyDisks and containerDisk overlays, what
   * the guest writes), on disk under the state folder rather than in the run folder's tmpfs. Absent: the run dir.
   */
  scratchRoot?: string;
  /** Standalone: checked again at each start (a symlink may have changed since admission); absent: not checked. */
  hostPathsAllow?: readonly string[];
  /** The node image store that containerDisk volumes come from (standalone). */
  images?: ImageLookup;
  /** Where the format of each hostDisk is recorded on first sight; absent: hostDisks are raw. */
  formats?: FormatRecords;
  /**
   * Standalone: QEMU runs as this user (qemu-sandbox.ts). It writes only `<runDir>/qemu` and the scratch folder,
   * both given to it; hostDisks go by fd, and its chardev sockets are bound by the daemon.
   */
  qemuOwner?: QemuUser;
}

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  );
}

/** A sparse file of `size` bytes; O_EXCL when `fresh` is false so an existing disk is never truncated. */
async function sparseFile(p: string, size: bigint, replace: boolean): Promise<void> {
  const fh = await fs.open(p, replace ? 'w' : 'wx', 0o600);
  try {
    await fh.truncate(Number(size));
  } finally {
    await fh.close();
  }
}

/** Makes one file; for a hostDisk, says whether it was created now (so its format is known: raw). */
async function makeFile(f: PreparedFile, genisoimage: string): Promise<boolean> {
  switch (f.kind) {
    case 'emptyDisk':
      await sparseFile(f.path, f.sizeBytes, true);
      return true;
    case 'overlay':
      await fs.rm(f.path, { force: true });
      if (!('path' in f.base.file)) throw new VmletError('OVERLAY_FAILED', `containerDisk ${f.volume}: the base image has no path`);
      await createOverlay({ path: f.path, virtualSize: f.base.virtualSize, backing: { file: f.base.file.path, format: f.base.format } });
      return true;
    case 'hostDisk':
      if (await exists(f.path)) return false;
      if (!f.create) throw new VmletError('HOSTDISK_MISSING', `hostDisk ${f.volume}: ${f.path} does not exist; create it or use type DiskOrCreate`);
      await fs.mkdir(path.dirname(f.path), { recursive: true });
      await sparseFile(f.path, f.sizeBytes, false);
      return true;
    case 'efiVars':
      if (await exists(f.path)) return false;
      await fs.copyFile(f.template, f.path);
      return true;
    case 'cloudInitIso': {
      const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmlet-cidata-'));
      try {
        for (const file of f.files) await fs.writeFile(path.join(dir, file.name), file.data);
        await run(genisoimage, ['-quiet', '-output', f.path, '-volid', f.label, '-joliet', '-rock', ...f.files.map((x) => path.join(dir, x.name))]);
      } catch (e) {
        throw new VmletError('CLOUDINIT_ISO_FAILED', `cloud-init volume ${f.volume}: could not build the cidata ISO`, { cause: e });
      } finally {
        await fs.rm(dir, { recursive: true, force: true });
      }
      return true;
    }
  }
}

/** Each containerDisk's image and each claim's disk: from the node image store (standalone) or the launcher pod (cluster). */
async function resolveSources(
  vmi: VirtualMachineInstance,
  opts: PrepareOptions,
  at: PrepareContext,
): Promise<{ images: Record<string, ResolvedImage>; claims: Record<string, ResolvedImage> }> {
  const images: Record<string, ResolvedImage> = {};
  const claims: Record<string, ResolvedImage> = {};
  const pod = opts.pod;
  const inPod = pod && at.launcherPid !== undefined ? { o: { procRoot: pod.procRoot ?? '/proc', owner: pod.owner }, pid: at.launcherPid } : undefined;
  for (const vol of vmi.spec.volumes ?? []) {
    if (vol.containerDisk !== undefined) {
      images[vol.name] = inPod ? await containerDiskImage(inPod.o, vmi, vol, inPod.pid) : storeImage(vol.name, vol.containerDisk.image, opts.images);
    } else if (inPod && (vol.persistentVolumeClaim !== undefined || vol.ephemeral !== undefined)) {
      const readOnly = vol.ephemeral !== undefined || vol.persistentVolumeClaim?.readOnly === true;
      claims[vol.name] = await claimDisk(inPod.o, vmi, vol, inPod.pid, readOnly);
    }
  }
  return { images, claims };
}

/** A containerDisk's image from the node image store; IMAGE_NOT_FOUND (the VMI waits for it) when it is not there. */
function storeImage(volume: string, ref: string, images: ImageLookup | undefined): ResolvedImage {
  if (images === undefined) throw new VmletError('PREPARE_FAILED', `containerDisk ${volume}: this daemon has no image store`);
  const rec = images.resolve(ref);
  if (rec === undefined) {
    throw new VmletError(
      'IMAGE_NOT_FOUND',
      `containerDisk ${volume}: no image ${ref} in the node image store; import it with "vmlet image import FILE --name ${ref}"`,
    );
  }
  return { file: { path: rec.path }, format: rec.format, virtualSize: rec.virtualSize, digest: rec.digest };
}

/**
 * Opens every store image read-only and hands it to QEMU by fd (numbered from `fdBase` in QEMU), so QEMU
 * needs no path to the store. Returns the fds (close them on failure).
 */
async function openImages(volumes: Record<string, ResolvedVolume>, fdBase: number): Promise<number[]> {
  const fds: number[] = [];
  const byPath = new Map<string, number>();
  const viaFd = async (file: ResolvedVolume['file'], write = false): Promise<ResolvedVolume['file']> => {
    if (!('path' in file)) return file;
    let n = byPath.get(file.path);
    if (n === undefined) {
      // O_NOFOLLOW: a path through /proc/PID/root must not end in a symlink (it would resolve on the node).
      fds.push(await openFd(file.path, (write ? constants.O_RDWR : constants.O_RDONLY) | constants.O_NOFOLLOW));
      n = fdBase + fds.length - 1;
      byPath.set(file.path, n);
    }
    return file.device ? { fd: n, device: true } : { fd: n };
  };
  try {
    for (const v of Object.values(volumes)) {
      if (v.backing !== undefined) v.backing = { ...v.backing, file: await viaFd(v.backing.file) };
      else if (v.byFd === true) v.file = await viaFd(v.file, !v.readOnly);
    }
  } catch (e) {
    closeFds(fds);
    throw e;
  }
  return fds;
}

/** The daemon's `prepare` step: probe (cached), choose the accelerator, create files, build argv, then the network sandbox and its tap fds. */
export function makePrepare(opts: PrepareOptions): (vmi: VirtualMachineInstance, runDir: string, at?: PrepareContext) => Promise<PreparedLaunch> {
  return async (vmi, runDir, at = {}) => {
    const caps = await probeQemu(opts.qemuBinary, opts.probe ?? {});
    if (!opts.pod && !caps.seccomp) {
      throw new VmletError(
        'QEMU_NO_SECCOMP',
        `${opts.qemuBinary} has no seccomp (-sandbox fails), and vmlet does not start QEMU without it; install a QEMU built with libseccomp (Debian's is)`,
      );
    }
    const choice = resolveAccel(opts.accel, typeof opts.useEmulation === 'function' ? opts.useEmulation() : opts.useEmulation, caps);
    at.accelChosen?.(choice.accel);
    const pod = opts.pod;
    // Paths as QEMU sees them; the daemon makes the files through its own view of the same folder.
    const owner = pod?.owner ?? opts.qemuOwner;
    const qemuRunDir = pod?.qemuRunDir ?? (opts.qemuOwner ? qemuRunDirOf(runDir) : runDir);
    const refused = !pod && opts.hostPathsAllow !== undefined ? refusedHostPaths(vmi.spec, opts.hostPathsAllow) : [];
    if (refused[0]) throw new VmletError(refused[0].error.code, `spec.${refused[0].field}: ${refused[0].error.message}`, { details: refused[0].error.details });
    const { images, claims } = await resolveSources(vmi, opts, at);
    at.trace?.('prepare.sources');
    const scratchDir = !pod && opts.scratchRoot !== undefined ? path.join(opts.scratchRoot, vmi.metadata.uid!) : undefined;
    if (scratchDir !== undefined) await prepareScratch(vmi, scratchDir);
    if (opts.qemuOwner) await prepareQemuDirs(opts.qemuOwner, runDir, scratchDir);
    const plan = planVolumes(vmi, qemuRunDir, { ...(caps.ovmf ? { ovmf: caps.ovmf } : {}), images, claims, ...(scratchDir ? { scratchDir } : {}) });
    for (const f of plan.files) {
      const inRunDir = f.path.startsWith(`${qemuRunDir}/`);
      const file = pod && inRunDir ? { ...f, path: path.join(runDir, path.relative(qemuRunDir, f.path)) } : f;
      const created = await makeFile(file, opts.genisoimage ?? 'genisoimage');
      const inScratch = scratchDir !== undefined && f.path.startsWith(`${scratchDir}/`);
      if (owner && (inRunDir || (inScratch && !pod))) await fs.chown(file.path, owner.uid, owner.gid);
      // An unprivileged QEMU cannot open root's files: the daemon opens the (resolved) path and hands the fd over.
      if (f.kind === 'hostDisk')
        await resolveHostDisk(plan.volumes[f.volume], f.volume, f.path, created, { formats: opts.formats, byFd: opts.qemuOwner !== undefined });
    }
    // QEMU fds 3, 4, …: the images first, then the NICs' taps, then (standalone) QMP's listening socket.
    const diskFds = await openImages(plan.volumes, 3);
    at.trace?.('prepare.disks');
    const prepared: PreparedLaunch = { argv: [], fds: diskFds, accel: choice.accel, softwareEmulation: choice.softwareEmulation };
    try {
      const ctx: Parameters<typeof buildArgv>[1] = {
        qemuBinary: opts.qemuBinary,
        runDir: qemuRunDir,
        accel: choice.accel,
        machineTypes: caps.machineTypeNames,
        cpuModels: caps.cpuModels,
        volumes: plan.volumes,
        sandbox: caps.seccomp,
      };
      if (caps.ovmf) ctx.ovmf = caps.ovmf;
      prepared.argv = buildArgv(vmi, ctx);
      prepared.volumeStatus = volumeStatuses(vmi, plan.volumes);
      if (choice.emulationReason !== undefined) {
        prepared.emulation = { reason: choice.emulationReason, message: choice.emulationMessage ?? '' };
      }
      at.trace?.('prepare.argv');
      await addNetwork(prepared, vmi, opts, at);
      if (prepared.interfaces) at.trace?.('prepare.network');
      if (!pod) passSockets(prepared, runDir, qemuRunDir);
    } catch (e) {
      closeFds(prepared.fds);
      throw e;
    }
    return prepared;
  };
}

/**
 * Standalone: the daemon binds QMP's, the serial console's and the guest agent's sockets in the run dir and QEMU
 * inherits them (the last fds), so connecting never polls for a file and an unprivileged QEMU needs no write access
 * there. `qemuRunDir`: the folder the argv names them in.
 */
function passSockets(prepared: PreparedLaunch, runDir: string, qemuRunDir: string): void {
  const daemonSide = runDirSockets(runDir);
  for (const [chardev, at] of [
    [qmpChardev, daemonSide.qmp],
    [serialChardev, daemonSide.serial],
    [qgaChardev, daemonSide.qga],
  ] as const) {
    const byPath = chardev(qemuRunDir);
    if (!prepared.argv.includes(byPath)) continue;
    const byFd = chardev(qemuRunDir, 3 + prepared.fds.length);
    prepared.fds = [...prepared.fds, listenUnixFd(at)];
    prepared.argv = prepared.argv.map((a) => (a === byPath ? byFd : a));
  }
}

/** The NICs: the pod's (built in its netns) or the standalone sandbox's, after the disks' fds. */
async function addNetwork(prepared: PreparedLaunch, vmi: VirtualMachineInstance, opts: PrepareOptions, at: PrepareContext): Promise<void> {
  const fdBase = prepared.fds.length;
  const pod = opts.pod;
  if (pod) {
    if (at.launcherPid === undefined) throw new VmletError('PREPARE_FAILED', "the pod's launcher has not connected, so its netns is unknown");
    const net = await pod.network?.prepare(vmi, { fdBase, accel: prepared.accel, launcherPid: at.launcherPid });
    if (net) {
      prepared.argv = [...prepared.argv, ...net.args];
      prepared.fds = [...prepared.fds, ...net.fds];
      prepared.interfaces = net.interfaces;
    }
    return;
  }
  const net = await opts.network?.prepare(vmi, { fdBase, accel: prepared.accel });
  if (net) {
    prepared.argv = [...prepared.argv, ...net.args];
    prepared.fds = [...prepared.fds, ...net.fds];
    prepared.netnsPath = net.netnsPath;
    prepared.interfaces = net.interfaces;
    if (net.networkFinished) prepared.networkFinished = net.networkFinished;
  }
}

/**
 * A hostDisk resolved once: its format (raw when vmlet just made it, else what was recorded when vmlet first saw the
 * file), whether it is a block device, and with `byFd` its real path for the daemon to open (HOSTDISK_NOT_A_DISK for
 * a directory, fifo or socket, which QEMU kept root would refuse in its own words).
 */
async function resolveHostDisk(
  v: ResolvedVolume | undefined,
  volume: string,
  file: string,
  created: boolean,
  o: { formats: FormatRecords | undefined; byFd: boolean },
): Promise<void> {
  if (v === undefined || (o.formats === undefined && !o.byFd)) return;
  const real = await fs.realpath(file);
  const st = await fs.stat(real);
  if (!st.isFile() && !st.isBlockDevice()) {
    if (!o.byFd) return;
    throw new VmletError(
      'HOSTDISK_NOT_A_DISK',
      `hostDisk ${volume}: ${real} is ${st.isDirectory() ? 'a directory' : 'not a regular file'}, not a disk image or block device`,
    );
  }
  if (st.isBlockDevice()) v.file = { ...v.file, device: true };
  if (o.byFd && 'path' in v.file) Object.assign(v, { byFd: true, file: { ...v.file, path: real } });
  if (o.formats === undefined) return;
  if (created) {
    await o.formats.record(real, 'raw');
    v.virtualSize = st.size;
    return;
  }
  const seen = await o.formats.formatOf(real, `hostDisk ${real}`);
  v.format = seen.format;
  v.virtualSize = seen.virtualSize;
}

/** Makes the VMI's scratch folder; SCRATCH_SPACE_LOW when its emptyDisks' capacity exceeds what the file system has free. */
async function prepareScratch(vmi: VirtualMachineInstance, dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const wanted = (vmi.spec.volumes ?? []).reduce((sum, v) => sum + (v.emptyDisk ? parseQuantity(v.emptyDisk.capacity) : 0n), 0n);
  if (wanted === 0n) return;
  const st = await fs.statfs(dir);
  const free = BigInt(st.bavail) * BigInt(st.bsize);
  if (wanted > free) {
    throw new VmletError(
      'SCRATCH_SPACE_LOW',
      `the emptyDisk volumes ask for ${wanted} bytes but ${dir} has ${free} bytes free; make them smaller or free space under the state folder`,
      { details: { wantedBytes: Number(wanted), freeBytes: Number(free), dir } },
    );
  }
}
