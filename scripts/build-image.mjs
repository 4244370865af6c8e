#!/usr/bin/env node
// Builds vmlet's container image localhost/vmlet:<tag> (Debian bookworm + QEMU + Node + the built project) with buildah into an OCI archive in .cache/images/, and does nothing when the archive is up to date.
//
// Plain Node with no npm dependencies. Two layers: the base (scripts/lib/image-base.mjs: mmdebstrap,
// cached by package list and mirror, minutes) and the project (dist/, production node_modules, CRDs,
// vmlet-launch, vmlet-disk-wait, the host's node binary: seconds). Needs root, mmdebstrap, buildah (with runc) and npm;
// `npm run build` and `make -C native` must have run. See docs/deploy.md.
//
//   node scripts/build-image.mjs [--tag T] [--out FILE]
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pidAlive, withDirLock } from './lib/dir-lock.mjs';
import { elfDeps } from './lib/elf.mjs';
import { ensureBase } from './lib/image-base.mjs';
import { buildahStore, have, run, sweepTemp, tempDir } from './lib/image-buildah.mjs';
import { appendLayer } from './lib/image-oci.mjs';
import { ImageBuildError } from './lib/image-error.mjs';

export { ImageBuildError };

/** Bump when the project layer's layout changes in a way the inputs' hash would not catch. */
const FORMAT = 1;
const SELF = fileURLToPath(import.meta.url);
const DEFAULT_ROOT = path.resolve(path.dirname(SELF), '..');
const LIB_MODULES = ['image-base.mjs', 'image-buildah.mjs', 'image-error.mjs', 'image-oci.mjs', 'image-sources.mjs', 'elf.mjs'];
/** The host's Node 20 (Debian 12's own nodejs is 18, too old). */
const HOST_NODE = '/usr/bin/node';
/** Where things go in the image. */
export const IMAGE_PATHS = {
  app: '/opt/vmlet',
  launcher: '/usr/libexec/vmlet/vmlet-launch',
  /** = DISK_WAIT_IMAGE_PATH of src/api/pod-volumes.ts: launcher pods' init container copies it from here with /bin/cp */
  diskWait: '/usr/libexec/vmlet/vmlet-disk-wait',
  node: '/usr/local/bin/node',
  cli: '/usr/local/bin/vmlet',
};

/** The archive's default place for a tag. */
export function defaultArchive(root, tag) {
  return path.join(root, '.cache', 'images', `vmlet-${tag}.oci.tar`);
}

/** Files of `dir` (relative paths, sorted), recursively; symlinks are listed, not followed. */
function listTree(dir, rel = '') {
  const out = [];
  for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const r = path.join(rel, e.name);
    if (e.isDirectory()) out.push(...listTree(dir, r));
    else out.push(r);
  }
  return out;
}

/** What the project layer is made of, checked before anything is built; names the step that is missing. */
function inputs(root) {
  const p = (...s) => path.join(root, ...s);
  const need = [
    [p('dist', 'cli', 'main.js'), 'npm run build'],
    [p('native', 'build', 'vmlet-launch'), 'make -C native'],
    [p('native', 'build', 'vmlet-disk-wait'), 'make -C native'],
    [p('native', 'build', 'kvm-probe.elf'), 'make -C native'],
    [p('package-lock.json'), 'npm install (the lock file)'],
  ];
  const missing = need.filter(([f]) => !fs.existsSync(f));
  if (missing.length) throw new ImageBuildError('IMAGE_INPUT_MISSING', missing.map(([f, how]) => `${path.relative(root, f)} is missing (${how})`).join('; '));
  const node = fs.realpathSync(HOST_NODE);
  const [launcher, diskWait, probe, lock] = need.slice(1).map(([f]) => f);
  return { dist: p('dist'), launcher, diskWait, probe, lock, pkg: p('package.json'), crds: p('deploy', 'crds'), proto: p('src', 'daemon', 'proto'), node };
}

