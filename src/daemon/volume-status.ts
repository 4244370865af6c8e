// Says what status.volumeStatus reports for a VMI's volumes as prepare resolved them (pure): target name, format, size, image.
import { diskKind } from '../api/disk-kind.js';
import type { VirtualMachineInstance, VolumeStatus } from '../api/types.js';
import type { ResolvedVolume } from '../qemu/volumes.js';

/** libvirt's device names, which KubeVirt reports as `target`: vda, vdb … for virtio; sda, sdb … for sata and scsi. */
function deviceName(prefix: string, n: number): string {
  let name = '';
  let i = n;
  do {
    name = String.fromCharCode(97 + (i % 26)) + name;
    i = Math.floor(i / 26) - 1;
  } while (i >= 0);
  return prefix + name;
}

/** `next` over `prev`, entry by entry: what the controller recorded (a claim's info) stays. */
export function mergeVolumeStatus(prev: readonly VolumeStatus[] | undefined, next: readonly VolumeStatus[]): VolumeStatus[] {
  return next.map((n) => ({ ...prev?.find((p) => p.name === n.name), ...n }));
}

/** One entry per disk, in the disks' order. */
export function volumeStatuses(vmi: VirtualMachineInstance, volumes: Record<string, ResolvedVolume>): VolumeStatus[] {
  const counts = { vd: 0, sd: 0 };
  const images = new Map((vmi.spec.volumes ?? []).flatMap((v) => (v.containerDisk ? [[v.name, v.containerDisk.image] as const] : [])));
  const out: VolumeStatus[] = [];
  for (const disk of vmi.spec.domain.devices.disks ?? []) {
    const prefix = diskKind(disk).bus === 'virtio' ? 'vd' : 'sd';
    const target = deviceName(prefix, counts[prefix]++);
    const v = volumes[disk.name];
    if (v === undefined) continue;
    const entry: VolumeStatus = { name: disk.name, target, format: v.backing?.format ?? v.format };
    if (v.virtualSize !== undefined) entry.size = v.virtualSize;
    const image = images.get(disk.name);
    if (image !== undefined) entry.containerDiskVolume = v.imageDigest ? { image, digest: v.imageDigest } : { image };
    out.push(entry);
  }
  return out;
}
