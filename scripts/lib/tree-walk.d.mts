// Types for scripts/lib/tree-walk.mjs, which walks a folder tree visiting every inode once.
import type { Dirent, Stats } from 'node:fs';

/** Calls `visit` for every entry below `dir` whose inode was not seen yet, parents before their contents; links are not followed. */
export function eachInode(dir: string, visit: (ent: Dirent, st: Stats) => void): void;
