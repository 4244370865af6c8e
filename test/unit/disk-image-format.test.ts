// Unit tests for src/disk/image-format.ts: qcow2 headers built in buffers, files made by the real qemu-img, other formats, block device sizes.
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { HEAD_BYTES, imageFileSize, parseImageHeader, probeImage, probeImageFd } from '../../src/disk/image-format.js';
import { which } from '../support/which.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'vmlet-unit-disk-format-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

const qemuImg = which('qemu-img');
const noQemuImg = qemuImg === undefined ? 'qemu-img is not installed (Debian: apt-get install qemu-utils)' : false;
const what = 'hostDisk "data" (/srv/vms/a.img)';

interface Qcow2Fields {
  version?: number;
  clusterBits?: number;
  size?: bigint;
  backing?: string;
  backingOffset?: bigint;
  backingSize?: number;
  crypt?: number;
  incompatible?: bigint;
  headerLength?: number;
  compressionType?: number;
  extensions?: { type: number; data: Buffer }[];
  total?: number;
}

/** A qcow2 header per docs/interop/qcow2.txt, with the end-of-extensions marker, in a buffer of `total` bytes. */
function qcow2(f: Qcow2Fields = {}): Buffer {
  const version = f.version ?? 3;
  const headerLength = f.headerLength ?? (version === 2 ? 72 : 112);
  const b = Buffer.alloc(f.total ?? 4096);
  b.write('QFI\xfb', 0, 'latin1');
  b.writeUInt32BE(version, 4);
  b.writeUInt32BE(f.clusterBits ?? 16, 20);
  b.writeBigUInt64BE(f.size ?? 10n << 30n, 24);
  b.writeUInt32BE(f.crypt ?? 0, 32);
  if (version >= 3) {
    b.writeBigUInt64BE(f.incompatible ?? 0n, 72);
    b.writeUInt32BE(4, 96);
    b.writeUInt32BE(headerLength, 100);
    if (headerLength > 104) b.writeUInt8(f.compressionType ?? 0, 104);
  }
  let off = headerLength;
  for (const e of f.extensions ?? []) {
    b.writeUInt32BE(e.type, off);
    b.writeUInt32BE(e.data.length, off + 4);
    e.data.copy(b, off + 8);
    off += 8 + Math.ceil(e.data.length / 8) * 8;
  }
  off += 8; // end marker: zeros
  if (f.backing !== undefined) {
    b.writeBigUInt64BE(BigInt(off), 8);
    b.writeUInt32BE(Buffer.byteLength(f.backing), 16);
    b.write(f.backing, off);
  }
  if (f.backingOffset !== undefined) b.writeBigUInt64BE(f.backingOffset, 8);
  if (f.backingSize !== undefined) b.writeUInt32BE(f.backingSize, 16);
  return b;
}

const parse = (head: Buffer, size = 1 << 20) => parseImageHeader(head, size, what);

t.test('qcow2 headers that are accepted', async (t) => {
  t.same(parse(qcow2()), { format: 'qcow2', virtualSize: 10 * 2 ** 30 });
  t.same(parse(qcow2({ version: 2, size: 12345n * 512n })), { format: 'qcow2', virtualSize: 12345 * 512 });
  t.same(parse(qcow2({ headerLength: 104 })).format, 'qcow2', 'v3 header without compression_type');
  t.same(parse(qcow2({ incompatible: 1n })).format, 'qcow2', 'dirty bit');
  t.same(parse(qcow2({ incompatible: 1n << 3n, compressionType: 0 })).format, 'qcow2', 'compression type bit with zlib');
  t.same(parse(qcow2({ incompatible: 1n << 4n })).format, 'qcow2', 'extended L2');
  t.same(parse(qcow2({ clusterBits: 9 })).format, 'qcow2');
  t.same(parse(qcow2({ clusterBits: 21 })).format, 'qcow2');
  const backingFormat = { type: 0xe2792aca, data: Buffer.from('raw') };
  const featureNames = { type: 0x6803f857, data: Buffer.alloc(48 * 3) };
  t.same(parse(qcow2({ extensions: [backingFormat, featureNames] })).format, 'qcow2', 'harmless extensions are skipped');
});

