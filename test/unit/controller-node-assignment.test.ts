// Node assignment (pure): every predicate, the order of reasons and kube-scheduler-like message, spreading, ties, pod requests, NodeUsage and speed.
import t from 'tap';
import type { V1Lease, V1Node, V1Pod, V1Taint } from '@kubernetes/client-node';
import {
  assignNode,
  leaseFresh,
  matchesRequirement,
  REASONS,
  toleratesTaint,
  type AssignNodeInput,
  type Assignment,
} from '../../src/controller/node-assignment.js';
import { NodeUsage, podRequests, type Requests } from '../../src/controller/node-usage.js';
import { renderLauncherPod } from '../../src/controller/launcher-pod.js';
import type { PlacedVmi } from '../../src/controller/placement.js';

const Gi = 1024 ** 3;
const Mi = 1024 ** 2;
const NOW = Date.parse('2026-01-01T00:00:00Z');

interface NodeOpts {
  labels?: Record<string, string>;
  taints?: V1Taint[];
  alloc?: Record<string, string>;
  ready?: 'True' | 'False' | 'Unknown' | 'none';
  unschedulable?: boolean;
}

function node(name: string, o: NodeOpts = {}): V1Node {
  return {
    metadata: { name, labels: { 'kubernetes.io/hostname': name, 'vmlet.io/schedulable': 'true', 'vmlet.io/kvm': 'true', ...o.labels } },
    spec: { ...(o.taints ? { taints: o.taints } : {}), ...(o.unschedulable ? { unschedulable: true } : {}) },
    status: {
      allocatable: { cpu: '8', memory: '16Gi', pods: '110', 'devices.vmlet.io/kvm': '1k', ...o.alloc },
      conditions: o.ready === 'none' ? [] : [{ type: 'Ready', status: o.ready ?? 'True' }],
    },
  };
}

function lease(nodeName: string, agoMs = 5000, duration: number | undefined = 40, renew: 'date' | 'string' = 'date'): V1Lease {
  const when = new Date(NOW - agoMs);
  return {
    metadata: { name: `vmlet-node-${nodeName}`, namespace: 'vmlet' },
    spec: {
      holderIdentity: nodeName,
      ...(duration === undefined ? {} : { leaseDurationSeconds: duration }),
      renewTime: renew === 'date' ? when : (when.toISOString() as unknown as Date),
    },
  };
}

function vmi(placement: Record<string, unknown> = {}, name = 'vm1'): PlacedVmi {
  return {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: 'default', uid: `uid-${name}` },
    spec: {
      terminationGracePeriodSeconds: 30,
      domain: {
        cpu: { sockets: 1, cores: 1, threads: 1 },
        memory: { guest: '1Gi' },
        machine: { type: 'q35' },
        devices: { autoattachSerialConsole: true, autoattachGraphicsDevice: false },
      },
      ...placement,
    },
  } as PlacedVmi;
}

const REQ: Requests = { milliCpu: 1000, memoryBytes: 1 * Gi, kvm: 1 };

function run(over: Partial<AssignNodeInput> & { nodes: V1Node[] }): Assignment {
  return assignNode({
    vmi: vmi(),
    requests: REQ,
    usage: new NodeUsage(),
    leases: over.nodes.map((n) => lease(n.metadata?.name ?? '')),
    emulation: false,
    now: NOW,
    ...over,
  });
}

function pod(name: string, nodeName: string | undefined, req: Record<string, string>, extra: Partial<V1Pod> = {}): V1Pod {
  return {
    metadata: { name, namespace: 'default', ...(extra.metadata ?? {}) },
    spec: { ...(nodeName ? { nodeName } : {}), containers: [{ name: 'c', resources: { requests: req } }], ...(extra.spec ?? {}) },
    ...(extra.status ? { status: extra.status } : {}),
  };
}

function reasonOf(a: Assignment): string | undefined {
  if ('node' in a) return undefined;
  const keys = Object.keys(a.unschedulable.reasons);
  return keys.length === 1 ? keys[0] : JSON.stringify(keys);
}

