// Plans the files a VMI's volumes need (pure): where each volume's image lives and which files the caller must create first.

import { posix } from 'node:path';
import { parseQuantity } from '../api/quantity.js';
import type { VirtualMachineInstance } from '../api/types.js';
import type { ImageFormat } from '../api/vocabulary.js';
import { VmletError } from '../errors.js';
import { diskKind } from '../api/disk-kind.js';

export type { ImageFormat } from '../api/vocabulary.js';

/**
 * How QEMU reaches an image file: by path, or by an fd it inherits (passed through `-add-fd`, opened as
 * /dev/fdset/N). `device`: a block device, which QEMU opens with its `host_device` driver, not `file`.
 */
export type ImageFile = { path: string; device?: true } | { fd: number; device?: true };

/** Where the image of one volume lives on the node, as QEMU will open it. */
export interface ResolvedVolume {
  file: ImageFile;
  format: ImageFormat;
  /** Attach read-only whatever the disk says. */
  readOnly: boolean;
  /** A copy-on-write overlay: `file` is vmlet's qcow2 overlay, `backing` its base, always opened read-only. */
  backing?: { file: ImageFile; format: ImageFormat };
  /** A containerDisk: the store image's digest (its file is `backing`, or `file` itself when read-only); '' when unknown. */
  imageDigest?: string;
  /** The daemon opens `file` itself and hands QEMU the fd (a store image, a claim's disk); a `backing` always goes by fd. */
  byFd?: boolean;
  /** Bytes the guest sees, when known before launch. */
  virtualSize?: number;
}

/** A containerDisk's image in the node image store, as prepare resolved it. */
export interface ResolvedImage {
  /** The image file (by path for planning; prepare hands QEMU an fd). */
  file: ImageFile;
  format: ImageFormat;
  virtualSize: number;
  digest: string;
}

export interface CloudInitFile {
  name: 'meta-data' | 'user-data' | 'network-data';
  data: Buffer;
}

/** A file the caller must prepare before QEMU starts. */
export type PreparedFile =
  /** A fresh sparse raw file of sizeBytes (replace whatever is there). */
  | { kind: 'emptyDisk'; volume: string; path: string; sizeBytes: bigint }
  /** A host disk: must exist (create false), or is created sparse with sizeBytes if missing (DiskOrCreate). */
  | { kind: 'hostDisk'; volume: string; path: string; create: false; sizeBytes: null }
  | { kind: 'hostDisk'; volume: string; path: string; create: true; sizeBytes: bigint }
  /** An ISO 9660 image with volume label `cidata` holding `files` (e.g. genisoimage -V cidata -J -r). */
  | { kind: 'cloudInitIso'; volume: string; path: string; label: 'cidata'; files: CloudInitFile[] }
  /** A private copy of the OVMF variable store template (copied if missing). */
  | { kind: 'efiVars'; path: string; template: string }
  /** A fresh qcow2 overlay over a containerDisk's image (replace whatever is there: a new VMI starts from the clean base). */
  | { kind: 'overlay'; volume: string; path: string; base: ResolvedImage };

export interface VolumePlan {
  /** Keyed by volume name. */
  volumes: Record<string, ResolvedVolume>;
  files: PreparedFile[];
}

export interface OvmfPaths {
  code: string;
  vars: string;
}

/** The per-VM copy of the EFI variable store inside the run directory. */
export function efiVarsPath(runDir: string): string {
  return posix.join(runDir, 'efi-vars.fd');
}

/** True if the VMI boots with EFI firmware. */
export function usesEfi(vmi: VirtualMachineInstance): boolean {
  return vmi.spec.domain.firmware?.bootloader?.efi !== undefined;
}

function text(s: string | undefined, b64: string | undefined): Buffer | undefined {
  if (s !== undefined) return Buffer.from(s, 'utf8');
  if (b64 !== undefined) return Buffer.from(b64.replace(/\s+/g, ''), 'base64');
  return undefined;
}

/**
 * Says where each volume's image is and which files must be made before launch. emptyDisk images go into
 * `opts.scratchDir` (default runDir) as `disk-NAME.img`, cloud-init images into runDir (`cloudinit-NAME.iso`); hostDisk stays
 * where it is (as raw: the caller puts in the format it recorded); a containerDisk (its image in
 * `opts.images`) gets an overlay `overlay-NAME.qcow2` in the scratch folder, or is opened read-only as it is
 * for a read-only disk. Expects a validated VMI. Throws FIRMWARE_UNAVAILABLE if the VMI wants EFI
 * and no OVMF paths are given, MISSING_VOLUME for a containerDisk without a resolved image.
 */
