// The cluster half of the controller: each VMI gets one launcher pod on a node that fits, and the VMI follows what happens to that pod.
import { randomBytes } from 'node:crypto';
import {
  PatchStrategy,
  setHeaderOptions,
  type CoordinationV1Api,
  type CoreV1Api,
  type CustomObjectsApi,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  type V1ConfigMap,
  type V1Lease,
  type V1Node,
  type V1PersistentVolume,
  type V1PersistentVolumeClaim,
  type V1Pod,
} from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { Condition, VirtualMachineInstance } from '../api/types.js';
import { isRecord } from '../api/vocabulary.js';
import { CONFIG_MAP_KEY, CONFIG_MAP_NAME, DEFAULT_CLUSTER_CONFIG, parseClusterConfig, type ClusterConfig } from './cluster-config.js';
import { HEARTBEAT, LAUNCHER_COMPONENT, LAUNCHER_LABELS, NODE_FINALIZER, NODE_NAME_LABEL, VMLET_NAMESPACE } from './cluster-names.js';
import { KubeInformer, type InformerEvent } from './kube-informer.js';
import { decideLauncher } from './launcher-decide.js';
import type { LauncherClaim } from './launcher-volumes.js';
import { assignNode, leaseFresh, NodeUsage, podRequests } from './node-assignment.js';
import type { PlacedVmi } from './placement.js';
import { VMI_FINALIZER } from './vm-controller.js';
import { checkClaims, claimStep, claimVolumes, isClaimsCondition } from './volume-claims.js';

/** Renders the launcher pod of a VMI for a node (launcher-pod.ts, with the image and the cluster config bound). */
export type RenderPod = (input: {
  vmi: PlacedVmi;
  nodeName: string;
  emulation: boolean;
  suffix: string;
  config: ClusterConfig;
  /** Volume name → its claim (checked Bound). */
  claims: Record<string, LauncherClaim>;
}) => V1Pod;

export interface LauncherControllerOptions {
  kubeConfig: KubeConfig;
  core: CoreV1Api;
  coordination: CoordinationV1Api;
  custom: CustomObjectsApi;
  /** The VMI kind's group and version (`vmlet.io/v1alpha1`, or `kubevirt.io/v1` with the compat overlay). */
  group: string;
  version: string;
  renderPod: RenderPod;
  logger: Logger;
  now?: () => number;
  /** Parallel reconciles (default 16); one VMI is never reconciled twice at once. */
  workers?: number;
}

type Vmi = PlacedVmi & { metadata: VirtualMachineInstance['metadata'] & { uid: string } };

/** A VMI as the API server sends it: the shape the controller relies on is checked, the rest was validated at admission. */
function isVmi(o: unknown): o is Vmi {
  if (!isRecord(o) || !isRecord(o['metadata']) || !isRecord(o['spec'])) return false;
  const m = o['metadata'];
  return (
    typeof m['name'] === 'string' && typeof m['namespace'] === 'string' && typeof m['uid'] === 'string' && (o['status'] === undefined || isRecord(o['status']))
  );
}
const MERGE = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const key = (ns: string, name: string): string => `${ns}/${name}`;

function httpCode(e: unknown): number | undefined {
  return typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'number' ? e.code : undefined;
}

export class LauncherController {
  private readonly o: LauncherControllerOptions & { now: () => number };
  private readonly usage = new NodeUsage();
  private readonly queue = new Set<string>();
  private readonly active = new Set<string>();
  /** VMI uid → name of the pod created for it that the cache has not shown yet. */
  private readonly expected = new Map<string, string>();
  private readonly informers: Array<{ stop(): Promise<void> }> = [];
  private vmis!: KubeInformer<KubernetesObject>;
  private pods!: KubeInformer<V1Pod>;
  private nodes!: KubeInformer<V1Node>;
  private leases!: KubeInformer<V1Lease>;
  private claims!: KubeInformer<V1PersistentVolumeClaim>;
  private volumes!: KubeInformer<V1PersistentVolume>;
  private config: ClusterConfig = { ...DEFAULT_CLUSTER_CONFIG };
  private running = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private workersBusy = 0;
  /** Heartbeat Lease → fresh when last seen. */
  private readonly freshLeases = new Map<string, boolean>();

