// The node daemon's presence in the cluster: its Node labels (vmlet.io/schedulable, vmlet.io/kvm) and its heartbeat Lease vmlet/vmlet-node-<node>, renewed through API outages.
import {
  ApiException,
  CoordinationV1Api,
  CoreV1Api,
  PatchStrategy,
  setHeaderOptions,
  V1MicroTime,
  type KubeConfig,
  type V1Lease,
} from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { VmletError } from '../errors.js';

export const LABEL_SCHEDULABLE = 'vmlet.io/schedulable';
export const LABEL_KVM = 'vmlet.io/kvm';
export const VMLET_NAMESPACE = 'vmlet';

/** The node heartbeat Lease's name (docs/cluster-mode.md). */
export function nodeLeaseName(nodeName: string): string {
  return `vmlet-node-${nodeName}`;
}

/** The parts of a Lease that freshness depends on; renewTime may arrive as a string (client-node leaves MicroTime undecoded). */
export interface LeaseTimes {
  spec?: { renewTime?: Date | string; leaseDurationSeconds?: number } | undefined;
}

/** Whether a node Lease was renewed within its duration before `now` (ms or Date). The controller asks this before placing a VMI. */
export function leaseIsFresh(lease: LeaseTimes | undefined, now: number | Date): boolean {
  const renew = lease?.spec?.renewTime;
  const duration = lease?.spec?.leaseDurationSeconds;
  if (renew === undefined || duration === undefined) return false;
  const renewed = new Date(renew).getTime();
  if (Number.isNaN(renewed)) return false;
  return renewed + duration * 1000 > new Date(now).getTime();
}

/** The merge patch of the Node's labels; only vmlet's two labels are touched. */
export function nodeLabelsPatch(schedulable: boolean, kvm?: boolean): { metadata: { labels: Record<string, string> } } {
  const labels: Record<string, string> = { [LABEL_SCHEDULABLE]: String(schedulable) };
  if (kvm !== undefined) labels[LABEL_KVM] = String(kvm);
  return { metadata: { labels } };
}

/** The client-node calls this needs (tests may pass fakes). */
export interface NodeRegistrationApis {
  core: Pick<CoreV1Api, 'patchNode'>;
  coordination: Pick<CoordinationV1Api, 'createNamespacedLease' | 'patchNamespacedLease' | 'deleteNamespacedLease'>;
}

export interface NodeRegistrationOptions {
  /** Either a KubeConfig or the APIs themselves. */
  kubeConfig?: KubeConfig;
  apis?: NodeRegistrationApis;
  nodeName: string;
  /** Default `vmlet`. */
  namespace?: string;
  /** Default `vmlet-node-<node>`; tests use their own. */
  leaseName?: string;
  /** The daemon's start-up probe result. */
  kvm: { usable: boolean; reason?: string };
  /** Default 10 000 ms. */
  renewIntervalMs?: number;
  /** Default 40 s. */
  leaseDurationSeconds?: number;
  /** First retry delay after a failure, doubled up to the renew interval (labels: up to 30 s). Default 1000 ms. */
  retryInitialMs?: number;
  clock?: { now(): number };
  logger: Logger;
  /** Called once per outage when renewals have failed for longer than the lease duration (the Lease is stale now). */
  onLeaseExpired?: (err: VmletError) => void;
}

function httpCode(e: unknown): number | undefined {
  return e instanceof ApiException ? e.code : undefined;
}

const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

export class NodeRegistration {
  readonly nodeName: string;
  readonly namespace: string;
  readonly leaseName: string;
  private readonly opts: NodeRegistrationOptions;
  private readonly renewIntervalMs: number;
  private readonly leaseDurationSeconds: number;
  private readonly retryInitialMs: number;
  private readonly clock: { now(): number };
  private readonly log: Logger;
  private apis: NodeRegistrationApis | undefined;
  private running = false;
  private renewTimer: NodeJS.Timeout | undefined;
  private labelTimer: NodeJS.Timeout | undefined;
  private inFlight = new Set<Promise<unknown>>();
  private lastRenewedMs: number | undefined;
  private startedMs = 0;
  private renewFailures = 0;
  private outageSince: number | undefined;
  private expiredReported = false;
  private labelsDone = false;
  private labelFailures = 0;
  /** A label attempt is running or scheduled. */
  private labelPending = false;

