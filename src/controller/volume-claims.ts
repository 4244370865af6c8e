// Checks a VMI's PersistentVolumeClaims before its launcher pod is made (pure): each must exist and be Bound; gives what the pod, status.volumeStatus and node assignment need of them.
import type { V1NodeSelectorTerm, V1PersistentVolume, V1PersistentVolumeClaim } from '@kubernetes/client-node';
import { parseQuantity } from '../api/quantity.js';
import type { Condition, VirtualMachineInstance, Volume, VolumeStatus } from '../api/types.js';
import type { LauncherClaim } from './launcher-volumes.js';

/** A persistentVolumeClaim or ephemeral volume of a VMI. */
export interface ClaimVolume {
  volume: string;
  claimName: string;
  /** Mounted read-only: an ephemeral volume (the claim is the base of an overlay), or `readOnly: true`. */
  readOnly: boolean;
  ephemeral: boolean;
}

/** The claim volumes of a VMI's spec.volumes, in their order. */
export function claimVolumes(volumes: readonly Volume[] | undefined): ClaimVolume[] {
  const out: ClaimVolume[] = [];
  for (const v of volumes ?? []) {
    if (v.persistentVolumeClaim !== undefined) {
      out.push({ volume: v.name, claimName: v.persistentVolumeClaim.claimName, readOnly: v.persistentVolumeClaim.readOnly === true, ephemeral: false });
    } else if (v.ephemeral !== undefined) {
      out.push({ volume: v.name, claimName: v.ephemeral.persistentVolumeClaim.claimName, readOnly: true, ephemeral: true });
    }
  }
  return out;
}

/** What the controller keeps of a Bound claim. */
export interface ClaimFacts extends LauncherClaim {
  claimName: string;
  /** The capacity as the claim writes it (`status.capacity.storage`, e.g. `10Gi`). */
  capacity: string;
}

/**
 * KubeVirt's words: the VMI condition `Synchronized=False` with reason `FailedPvcNotFound` when a claim does not
 * exist (a VM shows it as printableStatus `ErrorPvcNotFound`), and with `PVCNotReady` while one is not Bound
 * (KubeVirt's VM then shows `WaitingForVolumeBinding`).
 */
export const CLAIMS_CONDITION = 'Synchronized';
export const CLAIM_REASONS = { notFound: 'FailedPvcNotFound', notReady: 'PVCNotReady' } as const;
export type ClaimReason = (typeof CLAIM_REASONS)[keyof typeof CLAIM_REASONS];

export type ClaimCheck =
  | {
      ready: true;
      /** Volume name → its claim. */
      claims: Record<string, ClaimFacts>;
      /** For each claim on a PersistentVolume with a required node affinity (a local volume): its terms, one of which the node must match. */
      nodeTerms: V1NodeSelectorTerm[][];
    }
  | { ready: false; reason: ClaimReason; message: string };

export interface CheckClaimsInput {
  namespace: string;
  volumes: readonly Volume[] | undefined;
  /** A claim of the namespace by name (from the informer's cache). */
  claim: (name: string) => V1PersistentVolumeClaim | undefined;
  /** A PersistentVolume by name. */
  volume: (name: string) => V1PersistentVolume | undefined;
}

type One = { facts: ClaimFacts; terms: V1NodeSelectorTerm[] | undefined } | { reason: ClaimReason; why: string };

function bytesOf(q: string | undefined): number | undefined {
  if (q === undefined) return undefined;
  try {
    const v = parseQuantity(q);
    return v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined;
  } catch {
    return undefined;
  }
}

function checkOne(cv: ClaimVolume, input: CheckClaimsInput): One {
  const pvc = input.claim(cv.claimName);
  if (pvc === undefined) return { reason: CLAIM_REASONS.notFound, why: 'does not exist' };
  if (pvc.metadata?.deletionTimestamp !== undefined) return { reason: CLAIM_REASONS.notReady, why: 'is being deleted' };
  const phase = pvc.status?.phase ?? 'Pending';
  if (phase !== 'Bound') {
    const more = phase === 'Lost' ? ' (its PersistentVolume is gone)' : phase === 'Pending' ? ' (no PersistentVolume bound to it yet)' : '';
    return { reason: CLAIM_REASONS.notReady, why: `is ${phase}, not Bound${more}` };
  }
  const capacity = pvc.status?.capacity?.['storage'] ?? pvc.spec?.resources?.requests?.['storage'];
  const capacityBytes = bytesOf(capacity);
  if (capacity === undefined || capacityBytes === undefined) {
    return { reason: CLAIM_REASONS.notReady, why: `is Bound but has no readable capacity (status.capacity.storage: ${JSON.stringify(capacity ?? null)})` };
  }
  let terms: V1NodeSelectorTerm[] | undefined;
  const pvName = pvc.spec?.volumeName;
  if (pvName !== undefined && pvName !== '') {
    const pv = input.volume(pvName);
    if (pv === undefined) return { reason: CLAIM_REASONS.notReady, why: `is Bound to PersistentVolume "${pvName}", which is not found` };
    terms = pv.spec?.nodeAffinity?.required?.nodeSelectorTerms;
  }
  const facts: ClaimFacts = {
    claimName: cv.claimName,
    volumeMode: pvc.spec?.volumeMode === 'Block' ? 'Block' : 'Filesystem',
    capacity,
    capacityBytes,
    accessModes: [...(pvc.status?.accessModes ?? pvc.spec?.accessModes ?? [])],
  };
  return { facts, terms };
}

