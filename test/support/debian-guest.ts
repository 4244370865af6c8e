// Test helpers for the Debian guest (built by scripts/build-debian-guest.mjs into .cache/debian-guest/): where it is, why a test must skip, a per-test copy of its disk or a cached containerDisk of it, and a VMI that boots it with cloud-init and a masquerade NIC.
//
// See docs/test-guest.md, "The Debian guest".
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import YAML from 'yaml';
import { imageFiles, type GuestImageFiles } from '../../scripts/lib/guest-manifest.mjs';
import { buildContainerDisk } from './container-disk.js';
import { repoRoot } from './daemon.js';
import { which } from './which.js';

export const debianGuestDir = path.join(repoRoot, '.cache', 'debian-guest');
export const debianContainerDiskDir = path.join(repoRoot, '.cache', 'debian-guest-containerdisk');
/** The name the containerDisk archive carries and the tests import it under. */
export const DEBIAN_CONTAINERDISK_IMAGE = 'vmlet-test/debian-guest:12';
/** Part of the cache key: bump it when the way the archive is made changes, so old archives are rebuilt. */
const CONTAINERDISK_RECIPE = 'qcow2-uncompressed docker-archive /disk/disk.qcow2 v1';
const builderPath = path.join(repoRoot, 'scripts', 'build-debian-guest.mjs');
const dirLockPath = path.join(repoRoot, 'scripts', 'lib', 'dir-lock.mjs');
const runFile = promisify(execFile);

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

/**
 * The cached image as paths. `disk` is the base image: never boot it, boot copyDebianDisk()'s copy or
 * debianContainerDisk()'s image. `kernelArgs`: `root=/dev/vda console=ttyS0`.
 */
export type DebianGuestImage = GuestImageFiles<DebianGuestManifest>;

interface BuilderModule {
  validDebianGuest(out: string): DebianGuestManifest | null;
}

interface DirLockModule {
  withDirLock<T>(
    lockDir: string,
    o: { what: string; timeoutMs: number; pollMs: number; log: (msg: string) => void; timeoutError: (pid: number) => Error },
    fn: () => T | Promise<T>,
  ): Promise<T>;
}

/** The cached image when it is complete and made by the current builder, else null. Never builds (that takes minutes; setup does it). */
export async function debianGuestImage(dir = debianGuestDir): Promise<DebianGuestImage | null> {
  // A dynamic import with a computed specifier: the builder is plain JS without a declaration file.
  const mod = (await import(pathToFileURL(builderPath).href)) as BuilderModule;
  const manifest = mod.validDebianGuest(dir);
  return manifest ? imageFiles(dir, manifest) : null;
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

/**
 * The path of a docker-archive containerDisk of the Debian guest (`FROM scratch`, the disk as an uncompressed qcow2
 * at /disk/disk.qcow2, named DEBIAN_CONTAINERDISK_IMAGE), for `vmlet image import` or a cluster's node. Cached in
 * `dir` under a key made of the guest's manifest.json (which records the disk's size and mtime) and the recipe, so
 * a second call only checks that the file is there. Needs root, buildah and qemu-img (containerDiskSkipReason).
 */
export async function debianContainerDisk(image: DebianGuestImage, dir = debianContainerDiskDir): Promise<string> {
  const key = createHash('sha256')
    .update(`${CONTAINERDISK_RECIPE}\n`)
    .update(fs.readFileSync(path.join(image.dir, 'manifest.json')))
    .digest('hex')
    .slice(0, 16);
  const archive = path.join(dir, `debian-guest-${key}.docker.tar`);
  // Complete or absent: the archive only appears by the rename at the end of a build.
  if (fs.existsSync(archive)) return archive;
  fs.mkdirSync(dir, { recursive: true });
  // A dynamic import with a computed specifier, as for the builder: the lock is plain JS without a declaration file.
  const { withDirLock } = (await import(pathToFileURL(dirLockPath).href)) as DirLockModule;
  const lock = {
    what: 'containerDisk build of the Debian guest',
    timeoutMs: 15 * 60_000,
    pollMs: 1_000,
    log: (msg: string) => process.stderr.write(`debian-guest: ${msg}\n`),
    timeoutError: (pid: number) => new Error(`debian-guest: another containerDisk build (pid ${pid}) holds ${dir}.lock for too long`),
  };
  return withDirLock(`${dir}.lock`, lock, async () => {
    if (fs.existsSync(archive)) return archive; // built by whoever held the lock before us
    // Only a lock holder builds, so every temp folder here is a killed build's, and other keys are stale guests'.
    for (const name of fs.readdirSync(dir)) {
      if (!name.startsWith(`debian-guest-${key}.`)) fs.rmSync(path.join(dir, name), { recursive: true, force: true });
    }
    const started = Date.now();
    const tmp = fs.mkdtempSync(path.join(dir, '.tmp-'));
    try {
      const qcow2 = path.join(tmp, 'disk.qcow2'); // its base name is the file's name in /disk/
      await runFile('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', image.disk, qcow2]);
      const out = path.join(tmp, 'archive.docker.tar');
      await buildContainerDisk({ disk: qcow2, name: DEBIAN_CONTAINERDISK_IMAGE, format: 'docker-archive', out });
      const seconds = (Date.now() - started) / 1000;
      const info = {
        image: DEBIAN_CONTAINERDISK_IMAGE,
        recipe: CONTAINERDISK_RECIPE,
        qcow2Bytes: fs.statSync(qcow2).size,
        archiveBytes: fs.statSync(out).size,
        buildSeconds: seconds,
      };
      fs.writeFileSync(path.join(dir, `debian-guest-${key}.json`), `${JSON.stringify(info, null, 2)}\n`);
      fs.renameSync(out, archive);
      process.stderr.write(`debian-guest: containerDisk built in ${seconds.toFixed(1)} s (${archive})\n`);
      return archive;
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
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
  /** the per-test copy from copyDebianDisk(), booted as a hostDisk; or give containerDisk */
  diskPath?: string;
  /** an image in the node's store (e.g. DEBIAN_CONTAINERDISK_IMAGE), booted through a per-VMI overlay; wins over diskPath */
  containerDisk?: string;
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
 * A VirtualMachineInstance of the realistic guest: kernel + initrd from the host, the disk copy (or
 * the containerDisk) as /dev/vda (virtio), the cloud-init NoCloud disk next (virtio, read-only), 1Gi and 2 vCPUs, one
 * masquerade NIC on the pod network that forwards `ports` (22), the serial console.
 */
export function debianVmiObject(name: string, o: DebianVmiOptions): Record<string, unknown> {
  if (o.containerDisk === undefined && o.diskPath === undefined) throw new Error('debianVmiObject: give diskPath or containerDisk');
  const root = o.containerDisk !== undefined ? { containerDisk: { image: o.containerDisk } } : { hostDisk: { path: o.diskPath, type: 'Disk' } };
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
        { name: 'root', ...root },
        { name: 'cloudinit', cloudInitNoCloud: { userData: o.userData ?? debianUserData() } },
      ],
    },
  };
}

/** debianVmiObject() as YAML, for `vmlet apply -f -`. */
export function debianVmiYaml(name: string, o: DebianVmiOptions): string {
  return YAML.stringify(debianVmiObject(name, o));
}
