// The image's base layer: a Debian bookworm minbase with QEMU and the node tools, bootstrapped by mmdebstrap from the host's Debian mirror and cached as an OCI archive keyed by the package list and the mirror.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildahStore, have, run, tempDir } from './image-buildah.mjs';
import { ImageBuildError } from './image-error.mjs';
import { imageSourceLines, readHostSources, SUITE } from './image-sources.mjs';
import { withDirLock } from './dir-lock.mjs';

const SELF = fileURLToPath(import.meta.url);

/**
 * What the image needs beyond minbase, installed without recommends: QEMU with the firmware that q35 with
 * -nodefaults and virtio-net load (SeaBIOS, iPXE's virtio ROM), the network tools the daemon runs in pod
 * network namespaces, genisoimage for cloud-init ISOs, and CA certificates.
 */
export const PACKAGES = ['qemu-system-x86', 'seabios', 'ipxe-qemu', 'iproute2', 'nftables', 'genisoimage', 'ca-certificates'];

/** dpkg filters: no docs (but the copyright files), man pages, info pages or translations. */
const DPKG_FILTERS = [
  'path-exclude=/usr/share/man/*',
  'path-exclude=/usr/share/info/*',
  'path-exclude=/usr/share/doc/*',
  'path-include=/usr/share/doc/*/copyright',
  'path-exclude=/usr/share/locale/*',
  'path-exclude=/usr/share/lintian/*',
  'path-exclude=/usr/share/bug/*',
];

/** The unprivileged user QEMU runs as in launcher pods (docs/cluster-mode.md: uid/gid 107). */
export const QEMU_UID = 107;

/** Where the shared libraries live in the image (merged /usr: /lib points to /usr/lib). */
const LIB_DIRS = ['usr/lib/x86_64-linux-gnu', 'lib/x86_64-linux-gnu', 'usr/lib', 'lib', 'lib64', 'usr/lib64'];

/** The apt source lines the base is built from: the host's Debian mirror, bookworm suites. */
export function baseSources() {
  const lines = imageSourceLines(readHostSources());
  if (!lines.length) throw new ImageBuildError('IMAGE_NO_MIRROR', 'no Debian mirror (a URI ending in /debian) in /etc/apt/sources.list or /etc/apt/sources.list.d/');
  return lines;
}

/** The cache key of the base: the package list, the dpkg filters, the mirror and this module's text. */
export function baseKey(sources) {
  const h = crypto.createHash('sha256');
  h.update(JSON.stringify({ suite: SUITE, packages: PACKAGES, filters: DPKG_FILTERS, sources, uid: QEMU_UID }));
  h.update(fs.readFileSync(SELF));
  return h.digest('hex').slice(0, 16);
}

/**
 * The cached base archive for the current package list and mirror, bootstrapping it first when missing
 * (a few minutes). Returns the archive, its image reference and the shared libraries it holds.
 * @param {{ cacheDir: string, log: (msg: string) => void }} o
 * @returns {Promise<{ archive: string, ref: string, key: string, libs: string[] }>}
 */
