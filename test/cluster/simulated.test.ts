// `up --simulated-nodes 50`: kwok keeps 50 simulated Nodes Ready next to the real one, a pod bound to one of them reaches Running, and `down` still leaves nothing.
import t from 'tap';
import { Cluster, clusterSkipReason, DEFAULT_ROOT, REPO_ROOT } from '../support/cluster.js';
import { defaultConfig } from '../support/cluster/config.js';
import { leftovers, snapshot } from '../support/cluster/host.js';

const reason = clusterSkipReason();
const ROOT = `${DEFAULT_ROOT}-test`;
const VMLET_TEST_ITEMS = /vmlt|(^|\/)v[th][0-9a-f]{4}|^tap|^vmlet/;

t.test('simulated nodes', { skip: reason ?? false }, async (t) => {
  const snapCfg = defaultConfig({ root: ROOT, binDir: `${REPO_ROOT}/.cache/k8s/bin` });
  const before = await snapshot(snapCfg);
  const c = await Cluster.up({ root: ROOT, simulatedNodes: 50, log: (m) => t.comment(m) });
  t.teardown(async () => {
    await c.down();
  });

  await t.test('51 Nodes Ready', async (t) => {
    const ready = await c.readyNodes();
    t.equal(ready.length, 51, '50 simulated + the real node');
    t.ok(ready.includes(c.config.node), 'the real node is among them');
    const nodes = JSON.parse(await c.kubectl(['get', 'nodes', '-l', 'type=kwok', '-o', 'json'])) as {
      items: Array<{ spec: { taints?: Array<{ key: string }> }; status: { capacity: Record<string, string> } }>;
    };
    t.equal(nodes.items.length, 50);
    t.ok(
      nodes.items.every((n) => n.spec.taints?.some((x) => x.key === 'kwok.x-k8s.io/node') && n.status.capacity.cpu === '32'),
      'tainted, with capacity',
    );
  });

  await t.test('a pod assigned to a simulated node runs; an ordinary pod stays off them', async (t) => {
    await c.kubectl(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'fake', namespace: 'default' },
        spec: {
          nodeSelector: { type: 'kwok', 'kubernetes.io/hostname': 'kwok-node-17' },
          tolerations: [{ key: 'kwok.x-k8s.io/node', operator: 'Exists', effect: 'NoSchedule' }],
          containers: [{ name: 'c', image: 'localhost/vmlet-busybox:1', imagePullPolicy: 'Never' }],
        },
      }),
    );
    await c.kubectl(['wait', '--for=jsonpath={.status.phase}=Running', 'pod/fake', '--timeout=60s']);
    t.equal(
      (await c.kubectl(['get', 'pod', 'fake', '-o', 'jsonpath={.spec.nodeName}'])).trim(),
      'kwok-node-17',
      'bound by the scheduler to the simulated node',
    );
    await c.kubectl(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'real', namespace: 'default' },
        spec: { restartPolicy: 'Never', containers: [{ name: 'c', image: 'localhost/vmlet-busybox:1', imagePullPolicy: 'Never', command: ['true'] }] },
      }),
    );
    await c.kubectl(['wait', '--for=jsonpath={.status.phase}=Succeeded', 'pod/real', '--timeout=60s']);
    t.equal((await c.kubectl(['get', 'pod', 'real', '-o', 'jsonpath={.spec.nodeName}'])).trim(), c.config.node, 'the untolerated pod ran on the real node');
  });

  await t.test('down leaves nothing behind', async (t) => {
    t.same(await c.down(), [], 'down reports nothing left');
    t.same(leftovers(before, await snapshot(snapCfg), VMLET_TEST_ITEMS), {}, 'nothing new on the host');
  });
});
