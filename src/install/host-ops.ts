// The host commands an install runs (systemctl, useradd, ip, nft), behind one interface so tests can record them instead.
import { execFile } from 'node:child_process';

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface HostOps {
  /** Runs a program with arguments (never a shell); resolves with its exit code, never rejects on a non-zero one. */
  run(program: string, args: string[]): Promise<CommandResult>;
}

/** The real host. */
export const realHostOps: HostOps = {
  run: (program, args) =>
    new Promise((resolve) => {
      execFile(program, args, { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 127;
        resolve({ code, stdout, stderr: err !== null && stderr === '' ? err.message : stderr });
      });
    }),
};
