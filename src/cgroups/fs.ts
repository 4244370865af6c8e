// The few file operations the managers do on cgroupfs, behind an interface a test can fake, plus the error wrapping and retry helpers around them.

import fsSync, { constants } from 'node:fs';
import { mkdir, open, readdir, readFile, rmdir, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { VmletError, type ErrorCode } from '../errors.js';
import { SlowCallBackoff } from '../sys/slow-call-backoff.js';

/** What the managers need of a file system; the default goes to the real one. */
export interface CgroupFs {
  readFile(path: string): Promise<string>;
  /** One write(2) of `value` into an existing file (no create, no truncate: cgroupfs semantics). */
  writeFile(path: string, value: string): Promise<void>;
  /** Creates one directory level; fails with EEXIST if it exists. */
  mkdir(path: string): Promise<void>;
  rmdir(path: string): Promise<void>;
  /** Names of the sub-directories (child groups). */
  subdirs(path: string): Promise<string[]>;
  exists(path: string): Promise<boolean>;
}

/** Files whose write moves tasks: it can wait for an RCU grace period (5–13 ms), so it stays off the event loop. */
const MEMBERSHIP_FILES = new Set(['cgroup.procs', 'cgroup.threads', 'tasks']);

function writeSync(path: string, value: string): void {
  const fd = fsSync.openSync(path, constants.O_WRONLY);
  try {
    fsSync.writeSync(fd, value);
  } finally {
    fsSync.closeSync(fd);
  }
}

/*
 * cgroupfs is in-kernel: mkdir, a limit write or a read takes tens of µs when made inline, while each trip through
 * libuv's thread pool costs two wake-ups, milliseconds on a host whose cores run guests (docs/performance.md).
 * Reads and most limit writes take no cgroup-wide lock and are always made inline. mkdir and the writes of cgroup.*
 * and cpuset.* files take the kernel's cgroup (or cpuset) lock, which other groups' joins hold through an RCU grace
 * period while many VMs start at once (freezer.state the freezer's), and a memory.* write may reclaim: one of those that took over 1 ms sends the
 * next ones to the pool for a second. Membership writes and rmdir always go there.
 */
const lockLane = new SlowCallBackoff({ slowMs: 1, backoffMs: 1000 });

/** `inline`: on the event loop; `backoff`: inline unless a recent one was slow; `pool`: libuv's thread pool. */
export type CgroupCallLane = 'inline' | 'backoff' | 'pool';

/** Where nodeCgroupFs makes a call. */
export function cgroupCallLane(op: 'read' | 'write' | 'mkdir' | 'rmdir' | 'list' | 'exists', path: string): CgroupCallLane {
  if (op === 'rmdir') return 'pool';
  if (op === 'mkdir') return 'backoff';
  if (op !== 'write') return 'inline';
  const name = basename(path);
  if (MEMBERSHIP_FILES.has(name)) return 'pool';
  // the cgroup, cpuset or freezer lock (cgroup.subtree_control, cgroup.freeze, cpuset.*, freezer.state), or reclaim (memory.*)
  return /^(cgroup|cpuset|freezer|memory)\./.test(name) ? 'backoff' : 'inline';
}

async function run<T>(lane: CgroupCallLane, inline: () => T, pooled: () => Promise<T>): Promise<T> {
  if (lane === 'pool' || (lane === 'backoff' && lockLane.pooling)) return pooled();
  return lane === 'backoff' ? lockLane.inline(inline) : inline();
}

async function writePooled(path: string, value: string): Promise<void> {
  const fh = await open(path, constants.O_WRONLY);
  try {
    await fh.write(value);
  } finally {
    await fh.close();
  }
}

export const nodeCgroupFs: CgroupFs = {
  readFile: (path) =>
    run(
      cgroupCallLane('read', path),
      () => fsSync.readFileSync(path, 'utf8'),
      () => readFile(path, 'utf8'),
    ),
  writeFile: (path, value) =>
    run(
      cgroupCallLane('write', path),
      () => writeSync(path, value),
      () => writePooled(path, value),
    ),
  mkdir: (path) =>
    run(
      cgroupCallLane('mkdir', path),
      () => fsSync.mkdirSync(path),
      async () => void (await mkdir(path)),
    ),
  rmdir: (path) =>
    run(
      cgroupCallLane('rmdir', path),
      () => fsSync.rmdirSync(path),
      () => rmdir(path),
    ),
  subdirs: async (path) => {
    const entries = await run(
      cgroupCallLane('list', path),
      () => fsSync.readdirSync(path, { withFileTypes: true }),
      () => readdir(path, { withFileTypes: true }),
    );
    return entries.filter((e) => e.isDirectory()).map((e) => e.name);
  },
  exists: (path) =>
    run(
      cgroupCallLane('exists', path),
      () => fsSync.existsSync(path),
      () =>
        stat(path).then(
          () => true,
          () => false,
        ),
    ),
};

/** Effects the managers take from outside: file system, sleeping, signalling. */
export interface ManagerDeps {
  fs?: CgroupFs;
  sleep?: (ms: number) => Promise<void>;
  /** Sends a signal to a pid (default process.kill). */
  signal?: (pid: number, signal: NodeJS.Signals) => void;
  /** How long freeze/thaw/kill wait for the kernel to confirm (default 5000 ms). */
  timeoutMs?: number;
  /** rmdir attempts on EBUSY before giving up (default 8; delays 10, 20, 40 … ms, capped at 500). */
  deleteAttempts?: number;
}

export interface ResolvedDeps {
  fs: CgroupFs;
  sleep: (ms: number) => Promise<void>;
  signal: (pid: number, signal: NodeJS.Signals) => void;
  timeoutMs: number;
  deleteAttempts: number;
}

export function resolveDeps(d: ManagerDeps = {}): ResolvedDeps {
  return {
    fs: d.fs ?? nodeCgroupFs,
    sleep: d.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms))),
    signal: d.signal ?? ((pid, sig) => process.kill(pid, sig)),
    timeoutMs: d.timeoutMs ?? 5000,
    deleteAttempts: d.deleteAttempts ?? 8,
  };
}

