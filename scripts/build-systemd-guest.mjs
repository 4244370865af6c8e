#!/usr/bin/env node
// Derives the systemd test guest (the Debian guest plus QEMU, nftables and the other packages a vmlet node needs, with cloud-init off and the harness's share mounts in fstab) into .cache/systemd-guest/, and does nothing when a valid one is there.
//
// Plain Node with no npm dependencies, like build-debian-guest.mjs (which it calls first: the base image
// is built when missing). Needs root: it loop-mounts a copy of the Debian guest's disk.raw and runs apt-get
// in a chroot on it, against the mirror the Debian guest came from. Tools: cp, mount, umount, chroot,
// e2fsck, resize2fs, fstrim (util-linux, e2fsprogs). test/support/systemd-guest.ts boots the result.
//
//   node scripts/build-systemd-guest.mjs [--force] [--out DIR] [--mirror URL]
//
// VMLET_SKIP_SYSTEMD_GUEST=1 tells the test helper not to build it (its tests then skip when it is missing).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureDebianGuest } from './build-debian-guest.mjs';
import { buildDirs, swapIntoPlace } from './lib/build-dirs.mjs';
import { builderMain } from './lib/builder-cli.mjs';
import { have, runLogged, toolRunner } from './lib/build-tools.mjs';
import { filesAsRecorded } from './lib/cache-files.mjs';
import { withDirLock } from './lib/dir-lock.mjs';
import { fileMeta, imageFiles, readManifest } from './lib/guest-manifest.mjs';

/** Bump when the layout of the output changes in a way the recipe hash would not catch. */
const FORMAT = 1;
const SELF = fileURLToPath(import.meta.url);
const DEFAULT_ROOT = path.resolve(path.dirname(SELF), '..');
/**
 * Size of disk.raw. The base has 2 GiB with ~1.5 GiB free; the guest also holds an installed copy
 * of vmlet (with node_modules, ~300 MiB) and the disks of nested VMs. Sparse, and booted through a
 * qcow2 overlay, so the headroom costs nothing until it is written.
 */
const DISK_BYTES = 4 * 1024 * 1024 * 1024;

/** What a vmlet node runs (QEMU, nft, ip), with `Depends` only: qemu-system-x86 brings seabios and ipxe-qemu, not the GUI. */
export const SYSTEMD_GUEST_PACKAGES = ['qemu-system-x86', 'qemu-utils', 'nftables', 'iproute2', 'procps'];
/** Versions worth a line in the manifest's summary. */
const KEY_PACKAGES = ['qemu-system-x86', 'qemu-utils', 'seabios', 'ipxe-qemu', 'nftables', 'iproute2', 'procps', 'systemd', 'qemu-guest-agent', 'linux-image-cloud-amd64'];

/** Where the test harness's read-only disks are mounted (by filesystem label; the harness makes the filesystems). */
export const SYSTEMD_GUEST_SHARES = [
  { label: 'vmlet-src', mountPoint: '/mnt/vmlet-src', holds: 'the project tree' },
  { label: 'vmlet-host', mountPoint: '/mnt/vmlet-host', holds: "the host's node binary" },
];

export class SystemdGuestError extends Error {
  /**
   * @param {string} code stable error code
   * @param {string} message short message, without the code
   * @param {unknown} [cause]
   */
  constructor(code, message, cause) {
    super(`${code}: ${message}`, cause === undefined ? undefined : { cause });
    this.name = 'SystemdGuestError';
    this.code = code;
  }
}

// ---------------------------------------------------------------------------------------------
// small helpers

/** Runs a tool with an argument array; returns stdout. `okCodes`: exit codes that are not failures (e2fsck's 1 = "fixed"). */
const run = toolRunner({
  okCodes: [0],
  missing: (msg, cause) => new SystemdGuestError('SYSTEMD_GUEST_TOOL_MISSING', msg, cause),
  failed: (msg, cause) => new SystemdGuestError('SYSTEMD_GUEST_COMMAND_FAILED', msg, cause),
});

function writeFile(target, rel, content, mode = 0o644) {
  const p = path.join(target, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, content, { mode });
  fs.chmodSync(p, mode);
}

const sha256 = (data) => crypto.createHash('sha256').update(data).digest('hex');
const mib = (n) => `${Math.round(n / 1024 / 1024)} MiB`;
const secs = (ms) => Math.round(ms / 100) / 10;

// ---------------------------------------------------------------------------------------------
// mounts: the disk copy is loop-mounted at WORK/root with proc, sys, dev and the deb cache below it.
// A killed build leaves them; nothing under a build directory is removed while a mount is there.

