// Cluster mode on the test cluster for one test file: vmlet's CRDs and cluster config, the node daemon as a process of its own (as in the DaemonSet), the controller in this process, a fresh namespace, and helpers to read VMIs, pods and consoles.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
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

export type Obj = {
  metadata: { name: string; uid: string; labels?: Record<string, string>; finalizers?: string[]; deletionTimestamp?: string };
  status?: Record<string, unknown>;
};
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
  /** The in-process controller's log (level $VMLET_TEST_LOG, default debug); kept with the run dir by VMLET_KEEP_LOGS=1. */
  controllerLogFile: string;
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
  /** `vmlet --socket <node socket> -n <ns> console NAME`, held open: what it prints, typing, detaching. */
  nodeConsole(name: string): NodeConsole;
  /** GET `urlPath` on the node daemon's socket (e.g. /debug/start-traces); the parsed JSON. */
  nodeGet(urlPath: string): Promise<unknown>;
  /**
   * Where a VMI's start went, one line per event, in time order, in seconds since the VMI's creation: its namespace and
   * the namespace's default ServiceAccount, the VMI's phases, its launcher pod (created, conditions, container started),
   * the namespace's Events, the controller's log lines about it and the daemon's start trace.
   */
  timeline(namespace: string, name: string): Promise<string[]>;
  /**
   * After an API server outage: waits until the cluster's own components watch again (kube-controller-manager gives a
   * new namespace its default ServiceAccount, the kubelet runs a new pod) and returns how long each took. They reconnect
   * with client-go's reflector backoff (0.8 s doubling up to 30 s, jittered): after 30 s away that can take a minute.
   */
  controlPlaneCaughtUp(timeoutMs?: number): Promise<{ serviceAccountMs: number; podMs: number }>;
  /** Waits until VMI `name` is Running (a new one when `notUid` is given); fails early with its status when it fails. */
  running(name: string, timeoutMs?: number, notUid?: string): Promise<Obj>;
}

/** A `vmlet console` process on the node socket. */
export interface NodeConsole {
  /** What it printed on stdout so far: the console's replay of recent output, then the live output. */
  output(): string;
  /** Resolves with output() once it contains `pattern` after offset `from`; rejects when the CLI exits first or on timeout. */
  waitFor(pattern: string | RegExp, timeoutMs: number, from?: number): Promise<string>;
  type(text: string): void;
  /** Ctrl+] (the escape byte), then waits for the CLI to exit; its exit code. */
  detach(): Promise<number | null>;
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
  await core.createNamespace({ body: { metadata: { name: ns } } });
  await core.createNamespace({ body: { metadata: { name: 'vmlet' } } }).catch(() => undefined);
  await c.installCrds();
  const clusterConfig = YAML.stringify({ useEmulation: true, ...o.clusterConfig });
  await core
    .createNamespacedConfigMap({ namespace: 'vmlet', body: { metadata: { name: 'vmlet-config' }, data: { 'vmlet.yaml': clusterConfig } } })
    .catch(() => core.patchNamespacedConfigMap({ name: 'vmlet-config', namespace: 'vmlet', body: { data: { 'vmlet.yaml': clusterConfig } } }, MERGE));

  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-kube-'));
  const controllerLogFile = path.join(runDir, 'controller.log');
  const log = pino({ level: process.env.VMLET_TEST_LOG ?? 'debug' }, pino.destination({ dest: controllerLogFile, sync: true }));
  const configFile = path.join(runDir, 'vmlet.yaml');
  fs.writeFileSync(
    configFile,
    // kvmWorldAccessible off: on a host where KVM works, a test must not leave the host's /dev/kvm mode changed.
    YAML.stringify({
      mode: 'kubernetes',
      kubeletRootDir: c.paths.kubeletRoot,
      stateDir: path.join(runDir, 'state'),
      useEmulation: true,
      logLevel: 'debug',
      kvmWorldAccessible: false,
    }),
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
    controllerLogFile,
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
    nodeConsole: (name) => openConsole(socket, ns, name),
    nodeGet: (urlPath) =>
      new Promise((resolve, reject) => {
        const req = http.get({ socketPath: socket, path: urlPath, timeout: 10_000 }, (res) => {
          let body = '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => {
            try {
              if (res.statusCode !== 200) throw new Error(`GET ${urlPath}: ${res.statusCode} ${body}`);
              resolve(JSON.parse(body) as unknown);
            } catch (e) {
              reject(e instanceof Error ? e : new Error(String(e)));
            }
          });
        });
        req.on('error', reject);
        req.on('timeout', () => req.destroy(new Error(`GET ${urlPath}: timeout`)));
      }),
    timeline: (namespace, name) => timelineOf(env, namespace, name),
    controlPlaneCaughtUp: (timeoutMs = 180_000) => caughtUp(env, timeoutMs),
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

