// Disks: create → Running with a containerDisk vs a hostDisk of the same image (and raw QEMU), disk space per extra VM, and guest disk throughput through vmlet vs the same QEMU started by hand.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { paths, type ApiClient } from '../src/cli/client.js';
import type { Spawned } from '../src/sys/spawn.js';
import { guestImage, guestKernelArgs, READY_MARKER, type GuestImage } from '../test/support/guest.js';
import {
  ddHasDirect,
  defineClock,
  fdSetNodes,
  handArgv,
  procArgv,
  runWorkloads,
  SerialShell,
  startHandQemu,
  WORKLOADS,
  type GuestClock,
  type HandQemu,
  type IoOptions,
  type WorkloadKey,
} from './disk-guest.js';
import { benchAccel, percentile, PHASE_DEADLINE_MS, progress, sleep, startDaemon, vmiManifest, vmletDelete, waitPhase, type BenchDaemon } from './support.js';
import type { Accel } from '../src/api/vocabulary.js';
import { startRawQemu, stopRawQemu } from './raw-qemu.js';
const NS = 'default';
const MiB = 1024 * 1024;
const execAsync = promisify(execFile);

interface ImageRecord {
  digest: string;
  names: string[];
  format: string;
  virtualSize: number;
  size: number;
  path: string;
}

interface VolumeStatus {
  name: string;
  target?: string;
  format?: string;
  size?: number;
  containerDiskVolume?: { image: string; digest: string };
}

interface VmiView {
  metadata: { uid: string };
  status?: {
    phase?: string;
    vmlet?: { qemuPid?: number; runDir?: string; stats?: { memoryPeakBytes?: number; memoryLimitBytes?: number } };
    volumeStatus?: VolumeStatus[];
  };
}

interface Manifest {
  metadata: { name: string };
  spec: { domain: { devices: Record<string, unknown> } & Record<string, unknown>; volumes?: unknown[] } & Record<string, unknown>;
}

type VolumeSource = { hostDisk: { path: string; type: 'Disk' } } | { containerDisk: { image: string } };

const allocated = (file: string): number => fs.statSync(file).blocks * 512;
const med = (xs: number[]): number => percentile(xs, 50);
const r1 = (x: number): number => +x.toFixed(1);
const r2 = (x: number): number => +x.toFixed(2);

/** The start benchmark's VM (64 MiB, no NIC, firmware idles) with one virtio disk. */
function diskVmi(name: string, source: VolumeSource): Manifest {
  const m = structuredClone(vmiManifest(name)) as Manifest;
  m.spec.domain.devices.disks = [{ name: 'data', disk: { bus: 'virtio' } }];
  m.spec.volumes = [{ name: 'data', ...source }];
  return m;
}

/** The busybox test guest as test/support/daemon.ts guestSpec() makes it (kernel boot, 128Mi), with the data disk; no grace period, no NIC. */
function guestVmi(name: string, source: VolumeSource, img: GuestImage): Manifest {
  return {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: NS },
    spec: {
      terminationGracePeriodSeconds: 0,
      domain: {
        cpu: { cores: 1 },
        memory: { guest: '128Mi' },
        firmware: { kernelBoot: { kernelArgs: guestKernelArgs(), hostPath: { kernelPath: img.kernelPvh ?? img.kernel, initrdPath: img.initrd } } },
        // No NIC (guestSpec gets the default one): its tap fd could not be handed to QEMU started by hand.
        devices: { autoattachSerialConsole: true, autoattachPodInterface: false, disks: [{ name: 'data', disk: { bus: 'virtio' } }] },
      },
      volumes: [{ name: 'data', ...source }],
    },
  } as Manifest;
}

/** Every VMI this run created, for the daemon's close() to delete whatever a failure left. */
const created = new Set<string>();

/** POST the VMI and wait until it is Running; ms. */
async function createRunning(api: ApiClient, m: Manifest): Promise<number> {
  created.add(m.metadata.name);
  const ac = new AbortController();
  const t0 = performance.now();
  const running = waitPhase(api, m.metadata.name, 'Running', ac.signal);
  try {
    await api.call('POST', paths.list('virtualmachineinstances', NS), { body: m });
    await running;
    return performance.now() - t0;
  } finally {
    ac.abort();
    await running.catch(() => undefined);
  }
}

