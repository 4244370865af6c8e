// Pure rtnetlink encoding and decoding: nlmsghdr, ifinfomsg, ifaddrmsg, rtmsg, (nested) rtattrs, and NLMSG_ERROR acks read as errno; no I/O.

export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;

export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
export const NLM_F_DUMP = 0x300;
/** in an ack: the request's payload is left out */
export const NLM_F_CAPPED = 0x100;
/** in an ack: extended-ack attributes follow */
export const NLM_F_ACK_TLVS = 0x200;
export const NLMSGERR_ATTR_MSG = 1;

export const RTM_NEWLINK = 16;
export const RTM_GETLINK = 18;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;

export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const IFF_UP = 0x1;

export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;
export const IFLA_MASTER = 10;
export const IFLA_LINKINFO = 18;
export const IFLA_NET_NS_FD = 28;
export const IFLA_INFO_KIND = 1;
export const IFLA_INFO_DATA = 2;
export const IFLA_INFO_SLAVE_DATA = 5;
export const VETH_INFO_PEER = 1;
export const IFLA_BRPORT_ISOLATED = 33;

export const IFA_ADDRESS = 1;
export const IFA_LOCAL = 2;

export const RTA_DST = 1;
export const RTA_OIF = 4;
export const RTA_GATEWAY = 5;
export const RT_TABLE_MAIN = 254;
export const RTPROT_BOOT = 3;
export const RT_SCOPE_UNIVERSE = 0;
export const RT_SCOPE_LINK = 253;
export const RTN_UNICAST = 1;

const NLMSG_HDRLEN = 16;

/** Netlink lengths are padded to 4 bytes. */
export const align4 = (n: number): number => (n + 3) & ~3;

/** An rtattr: raw bytes, or nested attributes. */
export interface Attr {
  type: number;
  value: Buffer | readonly Attr[];
}

export function encodeAttrs(attrs: readonly Attr[]): Buffer {
  return Buffer.concat(attrs.map(encodeAttr));
}

function encodeAttr(a: Attr): Buffer {
  const body = Buffer.isBuffer(a.value) ? a.value : encodeAttrs(a.value);
  const out = Buffer.alloc(align4(4 + body.length));
  out.writeUInt16LE(4 + body.length, 0);
  out.writeUInt16LE(a.type, 2);
  body.copy(out, 4);
  return out;
}

export const u8 = (v: number): Buffer => Buffer.from([v]);

export function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

/** A NUL-terminated string (what iproute2 sends for IFLA_IFNAME). */
export const cstr = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');
/** A string without the NUL (what iproute2 sends for IFLA_INFO_KIND). */
export const str = (s: string): Buffer => Buffer.from(s, 'utf8');

/** Four bytes of a dotted IPv4 address; throws on anything else. */
export function ipv4Bytes(addr: string): Buffer {
  const parts = addr.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) throw new Error(`not an IPv4 address: ${addr}`);
  return Buffer.from(parts.map(Number));
}

export interface IfInfo {
  family?: number;
  index?: number;
  flags?: number;
  change?: number;
}

/** struct ifinfomsg (16 bytes). */
export function ifinfomsg(i: IfInfo = {}): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt8(i.family ?? AF_UNSPEC, 0);
  b.writeInt32LE(i.index ?? 0, 4);
  b.writeUInt32LE(i.flags ?? 0, 8);
  b.writeUInt32LE(i.change ?? 0, 12);
  return b;
}

export interface IfAddr {
  family: number;
  prefixlen: number;
  flags?: number;
  scope?: number;
  index: number;
}

/** struct ifaddrmsg (8 bytes). */
export function ifaddrmsg(a: IfAddr): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(a.family, 0);
  b.writeUInt8(a.prefixlen, 1);
  b.writeUInt8(a.flags ?? 0, 2);
  b.writeUInt8(a.scope ?? 0, 3);
  b.writeUInt32LE(a.index, 4);
  return b;
}

export interface RtMsg {
  family: number;
  dstLen: number;
  table: number;
  protocol: number;
  scope: number;
  type: number;
}

