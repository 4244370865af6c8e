// `vmlet uninstall`: refuses while VMs run unless told to stop them, then stops and removes the service, the wrapper, every installed version and the host networking the daemon made; config and state go only with --purge.
import fs from 'node:fs';
import { ApiClient, paths } from '../cli/client.js';
import { loadConfig, type DaemonConfig } from '../daemon/config.js';
import { VmletError } from '../errors.js';
import { removeHostLeftovers } from './host-cleanup.js';
import type { HostOps } from './host-ops.js';
import { systemctl, WRAPPER_MARK } from './install.js';
import { hostPath, type InstallLayout } from './layout.js';
import { liveVmUids } from './live-vms.js';
import { readCreatedUser, readManifest } from './manifest.js';

export interface UninstallOptions {
  layout: InstallLayout;
  stopVms: boolean;
  purge: boolean;
  ops: HostOps;
  log: (line: string) => void;
  /** how long stopping the VMs may take (default: the longest grace period among the VMIs, plus a minute) */
  stopTimeoutMs?: number;
  procRoot?: string;
}

export interface UninstallResult {
  stoppedVms: number;
  removed: string[];
  left: string[];
}

export async function uninstall(o: UninstallOptions): Promise<UninstallResult> {
  const { layout, ops, log } = o;
  const manifest = readManifest(layout.manifest);
  // After an uninstall that kept them, --purge alone removes config and state.
  if (manifest === undefined && !(o.purge && fs.existsSync(layout.configDir))) {
    throw new VmletError('INSTALL_NOT_FOUND', `nothing to uninstall: ${hostPath(layout, layout.manifest)} is missing`);
  }
  // The installed daemon's view of the host (its run folder, socket, bridge, cgroups); the tree only sets defaults nobody reads here.
  const config = loadConfig(layout.prefix, fs.existsSync(layout.configFile) ? { config: layout.configFile } : {});
  const live = await liveVmUids(config.runDir, o.procRoot);
  let stoppedVms = 0;
  if (live.length > 0) {
    if (!o.stopVms) {
      const names = await vmiNames(config, live);
      throw new VmletError(
        'INSTALL_VMS_RUNNING',
        `${live.length} VM(s) still run: ${names.join(', ')}; stop them first, or run "vmlet uninstall --stop-vms" to stop them (VMs are halted, VMIs deleted)`,
        { details: { vmis: names } },
      );
    }
    stoppedVms = await stopAllVms(config, o, live.length);
  }
  const removed: string[] = [];
  const left: string[] = [];
  if (fs.existsSync(layout.unitFile)) {
    log('stopping and disabling vmlet.service');
    await systemctl(ops, ['disable', '--now', '--quiet', 'vmlet.service']);
    fs.rmSync(layout.unitFile);
    removed.push(hostPath(layout, layout.unitFile));
    await systemctl(ops, ['daemon-reload']);
    await ops.run('systemctl', ['reset-failed', 'vmlet.service']);
  }
  if (fs.existsSync(layout.wrapper)) {
    if (fs.readFileSync(layout.wrapper, 'utf8').includes(WRAPPER_MARK)) {
      fs.rmSync(layout.wrapper);
      removed.push(hostPath(layout, layout.wrapper));
    } else {
      left.push(`${hostPath(layout, layout.wrapper)}: not the wrapper vmlet install wrote`);
    }
  }
  const cleanup = await removeHostLeftovers(config, ops);
  removed.push(...cleanup.removed);
  left.push(...cleanup.left);
  if (fs.existsSync(layout.prefix)) {
    fs.rmSync(layout.prefix, { recursive: true, force: true });
    removed.push(hostPath(layout, layout.prefix));
  }
  if (o.purge) {
    const createdUser = readCreatedUser(layout);
    for (const dir of [layout.configDir, config.stateDir, config.runDir]) {
      if (!fs.existsSync(dir)) continue;
      fs.rmSync(dir, { recursive: true, force: true });
      removed.push(dir);
    }
    if (createdUser !== undefined) {
      const r = await ops.run('userdel', [createdUser]);
      (r.code === 0 ? removed : left).push(`user ${createdUser}${r.code === 0 ? '' : `: ${r.stderr.trim()}`}`);
    }
  } else {
    log(`kept ${hostPath(layout, layout.configDir)} and ${config.stateDir} (--purge removes them)`);
  }
  for (const r of removed) log(`removed ${r}`);
  for (const l of left) log(`left ${l}`);
  return { stoppedVms, removed, left };
}