const { unmountAll, removeTree, removeStale } = buildDirs((msg) => new SystemdGuestError('SYSTEMD_GUEST_MOUNTS_LEFT', msg));

// ---------------------------------------------------------------------------------------------
// cache check

/** The base image's manifest.json, hashed: a rebuilt Debian guest makes this one stale. Null when there is none. */
function baseManifestHash(debianOut) {
  try {
    return sha256(fs.readFileSync(path.join(debianOut, 'manifest.json')));
  } catch {
    return null;
  }
}

function recipeHash(baseHash) {
  return sha256(`format ${FORMAT}\nbase ${baseHash}\n${fs.readFileSync(SELF, 'utf8')}`);
}

/**
 * The manifest when `out` holds a complete image made by this recipe from the current Debian guest in
 * `debianOut`, else null. When the Debian guest is gone, the image stands on its own (it is a full copy).
 * @param {string} out
 * @param {string} [debianOut]
 */
export function validSystemdGuest(out, debianOut = path.join(path.dirname(out), 'debian-guest')) {
  const manifest = readManifest(out);
  if (manifest?.format !== FORMAT) return null;
  const base = baseManifestHash(debianOut) ?? manifest.base?.manifestSha256;
  if (manifest.recipe !== recipeHash(base)) return null;
  return filesAsRecorded(out, [manifest.kernel, manifest.initrd, manifest.disk]) ? manifest : null;
}

// ---------------------------------------------------------------------------------------------
// running apt-get in the chroot, its output condensed into progress lines

async function chrootLogged({ root, args, log, logFile, what }) {
  const started = Date.now();
  fs.appendFileSync(logFile, `\n$ chroot ${root} ${args.join(' ')}\n`);
  let got = 0;
  let setUp = 0;
  let lastPrint = Date.now();
  const onLine = (line) => {
    if (/^Get:\d+ /.test(line)) got++;
    if (/^Setting up /.test(line)) setUp++;
    if (/^(E|W): /.test(line)) log(`${what}: ${line}`);
    if (Date.now() - lastPrint > 15_000) {
      lastPrint = Date.now();
      log(`${what}: ${got} downloaded, ${setUp} set up (${secs(Date.now() - started)}s)`);
    }
  };
  const couldNotRun = (cmd, e) => new SystemdGuestError('SYSTEMD_GUEST_TOOL_MISSING', `${cmd} could not run`, e);
  const { code, signal } = await runLogged(['chroot', root, ...args], { logFile, onLine, couldNotRun });
  if (code === 0) return { seconds: secs(Date.now() - started), downloaded: got, setUp };
  const tail = fs.readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-8).join(' | ');
  throw new SystemdGuestError('SYSTEMD_GUEST_APT_FAILED', `${what} exited with ${code ?? signal} (log: ${logFile}): ${tail}`);
}

/** apt inside the chroot: no _apt sandbox (the deb cache is a bind mount owned by root), old config files kept, retries. */
const APT_OPTS = ['-o', 'APT::Sandbox::User=root', '-o', 'Acquire::Retries=3', '-o', 'Dpkg::Use-Pty=0', '-o', 'Dpkg::Options::=--force-confold'];

// ---------------------------------------------------------------------------------------------
// configuring the tree

/** Stops maintainer scripts from starting services in the chroot (invoke-rc.d and deb-systemd-invoke ask it). */
const POLICY_RC_D = '#!/bin/sh\n# vmlet build: no service starts in the chroot\nexit 101\n';

const FSTAB_SHARES = `# vmlet test harness (test/support/systemd-guest.ts): read-only virtio disks it makes per boot.
# nofail: a boot without them is not degraded; noload: no journal replay on a read-only device.
${SYSTEMD_GUEST_SHARES.map((s) => `LABEL=${s.label} ${s.mountPoint} ext4 ro,noload,nofail,x-systemd.device-timeout=30s 0 0`).join('\n')}
`;

/** DHCP on a virtio NIC when the harness gives one (user networking); veths, taps and bridges vmlet makes stay unmanaged. */
const NETWORKD_VIRTIO = `# vmlet test harness: DHCP on QEMU's virtio NIC only; the links vmlet makes are left alone.
[Match]
Driver=virtio_net

[Network]
DHCP=yes
`;

