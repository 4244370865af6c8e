// The cgroup v2 manager: one directory per group in the unified hierarchy, controllers enabled from the root down.

import { join } from 'node:path';
import { VmletError } from '../errors.js';
import type { ApplyResult, CgroupManager, CgroupPaths, CreateOptions } from './manager.js';
import {
  checkChildName,
  errnoOf,
  mkdirOnce,
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
import { controllersFor, type CgroupResources, type CgroupWrite } from './resources.js';
import { V2_STAT_FILES, parseKeyValues, v2StatsFromFiles, type CgroupStats } from './stats.js';
import { OPTIONAL_FILES, v2Writes } from './writes.js';

/** Controllers enabled on the way down to a group, where the parent offers them. */
export const DEFAULT_V2_CONTROLLERS: readonly string[] = ['cpu', 'cpuset', 'memory', 'pids', 'io'];
/** Controllers that work inside a threaded subtree (cgroup-v2.rst, "Threads"). */
export const V2_THREADED_CONTROLLERS: readonly string[] = ['cpu', 'cpuset', 'pids'];

export interface V2ManagerOptions extends ManagerDeps {
  /** Controllers to enable for the group (default DEFAULT_V2_CONTROLLERS, each only if available). */
  controllers?: readonly string[];
}

function words(text: string): string[] {
  return text.split(/\s+/).filter((w) => w !== '');
}

export class V2Manager implements CgroupManager {
  readonly version = 2 as const;
  readonly group: string;
  readonly threaded: boolean;
  private readonly mount: string;
  private readonly dir: string;
  private readonly deps: ResolvedDeps;
  private readonly wanted: readonly string[];
  private readonly options: V2ManagerOptions;

  /** `mount` is the cgroup2 mount point (e.g. /sys/fs/cgroup), `group` a path below it. Does no I/O. */
  constructor(mount: string, group: string, opts: V2ManagerOptions = {}, threaded = false) {
    this.mount = mount;
    this.group = normaliseGroupPath(group);
    this.dir = join(mount, this.group);
    this.threaded = threaded;
    this.options = opts;
    this.deps = resolveDeps(opts);
    this.wanted = opts.controllers ?? DEFAULT_V2_CONTROLLERS;
  }

  private file(name: string, dir = this.dir): string {
    return join(dir, name);
  }

  private async controllersOf(dir: string): Promise<string[]> {
    return words(await readValue(this.deps.fs, join(dir, 'cgroup.controllers')));
  }

  /** Enables `wanted` ∩ available in dir's subtree_control, with one write for the missing ones. Returns what is enabled afterwards. */
  private async enable(dir: string, wanted: readonly string[]): Promise<string[]> {
    const available = await this.controllersOf(dir);
    const enabled = words(await readValue(this.deps.fs, join(dir, 'cgroup.subtree_control')));
    const missing = wanted.filter((c) => available.includes(c) && !enabled.includes(c));
    if (missing.length === 0) return enabled;
    const value = missing.map((c) => `+${c}`).join(' ');
    try {
      await this.deps.fs.writeFile(join(dir, 'cgroup.subtree_control'), value);
    } catch (e) {
      const code = errnoOf(e);
      const hint =
        code === 'EBUSY'
          ? ': the group holds processes itself (no-internal-process rule); move them into a leaf group first'
          : code === 'EOPNOTSUPP'
            ? ': the group is part of a threaded subtree, where only threaded controllers can be enabled'
            : '';
      throw new VmletError('CGROUP_ENABLE_FAILED', `cannot enable ${value} in ${dir} (${code ?? 'error'})${hint}`, { cause: e });
    }
    return [...enabled, ...missing];
  }

  async create(opts: CreateOptions = {}): Promise<ApplyResult> {
    const resources = opts.resources ?? {};
    const writes = v2Writes(resources); // validates before anything is touched
    const needed = controllersFor(resources);
    const parent = join(this.dir, '..');
    if (this.threaded) {
      const bad = needed.filter((c) => !V2_THREADED_CONTROLLERS.includes(c));
      if (bad.length > 0)
        throw new VmletError(
          'CGROUP_INVALID_RESOURCES',
          `a threaded group can only take ${V2_THREADED_CONTROLLERS.join(', ')} resources, not ${bad.join(', ')}`,
        );
      const available = await this.controllersOf(parent);
      this.requireAvailable(needed, available, parent);
      await mkdirOnce(this.deps.fs, this.dir);
      const type = (await readValue(this.deps.fs, this.file('cgroup.type'))).trim();
      if (type !== 'threaded') await writeValue(this.deps.fs, this.file('cgroup.type'), 'threaded', 'CGROUP_CREATE_FAILED');
      const enabled = await this.enable(parent, [...new Set([...this.wanted.filter((c) => V2_THREADED_CONTROLLERS.includes(c)), ...needed])]);
      this.requireAvailable(needed, enabled, parent);
      return this.applyWrites(writes, []);
    }
    // Everything the resources need must be offered at the root, or nothing is created.
    this.requireAvailable(needed, await this.controllersOf(this.mount), this.mount);
    const want = [...new Set([...this.wanted, ...needed])];
    let dir = this.mount;
    let enabled: string[] = [];
    for (const seg of this.group.split('/')) {
      enabled = await this.enable(dir, want);
      dir = join(dir, seg);
      await mkdirOnce(this.deps.fs, dir);
    }
    this.requireAvailable(needed, enabled, parent);
    return this.applyWrites(writes, []);
  }

  private requireAvailable(needed: readonly string[], available: readonly string[], where: string): void {
    const missing = needed.filter((c) => !available.includes(c));
    if (missing.length > 0) {
      throw new VmletError(
        'CGROUP_CONTROLLER_UNAVAILABLE',
        `controller(s) ${missing.join(', ')} not available in ${where} (offered: ${available.join(' ') || 'none'})`,
      );
    }
  }

  async exists(): Promise<boolean> {
    return this.deps.fs.exists(this.file('cgroup.procs'));
  }

  apply(resources: CgroupResources): Promise<ApplyResult> {
    return this.applyWrites(v2Writes(resources), []);
  }

  private async applyWrites(writes: readonly CgroupWrite[], skipped: string[]): Promise<ApplyResult> {
    const written: CgroupWrite[] = [];
    for (const [file, value] of writes) {
      const path = this.file(file);
      try {
        await this.deps.fs.writeFile(path, value);
      } catch (e) {
        const code = errnoOf(e);
        if (code === 'ENOENT' && OPTIONAL_FILES.has(file)) {
          skipped.push(file);
          continue;
        }
        if (code === 'ENOENT') {
          throw new VmletError(
            'CGROUP_CONTROLLER_UNAVAILABLE',
            `${path} does not exist: controller ${file.split('.')[0] ?? file} is not enabled for ${this.group}`,
            { cause: e },
          );
        }
        throw new VmletError('CGROUP_WRITE_FAILED', `cannot write ${JSON.stringify(value)} to ${path} (${code ?? 'error'})`, { cause: e });
      }
      written.push([path, value]);
    }
    return { written, skipped };
  }

  async addProcess(pid: number): Promise<void> {
    checkPid(pid);
    await writeValue(this.deps.fs, this.file('cgroup.procs'), String(pid), 'CGROUP_ADD_FAILED');
  }

  async addThread(tid: number): Promise<void> {
    checkPid(tid);
    await writeValue(this.deps.fs, this.file('cgroup.threads'), String(tid), 'CGROUP_ADD_FAILED');
  }

  async createThreadedChild(name: string, opts: CreateOptions = {}): Promise<CgroupManager> {
    checkChildName(name);
    const child = new V2Manager(this.mount, `${this.group}/${name}`, this.options, true);
    await child.create(opts);
    return child;
  }

  async procs(): Promise<number[]> {
    return parsePids(await readValue(this.deps.fs, this.file('cgroup.procs')));
  }

  async threads(): Promise<number[]> {
    return parsePids(await readValue(this.deps.fs, this.file('cgroup.threads')));
  }

  private async event(key: string): Promise<number | undefined> {
    return parseKeyValues(await readValue(this.deps.fs, this.file('cgroup.events'))).get(key);
  }

  private async setFrozen(frozen: boolean): Promise<void> {
    await writeValue(this.deps.fs, this.file('cgroup.freeze'), frozen ? '1' : '0');
    const want = frozen ? 1 : 0;
    const ok = await pollUntil(this.deps, async () => (await this.event('frozen')) === want);
    if (!ok) {
      if (frozen) await this.deps.fs.writeFile(this.file('cgroup.freeze'), '0').catch(() => undefined);
      throw new VmletError('CGROUP_FREEZE_TIMEOUT', `${this.dir} not ${frozen ? 'frozen' : 'thawed'} after ${this.deps.timeoutMs} ms`);
    }
  }

  freeze(): Promise<void> {
    return this.setFrozen(true);
  }

  thaw(): Promise<void> {
    return this.setFrozen(false);
  }

  /** pids in this group and every group below it. */
  private async allProcs(dir = this.dir): Promise<number[]> {
    const own = parsePids((await readOptional(this.deps.fs, join(dir, 'cgroup.procs'))) ?? '');
    let subs: string[] = [];
    try {
      subs = await this.deps.fs.subdirs(dir);
    } catch {
      subs = [];
    }
    for (const s of subs) own.push(...(await this.allProcs(join(dir, s))));
    return [...new Set(own)];
  }

  async kill(): Promise<void> {
    if (this.threaded) throw new VmletError('CGROUP_UNSUPPORTED', `cannot kill a threaded group (${this.group}); kill its domain group`);
    const hasKill = await this.deps.fs.exists(this.file('cgroup.kill'));
    if (hasKill) {
      await writeValue(this.deps.fs, this.file('cgroup.kill'), '1');
    } else {
      // Older kernels (< 5.14): freeze so nothing forks meanwhile, SIGKILL every pid, thaw to let them die.
      await this.freeze();
      try {
        for (const pid of await this.allProcs()) signalQuietly(this.deps, pid);
      } finally {
        await this.thaw();
      }
    }
    const empty = await pollUntil(
      this.deps,
      async () => (await this.event('populated')) === 0,
      async () => {
        if (!hasKill) for (const pid of await this.allProcs()) signalQuietly(this.deps, pid);
      },
    );
    if (!empty) throw new VmletError('CGROUP_KILL_TIMEOUT', `${this.dir} still has processes ${this.deps.timeoutMs} ms after SIGKILL`);
  }

  delete(): Promise<void> {
    return removeTree(this.deps, this.dir);
  }

  async stats(): Promise<CgroupStats> {
    const files: Record<string, string | undefined> = {};
    for (const f of V2_STAT_FILES) files[f] = await readOptional(this.deps.fs, this.file(f));
    return v2StatsFromFiles(files);
  }

  paths(): CgroupPaths {
    return { version: 2, dir: this.dir, dirs: [this.dir] };
  }
}

export function checkPid(pid: number): void {
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new VmletError('CGROUP_ADD_FAILED', `not a pid: ${String(pid)}`);
}

export function signalQuietly(deps: ResolvedDeps, pid: number): void {
  try {
    deps.signal(pid, 'SIGKILL');
  } catch (e) {
    if (errnoOf(e) !== 'ESRCH') throw new VmletError('CGROUP_KILL_FAILED', `cannot SIGKILL ${pid} (${errnoOf(e) ?? 'error'})`, { cause: e });
  }
}
