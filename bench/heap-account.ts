// Where the daemon's memory and idle CPU go: a probe preloaded into the daemon writes heap snapshots, memory figures, CPU and allocation profiles on request; this parses them and diffs them per VM.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { avg, benchAccel, progress, root, rssKiB, sleep, startDaemon, startPaused, vmletDelete, vmPids } from './support.js';

/**
 * The probe, loaded into the daemon with `--require`. On SIGUSR2 it reads `probe-cmd.json` from its
 * directory and answers with `probe-LABEL.json` (written last, by rename, so the bench knows it is
 * complete). Plain CommonJS: the daemon runs from dist without tsx.
 */
function probeSource(dir: string): string {
  return `'use strict';
// vmlet bench probe (bench/heap-account.ts): heap snapshots, memory figures (after a full GC), CPU and allocation profiles on SIGUSR2.
const fs = require('node:fs');
const path = require('node:path');
const v8 = require('node:v8');
const vm = require('node:vm');
const inspector = require('node:inspector');
const dir = ${JSON.stringify(dir)};
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc');
let session;
function figures() {
  gc();
  const resources = {};
  for (const r of process.getActiveResourcesInfo()) resources[r] = (resources[r] || 0) + 1;
  return { memoryUsage: process.memoryUsage(), heapSpaces: v8.getHeapSpaceStatistics(), resources };
}
process.on('SIGUSR2', () => {
  let cmd;
  try {
    cmd = JSON.parse(fs.readFileSync(path.join(dir, 'probe-cmd.json'), 'utf8'));
  } catch {
    return;
  }
  const out = path.join(dir, 'probe-' + cmd.label);
  const done = (r) => {
    fs.writeFileSync(out + '.tmp', JSON.stringify(r));
    fs.renameSync(out + '.tmp', out + '.json');
  };
  if (cmd.kind === 'figures') return done(figures());
  if (cmd.kind === 'heap') {
    v8.writeHeapSnapshot(out + '.heapsnapshot');
    return done({});
  }
  if (cmd.kind === 'cpu-start') {
    session = new inspector.Session();
    session.connect();
    session.post('Profiler.enable', () => session.post('Profiler.start', () => done({})));
    return;
  }
  if (cmd.kind === 'alloc-start') {
    session = new inspector.Session();
    session.connect();
    const o = { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true };
    session.post('HeapProfiler.startSampling', o, () => done({}));
    return;
  }
  if (cmd.kind === 'alloc-stop' && session) {
    session.post('HeapProfiler.stopSampling', (err, r) => {
      if (!err) fs.writeFileSync(out + '.heapprofile', JSON.stringify(r.profile));
      session.disconnect();
      session = undefined;
      done({});
    });
    return;
  }
  if (cmd.kind === 'cpu-stop' && session) {
    session.post('Profiler.stop', (err, r) => {
      if (!err) fs.writeFileSync(out + '.cpuprofile', JSON.stringify(r.profile));
      session.disconnect();
      session = undefined;
      done({});
    });
  }
});
`;
}

/** process.memoryUsage() and friends, as the probe reports them (after a full GC). */
export interface ProbeFigures {
  memoryUsage?: { rss: number; heapTotal: number; heapUsed: number; external: number; arrayBuffers: number };
  heapSpaces?: { space_name: string; space_used_size: number; physical_space_size: number }[];
  /** process.getActiveResourcesInfo() counted by kind: timers, sockets, pipes. */
  resources?: Record<string, number>;
}

/** Talks to the probe inside one daemon. */
export class HeapProbe {
  readonly dir: string;
  constructor(parent: string) {
    this.dir = path.join(parent, 'probe');
    fs.mkdirSync(this.dir, { recursive: true });
    fs.writeFileSync(path.join(this.dir, 'probe.cjs'), probeSource(this.dir));
  }

  /** Node options for the daemon: preload the probe. */
  nodeArgs(): string[] {
    return ['--require', path.join(this.dir, 'probe.cjs')];
  }

  snapshotPath(label: string): string {
    return path.join(this.dir, `probe-${label}.heapsnapshot`);
  }

  profilePath(label: string): string {
    return path.join(this.dir, `probe-${label}.cpuprofile`);
  }

