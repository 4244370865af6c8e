// What a stopped daemon leaves on the host once no VM is left, removed on uninstall: the bridge, vmlet's host nftables table, stray sandbox netns and the empty cgroup parents.
import fs from 'node:fs';
import path from 'node:path';
import type { DaemonConfig } from '../daemon/config.js';
import { execRunner } from '../net/exec.js';
import { removeHostNetwork } from '../net/host-side.js';
import { IpTools } from '../net/ip-tools.js';
import type { HostOps } from './host-ops.js';

export interface CleanupReport {
  removed: string[];
  /** what could not be removed, with why */
  left: string[];
}

export async function removeHostLeftovers(config: DaemonConfig, ops: HostOps): Promise<CleanupReport> {
  const report: CleanupReport = { removed: [], left: [] };
  const net = config.network;
  const hadBridge = (await ops.run('ip', ['link', 'show', 'dev', net.bridge])).code === 0;
  const hadTable = (await ops.run('nft', ['list', 'table', 'ip', net.nftTable])).code === 0;
  try {
    await removeHostNetwork(new IpTools(execRunner, { ip: 'ip', nft: 'nft', nsenter: 'nsenter' }), net.bridge, net.nftTable);
    if (hadBridge) report.removed.push(`link ${net.bridge}`);
    if (hadTable) report.removed.push(`nftables table ip ${net.nftTable}`);
  } catch (e) {
    report.left.push(`host network (${net.bridge}, table ip ${net.nftTable}): ${(e as Error).message}`);
  }
  const netns = await ops.run('ip', ['netns', 'list']);
  for (const line of netns.stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    if (!name.startsWith(net.netnsPrefix) || name === net.netnsPrefix) continue;
    const r = await ops.run('ip', ['netns', 'del', name]);
    (r.code === 0 ? report.removed : report.left).push(`netns ${name}${r.code === 0 ? '' : `: ${r.stderr.trim()}`}`);
  }
  for (const dir of cgroupParents(config.cgroupRoot, config.cgroupParent)) {
    const err = rmdirTree(dir);
    (err === undefined ? report.removed : report.left).push(`cgroup ${dir}${err === undefined ? '' : `: ${err}`}`);
  }
  return report;
}

/** `<root>/<parent>` (v2) and `<root>/<controller>/<parent>` (each v1 hierarchy) that exist. */
export function cgroupParents(root: string, parent: string): string[] {
  if (parent === '' || parent.split('/').includes('..')) return [];
  const out: string[] = [];
  const direct = path.join(root, parent);
  if (fs.existsSync(path.join(direct, 'cgroup.procs'))) out.push(direct);
  let entries: fs.Dirent[] = [];
  try {
    entries = fs.readdirSync(root, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    const dir = path.join(root, e.name, parent);
    if (fs.existsSync(path.join(dir, 'cgroup.procs'))) out.push(dir);
  }
  return out;
}

/** rmdir of a cgroup folder and its child groups, deepest first (cgroupfs folders go with rmdir alone); the first error, if any. */
function rmdirTree(dir: string): string | undefined {
  let err: string | undefined;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) err ??= rmdirTree(path.join(dir, e.name));
  }
  try {
    fs.rmdirSync(dir);
  } catch (e) {
    err ??= (e as Error).message;
  }
  return err;
}
