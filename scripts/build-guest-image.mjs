#!/usr/bin/env node
// Builds the bootable test guest (a Debian kernel plus a busybox initramfs with qemu-ga) into .cache/guest/, and does nothing when a valid one is there.
//
// Plain Node with no npm dependencies: scripts/setup.mjs imports it before node_modules is guaranteed.
// System tools used: apt-get, apt-cache, dpkg-deb (always present on Debian) and xz (package xz-utils,
// installed with apt-get when missing) to unpack the kernel for direct PVH boot. The cpio archive, gzip
// compression and ELF reading (shared-library and kernel-module dependencies) are done in Node:
// scripts/lib/cpio.mjs and scripts/lib/elf.mjs. The guest's shell scripts are the files in scripts/guest/
// (see GUEST_SCRIPTS). See docs/test-guest.md.
//
//   node scripts/build-guest-image.mjs [--force] [--out DIR]
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';
import { buildFolderNames, removeDeadLock, swapIntoPlace, sweepDead } from './lib/build-dirs.mjs';
import { have as haveIn, toolRunner } from './lib/build-tools.mjs';
import { cpioNewc } from './lib/cpio.mjs';
import { filesAsRecorded } from './lib/cache-files.mjs';
import { elfDeps, elfPvhInfo, elfSection } from './lib/elf.mjs';
import { withDirLock } from './lib/dir-lock.mjs';
import { GuestImageError } from './lib/guest-image-error.mjs';
import { readManifest } from './lib/guest-manifest.mjs';

export { GuestImageError };

/** Printed on the serial console, on a line of its own, once the guest is fully up. */
export const READY_MARKER = 'VMLET-GUEST-READY';

/** Bump when the layout of the output changes in a way the recipe hash would not catch. */
const FORMAT = 1;
const SELF = fileURLToPath(import.meta.url);
const DEFAULT_ROOT = path.resolve(path.dirname(SELF), '..');
const GUEST_DIR = path.join(path.dirname(SELF), 'guest');
/** The modules in scripts/lib/ this script imports: part of the recipe hash, like the guest scripts. */
const LIB_MODULES = ['cpio.mjs', 'elf.mjs', 'guest-image-error.mjs'];
const LIBDIR = 'lib/x86_64-linux-gnu';

/**
 * Kernel modules to put into the initramfs (with their dependencies). Required ones fail the build when
 * absent. `late` ones are loaded by /init in the background: ahci waits ~0.4 s (TCG) probing the empty
 * SATA ports that q35 always has, which would otherwise delay the ready marker.
 */
const MODULES = [
  { name: 'virtio_pci', required: true },
  { name: 'virtio_blk', required: true },
  { name: 'virtio_net', required: true },
  { name: 'virtio_console', required: true },
  { name: 'virtio_scsi', required: false },
  { name: 'virtio_balloon', required: false },
  { name: 'virtio_rng', required: false },
  { name: 'button', required: true }, // ACPI power button -> input event for acpid
  { name: 'evdev', required: true }, // /dev/input/event* that busybox acpid reads
  { name: 'sd_mod', required: false },
  { name: 'sr_mod', required: false },
  { name: 'ahci', required: false, late: true },
];

// ---------------------------------------------------------------------------------------------
// small helpers

