// Reads the daemon's view of a launcher's QEMU from procfs: its pid in each nested pid namespace, and the daemon-side pid of a launcher's child.
import { readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

/**
 * pids of `pid` in each nested pid namespace, outermost (the procfs's) first; [] when unreadable. Read inline: a procfs
 * file is in memory, and a thread-pool round trip on a HELLO's path took milliseconds while the pool was busy.
 */
export function nsPids(procRoot: string, pid: number): number[] {
  try {
    const status = readFileSync(path.join(procRoot, String(pid), 'status'), 'utf8');
    const m = /^NSpid:\s*(.*)$/m.exec(status);
    return m?.[1] ? m[1].trim().split(/\s+/).map(Number) : [];
  } catch {
    return [];
  }
}

/** Finds the daemon-namespace pid of the child of `parentPid` that is `innerPid` inside its own namespace. */
export async function translateChildPid(procRoot: string, parentPid: number, innerPid: number): Promise<number | undefined> {
  const candidates: number[] = [];
  try {
    const taskDir = path.join(procRoot, String(parentPid), 'task');
    for (const tid of await readdir(taskDir)) {
      const children = await readFile(path.join(taskDir, tid, 'children'), 'utf8').catch(() => '');
      candidates.push(...children.split(/\s+/).filter(Boolean).map(Number));
    }
  } catch {
    return undefined;
  }
  for (const c of candidates) {
    if (nsPids(procRoot, c).at(-1) === innerPid) return c;
  }
  return undefined;
}
