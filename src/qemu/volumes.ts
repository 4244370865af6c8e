// Plans the files a VMI's volumes need (pure): where each volume's image lives and which files the caller must create first.

import { posix } from 'node:path';
import { parseQuantity } from '../api/quantity.js';
import type { VirtualMachineInstance } from '../api/types.js';
import { VmletError } from '../errors.js';

export type ImageFormat = 'raw';

/** Where the image of one volume lives on the node, as QEMU will open it. */
export interface ResolvedVolume {
  path: string;
  format: ImageFormat;
  /** Attach read-only whatever the disk says. */
  readOnly: boolean;
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
  | { kind: 'efiVars'; path: string; template: string };

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
 * Says where each volume's image is and which files must be made before launch. emptyDisk and
 * cloud-init images go into runDir (`disk-NAME.img`, `cloudinit-NAME.iso`); hostDisk stays
 * where it is. Expects a validated VMI. Throws FIRMWARE_UNAVAILABLE if the VMI wants EFI and no
 * OVMF paths are given.
 */
export function planVolumes(vmi: VirtualMachineInstance, runDir: string, opts: { ovmf?: OvmfPaths } = {}): VolumePlan {
  const volumes: Record<string, ResolvedVolume> = {};
  const files: PreparedFile[] = [];
  const { name, namespace } = vmi.metadata;
  for (const vol of vmi.spec.volumes ?? []) {
    if (vol.hostDisk !== undefined) {
      const path = vol.hostDisk.path;
      volumes[vol.name] = { path, format: 'raw', readOnly: false };
      if (vol.hostDisk.type === 'DiskOrCreate') {
        files.push({ kind: 'hostDisk', volume: vol.name, path, create: true, sizeBytes: parseQuantity(vol.hostDisk.capacity ?? 0) });
      } else {
        files.push({ kind: 'hostDisk', volume: vol.name, path, create: false, sizeBytes: null });
      }
    } else if (vol.emptyDisk !== undefined) {
      const path = posix.join(runDir, `disk-${vol.name}.img`);
      volumes[vol.name] = { path, format: 'raw', readOnly: false };
      files.push({ kind: 'emptyDisk', volume: vol.name, path, sizeBytes: parseQuantity(vol.emptyDisk.capacity) });
    } else if (vol.cloudInitNoCloud !== undefined) {
      const ci = vol.cloudInitNoCloud;
      const path = posix.join(runDir, `cloudinit-${vol.name}.iso`);
      // Writable like any disk (QEMU refuses read-only sata disks); it is remade at every launch.
      volumes[vol.name] = { path, format: 'raw', readOnly: false };
      const ciFiles: CloudInitFile[] = [
        // Stable across restarts of the same VM (like KubeVirt), so per-instance modules run once.
        { name: 'meta-data', data: Buffer.from(`instance-id: ${name}.${namespace}\nlocal-hostname: ${name}\n`, 'utf8') },
        { name: 'user-data', data: text(ci.userData, ci.userDataBase64) ?? Buffer.alloc(0) },
      ];
      const net = text(ci.networkData, ci.networkDataBase64);
      if (net !== undefined) ciFiles.push({ name: 'network-data', data: net });
      files.push({ kind: 'cloudInitIso', volume: vol.name, path, label: 'cidata', files: ciFiles });
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
