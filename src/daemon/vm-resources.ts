// Pure: a VMI's spec → the cgroup resources of its VM (CPU from requests/limits, memory limit = guest memory + QEMU's overhead), with clear errors before anything is created.
import type { VirtualMachineInstance } from '../api/types.js';
import { parseQuantity } from '../api/quantity.js';
import { resourcesFromSpec, type CgroupResources } from '../cgroups/index.js';
import { VmletError } from '../errors.js';
import { OVERHEAD_ANNOTATION, memoryOverhead } from '../api/overhead.js';
import type { Accel } from '../api/vocabulary.js';

// The overhead formula is pure and shared with the controller's launcher pod, so it lives in api/.
export { OVERHEAD, OVERHEAD_ANNOTATION, memoryOverhead } from '../api/overhead.js';

export interface VmSizing {
  vcpus: number;
  /** domain.memory.guest, bytes. */
  guestBytes: number;
  /** resources.limits.memory, bytes, when given. */
  limitBytes?: number;
  /** From the annotation, when given. */
  overrideOverheadBytes?: number;
  /** CPU part (shares, quota/period) from resources.requests/limits; no memory. */
  cpu: CgroupResources['cpu'];
}

export interface VmResources {
  resources: CgroupResources;
  vcpus: number;
  guestBytes: number;
  overheadBytes: number;
  /** memory.max of the VM's group. */
  memoryLimitBytes: number;
}

function badQuantity(field: string, value: unknown, cause?: unknown): VmletError {
  return new VmletError('CGROUP_INVALID_QUANTITY', `${field}: cannot parse ${JSON.stringify(value)}`, cause === undefined ? undefined : { cause });
}

function bytesOf(field: string, q: unknown): number {
  if (typeof q !== 'string' && typeof q !== 'number') throw badQuantity(field, q);
  let v: bigint;
  try {
    v = parseQuantity(q);
  } catch (e) {
    throw badQuantity(field, q, e);
  }
  if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) throw new VmletError('CGROUP_INVALID_QUANTITY', `${field}: out of range, got ${JSON.stringify(q)}`);
  return Number(v);
}

/**
 * Reads and checks everything the cgroup needs from the VMI. Throws CGROUP_INVALID_QUANTITY
 * (a value that does not parse) or CGROUP_LIMIT_BELOW_REQUEST (a limit below its request, or a
 * memory limit below the guest memory). Pure; call before creating anything.
 */
export function vmSizing(vmi: VirtualMachineInstance): VmSizing {
  const domain = vmi.spec.domain;
  const cpu = domain.cpu ?? { sockets: 1, cores: 1, threads: 1 };
  const vcpus = (cpu.sockets ?? 1) * (cpu.cores ?? 1) * (cpu.threads ?? 1);
  if (!Number.isSafeInteger(vcpus) || vcpus < 1) {
    throw new VmletError('CGROUP_INVALID_RESOURCES', `domain.cpu: sockets×cores×threads must be a positive integer, got ${String(vcpus)}`);
  }
  const res = domain.resources ?? {};
  // resourcesFromSpec parses all four quantities and checks limit ≥ request for cpu and memory.
  const fromSpec = resourcesFromSpec({
    ...(res.requests ? { requests: { ...res.requests } } : {}),
    ...(res.limits ? { limits: { ...res.limits } } : {}),
  });
  const guestQ = domain.memory?.guest ?? res.requests?.memory ?? res.limits?.memory;
  if (guestQ === undefined) throw new VmletError('CGROUP_INVALID_QUANTITY', 'domain.memory.guest: missing (and no resources.requests.memory to take it from)');
  const guestBytes = bytesOf('domain.memory.guest', guestQ);
  if (guestBytes === 0) throw new VmletError('CGROUP_INVALID_QUANTITY', 'domain.memory.guest: must be greater than zero');
  const out: VmSizing = { vcpus, guestBytes, cpu: fromSpec.cpu };
  if (res.limits?.memory !== undefined) {
    const limitBytes = bytesOf('resources.limits.memory', res.limits.memory);
    if (limitBytes < guestBytes) {
      throw new VmletError('CGROUP_LIMIT_BELOW_REQUEST', `resources.limits.memory (${limitBytes} bytes) is below domain.memory.guest (${guestBytes} bytes)`);
    }
    out.limitBytes = limitBytes;
  }
  const ann = vmi.metadata.annotations?.[OVERHEAD_ANNOTATION];
  if (ann !== undefined) out.overrideOverheadBytes = bytesOf(`metadata.annotations["${OVERHEAD_ANNOTATION}"]`, ann);
  return out;
}

/**
 * The VM group's resources: CPU shares/quota from requests/limits (as kubelet does for a
 * container), memory.max = max(guest memory, limits.memory) + overhead (or the annotation's
 * overhead). Pure.
 */
export function vmResources(sizing: VmSizing, accel: Accel): VmResources {
  const overheadBytes = sizing.overrideOverheadBytes ?? memoryOverhead({ guestBytes: sizing.guestBytes, vcpus: sizing.vcpus, accel });
  const memoryLimitBytes = Math.max(sizing.guestBytes, sizing.limitBytes ?? 0) + overheadBytes;
  const resources: CgroupResources = { memory: { max: memoryLimitBytes } };
  if (sizing.cpu !== undefined) resources.cpu = { ...sizing.cpu };
  return { resources, vcpus: sizing.vcpus, guestBytes: sizing.guestBytes, overheadBytes, memoryLimitBytes };
}

/** The VM's group below the configured parent: `<parent>/<uid>`. */
export function vmGroupPath(parent: string, uid: string): string {
  return `${parent.replace(/^\/+|\/+$/g, '')}/${uid}`;
}