t.test('each predicate: a node that fails it is counted under its reason, the same node without the fault qualifies', async (t) => {
  const taint = (key: string, effect: string, value?: string): V1Taint => ({ key, effect, ...(value === undefined ? {} : { value }) });
  const cases: Array<{
    name: string;
    fail: Partial<AssignNodeInput> & { nodes: V1Node[] };
    pass: Partial<AssignNodeInput> & { nodes: V1Node[] };
    reason: string;
  }> = [
    { name: 'Ready False', fail: { nodes: [node('n', { ready: 'False' })] }, pass: { nodes: [node('n')] }, reason: REASONS.notReady },
    { name: 'Ready Unknown', fail: { nodes: [node('n', { ready: 'Unknown' })] }, pass: { nodes: [node('n')] }, reason: REASONS.notReady },
    { name: 'no Ready condition', fail: { nodes: [node('n', { ready: 'none' })] }, pass: { nodes: [node('n')] }, reason: REASONS.notReady },
    {
      name: 'cordoned, unless the unschedulable taint is tolerated',
      fail: { nodes: [node('n', { unschedulable: true })] },
      pass: { nodes: [node('n', { unschedulable: true })], vmi: vmi({ tolerations: [{ key: 'node.kubernetes.io/unschedulable', operator: 'Exists' }] }) },
      reason: REASONS.cordoned,
    },
    {
      name: 'nodeSelector',
      fail: { nodes: [node('n', { labels: { disk: 'hdd' } })], vmi: vmi({ nodeSelector: { disk: 'ssd' } }) },
      pass: { nodes: [node('n', { labels: { disk: 'ssd' } })], vmi: vmi({ nodeSelector: { disk: 'ssd' } }) },
      reason: REASONS.affinity,
    },
    {
      name: 'required node affinity (terms are ORed)',
      fail: {
        nodes: [node('n', { labels: { zone: 'c' } })],
        vmi: vmi({
          affinity: {
            nodeAffinity: {
              requiredDuringSchedulingIgnoredDuringExecution: {
                nodeSelectorTerms: [
                  { matchExpressions: [{ key: 'zone', operator: 'In', values: ['a'] }] },
                  { matchFields: [{ key: 'metadata.name', operator: 'In', values: ['m'] }] },
                ],
              },
            },
          },
        }),
      },
      pass: {
        nodes: [node('n', { labels: { zone: 'c' } })],
        vmi: vmi({
          affinity: {
            nodeAffinity: {
              requiredDuringSchedulingIgnoredDuringExecution: {
                nodeSelectorTerms: [
                  { matchExpressions: [{ key: 'zone', operator: 'In', values: ['a'] }] },
                  { matchFields: [{ key: 'metadata.name', operator: 'In', values: ['n'] }] },
                ],
              },
            },
          },
        }),
      },
      reason: REASONS.affinity,
    },
    {
      name: "a local PersistentVolume's node affinity (each volume's terms ORed, volumes ANDed)",
      fail: {
        nodes: [node('n', { labels: { zone: 'a' } })],
        volumeNodeTerms: [
          [{ matchExpressions: [{ key: 'zone', operator: 'In', values: ['a'] }] }],
          [{ matchFields: [{ key: 'metadata.name', operator: 'In', values: ['m'] }] }],
        ],
      },
      pass: {
        nodes: [node('n', { labels: { zone: 'a' } })],
        volumeNodeTerms: [
          [{ matchExpressions: [{ key: 'zone', operator: 'In', values: ['a'] }] }],
          [
            { matchFields: [{ key: 'metadata.name', operator: 'In', values: ['m'] }] },
            { matchExpressions: [{ key: 'kubernetes.io/hostname', operator: 'In', values: ['n'] }] },
          ],
        ],
      },
      reason: REASONS.volumeAffinity,
    },
    {
      name: 'untolerated NoSchedule taint',
      fail: { nodes: [node('n', { taints: [taint('kwok.x-k8s.io/node', 'NoSchedule', 'fake')] })] },
      pass: {
        nodes: [node('n', { taints: [taint('kwok.x-k8s.io/node', 'NoSchedule', 'fake')] })],
        vmi: vmi({ tolerations: [{ key: 'kwok.x-k8s.io/node', operator: 'Equal', value: 'fake', effect: 'NoSchedule' }] }),
      },
      reason: `${REASONS.taint} {kwok.x-k8s.io/node: fake}`,
    },
    {
      name: 'untolerated NoExecute taint without value; PreferNoSchedule is ignored',
      fail: { nodes: [node('n', { taints: [taint('dedicated', 'NoExecute'), taint('soft', 'PreferNoSchedule')] })] },
      pass: { nodes: [node('n', { taints: [taint('soft', 'PreferNoSchedule')] })] },
      reason: `${REASONS.taint} {dedicated: }`,
    },
    {
      name: 'no vmlet.io/schedulable=true label',
      fail: { nodes: [node('n', { labels: { 'vmlet.io/schedulable': 'false' } })] },
      pass: { nodes: [node('n')] },
      reason: REASONS.notVmlet,
    },
    { name: 'no heartbeat Lease', fail: { nodes: [node('n')], leases: [] }, pass: { nodes: [node('n')] }, reason: REASONS.noHeartbeat },
    {
      name: 'stale heartbeat (renewed 41 s ago, 40 s duration)',
      fail: { nodes: [node('n')], leases: [lease('n', 41_000)] },
      pass: { nodes: [node('n')], leases: [lease('n', 39_000, 40, 'string')] },
      reason: REASONS.noHeartbeat,
    },
    {
      name: 'heartbeat Lease of another namespace does not count',
      fail: { nodes: [node('n')], leases: [{ ...lease('n'), metadata: { name: 'vmlet-node-n', namespace: 'default' } }] },
      pass: { nodes: [node('n')], leases: [lease('n')] },
      reason: REASONS.noHeartbeat,
    },
    {
      name: 'no KVM label (fine under emulation)',
      fail: { nodes: [node('n', { labels: { 'vmlet.io/kvm': 'false' } })] },
      pass: {
        nodes: [node('n', { labels: { 'vmlet.io/kvm': 'false' }, alloc: { 'devices.vmlet.io/kvm': '0' } })],
        emulation: true,
        requests: { ...REQ, kvm: 0 },
      },
      reason: REASONS.noKvm,
    },
    {
      name: 'pods at allocatable',
      fail: { nodes: [node('n', { alloc: { pods: '1' } })], usage: NodeUsage.fromPods([pod('p', 'n', {})]) },
      pass: { nodes: [node('n', { alloc: { pods: '2' } })], usage: NodeUsage.fromPods([pod('p', 'n', {})]) },
      reason: REASONS.tooManyPods,
    },
    {
      name: 'cpu left',
      fail: { nodes: [node('n', { alloc: { cpu: '4' } })], usage: NodeUsage.fromPods([pod('p', 'n', { cpu: '3500m' })]) },
      pass: { nodes: [node('n', { alloc: { cpu: '4' } })], usage: NodeUsage.fromPods([pod('p', 'n', { cpu: '3' })]) },
      reason: REASONS.cpu,
    },
    {
      name: 'memory left',
      fail: { nodes: [node('n', { alloc: { memory: '2Gi' } })], usage: NodeUsage.fromPods([pod('p', 'n', { memory: '1025Mi' })]) },
      pass: { nodes: [node('n', { alloc: { memory: '2Gi' } })], usage: NodeUsage.fromPods([pod('p', 'n', { memory: '1Gi' })]) },
      reason: REASONS.memory,
    },
    {
      name: 'KVM devices left',
      fail: { nodes: [node('n', { alloc: { 'devices.vmlet.io/kvm': '1' } })], usage: NodeUsage.fromPods([pod('p', 'n', { 'devices.vmlet.io/kvm': '1' })]) },
      pass: { nodes: [node('n', { alloc: { 'devices.vmlet.io/kvm': '2' } })], usage: NodeUsage.fromPods([pod('p', 'n', { 'devices.vmlet.io/kvm': '1' })]) },
      reason: REASONS.kvmDevice,
    },
    {
      name: 'an allocatable that does not parse counts as none',
      fail: { nodes: [node('n', { alloc: { memory: 'lots' } })] },
      pass: { nodes: [node('n')] },
      reason: REASONS.memory,
    },
  ];
  for (const c of cases) {
    const failed = run(c.fail);
    t.equal(reasonOf(failed), c.reason, `${c.name}: reason`);
    if (!('node' in failed)) t.equal(failed.unschedulable.message, `0/1 nodes are available: 1 ${c.reason}.`, `${c.name}: message`);
    t.same(run(c.pass), { node: 'n' }, `${c.name}: passes without the fault`);
  }
});

