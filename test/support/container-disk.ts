// Builds containerDisk image archives for image tests: real ones with buildah (in a storage root of the caller's folder, never the system's), hand-made ones with tar-stream that tests can damage, and small disks.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { which } from './which.js';

const run = promisify(execFile);

/** The line at the start of testDiskImage's disk, for guest tests to look for. */
export const BASE_DISK_MARKER = 'VMLET-BASE-DISK\n';

/** Why buildContainerDisk cannot work here, or false. */
export function containerDiskSkipReason(): string | false {
  if (which('buildah') === undefined) return 'buildah is not installed';
  if (process.getuid?.() !== 0) return 'buildah with its own storage root needs root';
  return false;
}

export interface ContainerDiskOptions {
  /** A .qcow2 or .img file, stored in the image as /disk/<its base name>. */
  disk: string;
  /** The image's name, e.g. `localhost/test-disk:1` (written into the archive). */
  name: string;
  format: 'oci-archive' | 'docker-archive';
  out: string;
}

/**
 * Build a containerDisk (`FROM scratch` + the disk in /disk/) and write it to `out` as an archive. buildah's storage
 * lives in a folder next to `out` that is removed afterwards, so nothing is shared between calls or with the system.
 */
export async function buildContainerDisk(opts: ContainerDiskOptions): Promise<void> {
  const skip = containerDiskSkipReason();
  if (skip !== false) throw new Error(`cannot build a containerDisk: ${skip}`);
  const work = await fsp.mkdtemp(path.join(path.dirname(opts.out), '.buildah-'));
  const buildah = async (...args: string[]): Promise<string> => {
    const argv = ['--root', path.join(work, 'root'), '--runroot', path.join(work, 'runroot'), '--storage-driver', 'vfs', ...args];
    try {
      const { stdout } = await run('buildah', argv, { maxBuffer: 16 * 1024 * 1024 });
      return stdout.trim();
    } catch (e) {
      const stderr = typeof e === 'object' && e !== null && 'stderr' in e ? String(e.stderr).trim() : '';
      throw new Error(`buildah ${args.join(' ')} failed: ${stderr}`, { cause: e });
    }
  };
  const ctr = `vmlet-test-${randomBytes(4).toString('hex')}`;
  try {
    await buildah('from', '--name', ctr, 'scratch');
    await buildah('copy', '--quiet', ctr, opts.disk, `/disk/${path.basename(opts.disk)}`);
    await buildah('commit', '--quiet', ctr, opts.name);
    await buildah('push', '--quiet', opts.name, `${opts.format}:${opts.out}:${opts.name}`);
    await buildah('rm', ctr);
    await buildah('rmi', '--all', '--force');
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/** A raw 8 MiB disk at `dir`/base.img whose first sector starts with BASE_DISK_MARKER; the rest are zeros (a hole). */
export async function testDiskImage(dir: string): Promise<string> {
  const file = path.join(dir, 'base.img');
  const fh = await fsp.open(file, 'w', 0o644);
  try {
    await fh.write(Buffer.from(BASE_DISK_MARKER));
    await fh.truncate(8 * 1024 * 1024);
  } finally {
    await fh.close();
  }
  return file;
}

// ---- Archives built by hand (tar-stream), so tests can damage any part of them. ----

export interface TarFile {
  name: string;
  data?: Buffer;
  type?: 'file' | 'directory' | 'symlink' | 'link';
  linkname?: string;
}

/** A tar of `files` in order (tar-stream's pack: ustar headers, two zero blocks at the end). */
export async function tarBuffer(files: TarFile[]): Promise<Buffer> {
  const pack = tar.pack();
  const parts: Buffer[] = [];
  const collected = (async () => {
    for await (const c of pack) parts.push(Buffer.from(c as Uint8Array));
  })();
  for (const f of files) {
    const type = f.type ?? 'file';
    const header = {
      name: f.name,
      type,
      mode: type === 'directory' ? 0o755 : 0o644,
      mtime: new Date(0),
      ...(f.linkname === undefined ? {} : { linkname: f.linkname }),
    };
    await new Promise<void>((resolve, reject) =>
      pack.entry(header, type === 'file' ? (f.data ?? Buffer.alloc(0)) : Buffer.alloc(0), (e) => (e ? reject(e) : resolve())),
    );
  }
  pack.finalize();
  await collected;
  return Buffer.concat(parts);
}

export function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** A disk's content: `marker` in the first bytes, then zeros up to `size`. */
export function diskBytes(marker: string, size = 256 * 1024): Buffer {
  const b = Buffer.alloc(size);
  b.write(marker);
  return b;
}

export interface LayerSpec {
  files: TarFile[];
  gzip?: boolean;
  /** OCI media type; default: tar or tar+gzip */
  mediaType?: string;
}

/** The entries of an archive and the digests in it, for tests to change before writeArchive. */
export interface ArchiveParts {
  entries: TarFile[];
  manifestDigest: string;
  configDigest: string;
  /** the layer entries' paths in the archive, in layer order */
  layerPaths: string[];
}

const json = (v: unknown): Buffer => Buffer.from(JSON.stringify(v));
const blobPath = (digest: string): string => `blobs/sha256/${digest.slice('sha256:'.length)}`;

async function layerBlobs(layers: LayerSpec[]): Promise<{ blob: Buffer; diffId: string; gzip: boolean; mediaType: string | undefined }[]> {
  const out = [];
  for (const l of layers) {
    const plain = await tarBuffer(l.files);
    const blob = l.gzip ? gzipSync(plain) : plain;
    out.push({ blob, diffId: sha256(plain), gzip: l.gzip === true, mediaType: l.mediaType });
  }
  return out;
}

export interface OciArchiveOptions {
  /** index annotations of the manifest */
  annotations?: Record<string, string>;
  /** Put the manifest behind a nested image index with platforms (and an arm64 manifest that is not in the archive). */
  platforms?: string[];
  /** Also write docker's manifest.json (docker 25+ does) naming `dockerTags`. */
  dockerTags?: string[];
  /** the config's rootfs.diff_ids instead of the layers' real ones */
  diffIds?: string[];
}

/** An OCI image layout (index.json → manifest → config + layers under blobs/sha256/). */
export async function ociArchive(layers: LayerSpec[], opts: OciArchiveOptions = {}): Promise<ArchiveParts> {
  const blobs = await layerBlobs(layers);
  const config = json({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: opts.diffIds ?? blobs.map((b) => b.diffId) } });
  const layerDescs = blobs.map((b) => ({
    mediaType: b.mediaType ?? (b.gzip ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.oci.image.layer.v1.tar'),
    digest: sha256(b.blob),
    size: b.blob.length,
  }));
  const manifest = json({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
    layers: layerDescs,
  });
  const entries: TarFile[] = [
    { name: 'blobs/', type: 'directory' },
    { name: 'blobs/sha256/', type: 'directory' },
    ...blobs.map((b) => ({ name: blobPath(sha256(b.blob)), data: b.blob })),
    { name: blobPath(sha256(config)), data: config },
    { name: blobPath(sha256(manifest)), data: manifest },
  ];
  let top = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha256(manifest), size: manifest.length };
  if (opts.platforms !== undefined) {
    const nested = json({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: opts.platforms.map((p) => {
        const [os, architecture] = p.split('/');
        const d = p === 'linux/amd64' ? sha256(manifest) : sha256(Buffer.from(p));
        return { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: d, size: manifest.length, platform: { os, architecture } };
      }),
    });
    entries.push({ name: blobPath(sha256(nested)), data: nested });
    top = { mediaType: 'application/vnd.oci.image.index.v1+json', digest: sha256(nested), size: nested.length };
  }
  entries.push({ name: 'oci-layout', data: json({ imageLayoutVersion: '1.0.0' }) });
  entries.push({
    name: 'index.json',
    data: json({ schemaVersion: 2, manifests: [{ ...top, ...(opts.annotations ? { annotations: opts.annotations } : {}) }] }),
  });
  if (opts.dockerTags !== undefined) {
    const list = [{ Config: blobPath(sha256(config)), RepoTags: opts.dockerTags, Layers: blobs.map((b) => blobPath(sha256(b.blob))) }];
    entries.push({ name: 'manifest.json', data: json(list) });
  }
  return { entries, manifestDigest: sha256(manifest), configDigest: sha256(config), layerPaths: blobs.map((b) => blobPath(sha256(b.blob))) };
}

export interface DockerArchiveOptions {
  repoTags?: string[];
  /** buildah's layout: layers as `<hex>.tar` with `<id>/layer.tar` symlinks, and manifest.json naming the symlinks */
  viaSymlinks?: boolean;
}

/** A docker archive (`docker save` before 25): manifest.json, `<id>.json` config, `<id>/layer.tar` layers, repositories. */
export async function dockerArchive(layers: LayerSpec[], opts: DockerArchiveOptions = {}): Promise<ArchiveParts> {
  const blobs = await layerBlobs(layers);
  const config = json({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: blobs.map((b) => b.diffId) } });
  const configHex = sha256(config).slice('sha256:'.length);
  const entries: TarFile[] = [];
  const layerPaths: string[] = [];
  blobs.forEach((b, i) => {
    const id = createHash('sha256').update(`layer ${i} ${b.diffId}`).digest('hex');
    entries.push({ name: `${id}/`, type: 'directory' }, { name: `${id}/VERSION`, data: Buffer.from('1.0') });
    if (opts.viaSymlinks) {
      const file = `${b.diffId.slice('sha256:'.length)}.tar`;
      entries.push({ name: file, data: b.blob }, { name: `${id}/layer.tar`, type: 'symlink', linkname: `../${file}` });
    } else entries.push({ name: `${id}/layer.tar`, data: b.blob });
    layerPaths.push(`${id}/layer.tar`);
  });
  entries.push({ name: `${configHex}.json`, data: config });
  entries.push({ name: 'manifest.json', data: json([{ Config: `${configHex}.json`, RepoTags: opts.repoTags ?? null, Layers: layerPaths }]) });
  entries.push({ name: 'repositories', data: json({}) });
  return { entries, manifestDigest: sha256(config), configDigest: sha256(config), layerPaths };
}

/** Replace the data of the entry `name` (throws when there is none). */
export function changeEntry(parts: ArchiveParts, name: string, fn: (data: Buffer) => Buffer): void {
  const e = parts.entries.find((x) => x.name === name);
  if (e?.data === undefined) throw new Error(`no entry ${name}`);
  e.data = fn(e.data);
}

export async function writeArchive(file: string, parts: ArchiveParts | TarFile[]): Promise<Buffer> {
  const data = await tarBuffer(Array.isArray(parts) ? parts : parts.entries);
  await fsp.writeFile(file, data);
  return data;
}