/** sha256 over everything in the project layer (and the base's key): a changed dist/, launcher or lock file changes it. */
function projectKey(inp, baseKey, tag) {
  const h = crypto.createHash('sha256').update(`format ${FORMAT}\0${baseKey}\0${tag}\0`);
  for (const f of [SELF, ...LIB_MODULES.map((m) => path.join(path.dirname(SELF), 'lib', m))]) h.update(fs.readFileSync(f));
  for (const f of [inp.launcher, inp.diskWait, inp.probe, inp.lock, inp.pkg]) h.update(`\0${path.basename(f)}\0`).update(fs.readFileSync(f));
  for (const dir of [inp.dist, inp.crds, inp.proto])
    for (const r of listTree(dir)) {
      const f = path.join(dir, r);
      h.update(`\0${r}\0`).update(fs.lstatSync(f).isSymbolicLink() ? fs.readlinkSync(f) : fs.readFileSync(f));
    }
  const st = fs.statSync(inp.node);
  h.update(`\0node\0${inp.node}\0${st.size}\0${st.mtimeMs}`);
  return h.digest('hex').slice(0, 16);
}

/** Production node_modules for the lock file, installed once into .cache/images/prod-<hash>/ (npm ci --omit=dev). */
async function prodModules(inp, cacheDir, log) {
  const h = crypto.createHash('sha256').update(fs.readFileSync(inp.lock)).update(fs.readFileSync(inp.pkg)).digest('hex').slice(0, 16);
  const dir = path.join(cacheDir, `prod-${h}`);
  if (fs.existsSync(path.join(dir, '.complete'))) return dir;
  if (!have('npm')) throw new ImageBuildError('IMAGE_TOOL_MISSING', 'npm is not installed');
  const tmp = `${dir}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  try {
    fs.copyFileSync(inp.pkg, path.join(tmp, 'package.json'));
    fs.copyFileSync(inp.lock, path.join(tmp, 'package-lock.json'));
    log('installing production node_modules (npm ci --omit=dev)');
    // no install scripts: koffi's binary comes prebuilt in @koromix/koffi-linux-x64 (the image checks it loads)
    await run('npm', ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: tmp });
    fs.writeFileSync(path.join(tmp, '.complete'), '');
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(tmp, dir);
    for (const n of fs.readdirSync(cacheDir)) if (/^prod-[0-9a-f]{16}$/.test(n) && n !== path.basename(dir)) fs.rmSync(path.join(cacheDir, n), { recursive: true, force: true });
    return dir;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** Fails unless every shared library `binary` needs is in the base image. */
function checkLibs(binary, libs) {
  const names = new Set(libs.map((l) => path.basename(l)));
  const { needed } = elfDeps(binary);
  const absent = needed.filter((so) => !names.has(so));
  if (absent.length) throw new ImageBuildError('IMAGE_LIB_MISSING', `${binary} needs ${absent.join(', ')}, which the base image lacks`);
}

/** The project layer's tree, staged in `ctx`. */
function stage(ctx, inp, modules) {
  const at = (p) => path.join(ctx, p);
  const put = (src, dest, mode) => {
    fs.mkdirSync(path.dirname(at(dest)), { recursive: true });
    fs.copyFileSync(src, at(dest));
    fs.chmodSync(at(dest), mode);
  };
  const app = IMAGE_PATHS.app;
  fs.cpSync(inp.dist, at(`${app}/dist`), { recursive: true, verbatimSymlinks: true });
  fs.cpSync(path.join(modules, 'node_modules'), at(`${app}/node_modules`), { recursive: true, verbatimSymlinks: true });
  for (const f of fs.readdirSync(inp.crds).filter((n) => n.endsWith('.yaml') && n !== 'kustomization.yaml')) put(path.join(inp.crds, f), `${app}/deploy/crds/${f}`, 0o644);
  // The device plugin's gRPC definitions are read at run time from src/daemon/proto (tsc does not copy them).
  for (const f of fs.readdirSync(inp.proto)) put(path.join(inp.proto, f), `${app}/src/daemon/proto/${f}`, 0o644);
  put(inp.pkg, `${app}/package.json`, 0o644);
  put(inp.probe, `${app}/native/build/kvm-probe.elf`, 0o644);
  put(inp.launcher, IMAGE_PATHS.launcher, 0o755);
  // the daemon's default launcherBinary is native/build/vmlet-launch of its checkout
  fs.symlinkSync(IMAGE_PATHS.launcher, at(`${app}/native/build/vmlet-launch`));
  put(inp.diskWait, IMAGE_PATHS.diskWait, 0o755);
  put(inp.node, IMAGE_PATHS.node, 0o755);
  fs.writeFileSync(at(IMAGE_PATHS.cli), `#!/bin/sh\nexec ${IMAGE_PATHS.node} ${app}/dist/cli/main.js "$@"\n`, { mode: 0o755 });
}

