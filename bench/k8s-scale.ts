// The controller alone against many simulated nodes: N VMIs created at once, time until every launcher pod is bound (and run by kwok), per-VMI latency, the controller's RSS and CPU, and how evenly the VMIs spread.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { CoordinationV1Api, Watch, type V1Pod } from '@kubernetes/client-node';
import { microTime } from '../src/controller/leader-election.js';
import { benchCluster, GROUP, MERGE, seconds, setClusterConfig, startController, tempDir } from './k8s-cluster.js';
import { percentile, progress, rssKiB, sleep } from './support.js';

const NODE_PREFIX = 'vmlet-scale-';

function cpuMs(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
}

function node(name: string): object {
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: {
      name,
      annotations: { 'kwok.x-k8s.io/node': 'fake', 'node.alpha.kubernetes.io/ttl': '0' },
      labels: { type: 'kwok', 'kubernetes.io/hostname': name, 'vmlet.io/schedulable': 'true', 'vmlet.io/kvm': 'false' },
    },
    status: { allocatable: { cpu: '32', memory: '256Gi', pods: '110' }, capacity: { cpu: '32', memory: '256Gi', pods: '110' } },
  };
}

export async function run(opts: { json: boolean; args?: string[] }): Promise<void> {
  const nodes = Number(opts.args?.find((a) => a.startsWith('--nodes='))?.slice(8) ?? 100);
  const count = Number(opts.args?.find((a) => a.startsWith('--vmis='))?.slice(7) ?? 1000);
  const parallel = 50;
  const bc = await benchCluster({ kwok: true, image: false });
  const dir = tempDir('k8s-scale');
  const ns = `scale-${randomBytes(3).toString('hex')}`;
  const names = Array.from({ length: nodes }, (_, i) => `${NODE_PREFIX}${i}`);
  const coord = bc.kc.makeApiClient(CoordinationV1Api);
  const beat = async (): Promise<void> => {
    await Promise.all(
      names.map(async (n) => {
        const name = `vmlet-node-${n}`;
        const spec = { holderIdentity: n, leaseDurationSeconds: 40, renewTime: microTime(Date.now()) };
        await coord.patchNamespacedLease({ name, namespace: 'vmlet', body: { spec } }, MERGE).catch(async () => {
          await coord.createNamespacedLease({ namespace: 'vmlet', body: { metadata: { name }, spec: { holderIdentity: n } } }).catch(() => undefined);
          await coord.patchNamespacedLease({ name, namespace: 'vmlet', body: { spec } }, MERGE);
        });
      }),
    );
  };
  progress(`${nodes} simulated nodes with vmlet heartbeats`);
  for (const n of names) await bc.core.createNode({ body: node(n) }).catch(() => undefined);
  await beat();
  const beating = setInterval(() => void beat().catch(() => undefined), 10_000);
  await bc.core.createNamespace({ body: { metadata: { name: ns } } });
  await setClusterConfig(bc.core, 'useEmulation: true\n');
  const controller = await startController(bc, dir);
  const result: Record<string, unknown> = { nodes, vmis: count };
  try {
    await sleep(3000); // the controller's caches
    const created = new Map<string, number>();
    const bound = new Map<string, number>();
    const running = new Map<string, number>();
    const perNode = new Map<string, number>();
    const watch = await new Watch(bc.kc).watch(
      `/api/v1/namespaces/${ns}/pods`,
      {},
      (type: string, pod: V1Pod) => {
        const vmi = pod.metadata?.labels?.['vmlet.io/vmi-name'];
        if (!vmi || type === 'DELETED') return;
        const now = performance.now();
        if (pod.spec?.nodeName && !bound.has(vmi)) {
          bound.set(vmi, now);
          perNode.set(pod.spec.nodeName, (perNode.get(pod.spec.nodeName) ?? 0) + 1);
        }
        if (pod.status?.phase === 'Running' && !running.has(vmi)) running.set(vmi, now);
      },
      () => undefined,
    );
    let peakRss = rssKiB(controller.pid);
    const sampler = setInterval(() => (peakRss = Math.max(peakRss, rssKiB(controller.pid))), 250);
    const cpu0 = cpuMs(controller.pid);
    const rss0 = rssKiB(controller.pid);
    progress(`${count} VMIs at once (${parallel} creates in flight)`);
    const t0 = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: parallel }, async () => {
        while (next < count) {
          const name = `vm-${next++}`;
          created.set(name, performance.now());
          await bc.custom.createNamespacedCustomObject({
            ...GROUP,
            plural: 'virtualmachineinstances',
            namespace: ns,
            body: {
              apiVersion: 'vmlet.io/v1alpha1',
              kind: 'VirtualMachineInstance',
              metadata: { name, namespace: ns },
              spec: { domain: { memory: { guest: '128Mi' } } },
            },
          });
        }
      }),
    );
    const createdAll = performance.now() - t0;
    const deadline = Date.now() + 600_000;
    while (bound.size < count && Date.now() < deadline) await sleep(100);
    const boundAll = performance.now() - t0;
    while (running.size < count && Date.now() < deadline) await sleep(100);
    const runningAll = performance.now() - t0;
    clearInterval(sampler);
    const cpu = cpuMs(controller.pid) - cpu0;
    watch.abort();
    const lat = [...bound].map(([n, at]) => at - created.get(n)!);
    const counts = [...perNode.values()];
    Object.assign(result, {
      created_all_s: seconds(createdAll),
      bound_all_s: seconds(boundAll),
      running_all_s: seconds(runningAll),
      bound: bound.size,
      per_vmi_bind_ms: { p50: Math.round(percentile(lat, 50)), p95: Math.round(percentile(lat, 95)) },
      controller: { rss_before_kib: rss0, rss_peak_kib: peakRss, cpu_ms: Math.round(cpu) },
      spread: { nodes_used: counts.length, max_per_node: Math.max(...counts), min_per_node: counts.length < nodes ? 0 : Math.min(...counts) },
    });
  } finally {
    progress('cleaning up (the nodes and Leases, then the namespace)');
    clearInterval(beating);
    // Nodes first: no daemon runs on them, and the controller releases a node's finalizer once its Node is gone.
    for (const n of names) {
      await bc.core.deleteNode({ name: n }).catch(() => undefined);
      await coord.deleteNamespacedLease({ name: `vmlet-node-${n}`, namespace: 'vmlet' }).catch(() => undefined);
    }
    await bc.core.deleteNamespace({ name: ns }).catch(() => undefined);
    for (let i = 0; i < 600; i++) {
      if (!(await bc.core.readNamespace({ name: ns }).catch(() => undefined))) break;
      await sleep(1000);
    }
    await controller.stop();
    await bc.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    return;
  }
  const r = result as {
    bound_all_s: number;
    running_all_s: number;
    created_all_s: number;
    per_vmi_bind_ms: { p50: number; p95: number };
    controller: { rss_before_kib: number; rss_peak_kib: number; cpu_ms: number };
    spread: { nodes_used: number; max_per_node: number; min_per_node: number };
  };
  process.stdout.write(
    [
      `k8s-scale: ${count} VMIs over ${nodes} simulated nodes`,
      `  all created ${r.created_all_s} s, all launcher pods bound ${r.bound_all_s} s, all Running (kwok) ${r.running_all_s} s`,
      `  per VMI create → pod bound: p50 ${r.per_vmi_bind_ms.p50} ms, p95 ${r.per_vmi_bind_ms.p95} ms`,
      `  controller RSS ${r.controller.rss_before_kib} → peak ${r.controller.rss_peak_kib} KiB, CPU ${r.controller.cpu_ms} ms`,
      `  spread: ${r.spread.nodes_used} nodes used, ${r.spread.min_per_node}–${r.spread.max_per_node} VMIs per node`,
      '',
    ].join('\n'),
  );
}
