// The API's backend in standalone mode: validation, the local store, and the supervisors of this node.
import { isDeepStrictEqual } from 'node:util';
import type { Logger } from 'pino';
import type { VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceStatus } from '../api/types.js';
import { ValidationError, validateVM, validateVMI } from '../api/validate.js';
import { asVm, asVmi, isStoredVmi, VMI_FINALIZER, type VmController } from '../controller/vm-controller.js';
import { VmletError } from '../errors.js';
import type { KubeObject as StoredObject, Source } from '../source/source.js';
import type { Backend, ConsoleAttachment, Kind, KubeObject, ObjectRef, VmAction, VmiAction, WatchEvent } from './backend.js';
import type { NodeReconciler } from './node-reconciler.js';
import type { Supervisor } from './supervisor.js';
import type { VmNetwork } from './vm-network.js';
import { checkPassthrough, markedPassthrough } from './qmp-passthrough.js';
import { refusedHostPaths } from './host-paths.js';
import type { NodeAdmission } from './node-admission.js';

export interface LocalBackendOptions {
  /** Where objects live (the local store in standalone mode). */
  store: Source;
  node: NodeReconciler;
  controller: VmController;
  /** false: start/stop/restart are refused (a node daemon in cluster mode: VMs are the API server's). */
  vmActions?: boolean;
  /** Admission of interfaces and networks (absent: any are refused by nothing here). */
  network?: VmNetwork;
  /** Standalone: folders below which hostDisk and kernelBoot paths may lie (config `hostPaths.allow`); absent: not checked here (a cluster's controller does). */
  hostPathsAllow?: readonly string[];
  /** QMP commands passed through besides queries and SAFE_QMP_COMMANDS (config `qmpPassthrough.allow`). */
  qmpAllow?: readonly string[];
  /** Standalone: node limits and MACs in use, checked for every new VMI (absent: not checked here). */
  admission?: NodeAdmission;
  logger?: Logger;
}

/** The run strategies whose VM gets a VMI as soon as it is stored. */
const STARTS_AT_ONCE: ReadonlySet<string> = new Set(['Always', 'RerunOnFailure', 'Once']);

const plural: Record<Kind, string> = { VirtualMachine: 'virtualmachines', VirtualMachineInstance: 'virtualmachineinstances' };

function notFound(ref: ObjectRef): VmletError {
  return new VmletError('NOT_FOUND', `${plural[ref.kind]} "${ref.name}" not found in namespace ${ref.namespace}`);
}

/** The body's kind and namespace must agree with the URL it was sent to. */
function checkTarget(kind: Kind, namespace: string, body: unknown): void {
  if (typeof body !== 'object' || body === null) throw new VmletError('BAD_REQUEST', 'the request body must be an object');
  const b = body as { kind?: unknown; metadata?: { namespace?: unknown } };
  if (b.kind !== kind) throw new VmletError('UNSUPPORTED_KIND', `this path takes kind ${kind}, not ${String(b.kind)}`);
  const ns = b.metadata?.namespace;
  if (ns !== undefined && ns !== namespace) {
    throw new VmletError('BAD_REQUEST', `metadata.namespace "${String(ns)}" does not match the namespace "${namespace}" of the request path`);
  }
}

function withNamespace(body: unknown, namespace: string): unknown {
  const b = body as { metadata?: Record<string, unknown> };
  return { ...b, metadata: { ...b.metadata, namespace } };
}

export class LocalBackend implements Backend {
  constructor(private readonly opts: LocalBackendOptions) {}

  private get store(): Source {
    return this.opts.store;
  }

  async list(kind: Kind, namespace?: string): Promise<KubeObject[]> {
    return this.store.list(kind, namespace);
  }

  /** A VMI comes with live statistics of its cgroup in status.vmlet.stats (read now; nothing polls). */
  async get(ref: ObjectRef): Promise<KubeObject> {
    const o = await this.store.get(ref.kind, ref.namespace, ref.name);
    if (!o) throw notFound(ref);
    if (ref.kind === 'VirtualMachineInstance' && o.metadata.uid) {
      const stats = await this.opts.node.vmStats(o.metadata.uid).catch(() => undefined);
      const status = isStoredVmi(o) ? o.status : undefined;
      if (stats) return { ...o, status: { ...status, vmlet: { ...status?.vmlet, stats } } };
    }
    return o;
  }

