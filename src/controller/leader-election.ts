// Leader election on a coordination.k8s.io Lease: one candidate at a time leads, the others wait until the holder stops renewing.
import { PatchStrategy, setHeaderOptions, type CoordinationV1Api, type V1Lease } from '@kubernetes/client-node';
import type { Logger } from 'pino';

export interface LeaderElectionOptions {
  api: CoordinationV1Api;
  namespace: string;
  /** The Lease's name (`vmlet-controller`). */
  name: string;
  /** This candidate (the pod's name). */
  identity: string;
  /** A holder that has not renewed for this long is presumed gone (client-go's default: 15 s). */
  leaseDurationMs?: number;
  /** A leader that could not renew for this long steps down (default 10 s). */
  renewDeadlineMs?: number;
  /** How often candidates try and leaders renew (default 2 s). */
  retryPeriodMs?: number;
  onStartedLeading: () => void;
  onStoppedLeading: () => void;
  logger: Logger;
  now?: () => number;
}

/** What a candidate should do with a Lease as read: pure, so the rules are tested without a cluster. */
export type LeaseDecision = { action: 'create' } | { action: 'renew' } | { action: 'take' } | { action: 'wait'; holder: string };

export function decideLease(lease: V1Lease | undefined, identity: string, nowMs: number, leaseDurationMs: number): LeaseDecision {
  if (!lease) return { action: 'create' };
  const holder = lease.spec?.holderIdentity ?? '';
  if (holder === identity) return { action: 'renew' };
  if (holder === '') return { action: 'take' };
  const renewed = lease.spec?.renewTime ?? lease.spec?.acquireTime;
  const durationMs = (lease.spec?.leaseDurationSeconds ?? leaseDurationMs / 1000) * 1000;
  if (!renewed || new Date(renewed).getTime() + durationMs <= nowMs) return { action: 'take' };
  return { action: 'wait', holder };
}

/**
 * A MicroTime as the API server parses it (six fraction digits). client-node 1.x writes Dates with three, which
 * the server refuses, so Lease times are always sent as these strings in merge patches.
 */
export function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

const MERGE = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

function statusCode(e: unknown): number | undefined {
  if (typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'number') return e.code;
  return undefined;
}

/** Runs until `stop()`: tries for the Lease every retry period, renews it while leading, steps down when renewal fails for too long. */
export class LeaderElection {
  private readonly o: Required<Omit<LeaderElectionOptions, 'now'>> & { now: () => number };
  private timer: NodeJS.Timeout | undefined;
  private leading = false;
  private lastRenewMs = 0;
  private stopped = true;
  private ticking: Promise<void> | undefined;

  constructor(opts: LeaderElectionOptions) {
    this.o = { leaseDurationMs: 15_000, renewDeadlineMs: 10_000, retryPeriodMs: 2_000, now: Date.now, ...opts };
  }

  get isLeader(): boolean {
    return this.leading;
  }

  start(): void {
    this.stopped = false;
    this.schedule(0);
  }

  /**
   * Stops trying; a leader gives the Lease up (empty holder) so another candidate takes over at once. With
   * `release: false` it just goes quiet, as a killed process would, and the others wait out the lease.
   */
  async stop(opts: { release?: boolean } = {}): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.ticking;
    if (this.leading && opts.release === false) {
      this.stepDown('stopped without releasing the Lease');
      return;
    }
    if (this.leading) {
      this.stepDown('stopping');
      try {
        const lease = await this.o.api.readNamespacedLease({ name: this.o.name, namespace: this.o.namespace });
        if (lease.spec?.holderIdentity === this.o.identity) {
          const body = { metadata: { resourceVersion: lease.metadata?.resourceVersion }, spec: { holderIdentity: '' } };
          await this.o.api.patchNamespacedLease({ name: this.o.name, namespace: this.o.namespace, body }, MERGE);
        }
      } catch (e) {
        this.o.logger.warn({ err: e }, 'could not release the leader Lease; the next leader waits for it to expire');
      }
    }
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.ticking = this.tick().finally(() => {
        this.ticking = undefined;
        this.schedule(this.o.retryPeriodMs);
      });
    }, ms);
  }

  private async tick(): Promise<void> {
    const { api, name, namespace, identity } = this.o;
    const now = this.o.now();
    try {
      let lease: V1Lease | undefined;
      try {
        lease = await api.readNamespacedLease({ name, namespace });
      } catch (e) {
        if (statusCode(e) !== 404) throw e;
      }
      const d = decideLease(lease, identity, now, this.o.leaseDurationMs);
      const renew = { holderIdentity: identity, leaseDurationSeconds: Math.ceil(this.o.leaseDurationMs / 1000), renewTime: microTime(now) };
      const patch = (rv: string | undefined, spec: Record<string, unknown>): Promise<V1Lease> =>
        api.patchNamespacedLease({ name, namespace, body: { metadata: { resourceVersion: rv }, spec } }, MERGE);
      switch (d.action) {
        case 'create': {
          const made = await api.createNamespacedLease({ namespace, body: { metadata: { name, namespace }, spec: { leaseTransitions: 0 } } });
          await patch(made.metadata?.resourceVersion, { ...renew, acquireTime: microTime(now) });
          break;
        }
        case 'renew':
          await patch(lease!.metadata?.resourceVersion, renew);
          break;
        case 'take':
          await patch(lease!.metadata?.resourceVersion, { ...renew, acquireTime: microTime(now), leaseTransitions: (lease!.spec?.leaseTransitions ?? 0) + 1 });
          break;
        case 'wait':
          if (this.leading) this.stepDown(`the Lease is held by ${d.holder}`);
          return;
      }
      this.lastRenewMs = now;
      if (!this.leading && !this.stopped) {
        this.leading = true;
        this.o.logger.info({ lease: `${namespace}/${name}` }, 'became the leader');
        this.o.onStartedLeading();
      }
    } catch (e) {
      // A conflict means another candidate wrote first: try again next period. Anything else is an outage.
      if (statusCode(e) !== 409) this.o.logger.warn({ err: e }, 'leader election: the API server did not answer');
      if (this.leading && this.o.now() - this.lastRenewMs > this.o.renewDeadlineMs) this.stepDown('could not renew the Lease in time');
    }
  }

  private stepDown(why: string): void {
    if (!this.leading) return;
    this.leading = false;
    this.o.logger.warn({ why }, 'stopped leading');
    this.o.onStoppedLeading();
  }
}
