// Whether a cached build's files are still the ones its manifest recorded (size and mtime: a booted disk or a rebuilt file is not).
import fs from 'node:fs';
import path from 'node:path';

/**
 * True when every entry names a file below `dir` whose size and mtime equal the recorded ones.
 * @param {string} dir
 * @param {unknown[]} metas entries of a manifest: `{ file, size, mtimeMs }`
 */
export function filesAsRecorded(dir, metas) {
  for (const meta of metas) {
    const m = /** @type {{ file?: unknown, size?: unknown, mtimeMs?: unknown } | null | undefined} */ (meta);
    if (!m || typeof m.file !== 'string') return false;
    let st;
    try {
      st = fs.statSync(path.join(dir, m.file));
    } catch {
      return false;
    }
    if (st.size !== m.size || st.mtimeMs !== m.mtimeMs) return false;
  }
  return true;
}
