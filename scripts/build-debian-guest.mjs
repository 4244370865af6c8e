#!/usr/bin/env node
// Builds the realistic test guest (Debian 12 with systemd, cloud-init, qemu-guest-agent and sshd, a raw ext4 disk plus its kernel and initrd) into .cache/debian-guest/, and does nothing when a valid one is there.
//
// Plain Node with no npm dependencies, like build-guest-image.mjs: scripts/setup.mjs imports it before
// node_modules is guaranteed. Needs root (debootstrap chroots and runs maintainer scripts) and a Debian
// mirror (the one apt uses here). Tools: debootstrap and mke2fs (packages debootstrap, e2fsprogs; installed
// with apt-get when missing), chroot, cp, umount. See docs/test-guest.md, "The Debian guest".
//
//   node scripts/build-debian-guest.mjs [--force] [--out DIR] [--mirror URL]
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildDirs, swapIntoPlace } from './lib/build-dirs.mjs';
import { builderMain } from './lib/builder-cli.mjs';
import { have, runLogged, toolRunner } from './lib/build-tools.mjs';
import { filesAsRecorded } from './lib/cache-files.mjs';
import { withDirLock } from './lib/dir-lock.mjs';
import { fileMeta, readManifest } from './lib/guest-manifest.mjs';
import { eachInode } from './lib/tree-walk.mjs';

/** Bump when the layout of the output changes in a way the recipe hash would not catch. */
const FORMAT = 1;
const SELF = fileURLToPath(import.meta.url);
const DEFAULT_ROOT = path.resolve(path.dirname(SELF), '..');
const SUITE = 'bookworm';
const FALLBACK_MIRROR = 'http://deb.debian.org/debian';
/** Size of disk.raw (sparse: only what the root filesystem holds is allocated). */
const DISK_BYTES = 2 * 1024 * 1024 * 1024;
const ROOT_LABEL = 'vmlet-root';
/** The command line the image is made for (the test helper adds nothing else by default). */
export const DEBIAN_KERNEL_ARGS = 'root=/dev/vda console=ttyS0';

/**
 * Added to debootstrap's minbase (Essential + apt). Only `Depends` are followed, so this is lean:
 * systemd-networkd (in systemd) is what cloud-init renders the network for (no ifupdown, no netplan),
 * the cloud kernel flavour has virtio and is a third of the generic one's size.
 */
const INCLUDE = [
  'systemd-sysv', 'udev', 'dbus', 'systemd-resolved',
  'linux-image-cloud-amd64', 'initramfs-tools',
  'cloud-init', 'qemu-guest-agent', 'openssh-server',
  'iproute2', 'procps', 'sudo', 'e2fsprogs',
  // debootstrap does not resolve virtual packages: python3-cryptography (for cloud-init) depends on
  // python3-cffi-backend-api-{min,max}, which only python3-cffi-backend provides
  'python3-cffi-backend',
];

/** Versions worth a line in the manifest's summary. */
const KEY_PACKAGES = ['systemd', 'cloud-init', 'qemu-guest-agent', 'openssh-server', 'udev', 'python3', 'libc6'];

export class DebianGuestError extends Error {
  /**
   * @param {string} code stable error code
   * @param {string} message short message, without the code
   * @param {unknown} [cause]
   */
  constructor(code, message, cause) {
    super(`${code}: ${message}`, cause === undefined ? undefined : { cause });
    this.name = 'DebianGuestError';
    this.code = code;
  }
}

// ---------------------------------------------------------------------------------------------
// small helpers

/** Runs a tool with an argument array; returns stdout. */
const run = toolRunner({
  missing: (msg, cause) => new DebianGuestError('DEBIAN_GUEST_TOOL_MISSING', msg, cause),
  failed: (msg, cause) => new DebianGuestError('DEBIAN_GUEST_COMMAND_FAILED', msg, cause),
});

/** Runs a command inside the root tree (no mounts needed for what is run there). */
function inTarget(target, args) {
  return run('chroot', [target, ...args]);
}

function isRoot() {
  return process.getuid?.() === 0;
}

function writeFile(target, rel, content, mode = 0o644) {
  const p = path.join(target, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, content, { mode });
  fs.chmodSync(p, mode);
}

