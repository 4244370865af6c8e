// Pure parsing of cgroup statistics files (v2 and v1) into one CgroupStats shape.

/** Usage counters of a group; a field is absent when the kernel does not provide it. */
export interface CgroupStats {
  /** CPU time used, µs (v2 cpu.stat usage_usec; v1 cpuacct.usage ns / 1000). */
  cpuUsageUsec?: number;
  /** Memory charged now, bytes (v2 memory.current; v1 memory.usage_in_bytes). */
  memoryCurrent?: number;
  /** Highest memory charged, bytes (v2 memory.peak when present; v1 memory.max_usage_in_bytes). */
  memoryPeak?: number;
  /** Times the group hit its limit and went OOM (v2 memory.events oom). */
  oomEvents?: number;
  /** Processes killed by the OOM killer in the group (v2 memory.events oom_kill; v1 memory.oom_control oom_kill). */
  oomKills?: number;
  /** v1 only: the group is in OOM right now (memory.oom_control under_oom). */
  underOom?: boolean;
  /** v1 only: times usage hit memory.limit_in_bytes (memory.failcnt). */
  memoryFailcnt?: number;
  /** Tasks in the group (pids.current). */
  pidsCurrent?: number;
}

/** Parses "key value" lines (cpu.stat, memory.events, memory.oom_control, cgroup.events). */
export function parseKeyValues(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k === undefined || k === '' || v === undefined) continue;
    const n = Number(v);
    if (Number.isFinite(n)) out.set(k, n);
  }
  return out;
}

/** Parses a file holding one integer; undefined for missing, "max" or junk. */
export function parseSingle(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const t = text.trim();
  if (!/^-?\d+$/.test(t)) return undefined;
  const n = Number(t);
  return Number.isFinite(n) ? n : undefined;
}

function set<K extends keyof CgroupStats>(s: CgroupStats, k: K, v: CgroupStats[K] | undefined): void {
  if (v !== undefined) s[k] = v;
}

/** File name → content (undefined = absent) of a v2 group. */
export type StatFiles = Readonly<Record<string, string | undefined>>;

export const V2_STAT_FILES = ['cpu.stat', 'memory.current', 'memory.peak', 'memory.events', 'pids.current'] as const;
export const V1_STAT_FILES = [
  'cpuacct.usage',
  'memory.usage_in_bytes',
  'memory.max_usage_in_bytes',
  'memory.oom_control',
  'memory.failcnt',
  'pids.current',
] as const;

export function v2StatsFromFiles(f: StatFiles): CgroupStats {
  const s: CgroupStats = {};
  const cpu = f['cpu.stat'];
  if (cpu !== undefined) set(s, 'cpuUsageUsec', parseKeyValues(cpu).get('usage_usec'));
  set(s, 'memoryCurrent', parseSingle(f['memory.current']));
  set(s, 'memoryPeak', parseSingle(f['memory.peak']));
  const ev = f['memory.events'];
  if (ev !== undefined) {
    const m = parseKeyValues(ev);
    set(s, 'oomEvents', m.get('oom'));
    set(s, 'oomKills', m.get('oom_kill'));
  }
  set(s, 'pidsCurrent', parseSingle(f['pids.current']));
  return s;
}

export function v1StatsFromFiles(f: StatFiles): CgroupStats {
  const s: CgroupStats = {};
  const ns = parseSingle(f['cpuacct.usage']);
  if (ns !== undefined) s.cpuUsageUsec = Math.floor(ns / 1000);
  set(s, 'memoryCurrent', parseSingle(f['memory.usage_in_bytes']));
  set(s, 'memoryPeak', parseSingle(f['memory.max_usage_in_bytes']));
  const oc = f['memory.oom_control'];
  if (oc !== undefined) {
    const m = parseKeyValues(oc);
    set(s, 'oomKills', m.get('oom_kill'));
    const under = m.get('under_oom');
    if (under !== undefined) s.underOom = under !== 0;
  }
  set(s, 'memoryFailcnt', parseSingle(f['memory.failcnt']));
  set(s, 'pidsCurrent', parseSingle(f['pids.current']));
  return s;
}