/** struct rtmsg (12 bytes). */
export function rtmsg(r: RtMsg): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(r.family, 0);
  b.writeUInt8(r.dstLen, 1);
  b.writeUInt8(r.table, 4);
  b.writeUInt8(r.protocol, 5);
  b.writeUInt8(r.scope, 6);
  b.writeUInt8(r.type, 7);
  return b;
}

/** A whole netlink message: nlmsghdr, the fixed header, its attributes. */
export function nlmsg(type: number, flags: number, seq: number, header: Buffer, attrs: readonly Attr[] = []): Buffer {
  const body = Buffer.concat([header, encodeAttrs(attrs)]);
  const out = Buffer.alloc(NLMSG_HDRLEN + body.length);
  out.writeUInt32LE(out.length, 0);
  out.writeUInt16LE(type, 4);
  out.writeUInt16LE(flags, 6);
  out.writeUInt32LE(seq >>> 0, 8);
  out.writeUInt32LE(0, 12);
  body.copy(out, NLMSG_HDRLEN);
  return out;
}

export interface NlMessage {
  type: number;
  flags: number;
  seq: number;
  /** everything after the nlmsghdr */
  payload: Buffer;
}

/** Splits what one recv returned into messages; a truncated tail is an error. */
export function parseMessages(buf: Buffer): NlMessage[] {
  const out: NlMessage[] = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= buf.length) {
    const len = buf.readUInt32LE(off);
    if (len < NLMSG_HDRLEN || off + len > buf.length) throw new Error(`truncated netlink message (${len} bytes at ${off} of ${buf.length})`);
    out.push({
      type: buf.readUInt16LE(off + 4),
      flags: buf.readUInt16LE(off + 6),
      seq: buf.readUInt32LE(off + 8),
      payload: buf.subarray(off + NLMSG_HDRLEN, off + len),
    });
    off += align4(len);
  }
  return out;
}

/** Attributes of a payload from `offset` on, by type (the last one wins, as in the kernel's own parsers). */
export function parseAttrs(buf: Buffer, offset = 0): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  let off = offset;
  while (off + 4 <= buf.length) {
    const len = buf.readUInt16LE(off);
    if (len < 4 || off + len > buf.length) break;
    out.set(buf.readUInt16LE(off + 2) & 0x3fff, buf.subarray(off + 4, off + len));
    off += align4(len);
  }
  return out;
}

export interface Ack {
  /** 0 for success, else the positive errno */
  errno: number;
  /** the kernel's extended-ack text, when it sent one */
  message?: string;
}

/** Reads an NLMSG_ERROR message: its errno (0 is an ack) and the extended-ack message if any. */
export function parseAck(m: NlMessage): Ack {
  if (m.type !== NLMSG_ERROR || m.payload.length < 4) throw new Error(`not an NLMSG_ERROR message (type ${m.type})`);
  const errno = -m.payload.readInt32LE(0);
  if ((m.flags & NLM_F_ACK_TLVS) === 0 || m.payload.length < 4 + NLMSG_HDRLEN) return { errno };
  // the echoed request: its header only when capped, else the whole of it
  const echoed = (m.flags & NLM_F_CAPPED) !== 0 ? NLMSG_HDRLEN : align4(m.payload.readUInt32LE(4));
  const msg = parseAttrs(m.payload, 4 + echoed).get(NLMSGERR_ATTR_MSG);
  if (msg === undefined) return { errno };
  const text = msg.toString('utf8').replace(/\0.*$/s, '').trim();
  return text === '' ? { errno } : { errno, message: text };
}

export interface ParsedIfInfo {
  index: number;
  flags: number;
  attrs: Map<number, Buffer>;
}

export function parseIfinfomsg(payload: Buffer): ParsedIfInfo {
  return { index: payload.readInt32LE(4), flags: payload.readUInt32LE(8), attrs: parseAttrs(payload, 16) };
}

export interface ParsedIfAddr {
  family: number;
  prefixlen: number;
  flags: number;
  scope: number;
  index: number;
  attrs: Map<number, Buffer>;
}

export function parseIfaddrmsg(payload: Buffer): ParsedIfAddr {
  return {
    family: payload.readUInt8(0),
    prefixlen: payload.readUInt8(1),
    flags: payload.readUInt8(2),
    scope: payload.readUInt8(3),
    index: payload.readUInt32LE(4),
    attrs: parseAttrs(payload, 8),
  };
}
