// What a guest agent reports is the guest's word: interface names, MACs and addresses are checked and bounded before they reach status.
import net from 'node:net';
import type { GuestNetworkInterface } from '../qmp/guest-agent-types.js';

/** Bounds on one report: a guest could otherwise grow the VMI object (and every watcher's copy) at will. */
export const GUEST_REPORT_LIMITS = { interfaces: 32, addressesPerInterface: 16 } as const;

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
/** A Linux interface name: 1–15 printable characters without blanks or slashes. */
const IFNAME_RE = /^[\x21-\x2e\x30-\x7e]{1,15}$/;

/**
 * The report with only what can be true: a well-formed MAC (interfaces without one cannot be matched and are
 * dropped), a name only when it could be a Linux interface name, and addresses that `net.isIP` accepts.
 */
export function checkedGuestInterfaces(report: unknown): GuestNetworkInterface[] {
  if (!Array.isArray(report)) return [];
  const out: GuestNetworkInterface[] = [];
  for (const g of report.slice(0, GUEST_REPORT_LIMITS.interfaces) as unknown[]) {
    if (typeof g !== 'object' || g === null) continue;
    const r = g as Record<string, unknown>;
    const mac = r['hardware-address'];
    if (typeof mac !== 'string' || !MAC_RE.test(mac)) continue;
    const name = typeof r.name === 'string' && IFNAME_RE.test(r.name) ? r.name : '';
    const addrs = Array.isArray(r['ip-addresses']) ? (r['ip-addresses'] as unknown[]) : [];
    const ips: NonNullable<GuestNetworkInterface['ip-addresses']> = [];
    for (const a of addrs) {
      if (ips.length >= GUEST_REPORT_LIMITS.addressesPerInterface) break;
      if (typeof a !== 'object' || a === null) continue;
      const ip = (a as Record<string, unknown>)['ip-address'];
      const prefix = (a as Record<string, unknown>).prefix;
      if (typeof ip !== 'string' || net.isIP(ip) === 0) continue;
      ips.push({
        'ip-address': ip,
        'ip-address-type': net.isIPv4(ip) ? 'ipv4' : 'ipv6',
        prefix: typeof prefix === 'number' && Number.isInteger(prefix) ? prefix : 0,
      });
    }
    out.push({ name, 'hardware-address': mac.toLowerCase(), 'ip-addresses': ips });
  }
  return out;
}