export function planVolumes(
  vmi: VirtualMachineInstance,
  runDir: string,
  opts: { ovmf?: OvmfPaths; images?: Record<string, ResolvedImage>; claims?: Record<string, ResolvedImage>; scratchDir?: string } = {},
): VolumePlan {
  // What a guest writes (emptyDisks, overlays) goes to the scratch folder: on a node, disk-backed rather than the run folder's tmpfs.
  const scratch = opts.scratchDir ?? runDir;
  const volumes: Record<string, ResolvedVolume> = {};
  const files: PreparedFile[] = [];
  const { name, namespace } = vmi.metadata;
  const disks = vmi.spec.domain.devices.disks ?? [];
  for (const vol of vmi.spec.volumes ?? []) {
    if (vol.hostDisk !== undefined) {
      const path = vol.hostDisk.path;
      volumes[vol.name] = { file: { path }, format: 'raw', readOnly: false };
      if (vol.hostDisk.type === 'DiskOrCreate') {
        files.push({ kind: 'hostDisk', volume: vol.name, path, create: true, sizeBytes: parseQuantity(vol.hostDisk.capacity ?? 0) });
      } else {
        files.push({ kind: 'hostDisk', volume: vol.name, path, create: false, sizeBytes: null });
      }
    } else if (vol.emptyDisk !== undefined) {
      const path = posix.join(scratch, `disk-${vol.name}.img`);
      const sizeBytes = parseQuantity(vol.emptyDisk.capacity);
      volumes[vol.name] = { file: { path }, format: 'raw', readOnly: false, virtualSize: Number(sizeBytes) };
      files.push({ kind: 'emptyDisk', volume: vol.name, path, sizeBytes });
    } else if (vol.cloudInitNoCloud !== undefined) {
      const ci = vol.cloudInitNoCloud;
      const path = posix.join(runDir, `cloudinit-${vol.name}.iso`);
      // Writable like any disk (QEMU refuses read-only sata disks); it is remade at every launch.
      volumes[vol.name] = { file: { path }, format: 'raw', readOnly: false };
      const ciFiles: CloudInitFile[] = [
        // Stable across restarts of the same VM (like KubeVirt), so per-instance modules run once.
        { name: 'meta-data', data: Buffer.from(`instance-id: ${name}.${namespace}\nlocal-hostname: ${name}\n`, 'utf8') },
        { name: 'user-data', data: text(ci.userData, ci.userDataBase64) ?? Buffer.alloc(0) },
      ];
      const net = text(ci.networkData, ci.networkDataBase64);
      if (net !== undefined) ciFiles.push({ name: 'network-data', data: net });
      files.push({ kind: 'cloudInitIso', volume: vol.name, path, label: 'cidata', files: ciFiles });
    } else if (vol.containerDisk !== undefined) {
      const image = opts.images?.[vol.name];
      if (image === undefined) throw new VmletError('MISSING_VOLUME', `containerDisk "${vol.name}": its image ${vol.containerDisk.image} was not resolved`);
      const disk = disks.find((d) => d.name === vol.name);
      if (disk !== undefined && diskKind(disk).readonly) {
        // Nothing writes: the base itself, read-only, with no overlay.
        volumes[vol.name] = { file: image.file, format: image.format, readOnly: true, imageDigest: image.digest, virtualSize: image.virtualSize, byFd: true };
      } else {
        const path = posix.join(scratch, `overlay-${vol.name}.qcow2`);
        const backing = { file: image.file, format: image.format };
        volumes[vol.name] = { file: { path }, format: 'qcow2', readOnly: false, backing, imageDigest: image.digest, virtualSize: image.virtualSize };
        files.push({ kind: 'overlay', volume: vol.name, path, base: image });
      }
    } else if (vol.persistentVolumeClaim !== undefined || vol.ephemeral !== undefined) {
      const claim = opts.claims?.[vol.name];
      if (claim === undefined) throw new VmletError('VOLUME_NEEDS_CLUSTER', `volume "${vol.name}": a claim needs a cluster (and its launcher pod)`);
      if (vol.ephemeral !== undefined) {
        const path = posix.join(scratch, `overlay-${vol.name}.qcow2`);
        volumes[vol.name] = {
          file: { path },
          format: 'qcow2',
          readOnly: false,
          backing: { file: claim.file, format: claim.format },
          virtualSize: claim.virtualSize,
        };
        files.push({ kind: 'overlay', volume: vol.name, path, base: claim });
      } else {
        const readOnly = vol.persistentVolumeClaim?.readOnly === true;
        volumes[vol.name] = { file: claim.file, format: claim.format, readOnly, virtualSize: claim.virtualSize, byFd: true };
      }
    } else {
      throw new VmletError('INVALID_FIELD', `volume "${vol.name}" has no supported source`);
    }
  }
  if (usesEfi(vmi)) {
    if (opts.ovmf === undefined) {
      throw new VmletError('FIRMWARE_UNAVAILABLE', 'the VMI boots with EFI but no OVMF firmware was found; install the ovmf package');
    }
    files.push({ kind: 'efiVars', path: efiVarsPath(runDir), template: opts.ovmf.vars });
  }
  return { volumes, files };
}
