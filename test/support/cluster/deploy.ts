// `npm run cluster -- deploy|undeploy`: builds vmlet's image from the working tree, loads it into the test cluster, applies deploy/overlays/NAME adjusted to this cluster, waits until it is Ready; and takes it all away again.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import type { Cluster } from '../cluster.js';
import { REPO_ROOT } from '../cluster.js';
import { ClusterError } from './errors.js';
import { run, runStatus, waitFor } from './exec.js';
import { serviceEndpointIps, waitServiceProgrammed } from './service-rules.js';

export const NAMESPACE = 'vmlet';
/** The admission webhook's Service (deploy/base/webhook.yaml). */
export const WEBHOOK_SERVICE = 'vmlet-webhook';
export const CONTROLLER = 'vmlet-controller';
export const DAEMONSET = 'vmlet-node';
export const PART_OF = 'app.kubernetes.io/part-of=vmlet';
/** The image the overlays name (deploy/overlays/test). */
export const IMAGE_TAG = 'dev';

export interface DeployOptions {
  /** a folder of deploy/overlays; default `test` */
  overlay?: string;
  /** build the image (tsc, make -C native, scripts/build-image.mjs) and load it; default true */
  build?: boolean;
  /** only `kubectl apply --dry-run=server`: nothing changes in the cluster, nothing is waited for */
  dryRun?: boolean;
  timeoutMs?: number;
  log?: (msg: string) => void;
}

export interface DeployResult {
  overlayDir: string;
  archive: string | undefined;
  seconds: number;
}

/** A Kubernetes object as far as these helpers read it. */
interface Obj {
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec?: unknown;
  data?: Record<string, string>;
}

function overlayPath(overlay: string): string {
  if (!/^[a-z0-9][a-z0-9-]*$/.test(overlay)) throw new ClusterError('CLUSTER_DEPLOY_REFUSED', `${JSON.stringify(overlay)} is not an overlay name`);
  const dir = path.join(REPO_ROOT, 'deploy', 'overlays', overlay);
  if (!fs.existsSync(path.join(dir, 'kustomization.yaml')))
    throw new ClusterError('CLUSTER_DEPLOY_REFUSED', `deploy/overlays/${overlay} has no kustomization.yaml`);
  return dir;
}

/**
 * The files of the temporary overlay that puts `overlayDir` onto a cluster whose kubelet root dir is
 * `kubeletRoot`: the DaemonSet's kubelet hostPath and its mount (same path inside, so the paths the daemon
 * computes are the host's), `kubeletRootDir` in the config, and the image's digest as a pod annotation (a
 * rebuilt image under the same tag then rolls the pods). `rendered` is `kubectl kustomize overlayDir`.
 */
export function overlayFiles(o: { rendered: string; overlayRel: string; kubeletRoot: string; imageDigest?: string }): Record<string, string> {
  const objs = YAML.parseAllDocuments(o.rendered).map((d) => d.toJS() as Obj);
  const ds = objs.find((x) => x.kind === 'DaemonSet' && x.metadata.name === DAEMONSET);
  const cm = objs.find((x) => x.kind === 'ConfigMap' && x.metadata.name === 'vmlet-config');
  if (!ds || !cm?.data?.['vmlet.yaml'])
    throw new ClusterError('CLUSTER_DEPLOY_REFUSED', `the overlay renders no DaemonSet ${DAEMONSET} or ConfigMap vmlet-config`);
  const pod = (
    ds.spec as { template: { spec: { volumes: Array<{ name: string }>; containers: Array<{ name: string; volumeMounts?: Array<{ name: string }> }> } } }
  ).template.spec;
  const vol = pod.volumes.findIndex((v) => v.name === 'kubelet');
  const ci = pod.containers.findIndex((c) => c.volumeMounts?.some((m) => m.name === 'kubelet'));
  const mi = ci < 0 ? -1 : (pod.containers[ci]?.volumeMounts ?? []).findIndex((m) => m.name === 'kubelet');
  if (vol < 0 || mi < 0) throw new ClusterError('CLUSTER_DEPLOY_REFUSED', `DaemonSet ${DAEMONSET} has no volume and mount named kubelet`);
  const ops: unknown[] = [
    { op: 'replace', path: `/spec/template/spec/volumes/${vol}/hostPath/path`, value: o.kubeletRoot },
    { op: 'replace', path: `/spec/template/spec/containers/${ci}/volumeMounts/${mi}/mountPath`, value: o.kubeletRoot },
  ];
  const config = (YAML.parse(cm.data['vmlet.yaml']) ?? {}) as Record<string, unknown>;
  config.kubeletRootDir = o.kubeletRoot;
  const patches: unknown[] = [
    { target: { kind: 'DaemonSet', name: DAEMONSET }, patch: JSON.stringify(ops) },
    {
      target: { kind: 'ConfigMap', name: 'vmlet-config' },
      patch: JSON.stringify([{ op: 'replace', path: '/data/vmlet.yaml', value: YAML.stringify(config) }]),
    },
  ];
  if (o.imageDigest)
    for (const [kind, name] of [
      ['Deployment', CONTROLLER],
      ['DaemonSet', DAEMONSET],
    ] as const)
      patches.push({
        target: { kind, name },
        patch: JSON.stringify([{ op: 'add', path: '/spec/template/metadata/annotations', value: { 'vmlet.io/image-digest': o.imageDigest } }]),
      });
  const k = { apiVersion: 'kustomize.config.k8s.io/v1beta1', kind: 'Kustomization', resources: [o.overlayRel], patches };
  return { 'kustomization.yaml': `# Written by test/support/cluster/deploy.ts for this cluster; regenerated on every deploy.\n${YAML.stringify(k)}` };
}

