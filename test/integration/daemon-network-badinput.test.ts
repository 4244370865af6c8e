// Bad network input against the real daemon: each is refused at apply with its own code before anything exists (no object, no netns, no lease); a clashing node subnet stops the daemon before it makes its bridge.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { daemonSkipReason, runDaemonUntilExit, snapshotDir, startTestDaemon, vmiObject, vmObject, type TestDaemon } from '../support/daemon.js';
import { daemonNetConfig, ipJson, netSkipReason, testNetFor, testNetObjects } from '../support/net-env.js';

const skip = daemonSkipReason({ guest: false }) || netSkipReason() || false;
const G = '/apis/vmlet.io/v1alpha1/namespaces/default';

type Spec = { domain: { devices: Record<string, unknown> }; networks?: unknown };

function withNet(o: Record<string, unknown>, interfaces: unknown, networks: unknown): Record<string, unknown> {
  const spec = (o.kind === 'VirtualMachine' ? (o.spec as { template: { spec: Spec } }).template.spec : o.spec) as Spec;
  if (interfaces !== undefined) spec.domain.devices.interfaces = interfaces;
  if (networks !== undefined) spec.networks = networks;
  return o;
}

async function refusal(
  d: TestDaemon,
  kind: 'vmi' | 'vm',
  body: Record<string, unknown>,
): Promise<{ http: number; code: string; message: string; field?: string }> {
  const r = await d.http('POST', `${G}/${kind === 'vmi' ? 'virtualmachineinstances' : 'virtualmachines'}`, JSON.stringify(body), {
    'content-type': 'application/json',
  });
  const st = r.json() as { reason?: string; message?: string; details?: { causes?: Array<{ field?: string }> } };
  const out: { http: number; code: string; message: string; field?: string } = { http: r.status, code: st.reason ?? '', message: st.message ?? '' };
  const field = st.details?.causes?.[0]?.field;
  if (field !== undefined) out.field = field;
  return out;
}

const pod = [{ name: 'default', pod: {} }];
const cases: Array<{ what: string; interfaces?: unknown; networks?: unknown; code: string; message: RegExp }> = [
  {
    what: 'an interface without a matching network',
    interfaces: [{ name: 'default', masquerade: {} }],
    networks: [{ name: 'other', pod: {} }],
    code: 'NET_INTERFACE_WITHOUT_NETWORK',
    message: /interface default has no network of the same name/,
  },
  {
    what: 'an interface and no networks at all',
    interfaces: [{ name: 'default', masquerade: {} }],
    code: 'NET_INTERFACE_WITHOUT_NETWORK',
    message: /spec\.networks/,
  },
  {
    what: 'two interfaces with the same MAC',
    interfaces: [
      { name: 'a', bridge: {}, macAddress: '02:00:00:00:00:01' },
      { name: 'b', bridge: {}, macAddress: '02-00-00-00-00-01' },
    ],
    networks: [
      { name: 'a', pod: {} },
      { name: 'b', pod: {} },
    ],
    code: 'NET_DUPLICATE_MAC',
    message: /same MAC 02:00:00:00:00:01/,
  },
  {
    what: 'an invalid MAC',
    interfaces: [{ name: 'default', masquerade: {}, macAddress: '02:00:00:00:00:zz' }],
    networks: pod,
    code: 'NET_INVALID_MAC',
    message: /not six hex octets/,
  },
  {
    what: 'a multicast MAC',
    interfaces: [{ name: 'default', masquerade: {}, macAddress: '01:00:5e:00:00:01' }],
    networks: pod,
    code: 'NET_INVALID_MAC',
    message: /multicast/,
  },
  {
    what: 'a MAC carrying QEMU options',
    interfaces: [{ name: 'default', masquerade: {}, macAddress: '02:00:00:00:00:01,romfile=/etc/shadow' }],
    networks: pod,
    code: 'NET_INVALID_MAC',
    message: /not six hex octets/,
  },
  {
    what: 'a binding vmlet does not implement',
    interfaces: [{ name: 'default', slirp: {} }],
    networks: pod,
    code: 'NET_UNKNOWN_BINDING',
    message: /binding slirp is not supported by vmlet; use masquerade or bridge/,
  },
  { what: 'no binding', interfaces: [{ name: 'default' }], networks: pod, code: 'NET_UNKNOWN_BINDING', message: /no binding/ },
  {
    what: 'two bindings',
    interfaces: [{ name: 'default', bridge: {}, masquerade: {} }],
    networks: pod,
    code: 'NET_UNKNOWN_BINDING',
    message: /several bindings/,
  },
  {
    what: 'a made-up binding key',
    interfaces: [{ name: 'default', tunnel: {} }],
    networks: pod,
    code: 'UNKNOWN_FIELD',
    message: /interfaces\[0\]\.tunnel: field not supported/,
  },
  {
    what: 'a vmNetworkCIDR inside the node subnet',
    interfaces: [{ name: 'default', masquerade: {} }],
    networks: [{ name: 'default', pod: { vmNetworkCIDR: 'NODE' } }],
    code: 'NET_SUBNET_CLASH',
    message: /overlaps the node's sandbox subnet/,
  },
  {
    what: 'a vmNetworkCIDR that is no CIDR',
    interfaces: [{ name: 'default', masquerade: {} }],
    networks: [{ name: 'default', pod: { vmNetworkCIDR: '10.0.2.0/33' } }],
    code: 'NET_INVALID_SUBNET',
    message: /not an IPv4 CIDR/,
  },
  {
    what: 'a multus network',
    interfaces: [{ name: 'default', bridge: {} }],
    networks: [{ name: 'default', multus: { networkName: 'x' } }],
    code: 'NET_UNSUPPORTED_NETWORK',
    message: /multus/,
  },
  {
    what: 'an unknown NIC model',
    interfaces: [{ name: 'default', masquerade: {}, model: 'ne2k_pci' }],
    networks: pod,
    code: 'NET_UNSUPPORTED_MODEL',
    message: /ne2k_pci/,
  },
  {
    what: 'ports on a bridge binding',
    interfaces: [{ name: 'default', bridge: {}, ports: [{ port: 80 }] }],
    networks: pod,
    code: 'NET_INVALID_PORT',
    message: /only used with the masquerade binding/,
  },
  {
    what: 'a port listed twice',
    interfaces: [{ name: 'default', masquerade: {}, ports: [{ port: 80 }, { port: 80, protocol: 'TCP' }] }],
    networks: pod,
    code: 'NET_INVALID_PORT',
    message: /listed twice/,
  },
];