t.test('qcow2 headers that are corrupt', async (t) => {
  const corrupt = { code: 'IMAGE_CORRUPT' };
  t.throws(() => parse(qcow2({ version: 4 })), corrupt, 'version 4');
  t.throws(() => parse(qcow2({ version: 0 })), corrupt, 'version 0');
  t.throws(() => parse(qcow2({ clusterBits: 8 })), corrupt, 'cluster_bits 8');
  t.throws(() => parse(qcow2({ clusterBits: 22 })), corrupt, 'cluster_bits 22');
  t.throws(() => parse(qcow2({ headerLength: 100 })), corrupt, 'header_length below 104');
  t.throws(() => parse(qcow2({ clusterBits: 9, headerLength: 1024, total: 2048 })), corrupt, 'header_length beyond the cluster');
  t.throws(() => parse(qcow2({ size: 1n << 60n })), corrupt, 'size beyond 2^53');
  t.throws(() => parse(qcow2({ incompatible: 2n })), corrupt, 'corrupt bit');
  t.throws(() => parse(qcow2({ incompatible: 1n << 3n, headerLength: 104 })), corrupt, 'compression bit without the field');
  t.throws(() => parse(qcow2().subarray(0, 50), 50), corrupt, 'first 50 bytes');
  t.throws(() => parse(qcow2().subarray(0, 6), 6), corrupt, 'magic and half a version');
  t.throws(() => parse(qcow2({ version: 2 }).subarray(0, 71), 71), corrupt, 'v2 one byte short');
  const unterminated = qcow2({ extensions: [{ type: 0x1234, data: Buffer.alloc(8) }] }).subarray(0, 112 + 16);
  t.throws(() => parse(unterminated, unterminated.length), corrupt, 'file ends inside the extensions');
  const huge = qcow2({ clusterBits: 9, extensions: [{ type: 0x1234, data: Buffer.alloc(1000) }] });
  t.throws(() => parse(huge), corrupt, 'extension longer than the cluster');
  t.same(parse(Buffer.from('QFI')), { format: 'raw', virtualSize: 1 << 20 }, 'three bytes of magic are just data');
});

t.test('qcow2 features vmlet refuses', async (t) => {
  t.throws(() => parse(qcow2({ backing: '/etc/shadow' })), {
    code: 'IMAGE_BACKING_FILE_REFUSED',
    message: /"\/etc\/shadow".*qemu-img convert -O qcow2 IN OUT/,
  });
  t.throws(() => parse(qcow2({ version: 2, backing: 'base.img' })), { code: 'IMAGE_BACKING_FILE_REFUSED', message: /"base\.img"/ });
  t.throws(() => parse(qcow2({ backing: 'x\u001b[2J' })), { message: /"x\\u001b\[2J"/ }, 'control characters are quoted');
  t.throws(() => parse(qcow2({ backingOffset: 1n << 20n, backingSize: 5 })), { code: 'IMAGE_BACKING_FILE_REFUSED', message: /name outside the header/ });
  t.throws(() => parse(qcow2({ backingSize: 5 })), { code: 'IMAGE_BACKING_FILE_REFUSED' }, 'size alone');
  t.throws(() => parse(qcow2({ backingOffset: 4000n })), { code: 'IMAGE_BACKING_FILE_REFUSED' }, 'offset alone');
  t.throws(() => parse(qcow2({ backing: '/etc/shadow', incompatible: 2n })), { code: 'IMAGE_BACKING_FILE_REFUSED' }, 'backing wins');

  t.throws(() => parse(qcow2({ incompatible: 1n << 2n })), { code: 'IMAGE_DATA_FILE_REFUSED', message: /external data file/ });
  const dataExt = { type: 0x44415441, data: Buffer.from('/dev/sda') };
  t.throws(() => parse(qcow2({ extensions: [dataExt] })), { code: 'IMAGE_DATA_FILE_REFUSED' }, 'data-file extension without the bit');

  const unsupported = (n: RegExp) => ({ code: 'IMAGE_FORMAT_UNSUPPORTED', message: n });
  t.throws(() => parse(qcow2({ incompatible: 1n << 3n, compressionType: 1 })), unsupported(/zstd/));
  t.throws(() => parse(qcow2({ compressionType: 7 })), unsupported(/type 7/));
  t.throws(() => parse(qcow2({ incompatible: 1n << 5n })), unsupported(/bit\(s\) 5;/));
  t.throws(() => parse(qcow2({ incompatible: (1n << 63n) | 1n })), unsupported(/bit\(s\) 63;/));
  t.throws(() => parse(qcow2({ crypt: 1 })), unsupported(/encrypted/));
  t.throws(() => parse(qcow2({ version: 2, crypt: 2 })), unsupported(/encrypted/));
  t.throws(() => parse(qcow2({ version: 1 })), unsupported(/qcow \(version 1\)/));

  // Extensions past what was read cannot be checked: refused rather than trusted.
  const far = qcow2({ clusterBits: 21, total: HEAD_BYTES + 4096, extensions: [{ type: 0x1234, data: Buffer.alloc(HEAD_BYTES) }] });
  t.throws(() => parse(far.subarray(0, HEAD_BYTES), 10 << 20), unsupported(/beyond the first 65536 bytes/));
});

