// Crash-safe file primitives: write-to-temp + fsync + rename + directory fsync, durable unlink and mkdir, temp-file naming.

import { randomBytes } from 'node:crypto';
import { constants as fsc, promises as fsp } from 'node:fs';
import path from 'node:path';

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

/** fsync a directory so that entries created, renamed or removed in it survive a power loss. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Replace `file` with `data` atomically and durably: a reader (or a crash) sees either the old content or the new
 * one, never a mix, and once the promise resolves the new content survives a crash. On failure the old content is
 * untouched and the temp file is removed (best effort; whoever owns the directory removes what a crash leaves).
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
    await fh.writeFile(data);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await fsp.rename(tmp, file);
  } catch (e) {
    if (fh !== undefined) await fh.close().catch(() => undefined);
    await fsp.unlink(tmp).catch(() => undefined);
    throw e;
  }
  await fsyncDir(dir).catch((e: unknown) => {
    throw new NotDurableError(e);
  });
}

/** Remove `file` and fsync its directory. Resolves to false when the file did not exist. */
export async function unlinkDurable(file: string): Promise<boolean> {
  try {
    await fsp.unlink(file);
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return false;
    throw e;
  }
  await fsyncDir(path.dirname(file)).catch((e: unknown) => {
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
  await fsyncDir(toDir);
  await fsyncDir(path.dirname(file));
  return target;
}

export function errnoCode(e: unknown): string | undefined {
  if (typeof e === 'object' && e !== null && 'code' in e) {
    const c = (e as { code: unknown }).code;
    return typeof c === 'string' ? c : undefined;
  }
  return undefined;
}
