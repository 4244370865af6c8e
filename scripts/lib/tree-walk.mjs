// Walks a folder tree to size a filesystem image made from it: every inode once (a hard-linked file at its first name only).
import fs from 'node:fs';
import path from 'node:path';

/**
 * Calls `visit` for every entry below `dir` (not `dir` itself) whose inode was not seen yet, parents before
 * their contents; symbolic links are not followed.
 * @param {string} dir
 * @param {(ent: fs.Dirent, st: fs.Stats) => void} visit
 */
export function eachInode(dir, visit) {
  const seen = new Set();
  const walk = (d) => {
    for (const ent of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, ent.name);
      const st = fs.lstatSync(p);
      if (seen.has(st.ino)) continue;
      seen.add(st.ino);
      visit(ent, st);
      if (ent.isDirectory()) walk(p);
    }
  };
  walk(dir);
}