  constructor(opts: NodeRegistrationOptions) {
    this.opts = opts;
    this.nodeName = opts.nodeName;
    this.namespace = opts.namespace ?? VMLET_NAMESPACE;
    this.leaseName = opts.leaseName ?? nodeLeaseName(opts.nodeName);
    this.renewIntervalMs = opts.renewIntervalMs ?? 10_000;
    this.leaseDurationSeconds = opts.leaseDurationSeconds ?? 40;
    this.retryInitialMs = opts.retryInitialMs ?? 1000;
    this.clock = opts.clock ?? Date;
    this.log = opts.logger.child({ component: 'node-registration', node: opts.nodeName, lease: `${this.namespace}/${this.leaseName}` });
  }

  /** When the Lease was last renewed (undefined before the first success). */
  get lastRenewed(): Date | undefined {
    return this.lastRenewedMs === undefined ? undefined : new Date(this.lastRenewedMs);
  }

  /** Whether the labels have been set since start. */
  get labelled(): boolean {
    return this.labelsDone;
  }

  /** Labels the Node and renews the Lease; resolves after the first attempt of each (failures are retried in the background). */
  async start(): Promise<void> {
    if (this.running) return;
    this.apis = this.opts.apis ?? this.apisFrom(this.opts.kubeConfig);
    this.running = true;
    this.startedMs = this.clock.now();
    this.expiredReported = false;
    this.labelPending = false;
    await Promise.all([this.labelOnce(), this.renewOnce()]);
  }

  /** Stops renewing; with `unregister`, marks the Node unschedulable for vmlet (the kvm label stays) and deletes the Lease. */
  async stop(opts: { unregister?: boolean } = {}): Promise<void> {
    this.running = false;
    clearTimeout(this.renewTimer);
    clearTimeout(this.labelTimer);
    await Promise.allSettled([...this.inFlight]);
    if (!opts.unregister || !this.apis) return;
    const apis = this.apis;
    const failures: Array<{ step: string; error: unknown }> = [];
    await this.tryThrice('label', failures, () => apis.core.patchNode({ name: this.nodeName, body: nodeLabelsPatch(false) }, MERGE_PATCH));
    await this.tryThrice('lease', failures, async () => {
      try {
        await apis.coordination.deleteNamespacedLease({ name: this.leaseName, namespace: this.namespace });
      } catch (e) {
        if (httpCode(e) !== 404) throw e;
      }
    });
    this.labelsDone = false;
    if (failures.length) {
      throw new VmletError('NODE_UNREGISTER_FAILED', `unregistering node ${this.nodeName} failed: ${failures.map((f) => f.step).join(', ')}`, {
        cause: failures[0]?.error,
        details: failures.map((f) => ({ step: f.step, code: httpCode(f.error) })),
      });
    }
    this.log.info('unregistered: vmlet.io/schedulable=false, Lease deleted');
  }

  private apisFrom(kc: KubeConfig | undefined): NodeRegistrationApis {
    if (!kc) throw new TypeError('NodeRegistration needs kubeConfig or apis');
    return { core: kc.makeApiClient(CoreV1Api), coordination: kc.makeApiClient(CoordinationV1Api) };
  }

  private async tryThrice(step: string, failures: Array<{ step: string; error: unknown }>, fn: () => Promise<unknown>): Promise<void> {
    let last: unknown;
    for (let i = 0; i < 3; i++) {
      try {
        await fn();
        return;
      } catch (e) {
        last = e;
        await new Promise((r) => setTimeout(r, this.retryInitialMs * 2 ** i));
      }
    }
    failures.push({ step, error: last });
  }

