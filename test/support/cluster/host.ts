// The test cluster's effects on the host outside its folder: the node link, route checks, processes by pid file, and the teardown of links, netns, mounts, cgroups, firewall chains and sysctls, with snapshots to prove it.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ClusterError } from './errors.js';
import { VMLET_SUBNET, type ClusterConfig, type ComponentSpec, type Layout } from './config.js';
import { run, runStatus, sleep } from './exec.js';

// ---------------------------------------------------------------- addresses

function ip4(s: string): number {
  const parts = s.split('.').map(Number);
  if (parts.length !== 4 || parts.some((n) => !Number.isInteger(n) || n < 0 || n > 255))
    throw new ClusterError('CLUSTER_BAD_ADDRESS', `not an IPv4 address: ${s}`);
  return ((parts[0]! << 24) >>> 0) + (parts[1]! << 16) + (parts[2]! << 8) + parts[3]!;
}

/** [first, last] of an IPv4 CIDR (a bare address is a /32). */
export function cidrRange(cidr: string): [number, number] {
  const [addr, bitsText] = cidr.split('/');
  const bits = bitsText === undefined ? 32 : Number(bitsText);
  const size = 2 ** (32 - bits);
  const first = Math.floor(ip4(addr!) / size) * size;
  return [first, first + size - 1];
}

export function cidrsOverlap(a: string, b: string): boolean {
  const [a0, a1] = cidrRange(a);
  const [b0, b1] = cidrRange(b);
  return a0 <= b1 && b0 <= a1;
}

export interface Route {
  dst: string;
  dev?: string;
  type?: string;
  table?: string;
}

/** The cluster's ranges that clash with vmlet's subnet or a host route (routes on the cluster's own links do not count). */
export function rangeClashes(cfg: ClusterConfig, routes: Route[]): string[] {
  const ours = [cfg.clusterCidr, cfg.serviceCidr, cfg.kwokCidr, `${cfg.nodeIp}/32`, `${cfg.kwokNodeIp}/32`];
  const out: string[] = [];
  for (const r of ours) if (cidrsOverlap(r, VMLET_SUBNET)) out.push(`${r} overlaps vmlet's subnet ${VMLET_SUBNET}`);
  for (const route of routes) {
    if (!route.dst || route.dst === 'default' || route.dst.includes(':')) continue;
    if (route.dev === cfg.nodeLink || route.dev === cfg.cniBridge) continue;
    if (cidrRange(route.dst)[0] === 0 && cidrRange(route.dst)[1] === 0xffffffff) continue;
    for (const r of ours)
      if (cidrsOverlap(r, route.dst))
        out.push(
          `${r} overlaps the host route ${route.type && route.type !== 'unicast' ? `${route.type} ` : ''}${route.dst}${route.dev ? ` dev ${route.dev}` : ''}`,
        );
  }
  return out;
}

export async function hostRoutes(): Promise<Route[]> {
  return JSON.parse(await run('ip', ['-j', '-4', 'route', 'show', 'table', 'all'])) as Route[];
}

/** True when the kernel delivers `addr` locally (`ip route get` says "local"): anything else would leave the machine. */
export async function isLocal(addr: string): Promise<boolean> {
  const r = await runStatus('ip', ['route', 'get', addr]);
  return r.code === 0 && r.stdout.trimStart().startsWith('local ');
}

export async function linkExists(name: string): Promise<boolean> {
  return (await runStatus('ip', ['link', 'show', 'dev', name])).code === 0;
}

/** Makes the node's link (an empty bridge with nodeIp/32) and checks the address is local. */
export async function ensureNodeLink(cfg: ClusterConfig): Promise<void> {
  if (!(await linkExists(cfg.nodeLink))) await run('ip', ['link', 'add', cfg.nodeLink, 'type', 'bridge']);
  const addrs = await run('ip', ['-4', '-o', 'addr', 'show', 'dev', cfg.nodeLink]);
  if (!addrs.includes(` ${cfg.nodeIp}/32 `)) await run('ip', ['addr', 'add', `${cfg.nodeIp}/32`, 'dev', cfg.nodeLink]);
  await run('ip', ['link', 'set', cfg.nodeLink, 'up']);
  if (!(await isLocal(cfg.nodeIp)))
    throw new ClusterError('CLUSTER_NODE_IP_NOT_LOCAL', `${cfg.nodeIp} on ${cfg.nodeLink} is not local (ip route get); refusing to start`);
}

