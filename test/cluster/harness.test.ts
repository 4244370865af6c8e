// The cluster harness's pure parts, with no root and no assets: range clash checks, iptables-save parsing and the teardown's rule selection, config files, asset manifests.
import t from 'tap';
import { parseSums, parseVersions } from '../support/cluster/assets.js';
import { componentSpecs, containerdConfig, defaultConfig, simulatedNodes } from '../support/cluster/config.js';
import { cidrsOverlap, firewallCleanup, parseSave, rangeClashes, splitRule } from '../support/cluster/host.js';
import { certSpecs, extFile } from '../support/cluster/pki.js';

const cfg = defaultConfig({ root: '/r', binDir: '/b', kwokStages: '/s.yaml', simulatedNodes: 3 });

t.test("address ranges: vmlet's subnet and host routes are refused, the cluster's own links are not", async (t) => {
  t.ok(cidrsOverlap('10.244.0.0/16', '10.244.3.0/24'));
  t.notOk(cidrsOverlap('10.244.0.0/16', '10.213.0.0/16'));
  t.same(
    rangeClashes(cfg, [
      { dst: 'default', dev: 'eth0' },
      { dst: '10.213.0.0/16', dev: 'vmlet0' },
      { dst: '192.0.2.0/24', dev: 'eth0' },
      { dst: '10.244.0.0/24', dev: cfg.cniBridge },
    ]),
    [],
  );
  t.match(rangeClashes(cfg, [{ dst: '10.96.0.0/12', dev: 'eth0' }]), [/10\.96\.0\.0\/16 overlaps the host route 10\.96\.0\.0\/12 dev eth0/]);
  t.match(rangeClashes({ ...cfg, clusterCidr: '10.213.128.0/17' }, []), [/overlaps vmlet's subnet/]);
});

t.test('firewall teardown: jumps to KUBE-/CNI- chains and those chains only', async (t) => {
  t.same(splitRule('-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'), [
    '-A',
    'POSTROUTING',
    '-m',
    'comment',
    '--comment',
    'kubernetes postrouting rules',
    '-j',
    'KUBE-POSTROUTING',
  ]);
  const save = [
    '*nat',
    ':PREROUTING ACCEPT [0:0]',
    ':POSTROUTING ACCEPT [0:0]',
    ':KUBE-SERVICES - [0:0]',
    ':CNI-abc - [0:0]',
    ':HOST-OWN - [0:0]',
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A POSTROUTING -s 10.244.0.2/32 -j CNI-abc',
    '-A POSTROUTING -o eth0 -j MASQUERADE',
    '-A HOST-OWN -j RETURN',
    '-A KUBE-SERVICES -j RETURN',
    'COMMIT',
  ].join('\n');
  const cmds = firewallCleanup(parseSave('iptables', save)).map(([c, a]) => `${c} ${a.join(' ')}`);
  t.same(
    cmds,
    [
      'iptables -w -t nat -D PREROUTING -m comment --comment kubernetes service portals -j KUBE-SERVICES',
      'iptables -w -t nat -D POSTROUTING -s 10.244.0.2/32 -j CNI-abc',
      'iptables -w -t nat -F KUBE-SERVICES',
      'iptables -w -t nat -F CNI-abc',
      'iptables -w -t nat -X KUBE-SERVICES',
      'iptables -w -t nat -X CNI-abc',
    ],
    'host rules and chains (MASQUERADE, HOST-OWN) are left alone; no table is flushed',
  );
});

t.test('config: containerd is private and restricts oom_score_adj; components and simulated nodes', async (t) => {
  const toml = containerdConfig(cfg);
  t.match(toml, /restrict_oom_score_adj = true/);
  t.match(toml, /address = "\/r\/containerd\/containerd.sock"/);
  t.match(toml, /SystemdCgroup = false/);
  t.same(
    componentSpecs(cfg).map((s) => s.name),
    ['etcd', 'kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'containerd', 'kubelet', 'kube-proxy', 'kwok'],
  );
  t.notOk(componentSpecs({ ...cfg, simulatedNodes: 0 }).some((s) => s.name === 'kwok'));
  const nodes = JSON.parse(simulatedNodes(3)) as { items: Array<{ metadata: { name: string }; spec: { taints: unknown[] } }> };
  t.same(
    nodes.items.map((n) => n.metadata.name),
    ['kwok-node-0', 'kwok-node-1', 'kwok-node-2'],
  );
  t.equal(nodes.items[0]?.spec.taints.length, 1);
  const api = certSpecs(cfg.node, cfg.nodeIp, cfg.serviceIp).find((s) => s.name === 'apiserver')!;
  t.match(extFile(api), /subjectAltName=IP:127\.0\.0\.1,IP:10\.250\.0\.1,IP:10\.96\.0\.1,/);
});

t.test('asset manifests', async (t) => {
  t.same(
    [...parseSums(`${'a'.repeat(64)}  k8s\n${'b'.repeat(64)} *etcd\n`)],
    [
      ['k8s', 'a'.repeat(64)],
      ['etcd', 'b'.repeat(64)],
    ],
  );
  t.same(parseVersions('kubernetes v1.34.4\netcd v3.6.16\ngo version go1.26.8 linux/amd64\n'), { kubernetes: 'v1.34.4', etcd: 'v3.6.16' });
});
