// A fake cgroupfs in a temp dir: a CgroupFs that lays out the files the kernel would show and imitates the few kernel rules the managers depend on, logging every write.

import { mkdtemp, mkdir, readFile, readdir, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import type { CgroupFs } from '../../src/cgroups/index.js';

function errno(code: string, msg: string): Error {
  return Object.assign(new Error(`${code}: ${msg}`), { code });
}

// Kernel order of controllers in cgroup.controllers / subtree_control.
const V2_ORDER = ['cpuset', 'cpu', 'io', 'memory', 'hugetlb', 'pids', 'rdma', 'misc'];
const V2_THREADED = new Set(['cpuset', 'cpu', 'pids']);

export interface FakeOptions {
  version: 1 | 2;
  /** v2: controllers in the root's cgroup.controllers (default cpuset cpu io memory pids). */
  rootControllers?: string[];
  /** v2: cgroup.kill exists (kernel ≥ 5.14). Default true. */
  kill?: boolean;
  /** v2: memory.peak exists. Default true. */
  peak?: boolean;
  /** v2 memory.swap.max / v1 memory.memsw.* exist (swap accounting). Default true. */
  swap?: boolean;
  /** v2 io.weight / v1 blkio.weight exist. Default true. */
  ioWeight?: boolean;
  /** v1 hierarchies to mount (default cpu cpuacct cpuset memory pids blkio freezer). */
  hierarchies?: string[];
  /** cgroup.freeze / freezer.state never reach frozen. */
  freezeStuck?: boolean;
}

export interface FakeWrite {
  /** Path relative to the fake root. */
  file: string;
  value: string;
}

export class FakeCgroupTree implements CgroupFs {
  readonly root: string;
  readonly opts: FakeOptions;
  readonly writes: FakeWrite[] = [];
  readonly rmdirs: string[] = [];
  /** dir (relative) → how many rmdir calls to answer EBUSY before obeying. */
  readonly busy = new Map<string, number>();
  readonly signals: Array<[number, string]> = [];

  private constructor(root: string, opts: FakeOptions) {
    this.root = root;
    this.opts = opts;
  }

  static async make(opts: FakeOptions): Promise<FakeCgroupTree> {
    const root = await mkdtemp(join(tmpdir(), 'vmlet-fake-cgroup-'));
    const t = new FakeCgroupTree(root, opts);
    if (opts.version === 2) {
      await t.put(root, {
        'cgroup.controllers': (opts.rootControllers ?? ['cpuset', 'cpu', 'io', 'memory', 'pids']).join(' '),
        'cgroup.subtree_control': '',
        'cgroup.procs': '',
        'cgroup.threads': '',
        'cgroup.max.depth': 'max',
        'cpu.stat': 'usage_usec 0\nuser_usec 0\nsystem_usec 0\n',
      });
    } else {
      for (const h of t.hierarchyNames()) {
        const d = join(root, h);
        await mkdir(d);
        await t.put(d, { 'cgroup.procs': '', tasks: '', ...t.v1Files(h, true) });
      }
    }
    return t;
  }

  hierarchyNames(): string[] {
    return this.opts.hierarchies ?? ['cpu', 'cpuacct', 'cpuset', 'memory', 'pids', 'blkio', 'freezer'];
  }

  /** v1: controller → mount point, as detectCgroupLayout would report. */
  hierarchies(): Record<string, string> {
    return Object.fromEntries(this.hierarchyNames().map((h) => [h, join(this.root, h)]));
  }

  async cleanup(): Promise<void> {
    await rm(this.root, { recursive: true, force: true });
  }

  rel(path: string): string {
    return relative(this.root, path);
  }

  /** Writes logged for files with this base name, or below this relative dir. */
  writesTo(name: string): FakeWrite[] {
    return this.writes.filter((w) => basename(w.file) === name);
  }

  async read(rel: string): Promise<string> {
    return readFile(join(this.root, rel), 'utf8');
  }

  /** Sets a file's content behind the manager's back (the kernel's side of things). */
  async set(rel: string, value: string): Promise<void> {
    await writeFile(join(this.root, rel), value);
  }

  private async put(dir: string, files: Record<string, string>): Promise<void> {
    for (const [name, content] of Object.entries(files)) await writeFile(join(dir, name), content);
  }

  private v1Files(h: string, isRoot: boolean): Record<string, string> {
    const swap = this.opts.swap !== false;
    switch (h) {
      case 'cpu':
        return { 'cpu.shares': '1024', 'cpu.cfs_period_us': '100000', 'cpu.cfs_quota_us': '-1' };
      case 'cpuacct':
        return { 'cpuacct.usage': '0' };
      case 'cpuset':
        return isRoot ? { 'cpuset.cpus': '0-3', 'cpuset.mems': '0' } : { 'cpuset.cpus': '', 'cpuset.mems': '' };
      case 'memory':
        return {
          'memory.limit_in_bytes': '9223372036854771712',
          'memory.usage_in_bytes': '0',
          'memory.max_usage_in_bytes': '0',
          'memory.failcnt': '0',
          'memory.oom_control': 'oom_kill_disable 0\nunder_oom 0\noom_kill 0\n',
          ...(swap ? { 'memory.memsw.limit_in_bytes': '9223372036854771712' } : {}),
        };
      case 'pids':
        return isRoot ? {} : { 'pids.max': 'max', 'pids.current': '0' };
      case 'blkio':
        return this.opts.ioWeight === false ? {} : { 'blkio.weight': '500' };
      case 'freezer':
        return isRoot ? {} : { 'freezer.state': 'THAWED' };
      default:
        return {};
    }
  }

  private v2Files(controller: string): Record<string, string> {
    switch (controller) {
      case 'cpu':
        return { 'cpu.weight': '100', 'cpu.max': 'max 100000' };
      case 'cpuset':
        return { 'cpuset.cpus': '', 'cpuset.mems': '', 'cpuset.cpus.effective': '0-3' };
      case 'memory':
        return {
          'memory.max': 'max',
          'memory.high': 'max',
          'memory.current': '0',
          'memory.events': 'low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n',
          ...(this.opts.peak === false ? {} : { 'memory.peak': '0' }),
          ...(this.opts.swap === false ? {} : { 'memory.swap.max': 'max', 'memory.swap.current': '0' }),
        };
      case 'pids':
        return { 'pids.max': 'max', 'pids.current': '0' };
      case 'io':
        return this.opts.ioWeight === false ? {} : { 'io.weight': 'default 100' };
      default:
        return {};
    }
  }

  private isRoot(dir: string): boolean {
    if (this.opts.version === 2) return dir === this.root;
    return dirname(dir) === this.root;
  }

  private async words(path: string): Promise<string[]> {
    try {
      return (await readFile(path, 'utf8')).split(/\s+/).filter((w) => w !== '');
    } catch {
      return [];
    }
  }

  // ---- CgroupFs ----

  readFile(path: string): Promise<string> {
    return readFile(path, 'utf8');
  }

  async exists(path: string): Promise<boolean> {
    try {
      await stat(path);
      return true;
    } catch {
      return false;
    }
  }

  async subdirs(path: string): Promise<string[]> {
    const entries = await readdir(path, { withFileTypes: true });
    return entries.filter((e) => e.isDirectory()).map((e) => e.name);
  }

  async mkdir(path: string): Promise<void> {
    await mkdir(path); // EEXIST / ENOENT as the kernel would
    const parent = dirname(path);
    if (this.opts.version === 2) {
      const controllers = await this.words(join(parent, 'cgroup.subtree_control'));
      const files: Record<string, string> = {
        'cgroup.controllers': controllers.join(' '),
        'cgroup.subtree_control': '',
        'cgroup.procs': '',
        'cgroup.threads': '',
        'cgroup.type': 'domain',
        'cgroup.events': 'populated 0\nfrozen 0\n',
        'cgroup.freeze': '0',
        'cpu.stat': 'usage_usec 0\nuser_usec 0\nsystem_usec 0\n',
        ...(this.opts.kill === false ? {} : { 'cgroup.kill': '' }),
      };
      for (const c of controllers) Object.assign(files, this.v2Files(c));
      await this.put(path, files);
    } else {
      const h = relative(this.root, path).split('/')[0] ?? '';
      await this.put(path, { 'cgroup.procs': '', tasks: '', ...this.v1Files(h, false) });
    }
  }

  async rmdir(path: string): Promise<void> {
    const rel = this.rel(path);
    const left = this.busy.get(rel) ?? 0;
    if (left > 0) {
      this.busy.set(rel, left - 1);
      throw errno('EBUSY', `rmdir ${rel}`);
    }
    if ((await this.subdirs(path)).length > 0) throw errno('EBUSY', `${rel} has child groups`);
    if ((await this.words(join(path, 'cgroup.procs'))).length > 0) throw errno('EBUSY', `${rel} has processes`);
    // cgroupfs lets rmdir go through its interface files; a temp dir needs them gone first.
    for (const f of await readdir(path)) await rm(join(path, f));
    await rmdir(path);
    this.rmdirs.push(rel);
  }

  async writeFile(path: string, value: string): Promise<void> {
    if (!(await this.exists(path))) throw errno('ENOENT', this.rel(path));
    this.writes.push({ file: this.rel(path), value });
    const dir = dirname(path);
    const name = basename(path);
    if (this.opts.version === 2) await this.writeV2(dir, name, value);
    else await this.writeV1(dir, name, value);
  }

  private async writeV2(dir: string, name: string, value: string): Promise<void> {
    switch (name) {
      case 'cgroup.subtree_control': {
        const available = await this.words(join(dir, 'cgroup.controllers'));
        const enabled = new Set(await this.words(join(dir, 'cgroup.subtree_control')));
        const kids = await this.subdirs(dir);
        const threadedKids: string[] = [];
        for (const k of kids) if ((await readFile(join(dir, k, 'cgroup.type'), 'utf8')).trim() === 'threaded') threadedKids.push(k);
        const selfThreaded = !this.isRoot(dir) && (await readFile(join(dir, 'cgroup.type'), 'utf8')).trim() === 'threaded';
        for (const tok of value.split(/\s+/).filter((w) => w !== '')) {
          const c = tok.slice(1);
          if (tok.startsWith('+')) {
            if (!available.includes(c)) throw errno('ENOENT', `${c} not in cgroup.controllers`);
            if (!V2_THREADED.has(c) && (threadedKids.length > 0 || selfThreaded)) throw errno('EOPNOTSUPP', `${c} is not threaded`);
            if (!V2_THREADED.has(c) && !this.isRoot(dir) && (await this.words(join(dir, 'cgroup.procs'))).length > 0)
              throw errno('EBUSY', 'internal processes');
            enabled.add(c);
          } else if (tok.startsWith('-')) enabled.delete(c);
          else throw errno('EINVAL', tok);
        }
        const list = V2_ORDER.filter((c) => enabled.has(c));
        await writeFile(join(dir, name), list.join(' '));
        for (const k of kids) {
          await writeFile(join(dir, k, 'cgroup.controllers'), list.join(' '));
          for (const c of list) {
            for (const [f, v] of Object.entries(this.v2Files(c))) if (!(await this.exists(join(dir, k, f)))) await writeFile(join(dir, k, f), v);
          }
        }
        return;
      }
      case 'cgroup.type': {
        if (value.trim() !== 'threaded') throw errno('EINVAL', `cgroup.type ${value}`);
        const parentEnabled = await this.words(join(dirname(dir), 'cgroup.subtree_control'));
        if (!this.isRoot(dirname(dir)) && parentEnabled.some((c) => !V2_THREADED.has(c))) throw errno('EOPNOTSUPP', 'parent has domain controllers enabled');
        await writeFile(join(dir, name), 'threaded');
        return;
      }
      case 'cgroup.procs':
      case 'cgroup.threads':
        return this.movePid(dir, Number.parseInt(value, 10));
      case 'cgroup.freeze': {
        await writeFile(join(dir, name), value);
        if (this.opts.freezeStuck === true && value.trim() === '1') return;
        await this.setEvent(dir, 'frozen', value.trim() === '1' ? 1 : 0);
        return;
      }
      case 'cgroup.kill':
        await this.clearTree(dir);
        return;
      default:
        this.checkV2Format(name, value);
        await writeFile(join(dir, name), value);
    }
  }

  private checkV2Format(name: string, value: string): void {
    const formats: Record<string, RegExp> = {
      'cpu.max': /^(max|\d+)( \d+)?$/,
      'cpu.weight': /^\d+$/,
      'io.weight': /^(default )?\d+$/,
      'memory.max': /^(max|\d+)$/,
      'memory.high': /^(max|\d+)$/,
      'memory.swap.max': /^(max|\d+)$/,
      'pids.max': /^(max|\d+)$/,
      'cpuset.cpus': /^[\d,-]*$/,
      'cpuset.mems': /^[\d,-]*$/,
    };
    const re = formats[name];
    if (re !== undefined && !re.test(value)) throw errno('EINVAL', `${name} <- ${value}`);
  }

  private async writeV1(dir: string, name: string, value: string): Promise<void> {
    switch (name) {
      case 'cgroup.procs':
      case 'tasks': {
        if (relative(this.root, dir).startsWith('cpuset')) {
          const cpus = (await readFile(join(dir, 'cpuset.cpus'), 'utf8')).trim();
          const mems = (await readFile(join(dir, 'cpuset.mems'), 'utf8')).trim();
          if (cpus === '' || mems === '') throw errno('ENOSPC', 'cpuset has no cpus or mems');
        }
        return this.movePid(dir, Number.parseInt(value, 10));
      }
      case 'freezer.state': {
        const want = value.trim();
        if (want !== 'FROZEN' && want !== 'THAWED') throw errno('EINVAL', want);
        await writeFile(join(dir, name), want === 'FROZEN' && this.opts.freezeStuck === true ? 'FREEZING' : want);
        return;
      }
      case 'memory.limit_in_bytes':
      case 'memory.memsw.limit_in_bytes': {
        const n = (v: string): number => (v.trim() === '-1' ? Number.MAX_SAFE_INTEGER : Number(v.trim()));
        const limit = name === 'memory.limit_in_bytes' ? n(value) : n(await readFile(join(dir, 'memory.limit_in_bytes'), 'utf8'));
        const swapFile = join(dir, 'memory.memsw.limit_in_bytes');
        if (await this.exists(swapFile)) {
          const memsw = name === 'memory.memsw.limit_in_bytes' ? n(value) : n(await readFile(swapFile, 'utf8'));
          if (limit > memsw) throw errno('EINVAL', `limit ${limit} > memsw ${memsw}`);
        }
        await writeFile(join(dir, name), value.trim() === '-1' ? '9223372036854771712' : value);
        return;
      }
      default:
        await writeFile(join(dir, name), value);
    }
  }

  private async setEvent(dir: string, key: string, v: number): Promise<void> {
    const file = join(dir, 'cgroup.events');
    if (!(await this.exists(file))) return;
    const lines = (await readFile(file, 'utf8')).split('\n').filter((l) => l !== '' && !l.startsWith(`${key} `));
    lines.push(`${key} ${v}`);
    await writeFile(file, `${lines.join('\n')}\n`);
  }

  private async allGroups(dir: string): Promise<string[]> {
    const out = [dir];
    for (const k of await this.subdirs(dir)) out.push(...(await this.allGroups(join(dir, k))));
    return out;
  }

  /** Moves a pid into `dir` (leaving every other group of the same hierarchy), like a cgroup.procs write. */
  private async movePid(dir: string, pid: number): Promise<void> {
    if (!Number.isSafeInteger(pid) || pid <= 0) throw errno('EINVAL', `pid ${pid}`);
    const top = this.opts.version === 2 ? this.root : join(this.root, relative(this.root, dir).split('/')[0] ?? '');
    for (const g of await this.allGroups(top)) {
      for (const f of ['cgroup.procs', 'cgroup.threads', 'tasks']) {
        const file = join(g, f);
        if (!(await this.exists(file))) continue;
        const pids = (await this.words(file)).filter((p) => p !== String(pid));
        if (g === dir) pids.push(String(pid));
        await writeFile(file, pids.map((p) => `${p}\n`).join(''));
      }
    }
    await this.refreshPopulated(top);
  }

  private async refreshPopulated(dir: string): Promise<boolean> {
    let populated = (await this.words(join(dir, 'cgroup.procs'))).length > 0;
    for (const k of await this.subdirs(dir)) if (await this.refreshPopulated(join(dir, k))) populated = true;
    await this.setEvent(dir, 'populated', populated ? 1 : 0);
    return populated;
  }

  private async clearTree(dir: string): Promise<void> {
    for (const g of await this.allGroups(dir)) {
      for (const f of ['cgroup.procs', 'cgroup.threads', 'tasks']) if (await this.exists(join(g, f))) await writeFile(join(g, f), '');
    }
    await this.refreshPopulated(this.opts.version === 2 ? this.root : join(this.root, relative(this.root, dir).split('/')[0] ?? ''));
  }

  /** A `signal` dependency: SIGKILL makes the pid vanish from every group. */
  signal = (pid: number, sig: string): void => {
    this.signals.push([pid, sig]);
    void sig;
    this.pendingKills.add(pid);
  };

  private readonly pendingKills = new Set<number>();

  /** A `sleep` dependency: time passes, so processes that got SIGKILL (and are not frozen) are gone. */
  sleep = async (_ms: number): Promise<void> => {
    for (const pid of [...this.pendingKills]) {
      const tops = this.opts.version === 2 ? [this.root] : this.hierarchyNames().map((h) => join(this.root, h));
      let frozen = false;
      for (const top of tops) {
        for (const g of await this.allGroups(top)) {
          if (!(await this.words(join(g, 'cgroup.procs'))).includes(String(pid))) continue;
          if (
            this.opts.version === 1 &&
            (await this.exists(join(g, 'freezer.state'))) &&
            (await readFile(join(g, 'freezer.state'), 'utf8')).trim() !== 'THAWED'
          )
            frozen = true;
        }
      }
      if (frozen) continue;
      this.pendingKills.delete(pid);
      for (const top of tops) {
        for (const g of await this.allGroups(top)) {
          for (const f of ['cgroup.procs', 'cgroup.threads', 'tasks']) {
            const file = join(g, f);
            if (await this.exists(file))
              await writeFile(
                file,
                (await this.words(file))
                  .filter((p) => p !== String(pid))
                  .map((p) => `${p}\n`)
                  .join(''),
              );
          }
        }
        await this.refreshPopulated(top);
      }
    }
  };
}