/** TCP ports somebody listens on, from /proc/net/tcp{,6}. */
export function listeningPorts(procNet = '/proc/net'): Set<number> {
  const out = new Set<number>();
  for (const f of ['tcp', 'tcp6']) {
    let text = '';
    try {
      text = fs.readFileSync(path.join(procNet, f), 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[3] === '0A' && cols[1]) out.add(parseInt(cols[1].split(':')[1] ?? '0', 16));
    }
  }
  return out;
}

// ---------------------------------------------------------------- processes

export interface PidRecord {
  pid: number;
  start: string;
  name: string;
}

/** The start time (clock ticks since boot) of a live, non-zombie pid, or undefined. */
export function procStart(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (rest[0] === 'Z' || rest[0] === 'X') return undefined;
    return rest[19];
  } catch {
    return undefined;
  }
}

function pidFile(l: Layout, name: string): string {
  return path.join(l.pids, `${name}.json`);
}

export function readPid(l: Layout, name: string): PidRecord | undefined {
  try {
    const rec = JSON.parse(fs.readFileSync(pidFile(l, name), 'utf8')) as PidRecord;
    return procStart(rec.pid) === rec.start ? rec : undefined;
  } catch {
    return undefined;
  }
}

/** Starts one component detached (it outlives `npm run cluster -- up`), its output appended to logs/NAME.log. */
export function startProcess(l: Layout, spec: ComponentSpec, env: NodeJS.ProcessEnv): PidRecord {
  fs.mkdirSync(l.logs, { recursive: true });
  fs.mkdirSync(l.pids, { recursive: true });
  const fd = fs.openSync(path.join(l.logs, `${spec.name}.log`), 'a');
  try {
    const child = spawn(spec.bin, spec.args, { detached: true, stdio: ['ignore', fd, fd], env });
    child.on('error', () => {
      /* reported by the readiness wait, with the log's tail */
    });
    child.unref();
    if (child.pid === undefined) throw new ClusterError('CLUSTER_START_FAILED', `${spec.name}: ${spec.bin} could not be started`);
    const rec: PidRecord = { pid: child.pid, start: procStart(child.pid) ?? '', name: spec.name };
    fs.writeFileSync(pidFile(l, spec.name), JSON.stringify(rec));
    return rec;
  } finally {
    fs.closeSync(fd);
  }
}

/** Ends one component by its recorded pid: SIGTERM, then SIGKILL after `graceMs`. */
export async function stopProcess(l: Layout, name: string, graceMs = 10_000): Promise<void> {
  const rec = readPid(l, name);
  if (rec) {
    try {
      process.kill(rec.pid, 'SIGTERM');
    } catch {
      /* gone */
    }
    const end = Date.now() + graceMs;
    while (procStart(rec.pid) === rec.start && Date.now() < end) await sleep(50);
    if (procStart(rec.pid) === rec.start) {
      try {
        process.kill(rec.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      while (procStart(rec.pid) === rec.start) await sleep(20);
    }
  }
  fs.rmSync(pidFile(l, name), { force: true });
}

/** The last lines of a component's log, for error messages. */
export function logTail(l: Layout, name: string, lines = 8): string {
  try {
    return fs
      .readFileSync(path.join(l.logs, `${name}.log`), 'utf8')
      .trimEnd()
      .split('\n')
      .slice(-lines)
      .join('\n');
  } catch {
    return '(no log)';
  }
}

interface ProcInfo {
  pid: number;
  comm: string;
  cmdline: string;
  exe: string;
}

export function processes(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const pid = Number(d);
    if (procStart(pid) === undefined) continue;
    try {
      const comm = fs.readFileSync(`/proc/${d}/comm`, 'utf8').trim();
      const cmdline = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').join(' ').trim();
      let exe = '';
      try {
        exe = fs.readlinkSync(`/proc/${d}/exe`);
      } catch {
        /* kernel thread or gone */
      }
      out.push({ pid, comm, cmdline, exe });
    } catch {
      /* gone */
    }
  }
  return out;
}

/** Processes of the cluster: its binaries, containerd and its shims for our socket, and anything in a kubepods cgroup. */
export function clusterProcesses(cfg: ClusterConfig, cgroupRoot = '/sys/fs/cgroup'): ProcInfo[] {
  const l = { binDir: cfg.binDir, sock: path.join(cfg.root, 'containerd') };
  const inPods = new Set<number>();
  for (const dir of kubepodsCgroups(cgroupRoot)) for (const pid of cgroupProcs(dir)) inPods.add(pid);
  return processes().filter(
    (p) =>
      p.pid !== process.pid &&
      (inPods.has(p.pid) || p.exe.startsWith(`${l.binDir}/`) || p.cmdline.includes(cfg.root) || (/^containerd/.test(p.comm) && p.cmdline.includes(l.sock))),
  );
}

// ---------------------------------------------------------------- cgroups

/** Every `kubepods*` cgroup at the top of any hierarchy under `cgroupRoot` (v1 controllers, named hierarchies, unified). */
export function kubepodsCgroups(cgroupRoot = '/sys/fs/cgroup'): string[] {
  const out: string[] = [];
  let hierarchies: string[] = [];
  try {
    hierarchies = fs.readdirSync(cgroupRoot);
  } catch {
    return out;
  }
  const consider = (dir: string): void => {
    let entries: fs.Dirent[] = [];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) if (e.isDirectory() && e.name.startsWith('kubepods')) out.push(path.join(dir, e.name));
  };
  consider(cgroupRoot);
  for (const h of hierarchies) consider(path.join(cgroupRoot, h));
  return [...new Set(out)];
}

