// Speaks systemd's sd_notify datagram protocol (READY=1, STATUS=…, WATCHDOG=1, STOPPING=1) through a unix datagram socket.
import { VmletError } from '../errors.js';
import { libc, errno, errnoCode, errnoName, closeFd, SOCK_CLOEXEC } from './libc.js';

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
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
 * need not care which way the daemon was started. A socket per message, as libsystemd's sd_notify does: even the
 * watchdog sends at most a few a second, and there is no long-lived fd to keep, share or close.
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

/**
 * How often to send WATCHDOG=1: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises; undefined without a
 * watchdog, or when WATCHDOG_PID names another process (the variables are inherited by children).
 */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): number | undefined {
  const usec = env.WATCHDOG_USEC;
  if (usec === undefined || !/^[0-9]+$/.test(usec) || Number(usec) === 0) return undefined;
  const owner = env.WATCHDOG_PID;
  if (owner !== undefined && owner !== '' && owner !== String(pid)) return undefined;
  return Math.max(1, Math.floor(Number(usec) / 2000));
}
