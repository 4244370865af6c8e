// Loads libc once through koffi and exposes errno, so the few syscalls Node lacks share one binding.
import os from 'node:os';
import koffi from 'koffi';

export const libc = koffi.load('libc.so.6');

const errnoLocation = libc.func('int *__errno_location()');
const strerrorFn = libc.func('const char *strerror(int errnum)');

/** open(2) and socket(2) flags (Linux) for the koffi-bound calls. */
export const O_RDONLY = 0;
export const O_RDWR = 2;
export const O_CLOEXEC = 0o2000000;
export const SOCK_CLOEXEC = O_CLOEXEC;

/** The calling thread's errno, read right after a failed libc call. */
export function errno(): number {
  const p: unknown = errnoLocation();
  return koffi.decode(p, 'int') as number;
}

/** Name of an errno value (ENOENT, EBADF, ...) for messages, or the number when unknown. */
export function errnoName(n: number): string {
  const table: Record<number, string> = {
    1: 'EPERM',
    2: 'ENOENT',
    9: 'EBADF',
    11: 'EAGAIN',
    12: 'ENOMEM',
    13: 'EACCES',
    14: 'EFAULT',
    22: 'EINVAL',
    24: 'EMFILE',
    32: 'EPIPE',
    88: 'ENOTSOCK',
    95: 'EOPNOTSUPP',
    104: 'ECONNRESET',
    107: 'ENOTCONN',
  };
  return table[n] ?? `errno ${n}`;
}

/** The C library's text for an errno ("No such device"), as ip prints it. */
export function errnoText(n: number): string {
  const s: unknown = strerrorFn(n);
  return typeof s === 'string' ? s : errnoName(n);
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(os.constants.errno).map(([name, n]) => [n, name]));

/** The symbolic errno (`EAGAIN`, `EBUSY`, …) for an error's `errno` field: every errno the OS knows, `errno N` otherwise. */
export function errnoCode(n: number): string {
  return ERRNO_NAMES.get(n) ?? `errno ${n}`;
}

/** close(2), for fds that koffi-bound calls hand back. */
export const closeFd = libc.func('int close(int fd)') as (fd: number) => number;

/** Closes each fd (e.g. the daemon's copies of fds handed to QEMU). */
export function closeFds(fds: readonly number[]): void {
  for (const fd of fds) closeFd(fd);
}
