// Starts a VMI's vmlet-launch detached, and reads what a launcher left in its run directory so a restarted daemon can tell live, recorded processes from recycled pids.
import { closeSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { VmletError } from '../errors.js';
import { spawnDetached } from '../sys/spawn.js';

/** Files the launcher keeps in its run directory (docs/launcher-protocol.md). */
export const RUN_FILES = {
  launcherPid: 'launcher.pid',
  qemuPid: 'qemu.pid',
  exitStatus: 'exit-status',
  qemuLog: 'qemu.log',
  launcherLog: 'launcher.log',
} as const;

/** How QEMU ended: its exit code, or the signal that killed it. */
export type ExitStatus = { kind: 'exit'; code: number } | { kind: 'signal'; signal: number };

/** Parses the launcher's `exit=N` / `signal=N` notation (wire and exit-status file alike). */
export function parseExitStatus(text: string): ExitStatus {
  const m = /^(exit|signal)=(\d{1,3})$/.exec(text.trim());
  const n = m ? Number(m[2]) : NaN;
  if (!m || !(n >= 0 && n <= 255)) {
    throw new VmletError('LAUNCH_BAD_EXIT_STATUS', `not an exit status: ${JSON.stringify(text.slice(0, 40))}`);
  }
  return m[1] === 'exit' ? { kind: 'exit', code: n } : { kind: 'signal', signal: n };
}

export function formatExitStatus(s: ExitStatus): string {
  return s.kind === 'exit' ? `exit=${s.code}` : `signal=${s.signal}`;
}

/** The launcher's own exit code for a QEMU status: the code, or 128 + signal. */
export function exitStatusCode(s: ExitStatus): number {
  return s.kind === 'exit' ? s.code : 128 + s.signal;
}

const UID_RE = /^[A-Za-z0-9._-]{1,128}$/;

export interface LauncherArgs {
  uid: string;
  /** The daemon's launcher socket. */
  socket: string;
  runDir: string;
  /** A netns file (e.g. /run/netns/NAME) to join before forking QEMU. */
  netns?: string;
  /** Cgroup directories to join (one per v1 controller, or the one v2 directory). */
  cgroups?: readonly string[];
  /** How long the launcher waits for the daemon when it cannot report (default 60 in the launcher). */
  lingerSeconds?: number;
  /** Standalone: how QEMU is confined (its user, its private mount namespace); absent: QEMU runs as the launcher does. */
  sandbox?: LauncherSandbox;
}

/** What vmlet-launch does to QEMU between fork and exec (docs/launcher-protocol.md). */
export interface LauncherSandbox {
  /** Numeric ids (never root): no capabilities, no_new_privs. */
  user: { uid: number; gid: number; groups: readonly number[] };
  /** A private root of the host's system folders (read-only) and the paths below. */
  mountNs: boolean;
  bindRo: readonly string[];
  bindRw: readonly string[];
}

function sandboxArgv(s: LauncherSandbox): string[] {
  const ids = [s.user.uid, s.user.gid, ...s.user.groups];
  if (!ids.every((n) => Number.isInteger(n) && n >= 0 && n <= 0x7fffffff) || s.user.uid === 0 || s.user.groups.length > 4) {
    throw new VmletError('LAUNCH_BAD_ARGUMENT', `QEMU user ${JSON.stringify(s.user)}: numeric, not root, at most 4 groups`);
  }
  const argv = ['--qemu-user', `${s.user.uid}:${s.user.gid}${s.user.groups.length > 0 ? `:${s.user.groups.join(',')}` : ''}`];
  argv.push('--mount-ns', s.mountNs ? 'yes' : 'no');
  const bind = (flag: string, paths: readonly string[]): void => {
    for (const p of paths) {
      if (!p.startsWith('/') || p.split('/').includes('..') || p.length >= 2048) {
        throw new VmletError('LAUNCH_BAD_ARGUMENT', `${flag} needs an absolute path without "..": ${JSON.stringify(p)}`);
      }
      argv.push(flag, p);
    }
  };
  bind('--bind-ro', s.bindRo);
  bind('--bind-rw', s.bindRw);
  return argv;
}

/** The launcher's argv after the binary (pure). */
export function launcherArgv(a: LauncherArgs): string[] {
  if (!UID_RE.test(a.uid)) throw new VmletError('LAUNCH_BAD_ARGUMENT', `VMI uid ${JSON.stringify(a.uid)} is not 1-128 of [A-Za-z0-9._-]`);
  const argv = ['--uid', a.uid, '--socket', a.socket, '--run-dir', a.runDir];
  if (a.netns !== undefined) argv.push('--netns', a.netns);
  for (const cg of a.cgroups ?? []) argv.push('--cgroup', cg);
  if (a.lingerSeconds !== undefined) {
    if (!Number.isInteger(a.lingerSeconds) || a.lingerSeconds < 0 || a.lingerSeconds > 86400) {
      throw new VmletError('LAUNCH_BAD_ARGUMENT', `linger must be 0-86400 whole seconds, got ${a.lingerSeconds}`);
    }
    argv.push('--linger', String(a.lingerSeconds));
  }
  if (a.sandbox !== undefined) argv.push(...sandboxArgv(a.sandbox));
  return argv;
}

export interface SpawnLauncherOptions extends LauncherArgs {
  /** Path of the vmlet-launch binary. */
  launcherBinary: string;
  /** Environment of the launcher and so of QEMU (default: only PATH). */
  env?: Record<string, string>;
  /** Where the launcher's own stderr goes (default RUNDIR/launcher.log). */
  logFile?: string;
}

export interface SpawnedLauncher {
  pid: number;
  /** Settles when the launcher exits, as long as this daemon process lives. Never rejects. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Starts vmlet-launch in its own session (standalone mode) with posix_spawn: stdin on /dev/null,
 * stdout and stderr appended to the log file. Nothing waits for it, so the daemon can exit or
 * restart without it; while the daemon runs, it reaps the launcher when it exits.
 */
export async function spawnLauncher(opts: SpawnLauncherOptions): Promise<SpawnedLauncher> {
  const args = launcherArgv(opts);
  mkdirSync(opts.runDir, { recursive: true, mode: 0o700 });
  const logPath = opts.logFile ?? path.join(opts.runDir, RUN_FILES.launcherLog);
  let logFd: number;
  try {
    logFd = openSync(logPath, 'a', 0o640);
  } catch (cause) {
    throw new VmletError('LAUNCH_SPAWN_FAILED', `cannot open launcher log ${logPath}`, { cause });
  }
  try {
    // posix_spawn, not child_process.spawn: forking the daemon costs ≈ 12 ms of its one thread per VM.
    const child = spawnDetached({
      file: opts.launcherBinary,
      argv: [opts.launcherBinary, ...args],
      env: opts.env ?? { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' },
      outputFd: logFd,
    });
    return { pid: child.pid, exited: child.exited };
  } catch (cause) {
    throw new VmletError('LAUNCH_SPAWN_FAILED', `cannot start ${opts.launcherBinary}`, { cause });
  } finally {
    closeSync(logFd);
  }
}

/** What a launcher recorded in its run directory; a field is absent when its file is. */
export interface RunDirState {
  launcherPid?: number;
  qemuPid?: number;
  /** Start times (clock ticks since boot, /proc/PID/stat field 22) the launcher recorded with each pid, when it did. */
  launcherStart?: number;
  qemuStart?: number;
  exitStatus?: ExitStatus;
}

/** Inline: a few bytes from tmpfs, read on the launcher's HELLO, where a thread-pool trip would cost more. */
async function readOptional(file: string): Promise<string | undefined> {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new VmletError('LAUNCH_RUNDIR_UNREADABLE', `cannot read ${file}`, { cause: e });
  }
}

/** "PID" or "PID STARTTIME" (a start time of 0: the launcher could not read it). */
function parsePidFile(file: string, text: string): { pid: number; start?: number } {
  const t = text.trim();
  const m = /^(\d{1,10})(?: (\d{1,20}))?$/.exec(t);
  const n = Number(m?.[1]);
  if (!m || !(n > 0 && n <= 0x7fffffff)) {
    throw new VmletError('LAUNCH_RUNDIR_CORRUPT', `${file} does not hold a pid: ${JSON.stringify(t.slice(0, 40))}`);
  }
  const start = Number(m[2] ?? 0);
  return start > 0 ? { pid: n, start } : { pid: n };
}

/**
 * Reads launcher.pid, qemu.pid and exit-status. Pids are as the launcher saw them (its own pid
 * namespace: the host's in standalone mode). Throws LAUNCH_RUNDIR_MISSING when the directory is gone.
 */
export async function readRunDir(runDir: string): Promise<RunDirState> {
  const [l, q, x] = await Promise.all([
    readOptional(path.join(runDir, RUN_FILES.launcherPid)),
    readOptional(path.join(runDir, RUN_FILES.qemuPid)),
    readOptional(path.join(runDir, RUN_FILES.exitStatus)),
  ]);
  if (l === undefined && q === undefined && x === undefined) {
    try {
      await stat(runDir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new VmletError('LAUNCH_RUNDIR_MISSING', `run directory ${runDir} does not exist`, { cause: e });
      }
    }
  }
  const out: RunDirState = {};
  if (l !== undefined) {
    const p = parsePidFile(RUN_FILES.launcherPid, l);
    out.launcherPid = p.pid;
    if (p.start !== undefined) out.launcherStart = p.start;
  }
  if (q !== undefined) {
    const p = parsePidFile(RUN_FILES.qemuPid, q);
    out.qemuPid = p.pid;
    if (p.start !== undefined) out.qemuStart = p.start;
  }
  if (x !== undefined) {
    try {
      out.exitStatus = parseExitStatus(x);
    } catch (cause) {
      throw new VmletError('LAUNCH_RUNDIR_CORRUPT', `${RUN_FILES.exitStatus} is not an exit status`, { cause });
    }
  }
  return out;
}

/**
 * True when `pid` is a live (not zombie) process whose /proc/PID/cmdline holds `uid` in one of its
 * arguments (the launcher has `--uid UID`, QEMU the VMI's run paths) and, when `startTime` is given (the
 * launcher records it with each pid), that started then: a recycled pid whose command line merely mentions
 * the uid (`tail -f …/<uid>/qemu.log`) is never taken for ours.
 */
export async function isLiveProcessFor(pid: number, uid: string, procRoot = '/proc', startTime?: number): Promise<boolean> {
  if (!Number.isInteger(pid) || pid <= 0) throw new VmletError('LAUNCH_BAD_ARGUMENT', `not a pid: ${pid}`);
  if (uid.length === 0) throw new VmletError('LAUNCH_BAD_ARGUMENT', 'empty VMI uid');
  const dir = path.join(procRoot, String(pid));
  let statText: string;
  let cmdline: string;
  try {
    [statText, cmdline] = await Promise.all([readFile(path.join(dir, 'stat'), 'utf8'), readFile(path.join(dir, 'cmdline'), 'utf8')]);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') return false;
    throw new VmletError('LAUNCH_PROC_UNREADABLE', `cannot read ${dir}`, { cause: e });
  }
  // stat is "PID (COMM) S ..."; COMM may hold spaces and parentheses, the state follows the last ')'.
  const state = statText
    .slice(statText.lastIndexOf(')') + 1)
    .trim()
    .charAt(0);
  if (state === 'Z' || state === 'X' || state === 'x' || state === '') return false;
  // With the start time recorded at launch, the pid names one process for good; the command line is then a second check.
  if (startTime !== undefined && processStartTime(statText) !== startTime) return false;
  return cmdline.split('\0').some((arg) => arg.includes(uid));
}

/**
 * True when the command line of `pid`, or of its parent, holds `text` (a VM's run dir): a launcher names it in
 * `--run-dir`; a QEMU, whose sockets come by fd, is known by its launcher. False when the process is gone.
 */
export async function processOrParentNames(pid: number, text: string, procRoot = '/proc'): Promise<boolean> {
  const dir = path.join(procRoot, String(pid));
  const [cmdline, statText] = await Promise.all([
    readFile(path.join(dir, 'cmdline'), 'utf8').catch(() => ''),
    readFile(path.join(dir, 'stat'), 'utf8').catch(() => ''),
  ]);
  if (cmdline.includes(text)) return true;
  const ppid = Number(statText.slice(statText.lastIndexOf(')') + 2).split(' ')[1]);
  if (!(ppid > 1)) return false;
  return (await readFile(path.join(procRoot, String(ppid), 'cmdline'), 'utf8').catch(() => '')).includes(text);
}

/** Field 22 of /proc/PID/stat (start time in clock ticks since boot), or undefined when the text has none. */
export function processStartTime(statText: string): number | undefined {
  const fields = statText.slice(statText.lastIndexOf(')') + 2).split(' ');
  const v = Number(fields[22 - 3]);
  return Number.isFinite(v) && v > 0 ? v : undefined;
}