t.test('requirement operators and tolerations follow Kubernetes', async (t) => {
  const r = (operator: string, values?: string[]) => ({ key: 'k', operator, ...(values ? { values } : {}) });
  t.ok(matchesRequirement(r('In', ['a', 'b']), 'b'));
  t.notOk(matchesRequirement(r('In', ['a']), undefined), 'In needs the label');
  t.ok(matchesRequirement(r('NotIn', ['a']), undefined), 'NotIn matches an absent label');
  t.notOk(matchesRequirement(r('NotIn', ['a']), 'a'));
  t.ok(matchesRequirement(r('Exists'), ''));
  t.notOk(matchesRequirement(r('Exists'), undefined));
  t.ok(matchesRequirement(r('DoesNotExist'), undefined));
  t.notOk(matchesRequirement(r('DoesNotExist'), 'x'));
  t.ok(matchesRequirement(r('Gt', ['4']), '8'));
  t.notOk(matchesRequirement(r('Gt', ['8']), '8'));
  t.ok(matchesRequirement(r('Lt', ['8']), '-1'));
  t.notOk(matchesRequirement(r('Lt', ['8']), 'eight'), 'Lt on a non-integer label matches nothing');
  t.notOk(matchesRequirement(r('Gt', ['1', '2']), '3'), 'Gt needs exactly one value');
  t.notOk(matchesRequirement(r('Like', ['a']), 'a'), 'unknown operator matches nothing');

  const tn: V1Taint = { key: 'gpu', value: 'yes', effect: 'NoSchedule' };
  t.ok(toleratesTaint({ key: 'gpu', operator: 'Equal', value: 'yes' }, tn), 'any effect');
  t.ok(toleratesTaint({ key: 'gpu', value: 'yes', effect: 'NoSchedule' }, tn), 'operator defaults to Equal');
  t.notOk(toleratesTaint({ key: 'gpu', value: 'no' }, tn), 'value differs');
  t.notOk(toleratesTaint({ key: 'gpu', operator: 'Exists', effect: 'NoExecute' }, tn), 'effect differs');
  t.ok(toleratesTaint({ operator: 'Exists' }, tn), 'empty key with Exists tolerates everything');
  t.notOk(toleratesTaint({ value: 'yes' }, tn), 'empty key with Equal is invalid');

  const matchFieldsOther = vmi({
    affinity: {
      nodeAffinity: {
        requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchFields: [{ key: 'metadata.uid', operator: 'In', values: ['n'] }] }] },
      },
    },
  });
  t.equal(reasonOf(run({ nodes: [node('n')], vmi: matchFieldsOther })), REASONS.affinity, 'matchFields knows only metadata.name');
  const emptyTerm = vmi({ affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{}] } } } });
  t.equal(reasonOf(run({ nodes: [node('n')], vmi: emptyTerm })), REASONS.affinity, 'an empty term matches nothing');
  const notInName = vmi({
    affinity: {
      nodeAffinity: {
        requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchFields: [{ key: 'metadata.name', operator: 'NotIn', values: ['a'] }] }] },
      },
    },
  });
  t.same(run({ nodes: [node('a'), node('b')], vmi: notInName }), { node: 'b' }, 'matchFields NotIn');
});

