// Puts a disk file into the image store's temp area: reflinked, renamed or copied keeping its holes, hashed on the way; refuses compressed files and names a disk after its file.
import { createHash, type Hash } from 'node:crypto';
import { constants as fsc, createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { VmletError } from '../errors.js';
import { errnoCode } from '../source/atomic-file.js';
import { referenceProblem } from '../api/image-reference.js';

const BLOCK = 64 * 1024;
const ZERO_BLOCK = Buffer.alloc(BLOCK);

// Magic numbers of compressed files: as a "raw disk" they would boot garbage.
const COMPRESSED: { name: string; magic: Buffer }[] = [
  { name: 'gzip', magic: Buffer.from([0x1f, 0x8b]) },
  { name: 'xz', magic: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) },
  { name: 'zstd', magic: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]) },
  { name: 'bzip2', magic: Buffer.from('BZh') },
];

/** Write `src` to a new `file`, skipping all-zero 64 KiB blocks (holes: a raw disk is mostly zeros), and set its size to at least `size`. */
export async function writeSparse(src: AsyncIterable<Buffer>, file: string, size: number): Promise<void> {
  const fh = await fsp.open(file, 'wx', 0o600);
  try {
    const block = Buffer.alloc(BLOCK);
    let fill = 0;
    let pos = 0;
    const flush = async (): Promise<void> => {
      if (fill === BLOCK ? !block.equals(ZERO_BLOCK) : block.subarray(0, fill).some((b) => b !== 0)) await fh.write(block, 0, fill, pos);
      pos += fill;
      fill = 0;
    };
    for await (const chunk of src) {
      for (let off = 0; off < chunk.length;) {
        const n = chunk.copy(block, fill, off, Math.min(chunk.length, off + BLOCK - fill));
        fill += n;
        off += n;
        if (fill === BLOCK) await flush();
      }
    }
    await flush();
    await fh.truncate(Math.max(pos, size));
  } finally {
    await fh.close();
  }
}

/** `Debian-12 (amd64).qcow2` → `debian-12-amd64:latest`; throws IMAGE_NAME_INVALID when nothing usable is left. */
export function nameFromFile(file: string): string {
  const base = path.parse(file).name.toLowerCase();
  const cleaned = base
    .replace(/[^a-z0-9._-]+/g, '-')
    .replace(/^[._-]+|[._-]+$/g, '')
    .replace(/[._-]{2,}/g, '-');
  if (cleaned === '' || referenceProblem(cleaned) !== undefined) {
    throw new VmletError('IMAGE_NAME_INVALID', `no image name can be made from the file name ${path.basename(file)}; give one with --name NAME[:TAG]`);
  }
  return `${cleaned}:latest`;
}

/** Throws IMAGE_FORMAT_UNSUPPORTED for a gzip, xz, zstd or bzip2 file, which raw would take as a disk. */
export async function refuseCompressed(file: string): Promise<void> {
  const fh = await fsp.open(file, 'r');
  try {
    const head = Buffer.alloc(8);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    for (const c of COMPRESSED) {
      if (bytesRead >= c.magic.length && head.subarray(0, c.magic.length).equals(c.magic)) {
        throw new VmletError(
          'IMAGE_FORMAT_UNSUPPORTED',
          `${path.basename(file)} is ${c.name}-compressed; decompress it first (an image archive is imported as a plain tar)`,
        );
      }
    }
  } finally {
    await fh.close();
  }
}

/** Rename `file` to `out` (copy and remove across filesystems); returns the sha256 of its content. */
export async function moveIn(file: string, out: string): Promise<string> {
  try {
    await fsp.rename(file, out);
  } catch (e) {
    if (errnoCode(e) !== 'EXDEV') throw e;
    const digest = await copyIn(file, out);
    await fsp.rm(file, { force: true });
    return digest;
  }
  return hashFile(out);
}

/** Copy `file` to `out` (a reflink where the filesystem can, else keeping holes); returns the sha256 of the copy. */
export async function copyIn(file: string, out: string): Promise<string> {
  try {
    await fsp.copyFile(file, out, fsc.COPYFILE_EXCL | fsc.COPYFILE_FICLONE_FORCE);
    return await hashFile(out);
  } catch {
    await fsp.rm(out, { force: true });
  }
  const h = createHash('sha256');
  const size = (await fsp.stat(file)).size;
  await writeSparse(hashed(createReadStream(file), h), out, size);
  return `sha256:${h.digest('hex')}`;
}

async function* hashed(src: AsyncIterable<Buffer>, h: Hash): AsyncGenerator<Buffer> {
  for await (const c of src) {
    h.update(c);
    yield c;
  }
}

async function hashFile(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of hashed(createReadStream(file), h)) void c;
  return `sha256:${h.digest('hex')}`;
}