export async function ensureBase(o) {
  const sources = baseSources();
  const key = baseKey(sources);
  const archive = path.join(o.cacheDir, `vmlet-base-${key}.oci.tar`);
  const meta = `${archive}.json`;
  const ref = `localhost/vmlet-base:${key}`;
  const cached = () => {
    try {
      const m = JSON.parse(fs.readFileSync(meta, 'utf8'));
      const st = fs.statSync(archive);
      return m.key === key && m.size === st.size ? { archive, ref, key, libs: /** @type {string[]} */ (m.libs) } : null;
    } catch {
      return null;
    }
  };
  const hit = cached();
  if (hit) return hit;
  fs.mkdirSync(o.cacheDir, { recursive: true });
  return withDirLock(
    path.join(o.cacheDir, 'base.lock'),
    {
      what: 'image base build',
      timeoutMs: 30 * 60 * 1000,
      pollMs: 1000,
      log: o.log,
      timeoutError: (pid) => new ImageBuildError('IMAGE_LOCK_TIMEOUT', `another build (pid ${pid}) holds ${o.cacheDir}/base.lock`),
    },
    async () => {
      const again = cached();
      if (again) return again;
      const libs = await buildBase({ archive, ref, sources, log: o.log });
      fs.writeFileSync(meta, `${JSON.stringify({ key, ref, sources, packages: PACKAGES, size: fs.statSync(archive).size, libs, builtAt: new Date().toISOString() }, null, 2)}\n`);
      for (const n of fs.readdirSync(o.cacheDir)) if (/^vmlet-base-[0-9a-f]{16}\.oci\.tar(\.json)?$/.test(n) && !n.includes(key)) fs.rmSync(path.join(o.cacheDir, n), { force: true });
      return { archive, ref, key, libs };
    },
  );
}

/** mmdebstrap → rootfs tar → buildah (user qemu, no logs) → OCI archive; returns the shared-library paths in it. */
async function buildBase(o) {
  if (!have('mmdebstrap')) throw new ImageBuildError('IMAGE_TOOL_MISSING', 'mmdebstrap is not installed (apt-get install mmdebstrap)');
  if (process.getuid?.() !== 0) throw new ImageBuildError('IMAGE_NOT_ROOT', 'bootstrapping the base needs root (mmdebstrap in root mode, buildah)');
  const t0 = Date.now();
  const tmp = tempDir('base');
  const store = buildahStore(path.join(tmp, 'buildah'));
  try {
    const rootfs = path.join(tmp, 'rootfs.tar');
    o.log(`bootstrapping Debian ${SUITE} with ${PACKAGES.join(', ')} from ${o.sources[0]}`);
    await run('mmdebstrap', [
      '--variant=minbase',
      '--mode=root',
      '--format=tar',
      `--include=${PACKAGES.join(',')}`,
      '--aptopt=APT::Install-Recommends "false"',
      '--aptopt=APT::Install-Suggests "false"',
      ...DPKG_FILTERS.map((f) => `--dpkgopt=${f}`),
      SUITE,
      rootfs,
      ...o.sources,
    ]);
    const listing = (await run('tar', ['-tf', rootfs])).split('\n').map((p) => p.replace(/^\.\//, ''));
    const libs = listing.filter((p) => LIB_DIRS.some((d) => p.startsWith(`${d}/`)) && /\.so(\.\d+)*$/.test(p)).sort();
    o.log(`bootstrapped in ${Math.round((Date.now() - t0) / 1000)} s; importing into buildah`);
    const cid = (await store.b('from', '--pull-never', 'scratch')).trim();
    await store.b('add', cid, rootfs, '/');
    await store.runIn(cid, ['groupadd', '--system', '--gid', String(QEMU_UID), 'qemu']);
    await store.runIn(cid, ['useradd', '--system', '--uid', String(QEMU_UID), '--gid', String(QEMU_UID), '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', 'qemu']);
    // logs and caches of the bootstrap (mmdebstrap already removed apt's lists and archives)
    await store.runIn(cid, ['find', '/var/log', '/var/cache/debconf', '/var/cache/ldconfig', '-type', 'f', '-delete']);
    await store.b('config', '--env', 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', cid);
    await store.b('commit', '--quiet', cid, o.ref);
    await store.b('push', '--quiet', o.ref, `oci-archive:${o.archive}.tmp-${process.pid}:${o.ref}`);
    fs.renameSync(`${o.archive}.tmp-${process.pid}`, o.archive);
    o.log(`base image ${path.basename(o.archive)} (${Math.round(fs.statSync(o.archive).size / 2 ** 20)} MiB) in ${Math.round((Date.now() - t0) / 1000)} s`);
    return libs;
  } finally {
    store.close();
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.rmSync(`${o.archive}.tmp-${process.pid}`, { force: true });
  }
}
