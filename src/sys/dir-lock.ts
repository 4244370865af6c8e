// One daemon per folder: an exclusive, non-blocking flock(2) on `<dir>/daemon.lock`, taken before anything in the folder is touched and held until the daemon stops (or dies: the kernel drops it).
import fs from 'node:fs';
import path from 'node:path';
import { VmletError } from '../errors.js';
import { errno, errnoCode, libc } from './libc.js';

const flock = libc.func('int flock(int fd, int operation)') as (fd: number, op: number) => number;
const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;

export const LOCK_FILE = 'daemon.lock';

export interface DirLock {
  readonly file: string;
  /** Drops the lock (closing the fd is what releases it). */
  release(): void;
}

/**
 * Locks `dir` (which must exist) for this process. DAEMON_ALREADY_RUNNING, naming the holder's pid, when
 * another process holds it. The fd is close-on-exec (libuv opens with O_CLOEXEC), so launchers and QEMU never
 * inherit it and a restarted daemon finds the folder free while its VMs run on.
 */
export function lockDir(dir: string, what: string): DirLock {
  const file = path.join(dir, LOCK_FILE);
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  if (flock(fd, LOCK_EX | LOCK_NB) !== 0) {
    const e = errno();
    const holder = fs.readFileSync(fd, 'utf8').trim();
    fs.closeSync(fd);
    if (e !== EWOULDBLOCK) throw new VmletError('DAEMON_LOCK_FAILED', `cannot lock ${what} ${dir} (${file}): flock failed with ${errnoCode(e)}`);
    throw new VmletError(
      'DAEMON_ALREADY_RUNNING',
      `${what} ${dir} is in use by another vmlet daemon${/^\d+$/.test(holder) ? ` (pid ${holder})` : ''}; stop that daemon first, or give this one its own stateDir and runDir`,
      { details: { dir, holderPid: /^\d+$/.test(holder) ? Number(holder) : undefined } },
    );
  }
  // Who holds it, for the next daemon's message; the lock, not this text, is what counts.
  fs.ftruncateSync(fd, 0);
  fs.writeSync(fd, `${process.pid}\n`, 0);
  let held = true;
  return {
    file,
    release() {
      if (!held) return;
      held = false;
      fs.closeSync(fd);
    },
  };
}

/** Locks each distinct folder in order; on a refusal the ones already taken are released. */
export function lockDirs(dirs: ReadonlyArray<{ dir: string; what: string }>): DirLock[] {
  const seen = new Set<string>();
  const locks: DirLock[] = [];
  try {
    for (const { dir, what } of dirs) {
      const real = fs.realpathSync(dir);
      if (seen.has(real)) continue;
      seen.add(real);
      locks.push(lockDir(dir, what));
    }
  } catch (e) {
    for (const l of locks) l.release();
    throw e;
  }
  return locks;
}

/**
 * lockDirs, waiting up to `waitMs` while another daemon still holds a folder: in a cluster a DaemonSet may start the
 * next daemon pod while the previous one is still terminating. `onWait` is told once, with the refusal.
 */
export async function lockDirsWaiting(
  dirs: ReadonlyArray<{ dir: string; what: string }>,
  waitMs: number,
  onWait: (e: VmletError) => void,
  pollMs = 250,
): Promise<DirLock[]> {
  const until = Date.now() + waitMs;
  let told = false;
  for (;;) {
    try {
      return lockDirs(dirs);
    } catch (e) {
      if (!(e instanceof VmletError) || e.code !== 'DAEMON_ALREADY_RUNNING' || Date.now() >= until) throw e;
      if (!told) onWait(e);
      told = true;
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }
}
