// planNetwork: KubeVirt-shaped interfaces/networks are validated and planned without touching the host.
import t from 'tap';
import { planNetwork } from '../../src/net/plan.js';
import { sandboxId, sandboxNames, checkIfName, checkNftName } from '../../src/net/names.js';
import type { InterfaceSpec, NetworkSpec } from '../../src/net/types.js';

const UID = '3f2a9c1e-7b4d-4e2a-9f00-123456789abc';
const pod: NetworkSpec[] = [{ name: 'default', pod: {} }];

function code(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (e) {
    return (e as { code?: string }).code;
  }
}

t.test('masquerade default plan', async (t) => {
  const p = planNetwork([{ name: 'default', masquerade: {} }], pod, UID);
  t.same(p.names, { id: '3f2a9c1e', netns: 'vmlet-3f2a9c1e', hostVeth: 'vmh-3f2a9c1e' });
  t.equal(p.interfaces.length, 1);
  const i = p.interfaces[0]!;
  t.equal(i.binding, 'masquerade');
  t.equal(i.model, 'virtio');
  t.equal(i.tap, 'tap0');
  t.equal(i.bridge, 'k6t-eth0');
  t.equal(i.podInterface, 'eth0');
  t.equal(i.queues, 1);
  t.equal(i.ports, null, 'no ports: every port is forwarded');
  t.same(i.guestNetwork, { cidr: '10.0.2.0/24', gateway: '10.0.2.1', address: '10.0.2.2', prefix: 24 });
  t.match(i.mac, /^02(:[0-9a-f]{2}){5}$/, 'derived MAC');
  t.equal(planNetwork([{ name: 'default', masquerade: {} }], pod, UID).interfaces[0]!.mac, i.mac, 'stable');
});

t.test('autoattach: empty lists get the KubeVirt default interface', async (t) => {
  const p = planNetwork(undefined, undefined, UID);
  t.equal(p.interfaces[0]?.name, 'default');
  t.equal(p.interfaces[0]?.binding, 'masquerade');
  t.same(planNetwork([], [], UID, { autoattachPodInterface: false }).interfaces, []);
});

t.test('bridge, ports, model, mac, vmNetworkCIDR, queues', async (t) => {
  const b = planNetwork([{ name: 'default', bridge: {}, macAddress: 'AA-BB-CC-DD-EE-F0', model: 'e1000' }], pod, UID);
  t.equal(b.interfaces[0]!.binding, 'bridge');
  t.equal(b.interfaces[0]!.mac, 'aa:bb:cc:dd:ee:f0', 'MAC normalised');
  t.equal(b.interfaces[0]!.model, 'e1000');
  t.equal(b.interfaces[0]!.guestNetwork, null);
  const m = planNetwork(
    [{ name: 'default', masquerade: {}, ports: [{ port: 80 }, { name: 'dns', port: 53, protocol: 'UDP' }] }],
    [{ name: 'default', pod: { vmNetworkCIDR: '192.168.50.0/28' } }],
    UID,
    { queues: 4 },
  );
  t.same(m.interfaces[0]!.ports, [
    { port: 80, protocol: 'tcp' },
    { port: 53, protocol: 'udp' },
  ]);
  t.same(m.interfaces[0]!.guestNetwork, { cidr: '192.168.50.0/28', gateway: '192.168.50.1', address: '192.168.50.2', prefix: 28 });
  t.equal(m.interfaces[0]!.queues, 4);
});

