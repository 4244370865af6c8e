// Runs the `ip -batch` lines that the sandbox planners emit as rtnetlink requests (and tun ioctls, and `netns add` as mount/unshare) on one netlink socket, without starting ip; tells which batches it can run.
import fs from 'node:fs';
import path from 'node:path';
import { VmletError, isVmletError } from '../errors.js';
import { errnoCode } from '../sys/libc.js';
import { NetlinkSocket, isAck } from '../sys/netlink.js';
import { errnoText } from '../sys/libc.js';
import { createNamedNetns } from '../sys/netns-create.js';
import { createPersistentTap, IFF_MULTI_QUEUE, IFF_NO_PI, IFF_VNET_HDR } from '../sys/tun.js';
import * as nl from './rtnetlink.js';
import type { Attr } from './rtnetlink.js';
import type { IpCommand } from './types.js';

/** One supported command, parsed. */
export type IpOp =
  | { kind: 'netns'; name: string }
  | { kind: 'veth'; name: string; mtu?: number; peer: string; netns: string }
  | { kind: 'bridge'; name: string }
  | { kind: 'set'; name: string; mtu?: number; master?: string; up?: boolean }
  | { kind: 'isolated'; name: string; on: boolean }
  | { kind: 'addr'; address: string; prefix: number; dev: string }
  | { kind: 'flush'; dev: string }
  | { kind: 'route'; dst: string; prefix: number; via?: string; dev: string }
  | { kind: 'tap'; name: string; user?: number; group?: number; multiQueue: boolean; vnetHdr: boolean };

const IFNAME = /^[A-Za-z0-9_.:-]{1,15}$/;
/** netns names without a slash: ip reads those as paths */
const NSNAME = /^[A-Za-z0-9_.-]{1,64}$/;
const NUM = /^\d{1,9}$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

const ifname = (s: string | undefined): string | null => (s !== undefined && IFNAME.test(s) && s !== '.' && s !== '..' ? s : null);
const nsname = (s: string | undefined): string | null => (s !== undefined && NSNAME.test(s) && s !== '.' && s !== '..' ? s : null);
const num = (s: string | undefined): number | null => (s !== undefined && NUM.test(s) ? Number(s) : null);

function ipv4Int(a: string): number {
  return a.split('.').reduce((acc, p) => acc * 256 + Number(p), 0);
}

/** `A/P` (P in 0–32) or null. */
function cidr(s: string | undefined): { address: string; prefix: number } | null {
  const m = s === undefined ? null : /^([0-9.]+)\/(\d{1,2})$/.exec(s);
  if (!m || !IPV4.test(m[1]!) || Number(m[2]) > 32) return null;
  return { address: m[1]!, prefix: Number(m[2]) };
}

function parseLinkSet(name: string, rest: readonly string[]): IpOp | null {
  if (rest.length === 4 && rest[0] === 'type' && rest[1] === 'bridge_slave' && rest[2] === 'isolated' && (rest[3] === 'on' || rest[3] === 'off')) {
    return { kind: 'isolated', name, on: rest[3] === 'on' };
  }
  const op: { kind: 'set'; name: string; mtu?: number; master?: string; up?: boolean } = { kind: 'set', name };
  for (let i = 0; i < rest.length; i++) {
    const t = rest[i];
    if ((t === 'up' || t === 'down') && op.up === undefined) {
      op.up = t === 'up';
    } else if (t === 'mtu' && op.mtu === undefined) {
      const n = num(rest[++i]);
      if (n === null) return null;
      op.mtu = n;
    } else if (t === 'master' && op.master === undefined) {
      const m = ifname(rest[++i]);
      if (m === null) return null;
      op.master = m;
    } else {
      return null;
    }
  }
  return rest.length > 0 ? op : null;
}

function parseLinkAdd(name: string, rest: readonly string[]): IpOp | null {
  if (rest.length === 2 && rest[0] === 'type' && rest[1] === 'bridge') return { kind: 'bridge', name };
  let mtu: number | undefined;
  let r = rest;
  if (r[0] === 'mtu') {
    const n = num(r[1]);
    if (n === null) return null;
    mtu = n;
    r = r.slice(2);
  }
  const [type, veth, peerKw, nameKw, peer, netnsKw, netns] = r;
  if (r.length !== 7 || type !== 'type' || veth !== 'veth' || peerKw !== 'peer' || nameKw !== 'name' || netnsKw !== 'netns') return null;
  const p = ifname(peer);
  const ns = nsname(netns);
  if (p === null || ns === null) return null;
  return { kind: 'veth', name, peer: p, netns: ns, ...(mtu !== undefined ? { mtu } : {}) };
}

