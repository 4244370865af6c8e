// A DHCP flood from inside a real sandbox: 10,000 DISCOVER/REQUEST frames written into the guest's tap from one MAC and from a few, with releases; the lease file is written a bounded number of times (counted by inotify and by the recorder), the server still answers a client afterwards, and the lease recorded is right.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import {
  DhcpMessageType as T,
  DhcpOption as O,
  decodeDhcp,
  encodeDhcpRequest,
  messageType,
  optIps,
  optionIp,
  type DhcpPacket,
} from '../../src/net/dhcp-codec.js';
import { IPAM_FILE } from '../../src/net/ipam.js';
import { MIN_WRITE_INTERVAL_MS } from '../../src/net/lease-recorder.js';
import { macToBytes } from '../../src/net/mac.js';
import { NetManager } from '../../src/net/sandbox.js';
import type { LeaseInterface } from '../../src/net/types.js';
import { libc } from '../../src/sys/libc.js';
import { closeFds, netSkipReason, testNetFor } from '../support/net-env.js';

const skip = netSkipReason();
const fcntl = libc.func('int fcntl(int fd, int cmd, int arg)') as (fd: number, cmd: number, arg: number) => number;
const [F_GETFL, F_SETFL, O_NONBLOCK] = [3, 4, 0o4000];
/** The tap was made with vnet_hdr: every frame starts with a 10-byte virtio-net header (all zero: no offloads). */
const VNET_HDR = 10;
const BROADCAST_MAC = Buffer.alloc(6, 0xff);

function ipChecksum(h: Buffer): number {
  let sum = 0;
  for (let i = 0; i < h.length; i += 2) sum += h.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** vnet header + Ethernet + IPv4 + UDP 68→67 around a DHCP payload, as a guest's NIC would send it. */
function frame(srcMac: string, dhcp: Buffer, srcIp = '0.0.0.0'): Buffer {
  const eth = Buffer.concat([BROADCAST_MAC, macToBytes(srcMac), Buffer.from([0x08, 0x00])]);
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(68, 0);
  udp.writeUInt16BE(67, 2);
  udp.writeUInt16BE(8 + dhcp.length, 4); // checksum 0: none (allowed for IPv4)
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + 8 + dhcp.length, 2);
  ip[8] = 64;
  ip[9] = 17;
  Buffer.from(srcIp.split('.').map(Number)).copy(ip, 12);
  Buffer.from([255, 255, 255, 255]).copy(ip, 16);
  ip.writeUInt16BE(ipChecksum(ip), 10);
  return Buffer.concat([Buffer.alloc(VNET_HDR), eth, ip, udp, dhcp]);
}

const discover = (mac: string, xid: number): Buffer =>
  frame(mac, encodeDhcpRequest({ xid, chaddr: mac, options: [[O.MESSAGE_TYPE, Buffer.from([T.DISCOVER])]] }));
const request = (mac: string, xid: number, ip: string, server: string): Buffer =>
  frame(
    mac,
    encodeDhcpRequest({
      xid,
      chaddr: mac,
      options: [
        [O.MESSAGE_TYPE, Buffer.from([T.REQUEST])],
        [O.REQUESTED_IP, optIps([ip])],
        [O.SERVER_ID, optIps([server])],
      ],
    }),
  );
const release = (mac: string, xid: number, ip: string, server: string): Buffer =>
  frame(
    mac,
    encodeDhcpRequest({
      xid,
      chaddr: mac,
      ciaddr: ip,
      options: [
        [O.MESSAGE_TYPE, Buffer.from([T.RELEASE])],
        [O.SERVER_ID, optIps([server])],
      ],
    }),
    ip,
  );

