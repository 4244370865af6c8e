// Runs ip and nft with argument arrays (never a shell), on the host or inside a netns, feeding batch input on stdin; failures become NET_COMMAND_FAILED carrying the exit code and stderr as fields.
import { execFile } from 'node:child_process';
import { VmletError } from '../errors.js';
import { runPiped, type PipedResult } from '../sys/spawn-piped.js';

export interface CommandResult {
  stdout: string;
  stderr: string;
}

/** How the library runs a program: argv and optional stdin. Tests may record instead of running. */
export interface CommandRunner {
  (bin: string, args: readonly string[], input?: string): Promise<CommandResult>;
  /**
   * The same inside the netns at `netnsPath`, started there directly. Runners without it get
   * `nsenter --net=PATH -- bin …` instead (see IpTools).
   */
  inNetns?: (netnsPath: string, bin: string, args: readonly string[], input?: string) => Promise<CommandResult>;
}

const TIMEOUT_MS = 30_000;
/** `nft -j list ruleset` of a busy host can be large */
const MAX_OUTPUT = 16 * 1024 * 1024;

/** The first lines of a command's stderr (or `why`), for the message people read. */
function detail(stderr: string, why: string): string {
  return (stderr.trim() || why).split('\n').slice(0, 6).join('; ');
}

async function runSpawned(bin: string, args: readonly string[], input: string | undefined, netnsPath: string | undefined): Promise<CommandResult> {
  const what = [bin, ...args].join(' ');
  let r: PipedResult;
  try {
    r = await runPiped({
      file: bin,
      args,
      timeoutMs: TIMEOUT_MS,
      maxBuffer: MAX_OUTPUT,
      ...(input !== undefined ? { input } : {}),
      ...(netnsPath !== undefined ? { netnsPath } : {}),
    });
  } catch (e) {
    const errno = e instanceof VmletError ? e.errno : undefined;
    throw new VmletError('NET_COMMAND_FAILED', `${what}: ${(e as Error).message}`, { cause: e, stderr: '', ...(errno !== undefined ? { errno } : {}) });
  }
  if (r.code === 0 && !r.timedOut && !r.overflowed) return { stdout: r.stdout, stderr: r.stderr };
  const stderr = r.stderr.trim();
  if (r.timedOut || r.overflowed || r.code === null) {
    const why = r.timedOut
      ? `killed after ${TIMEOUT_MS / 1000} s`
      : r.overflowed
        ? `killed: output over ${MAX_OUTPUT} bytes`
        : `killed by ${r.signal ?? 'a signal'}`;
    throw new VmletError('NET_COMMAND_FAILED', `${what}: ${why}${stderr ? `; ${detail(stderr, '')}` : ''}`, {
      stderr,
      details: { signal: r.signal, timedOut: r.timedOut, overflowed: r.overflowed },
    });
  }
  throw new VmletError('NET_COMMAND_FAILED', `${what}: ${detail(stderr, `exit status ${r.code}`)}`, { stderr, exitCode: r.code });
}

/**
 * The real runner: posix_spawn (the daemon is not forked), stdin from `input`, stdout and stderr
 * through pipes, 30 s timeout (SIGKILL), 16 MiB per stream. `inNetns` starts the program inside a
 * netns by setns around the spawn, so no nsenter runs. A failure is NET_COMMAND_FAILED with
 * `exitCode` (the program's exit status), `errno` (when it could not be started, e.g. ENOENT) and
 * `stderr` (trimmed) as fields; the message repeats the first lines for people.
 */
export const execRunner: CommandRunner = Object.assign((bin: string, args: readonly string[], input?: string) => runSpawned(bin, args, input, undefined), {
  inNetns: (netnsPath: string, bin: string, args: readonly string[], input?: string) => runSpawned(bin, args, input, netnsPath),
});

/**
 * The former runner, child_process.execFile (which forks the whole daemon for each command), with
 * the same contract; kept to compare with in bench/sandbox.ts. Without `inNetns`, so netns
 * commands go through nsenter as they did.
 */
export const execFileRunner: CommandRunner = (bin, args, input) =>
  new Promise((resolve, reject) => {
    const child = execFile(bin, [...args], { timeout: TIMEOUT_MS, maxBuffer: MAX_OUTPUT, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) {
        reject(
          new VmletError('NET_COMMAND_FAILED', `${bin} ${args.join(' ')}: ${detail(stderr, err.message)}`, {
            cause: err,
            stderr: stderr.trim(),
            ...(typeof err.code === 'number' ? { exitCode: err.code } : {}),
            ...(typeof err.code === 'string' ? { errno: err.code } : {}),
          }),
        );
      } else {
        resolve({ stdout, stderr });
      }
    });
    child.stdin?.on('error', () => {});
    child.stdin?.end(input ?? '');
  });