t.test('other formats are refused by name, the rest is raw', async (t) => {
  const at = (offset: number, magic: string | number[]): Buffer => {
    const b = Buffer.alloc(1024);
    (typeof magic === 'string' ? Buffer.from(magic, 'latin1') : Buffer.from(magic)).copy(b, offset);
    return b;
  };
  const cases: [string, Buffer][] = [
    ['vmdk', at(0, 'KDMV')],
    ['COWD', at(0, 'COWD')],
    ['text descriptor', at(0, '# Disk DescriptorFile\nversion=1\n')],
    ['vdi', at(0x40, [0x7f, 0x10, 0xda, 0xbe])],
    ['vhdx', at(0, 'vhdxfile')],
    ['vpc', at(0, 'conectix')],
    ['qed', at(0, 'QED\0')],
    ['luks', at(0, 'LUKS\xba\xbe')],
    ['bochs', at(0, 'Bochs Virtual HD Image')],
    ['cloop', at(0, '#!/bin/sh\n#V2.0 Format\nmodprobe cloop\n')],
    ['parallels', at(0, 'WithouFreSpacExt')],
  ];
  for (const [name, head] of cases) {
    t.throws(
      () => parse(head),
      { code: 'IMAGE_FORMAT_UNSUPPORTED', message: new RegExp(`${name.replace(/[()]/g, '.')}.*qemu-img convert -O qcow2 IN OUT`) },
      name,
    );
  }
  t.same(parse(Buffer.alloc(HEAD_BYTES), 5 * 2 ** 30), { format: 'raw', virtualSize: 5 * 2 ** 30 }, 'zeros');
  t.same(parse(Buffer.alloc(0), 0), { format: 'raw', virtualSize: 0 }, 'empty file');
  t.same(parse(at(0, 'QEDX')), { format: 'raw', virtualSize: 1 << 20 }, 'a near miss is data');
  t.same(parse(at(0x3f, [0x7f, 0x10, 0xda, 0xbe])).format, 'raw', 'vdi signature at the wrong offset');
});