function parseTuntap(rest: readonly string[]): IpOp | null {
  if (rest[0] !== 'dev' || rest[2] !== 'mode' || rest[3] !== 'tap') return null;
  const name = ifname(rest[1]);
  if (name === null) return null;
  const op: { kind: 'tap'; name: string; user?: number; group?: number; multiQueue: boolean; vnetHdr: boolean } = {
    kind: 'tap',
    name,
    multiQueue: false,
    vnetHdr: false,
  };
  for (let i = 4; i < rest.length; i++) {
    const t = rest[i];
    if (t === 'multi_queue' && !op.multiQueue) op.multiQueue = true;
    else if (t === 'vnet_hdr' && !op.vnetHdr) op.vnetHdr = true;
    else if ((t === 'user' || t === 'group') && op[t] === undefined) {
      // numeric only: ip would look names up in the user database
      const n = num(rest[++i]);
      if (n === null) return null;
      op[t] = n;
    } else return null;
  }
  return op;
}

/** The command as one of the supported forms, or null (then only the ip program may run it). */
export function parseIpCommand(cmd: IpCommand): IpOp | null {
  const [obj, verb, ...rest] = cmd;
  if (obj === 'netns' && verb === 'add' && rest.length === 1) {
    const name = nsname(rest[0]);
    return name !== null ? { kind: 'netns', name } : null;
  }
  if (obj === 'link' && (verb === 'add' || verb === 'set')) {
    const name = ifname(rest[0]);
    if (name === null) return null;
    return verb === 'add' ? parseLinkAdd(name, rest.slice(1)) : parseLinkSet(name, rest.slice(1));
  }
  if (obj === 'addr' && verb === 'add' && rest.length === 3 && rest[1] === 'dev') {
    const c = cidr(rest[0]);
    const dev = ifname(rest[2]);
    return c && dev ? { kind: 'addr', ...c, dev } : null;
  }
  if (obj === 'addr' && verb === 'flush' && rest.length === 2 && rest[0] === 'dev') {
    const dev = ifname(rest[1]);
    return dev ? { kind: 'flush', dev } : null;
  }
  if (obj === 'route' && verb === 'add') {
    const [dst, ...r] = rest;
    const via = r[0] === 'via' ? r[1] : undefined;
    const tail = via !== undefined ? r.slice(2) : r;
    if (via !== undefined && !IPV4.test(via)) return null;
    if (tail.length !== 2 || tail[0] !== 'dev') return null;
    const dev = ifname(tail[1]);
    if (dev === null) return null;
    const base = { kind: 'route' as const, dev, ...(via !== undefined ? { via } : {}) };
    if (dst === 'default') return via !== undefined ? { ...base, dst: '0.0.0.0', prefix: 0 } : null;
    const c = cidr(dst) ?? (dst !== undefined && IPV4.test(dst) ? { address: dst, prefix: 32 } : null);
    // ip refuses host bits outside the prefix
    if (c === null || (c.prefix < 32 && ipv4Int(c.address) % 2 ** (32 - c.prefix) !== 0)) return null;
    return { ...base, dst: c.address, prefix: c.prefix };
  }
  if (obj === 'tuntap' && verb === 'add') return parseTuntap(rest);
  return null;
}

/** Whether every command is one runIpBatchNetlink runs (else the batch goes to the ip program). */
export function netlinkSupports(cmds: readonly IpCommand[]): boolean {
  return cmds.every((c) => parseIpCommand(c) !== null);
}

export interface IpNetlinkDeps {
  /** where `netns NAME` is looked up and `netns add NAME` made, as ip does; default /run/netns */
  netnsDir?: string;
  /** the calling thread's own netns file; default /proc/thread-self/ns/net */
  selfNetns?: string;
  /** default /dev/net/tun */
  tunDevice?: string;
}

/** A kernel refusal of one command, carrying its errno. */
class CommandError extends Error {
  constructor(
    readonly errno: number,
    readonly extack?: string,
  ) {
    super(errnoText(errno));
  }
}

const EADDRNOTAVAIL = 99;
const NEW = nl.NLM_F_REQUEST | nl.NLM_F_CREATE | nl.NLM_F_EXCL;

function check(a: nl.Ack): void {
  if (a.errno !== 0) throw new CommandError(a.errno, a.message);
}

/** One batch's work on one socket, opened at the first command that needs it (`netns add` alone needs none). */
class Batch {
  private socket: NetlinkSocket | undefined;

  constructor(
    private readonly netnsPath: string | undefined,
    private readonly deps: IpNetlinkDeps,
  ) {}