/** What qemu-ga reports as blocked; guest-exec must not be (the harness runs every command through it). */
function checkAgentConfig(root) {
  const conf = run('chroot', [root, '/usr/sbin/qemu-ga', '--dump-conf']);
  const blocked = /^(?:block-rpcs|blacklist)=(.*)$/m.exec(conf)?.[1] ?? '';
  if (/guest-exec/.test(blocked)) throw new SystemdGuestError('SYSTEMD_GUEST_BUILD_FAILED', `qemu-ga blocks ${blocked}; the harness needs guest-exec`);
  return conf.trim();
}

function configure(root, log) {
  log('configuring: cloud-init off, sshd off, networkd-wait-online masked, share mounts in fstab');
  // cloud-init would wait for a NoCloud datasource the harness does not give
  writeFile(root, 'etc/cloud/cloud-init.disabled', '# vmlet systemd guest: the harness configures it, not cloud-init\n');
  // sshd makes host keys on first boot: seconds of RSA under TCG for a server nobody uses (the harness talks to the agent)
  run('chroot', [root, 'systemctl', 'disable', '--quiet', 'ssh.service']);
  // without a NIC it would wait 2 minutes, and vmlet.service Wants network-online.target
  run('chroot', [root, 'systemctl', 'mask', '--quiet', 'systemd-networkd-wait-online.service']);
  writeFile(root, 'etc/systemd/network/80-vmlet-virtio.network', NETWORKD_VIRTIO);
  const fstab = fs.readFileSync(path.join(root, 'etc/fstab'), 'utf8');
  if (!fstab.includes('LABEL=vmlet-src')) fs.writeFileSync(path.join(root, 'etc/fstab'), `${fstab.trimEnd()}\n${FSTAB_SHARES}`);
  for (const s of SYSTEMD_GUEST_SHARES) fs.mkdirSync(path.join(root, s.mountPoint), { recursive: true, mode: 0o755 });
  writeFile(root, 'etc/hostname', 'vmlet-guest\n');
  fs.writeFileSync(path.join(root, 'etc/hosts'), fs.readFileSync(path.join(root, 'etc/hosts'), 'utf8').replace(/^127\.0\.0\.1 localhost$/m, '127.0.0.1 localhost vmlet-guest'));
}

/** Removes apt's lists and caches and the build's logs; /usr/share/doc etc. never got in (the base image's dpkg path-excludes). */
function slim(root) {
  const clear = (rel, keep = () => false) => {
    const dir = path.join(root, rel);
    for (const n of fs.existsSync(dir) ? fs.readdirSync(dir) : []) if (!keep(n)) fs.rmSync(path.join(dir, n), { recursive: true, force: true });
  };
  clear('var/lib/apt/lists', (n) => n === 'partial' || n === 'lock');
  clear('var/cache/apt', (n) => n === 'archives');
  clear('var/log/apt');
  fs.rmSync(path.join(root, 'var/log/dpkg.log'), { force: true });
  fs.rmSync(path.join(root, 'var/log/alternatives.log'), { force: true });
}

function packageVersions(root) {
  const out = run('chroot', [root, 'dpkg-query', '-W', '-f', '${Package} ${Version}\n']);
  return Object.fromEntries(out.trim().split('\n').map((l) => l.split(' ')).sort(([a], [b]) => String(a).localeCompare(String(b))));
}

// ---------------------------------------------------------------------------------------------
// the build