function sha256File(file) {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** Whether `bin` is on PATH as it is (no sbin folders added). */
const have = (bin) => haveIn(bin, process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin');

/** Runs a tool with an argument array; returns stdout as a string. */
const run = toolRunner({
  env: () => ({ ...process.env, LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive' }),
  missing: (msg, cause) => new GuestImageError('GUEST_TOOL_MISSING', msg, cause),
  failed: (msg, cause) => new GuestImageError('GUEST_COMMAND_FAILED', msg, cause),
});

function isRoot() {
  return process.getuid?.() === 0;
}

// ---------------------------------------------------------------------------------------------
// cache check

/** sha256 over everything that makes the image: this script, its modules in scripts/lib/ and the guest scripts. */
function recipeHash() {
  const h = crypto.createHash('sha256').update(`format ${FORMAT}\n`).update(fs.readFileSync(SELF));
  const parts = [
    ...LIB_MODULES.map((f) => path.join(path.dirname(SELF), 'lib', f)),
    ...GUEST_SCRIPTS.map((g) => path.join(GUEST_DIR, g.src)),
  ];
  for (const f of parts) h.update(`\0${path.relative(path.dirname(SELF), f)}\0`).update(fs.readFileSync(f));
  return h.digest('hex');
}

/** Returns the manifest when `out` holds a complete image made by this recipe, else null. */
function validCache(out) {
  const manifest = readManifest(out);
  if (manifest?.format !== FORMAT || manifest.recipe !== recipeHash()) return null;
  // size and mtime as recorded at build time: the files are only ever written by the build (sha256 is
  // in the manifest for anyone who wants to check more, but hashing ~80 MB would not be a fast no-op)
  const files = [manifest.kernel, manifest.initrd, ...(manifest.kernelPvh ? [manifest.kernelPvh] : [])];
  return filesAsRecorded(out, files) ? manifest : null;
}

// ---------------------------------------------------------------------------------------------
// apt

function aptResolve(log) {
  const resolveOnce = () => {
    const meta = run('apt-cache', ['depends', '--no-recommends', '--no-suggests', 'linux-image-amd64']);
    const kernelPkg = [...meta.matchAll(/^\s*(?:\|)?Depends:\s*(linux-image-[^\s<>]+-amd64)\s*$/gm)].map((m) => m[1])[0];
    if (!kernelPkg) throw new GuestImageError('GUEST_PACKAGE_UNRESOLVED', 'linux-image-amd64 depends on no linux-image-*-amd64 package');
    const deps = run('apt-cache', [
      'depends', '--recurse', '--no-recommends', '--no-suggests', '--no-conflicts', '--no-breaks',
      '--no-replaces', '--no-enhances', '--no-pre-depends', 'qemu-guest-agent',
    ]);
    const qgaPkgs = [...new Set(deps.split('\n').filter((l) => /^[a-z0-9][a-z0-9+.-]*$/.test(l)))];
    if (!qgaPkgs.includes('qemu-guest-agent')) throw new GuestImageError('GUEST_PACKAGE_UNRESOLVED', 'qemu-guest-agent is not known to apt');
    return { kernelPkg, qgaPkgs };
  };
  try {
    return resolveOnce();
  } catch (e) {
    if (!isRoot()) {
      throw new GuestImageError('GUEST_PACKAGE_UNRESOLVED', 'cannot resolve the kernel or qemu-guest-agent packages; run `apt-get update` as root', e);
    }
    log('package lists look stale or empty; running apt-get update');
    run('apt-get', ['update', '-qq'], { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      return resolveOnce();
    } catch (e2) {
      throw new GuestImageError('GUEST_PACKAGE_UNRESOLVED', 'cannot resolve the kernel or qemu-guest-agent packages after apt-get update', e2);
    }
  }
}

function aptDownload(dir, pkgs) {
  try {
    run('apt-get', ['download', '-q', '-o', 'APT::Sandbox::User=root', ...pkgs], { cwd: dir });
  } catch (e) {
    throw new GuestImageError('GUEST_DOWNLOAD_FAILED', `apt-get download ${pkgs.join(' ')} failed`, e);
  }
  /** @type {Map<string, {file: string, version: string}>} */
  const debs = new Map();
  for (const f of fs.readdirSync(dir)) {
    if (!f.endsWith('.deb')) continue;
    const file = path.join(dir, f);
    const [name, version] = run('dpkg-deb', ['-f', file, 'Package', 'Version']).trim().split('\n').map((l) => l.replace(/^[^:]+:\s*/, ''));
    debs.set(String(name), { file, version: String(version) });
  }
  for (const p of pkgs) if (!debs.has(p)) throw new GuestImageError('GUEST_DOWNLOAD_FAILED', `apt-get download produced no .deb for ${p}`);
  return debs;
}

function extract(deb, dir) {
  fs.mkdirSync(dir, { recursive: true });
  try {
    run('dpkg-deb', ['-x', deb, dir]);
  } catch (e) {
    throw new GuestImageError('GUEST_EXTRACT_FAILED', `cannot extract ${path.basename(deb)}`, e);
  }
}

// ---------------------------------------------------------------------------------------------
// staging the initramfs tree

/** Resolves `p` (a path inside the tree `root`) following symlinks, absolute ones relative to `root`. */
function resolveIn(root, p, depth = 0) {
  if (depth > 40) return null;
  const parts = p.split('/').filter(Boolean);
  let cur = '';
  for (let i = 0; i < parts.length; i++) {
    const next = path.posix.join(cur, parts[i]);
    let st;
    try {
      st = fs.lstatSync(path.join(root, next));
    } catch {
      return null;
    }
    if (st.isSymbolicLink()) {
      const target = fs.readlinkSync(path.join(root, next));
      const base = target.startsWith('/') ? target : path.posix.join(cur, target);
      return resolveIn(root, path.posix.join(base, ...parts.slice(i + 1)), depth + 1);
    }
    cur = next;
  }
  return path.join(root, cur);
}

function writeFile(stage, rel, content, mode = 0o644) {
  const p = path.join(stage, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, content, { mode });
  fs.chmodSync(p, mode);
}

function symlink(stage, rel, target) {
  const p = path.join(stage, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  try {
    fs.lstatSync(p);
    return; // first one wins
  } catch {
    fs.symlinkSync(target, p);
  }
}

function copyInto(stage, rel, src, mode) {
  const p = path.join(stage, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.copyFileSync(src, p);
  fs.chmodSync(p, mode ?? (fs.statSync(src).mode & 0o777));
}

/** Copies qemu-ga, its loader and every shared library it needs (transitively) from `sysroot`. */
function stageQemuGa(stage, sysroot) {
  const bin = path.join(sysroot, 'usr/sbin/qemu-ga');
  if (!fs.existsSync(bin)) throw new GuestImageError('GUEST_EXTRACT_FAILED', 'qemu-guest-agent has no usr/sbin/qemu-ga');
  copyInto(stage, 'usr/sbin/qemu-ga', bin, 0o755);
  const searchDirs = [LIBDIR, `usr/${LIBDIR}`, 'lib', 'usr/lib', 'lib64'];
  const copied = new Set();
  const queue = [bin];
  let interp = null;
  while (queue.length > 0) {
    const file = /** @type {string} */ (queue.shift());
    const deps = elfDeps(file);
    if (deps.interp) interp = deps.interp;
    for (const so of deps.needed) {
      if (copied.has(so)) continue;
      let found = null;
      for (const d of searchDirs) {
        found = resolveIn(sysroot, `${d}/${so}`);
        if (found) break;
      }
      if (!found) throw new GuestImageError('GUEST_LIB_MISSING', `${so} (needed by ${path.basename(file)}) is in none of qemu-guest-agent's dependency packages`);
      copied.add(so);
      copyInto(stage, `${LIBDIR}/${so}`, found, 0o755);
      queue.push(found);
    }
  }
  if (!interp) throw new GuestImageError('GUEST_BAD_ELF', 'qemu-ga has no program interpreter');
  const interpBase = path.posix.basename(interp);
  if (!copied.has(interpBase)) {
    const src = resolveIn(sysroot, interp);
    if (!src) throw new GuestImageError('GUEST_LIB_MISSING', `the program interpreter ${interp} is not in libc6`);
    copyInto(stage, `${LIBDIR}/${interpBase}`, src, 0o755);
    copied.add(interpBase);
  }
  if (interp !== `/${LIBDIR}/${interpBase}`) symlink(stage, interp.slice(1), `/${LIBDIR}/${interpBase}`);
  return [...copied].sort();
}

const modName = (s) => s.replace(/\.ko(\.[a-z]+)?$/, '').replace(/-/g, '_');

/** Copies the wanted kernel modules with their dependencies; returns the load order and what was built in. */
function stageModules(stage, kroot, kver, log) {
  const mdir = path.join(kroot, 'lib/modules', kver);
  /** @type {Map<string, string>} module name -> path relative to mdir */
  const index = new Map();
  const walk = (rel) => {
    for (const ent of fs.readdirSync(path.join(mdir, rel), { withFileTypes: true })) {
      const r = path.posix.join(rel, ent.name);
      if (ent.isDirectory()) walk(r);
      else if (/\.ko$/.test(ent.name)) index.set(modName(ent.name), r);
      else if (/\.ko\.(xz|zst|gz)$/.test(ent.name)) index.set(modName(ent.name), r);
    }
  };
  walk('kernel');
  let builtinList = '';
  try {
    builtinList = fs.readFileSync(path.join(mdir, 'modules.builtin'), 'utf8');
  } catch {
    /* none */
  }
  const builtin = new Set(builtinList.split('\n').filter(Boolean).map((l) => modName(path.posix.basename(l))));

  /** @type {Map<string, string[]>} */
  const depsOf = new Map();
  const deps = (name) => {
    const cached = depsOf.get(name);
    if (cached) return cached;
    const rel = /** @type {string} */ (index.get(name));
    if (!rel.endsWith('.ko')) throw new GuestImageError('GUEST_MODULE_UNSUPPORTED', `${rel} is compressed; only plain .ko modules are supported`);
    const buf = fs.readFileSync(path.join(mdir, rel));
    const info = elfSection(buf, '.modinfo', rel);
    const line = info ? info.toString('latin1').split('\0').find((s) => s.startsWith('depends=')) : undefined;
    const list = line ? line.slice('depends='.length).split(',').filter(Boolean).map(modName) : [];
    depsOf.set(name, list);
    return list;
  };

  const order = [];
  const state = new Map();
  const visit = (name, chain) => {
    if (state.get(name) === 'done') return;
    if (state.get(name) === 'busy') throw new GuestImageError('GUEST_MODULE_CYCLE', `module dependency cycle: ${[...chain, name].join(' -> ')}`);
    if (!index.has(name)) {
      if (builtin.has(name)) return;
      throw new GuestImageError('GUEST_MODULE_MISSING', `${name} (needed by ${chain.at(-1) ?? 'the guest'}) is neither a module nor built into kernel ${kver}`);
    }
    state.set(name, 'busy');
    for (const d of deps(name)) visit(d, [...chain, name]);
    state.set(name, 'done');
    order.push(name);
  };
  const builtinWanted = [];
  const skipped = [];
  let earlyCount = 0;
  for (const m of [...MODULES.filter((x) => !x.late), ...MODULES.filter((x) => x.late)]) {
    if (m.late && earlyCount === 0) earlyCount = order.length;
    if (!index.has(m.name)) {
      if (builtin.has(m.name)) builtinWanted.push(m.name);
      else if (m.required) throw new GuestImageError('GUEST_MODULE_MISSING', `${m.name} is neither a module nor built into kernel ${kver}`);
      else {
        skipped.push(m.name);
        log(`kernel ${kver} has no ${m.name}; leaving it out`);
      }
      continue;
    }
    visit(m.name, []);
  }
  if (!MODULES.some((x) => x.late && index.has(x.name))) earlyCount = order.length;

  const dest = `lib/modules/${kver}`;
  const depLines = [];
  for (const name of order) {
    const rel = /** @type {string} */ (index.get(name));
    copyInto(stage, `${dest}/${rel}`, path.join(mdir, rel), 0o644);
    // modules.dep lists the transitive dependencies, the one to load last first.
    const closure = [];
    const seen = new Set();
    const add = (n) => {
      for (const d of depsOf.get(n) ?? []) {
        if (seen.has(d) || !index.has(d)) continue;
        seen.add(d);
        add(d);
        closure.push(d);
      }
    };
    add(name);
    depLines.push(`${rel}: ${closure.reverse().map((d) => index.get(d)).join(' ')}`.trimEnd());
  }
  writeFile(stage, `${dest}/modules.dep`, `${depLines.join('\n')}\n`);
  writeFile(stage, `${dest}/modules.builtin`, builtinList);
  const list = (names) => names.map((n) => `/${dest}/${index.get(n)}\n`).join('');
  writeFile(stage, 'etc/vmlet/modules', list(order.slice(0, earlyCount)));
  writeFile(stage, 'etc/vmlet/modules.late', list(order.slice(earlyCount)));
  return { order: order.slice(0, earlyCount), late: order.slice(earlyCount), builtin: builtinWanted, skipped };
}

// ---------------------------------------------------------------------------------------------
// the guest's scripts

/**
 * The guest's shell scripts: files in scripts/guest/, copied into the initramfs as they are, except that
 * each `@NAME@` listed in `subst` is replaced by its value at build time (init.sh prints the ready marker
 * through `@READY_MARKER@`). A placeholder left over, or a listed one the file lacks, fails the build.
 */
const GUEST_SCRIPTS = [
  { src: 'init.sh', dest: 'init', mode: 0o755, subst: { READY_MARKER } },
  { src: 'udhcpc-default.sh', dest: 'etc/udhcpc/default.script', mode: 0o755 },
  { src: 'shutdown.sh', dest: 'sbin/shutdown', mode: 0o755 },
  { src: 'eatmem.sh', dest: 'bin/eatmem', mode: 0o755 },
  // busybox acpid maps the power button to the action "PWRF/00000080", run relative to its -c directory
  { src: 'acpi-power-button.sh', dest: 'etc/acpi/PWRF/00000080', mode: 0o755 },
  { src: 'profile.sh', dest: 'etc/profile', mode: 0o644 },
];

/** The content of a guest script with its placeholders filled in. */
function guestScript({ src, subst = {} }) {
  let text = fs.readFileSync(path.join(GUEST_DIR, src), 'utf8');
  for (const [name, value] of Object.entries(subst)) {
    const placeholder = `@${name}@`;
    if (!text.includes(placeholder)) throw new GuestImageError('GUEST_BUILD_FAILED', `scripts/guest/${src} has no ${placeholder}`);
    text = text.split(placeholder).join(value);
  }
  const left = /@[A-Z][A-Z0-9_]*@/.exec(text);
  if (left) throw new GuestImageError('GUEST_BUILD_FAILED', `scripts/guest/${src} has the unknown placeholder ${left[0]}`);
  return text;
}

const INDEX_HTML = `<!doctype html>
<html><head><title>vmlet test guest</title></head>
<body><h1>vmlet test guest</h1><p>VMLET-GUEST-HTTP-OK</p></body></html>
`;

function stageGuestFiles(stage, busyboxSrc, kver) {
  for (const d of ['proc', 'sys', 'dev', 'run', 'tmp', 'root', 'www', 'etc/acpi', 'var', 'mnt', 'bin', 'sbin', 'usr/bin', 'usr/sbin']) {
    fs.mkdirSync(path.join(stage, d), { recursive: true });
  }
  fs.chmodSync(path.join(stage, 'tmp'), 0o1777);
  fs.chmodSync(path.join(stage, 'root'), 0o700);
  copyInto(stage, 'bin/busybox', busyboxSrc, 0o755);
  const applets = run(busyboxSrc, ['--list-full']).split('\n').filter(Boolean);
  for (const a of applets) {
    if (a === 'linuxrc' || a === 'bin/busybox') continue;
    symlink(stage, a, '/bin/busybox');
  }
  if (!applets.includes('sbin/udhcpc') && !applets.includes('usr/bin/udhcpc') && !applets.some((a) => a.endsWith('/udhcpc'))) {
    throw new GuestImageError('GUEST_BUSYBOX_INCOMPLETE', 'busybox-static has no udhcpc applet');
  }
  for (const need of ['acpid', 'httpd', 'setsid', 'insmod', 'usleep', 'mkfifo', 'dd']) {
    if (!applets.some((a) => a.endsWith(`/${need}`))) throw new GuestImageError('GUEST_BUSYBOX_INCOMPLETE', `busybox-static has no ${need} applet`);
  }
  symlink(stage, 'var/run', '/run');
  symlink(stage, 'var/log', '/run');
  symlink(stage, 'var/tmp', '/tmp');
  for (const g of GUEST_SCRIPTS) writeFile(stage, g.dest, guestScript(g), g.mode);
  writeFile(stage, 'etc/hostname', 'vmlet-guest\n');
  writeFile(stage, 'etc/hosts', '127.0.0.1 localhost\n127.0.1.1 vmlet-guest\n::1 localhost\n');
  writeFile(stage, 'etc/passwd', 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n');
  writeFile(stage, 'etc/group', 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n');
  writeFile(stage, 'etc/shadow', 'root::0:0:99999:7:::\n', 0o600);
  writeFile(stage, 'etc/resolv.conf', '');
  writeFile(stage, 'etc/nsswitch.conf', 'passwd: files\ngroup: files\nhosts: files dns\n');
  writeFile(stage, 'etc/vmlet/kernel', `${kver}\n`);
  writeFile(stage, 'www/index.html', INDEX_HTML);
}

// ---------------------------------------------------------------------------------------------
// locking, so that two builds (say setup and a test) do not race


// ---------------------------------------------------------------------------------------------
// the uncompressed kernel for PVH boot
//
// Under TCG the bzImage spends ~3 s decompressing itself (xz, ~65 MB). QEMU can instead load the ELF
// vmlinux inside it directly through the PVH entry point (CONFIG_PVH), which skips the firmware's
// kernel loader and the decompressor. Only for `-kernel` with SeaBIOS; with OVMF use the bzImage.

function ensureXz(log) {
  if (have('xz')) return;
  if (!isRoot()) throw new GuestImageError('GUEST_TOOL_MISSING', 'xz is not installed; install xz-utils or run as root');
  log('installing xz-utils');
  run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'xz-utils'], { stdio: ['ignore', 'ignore', 'pipe'] });
  if (!have('xz')) throw new GuestImageError('GUEST_TOOL_MISSING', 'xz is still missing after installing xz-utils');
}

/** Writes the PVH-bootable ELF vmlinux from a bzImage to `dest`; returns false (with a log line) when it cannot. */
function extractVmlinux(bzImage, dest, work, log) {
  const b = fs.readFileSync(bzImage);
  if (b.length < 0x250 || b.toString('latin1', 0x202, 0x206) !== 'HdrS' || b.readUInt16LE(0x206) < 0x208) {
    log('the kernel is not a bzImage with boot protocol >= 2.08; no PVH vmlinux');
    return false;
  }
  const setup = ((b[0x1f1] || 4) + 1) * 512;
  const start = setup + b.readUInt32LE(0x248);
  const payload = b.subarray(start, start + b.readUInt32LE(0x24c));
  let elf;
  if (payload.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) {
    ensureXz(log);
    // the kernel build appends the uncompressed size (4 bytes, LE) after the xz stream
    const xzFile = path.join(work, 'vmlinux.xz');
    fs.writeFileSync(xzFile, payload.subarray(0, payload.length - 4));
    const raw = path.join(work, 'vmlinux.raw');
    const fd = fs.openSync(raw, 'w');
    try {
      execFileSync('xz', ['-dc', '--single-stream', xzFile], { stdio: ['ignore', fd, 'pipe'] });
    } catch (e) {
      throw new GuestImageError('GUEST_EXTRACT_FAILED', 'cannot decompress the kernel payload with xz', e);
    } finally {
      fs.closeSync(fd);
    }
    elf = fs.readFileSync(raw);
  } else if (payload[0] === 0x1f && payload[1] === 0x8b) {
    elf = zlib.gunzipSync(payload);
  } else {
    log(`kernel payload compression ${payload.subarray(0, 4).toString('hex')} is not supported; no PVH vmlinux`);
    return false;
  }
  // the PVH entry is the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18)
  const { pvh, end } = elfPvhInfo(elf, 'the kernel payload');
  if (!pvh) {
    log('the kernel has no PVH entry point (CONFIG_PVH); no PVH vmlinux');
    return false;
  }
  // drop what follows the ELF image (the relocation table KASLR uses; PVH boot does not relocate)
  fs.writeFileSync(dest, elf.subarray(0, Math.min(end, elf.length)));
  return true;
}

// ---------------------------------------------------------------------------------------------
// the build


/** Removes what builds killed half-way left behind (their `finally` never ran). */
function removeStale(out) {
  const remove = (p) => fs.rmSync(p, { recursive: true, force: true });
  sweepDead(path.dirname(out), buildFolderNames(out, ['tmp', 'old']), remove);
  sweepDead(os.tmpdir(), /^vmlet-guest-build-(\d+)-/, remove);
  removeDeadLock(`${out}.lock`);
}

function build(out, log) {
  for (const t of ['apt-get', 'apt-cache', 'dpkg-deb']) {
    if (!have(t)) throw new GuestImageError('GUEST_TOOL_MISSING', `${t} is not installed (the guest image is built from Debian packages)`);
  }
  if (process.arch !== 'x64') throw new GuestImageError('GUEST_UNSUPPORTED_HOST', `building the amd64 guest needs an x86_64 host, not ${process.arch}`);
  const started = Date.now();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), `vmlet-guest-build-${process.pid}-`));
  const tmpOut = `${out}.tmp-${process.pid}`;
  try {
    fs.chmodSync(work, 0o755);
    const { kernelPkg, qgaPkgs } = aptResolve(log);
    const dl = path.join(work, 'debs');
    fs.mkdirSync(dl);
    log(`downloading ${kernelPkg}, busybox-static, ${qgaPkgs.join(', ')}`);
    const debs = aptDownload(dl, [kernelPkg, 'busybox-static', ...qgaPkgs]);

    const kroot = path.join(work, 'kernel');
    extract(/** @type {{file: string}} */ (debs.get(kernelPkg)).file, kroot);
    const bbroot = path.join(work, 'busybox');
    extract(/** @type {{file: string}} */ (debs.get('busybox-static')).file, bbroot);
    const sysroot = path.join(work, 'sysroot');
    for (const p of qgaPkgs) extract(/** @type {{file: string}} */ (debs.get(p)).file, sysroot);

    const vmlinuzName = fs.readdirSync(path.join(kroot, 'boot')).find((f) => f.startsWith('vmlinuz-'));
    if (!vmlinuzName) throw new GuestImageError('GUEST_EXTRACT_FAILED', `${kernelPkg} has no /boot/vmlinuz-*`);
    const kver = vmlinuzName.slice('vmlinuz-'.length);
    const busybox = path.join(bbroot, 'bin/busybox');
    if (!fs.existsSync(busybox)) throw new GuestImageError('GUEST_EXTRACT_FAILED', 'busybox-static has no /bin/busybox');

    const stage = path.join(work, 'stage');
    fs.mkdirSync(stage, { mode: 0o755 });
    stageGuestFiles(stage, busybox, kver);
    const modules = stageModules(stage, kroot, kver, log);
    const libs = stageQemuGa(stage, sysroot);

    log('writing initramfs');
    const cpio = cpioNewc(stage);
    const initrd = zlib.gzipSync(cpio, { level: 9 });

    fs.rmSync(tmpOut, { recursive: true, force: true });
    fs.mkdirSync(tmpOut, { recursive: true });
    fs.copyFileSync(path.join(kroot, 'boot', vmlinuzName), path.join(tmpOut, 'vmlinuz'));
    log('unpacking the kernel for PVH boot');
    const pvh = extractVmlinux(path.join(tmpOut, 'vmlinuz'), path.join(tmpOut, 'vmlinux'), work, log);
    fs.writeFileSync(path.join(tmpOut, 'initrd.img'), initrd);
    const fileMeta = (f) => {
      const p = path.join(tmpOut, f);
      const st = fs.statSync(p);
      return { size: st.size, mtimeMs: st.mtimeMs, sha256: sha256File(p) };
    };
    const manifest = {
      format: FORMAT,
      recipe: recipeHash(),
      builtAt: new Date().toISOString(),
      buildSeconds: Math.round((Date.now() - started) / 100) / 10,
      readyMarker: READY_MARKER,
      kernelVersion: kver,
      kernel: { file: 'vmlinuz', format: 'bzImage', ...fileMeta('vmlinuz') },
      kernelPvh: pvh ? { file: 'vmlinux', format: 'elf-pvh', ...fileMeta('vmlinux') } : null,
      initrd: { file: 'initrd.img', ...fileMeta('initrd.img'), uncompressedSize: cpio.length, compression: 'gzip' },
      packages: Object.fromEntries([...debs.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => [k, v.version])),
      modules: { loadOrder: modules.order, loadedLate: modules.late, builtin: modules.builtin, missing: modules.skipped },
      qemuGaLibraries: libs,
    };
    fs.writeFileSync(path.join(tmpOut, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);

    swapIntoPlace(tmpOut, out);
    log(`guest image ready in ${out} (kernel ${kver}, initrd ${Math.round(initrd.length / 1024)} KiB, ${manifest.buildSeconds}s)`);
    return manifest;
  } catch (e) {
    if (e instanceof GuestImageError) throw e;
    throw new GuestImageError('GUEST_BUILD_FAILED', e instanceof Error ? e.message : String(e), e);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
    fs.rmSync(tmpOut, { recursive: true, force: true });
  }
}

/**
 * Makes sure `out` holds a valid guest image, building it when missing, stale or `force`d.
 * @param {{root?: string, out?: string, force?: boolean, log?: (msg: string) => void}} [opts]
 * `kernel` is the bzImage (boots anywhere); `kernelPvh` the same kernel as an uncompressed ELF that QEMU
 * boots directly via PVH with SeaBIOS, ~3 s faster under TCG (null when the kernel does not allow it).
 * @returns {Promise<{kernel: string, kernelPvh: string | null, initrd: string, manifest: Record<string, any>}>}
 */
export async function ensureGuestImage(opts = {}) {
  const root = opts.root ?? DEFAULT_ROOT;
  const out = path.resolve(root, opts.out ?? path.join('.cache', 'guest'));
  const log = opts.log ?? ((msg) => process.stderr.write(`guest-image: ${msg}\n`));
  const result = (manifest) => ({
    kernel: path.join(out, 'vmlinuz'),
    kernelPvh: manifest.kernelPvh ? path.join(out, manifest.kernelPvh.file) : null,
    initrd: path.join(out, 'initrd.img'),
    manifest,
  });
  removeStale(out);
  if (!opts.force) {
    const m = validCache(out);
    if (m) return result(m);
  }
  fs.mkdirSync(path.dirname(out), { recursive: true });
  return withDirLock(`${out}.lock`, { what: 'guest image build', timeoutMs: 20 * 60 * 1000, pollMs: 500, log, timeoutError: (pid) => new GuestImageError('GUEST_LOCK_TIMEOUT', `another build (pid ${pid}) holds ${out}.lock`) }, () => {
    if (!opts.force) {
      const m = validCache(out); // another process may have built it while we waited
      if (m) return result(m);
    }
    log(opts.force ? 'rebuilding the guest image (--force)' : `building the guest image into ${out}`);
    return result(build(out, log));
  });
}

// ---------------------------------------------------------------------------------------------
// command line

if (process.argv[1] && path.resolve(process.argv[1]) === SELF) {
  const args = process.argv.slice(2);
  const force = args.includes('--force');
  const outIdx = args.indexOf('--out');
  const out = outIdx >= 0 ? args[outIdx + 1] : undefined;
  const unknown = args.filter((a, i) => a !== '--force' && a !== '--out' && !(outIdx >= 0 && i === outIdx + 1));
  if (unknown.length > 0 || (outIdx >= 0 && !out)) {
    process.stderr.write('usage: node scripts/build-guest-image.mjs [--force] [--out DIR]\n');
    process.exit(2);
  }
  try {
    const r = await ensureGuestImage({ root: DEFAULT_ROOT, ...(out ? { out: path.resolve(out) } : {}), force });
    process.stdout.write(`${JSON.stringify({ kernel: r.kernel, kernelPvh: r.kernelPvh, initrd: r.initrd, kernelVersion: r.manifest.kernelVersion })}\n`);
  } catch (e) {
    process.stderr.write(`guest-image: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  }
}