t.test('lease freshness', async (t) => {
  t.ok(leaseFresh(lease('n', 39_999), NOW));
  t.notOk(leaseFresh(lease('n', 40_000), NOW), 'renewTime + duration must be after now');
  t.ok(leaseFresh(lease('n', 30_000, undefined), NOW), 'no duration: 40 s');
  t.notOk(leaseFresh(lease('n', 50_000, undefined), NOW));
  t.notOk(leaseFresh({ metadata: { name: 'vmlet-node-n' }, spec: {} }, NOW), 'never renewed');
  t.notOk(leaseFresh(undefined, NOW));
});

t.test('the message: each node under its first failing reason, in the documented order', async (t) => {
  const nodes = [
    node('a', { labels: { zone: 'x' }, alloc: { memory: '1Gi' } }), // affinity first, though memory fails too
    node('b', { labels: { zone: 'x' } }),
    node('c', { labels: { zone: 'y' }, taints: [{ key: 'kwok.x-k8s.io/node', value: 'fake', effect: 'NoSchedule' }] }),
    node('d', { labels: { zone: 'y' } }),
    node('e', { labels: { zone: 'y' }, alloc: { memory: '512Mi' } }),
  ];
  const a = run({ nodes, vmi: vmi({ nodeSelector: { zone: 'y' } }), leases: ['a', 'b', 'c', 'e'].map((n) => lease(n)) });
  t.same(a, {
    unschedulable: {
      message:
        "0/5 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {kwok.x-k8s.io/node: fake}, 1 node(s) had no vmlet heartbeat, 1 Insufficient memory.",
      reasons: {
        "node(s) didn't match Pod's node affinity/selector": 2,
        'node(s) had untolerated taint {kwok.x-k8s.io/node: fake}': 1,
        'node(s) had no vmlet heartbeat': 1,
        'Insufficient memory': 1,
      },
    },
  });
  const all = run({
    nodes: [
      node('m', { alloc: { 'devices.vmlet.io/kvm': '0' } }),
      node('l', { alloc: { memory: '0' } }),
      node('k', { alloc: { cpu: '0' } }),
      node('j', { alloc: { pods: '0' } }),
      node('i', { labels: { 'vmlet.io/kvm': 'false' } }),
      node('h', { labels: { 'vmlet.io/schedulable': 'no' } }),
      node('g', { taints: [{ key: 'z', effect: 'NoSchedule' }] }),
      node('f', { taints: [{ key: 'a', effect: 'NoSchedule' }] }),
      node('e', { unschedulable: true }),
      node('d', { ready: 'False' }),
    ],
  });
  t.equal(
    'node' in all ? '' : all.unschedulable.message,
    '0/10 nodes are available: 1 node(s) were not ready, 1 node(s) were unschedulable, 1 node(s) had untolerated taint {a: }, 1 node(s) had untolerated taint {z: }, ' +
      '1 node(s) were not vmlet nodes (no label vmlet.io/schedulable=true), 1 node(s) had no KVM (no label vmlet.io/kvm=true), 1 Too many pods, 1 Insufficient cpu, ' +
      '1 Insufficient memory, 1 Insufficient devices.vmlet.io/kvm.',
    'fixed order whatever the node order; taints sorted by text',
  );
  t.same(run({ nodes: [] }), { unschedulable: { message: '0/0 nodes are available.', reasons: {} } }, 'no nodes at all');
});

