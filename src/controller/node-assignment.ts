// Picks the node for a VMI's launcher pod (pure): the predicates a node must pass, the least loaded of those that do, or a kube-scheduler-like message saying why none did.
import type { V1Lease, V1Node, V1NodeSelectorRequirement, V1NodeSelectorTerm, V1Taint, V1Toleration } from '@kubernetes/client-node';
import { parseMilliQuantity, parseQuantity } from '../api/quantity.js';
import { HEARTBEAT, KVM_LABEL, KVM_RESOURCE, SCHEDULABLE_LABEL, VMLET_NAMESPACE, heartbeatLeaseName } from './cluster-names.js';
import type { NodeUsage, Requests } from './node-usage.js';
import { placementOf, type PlacedVmi, type Placement } from './placement.js';

export { NodeUsage, podRequests, type NodeLoad, type Requests } from './node-usage.js';

/** Why a node was passed over, in the order the predicates run; a node counts under its first failing one. */
export const REASONS = {
  notReady: 'node(s) were not ready',
  cordoned: 'node(s) were unschedulable',
  affinity: "node(s) didn't match Pod's node affinity/selector",
  volumeAffinity: 'node(s) had volume node affinity conflict',
  taint: 'node(s) had untolerated taint', // followed by " {key: value}"
  notVmlet: `node(s) were not vmlet nodes (no label ${SCHEDULABLE_LABEL}=true)`,
  noHeartbeat: 'node(s) had no vmlet heartbeat',
  noKvm: `node(s) had no KVM (no label ${KVM_LABEL}=true)`,
  tooManyPods: 'Too many pods',
  cpu: 'Insufficient cpu',
  memory: 'Insufficient memory',
  kvmDevice: `Insufficient ${KVM_RESOURCE}`,
} as const;
export type ReasonKind = keyof typeof REASONS;
const REASON_ORDER = Object.keys(REASONS) as ReasonKind[];

export interface AssignNodeInput {
  /** Its nodeSelector, affinity.nodeAffinity (required part) and tolerations are honoured. */
  vmi: PlacedVmi;
  /** The launcher pod's requests (podRequests of the rendered pod). */
  requests: Requests;
  nodes: readonly V1Node[];
  /** The pods already bound to each node. */
  usage: NodeUsage;
  /** The heartbeat Leases (`vmlet/vmlet-node-<node>`); others are ignored. */
  leases: Iterable<V1Lease>;
  /** The VMI runs under software emulation: no KVM needed. */
  emulation: boolean;
  now: number | Date;
  /** The required node affinity of each PersistentVolume the VMI's claims are bound to (local volumes): a node matches one term of each. */
  volumeNodeTerms?: ReadonlyArray<readonly V1NodeSelectorTerm[]>;
}

export type Assignment = { node: string } | { unschedulable: { message: string; reasons: Record<string, number> } };

/** What assignment reads of a node, parsed once per V1Node object. */
interface NodeFacts {
  ready: boolean;
  alloc: Requests;
  allocPods: number;
  /** The NoSchedule and NoExecute taints. */
  taints: V1Taint[];
}

const factsCache = new WeakMap<V1Node, NodeFacts>();

/** An allocatable quantity; one that does not parse counts as 0, so the node fails the fit with "Insufficient …". */
function allocatable(node: V1Node, resource: string, milli: boolean): number {
  const q = node.status?.allocatable?.[resource];
  if (q === undefined) return 0;
  try {
    const v = Number(milli ? parseMilliQuantity(q) : parseQuantity(q));
    return Number.isFinite(v) && v > 0 ? v : 0;
  } catch {
    return 0;
  }
}

function factsOf(node: V1Node): NodeFacts {
  let f = factsCache.get(node);
  if (f === undefined) {
    f = {
      ready: node.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false,
      alloc: { milliCpu: allocatable(node, 'cpu', true), memoryBytes: allocatable(node, 'memory', false), kvm: allocatable(node, KVM_RESOURCE, false) },
      allocPods: allocatable(node, 'pods', false),
      taints: (node.spec?.taints ?? []).filter((t) => t.effect === 'NoSchedule' || t.effect === 'NoExecute'),
    };
    factsCache.set(node, f);
  }
  return f;
}

