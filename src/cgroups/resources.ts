// Cgroup resources as plain data (shaped like containerd's LinuxResources), their validation, the v1↔v2 unit conversions and CPU-list helpers.

import { VmletError } from '../errors.js';

/** A byte or count limit; `'max'` means unlimited. */
export type Limit = number | 'max';

/**
 * CPU resources. `shares` is the v1 unit (2..262144), `weight` the v2 unit (1..10000); give one
 * and the other is derived (give both to pin each). `quota`/`period` are microseconds of CPU time
 * per period (`'max'` = no limit). `cpus`/`mems` are kernel CPU/NUMA-node lists ("0-3,6").
 */
export interface CpuResources {
  shares?: number;
  weight?: number;
  quota?: Limit;
  period?: number;
  cpus?: string;
  mems?: string;
}

/** Memory in bytes. `max` is the hard limit, `high` the v2 throttle limit, `swapMax` the swap alone (not memory+swap). */
export interface MemoryResources {
  max?: Limit;
  high?: Limit;
  swapMax?: Limit;
}

export interface PidsResources {
  max?: Limit;
}

/** IO weight in the v2 unit (1..10000) or the v1 unit (`blkioWeight`, 10..1000); the other is derived. */
export interface IoResources {
  weight?: number;
  blkioWeight?: number;
}

export interface CgroupResources {
  cpu?: CpuResources;
  memory?: MemoryResources;
  pids?: PidsResources;
  io?: IoResources;
}

/** One write into a group directory: file name (relative to the group) and the exact text written. */
export type CgroupWrite = readonly [file: string, value: string];

export const MIN_SHARES = 2;
export const MAX_SHARES = 262144;
export const MIN_WEIGHT = 1;
export const MAX_WEIGHT = 10000;
export const DEFAULT_PERIOD_US = 100000;
export const MIN_QUOTA_US = 1000;
export const MIN_PERIOD_US = 1000;
export const MAX_PERIOD_US = 1000000;
export const MIN_BLKIO_WEIGHT = 10;
export const MAX_BLKIO_WEIGHT = 1000;

function invalid(message: string): VmletError {
  return new VmletError('CGROUP_INVALID_RESOURCES', message);
}

function isInt(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n);
}

/**
 * Kubernetes' MilliCPUToShares: 1024 shares per CPU, integer division, clamped to [2, 262144]
 * (a zero request gets the minimum, as BestEffort pods do).
 */
export function sharesFromMillis(millis: number): number {
  if (!isInt(millis) || millis < 0) throw invalid(`CPU millicores must be a non-negative integer, got ${String(millis)}`);
  const shares = Math.floor((millis * 1024) / 1000);
  return Math.min(MAX_SHARES, Math.max(MIN_SHARES, shares));
}

/**
 * runc's and crun's shares→weight mapping (ConvertCPUSharesToCgroupV2Value): the v1 range
 * [2, 262144] is laid linearly onto the v2 range [1, 10000], integer division; 0 stays 0 ("unset").
 */
export function weightFromShares(shares: number): number {
  if (!isInt(shares) || shares < 0) throw invalid(`cpu shares must be a non-negative integer, got ${String(shares)}`);
  if (shares === 0) return 0;
  const s = Math.min(MAX_SHARES, Math.max(MIN_SHARES, shares));
  return 1 + Math.floor(((s - 2) * 9999) / 262142);
}

/** The inverse of weightFromShares: the smallest shares that map to this weight (so the round trip is exact). */
export function sharesFromWeight(weight: number): number {
  if (!isInt(weight) || weight < 0) throw invalid(`cpu weight must be a non-negative integer, got ${String(weight)}`);
  if (weight === 0) return 0;
  const w = Math.min(MAX_WEIGHT, Math.max(MIN_WEIGHT, weight));
  return 2 + Math.ceil(((w - 1) * 262142) / 9999);
}

/**
 * Kubernetes' MilliCPUToQuota: CPU-time per period = millis × period / 1000, at least 1000 µs
 * (the kernel's minimum quota). 0 millicores means "no limit" and returns `'max'`.
 */
export function quotaFromMillis(millis: number, period: number = DEFAULT_PERIOD_US): Limit {
  if (!isInt(millis) || millis < 0) throw invalid(`CPU millicores must be a non-negative integer, got ${String(millis)}`);
  if (!isInt(period) || period < MIN_PERIOD_US || period > MAX_PERIOD_US)
    throw invalid(`cpu period must be an integer in [${MIN_PERIOD_US}, ${MAX_PERIOD_US}] µs, got ${String(period)}`);
  if (millis === 0) return 'max';
  return Math.max(MIN_QUOTA_US, Math.floor((millis * period) / 1000));
}

/**
 * runc's blkio→io weight mapping (ConvertBlkIOToIOWeightValue): [10, 1000] laid linearly onto
 * [1, 10000], integer division; 0 stays 0.
 */
export function ioWeightFromBlkio(blkioWeight: number): number {
  if (!isInt(blkioWeight) || blkioWeight < 0) throw invalid(`blkio weight must be a non-negative integer, got ${String(blkioWeight)}`);
  if (blkioWeight === 0) return 0;
  const b = Math.min(MAX_BLKIO_WEIGHT, Math.max(MIN_BLKIO_WEIGHT, blkioWeight));
  return 1 + Math.floor(((b - 10) * 9999) / 990);
}

/** The inverse of ioWeightFromBlkio: the smallest blkio weight that maps to this io weight. */
export function blkioFromIoWeight(weight: number): number {
  if (!isInt(weight) || weight < 0) throw invalid(`io weight must be a non-negative integer, got ${String(weight)}`);
  if (weight === 0) return 0;
  const w = Math.min(MAX_WEIGHT, Math.max(MIN_WEIGHT, weight));
  return 10 + Math.ceil(((w - 1) * 990) / 9999);
}

