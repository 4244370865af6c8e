// Fills in the defaults of a VM / VMI spec that the CRD schema cannot express (vCPUs from the cpu resources, guest memory from the memory resources, a disk's bus, runStrategy from `running`), in place, before the semantic checks run.
import { parseMilliQuantity } from './quantity.js';
import type { CPU, Disk, Quantity, ResourceList, RunStrategy, Volume } from './types.js';

/** A VMI domain as the checks see it: the schema has passed (or its errors are already reported), so any field may still be missing. */
export interface LooseDomain {
  cpu?: Partial<CPU>;
  memory?: { guest?: Quantity };
  resources?: { requests?: ResourceList; limits?: ResourceList };
  machine: { type: string };
  firmware?: {
    uuid?: string;
    serial?: string;
    bootloader?: { bios?: object; efi?: { secureBoot: boolean } };
    kernelBoot?: { kernelArgs?: string; hostPath?: { kernelPath: string; initrdPath?: string } };
  };
  devices: { autoattachSerialConsole: boolean; autoattachGraphicsDevice: boolean; disks?: Disk[] };
}

export interface LooseSpec {
  domain: LooseDomain;
  volumes?: Volume[];
  terminationGracePeriodSeconds: number;
}

/** What the defaults took from elsewhere, so the checks do not report one value twice. */
export interface DomainDefaults {
  /** domain.memory.guest was copied from resources.requests/limits.memory (checked there). */
  memoryFromResources: boolean;
}

/**
 * As KubeVirt: without a CPU topology the vCPU count follows the cpu limit (or request), rounded
 * up; without domain.memory.guest the guest gets the memory request (or limit); a disk that names
 * neither disk nor cdrom is a virtio disk. A quantity that does not parse is left for the checks.
 */
export function applySpecDefaults(spec: LooseSpec): DomainDefaults {
  const domain = spec.domain;
  if (domain.cpu === undefined) {
    const q = domain.resources?.limits?.cpu ?? domain.resources?.requests?.cpu;
    let cores = 1;
    if (q !== undefined) {
      try {
        cores = Math.max(1, Number((parseMilliQuantity(q) + 999n) / 1000n));
      } catch {
        // reported by the resource checks
      }
    }
    domain.cpu = { cores, sockets: 1, threads: 1 };
  }
  let memoryFromResources = false;
  if (domain.memory?.guest === undefined) {
    const fallback = domain.resources?.requests?.memory ?? domain.resources?.limits?.memory;
    if (fallback !== undefined) {
      domain.memory = { ...(domain.memory ?? {}), guest: fallback };
      memoryFromResources = true;
    }
  }
  for (const disk of domain.devices.disks ?? []) {
    if (disk.disk === undefined && disk.cdrom === undefined) disk.disk = { bus: 'virtio', readonly: false };
  }
  return { memoryFromResources };
}

/** A VM's `running: true|false` becomes runStrategy Always|Halted (when only `running` is set). */
export function applyRunStrategyDefault(spec: { running?: boolean; runStrategy?: RunStrategy }): void {
  if (spec.running === undefined || spec.runStrategy !== undefined) return;
  spec.runStrategy = spec.running ? 'Always' : 'Halted';
  delete spec.running;
}
