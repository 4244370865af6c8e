// Sizes QEMU's TCG translation-block cache from the guest, so software emulation has a bounded and known memory cost.

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