t.test('bad network specs are refused at apply, before anything exists', { skip, timeout: 120_000 }, async (t) => {
  const tn = testNetFor(t);
  const d = await startTestDaemon(t, { config: { network: daemonNetConfig(tn) } });
  const before = snapshotDir(d.stateDir);
  for (const c of cases) {
    const networks = JSON.parse(JSON.stringify(c.networks ?? null)?.replace('"NODE"', JSON.stringify(tn.subnet.replace(/\.0\/24$/, '.128/25')))) as unknown;
    for (const kind of ['vmi', 'vm'] as const) {
      const body = withNet(kind === 'vmi' ? vmiObject('badnet') : vmObject('badnet'), c.interfaces, networks ?? undefined);
      const r = await refusal(d, kind, body);
      t.equal(r.http, 422, `${kind}: ${c.what} → 422`);
      t.equal(r.code, c.code, `${kind}: ${c.what} → ${c.code}`);
      t.match(r.message, c.message, `${kind}: the message says what is wrong (${r.message})`);
      t.match(r.field ?? '', kind === 'vm' ? /^spec\.template\.spec\./ : /^spec\./, `${kind}: the cause names a field (${r.field})`);
    }
  }
  const cli = await d.cli(['apply', '-f', '-'], {
    input: YAML.stringify(withNet(vmiObject('badnet'), [{ name: 'default', masquerade: {}, macAddress: 'nope' }], pod)),
  });
  t.not(cli.code, 0, 'the CLI fails');
  t.match(cli.stderr, /NET_INVALID_MAC/, 'and names the code');
  t.same(await d.vmis(), [], 'no VMI was stored');
  t.same(snapshotDir(d.stateDir), before, 'the state dir (store and lease file) is unchanged');
  t.same(testNetObjects(tn), { netns: [], veths: [], bridgePorts: [] }, 'no sandbox, veth or bridge port was made');
  t.equal((await d.http('GET', '/healthz')).status, 200, 'the daemon is up');
});

t.test('with networking off, interfaces are refused by name', { skip, timeout: 60_000 }, async (t) => {
  const d = await startTestDaemon(t);
  const r = await refusal(d, 'vmi', withNet(vmiObject('offnet'), [{ name: 'default', masquerade: {} }], pod));
  t.equal(r.http, 422);
  t.equal(r.code, 'NET_DISABLED');
  t.match(r.message, /network\.enabled: false/);
  t.same(await d.vmis(), [], 'nothing stored');
});

t.test('a node subnet that clashes with a host route stops the daemon before it makes anything', { skip, timeout: 60_000 }, async (t) => {
  const tn = testNetFor(t);
  // an empty bridge carries no traffic; its connected route is the clash
  const link = `vmltd${tn.tag}`;
  const clash = tn.subnet.replace(/\.0\/24$/, '.0/25');
  const { execFileSync } = await import('node:child_process');
  execFileSync('ip', ['link', 'add', link, 'type', 'bridge']);
  t.teardown(() => {
    try {
      execFileSync('ip', ['link', 'del', link]);
    } catch {
      /* gone */
    }
  });
  execFileSync('ip', ['addr', 'add', clash.replace(/\.0\/25$/, '.1/25'), 'dev', link]);
  execFileSync('ip', ['link', 'set', link, 'up']);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-clash-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const cfg = path.join(root, 'vmlet.yaml');
  fs.writeFileSync(cfg, YAML.stringify({ network: daemonNetConfig(tn), cgroupParent: '' }));
  const { code, out: stderr } = await runDaemonUntilExit(cfg, root);
  t.equal(code, 1, 'the daemon exits 1');
  t.match(stderr, /NET_SUBNET_CLASH/, 'with NET_SUBNET_CLASH');
  t.match(stderr, new RegExp(`overlaps the host route "${clash.replace(/\./g, '\\.')} dev ${link}`), 'naming the route it clashes with');
  t.same(
    ipJson<unknown[]>(['link', 'show']).filter((l) => (l as { ifname: string }).ifname === tn.opts.bridge),
    [],
    'no bridge was made',
  );
  t.notOk(fs.existsSync(path.join(root, 's.sock')), 'no API socket');
});
