// The node-local image store of containerDisk images (standalone mode): imports archives and disk files, names them, resolves references, removes unused images.
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { probeImage, type ImageFormat } from '../disk/image-format.js';
import { VmletError } from '../errors.js';
import { errnoCode, fsyncDir, isTempName, NotDurableError, writeFileAtomic } from '../source/atomic-file.js';
import type * as Archive from './archive.js';
import { copyIn, moveIn, nameFromFile, refuseCompressed } from './disk-file.js';
import { canonicalTagged, nameKey, parseImageName, parseReference, referenceProblem } from '../api/image-reference.js';

export interface ImageRecord {
  digest: string;
  /** `name:tag` as the user or the archive wrote them; empty when the names moved to newer imports. */
  names: string[];
  format: ImageFormat;
  virtualSize: number;
  /** bytes of the file */
  size: number;
  source: 'oci-archive' | 'docker-archive' | 'disk-file';
  diskFileName: string;
  importedAt: string;
  /** absolute path of the disk file in the store */
  path: string;
}

export interface ImageStoreOptions {
  dir: string;
  log?: Logger;
  now?: () => Date;
}

export interface ImportOptions {
  /** `name[:tag]`; added to an archive's own names. */
  name?: string;
  /** Consume `file` (the API's upload): a disk file is renamed into the store, an archive removed once read; even when the import fails. */
  move?: boolean;
}

type Stored = Omit<ImageRecord, 'path'>;

interface Staged {
  digest: string;
  names: string[];
  source: ImageRecord['source'];
  diskFileName: string;
  file: string;
}

const INDEX_FILE = 'images.json';
const INDEX_VERSION = 1;
const SOURCES: readonly string[] = ['oci-archive', 'docker-archive', 'disk-file'];
export class ImageStore {
  private readonly dir: string;
  private readonly log: Logger | undefined;
  private readonly now: () => Date;
  private records = new Map<string, Stored>();
  private readonly listeners = new Set<() => void>();
  private chain: Promise<unknown> = Promise.resolve();

  constructor(opts: ImageStoreOptions) {
    this.dir = path.resolve(opts.dir);
    this.log = opts.log;
    this.now = opts.now ?? (() => new Date());
  }

  /** Make the folders, remove what killed imports left, load the records and drop those whose disk file is gone. */
  async init(): Promise<void> {
    try {
      await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
      await fsp.rm(this.tmpDir(), { recursive: true, force: true });
      await fsp.mkdir(this.uploadDir(), { recursive: true, mode: 0o700 });
      await fsp.mkdir(this.disksDir(), { recursive: true, mode: 0o755 });
      for (const f of await fsp.readdir(this.dir)) if (isTempName(f)) await fsp.rm(path.join(this.dir, f), { force: true });
      this.records = await this.load();
      let dropped = false;
      for (const rec of [...this.records.values()]) {
        const st = await fsp.lstat(this.diskPath(rec)).catch(() => undefined);
        if (st?.isFile()) continue;
        this.log?.warn({ digest: rec.digest, names: rec.names, path: this.diskPath(rec) }, 'image dropped: its disk file is gone');
        this.records.delete(rec.digest);
        dropped = true;
      }
      if (dropped) await this.save(this.records);
      // A disk folder without a record is an import killed between its rename and the index write.
      for (const hex of await fsp.readdir(this.disksDir())) {
        if (this.records.has(`sha256:${hex}`)) continue;
        this.log?.warn({ folder: path.join(this.disksDir(), hex) }, 'removing a disk folder that no image record names');
        await fsp.rm(path.join(this.disksDir(), hex), { recursive: true, force: true });
      }
    } catch (e) {
      throw storeFailed(e, `could not open the image store in ${this.dir}`);
    }
  }

  /** A folder on the store's filesystem for the API to write an upload to before import(…, { move: true }). */
  uploadDir(): string {
    return path.join(this.tmpDir(), 'uploads');
  }