function cgroupTree(dir: string): string[] {
  const out = [dir];
  let entries: fs.Dirent[] = [];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) if (e.isDirectory()) out.push(...cgroupTree(path.join(dir, e.name)));
  return out;
}

function cgroupProcs(dir: string): number[] {
  const out: number[] = [];
  for (const d of cgroupTree(dir)) {
    try {
      for (const s of fs.readFileSync(path.join(d, 'cgroup.procs'), 'utf8').split('\n')) if (s.trim()) out.push(Number(s));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** Ends every process left in the kubepods cgroups and removes those cgroups depth first, in every hierarchy. */
export async function removeKubepods(cgroupRoot = '/sys/fs/cgroup'): Promise<string[]> {
  const problems: string[] = [];
  for (const top of kubepodsCgroups(cgroupRoot)) {
    for (const d of cgroupTree(top)) {
      const st = path.join(d, 'freezer.state');
      try {
        if (fs.readFileSync(st, 'utf8').trim() !== 'THAWED') fs.writeFileSync(st, 'THAWED');
      } catch {
        /* not the freezer */
      }
    }
  }
  const end = Date.now() + 10_000;
  for (;;) {
    const left = kubepodsCgroups(cgroupRoot);
    if (left.length === 0) return problems;
    for (const top of left) {
      for (const pid of cgroupProcs(top)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      for (const d of cgroupTree(top).reverse()) {
        try {
          fs.rmdirSync(d);
        } catch {
          /* busy: retry */
        }
      }
    }
    if (Date.now() > end) {
      problems.push(...kubepodsCgroups(cgroupRoot).map((d) => `cgroup ${d} could not be removed`));
      return problems;
    }
    await sleep(100);
  }
}

// ---------------------------------------------------------------- firewall

/** Splits one iptables-save rule line into argv, honouring its double quotes. */
export function splitRule(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inQ = false;
  let has = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (inQ) {
      if (c === '\\' && i + 1 < line.length) {
        cur += line[++i];
        continue;
      }
      if (c === '"') {
        inQ = false;
        continue;
      }
      cur += c;
    } else if (c === '"') {
      inQ = true;
      has = true;
    } else if (c === ' ') {
      if (has || cur) out.push(cur);
      cur = '';
      has = false;
    } else {
      cur += c;
      has = true;
    }
  }
  if (has || cur) out.push(cur);
  return out;
}

export const OUR_CHAIN = /^(KUBE-|CNI-)/;

export interface FirewallTable {
  family: 'iptables' | 'ip6tables';
  table: string;
  chains: string[];
  rules: string[];
}

/** Parses `iptables-save` output into tables with chain names and rule lines. */
export function parseSave(family: 'iptables' | 'ip6tables', text: string): FirewallTable[] {
  const out: FirewallTable[] = [];
  let cur: FirewallTable | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('*')) {
      cur = { family, table: line.slice(1).trim(), chains: [], rules: [] };
      out.push(cur);
    } else if (!cur) continue;
    else if (line.startsWith(':')) cur.chains.push(line.slice(1).split(' ')[0]!);
    else if (line.startsWith('-A ')) cur.rules.push(line);
  }
  return out;
}

export async function firewall(): Promise<FirewallTable[]> {
  const out: FirewallTable[] = [];
  for (const family of ['iptables', 'ip6tables'] as const) {
    const r = await runStatus(`${family}-save`, []);
    if (r.code === 0) out.push(...parseSave(family, r.stdout));
  }
  return out;
}

/** The commands that remove every KUBE-* and CNI-* chain and every rule that jumps to one, leaving all other rules alone. */
export function firewallCleanup(tables: FirewallTable[]): Array<[string, string[]]> {
  const cmds: Array<[string, string[]]> = [];
  for (const t of tables) {
    for (const rule of t.rules) {
      const argv = splitRule(rule);
      const chain = argv[1] ?? '';
      const ti = argv.findIndex((a) => a === '-j' || a === '-g');
      const target = ti >= 0 ? (argv[ti + 1] ?? '') : '';
      if (!OUR_CHAIN.test(chain) && OUR_CHAIN.test(target)) cmds.push([t.family, ['-w', '-t', t.table, '-D', ...argv.slice(1)]]);
    }
    const ours = t.chains.filter((c) => OUR_CHAIN.test(c));
    for (const c of ours) cmds.push([t.family, ['-w', '-t', t.table, '-F', c]]);
    for (const c of ours) cmds.push([t.family, ['-w', '-t', t.table, '-X', c]]);
  }
  return cmds;
}

export async function cleanFirewall(): Promise<string[]> {
  const problems: string[] = [];
  for (const [cmd, args] of firewallCleanup(await firewall())) {
    const r = await runStatus(cmd, args);
    if (r.code !== 0) problems.push(`${cmd} ${args.join(' ')}: ${r.stderr.trim()}`);
  }
  return problems;
}

// ---------------------------------------------------------------- mounts, netns, links, host dirs, sysctls

export function mountPoints(): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => (l.split(' ')[4] ?? '').replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
}

