// The folders of the guest builders: unmounting what a build left mounted below them, removing them, sweeping those of builds that died half-way, and swapping a finished build into place.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pidAlive } from './dir-lock.mjs';

/** The mount points below `dir` (from /proc/self/mountinfo, octal escapes decoded), deepest first. */
export function mountsUnder(dir) {
  const prefix = `${path.resolve(dir)}/`;
  const out = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4];
    if (!mp) continue;
    const p = mp.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
    if (p.startsWith(prefix)) out.push(p);
  }
  // deepest first; a loop-mounted root (shortest) last. Its loop device goes with it (mount -o loop sets autoclear).
  return out.sort((a, b) => b.length - a.length);
}

/**
 * Removes every entry of `dir` whose name `re` matches with a pid (its first group) that is neither ours nor
 * alive, by `remove(path)`: what builds killed half-way left behind (their `finally` never ran).
 * @param {string} dir
 * @param {RegExp} re
 * @param {(p: string) => void} remove
 */
export function sweepDead(dir, re, remove) {
  let names = [];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) {
    const m = re.exec(n);
    if (m && Number(m[1]) !== process.pid && !pidAlive(Number(m[1]))) remove(path.join(dir, n));
  }
}

/**
 * The names a build of `out` gives its folders next to it, `<out>.<kind>-<pid>`, as a pattern for sweepDead.
 * @param {string} out
 * @param {string[]} kinds say ['tmp', 'old', 'work']
 */
export function buildFolderNames(out, kinds) {
  const base = path.basename(out).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`^${base}\\.(?:${kinds.join('|')})-(\\d+)$`);
}

/** Removes `lockDir` (a lock of withDirLock) when the pid in it is neither ours nor alive. */
export function removeDeadLock(lockDir) {
  try {
    const pid = Number(fs.readFileSync(path.join(lockDir, 'pid'), 'utf8'));
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && !pidAlive(pid)) fs.rmSync(lockDir, { recursive: true, force: true });
  } catch {
    /* no lock, or one being taken */
  }
}

/**
 * Unmounting and removal for a builder that mounts below its build folders (a killed build leaves its mounts:
 * nothing under a build folder is removed while a mount is there).
 * @param {(message: string) => Error} mountsLeft the builder's error for mounts that will not go
 */
export function buildDirs(mountsLeft) {
  /** Unmounts everything below `dir` (lazily when busy), in up to three rounds; throws `mountsLeft` for what stays. */
  function unmountAll(dir) {
    for (let round = 0; round < 3; round++) {
      const mps = mountsUnder(dir);
      if (mps.length === 0) return;
      for (const mp of mps) {
        try {
          execFileSync('umount', [mp], { stdio: 'ignore' });
        } catch {
          try {
            execFileSync('umount', ['-l', mp], { stdio: 'ignore' });
          } catch {
            /* next round */
          }
        }
      }
    }
    const left = mountsUnder(dir);
    if (left.length > 0) throw mountsLeft(`cannot unmount ${left.join(', ')}; remove ${dir} by hand`);
  }

  /** Unmounts what is mounted below `dir`, then removes it. */
  function removeTree(dir) {
    if (!fs.existsSync(dir)) return;
    unmountAll(dir);
    fs.rmSync(dir, { recursive: true, force: true });
  }

  /**
   * Removes the `<out>.{tmp,old,work}-<pid>` folders of dead builds, unmounting first; with `lock`, also a
   * dead build's `<out>.lock`.
   * @param {string} out
   * @param {{lock?: boolean}} [o]
   */
  function removeStale(out, o = {}) {
    sweepDead(path.dirname(out), buildFolderNames(out, ['tmp', 'old', 'work']), removeTree);
    if (o.lock) removeDeadLock(`${out}.lock`);
  }

  return { unmountAll, removeTree, removeStale };
}

/**
 * Puts the finished build `tmpOut` at `out`: `out` is either absent or complete, never half-written.
 * The one it replaces goes through `<out>.old-<pid>`.
 */
export function swapIntoPlace(tmpOut, out) {
  const old = `${out}.old-${process.pid}`;
  if (fs.existsSync(out)) fs.renameSync(out, old);
  fs.renameSync(tmpOut, out);
  fs.rmSync(old, { recursive: true, force: true });
}
