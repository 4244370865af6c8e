// A private one-node Kubernetes cluster on this machine for tests and `npm run cluster`: up, down (leaving nothing), status, kubectl, image loading and fault handles.
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClusterError } from './cluster/errors.js';
import { assetsSkipReason, ensureAssets, type Assets } from './cluster/assets.js';
import {
  componentSpecs,
  containerdConfig,
  cniConflist,
  defaultConfig,
  kubeconfig,
  KUBECONFIGS,
  kubeletConfig,
  layout,
  PORTS,
  simulatedNodes,
  type ClusterConfig,
  type ComponentSpec,
  type Layout,
} from './cluster/config.js';
import { run, runStatus, sleep, waitFor, withSbin } from './cluster/exec.js';
import {
  cleanFirewall,
  clusterProcesses,
  ensureNodeLink,
  HOST_DIRS,
  hostRoutes,
  listeningPorts,
  logTail,
  rangeClashes,
  readPid,
  readSysctls,
  removeHostDirs,
  removeKubepods,
  removeLinks,
  restoreSysctls,
  startProcess,
  stopProcess,
  unmountUnder,
} from './cluster/host.js';
import { clientImage, ensureImage, isStaticElf, loadImage, pauseImage } from './cluster/images.js';
import { certSpecs, ensurePki } from './cluster/pki.js';
import { which } from './which.js';
import { skipWith, type Skippable } from './skip.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The folder of `npm run cluster`; tests use their own (DEFAULT_ROOT + '-test'). */
export const DEFAULT_ROOT = process.env.VMLET_K8S_ROOT ?? '/var/lib/vmlet-k8s';

export interface UpOptions {
  root?: string;
  assetsDir?: string;
  simulatedNodes?: number;
  log?: (msg: string) => void;
}

interface SavedState {
  config: ClusterConfig;
  absentHostDirs: string[];
  sysctls: Record<string, string>;
  versions: Record<string, string>;
}

/** Why the cluster cannot run here (tests skip with it), or null. */
export function clusterSkipReason(env: NodeJS.ProcessEnv = process.env): string | null {
  const assets = assetsSkipReason(env);
  if (assets) return assets;
  if (process.platform !== 'linux') return 'needs Linux';
  if (process.getuid?.() !== 0) return 'needs root (the kubelet, containerd and CNI change mounts, links, cgroups and iptables)';
  const e = withSbin(env);
  const saved = process.env.PATH;
  process.env.PATH = e.PATH;
  try {
    for (const [bin, pkg] of [
      ['containerd', 'containerd'],
      ['runc', 'runc'],
      ['ctr', 'containerd'],
      ['buildah', 'buildah'],
      ['iptables', 'iptables'],
      ['openssl', 'openssl'],
      ['xz', 'xz-utils'],
      ['ip', 'iproute2'],
      ['make', 'make'],
    ] as const) {
      if (!which(bin)) return `${bin} is not installed (apt-get install ${pkg}; npm run setup installs it when VMLET_K8S_ASSETS is set)`;
    }
  } finally {
    process.env.PATH = saved;
  }
  if (!fs.existsSync('/usr/lib/cni/bridge')) return 'the CNI plugins are not installed (apt-get install containernetworking-plugins)';
  if (!fs.existsSync('/bin/busybox') || !isStaticElf('/bin/busybox')) return 'no static busybox (apt-get install busybox-static)';
  return null;
}

interface Tls {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

export interface ComponentStatus {
  name: string;
  pid: number | undefined;
  running: boolean;
}

export class Cluster {
  readonly config: ClusterConfig;
  readonly paths: Layout;
  readonly versions: Record<string, string>;
  /** seconds from the start of `up` to each milestone (only for a fresh `up`) */
  readonly timings: Record<string, number> = {};
  private tls: Tls | undefined;
  private readonly log: (msg: string) => void;

  private constructor(config: ClusterConfig, versions: Record<string, string>, log: (msg: string) => void) {
    this.config = config;
    this.paths = layout(config.root);
    this.versions = versions;
    this.log = log;
  }

  /** The cluster recorded under `root`, if `up` ever wrote its state there. */
  static attach(root = DEFAULT_ROOT, log: (msg: string) => void = () => {}): Cluster | undefined {
    try {
      const s = JSON.parse(fs.readFileSync(layout(root).state, 'utf8')) as SavedState;
      return new Cluster(s.config, s.versions, log);
    } catch {
      return undefined;
    }
  }

