// Semantic checks of a spec's disks and volumes: names, buses and boot orders, one source per volume, every disk with its volume and every volume used.
import { checkCapacity, checkPath } from './field-checks.js';
import type { Collector } from './field-errors.js';
import type { LooseSpec } from './defaults.js';
import { referenceProblem } from './image-reference.js';
import { isDnsLabel, isDnsSubdomain } from './names.js';
import { joinPath } from './schema-errors.js';

const MAX_CLOUD_INIT_BYTES = 1 << 20;

const DISK_SERIAL_RE = /^[A-Za-z0-9_.+-]+$/;
const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Checks `spec.domain.devices.disks` against `spec.volumes` at `path`. */
export function checkDisksAndVolumes(spec: LooseSpec, path: string, col: Collector): void {
  const dp = `${path}.domain.devices.disks`;
  const vp = `${path}.volumes`;
  const disks = spec.domain.devices.disks ?? [];
  const volumes = spec.volumes ?? [];

  const diskIndex = new Map<string, number>();
  const bootOrders = new Map<number, number>();
  disks.forEach((disk, i) => {
    const at = joinPath(dp, i);
    if (!isDnsLabel(disk.name)) col.add(`${at}.name`, 'INVALID_NAME', 'must be a DNS-1123 label');
    if (diskIndex.has(disk.name)) col.add(`${at}.name`, 'DUPLICATE_NAME', `disk name "${disk.name}" is used twice`);
    else diskIndex.set(disk.name, i);
    if (disk.disk !== undefined && disk.cdrom !== undefined) {
      col.add(at, 'CONFLICTING_FIELDS', 'set either disk or cdrom, not both');
    }
    if (disk.cdrom !== undefined) {
      if (disk.cdrom.bus === 'virtio') col.add(`${at}.cdrom.bus`, 'INVALID_FIELD', 'a cdrom cannot use the virtio bus; use sata or scsi');
      if (!disk.cdrom.readonly) col.add(`${at}.cdrom.readonly`, 'INVALID_FIELD', 'a cdrom is always read-only');
    }
    if (disk.disk?.bus === 'sata' && disk.disk.readonly) {
      col.add(`${at}.disk.readonly`, 'INVALID_FIELD', 'QEMU cannot attach a read-only disk on the sata bus; use virtio or scsi');
    }
    if (disk.io === 'native' && disk.cache !== 'none') {
      col.add(`${at}.io`, 'INVALID_FIELD', 'io native (Linux AIO) needs cache: none; set cache: none or io: threads');
    }
    if (disk.bootOrder !== undefined) {
      const other = bootOrders.get(disk.bootOrder);
      if (other !== undefined) col.add(`${at}.bootOrder`, 'INVALID_FIELD', `bootOrder ${disk.bootOrder} is also used by ${joinPath(dp, other)}`);
      else bootOrders.set(disk.bootOrder, i);
    }
    if (disk.serial !== undefined && !DISK_SERIAL_RE.test(disk.serial)) {
      col.add(`${at}.serial`, 'INVALID_FIELD', 'must be letters, digits, "_", ".", "+" or "-"');
    }
  });

  const volumeIndex = new Map<string, number>();
  volumes.forEach((vol, i) => {
    const at = joinPath(vp, i);
    if (!isDnsLabel(vol.name)) col.add(`${at}.name`, 'INVALID_NAME', 'must be a DNS-1123 label');
    if (volumeIndex.has(vol.name)) col.add(`${at}.name`, 'DUPLICATE_NAME', `volume name "${vol.name}" is used twice`);
    else volumeIndex.set(vol.name, i);
    const sources = (['hostDisk', 'emptyDisk', 'cloudInitNoCloud', 'containerDisk', 'persistentVolumeClaim', 'ephemeral'] as const).filter(
      (k) => vol[k] !== undefined,
    );
    if (sources.length === 0) {
      col.add(at, 'MISSING_FIELD', 'a volume needs one source: containerDisk, persistentVolumeClaim, ephemeral, hostDisk, emptyDisk or cloudInitNoCloud');
    }
    for (const [claim, field] of [
      [vol.persistentVolumeClaim, 'persistentVolumeClaim'],
      [vol.ephemeral?.persistentVolumeClaim, 'ephemeral.persistentVolumeClaim'],
    ] as const) {
      if (claim !== undefined && !isDnsSubdomain(claim.claimName))
        col.add(`${at}.${field}.claimName`, 'INVALID_NAME', 'must be a DNS-1123 subdomain (a PersistentVolumeClaim name)');
    }
    if (sources.length > 1) col.add(at, 'CONFLICTING_FIELDS', `a volume has exactly one source, found ${sources.join(' and ')}`);
    if (vol.hostDisk !== undefined) {
      checkPath(vol.hostDisk.path, `${at}.hostDisk.path`, col);
      if (vol.hostDisk.type === 'DiskOrCreate' && vol.hostDisk.capacity === undefined) {
        col.add(`${at}.hostDisk.capacity`, 'MISSING_FIELD', 'type DiskOrCreate needs a capacity');
      }
      if (vol.hostDisk.type === 'Disk' && vol.hostDisk.capacity !== undefined) {
        col.add(`${at}.hostDisk.capacity`, 'INVALID_FIELD', 'capacity is only used with type DiskOrCreate');
      }
      if (vol.hostDisk.capacity !== undefined) checkCapacity(vol.hostDisk.capacity, `${at}.hostDisk.capacity`, col);
    }
    if (vol.emptyDisk !== undefined) checkCapacity(vol.emptyDisk.capacity, `${at}.emptyDisk.capacity`, col);
    if (vol.containerDisk !== undefined) {
      const problem = referenceProblem(vol.containerDisk.image);
      if (problem !== undefined) col.add(`${at}.containerDisk.image`, 'IMAGE_NAME_INVALID', problem);
    }
    const ci = vol.cloudInitNoCloud;
    if (ci !== undefined) {
      const cp = `${at}.cloudInitNoCloud`;
      if (ci.userData !== undefined && ci.userDataBase64 !== undefined) {
        col.add(`${cp}.userDataBase64`, 'CONFLICTING_FIELDS', 'set either userData or userDataBase64, not both');
      }
      if (ci.networkData !== undefined && ci.networkDataBase64 !== undefined) {
        col.add(`${cp}.networkDataBase64`, 'CONFLICTING_FIELDS', 'set either networkData or networkDataBase64, not both');
      }
      if (ci.userData === undefined && ci.userDataBase64 === undefined && ci.networkData === undefined && ci.networkDataBase64 === undefined) {
        col.add(cp, 'MISSING_FIELD', 'needs userData, userDataBase64, networkData or networkDataBase64');
      }
      for (const key of ['userDataBase64', 'networkDataBase64'] as const) {
        const v = ci[key];
        if (v !== undefined && !BASE64_RE.test(v.replace(/\s+/g, ''))) col.add(`${cp}.${key}`, 'INVALID_FIELD', 'must be base64');
      }
      let size = 0;
      for (const key of ['userData', 'userDataBase64', 'networkData', 'networkDataBase64'] as const) size += ci[key]?.length ?? 0;
      if (size > MAX_CLOUD_INIT_BYTES) col.add(cp, 'OUT_OF_RANGE', 'cloud-init data must be at most 1Mi in total');
    }
  });

  disks.forEach((disk, i) => {
    if (!volumeIndex.has(disk.name)) col.add(`${joinPath(dp, i)}.name`, 'MISSING_VOLUME', `no volume named "${disk.name}" in ${vp}`);
  });
  volumes.forEach((vol, i) => {
    if (!diskIndex.has(vol.name)) col.add(`${joinPath(vp, i)}.name`, 'UNUSED_VOLUME', `volume "${vol.name}" is not used by any disk in ${dp}`);
  });
}
