// The cgroup v1 manager: one directory per hierarchy for each group, cpuset seeded from the parent, freezer-based freeze and kill.

import { dirname, join } from 'node:path';
import { VmletError } from '../errors.js';
import type { ApplyResult, CgroupManager, CgroupPaths, CreateOptions } from './manager.js';
import {
  checkChildName,
  errnoOf,
  mkdirOnce,
  mkdirUnless,
  normaliseGroupPath,
  parsePids,
  pollUntil,
  readOptional,
  readValue,
  removeTree,
  resolveDeps,
  writeValue,
  type ManagerDeps,
  type ResolvedDeps,
} from './fs.js';
import { controllersFor, validateResources, type CgroupResources, type CgroupWrite, type Limit } from './resources.js';
import { V1_STAT_FILES, v1StatsFromFiles, type CgroupStats } from './stats.js';
import { checkPid, signalQuietly } from './v2.js';
import { OPTIONAL_FILES, v1ControllerOf, v1Writes } from './writes.js';

/** Hierarchies a group is created in by default (devices and name=systemd are left alone). */
export const DEFAULT_V1_CONTROLLERS: readonly string[] = ['cpu', 'cpuacct', 'cpuset', 'memory', 'pids', 'blkio', 'freezer'];
/** Hierarchies of a per-thread sub-group. */
export const V1_THREAD_CONTROLLERS: readonly string[] = ['cpu', 'cpuacct', 'cpuset'];

/** A v1 memory limit at or above this is "unlimited" (the kernel shows PAGE_COUNTER_MAX × page size). */
const V1_UNLIMITED = 2 ** 62;

export interface V1ManagerOptions extends ManagerDeps {
  /** Hierarchies to create the group in (default DEFAULT_V1_CONTROLLERS, each only if mounted). */
  controllers?: readonly string[];
}

/** v2 controller name → v1 hierarchy name. */
function v1Name(c: string): string {
  return c === 'io' ? 'blkio' : c;
}

export class V1Manager implements CgroupManager {
  readonly version = 1 as const;
  readonly group: string;
  readonly threaded: boolean;
  private readonly hierarchies: Readonly<Record<string, string>>;
  private readonly byController: Readonly<Record<string, string>>;
  private readonly dirs: string[];
  private readonly deps: ResolvedDeps;
  private readonly options: V1ManagerOptions;

  /** `hierarchies` maps controller → mount point (from detectCgroupLayout); `group` is a path below each. Does no I/O. */
  constructor(hierarchies: Readonly<Record<string, string>>, group: string, opts: V1ManagerOptions = {}, threaded = false) {
    this.group = normaliseGroupPath(group);
    this.threaded = threaded;
    this.hierarchies = hierarchies;
    this.options = opts;
    this.deps = resolveDeps(opts);
    let wanted = opts.controllers ?? DEFAULT_V1_CONTROLLERS;
    if (threaded) wanted = wanted.filter((c) => V1_THREAD_CONTROLLERS.includes(c));
    const by: Record<string, string> = {};
    for (const c of wanted) {
      const mount = hierarchies[c];
      if (mount !== undefined) by[c] = join(mount, this.group);
    }
    this.byController = by;
    this.dirs = [...new Set(Object.values(by))];
  }

  private dirOf(controller: string): string | undefined {
    return this.byController[controller];
  }

  private need(controller: string): string {
    const d = this.dirOf(controller);
    if (d === undefined)
      throw new VmletError(
        'CGROUP_CONTROLLER_UNAVAILABLE',
        `no ${controller} hierarchy for ${this.group} (mounted: ${Object.keys(this.hierarchies).join(', ') || 'none'})`,
      );
    return d;
  }