  /** Schema and semantic checks, then the node's own: what the network sandbox would refuse is refused before anything is stored. */
  private validate(kind: Kind, body: unknown, namespace: string): VirtualMachine | VirtualMachineInstance {
    const obj = kind === 'VirtualMachine' ? validateVM(withNamespace(body, namespace)) : validateVMI(withNamespace(body, namespace));
    const volumes = (obj.kind === 'VirtualMachine' ? obj.spec.template.spec : obj.spec).volumes ?? [];
    const at = obj.kind === 'VirtualMachine' ? 'spec.template.spec.volumes' : 'spec.volumes';
    const claims = volumes.flatMap((v, i) =>
      v.persistentVolumeClaim !== undefined || v.ephemeral !== undefined
        ? [
            {
              field: `${at}[${i}]`,
              code: 'VOLUME_NEEDS_CLUSTER' as const,
              message: `volume "${v.name}": claims are Kubernetes objects; a standalone daemon uses containerDisk or hostDisk`,
            },
          ]
        : [],
    );
    const allow = this.opts.hostPathsAllow;
    const spec = obj.kind === 'VirtualMachine' ? obj.spec.template.spec : obj.spec;
    const specAt = obj.kind === 'VirtualMachine' ? 'spec.template.spec' : 'spec';
    const paths =
      allow === undefined ? [] : refusedHostPaths(spec, allow).map((r) => ({ field: `${specAt}.${r.field}`, code: r.error.code, message: r.error.message }));
    if (claims.length > 0 || paths.length > 0) throw new ValidationError(`${kind} "${namespace}/${obj.metadata.name}"`, [...claims, ...paths]);
    const network = this.opts.network;
    if (network) {
      const spec = obj.kind === 'VirtualMachine' ? obj.spec.template.spec : obj.spec;
      const at = obj.kind === 'VirtualMachine' ? 'spec.template.spec' : 'spec';
      try {
        network.check(spec);
      } catch (e) {
        if (!(e instanceof VmletError)) throw e;
        const field =
          e.code === 'NET_NETWORK_WITHOUT_INTERFACE' || e.code === 'NET_UNSUPPORTED_NETWORK' || e.code === 'NET_INVALID_SUBNET' || e.code === 'NET_SUBNET_CLASH'
            ? `${at}.networks`
            : `${at}.domain.devices.interfaces`;
        throw new ValidationError(`${kind} "${namespace}/${obj.metadata.name}"`, [{ field, code: e.code, message: e.message }], { cause: e });
      }
    }
    return obj;
  }

  async create(kind: Kind, namespace: string, body: unknown): Promise<KubeObject> {
    checkTarget(kind, namespace, body);
    const obj = this.validate(kind, body, namespace);
    const meta = {
      name: obj.metadata.name,
      namespace,
      ...(obj.metadata.labels ? { labels: obj.metadata.labels } : {}),
      ...(obj.metadata.annotations ? { annotations: obj.metadata.annotations } : {}),
    };
    const admission = this.opts.admission;
    try {
      let created: StoredObject;
      if (obj.kind === 'VirtualMachine') {
        // Refused here rather than left for the controller's FailedCreate: nothing is stored.
        if (admission && STARTS_AT_ONCE.has(obj.spec.runStrategy)) await admission.check({ namespace, name: meta.name, spec: obj.spec.template.spec });
        created = await this.store.create({ apiVersion: obj.apiVersion, kind, metadata: meta, spec: obj.spec, status: {} });
      } else {
        const vmi = obj;
        const store = (): Promise<StoredObject> =>
          this.store.create({
            apiVersion: vmi.apiVersion,
            kind,
            metadata: { ...meta, finalizers: [VMI_FINALIZER] },
            spec: vmi.spec,
            status: this.opts.controller.initialVmiStatus(),
          });
        created = admission ? await admission.admit({ namespace, name: meta.name, spec: vmi.spec }, store) : await store();
      }
      void this.store
        .recordEvent({
          involvedObject: { kind, namespace, name: created.metadata.name, uid: created.metadata.uid },
          type: 'Normal',
          reason: 'Created',
          message: `${kind} created`,
        })
        .catch(() => undefined);
      return created;
    } catch (e) {
      if (e instanceof VmletError && e.code === 'STORE_ALREADY_EXISTS') {
        throw new VmletError('ALREADY_EXISTS', `${plural[kind]} "${obj.metadata.name}" already exists in namespace ${namespace}`, { cause: e });
      }
      throw e;
    }
  }