interface Listed {
  items?: Array<{
    metadata?: { name?: string; namespace?: string; uid?: string };
    spec?: { runStrategy?: string; running?: boolean; terminationGracePeriodSeconds?: number };
  }>;
}

/** For a VMI that shows none (the daemon stores each with its default filled in). */
const DEFAULT_GRACE_SECONDS = 180;

/** How long stopping these VMIs may take: a guest that ignores ACPI is killed only after its grace period. */
export function stopWaitMs(vmis: NonNullable<Listed['items']>): number {
  const grace = Math.max(0, ...vmis.map((v) => v.spec?.terminationGracePeriodSeconds ?? DEFAULT_GRACE_SECONDS));
  return (grace + 60) * 1000;
}

async function list(client: ApiClient, plural: 'virtualmachines' | 'virtualmachineinstances'): Promise<NonNullable<Listed['items']>> {
  return ((await client.call('GET', paths.list(plural, undefined))) as Listed).items ?? [];
}

/** `namespace/name` of the VMIs with these uids, as far as the daemon answers (else the uids). */
async function vmiNames(config: DaemonConfig, uids: string[]): Promise<string[]> {
  try {
    const items = await list(new ApiClient({ socketPath: config.socket }), 'virtualmachineinstances');
    return uids.map((u) => {
      const m = items.find((i) => i.metadata?.uid === u)?.metadata;
      return m ? `${m.namespace}/${m.name}` : u;
    });
  } catch {
    return uids;
  }
}

/** Halts every VM and deletes every VMI through the daemon, then waits until no launcher is left. */
async function stopAllVms(config: DaemonConfig, o: UninstallOptions, count: number): Promise<number> {
  const client = new ApiClient({ socketPath: config.socket });
  try {
    await client.call('GET', '/version');
  } catch (cause) {
    throw new VmletError(
      'INSTALL_DAEMON_DOWN',
      `${count} VM(s) still run but the daemon does not answer on ${config.socket}; start it ("systemctl start vmlet") so they can be stopped cleanly`,
      { cause },
    );
  }
  o.log(`stopping ${count} VM(s) through the daemon`);
  for (const vm of await list(client, 'virtualmachines')) {
    const { namespace, name } = vm.metadata ?? {};
    if (namespace === undefined || name === undefined || vm.spec?.runStrategy === 'Halted' || vm.spec?.running === false) continue;
    await client.call('PUT', paths.subresource('virtualmachines', namespace, name, 'stop')).catch(() => undefined);
  }
  const vmis = await list(client, 'virtualmachineinstances');
  for (const vmi of vmis) {
    const { namespace, name } = vmi.metadata ?? {};
    if (namespace !== undefined && name !== undefined)
      await client.call('DELETE', paths.object('virtualmachineinstances', namespace, name)).catch(() => undefined);
  }
  const deadline = Date.now() + (o.stopTimeoutMs ?? stopWaitMs(vmis));
  for (;;) {
    const live = await liveVmUids(config.runDir, o.procRoot);
    if (live.length === 0) return count;
    if (Date.now() > deadline) {
      throw new VmletError('INSTALL_VMS_RUNNING', `${live.length} VM(s) did not stop in time (${live.join(', ')}); nothing was removed`, {
        details: { vmis: live },
      });
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}
