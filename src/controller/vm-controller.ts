// Turns VirtualMachines into VirtualMachineInstances per runStrategy, assigns VMIs to a node, and keeps VM status.
import type { Logger } from 'pino';
import type { RunStrategy, VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceStatus, VirtualMachineStatus, VMISpec } from '../api/types.js';
import { API_VERSION } from '../api/types.js';
import { isRecord } from '../api/vocabulary.js';
import { VmletError, type ErrorCode } from '../errors.js';
import type { Kind, KubeObject, Source, WatchEvent } from '../source/source.js';
import { decide, printableStatus, recordFailure, type DecideInput, type StartFailure, type VmiView } from './run-strategy.js';

/** The finalizer that keeps a VMI in the source until its QEMU is gone and its node cleaned up. */
export const VMI_FINALIZER = 'vmlet.io/vmi-cleanup';

/** What the controller needs of a source (the local store or the API server): plain object CRUD, status, watch and events. */
export type ControllerSource = Pick<Source, 'get' | 'list' | 'create' | 'updateStatus' | 'delete' | 'watch' | 'recordEvent'>;

/** A VirtualMachine as a source holds it, seen as the API type. */
export type StoredVm = KubeObject<'VirtualMachine'> & VirtualMachine;
/** A VirtualMachineInstance as a source holds it, seen as the API type. */
export type StoredVmi = KubeObject<'VirtualMachineInstance'> & VirtualMachineInstance;

/** Sources hold what the API validated, so the kind and the spec's outline are what is checked here. */
export function isStoredVm(o: KubeObject): o is StoredVm {
  return o.kind === 'VirtualMachine' && isRecord(o.spec) && isRecord(o.spec['template']) && (o.status === undefined || isRecord(o.status));
}

export function isStoredVmi(o: KubeObject): o is StoredVmi {
  return o.kind === 'VirtualMachineInstance' && isRecord(o.spec) && (o.status === undefined || isRecord(o.status));
}

/** The object as a VirtualMachine; STORE_INVALID_OBJECT when the source holds something else under that kind. */
export function asVm(o: KubeObject<'VirtualMachine'>): StoredVm {
  if (isStoredVm(o)) return o;
  throw new VmletError('STORE_INVALID_OBJECT', `VirtualMachine ${o.metadata.namespace}/${o.metadata.name} has no spec.template`);
}

/** The object as a VirtualMachineInstance; STORE_INVALID_OBJECT when the source holds something else under that kind. */
export function asVmi(o: KubeObject<'VirtualMachineInstance'>): StoredVmi {
  if (isStoredVmi(o)) return o;
  throw new VmletError('STORE_INVALID_OBJECT', `VirtualMachineInstance ${o.metadata.namespace}/${o.metadata.name} has no spec`);
}

export interface ControllerOptions {
  source: ControllerSource;
  /** Standalone: every VMI goes to this node. Absent in a cluster, where the launcher controller assigns nodes. */
  nodeName?: string;
  /** The apiVersion of the VMIs it makes (default vmlet.io/v1alpha1; kubevirt.io/v1 with the compat overlay). */
  apiVersion?: string;
  logger: Logger;
  now?: () => number;
  /**
   * Standalone: runs each VMI create through the node's admission (limits, MACs in use; src/daemon/node-admission.ts).
   * A refusal (ADMISSION_REFUSALS) is a FailedCreate Warning on the VM, tried again every ADMISSION_RETRY_MS.
   */
  admit?: (vmi: { namespace: string; name: string; spec: VMISpec }, create: () => Promise<unknown>) => Promise<unknown>;
}

/** The codes a node's admission refuses a VMI with: the VM waits for room instead of failing. */
export const ADMISSION_REFUSALS: readonly ErrorCode[] = ['NODE_LIMIT_VMIS', 'NODE_LIMIT_MEMORY', 'NODE_LIMIT_VCPUS', 'NET_MAC_IN_USE'];
export const ADMISSION_RETRY_MS = 5_000;

/** vmlet's VM status: KubeVirt's fields plus startFailure and whether a Once VM has run. */
type VmStatus = VirtualMachineStatus & { startFailure?: StartFailure; ranOnce?: boolean };

const key = (ns: string, name: string): string => `${ns}/${name}`;

