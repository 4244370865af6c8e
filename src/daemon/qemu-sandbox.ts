// Standalone QEMU's confinement: the unprivileged user it runs as, the one folder it may write (<VM run dir>/qemu), and what its launcher binds into QEMU's private mount namespace (docs/security.md).
import fs from 'node:fs';
import { posix } from 'node:path';
import type { VirtualMachineInstance } from '../api/types.js';
import { VmletError } from '../errors.js';
import type { LauncherSandbox } from '../qemu/launch.js';

/** The folder below a VM's run dir that QEMU owns: its cloud-init images, UEFI variables, VNC socket. */
export const QEMU_WRITABLE_DIR = 'qemu';

export interface QemuUser {
  name: string;
  uid: number;
  gid: number;
  /** Supplementary groups: the KVM device's group, when it is not root's. */
  groups: number[];
}

/** `<runDir>/qemu`: the run dir as QEMU sees and writes it. */
export function qemuRunDirOf(runDir: string): string {
  return posix.join(runDir, QEMU_WRITABLE_DIR);
}

/**
 * Resolves `qemuUser` from /etc/passwd; undefined for `root` (QEMU keeps root, the old way). QEMU_USER_MISSING
 * when the user does not exist, naming the command that makes it.
 */
export function resolveQemuUser(name: string, o: { passwdPath?: string; kvmDevice?: string } = {}): QemuUser | undefined {
  if (name === 'root') return undefined;
  const passwd = o.passwdPath ?? '/etc/passwd';
  let text: string;
  try {
    text = fs.readFileSync(passwd, 'utf8');
  } catch (e) {
    throw new VmletError('QEMU_USER_MISSING', `cannot read ${passwd} to find qemuUser ${name}`, { cause: e });
  }
  const line = text.split('\n').find((l) => l.split(':')[0] === name);
  const f = line?.split(':') ?? [];
  const uid = Number(f[2]);
  const gid = Number(f[3]);
  if (line === undefined || !Number.isInteger(uid) || !Number.isInteger(gid)) {
    throw new VmletError(
      'QEMU_USER_MISSING',
      `qemuUser ${name} does not exist; create it with "useradd --system --user-group --no-create-home --shell /usr/sbin/nologin ${name}" (npm run setup does), or set qemuUser: root in the config`,
    );
  }
  if (uid === 0) throw new VmletError('CONFIG_INVALID', `qemuUser ${name} has uid 0; write qemuUser: root to keep QEMU root`);
  return { name, uid, gid, groups: kvmGroup(o.kvmDevice ?? '/dev/kvm') };
}

/** The KVM device's group when it grants read-write to its group and is not root's (Debian: kvm, mode 0660). */
function kvmGroup(device: string): number[] {
  try {
    const st = fs.statSync(device);
    return st.gid !== 0 && (st.mode & 0o060) === 0o060 ? [st.gid] : [];
  } catch {
    return [];
  }
}

export interface SandboxPaths {
  /** The VM's run dir (the daemon's view; QEMU writes only its `qemu` folder). */
  runDir: string;
  /** The VM's scratch folder (emptyDisks, overlays), when it has one. */
  scratchDir?: string;
  qemuBinary: string;
}

/**
 * The launcher's part: QEMU as `user` in a private root of the host's system folders plus the VM's writable
 * folders and its kernel-boot files (read-only). Disks outside these go to QEMU by fd.
 */
export function launcherSandbox(vmi: VirtualMachineInstance, user: QemuUser, p: SandboxPaths): LauncherSandbox {
  const bindRw = [qemuRunDirOf(p.runDir), ...(p.scratchDir !== undefined ? [p.scratchDir] : [])];
  const kb = vmi.spec.domain.firmware?.kernelBoot?.hostPath;
  const bindRo = [kb?.kernelPath, kb?.initrdPath].filter((x): x is string => typeof x === 'string' && x.startsWith('/'));
  // The system folders are bound anyway; a QEMU elsewhere (a local build) needs its own binary.
  if (!/^\/usr\//.test(p.qemuBinary)) bindRo.push(p.qemuBinary);
  return { user: { uid: user.uid, gid: user.gid, groups: user.groups }, mountNs: true, bindRo, bindRw };
}

/** Makes `<runDir>/qemu` (0700) and gives it, and the scratch folder, to QEMU's user. */
export async function prepareQemuDirs(user: QemuUser, runDir: string, scratchDir?: string): Promise<void> {
  const dir = qemuRunDirOf(runDir);
  // Inline: metadata changes in the page cache, on every start's path (a thread-pool trip costs more).
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chownSync(dir, user.uid, user.gid);
  if (scratchDir !== undefined) fs.chownSync(scratchDir, user.uid, user.gid);
}
