// Pure planning of the pod-netns binding: the record on vmlet's bridge, reading what CNI made, the attach plan per binding, refusals; PodNetwork's checks before it touches a netns.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { planNetwork } from '../../src/net/plan.js';
import { formatPodRecord, parsePodRecord, planPodAttach, readPodState, type IpLink, type PodState } from '../../src/net/pod-plan.js';
import { PodNetwork } from '../../src/net/pod-network.js';
import type { CommandRunner } from '../../src/net/exec.js';
import type { InterfaceSpec } from '../../src/net/types.js';

const UID = '3f2a9c1e-0000-4000-8000-000000000001';
const POD_MAC = '4e:40:36:1f:3b:43';
const nets = [{ name: 'default', pod: {} }];
const masq: InterfaceSpec[] = [{ name: 'default', masquerade: {}, ports: [{ port: 80 }, { port: 53, protocol: 'UDP' }] }];
const masqAll: InterfaceSpec[] = [{ name: 'default', masquerade: {} }];
const bridge: InterfaceSpec[] = [{ name: 'default', bridge: {} }];

const cniLinks: IpLink[] = [
  { ifname: 'lo', mtu: 65536, address: '00:00:00:00:00:00', addr_info: [{ family: 'inet', local: '127.0.0.1', prefixlen: 8, scope: 'host' }] },
  {
    ifname: 'eth0',
    mtu: 1450,
    address: POD_MAC,
    addr_info: [
      { family: 'inet', local: '10.244.1.7', prefixlen: 24, scope: 'global' },
      { family: 'inet6', local: 'fe80::1', prefixlen: 64, scope: 'link' },
    ],
  },
];
const cniRoutes = [{ dst: 'default', gateway: '10.244.1.1', dev: 'eth0' }];
const fresh = (): PodState => readPodState(cniLinks, cniRoutes, { podInterface: 'eth0', bridge: 'k6t-eth0', tap: 'tap0' });

t.test("the record on the bridge round-trips and refuses what is not vmlet's", async (t) => {
  const r = { address: '10.244.1.7', prefix: 24, gateway: '10.244.1.1', mtu: 1450, guestMac: '4E-40-36-1F-3B-43' };
  const text = formatPodRecord(r);
  t.equal(text, 'vmlet1/10.244.1.7/24/10.244.1.1/1450/4e:40:36:1f:3b:43');
  t.same(parsePodRecord(text), { ...r, guestMac: POD_MAC });
  t.same(parsePodRecord(formatPodRecord({ ...r, gateway: null })), { ...r, gateway: null, guestMac: POD_MAC }, 'no gateway');
  for (const bad of [
    undefined,
    '',
    'cni bridge',
    'vmlet1/10.244.1.7/24/10.244.1.1/1450',
    'vmlet1/10.244.1.300/24/-/1450/02:00:00:00:00:01',
    'vmlet1/10.244.1.7/33/-/1450/02:00:00:00:00:01',
    'vmlet1/10.244.1.7/24/x/1450/02:00:00:00:00:01',
    'vmlet1/10.244.1.7/24/-/1450/01:00:00:00:00:01',
    'vmlet2/10.244.1.7/24/-/1450/02:00:00:00:00:01',
  ]) {
    t.equal(parsePodRecord(bad), null, `refused: ${String(bad)}`);
  }
});

t.test("readPodState reads eth0, the default route, and vmlet's bridge and tap", async (t) => {
  t.same(fresh(), { pod: { address: '10.244.1.7', prefix: 24, mtu: 1450, mac: POD_MAC, master: null }, gateway: '10.244.1.1', bridge: null, tapExists: false });
  const ours = readPodState(
    [
      { ifname: 'eth0', mtu: 1450, address: '02:00:00:00:00:09', master: 'k6t-eth0', addr_info: [] },
      { ifname: 'k6t-eth0', ifalias: 'vmlet1/10.244.1.7/24/10.244.1.1/1450/4e:40:36:1f:3b:43' },
      { ifname: 'tap0' },
    ],
    [],
    { podInterface: 'eth0', bridge: 'k6t-eth0', tap: 'tap0' },
  );
  t.same(ours.pod, { address: null, prefix: null, mtu: 1450, mac: '02:00:00:00:00:09', master: 'k6t-eth0' }, 'eth0 without address (bridge binding)');
  t.same(ours.bridge?.record?.address, '10.244.1.7', 'record read from the alias');
  t.equal(ours.tapExists, true);
  t.equal(ours.gateway, null);
  t.equal(
    readPodState([{ ifname: 'k6t-eth0', ifalias: 'made by someone' }], [], { podInterface: 'eth0', bridge: 'k6t-eth0', tap: 'tap0' }).bridge?.record,
    null,
  );
});