  /** Runs one API step so that stop() can wait for it. */
  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    return p.finally(() => this.inFlight.delete(p));
  }

  private async labelOnce(): Promise<void> {
    this.labelPending = false;
    if (!this.running || !this.apis) return;
    this.labelPending = true;
    const body = nodeLabelsPatch(true, this.opts.kvm.usable);
    try {
      await this.track(this.apis.core.patchNode({ name: this.nodeName, body }, MERGE_PATCH));
      this.labelsDone = true;
      this.log.info({ labels: body.metadata.labels, kvmReason: this.opts.kvm.reason }, 'node labelled');
      this.labelFailures = 0;
      this.labelPending = false;
    } catch (e) {
      if (this.labelFailures++ === 0) this.log.warn({ err: e, code: httpCode(e) }, 'labelling the node failed; retrying with backoff');
      const delay = Math.min(this.retryInitialMs * 2 ** (this.labelFailures - 1), 30_000);
      if (this.running) this.labelTimer = setTimeout(() => void this.labelOnce(), delay);
      else this.labelPending = false;
    }
  }

  private leaseBody(nowMs: number): V1Lease {
    return {
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: { name: this.leaseName, namespace: this.namespace, labels: { 'vmlet.io/node': this.nodeName } },
      spec: {
        holderIdentity: this.nodeName,
        leaseDurationSeconds: this.leaseDurationSeconds,
        acquireTime: new V1MicroTime(nowMs),
        renewTime: new V1MicroTime(nowMs),
      },
    };
  }

  /** One renewal: merge-patch the Lease's spec, or create it when it is missing. */
  private async renewLease(nowMs: number): Promise<void> {
    const apis = this.apis;
    if (!apis) return;
    const body = this.leaseBody(nowMs);
    try {
      const { spec } = body;
      const patch = { spec: { holderIdentity: spec?.holderIdentity, leaseDurationSeconds: spec?.leaseDurationSeconds, renewTime: spec?.renewTime } };
      await apis.coordination.patchNamespacedLease({ name: this.leaseName, namespace: this.namespace, body: patch }, MERGE_PATCH);
    } catch (e) {
      if (httpCode(e) !== 404) throw e;
      await apis.coordination.createNamespacedLease({ namespace: this.namespace, body });
    }
  }

  private async renewOnce(): Promise<void> {
    if (!this.running) return;
    const now = this.clock.now();
    let delay = this.renewIntervalMs;
    try {
      await this.track(this.renewLease(now));
      this.lastRenewedMs = now;
      if (this.outageSince !== undefined) {
        this.log.info({ outageMs: now - this.outageSince, failures: this.renewFailures }, 'Lease renewed again after an outage');
        // the labels may have been lost with the outage (a restored etcd): set them again
        if (!this.labelPending) void this.labelOnce();
      }
      this.outageSince = undefined;
      this.renewFailures = 0;
      this.expiredReported = false;
    } catch (e) {
      this.renewFailures++;
      if (this.outageSince === undefined) {
        this.outageSince = now;
        this.log.warn({ err: e, code: httpCode(e) }, 'renewing the Lease failed; retrying until the API server answers');
      }
      const since = this.lastRenewedMs ?? this.startedMs;
      if (!this.expiredReported && now - since > this.leaseDurationSeconds * 1000) {
        this.expiredReported = true;
        const err = new VmletError(
          'NODE_LEASE_EXPIRED',
          `the Lease ${this.namespace}/${this.leaseName} has not been renewed for ${Math.round((now - since) / 1000)} s`,
          {
            cause: e,
            details: { lastRenewed: this.lastRenewed?.toISOString(), failures: this.renewFailures },
          },
        );
        this.log.error({ err }, 'node Lease expired');
        this.opts.onLeaseExpired?.(err);
      }
      delay = Math.min(this.retryInitialMs * 2 ** (this.renewFailures - 1), this.renewIntervalMs);
    }
    if (this.running) this.renewTimer = setTimeout(() => void this.renewOnce(), delay);
  }
}
