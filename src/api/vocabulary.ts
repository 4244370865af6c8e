// The words every module shares, written once: the accelerators, VMI phases and which of them are final, the API's kinds with their plural and short names, and the record type guard.

/** How QEMU runs a guest: hardware virtualisation or software emulation. */
export type Accel = 'kvm' | 'tcg';
/** The daemon's accelerator setting: `auto` takes KVM when the probe says it works. */
export type AccelSetting = 'auto' | Accel;
export const ACCEL_SETTINGS: readonly AccelSetting[] = ['auto', 'kvm', 'tcg'];

/** The image formats vmlet opens; QEMU is always told which one (it never probes guest-writable data). */
export type ImageFormat = 'raw' | 'qcow2';

/** The phases a VMI goes through in vmlet (KubeVirt's VMIPhase has more, see types.ts). */
export type VmiPhase = 'Pending' | 'Scheduled' | 'Running' | 'Succeeded' | 'Failed';
/** The phases a VMI never leaves. */
export type FinalPhase = 'Succeeded' | 'Failed';

/** True for a phase a VMI never leaves. */
export function isFinalPhase(phase: string | undefined): phase is FinalPhase {
  return phase === 'Succeeded' || phase === 'Failed';
}

/** The API's kinds, as in the CRDs (deploy/crds): plural (URL), singular and short names. */
export const KINDS = {
  VirtualMachine: { plural: 'virtualmachines', singular: 'virtualmachine', short: ['vm', 'vms'] },
  VirtualMachineInstance: { plural: 'virtualmachineinstances', singular: 'virtualmachineinstance', short: ['vmi', 'vmis'] },
} as const;
export type Kind = keyof typeof KINDS;
export type Plural = (typeof KINDS)[Kind]['plural'];

/** The kind a URL's plural names, or undefined. */
export function kindOfPlural(plural: string): Kind | undefined {
  return (Object.keys(KINDS) as Kind[]).find((k) => KINDS[k].plural === plural);
}

/** The kind a CLI word names (plural, singular or short name, any case), or undefined. */
export function kindOfWord(word: string): Kind | undefined {
  const w = word.toLowerCase();
  return (Object.keys(KINDS) as Kind[]).find((k) => {
    const n = KINDS[k];
    return n.plural === w || n.singular === w || (n.short as readonly string[]).includes(w) || k.toLowerCase() === w;
  });
}

/** A plain object (not null, not an array). */
export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Where procfs is mounted unless a test points elsewhere. */
export const DEFAULT_PROC_ROOT = '/proc';
