import t from 'tap';
import { execFileSync } from 'node:child_process';
import { promises as fsp, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { nameFromFile } from '../../src/images/disk-file.js';
import { ImageStore, type ImageRecord } from '../../src/images/store.js';
import {
  buildContainerDisk,
  changeEntry,
  containerDiskSkipReason,
  diskBytes,
  dockerArchive,
  ociArchive,
  sha256,
  testDiskImage,
  writeArchive,
  type LayerSpec,
} from '../support/container-disk.js';
import { which } from '../support/which.js';

const noQemuImg = which('qemu-img') === undefined ? 'qemu-img is not installed' : false;
const notUsed = (): string[] => [];
const layer = (marker: string, name = 'disk.img'): LayerSpec => ({ gzip: true, files: [{ name: `disk/${name}`, data: diskBytes(marker) }] });

async function open(dir: string): Promise<ImageStore> {
  const s = new ImageStore({ dir: path.join(dir, 'store'), now: () => new Date('2026-01-02T03:04:05.000Z') });
  await s.init();
  return s;
}

/** Every path under the store but images.json and the empty upload folder. */
function contents(dir: string): string[] {
  const root = path.join(dir, 'store');
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const e of readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const p = path.join(rel, e.name);
      if (e.isDirectory()) {
        out.push(`${p}/`);
        walk(p);
      } else out.push(p);
    }
  };
  walk('');
  return out.filter((p) => p !== 'images.json').sort();
}
const EMPTY = ['disks/', 'tmp/', 'tmp/uploads/'];

function qemuImg(...args: string[]): void {
  execFileSync('qemu-img', args, { stdio: 'ignore' });
}

t.test('import an OCI archive: a read-only disk under disks/<hex>/, a record in images.json', async (t) => {
  const dir = t.testdir({});
  const parts = await ociArchive([layer('OCI', 'disk.img')], { annotations: { 'org.opencontainers.image.ref.name': 'quay.io/containerdisks/test:1' } });
  await writeArchive(path.join(dir, 'a.tar'), parts);
  const s = await open(dir);
  let changes = 0;
  const off = s.onChange(() => changes++);
  const rec = await s.import(path.join(dir, 'a.tar'));
  const hex = parts.manifestDigest.slice('sha256:'.length);
  t.same(rec, {
    digest: parts.manifestDigest,
    names: ['quay.io/containerdisks/test:1'],
    format: 'raw',
    virtualSize: 256 * 1024,
    size: 256 * 1024,
    source: 'oci-archive',
    diskFileName: 'disk.img',
    importedAt: '2026-01-02T03:04:05.000Z',
    path: path.join(dir, 'store', 'disks', hex, 'disk.img'),
  });
  t.equal(statSync(rec.path).mode & 0o777, 0o444, 'the stored disk is read-only');
  t.ok(readFileSync(rec.path).subarray(0, 3).equals(Buffer.from('OCI')));
  t.same(contents(dir), [...EMPTY.slice(0, 1), `disks/${hex}/`, `disks/${hex}/disk.img`, ...EMPTY.slice(1)]);
  const index = JSON.parse(readFileSync(path.join(dir, 'store', 'images.json'), 'utf8')) as { version: number; images: unknown[] };
  t.equal(index.version, 1);
  t.same(
    index.images,
    [{ ...rec, path: undefined }].map(({ path: _p, ...r }) => r),
  );
  t.same(s.list(), [rec]);
  t.equal(changes, 1, 'listeners hear of the import');
  off();
  await s.import(path.join(dir, 'a.tar'), { name: 'again' });
  t.equal(changes, 1, 'an unsubscribed listener hears nothing');
});

t.test('resolve by name (user or docker.io form), name@digest, digest and digest prefix', async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  await writeArchive(path.join(dir, 'd.tar'), await dockerArchive([layer('D')], { repoTags: ['debian:12', 'quay.io/x/debian:12'] }));
  const rec = await s.import(path.join(dir, 'd.tar'));
  const hex = rec.digest.slice(7);
  for (const ref of [
    'debian:12',
    'docker.io/library/debian:12',
    'index.docker.io/library/debian:12',
    'quay.io/x/debian:12',
    rec.digest,
    `sha256:${hex.slice(0, 12)}`,
    hex.slice(0, 12),
    hex,
    `debian:12@${rec.digest}`,
    `debian@${rec.digest}`,
  ]) {
    t.equal(s.resolve(ref)?.digest, rec.digest, ref);
  }
  for (const ref of [
    'debian',
    'debian:11',
    'quay.io/debian:12',
    `sha256:${hex.slice(0, 11)}`,
    hex.slice(0, 11),
    `debian:12@sha256:${'0'.repeat(64)}`,
    `sha256:${'0'.repeat(64)}`,
    `ubuntu@${rec.digest}`,
  ]) {
    t.equal(s.resolve(ref), undefined, `${ref} resolves to nothing`);
  }
  t.throws(() => s.resolve('Not Valid'), { code: 'IMAGE_NAME_INVALID' });
  t.equal(rec.source, 'docker-archive');
});