const getVmi = async (api: ApiClient, name: string): Promise<VmiView> => (await api.call('GET', paths.object('virtualmachineinstances', NS, name))) as VmiView;

/** Deletes what is left of `names` (ignoring the ones already gone), so a failed round does not leak VMIs. */
async function deleteAll(api: ApiClient, names: Iterable<string>): Promise<void> {
  await Promise.all([...names].map((n) => vmletDelete(api, n).catch(() => undefined)));
}

async function importImage(api: ApiClient, file: string, name: string): Promise<ImageRecord> {
  return (await api.call('POST', '/images', { body: { file, name } })) as ImageRecord;
}

/** A file of `bytes` with non-zero content everywhere (no holes), fsynced. */
function filledFile(file: string, bytes: number): void {
  const chunk = randomBytes(MiB);
  const fd = fs.openSync(file, 'w', 0o644);
  try {
    for (let off = 0; off < bytes; off += MiB) fs.writeSync(fd, chunk, 0, Math.min(MiB, bytes - off));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function copyFsynced(from: string, to: string): void {
  fs.copyFileSync(from, to);
  const fd = fs.openSync(to, 'r+');
  fs.fsyncSync(fd);
  fs.closeSync(fd);
}

// ---------------------------------------------------------------------------------------------
// 1. start latency

/** The floor: qemu-img create the overlay, then QEMU (-S) with vmlet's block nodes over the same base, QMP cont, see running. */
async function rawStart(dir: string, accel: Accel, base: string, baseFormat: string, virtualSize: number, i: number): Promise<{ ms: number; qemu: Spawned }> {
  const overlay = path.join(dir, `raw-${i}.qcow2`);
  const t0 = performance.now();
  await execAsync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', baseFormat, '-b', base, '-u', overlay, String(virtualSize)]);
  // prettier-ignore
  const extra = [
    '-blockdev', `driver=file,node-name=vol0-base-file,filename=${base},read-only=on`,
    '-blockdev', `driver=${baseFormat},node-name=vol0-base,file=vol0-base-file,read-only=on`,
    '-blockdev', `driver=file,node-name=vol0-file,filename=${overlay},read-only=off,discard=unmap`,
    '-blockdev', 'driver=qcow2,node-name=vol0,file=vol0-file,read-only=off,discard=unmap,backing=vol0-base',
    '-device', 'virtio-blk-pci,drive=vol0,id=ua-data',
  ];
  return startRawQemu({ sock: path.join(dir, `raw-${i}.qmp`), accel, extra, t0 });
}

interface StartResult {
  n: number;
  image: { virtual_size: number; allocated_bytes: number; format: string };
  hostdisk_p50_ms: number;
  hostdisk_p95_ms: number;
  containerdisk_p50_ms: number;
  containerdisk_p95_ms: number;
  raw_p50_ms: number;
  raw_p95_ms: number;
  ratio_containerdisk_vs_hostdisk: number;
  ratio_vs_raw: number;
  hostdisk_ratio_vs_raw: number;
}

async function startLatency(bd: BenchDaemon, work: string, accel: Accel, img: ImageRecord, source: string, rounds: number): Promise<StartResult> {
  const { api } = bd;
  const hd: number[] = [];
  const cd: number[] = [];
  const raw: number[] = [];
  // A fresh private copy per hostDisk VMI, as the overlay is per containerDisk VMI; made outside the timing.
  const oneRound = async (tag: string): Promise<void> => {
    const copy = path.join(work, `hostdisk-${tag}.qcow2`);
    copyFsynced(source, copy);
    try {
      hd.push(await createRunning(api, diskVmi(`hd-${tag}`, { hostDisk: { path: copy, type: 'Disk' } })));
      await vmletDelete(api, `hd-${tag}`);
    } finally {
      await deleteAll(api, [`hd-${tag}`]);
      fs.rmSync(copy, { force: true });
    }
    try {
      cd.push(await createRunning(api, diskVmi(`cd-${tag}`, { containerDisk: { image: img.names[0]! } })));
      await vmletDelete(api, `cd-${tag}`);
    } finally {
      await deleteAll(api, [`cd-${tag}`]);
    }
    const r = await rawStart(work, accel, img.path, img.format, img.virtualSize, raw.length);
    raw.push(r.ms);
    await stopRawQemu(r.qemu);
    fs.rmSync(path.join(work, `raw-${raw.length - 1}.qcow2`), { force: true });
  };
  progress('start latency: warm-up round (hostDisk, containerDisk, raw QEMU)');
  await oneRound('warm');
  hd.length = cd.length = raw.length = 0;
  for (let i = 0; i < rounds; i++) {
    progress(`start latency ${i + 1}/${rounds}`);
    await oneRound(String(i));
  }
  return {
    n: rounds,
    image: { virtual_size: img.virtualSize, allocated_bytes: allocated(img.path), format: img.format },
    hostdisk_p50_ms: r1(med(hd)),
    hostdisk_p95_ms: r1(percentile(hd, 95)),
    containerdisk_p50_ms: r1(med(cd)),
    containerdisk_p95_ms: r1(percentile(cd, 95)),
    raw_p50_ms: r1(med(raw)),
    raw_p95_ms: r1(percentile(raw, 95)),
    ratio_containerdisk_vs_hostdisk: r2(med(cd) / med(hd)),
    ratio_vs_raw: r2(med(cd) / med(raw)),
    hostdisk_ratio_vs_raw: r2(med(hd) / med(raw)),
  };
}

// ---------------------------------------------------------------------------------------------
// 2. disk space per extra VM

interface SpaceResult {
  vms: number;
  image: string;
  image_virtual_size: number;
  store_image_allocated_bytes: number;
  overlay_allocated_bytes: number[];
  overlay_apparent_bytes: number;
  per_extra_vm_bytes: number;
  full_copy_bytes: number;
  ratio_copy_vs_overlay: number;
  overlays_left_after_delete: number;
}

async function diskSpace(bd: BenchDaemon, img: ImageRecord, k: number): Promise<SpaceResult> {
  const { api } = bd;
  const names = Array.from({ length: k }, (_, i) => `sp-${i}`);
  progress(`disk space: ${k} VMIs of containerDisk ${img.names[0]}`);
  const overlays: string[] = [];
  try {
    await Promise.all(names.map((n) => createRunning(api, diskVmi(n, { containerDisk: { image: img.names[0]! } }))));
    for (const n of names) {
      // Overlays live in the VMI's scratch folder under the state folder (not the run dir's tmpfs).
      overlays.push(path.join(scratchRootOf(bd), (await getVmi(api, n)).metadata.uid, 'overlay-data.qcow2'));
    }
    const sizes = overlays.map(allocated);
    const apparent = fs.statSync(overlays[0]!).size;
    await Promise.all(names.map((n) => vmletDelete(api, n)));
    const perVm = med(sizes);
    const full = allocated(img.path);
    return {
      vms: k,
      image: img.names[0]!,
      image_virtual_size: img.virtualSize,
      store_image_allocated_bytes: full,
      overlay_allocated_bytes: sizes,
      overlay_apparent_bytes: apparent,
      per_extra_vm_bytes: perVm,
      full_copy_bytes: full,
      ratio_copy_vs_overlay: r1(full / perVm),
      overlays_left_after_delete: overlays.filter((o) => fs.existsSync(o)).length,
    };
  } finally {
    await deleteAll(api, names);
  }
}

// ---------------------------------------------------------------------------------------------
// 3. guest disk throughput, vmlet vs the same QEMU by hand

type SetupKey = 'raw_hostdisk' | 'qcow2_hostdisk' | 'containerdisk';
type Rates = Record<WorkloadKey, number>;

interface Setup {
  key: SetupKey;
  label: string;
  source: VolumeSource;
  /** What status.volumeStatus must say (for a containerDisk: the image's format, not the overlay's; docs/disks.md). */
  expectFormat: string;
  /** For the containerDisk: the store image, the base of the hand side's own overlay. */
  base?: ImageRecord;
  /** For a hostDisk: the hand side's identical copy. */
  handCopy?: string;
}

/** Where the benchmark daemon keeps its VMIs' scratch folders (`<stateDir>/scratch`). */
const scratchRootOf = (bd: BenchDaemon): string => path.join(bd.dir, 'state', 'scratch');

interface IoState {
  api: ApiClient;
  scratchRoot: string;
  work: string;
  /** --hand-memcg: the cgroup parent (the daemon's) under which the hand QEMU gets a memory group with the VM's limit. */
  handMemcgParent?: string;
  img: GuestImage;
  io: IoOptions;
  directChecked: boolean;
  clocks: GuestClock[];
}

/** One booted guest with its shell, on either side. */
interface Side {
  shell: SerialShell;
  close(): Promise<void>;
}

async function waitConsoleLog(runDir: string, timeoutMs: number): Promise<void> {
  const file = path.join(runDir, 'console.log');
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (fs.readFileSync(file, 'latin1').includes(READY_MARKER)) return;
    } catch {
      /* not there yet */
    }
    if (Date.now() > until) {
      const tail = fs.existsSync(file) ? fs.readFileSync(file, 'latin1').slice(-600) : '(no console.log)';
      throw new Error(`the guest in ${runDir} printed no ${READY_MARKER} within ${timeoutMs / 1000} s; console tail:\n${tail}`);
    }
    await sleep(100);
  }
}

