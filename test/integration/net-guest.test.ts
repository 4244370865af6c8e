// Boots the test guest on a masquerade and on a bridge sandbox and checks DHCP, inbound NAT, the gateway, VM-to-VM traffic (through the gateway) and cleanup.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { randomUUID } from 'node:crypto';
import { qemuNicArgs } from '../../src/net/qemu-args.js';
import { IPAM_FILE } from '../../src/net/ipam.js';
import { bootTestGuest, guestSkipReason, type TestGuest } from '../support/guest.js';
import { bootGuestOnTap, httpGet, httpGetRetry, ipJson, netSkipReason, qemuInNetns, startedManager } from '../support/net-env.js';

const skip = netSkipReason() ?? guestSkipReason();
// busybox-static's wget crashes in the test guest (static glibc); nc does plain HTTP fine
const GET = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'";

t.test('guests on masquerade and bridge sandboxes', { skip: skip ?? false, timeout: 150_000 }, async (t) => {
  const { tn, mgr } = await startedManager(t);

  const uidA = randomUUID();
  const uidB = randomUUID();
  let t0 = Date.now();
  const a = await mgr.setup({
    uid: uidA,
    hostname: 'vm-a',
    interfaces: [{ name: 'default', masquerade: {}, ports: [{ port: 80 }] }],
    networks: [{ name: 'default', pod: {} }],
  });
  const setupA = Date.now() - t0;
  t0 = Date.now();
  const b = await mgr.setup({
    uid: uidB,
    hostname: 'vm-b',
    interfaces: [{ name: 'default', bridge: {}, macAddress: '02:00:00:aa:bb:cc' }],
    networks: [{ name: 'default', pod: {} }],
  });
  const setupB = Date.now() - t0;
  t.comment(`sandbox setup: masquerade ${setupA} ms, bridge ${setupB} ms`);
  const ifA = a.interfaces[0]!;
  const ifB = b.interfaces[0]!;
  t.equal(ifA.guestIp, '10.0.2.2', 'masquerade guest address');
  t.equal(ifB.guestIp, b.address, 'bridge guest gets the sandbox address');
  t.equal(ifB.mac, '02:00:00:aa:bb:cc');

  // guest A: tap by fd, inherited by QEMU under the same number
  const guestA = await bootGuestOnTap(mgr, uidA, { mac: ifA.mac, model: ifA.model }, (fn) => t.teardown(fn));
  // guest B: QEMU runs inside the sandbox and opens the tap by name
  const guestB = await bootTestGuest({
    accel: 'tcg',
    qmp: false,
    guestAgent: false,
    qemu: qemuInNetns(b.netnsPath, tn.stateDir),
    teardown: (fn) => t.teardown(fn),
    extraArgs: qemuNicArgs({ index: 0, mac: ifB.mac, model: ifB.model, tap: { ifname: ifB.tap }, romfile: '' }),
  });

  const [boundA, boundB] = await Promise.all([
    guestA.waitForSerial(/vmlet-guest: eth0 (\S+)\/(\d+) router (\S+) \(dhcp\)/, 60_000),
    guestB.waitForSerial(/vmlet-guest: eth0 (\S+)\/(\d+) router (\S+) \(dhcp\)/, 60_000),
  ]);
  t.same(boundA.groups, ['10.0.2.2', '24', '10.0.2.1'], 'guest A bound 10.0.2.2/24 via our DHCP');
  t.same(boundB.groups, [b.address, String(b.prefix), b.gateway], 'guest B bound the sandbox address');
  await Promise.all([guestA.waitReady(60_000), guestB.waitReady(60_000)]);

  const addrA = await guestA.shell('ip -4 addr show dev eth0');
  t.match(addrA.output, /inet 10\.0\.2\.2\/24/, "guest A's ip addr shows 10.0.2.2");
  const hostA = await guestA.shell('hostname; cat /etc/resolv.conf');
  t.match(hostA.output, /vm-a/, 'hostname from DHCP');
  t.match(hostA.output, new RegExp(`nameserver ${tn.opts.dns!.nameservers[0]!.replace(/\./g, '\\.')}`), 'DNS from DHCP');

  await mgr.flushLeaseUpdates();
  const file = JSON.parse(fs.readFileSync(path.join(tn.stateDir, IPAM_FILE), 'utf8')) as {
    leases: Record<string, { interfaces: { dhcp?: { clientMac: string } }[] }>;
  };
  t.equal(file.leases[uidA]?.interfaces[0]?.dhcp?.clientMac, ifA.mac, 'DHCP lease of A recorded in the lease file');
  t.equal(file.leases[uidB]?.interfaces[0]?.dhcp?.clientMac, ifB.mac, 'DHCP lease of B recorded in the lease file');

  const pingA = await guestA.shell(`ping -c 1 -W 3 ${a.gateway}`);
  t.equal(pingA.status, 0, 'guest A (masquerade) reaches the host bridge gateway');
  const pingB = await guestB.shell(`ping -c 1 -W 3 ${b.gateway}`);
  t.equal(pingB.status, 0, 'guest B (bridge) reaches the host bridge gateway');

  const viaNat = await httpGetRetry(a.address, 80);
  t.match(viaNat.body, /VMLET-GUEST-HTTP-OK/, 'host → sandbox A:80 is DNATed to the guest');
  const direct = await httpGetRetry(b.address, 80);
  t.match(direct.body, /VMLET-GUEST-HTTP-OK/, 'host → sandbox B:80 reaches the bridged guest directly');

  // only listed ports are forwarded on A
  await guestA.shell('httpd -p 8080 -h /www');
  const local = await guestA.shell(`${GET} | nc -w 5 127.0.0.1 8080`);
  t.match(local.output, /VMLET-GUEST-HTTP-OK/, 'guest A serves 8080 locally');
  await t.rejects(httpGet(a.address, 8080, 2000), 'port 8080 is not forwarded to guest A');

  const aToB = await guestA.shell(`${GET} | nc -w 5 ${b.address} 80`);
  t.match(aToB.output, /VMLET-GUEST-HTTP-OK/, 'guest A reaches guest B by its sandbox address');
  const bToA = await guestB.shell(`${GET} | nc -w 5 ${a.address} 80`);
  t.match(bToA.output, /VMLET-GUEST-HTTP-OK/, 'guest B reaches guest A by its sandbox address');
  // the host bridge's ports are isolated: peers meet through the gateway, whose MAC answers for A (proxy ARP)
  const bridgeMac = ipJson<{ address: string }[]>(['link', 'show', 'dev', tn.opts.bridge!])[0]!.address;
  t.match((await guestB.shell(`ip neigh show ${a.address}`)).output, new RegExp(`lladdr ${bridgeMac}`), "guest B reaches A via the gateway's MAC");

  t.same(mgr.interfacesStatus(uidA), [{ name: 'default', mac: ifA.mac, ipAddress: a.address, ipAddresses: [a.address] }], 'interfacesStatus');

  await Promise.all([guestA.kill(), guestB.kill()]);
  await mgr.teardown(uidA);
  await mgr.teardown(uidB);
  const netns = fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns') : [];
  t.same(
    netns.filter((n) => n === a.netns || n === b.netns),
    [],
    'no netns left',
  );
  const links = ipJson<{ ifname: string }[]>(['link', 'show']).map((l) => l.ifname);
  t.same(
    links.filter((l) => l === a.hostVeth || l === b.hostVeth || l === 'tap0' || l === 'k6t-eth0'),
    [],
    'no veth, tap or sandbox bridge left on the host',
  );
  t.same(ipJson<unknown[]>(['link', 'show', 'master', tn.opts.bridge!]), [], 'nothing on the host bridge');
  const after = JSON.parse(fs.readFileSync(path.join(tn.stateDir, IPAM_FILE), 'utf8')) as { leases: object };
  t.same(after.leases, {}, 'no lease left');
  t.same(mgr.dhcp.keys(), [], 'DHCP serves nothing');
  await mgr.removeHost();
  t.notOk(execFileSync('nft', ['list', 'tables']).toString().includes(tn.opts.nftTable!), 'NAT table removed');
});
