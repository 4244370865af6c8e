// Runs ip, nft and nsenter with argument arrays (never a shell), feeding batch input on stdin; failures become NET_COMMAND_FAILED carrying the exit code and stderr as fields.
import { execFile } from 'node:child_process';
import { VmletError } from '../errors.js';

export interface CommandResult {
  stdout: string;
  stderr: string;
}

/** How the library runs a program: argv and optional stdin. Tests may record instead of running. */
export type CommandRunner = (bin: string, args: readonly string[], input?: string) => Promise<CommandResult>;

/**
 * The real runner: execFile (no shell), stdin from `input`, 30 s timeout. A failure is
 * NET_COMMAND_FAILED with `exitCode` (the program's exit status), `errno` (when it could not be
 * started, e.g. ENOENT) and `stderr` (trimmed) as fields; the message repeats the first lines for people.
 */
export const execRunner: CommandRunner = (bin, args, input) =>
  new Promise((resolve, reject) => {
    const child = execFile(bin, [...args], { timeout: 30_000, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) {
        const detail = (stderr || err.message).trim().split('\n').slice(0, 6).join('; ');
        reject(
          new VmletError('NET_COMMAND_FAILED', `${bin} ${args.join(' ')}: ${detail}`, {
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
