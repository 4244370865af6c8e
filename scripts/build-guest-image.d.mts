// Types for scripts/build-guest-image.mjs, which builds and caches the bootable test guest.

/** Printed on the serial console, on a line of its own, once the guest is fully up. */
export const READY_MARKER: 'VMLET-GUEST-READY';

export interface GuestImageFileMeta {
  file: string;
  format?: string;
  size: number;
  mtimeMs: number;
  sha256: string;
}

export interface GuestImageManifest {
  format: number;
  /** sha256 of the builder, its lib modules and the guest scripts: a changed recipe rebuilds the image */
  recipe: string;
  builtAt: string;
  buildSeconds: number;
  readyMarker: string;
  kernelVersion: string;
  /** the Debian bzImage */
  kernel: GuestImageFileMeta;
  /** the same kernel as an uncompressed ELF with a PVH entry point, or null */
  kernelPvh: GuestImageFileMeta | null;
  initrd: GuestImageFileMeta & { uncompressedSize: number; compression: 'gzip' };
  /** Debian package name → version */
  packages: Record<string, string>;
  modules: { loadOrder: string[]; loadedLate: string[]; builtin: string[]; missing: string[] };
  qemuGaLibraries: string[];
}

export interface EnsureGuestImageOptions {
  /** repository root; default: the parent of scripts/ */
  root?: string;
  /** output directory, absolute or relative to root; default `.cache/guest` */
  out?: string;
  /** rebuild even when the cache is valid */
  force?: boolean;
  /** progress lines; default: stderr with a `guest-image:` prefix */
  log?: (msg: string) => void;
}

export interface GuestImageResult {
  /** bzImage: boots with any firmware */
  kernel: string;
  /** uncompressed PVH ELF: ~3 s faster to boot under TCG with SeaBIOS `-kernel`; null if unavailable */
  kernelPvh: string | null;
  initrd: string;
  manifest: GuestImageManifest;
}

/** Errors carry a stable `code` (GUEST_*), also at the start of the message. */
export class GuestImageError extends Error {
  constructor(code: string, message: string, cause?: unknown);
  readonly code: string;
}

export function ensureGuestImage(opts?: EnsureGuestImageOptions): Promise<GuestImageResult>;
