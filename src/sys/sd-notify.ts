// Speaks systemd's sd_notify datagram protocol (READY=1, STATUS=…, STOPPING=1) through a unix datagram socket.
import koffi from 'koffi';
import { VmletError } from '../errors.js';
import { libc, errno, errnoCode, errnoName, closeFd } from './libc.js';

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const MSG_NOSIGNAL = 0x4000;

const socket = libc.func('int socket(int, int, int)');
const sendto = libc.func('sendto', 'intptr_t', ['int', 'void *', 'size_t', 'int', 'void *', 'uint32_t']);

/** sockaddr_un for a path, or for an abstract name when the path starts with '@'. */
function sockaddrUn(target: string): Buffer {
  const name = Buffer.from(target.startsWith('@') ? `\0${target.slice(1)}` : target);
  if (name.length > 107) throw new VmletError('SD_NOTIFY_FAILED', `NOTIFY_SOCKET path is too long: ${target}`);
  const addr = Buffer.alloc(2 + name.length + (target.startsWith('@') ? 0 : 1));
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, 2);
  return addr;
}

/**
 * Sends one notification. Returns false when not run by systemd (no NOTIFY_SOCKET), so callers
 * need not care which way the daemon was started.
 */
export function sdNotify(state: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const target = env.NOTIFY_SOCKET;
  if (!target) return false;
  const addr = sockaddrUn(target);
  const fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) {
    const e = errno();
    throw new VmletError('SD_NOTIFY_FAILED', `socket(AF_UNIX, SOCK_DGRAM) failed: ${errnoName(e)}`, { errno: errnoCode(e) });
  }
  try {
    const msg = Buffer.from(state);
    const n = Number(sendto(fd, msg, msg.length, MSG_NOSIGNAL, addr, addr.length));
    if (n < 0) {
      const e = errno();
      throw new VmletError('SD_NOTIFY_FAILED', `sendto ${target} failed: ${errnoName(e)}`, { errno: errnoCode(e) });
    }
  } finally {
    closeFd(fd);
  }
  return true;
}
