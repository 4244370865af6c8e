// Types for scripts/gen-kubevirt-crds.mjs, which generates the kubevirt.io twins of vmlet's CRDs.

export const CRD_DIR: string;
export const OUT_DIR: string;
/** source file in deploy/crds → generated file in OUT_DIR */
export const FILES: ReadonlyArray<readonly [string, string]>;

/** The kubevirt.io/v1 twin of one vmlet.io CRD's YAML text. */
export function kubevirtCrd(text: string, source: string): string;

/** Each generated file's path and the content it should have. */
export function expected(): Array<{ file: string; content: string }>;
