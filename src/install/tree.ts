// What an install copies from a built vmlet tree: the parts the daemon and CLI load at run time, the production packages of package-lock.json, and a content id that names the version's folder.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { VmletError } from '../errors.js';

/** Files and folders of a built tree that an installed daemon reads (relative to the tree). */
export const RUNTIME_PARTS = [
  'package.json',
  'package-lock.json',
  'dist',
  // the CRDs are the API's schema (src/api/schema.ts reads ../../deploy/crds from dist/api)
  'deploy/crds',
  // tsc does not copy the device plugin's .proto; dist/daemon looks for it in ../../src/daemon/proto
  'src/daemon/proto',
  'native/build/vmlet-launch',
  'native/build/vmlet-pause',
  'native/build/vmlet-disk-wait',
  'native/build/kvm-probe.elf',
  'systemd/vmlet.service',
  // the unit and the default config point here
  'docs',
] as const;

/** Parts without which an install would not run: their absence means the tree was not built. */
const REQUIRED = ['package.json', 'package-lock.json', 'dist/cli/main.js', 'native/build/vmlet-launch', 'systemd/vmlet.service'];

export interface SourceTree {
  dir: string;
  /** package.json's version */
  version: string;
  /** `<version>-<8 hex of the content hash>`: a rebuild with other code gets a folder of its own */
  id: string;
  /** top-level node_modules entries (e.g. `pino`, `@grpc/grpc-js`) that production needs */
  packages: string[];
}

interface LockFile {
  packages?: Record<string, { dev?: boolean; link?: boolean }>;
}

/** Reads and checks a built tree; refuses one that lacks its build output, naming what to run. */
export function readSourceTree(dir: string): SourceTree {
  const missing = REQUIRED.filter((p) => !fs.existsSync(path.join(dir, p)));
  if (missing.length > 0) {
    throw new VmletError(
      'INSTALL_TREE_INCOMPLETE',
      `${dir} is not a built vmlet tree: ${missing.join(', ')} missing (run "npm run build" and "make -C native" there, or "npm run install-node")`,
    );
  }
  const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { version?: unknown };
  const version = typeof pkg.version === 'string' && /^[0-9A-Za-z.+-]+$/.test(pkg.version) ? pkg.version : undefined;
  if (version === undefined) throw new VmletError('INSTALL_TREE_INCOMPLETE', `${dir}/package.json has no usable version`);
  const lock = JSON.parse(fs.readFileSync(path.join(dir, 'package-lock.json'), 'utf8')) as LockFile;
  return { dir, version, id: `${version}-${contentHash(dir).slice(0, 8)}`, packages: productionPackages(lock, path.join(dir, 'node_modules')) };
}

/** Top-level packages that are not dev-only, and are on disk (optional ones of other platforms are not). */
export function productionPackages(lock: LockFile, nodeModules: string): string[] {
  const out: string[] = [];
  for (const [key, entry] of Object.entries(lock.packages ?? {})) {
    const m = /^node_modules\/((?:@[^/]+\/)?[^/]+)$/.exec(key);
    if (!m || entry.dev === true || entry.link === true) continue;
    if (fs.existsSync(path.join(nodeModules, m[1]!))) out.push(m[1]!);
  }
  return out.sort();
}

/** sha256 over every runtime file's path and bytes, in a fixed order. */
function contentHash(dir: string): string {
  const h = createHash('sha256');
  const walk = (rel: string): void => {
    const abs = path.join(dir, rel);
    if (!fs.existsSync(abs)) return;
    if (rel === path.join('dist', '.build-stamp')) return;
    if (fs.statSync(abs).isDirectory()) {
      for (const name of fs.readdirSync(abs).sort()) walk(path.join(rel, name));
      return;
    }
    h.update(`${rel}\0`);
    h.update(fs.readFileSync(abs));
  };
  for (const part of RUNTIME_PARTS) walk(part);
  return h.digest('hex');
}

/** Copies the runtime parts and production packages of `tree` into `dest` (which must not exist). */
export function copyTree(tree: SourceTree, dest: string): void {
  fs.mkdirSync(dest, { recursive: true, mode: 0o755 });
  const copy = (rel: string, from: string): void => {
    const src = path.join(from, rel);
    if (!fs.existsSync(src)) return;
    fs.mkdirSync(path.dirname(path.join(dest, rel)), { recursive: true });
    fs.cpSync(src, path.join(dest, rel), { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
  };
  for (const part of RUNTIME_PARTS) copy(part, tree.dir);
  for (const p of tree.packages) copy(path.join('node_modules', p), tree.dir);
}
