// Remembers each disk file's format from the first time vmlet saw it, so a guest that later writes a qcow2 header into a raw disk cannot change how QEMU opens it.
import { createHash } from 'node:crypto';
import { type BigIntStats, promises as fsp } from 'node:fs';
import path from 'node:path';
import { VmletError } from '../errors.js';
import { NotDurableError, errnoCode, writeFileAtomic } from '../source/atomic-file.js';
import { KeyedMutex } from '../source/keyed-mutex.js';
import { type ImageFormat, type ProbeOptions, type ProbedImage, imageFileSize, probeImageFd } from './image-format.js';

/** What one record file holds. `dev`, `ino` and `btime` (birth time, ns) are decimal strings: 64-bit values do not fit a JSON number. */
export interface FormatRecord {
  path: string;
  dev: string;
  ino: string;
  btime: string;
  format: ImageFormat;
  virtualSize: number;
  /** `probed`: read from the header on first sight; `created`: a file vmlet made itself (record()). */
  origin: 'probed' | 'created';
  recordedAt: string;
}

export interface FormatRecordsOptions extends ProbeOptions {
  /** Clock for `recordedAt`. */
  now?: () => Date;
}

export class FormatRecords {
  readonly #dir: string;
  readonly #opts: FormatRecordsOptions;
  readonly #mutex = new KeyedMutex();

  constructor(dir: string, opts: FormatRecordsOptions = {}) {
    this.#dir = dir;
    this.#opts = opts;
  }

  /** Where the record of `file` (a resolved absolute path) lives. */
  recordPath(file: string): string {
    return path.join(this.#dir, `${createHash('sha256').update(file).digest('hex')}.json`);
  }

  /**
   * The format of `file` (resolved, absolute): the recorded one when the record matches the file's identity, else
   * probed from the header and recorded. fs errors on `file` pass through unchanged; refused images are not recorded.
   */
  formatOf(file: string, what: string): Promise<ProbedImage & { firstSeen: boolean }> {
    return this.#mutex.run(file, async () => {
      const fh = await fsp.open(file, 'r');
      try {
        const st = await fh.stat({ bigint: true });
        const rec = await this.#read(file);
        let probed: ProbedImage | undefined;
        if (rec !== undefined && sameFile(rec, st)) {
          // Never re-probe a raw disk: its first bytes belong to the guest. Only the size may have grown.
          if (rec.format === 'raw') return { format: 'raw', virtualSize: await imageFileSize(st, this.#opts), firstSeen: false };
          // vmlet's own qcow2 files (overlays) name a backing file on purpose: probing them would refuse them.
          if (rec.origin === 'created') return { format: rec.format, virtualSize: rec.virtualSize, firstSeen: false };
          // A qcow2 header is written by QEMU, not the guest, so checking it again is safe and refuses a backing file added since.
          probed = await probeImageFd(fh.fd, what, this.#opts);
          if (probed.format === 'qcow2') return { ...probed, firstSeen: false };
        }
        probed ??= await probeImageFd(fh.fd, what, this.#opts);
        await this.#write(file, st, probed, 'probed');
        return { ...probed, firstSeen: true };
      } finally {
        await fh.close();
      }
    });
  }

  /** Record a file vmlet made itself (a sparse raw disk, an overlay): never probed, now or later. A qcow2 needs its virtual size; a raw file's is its size. */
  record(file: string, format: 'raw'): Promise<void>;
  record(file: string, format: ImageFormat, virtualSize: number): Promise<void>;
  record(file: string, format: ImageFormat, virtualSize?: number): Promise<void> {
    return this.#mutex.run(file, async () => {
      const st = await fsp.stat(file, { bigint: true });
      await this.#write(file, st, { format, virtualSize: virtualSize ?? (await imageFileSize(st, this.#opts)) }, 'created');
    });
  }

  async #read(file: string): Promise<FormatRecord | undefined> {
    let text: string;
    try {
      text = await fsp.readFile(this.recordPath(file), 'utf8');
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') return undefined;
      throw this.#storeFailed('read', file, e);
    }
    // A record that does not parse is as good as none: the file is probed and recorded again.
    try {
      const rec = parseRecord(JSON.parse(text));
      return rec?.path === file ? rec : undefined;
    } catch {
      return undefined;
    }
  }

  async #write(file: string, st: BigIntStats, img: ProbedImage, origin: FormatRecord['origin']): Promise<void> {
    const rec: FormatRecord = {
      path: file,
      dev: String(st.dev),
      ino: String(st.ino),
      btime: String(st.birthtimeNs),
      format: img.format,
      virtualSize: img.virtualSize,
      origin,
      recordedAt: (this.#opts.now?.() ?? new Date()).toISOString(),
    };
    try {
      await fsp.mkdir(this.#dir, { recursive: true, mode: 0o700 });
      await writeFileAtomic(this.recordPath(file), `${JSON.stringify(rec)}\n`);
    } catch (e) {
      // The record is in place, only not yet durable: a crash would at worst make vmlet probe the file again.
      if (e instanceof NotDurableError) return;
      throw this.#storeFailed('write', file, e);
    }
  }

  #storeFailed(verb: string, file: string, cause: unknown): VmletError {
    const errno = errnoCode(cause);
    return new VmletError(
      'IMAGE_STORE_FAILED',
      `could not ${verb} the format record of ${file} in ${this.#dir}; check that the directory is writable and the disk not full`,
      errno === undefined ? { cause } : { cause, errno },
    );
  }
}

function sameFile(rec: FormatRecord, st: BigIntStats): boolean {
  return rec.dev === String(st.dev) && rec.ino === String(st.ino) && rec.btime === String(st.birthtimeNs);
}

function parseRecord(v: unknown): FormatRecord | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const r = v as Record<string, unknown>;
  const str = (k: string): boolean => typeof r[k] === 'string';
  if (!str('path') || !str('dev') || !str('ino') || !str('btime') || !str('recordedAt')) return undefined;
  if (r.format !== 'raw' && r.format !== 'qcow2') return undefined;
  if (r.origin !== 'probed' && r.origin !== 'created') return undefined;
  if (typeof r.virtualSize !== 'number' || !Number.isSafeInteger(r.virtualSize) || r.virtualSize < 0) return undefined;
  return {
    path: String(r.path),
    dev: String(r.dev),
    ino: String(r.ino),
    btime: String(r.btime),
    format: r.format,
    virtualSize: r.virtualSize,
    origin: r.origin,
    recordedAt: String(r.recordedAt),
  };
}
