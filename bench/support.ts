// What the benchmarks share: a daemon in a temp dir, the small benchmark VMI, phase waits, process and cleanup helpers.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ApiClient, paths } from '../src/cli/client.js';
import { testAccel } from '../test/support/accel.js';
import type { Accel } from '../src/api/vocabulary.js';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** How long one VM may take to reach a phase before the benchmark ends with its reason. */
export const PHASE_DEADLINE_MS = Number(process.env['VMLET_BENCH_DEADLINE_MS'] ?? 120_000);

/** Progress for the person waiting, on stderr, so --json output on stdout stays clean. */
export function progress(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

/** The accelerator for both sides of a benchmark: VMLET_TEST_ACCEL, else vmlet's KVM probe (never "does /dev/kvm open"). */
export async function benchAccel(): Promise<Accel> {
  const accel = await testAccel(undefined, (why) => progress(why));
  progress(`accelerator: ${accel}`);
  return accel;
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? NaN;
}

export const avg = (xs: number[]): number => (xs.length === 0 ? NaN : +(xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(1));

/** A field of /proc/PID/status in KiB (VmRSS, RssAnon, RssFile, ...). */
export function statusKiB(pid: number, field: string): number {
  const m = new RegExp(`${field}:\\s+(\\d+)`).exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

export const rssKiB = (pid: number): number => statusKiB(pid, 'VmRSS');

/** CPU time the whole host spent busy so far (every process and the kernel; /proc/stat, 10 ms ticks), ms. */
export function hostBusyMs(): number {
  const [user, nice, system, , , irq, softirq, steal] = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const ticks = [user, nice, system, irq, softirq, steal].reduce((a: number, b) => a + (b ?? 0), 0);
  return ticks * 10;
}

/** CPU time of all of a process's threads in ms, to the nanosecond (schedstat), where /proc/PID/stat counts 10 ms ticks. */
export function threadsCpuMs(pid: number): number {
  let ns = 0;
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      /* the thread ended */
    }
  }
  return ns / 1e6;
}

/** RSS once it has settled: the median of `samples` readings `gapMs` apart, so one GC's moment does not decide it. */
export async function settledRssKiB(pid: number, samples = 5, gapMs = 200): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < samples; i++) {
    if (i > 0) await sleep(gapMs);
    xs.push(rssKiB(pid));
  }
  return percentile(xs, 50);
}

/**
 * The benchmark VM: 64 MiB, 1 vCPU, no disk, serial console; stops at once. No NIC, like the raw
 * QEMU baseline, unless `net`: then KubeVirt's default (a masquerade NIC in its own sandbox).
 */
export function vmiManifest(name: string, net = false): unknown {
  return {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: 'default' },
    spec: {
      terminationGracePeriodSeconds: 0,
      domain: { cpu: { cores: 1 }, memory: { guest: '64Mi' }, devices: { autoattachSerialConsole: true, autoattachPodInterface: net } },
    },
  };
}

interface PhaseView {
  metadata: { name: string };
  status?: { phase?: string; reason?: string; message?: string };
}

/** "phase Failed (LaunchFailed): QEMU said …" for a VMI, as far as the daemon knows. */
async function describeVmi(api: ApiClient, name: string): Promise<string> {
  try {
    const v = (await api.call('GET', paths.object('virtualmachineinstances', 'default', name))) as PhaseView;
    const st = v.status ?? {};
    return `phase ${st.phase ?? 'none'}${st.reason ? ` (${st.reason})` : ''}${st.message ? `: ${st.message}` : ''}`;
  } catch (e) {
    return `not readable: ${(e as Error).message}`;
  }
}

