// Single-field checks the validators share: a quantity that parses, memory and capacity in range, a normalised host path.
import type { Collector } from './field-errors.js';
import { hostPathProblem } from './names.js';
import { parseMilliQuantity, parseQuantity } from './quantity.js';
import type { Quantity } from './types.js';

// Limits of the semantic checks (documented in docs/api.md).
export const MIN_MEMORY_BYTES = 16n << 20n; // 16 MiB
export const MAX_MEMORY_BYTES = 16n << 40n; // 16 TiB
export const MAX_DISK_BYTES = 1n << 50n; // 1 PiB

/** Parses a quantity for a check; records INVALID_QUANTITY and returns undefined if it does not parse. */
export function quantity(q: Quantity | undefined, path: string, col: Collector, milli = false): bigint | undefined {
  if (q === undefined) return undefined;
  try {
    return milli ? parseMilliQuantity(q) : parseQuantity(q);
  } catch (e) {
    col.add(path, 'INVALID_QUANTITY', e instanceof Error ? e.message : 'invalid quantity');
    return undefined;
  }
}

export function checkMemoryRange(bytes: bigint | undefined, path: string, col: Collector): void {
  if (bytes === undefined) return;
  if (bytes <= 0n) col.add(path, 'OUT_OF_RANGE', 'memory must be positive');
  else if (bytes < MIN_MEMORY_BYTES) col.add(path, 'OUT_OF_RANGE', 'memory must be at least 16Mi');
  else if (bytes > MAX_MEMORY_BYTES) col.add(path, 'OUT_OF_RANGE', 'memory must be at most 16Ti');
}

export function checkCapacity(q: Quantity, path: string, col: Collector): void {
  const bytes = quantity(q, path, col);
  if (bytes === undefined) return;
  if (bytes <= 0n) col.add(path, 'OUT_OF_RANGE', 'capacity must be positive');
  else if (bytes > MAX_DISK_BYTES) col.add(path, 'OUT_OF_RANGE', 'capacity must be at most 1Pi');
}

export function checkPath(p: string, path: string, col: Collector): void {
  const problem = hostPathProblem(p);
  if (problem !== undefined) col.add(path, 'INVALID_HOST_PATH', problem);
}