/** Whether a toleration tolerates a taint (Kubernetes' rules: empty effect matches all, empty key with Exists matches every key). */
export function toleratesTaint(tol: V1Toleration, taint: V1Taint): boolean {
  if (tol.effect !== undefined && tol.effect !== '' && tol.effect !== taint.effect) return false;
  if (tol.key !== undefined && tol.key !== '' && tol.key !== taint.key) return false;
  const op = tol.operator ?? 'Equal';
  if (op === 'Exists') return true;
  if (op !== 'Equal') return false;
  // An empty key is only valid with Exists.
  if (tol.key === undefined || tol.key === '') return false;
  return (tol.value ?? '') === (taint.value ?? '');
}

/** The first NoSchedule/NoExecute taint no toleration tolerates, or undefined. */
export function untoleratedTaint(taints: readonly V1Taint[], tolerations: readonly V1Toleration[]): V1Taint | undefined {
  for (const t of taints) {
    if (t.effect !== 'NoSchedule' && t.effect !== 'NoExecute') continue;
    if (!tolerations.some((tol) => toleratesTaint(tol, t))) return t;
  }
  return undefined;
}

function intOf(s: string | undefined): number | undefined {
  if (s === undefined || !/^[+-]?\d+$/.test(s)) return undefined;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** One requirement against a value that may be absent (a label, or metadata.name). Unknown operators match nothing. */
export function matchesRequirement(req: V1NodeSelectorRequirement, value: string | undefined): boolean {
  const values = req.values ?? [];
  switch (req.operator) {
    case 'In':
      return value !== undefined && values.includes(value);
    case 'NotIn':
      return value === undefined || !values.includes(value);
    case 'Exists':
      return value !== undefined;
    case 'DoesNotExist':
      return value === undefined;
    case 'Gt':
    case 'Lt': {
      const have = intOf(value);
      const want = values.length === 1 ? intOf(values[0]) : undefined;
      if (have === undefined || want === undefined) return false;
      return req.operator === 'Gt' ? have > want : have < want;
    }
    default:
      return false;
  }
}

/** A term matches when all its expressions and fields do; an empty term matches nothing. matchFields knows only metadata.name (In, NotIn). */
export function matchesTerm(term: V1NodeSelectorTerm, labels: Record<string, string>, nodeName: string): boolean {
  const exprs = term.matchExpressions ?? [];
  const fields = term.matchFields ?? [];
  if (exprs.length === 0 && fields.length === 0) return false;
  for (const e of exprs) if (!matchesRequirement(e, labels[e.key])) return false;
  for (const f of fields) {
    if (f.key !== 'metadata.name' || (f.operator !== 'In' && f.operator !== 'NotIn')) return false;
    if (!matchesRequirement(f, nodeName)) return false;
  }
  return true;
}

/** nodeSelector (every pair) and the required node affinity (any term) against a node. */
export function matchesPlacement(p: Placement, node: V1Node): boolean {
  const labels = node.metadata?.labels ?? {};
  for (const [k, v] of Object.entries(p.nodeSelector ?? {})) if (labels[k] !== v) return false;
  const required = p.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution;
  if (required === undefined) return true;
  const name = node.metadata?.name ?? '';
  return required.nodeSelectorTerms.some((term) => matchesTerm(term, labels, name));
}

function msOf(t: Date | string | number | undefined): number | undefined {
  if (t === undefined) return undefined;
  const ms = t instanceof Date ? t.getTime() : typeof t === 'number' ? t : Date.parse(t);
  return Number.isFinite(ms) ? ms : undefined;
}

/** A heartbeat is fresh while renewTime + leaseDurationSeconds (40 s when unset) is after now. */
export function leaseFresh(lease: V1Lease | undefined, nowMs: number): boolean {
  // renewTime is a Date from the client's deserializer, a string in raw JSON.
  const renewed = msOf(lease?.spec?.renewTime as Date | string | undefined);
  if (renewed === undefined) return false;
  const duration = lease?.spec?.leaseDurationSeconds ?? HEARTBEAT.durationSeconds;
  return renewed + duration * 1000 > nowMs;
}

function taintText(t: V1Taint): string {
  return `${REASONS.taint} {${t.key}: ${t.value ?? ''}}`;
}

const UNSCHEDULABLE_TAINT: V1Taint = { key: 'node.kubernetes.io/unschedulable', effect: 'NoSchedule' };

function firstFailure(input: AssignNodeInput, p: Placement, node: V1Node, heartbeats: ReadonlyMap<string, V1Lease>, nowMs: number): string | undefined {
  const f = factsOf(node);
  const name = node.metadata?.name ?? '';
  const tolerations = p.tolerations ?? [];
  if (!f.ready) return REASONS.notReady;
  // As kube-scheduler: a cordoned node still takes pods that tolerate its unschedulable taint.
  if (node.spec?.unschedulable === true && untoleratedTaint([UNSCHEDULABLE_TAINT], tolerations) !== undefined) return REASONS.cordoned;
  if (!matchesPlacement(p, node)) return REASONS.affinity;
  const labels = node.metadata?.labels ?? {};
  if ((input.volumeNodeTerms ?? []).some((terms) => !terms.some((term) => matchesTerm(term, labels, name)))) return REASONS.volumeAffinity;
  const taint = untoleratedTaint(f.taints, tolerations);
  if (taint !== undefined) return taintText(taint);
  if (labels[SCHEDULABLE_LABEL] !== 'true') return REASONS.notVmlet;
  if (!leaseFresh(heartbeats.get(heartbeatLeaseName(name)), nowMs)) return REASONS.noHeartbeat;
  if (!input.emulation && labels[KVM_LABEL] !== 'true') return REASONS.noKvm;
  const load = input.usage.load(name);
  const req = input.requests;
  if (load.pods + 1 > f.allocPods) return REASONS.tooManyPods;
  // As kube-scheduler's fit: a resource the pod does not ask for is not checked.
  if (req.milliCpu > 0 && req.milliCpu > f.alloc.milliCpu - load.requested.milliCpu) return REASONS.cpu;
  if (req.memoryBytes > 0 && req.memoryBytes > f.alloc.memoryBytes - load.requested.memoryBytes) return REASONS.memory;
  if (req.kvm > 0 && req.kvm > f.alloc.kvm - load.requested.kvm) return REASONS.kvmDevice;
  return undefined;
}

function fraction(used: number, alloc: number): number {
  if (alloc > 0) return used / alloc;
  return used > 0 ? Number.POSITIVE_INFINITY : 0;
}

/** The load of a node after placing `req` there: the larger of its cpu and memory fractions (lower is better). */
export function scoreAfter(node: V1Node, usage: NodeUsage, req: Requests): number {
  const f = factsOf(node);
  const load = usage.load(node.metadata?.name ?? '');
  return Math.max(
    fraction(load.requested.milliCpu + req.milliCpu, f.alloc.milliCpu),
    fraction(load.requested.memoryBytes + req.memoryBytes, f.alloc.memoryBytes),
  );
}

/** Orders reasons as REASON_ORDER (taints among themselves by text) and writes kube-scheduler's sentence. */
export function unschedulableMessage(total: number, counts: ReadonlyMap<string, number>): { message: string; reasons: Record<string, number> } {
  const rank = (r: string): number => {
    const i = REASON_ORDER.findIndex((k) => REASONS[k] === r);
    return i >= 0 ? i : REASON_ORDER.indexOf('taint');
  };
  const sorted = [...counts.keys()].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
  const reasons: Record<string, number> = {};
  for (const r of sorted) reasons[r] = counts.get(r) ?? 0;
  const parts = sorted.map((r) => `${reasons[r]} ${r}`);
  return { message: `0/${total} nodes are available${parts.length > 0 ? `: ${parts.join(', ')}` : ''}.`, reasons };
}

/**
 * Chooses the node for a VMI: of the nodes that pass every predicate (docs/node-assignment.md),
 * the one with the lowest load after placement, then the fewest launcher pods, then the first
 * name. O(nodes) given the usage. Pure: `now` and every object come from the caller.
 */
export function assignNode(input: AssignNodeInput): Assignment {
  const nowMs = input.now instanceof Date ? input.now.getTime() : input.now;
  const p = placementOf(input.vmi);
  const heartbeats = new Map<string, V1Lease>();
  for (const l of input.leases) {
    const ns = l.metadata?.namespace;
    const name = l.metadata?.name;
    if (name !== undefined && (ns === undefined || ns === VMLET_NAMESPACE)) heartbeats.set(name, l);
  }
  const counts = new Map<string, number>();
  let best: { name: string; score: number; launchers: number } | undefined;
  for (const node of input.nodes) {
    const failure = firstFailure(input, p, node, heartbeats, nowMs);
    if (failure !== undefined) {
      counts.set(failure, (counts.get(failure) ?? 0) + 1);
      continue;
    }
    const name = node.metadata?.name ?? '';
    const score = scoreAfter(node, input.usage, input.requests);
    const launchers = input.usage.load(name).launchers;
    if (
      best === undefined ||
      score < best.score ||
      (score === best.score && (launchers < best.launchers || (launchers === best.launchers && name < best.name)))
    ) {
      best = { name, score, launchers };
    }
  }
  if (best !== undefined) return { node: best.name };
  return { unschedulable: unschedulableMessage(input.nodes.length, counts) };
}