/** Waits until VMI `name` shows `phase`; a Failed VMI or the deadline ends the wait with the VMI's reason. */
export async function waitPhase(api: ApiClient, name: string, phase: string, signal: AbortSignal, timeoutMs = PHASE_DEADLINE_MS): Promise<void> {
  const deadline = AbortSignal.timeout(timeoutMs);
  try {
    // Its own VMI only, as `kubectl wait` does: a watch on every VMI per start made 50 concurrent starts cost N² events.
    const stream = await api.watch(
      `${paths.list('virtualmachineinstances', 'default')}?watch=true&fieldSelector=${encodeURIComponent(`metadata.name=${name}`)}`,
      AbortSignal.any([signal, deadline]),
    );
    for await (const ev of stream) {
      const e = ev as { type: string; object: PhaseView };
      if (e.object.metadata.name === name && e.object.status?.phase === phase) return;
      if (e.object.metadata.name === name && e.object.status?.phase === 'Failed') throw new Error(`${name} failed: ${await describeVmi(api, name)}`);
    }
  } catch (e) {
    if (!deadline.aborted) throw e;
  }
  if (deadline.aborted) throw new Error(`${name} was not ${phase} after ${timeoutMs / 1000} s: ${await describeVmi(api, name)}`);
  throw new Error(`watch ended before ${name} was ${phase}`);
}

/** POST the VMI and wait until it is Running; ms. */
export async function vmletStart(api: ApiClient, name: string, net = false): Promise<number> {
  const ac = new AbortController();
  const t0 = performance.now();
  const running = waitPhase(api, name, 'Running', ac.signal);
  await api.call('POST', paths.list('virtualmachineinstances', 'default'), { body: vmiManifest(name, net) });
  await running;
  const ms = performance.now() - t0;
  ac.abort();
  return ms;
}

export async function vmletDelete(api: ApiClient, name: string): Promise<void> {
  await api.call('DELETE', paths.object('virtualmachineinstances', 'default', name));
  const until = Date.now() + PHASE_DEADLINE_MS;
  for (;;) {
    try {
      await api.call('GET', paths.object('virtualmachineinstances', 'default', name));
    } catch {
      return;
    }
    if (Date.now() > until) throw new Error(`${name} was not deleted after ${PHASE_DEADLINE_MS / 1000} s: ${await describeVmi(api, name)}`);
    await sleep(20);
  }
}

interface VmiView {
  status?: { conditions?: { type: string; status: string }[]; vmlet?: { qemuPid?: number; launcherPid?: number } };
}

/** Creates VMI `name`, waits for Running, pauses it and waits until the Paused condition shows. */
export async function startPaused(api: ApiClient, name: string): Promise<void> {
  await vmletStart(api, name);
  await api.call('PUT', paths.subresource('virtualmachineinstances', 'default', name, 'pause'));
  const until = Date.now() + 30_000;
  for (;;) {
    const v = (await api.call('GET', paths.object('virtualmachineinstances', 'default', name))) as VmiView;
    if (v.status?.conditions?.some((c) => c.type === 'Paused' && c.status === 'True')) return;
    if (Date.now() > until) throw new Error(`${name} did not pause within 30 s: ${await describeVmi(api, name)}`);
    await sleep(50);
  }
}

export async function vmPids(api: ApiClient, name: string): Promise<{ qemu: number; launcher: number }> {
  const v = (await api.call('GET', paths.object('virtualmachineinstances', 'default', name))) as VmiView;
  const q = v.status?.vmlet?.qemuPid;
  const l = v.status?.vmlet?.launcherPid;
  if (!q || !l) throw new Error(`${name} has no qemu/launcher pid in its status`);
  return { qemu: q, launcher: l };
}

const BENCH_NET = { subnet: '10.215.0.0/16', bridge: 'vmlbench0', nftTable: 'vmlet_bench' };

export interface BenchDaemon {
  proc: ChildProcess;
  api: ApiClient;
  dir: string;
  /** Deletes `names` through the API (bounded), stops the daemon, kills what is left under `dir`, removes cgroups and `dir`. */
  close(names: string[]): Promise<void>;
}

/** Extra ways to start the benchmark daemon. */
export interface BenchDaemonOptions {
  /** Node options before the script, e.g. `--require` of bench/heap-account.ts's probe. */
  nodeArgs?: string[];
  /** The daemon's qemuUser (default: the daemon's own, vmlet-qemu). */
  qemuUser?: string;
  /** false: no networking (a second daemon beside the first must not share its bridge). */
  network?: boolean;
}

