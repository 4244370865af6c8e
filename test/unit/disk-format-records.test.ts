// Unit tests for src/disk/format-records.ts: a raw disk stays raw whatever its guest writes, replaced files are probed again, records survive damage and races.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, readFileSync, renameSync, rmSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { FormatRecords } from '../../src/disk/format-records.js';
import { createOverlay, overlayLayout } from '../../src/disk/qcow2-overlay.js';
import { which } from '../support/which.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'vmlet-unit-disk-records-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

const noQemuImg = which('qemu-img') === undefined ? 'qemu-img is not installed (Debian: apt-get install qemu-utils)' : false;
const what = 'hostDisk "data"';
const now = () => new Date('2024-05-01T12:00:00Z');
let n = 0;
const fresh = (): { dir: string; records: FormatRecords } => {
  const dir = path.join(tmp, `records-${++n}`);
  return { dir, records: new FormatRecords(dir, { now }) };
};

/** The first 64 KiB of a qcow2 with the backing file /etc/shadow, what a hostile guest would write: made by qemu-img, or without it by vmlet's own overlay writer. */
function shadowHeader(): Buffer {
  if (noQemuImg) {
    const head = Buffer.alloc(65536);
    for (const p of overlayLayout({ path: '', virtualSize: 1 << 30, backing: { file: '/etc/shadow', format: 'raw' } }).pieces) p.bytes.copy(head, p.offset);
    return head;
  }
  const file = path.join(tmp, `shadow-${++n}.qcow2`);
  execFileSync('qemu-img', ['create', '-f', 'qcow2', '-b', '/etc/shadow', '-F', 'raw', '-u', file, '1G'], { stdio: 'ignore' });
  return readFileSync(file).subarray(0, 65536);
}

/** Write `data` at offset 0 of `file` in place (same inode), as a guest writing its first sectors would. */
function writeInPlace(file: string, data: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, data, 0, data.length, 0);
  } finally {
    closeSync(fd);
  }
}

t.test('a raw disk stays raw after its guest writes a qcow2 header with a backing file', async (t) => {
  const { records } = fresh();
  const disk = path.join(tmp, 'guest.img');
  writeFileSync(disk, Buffer.alloc(1 << 20));
  t.same(await records.formatOf(disk, what), { format: 'raw', virtualSize: 1 << 20, firstSeen: true });

  const ino = statSync(disk).ino;
  writeInPlace(disk, shadowHeader());
  t.equal(statSync(disk).ino, ino, 'same inode: the guest wrote into the file');
  t.same(await records.formatOf(disk, what), { format: 'raw', virtualSize: 1 << 20, firstSeen: false }, 'not probed again');

  truncateSync(disk, 2 << 20);
  t.same(await records.formatOf(disk, what), { format: 'raw', virtualSize: 2 << 20, firstSeen: false }, 'a grown raw disk reports its new size');

  // A new FormatRecords over the same directory (a daemon restart) reads the record from disk.
  const again = new FormatRecords(path.dirname(records.recordPath(disk)));
  t.same(await again.formatOf(disk, what), { format: 'raw', virtualSize: 2 << 20, firstSeen: false }, 'after a restart');
});

t.test('a replaced file (new inode) is probed again', async (t) => {
  const { records } = fresh();
  const disk = path.join(tmp, 'replaced.img');
  writeFileSync(disk, Buffer.alloc(1 << 20));
  t.equal((await records.formatOf(disk, what)).firstSeen, true);
  const before = readFileSync(records.recordPath(disk), 'utf8');

  const next = path.join(tmp, 'replaced.img.new');
  writeFileSync(next, shadowHeader());
  renameSync(next, disk);
  await t.rejects(records.formatOf(disk, what), { code: 'IMAGE_BACKING_FILE_REFUSED', message: /\/etc\/shadow/ });
  await t.rejects(records.formatOf(disk, what), { code: 'IMAGE_BACKING_FILE_REFUSED' }, 'still refused: a refusal is not recorded');
  t.equal(readFileSync(records.recordPath(disk), 'utf8'), before, 'the old record is untouched');
});

t.test('a clean qcow2 put in place of a raw disk is recorded as qcow2', { skip: noQemuImg }, async (t) => {
  const { records } = fresh();
  const disk = path.join(tmp, 'replaced-by-qcow2.img');
  writeFileSync(disk, Buffer.alloc(1 << 20));
  t.equal((await records.formatOf(disk, what)).format, 'raw');
  const qcow2 = path.join(tmp, 'replaced.qcow2');
  execFileSync('qemu-img', ['create', '-f', 'qcow2', qcow2, '5M'], { stdio: 'ignore' });
  renameSync(qcow2, disk);
  t.same(await records.formatOf(disk, what), { format: 'qcow2', virtualSize: 5 << 20, firstSeen: true });
  t.same(await records.formatOf(disk, what), { format: 'qcow2', virtualSize: 5 << 20, firstSeen: false }, 'checked again, still clean');
});

t.test('a recorded qcow2 that gains a backing file is refused', { skip: noQemuImg }, async (t) => {
  const { records } = fresh();
  const disk = path.join(tmp, 'rebased.qcow2');
  execFileSync('qemu-img', ['create', '-f', 'qcow2', disk, '5M'], { stdio: 'ignore' });
  t.same(await records.formatOf(disk, what), { format: 'qcow2', virtualSize: 5 << 20, firstSeen: true });
  execFileSync('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', '/etc/shadow', '-F', 'raw', disk], { stdio: 'ignore' });
  await t.rejects(records.formatOf(disk, what), { code: 'IMAGE_BACKING_FILE_REFUSED' });
});

