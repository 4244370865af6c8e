// The pure planners: subnet clash, host bridge, NAT ruleset, sandbox and binding commands, ip batch text.
import t from 'tap';
import {
  checkSubnetClash,
  hostNftRuleset,
  planBinding,
  planHostBridge,
  planSandboxDelete,
  planSandboxHost,
  planSandboxInside,
  toBatch,
  deleteNftTableRuleset,
  freshNetnsRuleset,
  planSandboxNetns,
  planSandboxVeth,
} from '../../src/net/commands.js';
import { deriveMac } from '../../src/net/mac.js';
import { planNetwork } from '../../src/net/plan.js';
import type { IpRoute } from '../../src/net/types.js';

const UID = '3f2a9c1e-7b4d-4e2a-9f00-123456789abc';
const routes: IpRoute[] = [
  { dst: 'default', gateway: '192.0.2.1', dev: 'eth0' },
  { dst: '192.0.2.0/24', dev: 'eth0', protocol: 'kernel', scope: 'link', prefsrc: '192.0.2.2' },
  { dst: '10.1.2.3', dev: 'wg0' },
  { dst: '172.17.0.0/16', dev: 'docker0', protocol: 'kernel' },
  { dst: '10.213.0.0/16', dev: 'vmlet0', protocol: 'kernel' },
];

t.test('checkSubnetClash', async (t) => {
  t.doesNotThrow(() => checkSubnetClash('10.213.0.0/16', routes, 'vmlet0'), 'own bridge route and default route ignored');
  t.throws(() => checkSubnetClash('172.16.0.0/12', routes, 'vmlet0'), { code: 'NET_SUBNET_CLASH', message: /172\.17\.0\.0\/16 dev docker0 proto kernel/ });
  t.throws(() => checkSubnetClash('10.1.0.0/16', routes, 'vmlet0'), { code: 'NET_SUBNET_CLASH', message: /"10\.1\.2\.3 dev wg0"/ }, 'host routes without /len');
  t.throws(() => checkSubnetClash('192.0.2.128/25', routes, 'vmlet0'), { code: 'NET_SUBNET_CLASH' }, 'inside a host route');
  t.throws(() => checkSubnetClash('10.213.0.0/16', routes, 'br9'), { code: 'NET_SUBNET_CLASH' }, 'another bridge');
  t.throws(() => checkSubnetClash('10.213.0.1/16', routes, 'vmlet0'), { code: 'NET_INVALID_SUBNET' }, 'host bits set');
  t.throws(() => checkSubnetClash('10.213.0.0', routes, 'vmlet0'), { code: 'NET_INVALID_SUBNET' });
});

t.test('planHostBridge', async (t) => {
  const p = { bridge: 'vmlet0', subnet: '10.213.0.0/16', nftTable: 'vmlet' };
  t.same(planHostBridge(p, { bridgeExists: false, bridgeAddresses: [], bridgeUp: false }), [
    ['link', 'add', 'vmlet0', 'address', deriveMac('vmlet-host-bridge', 'vmlet0'), 'type', 'bridge'],
    ['addr', 'add', '10.213.0.1/16', 'dev', 'vmlet0'],
    ['link', 'set', 'vmlet0', 'up'],
  ]);
  t.same(planHostBridge(p, { bridgeExists: true, bridgeAddresses: ['10.213.0.1/16'], bridgeUp: true }), [], 'nothing to do');
  t.same(planHostBridge(p, { bridgeExists: true, bridgeAddresses: [], bridgeUp: true }), [['addr', 'add', '10.213.0.1/16', 'dev', 'vmlet0']]);
  t.throws(() => planHostBridge(p, { bridgeExists: true, bridgeAddresses: ['10.99.0.1/24'], bridgeUp: true }), { code: 'NET_BRIDGE_CONFLICT' });
  t.throws(() => planHostBridge(p, { bridgeExists: true, bridgeWrongKind: true, bridgeAddresses: [], bridgeUp: true }), { code: 'NET_BRIDGE_CONFLICT' });
  t.throws(() => planHostBridge({ ...p, subnet: '10.0.0.0/30' }, { bridgeExists: false, bridgeAddresses: [], bridgeUp: false }), {
    code: 'NET_INVALID_SUBNET',
  });
});

