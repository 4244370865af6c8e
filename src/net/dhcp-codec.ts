// DHCPv4 wire format (RFC 2131/2132): decode requests and encode replies, as pure functions on Buffers.
import { VmletError } from '../errors.js';
import { bytesToMac, macToBytes } from './mac.js';
import { formatIPv4, parseIPv4 } from './ipv4.js';

export const BOOTREQUEST = 1;
export const BOOTREPLY = 2;
export const MAGIC_COOKIE = 0x63825363;
/** fixed header (236) + magic cookie (4) */
const HEADER_LEN = 240;
/** BOOTP minimum; some clients drop shorter replies */
const MIN_PACKET = 300;

export const DhcpMessageType = {
  DISCOVER: 1,
  OFFER: 2,
  REQUEST: 3,
  DECLINE: 4,
  ACK: 5,
  NAK: 6,
  RELEASE: 7,
  INFORM: 8,
} as const;
export type DhcpMessageTypeValue = (typeof DhcpMessageType)[keyof typeof DhcpMessageType];

export const DhcpOption = {
  PAD: 0,
  SUBNET_MASK: 1,
  ROUTER: 3,
  DNS: 6,
  HOSTNAME: 12,
  DOMAIN_NAME: 15,
  BROADCAST: 28,
  MTU: 26,
  REQUESTED_IP: 50,
  LEASE_TIME: 51,
  OVERLOAD: 52,
  MESSAGE_TYPE: 53,
  SERVER_ID: 54,
  PARAM_LIST: 55,
  MESSAGE: 56,
  MAX_SIZE: 57,
  RENEWAL_T1: 58,
  REBINDING_T2: 59,
  CLIENT_ID: 61,
  DOMAIN_SEARCH: 119,
  END: 255,
} as const;

export interface DhcpPacket {
  op: number;
  htype: number;
  hlen: number;
  hops: number;
  xid: number;
  secs: number;
  flags: number;
  ciaddr: string;
  yiaddr: string;
  siaddr: string;
  giaddr: string;
  /** client hardware address as a MAC (when htype 1 / hlen 6), else hex */
  chaddr: string;
  /** options by code; repeated codes are concatenated (RFC 3396) */
  options: Map<number, Buffer>;
}

function malformed(msg: string): never {
  throw new VmletError('DHCP_MALFORMED', msg);
}

function readOptions(buf: Buffer, start: number, end: number, into: Map<number, Buffer>): void {
  let i = start;
  while (i < end) {
    const code = buf[i]!;
    if (code === DhcpOption.END) return;
    if (code === DhcpOption.PAD) {
      i++;
      continue;
    }
    if (i + 1 >= end) malformed(`option ${code} has no length byte`);
    const len = buf[i + 1]!;
    if (i + 2 + len > end) malformed(`option ${code} runs past the end of the packet`);
    const val = buf.subarray(i + 2, i + 2 + len);
    const prev = into.get(code);
    into.set(code, prev ? Buffer.concat([prev, val]) : Buffer.from(val));
    i += 2 + len;
  }
}

/** Decodes a BOOTP/DHCP packet; DHCP_MALFORMED if it is too short, lacks the magic cookie or has broken options. */
export function decodeDhcp(buf: Buffer): DhcpPacket {
  if (buf.length < HEADER_LEN) malformed(`packet of ${buf.length} bytes is shorter than the ${HEADER_LEN}-byte DHCP header`);
  if (buf.readUInt32BE(236) !== MAGIC_COOKIE) malformed('no DHCP magic cookie');
  const hlen = buf[2]!;
  if (hlen > 16) malformed(`hardware address length ${hlen} > 16`);
  const options = new Map<number, Buffer>();
  readOptions(buf, HEADER_LEN, buf.length, options);
  // option overload: more options in file (1), sname (2) or both (3)
  const ov = options.get(DhcpOption.OVERLOAD)?.[0];
  if (ov === 1 || ov === 3) readOptions(buf, 108, 236, options);
  if (ov === 2 || ov === 3) readOptions(buf, 44, 108, options);
  const ch = buf.subarray(28, 28 + hlen);
  return {
    op: buf[0]!,
    htype: buf[1]!,
    hlen,
    hops: buf[3]!,
    xid: buf.readUInt32BE(4),
    secs: buf.readUInt16BE(8),
    flags: buf.readUInt16BE(10),
    ciaddr: formatIPv4(buf.readUInt32BE(12)),
    yiaddr: formatIPv4(buf.readUInt32BE(16)),
    siaddr: formatIPv4(buf.readUInt32BE(20)),
    giaddr: formatIPv4(buf.readUInt32BE(24)),
    chaddr: buf[1] === 1 && hlen === 6 ? bytesToMac(ch) : ch.toString('hex'),
    options,
  };
}