/**
 * Whether every claim of a VMI can be used: it exists in the VMI's namespace, is not being deleted, is Bound, has a
 * capacity and its PersistentVolume is known. Otherwise one reason (FailedPvcNotFound wins over PVCNotReady) and a
 * message naming every claim that is not ready.
 */
export function checkClaims(input: CheckClaimsInput): ClaimCheck {
  const claims: Record<string, ClaimFacts> = {};
  const nodeTerms: V1NodeSelectorTerm[][] = [];
  const problems: string[] = [];
  let reason: ClaimReason | undefined;
  for (const cv of claimVolumes(input.volumes)) {
    const one = checkOne(cv, input);
    if ('reason' in one) {
      if (reason !== CLAIM_REASONS.notFound) reason = one.reason;
      problems.push(`PersistentVolumeClaim "${cv.claimName}" of volume "${cv.volume}" ${one.why}`);
      continue;
    }
    claims[cv.volume] = one.facts;
    if (one.terms !== undefined && one.terms.length > 0) nodeTerms.push(one.terms);
  }
  if (reason !== undefined) return { ready: false, reason, message: `${problems.join('; ')} (namespace "${input.namespace}")` };
  return { ready: true, claims, nodeTerms };
}

/** The condition a VMI carries while its claims are not ready. */
export function claimsCondition(check: { reason: ClaimReason; message: string }, at: string): Condition {
  return { type: CLAIMS_CONDITION, status: 'False', reason: check.reason, message: check.message, lastTransitionTime: at };
}

/** Whether a condition is one that checkClaims's failure put there (so it goes once the claims are ready). */
export function isClaimsCondition(c: Condition): boolean {
  return c.type === CLAIMS_CONDITION && (c.reason === CLAIM_REASONS.notFound || c.reason === CLAIM_REASONS.notReady);
}

/** A number as a plain decimal string (`0.055`, never `5.5e-2`), as KubeVirt writes a Percent. */
export function decimalString(x: number): string {
  const s = String(x);
  if (!/e/i.test(s)) return s;
  return x.toFixed(20).replace(/0+$/, '').replace(/\.$/, '');
}

/**
 * status.volumeStatus with an entry per claim volume (KubeVirt's persistentVolumeClaimInfo): the node daemon sizes
 * `disk.img` from `capacity.storage` and `filesystemOverhead` and adds its own fields to the same entries later.
 * Entries already there keep their other fields; `filesystemOverhead` (a decimal string) only for Filesystem claims.
 */
export function withClaimVolumeStatus(
  existing: readonly VolumeStatus[] | undefined,
  claims: Readonly<Record<string, ClaimFacts>>,
  overhead: number,
): VolumeStatus[] {
  const out = (existing ?? []).map((e) => ({ ...e }));
  for (const [volume, c] of Object.entries(claims)) {
    const info: VolumeStatus['persistentVolumeClaimInfo'] = {
      claimName: c.claimName,
      accessModes: [...c.accessModes],
      volumeMode: c.volumeMode,
      capacity: { storage: c.capacity },
      ...(c.volumeMode === 'Filesystem' ? { filesystemOverhead: decimalString(overhead) } : {}),
    };
    const at = out.find((e) => e.name === volume);
    if (at !== undefined) at.persistentVolumeClaimInfo = info;
    else out.push({ name: volume, target: '', persistentVolumeClaimInfo: info });
  }
  return out;
}

export type ClaimStep =
  /** Keep the VMI Pending without a pod; `status` is the patch to write, undefined when the VMI already says so. */
  | { action: 'wait'; status: { phase: 'Pending'; conditions: Condition[] } | undefined }
  /** Place the VMI; `volumeStatus` is to be written before the pod is made, undefined when it is current. */
  | { action: 'place'; claims: Record<string, ClaimFacts>; nodeTerms: V1NodeSelectorTerm[][]; volumeStatus: VolumeStatus[] | undefined };

/**
 * What the controller does about a VMI's claims before placing it: wait (with the condition that says why, its
 * lastTransitionTime kept while it stays False; a PodScheduled=False of an earlier try goes, as no node was tried),
 * or place it with its claims' volumeStatus.
 */
export function claimStep(input: { vmi: Pick<VirtualMachineInstance, 'status'>; check: ClaimCheck; filesystemOverhead: number; now: number }): ClaimStep {
  const { vmi, check } = input;
  const conditions = vmi.status?.conditions ?? [];
  if (!check.ready) {
    const old = conditions.find((c) => c.type === CLAIMS_CONDITION);
    if (vmi.status?.phase === 'Pending' && old?.status === 'False' && old.reason === check.reason && old.message === check.message) {
      return { action: 'wait', status: undefined };
    }
    const at = old?.status === 'False' && old.lastTransitionTime ? old.lastTransitionTime : new Date(input.now).toISOString();
    const kept = conditions.filter((c) => c.type !== CLAIMS_CONDITION && !(c.type === 'PodScheduled' && c.status === 'False'));
    return { action: 'wait', status: { phase: 'Pending', conditions: [...kept, claimsCondition(check, at)] } };
  }
  if (Object.keys(check.claims).length === 0) return { action: 'place', claims: {}, nodeTerms: [], volumeStatus: undefined };
  const volumeStatus = withClaimVolumeStatus(vmi.status?.volumeStatus, check.claims, input.filesystemOverhead);
  const current = JSON.stringify(volumeStatus) === JSON.stringify(vmi.status?.volumeStatus ?? []);
  return { action: 'place', claims: check.claims, nodeTerms: check.nodeTerms, volumeStatus: current ? undefined : volumeStatus };
}
