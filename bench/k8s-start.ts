// VMI create → Running on the test cluster (controller and node daemon as processes, the guest in its launcher pod), against a plain pod of the same image as the floor; RSS of both processes with 0 and N VMIs, and the API requests one start costs.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import type { CoreV1Api, CustomObjectsApi, V1Pod } from '@kubernetes/client-node';
import {
  apiRequests,
  benchCluster,
  GROUP,
  IMAGE,
  seconds,
  setClusterConfig,
  startController,
  startNodeDaemon,
  tempDir,
  type BenchCluster,
} from './k8s-cluster.js';
import { percentile, progress, rssKiB, sleep } from './support.js';

const DEADLINE_MS = Number(process.env['VMLET_BENCH_DEADLINE_MS'] ?? 300_000);

function vmi(name: string, ns: string): object {
  return {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: ns },
    // 50m: a 2-core test node then holds the 40 VMIs of one run (launcher pods request 100m per vCPU by default).
    spec: {
      terminationGracePeriodSeconds: 0,
      domain: { cpu: { cores: 1 }, memory: { guest: '64Mi' }, resources: { requests: { cpu: '50m' } }, devices: { autoattachSerialConsole: true } },
    },
  };
}

function floorPod(name: string, ns: string): V1Pod {
  return {
    metadata: { name, namespace: ns },
    spec: {
      restartPolicy: 'Never',
      terminationGracePeriodSeconds: 0,
      automountServiceAccountToken: false,
      containers: [{ name: 'main', image: IMAGE, imagePullPolicy: 'Never', command: ['/bin/sleep', '3600'] }],
    },
  };
}

async function until<T>(what: string, check: () => Promise<T | undefined>, deadlineMs = DEADLINE_MS): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const v = await check().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`${what}: not within ${deadlineMs / 1000} s`);
    await sleep(25);
  }
}

async function vmiRunning(custom: CustomObjectsApi, ns: string, name: string): Promise<true | undefined> {
  const o = (await custom.getNamespacedCustomObject({ ...GROUP, plural: 'virtualmachineinstances', namespace: ns, name })) as { status?: { phase?: string } };
  if (o.status?.phase === 'Failed') throw new Error(`VMI ${name} failed`);
  return o.status?.phase === 'Running' ? true : undefined;
}

async function startVmi(bc: BenchCluster, ns: string, name: string): Promise<number> {
  const t0 = performance.now();
  await bc.custom.createNamespacedCustomObject({ ...GROUP, plural: 'virtualmachineinstances', namespace: ns, body: vmi(name, ns) });
  await until(`VMI ${name} Running`, () => vmiRunning(bc.custom, ns, name));
  return performance.now() - t0;
}

async function startPod(core: CoreV1Api, ns: string, name: string): Promise<number> {
  const t0 = performance.now();
  await core.createNamespacedPod({ namespace: ns, body: floorPod(name, ns) });
  await until(`pod ${name} Running`, async () => ((await core.readNamespacedPod({ name, namespace: ns })).status?.phase === 'Running' ? true : undefined));
  return performance.now() - t0;
}

function stats(xs: number[]): { p50_ms: number; p95_ms: number; n: number } {
  return { p50_ms: Math.round(percentile(xs, 50)), p95_ms: Math.round(percentile(xs, 95)), n: xs.length };
}