  /** Import an image archive (OCI or docker) or a raw/qcow2 disk file. A failed import leaves nothing in the store. */
  async import(file: string, opts: ImportOptions = {}): Promise<ImageRecord> {
    const work = path.join(this.tmpDir(), `import-${randomBytes(6).toString('hex')}`);
    try {
      const given = opts.name === undefined ? undefined : parseImageName(opts.name).name;
      await fsp.mkdir(work, { recursive: true, mode: 0o700 }).catch((e: unknown) => {
        throw storeFailed(e, `could not make ${work}`);
      });
      const staged = await this.stage(path.resolve(file), work, given, opts.move === true);
      const probed = await probeImage(staged.file, `disk ${staged.diskFileName} of ${path.basename(file)}`).catch((e: unknown) => {
        throw storeFailed(e, `could not read ${staged.file}`);
      });
      const rec = await this.serial(() => this.commit(staged, probed.format, probed.virtualSize));
      this.changed();
      return rec;
    } finally {
      await fsp.rm(work, { recursive: true, force: true });
      if (opts.move === true) await fsp.rm(file, { force: true }).catch(() => undefined);
    }
  }

  list(): ImageRecord[] {
    const key = (r: Stored): string => r.names[0] ?? r.digest;
    return [...this.records.values()].sort((a, b) => key(a).localeCompare(key(b))).map((r) => this.record(r));
  }

  /**
   * The image `ref` names: `name[:tag]` (docker.io/library/debian:12 and debian:12 are one name), `name:tag@digest`
   * (the named image must have that digest), `name@digest` (the image of that digest, with a name of that
   * repository), `sha256:<hex>`, or a unique prefix of at least 12 hex digits (with or without `sha256:`).
   * Throws IMAGE_NAME_INVALID when `ref` is not a reference.
   */
  resolve(ref: string): ImageRecord | undefined {
    const found = this.find(ref);
    return found === undefined ? undefined : this.record(found.rec);
  }

  /**
   * Remove what `ref` names. A name of an image that has other names only loses that name (like `docker rmi`) and
   * the image as it is now is returned; otherwise the whole image goes (IMAGE_IN_USE when `usedBy` names VMIs) and
   * the removed record is returned.
   */
  remove(ref: string, usedBy: (rec: ImageRecord) => string[]): Promise<ImageRecord> {
    return this.serial(async () => {
      const found = this.find(ref);
      if (found === undefined) throw new VmletError('IMAGE_NOT_FOUND', `no image ${ref} in the node image store`);
      const { rec, key } = found;
      const next = new Map(this.records);
      if (key !== undefined && rec.names.length > 1) {
        const untagged = { ...rec, names: rec.names.filter((n) => nameKey(n) !== key) };
        next.set(rec.digest, untagged);
        await this.save(next);
        this.records = next;
        this.log?.info({ digest: rec.digest, name: ref }, 'image name removed');
        this.changed();
        return this.record(untagged);
      }
      const users = usedBy(this.record(rec));
      if (users.length > 0) {
        throw new VmletError('IMAGE_IN_USE', `image ${ref} is used by ${users.join(', ')}; stop them before removing it`, { details: { usedBy: users } });
      }
      next.delete(rec.digest);
      await this.save(next);
      this.records = next;
      // The record is gone: a folder left by a failed rm is removed by the next init().
      await fsp.rm(this.digestDir(rec.digest), { recursive: true, force: true }).catch((e: unknown) => {
        this.log?.warn({ err: e, digest: rec.digest }, 'could not remove the disk folder of a removed image');
      });
      this.log?.info({ digest: rec.digest, names: rec.names }, 'image removed');
      this.changed();
      return this.record(rec);
    });
  }

  /** Call `listener` after each import and remove; returns the unsubscribe function. */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private tmpDir(): string {
    return path.join(this.dir, 'tmp');
  }

  private disksDir(): string {
    return path.join(this.dir, 'disks');
  }

  private digestDir(digest: string): string {
    return path.join(this.disksDir(), digest.slice('sha256:'.length));
  }

  private diskPath(rec: Stored): string {
    return path.join(this.digestDir(rec.digest), rec.diskFileName);
  }

