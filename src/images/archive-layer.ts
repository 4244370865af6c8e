// Reads one layer blob of an image archive: its sha256 as stored and unpacked (gunzip on the way), and what its entries do to /disk/, the disk's content going to sparse temp files.
import { createHash, type Hash } from 'node:crypto';
import { PassThrough, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar, { type Header } from 'tar-stream';
import { VmletError } from '../errors.js';
import type { Compression } from './archive-layout.js';
import { writeSparse } from './disk-file.js';

/** What a layer does to /disk/: whiteouts apply to lower layers, puts add or replace entries. */
export type DiskNode = { type: 'file'; tmp: string; size: number } | { type: 'symlink'; target: string } | { type: 'dir' } | { type: 'other'; what: string };
export interface LayerChanges {
  /** /disk/ itself was whited out, made opaque or replaced by a non-folder */
  clear: boolean;
  whiteouts: string[];
  puts: Map<string, DiskNode>;
  notes: string[];
}

export interface LayerResult {
  blobDigest: string;
  diffId: string;
  gzip: boolean;
  changes: LayerChanges;
  /** Why the layer could not be read; reported after the blob digest, which explains damage better. */
  error: unknown;
}

/** Stream one layer: sha256 of the blob → gunzip → sha256 of the tar → the entries under disk/. */
export async function readLayer(src: AsyncIterable<unknown>, compression: Compression, tempName: () => string): Promise<LayerResult> {
  const raw = createHash('sha256');
  const plain = createHash('sha256');
  const changes = emptyChanges();
  const input = new PassThrough();
  const inner = tar.extract();
  inner.on('entry', (header, stream, next) => {
    stream.on('error', () => undefined); // reported through `inner`
    layerEntry(header, stream, changes, tempName).then(() => next(), next);
  });
  let error: unknown;
  let chain: Promise<void> | undefined;
  let gzip = false;
  const start = (head: Buffer): void => {
    gzip = compression === 'gzip' || (compression === 'detect' && head[0] === 0x1f && head[1] === 0x8b);
    const done = gzip ? pipeline(input, createGunzip(), hashing(plain), inner) : pipeline(input, hashing(plain), inner);
    chain = done.catch((e: unknown) => {
      error ??= e;
    });
  };
  const feed = async (chunk: Buffer): Promise<void> => {
    if (input.destroyed) return;
    if (!input.write(chunk)) await drainedOrClosed(input);
  };
  let head: Buffer[] = [];
  try {
    for await (const chunk of chunks(src)) {
      raw.update(chunk);
      if (chain === undefined) {
        head.push(chunk);
        const joined = Buffer.concat(head);
        if (joined.length < 2) continue;
        start(joined);
        head = [];
        await feed(joined);
      } else await feed(chunk);
      // A full disk or a bug will not get better: stop; a format error waits for the blob digest, which tells damage apart.
      if (error !== undefined && (error instanceof VmletError || isSystemError(error))) throw error;
    }
    if (chain === undefined) {
      const joined = Buffer.concat(head);
      start(joined);
      await feed(joined);
    }
    if (!input.destroyed) input.end();
    await chain;
  } catch (e) {
    input.destroy();
    await chain;
    throw e;
  }
  return { blobDigest: `sha256:${raw.digest('hex')}`, diffId: `sha256:${plain.digest('hex')}`, gzip, changes, error };
}

/** One entry of a layer: only /disk/ and its direct children matter; file content goes to a sparse temp file. */
async function layerEntry(header: Header, stream: AsyncIterable<unknown>, ch: LayerChanges, tempName: () => string): Promise<void> {
  const name = innerName(header.name);
  const type = header.type;
  const rest = name?.startsWith('disk/') ? name.slice('disk/'.length) : undefined;
  if (name === '.wh.disk' || name === '.wh..wh..opq') ch.clear = true;
  else if (name === 'disk' && type !== 'directory') {
    ch.clear = true;
    ch.notes.push(`/disk is a ${type}, not a folder`);
  } else if (rest !== undefined && rest.length > 0 && !rest.includes('/')) {
    if (rest === '.wh..wh..opq') ch.clear = true;
    else if (rest.startsWith('.wh.')) ch.whiteouts.push(rest.slice('.wh.'.length));
    else if (type === 'file' || type === 'contiguous-file') {
      const tmp = tempName();
      await writeSparse(chunks(stream), tmp, header.size);
      ch.puts.set(rest, { type: 'file', tmp, size: header.size });
      return;
    } else if (type === 'symlink') ch.puts.set(rest, { type: 'symlink', target: header.linkname });
    else if (type === 'directory') ch.puts.set(rest, { type: 'dir' });
    else ch.puts.set(rest, { type: 'other', what: type === 'link' ? `a hard link to ${header.linkname}` : `a ${type}` });
  }
  await drain(stream);
}

/** Apply the layers in order and return the one regular file left in /disk/. Throws IMAGE_NO_DISK. */
export function pickDisk(layers: LayerChanges[], what: string): { name: string; tmp: string; size: number } {
  const state = new Map<string, DiskNode>();
  const notes: string[] = [];
  for (const l of layers) {
    if (l.clear) state.clear();
    for (const w of l.whiteouts) state.delete(w);
    for (const [name, node] of l.puts) state.set(name, node);
    notes.push(...l.notes);
  }
  const found = [...state.entries()].filter(([, n]) => n.type !== 'dir');
  const [only] = found;
  if (found.length === 1 && only !== undefined && only[1].type === 'file') return { name: only[0], tmp: only[1].tmp, size: only[1].size };
  const describe = ([name, n]: [string, DiskNode]): string =>
    n.type === 'symlink' ? `${name} (a symlink to ${n.target})` : n.type === 'other' ? `${name} (${n.what})` : n.type === 'dir' ? `${name}/` : name;
  const listed = [...state.entries()].map(describe).join(', ') || 'nothing';
  let why: string;
  if (only !== undefined && found.length === 1)
    why = `/disk/${describe(only)} is not a regular file; vmlet does not follow links: the disk must be the file itself`;
  else if (found.length === 0) why = `it has no disk file in /disk/ (found: ${[...notes, listed].join('; ')})`;
  else why = `it has ${found.length} entries in /disk/ (${listed}); a containerDisk holds exactly one disk file`;
  throw new VmletError('IMAGE_NO_DISK', `${what}: ${why}`, { details: { found: [...state.keys()] } });
}

function hashing(h: Hash): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      h.update(chunk);
      cb(null, chunk);
    },
  });
}

function drainedOrClosed(s: PassThrough): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      s.off('drain', done);
      s.off('close', done);
      resolve();
    };
    s.on('drain', done);
    s.on('close', done);
  });
}

// tar-stream's streams yield `unknown`; its entries and zlib's output are Buffers.
export async function* chunks(src: AsyncIterable<unknown>): AsyncGenerator<Buffer> {
  for await (const c of src) {
    if (!Buffer.isBuffer(c)) throw new TypeError('a tar stream yielded something other than a Buffer');
    yield c;
  }
}

export async function drain(src: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of src);
}

// `./disk/x`, `/disk/x` and `disk//x` are all `disk/x`; a name with `..` is never under /disk/.
function innerName(name: string): string | undefined {
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  return parts.includes('..') ? undefined : parts.join('/');
}

export function emptyChanges(): LayerChanges {
  return { clear: false, whiteouts: [], puts: new Map(), notes: [] };
}

export function isSystemError(e: unknown): e is NodeJS.ErrnoException {
  return e instanceof Error && 'syscall' in e;
}

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
