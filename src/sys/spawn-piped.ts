// Runs a short-lived program with posix_spawn, stdin fed from a string and stdout/stderr captured through pipes, with a timeout and an output cap: execFile without forking the daemon.
import net from 'node:net';
import { VmletError } from '../errors.js';
import { closeFd, errno, errnoCode, errnoName, libc, O_CLOEXEC, O_RDONLY } from './libc.js';
import { withNetns } from './netns.js';
import { spawnProcess, type ExitInfo, type FdAction } from './spawn.js';

const pipe2 = libc.func('int pipe2(void *fds, int flags)');

export interface PipedOptions {
  /** a path, or a bare name looked up in PATH */
  file: string;
  /** the arguments after argv[0] (which is `file`) */
  args: readonly string[];
  /** written to stdin, then closed; without it stdin is /dev/null */
  input?: string | Buffer;
  /** SIGKILL the child after this long */
  timeoutMs: number;
  /** most bytes kept of stdout, and of stderr; past it the child is killed */
  maxBuffer: number;
  /** default process.env */
  env?: Readonly<Record<string, string | undefined>>;
  /** start the child inside this network namespace: setns around posix_spawn (no nsenter process) */
  netnsPath?: string;
  /** own netns file of the calling thread, to return to; default /proc/thread-self/ns/net */
  selfNetns?: string;
}

export interface PipedResult extends ExitInfo {
  pid: number;
  stdout: string;
  stderr: string;
  /** killed at `timeoutMs` */
  timedOut: boolean;
  /** killed because stdout or stderr went past `maxBuffer` (the output is cut there) */
  overflowed: boolean;
}

/** pipe2(O_CLOEXEC): [read end, write end]. */
export function pipe(): [number, number] {
  const b = Buffer.alloc(8);
  if ((pipe2(b, O_CLOEXEC) as number) !== 0) {
    const e = errno();
    throw new VmletError('SYS_SPAWN_FAILED', `pipe2 failed: ${errnoName(e)}`, { errno: errnoCode(e) });
  }
  return [b.readInt32LE(0), b.readInt32LE(4)];
}

function envList(env: Readonly<Record<string, string | undefined>>): string[] {
  const out: string[] = [];
  for (const k in env) {
    const v = env[k];
    if (v !== undefined) out.push(`${k}=${v}`);
  }
  return out;
}

/**
 * Starts the child with its stdin, stdout and stderr on fresh pipes and returns it with the
 * parent's ends. Every pipe end is close-on-exec, so only the dup2 copies on 0, 1, 2 reach the
 * child, and fds from 3 up are closed in the child as well. The child's ends are closed here.
 */
function start(o: PipedOptions): {
  pid: number;
  exited: Promise<ExitInfo>;
  stdin: { fd: number; data: string | Buffer } | null;
  stdout: number;
  stderr: number;
} {
  const opened: number[] = [];
  const parent: number[] = [];
  try {
    const input = o.input !== undefined && o.input.length > 0 ? o.input : null;
    const inPipe = input !== null ? pipe() : null;
    if (inPipe) opened.push(...inPipe);
    const outPipe = pipe();
    opened.push(...outPipe);
    const errPipe = pipe();
    opened.push(...errPipe);
    const fds: FdAction[] = [
      inPipe ? { op: 'dup2', from: inPipe[0], to: 0 } : { op: 'open', fd: 0, path: '/dev/null', flags: O_RDONLY },
      { op: 'dup2', from: outPipe[1], to: 1 },
      { op: 'dup2', from: errPipe[1], to: 2 },
    ];
    const go = (): ReturnType<typeof spawnProcess> =>
      spawnProcess({ file: o.file, argv: [o.file, ...o.args], env: envList(o.env ?? process.env), fds, searchPath: true, closeFrom3: true });
    const child = o.netnsPath === undefined ? go() : withNetns(o.netnsPath, go, o.selfNetns !== undefined ? { selfNetns: o.selfNetns } : {});
    parent.push(outPipe[0], errPipe[0], ...(inPipe ? [inPipe[1]] : []));
    return { ...child, stdin: inPipe && input !== null ? { fd: inPipe[1], data: input } : null, stdout: outPipe[0], stderr: errPipe[0] };
  } finally {
    for (const fd of opened) if (!parent.includes(fd)) closeFd(fd);
  }
}

/**
 * Runs `file` to its end: resolves with its exit code or signal and its output once it has exited
 * and both pipes are closed (or were given up at the timeout). A timeout or an overflow SIGKILLs
 * the child. Rejects only when it cannot start: SYS_SPAWN_FAILED with `errno` (ENOENT for a
 * missing program), or SYS_SETNS for a bad `netnsPath`. The child is always reaped.
 */
export function runPiped(o: PipedOptions): Promise<PipedResult> {
  let child: ReturnType<typeof start>;
  try {
    child = start(o);
  } catch (e) {
    return Promise.reject(e);
  }
  const { pid } = child;
  return new Promise<PipedResult>((resolve) => {
    const chunks: [Buffer[], Buffer[]] = [[], []];
    const sizes = [0, 0];
    let open = 2;
    let exit: ExitInfo | null = null;
    let timedOut = false;
    let overflowed = false;
    let settled = false;

    const streams = [child.stdout, child.stderr].map((fd, i) => {
      const s = new net.Socket({ fd, readable: true, writable: false });
      s.on('data', (b: Buffer) => {
        const room = o.maxBuffer - sizes[i]!;
        if (b.length > room) {
          chunks[i]!.push(b.subarray(0, room));
          sizes[i] = o.maxBuffer;
          overflowed = true;
          giveUp();
          return;
        }
        chunks[i]!.push(b);
        sizes[i]! += b.length;
      });
      s.on('error', () => {}); // a read error ends the stream; 'close' follows
      s.on('close', () => {
        open--;
        finish();
      });
      return s;
    });

    const writer = child.stdin !== null ? new net.Socket({ fd: child.stdin.fd, readable: false, writable: true }) : null;
    if (writer !== null && child.stdin !== null) {
      writer.on('error', () => {}); // EPIPE: the child did not read all of it, which is its business
      writer.end(child.stdin.data);
    }

    // an interval, not a timeout: after it fires it still keeps the loop alive until the SIGCHLD
    // (signal listeners do not) when the pipes were the last handles
    const timer = setInterval(() => {
      if (timedOut) return;
      timedOut = true;
      giveUp();
    }, o.timeoutMs);

    // kill only while unreaped: after the reap the pid may belong to someone else
    function giveUp(): void {
      if (exit === null) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* exited just now */
        }
      }
      // a grandchild may hold the pipes open: stop waiting for them
      for (const s of streams) s.destroy();
      writer?.destroy();
    }

    function finish(): void {
      if (settled || exit === null || open > 0) return;
      settled = true;
      clearInterval(timer);
      writer?.destroy(); // input the child never read
      resolve({
        pid,
        ...exit,
        stdout: Buffer.concat(chunks[0]).toString('utf8'),
        stderr: Buffer.concat(chunks[1]).toString('utf8'),
        timedOut,
        overflowed,
      });
    }

    void child.exited.then((e) => {
      exit = e;
      finish();
    });
  });
}