  private get sock(): NetlinkSocket {
    this.socket ??= NetlinkSocket.open({
      ...(this.netnsPath !== undefined ? { netnsPath: this.netnsPath } : {}),
      ...(this.deps.selfNetns !== undefined ? { selfNetns: this.deps.selfNetns } : {}),
    });
    return this.socket;
  }

  close(): void {
    this.socket?.close();
  }

  private index(name: string): number {
    const r = this.sock.get(nl.nlmsg(nl.RTM_GETLINK, nl.NLM_F_REQUEST, 0, nl.ifinfomsg(), [{ type: nl.IFLA_IFNAME, value: nl.cstr(name) }]));
    if (isAck(r)) throw new CommandError(r.errno === 0 ? 19 : r.errno, r.message);
    return nl.parseIfinfomsg(r.payload).index;
  }

  private newlink(flags: number, info: nl.IfInfo, attrs: Attr[]): void {
    check(this.sock.ack(nl.nlmsg(nl.RTM_NEWLINK, flags, 0, nl.ifinfomsg(info), attrs)));
  }

  run(op: IpOp): void {
    // a new netns is no child of the batch's netns: where the thread stands does not matter
    if (op.kind === 'netns') {
      return createNamedNetns(this.deps.netnsDir ?? '/run/netns', op.name, this.deps.selfNetns !== undefined ? { selfNetns: this.deps.selfNetns } : {});
    }
    const name: Attr = { type: nl.IFLA_IFNAME, value: nl.cstr(op.kind === 'addr' || op.kind === 'flush' || op.kind === 'route' ? op.dev : op.name) };
    switch (op.kind) {
      case 'veth': {
        const nsFile = path.join(this.deps.netnsDir ?? '/run/netns', op.netns);
        let fd: number;
        try {
          fd = fs.openSync(nsFile, 'r');
        } catch (e) {
          throw new CommandError((e as NodeJS.ErrnoException).code === 'ENOENT' ? 2 : 22, `netns ${nsFile} cannot be opened`);
        }
        try {
          const peer = Buffer.concat([
            nl.ifinfomsg(),
            nl.encodeAttrs([
              { type: nl.IFLA_IFNAME, value: nl.cstr(op.peer) },
              { type: nl.IFLA_NET_NS_FD, value: nl.u32(fd) },
            ]),
          ]);
          this.newlink(NEW, {}, [
            name,
            ...(op.mtu !== undefined ? [{ type: nl.IFLA_MTU, value: nl.u32(op.mtu) }] : []),
            {
              type: nl.IFLA_LINKINFO,
              value: [
                { type: nl.IFLA_INFO_KIND, value: nl.str('veth') },
                { type: nl.IFLA_INFO_DATA, value: [{ type: nl.VETH_INFO_PEER, value: peer }] },
              ],
            },
          ]);
        } finally {
          fs.closeSync(fd);
        }
        return;
      }
      case 'bridge':
        return this.newlink(NEW, {}, [name, { type: nl.IFLA_LINKINFO, value: [{ type: nl.IFLA_INFO_KIND, value: nl.str('bridge') }] }]);
      case 'set': {
        const attrs: Attr[] = [name];
        if (op.mtu !== undefined) attrs.push({ type: nl.IFLA_MTU, value: nl.u32(op.mtu) });
        if (op.master !== undefined) attrs.push({ type: nl.IFLA_MASTER, value: nl.u32(this.index(op.master)) });
        const up = op.up === undefined ? {} : { flags: op.up ? nl.IFF_UP : 0, change: nl.IFF_UP };
        return this.newlink(nl.NLM_F_REQUEST, up, attrs);
      }
      case 'isolated':
        // no IFLA_INFO_KIND ("bridge_slave" as ip sends it): the kernel would ask modprobe for such a kind; the master's ops read the port data anyway
        return this.newlink(nl.NLM_F_REQUEST, {}, [
          name,
          { type: nl.IFLA_LINKINFO, value: [{ type: nl.IFLA_INFO_SLAVE_DATA, value: [{ type: nl.IFLA_BRPORT_ISOLATED, value: nl.u8(op.on ? 1 : 0) }] }] },
        ]);
      case 'addr': {
        const a = nl.ipv4Bytes(op.address);
        // ip's default scope: host for 127/8, else global
        const hdr = nl.ifaddrmsg({ family: nl.AF_INET, prefixlen: op.prefix, scope: a[0] === 127 ? 254 : 0, index: this.index(op.dev) });
        return check(
          this.sock.ack(
            nl.nlmsg(nl.RTM_NEWADDR, NEW, 0, hdr, [
              { type: nl.IFA_LOCAL, value: a },
              { type: nl.IFA_ADDRESS, value: a },
            ]),
          ),
        );
      }
      case 'flush':
        return this.flush(this.index(op.dev));
      case 'route': {
        const hdr = nl.rtmsg({
          family: nl.AF_INET,
          dstLen: op.prefix,
          table: nl.RT_TABLE_MAIN,
          protocol: nl.RTPROT_BOOT,
          scope: op.via !== undefined ? nl.RT_SCOPE_UNIVERSE : nl.RT_SCOPE_LINK,
          type: nl.RTN_UNICAST,
        });
        const attrs: Attr[] = [
          ...(op.prefix > 0 ? [{ type: nl.RTA_DST, value: nl.ipv4Bytes(op.dst) }] : []),
          ...(op.via !== undefined ? [{ type: nl.RTA_GATEWAY, value: nl.ipv4Bytes(op.via) }] : []),
          { type: nl.RTA_OIF, value: nl.u32(this.index(op.dev)) },
        ];
        return check(this.sock.ack(nl.nlmsg(nl.RTM_NEWROUTE, NEW, 0, hdr, attrs)));
      }
      case 'tap':
        return createPersistentTap({
          name: op.name,
          flags: IFF_NO_PI | (op.vnetHdr ? IFF_VNET_HDR : 0) | (op.multiQueue ? IFF_MULTI_QUEUE : 0),
          ...(op.user !== undefined ? { user: op.user } : {}),
          ...(op.group !== undefined ? { group: op.group } : {}),
          ...(this.netnsPath !== undefined ? { netnsPath: this.netnsPath } : {}),
          ...(this.deps.selfNetns !== undefined ? { selfNetns: this.deps.selfNetns } : {}),
          ...(this.deps.tunDevice !== undefined ? { tunDevice: this.deps.tunDevice } : {}),
        });
    }
  }

