// NodeRegistration for the real node against a real API server: labels and the heartbeat Lease appear and are renewed; unregister sets schedulable=false and deletes the Lease; no vmlet.io label is left behind.
import { KubeConfig } from '@kubernetes/client-node';
import pino from 'pino';
import t from 'tap';
import { leaseIsFresh, NodeRegistration } from '../../src/daemon/kube-node-registration.js';
import { clusterSkipReason, testCluster } from '../support/cluster.js';

const LEASE = 'h5-test-vmlet-node-lease';
const log = pino({ level: process.env.VMLET_TEST_LOG ?? 'silent' });

interface Lease {
  metadata: { resourceVersion: string };
  spec: { holderIdentity?: string; renewTime?: string; leaseDurationSeconds?: number };
}

t.test('node registration on the real cluster', { skip: clusterSkipReason() ?? false }, async (t) => {
  const c = await testCluster(t);
  if (!c) return;
  const node = c.config.node;
  const kc = new KubeConfig();
  kc.loadFromFile(c.kubeconfigPath);
  // the namespace is shared with vmlet's own parts: made when missing, never deleted
  if ((await c.api('GET', '/api/v1/namespaces/vmlet')).status === 404) {
    const r = await c.api('POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'vmlet' } });
    t.ok(r.status === 201 || r.status === 409, `namespace vmlet made (${r.status})`);
  }
  const labels = async (): Promise<Record<string, string>> =>
    ((await c.api('GET', `/api/v1/nodes/${node}`)).json() as { metadata: { labels: Record<string, string> } }).metadata.labels;
  const lease = async (): Promise<Lease | undefined> => {
    const r = await c.api('GET', `/apis/coordination.k8s.io/v1/namespaces/vmlet/leases/${LEASE}`);
    return r.status === 200 ? (r.json() as Lease) : undefined;
  };
  const before = await labels();
  t.teardown(async () => {
    await c.kubectl(['label', 'node', node, 'vmlet.io/schedulable-', 'vmlet.io/kvm-']).catch(() => '');
    await c.api('DELETE', `/apis/coordination.k8s.io/v1/namespaces/vmlet/leases/${LEASE}`);
  });
  t.equal(before['vmlet.io/schedulable'], undefined, 'no vmlet label before (another test on this node?)');

  const expired: unknown[] = [];
  const reg = new NodeRegistration({
    kubeConfig: kc,
    nodeName: node,
    leaseName: LEASE,
    kvm: { usable: true },
    renewIntervalMs: 1000,
    leaseDurationSeconds: 40,
    logger: log,
    onLeaseExpired: (e) => expired.push(e),
  });
  t.teardown(() => reg.stop());

  await t.test('start: labels and Lease appear', async (t) => {
    const t0 = Date.now();
    await reg.start();
    t.comment(`start() took ${Date.now() - t0} ms`);
    const l = await labels();
    t.equal(l['vmlet.io/schedulable'], 'true');
    t.equal(l['vmlet.io/kvm'], 'true');
    t.equal(l['kubernetes.io/hostname'], node, 'other labels untouched');
    const ls = await lease();
    t.ok(ls, 'Lease created');
    t.equal(ls?.spec.holderIdentity, node);
    t.equal(ls?.spec.leaseDurationSeconds, 40);
    t.match(ls?.spec.renewTime, /\.\d{6}Z$/, 'renewTime is a MicroTime');
    t.ok(leaseIsFresh(ls, Date.now()), 'fresh by leaseIsFresh');
    t.ok(reg.lastRenewed, 'lastRenewed set');
  });

  await t.test('the Lease is renewed on the interval', async (t) => {
    const first = await lease();
    await new Promise((r) => setTimeout(r, 2500));
    const second = await lease();
    t.not(second?.metadata.resourceVersion, first?.metadata.resourceVersion, 'updated');
    t.ok(Date.parse(second?.spec.renewTime ?? '') > Date.parse(first?.spec.renewTime ?? ''), 'renewTime moved forward');
    t.equal(expired.length, 0, 'no expiry reported');
  });

  await t.test('stop({unregister}): schedulable=false, kvm kept, Lease gone', async (t) => {
    await reg.stop({ unregister: true });
    const l = await labels();
    t.equal(l['vmlet.io/schedulable'], 'false');
    t.equal(l['vmlet.io/kvm'], 'true');
    t.equal(await lease(), undefined, 'Lease deleted');
    const rv = (await labels())['vmlet.io/schedulable'];
    await new Promise((r) => setTimeout(r, 1500));
    t.equal(await lease(), undefined, 'not renewed after stop');
    t.equal(rv, 'false');
  });
});
