import t from 'tap';
import { execFileSync } from 'node:child_process';
import { promises as fsp, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { extractDiskFromArchive, isTarArchive } from '../../src/images/archive.js';
import {
  buildContainerDisk,
  changeEntry,
  containerDiskSkipReason,
  diskBytes,
  dockerArchive,
  ociArchive,
  sha256,
  tarBuffer,
  testDiskImage,
  writeArchive,
  type ArchiveParts,
  type LayerSpec,
} from '../support/container-disk.js';
import { which } from '../support/which.js';

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

const DISK = diskBytes('VMLET-TEST-DISK\n');
const diskLayer = (gzip: boolean, name = 'disk.img', data = DISK): LayerSpec => ({
  gzip,
  files: [
    { name: 'disk/', type: 'directory' },
    { name: `disk/${name}`, data },
  ],
});

/** Write `parts` to a fresh folder and extract; the folder is returned to check what is left in it. */
async function extract(t: Tap, parts: ArchiveParts | Buffer, opts: { signal?: AbortSignal } = {}) {
  const dir = t.testdir({});
  const archive = path.join(dir, 'image.tar');
  if (Buffer.isBuffer(parts)) await fsp.writeFile(archive, parts);
  else await writeArchive(archive, parts);
  const out = path.join(dir, 'out.disk');
  return { dir, out, archive, result: extractDiskFromArchive(archive, out, opts) };
}

/** The extraction fails with `code` (and `message`), leaving only the archive behind. */
async function fails(t: Tap, parts: ArchiveParts | Buffer, code: string, message?: RegExp): Promise<void> {
  const { dir, result } = await extract(t, parts);
  await t.rejects(result, message === undefined ? { code } : { code, message });
  t.same(readdirSync(dir), ['image.tar'], 'no output or temp file is left');
}

t.test('isTarArchive tells tars from disk files', async (t) => {
  const dir = t.testdir({ 'plain.img': 'hello', 'empty.img': '' });
  await writeArchive(path.join(dir, 'a.tar'), [{ name: 'x', data: Buffer.from('y') }]);
  t.equal(await isTarArchive(path.join(dir, 'a.tar')), true);
  t.equal(await isTarArchive(path.join(dir, 'plain.img')), false);
  t.equal(await isTarArchive(path.join(dir, 'empty.img')), false);
  await t.rejects(isTarArchive(path.join(dir, 'missing')), { code: 'ENOENT' });
});

t.test('OCI archives with plain and gzip layers', async (t) => {
  for (const gzip of [false, true]) {
    const parts = await ociArchive([diskLayer(gzip, 'disk.qcow2')], { annotations: { 'org.opencontainers.image.ref.name': 'quay.io/x/disk:1' } });
    const { out, dir, result } = await extract(t, parts);
    t.same(
      await result,
      { kind: 'oci-archive', digest: parts.manifestDigest, names: ['quay.io/x/disk:1'], diskFileName: 'disk.qcow2', size: DISK.length },
      `gzip ${gzip}`,
    );
    t.ok((await fsp.readFile(out)).equals(DISK), 'the disk is extracted byte for byte');
    t.same(readdirSync(dir).sort(), ['image.tar', 'out.disk'], 'no temp file is left');
  }
});

t.test('OCI names: io.containerd.image.name first; a bare tag in ref.name is no name', async (t) => {
  const both = await ociArchive([diskLayer(false)], {
    annotations: { 'io.containerd.image.name': 'docker.io/library/debian:12', 'org.opencontainers.image.ref.name': '12' },
  });
  t.same((await (await extract(t, both)).result).names, ['docker.io/library/debian:12']);
  const tagOnly = await ociArchive([diskLayer(false)], { annotations: { 'org.opencontainers.image.ref.name': 'latest' } });
  t.same((await (await extract(t, tagOnly)).result).names, []);
  const none = await ociArchive([diskLayer(false)]);
  t.same((await (await extract(t, none)).result).names, []);
  const bad = await ociArchive([diskLayer(false)], { annotations: { 'io.containerd.image.name': 'Not A Name' } });
  t.same((await (await extract(t, bad)).result).names, [], 'an invalid name is dropped');
});

t.test('OCI: a nested index picks the linux/amd64 manifest', async (t) => {
  const parts = await ociArchive([diskLayer(true)], { platforms: ['linux/arm64', 'linux/amd64'] });
  const { result } = await extract(t, parts);
  t.equal((await result).digest, parts.manifestDigest);
  if (process.arch === 'x64') {
    await fails(
      t,
      await ociArchive([diskLayer(true)], { platforms: ['linux/arm64', 'linux/s390x'] }),
      'IMAGE_ARCHIVE_INVALID',
      /no linux\/amd64 image \(it has linux\/arm64, linux\/s390x\)/,
    );
  }
});

t.test('docker 25+ archives (OCI layout plus manifest.json) are read through the index', async (t) => {
  const parts = await ociArchive([diskLayer(false)], { annotations: { 'io.containerd.image.name': 'docker.io/library/x:1' }, dockerTags: ['x:1'] });
  const { result } = await extract(t, parts);
  t.match(await result, { kind: 'oci-archive', digest: parts.manifestDigest, names: ['docker.io/library/x:1'] });
});

t.test('docker archives: plain, gzip and symlinked layers; the digest is the config', async (t) => {
  for (const [gzip, viaSymlinks] of [
    [false, false],
    [true, false],
    [false, true],
  ] as const) {
    const parts = await dockerArchive([diskLayer(gzip)], { repoTags: ['localhost/disk:2', 'disk:3'], viaSymlinks });
    const { out, result } = await extract(t, parts);
    t.same(await result, {
      kind: 'docker-archive',
      digest: parts.configDigest,
      names: ['localhost/disk:2', 'disk:3'],
      diskFileName: 'disk.img',
      size: DISK.length,
    });
    t.ok((await fsp.readFile(out)).equals(DISK));
  }
  const untagged = await dockerArchive([diskLayer(false)]);
  t.same((await (await extract(t, untagged)).result).names, [], 'RepoTags null: no names');
});

t.test('layers apply in order: later files override, whiteouts and opaque folders remove', async (t) => {
  const a = diskBytes('A');
  const b = diskBytes('B');
  for (const make of [ociArchive, dockerArchive]) {
    const whiteout = await make([
      {
        files: [
          { name: 'disk/a.img', data: a },
          { name: 'disk/b.img', data: b },
        ],
      },
      { gzip: true, files: [{ name: './disk/.wh.b.img', data: Buffer.alloc(0) }] },
    ]);
    let r = await extract(t, whiteout);
    t.equal((await r.result).diskFileName, 'a.img', `${make.name}: a whiteout removes a lower file`);
    const opaque = await make([
      {
        files: [
          { name: 'disk/old.img', data: a },
          { name: 'disk/older.img', data: a },
        ],
      },
      { files: [{ name: '/disk/.wh..wh..opq' }, { name: '/disk/new.qcow2', data: b }] },
    ]);
    r = await extract(t, opaque);
    t.equal((await r.result).diskFileName, 'new.qcow2', `${make.name}: an opaque marker hides lower files, not its own layer's`);
    const override = await make([{ files: [{ name: 'disk/x.img', data: a }] }, { files: [{ name: 'disk/x.img', data: b }] }]);
    r = await extract(t, override);
    await r.result;
    t.ok((await fsp.readFile(r.out)).equals(b), `${make.name}: the upper layer's file wins`);
    const gone = await make([{ files: [{ name: 'disk/x.img', data: a }] }, { files: [{ name: '.wh.disk' }] }]);
    await fails(t, await Promise.resolve(gone), 'IMAGE_NO_DISK', /no disk file in \/disk\//);
  }
});

t.test('what is not exactly one regular file in /disk/ is IMAGE_NO_DISK', async (t) => {
  const target = { name: 'data/real.img', data: DISK };
  await fails(
    t,
    await ociArchive([{ files: [target, { name: 'disk/disk.img', type: 'symlink', linkname: '../data/real.img' }] }]),
    'IMAGE_NO_DISK',
    /disk\.img \(a symlink to \.\.\/data\/real\.img\) is not a regular file; vmlet does not follow links/,
  );
  await fails(
    t,
    await ociArchive([
      {
        files: [
          { name: 'disk/', type: 'directory' },
          { name: 'etc/hostname', data: Buffer.from('x') },
        ],
      },
    ]),
    'IMAGE_NO_DISK',
    /no disk file in \/disk\/ \(found: nothing\)/,
  );
  await fails(
    t,
    await ociArchive([
      {
        files: [
          { name: 'disk/sub/', type: 'directory' },
          { name: 'disk/sub/x.img', data: DISK },
        ],
      },
    ]),
    'IMAGE_NO_DISK',
    /found: sub\//,
  );
  await fails(
    t,
    await dockerArchive([
      {
        files: [
          { name: 'disk/a.qcow2', data: DISK },
          { name: 'disk/b.img', data: DISK },
        ],
      },
    ]),
    'IMAGE_NO_DISK',
    /2 entries in \/disk\/ \(a\.qcow2, b\.img\)/,
  );
  await fails(
    t,
    await ociArchive([
      {
        files: [
          { name: 'disk/a.img', data: DISK },
          { name: 'disk/b.img', type: 'link', linkname: 'disk/a.img' },
        ],
      },
    ]),
    'IMAGE_NO_DISK',
    /b\.img \(a hard link to disk\/a\.img\)/,
  );
  await fails(
    t,
    await ociArchive([{ files: [{ name: 'disk', type: 'symlink', linkname: '/elsewhere' }] }]),
    'IMAGE_NO_DISK',
    /\/disk is a symlink, not a folder/,
  );
  await fails(t, await ociArchive([{ files: [{ name: 'disk/../disk.img', data: DISK }] }]), 'IMAGE_NO_DISK');
});

t.test('a blob that does not match its digest is IMAGE_DIGEST_MISMATCH naming it', async (t) => {
  const flip = (at: number) => (d: Buffer) => {
    const c = Buffer.from(d);
    c[at] = (c[at] ?? 0) ^ 0xff;
    return c;
  };
  for (const gzip of [false, true]) {
    const parts = await ociArchive([diskLayer(gzip)]);
    const layer = parts.layerPaths[0] ?? '';
    changeEntry(parts, layer, flip(gzip ? 40 : 2000));
    await fails(t, parts, 'IMAGE_DIGEST_MISMATCH', new RegExp(`layer sha256:${layer.slice('blobs/sha256/'.length)} hashes to sha256:`));
  }
  const manifest = await ociArchive([diskLayer(false)]);
  changeEntry(manifest, `blobs/sha256/${manifest.manifestDigest.slice(7)}`, (d) => Buffer.concat([d, Buffer.from(' ')]));
  await fails(t, manifest, 'IMAGE_DIGEST_MISMATCH', new RegExp(`the manifest of index.json ${manifest.manifestDigest} hashes to`));
  const config = await ociArchive([diskLayer(false)]);
  changeEntry(config, `blobs/sha256/${config.configDigest.slice(7)}`, (d) => Buffer.from(d.toString().replace('amd64', 'arm64')));
  await fails(t, config, 'IMAGE_DIGEST_MISMATCH', /the config of manifest sha256:\w+ sha256:\w+ hashes to/);
  // docker: the config's file name is its digest, and diff_ids are the uncompressed layers' digests.
  const dconfig = await dockerArchive([diskLayer(false)]);
  changeEntry(dconfig, `${dconfig.configDigest.slice(7)}.json`, (d) => Buffer.from(d.toString().replace('amd64', 'arm64')));
  await fails(t, dconfig, 'IMAGE_DIGEST_MISMATCH', /the config \w+\.json hashes to/);
  for (const gzip of [false, true]) {
    const dlayer = await dockerArchive([diskLayer(gzip)]);
    const plain = await tarBuffer(diskLayer(false).files);
    changeEntry(dlayer, dlayer.layerPaths[0] ?? '', () => {
      const c = Buffer.from(plain);
      c[3000] = 0x55;
      return gzip ? (execFileSync('gzip', ['-c'], { input: c }) as Buffer) : c;
    });
    await fails(t, dlayer, 'IMAGE_DIGEST_MISMATCH', /layer \w+\/layer\.tar unpacks to content that hashes to sha256:\w+, not its diff_id/);
  }
  // OCI configs have diff_ids too: a layer whose blob digest is right but whose content is not what the config says.
  const ociDiff = await ociArchive([diskLayer(true)], { diffIds: [sha256(Buffer.from('something else'))] });
  await fails(t, ociDiff, 'IMAGE_DIGEST_MISMATCH', /unpacks to content that hashes to sha256:\w+, not its diff_id/);
});

t.test('damaged or foreign archives are IMAGE_ARCHIVE_INVALID and leave nothing', async (t) => {
  const whole = await tarBuffer((await ociArchive([diskLayer(false)])).entries);
  for (const cut of [1, 100, 700, 2048 + 100, Math.floor(whole.length / 2), whole.length - 2000]) {
    await fails(t, whole.subarray(0, cut), 'IMAGE_ARCHIVE_INVALID', /is not a whole tar archive: Unexpected end of data/);
  }
  await fails(t, Buffer.alloc(0), 'IMAGE_ARCHIVE_INVALID', /neither index.json \(OCI layout\) nor manifest.json/);
  await fails(t, Buffer.from('this is not a tar archive at all\n'.repeat(64)), 'IMAGE_ARCHIVE_INVALID', /Invalid tar header/);
  await fails(t, Buffer.concat([whole, Buffer.from('garbage'.repeat(100))]), 'IMAGE_ARCHIVE_INVALID', /Invalid tar header/);
  const garbled = Buffer.from(whole);
  const header = whole.indexOf('index.json');
  garbled.fill(0x41, header + 100, header + 200);
  await fails(t, garbled, 'IMAGE_ARCHIVE_INVALID', /Invalid tar header/);
  await fails(t, await tarBuffer([{ name: 'README', data: Buffer.from('hello') }]), 'IMAGE_ARCHIVE_INVALID', /neither index.json/);
  const noLayer = await ociArchive([diskLayer(false)]);
  noLayer.entries = noLayer.entries.filter((e) => e.name !== noLayer.layerPaths[0]);
  await fails(t, noLayer, 'IMAGE_ARCHIVE_INVALID', /layer sha256:\w+ \(blobs\/sha256\/\w+\) is missing/);
  const noManifest = await ociArchive([diskLayer(false)]);
  noManifest.entries = noManifest.entries.filter((e) => e.name !== `blobs/sha256/${noManifest.manifestDigest.slice(7)}`);
  await fails(t, noManifest, 'IMAGE_ARCHIVE_INVALID', /the manifest of index.json \(blobs\/sha256\/\w+\) is missing/);
  const dockerNoLayer = await dockerArchive([diskLayer(false)]);
  dockerNoLayer.entries = dockerNoLayer.entries.filter((e) => e.name !== dockerNoLayer.layerPaths[0]);
  await fails(t, dockerNoLayer, 'IMAGE_ARCHIVE_INVALID', /layer \w+\/layer\.tar is missing/);
  const badJson = await ociArchive([diskLayer(false)]);
  changeEntry(badJson, 'index.json', () => Buffer.from('{ not json'));
  await fails(t, badJson, 'IMAGE_ARCHIVE_INVALID', /index.json is not valid JSON/);
  const gzipLie = await ociArchive([{ ...diskLayer(false), mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }]);
  await fails(t, gzipLie, 'IMAGE_ARCHIVE_INVALID', /is not a valid gzip-compressed tar: incorrect header check/);
  const two = await ociArchive([diskLayer(false)]);
  const other = await ociArchive([diskLayer(false, 'other.img')]);
  const index = JSON.parse(two.entries.find((e) => e.name === 'index.json')?.data?.toString() ?? '{}') as { manifests: unknown[] };
  const otherIndex = JSON.parse(other.entries.find((e) => e.name === 'index.json')?.data?.toString() ?? '{}') as { manifests: unknown[] };
  two.entries = [...other.entries.filter((e) => e.name.startsWith('blobs/sha256/')), ...two.entries];
  changeEntry(two, 'index.json', () => Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [...index.manifests, ...otherIndex.manifests] })));
  await fails(t, two, 'IMAGE_ARCHIVE_INVALID', /it holds 2 images/);
});