function openConsole(socket: string, ns: string, name: string): NodeConsole {
  const p = spawn(process.execPath, [CLI, '--socket', socket, '-n', ns, 'console', name], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  p.stdout.on('data', (b: Buffer) => (out += b.toString()));
  p.stderr.on('data', (b: Buffer) => (err += b.toString()));
  p.stdin.on('error', () => undefined); // typing after the CLI exited
  const exited = new Promise<number | null>((resolve) => p.on('close', (code) => resolve(code)));
  let code: number | null | undefined;
  void exited.then((c) => (code = c));
  return {
    output: () => out,
    async waitFor(pattern, timeoutMs, from = 0) {
      const found = (): boolean => (typeof pattern === 'string' ? out.indexOf(pattern, from) >= 0 : pattern.test(out.slice(from)));
      const end = Date.now() + timeoutMs;
      while (!found()) {
        if (code !== undefined) throw new Error(`vmlet console ${name} exited (${code}) before ${String(pattern)}: ${err}${out.slice(-2000)}`);
        if (Date.now() > end) throw new Error(`vmlet console ${name}: no ${String(pattern)} within ${timeoutMs} ms; it printed: ${err}${out.slice(-2000)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      return out;
    },
    type(text) {
      p.stdin.write(text);
    },
    async detach() {
      if (code === undefined) p.stdin.write(Buffer.from([0x1d]));
      const timer = setTimeout(() => p.kill('SIGKILL'), 10_000);
      const c = await exited;
      clearTimeout(timer);
      return c;
    },
  };
}

type Stamp = [ms: number, what: string];

async function timelineOf(env: KubeEnv, namespace: string, name: string): Promise<string[]> {
  const at: Stamp[] = [];
  const add = (t: string | Date | undefined | null, what: string): void => {
    if (t) at.push([new Date(t).getTime(), what]);
  };
  const vmi = (await env.custom.getNamespacedCustomObject({ ...GROUP, plural: 'virtualmachineinstances', namespace, name })) as Obj & {
    metadata: { creationTimestamp?: string };
    status?: { phaseTransitionTimestamps?: Array<{ phase: string; phaseTransitionTimestamp: string }> };
  };
  const t0 = new Date(vmi.metadata.creationTimestamp ?? Date.now()).getTime();
  add(vmi.metadata.creationTimestamp, 'VMI created');
  for (const p of vmi.status?.phaseTransitionTimestamps ?? []) add(p.phaseTransitionTimestamp, `VMI phase ${p.phase}`);
  const ns = await env.core.readNamespace({ name: namespace }).catch(() => undefined);
  add(ns?.metadata?.creationTimestamp, 'namespace created');
  const sa = await env.core.readNamespacedServiceAccount({ name: 'default', namespace }).catch(() => undefined);
  add(sa?.metadata?.creationTimestamp, sa ? 'ServiceAccount default created' : 'ServiceAccount default: none');
  const pods = (await env.core.listNamespacedPod({ namespace, labelSelector: `vmlet.io/vmi-uid=${vmi.metadata.uid}` })).items;
  for (const pod of pods) {
    const pn = pod.metadata?.name ?? '?';
    add(pod.metadata?.creationTimestamp, `pod ${pn} created`);
    for (const c of pod.status?.conditions ?? []) add(c.lastTransitionTime, `pod ${c.type}=${c.status}`);
    for (const c of pod.status?.containerStatuses ?? []) add(c.state?.running?.startedAt, `container ${c.name} started`);
  }
  for (const e of (await env.core.listNamespacedEvent({ namespace })).items) {
    add(
      e.eventTime ?? e.firstTimestamp ?? e.metadata?.creationTimestamp,
      `event ${e.involvedObject?.kind}/${e.involvedObject?.name} ${e.reason}: ${e.message}`,
    );
  }
  for (const line of fs.readFileSync(env.controllerLogFile, 'utf8').split('\n')) {
    if (!line.includes(`"${namespace}/${name}"`)) continue;
    const o = JSON.parse(line) as { time?: number; msg?: string; err?: { message?: string } };
    // An ApiException's message carries the whole response: its Status message is what tells.
    const m = o.err?.message;
    const why = m ? (/\\"message\\":\\"(.*?)\\",/.exec(m)?.[1]?.replaceAll('\\\\\\"', '"') ?? m.split('\n')[0]) : undefined;
    add(o.time !== undefined ? new Date(o.time) : undefined, `controller: ${o.msg ?? ''}${why ? ` (${why})` : ''}`);
  }
  const traces = (await env.nodeGet('/debug/start-traces').catch(() => undefined)) as
    { items?: Array<{ uid: string; startedAt: string; steps: Array<[step: string, ms: number]> }> } | undefined;
  const trace = traces?.items?.find((x) => x.uid === vmi.metadata.uid);
  if (trace) for (const [step, ms] of trace.steps) at.push([new Date(trace.startedAt).getTime() + ms, `daemon ${step}`]);
  // The same line again and again (a retry loop) is shown once, with its count and last time.
  const lines: Array<{ first: number; last: number; what: string; n: number }> = [];
  for (const [ms, what] of at.sort((a, b) => a[0] - b[0])) {
    const prev = lines.at(-1);
    if (prev?.what === what) {
      prev.n++;
      prev.last = ms;
    } else lines.push({ first: ms, last: ms, what, n: 1 });
  }
  const sec = (ms: number): string => ((ms - t0) / 1000).toFixed(3);
  return lines.map((l) => `${sec(l.first).padStart(8)} s  ${l.what}${l.n > 1 ? ` (×${l.n}, the last at ${sec(l.last)} s)` : ''}`);
}

async function caughtUp(env: KubeEnv, timeoutMs: number): Promise<{ serviceAccountMs: number; podMs: number }> {
  const probe = `${env.ns}-probe-${randomBytes(2).toString('hex')}`;
  const t0 = Date.now();
  await env.core.createNamespace({ body: { metadata: { name: probe } } });
  try {
    await waitFor(`the default ServiceAccount of namespace ${probe} (kube-controller-manager)`, timeoutMs, async () =>
      (await env.core.readNamespacedServiceAccount({ name: 'default', namespace: probe }).catch(() => undefined)) ? true : undefined,
    );
    const serviceAccountMs = Date.now() - t0;
    const t1 = Date.now();
    const spec = { restartPolicy: 'Never', terminationGracePeriodSeconds: 0, automountServiceAccountToken: false };
    const container = { name: 'main', image: 'localhost/vmlet-busybox:1', imagePullPolicy: 'Never', command: ['true'] };
    await env.core.createNamespacedPod({ namespace: probe, body: { metadata: { name: 'probe' }, spec: { ...spec, containers: [container] } } });
    const phase = await waitFor(`a pod in ${probe} run by the kubelet`, timeoutMs, async () => {
      const ph = (await env.core.readNamespacedPod({ name: 'probe', namespace: probe })).status?.phase;
      return ph === 'Succeeded' || ph === 'Failed' ? ph : undefined;
    });
    if (phase === 'Failed') throw new Error(`the probe pod in ${probe} failed`);
    return { serviceAccountMs, podMs: Date.now() - t1 };
  } finally {
    await env.core.deleteNamespace({ name: probe }).catch(() => undefined);
  }
}
