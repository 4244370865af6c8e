// Turns a validated VMI spec into QEMU's argv (pure): one deterministic command line per VMI and context.

import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import { hasControlChars } from '../api/names.js';
import { parseQuantity } from '../api/quantity.js';
import type { Disk, DiskBus, VirtualMachineInstance } from '../api/types.js';
import { VmletError } from '../errors.js';
import { escapeOptValue, qemuOpts, type OptValue } from './escape.js';
import { tcgTbSizeMiB } from './tcg.js';
import { efiVarsPath, planVolumes, usesEfi, type ImageFile, type OvmfPaths, type ResolvedVolume } from './volumes.js';
import type { Accel } from '../api/vocabulary.js';

export type { Accel } from '../api/vocabulary.js';

export interface ArgvContext {
  /** Path of qemu-system-x86_64; becomes argv[0]. */
  qemuBinary: string;
  /** The VM's private run directory (sockets, emptyDisk and cloud-init images, EFI vars). */
  runDir: string;
  accel: Accel;
  /** Machine types the binary supports (from the probe); when given, the VMI's type must be one. */
  machineTypes?: readonly string[];
  /** CPU models the binary supports (from the probe); when given, a named model must be one. */
  cpuModels?: readonly string[];
  /** OVMF firmware; required when the VMI boots with EFI. */
  ovmf?: OvmfPaths;
  /** Image path per volume name; default: what planVolumes(vmi, runDir) says. */
  volumes?: Record<string, ResolvedVolume>;
  /** Add QEMU's seccomp sandbox (`-sandbox on,...`); default true. */
  sandbox?: boolean;
  /** TCG translation cache in MiB; default tcgTbSizeMiB(guest memory). Ignored under KVM. */
  tcgTbSizeMiB?: number;
}

/**
 * QMP's `-chardev` value. With `fd`, QEMU serves a listening socket the daemon bound at RUNDIR/qmp.sock
 * (sys/unix-listen.ts): the daemon connects at once and gets the greeting as soon as QEMU serves it, instead of
 * polling for the file. Without, QEMU binds the path itself.
 */
export function qmpChardev(runDir: string, fd?: number): string {
  return socketChardev('qmp', runDirSockets(runDir).qmp, fd);
}

/** The serial console's `-chardev` (by path, or a listening socket the daemon bound, as for QMP). */
export function serialChardev(runDir: string, fd?: number): string {
  return socketChardev('serial0', runDirSockets(runDir).serial, fd);
}

/** The guest agent channel's `-chardev`. */
export function qgaChardev(runDir: string, fd?: number): string {
  return socketChardev('qga0', runDirSockets(runDir).qga, fd);
}

function socketChardev(id: string, path: string, fd: number | undefined): string {
  return qemuOpts('socket', [['id', id], fd !== undefined ? ['fd', fd] : ['path', path], ['server', true], ['wait', false]]);
}

/** Sockets QEMU listens on inside the run directory. */
export interface RunDirSockets {
  qmp: string;
  serial: string;
  qga: string;
  vnc: string;
}

export function runDirSockets(runDir: string): RunDirSockets {
  return {
    qmp: posix.join(runDir, 'qmp.sock'),
    serial: posix.join(runDir, 'serial.sock'),
    qga: posix.join(runDir, 'qga.sock'),
    vnc: posix.join(runDir, 'vnc.sock'),
  };
}

/** The guest agent's virtio-serial port name. */
export const GUEST_AGENT_CHANNEL = 'org.qemu.guest_agent.0';
/** The `id=` of the agent's virtserialport: QEMU's VSERPORT_CHANGE events name it. */
export const GUEST_AGENT_DEVICE_ID = 'channel0';

/** SMBIOS OEM string (type 11) that carries the VMI uid. */
export const VMI_UID_OEM_PREFIX = 'io.vmlet.vmi.uid=';