export class VmController {
  private readonly source: ControllerSource;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly apiVersion: string;
  private readonly queue = new Set<string>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private running = false;
  private restarting = false;
  private draining: Promise<void> | undefined;
  private watches: Array<{ close(): void }> = [];
  /** VMIs this controller saw fail, so each failure is counted once. */
  private readonly countedFailures = new Set<string>();
  /** The last admission refusal recorded per VM, so a VM waiting for room gets one event, not one per retry. */
  private readonly refusals = new Map<string, string>();

  constructor(private readonly opts: ControllerOptions) {
    this.source = opts.source;
    this.log = opts.logger;
    this.now = opts.now ?? Date.now;
    this.apiVersion = opts.apiVersion ?? API_VERSION;
  }

  /** Watches VMs and VMIs until stop(); every change queues the VM it concerns. */
  start(): void {
    this.running = true;
    const vms = this.source.watch('VirtualMachine', undefined, undefined, { sendInitialEvents: true });
    const vmis = this.source.watch('VirtualMachineInstance', undefined, undefined, { sendInitialEvents: true });
    this.watches = [vms, vmis];
    void this.consume(vms, (o) => this.enqueue(o.metadata.namespace, o.metadata.name));
    void this.consume(vmis, (o) => {
      if (!isStoredVmi(o)) {
        this.log.warn({ vmi: key(o.metadata.namespace, o.metadata.name) }, 'ignoring a VirtualMachineInstance without a spec');
        return;
      }
      const vmi = o;
      void this.schedule(vmi);
      const owner = vmi.metadata.ownerReferences?.find((r) => r.kind === 'VirtualMachine');
      if (owner) this.enqueue(vmi.metadata.namespace, owner.name);
    });
  }

  stop(): void {
    this.running = false;
    for (const w of this.watches) w.close();
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }

  private async consume<K extends Kind>(w: AsyncIterable<WatchEvent<K>>, fn: (o: KubeObject<K>) => void): Promise<void> {
    let err: unknown;
    try {
      for await (const ev of w) fn(ev.object);
    } catch (e) {
      err = e;
    }
    // A watch that ends while the controller runs (an error, or a source that gave up: a CRD not served yet)
    // is started again after a pause, both watches together so that no change falls between them.
    if (!this.running || this.restarting) return;
    this.restarting = true;
    this.log.error({ err }, 'controller watch ended; restarting it in 1 s');
    this.stop();
    this.running = true;
    setTimeout(() => {
      this.restarting = false;
      if (!this.running) return;
      try {
        this.start();
      } catch (e) {
        this.log.error({ err: e }, 'cannot watch VMs and VMIs any more');
      }
    }, 1000).unref();
  }

  enqueue(ns: string, name: string): void {
    this.queue.add(key(ns, name));
    this.draining ??= this.drain().finally(() => {
      this.draining = undefined;
    });
  }

  /** Resolves when every queued VM has been reconciled (tests and shutdown use it). */
  async idle(): Promise<void> {
    while (this.draining) await this.draining;
  }

  private async drain(): Promise<void> {
    while (this.queue.size > 0 && this.running) {
      const [k] = this.queue;
      this.queue.delete(k!);
      const [ns, name] = k!.split('/') as [string, string];
      try {
        await this.reconcile(ns, name);
      } catch (e) {
        this.log.warn({ err: e, vm: k }, 'VM reconcile failed; retrying in 1 s');
        this.later(ns, name, this.now() + 1000);
      }
    }
  }

  private later(ns: string, name: string, atMs: number): void {
    const k = key(ns, name);
    clearTimeout(this.timers.get(k));
    this.timers.set(
      k,
      setTimeout(
        () => {
          this.timers.delete(k);
          this.enqueue(ns, name);
        },
        Math.max(0, atMs - this.now()),
      ),
    );
  }

  /**
   * A new VMI's status. Standalone, it is on this node from the start: one store write and one watch hop fewer on the
   * way to Running than a separate scheduling write.
   */
  initialVmiStatus(): VirtualMachineInstanceStatus {
    const nodeName = this.opts.nodeName;
    if (nodeName === undefined) return { phase: 'Pending' };
    const at = new Date(this.now()).toISOString();
    return {
      nodeName,
      phase: 'Scheduled',
      phaseTransitionTimestamps: [
        { phase: 'Pending', phaseTransitionTimestamp: at },
        { phase: 'Scheduled', phaseTransitionTimestamp: at },
      ],
    };
  }