  async request(pid: number, kind: 'figures' | 'heap' | 'cpu-start' | 'cpu-stop' | 'alloc-start' | 'alloc-stop', label: string): Promise<ProbeFigures> {
    const out = path.join(this.dir, `probe-${label}.json`);
    fs.rmSync(out, { force: true });
    fs.writeFileSync(path.join(this.dir, 'probe-cmd.json'), JSON.stringify({ kind, label }));
    process.kill(pid, 'SIGUSR2');
    const until = Date.now() + 180_000;
    while (!fs.existsSync(out)) {
      if (Date.now() > until) throw new Error(`the daemon's probe did not answer ${kind} within 180 s`);
      await sleep(50);
    }
    return JSON.parse(fs.readFileSync(out, 'utf8')) as ProbeFigures;
  }
}

/** Resident KiB by kind of mapping (/proc/PID/smaps): V8's heap and malloc arenas are anonymous, code and libraries file-backed. */
export function smapsSplit(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  let kind = 'anon';
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      const name = head[1] ?? '';
      kind =
        name === ''
          ? 'anon'
          : name.startsWith('/')
            ? name.includes('/node_modules/')
              ? 'file: node_modules'
              : 'file: other'
            : name.startsWith('[stack')
              ? '[stack]'
              : name;
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) out[kind] = (out[kind] ?? 0) + Number(rss[1]);
  }
  return out;
}

// ---- heap snapshots -------------------------------------------------------------------------

interface RawSnapshot {
  snapshot: { meta: { node_fields: string[]; node_types: unknown[]; edge_fields: string[]; edge_types: unknown[] } };
  nodes: number[];
  edges: number[];
  strings: string[];
}

function isRawSnapshot(v: unknown): v is RawSnapshot {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  const meta = (o['snapshot'] as { meta?: Record<string, unknown> } | undefined)?.meta;
  return (
    Array.isArray(o['nodes']) &&
    Array.isArray(o['edges']) &&
    Array.isArray(o['strings']) &&
    Array.isArray(meta?.['node_fields']) &&
    Array.isArray(meta?.['edge_fields'])
  );
}

/** One kind of object in a snapshot: how many, their shallow bytes, and who holds them. */
export interface Group {
  count: number;
  bytes: number;
  /** Of the objects new since the `before` snapshot: owner label ("QmpClient.sock") → count and bytes; "(older)" for the rest. */
  owners: Map<string, { count: number; bytes: number }>;
}

export interface HeapAccount {
  nodes: number;
  bytes: number;
  unreachable: number;
  groups: Map<string, Group>;
  /** node_modules packages whose files the heap names (ESM URLs, CommonJS filenames), with how many files. */
  packages: Map<string, number>;
  /** Ids of the reachable nodes, for a later snapshot's `before`. */
  ids: Set<number>;
}

/** vmlet's own class names (from src/), the owners objects are attributed to. */
export function ownClasses(dir = path.join(root, 'src')): Set<string> {
  const names = new Set<string>();
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith('.ts')) for (const m of fs.readFileSync(p, 'utf8').matchAll(/\bclass\s+([A-Z]\w*)/g)) names.add(m[1]!);
    }
  };
  walk(dir);
  return names;
}

/** The group a node is counted in, after Chrome DevTools' summary: constructors by name, strings, arrays, code, closures by name. */
function groupOf(type: string, name: string): string {
  switch (type) {
    case 'object':
      return name;
    case 'closure':
      return `(closure) ${name || '(anonymous)'}`;
    case 'string':
    case 'concatenated string':
    case 'sliced string':
      return '(string)';
    case 'code':
      return '(compiled code)';
    case 'number':
      return '(heap number)';
    case 'regexp':
      return 'RegExp';
    case 'symbol':
    case 'bigint':
    case 'object shape':
      return `(${type})`;
    case 'array':
      return `(array) ${name}`;
    default:
      return `(${type}) ${name.replace(/\s*\/\s*\d+$/, '')}`;
  }
}

/**
 * Parses a .heapsnapshot and counts its reachable nodes by group. With `before` (the node ids of an earlier
 * snapshot of the same process: V8 keeps an object's id across snapshots), the objects that are new since then
 * are also counted by owner: the nearest instance of one of vmlet's classes that holds them, found by walking
 * their retainers upwards (native handles, code and weak references are not owners), named with the property it
 * holds them by ("QmpClient.sock").
 */