/** Writes the temporary overlay for `overlay` on this cluster into .cache/deploy/NAME and returns its folder. */
export async function writeOverlay(cluster: Cluster, overlay: string, imageDigest?: string): Promise<string> {
  const src = overlayPath(overlay);
  const dir = path.join(REPO_ROOT, '.cache', 'deploy', overlay);
  fs.mkdirSync(dir, { recursive: true });
  const rendered = await cluster.kubectl(['kustomize', src]);
  const files = overlayFiles({
    rendered,
    overlayRel: path.relative(dir, src),
    kubeletRoot: cluster.paths.kubeletRoot,
    ...(imageDigest ? { imageDigest } : {}),
  });
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  return dir;
}

/** Why `kubevirt-compat` must not go onto this cluster (a kubevirt.io CRD that is not vmlet's: a real KubeVirt), or null. */
export async function kubevirtConflict(cluster: Cluster): Promise<string | null> {
  for (const crd of ['virtualmachines.kubevirt.io', 'virtualmachineinstances.kubevirt.io']) {
    const r = await cluster.api('GET', `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${crd}`);
    if (r.status === 404) continue;
    if (r.status !== 200) return `cannot read CRD ${crd} (HTTP ${r.status})`;
    const labels = (r.json() as Obj).metadata.labels ?? {};
    if (labels['app.kubernetes.io/part-of'] !== 'vmlet') return `CRD ${crd} exists and is not vmlet's (no label ${PART_OF}): is KubeVirt installed?`;
  }
  return null;
}

/** Builds the image of the working tree (tsc, make -C native, scripts/build-image.mjs); returns the archive. */
export async function buildWorkingTree(log: (m: string) => void): Promise<string> {
  log('building: tsc, make -C native, scripts/build-image.mjs');
  await run(process.execPath, [path.join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(REPO_ROOT, 'tsconfig.json')], {
    cwd: REPO_ROOT,
    timeoutMs: 600_000,
  });
  await run('make', ['-s', '-C', path.join(REPO_ROOT, 'native')], { timeoutMs: 300_000 });
  const out = await run(process.execPath, [path.join(REPO_ROOT, 'scripts', 'build-image.mjs'), '--tag', IMAGE_TAG], { cwd: REPO_ROOT, timeoutMs: 1_800_000 });
  return out.trim().split('\n').at(-1) ?? '';
}

interface Workload {
  metadata: { generation?: number };
  spec?: { replicas?: number };
  status?: {
    observedGeneration?: number;
    replicas?: number;
    readyReplicas?: number;
    updatedReplicas?: number;
    desiredNumberScheduled?: number;
    numberReady?: number;
    updatedNumberScheduled?: number;
  };
}

