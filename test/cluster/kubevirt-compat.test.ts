// KubeVirt's kinds (kubevirt.io/v1) served by vmlet's controller on a real API server with simulated nodes: a KubeVirt VM manifest gets its VMI and launcher pod, VMIs spread over equal nodes and skip stale or tainted ones, and the controller refuses CRDs that are not vmlet's.
import { randomBytes } from 'node:crypto';
import { CoordinationV1Api, CoreV1Api, CustomObjectsApi, KubeConfig, PatchStrategy, setHeaderOptions, type V1Pod } from '@kubernetes/client-node';
import pino from 'pino';
import t from 'tap';
import YAML from 'yaml';
import { parseClusterConfig } from '../../src/controller/cluster-config.js';
import { microTime } from '../../src/controller/leader-election.js';
import { runController, type RunningController } from '../../src/controller/main.js';
import { testCluster } from '../support/cluster.js';
import { waitFor } from '../support/cluster/exec.js';
import { releaseNodeFinalizers } from '../support/cluster/node-stand-in.js';

const KV = { group: 'kubevirt.io', version: 'v1' };
const MERGE = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const KWOK_TAINT = { key: 'kwok.x-k8s.io/node', value: 'fake', effect: 'NoSchedule' };
const TOLERATE_KWOK = [{ key: 'kwok.x-k8s.io/node', operator: 'Exists', effect: 'NoSchedule' }];
/** kwok-node-2 only: the other engineer's controller test labels kwok-node-0 and -1. */
const KWOK_NODE = 'kwok-node-2';
const CRD_FILES = [
  'deploy/components/kubevirt-compat/kubevirt-virtualmachines.yaml',
  'deploy/components/kubevirt-compat/kubevirt-virtualmachineinstances.yaml',
];

type Obj = {
  apiVersion?: string;
  metadata: {
    name: string;
    uid: string;
    labels?: Record<string, string>;
    finalizers?: string[];
    ownerReferences?: Array<{ apiVersion: string; kind: string; uid: string }>;
  };
  status?: { phase?: string; nodeName?: string; conditions?: Array<{ type: string; status: string; reason?: string; message?: string }> };
};

