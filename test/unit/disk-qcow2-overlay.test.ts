// Unit tests for src/disk/qcow2-overlay.ts: the header and refcount layout in memory, then the real qemu-img and qemu-io against overlays it writes.
import { createHash } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { type OverlayOptions, createOverlay, overlayLayout } from '../../src/disk/qcow2-overlay.js';
import { which } from '../support/which.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'vmlet-unit-disk-overlay-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

const noQemuImg = which('qemu-img') === undefined ? 'qemu-img is not installed (Debian: apt-get install qemu-utils)' : false;
const noQemuIo = which('qemu-io') === undefined ? 'qemu-io is not installed (Debian: apt-get install qemu-utils)' : false;
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

const opts = (virtualSize: number, extra: Partial<OverlayOptions> = {}): OverlayOptions => ({
  path: '/unused',
  virtualSize,
  backing: { file: '/var/lib/vmlet/images/base.raw', format: 'raw' },
  ...extra,
});

/** The cluster-0 bytes and the refcount of every cluster, read back from a layout's pieces. */
function readBack(l: ReturnType<typeof overlayLayout>): { header: Buffer; refcount: (cluster: number) => number } {
  const [header, table, blocks] = l.pieces.map((p) => p.bytes);
  if (header === undefined || table === undefined || blocks === undefined) throw new Error('missing pieces');
  const perBlock = l.clusterSize / 2;
  return {
    header,
    refcount: (cluster) => {
      const tableIndex = Math.floor(cluster / perBlock);
      if (tableIndex * 8 >= table.length) return 0;
      const blockOffset = Number(table.readBigUInt64BE(tableIndex * 8));
      const at = blockOffset - l.refcountBlockOffset + (cluster % perBlock) * 2;
      return at + 2 <= blocks.length ? blocks.readUInt16BE(at) : 0;
    },
  };
}

t.test('header fields', async (t) => {
  const l = overlayLayout(opts(10 * GiB));
  const { header: h } = readBack(l);
  t.equal(h.subarray(0, 4).toString('latin1'), 'QFI\xfb');
  t.equal(h.readUInt32BE(4), 3, 'version');
  t.equal(h.readUInt32BE(20), 16, 'cluster_bits');
  t.equal(h.readBigUInt64BE(24), BigInt(10 * GiB), 'size');
  t.equal(h.readUInt32BE(32), 0, 'crypt_method');
  t.equal(h.readUInt32BE(36), 20, 'l1_size: 10 GiB / 512 MiB per L2 table');
  t.equal(Number(h.readBigUInt64BE(40)), l.l1Offset);
  t.equal(Number(h.readBigUInt64BE(48)), 65536, 'refcount table in cluster 1');
  t.equal(h.readUInt32BE(56), 1, 'refcount_table_clusters');
  t.equal(h.readBigUInt64BE(72), 0n, 'no incompatible features');
  t.equal(h.readUInt32BE(96), 4, 'refcount_order');
  t.equal(h.readUInt32BE(100), 112, 'header_length');
  t.equal(h.readUInt8(104), 0, 'compression_type zlib');
  t.equal(h.readUInt32BE(112), 0xe2792aca, 'backing format extension');
  t.equal(h.readUInt32BE(116), 3);
  t.equal(h.subarray(120, 123).toString(), 'raw');
  t.same([h.readUInt32BE(128), h.readUInt32BE(132)], [0, 0], 'end of extensions');
  const off = Number(h.readBigUInt64BE(8));
  t.equal(off, 136);
  t.equal(h.subarray(off, off + h.readUInt32BE(16)).toString(), '/var/lib/vmlet/images/base.raw');
  t.same(
    { l1Offset: l.l1Offset, refcountBlockOffset: l.refcountBlockOffset, clusters: l.clusters, fileSize: l.fileSize },
    { l1Offset: 3 * 65536, refcountBlockOffset: 2 * 65536, clusters: 4, fileSize: 4 * 65536 },
    'the layout qemu-img uses: header, refcount table, refcount block, L1',
  );
  const q = readBack(overlayLayout(opts(MiB, { backing: { file: 'b.qcow2', format: 'qcow2' } }))).header;
  t.equal(q.readUInt32BE(116), 5);
  t.equal(q.subarray(120, 125).toString(), 'qcow2');
});

