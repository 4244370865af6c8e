#!/usr/bin/env node
// Installs and builds whatever `npm start`, `npm test` and `npm run bench` need, and is quick when nothing is missing.
// Plain Node with no npm dependencies: it runs before node_modules exists on a fresh machine.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const purpose = process.argv.includes('--for') ? process.argv[process.argv.indexOf('--for') + 1] : 'all';
const quiet = process.env.VMLET_SETUP_QUIET === '1';
const log = (msg) => { if (!quiet) process.stderr.write(`setup: ${msg}\n`); };

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
  if (r.error) throw new Error(`SETUP_COMMAND_FAILED: ${cmd} could not run: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`SETUP_COMMAND_FAILED: ${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal}`);
}

function have(bin) {
  return (process.env.PATH ?? '/usr/bin:/bin').split(':').some((d) => {
    try { fs.accessSync(path.join(d, bin), fs.constants.X_OK); return true; } catch { return false; }
  }) || fs.existsSync(bin);
}

// Debian packages, each found by one file it installs.
const debs = [
  ['qemu-system-x86', 'qemu-system-x86_64'],
  ['qemu-utils', 'qemu-img'],
  ['genisoimage', 'genisoimage'],
  ['cpio', 'cpio'],
  ['iproute2', 'ip'],
  ['nftables', 'nft'],
  ['make', 'make'],
  ['gcc', 'cc'],
  ['libc6-dev', '/usr/include/stdio.h'],
  ['ovmf', '/usr/share/OVMF/OVMF_CODE_4M.fd'],
  // vmlet-launch links against musl when it can: a static glibc build is ~800 kB RSS, musl ~120 kB.
  ['musl-tools', 'musl-gcc'],
];

// The private test cluster (docs/cluster.md): only when its assets are set (VMLET_K8S_ASSETS) or for `npm run cluster`,
// so that plain `npm start` does not pull them in.
const clusterDebs = [
  ['containerd', 'containerd'],
  ['runc', 'runc'],
  ['containernetworking-plugins', '/usr/lib/cni/bridge'],
  ['buildah', 'buildah'],
  ['busybox-static', '/bin/busybox'],
  ['iptables', 'iptables'],
  ['openssl', 'openssl'],
  ['xz-utils', 'xz'],
  // vmlet's own image (scripts/build-image.mjs, npm run cluster -- deploy): its Debian base.
  ['mmdebstrap', 'mmdebstrap'],
];
if (purpose === 'cluster' || (process.env.VMLET_K8S_ASSETS ?? '') !== '') debs.push(...clusterDebs);

function ensureDebs() {
  const missing = debs.filter(([, bin]) => !have(bin)).map(([pkg]) => pkg);
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) {
    throw new Error(`SETUP_NOT_ROOT: missing Debian packages ${missing.join(' ')}; run as root or install them first`);
  }
  log(`installing Debian packages: ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  run('apt-get', ['update', '-qq'], { env });
  run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { env });
}

function newestMtime(dir, filter) {
  let newest = 0;
  if (!fs.existsSync(dir)) return 0;
  for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, ent.name);
    if (ent.isDirectory()) newest = Math.max(newest, newestMtime(p, filter));
    else if (filter(p)) newest = Math.max(newest, fs.statSync(p).mtimeMs);
  }
  return newest;
}

function mtime(p) {
  try { return fs.statSync(p).mtimeMs; } catch { return 0; }
}

function ensureNodeModules() {
  const stamp = path.join(root, 'node_modules', '.package-lock.json');
  if (mtime(stamp) >= mtime(path.join(root, 'package-lock.json')) && fs.existsSync(path.join(root, 'node_modules', 'tap'))) return;
  log('installing npm packages');
  run('npm', ['ci', '--no-audit', '--no-fund']);
}

/**
 * tap builds its test class for the plugins package.json names. A fresh install has tap's defaults, ts-node's
 * loader among them; a run that finds them rebuilds, but still starts that run's tests with the old loaders.
 */
function ensureTapBuild() {
  const built = path.join(root, 'node_modules', '@tapjs', 'test', 'test-built', 'dist', 'esm', 'index.js');
  let text = '';
  try { text = fs.readFileSync(built, 'utf8'); } catch { /* not built yet */ }
  if (text !== '' && !text.includes('"@tapjs/typescript')) return;
  log("building tap's test class for the configured plugins");
  run(process.execPath, [path.join(root, 'node_modules', 'tap', 'dist', 'esm', 'run.mjs'), 'build']);
}