/**
 * The `-smbios` value that puts the VMI uid into the command line (and the guest's SMBIOS OEM
 * strings), so `/proc/PID/cmdline` tells which VMI a QEMU process belongs to.
 */
export function vmiUidSmbios(uid: string): string {
  return qemuOpts(undefined, [
    ['type', 11],
    ['value', VMI_UID_OEM_PREFIX + uid],
  ]);
}

/** True if a QEMU command line (as from /proc/PID/cmdline split at NUL) belongs to the VMI with `uid`. */
export function cmdlineHasVmiUid(cmdline: readonly string[], uid: string): boolean {
  const want = vmiUidSmbios(uid);
  return cmdline.some((arg, i) => arg === want && cmdline[i - 1] === '-smbios');
}

/** The accelerator in a QEMU argv: `-accel kvm|tcg[,…]`, or the older `-machine …,accel=kvm|tcg`. Pure. */
export function accelFromCmdline(argv: readonly string[]): Accel | undefined {
  for (let i = 0; i + 1 < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1] ?? '';
    const m = a === '-accel' ? /^(kvm|tcg)(?:,|$)/.exec(v) : a === '-machine' ? /(?:^|,)accel=(kvm|tcg)(?:,|$)/.exec(v) : null;
    if (m) return m[1] === 'kvm' ? 'kvm' : 'tcg';
  }
  return undefined;
}

/** QEMU's guest name: NAMESPACE_NAME (as KubeVirt's libvirt domain name). */
export function guestName(vmi: VirtualMachineInstance): string {
  return `${vmi.metadata.namespace}_${vmi.metadata.name}`;
}

// A fixed namespace for name-based (v5) firmware UUIDs.
const UUID_NAMESPACE = Buffer.from('7f0e4c1a8d2b4b6f9a3e766d6c65742e', 'hex');

