// Helpers for the real-cgroup integration tests: child processes to put in groups, /proc readers, and the skip reasons.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';

export const QEMU = process.env['VMLET_QEMU'] ?? '/usr/bin/qemu-system-x86_64';

export interface Child {
  proc: ChildProcess;
  pid: number;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function start(cmd: string, args: string[]): Child {
  const proc = spawn(cmd, args, { stdio: ['pipe', 'ignore', 'ignore'] });
  if (proc.pid === undefined) throw new Error(`cannot spawn ${cmd}`);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.once('exit', (code, signal) => resolve({ code, signal }));
  });
  return { proc, pid: proc.pid, exited };
}

export function sleeper(): Child {
  return start('sleep', ['300']);
}

/** A process with several threads: QEMU paused (-S, TCG, 2 vCPUs) if there is one, else node. */
export function threaded(): Child {
  if (existsSync(QEMU)) {
    return start(QEMU, [
      '-S',
      '-accel',
      'tcg',
      '-machine',
      'q35',
      '-smp',
      '2',
      '-m',
      '64',
      '-nodefaults',
      '-display',
      'none',
      '-serial',
      'none',
      '-monitor',
      'none',
    ]);
  }
  return start(process.execPath, ['-e', 'setTimeout(() => {}, 300000)']);
}

/** A CPU-burning process. */
export function busy(): Child {
  return start(process.execPath, ['-e', 'for (;;) {}']);
}

/** A process that, once it reads a line on stdin, allocates and touches memory until it dies. */
export function hog(): Child {
  return start(process.execPath, ['-e', "process.stdin.once('data', () => { const a = []; for (;;) a.push(Buffer.alloc(8 << 20, 1)); })"]);
}

export function tids(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`)
    .map(Number)
    .sort((a, b) => a - b);
}

/** /proc/PID/cgroup (or /proc/PID/task/TID/cgroup) as hierarchy-key → path, key = controllers list or "" for v2. */
export function procCgroups(pid: number, tid?: number): Map<string, string> {
  const file = tid === undefined ? `/proc/${pid}/cgroup` : `/proc/${pid}/task/${tid}/cgroup`;
  const out = new Map<string, string>();
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line);
    if (m !== null) out.set(m[1] ?? '', m[2] ?? '');
  }
  return out;
}

export function rand(): string {
  return Math.random().toString(36).slice(2, 10);
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

export async function waitFor(check: () => boolean, timeoutMs = 5000): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return check();
}
