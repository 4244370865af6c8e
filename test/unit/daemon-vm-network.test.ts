// The daemon's network config (`network:` mapping) and the admission check of a VMI's interfaces and networks; pure, no root.
import pino from 'pino';
import t from 'tap';
import { validateVMI } from '../../src/api/validate.js';
import type { VMISpec } from '../../src/api/types.js';
import { defaultConfig, mergeConfig } from '../../src/daemon/config.js';
import { httpStatusFor } from '../../src/daemon/status.js';
import { VmNetwork } from '../../src/daemon/vm-network.js';
import { VmletError } from '../../src/errors.js';

const base = defaultConfig('/repo');
const log = pino({ level: 'silent' });

function spec(devices: Record<string, unknown> = {}, networks?: unknown, cores = 1): VMISpec {
  const s: Record<string, unknown> = { domain: { cpu: { cores }, memory: { guest: '64Mi' }, devices } };
  if (networks !== undefined) s.networks = networks;
  return validateVMI({ apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachineInstance', metadata: { name: 'n', namespace: 'default' }, spec: s }).spec;
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return e instanceof VmletError ? e.code : `not a VmletError: ${String(e)}`;
  }
  return 'no error';
}

t.test('network config: defaults, merge, refusals', async (t) => {
  t.match(base.network, {
    enabled: true,
    subnet: '10.213.0.0/16',
    bridge: 'vmlet0',
    nftTable: 'vmlet',
    netnsPrefix: 'vmlet-',
    vethPrefix: 'vmh-',
    mtu: 1500,
    hostForwarding: true,
    leaseSeconds: 86400,
  });
  const c = mergeConfig(base, { network: { subnet: '10.50.0.0/24', dnsServers: ['192.0.2.53'], enabled: false } }, 'f.yaml');
  t.equal(c.network.subnet, '10.50.0.0/24');
  t.same(c.network.dnsServers, ['192.0.2.53']);
  t.equal(c.network.enabled, false);
  t.equal(mergeConfig(base, { network: { dnsServers: ['192.0.2.53'], dnsDomain: 'lab.example' } }, 'f.yaml').network.dnsDomain, 'lab.example');
  t.equal(
    code(() => mergeConfig(base, { network: { dnsSearch: ['x.test'] } }, 'f.yaml')),
    'CONFIG_INVALID',
    'search domains without servers are refused, not ignored',
  );
  t.equal(c.network.bridge, 'vmlet0', 'unset keys keep their defaults');
  t.equal(base.network.subnet, '10.213.0.0/16', 'the base is not changed');
  t.equal(
    code(() => mergeConfig(base, { network: { subnett: 'x' } }, 'f.yaml')),
    'CONFIG_INVALID',
    'unknown key',
  );
  t.throws(() => mergeConfig(base, { network: { subnett: 'x' } }, 'f.yaml'), /unknown key "network\.subnett"/);
  t.equal(
    code(() => mergeConfig(base, { network: { mtu: '1500' } }, 'f.yaml')),
    'CONFIG_INVALID',
    'wrong type',
  );
  t.equal(
    code(() => mergeConfig(base, { network: { dnsServers: '1.1.1.1' } }, 'f.yaml')),
    'CONFIG_INVALID',
    'a string where a list is due',
  );
  t.equal(
    code(() => mergeConfig(base, { network: { mtu: 100 } }, 'f.yaml')),
    'CONFIG_INVALID',
    'mtu too small',
  );
  t.equal(
    code(() => mergeConfig(base, { network: { leaseSeconds: 5 } }, 'f.yaml')),
    'CONFIG_INVALID',
    'lease too short',
  );
  t.equal(
    code(() => mergeConfig(base, { network: true }, 'f.yaml')),
    'CONFIG_INVALID',
    'network must be a mapping',
  );
});

t.test('admission: what the sandbox would refuse is refused first', async (t) => {
  const net = new VmNetwork({ config: { ...base.network, subnet: '10.213.0.0/16' }, stateDir: '/nonexistent', logger: log });
  const pod = [{ name: 'default', pod: {} }];
  t.doesNotThrow(() => net.check(spec()), 'no interfaces: the default masquerade NIC');
  t.doesNotThrow(() => net.check(spec({ autoattachPodInterface: false })), 'no NIC at all');
  t.doesNotThrow(() => net.check(spec({ interfaces: [{ name: 'default', bridge: {} }] }, pod)), 'bridge');
  t.doesNotThrow(
    () => net.check(spec({ interfaces: [{ name: 'default', masquerade: {}, ports: [{ port: 22 }] }], networkInterfaceMultiqueue: true }, pod)),
    'masquerade with ports and multiqueue',
  );
  t.equal(
    code(() => net.check(spec({ interfaces: [{ name: 'default', masquerade: {} }] }, [{ name: 'x', pod: {} }]))),
    'NET_INTERFACE_WITHOUT_NETWORK',
  );
  t.equal(
    code(() => net.check(spec({}, pod))),
    'NET_NETWORK_WITHOUT_INTERFACE',
  );
  t.equal(
    code(() => net.check(spec({ interfaces: [{ name: 'default', masquerade: {}, macAddress: 'xx' }] }, pod))),
    'NET_INVALID_MAC',
  );
  t.equal(
    code(() => net.check(spec({ interfaces: [{ name: 'default', passt: {} }] }, pod))),
    'NET_UNKNOWN_BINDING',
  );
  t.equal(
    code(() => net.check(spec({ interfaces: [{ name: 'default', masquerade: {}, model: 'e1000' }], networkInterfaceMultiqueue: true }, pod, 2))),
    'NET_INVALID_QUEUES',
    'multiqueue (2 vCPUs, so 2 queues) needs virtio',
  );
  t.doesNotThrow(
    () => net.check(spec({ interfaces: [{ name: 'default', masquerade: {}, model: 'e1000' }], networkInterfaceMultiqueue: true }, pod, 1)),
    'one vCPU: one queue, any model',
  );
  t.equal(
    code(() => net.check(spec({ interfaces: [{ name: 'default', masquerade: {} }] }, [{ name: 'default', pod: { vmNetworkCIDR: '10.213.7.0/24' } }]))),
    'NET_SUBNET_CLASH',
    'guest network inside the node subnet',
  );
  t.doesNotThrow(
    () => net.check(spec({ interfaces: [{ name: 'default', masquerade: {} }] }, [{ name: 'default', pod: { vmNetworkCIDR: '192.168.77.0/24' } }])),
    'another guest network',
  );

  const off = new VmNetwork({ config: { ...base.network, enabled: false }, stateDir: '/nonexistent', logger: log });
  t.doesNotThrow(() => off.check(spec()), 'networking off: a VMI without interfaces is fine');
  t.equal(
    code(() => off.check(spec({ interfaces: [{ name: 'default', masquerade: {} }] }, pod))),
    'NET_DISABLED',
  );
  t.same(off.interfaces('any'), []);
});

t.test('admission codes are 422 for API clients', async (t) => {
  for (const c of [
    'NET_DISABLED',
    'NET_UNKNOWN_BINDING',
    'NET_INTERFACE_WITHOUT_NETWORK',
    'NET_DUPLICATE_MAC',
    'NET_INVALID_MAC',
    'NET_SUBNET_CLASH',
    'NET_UNSUPPORTED_NETWORK',
  ]) {
    t.equal(httpStatusFor(c), 422, c);
  }
  t.equal(httpStatusFor('NET_COMMAND_FAILED'), 500, "a failing ip command is the server's problem");
});
