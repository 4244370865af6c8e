// The verbs that act differently against the Kubernetes API server: start/stop/restart as API writes, node-local verbs refused, version.
import YAML from 'yaml';
import { API_VERSION, RUN_STRATEGIES, type RunStrategy } from '../api/types.js';
import { VmletError } from '../errors.js';
import { vmletVersion } from '../version.js';
import { ApiError, paths } from './client.js';
import { isConflict, usageError, type Ctx } from './commands.js';

/** Where a node's daemon listens (the DaemonSet's hostPath), for the hint of node-local verbs. */
const NODE_SOCKET = '/run/vmlet/vmlet.sock';
/** How long start/restart of a Manual (or Once) VM waits for the old VMI to go (its QEMU to stop, its finalizer to be released). */
const GONE_TIMEOUT_MS = 120_000;

type Obj = Record<string, unknown>;
const rec = (v: unknown): Obj => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Obj) : {});
const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

const isNotFound = (e: unknown): boolean => e instanceof ApiError && e.httpStatus === 404;

async function getOrUndefined(ctx: Ctx, p: string): Promise<Obj | undefined> {
  try {
    return rec(await ctx.client.call('GET', p));
  } catch (e) {
    if (isNotFound(e)) return undefined;
    throw e;
  }
}

/** The strategy the controller acts on: `runStrategy`, else KubeVirt's `running`, else Halted. */
function strategyOf(vm: Obj): RunStrategy {
  const spec = rec(vm['spec']);
  const s = RUN_STRATEGIES.find((r) => r === spec['runStrategy']);
  if (s !== undefined) return s;
  return spec['running'] === true ? 'Always' : 'Halted';
}

export interface KubeVmActionOptions {
  goneTimeoutMs?: number;
  pollMs?: number;
}

/**
 * start/stop/restart as the standalone daemon does them (local-backend vmAction), as API writes the controller acts on:
 * runStrategy flips for Always/Halted/RerunOnFailure; Manual and Once act on the VMI (deleted; a Manual VM's new one made here).
 */
export async function vmAction(ctx: Ctx, action: 'start' | 'stop' | 'restart', args: string[], opts: KubeVmActionOptions = {}): Promise<number> {
  const [name, ...extra] = args;
  if (name === undefined || extra.length > 0) throw usageError(`usage: vmlet ${action} NAME`);
  // A write conditioned on what was read conflicts when the controller wrote in between (status too): decide again on fresh reads.
  for (let attempt = 1; ; attempt++) {
    try {
      await actOnce(ctx, action, name, opts);
      break;
    } catch (e) {
      if (!isConflict(e) || attempt >= 5) throw e;
    }
  }
  ctx.io.stdout.write(`VM ${name} was scheduled to ${action}\n`);
  return 0;
}

async function actOnce(ctx: Ctx, action: 'start' | 'stop' | 'restart', name: string, opts: KubeVmActionOptions): Promise<void> {
  const vmPath = paths.object('virtualmachines', ctx.namespace, name);
  const vmiPath = paths.object('virtualmachineinstances', ctx.namespace, name);
  const vm = rec(await ctx.client.call('GET', vmPath));
  const vmi = await getOrUndefined(ctx, vmiPath);
  const strategy = strategyOf(vm);
  const setStrategy = async (runStrategy: RunStrategy): Promise<void> => {
    // The resourceVersion read makes a concurrent change a Conflict; `running` goes, as both may not be set.
    const patch = { metadata: { resourceVersion: rec(vm['metadata'])['resourceVersion'] }, spec: { runStrategy, running: null } };
    await ctx.client.call('PATCH', vmPath, { body: JSON.stringify(patch), contentType: 'application/merge-patch+json' });
  };
  const deleteVmi = async (): Promise<void> => {
    if (!vmi) return;
    const body = { apiVersion: 'v1', kind: 'DeleteOptions', preconditions: { uid: rec(vmi['metadata'])['uid'] } };
    try {
      await ctx.client.call('DELETE', vmiPath, { body });
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
  };
  const gone = (): Promise<void> => waitGone(ctx, vmiPath, name, opts);
  const finished = ['Succeeded', 'Failed'].includes(str(rec(vmi?.['status'])['phase']) ?? '');
  switch (action) {
    case 'start':
      if (vmi && !finished) throw new VmletError('VM_ALREADY_RUNNING', `VirtualMachine "${name}" is already running`);
      if (strategy === 'Halted') await setStrategy('Always');
      else if (strategy === 'Manual' || strategy === 'Once' || strategy === 'RerunOnFailure') {
        await deleteVmi();
        await gone();
        if (strategy === 'Manual') await createVmi(ctx, vm);
        else await resetRanOnce(ctx, vmPath);
      }
      break;
    case 'stop':
      if (strategy === 'Halted' && !vmi) throw new VmletError('VM_NOT_RUNNING', `VirtualMachine "${name}" is not running`);
      if (strategy === 'Always' || strategy === 'RerunOnFailure') await setStrategy('Halted');
      else await deleteVmi();
      break;
    case 'restart':
      if (!vmi) throw new VmletError('VM_NOT_RUNNING', `VirtualMachine "${name}" is not running; use start`);
      await deleteVmi();
      if (strategy === 'Manual') {
        await gone();
        await createVmi(ctx, vm);
      }
      break;
  }
}

/** A Once/RerunOnFailure VM runs again once `status.ranOnce` is false (the status subresource: spec writes do not touch it). */
async function resetRanOnce(ctx: Ctx, vmPath: string): Promise<void> {
  await ctx.client.call('PATCH', `${vmPath}/status`, { body: JSON.stringify({ status: { ranOnce: false } }), contentType: 'application/merge-patch+json' });
}

/** A Manual VM's VMI, as the controller makes it (owned by the VM); the launcher controller adds its finalizer before making the pod. */
async function createVmi(ctx: Ctx, vm: Obj): Promise<void> {
  const md = rec(vm['metadata']);
  const tmpl = rec(rec(vm['spec'])['template']);
  const tmd = rec(tmpl['metadata']);
  const apiVersion = str(vm['apiVersion']) ?? API_VERSION;
  const metadata: Obj = {
    name: md['name'],
    namespace: md['namespace'],
    ownerReferences: [{ apiVersion, kind: 'VirtualMachine', name: md['name'], uid: md['uid'], controller: true, blockOwnerDeletion: true }],
  };
  if (tmd['labels'] !== undefined) metadata['labels'] = tmd['labels'];
  if (tmd['annotations'] !== undefined) metadata['annotations'] = tmd['annotations'];
  const body = { apiVersion, kind: 'VirtualMachineInstance', metadata, spec: tmpl['spec'] };
  await ctx.client.call('POST', paths.list('virtualmachineinstances', ctx.namespace), { body });
}

/** Until the VMI is gone (GET answers 404); TIMEOUT after opts.goneTimeoutMs, naming what holds it. */
async function waitGone(ctx: Ctx, vmiPath: string, name: string, opts: KubeVmActionOptions): Promise<void> {
  const until = Date.now() + (opts.goneTimeoutMs ?? GONE_TIMEOUT_MS);
  for (;;) {
    const vmi = await getOrUndefined(ctx, vmiPath);
    if (!vmi) return;
    if (Date.now() > until) {
      const finalizers = rec(vmi['metadata'])['finalizers'];
      const held = Array.isArray(finalizers) && finalizers.length > 0 ? ` (finalizers ${finalizers.join(', ')}: is the vmlet controller running?)` : '';
      throw new VmletError('TIMEOUT', `the old VirtualMachineInstance "${name}" did not go away in time${held}`);
    }
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 500));
  }
}