/** The commands `checkImage` runs in the image, with what each must print (and, where given, its exit code). */
export const IMAGE_CHECKS = [
  {
    name: 'node with the native and gRPC modules',
    argv: [IMAGE_PATHS.node, '--input-type=module', '-e', "process.chdir('/opt/vmlet'); await import('/opt/vmlet/node_modules/koffi/index.js'); await import('/opt/vmlet/node_modules/@grpc/grpc-js/build/src/index.js'); console.log(process.version)"],
    expect: /^v2\d+\./m,
  },
  { name: 'vmlet --help', argv: ['vmlet', '--help'], expect: /vmlet daemon/ },
  { name: 'vmlet version', argv: ['vmlet', 'version'], expect: /\d+\.\d+\.\d+/ },
  { name: 'qemu-system-x86_64 --version', argv: ['qemu-system-x86_64', '--version'], expect: /QEMU emulator version/ },
  { name: 'vmlet-launch prints its usage', argv: [IMAGE_PATHS.launcher], expect: /usage/i },
  { name: 'vmlet-disk-wait prints its usage', argv: [IMAGE_PATHS.diskWait], expect: /usage: vmlet-disk-wait VOLUME/, exit: 2 },
  {
    // what launcher pods' init container runs (src/api/pod-volumes.ts), then the copy as an unknown uid would run it
    name: "the init container's /bin/cp copies vmlet-disk-wait",
    argv: ['/bin/sh', '-c', `/bin/cp ${IMAGE_PATHS.diskWait} /tmp/vmlet-disk-wait && exec setpriv --reuid 54321 --regid 54321 --clear-groups /tmp/vmlet-disk-wait Bad_Name`],
    expect: /usage: vmlet-disk-wait VOLUME/,
    exit: 2,
  },
  { name: 'user qemu is 107', argv: ['id', 'qemu'], expect: /uid=107\(qemu\) gid=107\(qemu\)/ },
];

/**
 * Runs IMAGE_CHECKS in the image of `archive` (buildah, vfs in a temp folder, no network); returns each
 * command's exit code and output, and whether it printed what it must.
 * @param {string} archive
 * @returns {Promise<Array<{ name: string, code: number, output: string, ok: boolean }>>}
 */