t.test('import plain qcow2 and raw disk files; the name comes from the file name', { skip: noQemuImg }, async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  const qcow2 = path.join(dir, 'debian-12-genericcloud-amd64.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', qcow2, '64M');
  const q = await s.import(qcow2);
  t.match(q, {
    names: ['debian-12-genericcloud-amd64:latest'],
    format: 'qcow2',
    virtualSize: 64 * 1024 * 1024,
    source: 'disk-file',
    diskFileName: 'debian-12-genericcloud-amd64.qcow2',
  });
  t.equal(q.digest, sha256(readFileSync(qcow2)), 'the digest of a disk file is the sha256 of its content');
  t.equal(q.size, statSync(qcow2).size);
  t.ok(statSync(qcow2).isFile(), 'a copy leaves the source');
  const raw = await testDiskImage(dir);
  const r = await s.import(raw, { name: 'localhost/base:v1' });
  t.match(r, { names: ['localhost/base:v1'], format: 'raw', virtualSize: 8 * 1024 * 1024, size: 8 * 1024 * 1024, diskFileName: 'base.img' });
  t.ok(statSync(r.path).blocks * 512 < 1024 * 1024, 'the holes of a raw disk stay holes');
  t.ok(readFileSync(r.path).equals(readFileSync(raw)));
  t.same(
    s.list().map((x) => x.names[0]),
    ['debian-12-genericcloud-amd64:latest', 'localhost/base:v1'],
  );
});

t.test('move: the upload is renamed into the store', async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  const upload = path.join(s.uploadDir(), 'disk.img');
  writeFileSync(upload, diskBytes('UP'));
  const rec = await s.import(upload, { name: 'up', move: true });
  t.same(rec.names, ['up:latest']);
  t.same(readdirSync(s.uploadDir()), [], 'the upload is gone');
  t.ok(readFileSync(rec.path).subarray(0, 2).equals(Buffer.from('UP')));
  // A refused upload is consumed too: the API has nothing to clean.
  const bad = path.join(s.uploadDir(), 'bad.img');
  writeFileSync(bad, gzipSync(diskBytes('GZ')));
  await t.rejects(s.import(bad, { name: 'bad', move: true }), { code: 'IMAGE_FORMAT_UNSUPPORTED', message: /gzip-compressed; decompress it first/ });
  t.same(readdirSync(s.uploadDir()), []);
});

t.test('names: re-import adds names, a name moves to a newer image, an image without names stays', async (t) => {
  const dir = t.testdir({ 'a.img': diskBytes('A').toString('latin1'), 'b.img': diskBytes('B').toString('latin1') });
  const s = await open(dir);
  const a = await s.import(path.join(dir, 'a.img'), { name: 'disk:1' });
  const a2 = await s.import(path.join(dir, 'a.img'), { name: 'docker.io/library/disk:stable' });
  t.equal(a2.digest, a.digest);
  t.same(a2.names, ['docker.io/library/disk:stable', 'disk:1'], 'the same digest gets one more name');
  t.equal(a2.importedAt, a.importedAt);
  t.equal(s.list().length, 1);
  const a3 = await s.import(path.join(dir, 'a.img'), { name: 'docker.io/library/disk:1' });
  t.same(a3.names, ['docker.io/library/disk:1', 'docker.io/library/disk:stable'], 'the same name in another form is not added twice');
  const b = await s.import(path.join(dir, 'b.img'), { name: 'disk:1' });
  t.same(b.names, ['disk:1']);
  t.same(s.resolve(a.digest)?.names, ['docker.io/library/disk:stable'], 'disk:1 moved to the newer image');
  t.equal(s.resolve('disk:1')?.digest, b.digest);
  await s.import(path.join(dir, 'b.img'), { name: 'disk:stable' });
  t.same(s.resolve(a.digest)?.names, [], 'the older image lost its last name and stays');
  t.same(
    s.list().map((r) => r.names),
    [['disk:stable', 'disk:1'], []].sort((x, y) => (x[0] ?? a.digest).localeCompare(y[0] ?? a.digest)),
  );
  await t.rejects(s.import(path.join(dir, 'b.img'), { name: `x@${a.digest}` }), { code: 'IMAGE_NAME_INVALID' });
});