/** pause/unpause/softreboot/reset/console/qmp talk to the QEMU of one node: refused, saying where to run them. */
export async function nodeLocal(ctx: Ctx, verb: string, args: string[]): Promise<number> {
  const [name] = args;
  if (name === undefined) throw usageError(`usage: vmlet ${verb} NAME${verb === 'qmp' ? " 'JSON'" : ''}`);
  const what = `"vmlet ${verb}" talks to the QEMU of VirtualMachineInstance ${ctx.namespace}/${name} through the daemon of its node, which the API server does not reach`;
  const vmi = await getOrUndefined(ctx, paths.object('virtualmachineinstances', ctx.namespace, name));
  const command = `vmlet --socket ${NODE_SOCKET} -n ${ctx.namespace} ${verb} ${name}${verb === 'qmp' ? " 'JSON'" : ''}`;
  if (!vmi) throw new VmletError('NODE_LOCAL_VERB', `${what}; that VMI does not exist`);
  const node = str(rec(vmi['status'])['nodeName']);
  if (node === undefined)
    throw new VmletError('NODE_LOCAL_VERB', `${what}; it has no node yet (status.nodeName is empty): once it has one, run there: ${command}`);
  throw new VmletError('NODE_LOCAL_VERB', `${what}: run it on node ${node}: ${command}`);
}

/** `vmlet version` against a cluster: the CLI's version, then the API server's (`GET /version`). */
export async function version(ctx: Ctx, args: string[], opts: { output?: string }, server: string): Promise<number> {
  if (args.length > 0) throw usageError('version takes no arguments');
  if (opts.output !== undefined && !['json', 'yaml'].includes(opts.output)) throw usageError(`unknown output format "${opts.output}" (use json or yaml)`);
  const client = vmletVersion();
  let kube: Obj | undefined;
  let failure: unknown;
  try {
    kube = rec(await ctx.client.call('GET', '/version'));
  } catch (e) {
    failure = e;
  }
  const out = { client: { vmlet: client }, ...(kube === undefined ? {} : { server: { url: server, kubernetes: kube } }) };
  if (opts.output === 'json') ctx.io.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  else if (opts.output === 'yaml') ctx.io.stdout.write(YAML.stringify(out));
  else {
    ctx.io.stdout.write(`Client:  vmlet ${client}\n`);
    if (kube !== undefined) ctx.io.stdout.write(`Server:  Kubernetes ${str(kube['gitVersion']) ?? '<unknown>'} at ${server}\n`);
  }
  if (failure === undefined) return 0;
  const why = (failure instanceof Error ? failure.message : String(failure)).replace(/\s*\n\s*/g, ' ');
  const code = failure instanceof ApiError ? failure.reason : failure instanceof VmletError ? failure.code : 'INTERNAL';
  ctx.io.stderr.write(`error: the API server did not report its version: ${why} (${code})\n`);
  return 1;
}