/** In a freshly booted guest's shell: checks the disk (and once whether dd does O_DIRECT) and defines the clock. */
async function prepareShell(st: IoState, sh: SerialShell): Promise<void> {
  const size = Number((await sh.ok('cat /sys/block/vda/size')).trim()) * 512;
  if (size !== 256 * MiB) throw new Error(`/dev/vda in the guest is ${size} bytes, not 256 MiB`);
  if (!st.directChecked) {
    st.directChecked = true;
    if (!(await ddHasDirect(sh))) {
      progress('busybox dd in the guest has no iflag/oflag=direct: falling back to conv=fsync and cached reads');
      st.io.direct = false;
    }
  }
  st.clocks.push(await defineClock(sh));
}

interface VmletSide extends Side {
  name: string;
  argv: string[];
  runDir: string;
  /** the VMI's scratch folder (its overlay) */
  scratchDir: string;
  /** memory limit of the VM's cgroup, bytes */
  memoryLimit?: number;
}

/**
 * A memory cgroup `parent/name` limited to `limit` bytes (v1 or v2), for --hand-memcg; returns its cgroup.procs. Under
 * the daemon's cgroup parent, so the daemon's close() removes it.
 */
function memoryGroup(parent: string, name: string, limit: number | undefined): string {
  if (limit === undefined) throw new Error("--hand-memcg: the VMI's status shows no memory limit");
  const v2 = fs.existsSync('/sys/fs/cgroup/cgroup.controllers');
  const dir = v2 ? path.join('/sys/fs/cgroup', parent, name) : path.join('/sys/fs/cgroup/memory', parent, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, v2 ? 'memory.max' : 'memory.limit_in_bytes'), String(limit));
  return path.join(dir, 'cgroup.procs');
}