/** RFC 4122 version 5 UUID of `name` in vmlet's namespace. Pure. */
export function uuidV5(name: string): string {
  const h = createHash('sha1').update(UUID_NAMESPACE).update(name, 'utf8').digest().subarray(0, 16);
  h[6] = ((h[6] ?? 0) & 0x0f) | 0x50;
  h[8] = ((h[8] ?? 0) & 0x3f) | 0x80;
  const hex = h.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The SMBIOS system UUID: spec.domain.firmware.uuid, else derived from namespace/name (stable across restarts). */
export function firmwareUuid(vmi: VirtualMachineInstance): string {
  return (vmi.spec.domain.firmware?.uuid ?? uuidV5(`${vmi.metadata.namespace}/${vmi.metadata.name}`)).toLowerCase();
}

/** A plain (not option-parsed) argument such as a -kernel path: only control characters are refused. */
function plainArg(value: string, what: string): string {
  if (hasControlChars(value)) {
    throw new VmletError('UNSAFE_VALUE', `${what} contains control characters`);
  }
  return value;
}

function cpuArg(vmi: VirtualMachineInstance, ctx: ArgvContext): string {
  const model = vmi.spec.domain.cpu.model ?? 'host-model';
  if (model === 'host-passthrough' || model === 'host-model') return ctx.accel === 'kvm' ? 'host' : 'max';
  if (ctx.cpuModels !== undefined && !ctx.cpuModels.includes(model)) {
    throw new VmletError('UNSUPPORTED_CPU_MODEL', `CPU model "${model}" is not supported by ${ctx.qemuBinary}`);
  }
  return escapeOptValue(model);
}

function guestMiB(vmi: VirtualMachineInstance): bigint {
  const bytes = parseQuantity(vmi.spec.domain.memory.guest);
  return (bytes + (1n << 20n) - 1n) >> 20n; // rounded up to whole MiB
}

/** `-accel`: under TCG with a bounded translation cache (QEMU's default would outgrow the VM's memory limit). */
function accelArg(vmi: VirtualMachineInstance, ctx: ArgvContext): string {
  if (ctx.accel === 'kvm') return 'kvm';
  const tb = ctx.tcgTbSizeMiB ?? tcgTbSizeMiB(Number(guestMiB(vmi)) * 1024 * 1024);
  return qemuOpts('tcg', [['tb-size', tb]]);
}

interface DiskPlan {
  disk: Disk;
  index: number;
  bus: DiskBus;
  cdrom: boolean;
  readOnly: boolean;
  volume: ResolvedVolume;
}

/** How QEMU opens an image: its path, or the fd set that holds the fd it inherited (`-add-fd` below). */
function fileName(f: ImageFile, fdSets: Map<number, number>): { name: string; device: boolean } {
  const device = f.device === true;
  if ('path' in f) return { name: f.path, device };
  let set = fdSets.get(f.fd);
  if (set === undefined) {
    set = fdSets.size + 1;
    fdSets.set(f.fd, set);
  }
  return { name: `/dev/fdset/${set}`, device };
}

/** The protocol (`file`, or `host_device` for a block device) and format nodes of one image; `cache` and `aio` as the disk asks. */
function imageNodes(
  node: string,
  image: { name: string; device: boolean },
  format: string,
  readOnly: boolean,
  p: DiskPlan,
  extra: ReadonlyArray<readonly [string, OptValue]> = [],
): string[] {
  const rw = !readOnly;
  const direct = p.disk.cache === 'none' ? true : undefined;
  // prettier-ignore
  return [
    '-blockdev',
    qemuOpts(undefined, [
      ['driver', image.device ? 'host_device' : 'file'],
      ['node-name', `${node}-file`],
      ['filename', image.name],
      ['read-only', readOnly],
      ['aio', p.disk.io],
      ['cache.direct', direct],
      ['discard', rw ? 'unmap' : undefined],
    ]),
    '-blockdev',
    qemuOpts(undefined, [
      ['driver', format],
      ['node-name', node],
      ['file', `${node}-file`],
      ['read-only', readOnly],
      ['cache.direct', direct],
      ['discard', rw ? 'unmap' : undefined],
      ...extra,
    ]),
  ];
}

// Calls marked prettier-ignore keep each QEMU flag on one line with its value.
function diskArgs(plans: readonly DiskPlan[]): string[] {
  const args: string[] = [];
  const scsi = plans.filter((p) => p.bus === 'scsi');
  const sata = plans.filter((p) => p.bus === 'sata');
  if (scsi.length > 0) args.push('-device', qemuOpts('virtio-scsi-pci', [['id', 'scsi0']]));
  for (let c = 0; c * 6 < sata.length; c++) args.push('-device', qemuOpts('ich9-ahci', [['id', `sata${c}`]]));

  const fdSets = new Map<number, number>();
  const blockdevs: string[] = [];
  for (const p of plans) {
    const node = `vol${p.index}`;
    const v = p.volume;
    if (v.backing !== undefined) {
      // The base first (read-only, shared by every VM of that image), then the overlay that names it explicitly,
      // so QEMU never opens the file its header names.
      blockdevs.push(...imageNodes(`${node}-base`, fileName(v.backing.file, fdSets), v.backing.format, true, p));
      blockdevs.push(...imageNodes(node, fileName(v.file, fdSets), v.format, p.readOnly, p, [['backing', `${node}-base`]]));
    } else {
      blockdevs.push(...imageNodes(node, fileName(v.file, fdSets), v.format, p.readOnly, p));
    }
    const common: Array<readonly [string, OptValue]> = [
      ['drive', node],
      ['id', `ua-${p.disk.name}`],
      ['bootindex', p.disk.bootOrder],
      ['serial', p.disk.serial],
      ['share-rw', p.disk.shareable === true ? true : undefined],
      ['write-cache', p.disk.cache === 'writethrough' ? 'off' : undefined],
    ];
    let device: string;
    if (p.bus === 'virtio') {
      device = qemuOpts('virtio-blk-pci', common);
    } else if (p.bus === 'sata') {
      const port = sata.indexOf(p);
      const bus = `sata${Math.floor(port / 6)}.${port % 6}`;
      device = qemuOpts(p.cdrom ? 'ide-cd' : 'ide-hd', [['bus', bus], ...common]);
    } else {
      const target = scsi.indexOf(p);
      device = qemuOpts(p.cdrom ? 'scsi-cd' : 'scsi-hd', [['bus', 'scsi0.0'], ['channel', 0], ['scsi-id', target], ['lun', 0], ...common]);
    }
    blockdevs.push('-device', device);
  }
  for (const [fd, set] of fdSets)
    args.push(
      '-add-fd',
      qemuOpts(undefined, [
        ['fd', fd],
        ['set', set],
      ]),
    );
  return [...args, ...blockdevs];
}

/**
 * Builds QEMU's argv for a validated VMI. argv[0] is ctx.qemuBinary. QEMU starts paused (-S) with
 * QMP on RUNDIR/qmp.sock; the VMI uid is in `-smbios type=11,value=io.vmlet.vmi.uid=UID`. Every
 * user value put into an option string goes through escapeOptValue. Pure; throws VmletError
 * (MISSING_UID, UNSUPPORTED_MACHINE, UNSUPPORTED_CPU_MODEL, FIRMWARE_UNAVAILABLE, MISSING_VOLUME,
 * UNSAFE_VALUE).
 */
export function buildArgv(vmi: VirtualMachineInstance, ctx: ArgvContext): string[] {
  const uid = vmi.metadata.uid;
  if (uid === undefined || uid === '') throw new VmletError('MISSING_UID', 'the VMI has no metadata.uid; it is set when the VMI is stored');
  const domain = vmi.spec.domain;
  const sockets = runDirSockets(ctx.runDir);
  const efi = usesEfi(vmi);
  if (efi && ctx.ovmf === undefined) {
    throw new VmletError('FIRMWARE_UNAVAILABLE', 'the VMI boots with EFI but no OVMF firmware was found; install the ovmf package');
  }
  const machineType = domain.machine.type;
  if (ctx.machineTypes !== undefined && !ctx.machineTypes.includes(machineType)) {
    throw new VmletError('UNSUPPORTED_MACHINE', `machine type "${machineType}" is not supported by ${ctx.qemuBinary}`);
  }
  const volumes = ctx.volumes ?? planVolumes(vmi, ctx.runDir, ctx.ovmf !== undefined ? { ovmf: ctx.ovmf } : {}).volumes;
  const uuid = firmwareUuid(vmi);
  const graphics = domain.devices.autoattachGraphicsDevice;
  const { sockets: cpuSockets, cores, threads } = domain.cpu;

  // prettier-ignore
  const args: string[] = [
    ctx.qemuBinary,
    '-name', qemuOpts(undefined, [['guest', guestName(vmi)], ['debug-threads', true]]),
    '-uuid', plainArg(uuid, 'uuid'),
    '-S',
    '-no-user-config',
    '-nodefaults',
    '-msg', 'timestamp=on',
    // What guest events do, from the start (no set-action over QMP on the way to Running).
    '-action', 'reboot=reset,shutdown=poweroff,panic=pause',
  ];
  if (ctx.sandbox ?? true) {
    args.push('-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
  }
  // prettier-ignore
  args.push(
    '-machine',
    qemuOpts(machineType, [
      ['usb', false],
      ['dump-guest-core', false],
      ['pflash0', efi ? 'pflash0' : undefined],
      ['pflash1', efi ? 'pflash1' : undefined],
    ]),
    '-accel', accelArg(vmi, ctx),
    '-cpu', cpuArg(vmi, ctx),
    '-smp', qemuOpts(String(cpuSockets * cores * threads), [['sockets', cpuSockets], ['cores', cores], ['threads', threads]]),
    '-m', `${guestMiB(vmi)}M`,
    '-rtc', 'base=utc',
  );
  if (!graphics) args.push('-display', 'none');
  // prettier-ignore
  args.push(
    '-smbios',
    qemuOpts(undefined, [
      ['type', 1],
      ['manufacturer', 'vmlet'],
      ['product', 'None'],
      ['family', 'vmlet'],
      ['uuid', uuid],
      ['serial', domain.firmware?.serial],
    ]),
    '-smbios', vmiUidSmbios(uid),
    // QMP
    '-chardev', qmpChardev(ctx.runDir),
    '-mon', 'chardev=qmp,mode=control',
  );
  if (domain.devices.autoattachSerialConsole) {
    // prettier-ignore
    args.push(
      '-chardev', serialChardev(ctx.runDir),
      '-device', 'isa-serial,chardev=serial0,id=serial0',
    );
  }
  // guest agent channel
  // prettier-ignore
  args.push(
    '-device', 'virtio-serial-pci,id=virtio-serial0',
    '-chardev', qgaChardev(ctx.runDir),
    '-device', `virtserialport,bus=virtio-serial0.0,nr=1,chardev=qga0,id=${GUEST_AGENT_DEVICE_ID},name=${GUEST_AGENT_CHANNEL}`,
  );
  if (graphics) {
    // prettier-ignore
    args.push(
      '-device', 'VGA,id=video0',
      '-device', 'qemu-xhci,id=usb0',
      '-device', 'usb-tablet,id=tablet0,bus=usb0.0',
      '-vnc', qemuOpts(`unix:${sockets.vnc}`, []),
    );
  }
  if (efi && ctx.ovmf !== undefined) {
    // prettier-ignore
    args.push(
      '-blockdev', qemuOpts(undefined, [['driver', 'file'], ['node-name', 'pflash0-file'], ['filename', ctx.ovmf.code], ['read-only', true]]),
      '-blockdev', qemuOpts(undefined, [['driver', 'raw'], ['node-name', 'pflash0'], ['file', 'pflash0-file'], ['read-only', true]]),
      '-blockdev', qemuOpts(undefined, [['driver', 'file'], ['node-name', 'pflash1-file'], ['filename', efiVarsPath(ctx.runDir)], ['read-only', false]]),
      '-blockdev', qemuOpts(undefined, [['driver', 'raw'], ['node-name', 'pflash1'], ['file', 'pflash1-file'], ['read-only', false]]),
    );
  }
  const kb = domain.firmware?.kernelBoot;
  if (kb?.hostPath !== undefined) {
    args.push('-kernel', plainArg(kb.hostPath.kernelPath, 'kernelPath'));
    if (kb.hostPath.initrdPath !== undefined) {
      // -initrd is split at commas for multiboot kernels, so a comma could add host files as modules.
      if (kb.hostPath.initrdPath.includes(',')) throw new VmletError('UNSAFE_VALUE', 'initrdPath must not contain a comma');
      args.push('-initrd', plainArg(kb.hostPath.initrdPath, 'initrdPath'));
    }
    if (kb.kernelArgs !== undefined && kb.kernelArgs !== '') args.push('-append', plainArg(kb.kernelArgs, 'kernelArgs'));
  }

  const plans: DiskPlan[] = (domain.devices.disks ?? []).map((disk, index) => {
    const volume = volumes[disk.name];
    if (volume === undefined) throw new VmletError('MISSING_VOLUME', `disk "${disk.name}" has no resolved volume`);
    const cdrom = disk.cdrom !== undefined;
    const bus = disk.cdrom?.bus ?? disk.disk?.bus ?? 'virtio';
    const readOnly = cdrom || (disk.disk?.readonly ?? false) || volume.readOnly;
    return { disk, index, bus, cdrom, readOnly, volume };
  });
  args.push(...diskArgs(plans));
  if (plans.some((p) => p.disk.bootOrder !== undefined)) args.push('-boot', 'strict=on');
  return args;
}
