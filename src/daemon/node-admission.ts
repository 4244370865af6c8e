// Standalone admission of new VMIs against what the node already runs: the node-wide limits (VMI count, guest memory and vCPUs of the VMIs not Succeeded/Failed) and interface MACs that no other such VMI uses, checked and created under one lock so that concurrent creates cannot overshoot.
import { formatBytes } from '../api/quantity.js';
import { API_VERSION, type VMISpec } from '../api/types.js';
import { isFinalPhase } from '../api/vocabulary.js';
import { isStoredVmi } from '../controller/vm-controller.js';
import { VmletError } from '../errors.js';
import { normalizeMac } from '../net/mac.js';
import { KeyedMutex } from '../source/keyed-mutex.js';
import type { KubeObject } from '../source/source.js';
import type { NodeLimits } from './config.js';
import { vmSizing } from './vm-resources.js';

/** What one VMI takes of the node. */
export interface VmiClaim {
  /** `namespace/name`, for messages. */
  name: string;
  vcpus: number;
  /** Guest memory in bytes: domain.memory.guest as the VM's cgroup sizes it (vm-resources.ts). */
  guestBytes: number;
  /** Explicit interface MACs, normalised (derived MACs come from the uid and are not known before the store makes one). */
  macs: string[];
}

/** What the VMIs that are not Succeeded/Failed take together (deleting ones too: their QEMU still runs). */
export interface NodeUsage {
  vmis: number;
  vcpus: number;
  guestBytes: number;
  /** MAC → the `namespace/name` of the VMI that uses it. */
  macs: Map<string, string>;
}

function macOf(mac: string): string {
  try {
    return normalizeMac(mac);
  } catch {
    // Validation refuses bad MACs at create; a stored one is compared as written.
    return mac.toLowerCase();
  }
}

/**
 * The claim of a VMI spec (validated and defaulted, so guest memory is set). A spec that cannot be sized claims no
 * memory or vCPUs: its VMI fails at start (CGROUP_INVALID_QUANTITY) before it runs anything.
 */
export function claimOf(namespace: string, name: string, spec: VMISpec): VmiClaim {
  const macs = (spec.domain?.devices?.interfaces ?? []).flatMap((i) => (i.macAddress === undefined ? [] : [macOf(i.macAddress)]));
  const claim: VmiClaim = { name: `${namespace}/${name}`, vcpus: 0, guestBytes: 0, macs };
  try {
    const sizing = vmSizing({ apiVersion: API_VERSION, kind: 'VirtualMachineInstance', metadata: { namespace, name }, spec });
    claim.vcpus = sizing.vcpus;
    claim.guestBytes = sizing.guestBytes;
  } catch {
    // see above
  }
  return claim;
}

/** Sums the VMIs that are not finished. */
export function usageOf(vmis: readonly KubeObject[]): NodeUsage {
  const usage: NodeUsage = { vmis: 0, vcpus: 0, guestBytes: 0, macs: new Map() };
  for (const o of vmis) {
    if (!isStoredVmi(o) || isFinalPhase(o.status?.phase)) continue;
    const c = claimOf(o.metadata.namespace, o.metadata.name, o.spec);
    usage.vmis++;
    usage.vcpus += c.vcpus;
    usage.guestBytes += c.guestBytes;
    for (const mac of c.macs) usage.macs.set(mac, c.name);
  }
  return usage;
}

const bytes = (n: number): string => formatBytes(BigInt(n));

/** Pure: why `claim` may not join `usage` under `limits` (0 = no limit), or undefined when it fits. */
export function refusalOf(limits: NodeLimits, usage: NodeUsage, claim: VmiClaim): VmletError | undefined {
  const what = `VirtualMachineInstance ${claim.name}`;
  for (const mac of claim.macs) {
    const other = usage.macs.get(mac);
    if (other !== undefined && other !== claim.name) {
      return new VmletError('NET_MAC_IN_USE', `${what}: macAddress ${mac} is already used by VirtualMachineInstance ${other} on this node`, {
        details: [{ field: 'spec.domain.devices.interfaces', code: 'NET_MAC_IN_USE', message: `${mac} is used by ${other}`, mac, usedBy: other }],
      });
    }
  }
  const over = (
    code: 'NODE_LIMIT_VMIS' | 'NODE_LIMIT_MEMORY' | 'NODE_LIMIT_VCPUS',
    key: keyof NodeLimits,
    used: number,
    asked: number,
    show: (n: number) => string,
    field: string,
  ): VmletError | undefined => {
    const limit = limits[key];
    if (limit <= 0 || used + asked <= limit) return undefined;
    const message = `node limit limits.${key} is ${show(limit)}: ${show(used)} in use, ${what} asks for ${show(asked)} more`;
    return new VmletError(code, message, { details: [{ field, code, message, limit, used, requested: asked }] });
  };
  return (
    over('NODE_LIMIT_VMIS', 'maxVmis', usage.vmis, 1, (n) => `${n} VMI${n === 1 ? '' : 's'}`, 'metadata.name') ??
    over('NODE_LIMIT_MEMORY', 'maxGuestMemory', usage.guestBytes, claim.guestBytes, bytes, 'spec.domain.memory.guest') ??
    over('NODE_LIMIT_VCPUS', 'maxVcpus', usage.vcpus, claim.vcpus, (n) => `${n} vCPU${n === 1 ? '' : 's'}`, 'spec.domain.cpu')
  );
}

export interface NodeAdmissionOptions {
  limits: NodeLimits;
  /** Every VMI of the node (the local store's list). */
  listVmis: () => Promise<KubeObject[]>;
}

/** The VMI to admit: its place and spec (what the API validated, or a VM's template). */
export interface AdmissionRequest {
  namespace: string;
  name: string;
  spec: VMISpec;
}

export class NodeAdmission {
  readonly #lock = new KeyedMutex();

  constructor(private readonly opts: NodeAdmissionOptions) {}

  private get limited(): boolean {
    const l = this.opts.limits;
    return l.maxVmis > 0 || l.maxGuestMemory > 0 || l.maxVcpus > 0;
  }

  /** Throws the refusal for `req` against the VMIs stored now; nothing is reserved (a VM's create or start, before its VMI exists). */
  async check(req: AdmissionRequest): Promise<void> {
    const claim = claimOf(req.namespace, req.name, req.spec);
    if (!this.limited && claim.macs.length === 0) return;
    const refusal = refusalOf(this.opts.limits, usageOf(await this.opts.listVmis()), claim);
    if (refusal) throw refusal;
  }

  /**
   * Runs `create` (which stores the VMI) only if the VMI fits, with the check and the create under one node-wide
   * lock: two creates cannot both see the last free room. Without limits, a VMI without explicit MACs cannot
   * conflict with anything and skips the lock.
   */
  async admit<T>(req: AdmissionRequest, create: () => Promise<T>): Promise<T> {
    const claim = claimOf(req.namespace, req.name, req.spec);
    if (!this.limited && claim.macs.length === 0) return create();
    return this.#lock.run('node', async () => {
      const refusal = refusalOf(this.opts.limits, usageOf(await this.opts.listVmis()), claim);
      if (refusal) throw refusal;
      return create();
    });
  }
}
