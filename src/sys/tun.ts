// Opens queues of a tap device inside another network namespace (open /dev/net/tun + TUNSETIFF there) and returns their fds for QEMU; creates persistent taps as `ip tuntap add` does.
import { VmletError } from '../errors.js';
import { libc, errno, errnoCode, errnoName, closeFd, O_CLOEXEC, O_RDWR } from './libc.js';
import { withNetns, type WithNetnsOptions } from './netns.js';

const TUNSETIFF = 0x400454ca;
const TUNSETPERSIST = 0x400454cb;
const TUNSETOWNER = 0x400454cc;
const TUNSETGROUP = 0x400454ce;
/** TUNSETIFF fails with EBUSY on an existing device instead of attaching to it (as `ip tuntap add`) */
export const IFF_TUN_EXCL = 0x8000;
export const IFF_TAP = 0x0002;
export const IFF_NO_PI = 0x1000;
export const IFF_VNET_HDR = 0x4000;
export const IFF_MULTI_QUEUE = 0x0100;

const openFn = libc.func('int open(const char *path, int flags)');
// ioctl is variadic; the pointer argument is passed the same way on x86-64 and aarch64
const ioctlFn = libc.func('int ioctl(int fd, unsigned long request, void *arg)');
// the owner, group and persist ioctls take their argument by value
const ioctlValFn = libc.func('ioctl', 'int', ['int', 'unsigned long', 'unsigned long']);

export interface OpenTapOptions extends WithNetnsOptions {
  netnsPath: string;
  /** the tap's name inside the netns (it is created if it does not exist, non-persistent then) */
  name: string;
  /** one fd per queue; > 1 needs a multi_queue tap; default 1 */
  queues?: number;
  /** IFF_VNET_HDR (what QEMU and vhost-net want); default true */
  vnetHdr?: boolean;
  /** default /dev/net/tun */
  tunDevice?: string;
}

/** The ifreq that TUNSETIFF takes: name[16], then flags (short). */
export function tapIfreq(name: string, flags: number): Buffer {
  const b = Buffer.alloc(40);
  const n = Buffer.from(name, 'ascii');
  if (n.length === 0 || n.length > 15 || n.includes(0)) throw new VmletError('SYS_TUN', `bad tap name ${JSON.stringify(name)}`);
  n.copy(b, 0);
  b.writeUInt16LE(flags, 16);
  return b;
}

/**
 * Opens `queues` file descriptors on the tap `name` in `netnsPath` (close-on-exec, blocking mode
 * left to QEMU). The fds are attached to the tap while open; hand them to QEMU as
 * `-netdev tap,fd=N` (or fds=a:b) and close them in this process afterwards.
 */
export function openTap(opts: OpenTapOptions): number[] {
  const queues = opts.queues ?? 1;
  let flags = IFF_TAP | IFF_NO_PI;
  if (opts.vnetHdr ?? true) flags |= IFF_VNET_HDR;
  if (queues > 1) flags |= IFF_MULTI_QUEUE;
  const req = tapIfreq(opts.name, flags);
  const withOpts: WithNetnsOptions = opts.selfNetns !== undefined ? { selfNetns: opts.selfNetns } : {};
  return withNetns(
    opts.netnsPath,
    () => {
      const fds: number[] = [];
      try {
        for (let q = 0; q < queues; q++) {
          // the tun file's netns is the opener's: open it here, inside the sandbox
          const fd = openFn(opts.tunDevice ?? '/dev/net/tun', O_RDWR | O_CLOEXEC) as number;
          if (fd < 0) {
            const e = errno();
            throw new VmletError('SYS_TUN', `open(${opts.tunDevice ?? '/dev/net/tun'}) failed: ${errnoName(e)}`, { errno: errnoCode(e) });
          }
          fds.push(fd);
          if (ioctlFn(fd, TUNSETIFF, Buffer.from(req)) !== 0) {
            const e = errno();
            throw new VmletError(
              'SYS_TUN',
              `TUNSETIFF ${opts.name} (queue ${q}) in ${opts.netnsPath} failed: ${errnoName(e)}${e === 16 ? ' (busy: another process holds this single-queue tap)' : ''}`,
              { errno: errnoCode(e) },
            );
          }
        }
        return fds;
      } catch (e) {
        for (const fd of fds) closeFd(fd);
        throw e;
      }
    },
    withOpts,
  );
}

export interface PersistentTapOptions extends WithNetnsOptions {
  /** create the tap inside this netns; default: the caller's */
  netnsPath?: string;
  name: string;
  /** IFF_* flags besides IFF_TAP and IFF_TUN_EXCL (IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE) */
  flags: number;
  user?: number;
  group?: number;
  /** default /dev/net/tun */
  tunDevice?: string;
}

/**
 * What `ip tuntap add dev NAME mode tap …` does: open /dev/net/tun (inside the netns: the tap is
 * made in the opener's), TUNSETIFF, TUNSETOWNER/TUNSETGROUP, TUNSETPERSIST, close. SYS_TUN with
 * `errno` on failure, naming the step.
 */
export function createPersistentTap(opts: PersistentTapOptions): void {
  const dev = opts.tunDevice ?? '/dev/net/tun';
  const req = tapIfreq(opts.name, IFF_TAP | IFF_TUN_EXCL | opts.flags);
  const open = (): number => openFn(dev, O_RDWR | O_CLOEXEC) as number;
  const withOpts: WithNetnsOptions = opts.selfNetns !== undefined ? { selfNetns: opts.selfNetns } : {};
  const fd = opts.netnsPath === undefined ? open() : withNetns(opts.netnsPath, open, withOpts);
  const check = (ok: boolean, what: string): void => {
    if (ok) return;
    const e = errno();
    throw new VmletError('SYS_TUN', `${what} failed: ${errnoName(e)}`, { errno: errnoCode(e) });
  };
  try {
    check(fd >= 0, `open(${dev})`);
    check(ioctlFn(fd, TUNSETIFF, req) === 0, `TUNSETIFF ${opts.name}`);
    if (opts.user !== undefined) check(ioctlValFn(fd, TUNSETOWNER, opts.user) === 0, `TUNSETOWNER ${opts.name}`);
    if (opts.group !== undefined) check(ioctlValFn(fd, TUNSETGROUP, opts.group) === 0, `TUNSETGROUP ${opts.name}`);
    check(ioctlValFn(fd, TUNSETPERSIST, 1) === 0, `TUNSETPERSIST ${opts.name}`);
  } finally {
    if (fd >= 0) closeFd(fd);
  }
}