const mib = (n) => `${Math.round(n / 1024 / 1024)} MiB`;
const secs = (ms) => Math.round(ms / 100) / 10;

// ---------------------------------------------------------------------------------------------
// host preparation

/** Installs debootstrap and e2fsprogs with apt-get when missing (root only). */
function ensureTools(log) {
  const missing = [['debootstrap', 'debootstrap'], ['e2fsprogs', 'mke2fs']].filter(([, bin]) => !have(bin)).map(([pkg]) => pkg);
  for (const bin of ['chroot', 'cp', 'umount']) {
    if (!have(bin)) throw new DebianGuestError('DEBIAN_GUEST_TOOL_MISSING', `${bin} is not installed`);
  }
  if (missing.length === 0) return;
  log(`installing ${missing.join(' ')} with apt-get`);
  try {
    run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing]);
  } catch {
    run('apt-get', ['update', '-qq']);
    run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing]);
  }
  for (const [pkg, bin] of [['debootstrap', 'debootstrap'], ['e2fsprogs', 'mke2fs']]) {
    if (!have(bin)) throw new DebianGuestError('DEBIAN_GUEST_TOOL_MISSING', `${bin} is still missing after apt-get install ${pkg}`);
  }
}

/**
 * The Debian mirror apt uses on this machine (from /etc/apt/sources.list and sources.list.d, one-line
 * and deb822 formats): the first `deb` source with suite bookworm and component main that is not the
 * security archive. Falls back to deb.debian.org.
 * @param {string} [aptDir]
 */
export function aptMirror(aptDir = '/etc/apt') {
  /** @type {Array<{uri: string, suites: string[], components: string[]}>} */
  const sources = [];
  const files = [path.join(aptDir, 'sources.list')];
  try {
    for (const f of fs.readdirSync(path.join(aptDir, 'sources.list.d')).sort()) files.push(path.join(aptDir, 'sources.list.d', f));
  } catch {
    /* none */
  }
  for (const f of files) {
    let text;
    try {
      text = fs.readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    if (f.endsWith('.sources')) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const field = (name) => {
          const m = new RegExp(`^${name}:[ \\t]*(.*)$`, 'mi').exec(stanza.split('\n').filter((l) => !l.startsWith('#')).join('\n'));
          return m ? m[1].trim().split(/\s+/).filter(Boolean) : [];
        };
        if (!field('Types').includes('deb') || /^Enabled:\s*no/mi.test(stanza)) continue;
        for (const uri of field('URIs')) sources.push({ uri, suites: field('Suites'), components: field('Components') });
      }
    } else if (f.endsWith('.list')) {
      for (const line of text.split('\n')) {
        const m = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)$/.exec(line);
        if (m) sources.push({ uri: m[1], suites: [m[2]], components: m[3].replace(/#.*/, '').trim().split(/\s+/) });
      }
    }
  }
  const hit = sources.find((s) => s.suites.includes(SUITE) && s.components.includes('main') && !/security/.test(s.uri) && /^https?:\/\//.test(s.uri));
  return hit ? hit.uri.replace(/\/+$/, '') : FALLBACK_MIRROR;
}

// ---------------------------------------------------------------------------------------------
// mounts: debootstrap mounts proc, sys and devpts (in a container also binds /dev nodes) inside the
// tree; a killed build leaves them. Nothing under a build directory is removed while a mount is there.

const { unmountAll, removeTree, removeStale } = buildDirs((msg) => new DebianGuestError('DEBIAN_GUEST_MOUNTS_LEFT', msg));

// ---------------------------------------------------------------------------------------------
// cache check

function recipeHash() {
  return crypto.createHash('sha256').update(`format ${FORMAT}\n`).update(fs.readFileSync(SELF)).digest('hex');
}

/**
 * The manifest when `out` holds a complete image made by this recipe, else null. Size and mtime of
 * every file must be as recorded: a disk.raw that was booted (written) is no longer the base image.
 * @param {string} out
 */
export function validDebianGuest(out) {
  const manifest = readManifest(out);
  if (manifest?.format !== FORMAT || manifest.recipe !== recipeHash()) return null;
  return filesAsRecorded(out, [manifest.kernel, manifest.initrd, manifest.disk]) ? manifest : null;
}

// ---------------------------------------------------------------------------------------------
// debootstrap, with its output condensed into progress lines

/** Per-package lines ("I: Retrieving foo 1.2", "I: Unpacking foo...") are counted, not printed. */
const PER_PACKAGE = /^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) (?!Release\b|Packages\b|InRelease\b|the base system|required packages|base packages)\S+/;

async function debootstrap({ target, mirror, cacheDir, log, logFile }) {
  const args = [
    '--variant=minbase', '--arch=amd64', '--components=main', '--merged-usr',
    `--include=${INCLUDE.join(',')}`,
    `--cache-dir=${cacheDir}`,
    SUITE, target, mirror,
  ];
  log(`debootstrap ${SUITE} from ${mirror} (minbase + ${INCLUDE.length} packages and their dependencies)`);
  const started = Date.now();
  /** @type {Record<string, number>} */
  const phaseAt = {};
  const counts = new Map();
  let lastPrint = 0;
  const onLine = (line) => {
    const m = PER_PACKAGE.exec(line);
    if (m) {
      const verb = m[1];
      if (phaseAt[verb] === undefined) phaseAt[verb] = Date.now() - started;
      counts.set(verb, (counts.get(verb) ?? 0) + 1);
      if (Date.now() - lastPrint > 15_000) {
        lastPrint = Date.now();
        log(`debootstrap: ${verb.toLowerCase()} packages (${counts.get(verb)} so far, ${secs(Date.now() - started)}s)`);
      }
      return;
    }
    if (/^[IWE]: /.test(line)) log(`debootstrap: ${line.slice(3)}`);
  };
  const couldNotRun = (_cmd, e) => new DebianGuestError('DEBIAN_GUEST_TOOL_MISSING', 'debootstrap could not run', e);
  const { code, signal } = await runLogged(['debootstrap', ...args], { logFile, onLine, couldNotRun });
  if (code === 0) {
    return { seconds: secs(Date.now() - started), downloadSeconds: secs(phaseAt.Extracting ?? phaseAt.Validating ?? 0), packagesRetrieved: counts.get('Retrieving') ?? 0 };
  }
  // debootstrap's own log goes with the tree; keep it next to the progress output
  const dlog = path.join(target, 'debootstrap', 'debootstrap.log');
  try {
    fs.appendFileSync(logFile, `--- ${dlog} ---\n${fs.readFileSync(dlog, 'utf8')}`);
  } catch {
    /* debootstrap did not get that far */
  }
  const tail = fs.readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-8).join(' | ');
  throw new DebianGuestError('DEBIAN_GUEST_DEBOOTSTRAP_FAILED', `debootstrap exited with ${code ?? signal} (log: ${logFile}): ${tail}`);
}

