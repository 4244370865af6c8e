// Helpers of the KVM probe tests: short temp dirs (tap's testdir paths are too long for a unix socket) and this process's QEMU children, to prove they were reaped.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** A short temp dir holding `files` (names starting with "qemu" are made executable) and, with `tmp`, an empty tmp/; removed in teardown. */
export function shortDir(t: { teardown(fn: () => void): void }, files: Record<string, string> = {}, opts: { tmp?: boolean } = {}): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vkp-'));
  for (const [name, content] of Object.entries(files)) writeFileSync(path.join(dir, name), content, { mode: name.startsWith('qemu') ? 0o755 : 0o644 });
  if (opts.tmp) mkdirSync(path.join(dir, 'tmp'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Children of this process (alive or zombie) whose command name matches `re`, as "pid comm state". */
export function children(re: RegExp): string[] {
  const out: string[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      continue;
    }
    const close = stat.lastIndexOf(')');
    const comm = stat.slice(stat.indexOf('(') + 1, close);
    const [state, ppid] = stat.slice(close + 2).split(' ');
    if (Number(ppid) === process.pid && re.test(comm)) out.push(`${pid} ${comm} ${state ?? '?'}`);
  }
  return out;
}
