// Starts a detached program with posix_spawn (vfork-style: the daemon's page tables are not copied, unlike child_process.spawn's fork) and reaps it on SIGCHLD.
import { constants } from 'node:os';
import { VmletError } from '../errors.js';
import { errnoCode, errnoName, libc } from './libc.js';

// glibc's values (spawn.h, fcntl.h, wait.h)
const POSIX_SPAWN_SETSIGDEF = 0x04;
const POSIX_SPAWN_SETSIGMASK = 0x08;
const POSIX_SPAWN_SETSID = 0x80;
const O_RDONLY = 0;
const WNOHANG = 1;
// Larger than glibc's posix_spawn_file_actions_t (80 bytes), posix_spawnattr_t (336) and sigset_t (128).
const OPAQUE_BYTES = 1024;

const posixSpawn = libc.func('int posix_spawn(_Out_ int *pid, const char *path, void *fileActions, void *attr, const char **argv, const char **envp)');
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

export interface SpawnedDetached {
  pid: number;
  /** Resolves when the child exits while this process runs (it is reaped then, never left a zombie). */
  exited: Promise<ExitInfo>;
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

/** Reaps only the children spawned here (waitpid per pid), so libuv's own children are left to libuv. */
function reap(): void {
  for (const [pid, resolve] of waiting) {
    const status = [0];
    const r = waitpid(pid, status, WNOHANG) as number;
    if (r === pid) {
      waiting.delete(pid);
      resolve(decodeWaitStatus(status[0]!));
    } else if (r < 0) {
      // not our child any more (reaped elsewhere): nothing will ever come
      waiting.delete(pid);
      resolve({ code: null, signal: null });
    }
  }
}

/**
 * posix_spawn of `file` in a new session (setsid), all signals at their defaults and none blocked,
 * stdin /dev/null and stdout/stderr on `outputFd`. The daemon's other fds are close-on-exec
 * (libuv and koffi-opened fds alike), so the child gets only these three.
 */
export function spawnDetached(o: SpawnDetachedOptions): SpawnedDetached {
  const fa = Buffer.alloc(OPAQUE_BYTES);
  const attr = Buffer.alloc(OPAQUE_BYTES);
  const empty = Buffer.alloc(OPAQUE_BYTES);
  const all = Buffer.alloc(OPAQUE_BYTES);
  faInit(fa);
  attrInit(attr);
  try {
    faAddOpen(fa, 0, '/dev/null', O_RDONLY, 0);
    faAddDup2(fa, o.outputFd, 1);
    faAddDup2(fa, o.outputFd, 2);
    sigemptyset(empty);
    sigfillset(all);
    attrSetFlags(attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    attrSetSigMask(attr, empty);
    attrSetSigDefault(attr, all);
    const pid = [0];
    const env = Object.entries(o.env).map(([k, v]) => `${k}=${v}`);
    if (!listening) {
      listening = true;
      process.on('SIGCHLD', reap);
    }
    const err = posixSpawn(pid, o.file, fa, attr, [...o.argv, null], [...env, null]) as number;
    if (err !== 0) throw new VmletError('SYS_SPAWN_FAILED', `cannot start ${o.file}: ${errnoName(err)}`, { errno: errnoCode(err) });
    const child = pid[0]!;
    const exited = new Promise<ExitInfo>((resolve) => waiting.set(child, resolve));
    reap(); // it may already be gone
    return { pid: child, exited };
  } finally {
    faDestroy(fa);
    attrDestroy(attr);
  }
}