  async create(opts: CreateOptions = {}): Promise<ApplyResult> {
    const resources = opts.resources ?? {};
    validateResources(resources);
    v1Writes(resources); // throws on combinations v1 cannot express, before anything exists
    const needed = controllersFor(resources).map(v1Name);
    if (this.threaded) {
      const bad = needed.filter((c) => !V1_THREAD_CONTROLLERS.includes(c));
      if (bad.length > 0) throw new VmletError('CGROUP_INVALID_RESOURCES', `a per-thread group can only take cpu and cpuset resources, not ${bad.join(', ')}`);
    }
    for (const c of needed) this.need(c);
    const segs = this.group.split('/');
    const cpusetDir = this.dirOf('cpuset');
    const seen = new Set<string>();
    const made: Promise<void>[] = [];
    for (const [controller, dir] of Object.entries(this.byController)) {
      if (seen.has(dir)) continue; // co-mounted controllers share one directory
      seen.add(dir);
      const cpuset = dir === cpusetDir;
      // Every level; a v1 cpuset group starts with empty cpus/mems and refuses tasks until both are set.
      const walk = async (): Promise<void> => {
        let parent = this.hierarchies[controller] as string;
        for (const seg of segs) {
          const d = join(parent, seg);
          await mkdirOnce(this.deps.fs, d);
          if (cpuset && !(await this.seedCpuset(parent, d)))
            throw new VmletError('CGROUP_CREATE_FAILED', `${parent} has an empty cpuset.cpus or cpuset.mems to give ${d}: set both there`);
          parent = d;
        }
      };
      // The levels above a VM's group (the daemon's parent group) are there but for the first VM: the group alone
      // first, and the walk only when a level is missing or the parent's cpuset is empty.
      const leafFirst = async (): Promise<void> => {
        if (segs.length > 1 && (await mkdirUnless(this.deps.fs, dir, ['EEXIST', 'ENOENT'])) !== 'ENOENT') {
          if (!cpuset || (await this.seedCpuset(dirname(dir), dir))) return;
        }
        await walk();
      };
      // The hierarchies are independent: made side by side.
      made.push(leafFirst());
    }
    const results = await Promise.allSettled(made);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    return this.apply(resources);
  }

  /** Copies the parent's cpus and mems into a group that has none; false (nothing written) when the parent has none either. */
  private async seedCpuset(parent: string, dir: string): Promise<boolean> {
    for (const f of ['cpuset.cpus', 'cpuset.mems']) {
      const own = (await readValue(this.deps.fs, join(dir, f))).trim();
      if (own !== '') continue;
      const inherited = (await readValue(this.deps.fs, join(parent, f))).trim();
      if (inherited === '') return false;
      await writeValue(this.deps.fs, join(dir, f), inherited, 'CGROUP_CREATE_FAILED');
    }
    return true;
  }

  async exists(): Promise<boolean> {
    for (const d of this.dirs) if (!(await this.deps.fs.exists(join(d, 'cgroup.procs')))) return false;
    return this.dirs.length > 0;
  }

  async apply(resources: CgroupResources): Promise<ApplyResult> {
    validateResources(resources);
    const memDir = this.dirOf('memory');
    const blkioDir = this.dirOf('blkio');
    const [swapAccounting, blkioWeight, curText] = await Promise.all([
      memDir !== undefined && this.deps.fs.exists(join(memDir, 'memory.memsw.limit_in_bytes')),
      blkioDir !== undefined && this.deps.fs.exists(join(blkioDir, 'blkio.weight')),
      memDir !== undefined && resources.memory !== undefined ? readOptional(this.deps.fs, join(memDir, 'memory.limit_in_bytes')) : undefined,
    ]);
    let currentMemoryLimit: Limit = 'max';
    const cur = Number(curText?.trim() ?? '');
    if (curText !== undefined && Number.isFinite(cur) && cur > 0 && cur < V1_UNLIMITED) currentMemoryLimit = cur;
    const writes = v1Writes(resources, { swapAccounting, blkioWeight, currentMemoryLimit });
    const skipped: string[] = [];
    if (resources.memory?.high !== undefined) skipped.push('memory.high');
    if (resources.memory?.swapMax !== undefined && !swapAccounting) skipped.push('memory.memsw.limit_in_bytes');
    const io = resources.io;
    if (io !== undefined && (io.weight !== undefined || io.blkioWeight !== undefined) && !blkioWeight) skipped.push('blkio.weight');
    // In order within a hierarchy (e.g. memory.limit_in_bytes before memsw), the hierarchies side by side.
    const outcome: Array<'written' | 'skipped' | undefined> = writes.map(() => undefined);
    const byDir = new Map<string, number[]>();
    writes.forEach(([file], i) => {
      const dir = this.need(v1ControllerOf(file));
      byDir.set(dir, [...(byDir.get(dir) ?? []), i]);
    });
    const runs = [...byDir].map(async ([dir, indexes]) => {
      for (const i of indexes) outcome[i] = await this.writeOne(dir, writes[i]!);
    });
    const failed = (await Promise.allSettled(runs)).find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const written: CgroupWrite[] = [];
    writes.forEach(([file, value], i) => {
      if (outcome[i] === 'written') written.push([join(this.need(v1ControllerOf(file)), file), value]);
      else skipped.push(file);
    });
    return { written, skipped };
  }

