// One DHCPv4 server for every sandbox: a UDP socket per sandbox bridge (made inside its netns), answering its guest's DISCOVER/REQUEST/INFORM/RELEASE.
import dgram from 'node:dgram';
import { VmletError } from '../errors.js';
import { closeFd, udpSocketInNetns } from '../sys/udp.js';
import {
  DhcpMessageType as T,
  DhcpOption as O,
  BOOTREQUEST,
  decodeDhcp,
  encodeDhcpReply,
  messageType,
  optDomainSearch,
  optIps,
  optionIp,
  optString,
  optU16,
  optU32,
  type DhcpPacket,
} from './dhcp-codec.js';
import { broadcastOf, formatIPv4, maskToString, parseCidr } from './ipv4.js';

/** What the server hands out on one sandbox bridge. */
export interface DhcpLeaseConfig {
  /** address of the server on the bridge (option 54, and the source of replies) */
  serverIp: string;
  clientIp: string;
  prefix: number;
  router: string | null;
  dns: string[];
  /** option 15 */
  domain?: string;
  /** option 119 */
  search?: string[];
  /** option 12, sanitised to a DNS name */
  hostname?: string;
  /** option 26 */
  mtu?: number;
  leaseSeconds: number;
  /** answer only this client MAC (recommended: the NIC's MAC); undefined answers any client */
  clientMac?: string;
  /** renewals from a configured client (ciaddr set) may be answered by unicast; false: always broadcast */
  unicast?: boolean;
}

/** What DHCP hands out for one interface: its addresses and MTU (the binding's), the DNS settings, the hostname, the lease time. */
export function dhcpLeaseConfig(
  a: { serverIp: string; clientIp: string; prefix: number; router: string | null; mtu: number; mac: string; binding: string },
  o: { nameservers: string[]; search: string[]; domain?: string | undefined; hostname?: string | undefined; leaseSeconds: number },
): DhcpLeaseConfig {
  return {
    serverIp: a.serverIp,
    clientIp: a.clientIp,
    prefix: a.prefix,
    router: a.router,
    dns: o.nameservers,
    search: o.search,
    ...(o.domain !== undefined ? { domain: o.domain } : {}),
    ...(o.hostname !== undefined ? { hostname: o.hostname } : {}),
    mtu: a.mtu,
    leaseSeconds: o.leaseSeconds,
    clientMac: a.mac,
    unicast: a.binding === 'masquerade',
  };
}

export type DhcpEvent =
  | { type: 'lease'; key: string; clientMac: string; ip: string; leaseSeconds: number; at: Date }
  | { type: 'release'; key: string; clientMac: string; ip: string; at: Date }
  | { type: 'decline'; key: string; clientMac: string; ip: string; at: Date };

export interface DhcpAnswer {
  reply: Buffer | null;
  /** where the reply goes: 255.255.255.255 or the client's address; port 68 */
  to: string;
  event: DhcpEvent | null;
  /** why there is no reply, for logs */
  ignored?: string;
}

/** A hostname for option 12: DNS label characters only, dots kept, at most 63 per label and 253 in all. */
export function sanitizeHostname(name: string): string | null {
  const labels = name
    .toLowerCase()
    .split('.')
    .map((l) =>
      l
        .replace(/[^a-z0-9-]/g, '-')
        .replace(/^-+|-+$/g, '')
        .slice(0, 63),
    )
    .filter(Boolean);
  const h = labels.join('.').slice(0, 253).replace(/\.$/, '');
  return h === '' ? null : h;
}

function leaseOptions(cfg: DhcpLeaseConfig, type: number, withLease: boolean): [number, Buffer][] {
  const opts: [number, Buffer][] = [
    [O.MESSAGE_TYPE, Buffer.from([type])],
    [O.SERVER_ID, optIps([cfg.serverIp])],
  ];
  if (withLease) {
    opts.push(
      [O.LEASE_TIME, optU32(cfg.leaseSeconds)],
      [O.RENEWAL_T1, optU32(Math.floor(cfg.leaseSeconds / 2))],
      [O.REBINDING_T2, optU32(Math.floor((cfg.leaseSeconds * 7) / 8))],
    );
  }
  const net = parseCidr(`${cfg.clientIp}/${cfg.prefix}`, false);
  opts.push([O.SUBNET_MASK, optIps([maskToString(cfg.prefix)])], [O.BROADCAST, optIps([formatIPv4(broadcastOf(net))])]);
  if (cfg.router) opts.push([O.ROUTER, optIps([cfg.router])]);
  if (cfg.dns.length > 0) opts.push([O.DNS, optIps(cfg.dns)]);
  const host = cfg.hostname !== undefined ? sanitizeHostname(cfg.hostname) : null;
  if (host) opts.push([O.HOSTNAME, optString(host)]);
  const domain = cfg.domain ?? cfg.search?.[0];
  if (domain) opts.push([O.DOMAIN_NAME, optString(domain)]);
  if (cfg.search && cfg.search.length > 0) opts.push([O.DOMAIN_SEARCH, optDomainSearch(cfg.search)]);
  if (cfg.mtu !== undefined) opts.push([O.MTU, optU16(cfg.mtu)]);
  return opts;
}