t.test('L1 and refcount sizes', async (t) => {
  t.equal(overlayLayout(opts(0)).l1Size, 0);
  t.equal(overlayLayout(opts(0)).l1Offset, 0, 'no L1 table, as qemu-img does for size 0');
  t.equal(overlayLayout(opts(1)).virtualSize, 512, 'rounded up to a sector');
  t.equal(overlayLayout(opts(MiB)).l1Size, 1);
  t.equal(overlayLayout(opts(512 * MiB + 1)).l1Size, 2);
  const four = overlayLayout(opts(4 * TiB));
  t.same([four.l1Size, four.clusters], [8192, 4], '4 TiB: L1 fills exactly one cluster');
  const sixteen = overlayLayout(opts(16 * TiB));
  t.same([sixteen.l1Size, sixteen.clusters], [32768, 7], '16 TiB: L1 takes four clusters');
  const tiny = overlayLayout(opts(10 * GiB, { clusterBits: 9 }));
  t.ok(tiny.refcountBlocks > 1, `512-byte clusters need ${tiny.refcountBlocks} refcount blocks`);
  t.ok(tiny.refcountTableClusters >= 1);
  for (const l of [four, sixteen, tiny, overlayLayout(opts(100 * TiB, { clusterBits: 21 }))]) {
    const { refcount } = readBack(l);
    const counts = Array.from({ length: l.clusters + 2 }, (_, i) => refcount(i));
    t.ok(
      counts.slice(0, l.clusters).every((c) => c === 1),
      `every metadata cluster counted once (${l.clusters} clusters of ${l.clusterSize})`,
    );
    t.same(counts.slice(l.clusters), [0, 0], 'no cluster beyond the metadata is counted');
    t.equal(l.fileSize, l.clusters * l.clusterSize);
  }
});

t.test('options QEMU would not open', async (t) => {
  const failed = { code: 'OVERLAY_FAILED' };
  t.throws(() => overlayLayout(opts(MiB, { clusterBits: 8 })), failed);
  t.throws(() => overlayLayout(opts(MiB, { clusterBits: 22 })), failed);
  t.throws(() => overlayLayout(opts(-1)), failed);
  t.throws(() => overlayLayout(opts(1.5)), failed);
  t.throws(() => overlayLayout(opts(2 ** 60)), failed);
  t.throws(() => overlayLayout(opts(TiB, { clusterBits: 9 })), { code: 'OVERLAY_FAILED', message: /larger cluster size/ });
  t.throws(() => overlayLayout(opts(MiB, { backing: { file: '', format: 'raw' } })), failed, 'empty name');
  t.throws(() => overlayLayout(opts(MiB, { backing: { file: 'a\0b', format: 'raw' } })), failed, 'NUL in name');
  t.throws(() => overlayLayout(opts(MiB, { backing: { file: `/${'x'.repeat(1023)}`, format: 'raw' } })), failed, '1024-byte name');
  t.throws(() => overlayLayout(opts(MiB, { clusterBits: 9, backing: { file: `/${'x'.repeat(400)}`, format: 'raw' } })), {
    code: 'OVERLAY_FAILED',
    message: /does not fit/,
  });
  t.ok(overlayLayout(opts(MiB, { backing: { file: `/${'x'.repeat(1022)}`, format: 'raw' } })), '1023-byte name');
});

t.test('createOverlay on disk', async (t) => {
  const file = path.join(tmp, 'plain.qcow2');
  await createOverlay({ ...opts(GiB), path: file });
  t.equal(statSync(file).mode & 0o777, 0o600);
  t.equal(statSync(file).size, overlayLayout(opts(GiB)).fileSize);
  const bytes = readFileSync(file);
  for (const p of overlayLayout(opts(GiB)).pieces) t.same(bytes.subarray(p.offset, p.offset + p.bytes.length), p.bytes);

  const existing = path.join(tmp, 'existing.qcow2');
  writeFileSync(existing, 'keep me');
  await t.rejects(createOverlay({ ...opts(GiB), path: existing }), { code: 'OVERLAY_FAILED', errno: 'EEXIST', message: /already exists/ });
  t.equal(readFileSync(existing, 'utf8'), 'keep me', 'an existing file is left alone');

  const missing = path.join(tmp, 'no-such-dir', 'o.qcow2');
  await t.rejects(createOverlay({ ...opts(GiB), path: missing }), { code: 'OVERLAY_FAILED', errno: 'ENOENT' });
  await t.rejects(createOverlay({ ...opts(GiB, { clusterBits: 3 }), path: path.join(tmp, 'bad.qcow2') }), { code: 'OVERLAY_FAILED' });
  t.notOk(existsSync(path.join(tmp, 'bad.qcow2')), 'invalid options create no file');
});