  async replace(ref: ObjectRef, body: unknown): Promise<KubeObject> {
    checkTarget(ref.kind, ref.namespace, body);
    const cur = await this.store.get(ref.kind, ref.namespace, ref.name);
    if (!cur) throw notFound(ref);
    const obj = this.validate(ref.kind, body, ref.namespace);
    if (obj.metadata.name !== ref.name)
      throw new VmletError('BAD_REQUEST', `metadata.name "${obj.metadata.name}" does not match "${ref.name}" of the request path`);
    // A VMI's spec is fixed once it exists, as in KubeVirt: change the VM, or delete and re-create.
    if (ref.kind === 'VirtualMachineInstance' && !isDeepStrictEqual(obj.spec, cur.spec)) {
      throw new VmletError(
        'VMI_SPEC_IMMUTABLE',
        `the spec of VirtualMachineInstance "${ref.name}" cannot change; delete it and create it again, or edit its VirtualMachine`,
      );
    }
    const next = { ...cur, spec: obj.spec, metadata: { ...cur.metadata } };
    if (obj.metadata.labels) next.metadata.labels = obj.metadata.labels;
    else delete next.metadata.labels;
    if (obj.metadata.annotations) next.metadata.annotations = obj.metadata.annotations;
    else delete next.metadata.annotations;
    const rv = (body as { metadata?: { resourceVersion?: unknown } }).metadata?.resourceVersion;
    const updated = await this.store.update(next, typeof rv === 'string' ? { expectedResourceVersion: rv } : {});
    if (ref.kind === 'VirtualMachine') this.opts.controller.enqueue(ref.namespace, ref.name);
    return updated;
  }

  async delete(ref: ObjectRef): Promise<KubeObject> {
    try {
      return await this.store.delete(ref.kind, ref.namespace, ref.name);
    } catch (e) {
      if (e instanceof VmletError && e.code === 'STORE_NOT_FOUND') throw notFound(ref);
      throw e;
    }
  }

  private async supervisorOf(ref: ObjectRef): Promise<Supervisor> {
    const vmi = await this.get({ ...ref, kind: 'VirtualMachineInstance' });
    const sup = this.opts.node.supervisors.get(vmi.metadata.uid ?? '');
    if (!sup) throw new VmletError('VMI_NOT_RUNNING', `VirtualMachineInstance "${ref.name}" is not running on this node`);
    return sup;
  }

  async vmiAction(ref: ObjectRef, action: VmiAction): Promise<void> {
    const sup = await this.supervisorOf(ref);
    switch (action) {
      case 'pause':
        return sup.pause();
      case 'unpause':
        return sup.unpause();
      case 'reset':
        return sup.reset();
      case 'softreboot':
        return sup.softreboot();
    }
  }

  /**
   * start/stop/restart as in KubeVirt: on Always/Halted/RerunOnFailure they flip runStrategy;
   * on Manual and Once they act on the VMI directly.
   */
  async vmAction(ref: ObjectRef, action: VmAction): Promise<void> {
    if (this.opts.vmActions === false) {
      throw new VmletError(
        'API_SERVER_VERB',
        `${action} of VirtualMachine ${ref.namespace}/${ref.name} changes the VM on the API server, which this node daemon may not do: run "vmlet --kubeconfig FILE -n ${ref.namespace} ${action} ${ref.name}"`,
      );
    }
    const vmObj = await this.store.get('VirtualMachine', ref.namespace, ref.name);
    if (!vmObj) throw notFound({ ...ref, kind: 'VirtualMachine' });
    const vm = asVm(vmObj);
    const vmiObj = await this.store.get('VirtualMachineInstance', ref.namespace, ref.name);
    const vmi = vmiObj && asVmi(vmiObj);
    const strategy = vm.spec.runStrategy;
    const setStrategy = async (runStrategy: VirtualMachine['spec']['runStrategy']): Promise<void> => {
      await this.store.update({ ...vm, spec: { ...vm.spec, runStrategy } });
    };
    const deleteVmi = async (): Promise<void> => {
      if (vmi) await this.store.delete('VirtualMachineInstance', ref.namespace, ref.name, { expectedUid: vmi.metadata.uid! });
    };
    switch (action) {
      case 'start':
        if (vmi && !['Succeeded', 'Failed'].includes(vmi.status?.phase ?? ''))
          throw new VmletError('VM_ALREADY_RUNNING', `VirtualMachine "${ref.name}" is already running`);
        await this.opts.admission?.check({ namespace: ref.namespace, name: ref.name, spec: vm.spec.template.spec });
        if (strategy === 'Halted') await setStrategy('Always');
        else if (strategy === 'Manual' || strategy === 'Once' || strategy === 'RerunOnFailure') {
          await deleteVmi();
          await this.waitGone(ref);
          if (strategy === 'Manual') await this.opts.controller.createFor(ref.namespace, ref.name);
          else await this.store.updateStatus<Record<string, unknown>>('VirtualMachine', ref.namespace, ref.name, (s) => ({ ...s, ranOnce: false }));
        }
        break;
      case 'stop':
        if (strategy === 'Halted' && !vmi) throw new VmletError('VM_NOT_RUNNING', `VirtualMachine "${ref.name}" is not running`);
        if (strategy === 'Always' || strategy === 'RerunOnFailure') await setStrategy('Halted');
        else await deleteVmi();
        break;
      case 'restart':
        if (!vmi) throw new VmletError('VM_NOT_RUNNING', `VirtualMachine "${ref.name}" is not running; use start`);
        await deleteVmi();
        if (strategy === 'Manual') {
          await this.waitGone(ref);
          await this.opts.controller.createFor(ref.namespace, ref.name);
        }
        break;
    }
    this.opts.controller.enqueue(ref.namespace, ref.name);
  }