/** The VMI through the daemon: Running, status checked, its QEMU argv read, ready marker in console.log, console attached. */
async function bootVmlet(st: IoState, s: Setup, name: string): Promise<VmletSide> {
  const { api } = st;
  const close = async (): Promise<void> => {
    await vmletDelete(api, name).catch(() => undefined);
  };
  try {
    await createRunning(api, guestVmi(name, s.source, st.img));
    const v = await getVmi(api, name);
    const pid = v.status?.vmlet?.qemuPid;
    const runDir = v.status?.vmlet?.runDir;
    if (!pid || !runDir) throw new Error(`${name} has no qemuPid/runDir in its status`);
    const vs = v.status?.volumeStatus?.find((x) => x.name === 'data');
    if (vs?.format !== s.expectFormat || (s.base !== undefined && vs.containerDiskVolume?.digest !== s.base.digest)) {
      throw new Error(`${name}: status.volumeStatus is ${JSON.stringify(v.status?.volumeStatus)}, expected format ${s.expectFormat}`);
    }
    const argv = procArgv(pid);
    const memoryLimit = v.status?.vmlet?.stats?.memoryLimitBytes;
    await waitConsoleLog(runDir, PHASE_DEADLINE_MS);
    const up = await api.upgrade(`${paths.subresource('virtualmachineinstances', NS, name, 'console')}?write=true`, 'vmlet-console');
    const shell = new SerialShell(up.socket, up.head);
    return {
      name,
      argv,
      runDir,
      scratchDir: path.join(st.scratchRoot, v.metadata.uid),
      ...(memoryLimit !== undefined ? { memoryLimit } : {}),
      shell,
      async close() {
        shell.close();
        await close();
      },
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/** The same QEMU by hand: vmlet's argv with its fd sets, run dir and hostDisk moved to this side's own files. */
async function bootHand(st: IoState, s: Setup, vm: VmletSide, tag: string): Promise<Side & { argv: string[] }> {
  const dir = path.join(st.work, `h-${tag}`);
  fs.mkdirSync(dir);
  const fdFiles = new Map<number, string>();
  for (const [set, node] of fdSetNodes(vm.argv)) {
    // vmlet passes only store images by fd: the containerDisk's base (node vol0-base-file for the one disk).
    if (node !== 'vol0-base-file' || s.base === undefined)
      throw new Error(`vmlet's argv opens node ${node} by fd set ${set}; this benchmark expects only the containerDisk base`);
    fdFiles.set(set, s.base.path);
  }
  const moves: [string, string][] = [
    [vm.runDir, dir],
    [vm.scratchDir, dir],
  ];
  // Both guests run at once, so the hand side writes its own copy of the hostDisk (QEMU would refuse a shared one: file lock).
  if (s.handCopy !== undefined && 'hostDisk' in s.source) moves.push([s.source.hostDisk.path, s.handCopy]);
  let q: HandQemu | undefined;
  try {
    const argv = handArgv(vm.argv, moves, fdFiles);
    if (s.base !== undefined) {
      // The hand side's own overlay where vmlet's was, made as a person would (same 64 KiB clusters as vmlet's).
      const overlay = path.join(dir, 'overlay-data.qcow2');
      if (!argv.some((a) => a.includes(`filename=${overlay},`)))
        throw new Error(`vmlet's argv has no overlay at ${path.join(vm.scratchDir, 'overlay-data.qcow2')}`);
      await execAsync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', s.base.format, '-b', s.base.path, '-u', overlay, String(s.base.virtualSize)]);
    }
    const procs = st.handMemcgParent === undefined ? undefined : memoryGroup(st.handMemcgParent, `hand-${tag}`, vm.memoryLimit);
    const started = await startHandQemu(argv, dir, procs);
    q = started;
    await started.shell.waitReady(PHASE_DEADLINE_MS).catch((e: unknown) => {
      throw new Error(`hand-started QEMU (${tag}): ${(e as Error).message}\nqemu.log: ${started.log().trim()}`, { cause: e });
    });
    return {
      argv,
      shell: started.shell,
      async close() {
        await started.kill();
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await q?.kill();
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

interface IoSetupResult {
  rounds: { vmlet: Rates[]; hand: Rates[] };
  median: Record<WorkloadKey, { vmlet: number; hand: number; ratio: number; paired_ratio: number; within_10pct: boolean }>;
  /** The VM's memory cgroup (QEMU's page cache for the disk is charged to it). */
  vmlet_memory: { peak_bytes?: number; limit_bytes?: number; at_limit?: boolean };
  /** The arguments the hand start changed (vmlet's → hand's); `-add-fd` pairs are dropped. */
  argv_changes: [string, string][];
}

/**
 * Both guests up at once (an idle busybox guest costs next to no CPU), then the workload sequence on one side, then on
 * the other, alternating who goes first: paired samples close in time, so the load of a shared host hits both alike.
 */
async function ioSetup(st: IoState, s: Setup, rounds: number): Promise<IoSetupResult> {
  const vml: Rates[] = [];
  const hand: Rates[] = [];
  progress(`throughput ${s.label}: booting the guest through vmlet and by hand`);
  const vm = await bootVmlet(st, s, `io-${s.key.replace('_', '-')}`);
  let h: (Side & { argv: string[] }) | undefined;
  try {
    h = await bootHand(st, s, vm, s.key.slice(0, 2));
    await prepareShell(st, vm.shell);
    await prepareShell(st, h.shell);
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? (['vmlet', 'hand'] as const) : (['hand', 'vmlet'] as const);
      for (const side of order) {
        progress(`throughput ${s.label}: round ${r + 1}/${rounds}, ${side}`);
        if (side === 'vmlet') vml.push(await runWorkloads(vm.shell, st.io));
        else hand.push(await runWorkloads(h.shell, st.io));
      }
    }
    const stats = (await getVmi(st.api, vm.name)).status?.vmlet?.stats;
    const median = {} as IoSetupResult['median'];
    for (const w of WORKLOADS) {
      const a = med(vml.map((x) => x[w.key]));
      const b = med(hand.map((x) => x[w.key]));
      const paired = med(vml.map((x, i) => x[w.key] / hand[i]![w.key]));
      median[w.key] = { vmlet: r1(a), hand: r1(b), ratio: r2(a / b), paired_ratio: r2(paired), within_10pct: Math.abs(a / b - 1) <= 0.1 };
    }
    const handArgs = h.argv;
    const vmletArgs = vm.argv.filter((a, i, all) => a !== '-add-fd' && all[i - 1] !== '-add-fd');
    const argv_changes: [string, string][] = [];
    vmletArgs.forEach((a, i) => {
      if (a !== handArgs[i]) argv_changes.push([a, handArgs[i] ?? '']);
    });
    const vmlet_memory: IoSetupResult['vmlet_memory'] = {};
    if (stats?.memoryPeakBytes !== undefined) vmlet_memory.peak_bytes = stats.memoryPeakBytes;
    if (stats?.memoryLimitBytes !== undefined) vmlet_memory.limit_bytes = stats.memoryLimitBytes;
    // At its limit the group reclaims QEMU's page cache of the disk: reads go back to the host disk (see --hand-memcg).
    if (vmlet_memory.peak_bytes !== undefined && vmlet_memory.limit_bytes !== undefined)
      vmlet_memory.at_limit = vmlet_memory.peak_bytes >= vmlet_memory.limit_bytes;
    return { rounds: { vmlet: vml, hand }, median, vmlet_memory, argv_changes };
  } finally {
    await h?.close();
    await vm.close();
  }
}

// ---------------------------------------------------------------------------------------------

export async function run(opts: { json: boolean; args?: string[] }): Promise<void> {
  const args = opts.args ?? [];
  const num = (flag: string, def: number): number => {
    const i = args.indexOf(flag);
    const v = i >= 0 ? Number(args[i + 1]) : def;
    if (!Number.isInteger(v) || v < 1) throw new Error(`${flag} needs a positive integer`);
    return v;
  };
  const rounds = num('--rounds', 10);
  const vms = num('--vms', 5);
  const ioRounds = num('--io-rounds', 3);
  const randomOps = num('--random-ops', 200);
  // 64 MiB as briefed: the random reads then hit the containerDisk's base for 3/4 of the disk. 256 writes all of it,
  // enough page cache to fill the VM cgroup's memory limit (see --hand-memcg).
  const seqMiB = num('--seq-mib', 64);
  // Diagnosis: the hand-started QEMU in a memory cgroup with the VM's limit, as vmlet's runs (QEMU's page cache counts).
  const handMemcg = args.includes('--hand-memcg');
  if (seqMiB > 256) throw new Error('--seq-mib is at most 256 (the data disk)');
  const t0 = performance.now();
  const loadBefore = os.loadavg().map(r2);
  const accel = await benchAccel();
  const img = await guestImage();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-bench-disk-'));
  // Image files and the hand-started QEMUs' dirs, apart from the daemon's dir (which its close() removes).
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-bench-diskw-'));
  let bd: BenchDaemon | undefined;
  // close() also kills what is left under the daemon's dir: raw QEMUs and hand-started ones name the store image there.
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      await bd?.close([...created]);
      fs.rmSync(work, { recursive: true, force: true });
    })());
  const onSignal = (sig: NodeJS.Signals): void => {
    progress(`${sig}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const started = await startDaemon(dir, accel);
    bd = started;
    const { api } = started;

    progress('making the images');
    // 1 GiB qcow2 from a small raw file, for the start latency.
    const small = path.join(work, 'small.raw');
    filledFile(small, 4 * MiB);
    const startQcow2 = path.join(work, 'start.qcow2');
    await execAsync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', small, startQcow2]);
    await execAsync('qemu-img', ['resize', '-q', '-f', 'qcow2', startQcow2, '1G']);
    const startImg = await importImage(api, startQcow2, 'bench/start-disk:1');
    // 256 MiB with data everywhere, for throughput: raw and qcow2 hostDisks and the raw store image behind the containerDisk.
    const ioRaw = path.join(work, 'io.raw');
    filledFile(ioRaw, 256 * MiB);
    const ioImg = await importImage(api, ioRaw, 'bench/io-disk:1');
    const hostRaw = path.join(work, 'host.raw');
    copyFsynced(ioRaw, hostRaw);
    copyFsynced(ioRaw, `${hostRaw}.hand`);
    const hostQcow2 = path.join(work, 'host.qcow2');
    await execAsync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', ioRaw, hostQcow2]);
    copyFsynced(hostQcow2, `${hostQcow2}.hand`);
    fs.rmSync(ioRaw);
    const listed = (await api.call('GET', '/images')) as { items?: ImageRecord[] };
    if ((listed.items ?? []).length !== 2) throw new Error(`GET /images lists ${JSON.stringify(listed)}, expected the 2 imported images`);

    const start = await startLatency(started, work, accel, startImg, startQcow2, rounds);
    const space = await diskSpace(started, ioImg, vms);

    const st: IoState = { api, scratchRoot: scratchRootOf(started), work, img, io: { seqMiB, randomOps, direct: true }, directChecked: false, clocks: [] };
    if (handMemcg) st.handMemcgParent = path.basename(dir);
    const setups: Setup[] = [
      { key: 'raw_hostdisk', label: 'raw hostDisk', source: { hostDisk: { path: hostRaw, type: 'Disk' } }, expectFormat: 'raw', handCopy: `${hostRaw}.hand` },
      {
        key: 'qcow2_hostdisk',
        label: 'qcow2 hostDisk',
        source: { hostDisk: { path: hostQcow2, type: 'Disk' } },
        expectFormat: 'qcow2',
        handCopy: `${hostQcow2}.hand`,
      },
      { key: 'containerdisk', label: 'containerDisk', source: { containerDisk: { image: ioImg.names[0]! } }, expectFormat: ioImg.format, base: ioImg },
    ];
    const io = {} as Record<SetupKey, IoSetupResult>;
    for (const s of setups) io[s.key] = await ioSetup(st, s, ioRounds);

    for (const ref of [startImg.names[0]!, ioImg.names[0]!]) await api.call('DELETE', `/images/${encodeURIComponent(ref)}`);
    const left = (await api.call('GET', '/images')) as { items?: ImageRecord[] };
    if ((left.items ?? []).length !== 0) throw new Error(`images left in the store after DELETE: ${JSON.stringify(left)}`);

    const clockOverhead = med(st.clocks.map((c) => c.overheadMs));
    const result = {
      accel,
      start_latency: start,
      disk_space: space,
      throughput: {
        rounds: ioRounds,
        data_disk: '256 MiB, data everywhere (no holes); the containerDisk base is raw in the store',
        seq_mib: seqMiB,
        random_ops: randomOps,
        direct_io: st.io.direct,
        guest_clock: st.clocks[0]?.kind ?? 'none',
        guest_clock_overhead_ms: clockOverhead,
        hand_memory_cgroup: handMemcg ? "the VM's limit (--hand-memcg)" : 'none',
        target: 'vmlet/hand within 10% (rates: higher is better, ratio < 1 means vmlet is slower)',
        ...io,
      },
      host_load_avg: { before: loadBefore, after: os.loadavg().map(r2), cpus: os.cpus().length },
      wall_s: r1((performance.now() - t0) / 1000),
    };
    if (opts.json) console.log(JSON.stringify(result));
    else {
      printTable(result.start_latency, result.disk_space, io, st, clockOverhead, accel);
      console.log(
        `host load average ${loadBefore.join(' ')} before, ${result.host_load_avg.after.join(' ')} after (${result.host_load_avg.cpus} CPUs); ${result.wall_s} s`,
      );
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}

function printTable(start: StartResult, space: SpaceResult, io: Record<SetupKey, IoSetupResult>, st: IoState, clockMs: number, accel: Accel): void {
  const pad = (x: string | number, n: number): string => String(x).padStart(n);
  const kib = (b: number): string => `${(b / 1024).toFixed(0)} KiB`;
  console.log(`create → Running, ${accel}, 64 MiB VM, no NIC, one virtio disk (1 GiB qcow2, ${kib(start.image.allocated_bytes)} allocated), ${start.n} rounds`);
  console.log('                       p50 ms    p95 ms   ratio vs raw');
  console.log(`hostDisk (copy)      ${pad(start.hostdisk_p50_ms, 7)}  ${pad(start.hostdisk_p95_ms, 8)}   ${start.hostdisk_ratio_vs_raw}`);
  console.log(`containerDisk        ${pad(start.containerdisk_p50_ms, 7)}  ${pad(start.containerdisk_p95_ms, 8)}   ${start.ratio_vs_raw}`);
  console.log(`raw QEMU + overlay   ${pad(start.raw_p50_ms, 7)}  ${pad(start.raw_p95_ms, 8)}`);
  console.log(`containerDisk / hostDisk: ${start.ratio_containerdisk_vs_hostdisk}`);
  console.log('');
  console.log(`disk space with ${space.vms} VMIs of ${space.image} (${space.image_virtual_size / MiB} MiB virtual)`);
  console.log(`store image (once)   ${kib(space.store_image_allocated_bytes)} allocated = what a full copy per VM would cost`);
  console.log(`overlay per VM       ${space.overlay_allocated_bytes.map(kib).join(', ')} allocated (${kib(space.overlay_apparent_bytes)} apparent)`);
  console.log(
    `one more VM costs ${kib(space.per_extra_vm_bytes)} until its guest writes; a full copy ${space.ratio_copy_vs_overlay}× that; overlays left after delete: ${space.overlays_left_after_delete}`,
  );
  console.log('');
  console.log(
    `guest disk throughput, busybox guest (128 MiB, TCG), 256 MiB data disk; both guests up at once, median of ${io.containerdisk.rounds.vmlet.length} alternating rounds per side; ` +
      `seq ${st.io.seqMiB} MiB, ${st.io.randomOps} random 4 KiB ops, ${st.io.direct ? 'O_DIRECT' : 'no O_DIRECT (conv=fsync)'}, guest clock overhead ${clockMs} ms; ` +
      `hand QEMU ${st.handMemcgParent === undefined ? 'in no cgroup' : "in a memory cgroup with the VM's limit"}`,
  );
  console.log('setup            workload          vmlet       hand         vmlet/hand  paired  within 10%');
  for (const [key, r] of Object.entries(io) as [SetupKey, IoSetupResult][]) {
    for (const w of WORKLOADS) {
      const m = r.median[w.key];
      console.log(
        `${key.padEnd(16)} ${w.label.padEnd(14)} ${pad(m.vmlet, 8)} ${pad(m.hand, 10)} ${w.unit.padEnd(5)} ${pad(m.ratio, 8)} ${pad(m.paired_ratio, 8)}     ${m.within_10pct ? 'yes' : 'NO'}`,
      );
    }
    const mem = r.vmlet_memory;
    if (mem.peak_bytes !== undefined && mem.limit_bytes !== undefined) {
      const why = mem.at_limit ? ": at the limit, so QEMU's page cache of the disk is reclaimed" : '';
      console.log(
        `${''.padEnd(16)} vmlet's VM cgroup: memory peak ${(mem.peak_bytes / MiB).toFixed(0)} MiB of its ${(mem.limit_bytes / MiB).toFixed(0)} MiB limit${why}`,
      );
    }
  }
}