t.test('remove: in use, untag, by last name, by digest, unknown', async (t) => {
  const dir = t.testdir({ 'a.img': diskBytes('A').toString('latin1'), 'b.img': diskBytes('B').toString('latin1') });
  const s = await open(dir);
  const a = await s.import(path.join(dir, 'a.img'), { name: 'a:1' });
  await s.import(path.join(dir, 'a.img'), { name: 'a:2' });
  const b = await s.import(path.join(dir, 'b.img'), { name: 'b:1' });
  let changes = 0;
  s.onChange(() => changes++);
  const users: string[] = [];
  const usedBy = (rec: ImageRecord): string[] => (rec.digest === b.digest ? ['default/vmi-a', 'other/vmi-b'] : users);
  await t.rejects(s.remove('b:1', usedBy), {
    code: 'IMAGE_IN_USE',
    message: /image b:1 is used by default\/vmi-a, other\/vmi-b/,
    details: { usedBy: ['default/vmi-a', 'other/vmi-b'] },
  });
  t.ok(s.resolve('b:1'), 'an image in use stays');
  const untagged = await s.remove('docker.io/library/a:2', usedBy);
  t.same(untagged.names, ['a:1'], 'removing one of several names only untags');
  t.ok(statSync(a.path).isFile(), 'the disk stays');
  t.equal(s.resolve('a:2'), undefined);
  users.push('default/vmi-c');
  await t.rejects(s.remove('a:1', usedBy), { code: 'IMAGE_IN_USE', message: /default\/vmi-c/ });
  users.length = 0;
  const removed = await s.remove('a:1', usedBy);
  t.equal(removed.digest, a.digest);
  t.equal(s.resolve(a.digest), undefined);
  await t.rejects(fsp.stat(path.dirname(a.path)), { code: 'ENOENT' }, 'the disk folder is gone');
  await s.import(path.join(dir, 'b.img'), { name: 'b:2' });
  const byDigest = await s.remove(b.digest.slice(7, 19), () => []);
  t.same(byDigest.names, ['b:2', 'b:1'], 'by digest the whole image goes, names and all');
  t.same(s.list(), []);
  t.same(contents(dir), EMPTY);
  t.equal(changes, 4, 'listeners hear of the untag, the removes and the import');
  await t.rejects(s.remove('nothing:here', usedBy), { code: 'IMAGE_NOT_FOUND' });
  await t.rejects(s.remove(b.digest, usedBy), { code: 'IMAGE_NOT_FOUND' });
});

t.test('refused images leave nothing in the store', async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  if (noQemuImg === false) {
    const shadow = path.join(dir, 'shadow.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', '/etc/shadow', '-F', 'raw', '-u', shadow, '1M');
    await t.rejects(s.import(shadow), { code: 'IMAGE_BACKING_FILE_REFUSED' });
    t.same(contents(dir), EMPTY);
    const archived = path.join(dir, 'shadow.tar');
    await writeArchive(
      archived,
      await ociArchive([{ files: [{ name: 'disk/x.qcow2', data: readFileSync(shadow) }] }], { annotations: { 'io.containerd.image.name': 'evil:1' } }),
    );
    await t.rejects(s.import(archived), { code: 'IMAGE_BACKING_FILE_REFUSED' });
    t.same(contents(dir), EMPTY);
  } else t.comment(`no backing-file case: ${noQemuImg}`);
  const damaged = await ociArchive([layer('X')], { annotations: { 'io.containerd.image.name': 'x:1' } });
  changeEntry(damaged, damaged.layerPaths[0] ?? '', (d) => Buffer.concat([d.subarray(0, 100), Buffer.from([(d[100] ?? 0) ^ 0xff]), d.subarray(101)]));
  await writeArchive(path.join(dir, 'damaged.tar'), damaged);
  await t.rejects(s.import(path.join(dir, 'damaged.tar')), { code: 'IMAGE_DIGEST_MISMATCH' });
  const full = readFileSync(path.join(dir, 'damaged.tar'));
  writeFileSync(path.join(dir, 'cut.tar'), full.subarray(0, full.length / 2));
  await t.rejects(s.import(path.join(dir, 'cut.tar')), { code: 'IMAGE_ARCHIVE_INVALID' });
  await writeArchive(path.join(dir, 'nameless.tar'), await ociArchive([layer('N')]));
  await t.rejects(s.import(path.join(dir, 'nameless.tar')), { code: 'IMAGE_NAME_INVALID', message: /carries no image name; give one with --name/ });
  writeFileSync(path.join(dir, 'x.img.gz'), gzipSync(diskBytes('Z')));
  await t.rejects(s.import(path.join(dir, 'x.img.gz')), { code: 'IMAGE_FORMAT_UNSUPPORTED' });
  await t.rejects(s.import(path.join(dir, 'missing.img')), { code: 'IMAGE_STORE_FAILED', errno: 'ENOENT' });
  await t.rejects(s.import(dir), { code: 'IMAGE_STORE_FAILED', message: /not a regular file/ });
  await t.rejects(s.import(path.join(dir, 'damaged.tar'), { name: 'Bad Name' }), { code: 'IMAGE_NAME_INVALID' });
  t.same(contents(dir), EMPTY);
  t.same(s.list(), []);
});

