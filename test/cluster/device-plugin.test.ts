// The KVM device plugin on the real kubelet: the node advertises devices.vmlet.io/kvm, a pod that asks for one sees /dev/kvm, health changes reach allocatable, and stopping the plugin takes the devices away.
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import t from 'tap';
import { parseQuantity } from '../../src/api/quantity.js';
import { KvmDevicePlugin } from '../../src/daemon/device-plugin.js';
import { clusterSkipReason, testCluster, type Cluster } from '../support/cluster.js';

const RESOURCE = 'devices.vmlet.io/kvm';
const COUNT = 1000;
const NS = `h5-dp-${process.pid}`;
const log = pino({ level: process.env.VMLET_TEST_LOG ?? 'silent' });

/**
 * The kubelet's device plugin folder. The kubelet compiles in /var/lib/kubelet/device-plugins
 * (pluginapi.DevicePluginPath) and does not move it with --root-dir, so the test cluster's kubelet
 * (root dir c.paths.kubeletRoot) listens there; use <root>/device-plugins only if a kubelet does.
 */
function devicePluginDir(c: Cluster): string {
  const underRoot = path.join(c.paths.kubeletRoot, 'device-plugins');
  return fs.existsSync(path.join(underRoot, 'kubelet.sock')) ? underRoot : '/var/lib/kubelet/device-plugins';
}

/** The node's capacity and allocatable of the resource as numbers (the API server writes 1000 as "1k"); undefined when absent. */
async function resources(c: Cluster): Promise<{ capacity: number | undefined; allocatable: number | undefined }> {
  const n = (await c.api('GET', `/api/v1/nodes/${c.config.node}`)).json() as {
    status: { capacity: Record<string, string>; allocatable: Record<string, string> };
  };
  const num = (q: string | undefined): number | undefined => (q === undefined ? undefined : Number(parseQuantity(q)));
  return { capacity: num(n.status.capacity[RESOURCE]), allocatable: num(n.status.allocatable[RESOURCE]) };
}

async function waitFor(what: string, ms: number, check: () => Promise<boolean>): Promise<number> {
  const t0 = Date.now();
  while (!(await check())) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  return Date.now() - t0;
}

t.test('KVM device plugin on the real kubelet', { skip: clusterSkipReason() ?? false }, async (t) => {
  const c = await testCluster(t);
  if (!c) return;
  const dir = devicePluginDir(c);
  t.comment(`device plugin folder: ${dir}`);
  const plugin = new KvmDevicePlugin({ kubeletRootDir: c.paths.kubeletRoot, devicePluginDir: dir, kvmUsable: true, count: COUNT, logger: log });
  t.teardown(async () => {
    await plugin.stop();
    await c.kubectl(['delete', 'namespace', NS, '--wait=false', '--ignore-not-found']).catch(() => '');
  });

  await t.test('registers; the node advertises the count', async (t) => {
    await plugin.start();
    t.equal(plugin.lastError, undefined, 'no serve or register error');
    t.ok(plugin.registered, 'the kubelet accepted the registration');
    const ms = await waitFor(`capacity ${COUNT}`, 60_000, async () => {
      const r = await resources(c);
      return r.capacity === COUNT && r.allocatable === COUNT;
    });
    t.pass(`capacity and allocatable ${COUNT} after ${ms} ms`);
  });

  await t.test('a pod with devices.vmlet.io/kvm: 1 sees /dev/kvm', { skip: fs.existsSync('/dev/kvm') ? false : 'this host has no /dev/kvm' }, async (t) => {
    await c.kubectl(['create', 'namespace', NS]);
    const pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'kvm', namespace: NS },
      spec: {
        restartPolicy: 'Never',
        terminationGracePeriodSeconds: 1,
        automountServiceAccountToken: false,
        containers: [
          {
            name: 'main',
            image: 'localhost/vmlet-busybox:1',
            imagePullPolicy: 'Never',
            command: ['ls', '-l', '/dev/kvm'],
            resources: { limits: { [RESOURCE]: '1' } },
          },
        ],
      },
    };
    await c.kubectl(['apply', '-f', '-'], JSON.stringify(pod));
    await c.kubectl(['wait', '-n', NS, '--for=jsonpath={.status.phase}=Succeeded', 'pod/kvm', '--timeout=90s']);
    const out = await c.kubectl(['logs', '-n', NS, 'kvm']);
    t.comment(out.trim());
    t.match(out, /^c\S+\s+1 (root|0)\s+(root|0)\s+10,\s+232 .*\/dev\/kvm$/m, 'the KVM character device (10:232), as on the host');
    const requests = JSON.parse(await c.kubectl(['get', 'pod', '-n', NS, 'kvm', '-o', 'jsonpath={.spec.containers[0].resources.requests}'])) as Record<
      string,
      string
    >;
    t.equal(requests[RESOURCE], '1', 'the request defaults to the limit');
  });

  await t.test('KVM unusable: allocatable 0, capacity kept; usable again: back', async (t) => {
    plugin.setKvmUsable(false);
    let ms = await waitFor('allocatable 0', 60_000, async () => (await resources(c)).allocatable === 0);
    t.equal((await resources(c)).capacity, COUNT, 'capacity still shows the devices (unhealthy)');
    t.pass(`allocatable 0 after ${ms} ms`);
    plugin.setKvmUsable(true);
    ms = await waitFor(`allocatable ${COUNT}`, 60_000, async () => (await resources(c)).allocatable === COUNT);
    t.pass(`allocatable ${COUNT} again after ${ms} ms`);
  });

  await t.test('stop: socket gone, allocatable 0 (capacity stays until the kubelet drops the resource)', async (t) => {
    await plugin.stop();
    t.notOk(fs.existsSync(plugin.socketPath), 'socket removed');
    const ms = await waitFor('allocatable 0', 60_000, async () => (await resources(c)).allocatable === 0);
    const r = await resources(c);
    t.pass(`allocatable 0 after ${ms} ms; capacity ${r.capacity ?? 'gone'}`);
  });
});