  /** Starts the cluster (or finds it running: then nothing is done) and returns once the node is Ready and the default ServiceAccount exists. */
  static async up(opts: UpOptions = {}): Promise<Cluster> {
    const root = opts.root ?? DEFAULT_ROOT;
    const log = opts.log ?? (() => {});
    const existing = Cluster.attach(root, log);
    if (existing) {
      const st = existing.status();
      const wantKwok = (opts.simulatedNodes ?? 0) > 0;
      if (st.every((c) => c.running) && wantKwok === existing.config.simulatedNodes > 0) return existing;
      log('a partly running cluster was found: taking it down first');
      await existing.down();
    }
    const assetsDir = opts.assetsDir ?? process.env.VMLET_K8S_ASSETS;
    if (!assetsDir) throw new ClusterError('CLUSTER_ASSETS_MISSING', 'VMLET_K8S_ASSETS is not set');
    const t0 = Date.now();
    const assets: Assets = await ensureAssets({ assetsDir: path.resolve(REPO_ROOT, assetsDir), cacheDir: path.join(REPO_ROOT, '.cache', 'k8s'), log });
    const config = defaultConfig({ root, binDir: assets.binDir, kwokStages: assets.kwokStages, simulatedNodes: opts.simulatedNodes ?? 0 });
    if (config.simulatedNodes > 0 && !config.kwokStages)
      throw new ClusterError('CLUSTER_ASSETS_MISSING', `${assetsDir} has no kwok-stages.yaml (kwok 0.8 exits with "no stages found" without it)`);
    const clashes = rangeClashes(config, await hostRoutes());
    if (clashes.length) throw new ClusterError('CLUSTER_RANGE_CLASH', `the cluster's address ranges clash: ${clashes.join('; ')}`);
    const busy = listeningPorts();
    const taken = Object.entries(PORTS).filter(([, port]) => busy.has(port));
    if (taken.length)
      throw new ClusterError(
        'CLUSTER_PORT_BUSY',
        `ports already in use: ${taken.map(([n, p]) => `${p} (${n})`).join(', ')}; is another cluster up (npm run cluster -- down)?`,
      );
    const l = layout(root);
    fs.mkdirSync(root, { recursive: true, mode: 0o700 });
    const state: SavedState = {
      config,
      absentHostDirs: HOST_DIRS.filter((d) => !fs.existsSync(d.path)).map((d) => d.path),
      sysctls: readSysctls(),
      versions: assets.versions,
    };
    fs.writeFileSync(l.state, JSON.stringify(state, null, 2));
    const c = new Cluster(config, assets.versions, log);
    try {
      await c.start(t0);
    } catch (e) {
      log(`up failed, taking down what started: ${e instanceof Error ? e.message : String(e)}`);
      await c.down().catch(() => {});
      throw e;
    }
    return c;
  }

  private mark(name: string, t0: number): void {
    this.timings[name] = (Date.now() - t0) / 1000;
    this.log(`${name} after ${this.timings[name]!.toFixed(1)} s`);
  }

  private async start(t0: number): Promise<void> {
    const cfg = this.config;
    const l = this.paths;
    await ensureNodeLink(cfg);
    await ensurePki(l.pki, certSpecs(cfg.node, cfg.nodeIp, cfg.serviceIp));
    fs.mkdirSync(path.dirname(l.kubeconfig('admin')), { recursive: true });
    const server = `https://${cfg.nodeIp}:${PORTS.apiserver}`;
    for (const [user, cert] of Object.entries(KUBECONFIGS)) fs.writeFileSync(l.kubeconfig(user), kubeconfig(server, l.pki, cert), { mode: 0o600 });
    fs.mkdirSync(path.dirname(l.containerdConfig), { recursive: true });
    fs.writeFileSync(l.containerdConfig, containerdConfig(cfg));
    fs.mkdirSync(l.cniConfDir, { recursive: true });
    fs.writeFileSync(path.join(l.cniConfDir, '10-vmlet-test.conflist'), cniConflist(cfg));
    fs.writeFileSync(l.kubeletConfig, kubeletConfig(cfg));
    fs.mkdirSync(l.podLogs, { recursive: true });
    const images = this.buildImages();
    this.mark('files written', t0);

    await this.startComponent('etcd');
    await this.startComponent('kube-apiserver');
    this.mark('API server ready', t0);
    await this.startComponent('kube-controller-manager');
    await this.startComponent('kube-scheduler');
    await this.startComponent('containerd');
    for (const archive of await images) await loadImage(l.containerdSock, archive);
    this.mark('images loaded', t0);
    await this.startComponent('kubelet');
    this.mark('node Ready', t0);
    await this.startComponent('kube-proxy');
    await waitFor('the default ServiceAccount', 60_000, async () =>
      (await this.api('GET', '/api/v1/namespaces/default/serviceaccounts/default')).status === 200 ? true : undefined,
    );
    if (cfg.simulatedNodes > 0) {
      await this.startComponent('kwok');
      await this.kubectl(['apply', '-f', '-'], simulatedNodes(cfg.simulatedNodes));
      await waitFor(
        `${cfg.simulatedNodes} simulated nodes Ready`,
        120_000,
        async () => ((await this.readyNodes()).length >= cfg.simulatedNodes + 1 ? true : undefined),
        500,
      );
      this.mark('simulated nodes Ready', t0);
    }
    this.mark('up', t0);
  }