t.test('records survive a restart; init() removes leftovers and drops records whose disk is gone', async (t) => {
  const dir = t.testdir({ 'a.img': diskBytes('A').toString('latin1'), 'b.img': diskBytes('B').toString('latin1') });
  const s = await open(dir);
  const a = await s.import(path.join(dir, 'a.img'), { name: 'a' });
  const b = await s.import(path.join(dir, 'b.img'), { name: 'b' });
  const again = await open(dir);
  t.same(again.list(), s.list(), 'a new store on the same folder has the same images');
  // What a killed import or daemon leaves: a temp import, an upload, an index temp file, a disk folder without record.
  const store = path.join(dir, 'store');
  await fsp.mkdir(path.join(store, 'tmp', 'import-dead'), { recursive: true });
  writeFileSync(path.join(store, 'tmp', 'import-dead', 'disk'), 'partial');
  writeFileSync(path.join(store, 'tmp', 'uploads', 'half-uploaded'), 'partial');
  writeFileSync(path.join(store, '.tmp-0123456789abcdef'), '{');
  await fsp.mkdir(path.join(store, 'disks', 'f'.repeat(64)));
  writeFileSync(path.join(store, 'disks', 'f'.repeat(64), 'orphan.img'), 'x');
  await fsp.chmod(b.path, 0o644);
  await fsp.rm(b.path);
  const third = await open(dir);
  t.same(
    third.list().map((r) => r.digest),
    [a.digest],
    'the image whose disk is gone is dropped',
  );
  t.same(contents(dir), [`disks/`, `disks/${a.digest.slice(7)}/`, `disks/${a.digest.slice(7)}/a.img`, 'tmp/', 'tmp/uploads/']);
  t.same((await open(dir)).list(), third.list(), 'the drop was written');
});

t.test('a broken images.json stops init rather than losing the disks', async (t) => {
  const dir = t.testdir({ store: { 'images.json': '{ "images": [ {"digest": "nope"} ] }' } });
  await t.rejects(open(dir), { code: 'IMAGE_STORE_FAILED', message: /holds a record vmlet cannot read/ });
  writeFileSync(path.join(dir, 'store', 'images.json'), 'not json');
  await t.rejects(open(dir), { code: 'IMAGE_STORE_FAILED', message: /is not valid JSON/ });
});

t.test('imports run side by side and all land', async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  const files = [];
  for (let i = 0; i < 5; i++) {
    const f = path.join(dir, `d${i}.img`);
    writeFileSync(f, diskBytes(`DISK ${i}`));
    files.push(f);
  }
  const recs = await Promise.all(files.map((f) => s.import(f)));
  t.equal(new Set(recs.map((r) => r.digest)).size, 5);
  t.same(
    (await open(dir)).list().map((r) => r.names[0]),
    ['d0:latest', 'd1:latest', 'd2:latest', 'd3:latest', 'd4:latest'],
  );
});

t.test('nameFromFile', async (t) => {
  t.equal(nameFromFile('/x/debian-12-genericcloud-amd64.qcow2'), 'debian-12-genericcloud-amd64:latest');
  t.equal(nameFromFile('/x/Fedora Cloud (39).img'), 'fedora-cloud-39:latest');
  t.equal(nameFromFile('disk'), 'disk:latest');
  t.throws(() => nameFromFile('/x/---.img'), { code: 'IMAGE_NAME_INVALID', message: /give one with --name/ });
  t.throws(() => nameFromFile(`/x/${'a'.repeat(64)}.img`), { code: 'IMAGE_NAME_INVALID' });
});

t.test('import an archive buildah made', { skip: containerDiskSkipReason() }, async (t) => {
  const dir = t.testdir({});
  const s = await open(dir);
  const disk = await testDiskImage(dir);
  await buildContainerDisk({ disk, name: 'localhost/vmlet-base:1', format: 'docker-archive', out: path.join(dir, 'base.tar') });
  const rec = await s.import(path.join(dir, 'base.tar'), { name: 'base' });
  t.match(rec, {
    names: ['base:latest', 'localhost/vmlet-base:1'],
    format: 'raw',
    source: 'docker-archive',
    diskFileName: 'base.img',
    virtualSize: 8 * 1024 * 1024,
  });
  t.ok(readFileSync(rec.path).equals(readFileSync(disk)));
});
