// What pods ask of a node, summed as kube-scheduler does (containers, init containers, sidecars, pod overhead), and the per-node totals kept up to date pod by pod.
import type { V1Container, V1Pod } from '@kubernetes/client-node';
import { parseMilliQuantity, parseQuantity } from '../api/quantity.js';
import { VmletError } from '../errors.js';
import { KVM_RESOURCE, LAUNCHER_COMPONENT, LAUNCHER_LABELS } from './cluster-names.js';

/** The resources node assignment counts: cpu in millicores, memory in bytes, KVM devices. */
export interface Requests {
  milliCpu: number;
  memoryBytes: number;
  kvm: number;
}

export const NO_REQUESTS: Readonly<Requests> = Object.freeze({ milliCpu: 0, memoryBytes: 0, kvm: 0 });

type ResourceMap = Record<string, string> | undefined;

function quantity(where: string, resource: string, q: string, milli: boolean): number {
  let v: bigint;
  try {
    v = milli ? parseMilliQuantity(q) : parseQuantity(q);
  } catch (e) {
    throw new VmletError('INVALID_QUANTITY', `${where}: ${resource}: cannot parse ${JSON.stringify(q)}`, { cause: e });
  }
  if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) throw new VmletError('INVALID_QUANTITY', `${where}: ${resource}: out of range, got ${JSON.stringify(q)}`);
  return Number(v);
}

/** Reads cpu, memory and the KVM device from a resource map; absent ones are 0. Throws INVALID_QUANTITY naming `where`. */
export function requestsOf(map: ResourceMap, where: string): Requests {
  if (map === undefined) return { ...NO_REQUESTS };
  const cpu = map['cpu'];
  const memory = map['memory'];
  const kvm = map[KVM_RESOURCE];
  return {
    milliCpu: cpu === undefined ? 0 : quantity(where, 'cpu', cpu, true),
    memoryBytes: memory === undefined ? 0 : quantity(where, 'memory', memory, false),
    kvm: kvm === undefined ? 0 : quantity(where, KVM_RESOURCE, kvm, false),
  };
}

function add(a: Requests, b: Requests): Requests {
  return { milliCpu: a.milliCpu + b.milliCpu, memoryBytes: a.memoryBytes + b.memoryBytes, kvm: a.kvm + b.kvm };
}

function max(a: Requests, b: Requests): Requests {
  return { milliCpu: Math.max(a.milliCpu, b.milliCpu), memoryBytes: Math.max(a.memoryBytes, b.memoryBytes), kvm: Math.max(a.kvm, b.kvm) };
}

function containerRequests(c: V1Container, where: string): Requests {
  // The API server defaults a missing request to its limit; objects that skipped it (tests, renders) get the same.
  const res = c.resources;
  const merged = res?.limits === undefined ? res?.requests : { ...res.limits, ...res.requests };
  return requestsOf(merged, `${where} container "${c.name}"`);
}

/**
 * A pod's effective requests, as kube-scheduler computes them: the sum of its containers plus
 * its sidecars (init containers with restartPolicy Always), at least the largest init step
 * (an init container plus the sidecars started before it), plus spec.overhead; pod-level
 * spec.resources.requests replace the container sum for cpu and memory. Throws INVALID_QUANTITY.
 */
export function podRequests(pod: V1Pod): Requests {
  const where = `pod ${pod.metadata?.namespace ?? ''}/${pod.metadata?.name ?? ''}`;
  const spec = pod.spec;
  if (spec === undefined) return { ...NO_REQUESTS };
  let sum: Requests = { ...NO_REQUESTS };
  for (const c of spec.containers) sum = add(sum, containerRequests(c, where));
  let sidecars: Requests = { ...NO_REQUESTS };
  let initPeak: Requests = { ...NO_REQUESTS };
  for (const c of spec.initContainers ?? []) {
    const r = containerRequests(c, `${where} init`);
    if (c.restartPolicy === 'Always') {
      sidecars = add(sidecars, r);
      initPeak = max(initPeak, sidecars);
    } else {
      initPeak = max(initPeak, add(r, sidecars));
    }
  }
  let total = max(add(sum, sidecars), initPeak);
  const podLevel = spec.resources?.requests;
  if (podLevel !== undefined) {
    const p = requestsOf(podLevel, `${where} spec.resources`);
    if (podLevel['cpu'] !== undefined) total.milliCpu = p.milliCpu;
    if (podLevel['memory'] !== undefined) total.memoryBytes = p.memoryBytes;
  }
  if (spec.overhead !== undefined) total = add(total, requestsOf(spec.overhead, `${where} spec.overhead`));
  return total;
}