export async function unmountUnder(dir: string): Promise<string[]> {
  const problems: string[] = [];
  const under = (): string[] => [...new Set(mountPoints().filter((m) => m === dir || m.startsWith(`${dir}/`)))].sort((a, b) => b.length - a.length);
  for (let round = 0; round < 3 && under().length; round++) {
    for (const m of under()) {
      const r = await runStatus('umount', [m]);
      if (r.code !== 0) await runStatus('umount', ['-l', m]);
    }
  }
  problems.push(...under().map((m) => `mount ${m} is still there`));
  return problems;
}

export function netnsNames(dir = '/run/netns'): string[] {
  try {
    return fs.readdirSync(dir).sort();
  } catch {
    return [];
  }
}

export async function linkNames(): Promise<string[]> {
  const links = JSON.parse(await run('ip', ['-j', 'link', 'show'])) as Array<{ ifname: string; master?: string }>;
  return links.map((x) => x.ifname).sort();
}

export async function removeLinks(cfg: ClusterConfig): Promise<string[]> {
  const problems: string[] = [];
  for (const ns of netnsNames().filter((n) => n.startsWith('cni-'))) {
    const r = await runStatus('ip', ['netns', 'delete', ns]);
    if (r.code !== 0) problems.push(`netns ${ns}: ${r.stderr.trim()}`);
  }
  if (await linkExists(cfg.cniBridge)) {
    const ports = JSON.parse(await run('ip', ['-j', 'link', 'show', 'master', cfg.cniBridge])) as Array<{ ifname: string }>;
    for (const p of ports) await runStatus('ip', ['link', 'delete', p.ifname]);
  }
  for (const link of [cfg.cniBridge, cfg.nodeLink]) {
    if (await linkExists(link)) {
      const r = await runStatus('ip', ['link', 'delete', link]);
      if (r.code !== 0) problems.push(`link ${link}: ${r.stderr.trim()}`);
    }
  }
  return problems;
}