  /** Builds the pause and client images (cached under .cache/k8s/images). */
  private async buildImages(): Promise<string[]> {
    await run('make', ['-s', '-C', path.join(REPO_ROOT, 'native'), 'build/vmlet-pause']);
    const dir = path.join(REPO_ROOT, '.cache', 'k8s', 'images');
    return [
      await ensureImage(pauseImage(this.config.pauseImage, path.join(REPO_ROOT, 'native', 'build', 'vmlet-pause')), dir),
      await ensureImage(clientImage(this.config.clientImage, '/bin/busybox'), dir),
    ];
  }

  private spec(name: string): ComponentSpec {
    const s = componentSpecs(this.config).find((c) => c.name === name);
    if (!s) throw new ClusterError('CLUSTER_NO_SUCH_COMPONENT', `no component ${name}`);
    return s;
  }

  /** Starts one component and waits until it serves. */
  private async startComponent(name: string): Promise<void> {
    const rec = startProcess(this.paths, this.spec(name), withSbin(process.env));
    const alive = (): void => {
      if (!readPid(this.paths, name))
        throw new ClusterError('CLUSTER_COMPONENT_EXITED', `${name} (pid ${rec.pid}) exited; its log ends:\n${logTail(this.paths, name)}`);
    };
    const until = async (what: string, ms: number, check: () => Promise<boolean>): Promise<void> => {
      try {
        await waitFor(
          `${name}: ${what}`,
          ms,
          async () => {
            alive();
            return (await check()) ? true : undefined;
          },
          100,
        );
      } catch (e) {
        if (e instanceof ClusterError && e.code === 'CLUSTER_TIMEOUT')
          throw new ClusterError('CLUSTER_TIMEOUT', `${e.message}; its log ends:\n${logTail(this.paths, name)}`, { cause: e.cause });
        throw e;
      }
    };
    const httpOk = async (url: string): Promise<boolean> => {
      try {
        return (await fetch(url)).ok;
      } catch {
        return false;
      }
    };
    switch (name) {
      case 'etcd':
        await until('/health', 30_000, () => httpOk(`http://127.0.0.1:${PORTS.etcd}/health`));
        break;
      case 'kube-apiserver':
        await until('/readyz', 60_000, async () => (await this.api('GET', '/readyz')).status === 200);
        break;
      case 'containerd':
        await until('its socket', 30_000, async () => (await runStatus('ctr', ['--address', this.paths.containerdSock, 'version'])).code === 0);
        break;
      case 'kubelet':
        await until('node Ready', 90_000, async () => (await this.readyNodes()).includes(this.config.node));
        break;
      case 'kube-proxy':
        await until('/healthz', 30_000, () => httpOk(`http://127.0.0.1:${PORTS.proxyHealthz}/healthz`));
        break;
      default:
        await sleep(200);
        alive();
    }
    this.log(`${name} running (pid ${rec.pid})`);
  }

  private tlsFiles(): Tls {
    this.tls ??= {
      ca: fs.readFileSync(path.join(this.paths.pki, 'ca.crt')),
      cert: fs.readFileSync(path.join(this.paths.pki, 'admin.crt')),
      key: fs.readFileSync(path.join(this.paths.pki, 'admin.key')),
    };
    return this.tls;
  }