t.test('host NAT ruleset', async (t) => {
  t.equal(
    hostNftRuleset({ bridge: 'vmlet0', subnet: '10.213.0.0/16', nftTable: 'vmlet', allowHostAccess: true }),
    'table ip vmlet {}\ndelete table ip vmlet\ntable ip vmlet {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n' +
      '    ip saddr 10.213.0.0/16 ip daddr != 10.213.0.0/16 oifname != "vmlet0" masquerade comment "vmlet: sandboxes to the uplink"\n  }\n}\n',
  );
  t.match(hostNftRuleset({ bridge: 'vmlet0', subnet: '10.213.0.0/16', nftTable: 'vmlet', uplink: 'eth1' }), /oifname "eth1" masquerade/);
  t.match(
    hostNftRuleset({ bridge: 'vmlet0', subnet: '10.213.0.0/16', nftTable: 'vmlet' }),
    /\n  chain input \{\n    type filter hook input priority filter; policy accept;\n(    iifname "vmlet0" .*\n)+    iifname "vmlet0" counter name "guest_to_host" drop\n  \}\n\}\n$/,
    'by default the guard against guests is in the same table',
  );
  t.throws(() => hostNftRuleset({ bridge: 'vmlet0', subnet: '10.213.0.0/16', nftTable: 'x; flush ruleset' }), { code: 'NET_INVALID_NAME' });
  t.throws(() => hostNftRuleset({ bridge: 'a"b', subnet: '10.213.0.0/16', nftTable: 'vmlet' }), { code: 'NET_INVALID_NAME' });
  t.equal(deleteNftTableRuleset('ip', 'vmlet'), 'table ip vmlet {}\ndelete table ip vmlet\n', 'deletes only its own table');
});