const BROADCAST = '255.255.255.255';

/**
 * The server's decision for one request, as a pure function: the encoded reply (or null), its
 * destination and what happened to the lease. DISCOVER → OFFER; REQUEST for our address → ACK,
 * for another → NAK, meant for another server → ignored; INFORM → ACK without lease; RELEASE and
 * DECLINE → an event, no reply.
 */
export function answerDhcp(req: DhcpPacket, cfg: DhcpLeaseConfig, key: string, now: Date): DhcpAnswer {
  const none = (ignored: string, event: DhcpEvent | null = null): DhcpAnswer => ({ reply: null, to: BROADCAST, event, ignored });
  if (req.op !== BOOTREQUEST) return none('not a BOOTREQUEST');
  if (req.htype !== 1 || req.hlen !== 6) return none(`hardware type ${req.htype}/${req.hlen} is not ethernet`);
  if (cfg.clientMac !== undefined && req.chaddr !== cfg.clientMac.toLowerCase()) return none(`client ${req.chaddr} is not this sandbox's NIC ${cfg.clientMac}`);
  if (req.giaddr !== '0.0.0.0') return none('relayed requests are not served');
  const type = messageType(req);
  const base = { xid: req.xid, flags: req.flags, giaddr: '0.0.0.0', chaddr: req.chaddr, siaddr: cfg.serverIp };
  const replyTo = (ackType: number): string =>
    ackType !== T.NAK && cfg.unicast && req.ciaddr !== '0.0.0.0' && (req.flags & 0x8000) === 0 ? req.ciaddr : BROADCAST;
  switch (type) {
    case T.DISCOVER:
      return {
        reply: encodeDhcpReply({ ...base, ciaddr: '0.0.0.0', yiaddr: cfg.clientIp, options: leaseOptions(cfg, T.OFFER, true) }),
        to: BROADCAST,
        event: null,
      };
    case T.REQUEST: {
      const server = optionIp(req, O.SERVER_ID);
      if (server !== null && server !== cfg.serverIp) return none(`request for server ${server}`);
      const wanted = optionIp(req, O.REQUESTED_IP) ?? (req.ciaddr !== '0.0.0.0' ? req.ciaddr : null);
      if (wanted !== cfg.clientIp) {
        return {
          reply: encodeDhcpReply({
            ...base,
            siaddr: '0.0.0.0',
            ciaddr: '0.0.0.0',
            yiaddr: '0.0.0.0',
            options: [
              [O.MESSAGE_TYPE, Buffer.from([T.NAK])],
              [O.SERVER_ID, optIps([cfg.serverIp])],
              [O.MESSAGE, optString(`address ${wanted ?? 'none'} is not yours; ask again`)],
            ],
          }),
          to: BROADCAST,
          event: null,
        };
      }
      return {
        reply: encodeDhcpReply({ ...base, ciaddr: req.ciaddr, yiaddr: cfg.clientIp, options: leaseOptions(cfg, T.ACK, true) }),
        to: replyTo(T.ACK),
        event: { type: 'lease', key, clientMac: req.chaddr, ip: cfg.clientIp, leaseSeconds: cfg.leaseSeconds, at: now },
      };
    }
    case T.INFORM:
      return {
        reply: encodeDhcpReply({ ...base, ciaddr: req.ciaddr, yiaddr: '0.0.0.0', options: leaseOptions(cfg, T.ACK, false) }),
        to: replyTo(T.ACK),
        event: null,
      };
    case T.RELEASE:
      return none('release', { type: 'release', key, clientMac: req.chaddr, ip: req.ciaddr, at: now });
    case T.DECLINE:
      return none('decline', { type: 'decline', key, clientMac: req.chaddr, ip: optionIp(req, O.REQUESTED_IP) ?? '0.0.0.0', at: now });
    default:
      return none(`message type ${type ?? 'none (BOOTP)'} is not served`);
  }
}

/** pino-compatible subset */
export interface NetLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
}

const silent: NetLogger = { info: () => {}, warn: () => {}, debug: () => {} };

export interface DhcpServerOptions {
  log?: NetLogger;
  now?: () => Date;
  /** called for every lease, release and decline */
  onEvent?: (e: DhcpEvent) => void;
  /** the daemon's own netns file; default /proc/thread-self/ns/net */
  selfNetns?: string;
}

export interface DhcpInterface {
  /** e.g. the VMI uid, or uid/interface */
  key: string;
  /** /run/netns/NAME */
  netnsPath: string;
  /** the sandbox bridge (k6t-eth0) the guest's tap is on */
  device: string;
  config: DhcpLeaseConfig;
}