t.test('pick: least loaded after placement, then fewer launchers, then name; independent of node order', async (t) => {
  const nodes = [node('c'), node('a'), node('b')];
  t.same(run({ nodes }), { node: 'a' }, 'equal empty nodes: first name');
  t.same(run({ nodes: [...nodes].reverse() }), { node: 'a' }, 'same answer in any order');
  const usage = NodeUsage.fromPods([pod('x', 'a', { cpu: '2' })]);
  t.same(run({ nodes, usage }), { node: 'b' }, 'a carries load');
  const big = node('big', { alloc: { cpu: '32', memory: '64Gi' } });
  t.same(
    run({ nodes: [node('a'), big], usage: NodeUsage.fromPods([pod('y', 'big', { cpu: '2', memory: '2Gi' })]) }),
    { node: 'big' },
    'fractions, not absolute amounts',
  );
  const launcher = pod('l', 'a', {}, { metadata: { name: 'l', labels: { 'vmlet.io/component': 'launcher' } } });
  t.same(run({ nodes: [node('a'), node('b')], usage: NodeUsage.fromPods([launcher]) }), { node: 'b' }, 'same load: fewer launcher pods wins');
});

t.test('spreading: 30 VMIs placed one after another over 3 equal nodes', async (t) => {
  const nodes = [node('n1', { alloc: { cpu: '16' } }), node('n2', { alloc: { cpu: '16' } }), node('n3', { alloc: { cpu: '16' } })];
  const leases = nodes.map((n) => lease(n.metadata?.name ?? ''));
  const usage = new NodeUsage();
  const counts: Record<string, number> = {};
  for (let i = 0; i < 30; i++) {
    const v = vmi({}, `vm${i}`);
    const rendered = renderLauncherPod({ vmi: v, nodeName: '', nameSuffix: 'abcde', image: 'vmlet:test' });
    const a = assignNode({ vmi: v, requests: podRequests(rendered), nodes, usage, leases, emulation: false, now: NOW });
    if (!('node' in a)) {
      t.fail(a.unschedulable.message);
      return;
    }
    counts[a.node] = (counts[a.node] ?? 0) + 1;
    usage.addPod({ ...rendered, spec: { ...rendered.spec!, nodeName: a.node } });
  }
  const values = Object.values(counts);
  t.equal(values.length, 3, 'all nodes used');
  t.ok(Math.max(...values) - Math.min(...values) <= 1, `counts ${JSON.stringify(counts)} differ by at most 1`);
  t.equal(usage.load('n1').launchers, counts['n1'], 'launchers counted');
});