async function build(out, base, opts, log) {
  if (process.getuid?.() !== 0) throw new SystemdGuestError('SYSTEMD_GUEST_NOT_ROOT', 'needs root (loop mount and chroot)');
  for (const bin of ['cp', 'mount', 'umount', 'chroot', 'e2fsck', 'resize2fs', 'fstrim']) {
    if (!have(bin)) throw new SystemdGuestError('SYSTEMD_GUEST_TOOL_MISSING', `${bin} is not installed`);
  }
  const started = Date.now();
  const mirror = opts.mirror ?? process.env.VMLET_DEBIAN_MIRROR ?? base.manifest.mirror;
  const work = `${out}.work-${process.pid}`;
  const tmpOut = `${out}.tmp-${process.pid}`;
  const debCache = opts.cacheDir ?? path.join(path.dirname(out), 'systemd-guest-debs');
  const logFile = `${out}.build.log`;
  const root = path.join(work, 'root');
  const resolv = path.join(root, 'etc/resolv.conf');
  const resolvSaved = path.join(root, 'etc/resolv.conf.vmlet-build');
  try {
    removeTree(work);
    removeTree(tmpOut);
    fs.mkdirSync(root, { recursive: true });
    fs.mkdirSync(tmpOut, { recursive: true });
    fs.mkdirSync(path.join(debCache, 'partial'), { recursive: true });
    fs.writeFileSync(logFile, `${new Date().toISOString()} systemd guest from ${base.disk}, mirror ${mirror}\n`);

    const tCopy = Date.now();
    const disk = path.join(tmpOut, 'disk.raw');
    run('cp', ['--sparse=always', '--reflink=auto', base.disk, disk]);
    fs.chmodSync(disk, 0o644);
    if (fs.statSync(disk).size < DISK_BYTES) {
      fs.truncateSync(disk, DISK_BYTES);
      run('e2fsck', ['-f', '-y', disk], { okCodes: [0, 1] }); // resize2fs wants a freshly checked filesystem
      run('resize2fs', [disk]);
    }
    const copySeconds = secs(Date.now() - tCopy);
    log(`copied and grew the Debian guest's disk to ${mib(DISK_BYTES)} in ${copySeconds}s; installing ${SYSTEMD_GUEST_PACKAGES.join(' ')} from ${mirror}`);

    run('mount', ['-o', 'loop', '-t', 'ext4', disk, root]);
    run('mount', ['-t', 'proc', 'proc', path.join(root, 'proc')]);
    run('mount', ['--bind', '/sys', path.join(root, 'sys')]);
    run('mount', ['--bind', '/dev', path.join(root, 'dev')]);
    if (fs.existsSync('/dev/pts/ptmx')) run('mount', ['--bind', '/dev/pts', path.join(root, 'dev/pts')]);
    fs.mkdirSync(path.join(root, 'var/cache/apt/archives'), { recursive: true });
    run('mount', ['--bind', debCache, path.join(root, 'var/cache/apt/archives')]);
    // resolv.conf is systemd-resolved's symlink into /run: lend the host's file for the build, put the link back after
    fs.renameSync(resolv, resolvSaved);
    fs.copyFileSync('/etc/resolv.conf', resolv);
    writeFile(root, 'usr/sbin/policy-rc.d', POLICY_RC_D, 0o755);
    writeFile(root, 'etc/apt/sources.list', `deb ${mirror} bookworm main\n`);

    const tApt = Date.now();
    await chrootLogged({ root, args: ['apt-get', ...APT_OPTS, 'update', '--error-on=any'], log, logFile, what: 'apt-get update' });
    const apt = await chrootLogged({
      root,
      args: ['apt-get', ...APT_OPTS, 'install', '-y', '--no-install-recommends', ...SYSTEMD_GUEST_PACKAGES],
      log,
      logFile,
      what: 'apt-get install',
    });
    const aptSeconds = secs(Date.now() - tApt);
    log(`apt-get: ${apt.downloaded > 0 ? `${apt.downloaded} packages downloaded` : 'all packages from the cache'}, ${apt.setUp} set up in ${aptSeconds}s`);

    const agentConfig = checkAgentConfig(root);
    configure(root, log);
    const packages = packageVersions(root);
    const basePackages = /** @type {Record<string, string>} */ (base.manifest.packages ?? {});
    const added = Object.keys(packages).filter((p) => !(p in basePackages));

    // the kernel is the base image's; an initramfs trigger may have rebuilt the initrd, so both come from the image
    const kver = base.manifest.kernelVersion;
    fs.copyFileSync(path.join(root, 'boot', `vmlinuz-${kver}`), path.join(tmpOut, 'vmlinuz'));
    fs.copyFileSync(path.join(root, 'boot', `initrd.img-${kver}`), path.join(tmpOut, 'initrd.img'));

    fs.rmSync(path.join(root, 'usr/sbin/policy-rc.d'), { force: true });
    fs.rmSync(resolv, { force: true });
    fs.renameSync(resolvSaved, resolv);
    slim(root);
    unmountAll(root); // proc, sys, dev, the deb cache; not the root itself
    const sfs = fs.statfsSync(root);
    const usedBytes = (sfs.blocks - sfs.bfree) * sfs.bsize;
    run('fstrim', [root]); // punches the blocks of deleted files (apt lists) out of the sparse file
    unmountAll(work);
    run('e2fsck', ['-f', '-y', disk], { okCodes: [0, 1] });

    fs.chmodSync(disk, 0o444); // the base image: the harness boots qcow2 overlays on it
    const allocated = fs.statSync(disk).blocks * 512;
    const baseHash = baseManifestHash(base.dir);
    const manifest = {
      format: FORMAT,
      recipe: recipeHash(baseHash),
      builtAt: new Date().toISOString(),
      buildSeconds: secs(Date.now() - started),
      phases: { copySeconds, aptSeconds, downloaded: apt.downloaded },
      base: { dir: base.dir, manifestSha256: baseHash, debianVersion: base.manifest.debianVersion },
      mirror,
      debianVersion: base.manifest.debianVersion,
      kernelVersion: kver,
      kernelArgs: base.kernelArgs,
      shares: SYSTEMD_GUEST_SHARES,
      kernel: { format: 'bzImage', ...fileMeta(tmpOut, 'vmlinuz') },
      initrd: fileMeta(tmpOut, 'initrd.img'),
      disk: { format: 'raw', filesystem: 'ext4', usedBytes, allocatedBytes: allocated, ...fileMeta(tmpOut, 'disk.raw', false) },
      install: SYSTEMD_GUEST_PACKAGES,
      versions: Object.fromEntries(KEY_PACKAGES.filter((p) => packages[p]).map((p) => [p, packages[p]])),
      addedPackages: added,
      packageCount: Object.keys(packages).length,
      agentConfig,
      packages,
    };
    fs.writeFileSync(path.join(tmpOut, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);

    swapIntoPlace(tmpOut, out);
    log(
      `systemd guest ready in ${out}: ${added.length} packages added (${manifest.packageCount} in all), ${mib(usedBytes)} used of ${mib(DISK_BYTES)}, ${mib(allocated)} allocated, ${manifest.buildSeconds}s`,
    );
    return manifest;
  } catch (e) {
    if (e instanceof SystemdGuestError) throw e;
    throw new SystemdGuestError('SYSTEMD_GUEST_BUILD_FAILED', e instanceof Error ? e.message : String(e), e);
  } finally {
    removeTree(work);
    removeTree(tmpOut);
  }
}

/**
 * Makes sure `out` holds a valid systemd guest, building the Debian guest and then this one when missing,
 * stale or `force`d. A failed build leaves its message in `<out>.error` (removed by the next good build).
 * @param {{root?: string, out?: string, debianOut?: string, force?: boolean, mirror?: string, cacheDir?: string, log?: (msg: string) => void}} [opts]
 * @returns {Promise<{dir: string, disk: string, kernel: string, initrd: string, kernelArgs: string, manifest: Record<string, any>}>}
 */
export async function ensureSystemdGuest(opts = {}) {
  const root = opts.root ?? DEFAULT_ROOT;
  const out = path.resolve(root, opts.out ?? path.join('.cache', 'systemd-guest'));
  const debianOut = path.resolve(root, opts.debianOut ?? path.join('.cache', 'debian-guest'));
  const log = opts.log ?? ((msg) => process.stderr.write(`systemd-guest: ${msg}\n`));
  const result = (manifest) => imageFiles(out, manifest);
  removeStale(out);
  if (!opts.force) {
    const m = validSystemdGuest(out, debianOut);
    if (m) return result(m);
  }
  try {
    const base = await ensureDebianGuest({ root, out: debianOut, mirror: opts.mirror, log: (msg) => log(`debian-guest: ${msg}`) });
    fs.mkdirSync(path.dirname(out), { recursive: true });
    const lock = {
      what: 'systemd guest build',
      timeoutMs: 30 * 60 * 1000,
      pollMs: 1000,
      log,
      timeoutError: (pid) => new SystemdGuestError('SYSTEMD_GUEST_LOCK_TIMEOUT', `another build (pid ${pid}) holds ${out}.lock`),
    };
    return await withDirLock(`${out}.lock`, lock, async () => {
      removeStale(out);
      if (!opts.force) {
        const m = validSystemdGuest(out, debianOut); // another process may have built it while we waited
        if (m) return result(m);
      }
      log(opts.force ? 'rebuilding the systemd guest (--force)' : `building the systemd guest into ${out} (a minute or two)`);
      const m = await build(out, { ...base, dir: debianOut }, opts, log);
      fs.rmSync(`${out}.error`, { force: true });
      return result(m);
    });
  } catch (e) {
    fs.writeFileSync(`${out}.error`, `${new Date().toISOString()} ${e instanceof Error ? e.message : String(e)}\n`);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// command line

if (process.argv[1] && path.resolve(process.argv[1]) === SELF) {
  await builderMain({
    args: process.argv.slice(2),
    usage: 'node scripts/build-systemd-guest.mjs [--force] [--out DIR] [--mirror URL]',
    prefix: 'systemd-guest',
    ensure: (o) => ensureSystemdGuest({ root: DEFAULT_ROOT, ...o }),
    summary: (r) => ({ disk: r.disk, kernel: r.kernel, initrd: r.initrd, kernelArgs: r.kernelArgs, buildSeconds: r.manifest.buildSeconds, versions: r.manifest.versions }),
  });
}
