// Per-VM management overhead of vmlet (launcher RSS + the daemon's RSS growth per VM) and QEMU's RSS, for 1, 10 and 50 paused 64 MiB VMs.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ApiClient, paths } from '../src/cli/client.js';
import { checkKvm } from '../src/qemu/probe.js';
import { rssKiB, vmiManifest, vmletDelete, waitPhase } from './start.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface VmiView { status?: { phase?: string; conditions?: { type: string; status: string }[]; vmlet?: { qemuPid?: number; launcherPid?: number } } }

async function startDaemon(dir: string, accel: 'kvm' | 'tcg'): Promise<{ proc: ChildProcess; api: ApiClient }> {
  const socket = path.join(dir, 'vmlet.sock');
  const config = path.join(dir, 'config.yaml');
  // Its own cgroup parent, so that what is left can be found and removed.
  fs.writeFileSync(config, `cgroupParent: ${path.basename(dir)}\n`);
  const proc = spawn(process.execPath, [path.join(root, 'dist', 'cli', 'main.js'), 'daemon', '--config', config, '--socket', socket,
    '--state-dir', path.join(dir, 'state'), '--run-dir', path.join(dir, 'run'), '--accel', accel], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, VMLET_LOG_LEVEL: 'warn' } });
  const api = new ApiClient({ socketPath: socket });
  const until = Date.now() + 30_000;
  for (;;) {
    try {
      await api.call('GET', '/healthz');
      return { proc, api };
    } catch (e) {
      if (Date.now() > until) throw e;
      await sleep(50);
    }
  }
}

function statusKiB(pid: number, field: string): number {
  const m = new RegExp(`${field}:\\s+(\\d+)`).exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

const avg = (xs: number[]): number => (xs.length === 0 ? NaN : +(xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(1));

/** Creates VMI `name`, waits for Running, pauses it and waits until the Paused condition shows. */
async function startPaused(api: ApiClient, name: string, accel: 'kvm' | 'tcg'): Promise<void> {
  const ac = new AbortController();
  const running = waitPhase(api, name, 'Running', ac.signal);
  await api.call('POST', paths.list('virtualmachineinstances', 'default'), { body: vmiManifest(name, accel) });
  await running;
  ac.abort();
  await api.call('PUT', paths.subresource('virtualmachineinstances', 'default', name, 'pause'));
  const until = Date.now() + 30_000;
  for (;;) {
    const v = (await api.call('GET', paths.object('virtualmachineinstances', 'default', name))) as VmiView;
    if (v.status?.conditions?.some((c) => c.type === 'Paused' && c.status === 'True')) return;
    if (Date.now() > until) throw new Error(`${name} did not pause`);
    await sleep(50);
  }
}

async function pids(api: ApiClient, name: string): Promise<{ qemu: number; launcher: number }> {
  const v = (await api.call('GET', paths.object('virtualmachineinstances', 'default', name))) as VmiView;
  const q = v.status?.vmlet?.qemuPid;
  const l = v.status?.vmlet?.launcherPid;
  if (!q || !l) throw new Error(`${name} has no qemu/launcher pid in its status`);
  return { qemu: q, launcher: l };
}

function removeCgroups(parent: string): void {
  for (const h of fs.readdirSync('/sys/fs/cgroup').map((d) => path.join('/sys/fs/cgroup', d))) {
    const dir = path.join(h, parent);
    if (!fs.existsSync(dir)) continue;
    const rm = (d: string): void => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) rm(path.join(d, e.name));
      try { fs.rmdirSync(d); } catch { /* busy or gone */ }
    };
    rm(dir);
  }
}

export async function run(opts: { json: boolean; args?: string[] }): Promise<void> {
  const args = opts.args ?? [];
  const i = args.indexOf('--counts');
  const counts = (i >= 0 ? (args[i + 1] ?? '') : '1,10,50').split(',').map(Number).filter((n) => n > 0).sort((a, b) => a - b);
  const accel: 'kvm' | 'tcg' = (await checkKvm()).usable ? 'kvm' : 'tcg';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-bench-overhead-'));
  const { proc: daemon, api } = await startDaemon(dir, accel);
  const names: string[] = [];
  try {
    // Warm up (page cache, probe cache, the daemon's lazily loaded modules), then measure the idle daemon.
    await startPaused(api, 'warm', accel);
    await vmletDelete(api, 'warm');
    await sleep(1000);
    const rss0 = rssKiB(daemon.pid!);
    const rows = [];
    for (const n of counts) {
      while (names.length < n) {
        const batch = Array.from({ length: Math.min(10, n - names.length) }, (_, k) => `vm-${names.length + k}`);
        await Promise.all(batch.map((name) => startPaused(api, name, accel)));
        names.push(...batch);
      }
      await sleep(1000);
      const rssN = rssKiB(daemon.pid!);
      const ps = await Promise.all(names.map((name) => pids(api, name)));
      const launcher = avg(ps.map((p) => rssKiB(p.launcher)));
      const growth = +((rssN - rss0) / n).toFixed(1);
      rows.push({
        vms: n,
        daemon_rss_kib: rssN,
        daemon_growth_per_vm_kib: growth,
        launcher_rss_kib: launcher,
        management_per_vm_kib: +(launcher + growth).toFixed(1),
        qemu_rss_kib: avg(ps.map((p) => rssKiB(p.qemu))),
        qemu_rss_anon_kib: avg(ps.map((p) => statusKiB(p.qemu, 'RssAnon'))),
        qemu_rss_file_kib: avg(ps.map((p) => statusKiB(p.qemu, 'RssFile'))),
      });
    }
    const result = {
      accel,
      vm: '64 MiB, 1 vCPU, no disk, paused right after Running (the guest touched only what SeaBIOS did, so QEMU RSS ≈ QEMU overhead)',
      daemon_rss_kib_0_vms: rss0,
      rows,
      kubevirt_per_vm_reserved_kib: 240 * 1024,
    };
    if (opts.json) console.log(JSON.stringify(result));
    else {
      console.log(`per-VM overhead, ${accel}, ${result.vm}`);
      console.log(`daemon RSS with 0 VMs: ${rss0} KiB`);
      console.log('  VMs  daemon KiB  growth/VM  launcher  mgmt/VM   QEMU RSS  anon      file');
      for (const r of rows) {
        console.log(`${String(r.vms).padStart(5)}  ${String(r.daemon_rss_kib).padStart(10)}  ${String(r.daemon_growth_per_vm_kib).padStart(9)}  ${String(r.launcher_rss_kib).padStart(8)}  ${String(r.management_per_vm_kib).padStart(7)}  ${String(r.qemu_rss_kib).padStart(9)}  ${String(r.qemu_rss_anon_kib).padStart(8)}  ${String(r.qemu_rss_file_kib).padStart(8)}`);
      }
      console.log('(KiB; mgmt/VM = launcher RSS + daemon growth per VM; KubeVirt reserves 240 MiB per VM for its management processes)');
    }
  } finally {
    // Delete through the API (removes run dirs and cgroups), bounded; then end whatever is left.
    await Promise.race([
      Promise.all(names.map((name) => vmletDelete(api, name).catch(() => undefined))),
      sleep(60_000),
    ]);
    daemon.kill('SIGTERM');
    await Promise.race([new Promise((r) => daemon.once('exit', r)), sleep(10_000)]);
    for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
      try {
        if (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) process.kill(Number(pid), 'SIGKILL');
      } catch { /* gone */ }
    }
    await sleep(500);
    try { removeCgroups(path.basename(dir)); } catch { /* no cgroup fs */ }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
