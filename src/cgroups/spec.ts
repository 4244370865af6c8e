// Pure bridges from Kubernetes-style requests/limits and dedicated-CPU requests to CgroupResources, with clear errors before anything is created.

import { parseMilliQuantity, parseQuantity } from '../api/quantity.js';
import { VmletError } from '../errors.js';
import { DEFAULT_PERIOD_US, formatCpuList, quotaFromMillis, sharesFromMillis, type CgroupResources } from './resources.js';

/** A Kubernetes quantity: "500m", "2", "1Gi", or a plain number. */
export type QuantityValue = string | number;

export interface ResourceList {
  cpu?: QuantityValue;
  memory?: QuantityValue;
}

export interface ResourceSpec {
  requests?: ResourceList;
  limits?: ResourceList;
}

export interface ResourcesFromSpecOptions {
  /** CFS period in µs for the CPU limit (default 100000). */
  period?: number;
}

function parseField(field: string, q: QuantityValue, milli: boolean): number {
  let v: bigint;
  try {
    v = milli ? parseMilliQuantity(q) : parseQuantity(q);
  } catch (e) {
    throw new VmletError('CGROUP_INVALID_QUANTITY', `${field}: cannot parse ${JSON.stringify(q)}`, { cause: e });
  }
  if (v < 0n) throw new VmletError('CGROUP_INVALID_QUANTITY', `${field}: must not be negative, got ${JSON.stringify(q)}`);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new VmletError('CGROUP_INVALID_QUANTITY', `${field}: too large, got ${JSON.stringify(q)}`);
  return Number(v);
}

/**
 * Turns Kubernetes requests/limits into resources the way kubelet does for a container:
 * requests.cpu → cpu.shares (and so cpu.weight), limits.cpu → CFS quota/period, limits.memory →
 * memory.max. A missing CPU request defaults to the limit, as in Kubernetes. requests.memory only
 * takes part in the limit check (kubelet does not write it either). Throws
 * CGROUP_INVALID_QUANTITY or CGROUP_LIMIT_BELOW_REQUEST.
 */
export function resourcesFromSpec(spec: ResourceSpec, opts: ResourcesFromSpecOptions = {}): CgroupResources {
  const period = opts.period ?? DEFAULT_PERIOD_US;
  const reqCpu = spec.requests?.cpu === undefined ? undefined : parseField('requests.cpu', spec.requests.cpu, true);
  const limCpu = spec.limits?.cpu === undefined ? undefined : parseField('limits.cpu', spec.limits.cpu, true);
  const reqMem = spec.requests?.memory === undefined ? undefined : parseField('requests.memory', spec.requests.memory, false);
  const limMem = spec.limits?.memory === undefined ? undefined : parseField('limits.memory', spec.limits.memory, false);
  if (reqCpu !== undefined && limCpu !== undefined && limCpu < reqCpu) {
    throw new VmletError('CGROUP_LIMIT_BELOW_REQUEST', `limits.cpu (${limCpu}m) is below requests.cpu (${reqCpu}m)`);
  }
  if (reqMem !== undefined && limMem !== undefined && limMem < reqMem) {
    throw new VmletError('CGROUP_LIMIT_BELOW_REQUEST', `limits.memory (${limMem} bytes) is below requests.memory (${reqMem} bytes)`);
  }
  if (limCpu === 0) throw new VmletError('CGROUP_INVALID_QUANTITY', 'limits.cpu: must be greater than zero');
  if (limMem === 0) throw new VmletError('CGROUP_INVALID_QUANTITY', 'limits.memory: must be greater than zero');
  const out: CgroupResources = {};
  const sharesFrom = reqCpu ?? limCpu;
  if (sharesFrom !== undefined || limCpu !== undefined) {
    out.cpu = {};
    if (sharesFrom !== undefined) out.cpu.shares = sharesFromMillis(sharesFrom);
    if (limCpu !== undefined) {
      out.cpu.quota = quotaFromMillis(limCpu, period);
      out.cpu.period = period;
    }
  }
  if (limMem !== undefined) out.memory = { max: limMem };
  return out;
}

export interface DedicatedCpuPlan {
  /** Host CPU for vCPU i at index i. */
  vcpuToCpu: number[];
  /** The same CPUs as a kernel CPU list, for cpuset.cpus of the VM's group. */
  cpuset: string;
}

/**
 * Gives each vCPU a host CPU of its own, lowest numbers first. Throws CGROUP_CPUSET_TOO_SMALL
 * when there are more vCPUs than (distinct) host CPUs, CGROUP_INVALID_RESOURCES on bad input.
 */
export function planDedicatedCpus(vcpus: number, hostCpus: readonly number[]): DedicatedCpuPlan {
  if (!Number.isSafeInteger(vcpus) || vcpus < 1) {
    throw new VmletError('CGROUP_INVALID_RESOURCES', `vCPU count must be a positive integer, got ${String(vcpus)}`);
  }
  for (const c of hostCpus) {
    if (!Number.isSafeInteger(c) || c < 0) throw new VmletError('CGROUP_INVALID_RESOURCES', `host CPU numbers must be non-negative integers, got ${String(c)}`);
  }
  const available = [...new Set(hostCpus)].sort((a, b) => a - b);
  if (vcpus > available.length) {
    throw new VmletError(
      'CGROUP_CPUSET_TOO_SMALL',
      `${vcpus} dedicated vCPUs need ${vcpus} host CPUs, only ${available.length} available (${formatCpuList(available) || 'none'})`,
    );
  }
  const chosen = available.slice(0, vcpus);
  return { vcpuToCpu: chosen, cpuset: formatCpuList(chosen) };
}