  /** As `ip addr flush dev X`: every address of the link, of every family, until none is left. */
  private flush(index: number): void {
    for (let round = 0; round < 10; round++) {
      const all = this.sock.dump(nl.nlmsg(nl.RTM_GETADDR, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 0, nl.ifaddrmsg({ family: nl.AF_UNSPEC, prefixlen: 0, index: 0 })));
      if (isAck(all)) return check(all);
      const mine = all
        .filter((m) => m.type === nl.RTM_NEWADDR)
        .map((m) => nl.parseIfaddrmsg(m.payload))
        .filter((a) => a.index === index);
      if (mine.length === 0) return;
      for (const a of mine) {
        const attrs: Attr[] = [nl.IFA_LOCAL, nl.IFA_ADDRESS].flatMap((t) => {
          const v = a.attrs.get(t);
          return v !== undefined ? [{ type: t, value: v }] : [];
        });
        const ack = this.sock.ack(nl.nlmsg(nl.RTM_DELADDR, nl.NLM_F_REQUEST, 0, nl.ifaddrmsg(a), attrs));
        // a secondary address goes with its primary
        if (ack.errno !== EADDRNOTAVAIL) check(ack);
      }
    }
    throw new CommandError(16, 'addresses keep coming back');
  }
}

function commandFailed(cmd: IpCommand, e: unknown): VmletError {
  // the daemon must see this one as it is, to exit
  if (isVmletError(e, 'SYS_SETNS_RESTORE')) return e;
  const line = `ip ${cmd.join(' ')}`;
  if (e instanceof CommandError) {
    return new VmletError('NET_COMMAND_FAILED', `${line}: ${e.message}${e.extack !== undefined ? ` (${e.extack})` : ''}`, { errno: errnoCode(e.errno) });
  }
  const errno = e instanceof VmletError ? e.errno : undefined;
  return new VmletError('NET_COMMAND_FAILED', `${line}: ${(e as Error).message}`, { cause: e, ...(errno !== undefined ? { errno } : {}) });
}

/**
 * Runs a batch of supported commands (netlinkSupports) on the host or inside the netns at
 * `netnsPath`, in order, stopping at the first failure as `ip -batch` does: NET_COMMAND_FAILED
 * naming that command, with the kernel's `errno`. Synchronous: each request is done when send returns.
 */
export function runIpBatchNetlink(cmds: readonly IpCommand[], netnsPath?: string, deps: IpNetlinkDeps = {}): void {
  const ops = cmds.map((c) => {
    const op = parseIpCommand(c);
    if (op === null) throw new VmletError('NET_INVALID_PLAN', `ip ${c.join(' ')}: not a command the netlink path runs`);
    return op;
  });
  if (ops.length === 0) return;
  const batch = new Batch(netnsPath, deps);
  try {
    ops.forEach((op, i) => {
      try {
        batch.run(op);
      } catch (e) {
        throw commandFailed(cmds[i]!, e);
      }
    });
  } finally {
    batch.close();
  }
}
