// Creates a named network namespace as `ip netns add NAME` does (a new netns bind-mounted on DIR/NAME, DIR a shared mount), on the calling thread, which returns to its own netns.
import fs from 'node:fs';
import path from 'node:path';
import { VmletError } from '../errors.js';
import { libc, errno, errnoCode, errnoText } from './libc.js';
import { CLONE_NEWNET, netnsStuck, setNetns, type WithNetnsOptions } from './netns.js';

const MS_BIND = 0x1000;
const MS_REC = 0x4000;
const MS_SHARED = 0x100000;
const MNT_DETACH = 2;
const EINVAL = 22;

const mountFn = libc.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const void *data)');
const umount2Fn = libc.func('int umount2(const char *target, int flags)');
const unshareFn = libc.func('int unshare(int flags)');

/** netns directories this process has made shared mount points (ip does it each time; once is enough for one daemon) */
const sharedDirs = new Set<string>();

function failed(what: string, n: number): VmletError {
  return new VmletError('NET_COMMAND_FAILED', `${what}: ${errnoText(n)}`, { errno: errnoCode(n) });
}

/** The errno of a failed node:fs call (its `errno` is negative). */
function fsErrno(e: unknown): number {
  const n = (e as NodeJS.ErrnoException).errno;
  return typeof n === 'number' ? Math.abs(n) : EINVAL;
}

/**
 * mkdir -p DIR, then DIR a shared mount point (bound onto itself first if it is none), so that
 * the netns mounts in it reach other mount namespaces and so does their unmount at `netns del`:
 * else a netns stays alive as long as any other mount namespace holds a copy of its mount.
 */
function shareNetnsDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  } catch (e) {
    throw failed(`mkdir ${dir} failed`, fsErrno(e));
  }
  if (sharedDirs.has(dir)) return;
  let bound = false;
  while (mountFn('', dir, 'none', MS_SHARED | MS_REC, null) !== 0) {
    const n = errno();
    // EINVAL: not a mount point yet
    if (n !== EINVAL || bound) throw failed(`mount --make-shared ${dir} failed`, n);
    if (mountFn(dir, dir, 'none', MS_BIND | MS_REC, null) !== 0) throw failed(`mount --bind ${dir} ${dir} failed`, errno());
    bound = true;
  }
  sharedDirs.add(dir);
}

/** Best effort: what a failed creation leaves of DIR/NAME goes. */
function removeNetnsFile(file: string, mounted: boolean): void {
  if (mounted) umount2Fn(file, MNT_DETACH);
  try {
    fs.unlinkSync(file);
  } catch {
    /* the error being thrown matters more */
  }
}

/**
 * Makes a new netns and binds it on `dir/name`, as `ip netns add`: NET_COMMAND_FAILED with the
 * errno (EEXIST when the name is taken; that netns is left alone). The calling (main JS) thread
 * unshares into the new netns and setns'es back; if it cannot, SYS_SETNS_RESTORE: the process
 * must exit. `name` must be a plain file name (the caller checks).
 */
export function createNamedNetns(dir: string, name: string, opts: WithNetnsOptions = {}): void {
  const selfPath = opts.selfNetns ?? '/proc/thread-self/ns/net';
  shareNetnsDir(dir);
  const file = path.join(dir, name);
  let self: number;
  try {
    self = fs.openSync(selfPath, 'r');
  } catch (e) {
    throw new VmletError('SYS_SETNS', `cannot open ${selfPath}`, { cause: e });
  }
  try {
    try {
      fs.closeSync(fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0));
    } catch (e) {
      throw failed(`Cannot create namespace file "${file}"`, fsErrno(e));
    }
    let err: unknown;
    let mounted = false;
    try {
      if (unshareFn(CLONE_NEWNET) !== 0) throw failed(`Failed to create a new network namespace "${name}"`, errno());
      // the thread's netns is the new one now: its nsfs file is what keeps it alive once the thread leaves
      if (mountFn(selfPath, file, 'none', MS_BIND, null) !== 0) throw failed(`Bind ${selfPath} -> ${file} failed`, errno());
      mounted = true;
    } catch (e) {
      err = e;
    }
    try {
      setNetns(self, selfPath);
    } catch (e) {
      err = netnsStuck(
        new VmletError('SYS_SETNS_RESTORE', `the main thread is stuck in the new netns ${file}: cannot return to its own netns; the process must exit`, {
          cause: e,
        }),
      );
    }
    if (err !== undefined) {
      removeNetnsFile(file, mounted);
      throw err;
    }
  } finally {
    fs.closeSync(self);
  }
}