  constructor(opts: LauncherControllerOptions) {
    this.o = { now: Date.now, ...opts };
  }

  /** Fills the caches, then reconciles every VMI and follows changes until stop(). */
  async start(): Promise<void> {
    this.running = true;
    const { kubeConfig, core, coordination, custom, group, version, logger } = this.o;
    const onPod = (ev: InformerEvent, p: V1Pod): void => {
      if (ev === 'delete') this.usage.removePod(p);
      else this.safeUsage(p);
      const uid = p.metadata?.labels?.[LAUNCHER_LABELS.vmiUid];
      if (uid && this.expected.get(uid) === p.metadata?.name) this.expected.delete(uid);
      const vmiName = p.metadata?.labels?.[LAUNCHER_LABELS.vmiName];
      if (vmiName && p.metadata?.namespace) this.enqueue(key(p.metadata.namespace, vmiName));
      // Freed room may fit a waiting VMI.
      if (ev === 'delete' || p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed') this.enqueuePending();
    };
    this.pods = new KubeInformer<V1Pod>({
      kubeConfig,
      path: '/api/v1/pods',
      list: () => core.listPodForAllNamespaces({}),
      onChange: onPod,
      logger,
    });
    this.nodes = new KubeInformer<V1Node>({ kubeConfig, path: '/api/v1/nodes', list: () => core.listNode({}), onChange: () => this.enqueuePending(), logger });
    this.leases = new KubeInformer<V1Lease>({
      kubeConfig,
      path: `/apis/coordination.k8s.io/v1/namespaces/${VMLET_NAMESPACE}/leases`,
      list: () => coordination.listNamespacedLease({ namespace: VMLET_NAMESPACE }),
      onChange: (ev, l) => {
        const name = l.metadata?.name ?? '';
        if (!name.startsWith(HEARTBEAT.prefix)) return;
        // Renewals come every few seconds: only a node that comes back (or goes) changes where VMIs fit.
        const fresh = ev !== 'delete' && leaseFresh(l, this.o.now());
        if (this.freshLeases.get(name) !== fresh) this.enqueuePending();
        this.freshLeases.set(name, fresh);
      },
      logger,
    });
    // Claims are watched (not polled): a VMI waiting for one is placed as soon as it is Bound, and the cache
    // answers every check without a request. PersistentVolumes: for a local volume's node affinity.
    this.claims = new KubeInformer<V1PersistentVolumeClaim>({
      kubeConfig,
      path: '/api/v1/persistentvolumeclaims',
      list: () => core.listPersistentVolumeClaimForAllNamespaces({}),
      onChange: (_ev, c) => this.enqueueClaimUsers(c.metadata?.namespace, c.metadata?.name),
      logger,
    });
    this.volumes = new KubeInformer<V1PersistentVolume>({
      kubeConfig,
      path: '/api/v1/persistentvolumes',
      list: () => core.listPersistentVolume({}),
      onChange: (_ev, v) => this.enqueueClaimUsers(v.spec?.claimRef?.namespace, v.spec?.claimRef?.name),
      logger,
    });
    const configs = new KubeInformer<V1ConfigMap>({
      kubeConfig,
      path: `/api/v1/namespaces/${VMLET_NAMESPACE}/configmaps`,
      fieldSelector: `metadata.name=${CONFIG_MAP_NAME}`,
      list: () => core.listNamespacedConfigMap({ namespace: VMLET_NAMESPACE, fieldSelector: `metadata.name=${CONFIG_MAP_NAME}` }),
      onChange: (ev, cm) => this.setConfig(ev === 'delete' ? undefined : cm.data?.[CONFIG_MAP_KEY]),
      logger,
    });
    this.vmis = new KubeInformer<KubernetesObject>({
      kubeConfig,
      path: `/apis/${group}/${version}/virtualmachineinstances`,
      list: () => custom.listClusterCustomObject({ group, version, plural: 'virtualmachineinstances' }) as Promise<KubernetesListObject<KubernetesObject>>,
      onChange: (_ev, v) => {
        if (v.metadata?.name) this.enqueue(key(v.metadata.namespace ?? 'default', v.metadata.name));
      },
      logger,
    });
    this.informers.push(this.pods, this.nodes, this.leases, this.claims, this.volumes, this.vmis, configs);
    await Promise.all([this.pods.start(), this.nodes.start(), this.leases.start(), this.claims.start(), this.volumes.start(), configs.start()]);
    await this.vmis.start();
    // Level-triggered safety net: every VMI again every 30 s (missed events, retries after errors).
    this.retryTimer = setInterval(() => {
      for (const v of this.vmiList()) this.enqueue(key(v.metadata.namespace, v.metadata.name));
    }, 30_000);
  }

  async stop(): Promise<void> {
    this.running = false;
    clearInterval(this.retryTimer);
    await Promise.all(this.informers.map((i) => i.stop()));
  }

  /** Resolves when no reconcile is queued or running (tests). */
  async idle(): Promise<void> {
    while (this.queue.size > 0 || this.workersBusy > 0) await new Promise((r) => setTimeout(r, 20));
  }

  private setConfig(text: string | undefined): void {
    try {
      this.config = parseClusterConfig(text);
      this.o.logger.info({ config: this.config }, 'cluster config read');
      this.enqueuePending();
    } catch (err) {
      this.o.logger.error({ err }, 'cluster config refused; keeping the last good one');
    }
  }

  private safeUsage(p: V1Pod): void {
    try {
      this.usage.addPod(p);
    } catch (err) {
      this.o.logger.warn({ err, pod: key(p.metadata?.namespace ?? '', p.metadata?.name ?? '') }, 'pod requests do not parse; not counted');
    }
  }

  private enqueuePending(): void {
    if (!this.vmis) return;
    for (const v of this.vmiList()) {
      if (!v.status?.nodeName && !v.metadata.deletionTimestamp) this.enqueue(key(v.metadata.namespace, v.metadata.name));
    }
  }

  /** The unplaced VMIs of a namespace with a volume on this claim. */
  private enqueueClaimUsers(ns: string | undefined, claimName: string | undefined): void {
    if (!this.vmis || ns === undefined || claimName === undefined) return;
    for (const v of this.vmiList(ns)) {
      if (v.status?.nodeName || v.metadata.deletionTimestamp) continue;
      if (claimVolumes(v.spec.volumes).some((c) => c.claimName === claimName)) this.enqueue(key(ns, v.metadata.name));
    }
  }

  private vmiList(namespace?: string): Vmi[] {
    const out: Vmi[] = [];
    for (const o of this.vmis.list(namespace)) {
      const u: unknown = o;
      if (isVmi(u)) out.push(u);
    }
    return out;
  }

  private enqueue(k: string): void {
    if (!this.running) return;
    this.queue.add(k);
    this.pump();
  }

  private pump(): void {
    const workers = this.o.workers ?? 16;
    while (this.workersBusy < workers) {
      let k: string | undefined;
      for (const x of this.queue) {
        if (this.active.has(x)) continue;
        k = x;
        break;
      }
      if (k === undefined) return;
      this.queue.delete(k);
      this.active.add(k);
      this.workersBusy++;
      void this.reconcile(k)
        .catch((err: unknown) => {
          const conflict = httpCode(err) === 409;
          if (!conflict) this.o.logger.warn({ err, vmi: k }, 'VMI reconcile failed; retrying');
          setTimeout(() => this.enqueue(k), conflict ? 100 : 1000);
        })
        .finally(() => {
          this.active.delete(k);
          this.workersBusy--;
          this.pump();
        });
    }
  }

  private podsOf(vmi: Vmi): V1Pod[] {
    return this.pods
      .list(vmi.metadata.namespace)
      .filter(
        (p) => p.metadata?.labels?.[LAUNCHER_LABELS.vmiUid] === vmi.metadata.uid && p.metadata?.labels?.[LAUNCHER_LABELS.component] === LAUNCHER_COMPONENT,
      );
  }

  private async reconcile(k: string): Promise<void> {
    const [ns, name] = k.split('/') as [string, string];
    const vmi: unknown = this.vmis.get(name, ns);
    if (!isVmi(vmi)) return;
    const step = decideLauncher({
      vmi,
      pods: this.podsOf(vmi),
      expectedPod: this.expected.get(vmi.metadata.uid),
      hasFinalizer: this.finalizersToRelease(vmi).length > 0,
    });
    switch (step.action) {
      case 'none':
        return;
      case 'assign':
        return this.assign(vmi);
      case 'deletePods':
        for (const pod of step.pods) {
          await this.o.core.deleteNamespacedPod({ name: pod, namespace: ns }).catch((e: unknown) => {
            if (httpCode(e) !== 404) throw e;
          });
        }
        return;
      case 'fail':
        return this.fail(vmi, step.reason, step.message);
      case 'release':
        const drop = this.finalizersToRelease(vmi);
        await this.patchVmi(vmi, {
          metadata: { resourceVersion: vmi.metadata.resourceVersion, finalizers: (vmi.metadata.finalizers ?? []).filter((f) => !drop.includes(f)) },
        });
        return;
    }
  }

  private finalizersToRelease(vmi: Vmi): string[] {
    return finalizersToRelease(vmi.metadata.finalizers ?? [], vmi.status?.nodeName, (n) => this.nodes.get(n) !== undefined);
  }

  private async assign(vmi: Vmi): Promise<void> {
    const suffix = randomBytes(4).toString('hex').slice(0, 5);
    const now = this.o.now();
    const ns = vmi.metadata.namespace;
    const check = checkClaims({ namespace: ns, volumes: vmi.spec.volumes, claim: (n) => this.claims.get(n, ns), volume: (n) => this.volumes.get(n) });
    const step = claimStep({ vmi, check, filesystemOverhead: this.config.filesystemOverhead, now });
    if (step.action === 'wait') {
      if (step.status === undefined) return;
      await this.patchVmi(vmi, { status: step.status }, true);
      const waiting = step.status.conditions.at(-1);
      this.o.logger.info({ vmi: key(ns, vmi.metadata.name), reason: waiting?.reason, message: waiting?.message }, 'VMI waits for its claims');
      return;
    }
    const { claims, nodeTerms } = step;
    const tryPlace = (emulation: boolean): { pod: V1Pod; node: string } | { message: string } => {
      const probe = this.o.renderPod({ vmi, nodeName: '', emulation, suffix, config: this.config, claims });
      const a = assignNode({
        vmi,
        requests: podRequests(probe),
        nodes: this.nodes.list(),
        usage: this.usage,
        leases: this.leases.list(),
        emulation,
        now,
        volumeNodeTerms: nodeTerms,
      });
      if ('unschedulable' in a) return { message: a.unschedulable.message };
      return { pod: this.o.renderPod({ vmi, nodeName: a.node, emulation, suffix, config: this.config, claims }), node: a.node };
    };
    let placed = tryPlace(false);
    if ('message' in placed && this.config.useEmulation) placed = tryPlace(true);
    if ('message' in placed) return this.unschedulable(vmi, placed.message);
    const { pod, node } = placed;
    // Counted at once, so parallel reconciles see the room this pod takes.
    this.safeUsage(pod);
    this.expected.set(vmi.metadata.uid, pod.metadata!.name!);
    try {
      let resourceVersion = vmi.metadata.resourceVersion;
      // The claims' volumeStatus first: the node daemon sizes disk.img from it and sees the VMI only once labelled below.
      if (step.volumeStatus !== undefined) {
        resourceVersion = (await this.patchVmi(vmi, { metadata: { resourceVersion }, status: { volumeStatus: step.volumeStatus } }, true)) ?? resourceVersion;
      }
      // One write before the pod: the finalizer (so the pod never outlives a VMI unnoticed) and the node's label
      // (so the node daemon sees its VMI while the kubelet starts the pod), guarded by the resourceVersion read.
      // The node daemon's finalizer too: the VMI stays until that daemon has released what the node holds of it.
      const finalizers = [...new Set([...(vmi.metadata.finalizers ?? []), VMI_FINALIZER, NODE_FINALIZER])];
      await this.patchVmi(vmi, { metadata: { resourceVersion, finalizers, labels: { [NODE_NAME_LABEL]: node } } });
      await this.o.core.createNamespacedPod({ namespace: vmi.metadata.namespace ?? 'default', body: pod });
    } catch (e) {
      this.usage.removePod(pod);
      this.expected.delete(vmi.metadata.uid);
      throw e;
    }
    const at = new Date(now).toISOString();
    await this.patchVmi(
      vmi,
      {
        status: {
          phase: 'Scheduled',
          nodeName: node,
          conditions: this.withCondition(vmi, { type: 'PodScheduled', status: 'True', lastTransitionTime: at }, true),
          phaseTransitionTimestamps: [...(vmi.status?.phaseTransitionTimestamps ?? []), { phase: 'Scheduled', phaseTransitionTimestamp: at }],
        },
      },
      true,
    );
    this.o.logger.info({ vmi: key(vmi.metadata.namespace ?? '', vmi.metadata.name), node, pod: pod.metadata?.name }, 'launcher pod created');
  }

  private async unschedulable(vmi: Vmi, message: string): Promise<void> {
    const cond = vmi.status?.conditions?.find((c) => c.type === 'PodScheduled');
    if (cond?.status === 'False' && cond.message === message && !vmi.status?.conditions?.some(isClaimsCondition)) return;
    const at = new Date(this.o.now()).toISOString();
    await this.patchVmi(
      vmi,
      {
        status: {
          phase: 'Pending',
          conditions: this.withCondition(vmi, { type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message, lastTransitionTime: at }, true),
        },
      },
      true,
    );
    this.o.logger.info({ vmi: key(vmi.metadata.namespace ?? '', vmi.metadata.name), message }, 'VMI fits on no node');
  }

  private async fail(vmi: Vmi, reason: string, message: string): Promise<void> {
    const at = new Date(this.o.now()).toISOString();
    await this.patchVmi(
      vmi,
      {
        metadata: { resourceVersion: vmi.metadata.resourceVersion },
        status: {
          phase: 'Failed',
          reason,
          message,
          conditions: this.withCondition(vmi, { type: 'Ready', status: 'False', reason, message, lastTransitionTime: at }),
          phaseTransitionTimestamps: [...(vmi.status?.phaseTransitionTimestamps ?? []), { phase: 'Failed', phaseTransitionTimestamp: at }],
        },
      },
      true,
    );
    this.o.logger.warn({ vmi: key(vmi.metadata.namespace ?? '', vmi.metadata.name), reason, message }, 'VMI failed');
  }

  /** The VMI's conditions with `c` in place of its type's; `claimsReady` also drops a condition of claims not ready (volume-claims.ts). */
  private withCondition(vmi: Vmi, c: Condition, claimsReady = false): Condition[] {
    return [...(vmi.status?.conditions ?? []).filter((x) => x.type !== c.type && !(claimsReady && isClaimsCondition(x))), c];
  }

  /** Merge-patches the VMI (or its status); the new resourceVersion, or undefined when the VMI is gone. */
  private async patchVmi(vmi: Vmi, body: object, status = false): Promise<string | undefined> {
    const { group, version, custom } = this.o;
    const req = { group, version, plural: 'virtualmachineinstances', namespace: vmi.metadata.namespace ?? 'default', name: vmi.metadata.name, body };
    try {
      const res: unknown = await (status ? custom.patchNamespacedCustomObjectStatus(req, MERGE) : custom.patchNamespacedCustomObject(req, MERGE));
      const meta = isRecord(res) && isRecord(res['metadata']) ? res['metadata'] : undefined;
      return typeof meta?.['resourceVersion'] === 'string' ? meta['resourceVersion'] : undefined;
    } catch (e) {
      if (httpCode(e) === 404) return undefined; // gone meanwhile
      throw e;
    }
  }
}

/** Of a deleted VMI with no pod left: the controller's finalizer, and the node daemon's when no daemon will ever release it (never placed, or its Node is gone). */
export function finalizersToRelease(finalizers: readonly string[], nodeName: string | undefined, nodeExists: (node: string) => boolean): string[] {
  const orphan = finalizers.includes(NODE_FINALIZER) && (!nodeName || !nodeExists(nodeName));
  return [...(finalizers.includes(VMI_FINALIZER) ? [VMI_FINALIZER] : []), ...(orphan ? [NODE_FINALIZER] : [])];
}