/** Succeeded and Failed pods hold no resources. */
export function isTerminalPod(pod: V1Pod): boolean {
  const phase = pod.status?.phase;
  return phase === 'Succeeded' || phase === 'Failed';
}

/** Whether a pod is a vmlet launcher pod (by its component label). */
export function isLauncherPod(pod: V1Pod): boolean {
  return pod.metadata?.labels?.[LAUNCHER_LABELS.component] === LAUNCHER_COMPONENT;
}

/** What the pods bound to one node ask for. */
export interface NodeLoad {
  readonly requested: Readonly<Requests>;
  /** Non-terminal pods bound to the node (kube-scheduler's pod count). */
  readonly pods: number;
  /** Of those, vmlet launcher pods (the tie-breaker that spreads VMIs). */
  readonly launchers: number;
}

const EMPTY_LOAD: NodeLoad = Object.freeze({ requested: NO_REQUESTS, pods: 0, launchers: 0 });

interface Entry {
  node: string;
  requests: Requests;
  launcher: boolean;
}

interface MutableLoad {
  requested: Requests;
  pods: number;
  launchers: number;
}

/** A pod's key while it lives: namespace/name (a pod just created may not have its uid yet). */
function podKey(pod: V1Pod): string {
  return `${pod.metadata?.namespace ?? ''}/${pod.metadata?.name ?? ''}`;
}

/**
 * Per-node totals of the pods bound to each node, updated pod by pod from informer events:
 * addPod is an upsert (a pod that became terminal or lost its node is taken out), removePod
 * forgets it. Each update is O(1), so node assignment reads a node's load in O(1).
 */
export class NodeUsage {
  private readonly loads = new Map<string, MutableLoad>();
  private readonly entries = new Map<string, Entry>();

  /** Totals of the given pods. Throws INVALID_QUANTITY on a pod whose requests do not parse. */
  static fromPods(pods: Iterable<V1Pod>): NodeUsage {
    const usage = new NodeUsage();
    for (const p of pods) usage.addPod(p);
    return usage;
  }

  /** Counts (or recounts) a pod. Unbound and terminal pods count nothing. Throws INVALID_QUANTITY and then changes nothing. */
  addPod(pod: V1Pod): void {
    const node = pod.spec?.nodeName;
    const counts = node !== undefined && node !== '' && !isTerminalPod(pod);
    const entry: Entry | undefined = counts ? { node, requests: podRequests(pod), launcher: isLauncherPod(pod) } : undefined;
    const key = podKey(pod);
    this.drop(key);
    if (entry === undefined) return;
    this.entries.set(key, entry);
    const load = this.loads.get(entry.node) ?? { requested: { ...NO_REQUESTS }, pods: 0, launchers: 0 };
    load.requested = add(load.requested, entry.requests);
    load.pods += 1;
    if (entry.launcher) load.launchers += 1;
    this.loads.set(entry.node, load);
  }

  /** Forgets a pod (deleted). */
  removePod(pod: V1Pod): void {
    this.drop(podKey(pod));
  }

  /** The load of a node; zero for a node without pods. */
  load(node: string): NodeLoad {
    return this.loads.get(node) ?? EMPTY_LOAD;
  }

  /** How many pods are counted, on all nodes. */
  get podCount(): number {
    return this.entries.size;
  }

  private drop(key: string): void {
    const old = this.entries.get(key);
    if (old === undefined) return;
    this.entries.delete(key);
    const load = this.loads.get(old.node);
    if (load === undefined) return;
    const r = load.requested;
    load.requested = { milliCpu: r.milliCpu - old.requests.milliCpu, memoryBytes: r.memoryBytes - old.requests.memoryBytes, kvm: r.kvm - old.requests.kvm };
    load.pods -= 1;
    if (old.launcher) load.launchers -= 1;
    if (load.pods === 0) this.loads.delete(old.node);
  }
}