t.test('a failed write leaves no partial file', async (t) => {
  const prlimit = which('prlimit');
  if (prlimit === undefined) {
    t.plan(0, 'skip: prlimit (util-linux) is not installed: cannot make a write fail');
    return;
  }
  const module = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/disk/qcow2-overlay.ts');
  const file = path.join(tmp, 'partial.qcow2');
  const child = path.join(tmp, 'child.mts');
  const overlay = { path: file, virtualSize: 2 ** 40, backing: { file: '/b', format: 'raw' } };
  // The child limits its own file size once loaded, so that the overlay's final truncate fails with EFBIG. Node ignores
  // SIGXFSZ, but tap's process hooks reach the child and re-raise it unless some other listener handles it.
  const lines = [
    `import { createOverlay } from ${JSON.stringify(module)};`,
    `import { execFileSync } from 'node:child_process';`,
    `import { existsSync } from 'node:fs';`,
    `process.on('SIGXFSZ', () => undefined);`,
    `execFileSync(${JSON.stringify(prlimit)}, ['--pid', String(process.pid), '--fsize=100000']);`,
    `try {`,
    `  await createOverlay(${JSON.stringify(overlay)});`,
    `  console.log('{}');`,
    `} catch (e) {`,
    `  console.log(JSON.stringify({ code: e.code, errno: e.errno, exists: existsSync(${JSON.stringify(file)}) }));`,
    `}`,
  ];
  writeFileSync(child, lines.join('\n'));
  const r = spawnSync(process.execPath, ['--import', 'tsx', child], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  t.same(JSON.parse(r.stdout), { code: 'OVERLAY_FAILED', errno: 'EFBIG', exists: false });
});

function run(cmd: string, args: string[]): { status: number | null; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

interface ImgInfo {
  'virtual-size': number;
  'cluster-size': number;
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  'format-specific': { data: Record<string, unknown> };
}

function info(file: string): ImgInfo {
  return JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-f', 'qcow2', file], { encoding: 'utf8' })) as ImgInfo;
}

t.test('qemu-img agrees with the overlays', { skip: noQemuImg }, async (t) => {
  const base = path.join(tmp, 'base.raw');
  writeFileSync(base, Buffer.alloc(MiB));
  const sizes: [string, number, number][] = [
    ['1 MiB', MiB, 16],
    ['odd 1000 bytes', 1000, 16],
    ['10 GiB', 10 * GiB, 16],
    ['4 TiB', 4 * TiB, 16],
    ['16 TiB (L1 over several clusters)', 16 * TiB, 16],
    ['10 GiB, 512-byte clusters (several refcount blocks)', 10 * GiB, 9],
    ['1 GiB, 2 MiB clusters', GiB, 21],
  ];
  for (const [name, size, bits] of sizes) {
    const mine = path.join(tmp, `mine-${bits}-${size}.qcow2`);
    const theirs = path.join(tmp, `theirs-${bits}-${size}.qcow2`);
    await createOverlay({ path: mine, virtualSize: size, backing: { file: base, format: 'raw' }, clusterBits: bits });
    // prettier-ignore
    execFileSync('qemu-img', ['create', '-f', 'qcow2', '-o', `cluster_size=${2 ** bits}`, '-F', 'raw', '-b', base, '-u', theirs, String(size)], { stdio: 'ignore' });
    const check = run('qemu-img', ['check', '-f', 'qcow2', mine]);
    t.equal(check.status, 0, `${name}: qemu-img check exits 0`);
    t.match(check.out, /No errors were found on the image/, `${name}: no errors`);
    const a = info(mine);
    const b = info(theirs);
    const pick = (i: ImgInfo) => ({
      virtualSize: i['virtual-size'],
      clusterSize: i['cluster-size'],
      backing: i['backing-filename'],
      backingFormat: i['backing-filename-format'],
      specific: i['format-specific'].data,
    });
    t.same(pick(a), pick(b), `${name}: qemu-img info matches qemu-img create`);
    t.equal(a['format-specific'].data.compat, '1.1');
  }
});

t.test('qemu-io writes through the overlay and leaves the base alone', { skip: noQemuImg || noQemuIo }, async (t) => {
  const base = path.join(tmp, 'pattern.raw');
  writeFileSync(base, Buffer.alloc(4 * MiB, 0xcd));
  const sha = () => createHash('sha256').update(readFileSync(base)).digest('hex');
  const before = sha();
  const overlay = path.join(tmp, 'written.qcow2');
  await createOverlay({ path: overlay, virtualSize: 4 * MiB, backing: { file: base, format: 'raw' } });

  const io = (cmd: string) => run('qemu-io', ['-f', 'qcow2', '-c', cmd, overlay]);
  const w = io('write -P 0xab 0 64k');
  t.equal(w.status, 0, w.out);
  const check = run('qemu-img', ['check', '-f', 'qcow2', overlay]);
  t.equal(check.status, 0, check.out);
  t.match(check.out, /No errors were found/);
  for (const cmd of ['read -P 0xab 0 64k', 'read -P 0xcd 64k 1M', 'read -P 0xcd 4032k 64k']) {
    const r = io(cmd);
    t.equal(r.status, 0, `${cmd}: ${r.out}`);
    t.notMatch(r.out, /Pattern verification failed/, cmd);
  }
  t.equal(io('read -P 0xcd 0 64k').status, 1, 'a wrong pattern is noticed (the checks above can fail)');
  t.equal(sha(), before, 'the base is unchanged');
});