/** The DHCP replies (UDP to port 68) waiting on the tap, read without blocking. */
function readReplies(fd: number): DhcpPacket[] {
  const out: DhcpPacket[] = [];
  const buf = Buffer.alloc(65536);
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(fd, buf);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return out;
      throw e;
    }
    const f = buf.subarray(VNET_HDR, n);
    if (f.length < 42 || f.readUInt16BE(12) !== 0x0800 || f[23] !== 17) continue;
    const ihl = (f[14]! & 0x0f) * 4;
    if (f.readUInt16BE(14 + ihl + 2) !== 68) continue;
    try {
      out.push(decodeDhcp(f.subarray(14 + ihl + 8)));
    } catch {
      /* not DHCP */
    }
  }
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

t.test(
  'a DHCP flood from the guest side: bounded lease-file writes, a client still served, the right lease',
  { skip: skip ?? false, timeout: 120_000 },
  async (t) => {
    const tn = testNetFor(t);
    let infoLines = 0;
    const mgr = new NetManager({ ...tn.opts, log: { info: () => void infoLines++, warn: () => undefined, debug: () => undefined } });
    t.teardown(() => mgr.close());
    await mgr.start();
    const uid = randomUUID();
    const sb = await mgr.setup({ uid, hostname: 'flood', interfaces: [{ name: 'default', masquerade: {} }], networks: [{ name: 'default', pod: {} }] });
    const li = sb.interfaces[0]!;
    const [nic, server, guestIp] = [li.mac, li.serverIp, li.guestIp];
    const others = ['02:00:5e:00:00:01', '02:00:5e:00:00:02', '02:00:5e:00:00:03'];

    const fds = mgr.openTapFds(uid);
    t.teardown(() => closeFds(fds));
    const fd = fds[0]!;
    t.ok(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK) >= 0, 'the tap reads without blocking');

    // Every lease-file write is a rename of a temp file onto it: inotify sees each one.
    let renames = 0;
    const watcher = fs.watch(tn.stateDir, (ev, name) => {
      if (ev === 'rename' && name === IPAM_FILE) renames++;
    });
    t.teardown(() => watcher.close());
    await sleep(50);
    const dhcp = mgr.dhcp.stats;
    let replies: DhcpPacket[] = [];

    /**
     * Writes `frames` into the tap in batches of 50, letting the server read each batch before the next (its socket
     * buffer holds ~100), and `pauseMs` between batches.
     */
    const flood = async (frames: Buffer[], pauseMs = 0): Promise<{ ms: number; received: number }> => {
      const started = performance.now();
      const before = dhcp.received;
      for (let i = 0; i < frames.length; i += 50) {
        for (const f of frames.slice(i, i + 50)) fs.writeSync(fd, f);
        const want = before + Math.min(i + 50, frames.length);
        // Until the server has read them, or three turns of the event loop (each polls its socket) read nothing more:
        // frames the sandbox's guest filter dropped never arrive.
        let last = dhcp.received;
        for (let still = 0; dhcp.received < want && still < 3;) {
          await tick();
          still = dhcp.received === last ? still + 1 : 0;
          last = dhcp.received;
        }
        replies = replies.concat(readReplies(fd));
        if (pauseMs > 0) await sleep(pauseMs);
      }
      return { ms: performance.now() - started, received: dhcp.received - before };
    };

    // 1. One MAC, the NIC's: 5,000 DISCOVER + 5,000 REQUEST for its own address.
    const one: Buffer[] = [];
    for (let i = 0; i < 5_000; i++) one.push(discover(nic, i), request(nic, i, guestIp, server));
    const a = await flood(one);
    await mgr.flushLeaseUpdates();
    await sleep(100);
    const writesA = renames;
    const answeredA = replies.length;
    t.comment(
      `one MAC: 10,000 packets in ${a.ms.toFixed(0)} ms (${((10_000 / a.ms) * 1000).toFixed(0)}/s), server received ${a.received}, replies read ${answeredA}`,
    );
    t.equal(a.received, 10_000, 'the server received every packet');
    t.ok(answeredA >= 9_000, `and answered them (${answeredA} replies read back)`);
    t.equal(writesA, 1, 'bound: exactly one lease-file write (the new client), not one per REQUEST');
    t.equal(mgr.leaseRecorder.stats.writes, 1, 'the recorder counts the same');

    // 2. Four MACs (the NIC's and three others) in 20 blocks of 500 packets: in even blocks the NIC sends REQUESTs
    // (leased), odd blocks start with its RELEASE and it only DISCOVERs (released). Spread over ~12 s, so each block
    // is a lasting change (20 in all) and several write intervals pass: the rate limit's worst case.
    const few: Buffer[] = [];
    const macs = [nic, ...others];
    for (let i = 0; i < 10_000; i++) {
      const mac = macs[i % 4]!;
      const released = Math.floor(i / 500) % 2 === 1;
      if (released && i % 500 === 0) few.push(release(nic, i, guestIp, server));
      else few.push(i % 8 < 4 || (released && mac === nic) ? discover(mac, i) : request(mac, i, guestIp, server));
    }
    replies = [];
    const b = await flood(few, 60);
    await mgr.flushLeaseUpdates();
    await sleep(100);
    const writesB = renames - writesA;
    const boundB = 2 + Math.floor(b.ms / MIN_WRITE_INTERVAL_MS);
    t.comment(
      `four MACs with releases: 10,000 packets in ${b.ms.toFixed(0)} ms (paced), server received ${b.received}, replies ${replies.length}, ` +
        `20 lease changes, lease-file writes ${writesB} (bound ${boundB}); recorder ${JSON.stringify(mgr.leaseRecorder.stats)}`,
    );
    t.ok(b.received >= 10_000 * 0.25, 'the NIC part of the flood reached the server');
    t.ok(
      replies.every((r) => r.chaddr === nic),
      'only the NIC MAC is answered',
    );
    t.ok(writesB >= 1, 'the releases are recorded');
    t.ok(writesB <= boundB, `bound: ${writesB} writes ≤ 2 + ${b.ms.toFixed(0)} ms / ${MIN_WRITE_INTERVAL_MS} ms (one per interval, plus the flush)`);
    t.ok(infoLines <= renames + 5, `the log is not flooded either (${infoLines} info lines)`);

    // 3. A legitimate client afterwards: DISCOVER → OFFER, REQUEST → ACK, and its lease recorded.
    readReplies(fd);
    const xid = 0x5eed;
    const acked = Date.now();
    fs.writeSync(fd, discover(nic, xid));
    let offer: DhcpPacket | undefined;
    for (let i = 0; i < 100 && !offer; i++) {
      await sleep(20);
      offer = readReplies(fd).find((r) => r.xid === xid && messageType(r) === T.OFFER);
    }
    t.equal(offer?.yiaddr, guestIp, 'OFFER of the guest address');
    t.equal(offer && optionIp(offer, O.ROUTER), li.router, 'with its router');
    fs.writeSync(fd, request(nic, xid + 1, guestIp, server));
    let ack: DhcpPacket | undefined;
    for (let i = 0; i < 100 && !ack; i++) {
      await sleep(20);
      ack = readReplies(fd).find((r) => r.xid === xid + 1 && messageType(r) === T.ACK);
    }
    t.equal(ack?.yiaddr, guestIp, 'ACK');
    await mgr.flushLeaseUpdates();
    const file = JSON.parse(fs.readFileSync(path.join(tn.stateDir, IPAM_FILE), 'utf8')) as {
      leases: Record<string, { address: string; interfaces: LeaseInterface[] }>;
    };
    const rec = file.leases[uid]?.interfaces[0]?.dhcp;
    t.equal(file.leases[uid]?.address, sb.address, 'the sandbox keeps its address');
    t.equal(rec?.clientMac, nic, 'the lease file records the client');
    const acquired = Date.parse(rec?.acquiredAt ?? '');
    t.ok(acquired >= acked - 1000 && acquired <= Date.now(), `acquired at the ACK (${rec?.acquiredAt})`);
    t.equal(Date.parse(rec?.expiresAt ?? '') - acquired, (tn.opts.leaseSeconds ?? 0) * 1000, 'expiring one lease time later');
    t.same(Object.keys(file.leases), [uid], 'no lease for the other MACs');
  },
);
