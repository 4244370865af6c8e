// `vmlet install`: lays a built tree out as /opt/vmlet/<version> beside the ones before it, switches the `current` link, writes the unit, the wrapper and (only when absent) the config, and starts or restarts the service.
import fs from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { VmletError } from '../errors.js';
import { pidAlive } from '../sys/spawn.js';
import type { HostOps } from './host-ops.js';
import { hostPath, type InstallLayout } from './layout.js';
import { readManifest, recordCreatedUser, writeFileAtomic, writeManifest, type InstallManifest } from './manifest.js';
import { copyTree, readSourceTree } from './tree.js';

/** The first line of the wrapper: uninstall removes a `vmlet` on the PATH only when it carries it. */
export const WRAPPER_MARK = '# vmlet command, installed by `vmlet install`';

export const DEFAULT_CONFIG = `# vmlet node daemon configuration, written once by \`vmlet install\`; upgrades keep it, uninstall keeps it
# unless --purge. Every key: docs/config.md (in /opt/vmlet/current/docs).
mode: standalone
socket: /run/vmlet/vmlet.sock
stateDir: /var/lib/vmlet
runDir: /run/vmlet
# auto = KVM when /dev/kvm works. Without KVM no VM starts unless software emulation is chosen explicitly:
# useEmulation: true
accel: auto
qemuUser: vmlet-qemu
`;

export interface InstallOptions {
  layout: InstallLayout;
  /** the built tree to install from */
  tree: string;
  /** the Node.js binary the unit and the wrapper will run (the one running this) */
  node: string;
  /** start the service when it is not running (an upgrade restarts a running one either way) */
  start: boolean;
  ops: HostOps;
  log: (line: string) => void;
  /** version folders kept: the current one and the one before it, for a rollback by hand */
  keep?: number;
}

export interface InstallResult {
  id: string;
  previous: string | undefined;
  createdConfig: boolean;
  service: 'started' | 'restarted' | 'left stopped' | 'left running';
}

/** The unit for this layout: the template of the tree with its placeholders filled in. */
export function renderUnit(template: string, layout: InstallLayout, node: string): string {
  const text = template
    .replaceAll('@NODE@', node)
    .replaceAll('@PREFIX@', hostPath(layout, layout.prefix))
    .replaceAll('@CONFIG@', hostPath(layout, layout.configFile));
  const left = /@[A-Z]+@/.exec(text);
  if (left) throw new VmletError('INSTALL_TREE_INCOMPLETE', `systemd/vmlet.service has a placeholder this install does not know: ${left[0]}`);
  return text;
}

export function renderWrapper(layout: InstallLayout, node: string): string {
  return `#!/bin/sh\n${WRAPPER_MARK} (removed by \`vmlet uninstall\`)\nexec ${node} ${hostPath(layout, layout.current)}/dist/cli/main.js "$@"\n`;
}