  /** Standalone scheduling: every unassigned VMI goes to this node. */
  private async schedule(vmi: VirtualMachineInstance): Promise<void> {
    const nodeName = this.opts.nodeName;
    if (nodeName === undefined || vmi.metadata.deletionTimestamp || vmi.status?.nodeName) return;
    const phase = vmi.status?.phase ?? '';
    if (phase !== '' && phase !== 'Pending') return;
    const at = new Date(this.now()).toISOString();
    try {
      await this.source.updateStatus<VirtualMachineInstanceStatus>('VirtualMachineInstance', vmi.metadata.namespace, vmi.metadata.name, (s) => {
        if (s?.nodeName) return s;
        return {
          ...s,
          nodeName,
          phase: 'Scheduled',
          phaseTransitionTimestamps: [...(s?.phaseTransitionTimestamps ?? []), { phase: 'Scheduled', phaseTransitionTimestamp: at }],
        };
      });
    } catch (e) {
      if (!(e instanceof VmletError && e.code === 'STORE_NOT_FOUND')) throw e;
    }
  }

  private async reconcile(ns: string, name: string): Promise<void> {
    const vm = await this.getVm(ns, name);
    const vmiRaw = await this.source.get('VirtualMachineInstance', ns, name);
    const vmiObj = vmiRaw && asVmi(vmiRaw);
    const owned = vmiObj && vm && vmiObj.metadata.ownerReferences?.some((r) => r.uid === vm.metadata.uid) ? vmiObj : undefined;
    if (!vm) {
      this.refusals.delete(key(ns, name));
      // The VM is gone: its VMI goes too (cascading deletion).
      if (vmiObj?.metadata.ownerReferences?.some((r) => r.kind === 'VirtualMachine') && !vmiObj.metadata.deletionTimestamp) {
        await this.source.delete('VirtualMachineInstance', ns, name, { expectedUid: vmiObj.metadata.uid! });
      }
      return;
    }
    const status = (vm.status ?? {}) as VmStatus;
    // KubeVirt's legacy `running: true|false` (kept as written in a cluster, where admission cannot rewrite it).
    const legacy = (vm.spec as { running?: unknown }).running;
    const runStrategy: RunStrategy = vm.spec.runStrategy ?? (legacy === true ? 'Always' : 'Halted');
    const view = owned ? vmiView(owned) : undefined;
    let startFailure = status.startFailure;
    if (owned && view?.phase === 'Failed' && !this.countedFailures.has(owned.metadata.uid!)) {
      this.countedFailures.add(owned.metadata.uid!);
      startFailure = recordFailure(startFailure, view, this.now());
    }
    if (owned && view?.phase === 'Running' && view.runningSince !== undefined && this.now() - view.runningSince >= 60_000) startFailure = undefined;
    const input: DecideInput = { runStrategy, vmi: view, startFailure, ranOnce: status.ranOnce ?? false, now: this.now() };
    const d = decide(input);
    switch (d.action) {
      case 'create':
        try {
          await this.createVmi(vm);
        } catch (e) {
          if (!(e instanceof VmletError && ADMISSION_REFUSALS.includes(e.code))) throw e;
          await this.refused(vm, e);
          break;
        }
        this.refusals.delete(key(ns, name));
        status.ranOnce = true;
        input.vmi = { phase: 'Pending', deleting: false, paused: false };
        break;
      case 'delete':
        await this.source.delete('VirtualMachineInstance', ns, name, { expectedUid: owned!.metadata.uid! });
        input.vmi = { ...view!, deleting: true };
        break;
      case 'wait':
        this.later(ns, name, d.untilMs);
        break;
      case 'none':
        break;
    }
    if (vmiObj && !owned && !vmiObj.metadata.deletionTimestamp) {
      this.log.warn({ vm: key(ns, name) }, 'a VMI of the same name exists that this VM does not own; leaving it alone');
    }
    await this.writeStatus(vm, input, startFailure, status.ranOnce ?? false);
  }