t.test('kubevirt.io in cluster mode', async (t) => {
  const c = await testCluster(t, { simulatedNodes: 3 });
  if (!c) return;
  const kc = new KubeConfig();
  kc.loadFromFile(c.kubeconfigPath);
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const coord = kc.makeApiClient(CoordinationV1Api);
  const ns = `kv-${randomBytes(3).toString('hex')}`;
  const log = pino({ level: process.env.VMLET_TEST_LOG ?? 'silent' });

  await core.createNamespace({ body: { metadata: { name: ns } } });
  await core.createNamespace({ body: { metadata: { name: 'vmlet' } } }).catch(() => undefined);
  // Server-side with deploy's field manager: a later `kubectl apply --server-side -k …kubevirt-compat` finds them as its own. Left installed.
  await c.kubectl(['apply', '--server-side', '--field-manager=vmlet', ...CRD_FILES.flatMap((f) => ['-f', f])]);
  await c.kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/virtualmachines.kubevirt.io', 'crd/virtualmachineinstances.kubevirt.io']);

  // useEmulation: true (the simulated nodes have no KVM); the old text comes back afterwards if it had to change.
  const cm = await core.readNamespacedConfigMap({ name: 'vmlet-config', namespace: 'vmlet' }).catch(() => undefined);
  const oldText = cm?.data?.['vmlet.yaml'];
  let emulationWas: boolean | undefined;
  try {
    emulationWas = parseClusterConfig(oldText).useEmulation;
  } catch {
    emulationWas = undefined;
  }
  if (!cm) {
    await core.createNamespacedConfigMap({ namespace: 'vmlet', body: { metadata: { name: 'vmlet-config' }, data: { 'vmlet.yaml': 'useEmulation: true\n' } } });
  } else if (emulationWas !== true) {
    const doc: unknown = emulationWas === undefined ? {} : YAML.parse(oldText ?? '');
    const text = YAML.stringify({ ...(typeof doc === 'object' && doc !== null ? doc : {}), useEmulation: true });
    await core.patchNamespacedConfigMap({ name: 'vmlet-config', namespace: 'vmlet', body: { data: { 'vmlet.yaml': text } } }, MERGE);
  }

  // Heartbeat Leases, renewed every 5 s while the test runs, for the nodes in `beating`.
  const beating = new Set<string>();
  const beat = async (): Promise<void> => {
    for (const n of beating) {
      const name = `vmlet-node-${n}`;
      const spec = { holderIdentity: n, leaseDurationSeconds: 40, renewTime: microTime(Date.now()) };
      try {
        await coord.patchNamespacedLease({ name, namespace: 'vmlet', body: { spec } }, MERGE);
      } catch {
        await coord.createNamespacedLease({ namespace: 'vmlet', body: { metadata: { name }, spec: { holderIdentity: n } } });
        await coord.patchNamespacedLease({ name, namespace: 'vmlet', body: { spec } }, MERGE);
      }
    }
  };
  const beater = setInterval(() => void beat().catch(() => undefined), 5000);
  // No node daemon runs here: stand in for its release of the finalizer when a VMI is deleted.
  const standIn = setInterval(() => void releaseNodeFinalizers(custom, KV, ns).catch(() => undefined), 1000);
  const vmletLabels = (value: string | null): Record<string, string | null> => ({
    'vmlet.io/schedulable': value,
    'vmlet.io/kvm': value === null ? null : 'false',
  });
  await core.patchNode({ name: KWOK_NODE, body: { metadata: { labels: vmletLabels('true') } } }, MERGE);
  beating.add(KWOK_NODE);
  await beat();

  const controllers: RunningController[] = [];
  const ownNodes: string[] = [];
  const getVmi = async (name: string): Promise<Obj | undefined> =>
    (await custom.getNamespacedCustomObject({ ...KV, plural: 'virtualmachineinstances', namespace: ns, name }).catch(() => undefined)) as Obj | undefined;
  const podsOf = async (vmiUid: string): Promise<V1Pod[]> =>
    (await core.listNamespacedPod({ namespace: ns, labelSelector: `vmlet.io/vmi-uid=${vmiUid}` })).items.filter((p) => !p.metadata?.deletionTimestamp);
  const vmiNames = async (): Promise<string[]> =>
    ((await custom.listNamespacedCustomObject({ ...KV, plural: 'virtualmachineinstances', namespace: ns })) as { items: Obj[] }).items.map(
      (v) => v.metadata.name,
    );

  t.teardown(async () => {
    // VMs and VMIs go while the controller still runs: it deletes their pods and releases the finalizers.
    await c.kubectl(['-n', ns, 'delete', 'virtualmachines.kubevirt.io,virtualmachineinstances.kubevirt.io', '--all', '--wait=false']).catch(() => undefined);
    await waitFor('kubevirt.io VMIs gone', 60_000, async () => ((await vmiNames()).length === 0 ? true : undefined)).catch(() => undefined);
    for (const r of controllers) await r.close().catch(() => undefined);
    for (const name of await vmiNames().catch(() => [])) {
      await custom
        .patchNamespacedCustomObject({ ...KV, plural: 'virtualmachineinstances', namespace: ns, name, body: { metadata: { finalizers: null } } }, MERGE)
        .catch(() => undefined);
    }
    clearInterval(beater);
    clearInterval(standIn);
    await c.kubectl(['delete', 'namespace', ns, '--wait=false']).catch(() => undefined);
    await core.patchNode({ name: KWOK_NODE, body: { metadata: { labels: vmletLabels(null) } } }, MERGE).catch(() => undefined);
    for (const n of [KWOK_NODE, ...ownNodes]) await coord.deleteNamespacedLease({ name: `vmlet-node-${n}`, namespace: 'vmlet' }).catch(() => undefined);
    for (const n of ownNodes) await core.deleteNode({ name: n }).catch(() => undefined);
    // The released leader Lease (no holder) goes too; one another controller holds stays.
    const lease = await coord.readNamespacedLease({ name: 'vmlet-controller-kubevirt', namespace: 'vmlet' }).catch(() => undefined);
    if (lease && (!lease.spec?.holderIdentity || lease.spec.holderIdentity === `kv-test-${ns}`)) {
      await coord.deleteNamespacedLease({ name: 'vmlet-controller-kubevirt', namespace: 'vmlet' }).catch(() => undefined);
    }
    if (cm && emulationWas !== true && oldText !== undefined) {
      await core
        .patchNamespacedConfigMap({ name: 'vmlet-config', namespace: 'vmlet', body: { data: { 'vmlet.yaml': oldText } } }, MERGE)
        .catch(() => undefined);
    }
  });

  const start = (): Promise<RunningController> =>
    runController({
      kubeconfig: c.kubeconfigPath,
      identity: `kv-test-${ns}`,
      ...KV,
      image: 'localhost/vmlet-busybox:1',
      imagePullPolicy: 'Never',
      healthPort: 0,
      webhook: false,
      election: { retryPeriodMs: 500 },
      logger: log,
    });

  await t.test("the controller refuses a group whose CRDs are not vmlet's", async (t) => {
    // A group of this test's own, so the shared kubevirt.io CRDs keep their label throughout.
    const group = `${ns}.example`;
    const other = { ...KV, group };
    const opts = { kubeconfig: c.kubeconfigPath, identity: 'refused', ...other, healthPort: 0, webhook: false, logger: log };
    await t.rejects(
      runController(opts),
      { code: 'API_GROUP_NOT_VMLET', message: new RegExp(`the CRD virtualmachines\\.${ns}\\.example does not exist`) },
      'no CRDs',
    );
    const crd = (plural: string, kind: string): Record<string, unknown> => ({
      apiVersion: 'apiextensions.k8s.io/v1',
      kind: 'CustomResourceDefinition',
      metadata: { name: `${plural}.${group}`, labels: { 'app.kubernetes.io/part-of': 'not-vmlet' } },
      spec: {
        group,
        scope: 'Namespaced',
        names: { plural, kind, singular: kind.toLowerCase() },
        versions: [{ name: 'v1', served: true, storage: true, schema: { openAPIV3Schema: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } } }],
      },
    });
    const foreign = [crd('virtualmachines', 'VirtualMachine'), crd('virtualmachineinstances', 'VirtualMachineInstance')];
    // No wait for the CRDs' finalizer: on a loaded cluster kubectl's own deadline ran out before it (the group is this test's alone).
    t.teardown(() =>
      c.kubectl(['delete', 'crd', `virtualmachines.${group}`, `virtualmachineinstances.${group}`, '--ignore-not-found', '--wait=false']).then(() => undefined),
    );
    await c.kubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: foreign }));
    await t.rejects(
      runController(opts),
      {
        code: 'API_GROUP_NOT_VMLET',
        message: new RegExp(`virtualmachines\\.${ns}\\.example is not vmlet's \\(no label app\\.kubernetes\\.io/part-of=vmlet\\)`),
      },
      "CRDs labelled as someone else's",
    );
    t.equal(
      (await coord.readNamespacedLease({ name: `vmlet-controller-${ns}`, namespace: 'vmlet' }).catch(() => undefined))?.metadata?.name,
      undefined,
      'the refused controller took no leader Lease',
    );
  });

  const ctl = await start();
  controllers.push(ctl);
  await waitFor('the kubevirt.io controller leads (Lease vmlet/vmlet-controller-kubevirt)', 60_000, async () => (ctl.election.isLeader ? true : undefined));

  await t.test('a KubeVirt VirtualMachine manifest gets its VMI and a launcher pod, and goes away with them', async (t) => {
    const manifest = `
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: testvm
  namespace: ${ns}
  labels:
    kubevirt.io/vm: testvm
spec:
  runStrategy: Always
  template:
    metadata:
      labels:
        kubevirt.io/domain: testvm
    spec:
      nodeSelector:
        kubernetes.io/hostname: ${KWOK_NODE}
      tolerations:
        - key: kwok.x-k8s.io/node
          operator: Exists
          effect: NoSchedule
      domain:
        resources:
          requests:
            memory: 64Mi
        devices: {}
`;
    await c.kubectl(['apply', '-f', '-'], manifest);
    const vm = (await custom.getNamespacedCustomObject({ ...KV, plural: 'virtualmachines', namespace: ns, name: 'testvm' })) as Obj;
    const vmi = await waitFor('VMI testvm Scheduled', 60_000, async () => {
      const v = await getVmi('testvm');
      return v?.status?.phase === 'Scheduled' ? v : undefined;
    });
    t.equal(vmi.apiVersion, 'kubevirt.io/v1', 'a kubevirt.io VMI');
    t.match(vmi.metadata.ownerReferences, [{ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', uid: vm.metadata.uid }], 'owned by the VM');
    t.equal(vmi.status?.nodeName, KWOK_NODE, 'status.nodeName');
    t.equal(vmi.metadata.labels?.['vmlet.io/nodeName'], KWOK_NODE, 'the node label the node daemon selects on');
    t.equal(vmi.status?.conditions?.find((x) => x.type === 'PodScheduled')?.status, 'True');
    const pods = await podsOf(vmi.metadata.uid);
    t.equal(pods.length, 1, 'one launcher pod');
    t.equal(pods[0]?.spec?.nodeName, KWOK_NODE, `bound to ${KWOK_NODE}`);
    t.match(
      pods[0]?.metadata?.ownerReferences,
      [{ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', uid: vmi.metadata.uid, controller: true }],
      'owned by the kubevirt.io VMI',
    );
    // The garbage collector keeps a pod whose owner it finds: a wrong apiVersion would have it deleted.
    await new Promise((r) => setTimeout(r, 3000));
    t.equal((await podsOf(vmi.metadata.uid)).length, 1, 'the garbage collector leaves the pod alone');

    await c.kubectl(['-n', ns, 'delete', 'virtualmachines.kubevirt.io', 'testvm', '--wait=false']);
    await waitFor('VMI testvm gone', 60_000, async () => ((await getVmi('testvm')) === undefined ? true : undefined));
    await waitFor('its pod gone', 60_000, async () =>
      (await core.listNamespacedPod({ namespace: ns, labelSelector: `vmlet.io/vmi-uid=${vmi.metadata.uid}` })).items.length === 0 ? true : undefined,
    );
    t.pass('VM, VMI and launcher pod are gone');
  });

  await t.test('VMIs spread over equal nodes; a stale or untolerated node gets none; counted per reason when nothing fits', async (t) => {
    // Four simulated nodes of this test: a and b fit; c has no heartbeat; d a taint the VMIs do not tolerate.
    const pool = { 'kv-test/pool': ns };
    const nodes = { a: 'kv-node-a', b: 'kv-node-b', c: 'kv-node-c', d: 'kv-node-d' };
    const spare = { 'kv-test/role': 'spare' };
    const node = (name: string, labels: Record<string, string>, taints: Array<Record<string, string>>): Record<string, unknown> => ({
      apiVersion: 'v1',
      kind: 'Node',
      metadata: {
        name,
        annotations: { 'kwok.x-k8s.io/node': 'fake', 'node.alpha.kubernetes.io/ttl': '0' },
        labels: {
          type: 'kwok',
          'kubernetes.io/hostname': name,
          'kubernetes.io/os': 'linux',
          'kubernetes.io/arch': 'amd64',
          ...vmletLabels('true'),
          ...pool,
          ...labels,
        },
      },
      spec: { taints: [KWOK_TAINT, ...taints] },
      status: { allocatable: { cpu: '32', memory: '256Gi', pods: '110' }, capacity: { cpu: '32', memory: '256Gi', pods: '110' } },
    });
    const items = [
      node(nodes.a, {}, []),
      node(nodes.b, {}, []),
      node(nodes.c, spare, []),
      node(nodes.d, spare, [{ key: 'kv-test/dedicated', value: 'other', effect: 'NoSchedule' }]),
    ];
    ownNodes.push(...Object.values(nodes));
    await c.kubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items }));
    for (const n of [nodes.a, nodes.b, nodes.d]) beating.add(n);
    await beat();
    await waitFor('kwok reports the four nodes Ready', 60_000, async () => {
      const ready = await Promise.all(
        Object.values(nodes).map(async (n) => (await core.readNode({ name: n })).status?.conditions?.some((x) => x.type === 'Ready' && x.status === 'True')),
      );
      return ready.every(Boolean) ? true : undefined;
    });
    // The controller's node and Lease caches follow the API server a moment later: VMIs created at once would all meet one node.
    await new Promise((r) => setTimeout(r, 2000));

    const vmi = (name: string, selector: Record<string, string>): Record<string, unknown> => ({
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstance',
      metadata: { name, namespace: ns },
      spec: { domain: { resources: { requests: { memory: '64Mi' } }, devices: {} }, nodeSelector: selector, tolerations: TOLERATE_KWOK },
    });
    const names = Array.from({ length: 6 }, (_, i) => `spread-${i}`);
    await Promise.all(names.map((n) => custom.createNamespacedCustomObject({ ...KV, plural: 'virtualmachineinstances', namespace: ns, body: vmi(n, pool) })));
    const placed = await waitFor('six VMIs Scheduled', 60_000, async () => {
      const vs = await Promise.all(names.map(getVmi));
      return vs.every((v) => v?.status?.phase === 'Scheduled') ? vs.map((v) => v!.status!.nodeName!) : undefined;
    });
    const count = (n: string): number => placed.filter((x) => x === n).length;
    t.same(
      Object.values(nodes).map((n) => [n, count(n)]),
      [
        [nodes.a, 3],
        [nodes.b, 3],
        [nodes.c, 0],
        [nodes.d, 0],
      ],
      `3/3 over the two nodes that fit (placed: ${placed.join(', ')})`,
    );
    const pods = (await core.listNamespacedPod({ namespace: ns, labelSelector: 'vmlet.io/component=launcher' })).items;
    t.same(
      Object.values(nodes).map((n) => pods.filter((p) => p.spec?.nodeName === n).length),
      [3, 3, 0, 0],
      'the launcher pods sit where the VMIs say',
    );

    // Only c (no heartbeat) and d (untolerated taint) match: it fits nowhere, and the message counts each node once.
    await custom.createNamespacedCustomObject({ ...KV, plural: 'virtualmachineinstances', namespace: ns, body: vmi('nowhere', { ...pool, ...spare }) });
    const v = await waitFor('VMI nowhere Unschedulable', 60_000, async () => {
      const o = await getVmi('nowhere');
      return o?.status?.conditions?.some((x) => x.type === 'PodScheduled' && x.reason === 'Unschedulable') ? o : undefined;
    });
    const msg = v.status?.conditions?.find((x) => x.type === 'PodScheduled')?.message ?? '';
    t.equal(v.status?.phase, 'Pending');
    const total = Number(/^0\/(\d+) nodes are available: /.exec(msg)?.[1]);
    t.ok(total >= 8, `every node of the cluster is counted (${total}): ${msg}`);
    t.equal(
      msg,
      `0/${total} nodes are available: ${total - 2} node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {kv-test/dedicated: other}, 1 node(s) had no vmlet heartbeat.`,
      'one node per reason, the rest fail the selector',
    );
    t.same(await podsOf(v.metadata.uid), [], 'no pod');

    // Cleanup here, so the extra nodes live only as long as this subtest.
    await c.kubectl(['-n', ns, 'delete', 'virtualmachineinstances.kubevirt.io', '--all', '--wait=false']);
    await waitFor('the spread VMIs gone', 60_000, async () => ((await vmiNames()).length === 0 ? true : undefined));
    await waitFor('their pods gone', 60_000, async () => ((await core.listNamespacedPod({ namespace: ns })).items.length === 0 ? true : undefined));
    for (const n of Object.values(nodes)) beating.delete(n);
    for (const n of Object.values(nodes)) {
      await coord.deleteNamespacedLease({ name: `vmlet-node-${n}`, namespace: 'vmlet' }).catch(() => undefined);
      await core.deleteNode({ name: n });
    }
    ownNodes.length = 0;
  });
});
