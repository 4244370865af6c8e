// The daemon's per-VM cgroups: one group `<parent>/<uid>` per VMI, its live statistics, and finding and removing groups that belong to no VMI.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { cgroupManager, type CgroupLayout, type CgroupManager, type CgroupStats, type ManagerOptions } from '../cgroups/index.js';
import { vmGroupPath } from './vm-resources.js';

/** `status.vmlet.stats` of a VMI (docs/cgroups.md, "Per-VM statistics"). */
export interface VmStats {
  /** The VM's group, relative to each hierarchy root. */
  cgroup: string;
  cpuUsageUsec?: number;
  memoryCurrentBytes?: number;
  memoryPeakBytes?: number;
  /** memory.max / memory.limit_in_bytes of the group; absent when unlimited. */
  memoryLimitBytes?: number;
  oomKills?: number;
  pidsCurrent?: number;
  /** When the files were read (ISO 8601). */
  collectedAt: string;
}

export interface VmCgroupsOptions {
  layout: CgroupLayout;
  /** Parent group of every VM group, relative to each hierarchy root (config `cgroupParent`). */
  parent: string;
  manager?: ManagerOptions;
  now?: () => number;
}

const V1_UNLIMITED = 2 ** 62;

export class VmCgroups {
  constructor(private readonly opts: VmCgroupsOptions) {}

  get parent(): string {
    return this.opts.parent;
  }

  /** A handle on the VM's group; does no I/O. */
  manager(uid: string): CgroupManager {
    return cgroupManager(this.opts.layout, vmGroupPath(this.opts.parent, uid), this.opts.manager ?? {});
  }

  get mode(): CgroupLayout['mode'] {
    return this.opts.layout.mode;
  }

  /** The uids of the VM groups that exist under the parent (in any hierarchy we use); spare launchers' groups (a leading dot) are none. */
  async listUids(): Promise<string[]> {
    return (await this.listNames()).filter((n) => !n.startsWith('.'));
  }

  /** Every group under the parent (in any hierarchy we use). */
  async listNames(): Promise<string[]> {
    const l = this.opts.layout;
    const roots = l.mode === 'v2' ? [l.unified] : Object.values(l.hierarchies);
    const out = new Set<string>();
    for (const root of new Set(roots)) {
      if (root === undefined) continue;
      const dir = path.join(root, this.opts.parent);
      const ents = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const e of ents) if (e.isDirectory()) out.add(e.name);
    }
    return [...out];
  }

  /** Live statistics of the VM's group, or undefined when it does not exist. */
  async stats(uid: string): Promise<VmStats | undefined> {
    const m = this.manager(uid);
    if (!(await m.exists().catch(() => false))) return undefined;
    let s: CgroupStats;
    try {
      s = await m.stats();
    } catch {
      return undefined;
    }
    const out: VmStats = { cgroup: m.group, collectedAt: new Date((this.opts.now ?? Date.now)()).toISOString() };
    if (s.cpuUsageUsec !== undefined) out.cpuUsageUsec = s.cpuUsageUsec;
    if (s.memoryCurrent !== undefined) out.memoryCurrentBytes = s.memoryCurrent;
    if (s.memoryPeak !== undefined) out.memoryPeakBytes = s.memoryPeak;
    const limit = await this.memoryLimit(m);
    if (limit !== undefined) out.memoryLimitBytes = limit;
    if (s.oomKills !== undefined) out.oomKills = s.oomKills;
    if (s.pidsCurrent !== undefined) out.pidsCurrent = s.pidsCurrent;
    return out;
  }

  private async memoryLimit(m: CgroupManager): Promise<number | undefined> {
    const p = m.paths();
    const file =
      p.version === 2
        ? path.join(p.dirs[0] ?? '', 'memory.max')
        : p.byController.memory === undefined
          ? undefined
          : path.join(p.byController.memory, 'memory.limit_in_bytes');
    if (file === undefined) return undefined;
    const text = (await fs.readFile(file, 'utf8').catch(() => '')).trim();
    if (!/^\d+$/.test(text)) return undefined;
    const n = Number(text);
    return n >= V1_UNLIMITED ? undefined : n;
  }

  /** Kills what is left in the VM's group (only after QEMU is gone) and removes it. */
  async remove(uid: string, log?: Logger): Promise<void> {
    const m = this.manager(uid);
    if (!(await m.exists().catch(() => false))) {
      await m.delete().catch(() => undefined); // half-made groups (some hierarchies only)
      return;
    }
    try {
      await m.kill();
    } catch (e) {
      log?.warn({ err: e, cgroup: m.group }, 'could not empty the VM cgroup');
    }
    await m.delete();
  }
}
