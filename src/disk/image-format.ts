// Reads an image file's format (raw or qcow2) and virtual size from its header, refusing qcow2 features that would make QEMU open other paths and formats vmlet does not run.
import { type BigIntStats, fstat, promises as fsp, read } from 'node:fs';
import path from 'node:path';
import { VmletError } from '../errors.js';

export type { ImageFormat } from '../api/vocabulary.js';
import type { ImageFormat } from '../api/vocabulary.js';

export interface ProbedImage {
  format: ImageFormat;
  /** Bytes the guest sees; for raw: the file (or block device) size. */
  virtualSize: number;
}

export interface ProbeOptions {
  /** Where sysfs is mounted (block device sizes come from `/sys/dev/block/MAJ:MIN/size`). */
  sysDir?: string;
}

/** How much of a file parseImageHeader looks at. */
export const HEAD_BYTES = 64 * 1024;

const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
const V2_HEADER_LENGTH = 72;
const V3_MIN_HEADER_LENGTH = 104;
const EXT_END = 0;
const EXT_DATA_FILE = 0x44415441;
// Incompatible feature bits vmlet accepts: dirty (QEMU repairs it), compression type (zlib only, checked below), extended L2.
const INCOMPAT_DIRTY = 0;
const INCOMPAT_CORRUPT = 1;
const INCOMPAT_DATA_FILE = 2;
const INCOMPAT_COMPRESSION = 3;
const INCOMPAT_EXTENDED_L2 = 4;

const convertHint = 'convert it with qemu-img convert -O qcow2 IN OUT (or -O raw)';
const flattenHint = 'flatten it into a self-contained image with qemu-img convert -O qcow2 IN OUT';

// Formats QEMU would recognise: each must be refused by name rather than handed to the guest as raw bytes.
const otherFormats: { name: string; at: number; magic: Buffer }[] = [
  { name: 'vmdk', at: 0, magic: Buffer.from('KDMV') },
  { name: 'vmdk (VMware 3 COWD)', at: 0, magic: Buffer.from('COWD') },
  { name: 'vmdk (text descriptor)', at: 0, magic: Buffer.from('# Disk DescriptorFile') },
  { name: 'vdi', at: 0x40, magic: Buffer.from([0x7f, 0x10, 0xda, 0xbe]) },
  { name: 'vhdx', at: 0, magic: Buffer.from('vhdxfile') },
  { name: 'vpc (vhd)', at: 0, magic: Buffer.from('conectix') },
  { name: 'qed', at: 0, magic: Buffer.from('QED\0') },
  { name: 'luks', at: 0, magic: Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]) },
  { name: 'bochs', at: 0, magic: Buffer.from('Bochs Virtual HD Image') },
  { name: 'cloop', at: 0, magic: Buffer.from('#!/bin/sh\n#V2.0 Format\nmodprobe cloop\n') },
  { name: 'parallels', at: 0, magic: Buffer.from('WithoutFreeSpace') },
  { name: 'parallels', at: 0, magic: Buffer.from('WithouFreSpacExt') },
];

/** Format and virtual size of an image from its first bytes (`head`: the first 64 KiB, or the whole file if shorter). */
export function parseImageHeader(head: Buffer, fileSize: number, what: string): ProbedImage {
  if (head.length >= 4 && head.readUInt32BE(0) === QCOW2_MAGIC) return parseQcow2(head, fileSize, what);
  for (const f of otherFormats) {
    if (head.length >= f.at + f.magic.length && head.subarray(f.at, f.at + f.magic.length).equals(f.magic)) {
      throw new VmletError('IMAGE_FORMAT_UNSUPPORTED', `${what} is a ${f.name} image; vmlet runs only raw and qcow2: ${convertHint}`);
    }
  }
  return { format: 'raw', virtualSize: fileSize };
}

