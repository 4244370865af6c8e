// The cluster controller on a real API server with simulated nodes: VM → VMI → launcher pod on a node that fits, Unschedulable with kube-scheduler-like counts, a deleted pod fails its VMI and the VM makes a new one, deletion leaves nothing, and a second replica takes over from a dead leader.
import { randomBytes } from 'node:crypto';
import { CoordinationV1Api, CoreV1Api, CustomObjectsApi, KubeConfig, PatchStrategy, setHeaderOptions, type V1Pod } from '@kubernetes/client-node';
import pino from 'pino';
import t from 'tap';
import { microTime } from '../../src/controller/leader-election.js';
import { runController, type RunningController } from '../../src/controller/main.js';
import { testCluster } from '../support/cluster.js';
import { waitFor } from '../support/cluster/exec.js';
import { releaseNodeFinalizers } from '../support/cluster/node-stand-in.js';

const NODES = ['kwok-node-0', 'kwok-node-1', 'kwok-node-2'];
const MERGE = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const GROUP = { group: 'vmlet.io', version: 'v1alpha1' };

type Obj = { metadata: { name: string; uid: string; labels?: Record<string, string>; finalizers?: string[] }; status?: Record<string, unknown> };

function vmiStatus(o: Obj | undefined): { phase?: string; nodeName?: string; reason?: string; conditions?: Array<Record<string, string>> } {
  return (o?.status ?? {}) as ReturnType<typeof vmiStatus>;
}

const TOLERATE_KWOK = [{ key: 'kwok.x-k8s.io/node', operator: 'Exists', effect: 'NoSchedule' }];