t.test('sandbox commands', async (t) => {
  const { names } = planNetwork(undefined, undefined, UID);
  const sp = { names, bridge: 'vmlet0', address: '10.213.0.5', prefix: 16, gateway: '10.213.0.1', mtu: 1500 };
  t.same(planSandboxHost(sp), [
    ['netns', 'add', 'vmlet-3f2a9c1e'],
    ['link', 'add', 'vmh-3f2a9c1e', 'mtu', '1500', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', 'vmlet-3f2a9c1e'],
    ['link', 'set', 'vmh-3f2a9c1e', 'master', 'vmlet0'],
    ['link', 'set', 'vmh-3f2a9c1e', 'type', 'bridge_slave', 'isolated', 'on'],
    ['link', 'set', 'vmh-3f2a9c1e', 'up'],
  ]);
  t.same(planSandboxInside(sp), [
    ['link', 'set', 'lo', 'up'],
    ['addr', 'add', '10.213.0.5/16', 'dev', 'eth0'],
    ['link', 'set', 'eth0', 'up'],
    ['route', 'add', 'default', 'via', '10.213.0.1', 'dev', 'eth0'],
  ]);
  t.same(planSandboxDelete(names), [[['link', 'del', 'vmh-3f2a9c1e']], [['netns', 'del', 'vmlet-3f2a9c1e']]]);
  t.equal(
    toBatch(planSandboxHost(sp)),
    'netns add vmlet-3f2a9c1e\nlink add vmh-3f2a9c1e mtu 1500 type veth peer name eth0 netns vmlet-3f2a9c1e\nlink set vmh-3f2a9c1e master vmlet0\n' +
      'link set vmh-3f2a9c1e type bridge_slave isolated on\nlink set vmh-3f2a9c1e up\n',
    'the host end is isolated before it goes up',
  );
  t.throws(() => toBatch([['link', 'add', 'a b']]), { code: 'NET_INVALID_NAME' });
  t.throws(() => toBatch([['link', 'add', 'a\nlink del eth0']]), { code: 'NET_INVALID_NAME' });
  t.equal(toBatch([]), '');
});

const pod = { address: '10.213.0.5', prefix: 16, gateway: '10.213.0.1', mtu: 1500 };

t.test('masquerade binding', async (t) => {
  const all = planNetwork([{ name: 'default', masquerade: {} }], [{ name: 'default', pod: {} }], UID, { queues: 2 }).interfaces[0]!;
  const b = planBinding(all, pod, { user: 107, group: 107 });
  t.same(b.ip, [
    ['link', 'add', 'k6t-eth0', 'type', 'bridge'],
    ['addr', 'add', '10.0.2.1/24', 'dev', 'k6t-eth0'],
    ['tuntap', 'add', 'dev', 'tap0', 'mode', 'tap', 'user', '107', 'group', '107', 'multi_queue', 'vnet_hdr'],
    ['link', 'set', 'tap0', 'mtu', '1500', 'master', 'k6t-eth0', 'up'],
    ['link', 'set', 'k6t-eth0', 'up'],
  ]);
  t.equal(b.ipForward, true);
  t.same(b.dhcp, { serverIp: '10.0.2.1', clientIp: '10.0.2.2', prefix: 24, router: '10.0.2.1', mtu: 1500 });
  t.match(b.nft, /iifname "eth0" ip daddr 10\.213\.0\.5 dnat to 10\.0\.2\.2\n/);
  t.match(b.nft, /ip saddr 10\.0\.2\.0\/24 oifname "eth0" masquerade/);
  t.match(b.nft, /^table ip vmlet \{\}\ndelete table ip vmlet\n/);

  const listed = planNetwork(
    [{ name: 'default', masquerade: {}, ports: [{ port: 80 }, { port: 443 }, { port: 53, protocol: 'UDP' }] }],
    [{ name: 'default', pod: {} }],
    UID,
  ).interfaces[0]!;
  const l = planBinding(listed, pod);
  t.match(l.nft, /iifname "eth0" ip daddr 10\.213\.0\.5 tcp dport \{ 80, 443 \} dnat to 10\.0\.2\.2\n/);
  t.match(l.nft, /iifname "eth0" ip daddr 10\.213\.0\.5 udp dport \{ 53 \} dnat to 10\.0\.2\.2\n/);
  t.notMatch(l.nft, /daddr 10\.213\.0\.5 dnat/, 'no all-ports rule');
  t.same(l.ip[2], ['tuntap', 'add', 'dev', 'tap0', 'mode', 'tap', 'vnet_hdr'], 'no owner, one queue');
});

t.test('bridge binding', async (t) => {
  const i = planNetwork([{ name: 'default', bridge: {} }], [{ name: 'default', pod: {} }], UID).interfaces[0]!;
  const b = planBinding(i, pod);
  t.same(b.ip, [
    ['link', 'add', 'k6t-eth0', 'type', 'bridge'],
    ['addr', 'flush', 'dev', 'eth0'],
    ['link', 'set', 'eth0', 'master', 'k6t-eth0', 'up'],
    ['tuntap', 'add', 'dev', 'tap0', 'mode', 'tap', 'vnet_hdr'],
    ['link', 'set', 'tap0', 'mtu', '1500', 'master', 'k6t-eth0', 'up'],
    ['addr', 'add', '169.254.75.10/32', 'dev', 'k6t-eth0'],
    ['link', 'set', 'k6t-eth0', 'up'],
    ['route', 'add', '10.213.0.5/32', 'dev', 'k6t-eth0'],
  ]);
  t.equal(b.ipForward, false);
  t.same(b.dhcp, { serverIp: '169.254.75.10', clientIp: '10.213.0.5', prefix: 16, router: '10.213.0.1', mtu: 1500 }, 'the guest gets the sandbox address');
  t.match(b.nft, /table bridge vmlet \{\n.*  chain forward \{\n[^}]*\n    udp dport \{ 67, 68 \} drop/s, 'DHCP stays in the sandbox');
});

t.test('a fresh netns gets the same table without the replace prefix', async (t) => {
  for (const spec of [
    { name: 'default', masquerade: {} },
    { name: 'default', bridge: {} },
  ]) {
    const b = planBinding(planNetwork([spec], [{ name: 'default', pod: {} }], UID).interfaces[0]!, pod, {}, 'vmlet_x');
    const fresh = freshNetnsRuleset(b.nft!);
    const prefixes = b.nft!.match(/^table (ip|bridge) vmlet_x \{\}\ndelete table \1 vmlet_x\n/gm) ?? [];
    t.equal(prefixes.length, spec.masquerade ? 2 : 1, 'masquerade: NAT and guest filter tables; bridge: one table');
    t.equal(
      fresh,
      prefixes.reduce((r, p) => r.replace(p, ''), b.nft!),
      'only the replace prefixes go',
    );
    t.match(fresh, /^table (ip|bridge) vmlet_x \{\n  (chain|counter) /);
    t.match(fresh, /\ntable bridge vmlet_x \{\n|^table bridge vmlet_x \{\n/, 'the guest filter table stays');
    t.notMatch(fresh, /delete table/);
  }
  const other = 'table ip a {}\ndelete table ip b\ntable ip a {\n}\n';
  t.equal(freshNetnsRuleset(other), other, 'a prefix that does not pair up stays');
  t.equal(freshNetnsRuleset('table ip a {\n}\n'), 'table ip a {\n}\n');
});

t.test('planSandboxHost is planSandboxNetns then planSandboxVeth', async (t) => {
  const names = { id: '3f2a9c1e', netns: 'vmlet-3f2a9c1e', hostVeth: 'vmh-3f2a9c1e' };
  const sp = { names, bridge: 'vmlet0', address: '10.213.0.5', prefix: 16, gateway: '10.213.0.1', mtu: 1500 };
  t.same(planSandboxNetns(sp), [['netns', 'add', 'vmlet-3f2a9c1e']]);
  t.same([...planSandboxNetns(sp), ...planSandboxVeth(sp)], planSandboxHost(sp));
  t.throws(() => planSandboxVeth({ ...sp, bridge: 'bad bridge' }), { code: 'NET_INVALID_NAME' });
});