t.test('masquerade with listed ports: DNAT of the pod IP and the pod loopback, masquerade out of eth0, route_localnet', async (t) => {
  const p = planPodAttach(planNetwork(masq, nets, UID), masq, fresh(), 'vmlet');
  t.equal(p.iface.mac, planNetwork(masq, nets, UID).interfaces[0]!.mac, 'the derived MAC');
  t.same(p.ip, [
    ['link', 'add', 'k6t-eth0', 'type', 'bridge'],
    ['link', 'set', 'k6t-eth0', 'alias', `vmlet1/10.244.1.7/24/10.244.1.1/1450/${p.iface.mac}`],
    ['addr', 'add', '10.0.2.1/24', 'dev', 'k6t-eth0'],
    ['tuntap', 'add', 'dev', 'tap0', 'mode', 'tap', 'vnet_hdr'],
    ['link', 'set', 'tap0', 'mtu', '1450', 'master', 'k6t-eth0', 'up'],
    ['link', 'set', 'k6t-eth0', 'up'],
  ]);
  const nft = p.binding.nft!;
  t.match(nft, /iifname "eth0" ip daddr 10\.244\.1\.7 tcp dport \{ 80 \} dnat to 10\.0\.2\.2/);
  t.match(nft, /iifname "eth0" ip daddr 10\.244\.1\.7 udp dport \{ 53 \} dnat to 10\.0\.2\.2/);
  t.match(nft, /type nat hook output priority -100;[^}]*ip daddr 127\.0\.0\.1 tcp dport \{ 80 \} dnat to 10\.0\.2\.2/);
  t.match(nft, /ip saddr 127\.0\.0\.1 oifname "k6t-eth0" tcp dport \{ 80 \} snat to 10\.0\.2\.1/);
  t.match(nft, /ip saddr 10\.0\.2\.0\/24 oifname "eth0" masquerade/);
  t.match(nft, /type filter hook prerouting priority raw;[^}]*iifname "k6t-eth0" ip daddr 127\.0\.0\.0\/8 drop/, 'the guest cannot reach the pod loopback');
  t.match(nft, /^table ip vmlet \{\}\ndelete table ip vmlet\n/, 'replaced atomically');
  t.equal(p.routeLocalnet, 'k6t-eth0');
  t.same(p.binding.dhcp, { serverIp: '10.0.2.1', clientIp: '10.0.2.2', prefix: 24, router: '10.0.2.1', mtu: 1450 });
  t.equal(p.binding.ipForward, true);
});

t.test('the guest filter drops the metadata address unless allowMetadata, in both bindings', async (t) => {
  for (const spec of [masqAll, bridge]) {
    const plan = planNetwork(spec, nets, UID);
    const what = Object.keys(spec[0]!).find((k) => k !== 'name');
    t.match(planPodAttach(plan, spec, fresh(), 'vmlet').binding.nft, /ip daddr 169\.254\.169\.254 counter name "metadata" drop/, `${what}: dropped`);
    const allowed = planPodAttach(plan, spec, fresh(), 'vmlet', { allowMetadata: true }).binding.nft;
    t.match(allowed, /counter name "mac_spoof" drop/, `${what}: the rest of the filter stays`);
    t.notMatch(allowed, /169\.254\.169\.254/, `${what}: allowMetadata leaves the rule out`);
  }
});

t.test('masquerade of every port leaves the pod loopback alone (sidecars keep 127.0.0.1)', async (t) => {
  const p = planPodAttach(planNetwork(masqAll, nets, UID), masqAll, fresh(), 'vmlet');
  t.match(p.binding.nft!, /iifname "eth0" ip daddr 10\.244\.1\.7 dnat to 10\.0\.2\.2/);
  t.notMatch(p.binding.nft!, /127\.0\.0\.1|hook output/);
  t.equal(p.routeLocalnet, null);
});

t.test("bridge: the guest takes the pod IP, gateway and eth0's MAC; eth0 takes the derived MAC", async (t) => {
  const plan = planNetwork(bridge, nets, UID);
  const p = planPodAttach(plan, bridge, fresh(), 'vmlet');
  t.equal(p.iface.mac, POD_MAC);
  t.same(p.ip.slice(0, 4), [
    ['link', 'set', 'eth0', 'down'],
    ['link', 'set', 'eth0', 'address', plan.interfaces[0]!.mac],
    ['link', 'add', 'k6t-eth0', 'type', 'bridge'],
    ['link', 'set', 'k6t-eth0', 'alias', `vmlet1/10.244.1.7/24/10.244.1.1/1450/${POD_MAC}`],
  ]);
  t.ok(p.ip.some((c) => c.join(' ') === 'addr flush dev eth0'));
  t.ok(p.ip.some((c) => c.join(' ') === 'link set eth0 master k6t-eth0 up'));
  t.same(p.binding.dhcp, { serverIp: '169.254.75.10', clientIp: '10.244.1.7', prefix: 24, router: '10.244.1.1', mtu: 1450 });
  t.match(p.binding.nft!, /table bridge vmlet/);
  t.equal(p.routeLocalnet, null);

  const given: InterfaceSpec[] = [{ name: 'default', bridge: {}, macAddress: '02:00:00:aa:bb:cc' }];
  const g = planPodAttach(planNetwork(given, nets, UID), given, fresh(), 'vmlet');
  t.equal(g.iface.mac, '02:00:00:aa:bb:cc', 'a given macAddress is kept');
  t.notOk(
    g.ip.some((c) => c.includes('address')),
    "eth0's MAC is not touched then",
  );
});