t.test('zstd and unknown layer media types are IMAGE_LAYER_UNSUPPORTED', async (t) => {
  await fails(t, await ociArchive([{ ...diskLayer(false), mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd' }]), 'IMAGE_LAYER_UNSUPPORTED', /zstd/);
  await fails(
    t,
    await ociArchive([{ ...diskLayer(false), mediaType: 'application/vnd.example.layer' }]),
    'IMAGE_LAYER_UNSUPPORTED',
    /media type application\/vnd.example.layer/,
  );
});

t.test('zero blocks of the disk become holes', async (t) => {
  const big = diskBytes('HEAD', 4 * 1024 * 1024);
  big.write('TAIL', big.length - 4);
  const { out, result } = await extract(t, await ociArchive([diskLayer(true, 'big.img', big)]));
  t.equal((await result).size, big.length);
  t.ok((await fsp.readFile(out)).equals(big));
  t.ok(statSync(out).blocks * 512 < 1024 * 1024, `allocated ${statSync(out).blocks * 512} bytes of ${big.length}`);
});

t.test('an aborted extraction rejects and leaves nothing', async (t) => {
  const ac = new AbortController();
  ac.abort(new Error('stop'));
  const { dir, result } = await extract(t, await ociArchive([diskLayer(false)]), { signal: ac.signal });
  await t.rejects(result, /stop/);
  t.same(readdirSync(dir), ['image.tar']);
});

t.test('real archives from buildah', { skip: containerDiskSkipReason() }, async (t) => {
  const dir = t.testdir({});
  const raw = await testDiskImage(dir);
  const disks = [raw];
  if (which('qemu-img') !== undefined) {
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(dir, 'small.qcow2'), '64M']);
    disks.push(path.join(dir, 'small.qcow2'));
  } else t.comment('qemu-img is not installed: no qcow2 case');
  for (const format of ['oci-archive', 'docker-archive'] as const) {
    for (const disk of disks) {
      const out = path.join(dir, `${format}-${path.basename(disk)}.tar`);
      await buildContainerDisk({ disk, name: 'localhost/vmlet-test-disk:1', format, out });
      t.equal(await isTarArchive(out), true);
      const got = await extractDiskFromArchive(out, `${out}.disk`);
      t.match(
        got,
        { kind: format, names: ['localhost/vmlet-test-disk:1'], diskFileName: path.basename(disk), size: statSync(disk).size },
        `${format} of ${path.basename(disk)}`,
      );
      t.match(got.digest, /^sha256:[0-9a-f]{64}$/);
      t.ok((await fsp.readFile(`${out}.disk`)).equals(await fsp.readFile(disk)), 'the disk comes out byte for byte');
    }
  }
  t.same(
    readdirSync(dir).filter((f) => f.startsWith('.')),
    [],
    'buildah left no storage behind',
  );
});