t.test('podRequests: containers summed, init containers as a peak, sidecars, overhead, pod-level requests', async (t) => {
  const p: V1Pod = {
    metadata: { name: 'p', namespace: 'ns' },
    spec: {
      containers: [
        { name: 'a', resources: { requests: { cpu: '500m', memory: '1Gi' } } },
        { name: 'b', resources: { limits: { cpu: '1', memory: '512Mi', 'devices.vmlet.io/kvm': '1' } } },
      ],
      initContainers: [
        { name: 'side', restartPolicy: 'Always', resources: { requests: { cpu: '100m', memory: '64Mi' } } },
        { name: 'init', resources: { requests: { cpu: '3', memory: '256Mi' } } },
      ],
      overhead: { cpu: '10m', memory: '1Mi' },
    },
  };
  t.same(
    podRequests(p),
    { milliCpu: 3100 + 10, memoryBytes: 1024 * Mi + 512 * Mi + 64 * Mi + 1 * Mi, kvm: 1 },
    'cpu from the init peak (3 + sidecar), memory from the sum; limits stand in for missing requests',
  );
  const podLevel: V1Pod = { ...p, spec: { ...p.spec!, resources: { requests: { memory: '8Gi' } } } };
  t.equal(podRequests(podLevel).memoryBytes, 8 * Gi + 1 * Mi, 'pod-level memory replaces the container sum');
  t.equal(podRequests(podLevel).milliCpu, 3110, 'cpu unchanged');
  t.same(podRequests({ metadata: { name: 'e' } }), { milliCpu: 0, memoryBytes: 0, kvm: 0 }, 'no spec');
});

