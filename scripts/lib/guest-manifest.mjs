// The manifest.json of a cached guest image: reading it, the entry it records for each of its files, and the paths of the kernel, initrd and disk it names.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/**
 * The parsed `<dir>/manifest.json`, or null when there is none or it is not JSON.
 * @param {string} dir
 */
export function readManifest(dir) {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  } catch {
    return null;
  }
}

/**
 * The manifest's entry for `<dir>/<file>`: size and mtime (what filesAsRecorded checks) and, with `hash`, its sha256.
 * @param {string} dir
 * @param {string} file
 * @param {boolean} [hash]
 */
export function fileMeta(dir, file, hash = true) {
  const p = path.join(dir, file);
  const st = fs.statSync(p);
  return { file, size: st.size, mtimeMs: st.mtimeMs, ...(hash ? { sha256: crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex') } : {}) };
}

/**
 * The image in `dir` as paths: the kernel, initrd and disk its manifest names, and the kernel command line it was made for.
 * @template {{kernelArgs: string, kernel: {file: string}, initrd: {file: string}, disk: {file: string}}} M
 * @param {string} dir
 * @param {M} manifest
 */
export function imageFiles(dir, manifest) {
  return {
    dir,
    disk: path.join(dir, manifest.disk.file),
    kernel: path.join(dir, manifest.kernel.file),
    initrd: path.join(dir, manifest.initrd.file),
    kernelArgs: manifest.kernelArgs,
    manifest,
  };
}