function parseQcow2(head: Buffer, fileSize: number, what: string): ProbedImage {
  const corrupt = (why: string): VmletError =>
    new VmletError('IMAGE_CORRUPT', `${what} has a damaged qcow2 header (${why}); check it with qemu-img check, or replace the file`);
  if (head.length < 8) throw corrupt('the file ends inside the header');
  const version = head.readUInt32BE(4);
  if (version === 1) throw new VmletError('IMAGE_FORMAT_UNSUPPORTED', `${what} is a qcow (version 1) image; ${convertHint}`);
  if (version !== 2 && version !== 3) throw corrupt(`version ${version}, expected 2 or 3`);
  if (head.length < V2_HEADER_LENGTH) throw corrupt('the file ends inside the header');

  const clusterBits = head.readUInt32BE(20);
  if (clusterBits < 9 || clusterBits > 21) throw corrupt(`cluster_bits ${clusterBits}, expected 9 to 21`);
  const clusterSize = 2 ** clusterBits;
  const size = head.readBigUInt64BE(24);
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`virtual size ${size} is too large`);

  let headerLength = V2_HEADER_LENGTH;
  let incompatible = 0n;
  if (version === 3) {
    if (head.length < V3_MIN_HEADER_LENGTH) throw corrupt('the file ends inside the header');
    headerLength = head.readUInt32BE(100);
    if (headerLength < V3_MIN_HEADER_LENGTH || headerLength > clusterSize) throw corrupt(`header_length ${headerLength}`);
    if (head.length < headerLength) throw corrupt('the file ends inside the header');
    incompatible = head.readBigUInt64BE(72);
  }

  // The backing file is the hole this module exists for, so it wins over the feature checks below.
  const backingOffset = head.readBigUInt64BE(8);
  const backingSize = head.readUInt32BE(16);
  if (backingOffset !== 0n || backingSize !== 0) {
    throw new VmletError(
      'IMAGE_BACKING_FILE_REFUSED',
      `${what} is a qcow2 image with the backing file ${backingName(head, backingOffset, backingSize)}, which QEMU would open as root; ${flattenHint}`,
    );
  }

  const bit = (n: number): boolean => (incompatible & (1n << BigInt(n))) !== 0n;
  const dataFileRefused = new VmletError(
    'IMAGE_DATA_FILE_REFUSED',
    `${what} is a qcow2 image that keeps its data in an external data file, which QEMU would open as root; ${flattenHint}`,
  );
  if (bit(INCOMPAT_DATA_FILE)) throw dataFileRefused;
  if (bit(INCOMPAT_CORRUPT)) throw corrupt('QEMU marked it corrupt');
  if (bit(INCOMPAT_COMPRESSION) && headerLength <= 104) throw corrupt('the compression type bit is set but the header has no compression_type field');
  const compressionType = headerLength > 104 ? head.readUInt8(104) : 0;
  if (compressionType !== 0) {
    const name = compressionType === 1 ? 'zstd' : `type ${compressionType}`;
    throw new VmletError('IMAGE_FORMAT_UNSUPPORTED', `${what} is a qcow2 image with ${name} compressed clusters; vmlet allows only zlib: ${convertHint}`);
  }
  const allowed = [INCOMPAT_DIRTY, INCOMPAT_COMPRESSION, INCOMPAT_EXTENDED_L2].reduce((m, n) => m | (1n << BigInt(n)), 0n);
  const unknown = incompatible & ~allowed;
  if (unknown !== 0n) {
    const bits = [...Array(64).keys()].filter((n) => (unknown & (1n << BigInt(n))) !== 0n);
    throw new VmletError('IMAGE_FORMAT_UNSUPPORTED', `${what} is a qcow2 image with unknown incompatible feature bit(s) ${bits.join(', ')}; ${convertHint}`);
  }
  const cryptMethod = head.readUInt32BE(32);
  if (cryptMethod !== 0) {
    throw new VmletError(
      'IMAGE_FORMAT_UNSUPPORTED',
      `${what} is an encrypted qcow2 image (crypt_method ${cryptMethod}); convert it to an unencrypted image with qemu-img convert -O qcow2 (giving the key with --object secret)`,
    );
  }

  walkExtensions(head, fileSize, headerLength, clusterSize, what, corrupt, dataFileRefused);
  return { format: 'qcow2', virtualSize: Number(size) };
}