t.test('bad quantities are refused with INVALID_QUANTITY naming the pod and container', async (t) => {
  t.throws(
    () => podRequests(pod('bad', 'n', { memory: '1GB' })),
    { code: 'INVALID_QUANTITY', message: /default\/bad container "c": memory/ },
    'names pod, container and resource',
  );
  t.throws(() => podRequests(pod('neg', 'n', { cpu: '-1' })), { code: 'INVALID_QUANTITY', message: /out of range/ }, 'negative refused');
  const usage = NodeUsage.fromPods([pod('ok', 'n', { cpu: '1' })]);
  t.throws(() => usage.addPod(pod('ok', 'n', { cpu: 'x' })), { code: 'INVALID_QUANTITY' });
  t.equal(usage.load('n').requested.milliCpu, 1000, 'a refused update changes nothing');
  t.equal(usage.podCount, 1);
});

t.test('NodeUsage: upsert, terminal and unbound pods, remove', async (t) => {
  const usage = new NodeUsage();
  usage.addPod(pod('p1', 'n', { cpu: '1', memory: '1Gi' }));
  usage.addPod(pod('p2', 'n', { cpu: '2' }));
  usage.addPod(pod('u', undefined, { cpu: '5' }));
  usage.addPod(pod('done', 'n', { cpu: '5' }, { status: { phase: 'Succeeded' } }));
  t.same(usage.load('n'), { requested: { milliCpu: 3000, memoryBytes: Gi, kvm: 0 }, pods: 2, launchers: 0 }, 'unbound and Succeeded pods count nothing');
  usage.addPod(pod('p2', 'n', { cpu: '4' }));
  t.equal(usage.load('n').requested.milliCpu, 5000, 'addPod again replaces, not adds');
  usage.addPod(pod('p1', 'n', { cpu: '1', memory: '1Gi' }, { status: { phase: 'Failed' } }));
  t.same(usage.load('n'), { requested: { milliCpu: 4000, memoryBytes: 0, kvm: 0 }, pods: 1, launchers: 0 }, 'a pod that failed is taken out');
  usage.removePod(pod('p2', 'n', {}));
  t.same(usage.load('n'), { requested: { milliCpu: 0, memoryBytes: 0, kvm: 0 }, pods: 0, launchers: 0 });
  t.equal(usage.podCount, 0);
  usage.addPod(pod('m', 'n', { cpu: '1' }));
  usage.addPod(pod('m', 'other', { cpu: '1' }));
  t.equal(usage.load('n').pods, 0, 'a pod seen on another node moves');
  t.equal(usage.load('other').pods, 1);
});

t.test('speed: 1,000 placements over 100 nodes', async (t) => {
  const nodes = Array.from({ length: 100 }, (_, i) => node(`node-${String(i).padStart(3, '0')}`, { alloc: { cpu: '64', memory: '256Gi' } }));
  const leases = nodes.map((n) => lease(n.metadata?.name ?? ''));
  const usage = new NodeUsage();
  const v = vmi({ tolerations: [{ key: 'x', operator: 'Exists' }], nodeSelector: { 'vmlet.io/schedulable': 'true' } });
  const start = process.hrtime.bigint();
  let placed = 0;
  for (let i = 0; i < 1000; i++) {
    const a = assignNode({ vmi: v, requests: REQ, nodes, usage, leases, emulation: false, now: NOW });
    if (!('node' in a)) break;
    placed++;
    usage.addPod(
      pod(
        `p${i}`,
        a.node,
        { cpu: '1', memory: '1Gi', 'devices.vmlet.io/kvm': '1' },
        { metadata: { name: `p${i}`, labels: { 'vmlet.io/component': 'launcher' } } },
      ),
    );
  }
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  t.comment(`1,000 placements over 100 nodes: ${ms.toFixed(1)} ms`);
  t.equal(placed, 1000, 'all placed');
  t.ok(ms < 2000, `took ${ms.toFixed(1)} ms`);
  const perNode = nodes.map((n) => usage.load(n.metadata?.name ?? '').pods);
  t.equal(Math.max(...perNode) - Math.min(...perNode), 0, 'spread evenly: 10 per node');
});