/** Host folders outside the cluster's root that containerd, CNI or the kubelet make on their own; removed at `down` when `up` found them absent. */
export const HOST_DIRS: Array<{ path: string; onlyIfEmpty: boolean }> = [
  { path: '/var/lib/cni', onlyIfEmpty: false },
  { path: '/run/containerd', onlyIfEmpty: false },
  { path: '/var/log/containers', onlyIfEmpty: false },
  { path: '/var/log/pods', onlyIfEmpty: false },
  // The kubelet keeps device plugin sockets here whatever its --root-dir says.
  { path: '/var/lib/kubelet', onlyIfEmpty: false },
  { path: '/run/netns', onlyIfEmpty: true },
];

export function removeHostDirs(absentBefore: string[]): string[] {
  const problems: string[] = [];
  for (const d of HOST_DIRS.filter((h) => absentBefore.includes(h.path))) {
    try {
      if (!fs.existsSync(d.path)) continue;
      if (d.onlyIfEmpty) {
        if (fs.readdirSync(d.path).length === 0) fs.rmdirSync(d.path);
      } else fs.rmSync(d.path, { recursive: true, force: true });
    } catch (e) {
      problems.push(`${d.path}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  return problems;
}

/** Host sysctls the kubelet and kube-proxy may change; saved at `up` and put back at `down`. */
export const SYSCTLS = [
  'kernel/panic',
  'kernel/panic_on_oops',
  'vm/overcommit_memory',
  'vm/panic_on_oom',
  'kernel/keys/root_maxkeys',
  'kernel/keys/root_maxbytes',
  'net/ipv4/conf/all/route_localnet',
  'net/bridge/bridge-nf-call-iptables',
  'net/bridge/bridge-nf-call-ip6tables',
  'net/netfilter/nf_conntrack_max',
];

export function readSysctls(procSys = '/proc/sys'): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of SYSCTLS) {
    try {
      out[k] = fs.readFileSync(path.join(procSys, k), 'utf8').trim();
    } catch {
      /* absent */
    }
  }
  return out;
}

export function restoreSysctls(saved: Record<string, string>, procSys = '/proc/sys'): string[] {
  const problems: string[] = [];
  const now = readSysctls(procSys);
  for (const [k, v] of Object.entries(saved)) {
    if (now[k] === v) continue;
    try {
      fs.writeFileSync(path.join(procSys, k), v);
    } catch (e) {
      problems.push(`sysctl ${k}=${v}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  return problems;
}

// ---------------------------------------------------------------- snapshots

export interface HostSnapshot {
  links: string[];
  netns: string[];
  mounts: string[];
  cgroups: string[];
  firewall: string[];
  processes: string[];
  hostDirs: string[];
  sysctls: string[];
}

export async function snapshot(cfg: ClusterConfig): Promise<HostSnapshot> {
  const fw = await firewall();
  return {
    links: await linkNames(),
    netns: netnsNames(),
    mounts: [...new Set(mountPoints())].sort(),
    cgroups: kubepodsCgroups(),
    firewall: fw.flatMap((t) => [...t.chains.map((c) => `${t.family} ${t.table} chain ${c}`), ...t.rules.map((r) => `${t.family} ${t.table} ${r}`)]).sort(),
    processes: clusterProcesses(cfg).map((p) => `${p.pid} ${p.cmdline.slice(0, 120)}`),
    hostDirs: HOST_DIRS.filter((d) => fs.existsSync(d.path)).map((d) => d.path),
    sysctls: Object.entries(readSysctls()).map(([k, v]) => `${k}=${v}`),
  };
}

/** What `after` has that `before` had not, per kind (items other engineers' vmlet tests make meanwhile are left out by `ignore`). */
export function leftovers(before: HostSnapshot, after: HostSnapshot, ignore: RegExp = /^$/): Partial<Record<keyof HostSnapshot, string[]>> {
  const out: Partial<Record<keyof HostSnapshot, string[]>> = {};
  for (const k of Object.keys(before) as Array<keyof HostSnapshot>) {
    const was = new Set(before[k]);
    const extra = after[k].filter((x) => !was.has(x) && !ignore.test(x));
    if (k === 'processes' || k === 'cgroups') extra.splice(0, extra.length, ...after[k]);
    if (extra.length) out[k] = extra;
  }
  return out;
}