export async function run(opts: { json: boolean; args?: string[] }): Promise<void> {
  const n = Number(opts.args?.find((a) => a.startsWith('--count='))?.slice(8) ?? 10);
  const rssCount = Number(opts.args?.find((a) => a.startsWith('--rss-count='))?.slice(12) ?? 20);
  const bc = await benchCluster({ kwok: false, image: true });
  const dir = tempDir('k8s-start');
  const ns = `bench-${randomBytes(3).toString('hex')}`;
  await bc.core.createNamespace({ body: { metadata: { name: ns } } });
  await setClusterConfig(bc.core, 'useEmulation: true\n');
  const daemon = await startNodeDaemon(bc, dir);
  const controller = await startController(bc, dir);
  const result: Record<string, unknown> = { image: IMAGE };
  try {
    await sleep(2000); // the node's heartbeat Lease and labels
    const rss0 = { controller_kib: rssKiB(controller.pid), daemon_kib: rssKiB(daemon.pid) };
    // One of each first: image and caches warm, as in a cluster that runs.
    await startPod(bc.core, ns, 'warm-pod');
    await startVmi(bc, ns, 'warm-vmi');

    progress(`${n} plain pods, one after another`);
    const podSeq: number[] = [];
    for (let i = 0; i < n; i++) podSeq.push(await startPod(bc.core, ns, `pod-s${i}`));
    progress(`${n} VMIs, one after another`);
    const quiet0 = await apiRequests(bc);
    await sleep(5000);
    const quietPerSecond = ((await apiRequests(bc)) - quiet0) / 5;
    const vmiSeq: number[] = [];
    const req0 = await apiRequests(bc);
    const t0 = performance.now();
    for (let i = 0; i < n; i++) vmiSeq.push(await startVmi(bc, ns, `vmi-s${i}`));
    const seqSeconds = (performance.now() - t0) / 1000;
    const reqPerStart = ((await apiRequests(bc)) - req0 - quietPerSecond * seqSeconds) / n;
    progress(`${n} plain pods and ${n} VMIs, all at once`);
    const podCon = await Promise.all(Array.from({ length: n }, (_, i) => startPod(bc.core, ns, `pod-c${i}`)));
    const vmiCon = await Promise.all(Array.from({ length: n }, (_, i) => startVmi(bc, ns, `vmi-c${i}`)));
    const running = 2 * n + 1;
    for (let i = running; i < rssCount; i++) await startVmi(bc, ns, `vmi-r${i}`);
    const vmis = Math.max(running, rssCount);
    const rssN = { vmis, controller_kib: rssKiB(controller.pid), daemon_kib: rssKiB(daemon.pid) };
    const seq = { vmi: stats(vmiSeq), pod: stats(podSeq) };
    const con = { vmi: stats(vmiCon), pod: stats(podCon) };
    Object.assign(result, {
      sequential: { ...seq, ratio_vs_pod: +(seq.vmi.p50_ms / seq.pod.p50_ms).toFixed(2) },
      concurrent: { ...con, ratio_vs_pod: +(con.vmi.p50_ms / con.pod.p50_ms).toFixed(2) },
      rss: { idle: rss0, loaded: rssN },
      api_requests_per_vmi_start: Math.round(reqPerStart),
      api_requests_quiet_per_second: +quietPerSecond.toFixed(1),
      sequential_total_s: seconds(seqSeconds * 1000),
    });
  } finally {
    progress('cleaning up');
    await bc.core.deleteNamespace({ name: ns }).catch(() => undefined);
    await until('the namespace gone', async () => ((await bc.core.readNamespace({ name: ns }).catch(() => undefined)) ? undefined : true), 180_000).catch(
      () => undefined,
    );
    await controller.stop();
    await daemon.stop();
    await bc.close();
    if (process.env.VMLET_BENCH_KEEP === '1') progress(`logs kept in ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    return;
  }
  const s = result['sequential'] as { vmi: { p50_ms: number; p95_ms: number }; pod: { p50_ms: number; p95_ms: number }; ratio_vs_pod: number };
  const c = result['concurrent'] as typeof s;
  const rss = result['rss'] as { idle: Record<string, number>; loaded: Record<string, number> };
  process.stdout.write(
    [
      `k8s-start (${n} each; image ${IMAGE})`,
      `  sequential   VMI p50 ${s.vmi.p50_ms} ms p95 ${s.vmi.p95_ms} ms | pod p50 ${s.pod.p50_ms} ms p95 ${s.pod.p95_ms} ms | ratio_vs_pod ${s.ratio_vs_pod}`,
      `  concurrent   VMI p50 ${c.vmi.p50_ms} ms p95 ${c.vmi.p95_ms} ms | pod p50 ${c.pod.p50_ms} ms p95 ${c.pod.p95_ms} ms | ratio_vs_pod ${c.ratio_vs_pod}`,
      `  RSS          controller ${rss.idle['controller_kib']} → ${rss.loaded['controller_kib']} KiB, daemon ${rss.idle['daemon_kib']} → ${rss.loaded['daemon_kib']} KiB (0 → ${rss.loaded['vmis']} VMIs)`,
      `  API requests per VMI start: ${String(result['api_requests_per_vmi_start'])} (quiet cluster: ${String(result['api_requests_quiet_per_second'])}/s subtracted)`,
      '',
    ].join('\n'),
  );
}