/** A daemon of this checkout's build on its own socket, state, run dir and cgroup parent under `dir`. */
export async function startDaemon(dir: string, accel: Accel, opts: BenchDaemonOptions = {}): Promise<BenchDaemon> {
  const socket = path.join(dir, 'vmlet.sock');
  // Under /run like the daemon's default (/run/vmlet): a tmpfs on systemd hosts, the root file system on some others.
  const runDir = `/run/vmlet-bench-${path.basename(dir)}`;
  const config = path.join(dir, 'config.yaml');
  // Networking with names of its own (never the node's vmlet0), for the VMs that ask for a NIC.
  fs.writeFileSync(
    config,
    [
      `cgroupParent: ${path.basename(dir)}`,
      // The guests' cache and the temp folder where the benchmarks make their disks (no host path is allowed by default).
      `hostPaths: {allow: [${JSON.stringify(path.join(root, '.cache'))}, ${JSON.stringify(os.tmpdir())}]}`,
      ...(opts.qemuUser !== undefined ? [`qemuUser: ${opts.qemuUser}`] : []),
      ...(opts.network === false
        ? ['network: {enabled: false}']
        : [
            'network:',
            `  subnet: ${BENCH_NET.subnet}`,
            `  bridge: ${BENCH_NET.bridge}`,
            `  nftTable: ${BENCH_NET.nftTable}`,
            '  netnsPrefix: vmb-',
            '  vethPrefix: vbh-',
            '  hostForwarding: false',
          ]),
      '',
    ].join('\n'),
  );
  const proc = spawn(
    process.execPath,
    [
      ...(opts.nodeArgs ?? []),
      // VMLET_BENCH_DIST: another build's dist/ (a copy of the tree before a change), for an A/B in one sitting.
      path.join(process.env['VMLET_BENCH_DIST'] ?? path.join(root, 'dist'), 'cli', 'main.js'),
      'daemon',
      '--config',
      config,
      '--socket',
      socket,
      '--state-dir',
      path.join(dir, 'state'),
      '--run-dir',
      runDir,
      '--accel',
      accel,
    ],
    { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, VMLET_LOG_LEVEL: 'warn' } },
  );
  const api = new ApiClient({ socketPath: socket });
  const until = Date.now() + 30_000;
  for (;;) {
    try {
      await api.call('GET', '/healthz');
      break;
    } catch (e) {
      if (Date.now() > until) throw e;
      await sleep(50);
    }
  }
  return {
    proc,
    api,
    dir,
    async close(names) {
      await Promise.race([Promise.all(names.map((n) => vmletDelete(api, n).catch(() => undefined))), sleep(60_000)]);
      proc.kill('SIGTERM');
      await Promise.race([new Promise((r) => proc.once('exit', r)), sleep(10_000)]);
      // VMs outlive the daemon by design: end whatever is left.
      for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
        try {
          // The run dir's name carries dir's unique name too.
          if (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(path.basename(dir))) process.kill(Number(pid), 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      await sleep(500);
      removeCgroups(path.basename(dir));
      for (const [bin, args] of [
        ['ip', ['link', 'del', BENCH_NET.bridge]],
        ['nft', ['delete', 'table', 'ip', BENCH_NET.nftTable]],
      ] as const) {
        try {
          execFileSync(bin, [...args], { stdio: 'ignore' });
        } catch {
          /* gone */
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
      fs.rmSync(runDir, { recursive: true, force: true });
    },
  };
}

function removeCgroups(parent: string): void {
  const base = '/sys/fs/cgroup';
  if (!fs.existsSync(base)) return;
  for (const h of fs.readdirSync(base).map((d) => path.join(base, d))) {
    const dir = path.join(h, parent);
    if (!fs.existsSync(dir)) continue;
    const rm = (d: string): void => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) rm(path.join(d, e.name));
      try {
        fs.rmdirSync(d);
      } catch {
        /* busy or gone */
      }
    };
    rm(dir);
  }
}