function ensureBuild() {
  const stamp = path.join(root, 'dist', '.build-stamp');
  // The CRDs and the generator feed dist/api/crd-validators.cjs (the prebuilt validators), so they count too.
  const newest = Math.max(
    newestMtime(path.join(root, 'src'), (p) => p.endsWith('.ts')),
    mtime(path.join(root, 'tsconfig.json')),
    newestMtime(path.join(root, 'deploy', 'crds'), (p) => p.endsWith('.yaml')),
    mtime(path.join(root, 'scripts', 'gen-validators.mjs')),
  );
  if (mtime(stamp) >= newest && newest > 0 && fs.existsSync(path.join(root, 'dist', 'api', 'crd-validators.cjs'))) return;
  log('building TypeScript');
  run(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json']);
  log('generating the CRD validators');
  run(process.execPath, [path.join(root, 'scripts', 'gen-validators.mjs')]);
  fs.writeFileSync(stamp, new Date().toISOString());
}

/**
 * The cluster tests' deploy file builds vmlet's container image (minutes, mostly the Debian base). Started here in
 * the background, it is built while the tests before it run; the test's own build then waits for its lock and
 * finds the archive up to date. A failure here only costs that head start: the test builds and reports it.
 */
function prebuildImage() {
  if ((process.env.VMLET_K8S_ASSETS ?? '') === '' || process.env.VMLET_NO_IMAGE_PREBUILD === '1' || process.getuid?.() !== 0) return;
  if (!have('buildah') || !have('mmdebstrap')) return;
  const dir = path.join(root, '.cache', 'images');
  fs.mkdirSync(dir, { recursive: true });
  const out = fs.openSync(path.join(dir, 'prebuild.log'), 'w');
  const child = spawn(process.execPath, [path.join(root, 'scripts', 'build-image.mjs'), '--tag', 'dev'], {
    cwd: root,
    detached: true,
    stdio: ['ignore', out, out],
  });
  child.unref();
  fs.closeSync(out);
  log(`building the container image in the background for the deploy tests (pid ${child.pid}, .cache/images/prebuild.log)`);
}

function ensureNative() {
  if (!fs.existsSync(path.join(root, 'native', 'Makefile'))) return;
  run('make', ['-s', '-C', 'native']);
}

/** The unprivileged user standalone QEMU runs as (config qemuUser, docs/security.md). */
function ensureQemuUser() {
  const name = 'vmlet-qemu';
  const known = fs.readFileSync('/etc/passwd', 'utf8').split('\n').some((l) => l.split(':')[0] === name);
  if (known) return;
  if (process.getuid?.() !== 0) {
    process.stderr.write(`setup: user ${name} is missing (QEMU runs as it); run as root, or set qemuUser: root in the config\n`);
    return;
  }
  log(`creating the system user ${name}`);
  run('useradd', ['--system', '--user-group', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', name]);
}

async function ensureGuest() {
  const builder = path.join(root, 'scripts', 'build-guest-image.mjs');
  if (!fs.existsSync(builder)) return;
  const mod = await import(builder);
  await mod.ensureGuestImage({ root, out: path.join(root, '.cache', 'guest'), force: false, log });
}

/**
 * A test guest built by `scripts/<builder>` into `.cache/<name>/` for `npm test`: the realistic Debian
 * guest (build-debian-guest.mjs: a few minutes the first time, then a no-op) and the systemd guest of
 * test/systemd/ (build-systemd-guest.mjs: the Debian guest plus QEMU and nftables, seconds). A failed
 * build does not fail setup: the tests that need it skip, quoting the reason the builder left in
 * `.cache/<name>.error`. `skipEnv`=1 leaves it out (VMLET_SKIP_DEBIAN_GUEST leaves out both).
 */
async function ensureTestGuest(name, builderFile, exportName, skipEnvs) {
  const builder = path.join(root, 'scripts', builderFile);
  if (!fs.existsSync(builder)) return;
  const skipped = skipEnvs.find((v) => process.env[v] === '1');
  if (skipped) {
    log(`not building the ${name} (${skipped}=1); its tests will skip`);
    return;
  }
  const mod = await import(builder);
  try {
    await mod[exportName]({ root, out: path.join(root, '.cache', name), force: false, log: (msg) => log(`${name}: ${msg}`) });
  } catch (e) {
    process.stderr.write(`setup: the ${name} could not be built, its tests will skip: ${e instanceof Error ? e.message : String(e)}\n`);
  }
}

try {
  ensureDebs();
  ensureNodeModules();
  if (purpose === 'test' || purpose === 'all') ensureTapBuild();
  ensureBuild();
  ensureNative();
  if (purpose !== 'build' && purpose !== 'cluster') ensureQemuUser();
  if (purpose !== 'build' && purpose !== 'cluster') await ensureGuest();
  if (purpose === 'test' || purpose === 'all') {
    await ensureTestGuest('debian-guest', 'build-debian-guest.mjs', 'ensureDebianGuest', ['VMLET_SKIP_DEBIAN_GUEST']);
    await ensureTestGuest('systemd-guest', 'build-systemd-guest.mjs', 'ensureSystemdGuest', ['VMLET_SKIP_DEBIAN_GUEST', 'VMLET_SKIP_SYSTEMD_GUEST']);
    if (purpose === 'test') prebuildImage();
  }
} catch (e) {
  process.stderr.write(`setup failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
}
