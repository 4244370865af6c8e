// Finds a binary on PATH, for tests that skip when a tool is missing.
import { existsSync } from 'node:fs';
import path from 'node:path';

export function which(bin: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(dir, bin);
    if (dir && existsSync(p)) return p;
  }
  return undefined;
}
