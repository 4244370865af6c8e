// MAC addresses: validation and normalisation of user-given ones, and stable derivation from a VMI uid.
import { createHash } from 'node:crypto';
import { VmletError } from '../errors.js';

const MAC_RE = /^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$/i;

/**
 * Normalises a MAC (`aa:bb:..` or `aa-bb-..`, any case) to lower-case colon form. Refuses
 * malformed, multicast/broadcast (I/G bit set) and all-zero addresses with NET_INVALID_MAC.
 */
export function normalizeMac(mac: string): string {
  if (!MAC_RE.test(mac)) throw new VmletError('NET_INVALID_MAC', `macAddress ${JSON.stringify(mac)} is not six hex octets separated by ':' or '-'`);
  const norm = mac.toLowerCase().replace(/-/g, ':');
  const first = parseInt(norm.slice(0, 2), 16);
  if (first & 1) throw new VmletError('NET_INVALID_MAC', `macAddress ${norm} is a multicast address; a NIC needs a unicast one (even first octet)`);
  if (norm === '00:00:00:00:00:00') throw new VmletError('NET_INVALID_MAC', 'macAddress 00:00:00:00:00:00 is not usable');
  return norm;
}

/** MAC as 6 bytes. */
export function macToBytes(mac: string): Buffer {
  return Buffer.from(normalizeMac(mac).replace(/:/g, ''), 'hex');
}

export function bytesToMac(b: Uint8Array): string {
  return [...b.subarray(0, 6)].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/**
 * A stable MAC for interface `ifaceName` of the VMI `uid`: `02:` (locally administered, unicast)
 * followed by 5 bytes of sha256(uid + "/" + ifaceName). The same uid always gets the same MAC.
 */
export function deriveMac(uid: string, ifaceName: string): string {
  const h = createHash('sha256').update(`${uid}/${ifaceName}`).digest();
  return bytesToMac(Buffer.concat([Buffer.from([0x02]), h.subarray(0, 5)]));
}
