#!/usr/bin/env node
// Builds the bootable test guest (a Debian kernel plus a busybox initramfs with qemu-ga) into .cache/guest/, and does nothing when a valid one is there.
//
// Plain Node with no npm dependencies: scripts/setup.mjs imports it before node_modules is guaranteed.
// System tools used: apt-get, apt-cache, dpkg-deb (always present on Debian) and xz (package xz-utils,
// installed with apt-get when missing) to unpack the kernel for direct PVH boot. The cpio archive, gzip
// compression and ELF reading (shared-library and kernel-module dependencies) are done here in Node.
// See docs/test-guest.md.
//
//   node scripts/build-guest-image.mjs [--force] [--out DIR]
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

/** Printed on the serial console, on a line of its own, once the guest is fully up. */
export const READY_MARKER = 'VMLET-GUEST-READY';

/** Bump when the layout of the output changes in a way the recipe hash would not catch. */
const FORMAT = 1;
const SELF = fileURLToPath(import.meta.url);
const DEFAULT_ROOT = path.resolve(path.dirname(SELF), '..');
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

export class GuestImageError extends Error {
  /**
   * @param {string} code stable error code
   * @param {string} message short message, without the code
   * @param {unknown} [cause]
   */
  constructor(code, message, cause) {
    super(`${code}: ${message}`, cause === undefined ? undefined : { cause });
    this.name = 'GuestImageError';
    this.code = code;
  }
}

// ---------------------------------------------------------------------------------------------
// small helpers