  /** One request to the API server as the admin; status 0 when it does not answer. */
  api(method: string, urlPath: string, body?: unknown): Promise<{ status: number; body: string; json: () => unknown }> {
    const tls = this.tlsFiles();
    return new Promise((resolve) => {
      const req = https.request(
        {
          host: this.config.nodeIp,
          port: PORTS.apiserver,
          path: urlPath,
          method,
          ...tls,
          timeout: 10_000,
          headers: body === undefined ? {} : { 'content-type': 'application/json' },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            resolve({ status: res.statusCode ?? 0, body: text, json: () => JSON.parse(text) as unknown });
          });
          res.on('error', () => resolve({ status: 0, body: '', json: () => null }));
        },
      );
      req.on('error', () => resolve({ status: 0, body: '', json: () => null }));
      req.on('timeout', () => req.destroy());
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
  }

  /** Names of the Nodes whose Ready condition is True. */
  async readyNodes(): Promise<string[]> {
    const r = await this.api('GET', '/api/v1/nodes');
    if (r.status !== 200) return [];
    const list = r.json() as { items: Array<{ metadata: { name: string }; status?: { conditions?: Array<{ type: string; status: string }> } }> };
    return list.items.filter((n) => n.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')).map((n) => n.metadata.name);
  }

  get kubeconfigPath(): string {
    return this.paths.kubeconfig('admin');
  }

  /**
   * Runs kubectl as the admin; rejects (CLUSTER_COMMAND_FAILED) on a non-zero exit. Its discovery cache lives in
   * the cluster's folder: every cluster answers at the same address, and a cache shared between them names
   * resources of an earlier cluster (kubectl then resolves `virtualmachine` to a group that is gone).
   */
  kubectl(args: string[], input?: string): Promise<string> {
    const cache = path.join(this.config.root, 'kubectl-cache');
    return run(
      path.join(this.config.binDir, 'kubectl'),
      ['--kubeconfig', this.kubeconfigPath, '--cache-dir', cache, ...args],
      input === undefined ? {} : { input },
    );
  }

  /** Applies vmlet's CRDs (deploy/crds) and waits until the API server serves them; a fresh cluster has none. */
  async installCrds(): Promise<void> {
    const crds = ['virtualmachines', 'virtualmachineinstances'];
    await this.kubectl(['apply', ...crds.flatMap((c) => ['-f', path.join(REPO_ROOT, 'deploy', 'crds', `${c}.yaml`)])]);
    await this.kubectl(['wait', '--for=condition=Established', ...crds.map((c) => `crd/${c}.vmlet.io`), '--timeout=60s']);
  }

  /** Imports an OCI or docker image archive into the node's containerd. */
  load(archive: string): Promise<string> {
    return loadImage(this.paths.containerdSock, path.resolve(archive));
  }

  status(): ComponentStatus[] {
    return componentSpecs(this.config).map((s) => {
      const rec = readPid(this.paths, s.name);
      return { name: s.name, pid: rec?.pid, running: rec !== undefined };
    });
  }

  // ------------------------------------------------------------ fault handles

  /** Stops the API server (etcd keeps the data). */
  async stopApiServer(): Promise<void> {
    await stopProcess(this.paths, 'kube-apiserver');
  }

  async startApiServer(): Promise<void> {
    if (!readPid(this.paths, 'kube-apiserver')) await this.startComponent('kube-apiserver');
  }

  async restartKubelet(): Promise<void> {
    await stopProcess(this.paths, 'kubelet');
    await this.startComponent('kubelet');
  }

  /** Restarts containerd: its shims and the containers keep running meanwhile. */
  async restartContainerd(): Promise<void> {
    await stopProcess(this.paths, 'containerd');
    await this.startComponent('containerd');
  }

  // ------------------------------------------------------------ down

  /** Stops everything and removes all it made; returns what could not be removed (empty when clean). Idempotent. */
  async down(): Promise<string[]> {
    const cfg = this.config;
    const l = this.paths;
    const t0 = Date.now();
    const problems: string[] = [];
    let saved: SavedState | undefined;
    try {
      saved = JSON.parse(fs.readFileSync(l.state, 'utf8')) as SavedState;
    } catch {
      /* no state: clean what we can */
    }
    // Nothing may recreate or reschedule pods while they go; then delete them so that CNI DEL removes each veth, netns and rule.
    await stopProcess(l, 'kube-controller-manager', 5000);
    await stopProcess(l, 'kube-scheduler', 5000);
    if (readPid(l, 'kube-apiserver') && readPid(l, 'kubelet') && (await this.api('GET', '/readyz')).status === 200) {
      await runStatus(
        path.join(cfg.binDir, 'kubectl'),
        ['--kubeconfig', this.kubeconfigPath, 'delete', 'pods', '--all', '--all-namespaces', '--grace-period=1', '--wait=true', '--timeout=30s'],
        { timeoutMs: 40_000 },
      );
      await waitFor('pod sandboxes gone', 15_000, async () => {
        const r = await runStatus('ip', ['-j', 'link', 'show', 'master', cfg.cniBridge]);
        return r.code !== 0 || (JSON.parse(r.stdout || '[]') as unknown[]).length === 0 ? true : undefined;
      }).catch(() => {
        /* forced below */
      });
    }
    for (const s of componentSpecs(cfg).reverse()) if (s.name !== 'etcd') await stopProcess(l, s.name);
    await stopProcess(l, 'etcd');
    if (fs.existsSync(path.join(cfg.binDir, 'kube-proxy'))) await runStatus(path.join(cfg.binDir, 'kube-proxy'), ['--cleanup', '--proxy-mode=iptables']);
    // Shims detach from containerd and containers outlive a killed shim: end both.
    for (const p of clusterProcesses(cfg)) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    problems.push(...(await removeKubepods()));
    await sleep(100);
    const still = clusterProcesses(cfg);
    if (still.length) problems.push(...still.map((p) => `process ${p.pid} ${p.comm} is still running`));
    problems.push(...(await unmountUnder(cfg.root)));
    problems.push(...(await unmountUnder('/run/containerd')));
    problems.push(...(await removeLinks(cfg)));
    problems.push(...(await cleanFirewall()));
    if (saved) {
      problems.push(...removeHostDirs(saved.absentHostDirs));
      problems.push(...restoreSysctls(saved.sysctls));
    }
    // The folder goes too, except the logs of this run (for a look after a failed test).
    if (fs.existsSync(cfg.root) && problems.every((p) => !p.startsWith('mount '))) {
      for (const e of fs.readdirSync(cfg.root)) if (e !== 'logs') fs.rmSync(path.join(cfg.root, e), { recursive: true, force: true });
    }
    this.timings.down = (Date.now() - t0) / 1000;
    this.log(`down after ${this.timings.down.toFixed(1)} s${problems.length ? `; left behind: ${problems.join('; ')}` : ''}`);
    return problems;
  }
}

/** `down` for a root whose state file is gone or was never written: cleans up with the default config. */
export async function downAt(root = DEFAULT_ROOT, log: (msg: string) => void = () => {}): Promise<string[]> {
  const c = Cluster.attach(root, log);
  if (c) return c.down();
  const binDir = path.join(REPO_ROOT, '.cache', 'k8s', 'bin');
  const fresh = defaultConfig({ root, binDir });
  fs.mkdirSync(layout(root).root, { recursive: true });
  fs.writeFileSync(layout(root).state, JSON.stringify({ config: fresh, absentHostDirs: [], sysctls: {}, versions: {} }));
  const d = Cluster.attach(root, log);
  return d ? d.down() : [];
}

/** A test's cluster: up once per test file (tests share it), down in teardown (with VMLET_K8S_REUSE=1 the running `npm run cluster` one, left up); undefined (after t.skip with the reason) when it cannot run. */
export async function testCluster(
  t: Skippable & { teardown(fn: () => Promise<void> | void): void; comment(...a: unknown[]): void },
  opts: Omit<UpOptions, 'root'> = {},
): Promise<Cluster | undefined> {
  const reason = clusterSkipReason();
  if (reason) {
    skipWith(t, reason);
    return undefined;
  }
  // VMLET_K8S_REUSE=1: use the cluster of `npm run cluster -- up` as it is and leave it up (for working on one test file).
  if (process.env.VMLET_K8S_REUSE === '1') {
    const dev = Cluster.attach(DEFAULT_ROOT, (m) => t.comment(m));
    if (dev && dev.status().every((s) => s.running) && (opts.simulatedNodes ?? 0) <= dev.config.simulatedNodes) return dev;
    skipWith(
      t,
      `VMLET_K8S_REUSE=1 but no cluster${(opts.simulatedNodes ?? 0) > 0 ? ' with simulated nodes' : ''} runs at ${DEFAULT_ROOT} (npm run cluster -- up)`,
    );
    return undefined;
  }
  const root = `${DEFAULT_ROOT}-test`;
  const busy = listeningPorts();
  if (busy.has(PORTS.apiserver) && !Cluster.attach(root)) {
    skipWith(t, `port ${PORTS.apiserver} is taken: another cluster is up (npm run cluster -- down)`);
    return undefined;
  }
  const c = await Cluster.up({ ...opts, root, log: (m) => t.comment(m) });
  t.teardown(async () => {
    await c.down();
  });
  return c;
}
