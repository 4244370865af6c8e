// Builds the test cluster's images here (the pause image from native/vmlet-pause.c, a busybox-static client image) with buildah into cached OCI archives, and loads archives into the cluster's containerd.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ClusterError } from './errors.js';
import { run } from './exec.js';

/** busybox applets the client image links to /bin (busybox's wget segfaults in a busybox-only image: use nc). */
export const CLIENT_APPLETS = [
  'sh',
  'cat',
  'echo',
  'ls',
  'sleep',
  'nc',
  'httpd',
  'id',
  'hostname',
  'ip',
  'ps',
  'mkdir',
  'grep',
  'test',
  'true',
  'false',
  'env',
  'printf',
  'head',
  'tail',
  'wc',
  'stat',
  'date',
  'mount',
  'kill',
];

export interface ImageSpec {
  ref: string;
  /** host file → path in the image */
  files: Array<[string, string]>;
  /** links in the image: path → target */
  links: Array<[string, string]>;
  entrypoint?: string[];
  cmd?: string[];
}

export function pauseImage(ref: string, pauseBinary: string): ImageSpec {
  return { ref, files: [[pauseBinary, '/pause']], links: [], entrypoint: ['/pause'] };
}

export function clientImage(ref: string, busybox: string): ImageSpec {
  return { ref, files: [[busybox, '/bin/busybox']], links: CLIENT_APPLETS.map((a) => [`/bin/${a}`, 'busybox']), cmd: ['/bin/sh'] };
}

function imageKey(spec: ImageSpec): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ ...spec, files: spec.files.map(([, to]) => to) }));
  for (const [from] of spec.files) h.update(fs.readFileSync(from));
  return h.digest('hex').slice(0, 16);
}

/** True when `file` is a statically linked ELF (no PT_INTERP): a busybox that runs in an image holding only itself. */
export function isStaticElf(file: string): boolean {
  const b = fs.readFileSync(file);
  if (b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) return false;
  const phoff = Number(b.readBigUInt64LE(0x20));
  const phentsize = b.readUInt16LE(0x36);
  const phnum = b.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) if (b.readUInt32LE(phoff + i * phentsize) === 3) return false;
  return true;
}

/**
 * Builds `spec` into `cacheDir/NAME-KEY.tar` (an OCI archive) unless that exists; buildah's storage (vfs: no
 * mounts) lives in a temp folder removed afterwards, so nothing stays in /var/lib/containers.
 */
export async function ensureImage(spec: ImageSpec, cacheDir: string): Promise<string> {
  fs.mkdirSync(cacheDir, { recursive: true });
  const name = spec.ref.replace(/^.*\//, '').replace(/[^A-Za-z0-9_.-]/g, '-');
  const out = path.join(cacheDir, `${name}-${imageKey(spec)}.tar`);
  if (fs.existsSync(out)) return out;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-img-'));
  // buildah keeps a blob-info cache in /var/lib/containers/cache whatever --root says: remove it if the build made it.
  const hostDirs = ['/var/lib/containers', '/run/containers'].filter((d) => !fs.existsSync(d));
  const b = ['--root', path.join(tmp, 'storage'), '--runroot', path.join(tmp, 'run'), '--storage-driver', 'vfs'];
  try {
    const ctx = path.join(tmp, 'rootfs');
    for (const [from, to] of spec.files) {
      fs.mkdirSync(path.join(ctx, path.dirname(to)), { recursive: true });
      fs.copyFileSync(from, path.join(ctx, to));
      fs.chmodSync(path.join(ctx, to), 0o755);
    }
    for (const [at, target] of spec.links) {
      fs.mkdirSync(path.join(ctx, path.dirname(at)), { recursive: true });
      fs.symlinkSync(target, path.join(ctx, at));
    }
    const cid = (await run('buildah', [...b, 'from', '--pull-never', 'scratch'])).trim();
    await run('buildah', [...b, 'copy', cid, `${ctx}/`, '/']);
    const conf = ['--env', 'PATH=/bin'];
    if (spec.entrypoint) conf.push('--entrypoint', JSON.stringify(spec.entrypoint));
    if (spec.cmd) conf.push('--cmd', JSON.stringify(spec.cmd));
    await run('buildah', [...b, 'config', ...conf, cid]);
    await run('buildah', [...b, 'commit', '--quiet', cid, spec.ref]);
    await run('buildah', [...b, 'push', '--quiet', spec.ref, `oci-archive:${out}.tmp:${spec.ref}`]);
    fs.renameSync(`${out}.tmp`, out);
    return out;
  } catch (e) {
    throw new ClusterError('CLUSTER_IMAGE_BUILD_FAILED', `building ${spec.ref}`, { cause: e });
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
    for (const d of hostDirs) fs.rmSync(d, { recursive: true, force: true });
  }
}

/** Imports an OCI or docker image archive into the cluster's containerd (namespace k8s.io, where the kubelet looks). */
export async function loadImage(containerdSock: string, archive: string): Promise<string> {
  if (!fs.existsSync(archive)) throw new ClusterError('CLUSTER_IMAGE_MISSING', `${archive} does not exist`);
  const out = await run('ctr', ['--address', containerdSock, '-n', 'k8s.io', 'images', 'import', archive]);
  return out.trim();
}
