// Types for scripts/lib/guest-manifest.mjs, which reads a cached guest image's manifest.json and names the files it records.

/** The parsed `<dir>/manifest.json`, or null when there is none or it is not JSON. */
export function readManifest(dir: string): unknown;

/** The manifest's entry for `<dir>/<file>`: size and mtime and, with `hash` (the default), its sha256. */
export function fileMeta(dir: string, file: string, hash?: boolean): { file: string; size: number; mtimeMs: number; sha256?: string };

/** What a manifest names for imageFiles. */
export interface ImageManifestFiles {
  kernelArgs: string;
  kernel: { file: string };
  initrd: { file: string };
  disk: { file: string };
}

/** A cached guest image as paths. */
export interface GuestImageFiles<M> {
  /** the image's folder */
  dir: string;
  /** the base image: tests boot a copy or an overlay of it */
  disk: string;
  kernel: string;
  initrd: string;
  kernelArgs: string;
  manifest: M;
}

/** The image in `dir` as paths: the kernel, initrd and disk its manifest names, and the kernel command line it was made for. */
export function imageFiles<M extends ImageManifestFiles>(dir: string, manifest: M): GuestImageFiles<M>;