  private record(rec: Stored): ImageRecord {
    return { ...rec, names: [...rec.names], path: this.diskPath(rec) };
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  private changed(): void {
    for (const l of this.listeners) {
      try {
        l();
      } catch (e) {
        this.log?.error({ err: e }, 'an image store listener threw');
      }
    }
  }

  /** The record `ref` names, and the name key when it matched by a tagged name. */
  private find(ref: string): { rec: Stored; key?: string } | undefined {
    if (/^sha256:[0-9a-f]{0,11}$/.test(ref)) return undefined; // too short a prefix to pick one image
    const hex = /^(?:sha256:)?([0-9a-f]{12,64})$/.exec(ref)?.[1];
    if (hex !== undefined) {
      // Bare hex may also be a name; sha256:<hex> never is.
      if (!ref.startsWith('sha256:') && referenceProblem(ref) === undefined) {
        const byName = this.find(`${ref}:latest`);
        if (byName !== undefined) return byName;
      }
      const matches = [...this.records.values()].filter((r) => r.digest.startsWith(`sha256:${hex}`));
      const [only] = matches;
      return matches.length === 1 && only !== undefined ? { rec: only } : undefined;
    }
    const parsed = parseReference(ref);
    if (parsed.kind === 'digest') return undefined; // a whole digest is 64 hex: handled above
    if (parsed.digest === undefined || parsed.tag !== undefined) {
      const key = canonicalTagged(parsed);
      const rec = [...this.records.values()].find((r) => r.names.some((n) => nameKey(n) === key));
      if (rec === undefined || (parsed.digest !== undefined && rec.digest !== parsed.digest)) return undefined;
      return { rec, key };
    }
    const rec = this.records.get(parsed.digest);
    const sameRepo = rec?.names.some((n) => nameKey(n)?.startsWith(`${parsed.canonicalName}:`));
    return rec !== undefined && sameRepo === true ? { rec } : undefined;
  }

  /** Put the disk in `work` and work out its digest and names. */
  private async stage(file: string, work: string, given: string | undefined, move: boolean): Promise<Staged> {
    const st = await fsp.stat(file).catch((e: unknown) => {
      throw storeFailed(e, `could not read ${file}`);
    });
    if (!st.isFile()) throw new VmletError('IMAGE_STORE_FAILED', `${file} is not a regular file`);
    // Loaded on the first import: the tar reader and its streams are no part of a daemon that runs VMs.
    const archive: typeof Archive = await import('./archive.js');
    if (await archive.isTarArchive(file)) {
      const out = path.join(work, 'disk');
      const disk = await archive.extractDiskFromArchive(file, out);
      const names = given === undefined ? disk.names : [given, ...disk.names];
      if (names.length === 0) {
        throw new VmletError('IMAGE_NAME_INVALID', `archive ${path.basename(file)} carries no image name; give one with --name NAME[:TAG]`);
      }
      return { digest: disk.digest, names, source: disk.kind, diskFileName: disk.diskFileName, file: out };
    }
    await refuseCompressed(file);
    const name = given ?? nameFromFile(file);
    const diskFileName = path.basename(file);
    const out = path.join(work, diskFileName);
    const digest = await (move ? moveIn(file, out) : copyIn(file, out)).catch((e: unknown) => {
      throw storeFailed(e, `could not copy ${file} into the image store`);
    });
    return { digest, names: [name], source: 'disk-file', diskFileName, file: out };
  }

  /** Add the staged image (or, for a digest the store has, its names) and write the index. */
  private async commit(s: Staged, format: ImageFormat, virtualSize: number): Promise<ImageRecord> {
    const keys = new Set(s.names.map((n) => nameKey(n)));
    const next = new Map<string, Stored>();
    // A name belongs to one image: the newest import takes it.
    for (const [d, r] of this.records) next.set(d, d === s.digest ? r : { ...r, names: r.names.filter((n) => !keys.has(nameKey(n))) });
    const old = next.get(s.digest);
    let rec: Stored;
    if (old !== undefined) {
      rec = { ...old, names: [...s.names, ...old.names.filter((n) => !keys.has(nameKey(n)))] };
    } else {
      const size = (await fsp.stat(s.file)).size;
      rec = {
        digest: s.digest,
        names: s.names,
        format,
        virtualSize,
        size,
        source: s.source,
        diskFileName: s.diskFileName,
        importedAt: this.now().toISOString(),
      };
      await this.placeDisk(s.file, rec).catch((e: unknown) => {
        throw storeFailed(e, `could not store the disk of ${s.digest}`);
      });
    }
    next.set(s.digest, rec);
    try {
      await this.save(next);
    } catch (e) {
      if (old === undefined) await fsp.rm(this.digestDir(s.digest), { recursive: true, force: true });
      throw e;
    }
    this.records = next;
    this.log?.info({ digest: rec.digest, names: rec.names, format, source: rec.source }, old === undefined ? 'image imported' : 'image names added');
    return this.record(rec);
  }

