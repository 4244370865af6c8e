// Makes the node's KVM device usable by launcher pods: gives the host's device node o+rw (as systemd's default udev rule and KubeVirt's virt-handler do), once, at start.
import fs from 'node:fs/promises';
import type { Logger } from 'pino';

/** Read and write for users who are neither the owner nor in the group: the launcher pods' uid 107. */
export const OTHERS_RW = 0o006;

/** What `ensureKvmAccess` found and did; modes are the permission bits only (`st_mode & 0o7777`). */
export type KvmAccess =
  /** No device at the path: nothing to do (the accelerator probe reports KVM as unusable anyway). */
  | { outcome: 'missing' }
  /** The mode already has o+rw. */
  | { outcome: 'unchanged'; mode: number }
  /** o+rw was added. */
  | { outcome: 'changed'; from: number; to: number }
  /** The operator keeps the mode (`kvmWorldAccessible: false`) and it lacks o+rw. */
  | { outcome: 'kept'; mode: number }
  /** stat or chmod failed (EPERM, EROFS, …); the mode stays as it was (undefined when stat failed). */
  | { outcome: 'refused'; mode: number | undefined; errno: string };

export interface KvmAccessOptions {
  /** The device node on the host (config `kvmDevice`; tests pass a plain file). */
  devicePath: string;
  /** true: leave the mode as it is (config `kvmWorldAccessible: false`). */
  keep: boolean;
  logger: Logger;
  /** The chmod to use (tests make it refuse); default node:fs/promises. */
  chmod?: (path: string, mode: number) => Promise<void>;
}

/** A mode as the four octal digits `ls` and chmod(1) users know, e.g. `0600`. */
export function octalMode(mode: number): string {
  return `0${(mode & 0o7777).toString(8).padStart(3, '0')}`;
}

/** The mode with o+rw added, or undefined when it has them already. */
export function withOthersRw(mode: number): number | undefined {
  const bits = mode & 0o7777;
  return (bits & OTHERS_RW) === OTHERS_RW ? undefined : bits | OTHERS_RW;
}

function errnoOf(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : 'UNKNOWN';
}

/**
 * Why: the container runtime creates the device node in each container with the host node's owner and mode, and
 * launcher pods run as uid 107 with every capability dropped, so a host mode without o+rw (0600 without udev,
 * 0660 root:kvm on Debian) makes their open() fail with EACCES. Never throws: a refusal is logged as a warning.
 */
export async function ensureKvmAccess(o: KvmAccessOptions): Promise<KvmAccess> {
  const log = o.logger;
  const device = o.devicePath;
  let mode: number;
  try {
    mode = (await fs.stat(device)).mode & 0o7777;
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return { outcome: 'missing' };
    log.warn({ err: e, device }, 'cannot read the mode of the KVM device; leaving it as it is (launcher pods running as uid 107 may not open it)');
    return { outcome: 'refused', mode: undefined, errno: errnoOf(e) };
  }
  const wanted = withOthersRw(mode);
  if (wanted === undefined) return { outcome: 'unchanged', mode };
  if (o.keep) {
    log.warn(
      { device, mode: octalMode(mode) },
      'kvmWorldAccessible is false and the KVM device lacks o+rw: launcher pods (uid 107) can open it only if the container runtime gives devices to the pod user (containerd: device_ownership_from_security_context = true) or a udev rule opens it',
    );
    return { outcome: 'kept', mode };
  }
  try {
    await (o.chmod ?? fs.chmod)(device, wanted);
  } catch (e) {
    log.warn(
      { err: e, device, mode: octalMode(mode) },
      'cannot add o+rw to the KVM device; launcher pods (uid 107) will fail to open it unless a udev rule or the container runtime opens it for them',
    );
    return { outcome: 'refused', mode, errno: errnoOf(e) };
  }
  log.info({ device, from: octalMode(mode), to: octalMode(wanted) }, 'KVM device opened to launcher pods (o+rw)');
  return { outcome: 'changed', from: mode, to: wanted };
}
