// What a VirtualMachine's runStrategy asks for, given its VMI: pure decisions, backoff and printable status.
import type { PrintableStatus, RunStrategy } from '../api/types.js';
import { isFinalPhase, type VmiPhase } from '../api/vocabulary.js';

export type { PrintableStatus, RunStrategy };
export type { VmiPhase } from '../api/vocabulary.js';

/** What the controller needs to know of the VMI a VM owns. */
export interface VmiView {
  phase: VmiPhase;
  deleting: boolean;
  paused: boolean;
  /** When it entered Running, if it did (ms since epoch). */
  runningSince?: number;
  /** It waits for a containerDisk image that the node does not have (condition ImageAvailable=False). */
  imageMissing?: boolean;
  /** It waits for a claim: missing (FailedPvcNotFound) or not bound yet (PVCNotReady), from the Synchronized condition. */
  claimWait?: 'missing' | 'unbound';
}

/** KubeVirt's status.startFailure: consecutive failures and when the next try may start. */
export interface StartFailure {
  consecutiveFailCount: number;
  retryAfterTimestamp?: string;
}

export type Decision = { action: 'none' } | { action: 'create' } | { action: 'wait'; untilMs: number } | { action: 'delete'; reason: 'halted' | 'restart' };

/** Failures closer together than this count as one crash loop. */
export const STABLE_RUN_MS = 60_000;
export const MAX_BACKOFF_MS = 300_000;

/** Delay before the nth consecutive failed run is retried: none for the first, then 1 s doubling to 5 min. */
export function backoffMs(consecutiveFailCount: number): number {
  if (consecutiveFailCount <= 1) return 0;
  return Math.min(MAX_BACKOFF_MS, 1000 * 2 ** (consecutiveFailCount - 2));
}

/** The start failure record after a VMI failed at `now`. */
export function recordFailure(prev: StartFailure | undefined, vmi: VmiView, now: number): StartFailure {
  const ranLong = vmi.runningSince !== undefined && now - vmi.runningSince >= STABLE_RUN_MS;
  const count = ranLong ? 1 : (prev?.consecutiveFailCount ?? 0) + 1;
  return { consecutiveFailCount: count, retryAfterTimestamp: new Date(now + backoffMs(count)).toISOString() };
}

export interface DecideInput {
  runStrategy: RunStrategy;
  vmi: VmiView | undefined;
  startFailure: StartFailure | undefined;
  /** A Once VM that already ran is not started again. */
  ranOnce: boolean;
  now: number;
}

/** The one step the controller takes next for a VM. Manual VMs only move through explicit start/stop. */
export function decide(input: DecideInput): Decision {
  const { runStrategy, vmi, now } = input;
  if (vmi?.deleting) return { action: 'none' };
  const final = vmi !== undefined && isFinalPhase(vmi.phase);
  switch (runStrategy) {
    case 'Halted':
      return vmi && !final ? { action: 'delete', reason: 'halted' } : { action: 'none' };
    case 'Manual':
      return { action: 'none' };
    case 'Once':
      return vmi || input.ranOnce ? { action: 'none' } : { action: 'create' };
    case 'Always':
    case 'RerunOnFailure': {
      if (vmi && !final) return { action: 'none' };
      if (vmi && vmi.phase === 'Succeeded' && runStrategy === 'RerunOnFailure') return { action: 'none' };
      if (vmi) return { action: 'delete', reason: 'restart' };
      const retryAt = input.startFailure?.retryAfterTimestamp ? Date.parse(input.startFailure.retryAfterTimestamp) : 0;
      if (retryAt > now) return { action: 'wait', untilMs: retryAt };
      return { action: 'create' };
    }
  }
}

/** KubeVirt-style printable status of a VM. */
export function printableStatus(input: DecideInput): PrintableStatus {
  const { vmi, startFailure, now } = input;
  if (!vmi) {
    const retryAt = startFailure?.retryAfterTimestamp ? Date.parse(startFailure.retryAfterTimestamp) : 0;
    if (retryAt > now && (input.runStrategy === 'Always' || input.runStrategy === 'RerunOnFailure')) return 'CrashLoopBackOff';
    return input.runStrategy === 'Halted' || input.runStrategy === 'Manual' || input.runStrategy === 'Once' ? 'Stopped' : 'Starting';
  }
  if (vmi.deleting) return 'Stopping';
  switch (vmi.phase) {
    case 'Pending':
    case 'Scheduled':
      if (vmi.claimWait === 'missing') return 'ErrorPvcNotFound';
      if (vmi.claimWait === 'unbound') return 'WaitingForVolumeBinding';
      return vmi.imageMissing ? 'ErrImagePull' : 'Starting';
    case 'Running':
      return vmi.paused ? 'Paused' : 'Running';
    case 'Succeeded':
      return input.runStrategy === 'Always' ? 'Starting' : 'Stopped';
    case 'Failed':
      return input.runStrategy === 'Always' || input.runStrategy === 'RerunOnFailure' ? 'CrashLoopBackOff' : 'Stopped';
  }
}