  /** Move the disk to disks/<hex>/<name>, read-only and durable. */
  private async placeDisk(file: string, rec: Stored): Promise<void> {
    const fh = await fsp.open(file, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.chmod(file, 0o444);
    await fsp.rm(this.digestDir(rec.digest), { recursive: true, force: true });
    await fsp.mkdir(this.digestDir(rec.digest), { mode: 0o755 });
    await fsp.rename(file, this.diskPath(rec));
    await fsyncDir(this.digestDir(rec.digest));
    await fsyncDir(this.disksDir());
  }

  private async load(): Promise<Map<string, Stored>> {
    const file = path.join(this.dir, INDEX_FILE);
    let text: string;
    try {
      text = await fsp.readFile(file, 'utf8');
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') return new Map();
      throw e;
    }
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      throw new VmletError('IMAGE_STORE_FAILED', `${file} is not valid JSON; fix or remove it (its images are then forgotten)`, { cause: e });
    }
    const images = typeof doc === 'object' && doc !== null && 'images' in doc && Array.isArray(doc.images) ? (doc.images as unknown[]) : undefined;
    if (images === undefined) throw new VmletError('IMAGE_STORE_FAILED', `${file} has no list of images`);
    const out = new Map<string, Stored>();
    for (const r of images) {
      if (!isStored(r)) throw new VmletError('IMAGE_STORE_FAILED', `${file} holds a record vmlet cannot read: ${JSON.stringify(r)}`);
      out.set(r.digest, r);
    }
    return out;
  }

  private async save(records: Map<string, Stored>): Promise<void> {
    const doc = { version: INDEX_VERSION, images: [...records.values()] };
    try {
      await writeFileAtomic(path.join(this.dir, INDEX_FILE), `${JSON.stringify(doc, null, 2)}\n`);
    } catch (e) {
      // The new index is in place, only its directory entry may not survive a power loss.
      if (e instanceof NotDurableError) this.log?.warn({ err: e }, 'image index written but not made durable');
      else throw storeFailed(e, `could not write ${INDEX_FILE}`);
    }
  }
}

function isStored(r: unknown): r is Stored {
  if (typeof r !== 'object' || r === null) return false;
  const o = r as Record<string, unknown>;
  return (
    typeof o.digest === 'string' &&
    /^sha256:[0-9a-f]{64}$/.test(o.digest) &&
    Array.isArray(o.names) &&
    o.names.every((n) => typeof n === 'string' && nameKey(n) !== undefined) &&
    (o.format === 'raw' || o.format === 'qcow2') &&
    typeof o.virtualSize === 'number' &&
    typeof o.size === 'number' &&
    typeof o.source === 'string' &&
    SOURCES.includes(o.source) &&
    typeof o.diskFileName === 'string' &&
    o.diskFileName !== '.' &&
    o.diskFileName !== '..' &&
    !o.diskFileName.includes('/') &&
    typeof o.importedAt === 'string'
  );
}

function storeFailed(e: unknown, message: string): unknown {
  if (e instanceof VmletError || (e instanceof Error && e.name === 'AbortError')) return e;
  const errno = errnoCode(e);
  return new VmletError('IMAGE_STORE_FAILED', `${message}: ${e instanceof Error ? e.message : String(e)}`, {
    cause: e,
    ...(errno === undefined ? {} : { errno }),
  });
}