// The data-file extension alone makes QEMU refuse the image, but refusing it here gives the clearer message.
function walkExtensions(
  head: Buffer,
  fileSize: number,
  start: number,
  clusterSize: number,
  what: string,
  corrupt: (why: string) => VmletError,
  dataFileRefused: VmletError,
): void {
  let off = start;
  for (;;) {
    if (off + 8 > clusterSize) throw corrupt('header extensions run past the first cluster');
    if (off + 8 > head.length) {
      if (head.length >= fileSize) throw corrupt('the file ends inside the header extensions');
      throw new VmletError('IMAGE_FORMAT_UNSUPPORTED', `${what} has qcow2 header extensions beyond the first ${HEAD_BYTES} bytes; ${convertHint}`);
    }
    const type = head.readUInt32BE(off);
    const length = head.readUInt32BE(off + 4);
    if (type === EXT_END) return;
    if (type === EXT_DATA_FILE) throw dataFileRefused;
    if (off + 8 + length > clusterSize) throw corrupt(`header extension 0x${type.toString(16)} runs past the first cluster`);
    off += 8 + Math.ceil(length / 8) * 8;
  }
}

function backingName(head: Buffer, offset: bigint, size: number): string {
  const start = Number(offset);
  if (offset > BigInt(head.length) || size > 1023 || start + size > head.length) return '(name outside the header)';
  // JSON quoting keeps control characters from a hostile name out of logs and terminals.
  return JSON.stringify(head.subarray(start, start + size).toString('utf8'));
}

/** Size in bytes of an open image: the file size, or for a block device what sysfs says (fstat says 0 for those). */
export async function imageFileSize(st: BigIntStats, opts: ProbeOptions = {}): Promise<number> {
  if (!st.isBlockDevice()) return Number(st.size);
  const rdev = st.rdev;
  // glibc's encoding of dev_t (gnu_dev_major / gnu_dev_minor).
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  const sectors = await fsp.readFile(path.join(opts.sysDir ?? '/sys', 'dev', 'block', `${major}:${minor}`, 'size'), 'utf8');
  return Number(sectors.trim()) * 512;
}

/** Probe an image through an fd the caller holds (read-only is enough); fs errors pass through unchanged. */
export async function probeImageFd(fd: number, what: string, opts: ProbeOptions = {}): Promise<ProbedImage> {
  const size = await imageFileSize(await fstatBig(fd), opts);
  const head = Buffer.alloc(Math.min(HEAD_BYTES, size));
  let got = 0;
  while (got < head.length) {
    const n = await readAt(fd, head, got);
    if (n === 0) break;
    got += n;
  }
  return parseImageHeader(head.subarray(0, got), size, what);
}

/** Probe the image at `file` (already resolved by the caller); fs errors pass through unchanged for the caller to map. */
export async function probeImage(file: string, what: string, opts: ProbeOptions = {}): Promise<ProbedImage> {
  const fh = await fsp.open(file, 'r');
  try {
    return await probeImageFd(fh.fd, what, opts);
  } finally {
    await fh.close();
  }
}

function fstatBig(fd: number): Promise<BigIntStats> {
  return new Promise((resolve, reject) => fstat(fd, { bigint: true }, (e, st) => (e ? reject(e) : resolve(st))));
}

function readAt(fd: number, buf: Buffer, at: number): Promise<number> {
  return new Promise((resolve, reject) => read(fd, buf, at, buf.length - at, at, (e, n) => (e ? reject(e) : resolve(n))));
}