  /** One limit write; a file this kernel lacks is skipped when it is optional. */
  private async writeOne(dir: string, [file, value]: CgroupWrite): Promise<'written' | 'skipped'> {
    const path = join(dir, file);
    try {
      await this.deps.fs.writeFile(path, value);
    } catch (e) {
      const code = errnoOf(e);
      if (code === 'ENOENT' && OPTIONAL_FILES.has(file)) return 'skipped';
      throw new VmletError(
        code === 'ENOENT' ? 'CGROUP_CONTROLLER_UNAVAILABLE' : 'CGROUP_WRITE_FAILED',
        `cannot write ${JSON.stringify(value)} to ${path} (${code ?? 'error'})`,
        { cause: e },
      );
    }
    return 'written';
  }

  async addProcess(pid: number): Promise<void> {
    checkPid(pid);
    for (const d of this.dirs) await writeValue(this.deps.fs, join(d, 'cgroup.procs'), String(pid), 'CGROUP_ADD_FAILED');
  }

  async addThread(tid: number): Promise<void> {
    checkPid(tid);
    for (const d of this.dirs) await writeValue(this.deps.fs, join(d, 'tasks'), String(tid), 'CGROUP_ADD_FAILED');
  }

  async createThreadedChild(name: string, opts: CreateOptions = {}): Promise<CgroupManager> {
    checkChildName(name);
    const child = new V1Manager(this.hierarchies, `${this.group}/${name}`, this.options, true);
    await child.create(opts);
    return child;
  }

  private async union(file: string): Promise<number[]> {
    const out = new Set<number>();
    for (const d of this.dirs) for (const p of parsePids(await readValue(this.deps.fs, join(d, file)))) out.add(p);
    return [...out].sort((a, b) => a - b);
  }

  procs(): Promise<number[]> {
    return this.union('cgroup.procs');
  }

  threads(): Promise<number[]> {
    return this.union('tasks');
  }

  private async setState(want: 'FROZEN' | 'THAWED'): Promise<void> {
    const file = join(this.need('freezer'), 'freezer.state');
    await writeValue(this.deps.fs, file, want);
    const state = async (): Promise<boolean> => (await readValue(this.deps.fs, file)).trim() === want;
    // A group can hang in FREEZING; writing FROZEN again nudges it along (as runc does).
    const ok = await pollUntil(this.deps, state, async () => {
      await this.deps.fs.writeFile(file, want).catch(() => undefined);
    });
    if (!ok) {
      if (want === 'FROZEN') await this.deps.fs.writeFile(file, 'THAWED').catch(() => undefined);
      throw new VmletError('CGROUP_FREEZE_TIMEOUT', `${file} not ${want} after ${this.deps.timeoutMs} ms`);
    }
  }

  freeze(): Promise<void> {
    return this.setState('FROZEN');
  }

  thaw(): Promise<void> {
    return this.setState('THAWED');
  }

  private async allProcs(dir: string): Promise<number[]> {
    const own = parsePids((await readOptional(this.deps.fs, join(dir, 'cgroup.procs'))) ?? '');
    let subs: string[] = [];
    try {
      subs = await this.deps.fs.subdirs(dir);
    } catch {
      subs = [];
    }
    for (const s of subs) own.push(...(await this.allProcs(join(dir, s))));
    return own;
  }

  private async everyProc(): Promise<number[]> {
    const out = new Set<number>();
    for (const d of this.dirs) for (const p of await this.allProcs(d)) out.add(p);
    return [...out];
  }

  async kill(): Promise<void> {
    if (this.threaded) throw new VmletError('CGROUP_UNSUPPORTED', `cannot kill a per-thread group (${this.group}); kill its parent group`);
    const frozen = this.dirOf('freezer') !== undefined;
    // v1 has no cgroup.kill: freeze so nothing forks meanwhile, SIGKILL every pid, thaw to let them die.
    if (frozen) await this.freeze();
    try {
      for (const pid of await this.everyProc()) signalQuietly(this.deps, pid);
    } finally {
      if (frozen) await this.thaw();
    }
    const empty = await pollUntil(
      this.deps,
      async () => (await this.everyProc()).length === 0,
      async () => {
        for (const pid of await this.everyProc()) signalQuietly(this.deps, pid);
      },
    );
    if (!empty) throw new VmletError('CGROUP_KILL_TIMEOUT', `${this.group} still has processes ${this.deps.timeoutMs} ms after SIGKILL`);
  }

  async delete(): Promise<void> {
    for (const d of this.dirs) await removeTree(this.deps, d);
  }

  async stats(): Promise<CgroupStats> {
    const files: Record<string, string | undefined> = {};
    for (const f of V1_STAT_FILES) {
      const d = this.dirOf(v1ControllerOf(f));
      files[f] = d === undefined ? undefined : await readOptional(this.deps.fs, join(d, f));
    }
    return v1StatsFromFiles(files);
  }

  paths(): CgroupPaths {
    return { version: 1, byController: { ...this.byController }, dirs: [...this.dirs] };
  }
}