function sha256File(file) {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function have(bin) {
  return (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':').some((d) => {
    try {
      fs.accessSync(path.join(d, bin), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** Runs a tool with an argument array; returns stdout as a string. */
function run(cmd, args, opts = {}) {
  try {
    return execFileSync(cmd, args, {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      maxBuffer: 64 * 1024 * 1024,
      env: { ...process.env, LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive' },
      ...opts,
    });
  } catch (e) {
    const err = /** @type {{stderr?: string|Buffer, status?: number|null, code?: string}} */ (e);
    if (err.code === 'ENOENT') throw new GuestImageError('GUEST_TOOL_MISSING', `${cmd} is not installed`, e);
    const stderr = String(err.stderr ?? '').trim().split('\n').slice(-5).join(' | ');
    throw new GuestImageError('GUEST_COMMAND_FAILED', `${cmd} ${args.join(' ')} exited with ${err.status ?? '?'}${stderr ? `: ${stderr}` : ''}`, e);
  }
}

function isRoot() {
  return process.getuid?.() === 0;
}

// ---------------------------------------------------------------------------------------------
// cache check

function recipeHash() {
  return crypto.createHash('sha256').update(`format ${FORMAT}\n`).update(fs.readFileSync(SELF)).digest('hex');
}

/** Returns the manifest when `out` holds a complete image made by this recipe, else null. */
function validCache(out) {
  let manifest;
  try {
    manifest = JSON.parse(fs.readFileSync(path.join(out, 'manifest.json'), 'utf8'));
  } catch {
    return null;
  }
  if (manifest?.format !== FORMAT || manifest.recipe !== recipeHash()) return null;
  // size and mtime as recorded at build time: the files are only ever written by the build (sha256 is
  // in the manifest for anyone who wants to check more, but hashing ~80 MB would not be a fast no-op)
  const files = [manifest.kernel, manifest.initrd, ...(manifest.kernelPvh ? [manifest.kernelPvh] : [])];
  for (const meta of files) {
    if (!meta || typeof meta.file !== 'string') return null;
    let st;
    try {
      st = fs.statSync(path.join(out, meta.file));
    } catch {
      return null;
    }
    if (st.size !== meta.size || st.mtimeMs !== meta.mtimeMs) return null;
  }
  return manifest;
}

// ---------------------------------------------------------------------------------------------
// ELF reading (64-bit little-endian only: amd64)

function elfHeader(buf, what) {
  if (buf.length < 64 || buf.readUInt32BE(0) !== 0x7f454c46) throw new GuestImageError('GUEST_BAD_ELF', `${what} is not an ELF file`);
  if (buf[4] !== 2 || buf[5] !== 1) throw new GuestImageError('GUEST_BAD_ELF', `${what} is not 64-bit little-endian ELF`);
  return {
    phoff: Number(buf.readBigUInt64LE(0x20)),
    shoff: Number(buf.readBigUInt64LE(0x28)),
    phentsize: buf.readUInt16LE(0x36),
    phnum: buf.readUInt16LE(0x38),
    shentsize: buf.readUInt16LE(0x3a),
    shnum: buf.readUInt16LE(0x3c),
    shstrndx: buf.readUInt16LE(0x3e),
  };
}

function cstr(buf, off) {
  const end = buf.indexOf(0, off);
  return buf.toString('latin1', off, end < 0 ? buf.length : end);
}

/** Program interpreter and DT_NEEDED sonames of an executable or shared library. */
function elfDeps(file) {
  const buf = fs.readFileSync(file);
  const h = elfHeader(buf, file);
  const loads = [];
  let interp = null;
  let dyn = null;
  for (let i = 0; i < h.phnum; i++) {
    const o = h.phoff + i * h.phentsize;
    const type = buf.readUInt32LE(o);
    const offset = Number(buf.readBigUInt64LE(o + 8));
    const vaddr = Number(buf.readBigUInt64LE(o + 16));
    const filesz = Number(buf.readBigUInt64LE(o + 32));
    if (type === 1) loads.push({ offset, vaddr, filesz });
    else if (type === 2) dyn = { offset, filesz };
    else if (type === 3) interp = cstr(buf, offset);
  }
  const needed = [];
  if (dyn) {
    const neededOffsets = [];
    let strtab = null;
    for (let o = dyn.offset; o + 16 <= dyn.offset + dyn.filesz; o += 16) {
      const tag = buf.readBigInt64LE(o);
      const val = Number(buf.readBigUInt64LE(o + 8));
      if (tag === 0n) break;
      if (tag === 1n) neededOffsets.push(val);
      else if (tag === 5n) strtab = val;
    }
    if (neededOffsets.length > 0) {
      const seg = loads.find((l) => strtab !== null && strtab >= l.vaddr && strtab < l.vaddr + l.filesz);
      if (!seg) throw new GuestImageError('GUEST_BAD_ELF', `${file}: cannot locate its dynamic string table`);
      const base = strtab - seg.vaddr + seg.offset;
      for (const off of neededOffsets) needed.push(cstr(buf, base + off));
    }
  }
  return { interp, needed };
}

/** Contents of a named section (used for a kernel module's .modinfo). */
function elfSection(buf, name, what) {
  const h = elfHeader(buf, what);
  const sh = (i) => {
    const o = h.shoff + i * h.shentsize;
    return { name: buf.readUInt32LE(o), offset: Number(buf.readBigUInt64LE(o + 24)), size: Number(buf.readBigUInt64LE(o + 32)) };
  };
  const strs = sh(h.shstrndx);
  for (let i = 0; i < h.shnum; i++) {
    const s = sh(i);
    if (cstr(buf, strs.offset + s.name) === name) return buf.subarray(s.offset, s.offset + s.size);
  }
  return null;
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

const INIT = `#!/bin/sh
# vmlet test guest /init (PID 1): mounts, modules, DHCP, qemu-ga, acpid, httpd, ready marker, serial shell.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=vt100

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev 2>/dev/null || { mount -t tmpfs -o mode=0755,nosuid tmpfs /dev; mdev -s; }
mkdir -p /dev/pts /dev/shm /dev/virtio-ports
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup 2>/dev/null
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd

debug=0
console=ttyS0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vmlet.debug=1) debug=1 ;;
    console=*) c=\${arg#console=}; console=\${c%%,*} ;;
  esac
done
[ "$debug" = 1 ] && set -x
# keep later kernel messages (module probes, link up) off the console unless debugging
[ "$debug" = 1 ] || echo 1 > /proc/sys/kernel/printk

hostname -F /etc/hostname
ip link set lo up

while read -r m; do insmod "$m" 2>/dev/null; done < /etc/vmlet/modules
(while read -r m; do insmod "$m" 2>/dev/null; done < /etc/vmlet/modules.late) &

# DHCP on every ethN: at most ~3 s in the foreground, then udhcpc keeps trying in the background
dhcp_pids=
for n in /sys/class/net/eth*; do
  [ -e "$n" ] || continue
  i=\${n##*/}
  udhcpc -i "$i" -s /etc/udhcpc/default.script -O mtu -b -t 3 -T 1 -A 5 -p "/run/udhcpc.$i.pid" >"/run/udhcpc.$i.log" 2>&1 &
  dhcp_pids="$dhcp_pids $!"
done

# virtio-serial ports: name them under /dev/virtio-ports as udev would (ports show up asynchronously)
virtio_serial=0
for d in /sys/bus/virtio/devices/*; do
  [ "$(cat "$d/device" 2>/dev/null)" = 0x0003 ] && virtio_serial=1
done
if [ "$virtio_serial" = 1 ]; then
  tries=0
  while [ "$tries" -lt 40 ]; do
    named=0 unnamed=0
    for p in /sys/class/virtio-ports/*; do
      [ -e "$p" ] || continue
      name=$(cat "$p/name" 2>/dev/null)
      if [ -n "$name" ]; then ln -sf "../\${p##*/}" "/dev/virtio-ports/$name"; named=$((named + 1)); else unnamed=$((unnamed + 1)); fi
    done
    [ "$named" -gt 0 ] && [ "$unnamed" = 0 ] && break
    tries=$((tries + 1))
    usleep 50000
  done
fi
if [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ]; then
  mkdir -p /run/qemu-ga
  setsid qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run/qemu-ga -f /run/qemu-ga.pid </dev/null >/run/qemu-ga.log 2>&1 &
fi

acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid
httpd -p 80 -h /www

for p in $dhcp_pids; do wait "$p"; done

# shutdown, the way busybox init does it: halt/poweroff/reboot (without -f) signal PID 1
stop() {
  echo "vmlet-guest: $1"
  kill -TERM -1 2>/dev/null
  usleep 300000
  kill -KILL -1 2>/dev/null
  sync
  "$1" -f
}
trap 'stop halt' USR1
trap 'stop poweroff' USR2
trap 'stop reboot' TERM INT

read -r up _ < /proc/uptime
echo "vmlet-guest: up in \${up}s, kernel $(uname -r)"
printf '\\n${READY_MARKER}\\n'

# a root shell on the console, respawned when it exits
(
  while :; do
    setsid -c sh -l <"/dev/$console" >"/dev/$console" 2>&1
    usleep 200000
  done
) &

while :; do
  wait
  sleep 1
done
`;

const UDHCPC_SCRIPT = `#!/bin/sh
# udhcpc event handler: applies a DHCP lease (address, router, DNS, MTU, hostname) to $interface.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    if [ "$1" = bound ] || ! ip -4 addr show dev "$interface" | grep -q "inet $ip/"; then
      ip -4 addr flush dev "$interface"
      ip addr add "$ip/\${mask:-24}" \${broadcast:+broadcast "$broadcast"} dev "$interface"
    fi
    if [ -n "$router" ]; then
      while ip route del default dev "$interface" 2>/dev/null; do :; done
      for r in $router; do ip route add default via "$r" dev "$interface" && break; done
    fi
    {
      [ -n "$domain" ] && echo "search $domain"
      for d in $dns; do echo "nameserver $d"; done
    } > /etc/resolv.conf
    [ -n "$hostname" ] && hostname "$hostname"
    [ "$1" = bound ] && echo "vmlet-guest: $interface $ip/\${mask:-24} router \${router:-none} (dhcp)" > /dev/console
    ;;
  leasefail|nak)
    ;;
esac
exit 0
`;

const SHUTDOWN = `#!/bin/sh
# shutdown for qemu-ga (guest-shutdown runs "shutdown -P|-H|-r +0 msg"): hands over to PID 1 like busybox halt/poweroff/reboot.
action=poweroff
for a in "$@"; do
  case "$a" in
    -r) action=reboot ;;
    -H|-h) action=halt ;;
    -P) action=poweroff ;;
  esac
done
"$action"
`;

const EATMEM = `#!/bin/sh
# eatmem MB [SECONDS]: allocates MB MiB of anonymous memory in 16 MiB chunks, writes every page and
# holds it (for SECONDS, default until killed or Ctrl-C). Prints, each on its own line:
#   "eatmem: allocating MB MiB", then "eatmem: holding MB MiB" once all of it is resident,
#   "eatmem: released" when SECONDS are over, or "eatmem: killed" if the guest's OOM killer (or anyone)
#   killed a chunk, "eatmem: failed: ..." if a chunk could not be allocated at all.
case "$1" in ''|*[!0-9]*) echo "usage: eatmem MB [SECONDS]" >&2; exit 2 ;; esac
mb=$1
hold=\${2:-}
fifo=/tmp/eatmem.$$
err=/tmp/eatmem.$$.err
# each chunk is one dd that reads /dev/zero into a buffer of the chunk's size, then blocks writing it
# into a pipe nobody reads: the memory stays resident until the pipe's reader (this script) goes away
mkfifo "$fifo" || exit 1
: > "$err"
chunks=
left=$mb
while [ "$left" -gt 0 ]; do
  c=16
  [ "$left" -lt "$c" ] && c=$left
  dd if=/dev/zero bs=$((c * 1048576)) count=1 2>>"$err" >"$fifo" &
  chunks="$chunks $!:$c"
  left=$((left - c))
done
exec 3<"$fifo"
rm -f "$fifo"
pids=
for pc in $chunks; do pids="$pids \${pc%%:*}"; done
cleanup() { kill $pids 2>/dev/null; rm -f "$err"; }
trap 'cleanup; exit 0' INT TERM
echo "eatmem: allocating $mb MiB"
gone() {
  if [ -s "$err" ]; then echo "eatmem: failed: $(head -n 1 "$err")"; else echo "eatmem: killed"; fi
  cleanup
  exit 1
}
while :; do
  short=0
  for pc in $chunks; do
    p=\${pc%%:*}
    c=\${pc#*:}
    kill -0 "$p" 2>/dev/null || gone
    r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)
    [ "\${r:-0}" -ge $((c * 1024)) ] || short=1
  done
  [ "$short" = 0 ] && break
  usleep 100000
done
echo "eatmem: holding $mb MiB"
if [ -n "$hold" ]; then
  end=$(( $(cut -d. -f1 /proc/uptime) + hold ))
  while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do
    for p in $pids; do kill -0 "$p" 2>/dev/null || gone; done
    sleep 1
  done
  cleanup
  echo "eatmem: released"
  exit 0
fi
while :; do
  for p in $pids; do kill -0 "$p" 2>/dev/null || gone; done
  sleep 1
done
`;

const PROFILE = `export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
export PS1='\\u@\\h:\\w# '
`;

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
  writeFile(stage, 'init', INIT, 0o755);
  writeFile(stage, 'etc/udhcpc/default.script', UDHCPC_SCRIPT, 0o755);
  writeFile(stage, 'sbin/shutdown', SHUTDOWN, 0o755);
  writeFile(stage, 'bin/eatmem', EATMEM, 0o755);
  // busybox acpid maps the power button to the action "PWRF/00000080", run relative to its -c directory
  writeFile(stage, 'etc/acpi/PWRF/00000080', '#!/bin/sh\n# ACPI power button: orderly power-off through PID 1\nexec poweroff\n', 0o755);
  writeFile(stage, 'etc/hostname', 'vmlet-guest\n');
  writeFile(stage, 'etc/hosts', '127.0.0.1 localhost\n127.0.1.1 vmlet-guest\n::1 localhost\n');
  writeFile(stage, 'etc/passwd', 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n');
  writeFile(stage, 'etc/group', 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n');
  writeFile(stage, 'etc/shadow', 'root::0:0:99999:7:::\n', 0o600);
  writeFile(stage, 'etc/profile', PROFILE);
  writeFile(stage, 'etc/resolv.conf', '');
  writeFile(stage, 'etc/nsswitch.conf', 'passwd: files\ngroup: files\nhosts: files dns\n');
  writeFile(stage, 'etc/vmlet/kernel', `${kver}\n`);
  writeFile(stage, 'www/index.html', INDEX_HTML);
}

// ---------------------------------------------------------------------------------------------
// cpio (newc) writer

/** Serialises the tree at `stage` into a newc cpio archive, owned by root, with fixed mtimes. */
function cpioNewc(stage) {
  const chunks = [];
  let ino = 1;
  const pad4 = (n) => (4 - (n % 4)) % 4;
  const hex = (n) => n.toString(16).padStart(8, '0');
  const entry = (name, mode, data, nlink = 1) => {
    const nameBuf = Buffer.from(`${name}\0`, 'utf8');
    const header =
      '070701' + hex(ino++) + hex(mode) + hex(0) + hex(0) + hex(nlink) + hex(0) +
      hex(data.length) + hex(0) + hex(0) + hex(0) + hex(0) + hex(nameBuf.length) + hex(0);
    chunks.push(Buffer.from(header, 'latin1'), nameBuf, Buffer.alloc(pad4(110 + nameBuf.length)), data, Buffer.alloc(pad4(data.length)));
  };
  const walk = (rel) => {
    const names = fs.readdirSync(path.join(stage, rel)).sort();
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      const p = path.join(stage, r);
      const st = fs.lstatSync(p);
      const perm = st.mode & 0o7777;
      if (st.isSymbolicLink()) entry(r, 0o120000 | 0o777, Buffer.from(fs.readlinkSync(p), 'utf8'));
      else if (st.isDirectory()) {
        entry(r, 0o040000 | perm, Buffer.alloc(0), 2);
        walk(r);
      } else if (st.isFile()) entry(r, 0o100000 | perm, fs.readFileSync(p));
      else throw new GuestImageError('GUEST_BUILD_FAILED', `unexpected file type in the initramfs tree: ${r}`);
    }
  };
  entry('.', 0o040755, Buffer.alloc(0), 2);
  walk('');
  entry('TRAILER!!!', 0, Buffer.alloc(0));
  const body = Buffer.concat(chunks);
  return Buffer.concat([body, Buffer.alloc((512 - (body.length % 512)) % 512)]);
}

// ---------------------------------------------------------------------------------------------
// locking, so that two builds (say setup and a test) do not race

async function withLock(lockDir, log, fn) {
  const deadline = Date.now() + 20 * 60 * 1000;
  let said = false;
  for (;;) {
    try {
      fs.mkdirSync(lockDir);
      fs.writeFileSync(path.join(lockDir, 'pid'), String(process.pid));
      break;
    } catch (e) {
      if (/** @type {{code?: string}} */ (e).code !== 'EEXIST') throw e;
      let pid = NaN;
      try {
        pid = Number(fs.readFileSync(path.join(lockDir, 'pid'), 'utf8'));
      } catch {
        /* being written or gone */
      }
      let alive = true;
      if (Number.isInteger(pid) && pid > 0) {
        try {
          process.kill(pid, 0);
        } catch (k) {
          alive = /** @type {{code?: string}} */ (k).code === 'EPERM';
        }
      } else {
        try {
          alive = Date.now() - fs.statSync(lockDir).mtimeMs < 10_000;
        } catch {
          alive = false;
        }
      }
      if (!alive) {
        fs.rmSync(lockDir, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw new GuestImageError('GUEST_LOCK_TIMEOUT', `another build (pid ${pid}) holds ${lockDir}`);
      if (!said) log(`waiting for another guest image build (pid ${pid})`);
      said = true;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(lockDir, { recursive: true, force: true });
  }
}

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
  const h = elfHeader(elf, 'the kernel payload');
  // the PVH entry is the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18)
  let pvh = false;
  let end = h.shoff + h.shnum * h.shentsize;
  for (let i = 0; i < h.phnum; i++) {
    const o = h.phoff + i * h.phentsize;
    const type = elf.readUInt32LE(o);
    const offset = Number(elf.readBigUInt64LE(o + 8));
    const filesz = Number(elf.readBigUInt64LE(o + 32));
    end = Math.max(end, offset + filesz);
    if (type !== 4) continue;
    for (let n = offset; n + 12 <= offset + filesz; ) {
      const namesz = elf.readUInt32LE(n);
      const descsz = elf.readUInt32LE(n + 4);
      const ntype = elf.readUInt32LE(n + 8);
      const name = elf.toString('latin1', n + 12, n + 12 + namesz).replace(/\0+$/, '');
      if (name === 'Xen' && ntype === 18) pvh = true;
      n += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
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

function pidAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return /** @type {{code?: string}} */ (e).code === 'EPERM';
  }
}

/** Removes what builds killed half-way left behind (their `finally` never ran). */
function removeStale(out) {
  const sweep = (dir, re) => {
    let names = [];
    try {
      names = fs.readdirSync(dir);
    } catch {
      return;
    }
    for (const n of names) {
      const m = re.exec(n);
      if (m && Number(m[1]) !== process.pid && !pidAlive(Number(m[1]))) fs.rmSync(path.join(dir, n), { recursive: true, force: true });
    }
  };
  const base = path.basename(out).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  sweep(path.dirname(out), new RegExp(`^${base}\\.(?:tmp|old)-(\\d+)$`));
  sweep(os.tmpdir(), /^vmlet-guest-build-(\d+)-/);
  try {
    const pid = Number(fs.readFileSync(path.join(`${out}.lock`, 'pid'), 'utf8'));
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && !pidAlive(pid)) fs.rmSync(`${out}.lock`, { recursive: true, force: true });
  } catch {
    /* no lock, or one being taken */
  }
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

    // swap into place: `out` is either absent or complete, never half-written
    const old = `${out}.old-${process.pid}`;
    if (fs.existsSync(out)) fs.renameSync(out, old);
    fs.renameSync(tmpOut, out);
    fs.rmSync(old, { recursive: true, force: true });
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
  return withLock(`${out}.lock`, log, () => {
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
