// vmlet's own version: the `version` field of this checkout's package.json (src/ and dist/ both sit one level below it).
import fs from 'node:fs';

let cached: string | undefined;

/** The package version, or "unknown" when package.json cannot be read. Read once. */
export function vmletVersion(): string {
  if (cached !== undefined) return cached;
  try {
    const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    cached = typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    cached = 'unknown';
  }
  return cached;
}