export function accountOf(file: string, own: Set<string>, before?: Set<number>): HeapAccount {
  const raw: unknown = JSON.parse(fs.readFileSync(file, 'utf8'));
  if (!isRawSnapshot(raw)) throw new Error(`${file} is not a V8 heap snapshot`);
  const { nodes, edges, strings } = raw;
  const meta = raw.snapshot.meta;
  const nf = meta.node_fields.length;
  const ef = meta.edge_fields.length;
  const [nType, nName, nId, nSize, nEdges] = ['type', 'name', 'id', 'self_size', 'edge_count'].map((f) => meta.node_fields.indexOf(f)) as [
    number,
    number,
    number,
    number,
    number,
  ];
  const [eType, eName, eTo] = ['type', 'name_or_index', 'to_node'].map((f) => meta.edge_fields.indexOf(f)) as [number, number, number];
  const nodeTypes = meta.node_types[0] as string[];
  const edgeTypes = meta.edge_types[0] as string[];
  const weak = edgeTypes.indexOf('weak');
  const byIndex = new Set([edgeTypes.indexOf('element'), edgeTypes.indexOf('hidden')]);
  const count = nodes.length / nf;
  const firstEdge = new Uint32Array(count + 1);
  for (let i = 0; i < count; i++) firstEdge[i + 1] = firstEdge[i]! + nodes[i * nf + nEdges]! * ef;
  const typeOf = (n: number): string => nodeTypes[nodes[n * nf + nType]!]!;
  const nameOf = (n: number): string => strings[nodes[n * nf + nName]!]!;

  // Reachable from the root, weak references aside.
  const seen = new Uint8Array(count);
  const queue = new Uint32Array(count);
  let head = 0;
  let tail = 0;
  queue[tail++] = 0;
  seen[0] = 1;
  while (head < tail) {
    const n = queue[head++]!;
    for (let e = firstEdge[n]!; e < firstEdge[n + 1]!; e += ef) {
      if (edges[e + eType] === weak) continue;
      const c = edges[e + eTo]! / nf;
      if (!seen[c]) {
        seen[c] = 1;
        queue[tail++] = c;
      }
    }
  }

  const labels: string[] = ['(none)', '(older)'];
  const labelIds = new Map<string, number>(labels.map((l, i) => [l, i]));
  const label = (s: string): number => {
    let id = labelIds.get(s);
    if (id === undefined) labelIds.set(s, (id = labels.push(s) - 1));
    return id;
  };
  const ownerOf = before ? ownersUpwards() : undefined;

  /** Owner label per node: -1 not computed; only new nodes get one. */
  function ownersUpwards(): Int32Array {
    // Retainers of each node: the edges reversed.
    const retCount = new Uint32Array(count + 1);
    for (let e = 0; e < edges.length; e += ef) retCount[edges[e + eTo]! / nf + 1]!++;
    for (let i = 0; i < count; i++) retCount[i + 1]! += retCount[i]!;
    const retFrom = new Uint32Array(edges.length / ef);
    const retEdge = new Uint32Array(edges.length / ef);
    const fill = retCount.slice(0, count);
    for (let n = 0; n < count; n++) {
      for (let e = firstEdge[n]!; e < firstEdge[n + 1]!; e += ef) {
        const c = edges[e + eTo]! / nf;
        const at = fill[c]!++;
        retFrom[at] = n;
        retEdge[at] = e;
      }
    }
    const notOwners = new Set(['synthetic', 'native', 'code', 'object shape']);
    const memo = new Int32Array(count).fill(-1);
    const NONE = 0;
    const CAP = 4000;
    const edgeLabel = (e: number): string => {
      const nm = edges[e + eName]!;
      return byIndex.has(edges[e + eType]!) ? `[${nm}]` : strings[nm]!;
    };
    const up = (x: number): number => {
      const visited = [x];
      const mark = new Set([x]);
      let found = NONE;
      let capped = false;
      for (let i = 0; i < visited.length && found === NONE; i++) {
        const y = visited[i]!;
        if (y !== x && memo[y]! > NONE) {
          found = memo[y]!;
          break;
        }
        if (y !== x && memo[y] === NONE) continue;
        for (let r = retCount[y]!; r < retCount[y + 1]!; r++) {
          const e = retEdge[r]!;
          const from = retFrom[r]!;
          if (edges[e + eType] === weak || mark.has(from) || !seen[from] || notOwners.has(typeOf(from))) continue;
          if (typeOf(from) === 'object' && own.has(nameOf(from))) {
            found = label(`${nameOf(from)}.${edgeLabel(e)}`);
            break;
          }
          if (visited.length >= CAP) {
            capped = true;
            continue;
          }
          mark.add(from);
          visited.push(from);
        }
      }
      // A search that saw every ancestor without finding an owner proves none for all of them.
      if (found === NONE && !capped) for (const v of visited) memo[v] = NONE;
      memo[x] = found;
      return found;
    };
    const owner = new Int32Array(count).fill(1);
    for (let i = 0; i < count; i++) if (seen[i] && !before!.has(nodes[i * nf + nId]!)) owner[i] = memo[i]! >= 0 ? memo[i]! : up(i);
    return owner;
  }

  const groups = new Map<string, Group>();
  const ids = new Set<number>();
  let bytes = 0;
  for (let i = 0; i < count; i++) {
    if (!seen[i]) continue;
    ids.add(nodes[i * nf + nId]!);
    const type = typeOf(i);
    if (type === 'synthetic') continue;
    const size = nodes[i * nf + nSize]!;
    bytes += size;
    const g = groupOf(type, nameOf(i));
    let entry = groups.get(g);
    if (!entry) groups.set(g, (entry = { count: 0, bytes: 0, owners: new Map() }));
    entry.count++;
    entry.bytes += size;
    if (!ownerOf) continue;
    const o = labels[ownerOf[i]!]!;
    const oe = entry.owners.get(o) ?? { count: 0, bytes: 0 };
    oe.count++;
    oe.bytes += size;
    entry.owners.set(o, oe);
  }
  const files = new Map<string, Set<string>>();
  for (const str of strings) {
    const m = /node_modules\/((?:@[^/]+\/)?[^/]+)\/([^\s'"]+\.(?:c?js|mjs|json|node))$/.exec(str);
    if (m) files.set(m[1]!, (files.get(m[1]!) ?? new Set()).add(m[2]!));
  }
  const packages = new Map([...files].map(([p, f]) => [p, f.size] as const).sort((a, b) => b[1] - a[1]));
  return { nodes: tail, bytes, unreachable: count - tail, groups, packages, ids };
}

/** One line of a per-VM difference. */
export interface DiffRow {
  group: string;
  count_per_vm: number;
  bytes_per_vm: number;
  /** The owners that grew most, "Owner.edge ×count/VM". */
  owners: string;
}

/** (b − a) / vms by group, largest bytes first. */
export function diffAccounts(a: HeapAccount, b: HeapAccount, vms: number, top = 30): DiffRow[] {
  const rows: DiffRow[] = [];
  for (const [g, gb] of b.groups) {
    const ga = a.groups.get(g);
    const dBytes = (gb.bytes - (ga?.bytes ?? 0)) / vms;
    const dCount = (gb.count - (ga?.count ?? 0)) / vms;
    if (Math.abs(dBytes) < 1 && Math.abs(dCount) < 0.05) continue;
    const owners = [...gb.owners]
      .filter(([o]) => o !== '(older)')
      .map(([o, x]) => [o, x.count / vms] as const)
      .filter(([, c]) => c >= 0.5)
      .sort((x, y) => y[1] - x[1])
      .slice(0, 3)
      .map(([o, c]) => `${o} ×${+c.toFixed(1)}`)
      .join(', ');
    rows.push({ group: g, count_per_vm: +dCount.toFixed(2), bytes_per_vm: Math.round(dBytes), owners });
  }
  return rows.sort((x, y) => y.bytes_per_vm - x.bytes_per_vm).slice(0, top);
}

/** Bytes of the objects new in `b` (accounted with `before` = a's ids) by owner, per VM: who holds the growth, whatever its kind. */
export function ownerDiff(b: HeapAccount, vms: number, top = 15): { owner: string; bytes_per_vm: number; count_per_vm: number }[] {
  const m = new Map<string, { bytes: number; count: number }>();
  for (const g of b.groups.values()) {
    for (const [o, x] of g.owners) {
      if (o === '(older)') continue;
      const t = m.get(o) ?? { bytes: 0, count: 0 };
      t.bytes += x.bytes;
      t.count += x.count;
      m.set(o, t);
    }
  }
  return [...m]
    .map(([owner, v]) => ({ owner, bytes_per_vm: Math.round(v.bytes / vms), count_per_vm: +(v.count / vms).toFixed(1) }))
    .sort((x, y) => y.bytes_per_vm - x.bytes_per_vm)
    .slice(0, top);
}

/** The biggest groups of one snapshot (what the daemon holds with no VM). */
export function topGroups(h: HeapAccount, top = 20): { group: string; count: number; kib: number }[] {
  return [...h.groups]
    .map(([group, g]) => ({ group, count: g.count, kib: +(g.bytes / 1024).toFixed(1) }))
    .sort((x, y) => y.kib - x.kib)
    .slice(0, top);
}

// ---- CPU profiles -----------------------------------------------------------------------------

interface ProfileNode {
  id: number;
  hitCount?: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

/** Self time by function of a .cpuprofile, in ms, largest first. */
export function profileTop(file: string, top = 15): { fn: string; ms: number }[] {
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as { nodes: ProfileNode[]; samples: number[]; startTime: number; endTime: number };
  const msPerSample = (p.endTime - p.startTime) / 1000 / Math.max(1, p.samples.length);
  const by = new Map<string, number>();
  for (const n of p.nodes) {
    const f = n.callFrame;
    const where = f.url ? ` ${f.url.replace(/^.*\/(node_modules\/|dist\/)/, '$1')}:${f.lineNumber + 1}` : '';
    const key = `${f.functionName || '(anonymous)'}${where}`;
    by.set(key, (by.get(key) ?? 0) + (n.hitCount ?? 0) * msPerSample);
  }
  return [...by]
    .map(([fn, ms]) => ({ fn, ms: +ms.toFixed(1) }))
    .filter((x) => x.fn !== '(idle)' && x.ms > 0)
    .sort((a, b) => b.ms - a.ms)
    .slice(0, top);
}

/** Bytes allocated by function (self), from a sampling heap profile that kept collected objects too; largest first. */
export function allocationTop(file: string, top = 15): { fn: string; kib: number }[] {
  interface Node {
    callFrame: { functionName: string; url: string; lineNumber: number };
    selfSize: number;
    children?: Node[];
  }
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as { head: Node };
  const by = new Map<string, number>();
  const walk = (n: Node): void => {
    const f = n.callFrame;
    const key = `${f.functionName || '(anonymous)'}${f.url ? ` ${f.url.replace(/^.*\/(node_modules\/|dist\/)/, '$1')}:${f.lineNumber + 1}` : ''}`;
    by.set(key, (by.get(key) ?? 0) + n.selfSize);
    for (const c of n.children ?? []) walk(c);
  };
  walk(p.head);
  return [...by]
    .map(([fn, b]) => ({ fn, kib: +(b / 1024).toFixed(1) }))
    .sort((a, b) => b.kib - a.kib)
    .slice(0, top);
}

// ---- the benchmark ----------------------------------------------------------------------------

const EMPTY: HeapAccount = { nodes: 0, bytes: 0, unreachable: 0, groups: new Map(), packages: new Map(), ids: new Set() };

const kib = (b: number | undefined): number => +((b ?? 0) / 1024).toFixed(1);

/** `npm run bench -- heap [--count N] [--cpu-profile] [--idle-seconds S] [--figures-only] [--keep DIR] [--json]` (also `density --heap`). */
export async function run(opts: { json: boolean; args?: string[] }): Promise<void> {
  const args = opts.args ?? [];
  const flag = (f: string): number | undefined => (args.includes(f) ? Number(args[args.indexOf(f) + 1]) : undefined);
  const count = flag('--count') ?? 20;
  // Memory figures without snapshots: the cleanest RSS split, at the price of the per-object account.
  const figuresOnly = args.includes('--figures-only');
  // --keep DIR: the .heapsnapshot files are copied there (for Chrome DevTools' Memory tab) before the temp dir goes.
  const keep = args.includes('--keep') ? path.resolve(args[args.indexOf('--keep') + 1] ?? '.') : undefined;
  const idleMs = (flag('--idle-seconds') ?? 30) * 1000;
  const accel = await benchAccel();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-bench-heap-'));
  const probe = new HeapProbe(dir);
  const own = ownClasses();
  const bd = await startDaemon(dir, accel, { nodeArgs: probe.nodeArgs() });
  const pid = bd.proc.pid!;
  const names: string[] = [];
  const result: Record<string, unknown> = { accel, vm: '64 MiB, 1 vCPU, no disk, paused', vms: count };
  try {
    await sleep(2000);
    // Figures first: a snapshot leaves malloc'd memory behind, which later RSS readings would include.
    const at = async (label: string, before?: HeapAccount): Promise<{ figures: ProbeFigures; heap: HeapAccount; smaps: Record<string, number> }> => {
      const figures = await probe.request(pid, 'figures', label);
      // V8 gives the pages a GC freed back a moment later.
      await sleep(500);
      const smaps = smapsSplit(pid);
      smaps['total'] = rssKiB(pid);
      if (figuresOnly) return { figures, heap: EMPTY, smaps };
      progress(`heap: snapshot ${label}`);
      await probe.request(pid, 'heap', label);
      const heap = accountOf(probe.snapshotPath(label), own, before?.ids);
      if (keep) fs.copyFileSync(probe.snapshotPath(label), path.join(keep, path.basename(probe.snapshotPath(label))));
      fs.rmSync(probe.snapshotPath(label), { force: true });
      return { figures, heap, smaps };
    };
    const split = (x: { figures: ProbeFigures; heap: HeapAccount; smaps: Record<string, number> }): Record<string, unknown> => ({
      rss_kib: kib(x.figures.memoryUsage?.rss),
      heap_total_kib: kib(x.figures.memoryUsage?.heapTotal),
      heap_used_kib: kib(x.figures.memoryUsage?.heapUsed),
      external_kib: kib(x.figures.memoryUsage?.external),
      array_buffers_kib: kib(x.figures.memoryUsage?.arrayBuffers),
      heap_spaces_kib: Object.fromEntries(
        (x.figures.heapSpaces ?? []).map((h) => [h.space_name, { used: kib(h.space_used_size), resident: kib(h.physical_space_size) }]),
      ),
      snapshot_kib: kib(x.heap.bytes),
      snapshot_nodes: x.heap.nodes,
      smaps_rss_kib: x.smaps,
      resources: x.figures.resources,
    });
    const boot = await at('vms-0');
    // One VM through its whole life first: the first start compiles the API's validators and loads code, once.
    await startPaused(bd.api, 'warm');
    await vmletDelete(bd.api, 'warm');
    await startPaused(bd.api, 'vm-0');
    names.push('vm-0');
    await sleep(1000);
    const one = await at('vms-1');
    progress(`heap: starting ${count - 1} more paused VMs`);
    for (let i = 1; i < count; i += 10) {
      const batch = Array.from({ length: Math.min(10, count - i) }, (_, k) => `vm-${i + k}`);
      await Promise.all(batch.map((n) => startPaused(bd.api, n)));
      names.push(...batch);
    }
    // Past the guest agent's first try (a 3 s sync), so what is left is what a paused VM keeps.
    await sleep(5000);
    const many = await at(`vms-${count}`, one.heap);
    const pids = await Promise.all(names.map((n) => vmPids(bd.api, n)));
    const per = count - 1;
    const resources: Record<string, number> = {};
    for (const [k, v] of Object.entries(many.figures.resources ?? {})) resources[k] = +((v - (one.figures.resources?.[k] ?? 0)) / per).toFixed(2);
    const smapsPerVm: Record<string, number> = {};
    for (const [k, v] of Object.entries(many.smaps)) smapsPerVm[k] = +((v - (one.smaps[k] ?? 0)) / per).toFixed(1);
    const mu = (x: typeof one, k: 'heapUsed' | 'external' | 'arrayBuffers'): number => x.figures.memoryUsage?.[k] ?? 0;
    Object.assign(result, {
      split: { vms_0: split(boot), vms_1: split(one), [`vms_${count}`]: split(many) },
      per_vm: {
        note: `(${count} VMs − 1 VM) / ${per}, after a full GC in the daemon${figuresOnly ? '' : '; RSS and smaps include what the earlier snapshots left behind (--figures-only for clean ones)'}`,
        rss_kib: +(((many.smaps['total'] ?? 0) - (one.smaps['total'] ?? 0)) / per).toFixed(1),
        heap_used_kib: kib((mu(many, 'heapUsed') - mu(one, 'heapUsed')) / per),
        external_kib: kib((mu(many, 'external') - mu(one, 'external')) / per),
        array_buffers_kib: kib((mu(many, 'arrayBuffers') - mu(one, 'arrayBuffers')) / per),
        snapshot_kib: kib((many.heap.bytes - one.heap.bytes) / per),
        snapshot_nodes: +((many.heap.nodes - one.heap.nodes) / per).toFixed(1),
        smaps_rss_kib: smapsPerVm,
        active_resources: resources,
        launcher_rss_kib: avg(pids.map((p) => rssKiB(p.launcher))),
      },
      per_vm_by_group: diffAccounts(one.heap, many.heap, per),
      per_vm_by_owner: ownerDiff(many.heap, per),
      no_vm_top_groups: topGroups(boot.heap),
      no_vm_packages: Object.fromEntries(boot.heap.packages),
    });
    if (args.includes('--cpu-profile')) {
      progress(`heap: CPU profile of ${idleMs / 1000} idle s with ${count} paused VMs`);
      await probe.request(pid, 'cpu-start', 'cpu-start');
      await sleep(idleMs);
      await probe.request(pid, 'cpu-stop', 'idle');
      result['idle_cpu_profile_ms'] = { seconds: idleMs / 1000, top: profileTop(probe.profilePath('idle')) };
    }
  } finally {
    await bd.close(names);
  }
  if (opts.json) {
    console.log(JSON.stringify(result));
    return;
  }
  print(result, count);
}

function print(r: Record<string, unknown>, count: number): void {
  const perVm = r['per_vm'] as Record<string, unknown>;
  console.log(`heap account: ${count} paused VMs (${String(r['accel'])}), per VM = (${count} VMs − 1 VM) / ${count - 1}`);
  console.log(JSON.stringify({ split: r['split'], per_vm: perVm }, null, 2));
  console.log('\nper VM by constructor (shallow bytes), top 30; owners of the new ones: the nearest vmlet object holding them, and by what');
  console.log(`${'group'.padEnd(44)} ${'n/VM'.padStart(7)} ${'B/VM'.padStart(8)}  owners`);
  for (const x of r['per_vm_by_group'] as DiffRow[]) {
    console.log(`${x.group.slice(0, 44).padEnd(44)} ${String(x.count_per_vm).padStart(7)} ${String(x.bytes_per_vm).padStart(8)}  ${x.owners}`);
  }
  console.log('\nper VM by owner: objects new since the 1-VM snapshot and still alive (bytes, count)');
  for (const x of r['per_vm_by_owner'] as { owner: string; bytes_per_vm: number; count_per_vm: number }[]) {
    console.log(`${x.owner.padEnd(60)} ${String(x.bytes_per_vm).padStart(8)} ${String(x.count_per_vm).padStart(7)}`);
  }
  console.log('\nno VM: biggest groups (KiB)');
  for (const x of r['no_vm_top_groups'] as { group: string; count: number; kib: number }[]) {
    console.log(`${x.group.slice(0, 50).padEnd(50)} ${String(x.count).padStart(8)} ${String(x.kib).padStart(9)}`);
  }
  console.log(
    `\nno VM: packages in the heap (files): ${Object.entries(r['no_vm_packages'] as Record<string, number>)
      .map(([p, n]) => `${p} ${n}`)
      .join(', ')}`,
  );
  const cpu = r['idle_cpu_profile_ms'] as { seconds: number; top: { fn: string; ms: number }[] } | undefined;
  if (cpu) {
    console.log(`\nidle CPU profile, ${cpu.seconds} s, self ms (the probe's sampler included)`);
    for (const x of cpu.top) console.log(`${String(x.ms).padStart(8)}  ${x.fn}`);
  }
}