/**
 * v1 memory.memsw.limit_in_bytes holds memory+swap, v2 memory.swap.max holds swap alone
 * (runc's ConvertMemorySwapToCgroupV2Value goes v1→v2 by subtracting; this adds). `'max'` stays
 * unlimited. Throws when swap is limited but memory is not: v1 cannot express that.
 */
export function memswFromSwap(memoryMax: Limit | undefined, swapMax: Limit): Limit {
  if (swapMax === 'max') return 'max';
  if (memoryMax === undefined || memoryMax === 'max') {
    throw invalid('a swap limit needs a memory limit on cgroup v1 (memory.memsw.limit_in_bytes is memory+swap)');
  }
  return memoryMax + swapMax;
}

const CPU_LIST_RE = /^\d+(-\d+)?(,\d+(-\d+)?)*$/;

/** Parses a kernel CPU list ("0-3,6,8-9") into sorted unique numbers. Empty text is the empty list. */
export function parseCpuList(text: string): number[] {
  const t = text.trim();
  if (t === '') return [];
  if (!CPU_LIST_RE.test(t)) throw invalid(`not a CPU list: ${JSON.stringify(text)}`);
  const out = new Set<number>();
  for (const part of t.split(',')) {
    const [a = '', b] = part.split('-');
    const lo = Number.parseInt(a, 10);
    const hi = b === undefined ? lo : Number.parseInt(b, 10);
    if (hi < lo) throw invalid(`descending range in CPU list: ${JSON.stringify(text)}`);
    if (hi - lo > 65536) throw invalid(`CPU list range too large: ${JSON.stringify(text)}`);
    for (let i = lo; i <= hi; i++) out.add(i);
  }
  return [...out].sort((x, y) => x - y);
}

/** Formats CPU numbers as a kernel CPU list with ranges ("0-3,6"). */
export function formatCpuList(cpus: readonly number[]): string {
  const sorted = [...new Set(cpus)].sort((x, y) => x - y);
  const parts: string[] = [];
  let i = 0;
  while (i < sorted.length) {
    const start = sorted[i] as number;
    let end = start;
    while (i + 1 < sorted.length && sorted[i + 1] === end + 1) {
      end += 1;
      i += 1;
    }
    parts.push(start === end ? `${start}` : `${start}-${end}`);
    i += 1;
  }
  return parts.join(',');
}

function checkRange(what: string, v: unknown, lo: number, hi: number): void {
  if (!isInt(v) || v < lo || v > hi) throw invalid(`${what} must be an integer in [${lo}, ${hi}], got ${JSON.stringify(v)}`);
}

function checkLimit(what: string, v: unknown, min: number): void {
  if (v === 'max') return;
  if (!isInt(v) || v < min) throw invalid(`${what} must be an integer ≥ ${min} or "max", got ${JSON.stringify(v)}`);
}

/** Checks every field's type and range; throws CGROUP_INVALID_RESOURCES. Pure; call before creating anything. */
export function validateResources(r: CgroupResources): void {
  const { cpu, memory, pids, io } = r;
  if (cpu !== undefined) {
    if (cpu.shares !== undefined) checkRange('cpu.shares', cpu.shares, MIN_SHARES, MAX_SHARES);
    if (cpu.weight !== undefined) checkRange('cpu.weight', cpu.weight, MIN_WEIGHT, MAX_WEIGHT);
    if (cpu.period !== undefined) checkRange('cpu.period', cpu.period, MIN_PERIOD_US, MAX_PERIOD_US);
    if (cpu.quota !== undefined) checkLimit('cpu.quota', cpu.quota, MIN_QUOTA_US);
    if (cpu.cpus !== undefined && parseCpuList(cpu.cpus).length === 0) throw invalid('cpu.cpus must not be empty');
    if (cpu.mems !== undefined && parseCpuList(cpu.mems).length === 0) throw invalid('cpu.mems must not be empty');
  }
  if (memory !== undefined) {
    if (memory.max !== undefined) checkLimit('memory.max', memory.max, 1);
    if (memory.high !== undefined) checkLimit('memory.high', memory.high, 1);
    if (memory.swapMax !== undefined) checkLimit('memory.swapMax', memory.swapMax, 0);
  }
  if (pids?.max !== undefined) checkLimit('pids.max', pids.max, 1);
  if (io !== undefined) {
    if (io.weight !== undefined) checkRange('io.weight', io.weight, MIN_WEIGHT, MAX_WEIGHT);
    if (io.blkioWeight !== undefined) checkRange('io.blkioWeight', io.blkioWeight, MIN_BLKIO_WEIGHT, MAX_BLKIO_WEIGHT);
  }
}

/** Names of the controllers (v2 names: cpu, cpuset, memory, pids, io) that these resources need. */
export function controllersFor(r: CgroupResources): string[] {
  const out: string[] = [];
  const cpu = r.cpu;
  if (cpu !== undefined && (cpu.shares !== undefined || cpu.weight !== undefined || cpu.quota !== undefined || cpu.period !== undefined)) out.push('cpu');
  if (cpu !== undefined && (cpu.cpus !== undefined || cpu.mems !== undefined)) out.push('cpuset');
  if (r.memory !== undefined && Object.values(r.memory).some((v) => v !== undefined)) out.push('memory');
  if (r.pids?.max !== undefined) out.push('pids');
  if (r.io !== undefined && (r.io.weight !== undefined || r.io.blkioWeight !== undefined)) out.push('io');
  return out;
}