export async function install(o: InstallOptions): Promise<InstallResult> {
  const { layout, ops, log } = o;
  if (!path.isAbsolute(o.node) || /\s/.test(o.node))
    throw new VmletError('INSTALL_NODE_UNSUITABLE', `the Node.js path ${JSON.stringify(o.node)} cannot go into a unit`);
  const tree = readSourceTree(o.tree);
  const before = readManifest(layout.manifest);
  const dest = path.join(layout.prefix, tree.id);
  if (fs.existsSync(dest)) {
    log(`${tree.id} is installed already (same content); reusing ${hostPath(layout, dest)}`);
  } else {
    removeDeadCopies(layout.prefix);
    const tmp = `${dest}.tmp-${process.pid}`;
    log(`copying ${tree.dir} (${tree.packages.length} production packages) to ${hostPath(layout, dest)}`);
    try {
      copyTree(tree, tmp);
      fs.renameSync(tmp, dest);
    } catch (e) {
      fs.rmSync(tmp, { recursive: true, force: true });
      throw new VmletError('INSTALL_COPY_FAILED', `could not copy the tree to ${hostPath(layout, dest)}: ${(e as Error).message}`, { cause: e });
    }
  }
  const previous = before?.current !== undefined && before.current !== tree.id ? before.current : undefined;
  switchLink(layout.current, tree.id);

  const unitText = renderUnit(fs.readFileSync(path.join(dest, 'systemd', 'vmlet.service'), 'utf8'), layout, o.node);
  const unitChanged = readOr(layout.unitFile) !== unitText;
  writeFileAtomic(layout.unitFile, unitText, 0o644);
  writeFileAtomic(layout.wrapper, renderWrapper(layout, o.node), 0o755);
  let createdConfig = before?.createdConfig ?? false;
  if (!fs.existsSync(layout.configFile)) {
    fs.mkdirSync(layout.configDir, { recursive: true, mode: 0o755 });
    writeFileAtomic(layout.configFile, DEFAULT_CONFIG, 0o644);
    createdConfig = true;
    log(`wrote ${hostPath(layout, layout.configFile)} (the defaults; edit it and "systemctl restart vmlet")`);
  } else {
    log(`kept ${hostPath(layout, layout.configFile)}`);
  }
  const createdUser = await ensureQemuUser(o, configuredQemuUser(layout.configFile));
  if (createdUser !== '') recordCreatedUser(layout, createdUser);

  const versions = [...(before?.versions ?? []).filter((v) => v !== tree.id), tree.id];
  const keep = o.keep ?? 2;
  const dropped = versions.splice(0, Math.max(0, versions.length - keep));
  const manifest: InstallManifest = { format: 1, versions, current: tree.id, node: o.node, createdConfig };
  writeManifest(layout.manifest, manifest);
  // Old launchers keep running from a removed folder: Linux keeps an executable's inode while it runs.
  for (const v of dropped) fs.rmSync(path.join(layout.prefix, v), { recursive: true, force: true });

  await systemctl(ops, ['daemon-reload']);
  await systemctl(ops, ['enable', '--quiet', 'vmlet.service']);
  const active = (await ops.run('systemctl', ['is-active', '--quiet', 'vmlet.service'])).code === 0;
  let service: InstallResult['service'];
  if (active && (previous !== undefined || unitChanged)) {
    log('restarting vmlet.service (VMs keep running; the new daemon re-adopts them)');
    await systemctl(ops, ['restart', 'vmlet.service']);
    service = 'restarted';
  } else if (active) {
    service = 'left running';
  } else if (o.start) {
    log('starting vmlet.service');
    await systemctl(ops, ['start', 'vmlet.service']);
    service = 'started';
  } else {
    service = 'left stopped';
  }
  log(`installed ${tree.id}${previous ? ` (was ${previous}, kept beside it)` : ''}; service ${service}`);
  return { id: tree.id, previous, createdConfig, service };
}

/** Removes `<version>.tmp-PID` folders of installs killed mid-copy (their pid is gone); returns their names. */
export function removeDeadCopies(prefix: string): string[] {
  let names: string[] = [];
  try {
    names = fs.readdirSync(prefix);
  } catch {
    return [];
  }
  const dead = names.filter((n) => {
    const m = /\.tmp-(\d+)$/.exec(n);
    return m !== null && !pidAlive(Number(m[1]));
  });
  for (const n of dead) fs.rmSync(path.join(prefix, n), { recursive: true, force: true });
  return dead;
}

/** Points `link` at `target` by renaming a new link over it, so it is never missing. */
function switchLink(link: string, target: string): void {
  const tmp = `${link}.tmp-${process.pid}`;
  fs.rmSync(tmp, { force: true });
  fs.symlinkSync(target, tmp);
  fs.renameSync(tmp, link);
}

function readOr(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

/** `qemuUser` of the config (the daemon refuses to start when that user is missing). */
export function configuredQemuUser(configFile: string): string {
  try {
    const doc = parseYaml(fs.readFileSync(configFile, 'utf8')) as unknown;
    if (doc !== null && typeof doc === 'object' && 'qemuUser' in doc && typeof doc.qemuUser === 'string') return doc.qemuUser;
  } catch {
    // the daemon reports a broken config by name when it starts
  }
  return 'vmlet-qemu';
}

/** Creates QEMU's system user when missing; returns its name when this call created it. */
async function ensureQemuUser(o: InstallOptions, name: string): Promise<string> {
  if (name === 'root' || !/^[a-z_][a-z0-9_-]{0,31}$/.test(name)) return '';
  const passwd = readOr(path.join(o.layout.root, 'etc', 'passwd')) ?? '';
  if (passwd.split('\n').some((l) => l.split(':')[0] === name)) return '';
  o.log(`creating the system user ${name} (QEMU runs as it)`);
  const r = await o.ops.run('useradd', ['--system', '--user-group', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', name]);
  if (r.code !== 0) throw new VmletError('INSTALL_COMMAND_FAILED', `useradd ${name} failed: ${r.stderr.trim()}`);
  return name;
}

export async function systemctl(ops: HostOps, args: string[]): Promise<void> {
  const r = await ops.run('systemctl', args);
  if (r.code !== 0) {
    const hint = args[0] === 'start' || args[0] === 'restart' ? ' (see "journalctl -u vmlet -n 50")' : '';
    throw new VmletError('INSTALL_COMMAND_FAILED', `systemctl ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim()}${hint}`);
  }
}