t.test('bad input is refused with a clear code', async (t) => {
  const cases: [string, InterfaceSpec[] | undefined, NetworkSpec[] | undefined, string, object?][] = [
    ['interface without network', [{ name: 'nic1', masquerade: {} }], pod, 'NET_INTERFACE_WITHOUT_NETWORK'],
    ['network without interface', [], pod, 'NET_NETWORK_WITHOUT_INTERFACE'],
    ['no binding', [{ name: 'default' }], pod, 'NET_UNKNOWN_BINDING'],
    ['unknown binding', [{ name: 'default', slirp: {} }], pod, 'NET_UNKNOWN_BINDING'],
    ['two bindings', [{ name: 'default', bridge: {}, masquerade: {} }], pod, 'NET_UNKNOWN_BINDING'],
    ['invalid MAC', [{ name: 'default', masquerade: {}, macAddress: '02:00:00:00:00' }], pod, 'NET_INVALID_MAC'],
    ['multicast MAC', [{ name: 'default', masquerade: {}, macAddress: '03:00:00:00:00:01' }], pod, 'NET_INVALID_MAC'],
    ['zero MAC', [{ name: 'default', masquerade: {}, macAddress: '00:00:00:00:00:00' }], pod, 'NET_INVALID_MAC'],
    [
      'duplicate MAC',
      [
        { name: 'a', masquerade: {}, macAddress: '02:00:00:00:00:01' },
        { name: 'b', bridge: {}, macAddress: '02:00:00:00:00:01' },
      ],
      [
        { name: 'a', pod: {} },
        { name: 'b', pod: {} },
      ],
      'NET_DUPLICATE_MAC',
    ],
    [
      'two pod networks',
      [
        { name: 'a', masquerade: {} },
        { name: 'b', masquerade: {} },
      ],
      [
        { name: 'a', pod: {} },
        { name: 'b', pod: {} },
      ],
      'NET_UNSUPPORTED_NETWORK',
    ],
    ['multus', [{ name: 'default', bridge: {} }], [{ name: 'default', multus: { networkName: 'x' } }], 'NET_UNSUPPORTED_NETWORK'],
    [
      'duplicate interface',
      [
        { name: 'default', bridge: {} },
        { name: 'default', bridge: {} },
      ],
      pod,
      'NET_DUPLICATE_NAME',
    ],
    ['bad name', [{ name: 'Default_1', bridge: {} }], pod, 'NET_INVALID_NAME'],
    ['unknown model', [{ name: 'default', bridge: {}, model: 'ne2k_isa' }], pod, 'NET_UNSUPPORTED_MODEL'],
    ['ports with bridge', [{ name: 'default', bridge: {}, ports: [{ port: 80 }] }], pod, 'NET_INVALID_PORT'],
    ['port out of range', [{ name: 'default', masquerade: {}, ports: [{ port: 70000 }] }], pod, 'NET_INVALID_PORT'],
    ['bad protocol', [{ name: 'default', masquerade: {}, ports: [{ port: 80, protocol: 'SCTP' }] }], pod, 'NET_INVALID_PORT'],
    ['duplicate port', [{ name: 'default', masquerade: {}, ports: [{ port: 80 }, { port: 80, protocol: 'tcp' }] }], pod, 'NET_INVALID_PORT'],
    ['bad vmNetworkCIDR', [{ name: 'default', masquerade: {} }], [{ name: 'default', pod: { vmNetworkCIDR: '10.0.2.1/24' } }], 'NET_INVALID_SUBNET'],
    ['multiqueue on e1000', [{ name: 'default', masquerade: {}, model: 'e1000' }], pod, 'NET_INVALID_QUEUES', { queues: 2 }],
  ];
  for (const [what, ifs, nets, want, opts] of cases) {
    t.equal(
      code(() => planNetwork(ifs, nets, UID, opts ?? {})),
      want,
      what,
    );
  }
  t.equal(
    code(() => planNetwork(undefined, undefined, '')),
    'NET_INVALID_UID',
    'empty uid',
  );
});

t.test('names', async (t) => {
  t.equal(sandboxId(UID), '3f2a9c1e', 'UUID: its first 8 hex digits');
  t.equal(sandboxId('not-a-uuid'), sandboxId('not-a-uuid'), 'other strings: stable hash');
  t.match(sandboxId('not-a-uuid'), /^[0-9a-f]{8}$/);
  t.same(sandboxNames(UID, { netnsPrefix: 'vt-', vethPrefix: 'vh' }), { id: '3f2a9c1e', netns: 'vt-3f2a9c1e', hostVeth: 'vh3f2a9c1e' });
  t.equal(
    code(() => sandboxNames(UID, { netnsPrefix: 'much-too-long-', vethPrefix: 'v' })),
    'NET_INVALID_NAME',
  );
  for (const bad of ['', 'a b', 'x;rm', 'sixteen-chars-xx', '..', 'a"b'])
    t.equal(
      code(() => checkIfName(bad)),
      'NET_INVALID_NAME',
      `ifname ${JSON.stringify(bad)}`,
    );
  for (const bad of ['1abc', 'a b', 'a;b', 'a"b', ''])
    t.equal(
      code(() => checkNftName(bad)),
      'NET_INVALID_NAME',
      `nft ${JSON.stringify(bad)}`,
    );
  t.equal(checkNftName('vmlet-test-other'), 'vmlet-test-other');
});
