// Creates a UDP socket inside another network namespace (bound to a port and a device) for Node's dgram to adopt by fd.
import { VmletError } from '../errors.js';
import { libc, errno, errnoCode, errnoName, closeFd, SOCK_CLOEXEC } from './libc.js';
import { withNetns, type WithNetnsOptions } from './netns.js';

const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const SO_BROADCAST = 6;
const SO_BINDTODEVICE = 25;

const socketFn = libc.func('int socket(int domain, int type, int protocol)');
const setsockoptFn = libc.func('int setsockopt(int fd, int level, int name, void *value, uint32_t len)');
const bindFn = libc.func('int bind(int fd, void *addr, uint32_t len)');

export interface UdpInNetnsOptions extends WithNetnsOptions {
  /** e.g. /run/netns/vmlet-1a2b3c4d */
  netnsPath: string;
  port: number;
  /** SO_BINDTODEVICE: receive and send only on this interface */
  device?: string;
  /** local address to bind; default 0.0.0.0 (needed to receive broadcasts) */
  address?: string;
  /** SO_BROADCAST, default true */
  broadcast?: boolean;
}

function sockaddrIn(address: string, port: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt16LE(AF_INET, 0);
  b.writeUInt16BE(port, 2);
  const parts = address.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new VmletError('SYS_SOCKET', `bad IPv4 address ${JSON.stringify(address)}`);
  }
  Buffer.from(parts).copy(b, 4);
  return b;
}

function int(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return b;
}

/**
 * A non-blocking, close-on-exec UDP socket created and bound inside `netnsPath` (SO_REUSEADDR,
 * SO_BROADCAST, SO_BINDTODEVICE). Returns the fd; hand it to `dgram.createSocket('udp4').bind({ fd })`.
 * The socket stays in that netns for its whole life. SYS_SOCKET on failure (nothing is leaked).
 */
export function udpSocketInNetns(opts: UdpInNetnsOptions): number {
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) throw new VmletError('SYS_SOCKET', `bad port ${opts.port}`);
  const addr = sockaddrIn(opts.address ?? '0.0.0.0', opts.port);
  const withOpts: WithNetnsOptions = opts.selfNetns !== undefined ? { selfNetns: opts.selfNetns } : {};
  return withNetns(
    opts.netnsPath,
    () => {
      const fd = socketFn(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) as number;
      if (fd < 0) {
        const e = errno();
        throw new VmletError('SYS_SOCKET', `socket(AF_INET, SOCK_DGRAM) in ${opts.netnsPath} failed: ${errnoName(e)}`, { errno: errnoCode(e) });
      }
      const fail = (what: string): never => {
        const e = errno();
        closeFd(fd);
        throw new VmletError('SYS_SOCKET', `${what} on a UDP socket in ${opts.netnsPath} failed: ${errnoName(e)}`, { errno: errnoCode(e) });
      };
      if (setsockoptFn(fd, SOL_SOCKET, SO_REUSEADDR, int(1), 4) !== 0) fail('SO_REUSEADDR');
      if ((opts.broadcast ?? true) && setsockoptFn(fd, SOL_SOCKET, SO_BROADCAST, int(1), 4) !== 0) fail('SO_BROADCAST');
      if (opts.device !== undefined) {
        const dev = Buffer.from(`${opts.device}\0`, 'ascii');
        if (dev.length > 16) fail(`SO_BINDTODEVICE(${opts.device}: name too long)`);
        if (setsockoptFn(fd, SOL_SOCKET, SO_BINDTODEVICE, dev, dev.length) !== 0) fail(`SO_BINDTODEVICE(${opts.device})`);
      }
      if (bindFn(fd, addr, addr.length) !== 0) fail(`bind(${opts.address ?? '0.0.0.0'}:${opts.port})`);
      return fd;
    },
    withOpts,
  );
}

/** close(2) for an fd that no Node object owns. */
export { closeFd };