// ---------------------------------------------------------------------------------------------
// configuring the tree

const FSTAB = `# <device> <mount point> <type> <options> <dump> <pass>
/dev/vda / ext4 rw,errors=remount-ro 0 1
`;

const HOSTS = `127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
`;

/** cloud-init: only NoCloud (the cidata disk vmlet attaches) and the None fallback; no network probing for other clouds. */
const CLOUD_CFG = `# vmlet test guest: NoCloud only (the "cidata" disk of a cloudInitNoCloud volume), network rendered for systemd-networkd.
datasource_list: [NoCloud, None]
# the image has no locales package; the default (en_US.UTF-8) would fail cloud-config.service
locale: C.UTF-8
system_info:
  network:
    renderers: [networkd]
    activators: [networkd]
`;

/**
 * Host keys are made on first boot, never shipped: every copy of the image would share them.
 * cloud-init's ssh module makes them; this drop-in makes sure sshd starts without cloud-init too.
 */
const SSH_DROPIN = `[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
`;

/** Keeps documentation out of whatever is installed in the guest later. */
const DPKG_NODOC = `path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
`;

/** initramfs: only what finds and mounts an ext4 root on virtio (the default MODULES=most carries every storage driver). */
const INITRAMFS_CONF = `MODULES=list
COMPRESS=gzip
# the chroot cannot probe the root device; named here, the fsck hook puts fsck.ext4 into the initramfs
FSTYPE=ext4
`;
const INITRAMFS_MODULES = ['virtio_pci', 'virtio_blk', 'virtio_scsi', 'virtio_net', 'virtio_console', 'ext4', 'crc32c_generic'];