t.test('cluster controller', async (t) => {
  const c = await testCluster(t, { simulatedNodes: 3 });
  if (!c) return;
  const kc = new KubeConfig();
  kc.loadFromFile(c.kubeconfigPath);
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const coord = kc.makeApiClient(CoordinationV1Api);
  const ns = `ctl-${randomBytes(3).toString('hex')}`;
  const log = pino({ level: process.env.VMLET_TEST_LOG ?? 'silent' });

  await core.createNamespace({ body: { metadata: { name: ns } } });
  await core.createNamespace({ body: { metadata: { name: 'vmlet' } } }).catch(() => undefined);
  await c.kubectl(['apply', '-f', 'deploy/crds/virtualmachines.yaml', '-f', 'deploy/crds/virtualmachineinstances.yaml']);
  await c.kubectl(['wait', '--for=condition=Established', 'crd/virtualmachines.vmlet.io', 'crd/virtualmachineinstances.vmlet.io', '--timeout=60s']);
  const labelNodes = (value: string | null): Promise<unknown> =>
    Promise.all(
      NODES.map((n) =>
        core.patchNode({ name: n, body: { metadata: { labels: { 'vmlet.io/schedulable': value, 'vmlet.io/kvm': value === null ? null : 'false' } } } }, MERGE),
      ),
    );
  await labelNodes('true');
  // Heartbeats for two of the three simulated nodes: the third must get nothing.
  const beat = async (): Promise<void> => {
    for (const n of NODES.slice(0, 2)) {
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
  await beat();
  const beating = setInterval(() => void beat().catch(() => undefined), 5000);
  // No node daemon runs here: stand in for its release of the finalizer when a VMI is deleted.
  const standIn = setInterval(() => void releaseNodeFinalizers(custom, GROUP, ns).catch(() => undefined), 1000);
  await core
    .createNamespacedConfigMap({ namespace: 'vmlet', body: { metadata: { name: 'vmlet-config' }, data: { 'vmlet.yaml': 'useEmulation: true\n' } } })
    .catch(() => core.patchNamespacedConfigMap({ name: 'vmlet-config', namespace: 'vmlet', body: { data: { 'vmlet.yaml': 'useEmulation: true\n' } } }, MERGE));

  const controllers: RunningController[] = [];
  const start = (identity: string): Promise<RunningController> =>
    runController({
      kubeconfig: c.kubeconfigPath,
      identity,
      image: 'localhost/vmlet-busybox:1',
      imagePullPolicy: 'Never',
      healthPort: 0,
      webhook: false,
      election: { leaseDurationMs: 4000, renewDeadlineMs: 3000, retryPeriodMs: 500 },
      logger: log.child({ replica: identity }),
    }).then((r) => {
      controllers.push(r);
      return r;
    });
  t.teardown(async () => {
    clearInterval(beating);
    clearInterval(standIn);
    for (const r of controllers) await r.close().catch(() => undefined);
    await c.kubectl(['delete', 'namespace', ns, '--wait=false']).catch(() => undefined);
    await labelNodes(null).catch(() => undefined);
    for (const n of NODES) await coord.deleteNamespacedLease({ name: `vmlet-node-${n}`, namespace: 'vmlet' }).catch(() => undefined);
    await coord.deleteNamespacedLease({ name: 'vmlet-controller', namespace: 'vmlet' }).catch(() => undefined);
  });

  const a = await start('replica-a');
  await waitFor('replica-a leads', 15_000, async () => (a.election.isLeader ? true : undefined));
  const b = await start('replica-b');

  const getVmi = async (name: string): Promise<Obj | undefined> =>
    (await custom.getNamespacedCustomObject({ ...GROUP, plural: 'virtualmachineinstances', namespace: ns, name }).catch(() => undefined)) as Obj | undefined;
  const podsOf = async (vmiUid: string): Promise<V1Pod[]> =>
    (await core.listNamespacedPod({ namespace: ns, labelSelector: `vmlet.io/vmi-uid=${vmiUid}` })).items.filter((p) => !p.metadata?.deletionTimestamp);
  const vm = (name: string, spec: Record<string, unknown>): Record<string, unknown> => ({
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachine',
    metadata: { name, namespace: ns },
    spec: {
      runStrategy: 'Always',
      template: { metadata: { labels: { app: name } }, spec: { domain: { resources: { requests: { memory: '64Mi' } } }, tolerations: TOLERATE_KWOK, ...spec } },
    },
  });

  await t.test('a VM gets a VMI and the VMI a launcher pod on a node with a heartbeat', async (t) => {
    await custom.createNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, body: vm('web', {}) });
    const vmi = await waitFor('VMI web Scheduled', 30_000, async () => {
      const v = await getVmi('web');
      return vmiStatus(v).phase === 'Scheduled' ? v : undefined;
    });
    const st = vmiStatus(vmi);
    t.ok(['kwok-node-0', 'kwok-node-1'].includes(st.nodeName ?? ''), `assigned to ${st.nodeName}, a node with a heartbeat`);
    t.equal(vmi.metadata.labels?.['vmlet.io/nodeName'], st.nodeName, 'label vmlet.io/nodeName matches status.nodeName');
    t.ok(vmi.metadata.finalizers?.includes('vmlet.io/vmi-cleanup'), 'the VMI holds the cleanup finalizer');
    t.ok(vmi.metadata.finalizers?.includes('vmlet.io/node-cleanup'), "and the node daemon's, set in the same write");
    const pods = await podsOf(vmi.metadata.uid);
    t.equal(pods.length, 1, 'one launcher pod');
    const pod = pods[0]!;
    t.equal(pod.spec?.nodeName, st.nodeName, 'the pod is bound to the same node');
    t.equal(pod.metadata?.labels?.['app'], 'web', "the VM template's labels are on the pod");
    t.equal(pod.metadata?.ownerReferences?.[0]?.uid, vmi.metadata.uid, 'the VMI owns the pod');
    t.equal(pod.spec?.containers[0]?.resources?.limits?.['devices.vmlet.io/kvm'], undefined, 'no KVM device under emulation');
    const cond = st.conditions?.find((x) => x.type === 'PodScheduled');
    t.equal(cond?.status, 'True');
  });

  await t.test('a VMI that fits nowhere stays Pending with the reasons counted per node', async (t) => {
    await custom.createNamespacedCustomObject({
      ...GROUP,
      plural: 'virtualmachineinstances',
      namespace: ns,
      body: {
        apiVersion: 'vmlet.io/v1alpha1',
        kind: 'VirtualMachineInstance',
        metadata: { name: 'picky', namespace: ns },
        spec: { domain: { resources: { requests: { memory: '64Mi' } } }, tolerations: TOLERATE_KWOK, nodeSelector: { disk: 'nvme' } },
      },
    });
    const v = await waitFor('VMI picky Unschedulable', 30_000, async () => {
      const o = await getVmi('picky');
      return vmiStatus(o).conditions?.some((x) => x.type === 'PodScheduled' && x.reason === 'Unschedulable') ? o : undefined;
    });
    const cond = vmiStatus(v).conditions!.find((x) => x.type === 'PodScheduled')!;
    t.equal(vmiStatus(v).phase, 'Pending');
    t.equal(cond.status, 'False');
    t.match(cond.message, /^0\/\d+ nodes are available: /, `message: ${cond.message}`);
    t.match(cond.message, /: 4 node\(s\) didn't match Pod's node affinity\/selector\.$/, 'every node fails the selector first');
    t.same(await podsOf(v.metadata.uid), [], 'no pod');
    await core.patchNode({ name: 'kwok-node-1', body: { metadata: { labels: { disk: 'nvme' } } } }, MERGE);
    t.teardown(() => core.patchNode({ name: 'kwok-node-1', body: { metadata: { labels: { disk: null } } } }, MERGE).then(() => undefined));
    const placed = await waitFor('VMI picky placed after the node is labelled', 30_000, async () => {
      const o = await getVmi('picky');
      return vmiStatus(o).phase === 'Scheduled' ? o : undefined;
    });
    t.equal(vmiStatus(placed).nodeName, 'kwok-node-1', 'it goes to the node that now matches');
  });

  await t.test('each node is counted under the first reason it fails', async (t) => {
    await custom.createNamespacedCustomObject({
      ...GROUP,
      plural: 'virtualmachineinstances',
      namespace: ns,
      body: {
        apiVersion: 'vmlet.io/v1alpha1',
        kind: 'VirtualMachineInstance',
        metadata: { name: 'huge', namespace: ns },
        spec: { domain: { resources: { requests: { memory: '4Ti' } } }, tolerations: TOLERATE_KWOK },
      },
    });
    const v = await waitFor('VMI huge Unschedulable', 30_000, async () => {
      const o = await getVmi('huge');
      return vmiStatus(o).conditions?.some((x) => x.type === 'PodScheduled' && x.reason === 'Unschedulable') ? o : undefined;
    });
    const msg = vmiStatus(v).conditions!.find((x) => x.type === 'PodScheduled')!.message ?? '';
    t.match(msg, /^0\/4 nodes are available: /, msg);
    t.match(msg, /1 node\(s\) had no vmlet heartbeat/, 'the simulated node without a Lease');
    t.match(msg, /2 Insufficient memory/, 'the two simulated nodes with a heartbeat');
    t.match(msg, /1 node\(s\) [^,]*vmlet/, 'the real node, which runs no vmlet daemon here');
    await custom.deleteNamespacedCustomObject({ ...GROUP, plural: 'virtualmachineinstances', namespace: ns, name: 'huge' });
  });

  await t.test('a deleted launcher pod fails its VMI and the Always VM gets a new one', async (t) => {
    const old = (await getVmi('web'))!;
    const [pod] = await podsOf(old.metadata.uid);
    await core.deleteNamespacedPod({ name: pod!.metadata!.name!, namespace: ns, gracePeriodSeconds: 0 });
    const fresh = await waitFor('a new VMI web', 60_000, async () => {
      const v = await getVmi('web');
      return v && v.metadata.uid !== old.metadata.uid && vmiStatus(v).phase === 'Scheduled' ? v : undefined;
    });
    t.not(fresh.metadata.uid, old.metadata.uid, 'the VM made a new VMI');
    t.equal((await podsOf(fresh.metadata.uid)).length, 1, 'with its own launcher pod');
  });

  await t.test('the other replica takes over when the leader dies', async (t) => {
    const leader = a.election.isLeader ? a : b;
    const other = leader === a ? b : a;
    const t0 = Date.now();
    await leader.election.stop({ release: false });
    await waitFor('the other replica leads', 15_000, async () => (other.election.isLeader ? true : undefined));
    const took = Date.now() - t0;
    t.ok(took < 4000 + 3000, `took over in ${took} ms (lease 4 s)`);
    await custom.createNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, body: vm('after', {}) });
    const v = await waitFor('VMI after Scheduled by the new leader', 30_000, async () => {
      const o = await getVmi('after');
      return vmiStatus(o).phase === 'Scheduled' ? o : undefined;
    });
    t.ok(vmiStatus(v).nodeName, 'the new leader handles a new VM');
  });

  await t.test("KubeVirt's legacy running: true starts the VM", async (t) => {
    const legacy = vm('legacy', {}) as { spec: Record<string, unknown> };
    delete legacy.spec['runStrategy'];
    legacy.spec['running'] = true;
    await custom.createNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, body: legacy });
    const v = await waitFor('VMI legacy Scheduled', 30_000, async () => {
      const o = await getVmi('legacy');
      return vmiStatus(o).phase === 'Scheduled' ? o : undefined;
    });
    t.ok(v, 'a VMI was made and placed');
  });

  await t.test('deleting the VM removes its VMI and pod and releases the finalizer', async (t) => {
    const v = (await getVmi('web'))!;
    await custom.deleteNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, name: 'web' });
    await waitFor('VMI web gone', 60_000, async () => ((await getVmi('web')) === undefined ? true : undefined));
    await waitFor('pod of web gone', 60_000, async () =>
      (await core.listNamespacedPod({ namespace: ns, labelSelector: `vmlet.io/vmi-uid=${v.metadata.uid}` })).items.length === 0 ? true : undefined,
    );
    t.pass('VM, VMI and pod are gone');
  });
});