t.test('a second attach rebuilds from the record (eth0 has lost its address)', async (t) => {
  const plan = planNetwork(bridge, nets, UID);
  const state: PodState = {
    pod: { address: null, prefix: null, mtu: 1450, mac: plan.interfaces[0]!.mac, master: 'k6t-eth0' },
    gateway: null,
    bridge: { record: { address: '10.244.1.7', prefix: 24, gateway: '10.244.1.1', mtu: 1450, guestMac: POD_MAC } },
    tapExists: true,
  };
  const p = planPodAttach(plan, bridge, state, 'vmlet');
  t.same(p.ip.slice(0, 2), [
    ['link', 'del', 'tap0'],
    ['link', 'del', 'k6t-eth0'],
  ]);
  t.equal(p.iface.mac, POD_MAC, 'the guest keeps its MAC');
  t.same(p.binding.dhcp.clientIp, '10.244.1.7');
  t.same(p.binding.dhcp.router, '10.244.1.1');
});

t.test('refusals: links vmlet did not make, no eth0, no address, several interfaces', async (t) => {
  const plan = planNetwork(masq, nets, UID);
  t.throws(() => planPodAttach(plan, masq, { ...fresh(), bridge: { record: null } }, 'vmlet'), { code: 'POD_NET_CONFLICT' });
  t.throws(() => planPodAttach(plan, masq, { ...fresh(), tapExists: true }, 'vmlet'), { code: 'POD_NET_CONFLICT' });
  t.throws(() => planPodAttach(plan, masq, { ...fresh(), pod: null }, 'vmlet'), { code: 'POD_NET_NO_ADDRESS' });
  t.throws(() => planPodAttach(plan, masq, { ...fresh(), pod: { address: null, prefix: null, mtu: 1500, mac: null, master: null } }, 'vmlet'), {
    code: 'POD_NET_NO_ADDRESS',
  });
  t.throws(() => planPodAttach({ ...plan, interfaces: [] }, masq, fresh(), 'vmlet'), { code: 'NET_INVALID_PLAN' });
  t.throws(() => planPodAttach(plan, masq, fresh(), 'bad table!'), { code: 'NET_INVALID_NAME' });
});

t.test('PodNetwork checks before it touches a netns', async (t) => {
  const calls: string[][] = [];
  const links: IpLink[] = cniLinks;
  const runner: CommandRunner = async (_bin, args, input) => {
    calls.push([...args]);
    t.equal(input, 'addr show\nroute show default\n', 'both reads in one batch');
    return { stdout: `${JSON.stringify(links)}\n${JSON.stringify(cniRoutes)}\n`, stderr: '' };
  };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-podnet-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const fakeNetns = path.join(dir, 'net');
  fs.writeFileSync(fakeNetns, '');
  const pn = new PodNetwork({ runner });
  const req = { netnsPath: fakeNetns, uid: UID, interfaces: masq, networks: nets };
  await t.rejects(pn.attach({ ...req, netnsPath: path.join(dir, 'gone') }), { code: 'POD_NETNS_NOT_FOUND' });
  await t.rejects(pn.adopt({ ...req, netnsPath: path.join(dir, 'gone') }), { code: 'POD_NETNS_NOT_FOUND' });
  t.same(calls, [], 'nothing run for a missing netns');
  await t.rejects(pn.adopt(req), { code: 'POD_NET_NOT_ATTACHED' }, 'adopt without a binding');
  t.same(
    calls,
    [[`--net=${fakeNetns}`, '--', 'ip', '-json', '-details', '-batch', '-']],
    'one read, inside the netns (nsenter: this runner cannot start a program there)',
  );
  await t.rejects(pn.attach({ ...req, interfaces: [{ name: 'default', slirp: {} }] }), { code: 'NET_UNKNOWN_BINDING' }, 'a bad spec is refused by planNetwork');
  const none = await pn.attach({ ...req, interfaces: [], networks: [], plan: { autoattachPodInterface: false } });
  t.same(none, { uid: UID, netnsPath: fakeNetns, nics: [], status: [], fds: [] }, 'no interface: nothing to do');
  await pn.detach(UID);
  await pn.detach(UID);
  t.same(pn.attached(), [], 'detach of an unknown uid is fine');
  t.throws(() => new PodNetwork({ nftTable: 'x y' }), { code: 'NET_INVALID_NAME' });
  await pn.close();
});