/** Removes what a guest never reads: docs, man pages, translations, apt's caches, logs of the build. */
function slim(target) {
  let removed = 0;
  const rm = (p) => {
    try {
      const st = fs.lstatSync(p);
      removed += st.isDirectory() ? 0 : st.size;
      if (st.isDirectory()) {
        for (const n of fs.readdirSync(p)) rm(path.join(p, n));
      }
      fs.rmSync(p, { recursive: true, force: true });
    } catch {
      /* gone */
    }
  };
  const under = (rel, keep = () => false) => {
    const dir = path.join(target, rel);
    let names = [];
    try {
      names = fs.readdirSync(dir);
    } catch {
      return;
    }
    for (const n of names) if (!keep(n)) rm(path.join(dir, n));
  };
  // /usr/share/doc/PKG/copyright stays
  const docs = path.join(target, 'usr/share/doc');
  for (const pkg of fs.existsSync(docs) ? fs.readdirSync(docs) : []) {
    const d = path.join(docs, pkg);
    if (!fs.lstatSync(d).isDirectory()) continue;
    for (const n of fs.readdirSync(d)) if (n !== 'copyright') rm(path.join(d, n));
  }
  under('usr/share/man');
  under('usr/share/info');
  under('usr/share/lintian');
  under('usr/share/locale', (n) => n === 'locale.alias');
  under('var/cache/apt', (n) => n === 'archives');
  under('var/cache/apt/archives', (n) => n === 'partial' || n === 'lock');
  under('var/lib/apt/lists', (n) => n === 'partial' || n === 'lock');
  under('var/cache/debconf', (n) => !n.endsWith('-old'));
  under('var/log', (n) => n === 'apt' || !/\.log$/.test(n));
  under('var/log/apt');
  rm(path.join(target, 'debootstrap'));
  return removed;
}

function configure(target, log) {
  log('configuring the guest: fstab, hostname, cloud-init (NoCloud), serial getty, networkd, sshd, slim initramfs');
  writeFile(target, 'etc/fstab', FSTAB);
  writeFile(target, 'etc/hostname', 'debian\n');
  writeFile(target, 'etc/hosts', HOSTS);
  writeFile(target, 'etc/default/locale', 'LANG=C.UTF-8\n');
  // systemd makes a fresh machine id on first boot (an empty file, not a missing one, keeps / writable-first-boot semantics)
  writeFile(target, 'etc/machine-id', '', 0o444);
  fs.rmSync(path.join(target, 'var/lib/dbus/machine-id'), { force: true });
  writeFile(target, 'etc/cloud/cloud.cfg.d/90_vmlet.cfg', CLOUD_CFG);
  writeFile(target, 'etc/systemd/system/ssh.service.d/vmlet-hostkeys.conf', SSH_DROPIN);
  for (const f of fs.readdirSync(path.join(target, 'etc/ssh'))) {
    if (/^ssh_host_.*key(\.pub)?$/.test(f)) fs.rmSync(path.join(target, 'etc/ssh', f));
  }
  writeFile(target, 'etc/dpkg/dpkg.cfg.d/01_vmlet-nodoc', DPKG_NODOC);
  // getty on the serial console (the generator would add it for console=ttyS0 anyway; this holds without it)
  inTarget(target, ['systemctl', 'enable', '--quiet', 'serial-getty@ttyS0.service', 'systemd-networkd.service', 'systemd-resolved.service']);
  writeFile(target, 'etc/initramfs-tools/conf.d/vmlet.conf', INITRAMFS_CONF);
  writeFile(target, 'etc/initramfs-tools/modules', `${INITRAMFS_MODULES.join('\n')}\n`);
  const kernels = fs.readdirSync(path.join(target, 'boot')).filter((f) => f.startsWith('vmlinuz-'));
  if (kernels.length !== 1) throw new DebianGuestError('DEBIAN_GUEST_BUILD_FAILED', `expected one kernel in /boot, found ${kernels.join(', ') || 'none'}`);
  const kver = kernels[0].slice('vmlinuz-'.length);
  log(`rebuilding the initramfs for ${kver}`);
  inTarget(target, ['update-initramfs', '-u', '-k', kver]);
  const removed = slim(target);
  log(`removed ${mib(removed)} of docs, man pages, translations and apt caches`);
  return kver;
}

