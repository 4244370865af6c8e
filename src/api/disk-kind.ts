// How QEMU attaches a validated disk: its bus, whether it is a cdrom, whether it is read-only.
import type { Disk, DiskBus } from './types.js';

/** Which bus a validated disk uses, and whether it is a cdrom. */
export function diskKind(disk: Disk): { bus: DiskBus; cdrom: boolean; readonly: boolean } {
  if (disk.cdrom !== undefined) return { bus: disk.cdrom.bus, cdrom: true, readonly: true };
  return { bus: disk.disk?.bus ?? 'virtio', cdrom: false, readonly: disk.disk?.readonly ?? false };
}
