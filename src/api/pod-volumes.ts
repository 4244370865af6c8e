// Where a launcher pod's disks are, as the controller puts them there and the node daemon finds them (pure): containerDisk containers, claim mounts and devices.

/** The emptyDir that carries vmlet's waiting program into each containerDisk container. */
export const DISK_WAIT_VOLUME = 'vmlet-bin';
/** Where that emptyDir is mounted, in the init container and in every containerDisk container. */
export const DISK_WAIT_DIR = '/var/run/vmlet-bin';
/** vmlet's static waiting program as the containerDisk containers run it (argv[1] is the volume name). */
export const DISK_WAIT_BINARY = `${DISK_WAIT_DIR}/vmlet-disk-wait`;
/** Where vmlet's image keeps the program, for the init container to copy. */
export const DISK_WAIT_IMAGE_PATH = '/usr/libexec/vmlet/vmlet-disk-wait';
/** The folder in a containerDisk image that holds its one disk file (KubeVirt's convention). */
export const CONTAINER_DISK_DIR = '/disk';

/** The name of the container that holds containerDisk volume number `index` of spec.volumes (short: volume names may be 63 long). */
export function containerDiskContainer(index: number): string {
  return `volume-${index}`;
}

/** Where a claim in Filesystem mode is mounted in the launcher container; the disk is `disk.img` at its root. */
export function claimMountPath(volume: string): string {
  return `/var/run/vmlet-pvc/${volume}`;
}

/** The disk file on a Filesystem claim (KubeVirt's name). */
export const CLAIM_DISK_FILE = 'disk.img';

/** Where a claim in Block mode appears in the launcher container (`volumeDevices`). */
export function claimDevicePath(volume: string): string {
  return `/dev/vmlet-pvc-${volume}`;
}

/** KubeVirt's default share of a Filesystem claim kept free for the filesystem itself (cluster config `filesystemOverhead`). */
export const DEFAULT_FILESYSTEM_OVERHEAD = 0.055;

/** The size of `disk.img` on a claim of `capacityBytes`: the capacity less the overhead, rounded down to 1 MiB. */
export function claimDiskBytes(capacityBytes: number, overhead: number): number {
  const MiB = 1024 * 1024;
  return Math.floor((capacityBytes * (1 - overhead)) / MiB) * MiB;
}
