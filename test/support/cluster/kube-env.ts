// Cluster mode on the test cluster for one test file: vmlet's CRDs and cluster config, the node daemon as a process of its own (as in the DaemonSet), the controller in this process, a fresh namespace, and helpers to read VMIs, pods and consoles.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CoreV1Api, CustomObjectsApi, KubeConfig, PatchStrategy, setHeaderOptions, type V1Pod } from '@kubernetes/client-node';
import pino from 'pino';
import YAML from 'yaml';
import { runController, type RunningController } from '../../../src/controller/main.js';
import { REPO_ROOT, type Cluster } from '../cluster.js';
import { buildWorkingTree, IMAGE_TAG } from './deploy.js';
import { waitFor } from './exec.js';

export const MERGE = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
export const GROUP = { group: 'vmlet.io', version: 'v1alpha1' };
export const VMLET_IMAGE = `localhost/vmlet:${IMAGE_TAG}`;
const CLI = path.join(REPO_ROOT, 'dist', 'cli', 'main.js');

export type Obj = { metadata: { name: string; uid: string; labels?: Record<string, string> }; status?: Record<string, unknown> };
export type VmiStatus = {
  phase?: string;
  reason?: string;
  message?: string;
  nodeName?: string;
  interfaces?: Array<{ ipAddress?: string }>;
  conditions?: Array<Record<string, string>>;
  volumeStatus?: Array<Record<string, unknown>>;
  vmlet?: { qemuPid?: number };
};

export interface KubeEnv {
  core: CoreV1Api;
  custom: CustomObjectsApi;
  ns: string;
  /** The node daemon's run dir: its socket, log and `pods/<pod uid>/` (each launcher pod's emptyDir, as the daemon sees it). */
  runDir: string;
  logFile: string;
  startDaemon(): Promise<void>;
  killDaemon(): Promise<void>;
  getVmi(name: string): Promise<Obj | undefined>;
  status(o: Obj | undefined): VmiStatus;
  podOf(vmiUid: string): Promise<V1Pod | undefined>;
  /** The folder of a launcher pod's emptyDir as the daemon reaches it. */
  podRunDir(pod: V1Pod): string;
  consoleOf(pod: V1Pod): string;
  /** `vmlet --socket <node socket> -n <ns> ARGS` with `input` on stdin; resolves with the exit code and output. */
  nodeCli(args: string[], input?: string): Promise<{ code: number | null; out: string }>;
  /** Waits until VMI `name` is Running (a new one when `notUid` is given); fails early with its status when it fails. */
  running(name: string, timeoutMs?: number, notUid?: string): Promise<Obj>;
}

export interface KubeEnvOptions {
  /** Extra keys of the cluster config (vmlet.yaml in the ConfigMap vmlet/vmlet-config). */
  clusterConfig?: Record<string, unknown>;
  namePrefix?: string;
}

