// glibc malloc's two knobs the daemon turns: fewer arenas, and handing freed memory back to the kernel after a burst of work.
import { libc } from './libc.js';

const M_TRIM_THRESHOLD = -1;
const M_MMAP_THRESHOLD = -3;
const M_ARENA_MAX = -8;

const mallopt = libc.func('int mallopt(int param, int value)') as (param: number, value: number) => number;
const mallocTrim = libc.func('int malloc_trim(size_t pad)') as (pad: number) => number;

/**
 * Caps malloc's arenas. glibc gives each thread that allocates (libuv's pool, V8's workers) an arena of its own, up
 * to 8 per core, and an arena's freed pages are rarely returned. False when glibc refused the value.
 */
export function limitMallocArenas(max: number): boolean {
  return mallopt(M_ARENA_MAX, max) === 1;
}

/**
 * Fixes malloc's thresholds at glibc's own defaults (128 KiB). Left dynamic, glibc raises them after a large block
 * is freed (up to 32 MiB for mmap, twice that for trimming), and freed memory then stays in the process.
 */
export function fixMallocThresholds(bytes = 128 * 1024): boolean {
  return mallopt(M_MMAP_THRESHOLD, bytes) === 1 && mallopt(M_TRIM_THRESHOLD, bytes) === 1;
}

/** Returns the free pages of every arena to the kernel (madvise); true when some memory was released. */
export function trimMalloc(): boolean {
  return mallocTrim(0) === 1;
}
