// Pure translation of CgroupResources into the ordered [file, value] writes of cgroup v2 and of cgroup v1.

import {
  DEFAULT_PERIOD_US,
  blkioFromIoWeight,
  ioWeightFromBlkio,
  memswFromSwap,
  sharesFromWeight,
  validateResources,
  weightFromShares,
  type CgroupResources,
  type CgroupWrite,
  type Limit,
} from './resources.js';

/** Files a kernel may lack even with the controller on (no iocost, swap accounting off, no BFQ/CFQ): skipped, not an error. */
export const OPTIONAL_FILES: ReadonlySet<string> = new Set(['io.weight', 'blkio.weight', 'memory.swap.max', 'memory.memsw.limit_in_bytes']);

function v2Limit(v: Limit): string {
  return v === 'max' ? 'max' : String(v);
}

function v1Limit(v: Limit): string {
  return v === 'max' ? '-1' : String(v);
}

/** The writes for a cgroup v2 group, in order. Validates first (CGROUP_INVALID_RESOURCES). */
export function v2Writes(r: CgroupResources): CgroupWrite[] {
  validateResources(r);
  const out: CgroupWrite[] = [];
  const { cpu, memory, pids, io } = r;
  if (cpu !== undefined) {
    const weight = cpu.weight ?? (cpu.shares !== undefined ? weightFromShares(cpu.shares) : undefined);
    if (weight !== undefined) out.push(['cpu.weight', String(weight)]);
    if (cpu.quota !== undefined || cpu.period !== undefined) {
      // "$QUOTA $PERIOD"; an unset quota is "max" (no limit), as runc writes it.
      out.push(['cpu.max', `${v2Limit(cpu.quota ?? 'max')} ${cpu.period ?? DEFAULT_PERIOD_US}`]);
    }
    if (cpu.cpus !== undefined) out.push(['cpuset.cpus', cpu.cpus]);
    if (cpu.mems !== undefined) out.push(['cpuset.mems', cpu.mems]);
  }
  if (memory !== undefined) {
    if (memory.max !== undefined) out.push(['memory.max', v2Limit(memory.max)]);
    if (memory.high !== undefined) out.push(['memory.high', v2Limit(memory.high)]);
    if (memory.swapMax !== undefined) out.push(['memory.swap.max', v2Limit(memory.swapMax)]);
  }
  if (pids?.max !== undefined) out.push(['pids.max', v2Limit(pids.max)]);
  if (io !== undefined) {
    const weight = io.weight ?? (io.blkioWeight !== undefined ? ioWeightFromBlkio(io.blkioWeight) : undefined);
    if (weight !== undefined) out.push(['io.weight', `default ${weight}`]);
  }
  return out;
}

export interface V1WriteOptions {
  /** Whether memory.memsw.limit_in_bytes exists (swap accounting on). Default true. */
  swapAccounting?: boolean;
  /** Whether blkio.weight exists (CFQ/BFQ weight). Default true. */
  blkioWeight?: boolean;
  /** The group's current memory.limit_in_bytes, to order the memory/memsw writes; unknown = unlimited. */
  currentMemoryLimit?: Limit;
}

/** The writes for a cgroup v1 group, in order; each file's prefix names its hierarchy. Validates first. */
export function v1Writes(r: CgroupResources, opts: V1WriteOptions = {}): CgroupWrite[] {
  validateResources(r);
  const out: CgroupWrite[] = [];
  const { cpu, memory, pids, io } = r;
  if (cpu !== undefined) {
    const shares = cpu.shares ?? (cpu.weight !== undefined ? sharesFromWeight(cpu.weight) : undefined);
    if (shares !== undefined) out.push(['cpu.shares', String(shares)]);
    if (cpu.quota !== undefined || cpu.period !== undefined) {
      out.push(['cpu.cfs_period_us', String(cpu.period ?? DEFAULT_PERIOD_US)]);
      out.push(['cpu.cfs_quota_us', v1Limit(cpu.quota ?? 'max')]);
    }
    if (cpu.cpus !== undefined) out.push(['cpuset.cpus', cpu.cpus]);
    if (cpu.mems !== undefined) out.push(['cpuset.mems', cpu.mems]);
  }
  if (memory !== undefined) out.push(...v1MemoryWrites(memory.max, memory.swapMax, opts));
  // memory.high has no v1 counterpart (soft_limit_in_bytes only acts under global pressure): not written.
  if (pids?.max !== undefined) out.push(['pids.max', pids.max === 'max' ? 'max' : String(pids.max)]);
  if (io !== undefined && opts.blkioWeight !== false) {
    const w = io.blkioWeight ?? (io.weight !== undefined ? blkioFromIoWeight(io.weight) : undefined);
    if (w !== undefined) out.push(['blkio.weight', String(w)]);
  }
  return out;
}

const LIMIT = 'memory.limit_in_bytes';
const MEMSW = 'memory.memsw.limit_in_bytes';

// The kernel insists limit ≤ memsw at every moment, so the order of the two writes depends on
// whether we grow or shrink; this is runc's rule (v1 memory.go): memsw first when it becomes
// unlimited or when the current limit is below the new memsw, else the limit first.
function v1MemoryWrites(max: Limit | undefined, swapMax: Limit | undefined, opts: V1WriteOptions): CgroupWrite[] {
  const swapOn = opts.swapAccounting !== false;
  let memsw: Limit | undefined;
  if (swapOn && swapMax !== undefined) memsw = memswFromSwap(max, swapMax);
  else if (swapOn && max === 'max') memsw = 'max'; // an unlimited memory with a finite memsw would be refused
  const limitWrite: CgroupWrite | undefined = max === undefined ? undefined : [LIMIT, v1Limit(max)];
  if (memsw === undefined) return limitWrite === undefined ? [] : [limitWrite];
  const memswWrite: CgroupWrite = [MEMSW, v1Limit(memsw)];
  if (limitWrite === undefined) return [memswWrite];
  const current = opts.currentMemoryLimit ?? 'max';
  const memswFirst = memsw === 'max' || (current !== 'max' && current < memsw);
  return memswFirst ? [memswWrite, limitWrite] : [limitWrite, memswWrite];
}

/** The v1 hierarchy (controller name) a v1 file belongs to: its prefix before the first dot. */
export function v1ControllerOf(file: string): string {
  const dot = file.indexOf('.');
  return dot < 0 ? file : file.slice(0, dot);
}
