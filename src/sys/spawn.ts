// Starts programs with posix_spawn (vfork-style: the daemon's page tables are not copied, unlike child_process's fork) and reaps them from one SIGCHLD handler.
import { constants } from 'node:os';
import { VmletError } from '../errors.js';
import { errnoCode, errnoName, libc, O_RDONLY } from './libc.js';

// glibc's values (spawn.h, fcntl.h, wait.h)
const POSIX_SPAWN_SETSIGDEF = 0x04;
const POSIX_SPAWN_SETSIGMASK = 0x08;
const POSIX_SPAWN_SETSID = 0x80;
const WNOHANG = 1;
// Larger than glibc's posix_spawn_file_actions_t (80 bytes), posix_spawnattr_t (336) and sigset_t (128).
const OPAQUE_BYTES = 1024;

const posixSpawn = libc.func('int posix_spawn(_Out_ int *pid, const char *path, void *fileActions, void *attr, const char **argv, const char **envp)');
const posixSpawnp = libc.func('int posix_spawnp(_Out_ int *pid, const char *file, void *fileActions, void *attr, const char **argv, const char **envp)');
const faInit = libc.func('int posix_spawn_file_actions_init(void *fa)');
const faDestroy = libc.func('int posix_spawn_file_actions_destroy(void *fa)');
const faAddOpen = libc.func('int posix_spawn_file_actions_addopen(void *fa, int fd, const char *path, int oflag, uint32_t mode)');
const faAddDup2 = libc.func('int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)');
const attrInit = libc.func('int posix_spawnattr_init(void *attr)');
const attrDestroy = libc.func('int posix_spawnattr_destroy(void *attr)');
const attrSetFlags = libc.func('int posix_spawnattr_setflags(void *attr, short flags)');
const attrSetSigMask = libc.func('int posix_spawnattr_setsigmask(void *attr, void *set)');
const attrSetSigDefault = libc.func('int posix_spawnattr_setsigdefault(void *attr, void *set)');
const sigemptyset = libc.func('int sigemptyset(void *set)');
const sigfillset = libc.func('int sigfillset(void *set)');
const waitpid = libc.func('int waitpid(int pid, _Out_ int *status, int options)');

/** glibc ≥ 2.34; without it the child relies on close-on-exec alone. */
const faAddCloseFrom = ((): ((fa: Buffer, from: number) => number) | null => {
  try {
    return libc.func('int posix_spawn_file_actions_addclosefrom_np(void *fa, int from)') as (fa: Buffer, from: number) => number;
  } catch {
    return null;
  }
})();

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SpawnDetachedOptions {
  /** absolute path of the program */
  file: string;
  /** argv[0] first */
  argv: readonly string[];
  env: Readonly<Record<string, string>>;
  /** fd that becomes the child's stdout and stderr (stdin is /dev/null) */
  outputFd: number;
}

export interface Spawned {
  pid: number;
  /** Resolves when the child exits while this process runs (it is reaped then, never left a zombie). */
  exited: Promise<ExitInfo>;
}

export type SpawnedDetached = Spawned;

/** One step of the child's fd set-up, done in order between posix_spawn's clone and exec. */
export type FdAction = { op: 'open'; fd: number; path: string; flags: number } | { op: 'dup2'; from: number; to: number };

export interface SpawnRequest {
  /** a path, or with `searchPath` a bare name looked up in PATH (as execFile does) */
  file: string;
  /** argv[0] first */
  argv: readonly string[];
  /** NAME=value entries */
  env: readonly string[];
  fds: readonly FdAction[];
  searchPath?: boolean;
  /** a session of its own (setsid) */
  setsid?: boolean;
  /** close every fd from 3 up in the child too: a guard should some fd lack close-on-exec */
  closeFrom3?: boolean;
}

const waiting = new Map<number, (e: ExitInfo) => void>();
let listening = false;

const signalNames = new Map<number, NodeJS.Signals>(Object.entries(constants.signals).map(([name, n]) => [n, name as NodeJS.Signals]));

/** Decodes a wait status (WIFEXITED / WTERMSIG). */
export function decodeWaitStatus(status: number): ExitInfo {
  const sig = status & 0x7f;
  if (sig === 0) return { code: (status >> 8) & 0xff, signal: null };
  return { code: null, signal: signalNames.get(sig) ?? 'SIGKILL' };
}

