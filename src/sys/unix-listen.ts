// Creates a listening unix stream socket as a bare fd, for a child (QEMU) to inherit: clients can connect the moment it exists, long before the child serves it.
import { VmletError } from '../errors.js';
import { closeFd, errno, errnoCode, errnoName, libc, SOCK_CLOEXEC } from './libc.js';

const AF_UNIX = 1;
const SOCK_STREAM = 1;
/** sizeof(sockaddr_un.sun_path) */
const SUN_PATH_MAX = 108;

const socketFn = libc.func('int socket(int domain, int type, int protocol)');
const bindFn = libc.func('int bind(int fd, void *addr, uint32_t len)');
const listenFn = libc.func('int listen(int fd, int backlog)');
const unlinkFn = libc.func('int unlink(const char *path)');

function fail(what: string, path: string): VmletError {
  const n = errno();
  return new VmletError('SYS_SOCKET', `${what} ${path}: ${errnoName(n)}`, { errno: errnoCode(n) });
}

/**
 * A close-on-exec, listening unix socket bound at `path` (a stale file there is replaced). Returns the fd; the caller
 * hands it on and closes its copy. SYS_SOCKET on failure, with nothing left open.
 */
export function listenUnixFd(path: string, backlog = 16): number {
  const bytes = Buffer.from(path);
  if (bytes.length >= SUN_PATH_MAX) throw new VmletError('SYS_SOCKET', `socket path too long (${bytes.length} bytes, at most ${SUN_PATH_MAX - 1}): ${path}`);
  const addr = Buffer.alloc(2 + SUN_PATH_MAX);
  addr.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(addr, 2);
  const fd = socketFn(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw fail('socket for', path);
  try {
    unlinkFn(path);
    if ((bindFn(fd, addr, 2 + bytes.length + 1) as number) !== 0) throw fail('bind', path);
    if ((listenFn(fd, backlog) as number) !== 0) throw fail('listen', path);
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  return fd;
}
