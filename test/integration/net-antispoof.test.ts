// What a guest can do on the network: spoofed IP, MAC and ARP, router advertisements, DHCP server replies, connections to the host and to the metadata address, all dropped and counted, while DHCP, the gateway, peers and inbound traffic still work.
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import t from 'tap';
import { GUEST_DROP_COUNTERS, METADATA_ADDRESS, type CounterValue } from '../../src/net/guest-filter.js';
import { qemuNicArgs } from '../../src/net/qemu-args.js';
import { NetManager, type GuestDrops } from '../../src/net/sandbox.js';
import { bootTestGuest, guestSkipReason, type TestGuest } from '../support/guest.js';
import { bootGuestOnTap, closeFds, httpGetRetry, ipJson, netSkipReason, qemuInNetns, scrubTestNet, testNet } from '../support/net-env.js';

const skip = netSkipReason() ?? guestSkipReason();
const GET = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'";
const BOUND = /vmlet-guest: eth0 (\S+)\/(\d+) router (\S+) \(dhcp\)/;

/** A TCP listener that greets and counts who connected. */
async function listener(host: string, port: number): Promise<{ server: net.Server; port: number; peers: string[] }> {
  const peers: string[] = [];
  const server = net.createServer((s) => {
    peers.push(s.remoteAddress ?? '?');
    s.end('VMLET-HOST-OK\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  return { server, port: (server.address() as net.AddressInfo).port, peers };
}

function nsCat(netnsPath: string, file: string): string {
  return execFileSync('nsenter', [`--net=${netnsPath}`, '--', 'cat', file])
    .toString()
    .trim();
}

/** One field of /proc/net/snmp or /proc/net/netstat (`Udp` `InDatagrams`, `TcpExt` `IPReversePathFilter`) inside a netns. */
function netStat(netnsPath: string, file: 'snmp' | 'netstat', group: string, field: string): number {
  const lines = nsCat(netnsPath, `/proc/net/${file}`)
    .split('\n')
    .filter((l) => l.startsWith(`${group}:`));
  const names = lines[0]?.split(/\s+/) ?? [];
  const values = lines[1]?.split(/\s+/) ?? [];
  return Number(values[names.indexOf(field)]);
}

function grew(before: GuestDrops, after: GuestDrops, where: 'sandbox' | 'host', name: string): number {
  const get = (d: GuestDrops): CounterValue | undefined => d[where][name];
  return (get(after)?.packets ?? Number.NaN) - (get(before)?.packets ?? Number.NaN);
}

// ---- frames written into a tap from the host side (IFF_VNET_HDR: a 10-byte virtio_net_hdr first) ----
const mac = (m: string): Buffer => Buffer.from(m.replace(/:/g, ''), 'hex');
const ip4 = (a: string): Buffer => Buffer.from(a.split('.').map(Number));

function ipv4Header(src: string, dst: string, proto: number, payloadLen: number): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt8(0x45, 0);
  h.writeUInt16BE(20 + payloadLen, 2);
  h.writeUInt8(64, 8);
  h.writeUInt8(proto, 9);
  ip4(src).copy(h, 12);
  ip4(dst).copy(h, 16);
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += h.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  h.writeUInt16BE(~sum & 0xffff, 10);
  return h;
}

function udp4(srcMac: string, src: string, dst: string, sport: number, dport: number, data: Buffer): Buffer {
  const u = Buffer.alloc(8);
  u.writeUInt16BE(sport, 0);
  u.writeUInt16BE(dport, 2);
  u.writeUInt16BE(8 + data.length, 4);
  return Buffer.concat([mac('ff:ff:ff:ff:ff:ff'), mac(srcMac), Buffer.from([0x08, 0x00]), ipv4Header(src, dst, 17, 8 + data.length), u, data]);
}

/** An ICMPv6 router advertisement from fe80::1 to all nodes (checksum left 0: it is dropped before anything reads it). */
function routerAdvert(srcMac: string): Buffer {
  const icmp = Buffer.alloc(16);
  icmp.writeUInt8(134, 0); // nd-router-advert
  icmp.writeUInt8(64, 4); // cur hop limit
  icmp.writeUInt16BE(1800, 6); // router lifetime
  const ip6 = Buffer.alloc(40);
  ip6.writeUInt32BE(0x60000000, 0);
  ip6.writeUInt16BE(icmp.length, 4);
  ip6.writeUInt8(58, 6);
  ip6.writeUInt8(255, 7);
  Buffer.from('fe800000000000000000000000000001', 'hex').copy(ip6, 8);
  Buffer.from('ff020000000000000000000000000001', 'hex').copy(ip6, 24);
  return Buffer.concat([mac('33:33:00:00:00:01'), mac(srcMac), Buffer.from([0x86, 0xdd]), ip6, icmp]);
}

function writeFrame(fd: number, frame: Buffer): void {
  fs.writeSync(fd, Buffer.concat([Buffer.alloc(10), frame]));
}

t.test('a guest cannot spoof, reach the host or the metadata address; legitimate traffic still flows', { skip: skip ?? false, timeout: 300_000 }, async (t) => {
  const tn = testNet();
  const mgr = new NetManager(tn.opts);
  const servers: net.Server[] = [];
  const metaLink = `vmltm${tn.tag}`;
  t.teardown(async () => {
    for (const s of servers) s.close();
    await mgr.close();
    try {
      execFileSync('ip', ['link', 'del', metaLink], { stdio: 'ignore' });
    } catch {
      /* not made */
    }
    scrubTestNet(tn);
    tn.cleanup();
  });
  await mgr.start();
  const bridge = tn.opts.bridge!;
  const gw = mgr.gateway;
  for (const [rel, want] of [
    [`conf/${bridge}/proxy_arp`, '1'],
    [`conf/${bridge}/proxy_arp_pvlan`, '1'],
    [`conf/${bridge}/forwarding`, '1'],
    [`neigh/${bridge}/proxy_delay`, '0'],
  ] as const) {
    t.equal(fs.readFileSync(`/proc/sys/net/ipv4/${rel}`, 'utf8').trim(), want, `host bridge ${rel} = ${want}`);
  }

  // a host service on the bridge address, and the metadata address on a veth pair of the test's own: nothing leaves the machine
  execFileSync('ip', ['link', 'add', metaLink, 'type', 'veth', 'peer', 'name', `vmltn${tn.tag}`]);
  execFileSync('ip', ['addr', 'add', `${METADATA_ADDRESS}/32`, 'dev', metaLink]);
  execFileSync('ip', ['link', 'set', metaLink, 'up']);
  const host = await listener(gw, 0);
  const meta = await listener(METADATA_ADDRESS, 80);
  servers.push(host.server, meta.server);

  const uidA = randomUUID();
  const uidB = randomUUID();
  const uidC = randomUUID();
  const timed = async (uid: string, binding: 'masquerade' | 'bridge', extra: Record<string, unknown> = {}) => {
    const t0 = performance.now();
    const info = await mgr.setup({
      uid,
      hostname: `vm-${binding}`,
      interfaces: [{ name: 'default', [binding]: {}, ...extra }],
      networks: [{ name: 'default', pod: {} }],
    });
    return { info, ms: performance.now() - t0 };
  };
  const a = await timed(uidA, 'masquerade', { ports: [{ port: 80 }] });
  const b = await timed(uidB, 'bridge', { macAddress: '02:00:00:aa:bb:cc' });
  const c = await timed(uidC, 'bridge');
  t.comment(`sandbox setup with the guest filter: masquerade ${a.ms.toFixed(1)} ms, bridge ${b.ms.toFixed(1)} ms, ${c.ms.toFixed(1)} ms`);
  const A = a.info;
  const B = b.info;
  const C = c.info;

  for (const s of [A, B, C]) {
    const link = ipJson<{ linkinfo?: { info_slave_data?: { isolated?: boolean } } }[]>(['-details', 'link', 'show', 'dev', s.hostVeth]);
    t.equal(link[0]?.linkinfo?.info_slave_data?.isolated, true, `${s.hostVeth} is an isolated bridge port`);
    t.equal(nsCat(s.netnsPath, '/proc/sys/net/ipv4/conf/all/rp_filter'), '1', `strict rp_filter in ${s.netns}`);
  }

  // ---- frames no guest can send (busybox cannot make an RA or send from UDP port 67): written into C's tap from the host ----
  const cMac = C.interfaces[0]!.mac;
  const cIp = C.interfaces[0]!.guestIp;
  const tapC = mgr.openTapFds(uidC);
  const c0 = await mgr.guestDrops(uidC);
  try {
    writeFrame(tapC[0]!, routerAdvert(cMac));
    writeFrame(tapC[0]!, udp4(cMac, cIp, '255.255.255.255', 67, 68, Buffer.alloc(240))); // a DHCP "server reply" from the guest
    // an 802.1Q-tagged frame (VLAN 5) carrying IPv4 from someone else's address
    const inner = udp4(cMac, '10.99.0.1', gw, 4000, 4000, Buffer.from('x'));
    writeFrame(tapC[0]!, Buffer.concat([inner.subarray(0, 12), Buffer.from([0x81, 0x00, 0x00, 0x05]), inner.subarray(12)]));
    writeFrame(tapC[0]!, udp4('02:00:00:00:00:66', cIp, gw, 4000, 4000, Buffer.from('x'))); // another source MAC
  } finally {
    closeFds(tapC);
  }
  const c1 = await mgr.guestDrops(uidC);
  t.same(Object.keys(c1.sandbox).sort(), [...GUEST_DROP_COUNTERS].sort(), 'every named counter of the guest filter exists');
  t.equal(grew(c0, c1, 'sandbox', 'router_advert'), 1, 'a router advertisement from the guest is dropped');
  t.equal(grew(c0, c1, 'sandbox', 'dhcp_server'), 1, 'a DHCP server reply (udp sport 67) from the guest is dropped');
  t.equal(grew(c0, c1, 'sandbox', 'other_proto'), 1, 'a VLAN-tagged frame is dropped');
  t.equal(grew(c0, c1, 'sandbox', 'mac_spoof'), 1, 'a frame with another source MAC is dropped');
  await mgr.teardown(uidC);

  // ---- the guests: A masquerade (tap by fd), B bridge (QEMU inside the sandbox) ----
  const guestA = await bootGuestOnTap(mgr, uidA, { mac: A.interfaces[0]!.mac, model: 'virtio' }, (fn) => t.teardown(fn));
  const guestB = await bootTestGuest({
    accel: 'tcg',
    qmp: false,
    guestAgent: false,
    qemu: qemuInNetns(B.netnsPath, tn.stateDir),
    teardown: (fn) => t.teardown(fn),
    extraArgs: qemuNicArgs({ index: 0, mac: B.interfaces[0]!.mac, model: 'virtio', tap: { ifname: B.interfaces[0]!.tap }, romfile: '' }),
  });
  const [boundA, boundB] = await Promise.all([guestA.waitForSerial(BOUND, 60_000), guestB.waitForSerial(BOUND, 60_000)]);
  t.same(boundA.groups, ['10.0.2.2', '24', '10.0.2.1'], 'guest A took its DHCP lease');
  t.same(boundB.groups, [B.address, String(B.prefix), gw], 'guest B took its DHCP lease');
  await Promise.all([guestA.waitReady(60_000), guestB.waitReady(60_000)]);

  // ---- legitimate traffic ----
  t.equal((await guestA.shell(`ping -c 1 -W 3 ${gw}`)).status, 0, 'guest A reaches the gateway');
  t.equal((await guestB.shell(`ping -c 1 -W 3 ${gw}`)).status, 0, 'guest B reaches the gateway');
  t.match((await httpGetRetry(A.address, 80)).body, /VMLET-GUEST-HTTP-OK/, 'inbound: host → guest A through DNAT');
  t.match((await httpGetRetry(B.address, 80)).body, /VMLET-GUEST-HTTP-OK/, 'inbound: host → guest B');
  t.match((await guestA.shell(`${GET} | nc -w 5 ${B.address} 80`)).output, /VMLET-GUEST-HTTP-OK/, 'guest A reaches its peer B');
  t.match((await guestB.shell(`${GET} | nc -w 5 ${A.address} 80`)).output, /VMLET-GUEST-HTTP-OK/, 'guest B reaches its peer A');
  const bridgeMac = ipJson<{ address: string }[]>(['link', 'show', 'dev', bridge])[0]!.address;
  const neigh = (await guestB.shell(`ip neigh show ${A.address}`)).output;
  t.match(neigh, new RegExp(`lladdr ${bridgeMac}`), "B's peer A sits behind the gateway's MAC: isolated ports meet through the host (proxy ARP)");

  // a renewal that ends in REBINDING: a broadcast from the guest's own address, which strict rp_filter must let reach the DHCP server
  const udpIn = (): number => netStat(B.netnsPath, 'snmp', 'Udp', 'InDatagrams');
  const rpDrops = (): number => netStat(B.netnsPath, 'netstat', 'TcpExt', 'IPReversePathFilter');
  const [udp0, rp0] = [udpIn(), rpDrops()];
  await guestB.shell('kill -USR1 $(cat /run/udhcpc.eth0.pid)');
  for (let i = 0; i < 40 && udpIn() === udp0; i++) await new Promise((r) => setTimeout(r, 250));
  t.ok(udpIn() > udp0, "guest B's renewal reaches the sandbox's DHCP server");
  t.equal(rpDrops(), rp0, 'strict rp_filter dropped none of it');

  // ---- attacks, from each guest ----
  const guests = [
    { name: 'bridge', g: guestB, uid: uidB, ownIp: B.address, gateway: gw, spoof: B.address.replace(/\d+$/, '200'), mac: B.interfaces[0]!.mac },
    { name: 'masquerade', g: guestA, uid: uidA, ownIp: '10.0.2.2', gateway: '10.0.2.1', spoof: '10.0.2.99', mac: A.interfaces[0]!.mac },
  ];
  for (const x of guests) {
    const d0 = await mgr.guestDrops(x.uid);
    const spoofIp = await x.g.shell(
      `ip addr add ${x.spoof}/32 dev eth0 && ping -c 2 -W 2 -I ${x.spoof} ${gw}; r=$?; ip addr del ${x.spoof}/32 dev eth0; test $r = 0`,
    );
    t.not(spoofIp.status, 0, `${x.name}: ping from a spoofed source ${x.spoof} gets no answer`);
    const d1 = await mgr.guestDrops(x.uid);
    t.ok(grew(d0, d1, 'sandbox', 'ip_spoof') >= 2, `${x.name}: spoofed source addresses dropped (ip_spoof +${grew(d0, d1, 'sandbox', 'ip_spoof')})`);

    const spoofMac = await x.g.shell(
      `ip link set eth0 address 02:00:00:00:99:99 && ping -c 2 -W 2 ${gw}; r=$?; ip link set eth0 address ${x.mac}; test $r = 0`,
    );
    t.not(spoofMac.status, 0, `${x.name}: ping from a spoofed MAC gets no answer`);
    const d2 = await mgr.guestDrops(x.uid);
    t.ok(grew(d1, d2, 'sandbox', 'mac_spoof') >= 2, `${x.name}: frames from a spoofed MAC dropped (mac_spoof +${grew(d1, d2, 'sandbox', 'mac_spoof')})`);
    t.equal((await x.g.shell(`ping -c 1 -W 3 ${gw}`)).status, 0, `${x.name}: with its own MAC back the guest reaches the gateway again`);

    await x.g.shell(
      `sysctl -w net.ipv4.ip_nonlocal_bind=1 >/dev/null; arping -U -c 2 -w 3 -I eth0 -s ${x.gateway} ${x.gateway}; sysctl -w net.ipv4.ip_nonlocal_bind=0`,
    );
    const d3 = await mgr.guestDrops(x.uid);
    t.ok(
      grew(d2, d3, 'sandbox', 'arp_spoof') >= 2,
      `${x.name}: gratuitous ARP claiming the gateway ${x.gateway} dropped (arp_spoof +${grew(d2, d3, 'sandbox', 'arp_spoof')})`,
    );

    const peersBefore = host.peers.length;
    const toHost = await x.g.shell(`nc -w 3 ${gw} ${host.port} </dev/null`);
    t.notMatch(toHost.output, /VMLET-HOST-OK/, `${x.name}: no connection to the host's bridge address`);
    t.equal(host.peers.length, peersBefore, `${x.name}: the host service saw no one`);
    const d4 = await mgr.guestDrops(x.uid);
    t.ok(grew(d3, d4, 'host', 'guest_to_host') >= 1, `${x.name}: dropped by the host guard (guest_to_host +${grew(d3, d4, 'host', 'guest_to_host')})`);

    const toMeta = await x.g.shell(`nc -w 3 ${METADATA_ADDRESS} 80 </dev/null`);
    t.notMatch(toMeta.output, /VMLET-HOST-OK/, `${x.name}: no connection to ${METADATA_ADDRESS}`);
    t.equal(meta.peers.length, 0, `${x.name}: the metadata service saw no one`);
    const d5 = await mgr.guestDrops(x.uid);
    t.ok(grew(d4, d5, 'sandbox', 'metadata') >= 1, `${x.name}: dropped in the sandbox (metadata +${grew(d4, d5, 'sandbox', 'metadata')})`);
    t.equal(grew(d0, d5, 'sandbox', 'other_proto'), 0, `${x.name}: nothing the guest sent in IPv4 or ARP was taken for another protocol`);
  }

  // ---- allowHostAccess: true opens the host (the metadata address stays closed) ----
  const open = new NetManager({ ...tn.opts, allowHostAccess: true });
  await open.ensureHost();
  await open.close();
  for (const x of guests) {
    const r = await x.g.shell(`nc -w 5 ${gw} ${host.port} </dev/null`);
    t.match(r.output, /VMLET-HOST-OK/, `${x.name}: with allowHostAccess the guest reaches the host's service`);
  }
  t.same(host.peers, [B.address, A.address], 'the host saw B and A (by their sandbox addresses)');
  t.notMatch((await guestB.shell(`nc -w 3 ${METADATA_ADDRESS} 80 </dev/null`)).output, /VMLET-HOST-OK/, 'the metadata address stays closed');
  await mgr.ensureHost();
  t.notMatch((await guestB.shell(`nc -w 3 ${gw} ${host.port} </dev/null`)).output, /VMLET-HOST-OK/, 'closed again with the default config');

  await Promise.all([guestA.kill(), guestB.kill()]);
  await mgr.teardown(uidA);
  await mgr.teardown(uidB);

  // allowMetadata: true leaves the metadata rule out of new sandboxes (the other rules stay)
  const withMeta = new NetManager({ ...tn.opts, allowMetadata: true });
  t.teardown(() => withMeta.close());
  await withMeta.start();
  const uidD = randomUUID();
  const D = await withMeta.setup({ uid: uidD, interfaces: [{ name: 'default', bridge: {} }], networks: [{ name: 'default', pod: {} }] });
  const rules = execFileSync('nsenter', [`--net=${D.netnsPath}`, '--', 'nft', 'list', 'table', 'bridge', tn.opts.nftTable!]).toString();
  t.notMatch(rules, /169\.254\.169\.254/, 'allowMetadata: no metadata rule in the sandbox');
  t.match(rules, /counter name "ip_spoof" drop/, 'allowMetadata: the anti-spoofing rules stay');
  await withMeta.teardown(uidD);
  await mgr.removeHost();
});