/** What of the controller Deployment and the DaemonSet is not Ready yet (empty: all is). */
export async function notReady(cluster: Cluster): Promise<string[]> {
  const out: string[] = [];
  const d = await cluster.api('GET', `/apis/apps/v1/namespaces/${NAMESPACE}/deployments/${CONTROLLER}`);
  if (d.status !== 200) out.push(`Deployment ${CONTROLLER}: HTTP ${d.status}`);
  else {
    const w = d.json() as Workload;
    const want = w.spec?.replicas ?? 1;
    const s = w.status ?? {};
    if ((s.observedGeneration ?? 0) < (w.metadata.generation ?? 0) || (s.readyReplicas ?? 0) < want || (s.updatedReplicas ?? 0) < want)
      out.push(`Deployment ${CONTROLLER}: ${s.readyReplicas ?? 0}/${want} ready, ${s.updatedReplicas ?? 0} updated`);
  }
  const a = await cluster.api('GET', `/apis/apps/v1/namespaces/${NAMESPACE}/daemonsets/${DAEMONSET}`);
  if (a.status !== 200) out.push(`DaemonSet ${DAEMONSET}: HTTP ${a.status}`);
  else {
    const w = a.json() as Workload;
    const s = w.status ?? {};
    const want = s.desiredNumberScheduled ?? 0;
    if ((s.observedGeneration ?? 0) < (w.metadata.generation ?? 0) || want === 0 || (s.numberReady ?? 0) < want || (s.updatedNumberScheduled ?? 0) < want)
      out.push(`DaemonSet ${DAEMONSET}: ${s.numberReady ?? 0}/${want} ready, ${s.updatedNumberScheduled ?? 0} updated`);
  }
  return out;
}

interface PodList {
  items: Array<{
    metadata: { name: string; labels?: Record<string, string> };
    status?: {
      phase?: string;
      conditions?: Array<{ type: string; status: string }>;
      containerStatuses?: Array<{ restartCount: number; state?: Record<string, { reason?: string; message?: string } | undefined> }>;
    };
  }>;
}