export async function checkImage(archive) {
  const tmp = tempDir('check');
  const store = buildahStore(path.join(tmp, 'buildah'));
  try {
    const cid = (await store.b('from', '--pull-never', '--quiet', `oci-archive:${archive}`)).trim();
    const out = [];
    for (const c of IMAGE_CHECKS) {
      const r = await store.runInStatus(cid, c.argv);
      const output = `${r.stdout}${r.stderr}`;
      out.push({ name: c.name, code: r.code, output, ok: c.expect.test(output) && (c.exit === undefined || c.exit === r.code) });
    }
    return out;
  } finally {
    store.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/**
 * Makes sure `out` holds the image for the working tree's build, building what is stale.
 * @param {{ root?: string, tag?: string, out?: string, check?: boolean, log?: (msg: string) => void }} [opts]
 * `check`: run IMAGE_CHECKS in the new image before it replaces the old one (about a minute more).
 * @returns {Promise<{ archive: string, ref: string, built: boolean, seconds: number, baseArchive: string }>}
 */
export async function buildImage(opts = {}) {
  const t0 = Date.now();
  const root = opts.root ?? DEFAULT_ROOT;
  const tag = opts.tag ?? 'dev';
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(tag)) throw new ImageBuildError('IMAGE_BAD_TAG', `${JSON.stringify(tag)} is not an image tag`);
  const ref = `localhost/vmlet:${tag}`;
  const out = path.resolve(opts.out ?? defaultArchive(root, tag));
  const log = opts.log ?? ((m) => process.stderr.write(`build-image: ${m}\n`));
  const cacheDir = path.join(root, '.cache', 'images');
  const inp = inputs(root);
  if (!have('buildah')) throw new ImageBuildError('IMAGE_TOOL_MISSING', 'buildah is not installed (apt-get install buildah)');
  sweepTemp(pidAlive);
  const base = await ensureBase({ cacheDir, log });
  const key = projectKey(inp, base.key, tag);
  const metaFile = `${out}.json`;
  const upToDate = () => {
    try {
      const m = JSON.parse(fs.readFileSync(metaFile, 'utf8'));
      const st = fs.statSync(out);
      return m.key === key && m.size === st.size && m.mtimeMs === st.mtimeMs;
    } catch {
      return false;
    }
  };
  const result = (built) => ({ archive: out, ref, built, seconds: (Date.now() - t0) / 1000, baseArchive: base.archive });
  if (upToDate()) return result(false);
  checkLibs(inp.node, base.libs);
  checkLibs(inp.launcher, base.libs);
  checkLibs(inp.diskWait, base.libs);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  return withDirLock(
    `${out}.lock`,
    {
      what: 'image build',
      timeoutMs: 30 * 60 * 1000,
      pollMs: 500,
      log,
      timeoutError: (pid) => new ImageBuildError('IMAGE_LOCK_TIMEOUT', `another build (pid ${pid}) holds ${out}.lock`),
    },
    async () => {
      if (upToDate()) return result(false);
      const modules = await prodModules(inp, cacheDir, log);
      const tmp = tempDir('project');
      const partial = `${out}.tmp-${process.pid}`;
      try {
        const ctx = path.join(tmp, 'ctx');
        stage(ctx, inp, modules);
        log(`building ${ref} on ${path.basename(base.archive)}`);
        const version = JSON.parse(fs.readFileSync(inp.pkg, 'utf8')).version;
        await appendLayer({
          baseArchive: base.archive,
          ctx,
          work: tmp,
          ref,
          out: partial,
          comment: 'the vmlet project: dist, production node_modules, CRDs, vmlet-launch, vmlet-disk-wait, node',
          config: {
            Entrypoint: [IMAGE_PATHS.cli],
            Cmd: ['--help'],
            WorkingDir: IMAGE_PATHS.app,
            Labels: { 'org.opencontainers.image.title': 'vmlet', 'org.opencontainers.image.version': version },
          },
        });
        if (opts.check) {
          const bad = (await checkImage(partial)).filter((c) => !c.ok);
          if (bad.length) throw new ImageBuildError('IMAGE_CHECK_FAILED', bad.map((c) => `${c.name}: exit ${c.code}: ${c.output.trim().split('\n').slice(-3).join(' | ')}`).join('; '));
          log('checked: node, koffi, gRPC, vmlet, QEMU, vmlet-launch, /bin/cp and vmlet-disk-wait run in the image');
        }
        fs.renameSync(partial, out);
        const st = fs.statSync(out);
        fs.writeFileSync(metaFile, `${JSON.stringify({ key, ref, size: st.size, mtimeMs: st.mtimeMs, builtAt: new Date().toISOString() }, null, 2)}\n`);
        const r = result(true);
        log(`${ref} → ${path.relative(process.cwd(), out)} (${Math.round(st.size / 2 ** 20)} MiB) in ${r.seconds.toFixed(1)} s`);
        return r;
      } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
        fs.rmSync(partial, { force: true });
      }
    },
  );
}

// ---------------------------------------------------------------------------------------------
// command line

if (process.argv[1] && path.resolve(process.argv[1]) === SELF) {
  const args = process.argv.slice(2);
  const usage = 'usage: node scripts/build-image.mjs [--tag T] [--out FILE] [--check]';
  /** @type {{ tag?: string, out?: string, check?: boolean }} */
  const o = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if ((a === '--tag' || a === '--out') && args[i + 1]) o[a.slice(2)] = args[++i];
    else if (a === '--check') o.check = true;
    else {
      process.stderr.write(`${usage}\n`);
      process.exit(2);
    }
  }
  try {
    const r = await buildImage({ root: DEFAULT_ROOT, ...o });
    if (!r.built) process.stderr.write(`build-image: ${r.ref} is up to date\n`);
    process.stdout.write(`${r.archive}\n`);
  } catch (e) {
    process.stderr.write(`build-image: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  }
}
