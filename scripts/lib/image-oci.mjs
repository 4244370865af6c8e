// Appends one layer (a staged folder) to a cached OCI image archive and writes the result as a new OCI archive: the project layer in seconds, where buildah's vfs storage would copy the whole base three times.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { run } from './image-buildah.mjs';
import { ImageBuildError } from './image-error.mjs';

const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';

/** Writes `data` as a blob of `layout`; returns its descriptor fields. */
function putBlob(layout, data) {
  const hex = crypto.createHash('sha256').update(data).digest('hex');
  fs.writeFileSync(path.join(layout, 'blobs', 'sha256', hex), data);
  return { digest: `sha256:${hex}`, size: data.length };
}

function readBlob(layout, digest) {
  return JSON.parse(fs.readFileSync(path.join(layout, 'blobs', ...String(digest).split(':')), 'utf8'));
}

/**
 * Tars `ctx` (owned by root, numeric ids), gzips it into a blob of `layout`; returns the blob's descriptor
 * and the uncompressed tar's digest (the config's diff_id).
 */
async function layerBlob(layout, ctx) {
  const tmp = path.join(layout, 'blobs', 'sha256', 'layer.tmp');
  const tar = spawn('tar', ['--create', '--sort=name', '--owner=0', '--group=0', '--numeric-owner', '-C', ctx, ...fs.readdirSync(ctx).sort()], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  tar.stderr.on('data', (d) => (stderr += String(d)));
  const exited = new Promise((resolve) => tar.on('close', resolve));
  const diff = crypto.createHash('sha256');
  const blob = crypto.createHash('sha256');
  let size = 0;
  tar.stdout.on('data', (d) => diff.update(d));
  const gz = zlib.createGzip({ level: 4 });
  gz.on('data', (d) => {
    blob.update(d);
    size += d.length;
  });
  await pipeline(tar.stdout, gz, fs.createWriteStream(tmp));
  const code = await exited;
  if (code !== 0) throw new ImageBuildError('IMAGE_COMMAND_FAILED', `tar of the project layer exited with ${code}: ${stderr.trim()}`);
  const hex = blob.digest('hex');
  fs.renameSync(tmp, path.join(layout, 'blobs', 'sha256', hex));
  return { layer: { mediaType: LAYER, digest: `sha256:${hex}`, size }, diffId: `sha256:${diff.digest('hex')}` };
}

/**
 * `baseArchive` plus the files staged in `ctx` as one more layer, named `ref`, written to `out`.
 * `config` is merged into the image config's `config` (Entrypoint, Cmd, WorkingDir, Labels …).
 * @param {{ baseArchive: string, ctx: string, work: string, ref: string, out: string, config: Record<string, unknown>, comment: string }} o
 */
export async function appendLayer(o) {
  const layout = path.join(o.work, 'layout');
  fs.mkdirSync(layout, { recursive: true });
  await run('tar', ['-xf', o.baseArchive, '-C', layout]);
  const index = JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8'));
  const baseDesc = index.manifests?.[0];
  if (index.manifests?.length !== 1 || baseDesc.mediaType !== MANIFEST) throw new ImageBuildError('IMAGE_BAD_BASE', `${o.baseArchive} does not hold exactly one OCI image manifest`);
  const manifest = readBlob(layout, baseDesc.digest);
  const config = readBlob(layout, manifest.config.digest);
  const { layer, diffId } = await layerBlob(layout, o.ctx);
  const now = new Date().toISOString();
  config.created = now;
  config.config = { ...config.config, ...o.config, Labels: { ...config.config?.Labels, ...(/** @type {object} */ (o.config.Labels) ?? {}) } };
  config.rootfs.diff_ids.push(diffId);
  config.history = [...(config.history ?? []), { created: now, created_by: 'scripts/build-image.mjs', comment: o.comment }];
  const configDesc = { mediaType: manifest.config.mediaType, ...putBlob(layout, Buffer.from(JSON.stringify(config))) };
  const newManifest = {
    ...manifest,
    config: configDesc,
    layers: [...manifest.layers, layer],
    annotations: { 'org.opencontainers.image.base.digest': baseDesc.digest, 'org.opencontainers.image.base.name': baseDesc.annotations?.['org.opencontainers.image.ref.name'] ?? '' },
  };
  const manifestDesc = { mediaType: MANIFEST, ...putBlob(layout, Buffer.from(JSON.stringify(newManifest))), annotations: { 'org.opencontainers.image.ref.name': o.ref } };
  fs.writeFileSync(path.join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [manifestDesc] }));
  // only the blobs the new image uses (not the base's own manifest and config)
  const keep = new Set([manifestDesc.digest, configDesc.digest, ...newManifest.layers.map((l) => l.digest)].map((d) => d.split(':')[1]));
  for (const n of fs.readdirSync(path.join(layout, 'blobs', 'sha256'))) if (!keep.has(n)) fs.rmSync(path.join(layout, 'blobs', 'sha256', n));
  await run('tar', ['--create', '--owner=0', '--group=0', '--numeric-owner', '-f', o.out, '-C', layout, 'oci-layout', 'index.json', 'blobs']);
  return { manifest: manifestDesc.digest, layers: newManifest.layers.length };
}
