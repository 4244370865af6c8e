// IPv4 address and CIDR arithmetic (parse, format, overlap, host ranges) as pure functions on uint32 numbers.
import { VmletError } from '../errors.js';

export interface Cidr {
  /** network address as an unsigned 32-bit number */
  network: number;
  prefix: number;
}

const OCTET = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/** True if `s` is a dotted-quad IPv4 address without leading zeros. */
export function isIPv4(s: string): boolean {
  const parts = s.split('.');
  return parts.length === 4 && parts.every((p) => OCTET.test(p));
}

/** Parses a dotted-quad address into an unsigned 32-bit number; throws NET_INVALID_ADDRESS. */
export function parseIPv4(s: string): number {
  if (!isIPv4(s)) throw new VmletError('NET_INVALID_ADDRESS', `${JSON.stringify(s)} is not an IPv4 address`);
  return s.split('.').reduce((acc, p) => acc * 256 + Number(p), 0);
}

export function formatIPv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** The netmask of a prefix length as a number (prefix 0 → 0). */
export function prefixMask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

export function maskToString(prefix: number): string {
  return formatIPv4(prefixMask(prefix));
}

/**
 * Parses `a.b.c.d/len`. With `strict` (default) host bits must be zero (NET_INVALID_SUBNET),
 * otherwise they are cleared.
 */
export function parseCidr(s: string, strict = true): Cidr {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(s);
  if (!m || !isIPv4(m[1]!) || Number(m[2]) > 32) throw new VmletError('NET_INVALID_SUBNET', `${JSON.stringify(s)} is not an IPv4 CIDR (a.b.c.d/len)`);
  const prefix = Number(m[2]);
  const addr = parseIPv4(m[1]!);
  const network = (addr & prefixMask(prefix)) >>> 0;
  if (strict && network !== addr) {
    throw new VmletError('NET_INVALID_SUBNET', `${s} has host bits set; did you mean ${formatIPv4(network)}/${prefix}?`);
  }
  return { network, prefix };
}

export function formatCidr(c: Cidr): string {
  return `${formatIPv4(c.network)}/${c.prefix}`;
}

export function broadcastOf(c: Cidr): number {
  return (c.network | ~prefixMask(c.prefix)) >>> 0;
}

export function contains(c: Cidr, addr: number): boolean {
  return (addr & prefixMask(c.prefix)) >>> 0 === c.network;
}

/** True if the two ranges share at least one address. */
export function overlaps(a: Cidr, b: Cidr): boolean {
  const p = Math.min(a.prefix, b.prefix);
  const m = prefixMask(p);
  return (a.network & m) >>> 0 === (b.network & m) >>> 0;
}

/** Usable host addresses of a subnet: [first, last] (network and broadcast excluded below /31). */
export function hostRange(c: Cidr): [number, number] {
  if (c.prefix >= 31) return [c.network, broadcastOf(c)];
  return [c.network + 1, broadcastOf(c) - 1];
}
