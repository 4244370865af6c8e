// Test helpers for the Debian guest (built by scripts/build-debian-guest.mjs into .cache/debian-guest/): where it is, why a test must skip, a per-test copy of its disk, and a VMI that boots it with cloud-init and a masquerade NIC.
//
// See docs/test-guest.md, "The Debian guest".
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import YAML from 'yaml';
import { repoRoot } from './daemon.js';
import { which } from './which.js';

export const debianGuestDir = path.join(repoRoot, '.cache', 'debian-guest');
const builderPath = path.join(repoRoot, 'scripts', 'build-debian-guest.mjs');

/** What cloud-init's runcmd prints on the serial console, with the guest's uptime, once cloud-final ran. */
export const CLOUDINIT_MARKER = 'VMLET-CLOUDINIT-DONE';
/** The line the marker is on: `VMLET-CLOUDINIT-DONE uptime=SECONDS`. */
export const CLOUDINIT_MARKER_RE = /VMLET-CLOUDINIT-DONE uptime=([0-9.]+)/;

/** The parts of the builder's manifest.json the tests read. */
export interface DebianGuestManifest {
  debianVersion: string;
  kernelVersion: string;
  kernelArgs: string;
  buildSeconds: number;
  phases: { debootstrapSeconds: number; downloadSeconds: number; configureSeconds: number; imageSeconds: number };
  disk: { file: string; size: number; allocatedBytes: number };
  initrd: { file: string; size: number };
  kernel: { file: string; size: number };
  versions: Record<string, string>;
  packageCount: number;
}

export interface DebianGuestImage {
  dir: string;
  /** the base image: never boot it, boot copyDebianDisk()'s copy */
  disk: string;
  kernel: string;
  initrd: string;
  /** `root=/dev/vda console=ttyS0` */
  kernelArgs: string;
  manifest: DebianGuestManifest;
}

interface BuilderModule {
  validDebianGuest(out: string): DebianGuestManifest | null;
}

/** The cached image when it is complete and made by the current builder, else null. Never builds (that takes minutes; setup does it). */
export async function debianGuestImage(dir = debianGuestDir): Promise<DebianGuestImage | null> {
  // A dynamic import with a computed specifier: the builder is plain JS without a declaration file.
  const mod = (await import(pathToFileURL(builderPath).href)) as BuilderModule;
  const manifest = mod.validDebianGuest(dir);
  if (!manifest) return null;
  return {
    dir,
    disk: path.join(dir, manifest.disk.file),
    kernel: path.join(dir, manifest.kernel.file),
    initrd: path.join(dir, manifest.initrd.file),
    kernelArgs: manifest.kernelArgs,
    manifest,
  };
}

/** Why the Debian guest cannot be used here, or false. */
export async function debianGuestSkipReason(dir = debianGuestDir): Promise<string | false> {
  if (process.platform !== 'linux' || process.arch !== 'x64') return 'the Debian guest needs x86_64 Linux';
  if (process.getuid?.() !== 0) return 'needs root (the Debian guest is built with debootstrap and booted through the daemon)';
  if (!which('cp')) return 'cp is missing';
  if (await debianGuestImage(dir)) return false;
  let why = '';
  try {
    why = fs.readFileSync(`${dir}.error`, 'utf8').trim();
  } catch {
    /* never tried, or the last build was good */
  }
  return why
    ? `the Debian guest could not be built: ${why}`
    : `the Debian guest is not built in ${dir} (run "node scripts/build-debian-guest.mjs" as root; "npm test" builds it)`;
}

/**
 * A private, writable copy of the base disk in a fresh temp dir (sparse, or a reflink where the
 * filesystem has them: ~1 s). The base is never written. `teardown` gets the removal.
 */
export function copyDebianDisk(image: DebianGuestImage, teardown: (fn: () => void) => void): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-debian-'));
  teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const copy = path.join(dir, 'disk.raw');
  execFileSync('cp', ['--reflink=auto', '--sparse=always', image.disk, copy]);
  fs.chmodSync(copy, 0o644);
  return copy;
}

/** An ed25519 key pair made with ssh-keygen in a fresh temp dir; null when ssh-keygen is missing. */
export function makeSshKey(teardown: (fn: () => void) => void): { privateKey: string; publicKey: string } | null {
  if (!which('ssh-keygen')) return null;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-sshkey-'));
  teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const privateKey = path.join(dir, 'id_ed25519');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'vmlet-test', '-f', privateKey]);
  return { privateKey, publicKey: fs.readFileSync(`${privateKey}.pub`, 'utf8').trim() };
}

/**
 * cloud-config for the test: the ssh key for the image's default user (`debian`), and a runcmd that
 * prints the marker line with the guest's uptime on the serial console. The marker is assembled by
 * printf, so the user-data itself never contains it.
 */
export function debianUserData(o: { sshPublicKey?: string; extra?: Record<string, unknown> } = {}): string {
  const cfg: Record<string, unknown> = {
    ...(o.sshPublicKey ? { ssh_authorized_keys: [o.sshPublicKey] } : {}),
    runcmd: [['sh', '-c', `printf '\\nVMLET-%s uptime=%s\\n' CLOUDINIT-DONE "$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0`]],
    ...o.extra,
  };
  return `#cloud-config\n${YAML.stringify(cfg)}`;
}

export interface DebianVmiOptions {
  image: DebianGuestImage;
  /** the per-test copy from copyDebianDisk() */
  diskPath: string;
  userData?: string;
  namespace?: string;
  /** default 1Gi */
  memory?: string;
  /** default 2 */
  cores?: number;
  /** default [22] */
  ports?: number[];
  /** appended to the image's kernel arguments */
  kernelArgs?: string;
  annotations?: Record<string, string>;
}

/**
 * A VirtualMachineInstance of the realistic guest: kernel + initrd from the host, the disk copy as
 * /dev/vda (virtio), the cloud-init NoCloud disk next (virtio, read-only), 1Gi and 2 vCPUs, one
 * masquerade NIC on the pod network that forwards `ports` (22), the serial console.
 */
export function debianVmiObject(name: string, o: DebianVmiOptions): Record<string, unknown> {
  const kernelArgs = [o.image.kernelArgs, o.kernelArgs].filter(Boolean).join(' ');
  return {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: o.namespace ?? 'default', labels: { app: name }, ...(o.annotations ? { annotations: o.annotations } : {}) },
    spec: {
      terminationGracePeriodSeconds: 30,
      domain: {
        cpu: { cores: o.cores ?? 2 },
        memory: { guest: o.memory ?? '1Gi' },
        firmware: { kernelBoot: { kernelArgs, hostPath: { kernelPath: o.image.kernel, initrdPath: o.image.initrd } } },
        devices: {
          autoattachSerialConsole: true,
          // the root disk first: it is the first virtio-blk device, so /dev/vda
          disks: [
            { name: 'root', disk: { bus: 'virtio' } },
            { name: 'cloudinit', disk: { bus: 'virtio', readonly: true } },
          ],
          interfaces: [{ name: 'default', masquerade: {}, ports: (o.ports ?? [22]).map((port) => ({ port })) }],
        },
      },
      networks: [{ name: 'default', pod: {} }],
      volumes: [
        { name: 'root', hostDisk: { path: o.diskPath, type: 'Disk' } },
        { name: 'cloudinit', cloudInitNoCloud: { userData: o.userData ?? debianUserData() } },
      ],
    },
  };
}

/** debianVmiObject() as YAML, for `vmlet apply -f -`. */
export function debianVmiYaml(name: string, o: DebianVmiOptions): string {
  return YAML.stringify(debianVmiObject(name, o));
}
