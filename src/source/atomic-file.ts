// Crash-safe file primitives: write-to-temp + fsync + rename + directory fsync, durable unlink and mkdir, temp-file naming.

import { randomBytes } from 'node:crypto';
import fs, { constants as fsc, promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { fsyncPolicy, type FsyncLane } from './fsync-policy.js';

/** Every temp file this module creates starts with this prefix, so leftovers can be recognised and removed. */
export const TEMP_PREFIX = '.tmp-';

/**
 * Thrown when the rename or unlink took effect but the directory fsync that makes it durable failed: the new state is
 * visible (and what a reopen finds unless the machine loses power), so callers should treat the change as made.
 */
export class NotDurableError extends Error {
  constructor(cause: unknown) {
    super('change is visible but the directory fsync failed', { cause });
    this.name = 'NotDurableError';
  }
}

export function isTempName(fileName: string): boolean {
  return fileName.startsWith(TEMP_PREFIX);
}

/*
 * open, write, close and rename are quick page-cache calls made inline (timed: fsyncPolicy.step) unless the change is
 * part of a burst; the fsyncs go where fsync-policy.ts says (inline while the disk is fast and no other fsync waits,
 * else libuv's thread pool). Each thread-pool hop costs two wake-ups, which on a busy host (a guest's vCPU thread
 * spinning) add up to milliseconds per write.
 */

/** fsync a directory so that entries created, renamed or removed in it survive a power loss. */
export async function fsyncDir(dir: string, lane: FsyncLane = fsyncPolicy.lane()): Promise<void> {
  const flags = fsc.O_RDONLY | fsc.O_DIRECTORY;
  const fd = lane === 'burst' ? await openFd(dir, flags) : fsyncPolicy.step(() => fs.openSync(dir, flags));
  try {
    await fsyncPolicy.fsync(fd, lane);
  } finally {
    if (lane === 'burst') await closeFd(fd);
    else fs.closeSync(fd);
  }
}

/**
 * Replace `file` with `data` atomically and durably: a reader (or a crash) sees either the old content or the new
 * one, never a mix, and once the promise resolves the new content survives a crash. On failure the old content is
 * untouched and the temp file is removed (best effort; whoever owns the directory removes what a crash leaves).
 * `durable: false` skips both fsyncs: still atomic for readers and a crash of this process, but a power loss may
 * keep the old file or leave a torn one (for data that may be lost, whose reader copes with a torn file).
 * `onVisible` runs once the new content is in place with its data synced, before the directory's fsync: what a
 * power loss can still undo then is the rename alone (the old content comes back, whole).
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, opts: { durable?: boolean; onVisible?: () => void } = {}): Promise<void> {
  const staged = await stageFileAtomic(file, data, opts);
  await staged.commit(opts.onVisible);
}

/** A new content written and synced beside its file, not yet in place. */
export interface StagedFile {
  /** Renames it into place (then `onVisible`), then fsyncs the directory; the temp file is removed if the rename fails. */
  commit(onVisible?: () => void): Promise<void>;
  /** Removes the temp file; the old content stays. */
  abort(): void;
}

/** writeFileAtomic's first half: the temp file written, synced and closed, so that `commit` costs only the rename and the directory's fsync. */
export async function stageFileAtomic(file: string, data: string | Uint8Array, opts: { durable?: boolean } = {}): Promise<StagedFile> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
  const durable = opts.durable ?? true;
  // A lone change is made inline; in a burst every step goes to the pool: a rename or an open waits for the journal
  // while other fsyncs commit, and on the event loop that wait stalls every other start.
  const lane = fsyncPolicy.lane({ counts: durable });
  const inline = lane !== 'burst';
  const abort = (): void => {
    try {
      fs.unlinkSync(tmp);
    } catch {
      /* never made, or gone */
    }
  };
  let fd: number | undefined;
  try {
    fd = inline ? fsyncPolicy.step(() => fs.openSync(tmp, WRITE_NEW, 0o600)) : await openFd(tmp, WRITE_NEW, 0o600);
    const opened = fd;
    if (inline) fsyncPolicy.step(() => fs.writeFileSync(opened, data));
    else await writeAll(fd, data);
    if (durable) await fsyncPolicy.fsync(fd, lane);
    if (inline) fs.closeSync(fd);
    else await closeFd(fd);
    fd = undefined;
  } catch (e) {
    if (fd !== undefined) closeQuietly(fd);
    abort();
    throw e;
  }
  const commit = async (onVisible?: () => void): Promise<void> => {
    try {
      if (inline) fsyncPolicy.step(() => fs.renameSync(tmp, file));
      else await fsp.rename(tmp, file);
    } catch (e) {
      abort();
      throw e;
    }
    onVisible?.();
    if (!durable) return;
    // What onVisible woke (a watcher's event, a waiting supervisor) goes first: an inline fsync holds the loop.
    if (onVisible !== undefined && inline) await new Promise<void>((resolve) => setImmediate(resolve));
    await fsyncDir(dir, lane).catch((e: unknown) => {
      throw new NotDurableError(e);
    });
  };
  return { commit, abort };
}

const WRITE_NEW = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL;
const openFd = promisify(fs.open);
const closeFd = promisify(fs.close);

function writeAll(fd: number, data: string | Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => fs.writeFile(fd, data, (e) => (e ? reject(e) : resolve())));
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    /* already closed */
  }
}

/** Remove `file` and fsync its directory (unless `durable: false`). Resolves to false when the file did not exist. */
export async function unlinkDurable(file: string, opts: { durable?: boolean } = {}): Promise<boolean> {
  const lane = fsyncPolicy.lane();
  try {
    if (lane !== 'burst') fsyncPolicy.step(() => fs.unlinkSync(file));
    else await fsp.unlink(file);
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return false;
    throw e;
  }
  if (opts.durable === false) return true;
  await fsyncDir(path.dirname(file), lane).catch((e: unknown) => {
    throw new NotDurableError(e);
  });
  return true;
}

/** Create `dir` (and parents) and fsync its parent, so that files later made durable inside it stay reachable. */
export async function mkdirDurable(dir: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  await fsyncDir(path.dirname(dir));
}

/** Move `file` into `toDir` as `newBaseName` plus a random suffix (so names never clash), fsync both directories. Returns the new path. */
export async function moveAside(file: string, toDir: string, newBaseName: string): Promise<string> {
  await fsp.mkdir(toDir, { recursive: true, mode: 0o700 });
  const target = path.join(toDir, `${newBaseName}.${randomBytes(4).toString('hex')}`);
  await fsp.rename(file, target);
  const lane = fsyncPolicy.lane();
  await fsyncDir(toDir, lane);
  await fsyncDir(path.dirname(file), lane);
  return target;
}

export function errnoCode(e: unknown): string | undefined {
  if (typeof e === 'object' && e !== null && 'code' in e) {
    const c = (e as { code: unknown }).code;
    return typeof c === 'string' ? c : undefined;
  }
  return undefined;
}
