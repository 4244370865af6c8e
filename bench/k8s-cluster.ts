// What the cluster benchmarks share: the test cluster (the running one, or one started for the run), vmlet's image on it, the controller and node daemon as processes, and the API server's request counter.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CoreV1Api, CustomObjectsApi, KubeConfig, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import YAML from 'yaml';
import { Cluster, clusterSkipReason, DEFAULT_ROOT, downAt } from '../test/support/cluster.js';
import { buildWorkingTree, IMAGE_TAG } from '../test/support/cluster/deploy.js';
import { progress, root, sleep } from './support.js';

export const MERGE = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
export const GROUP = { group: 'vmlet.io', version: 'v1alpha1' };
export const IMAGE = `localhost/vmlet:${IMAGE_TAG}`;
const CLI = path.join(root, 'dist', 'cli', 'main.js');

export interface BenchCluster {
  cluster: Cluster;
  kc: KubeConfig;
  core: CoreV1Api;
  custom: CustomObjectsApi;
  /** Takes the cluster down again when the benchmark started it. */
  close(): Promise<void>;
}

/** The cluster of `npm run cluster -- up` when it runs (with kwok when `kwok`), else one started now and taken down in close(). */
export async function benchCluster(opts: { kwok: boolean; image: boolean }): Promise<BenchCluster> {
  process.env.VMLET_K8S_ASSETS ??= path.resolve(root, '..', 'shared', 'k8s');
  const reason = clusterSkipReason();
  if (reason) throw new Error(`cannot run the cluster: ${reason}`);
  const running = Cluster.attach(DEFAULT_ROOT);
  const usable = running && running.status().every((s) => s.running) && (!opts.kwok || running.config.simulatedNodes > 0);
  const cluster = usable ? running : await Cluster.up({ simulatedNodes: opts.kwok ? 1 : 0, log: progress });
  progress(usable ? `using the running cluster at ${DEFAULT_ROOT}` : 'started a cluster for this run');
  const kc = new KubeConfig();
  kc.loadFromFile(cluster.kubeconfigPath);
  if (opts.image) {
    const images = await cluster.kubectl(['get', 'node', cluster.config.node, '-o', 'jsonpath={.status.images}']);
    if (!images.includes(IMAGE) || process.env.VMLET_REBUILD_IMAGE === '1') await cluster.load(await buildWorkingTree(progress));
  }
  await cluster.kubectl([
    'apply',
    '-f',
    path.join(root, 'deploy/crds/virtualmachines.yaml'),
    '-f',
    path.join(root, 'deploy/crds/virtualmachineinstances.yaml'),
  ]);
  const core = kc.makeApiClient(CoreV1Api);
  await core.createNamespace({ body: { metadata: { name: 'vmlet' } } }).catch(() => undefined);
  return {
    cluster,
    kc,
    core,
    custom: kc.makeApiClient(CustomObjectsApi),
    async close() {
      if (!usable) await downAt(DEFAULT_ROOT, progress);
    },
  };
}

/** Sets the cluster config (ConfigMap vmlet/vmlet-config). */
export async function setClusterConfig(core: CoreV1Api, text: string): Promise<void> {
  const data = { 'vmlet.yaml': text };
  await core
    .createNamespacedConfigMap({ namespace: 'vmlet', body: { metadata: { name: 'vmlet-config' }, data } })
    .catch(() => core.patchNamespacedConfigMap({ name: 'vmlet-config', namespace: 'vmlet', body: { data } }, MERGE));
}

export interface VmletProcess {
  proc: ChildProcess;
  pid: number;
  stop(): Promise<void>;
}

async function spawnVmlet(args: string[], env: NodeJS.ProcessEnv, ready: RegExp, logFile: string): Promise<VmletProcess> {
  const fd = fs.openSync(logFile, 'a');
  const proc = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', fd, fd], env: { ...process.env, ...env } });
  fs.closeSync(fd);
  const until = Date.now() + 60_000;
  while (!ready.test(fs.readFileSync(logFile, 'utf8'))) {
    if (proc.exitCode !== null || Date.now() > until) {
      proc.kill('SIGKILL');
      throw new Error(`vmlet ${args[0]} did not start: ${fs.readFileSync(logFile, 'utf8').slice(-1500)}`);
    }
    await sleep(100);
  }
  return {
    proc,
    pid: proc.pid!,
    async stop() {
      if (proc.exitCode !== null) return;
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await Promise.race([gone, sleep(10_000).then(() => proc.kill('SIGKILL'))]);
    },
  };
}

/** `vmlet controller` as its own process (no webhook: the benchmark measures placement and pods). */
export function startController(bc: BenchCluster, dir: string): Promise<VmletProcess> {
  return spawnVmlet(
    ['controller', '--kubeconfig', bc.cluster.kubeconfigPath],
    { VMLET_IMAGE: IMAGE, VMLET_IMAGE_PULL_POLICY: 'Never', VMLET_WEBHOOK: 'off', POD_NAME: `bench-${process.pid}`, VMLET_HEALTH_PORT: '0' },
    /became the leader/,
    path.join(dir, 'controller.log'),
  );
}

/** `vmlet daemon --mode kubernetes` for the real node, as its own process. */
export function startNodeDaemon(bc: BenchCluster, dir: string): Promise<VmletProcess> {
  const config = path.join(dir, 'node.yaml');
  fs.writeFileSync(
    config,
    YAML.stringify({ mode: 'kubernetes', kubeletRootDir: bc.cluster.paths.kubeletRoot, stateDir: path.join(dir, 'state'), logLevel: 'info' }),
  );
  return spawnVmlet(
    ['daemon', '--config', config, '--kubeconfig', bc.cluster.kubeconfigPath, '--socket', path.join(dir, 'vmlet.sock'), '--run-dir', path.join(dir, 'run')],
    { NODE_NAME: bc.cluster.config.node, VMLET_LOG_LEVEL: 'info' },
    /vmlet node daemon ready/,
    path.join(dir, 'daemon.log'),
  );
}

/** The API server's total of handled requests (its `apiserver_request_total` counter, summed). */
export async function apiRequests(bc: BenchCluster): Promise<number> {
  const text = await bc.cluster.kubectl(['get', '--raw', '/metrics']);
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith('apiserver_request_total{')) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  return sum;
}

export function tempDir(name: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `vmlet-bench-${name}-`));
}

export const seconds = (ms: number): number => +(ms / 1000).toFixed(2);