/** DHCP message type (option 53), or null for plain BOOTP. */
export function messageType(p: DhcpPacket): number | null {
  const v = p.options.get(DhcpOption.MESSAGE_TYPE);
  return v && v.length === 1 ? v[0]! : null;
}

/** An option holding one IPv4 address (50, 54), or null. */
export function optionIp(p: DhcpPacket, code: number): string | null {
  const v = p.options.get(code);
  return v && v.length === 4 ? formatIPv4(v.readUInt32BE(0)) : null;
}

// --- option value builders -------------------------------------------------------------------

export function optIps(ips: readonly string[]): Buffer {
  const b = Buffer.alloc(ips.length * 4);
  ips.forEach((ip, i) => b.writeUInt32BE(parseIPv4(ip), i * 4));
  return b;
}

export function optU32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

export function optU16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

export function optString(s: string): Buffer {
  return Buffer.from(s, 'utf8');
}

/** RFC 1035 name list (option 119), without compression. Names with empty or over-long labels are refused. */
export function optDomainSearch(names: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  for (const n of names) {
    for (const label of n.replace(/\.$/, '').split('.')) {
      if (label.length === 0 || label.length > 63) throw new VmletError('DHCP_BAD_OPTION', `search domain ${JSON.stringify(n)} has an empty or too long label`);
      parts.push(Buffer.from([label.length]), Buffer.from(label, 'ascii'));
    }
    parts.push(Buffer.from([0]));
  }
  return Buffer.concat(parts);
}

export interface DhcpReplyFields {
  xid: number;
  flags: number;
  ciaddr: string;
  yiaddr: string;
  siaddr: string;
  giaddr: string;
  chaddr: string;
  /** in the order to encode; values over 255 bytes are split (RFC 3396) */
  options: ReadonlyArray<readonly [number, Buffer]>;
}

/** Encodes a BOOTREPLY with ethernet hardware addresses; padded to 300 bytes. */
export function encodeDhcpReply(r: DhcpReplyFields): Buffer {
  const head = Buffer.alloc(HEADER_LEN);
  head[0] = BOOTREPLY;
  head[1] = 1;
  head[2] = 6;
  head[3] = 0;
  head.writeUInt32BE(r.xid >>> 0, 4);
  head.writeUInt16BE(0, 8);
  head.writeUInt16BE(r.flags & 0xffff, 10);
  head.writeUInt32BE(parseIPv4(r.ciaddr), 12);
  head.writeUInt32BE(parseIPv4(r.yiaddr), 16);
  head.writeUInt32BE(parseIPv4(r.siaddr), 20);
  head.writeUInt32BE(parseIPv4(r.giaddr), 24);
  macToBytes(r.chaddr).copy(head, 28);
  head.writeUInt32BE(MAGIC_COOKIE, 236);
  const opts: Buffer[] = [];
  for (const [code, value] of r.options) {
    if (code === DhcpOption.PAD || code === DhcpOption.END || code < 0 || code > 254)
      throw new VmletError('DHCP_BAD_OPTION', `option code ${code} cannot be encoded`);
    if (value.length === 0) {
      opts.push(Buffer.from([code, 0]));
      continue;
    }
    for (let i = 0; i < value.length; i += 255) {
      const chunk = value.subarray(i, i + 255);
      opts.push(Buffer.from([code, chunk.length]), chunk);
    }
  }
  opts.push(Buffer.from([DhcpOption.END]));
  const out = Buffer.concat([head, ...opts]);
  return out.length >= MIN_PACKET ? out : Buffer.concat([out, Buffer.alloc(MIN_PACKET - out.length)]);
}

/** Encodes a BOOTREQUEST (for tests and probes): the client side of the exchange. */
export function encodeDhcpRequest(r: {
  xid: number;
  chaddr: string;
  ciaddr?: string;
  flags?: number;
  options: ReadonlyArray<readonly [number, Buffer]>;
}): Buffer {
  const b = encodeDhcpReply({
    xid: r.xid,
    flags: r.flags ?? 0,
    ciaddr: r.ciaddr ?? '0.0.0.0',
    yiaddr: '0.0.0.0',
    siaddr: '0.0.0.0',
    giaddr: '0.0.0.0',
    chaddr: r.chaddr,
    options: r.options,
  });
  b[0] = BOOTREQUEST;
  return b;
}