/** waitpid(pid, WNOHANG) for one child of ours; true once it is settled. */
function reapOne(pid: number, resolve: (e: ExitInfo) => void): boolean {
  const status = [0];
  const r = waitpid(pid, status, WNOHANG) as number;
  if (r === pid) {
    waiting.delete(pid);
    resolve(decodeWaitStatus(status[0]!));
    return true;
  }
  if (r < 0) {
    // not our child any more (reaped elsewhere): nothing will ever come
    waiting.delete(pid);
    resolve({ code: null, signal: null });
    return true;
  }
  return false;
}

/**
 * The one SIGCHLD handler for every child started here, whatever its stdio. It waits per pid, never
 * waitpid(-1), so libuv's own children (child_process) are left to libuv. Signals coalesce, so
 * each run checks every child still waited for.
 */
function reap(): void {
  for (const [pid, resolve] of waiting) reapOne(pid, resolve);
}

/** True while a process of that pid exists (one of another user counts: EPERM). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Number of started children not reaped yet (for tests: nothing may stay a zombie). */
export function unreapedChildren(): number {
  return waiting.size;
}

/**
 * posix_spawn(p) of `r.file` with every signal at its default and none blocked (Node ignores
 * SIGPIPE and may block others; libuv's spawn resets them the same way) and the fd actions given.
 * The daemon's own fds are close-on-exec (libuv and koffi-opened fds alike), so the child gets only
 * what `fds` sets up. SYS_SPAWN_FAILED with `errno` (ENOENT, EACCES, …) when it cannot start.
 */
export function spawnProcess(r: SpawnRequest): Spawned {
  const fa = Buffer.alloc(OPAQUE_BYTES);
  const attr = Buffer.alloc(OPAQUE_BYTES);
  const empty = Buffer.alloc(OPAQUE_BYTES);
  const all = Buffer.alloc(OPAQUE_BYTES);
  faInit(fa);
  attrInit(attr);
  try {
    for (const a of r.fds) {
      if (a.op === 'open') faAddOpen(fa, a.fd, a.path, a.flags, 0);
      else faAddDup2(fa, a.from, a.to);
    }
    if (r.closeFrom3 && faAddCloseFrom) faAddCloseFrom(fa, 3);
    sigemptyset(empty);
    sigfillset(all);
    attrSetFlags(attr, (r.setsid ? POSIX_SPAWN_SETSID : 0) | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    attrSetSigMask(attr, empty);
    attrSetSigDefault(attr, all);
    const pid = [0];
    if (!listening) {
      listening = true;
      process.on('SIGCHLD', reap);
    }
    const err = (r.searchPath ? posixSpawnp : posixSpawn)(pid, r.file, fa, attr, [...r.argv, null], [...r.env, null]) as number;
    if (err !== 0) throw new VmletError('SYS_SPAWN_FAILED', `cannot start ${r.file}: ${errnoName(err)}`, { errno: errnoCode(err) });
    const child = pid[0]!;
    const exited = new Promise<ExitInfo>((resolve) => {
      // it may already be gone, its SIGCHLD handled before it was waited for
      if (!reapOne(child, resolve)) waiting.set(child, resolve);
    });
    return { pid: child, exited };
  } finally {
    faDestroy(fa);
    attrDestroy(attr);
  }
}

/**
 * posix_spawn of `file` in a new session (setsid), all signals at their defaults and none blocked,
 * stdin /dev/null and stdout/stderr on `outputFd`. The daemon's other fds are close-on-exec, so the
 * child gets only these three.
 */
export function spawnDetached(o: SpawnDetachedOptions): SpawnedDetached {
  return spawnProcess({
    file: o.file,
    argv: o.argv,
    env: Object.entries(o.env).map(([k, v]) => `${k}=${v}`),
    fds: [
      { op: 'open', fd: 0, path: '/dev/null', flags: O_RDONLY },
      { op: 'dup2', from: o.outputFd, to: 1 },
      { op: 'dup2', from: o.outputFd, to: 2 },
    ],
    setsid: true,
  });
}