/** One paragraph per vmlet pod that is not Ready: its phase, container state and the last lines of its log. */
async function podReport(cluster: Cluster): Promise<string> {
  const r = await cluster.api('GET', `/api/v1/namespaces/${NAMESPACE}/pods`);
  if (r.status !== 200) return `(cannot list pods: HTTP ${r.status})`;
  const parts: string[] = [];
  for (const p of (r.json() as PodList).items) {
    if (p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')) continue;
    const cs = p.status?.containerStatuses?.[0];
    const state = cs?.state
      ? Object.entries(cs.state).map(([k, v]) => `${k}${v?.reason ? ` (${v.reason}${v.message ? `: ${v.message}` : ''})` : ''}`)[0]
      : 'no container yet';
    const logs = await runStatus(path.join(cluster.config.binDir, 'kubectl'), [
      '--kubeconfig',
      cluster.kubeconfigPath,
      '-n',
      NAMESPACE,
      'logs',
      p.metadata.name,
      '--tail=15',
      ...(cs && cs.restartCount > 0 ? ['--previous'] : []),
    ]);
    const text = (logs.stdout.trim() || logs.stderr.trim() || '(no log)').split('\n').map((l) => `    ${l}`);
    parts.push(`  pod ${p.metadata.name}: ${p.status?.phase ?? '?'}, ${state}, restarts ${cs?.restartCount ?? 0}; its log ends:\n${text.join('\n')}`);
  }
  return parts.join('\n');
}

/** Builds, loads, applies and waits (see the module comment); `dryRun` only checks the apply against the API server. */
export async function deploy(cluster: Cluster, opts: DeployOptions = {}): Promise<DeployResult> {
  const t0 = Date.now();
  const log = opts.log ?? (() => {});
  const overlay = opts.overlay ?? 'test';
  overlayPath(overlay);
  if (overlay === 'kubevirt-compat') {
    const why = await kubevirtConflict(cluster);
    if (why) throw new ClusterError('CLUSTER_DEPLOY_REFUSED', `not deploying kubevirt-compat: ${why}`);
  }
  let archive: string | undefined;
  let digest: string | undefined;
  if (opts.build !== false) {
    archive = await buildWorkingTree(log);
    digest = `sha256:${createHash('sha256').update(fs.readFileSync(archive)).digest('hex')}`;
    if (!opts.dryRun) {
      log(`loading ${path.basename(archive)} into the node's containerd`);
      await cluster.load(archive);
    }
  }
  const dir = await writeOverlay(cluster, overlay, digest);
  log(`applying ${path.relative(REPO_ROOT, dir)} (deploy/overlays/${overlay} for kubelet root ${cluster.paths.kubeletRoot})`);
  await cluster.kubectl(['apply', ...(opts.dryRun ? ['--dry-run=server'] : []), '-k', dir]);
  if (!opts.dryRun) {
    const timeoutMs = opts.timeoutMs ?? 180_000;
    try {
      await waitFor('vmlet Ready', timeoutMs, async () => ((await notReady(cluster)).length === 0 ? true : undefined), 1000);
    } catch (e) {
      const what = await notReady(cluster);
      throw new ClusterError('CLUSTER_TIMEOUT', `vmlet is not Ready after ${Math.round(timeoutMs / 1000)} s: ${what.join('; ')}\n${await podReport(cluster)}`, {
        cause: e,
      });
    }
    // The API server calls the webhook through its Service: Ready pods are not enough until kube-proxy has the rule
    // (a CI run's first apply after Ready timed out calling the webhook).
    const svc = await cluster.api('GET', `/api/v1/namespaces/${NAMESPACE}/services/${WEBHOOK_SERVICE}`);
    const ip = svc.status === 200 ? (svc.json() as { spec?: { clusterIP?: string } }).spec?.clusterIP : undefined;
    if (ip) {
      await waitServiceProgrammed(`the webhook Service ${WEBHOOK_SERVICE}`, ip, timeoutMs);
      // After a rollout, kube-proxy may still send some calls to a replaced pod whose IP is gone, and those hang
      // until the API server's webhook timeout (a CI run's apply after an overlay switch): wait until its
      // endpoints are exactly the Ready, non-terminating controller pods.
      await waitFor(
        `the webhook Service ${WEBHOOK_SERVICE} to reach only the current controller pods`,
        timeoutMs,
        async () => {
          const want = await currentControllerIps(cluster);
          const have = await serviceEndpointIps(ip);
          return want.length > 0 && want.join() === have.join() ? true : undefined;
        },
        250,
      );
    }
    log(`vmlet is Ready after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }
  return { overlayDir: dir, archive, seconds: (Date.now() - t0) / 1000 };
}

/** IPs of the controller pods that are Ready and not being deleted, sorted. */
async function currentControllerIps(cluster: Cluster): Promise<string[]> {
  const r = await cluster.api('GET', `/api/v1/namespaces/${NAMESPACE}/pods?labelSelector=${encodeURIComponent(`app.kubernetes.io/name=${CONTROLLER}`)}`);
  if (r.status !== 200) return [];
  const pods = (
    r.json() as {
      items: Array<{ metadata: { deletionTimestamp?: string }; status?: { podIP?: string; conditions?: Array<{ type: string; status: string }> } }>;
    }
  ).items;
  return pods
    .filter((p) => p.metadata.deletionTimestamp === undefined && p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'))
    .map((p) => p.status?.podIP ?? '')
    .filter((ip) => ip !== '')
    .sort();
}

interface ItemList {
  items: Array<{ metadata: { name: string; namespace?: string; labels?: Record<string, string>; finalizers?: string[] } }>;
}

/** The VM/VMI resources vmlet serves on this cluster (kubevirt.io ones only when vmlet's CRDs are there). */
async function vmResources(cluster: Cluster): Promise<string[]> {
  const out: string[] = [];
  for (const [group, version] of [
    ['vmlet.io', 'v1alpha1'],
    ['kubevirt.io', 'v1'],
  ] as const) {
    const r = await cluster.api('GET', `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/virtualmachineinstances.${group}`);
    if (r.status !== 200 || (r.json() as Obj).metadata.labels?.['app.kubernetes.io/part-of'] !== 'vmlet') continue;
    out.push(`/apis/${group}/${version}/virtualmachines`, `/apis/${group}/${version}/virtualmachineinstances`);
  }
  return out;
}

async function list(cluster: Cluster, urlPath: string): Promise<ItemList['items']> {
  const r = await cluster.api('GET', urlPath);
  return r.status === 200 ? (r.json() as ItemList).items : [];
}

/** What of vmlet is still in the cluster: CRDs, webhook configuration, namespace, cluster roles and bindings, `vmlet.io/*` node labels. */
export async function leftovers(cluster: Cluster): Promise<string[]> {
  const out: string[] = [];
  for (const c of await list(cluster, '/apis/apiextensions.k8s.io/v1/customresourcedefinitions'))
    if (c.metadata.name.endsWith('.vmlet.io') || c.metadata.labels?.['app.kubernetes.io/part-of'] === 'vmlet') out.push(`CRD ${c.metadata.name}`);
  if ((await cluster.api('GET', '/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/vmlet-validator')).status !== 404)
    out.push('ValidatingWebhookConfiguration vmlet-validator');
  if ((await cluster.api('GET', `/api/v1/namespaces/${NAMESPACE}`)).status !== 404) out.push(`namespace ${NAMESPACE}`);
  for (const kind of ['clusterroles', 'clusterrolebindings'])
    for (const o of await list(cluster, `/apis/rbac.authorization.k8s.io/v1/${kind}?labelSelector=${encodeURIComponent(PART_OF)}`))
      out.push(`${kind} ${o.metadata.name}`);
  for (const n of await list(cluster, '/api/v1/nodes')) {
    const keys = Object.keys(n.metadata.labels ?? {}).filter((k) => k.startsWith('vmlet.io/'));
    if (keys.length) out.push(`node ${n.metadata.name} labels ${keys.join(', ')}`);
  }
  return out;
}

/**
 * Deletes every VM and VMI (waiting for their launcher pods to go), then `kubectl delete -k` of the same
 * overlay and the daemons' node labels; returns what of vmlet is left (empty when clean).
 */
export async function undeploy(cluster: Cluster, opts: Omit<DeployOptions, 'build' | 'dryRun'> = {}): Promise<string[]> {
  const log = opts.log ?? (() => {});
  const overlay = opts.overlay ?? 'test';
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const resources = await vmResources(cluster);
  // VMs first (they would recreate VMIs), then VMIs; the controller's finalizer lets a VMI go once its QEMU is gone.
  for (const res of resources) {
    for (const o of await list(cluster, res))
      await cluster.api('DELETE', `${res.replace(/\/[^/]+$/, '')}/namespaces/${o.metadata.namespace}/${res.split('/').at(-1)}/${o.metadata.name}`);
  }
  const launcherPods = (): Promise<ItemList['items']> => list(cluster, `/api/v1/pods?labelSelector=${encodeURIComponent('vmlet.io/component=launcher')}`);
  const remaining = async (): Promise<number> => {
    let n = (await launcherPods()).length;
    for (const res of resources) n += (await list(cluster, res)).length;
    return n;
  };
  try {
    await waitFor('VMs, VMIs and launcher pods gone', timeoutMs, async () => ((await remaining()) === 0 ? true : undefined), 1000);
  } catch {
    // no controller left to clear the finalizers (say it never became Ready): clear them, or the CRDs never go
    log(`VMIs still there after ${Math.round(timeoutMs / 1000)} s: removing their finalizers and launcher pods`);
    for (const res of resources)
      for (const o of await list(cluster, res))
        if (o.metadata.finalizers?.length)
          await cluster.kubectl([
            'patch',
            res.split('/').at(-1) + '.' + (res.split('/')[2] ?? ''),
            '-n',
            o.metadata.namespace ?? 'default',
            o.metadata.name,
            '--type=merge',
            '-p',
            '{"metadata":{"finalizers":null}}',
          ]);
    for (const p of await launcherPods())
      await runStatus(path.join(cluster.config.binDir, 'kubectl'), [
        '--kubeconfig',
        cluster.kubeconfigPath,
        'delete',
        'pod',
        '-n',
        p.metadata.namespace ?? 'default',
        p.metadata.name,
        '--grace-period=1',
      ]);
  }
  const dir = await writeOverlay(cluster, overlay);
  log(`deleting ${path.relative(REPO_ROOT, dir)}`);
  await cluster.kubectl(['delete', '-k', dir, '--ignore-not-found', '--wait=true', `--timeout=${Math.round(timeoutMs / 1000)}s`]);
  for (const n of await list(cluster, '/api/v1/nodes')) {
    const keys = Object.keys(n.metadata.labels ?? {}).filter((k) => k.startsWith('vmlet.io/'));
    if (keys.length) await cluster.kubectl(['label', 'node', n.metadata.name, ...keys.map((k) => `${k}-`)]);
  }
  // the namespace goes asynchronously (its pods first)
  await waitFor(
    `namespace ${NAMESPACE} gone`,
    timeoutMs,
    async () => ((await cluster.api('GET', `/api/v1/namespaces/${NAMESPACE}`)).status === 404 ? true : undefined),
    500,
  ).catch(() => {});
  const left = await leftovers(cluster);
  log(left.length ? `left behind: ${left.join('; ')}` : 'nothing of vmlet is left');
  return left;
}