  private async waitGone(ref: ObjectRef, timeoutMs = 120_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (await this.store.get('VirtualMachineInstance', ref.namespace, ref.name)) {
      if (Date.now() > until) throw new VmletError('TIMEOUT', `the old VirtualMachineInstance "${ref.name}" did not go away in time`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async qmp(ref: ObjectRef, command: unknown): Promise<unknown> {
    const sup = await this.supervisorOf(ref);
    const qmp = sup.qmpClient();
    if (typeof command !== 'object' || command === null || typeof (command as { execute?: unknown }).execute !== 'string') {
      throw new VmletError('BAD_REQUEST', 'a QMP command is an object like {"execute": "query-status", "arguments": {...}}');
    }
    const c = command as { execute: string; arguments?: unknown };
    if (c.execute === 'qmp_capabilities') throw new VmletError('BAD_REQUEST', 'the daemon already negotiated capabilities on this connection');
    checkPassthrough(c.execute, this.opts.qmpAllow ?? []);
    if (c.arguments !== undefined && (typeof c.arguments !== 'object' || c.arguments === null || Array.isArray(c.arguments))) {
      throw new VmletError('BAD_REQUEST', 'QMP "arguments" must be an object');
    }
    this.opts.logger?.info({ vmi: { namespace: ref.namespace, name: ref.name }, command: c.execute }, 'QMP passthrough');
    // Marked before it runs: a command that hangs or kills QEMU has been sent all the same.
    await this.store
      .updateStatus<VirtualMachineInstanceStatus>('VirtualMachineInstance', ref.namespace, ref.name, (s) =>
        markedPassthrough(s ?? {}, c.execute, new Date().toISOString()),
      )
      .catch((e: unknown) => this.opts.logger?.warn({ err: e }, 'could not mark the VMI after a QMP passthrough'));
    const ret = await qmp.executeRaw(c.execute, c.arguments as Record<string, unknown> | undefined);
    return { return: ret };
  }

  async console(ref: ObjectRef, opts: { write: boolean }): Promise<ConsoleAttachment> {
    const sup = await this.supervisorOf(ref);
    const serial = sup.serialConsole();
    if (!serial)
      throw new VmletError(
        'CONSOLE_UNAVAILABLE',
        `VirtualMachineInstance "${ref.name}" has no serial console (autoattachSerialConsole is false, or it is not running)`,
      );
    return serial.attach(opts);
  }

  async *watch(kind: Kind | 'Event', namespace: string | undefined, name: string | undefined, signal: AbortSignal): AsyncIterable<WatchEvent> {
    const w = this.store.watch(kind, namespace, name, { sendInitialEvents: true });
    const onAbort = (): void => w.close();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      for await (const ev of w) yield { type: ev.type, object: ev.object };
    } finally {
      signal.removeEventListener('abort', onAbort);
      w.close();
    }
  }

  async events(namespace: string | undefined, name: string | undefined): Promise<KubeObject[]> {
    return this.store.listEvents(namespace, name);
  }
}