  /** The node has no room for the VM's VMI (or its MAC is taken): one Warning per distinct refusal, and a retry later. */
  private async refused(vm: StoredVm, e: VmletError): Promise<void> {
    const k = key(vm.metadata.namespace, vm.metadata.name);
    this.later(vm.metadata.namespace, vm.metadata.name, this.now() + ADMISSION_RETRY_MS);
    if (this.refusals.get(k) === e.message) return;
    this.refusals.set(k, e.message);
    this.log.warn({ vm: k, code: e.code }, e.message);
    await this.source.recordEvent({
      involvedObject: { kind: 'VirtualMachine', namespace: vm.metadata.namespace, name: vm.metadata.name, uid: vm.metadata.uid },
      type: 'Warning',
      reason: 'FailedCreate',
      message: `${e.message} (${e.code})`,
    });
  }

  /** For a Manual VM's start/restart: creates its VMI now. */
  async createFor(ns: string, name: string): Promise<void> {
    const vm = await this.getVm(ns, name);
    if (!vm) throw new VmletError('NOT_FOUND', `virtualmachines "${name}" not found in namespace ${ns}`);
    await this.createVmi(vm);
  }

  private async getVm(ns: string, name: string): Promise<StoredVm | undefined> {
    const o = await this.source.get('VirtualMachine', ns, name);
    return o && asVm(o);
  }

  private async createVmi(vm: VirtualMachine): Promise<void> {
    const tmpl = vm.spec.template;
    const meta: {
      name: string;
      namespace: string;
      labels?: Record<string, string>;
      annotations?: Record<string, string>;
      finalizers: string[];
      ownerReferences: unknown[];
    } = {
      name: vm.metadata.name,
      namespace: vm.metadata.namespace,
      finalizers: [VMI_FINALIZER],
      ownerReferences: [
        { apiVersion: this.apiVersion, kind: 'VirtualMachine', name: vm.metadata.name, uid: vm.metadata.uid, controller: true, blockOwnerDeletion: true },
      ],
    };
    if (tmpl.metadata?.labels) meta.labels = tmpl.metadata.labels;
    if (tmpl.metadata?.annotations) meta.annotations = tmpl.metadata.annotations;
    const create = (): Promise<unknown> =>
      this.source.create({ apiVersion: this.apiVersion, kind: 'VirtualMachineInstance', metadata: meta, spec: tmpl.spec, status: this.initialVmiStatus() });
    await (this.opts.admit ? this.opts.admit({ namespace: vm.metadata.namespace, name: vm.metadata.name, spec: tmpl.spec }, create) : create());
    await this.source.recordEvent({
      involvedObject: { kind: 'VirtualMachine', namespace: vm.metadata.namespace, name: vm.metadata.name, uid: vm.metadata.uid! },
      type: 'Normal',
      reason: 'SuccessfulCreate',
      message: `created VirtualMachineInstance ${vm.metadata.name}`,
    });
  }

  private async writeStatus(vm: VirtualMachine, input: DecideInput, startFailure: StartFailure | undefined, ranOnce: boolean): Promise<void> {
    const printable = printableStatus(input);
    await this.source.updateStatus<VmStatus>('VirtualMachine', vm.metadata.namespace, vm.metadata.name, (s) => {
      const out: VmStatus = {
        ...s,
        printableStatus: printable,
        ready: printable === 'Running',
        created: input.vmi !== undefined,
        runStrategy: input.runStrategy,
        ranOnce,
      };
      if (startFailure) out.startFailure = startFailure;
      else delete out.startFailure;
      return out;
    });
  }
}

export function vmiView(vmi: VirtualMachineInstance): VmiView {
  const phase = vmi.status?.phase;
  const running = vmi.status?.phaseTransitionTimestamps?.filter((p) => p.phase === 'Running').at(-1);
  const view: VmiView = {
    phase: phase === 'Running' || phase === 'Succeeded' || phase === 'Failed' || phase === 'Scheduled' ? phase : 'Pending',
    deleting: Boolean(vmi.metadata.deletionTimestamp),
    paused: vmi.status?.conditions?.some((c) => c.type === 'Paused' && c.status === 'True') ?? false,
  };
  if (running) view.runningSince = Date.parse(running.phaseTransitionTimestamp);
  if (vmi.status?.conditions?.some((c) => c.type === 'ImageAvailable' && c.status === 'False')) view.imageMissing = true;
  const sync = vmi.status?.conditions?.find((c) => c.type === 'Synchronized' && c.status === 'False');
  if (sync?.reason === 'FailedPvcNotFound') view.claimWait = 'missing';
  else if (sync?.reason === 'PVCNotReady') view.claimWait = 'unbound';
  return view;
}