/** Bytes of all regular files under `dir` (counting hard links once) and the number of inodes. */
function treeSize(dir) {
  let bytes = 0;
  let inodes = 0;
  eachInode(dir, (ent, st) => {
    inodes++;
    if (ent.isFile()) bytes += st.size;
  });
  return { bytes, inodes };
}

function packageVersions(target) {
  const out = inTarget(target, ['dpkg-query', '-W', '-f', '${Package} ${Version}\n']);
  return Object.fromEntries(out.trim().split('\n').map((l) => l.split(' ')).sort(([a], [b]) => String(a).localeCompare(String(b))));
}

// ---------------------------------------------------------------------------------------------
// the build

async function build(out, opts, log) {
  if (process.arch !== 'x64') throw new DebianGuestError('DEBIAN_GUEST_UNSUPPORTED_HOST', `building the amd64 guest needs an x86_64 host, not ${process.arch}`);
  if (!isRoot()) throw new DebianGuestError('DEBIAN_GUEST_NOT_ROOT', 'debootstrap needs root (it chroots and runs maintainer scripts)');
  ensureTools(log);
  const started = Date.now();
  const mirror = opts.mirror ?? process.env.VMLET_DEBIAN_MIRROR ?? aptMirror();
  const work = `${out}.work-${process.pid}`;
  const tmpOut = `${out}.tmp-${process.pid}`;
  const cacheDir = opts.cacheDir ?? path.join(path.dirname(out), 'debian-guest-debs');
  try {
    removeTree(work);
    removeTree(tmpOut);
    fs.mkdirSync(work, { recursive: true, mode: 0o755 });
    fs.mkdirSync(tmpOut, { recursive: true });
    fs.mkdirSync(cacheDir, { recursive: true });
    const target = path.join(work, 'rootfs');
    fs.mkdirSync(target, { mode: 0o755 });

    const logFile = `${out}.build.log`;
    fs.writeFileSync(logFile, `${new Date().toISOString()} debootstrap ${SUITE} ${mirror} --include=${INCLUDE.join(',')}\n`);
    const boot = await debootstrap({ target, mirror, cacheDir, log, logFile });
    unmountAll(work);
    log(`debootstrap done in ${boot.seconds}s (${boot.packagesRetrieved > 0 ? `${boot.packagesRetrieved} packages downloaded` : 'packages from the cache'}, ${boot.downloadSeconds}s until the first was extracted)`);

    const tConf = Date.now();
    const kver = configure(target, log);
    const packages = packageVersions(target);
    const debianVersion = fs.readFileSync(path.join(target, 'etc/debian_version'), 'utf8').trim();
    const initrdName = `initrd.img-${kver}`;
    fs.copyFileSync(path.join(target, 'boot', `vmlinuz-${kver}`), path.join(tmpOut, 'vmlinuz'));
    fs.copyFileSync(path.join(target, 'boot', initrdName), path.join(tmpOut, 'initrd.img'));
    unmountAll(work);
    const configureSeconds = secs(Date.now() - tConf);

    const tImg = Date.now();
    const tree = treeSize(target);
    log(`making disk.raw: ext4, ${mib(DISK_BYTES)} sparse, from ${mib(tree.bytes)} in ${tree.inodes} inodes`);
    const disk = path.join(tmpOut, 'disk.raw');
    fs.closeSync(fs.openSync(disk, 'w'));
    fs.truncateSync(disk, DISK_BYTES);
    run('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', ROOT_LABEL, '-m', '1', '-E', 'root_owner=0:0', '-d', target, disk]);
    const allocated = fs.statSync(disk).blocks * 512;
    const imageSeconds = secs(Date.now() - tImg);

    fs.chmodSync(disk, 0o444); // the base image: tests boot copies of it
    const manifest = {
      format: FORMAT,
      recipe: recipeHash(),
      builtAt: new Date().toISOString(),
      buildSeconds: secs(Date.now() - started),
      phases: { debootstrapSeconds: boot.seconds, downloadSeconds: boot.downloadSeconds, configureSeconds, imageSeconds },
      suite: SUITE,
      mirror,
      debianVersion,
      kernelVersion: kver,
      kernelArgs: DEBIAN_KERNEL_ARGS,
      rootLabel: ROOT_LABEL,
      rootfs: { bytes: tree.bytes, inodes: tree.inodes },
      kernel: { format: 'bzImage', ...fileMeta(tmpOut, 'vmlinuz') },
      initrd: fileMeta(tmpOut, 'initrd.img'),
      disk: { format: 'raw', filesystem: 'ext4', allocatedBytes: allocated, ...fileMeta(tmpOut, 'disk.raw', false) },
      include: INCLUDE,
      versions: Object.fromEntries(KEY_PACKAGES.filter((p) => packages[p]).map((p) => [p, packages[p]])),
      packageCount: Object.keys(packages).length,
      packages,
    };
    fs.writeFileSync(path.join(tmpOut, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);

    swapIntoPlace(tmpOut, out);
    log(`Debian guest ready in ${out}: Debian ${debianVersion}, kernel ${kver}, ${manifest.packageCount} packages, disk ${mib(allocated)} used of ${mib(DISK_BYTES)}, initrd ${mib(manifest.initrd.size)}, ${manifest.buildSeconds}s`);
    return manifest;
  } catch (e) {
    if (e instanceof DebianGuestError) throw e;
    throw new DebianGuestError('DEBIAN_GUEST_BUILD_FAILED', e instanceof Error ? e.message : String(e), e);
  } finally {
    removeTree(work);
    removeTree(tmpOut);
  }
}