function img(...args: string[]): void {
  execFileSync('qemu-img', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

t.test('files made by qemu-img', { skip: noQemuImg }, async (t) => {
  const p = (name: string): string => path.join(tmp, name);
  img('create', '-f', 'qcow2', p('plain.qcow2'), '10M');
  t.same(await probeImage(p('plain.qcow2'), what), { format: 'qcow2', virtualSize: 10 << 20 });
  img('create', '-f', 'qcow2', '-o', 'compat=0.10', p('v2.qcow2'), '3M');
  t.same(await probeImage(p('v2.qcow2'), what), { format: 'qcow2', virtualSize: 3 << 20 });
  img('create', '-f', 'qcow2', '-o', 'extended_l2=on', p('l2.qcow2'), '1G');
  t.same(await probeImage(p('l2.qcow2'), what), { format: 'qcow2', virtualSize: 1 << 30 });

  img('create', '-f', 'qcow2', '-b', '/etc/shadow', '-F', 'raw', '-u', p('shadow.qcow2'), '1M');
  await t.rejects(probeImage(p('shadow.qcow2'), what), { code: 'IMAGE_BACKING_FILE_REFUSED', message: /\/etc\/shadow/ });
  img('create', '-f', 'qcow2', '-o', `data_file=${p('data.raw')},data_file_raw=on`, p('datafile.qcow2'), '1M');
  await t.rejects(probeImage(p('datafile.qcow2'), what), { code: 'IMAGE_DATA_FILE_REFUSED' });
  img('create', '-f', 'qcow2', '-o', 'compression_type=zstd', p('zstd.qcow2'), '1M');
  await t.rejects(probeImage(p('zstd.qcow2'), what), { code: 'IMAGE_FORMAT_UNSUPPORTED', message: /zstd/ });
  // The legacy AES format: LUKS-in-qcow2 times its key derivation, which fails in some containers.
  img('create', '-f', 'qcow2', '--object', 'secret,id=s0,data=pw', '-o', 'encrypt.format=aes,encrypt.key-secret=s0', p('enc.qcow2'), '1M');
  await t.rejects(probeImage(p('enc.qcow2'), what), { code: 'IMAGE_FORMAT_UNSUPPORTED', message: /encrypted/ });

  writeFileSync(p('trunc.qcow2'), readFileSync(p('plain.qcow2')).subarray(0, 50));
  await t.rejects(probeImage(p('trunc.qcow2'), what), { code: 'IMAGE_CORRUPT' });

  for (const [fmt, opts] of [
    ['vmdk', []],
    ['vmdk', ['-o', 'subformat=monolithicFlat']],
    ['vdi', []],
    ['vhdx', []],
    ['qed', []],
    ['vpc', []],
    ['qcow', []],
    ['parallels', []],
  ] as const) {
    const file = p(`x-${fmt}-${opts.length}.img`);
    img('create', '-f', fmt, ...opts, file, '1M');
    await t.rejects(probeImage(file, what), { code: 'IMAGE_FORMAT_UNSUPPORTED', message: /qemu-img convert/ }, `${fmt} ${opts.join(' ')}`);
  }
});

t.test('a LUKS file made by qemu-img', { skip: noQemuImg }, async (t) => {
  const file = path.join(tmp, 'x.luks');
  const r = spawnSync('qemu-img', ['create', '-f', 'luks', '--object', 'secret,id=s0,data=pw', '-o', 'key-secret=s0,iter-time=10', file, '1M'], {
    encoding: 'utf8',
  });
  // In some containers LUKS key derivation cannot time itself ("Unable to get accurate CPU usage").
  if (r.status !== 0) {
    t.plan(0, `skip: qemu-img cannot create LUKS images here: ${r.stderr.trim()}`);
    return;
  }
  await t.rejects(probeImage(file, what), { code: 'IMAGE_FORMAT_UNSUPPORTED', message: /luks/ });
});

t.test('probeImage and probeImageFd on raw files', async (t) => {
  const file = path.join(tmp, 'zeros.img');
  writeFileSync(file, Buffer.alloc(3 * 65536 + 512));
  t.same(await probeImage(file, what), { format: 'raw', virtualSize: 3 * 65536 + 512 });
  const small = path.join(tmp, 'small.img');
  writeFileSync(small, 'hello');
  t.same(await probeImage(small, what), { format: 'raw', virtualSize: 5 });
  const fd = openSync(file, 'r');
  t.teardown(() => closeSync(fd));
  t.same(await probeImageFd(fd, what), { format: 'raw', virtualSize: statSync(file).size });
  t.same(await probeImageFd(fd, what), { format: 'raw', virtualSize: statSync(file).size }, 'the fd position does not matter');
  await t.rejects(probeImage(path.join(tmp, 'missing.img'), what), { code: 'ENOENT' }, 'fs errors pass through');
});

t.test('block device size comes from sysfs', async (t) => {
  const dev = ['/dev/loop0', '/dev/zero', '/dev/null'].find((d) => statSync(d, { throwIfNoEntry: false })?.isBlockDevice());
  if (dev === undefined) {
    t.plan(0, 'skip: no block device node to stat on this host');
    return;
  }
  const st = await fsp.stat(dev, { bigint: true });
  const major = Number(st.rdev >> 8n) & 0xfff;
  const minor = Number(st.rdev & 0xffn);
  const sys = path.join(tmp, 'sys');
  mkdirSync(path.join(sys, 'dev', 'block', `${major}:${minor}`), { recursive: true });
  writeFileSync(path.join(sys, 'dev', 'block', `${major}:${minor}`, 'size'), '2048\n');
  t.equal(await imageFileSize(st, { sysDir: sys }), 2048 * 512);
});

t.test('a real loop device', async (t) => {
  const losetup = which('losetup');
  if (process.getuid?.() !== 0 || losetup === undefined) {
    t.plan(0, 'skip: needs root and losetup');
    return;
  }
  const backing = path.join(tmp, 'loop-backing.img');
  writeFileSync(backing, Buffer.alloc(4 << 20));
  const r = spawnSync(losetup, ['--find', '--show', backing], { encoding: 'utf8' });
  if (r.status !== 0) {
    t.plan(0, `skip: losetup cannot attach a loop device here: ${r.stderr.trim()}`);
    return;
  }
  const dev = r.stdout.trim();
  t.teardown(() => void spawnSync(losetup, ['--detach', dev]));
  t.same(await probeImage(dev, what), { format: 'raw', virtualSize: 4 << 20 });
});