t.test('record() marks a file vmlet made itself, without probing', async (t) => {
  const { dir, records } = fresh();
  const disk = path.join(tmp, 'made.img');
  writeFileSync(disk, '');
  truncateSync(disk, 8 << 20);
  await records.record(disk, 'raw');
  const rec: unknown = JSON.parse(readFileSync(records.recordPath(disk), 'utf8'));
  const st = statSync(disk, { bigint: true });
  t.same(rec, {
    path: disk,
    dev: String(st.dev),
    ino: String(st.ino),
    btime: String(st.birthtimeNs),
    format: 'raw',
    virtualSize: 8 << 20,
    origin: 'created',
    recordedAt: '2024-05-01T12:00:00.000Z',
  });
  t.equal(path.dirname(records.recordPath(disk)), dir);
  t.match(path.basename(records.recordPath(disk)), /^[0-9a-f]{64}\.json$/);

  // Bytes that look like qcow2 with a backing file, written by the guest: still raw.
  const head = Buffer.alloc(512);
  head.write('QFI\xfb', 0, 'latin1');
  head.writeUInt32BE(2, 4);
  head.writeBigUInt64BE(72n + 8n, 8);
  head.writeUInt32BE(11, 16);
  head.writeUInt32BE(16, 20);
  head.write('/etc/shadow', 80);
  writeInPlace(disk, head);
  t.same(await records.formatOf(disk, what), { format: 'raw', virtualSize: 8 << 20, firstSeen: false });

  // An overlay names its backing file on purpose: recorded as made by vmlet, it is never probed (which would refuse it).
  const overlay = path.join(tmp, 'made.qcow2');
  await createOverlay({ path: overlay, virtualSize: 3 * 2 ** 30, backing: { file: '/etc/shadow', format: 'raw' } });
  await records.record(overlay, 'qcow2', 3 * 2 ** 30);
  t.same(await records.formatOf(overlay, what), { format: 'qcow2', virtualSize: 3 * 2 ** 30, firstSeen: false });
  rmSync(overlay);
  await createOverlay({ path: overlay, virtualSize: 3 * 2 ** 30, backing: { file: '/etc/shadow', format: 'raw' } });
  await t.rejects(records.formatOf(overlay, what), { code: 'IMAGE_BACKING_FILE_REFUSED' }, 'a new file at that path is probed');
});

t.test('a damaged record is treated as absent', async (t) => {
  const { dir, records } = fresh();
  const disk = path.join(tmp, 'damaged.img');
  writeFileSync(disk, Buffer.alloc(4096));
  await records.record(disk, 'raw');
  const cases: [string, string][] = [
    ['not JSON', '{"path": '],
    ['empty', ''],
    ['an array', '[]'],
    ['a bad format', JSON.stringify({ ...JSON.parse(readFileSync(records.recordPath(disk), 'utf8')), format: 'vmdk' })],
    ['another path', JSON.stringify({ ...JSON.parse(readFileSync(records.recordPath(disk), 'utf8')), path: '/elsewhere' })],
    ['no origin', JSON.stringify({ ...JSON.parse(readFileSync(records.recordPath(disk), 'utf8')), origin: undefined })],
    ['a fractional size', JSON.stringify({ ...JSON.parse(readFileSync(records.recordPath(disk), 'utf8')), virtualSize: 1.5 })],
  ];
  for (const [name, text] of cases) {
    writeFileSync(records.recordPath(disk), text);
    t.same(await records.formatOf(disk, what), { format: 'raw', virtualSize: 4096, firstSeen: true }, name);
    t.equal(JSON.parse(readFileSync(records.recordPath(disk), 'utf8')).format, 'raw', `${name}: rewritten`);
  }
  t.same(await new FormatRecords(dir).formatOf(disk, what), { format: 'raw', virtualSize: 4096, firstSeen: false });
});

t.test('concurrent calls for one file probe and record once', async (t) => {
  const { records } = fresh();
  const disk = path.join(tmp, 'race.img');
  writeFileSync(disk, Buffer.alloc(65536));
  const results = await Promise.all(Array.from({ length: 20 }, () => records.formatOf(disk, what)));
  t.equal(results.filter((r) => r.firstSeen).length, 1, 'exactly one first sight');
  t.ok(results.every((r) => r.format === 'raw' && r.virtualSize === 65536));

  const other = path.join(tmp, 'race2.img');
  writeFileSync(other, Buffer.alloc(512));
  const mixed = await Promise.all([records.record(other, 'raw'), records.formatOf(other, what), records.formatOf(other, what)]);
  t.same(mixed.slice(1), [
    { format: 'raw', virtualSize: 512, firstSeen: false },
    { format: 'raw', virtualSize: 512, firstSeen: false },
  ]);
});

t.test('errors', async (t) => {
  const { records } = fresh();
  await t.rejects(records.formatOf(path.join(tmp, 'absent.img'), what), { code: 'ENOENT' }, 'fs errors on the disk pass through');

  const notADir = path.join(tmp, 'plain-file');
  writeFileSync(notADir, 'x');
  const broken = new FormatRecords(path.join(notADir, 'records'));
  const disk = path.join(tmp, 'some.img');
  writeFileSync(disk, Buffer.alloc(512));
  await t.rejects(broken.formatOf(disk, what), { code: 'IMAGE_STORE_FAILED', errno: 'ENOTDIR' }, 'unreadable records directory');
  await t.rejects(broken.record(disk, 'raw'), { code: 'IMAGE_STORE_FAILED', errno: 'ENOTDIR' }, 'unwritable records directory');
});
