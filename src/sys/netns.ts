// Runs a synchronous function with the calling (main JS) thread switched into another network namespace via setns(2), and switches back.
import fs from 'node:fs';
import { VmletError } from '../errors.js';
import { libc, errno, errnoCode, errnoName } from './libc.js';

export const CLONE_NEWNET = 0x40000000;

const setnsFn = libc.func('int setns(int fd, int nstype)');

/** setns(fd, CLONE_NEWNET) for the calling thread; SYS_SETNS on failure. */
export function setNetns(fd: number, what: string): void {
  if (setnsFn(fd, CLONE_NEWNET) !== 0) {
    const e = errno();
    throw new VmletError('SYS_SETNS', `setns(${what}, CLONE_NEWNET) failed: ${errnoName(e)}`, { errno: errnoCode(e) });
  }
}

export interface WithNetnsOptions {
  /** the calling thread's own netns file; default /proc/thread-self/ns/net */
  selfNetns?: string;
}

let stuckHandler: ((e: VmletError) => void) | undefined;

/**
 * What the process does once its main thread cannot return to its own netns (SYS_SETNS_RESTORE): every later
 * socket and netlink call would act in a VM's sandbox. The daemon logs and exits (systemd or the DaemonSet starts it
 * again; the VMs run on). Without a handler the error is only thrown.
 */
export function onNetnsStuck(fn: ((e: VmletError) => void) | undefined): void {
  stuckHandler = fn;
}

/** Hands `e` (SYS_SETNS_RESTORE) to the handler, then returns it for the caller to throw. */
export function netnsStuck(e: VmletError): VmletError {
  stuckHandler?.(e);
  return e;
}

/**
 * Calls `fn` with the calling thread inside the netns at `netnsPath` (e.g. /run/netns/NAME) and
 * switches back before returning, also when `fn` throws. setns affects only the calling thread,
 * which for JS code is the main thread; `fn` must therefore be synchronous: sockets and files it
 * creates (socket(), open() of /dev/net/tun, /proc/sys/net writes) belong to the target netns.
 * If switching back fails the process cannot safely go on: the error says so and it is rethrown.
 */
export function withNetns<T>(netnsPath: string, fn: () => T, opts: WithNetnsOptions = {}): T {
  const selfPath = opts.selfNetns ?? '/proc/thread-self/ns/net';
  let self: number;
  let target: number;
  try {
    self = fs.openSync(selfPath, 'r');
  } catch (e) {
    throw new VmletError('SYS_SETNS', `cannot open ${selfPath}`, { cause: e });
  }
  try {
    target = fs.openSync(netnsPath, 'r');
  } catch (e) {
    fs.closeSync(self);
    throw new VmletError('SYS_SETNS', `cannot open the netns ${netnsPath}`, { cause: e });
  }
  try {
    setNetns(target, netnsPath);
    try {
      const r = fn();
      if (r instanceof Promise) throw new VmletError('SYS_SETNS', 'withNetns needs a synchronous function');
      return r;
    } finally {
      try {
        setNetns(self, selfPath);
      } catch (e) {
        throw netnsStuck(
          new VmletError('SYS_SETNS_RESTORE', `the main thread is stuck in ${netnsPath}: cannot return to its own netns; the process must exit`, { cause: e }),
        );
      }
    }
  } finally {
    fs.closeSync(target);
    fs.closeSync(self);
  }
}

/** Inode of a netns file ("net:[4026531840]" identity), to tell namespaces apart. */
export function netnsInode(netnsPath: string): number {
  return fs.statSync(netnsPath).ino;
}
