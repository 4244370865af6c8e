// Runs ip, nft and nsenter with argument arrays (never a shell), feeding batch input on stdin; failures become NET_COMMAND_FAILED.
import { execFile } from 'node:child_process';
import { VmletError } from '../errors.js';

export interface CommandResult {
  stdout: string;
  stderr: string;
}

/** How the library runs a program: argv and optional stdin. Tests may record instead of running. */
export type CommandRunner = (bin: string, args: readonly string[], input?: string) => Promise<CommandResult>;

/** The real runner: execFile (no shell), stdin from `input`, 30 s timeout, NET_COMMAND_FAILED with stderr on a non-zero exit. */
export const execRunner: CommandRunner = (bin, args, input) =>
  new Promise((resolve, reject) => {
    const child = execFile(bin, [...args], { timeout: 30_000, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) {
        const detail = (stderr || err.message).trim().split('\n').slice(0, 6).join('; ');
        reject(new VmletError('NET_COMMAND_FAILED', `${bin} ${args.join(' ')}: ${detail}`, { cause: err }));
      } else {
        resolve({ stdout, stderr });
      }
    });
    child.stdin?.on('error', () => {});
    child.stdin?.end(input ?? '');
  });
