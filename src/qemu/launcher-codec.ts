// The launcher protocol's wire format (docs/launcher-protocol.md): limits shared with native/vmlet-launch.c, the launcher's lines parsed, the ARGV message encoded, ERROR reasons mapped to codes. Pure.
import { VmletError, type ErrorCode } from '../errors.js';
import { parseExitStatus, type ExitStatus } from './launch.js';

export const LAUNCHER_PROTOCOL_VERSION = '1';
/** Largest ARGV payload (NUL-terminated strings) the launcher accepts. */
export const MAX_ARGV_BYTES = 65536;
/** Most fds one ARGV message may carry; they become QEMU's fds 3, 4, ... in order. */
export const MAX_FDS = 64;
/** Longest protocol line either side sends (vmlet-launch's MAX_LINE). */
export const MAX_LINE = 1024;
const UID_RE = /^[A-Za-z0-9._-]{1,128}$/;

/** What the launcher says about QEMU when it says HELLO. Pids are in the daemon's pid namespace. */
export type LauncherState = { kind: 'new' } | { kind: 'running'; qemuPid: number } | { kind: 'exited'; qemuPid: number; status: ExitStatus };

/** A parsed launcher line. */
export type LauncherMessage =
  | { type: 'hello'; version: string; uid: string; launcherPid: number; state: LauncherState }
  | { type: 'started'; qemuPid: number }
  | { type: 'exited'; status: ExitStatus }
  | { type: 'error'; reason: string; text: string };

function parsePid(s: string | undefined): number {
  const n = Number(s);
  if (s === undefined || !/^\d{1,10}$/.test(s) || !(n > 0 && n <= 0x7fffffff)) {
    throw new VmletError('LAUNCHER_BAD_MESSAGE', `not a pid: ${JSON.stringify(s)}`);
  }
  return n;
}

/** Parses one line (without its newline) from a launcher. Throws LAUNCHER_BAD_MESSAGE. */
export function parseLauncherLine(line: string): LauncherMessage {
  const t = line.split(' ');
  const bad = (): VmletError => new VmletError('LAUNCHER_BAD_MESSAGE', `bad launcher message: ${JSON.stringify(line.slice(0, 80))}`);
  try {
    switch (t[0]) {
      case 'HELLO': {
        const [, version, uid, pid, st] = t;
        if (version === undefined || uid === undefined || !UID_RE.test(uid)) throw bad();
        const launcherPid = parsePid(pid);
        let state: LauncherState;
        if (st === 'NEW' && t.length === 5) state = { kind: 'new' };
        else if (st === 'RUNNING' && t.length === 6) state = { kind: 'running', qemuPid: parsePid(t[5]) };
        else if (st === 'EXITED' && t.length === 7) state = { kind: 'exited', qemuPid: parsePid(t[5]), status: parseExitStatus(t[6] ?? '') };
        else throw bad();
        return { type: 'hello', version, uid, launcherPid, state };
      }
      case 'STARTED':
        if (t.length !== 2) throw bad();
        return { type: 'started', qemuPid: parsePid(t[1]) };
      case 'EXITED':
        if (t.length !== 2) throw bad();
        return { type: 'exited', status: parseExitStatus(t[1] ?? '') };
      case 'ERROR':
        if (t.length < 2 || !t[1]) throw bad();
        return { type: 'error', reason: t[1], text: t.slice(2).join(' ') };
      default:
        throw bad();
    }
  } catch (e) {
    if (e instanceof VmletError && e.code === 'LAUNCHER_BAD_MESSAGE') throw e;
    throw new VmletError('LAUNCHER_BAD_MESSAGE', `bad launcher message: ${JSON.stringify(line.slice(0, 80))}`, { cause: e });
  }
}

/** The ARGV message: `ARGV <nbytes> <nfds>\n` then the NUL-terminated argv strings. Throws LAUNCHER_BAD_ARGV. */
export function encodeArgvMessage(argv: readonly string[], nfds: number): Buffer {
  if (argv.length === 0) throw new VmletError('LAUNCHER_BAD_ARGV', 'argv is empty');
  if (!argv[0]?.startsWith('/')) throw new VmletError('LAUNCHER_BAD_ARGV', 'argv[0] must be an absolute path');
  if (argv.some((a) => a.includes('\0'))) throw new VmletError('LAUNCHER_BAD_ARGV', 'an argument contains NUL');
  if (argv.length > 4096) throw new VmletError('LAUNCHER_BAD_ARGV', `${argv.length} arguments; at most 4096`);
  if (!Number.isInteger(nfds) || nfds < 0 || nfds > MAX_FDS) throw new VmletError('LAUNCHER_BAD_ARGV', `${nfds} fds; at most ${MAX_FDS}`);
  const payload = Buffer.from(argv.map((a) => `${a}\0`).join(''), 'utf8');
  if (payload.length > MAX_ARGV_BYTES) {
    throw new VmletError('LAUNCHER_BAD_ARGV', `argv is ${payload.length} bytes; at most ${MAX_ARGV_BYTES}`);
  }
  return Buffer.concat([Buffer.from(`ARGV ${payload.length} ${nfds}\n`), payload]);
}

/** The NETNS message: `NETNS <path>\n`, the netns the launcher joins before it forks QEMU (sent before ARGV). Throws LAUNCHER_BAD_ARGV. */
export function encodeNetnsMessage(netnsPath: string): Buffer {
  if (!netnsPath.startsWith('/') || /[\0\n]/.test(netnsPath) || Buffer.byteLength(netnsPath) > 900) {
    throw new VmletError('LAUNCHER_BAD_ARGV', `netns path ${JSON.stringify(netnsPath)} must be absolute, at most 900 bytes, without NUL or newline`);
  }
  return Buffer.from(`NETNS ${netnsPath}\n`);
}

/** Stable codes for the launcher's ERROR reasons (the first word after ERROR). */
export function failureCode(reason: string): ErrorCode {
  switch (reason) {
    case 'netns':
    case 'cgroup':
      return 'LAUNCHER_SANDBOX';
    case 'exec':
      return 'LAUNCHER_EXEC';
    case 'fork':
      return 'LAUNCHER_FORK';
    case 'protocol':
      return 'LAUNCHER_PROTOCOL';
    default:
      return 'LAUNCHER_FAILED';
  }
}