/**
 * Makes sure `out` holds a valid Debian guest, building it when missing, stale or `force`d. When a build
 * fails, its message is written to `<out>.error` (removed by the next good build) so that tests can say
 * why they skip.
 * @param {{root?: string, out?: string, force?: boolean, mirror?: string, cacheDir?: string, log?: (msg: string) => void}} [opts]
 * @returns {Promise<{disk: string, kernel: string, initrd: string, kernelArgs: string, manifest: Record<string, any>}>}
 */
export async function ensureDebianGuest(opts = {}) {
  const root = opts.root ?? DEFAULT_ROOT;
  const out = path.resolve(root, opts.out ?? path.join('.cache', 'debian-guest'));
  const log = opts.log ?? ((msg) => process.stderr.write(`debian-guest: ${msg}\n`));
  removeStale(out, { lock: true });
  const result = (manifest) => ({
    disk: path.join(out, 'disk.raw'),
    kernel: path.join(out, 'vmlinuz'),
    initrd: path.join(out, 'initrd.img'),
    kernelArgs: manifest.kernelArgs,
    manifest,
  });
  if (!opts.force) {
    const m = validDebianGuest(out);
    if (m) return result(m);
  }
  fs.mkdirSync(path.dirname(out), { recursive: true });
  return withDirLock(`${out}.lock`, { what: 'Debian guest build', timeoutMs: 60 * 60 * 1000, pollMs: 1000, log, timeoutError: (pid) => new DebianGuestError('DEBIAN_GUEST_LOCK_TIMEOUT', `another build (pid ${pid}) holds ${out}.lock`) }, async () => {
    removeStale(out, { lock: true });
    if (!opts.force) {
      const m = validDebianGuest(out); // another process may have built it while we waited
      if (m) return result(m);
    }
    log(opts.force ? 'rebuilding the Debian guest (--force)' : `building the Debian guest into ${out} (a few minutes)`);
    try {
      const m = await build(out, opts, log);
      fs.rmSync(`${out}.error`, { force: true });
      return result(m);
    } catch (e) {
      fs.writeFileSync(`${out}.error`, `${new Date().toISOString()} ${e instanceof Error ? e.message : String(e)}\n`);
      throw e;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// command line

if (process.argv[1] && path.resolve(process.argv[1]) === SELF) {
  await builderMain({
    args: process.argv.slice(2),
    usage: 'node scripts/build-debian-guest.mjs [--force] [--out DIR] [--mirror URL]',
    prefix: 'debian-guest',
    ensure: (o) => ensureDebianGuest({ root: DEFAULT_ROOT, ...o }),
    summary: (r) => ({ disk: r.disk, kernel: r.kernel, initrd: r.initrd, kernelArgs: r.kernelArgs, debianVersion: r.manifest.debianVersion, kernelVersion: r.manifest.kernelVersion, buildSeconds: r.manifest.buildSeconds }),
  });
}