/** `{ errno }` for a syscall error, so callers test the field and not the message. */
function errnoField(e: unknown): { errno?: string } {
  const errno = errnoOf(e);
  return errno === undefined ? {} : { errno };
}

export function errnoOf(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string' ? e.code : undefined;
}

export async function writeValue(fs: CgroupFs, path: string, value: string, code: ErrorCode = 'CGROUP_WRITE_FAILED'): Promise<void> {
  try {
    await fs.writeFile(path, value);
  } catch (e) {
    throw new VmletError(code, `cannot write ${JSON.stringify(value)} to ${path} (${errnoOf(e) ?? 'error'})`, { cause: e, ...errnoField(e) });
  }
}

export async function readValue(fs: CgroupFs, path: string): Promise<string> {
  try {
    return await fs.readFile(path);
  } catch (e) {
    throw new VmletError('CGROUP_READ_FAILED', `cannot read ${path} (${errnoOf(e) ?? 'error'})`, { cause: e, ...errnoField(e) });
  }
}

/** Reads a file, or undefined when it does not exist (a feature the kernel lacks). */
export async function readOptional(fs: CgroupFs, path: string): Promise<string | undefined> {
  try {
    return await fs.readFile(path);
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return undefined;
    throw new VmletError('CGROUP_READ_FAILED', `cannot read ${path} (${errnoOf(e) ?? 'error'})`, { cause: e, ...errnoField(e) });
  }
}

/** Creates a directory; true if it was made, false if it was there. */
export async function mkdirOnce(fs: CgroupFs, path: string): Promise<boolean> {
  return (await mkdirUnless(fs, path, ['EEXIST'])) === undefined;
}

/** Creates a directory; undefined when made, else the errno of `tolerated` that stopped it (any other throws CGROUP_CREATE_FAILED). */
export async function mkdirUnless(fs: CgroupFs, path: string, tolerated: readonly string[]): Promise<string | undefined> {
  try {
    await fs.mkdir(path);
    return undefined;
  } catch (e) {
    const code = errnoOf(e);
    if (code !== undefined && tolerated.includes(code)) return code;
    throw new VmletError('CGROUP_CREATE_FAILED', `cannot create ${path} (${code ?? 'error'})`, { cause: e, ...errnoField(e) });
  }
}

/** Parses the pid lists of cgroup.procs / cgroup.threads / tasks. */
export function parsePids(text: string): number[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '')
    .map((l) => Number.parseInt(l, 10))
    .filter((n) => Number.isSafeInteger(n) && n > 0);
}

/** Removes a group and everything below it, deepest first, with rmdir only; EBUSY is retried with backoff. */
export async function removeTree(deps: ResolvedDeps, dir: string): Promise<void> {
  let children: string[];
  try {
    children = await deps.fs.subdirs(dir);
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return;
    throw new VmletError('CGROUP_DELETE_FAILED', `cannot list ${dir} (${errnoOf(e) ?? 'error'})`, { cause: e, ...errnoField(e) });
  }
  for (const c of children) await removeTree(deps, join(dir, c));
  let delay = 10;
  for (let attempt = 1; ; attempt++) {
    try {
      await deps.fs.rmdir(dir);
      return;
    } catch (e) {
      const code = errnoOf(e);
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY' || attempt >= deps.deleteAttempts) {
        throw new VmletError(
          'CGROUP_DELETE_FAILED',
          `cannot remove ${dir} (${code ?? 'error'}${code === 'EBUSY' ? `, still busy after ${attempt} attempts` : ''})`,
          { cause: e, ...errnoField(e) },
        );
      }
      await deps.sleep(delay);
      delay = Math.min(delay * 2, 500);
    }
  }
}

/** Polls `check` every 10 ms (growing to 100 ms) until it is true or `timeoutMs` of sleeping is spent; `onTick` runs after each sleep. */
export async function pollUntil(deps: ResolvedDeps, check: () => Promise<boolean>, onTick?: (n: number) => Promise<void>): Promise<boolean> {
  let waited = 0;
  let delay = 10;
  for (let n = 0; ; n++) {
    if (await check()) return true;
    if (waited >= deps.timeoutMs) return false;
    await deps.sleep(delay);
    waited += delay;
    if (onTick !== undefined) await onTick(n);
    delay = Math.min(delay * 2, 100);
  }
}

const SEGMENT_RE = /^[^/\0]+$/;

/** Normalises a group path relative to a hierarchy root ("vmlet/vm-1"); throws CGROUP_INVALID_PATH. */
export function normaliseGroupPath(group: string): string {
  const segs = group.split('/').filter((s) => s !== '');
  if (segs.length === 0) throw new VmletError('CGROUP_INVALID_PATH', 'the group path must name a group below the root');
  for (const s of segs) {
    if (s === '.' || s === '..' || !SEGMENT_RE.test(s) || s.length > 255)
      throw new VmletError('CGROUP_INVALID_PATH', `bad group path segment ${JSON.stringify(s)} in ${JSON.stringify(group)}`);
  }
  return segs.join('/');
}

/** Checks a child name: one path segment. */
export function checkChildName(name: string): void {
  if (name === '' || name === '.' || name === '..' || !SEGMENT_RE.test(name) || name.length > 255 || name.startsWith('cgroup.')) {
    throw new VmletError('CGROUP_INVALID_PATH', `bad child group name ${JSON.stringify(name)}`);
  }
}