/** Sets it all up on `c` (building vmlet's image into the node when it lacks it) and tears it down with `t`. */
export async function kubeEnv(
  t: { teardown(fn: () => Promise<void> | void): void; comment(...a: unknown[]): void },
  c: Cluster,
  o: KubeEnvOptions = {},
): Promise<KubeEnv> {
  const images = JSON.stringify(await c.kubectl(['get', 'node', '-o', 'jsonpath={.status.images}']));
  if (!images.includes(VMLET_IMAGE) || process.env.VMLET_REBUILD_IMAGE === '1') {
    const archive = await buildWorkingTree((m) => t.comment(m));
    await c.load(archive);
  }
  const kc = new KubeConfig();
  kc.loadFromFile(c.kubeconfigPath);
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const ns = `${o.namePrefix ?? 'e2e'}-${randomBytes(3).toString('hex')}`;
  const log = pino({ level: process.env.VMLET_TEST_LOG ?? 'silent' });
  await core.createNamespace({ body: { metadata: { name: ns } } });
  await core.createNamespace({ body: { metadata: { name: 'vmlet' } } }).catch(() => undefined);
  await c.installCrds();
  const clusterConfig = YAML.stringify({ useEmulation: true, ...o.clusterConfig });
  await core
    .createNamespacedConfigMap({ namespace: 'vmlet', body: { metadata: { name: 'vmlet-config' }, data: { 'vmlet.yaml': clusterConfig } } })
    .catch(() => core.patchNamespacedConfigMap({ name: 'vmlet-config', namespace: 'vmlet', body: { data: { 'vmlet.yaml': clusterConfig } } }, MERGE));

  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-kube-'));
  const configFile = path.join(runDir, 'vmlet.yaml');
  fs.writeFileSync(
    configFile,
    YAML.stringify({ mode: 'kubernetes', kubeletRootDir: c.paths.kubeletRoot, stateDir: path.join(runDir, 'state'), useEmulation: true, logLevel: 'debug' }),
  );
  const logFile = path.join(runDir, 'daemon.log');
  const socket = path.join(runDir, 'vmlet.sock');
  let daemon: ChildProcess | undefined;
  let ctl: RunningController | undefined;

  const env: KubeEnv = {
    core,
    custom,
    ns,
    runDir,
    logFile,
    async startDaemon() {
      const fd = fs.openSync(logFile, 'a');
      const child = spawn(
        process.execPath,
        [CLI, 'daemon', '--config', configFile, '--kubeconfig', c.kubeconfigPath, '--socket', socket, '--run-dir', runDir],
        {
          stdio: ['ignore', fd, fd],
          env: { ...process.env, NODE_NAME: c.config.node },
        },
      );
      fs.closeSync(fd);
      daemon = child;
      await waitFor('the node daemon ready', 60_000, async () => {
        if (child.exitCode !== null) throw new Error(`the node daemon exited: ${fs.readFileSync(logFile, 'utf8').slice(-2000)}`);
        return fs.readFileSync(logFile, 'utf8').includes('vmlet node daemon ready') ? true : undefined;
      });
    },
    async killDaemon() {
      const d = daemon;
      if (!d || d.exitCode !== null) return;
      const gone = new Promise((r) => d.once('exit', r));
      d.kill('SIGKILL');
      await gone;
    },
    async getVmi(name) {
      return (await custom.getNamespacedCustomObject({ ...GROUP, plural: 'virtualmachineinstances', namespace: ns, name }).catch(() => undefined)) as
        Obj | undefined;
    },
    status: (v) => (v?.status ?? {}) as VmiStatus,
    async podOf(uid) {
      return (await core.listNamespacedPod({ namespace: ns, labelSelector: `vmlet.io/vmi-uid=${uid}` })).items.find((p) => !p.metadata?.deletionTimestamp);
    },
    podRunDir: (pod) => path.join(runDir, 'pods', pod.metadata!.uid!),
    consoleOf(pod) {
      try {
        return fs.readFileSync(path.join(env.podRunDir(pod), 'console.log'), 'utf8');
      } catch {
        return '';
      }
    },
    nodeCli(args, input) {
      return new Promise((resolve) => {
        const p = spawn(process.execPath, [CLI, '--socket', socket, '-n', ns, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
        let out = '';
        p.stdout.on('data', (b: Buffer) => (out += b.toString()));
        p.stderr.on('data', (b: Buffer) => (out += b.toString()));
        p.on('close', (code) => resolve({ code, out }));
        p.stdin.end(input ?? '');
      });
    },
    async running(name, timeoutMs = 240_000, notUid) {
      return waitFor(`VMI ${name} Running`, timeoutMs, async () => {
        const v = await env.getVmi(name);
        const s = env.status(v);
        if (v && v.metadata.uid !== notUid && s.phase === 'Failed') throw new Error(`VMI ${name} failed: ${s.reason ?? ''} ${s.message ?? ''}`);
        return v && v.metadata.uid !== notUid && s.phase === 'Running' ? v : undefined;
      });
    },
  };

  t.teardown(async () => {
    await c.kubectl(['delete', 'namespace', ns, '--wait=true', '--timeout=90s']).catch(() => undefined);
    await ctl?.close().catch(() => undefined);
    await env.killDaemon();
    await core
      .patchNode({ name: c.config.node, body: { metadata: { labels: { 'vmlet.io/schedulable': null, 'vmlet.io/kvm': null } } } }, MERGE)
      .catch(() => undefined);
    if (process.env.VMLET_KEEP_LOGS !== '1') fs.rmSync(runDir, { recursive: true, force: true });
  });
  await env.startDaemon();
  ctl = await runController({
    kubeconfig: c.kubeconfigPath,
    identity: 'e2e',
    image: VMLET_IMAGE,
    imagePullPolicy: 'Never',
    healthPort: 0,
    webhook: false,
    logger: log.child({ part: 'controller' }),
  });
  return env;
}