interface Served {
  iface: DhcpInterface;
  sock: dgram.Socket;
}

/**
 * The DHCP server. Creating it does nothing; `add` opens one socket (port 67 inside the sandbox,
 * bound to its bridge) per sandbox interface, `remove` closes it, `close` closes all.
 */
export class DhcpServer {
  /** Packets received, answered, and dropped as malformed or not served (no reply), over all interfaces. */
  readonly stats = { received: 0, answered: 0, malformed: 0, unanswered: 0 };
  private readonly served = new Map<string, Served>();
  private readonly log: NetLogger;
  private readonly now: () => Date;
  private readonly onEvent: ((e: DhcpEvent) => void) | undefined;
  private readonly selfNetns: string | undefined;

  constructor(opts: DhcpServerOptions = {}) {
    this.log = opts.log ?? silent;
    this.now = opts.now ?? (() => new Date());
    this.onEvent = opts.onEvent;
    this.selfNetns = opts.selfNetns;
  }

  keys(): string[] {
    return [...this.served.keys()];
  }

  has(key: string): boolean {
    return this.served.has(key);
  }

  /** Starts serving one sandbox interface (replacing an earlier entry of the same key). */
  async add(iface: DhcpInterface): Promise<void> {
    await this.remove(iface.key);
    let fd: number;
    try {
      fd = udpSocketInNetns({
        netnsPath: iface.netnsPath,
        port: 67,
        device: iface.device,
        ...(this.selfNetns !== undefined ? { selfNetns: this.selfNetns } : {}),
      });
    } catch (e) {
      throw new VmletError('DHCP_SOCKET_FAILED', `cannot open the DHCP socket on ${iface.device} in ${iface.netnsPath}`, { cause: e });
    }
    const sock = dgram.createSocket({ type: 'udp4' });
    try {
      await new Promise<void>((resolve, reject) => {
        sock.once('error', reject);
        sock.bind({ fd }, () => {
          sock.off('error', reject);
          resolve();
        });
      });
    } catch (e) {
      try {
        sock.close();
      } catch {
        closeFd(fd);
      }
      throw new VmletError('DHCP_SOCKET_FAILED', `dgram could not adopt the DHCP socket for ${iface.key}`, { cause: e });
    }
    sock.setBroadcast(true);
    const entry: Served = { iface, sock };
    sock.on('error', (e) => this.log.warn({ key: iface.key, err: e }, 'dhcp socket error'));
    sock.on('message', (msg) => this.handle(entry, msg));
    this.served.set(iface.key, entry);
    this.log.debug({ key: iface.key, device: iface.device, netns: iface.netnsPath }, 'dhcp serving');
  }

  /** Updates what is handed out (no new socket). */
  update(key: string, config: DhcpLeaseConfig): void {
    const s = this.served.get(key);
    if (!s) throw new VmletError('DHCP_NOT_SERVING', `DHCP is not serving ${key}`);
    s.iface = { ...s.iface, config };
  }

  async remove(key: string): Promise<boolean> {
    const s = this.served.get(key);
    if (!s) return false;
    this.served.delete(key);
    await new Promise<void>((resolve) => s.sock.close(() => resolve()));
    return true;
  }

  async close(): Promise<void> {
    await Promise.all([...this.served.keys()].map((k) => this.remove(k)));
  }

  private handle(entry: Served, msg: Buffer): void {
    const { iface, sock } = entry;
    this.stats.received++;
    let req: DhcpPacket;
    try {
      req = decodeDhcp(msg);
    } catch (e) {
      this.stats.malformed++;
      this.log.debug({ key: iface.key, err: e }, 'dhcp: malformed packet dropped');
      return;
    }
    let ans: DhcpAnswer;
    try {
      ans = answerDhcp(req, iface.config, iface.key, this.now());
    } catch (e) {
      this.log.warn({ key: iface.key, err: e }, 'dhcp: cannot answer');
      return;
    }
    if (ans.event) {
      // debug: a guest sends as many as it likes; what changes a lease is logged where it is recorded (lease-recorder.ts)
      this.log.debug({ key: iface.key, event: ans.event.type, mac: ans.event.clientMac, ip: ans.event.ip }, `dhcp ${ans.event.type}`);
      try {
        this.onEvent?.(ans.event);
      } catch (e) {
        this.log.warn({ key: iface.key, err: e }, 'dhcp: event handler failed');
      }
    }
    if (!ans.reply) {
      this.stats.unanswered++;
      if (ans.ignored && !ans.event) this.log.debug({ key: iface.key, why: ans.ignored }, 'dhcp: no reply');
      return;
    }
    this.stats.answered++;
    sock.send(ans.reply, 68, ans.to, (err) => {
      if (err) this.log.warn({ key: iface.key, err, to: ans.to }, 'dhcp: send failed');
    });
  }
}
