// Names of vmlet's kernel objects (netns, veth, bridge, nft table) derived from a VMI uid, and the strict checks applied before any name reaches ip or nft.
import { createHash } from 'node:crypto';
import { VmletError } from '../errors.js';
import type { SandboxNames } from './types.js';

export interface NameConfig {
  /** prefix of sandbox netns names; default `vmlet-` (netns `vmlet-1a2b3c4d`) */
  netnsPrefix: string;
  /** prefix of the host veth ends; default `vmh-` (`vmh-1a2b3c4d`) */
  vethPrefix: string;
}

export const DEFAULT_NAMES: NameConfig = { netnsPrefix: 'vmlet-', vethPrefix: 'vmh-' };

const IFNAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;
const NFT_ID_RE = /^[A-Za-z][A-Za-z0-9_-]{0,31}$/;
const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

/** Refuses anything but a plain Linux interface name (≤ 15 chars, [A-Za-z0-9_.-], not `.`/`..`). */
export function checkIfName(name: string, what = 'interface name'): string {
  if (!IFNAME_RE.test(name) || name === '.' || name === '..') {
    throw new VmletError('NET_INVALID_NAME', `${what} ${JSON.stringify(name)} is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)`);
  }
  return name;
}

/** Refuses anything but a plain nftables identifier (a letter, then ≤ 31 of A-Z a-z 0-9 _ -). */
export function checkNftName(name: string, what = 'nftables table name'): string {
  if (!NFT_ID_RE.test(name)) throw new VmletError('NET_INVALID_NAME', `${what} ${JSON.stringify(name)} is not a plain nftables identifier`);
  return name;
}

/** Netns names: same rules as interface names, so they fit anywhere a name goes. */
export function checkNetnsName(name: string): string {
  return checkIfName(name, 'netns name');
}

/**
 * 8 hex characters identifying a uid: the first 8 hex digits of a UUID (so `ip netns` output
 * can be matched with `kubectl get vmi -o yaml` by eye), or of sha256(uid) for other strings.
 */
export function sandboxId(uid: string): string {
  if (uid === '' || uid.length > 253 || /[\u0000-\u001f\u007f]/.test(uid)) {
    throw new VmletError('NET_INVALID_UID', `uid ${JSON.stringify(uid)} is empty, too long or holds control characters`);
  }
  if (UUID_RE.test(uid)) return uid.replace(/-/g, '').slice(0, 8).toLowerCase();
  return createHash('sha256').update(uid).digest('hex').slice(0, 8);
}

export function sandboxNames(uid: string, cfg: NameConfig = DEFAULT_NAMES): SandboxNames {
  const id = sandboxId(uid);
  return {
    id,
    netns: checkNetnsName(`${cfg.netnsPrefix}${id}`),
    hostVeth: checkIfName(`${cfg.vethPrefix}${id}`, 'host veth name'),
  };
}

/** Validates a name configuration: both prefixes must leave a valid ≤ 15-character name. */
export function checkNameConfig(cfg: NameConfig): NameConfig {
  checkNetnsName(`${cfg.netnsPrefix}00000000`);
  checkIfName(`${cfg.vethPrefix}00000000`, 'host veth name');
  if (cfg.netnsPrefix === '' || cfg.vethPrefix === '') throw new VmletError('NET_INVALID_NAME', 'name prefixes must not be empty');
  return cfg;
}
