// QEMU's memory beyond guest RAM (the overhead formula of docs/cgroups.md) and the TCG translation-cache size it includes: pure, shared by the daemon's cgroup and the controller's launcher pod.
import type { Accel } from './vocabulary.js';

const MiB = 1024 * 1024;

/**
 * QEMU 7.2 reserves a 1 GiB translation cache by default and fills it as the guest runs new
 * code, which a cgroup limit sized from the guest cannot hold. vmlet passes `tb-size` instead:
 * 1/16 of guest RAM, at least 64 MiB (QEMU's own default before 5.2 was 32 MiB), at most 256 MiB.
 * A full cache is flushed and refilled, which costs time, not correctness.
 */
export const TCG_TB_CACHE = { minMiB: 64, maxMiB: 256, guestDivisor: 16 } as const;

/** `-accel tcg,tb-size=N`: N in MiB for a guest of `guestBytes`. Pure. */
export function tcgTbSizeMiB(guestBytes: number): number {
  const share = Math.ceil(guestBytes / TCG_TB_CACHE.guestDivisor / MiB);
  return Math.min(TCG_TB_CACHE.maxMiB, Math.max(TCG_TB_CACHE.minMiB, share));
}

/**
 * The memory QEMU needs beyond guest RAM (docs/cgroups.md, "VM memory overhead"): a fixed base
 * (QEMU's binary, heap, device models, the firmware/kernel images it holds), a share per vCPU
 * (thread stack, vCPU state), a fraction of guest RAM (page tables, dirty bitmaps), and under TCG
 * the translation-block cache (bounded by `tb-size`, tcgTbSizeMiB) plus TCG's own data
 * (per-page descriptors, TB hash tables, soft-MMU TLBs), which KVM does not have.
 */
export const OVERHEAD = {
  baseBytes: 96 * MiB,
  perVcpuBytes: 8 * MiB,
  /** guest RAM / guestDivisor is added (1/64, as KubeVirt's pagetable estimate, rounded up). */
  guestDivisor: 64,
  /** Extra under TCG besides the translation cache itself (whose size tcgTbSizeMiB gives). */
  tcgBytes: 32 * MiB,
} as const;

/** Annotation that replaces the computed overhead with an exact quantity (e.g. "0" makes the limit the guest memory alone). */
export const OVERHEAD_ANNOTATION = 'vmlet.io/memory-overhead';

/** QEMU's memory beyond guest RAM, bytes, rounded up to whole MiB (the formula in docs/cgroups.md). */
export function memoryOverhead(o: { guestBytes: number; vcpus: number; accel: Accel }): number {
  const tcg = o.accel === 'tcg' ? OVERHEAD.tcgBytes + tcgTbSizeMiB(o.guestBytes) * MiB : 0;
  const raw = OVERHEAD.baseBytes + o.vcpus * OVERHEAD.perVcpuBytes + Math.ceil(o.guestBytes / OVERHEAD.guestDivisor) + tcg;
  return Math.ceil(raw / MiB) * MiB;
}
