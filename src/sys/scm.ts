// Sends bytes together with file descriptors (SCM_RIGHTS) on a unix socket, reads a peer's credentials, and sees a peer hang up while the socket is not being read.
import type { Socket } from 'node:net';
import koffi from 'koffi';
import { VmletError } from '../errors.js';
import { libc, errno, errnoCode, errnoName } from './libc.js';

const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const SO_PEERCRED = 17;
const MSG_NOSIGNAL = 0x4000;

const iovec = koffi.struct('vmlet_iovec', { iov_base: 'void *', iov_len: 'size_t' });
const msghdr = koffi.struct('vmlet_msghdr', {
  msg_name: 'void *',
  msg_namelen: 'uint32_t',
  msg_iov: koffi.pointer(iovec),
  msg_iovlen: 'size_t',
  msg_control: 'void *',
  msg_controllen: 'size_t',
  msg_flags: 'int',
});
const sendmsg = libc.func('sendmsg', 'intptr_t', ['int', koffi.pointer(msghdr), 'int']);
const getsockopt = libc.func('getsockopt', 'int', ['int', 'int', 'int', 'void *', koffi.inout(koffi.pointer('uint32_t'))]);
const pollfd = koffi.struct('vmlet_pollfd', { fd: 'int', events: 'short', revents: 'short' });
const poll = libc.func('poll', 'int', ['_Inout_ vmlet_pollfd *', 'uint64_t', 'int']);
const POLLHUP = 0x10;
const POLLRDHUP = 0x2000;

/** The OS file descriptor behind a connected net.Socket (libuv keeps it on the handle). */
export function socketFd(sock: Socket): number {
  const handle: unknown = '_handle' in sock ? sock._handle : undefined;
  const fd = typeof handle === 'object' && handle !== null && 'fd' in handle ? handle.fd : undefined;
  if (typeof fd !== 'number' || fd < 0) {
    throw new VmletError('SYS_NO_FD', 'socket has no file descriptor: is it connected and not yet closed?');
  }
  return fd;
}

/** Builds the control message that carries fds: cmsghdr {len, level, type} then the ints, padded to 8. */
function rightsControl(fds: number[]): Buffer {
  const dataLen = fds.length * 4;
  const space = 16 + Math.ceil(dataLen / 8) * 8;
  const buf = Buffer.alloc(space);
  buf.writeBigUInt64LE(BigInt(16 + dataLen), 0);
  buf.writeInt32LE(SOL_SOCKET, 8);
  buf.writeInt32LE(SCM_RIGHTS, 12);
  fds.forEach((fd, i) => buf.writeInt32LE(fd, 16 + i * 4));
  return buf;
}

/** `details` of a SYS_SENDMSG error for a short write: part of `data` went out, so the stream holds half a message. */
export interface ShortWrite {
  written: number;
  length: number;
}

/**
 * One sendmsg() of `data` with `fds` attached. The socket is non-blocking under libuv, so a
 * short write (`details: ShortWrite`) or EAGAIN (`errno: 'EAGAIN'`, nothing sent) is reported
 * rather than retried: callers send small messages.
 */
export function sendWithFds(fd: number, data: Buffer, fds: number[]): void {
  if (data.length === 0) throw new VmletError('SYS_SENDMSG', 'sendmsg needs at least one byte to carry the fds');
  const control = fds.length > 0 ? rightsControl(fds) : null;
  const hdr = {
    msg_name: null,
    msg_namelen: 0,
    msg_iov: { iov_base: data, iov_len: data.length },
    msg_iovlen: 1,
    msg_control: control,
    msg_controllen: control ? control.length : 0,
    msg_flags: 0,
  };
  const n = Number(sendmsg(fd, hdr, MSG_NOSIGNAL));
  if (n < 0) {
    const e = errno();
    throw new VmletError('SYS_SENDMSG', `sendmsg with ${fds.length} fd(s) failed: ${errnoName(e)}`, { errno: errnoCode(e) });
  }
  if (n !== data.length) {
    const details: ShortWrite = { written: n, length: data.length };
    throw new VmletError('SYS_SENDMSG', `sendmsg wrote ${n} of ${data.length} bytes; the socket buffer is full`, { details });
  }
}

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

/** SO_PEERCRED of a connected unix socket: who is on the other end, as the kernel saw it at connect(). */
export function peerCred(fd: number): PeerCred {
  const buf = Buffer.alloc(12);
  const len = [12];
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, buf, len) !== 0) {
    const e = errno();
    throw new VmletError('SYS_PEERCRED', `getsockopt(SO_PEERCRED) failed: ${errnoName(e)}`, { errno: errnoCode(e) });
  }
  return { pid: buf.readInt32LE(0), uid: buf.readUInt32LE(4), gid: buf.readUInt32LE(8) };
}

/**
 * Whether the peer of a unix stream socket has closed or shut down its sending side (POLLRDHUP/POLLHUP, without
 * waiting). For a socket the daemon stopped reading (backpressure), where no 'end' event can come.
 */
export function peerHungUp(fd: number): boolean {
  const p = { fd, events: POLLRDHUP, revents: 0 };
  if (poll(p, 1, 0) < 0) return false;
  return (p.revents & (POLLRDHUP | POLLHUP)) !== 0;
}
