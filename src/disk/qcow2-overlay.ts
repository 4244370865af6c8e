// Writes an empty qcow2 (version 3) copy-on-write overlay over a backing image, in-process, because spawning qemu-img costs 10-20 ms of start latency.
import { promises as fsp } from 'node:fs';
import { VmletError } from '../errors.js';
import { errnoCode } from '../source/atomic-file.js';
import type { ImageFormat } from './image-format.js';

export interface OverlayOptions {
  path: string;
  /** Bytes the guest sees; rounded up to 512 as qemu-img does. */
  virtualSize: number;
  /** Recorded in the header for `qemu-img info` only: vmlet hands QEMU the backing node itself. */
  backing: { file: string; format: ImageFormat };
  /** log2 of the cluster size, 9 to 21; default 16 (64 KiB, qemu-img's default). */
  clusterBits?: number;
}

/** One run of bytes to write at a file offset; everything not written reads as zeros. */
export interface OverlayPiece {
  offset: number;
  bytes: Buffer;
}

/** Where an overlay's metadata lives, in bytes, and what to write (for tests and for createOverlay). */
export interface OverlayLayout {
  clusterSize: number;
  virtualSize: number;
  l1Size: number;
  l1Offset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  refcountBlockOffset: number;
  refcountBlocks: number;
  /** Clusters in use (header, refcount table, refcount blocks, L1 table); each has refcount 1. */
  clusters: number;
  fileSize: number;
  pieces: OverlayPiece[];
}

const HEADER_LENGTH = 112;
const EXT_BACKING_FORMAT = 0xe2792aca;
const REFCOUNT_ORDER = 4; // 16-bit refcounts, as qemu-img makes them
const MAX_L1_BYTES = 32 * 1024 * 1024; // QEMU's QCOW_MAX_L1_SIZE
const MAX_BACKING_NAME = 1023; // QEMU refuses longer names

function fail(message: string, cause?: unknown): VmletError {
  if (cause === undefined) return new VmletError('OVERLAY_FAILED', message);
  const errno = errnoCode(cause);
  return new VmletError('OVERLAY_FAILED', message, errno === undefined ? { cause } : { cause, errno });
}

/** Compute the layout and bytes of an empty overlay; pure, throws OVERLAY_FAILED for options QEMU would not open. */
export function overlayLayout(opts: OverlayOptions): OverlayLayout {
  const bits = opts.clusterBits ?? 16;
  if (!Number.isInteger(bits) || bits < 9 || bits > 21) throw fail(`overlay cluster bits ${bits} out of range 9 to 21`);
  if (!Number.isSafeInteger(opts.virtualSize) || opts.virtualSize < 0) throw fail(`overlay virtual size ${opts.virtualSize} is not a byte count`);
  const c = 2 ** bits;
  const virtualSize = Math.ceil(opts.virtualSize / 512) * 512;
  const l1Size = Math.ceil(virtualSize / (c * (c / 8)));
  if (l1Size * 8 > MAX_L1_BYTES) throw fail(`overlay virtual size ${virtualSize} is too large for ${c}-byte clusters; use a larger cluster size`);
  const l1Clusters = Math.ceil((l1Size * 8) / c);

  // Refcount blocks and table must also count themselves, so grow them until they cover every cluster in use.
  const perBlock = (c * 8) / 2 ** REFCOUNT_ORDER;
  const perTable = c / 8;
  let blocks = 1;
  let tableClusters = 1;
  for (;;) {
    const n = 1 + tableClusters + blocks + l1Clusters;
    const b = Math.ceil(n / perBlock);
    const t = Math.ceil(b / perTable);
    if (b === blocks && t === tableClusters) break;
    blocks = b;
    tableClusters = t;
  }
  const refcountTableOffset = c;
  const refcountBlockOffset = refcountTableOffset + tableClusters * c;
  const l1Offset = l1Clusters === 0 ? 0 : refcountBlockOffset + blocks * c;
  const clusters = 1 + tableClusters + blocks + l1Clusters;

  const header = headerCluster(opts, c, bits, virtualSize, l1Size, l1Offset, refcountTableOffset, tableClusters);
  const table = Buffer.alloc(blocks * 8);
  for (let i = 0; i < blocks; i++) table.writeBigUInt64BE(BigInt(refcountBlockOffset + i * c), i * 8);
  // The blocks are contiguous, so cluster i's 16-bit refcount sits at refcountBlockOffset + 2i.
  const refcounts = Buffer.alloc(clusters * 2);
  for (let i = 0; i < clusters; i++) refcounts.writeUInt16BE(1, i * 2);

  return {
    clusterSize: c,
    virtualSize,
    l1Size,
    l1Offset,
    refcountTableOffset,
    refcountTableClusters: tableClusters,
    refcountBlockOffset,
    refcountBlocks: blocks,
    clusters,
    fileSize: clusters * c,
    pieces: [
      { offset: 0, bytes: header },
      { offset: refcountTableOffset, bytes: table },
      { offset: refcountBlockOffset, bytes: refcounts },
    ],
  };
}

