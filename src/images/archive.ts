// Extracts the one disk file of a containerDisk image from an OCI or docker archive, streaming each layer through its digest checks and never holding a layer in memory.
import { createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar, { type Extract } from 'tar-stream';
import { VmletError } from '../errors.js';
import { TEMP_PREFIX } from '../source/atomic-file.js';
import { chunks, drain, emptyChanges, errorText, isSystemError, type LayerChanges, type LayerResult, pickDisk, readLayer } from './archive-layer.js';
import { type ArchiveKind, type ArchiveListing, type LayerPlan, normaliseEntryName, planArchive } from './archive-layout.js';

export interface ArchiveDisk {
  kind: ArchiveKind;
  /** `sha256:<hex>` of the image manifest (OCI) or of the config (docker: its image id). */
  digest: string;
  /** From the OCI index's annotations or docker's RepoTags, as written there. */
  names: string[];
  /** The disk's file name in /disk/, e.g. `disk.qcow2`. */
  diskFileName: string;
  size: number;
}

export interface ExtractOptions {
  signal?: AbortSignal;
}

/** Entries up to this size are read into memory in the first pass (manifests, configs, indexes). */
const SMALL_ENTRY = 4 * 1024 * 1024;
/** All kept small entries together: more means the archive is not an image archive. */
const SMALL_TOTAL = 64 * 1024 * 1024;

/** An entry of an archive being read (tar-stream does not export its type). */
type Entry = Extract extends AsyncIterable<infer S> ? S : never;

/** Whether `file` is a tar archive (ustar magic at offset 257), to tell image archives from disk files. */
export async function isTarArchive(file: string): Promise<boolean> {
  const fh = await fsp.open(file, 'r');
  try {
    const buf = Buffer.alloc(5);
    const { bytesRead } = await fh.read(buf, 0, 5, 257);
    return bytesRead === 5 && buf.toString('latin1') === 'ustar';
  } finally {
    await fh.close();
  }
}

/**
 * Extract the disk of the containerDisk image in `archive` to `outFile`. Throws VmletError IMAGE_ARCHIVE_INVALID,
 * IMAGE_DIGEST_MISMATCH, IMAGE_LAYER_UNSUPPORTED, IMAGE_NO_DISK or IMAGE_STORE_FAILED; on any failure neither
 * `outFile` nor a temp file is left.
 */
export async function extractDiskFromArchive(archive: string, outFile: string, opts: ExtractOptions = {}): Promise<ArchiveDisk> {
  const what = `archive ${path.basename(archive)}`;
  const listing = await listArchive(archive, what, opts.signal);
  const plan = planArchive(listing, what);
  const work = await fsp.mkdtemp(path.join(path.dirname(outFile), `${TEMP_PREFIX}extract-`)).catch((e: unknown) => {
    throw storeFailed(e, `could not make a temp folder next to ${outFile}`);
  });
  try {
    const changes = await readLayers(archive, what, plan.layers, listing.occurrences, work, opts.signal);
    const disk = pickDisk(
      plan.layers.map((l) => changes.get(l.entry) ?? emptyChanges()),
      what,
    );
    await fsp.rename(disk.tmp, outFile).catch((e: unknown) => {
      throw storeFailed(e, `could not move the disk to ${outFile}`);
    });
    return { kind: plan.kind, digest: plan.digest, names: plan.names, diskFileName: disk.name, size: disk.size };
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/** Pass 1: every entry's name and type, and the content of the small JSON-looking ones. */
async function listArchive(archive: string, what: string, signal: AbortSignal | undefined): Promise<ArchiveListing & { occurrences: Map<string, number> }> {
  const files = new Map<string, Buffer>();
  const entries = new Set<string>();
  const links = new Map<string, string>();
  const occurrences = new Map<string, number>();
  let kept = 0;
  await forEachEntry(archive, what, signal, async (entry) => {
    const { header } = entry;
    const name = normaliseEntryName(header.name);
    occurrences.set(name, (occurrences.get(name) ?? 0) + 1);
    files.delete(name);
    entries.delete(name);
    links.delete(name);
    if ((header.type === 'symlink' || header.type === 'link') && header.linkname) {
      // A symlink is relative to its folder, a hard link names an archive path.
      const relative = header.type === 'symlink' && !header.linkname.startsWith('/');
      const target = relative ? path.posix.join(path.posix.dirname(name), header.linkname) : header.linkname;
      links.set(name, normaliseEntryName(path.posix.normalize(target)));
      return;
    }
    if (header.type !== 'file' && header.type !== 'contiguous-file') return;
    entries.add(name);
    if (header.size > SMALL_ENTRY) return;
    const data = await readAll(entry);
    if (!looksLikeJson(data)) return;
    kept += data.length;
    if (kept > SMALL_TOTAL) throw invalid(what, `it has more than ${SMALL_TOTAL / 1024 / 1024} MiB of small JSON files; it is not an image archive`);
    files.set(name, data);
  });
  return { files, entries, links, occurrences };
}

/** Pass 2: read each layer entry (its last occurrence, as in pass 1) and note what it does to /disk/. */
async function readLayers(
  archive: string,
  what: string,
  layers: LayerPlan[],
  occurrences: Map<string, number>,
  work: string,
  signal: AbortSignal | undefined,
): Promise<Map<string, LayerChanges>> {
  const plans = new Map<string, LayerPlan[]>();
  for (const l of layers) plans.set(l.entry, [...(plans.get(l.entry) ?? []), l]);
  const seen = new Map<string, number>();
  const changes = new Map<string, LayerChanges>();
  let files = 0;
  await forEachEntry(archive, what, signal, async (entry) => {
    const name = normaliseEntryName(entry.header.name);
    const n = (seen.get(name) ?? 0) + 1;
    seen.set(name, n);
    const wanted = plans.get(name);
    if (wanted === undefined || n !== occurrences.get(name)) return;
    const [first] = wanted;
    if (first === undefined) return;
    const result = await readLayer(entry, first.compression, () => path.join(work, `layer-file-${files++}`));
    checkLayer(wanted, result, what);
    changes.set(name, result.changes);
  });
  for (const l of layers) if (!changes.has(l.entry)) throw invalid(what, `${l.label} went missing while reading it`);
  return changes;
}

/** A layer's blob digest first (damage shows there), then whether it unpacked, then its diff_id. */
function checkLayer(plans: LayerPlan[], r: LayerResult, what: string): void {
  for (const p of plans) {
    if (p.blobDigest !== undefined && p.blobDigest !== r.blobDigest) {
      throw new VmletError('IMAGE_DIGEST_MISMATCH', `${what}: ${p.label} hashes to ${r.blobDigest}; the archive is damaged`);
    }
  }
  const [first] = plans;
  if (r.error !== undefined) {
    if (r.error instanceof VmletError || isSystemError(r.error)) throw r.error;
    const how = first?.compression === 'gzip' || r.gzip ? 'gzip-compressed tar' : 'tar';
    throw new VmletError('IMAGE_ARCHIVE_INVALID', `${what}: ${first?.label ?? 'a layer'} is not a valid ${how}: ${errorText(r.error)}`, { cause: r.error });
  }
  for (const p of plans) {
    if (p.diffId !== undefined && p.diffId !== r.diffId) {
      throw new VmletError(
        'IMAGE_DIGEST_MISMATCH',
        `${what}: ${p.label} unpacks to content that hashes to ${r.diffId}, not its diff_id ${p.diffId}; the archive is damaged`,
      );
    }
  }
}

/** Read the tar `file` entry by entry; tar and read errors become VmletErrors. */
async function forEachEntry(file: string, what: string, signal: AbortSignal | undefined, fn: (entry: Entry) => Promise<void>): Promise<void> {
  const src = createReadStream(file);
  const ex = tar.extract();
  const piped = pipeline(src, ex, signal === undefined ? {} : { signal });
  piped.catch(() => undefined); // its error also ends the loop below
  try {
    for await (const entry of ex) {
      entry.on('error', () => undefined); // reported through the loop
      await fn(entry);
      await drain(entry);
    }
    await piped;
  } catch (e) {
    src.destroy();
    ex.destroy();
    if (signal?.aborted) throw signal.reason;
    if (e instanceof VmletError) throw e;
    if (isSystemError(e)) throw storeFailed(e, `could not read ${what}`);
    throw new VmletError('IMAGE_ARCHIVE_INVALID', `${what} is not a whole tar archive: ${errorText(e)}`, { cause: e });
  }
}

async function readAll(src: AsyncIterable<unknown>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of chunks(src)) parts.push(c);
  return Buffer.concat(parts);
}

function looksLikeJson(data: Buffer): boolean {
  const first = data.toString('latin1', 0, Math.min(data.length, 64)).trimStart()[0];
  return first === '{' || first === '[';
}

function invalid(what: string, why: string): VmletError {
  return new VmletError('IMAGE_ARCHIVE_INVALID', `${what} is not a usable image archive: ${why}`);
}

function storeFailed(e: unknown, message: string): VmletError {
  if (e instanceof VmletError) return e;
  const errno = isSystemError(e) ? e.code : undefined;
  return new VmletError('IMAGE_STORE_FAILED', `${message}: ${errorText(e)}`, { cause: e, ...(errno === undefined ? {} : { errno }) });
}
