// Who may use a daemon socket and for what: the peer's credentials (SO_PEERCRED, its groups from /proc) checked at accept against root and the socket's group, and what a read-only socket serves (get, list, watch, events).
import fs from 'node:fs';
import type net from 'node:net';
import { VmletError } from '../errors.js';
import { peerCred, socketFd, type PeerCred } from '../sys/scm.js';
import type { Route } from './api-router.js';

export interface SocketAccess {
  /** Group whose members may connect besides root (the socket file is root:<it> 0660); undefined: root only. */
  gid?: number;
  /** Only reads: GET of objects, lists, watches, events, version, health. */
  readOnly?: boolean;
}

/** The gid of a group name in `/etc/group` (or a number as it is); CONFIG_INVALID when there is none. */
export function groupId(name: string, groupFile = '/etc/group'): number {
  if (/^\d+$/.test(name)) return Number(name);
  const line = fs
    .readFileSync(groupFile, 'utf8')
    .split('\n')
    .find((l) => l.split(':')[0] === name);
  const gid = Number(line?.split(':')[2]);
  if (line === undefined || !Number.isInteger(gid)) throw new VmletError('CONFIG_INVALID', `socket group "${name}" does not exist on this host (${groupFile})`);
  return gid;
}

/** The supplementary groups of a live process (/proc/PID/status `Groups:`), [] when unreadable. */
export function processGroups(pid: number, procRoot = '/proc'): number[] {
  try {
    const line = fs
      .readFileSync(`${procRoot}/${pid}/status`, 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Groups:'));
    return (line ?? '')
      .slice('Groups:'.length)
      .trim()
      .split(/\s+/)
      .filter((g) => g !== '')
      .map(Number);
  } catch {
    return [];
  }
}

/** Root, or a member of `gid` (primary or supplementary). */
export function peerAllowed(cred: PeerCred, gid: number | undefined, groupsOf: (pid: number) => number[] = processGroups): boolean {
  if (cred.uid === 0) return true;
  if (gid === undefined) return false;
  return cred.gid === gid || groupsOf(cred.pid).includes(gid);
}

/** The peer of an accepted connection, or undefined when the kernel cannot say. */
export function peerOf(sock: net.Socket): PeerCred | undefined {
  try {
    return peerCred(socketFd(sock));
  } catch {
    return undefined;
  }
}

/** READ_ONLY_SOCKET for anything a read-only socket does not serve. */
export function checkReadOnly(route: Route, method: string): void {
  const reads = ['object', 'list', 'healthz', 'version', 'events', 'startTraces', 'images', 'image'].includes(route.type);
  if (method === 'GET' && reads) return;
  throw new VmletError('READ_ONLY_SOCKET', "this socket only reads (get, list, watch, events); use the daemon's main socket to change anything", {
    details: { route: route.type, method },
  });
}