// prettier-ignore
function headerCluster(
  opts: OverlayOptions, c: number, bits: number, size: number, l1Size: number, l1Offset: number, rtOffset: number, rtClusters: number,
): Buffer {
  const name = Buffer.from(opts.backing.file, 'utf8');
  if (name.length === 0 || name.length > MAX_BACKING_NAME || name.includes(0)) {
    throw fail(`backing file name of ${name.length} bytes: QEMU takes 1 to ${MAX_BACKING_NAME} bytes without NUL`);
  }
  const fmt = Buffer.from(opts.backing.format, 'ascii');
  const fmtPadded = Math.ceil(fmt.length / 8) * 8;
  const nameOffset = HEADER_LENGTH + 8 + fmtPadded + 8; // after the backing-format extension and the end marker
  if (nameOffset + name.length > c) throw fail(`backing file name does not fit the overlay's first ${c}-byte cluster; use a shorter path or larger clusters`);

  const h = Buffer.alloc(nameOffset + name.length);
  h.write('QFI\xfb', 0, 'latin1');
  h.writeUInt32BE(3, 4);                                  // version
  h.writeBigUInt64BE(BigInt(nameOffset), 8);              // backing_file_offset
  h.writeUInt32BE(name.length, 16);                       // backing_file_size
  h.writeUInt32BE(bits, 20);                              // cluster_bits
  h.writeBigUInt64BE(BigInt(size), 24);                   // size
  h.writeUInt32BE(0, 32);                                 // crypt_method
  h.writeUInt32BE(l1Size, 36);                            // l1_size
  h.writeBigUInt64BE(BigInt(l1Offset), 40);               // l1_table_offset
  h.writeBigUInt64BE(BigInt(rtOffset), 48);               // refcount_table_offset
  h.writeUInt32BE(rtClusters, 56);                        // refcount_table_clusters
  // nb_snapshots, snapshots_offset, incompatible/compatible/autoclear features: all 0
  h.writeUInt32BE(REFCOUNT_ORDER, 96);                    // refcount_order
  h.writeUInt32BE(HEADER_LENGTH, 100);                    // header_length
  // compression_type (104) = 0: zlib; 105..111 padding
  h.writeUInt32BE(EXT_BACKING_FORMAT, HEADER_LENGTH);
  h.writeUInt32BE(fmt.length, HEADER_LENGTH + 4);
  fmt.copy(h, HEADER_LENGTH + 8);
  // end-of-extensions marker (type 0, length 0) is already zero
  name.copy(h, nameOffset);
  return h;
}

/** Create the overlay file exclusively (mode 0600) and fsync it; on failure nothing is left behind and OVERLAY_FAILED is thrown. */
export async function createOverlay(opts: OverlayOptions): Promise<void> {
  const layout = overlayLayout(opts);
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(opts.path, 'wx', 0o600);
  } catch (e) {
    if (errnoCode(e) === 'EEXIST') throw fail(`overlay ${opts.path} already exists; vmlet makes a fresh overlay per VMI, so remove the stale file`, e);
    throw fail(`could not create the overlay ${opts.path}; check that its directory exists and is writable`, e);
  }
  try {
    for (const p of layout.pieces) await fh.write(p.bytes, 0, p.bytes.length, p.offset);
    // The L1 table is all zeros: truncating leaves it a hole, so even huge disks cost no writes.
    await fh.truncate(layout.fileSize);
    await fh.sync();
    await fh.close();
  } catch (e) {
    await fh.close().catch(() => undefined);
    await fsp.unlink(opts.path).catch(() => undefined);
    throw fail(`could not write the overlay ${opts.path}; check free space on its filesystem`, e);
  }
}
