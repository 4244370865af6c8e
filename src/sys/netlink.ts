// A blocking NETLINK_ROUTE socket through koffi, opened on the host or inside a netns: one request at a time, its ack, reply or dump read synchronously.
import { VmletError } from '../errors.js';
import { NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, parseAck, parseMessages, type Ack, type NlMessage } from '../net/rtnetlink.js';
import { libc, errno, errnoCode, errnoName, closeFd, SOCK_CLOEXEC } from './libc.js';
import { withNetns, type WithNetnsOptions } from './netns.js';

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const NETLINK_ROUTE = 0;
const SOL_SOCKET = 1;
const SO_RCVTIMEO = 20;
const SOL_NETLINK = 270;
const NETLINK_CAP_ACK = 10;
const NETLINK_EXT_ACK = 11;
const EINTR = 4;

const socketFn = libc.func('int socket(int domain, int type, int protocol)');
const setsockoptFn = libc.func('int setsockopt(int fd, int level, int name, void *value, uint32_t len)');
const bindFn = libc.func('int bind(int fd, void *addr, uint32_t len)');
const sendFn = libc.func('long send(int fd, void *buf, size_t len, int flags)');
const recvFn = libc.func('long recv(int fd, void *buf, size_t len, int flags)');

export interface NetlinkOpenOptions extends WithNetnsOptions {
  /** open the socket inside this netns (e.g. /run/netns/NAME); default: the caller's */
  netnsPath?: string;
  /** a reply that does not come within this time fails with EAGAIN; default 5000 */
  timeoutMs?: number;
}

function int(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return b;
}

function fail(what: string): never {
  const e = errno();
  throw new VmletError('SYS_SOCKET', `${what} on a netlink socket failed: ${errnoName(e)}`, { errno: errnoCode(e) });
}

/** Opens and binds the socket in the calling thread's netns; the fd or SYS_SOCKET. */
function openHere(timeoutMs: number): number {
  const fd = socketFn(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE) as number;
  if (fd < 0) fail('socket(AF_NETLINK)');
  try {
    // the kernel's error text in acks, and acks without a copy of the request
    if (setsockoptFn(fd, SOL_NETLINK, NETLINK_EXT_ACK, int(1), 4) !== 0) fail('NETLINK_EXT_ACK');
    if (setsockoptFn(fd, SOL_NETLINK, NETLINK_CAP_ACK, int(1), 4) !== 0) fail('NETLINK_CAP_ACK');
    const tv = Buffer.alloc(16);
    tv.writeBigInt64LE(BigInt(Math.floor(timeoutMs / 1000)), 0);
    tv.writeBigInt64LE(BigInt((timeoutMs % 1000) * 1000), 8);
    if (setsockoptFn(fd, SOL_SOCKET, SO_RCVTIMEO, tv, tv.length) !== 0) fail('SO_RCVTIMEO');
    // sockaddr_nl: family, pad, pid 0 (the kernel picks one), no groups
    const sa = Buffer.alloc(12);
    sa.writeUInt16LE(AF_NETLINK, 0);
    if (bindFn(fd, sa, sa.length) !== 0) fail('bind');
    return fd;
  } catch (e) {
    closeFd(fd);
    throw e;
  }
}

/**
 * One NETLINK_ROUTE socket. rtnetlink handles a request inside send(), so its answer is queued
 * by the time recv() runs: the blocking calls return at once and the event loop stalls only for
 * the kernel's own work. Not for concurrent use; close() it when done.
 */
export class NetlinkSocket {
  private seq = 0;
  private readonly buf = Buffer.alloc(65536);
  private pending: NlMessage[] = [];

  private constructor(private fd: number) {}

  /** Opens a socket; with `netnsPath` it is made inside that netns (and stays there) and the thread returns at once. */
  static open(opts: NetlinkOpenOptions = {}): NetlinkSocket {
    const timeoutMs = opts.timeoutMs ?? 5000;
    if (opts.netnsPath === undefined) return new NetlinkSocket(openHere(timeoutMs));
    const withOpts: WithNetnsOptions = opts.selfNetns !== undefined ? { selfNetns: opts.selfNetns } : {};
    return new NetlinkSocket(withNetns(opts.netnsPath, () => openHere(timeoutMs), withOpts));
  }

  /** Stamps a fresh sequence number into `msg` and sends it; returns that number. */
  private send(msg: Buffer): number {
    if (this.fd < 0) throw new VmletError('SYS_SOCKET', 'netlink socket used after close');
    this.seq = (this.seq + 1) >>> 0 || 1;
    msg.writeUInt32LE(this.seq, 8);
    this.pending = [];
    for (;;) {
      const n = Number(sendFn(this.fd, msg, msg.length, 0));
      if (n === msg.length) return this.seq;
      if (n < 0 && errno() === EINTR) continue;
      if (n < 0) fail('send');
      throw new VmletError('SYS_SOCKET', `short send on a netlink socket (${n} of ${msg.length} bytes)`);
    }
  }

  /** The next message answering sequence `seq` (others are dropped: nothing else is asked on this socket). */
  private next(seq: number): NlMessage {
    for (;;) {
      const m = this.pending.shift();
      if (m !== undefined) {
        if (m.seq === seq) return m;
        continue;
      }
      const n = Number(recvFn(this.fd, this.buf, this.buf.length, 0));
      if (n < 0) {
        if (errno() === EINTR) continue;
        fail('recv');
      }
      if (n === 0) throw new VmletError('SYS_SOCKET', 'netlink socket closed by the kernel');
      // copies: the receive buffer is reused
      this.pending = parseMessages(Buffer.from(this.buf.subarray(0, n)));
    }
  }

  /** Sends a request (NLM_F_ACK is added) and returns its ack: errno 0 or the kernel's error. */
  ack(msg: Buffer): Ack {
    msg.writeUInt16LE(msg.readUInt16LE(6) | NLM_F_ACK, 6);
    const seq = this.send(msg);
    for (;;) {
      const m = this.next(seq);
      if (m.type === NLMSG_ERROR) return parseAck(m);
    }
  }

  /** Sends a request without NLM_F_ACK and returns its one reply, or the error ack instead. */
  get(msg: Buffer): NlMessage | Ack {
    const m = this.next(this.send(msg));
    return m.type === NLMSG_ERROR ? parseAck(m) : m;
  }

  /** Sends an NLM_F_DUMP request; all its messages up to NLMSG_DONE, or the error ack. */
  dump(msg: Buffer): NlMessage[] | Ack {
    const seq = this.send(msg);
    const out: NlMessage[] = [];
    for (;;) {
      const m = this.next(seq);
      if (m.type === NLMSG_DONE) return out;
      if (m.type === NLMSG_ERROR) return parseAck(m);
      out.push(m);
    }
  }

  close(): void {
    if (this.fd >= 0) closeFd(this.fd);
    this.fd = -1;
  }
}

/** Whether a get() or dump() answer is an error ack rather than messages. */
export function isAck(x: NlMessage | NlMessage[] | Ack): x is Ack {
  return !Array.isArray(x) && 'errno' in x;
}
