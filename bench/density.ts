// Density: as many paused VMs as fit in 12 GiB (at least 100) through vmlet, and through libvirt for comparison.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { paths } from '../src/cli/client.js';
import { startLibvirt } from './libvirt.js';
import { avg, benchAccel, percentile, progress, rssKiB, sleep, startDaemon, startPaused, vmPids } from './support.js';

const BUDGET_KIB = 12 * 1024 * 1024;

/** utime + stime of a process, in ms. */
function cpuMs(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1000) / 100;
}

async function inBatches<T>(items: T[], size: number, fn: (x: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

export async function run(opts: { json: boolean; args?: string[] }): Promise<void> {
  const args = opts.args ?? [];
  const flag = (f: string): number | undefined => (args.includes(f) ? Number(args[args.indexOf(f) + 1]) : undefined);
  const idleMs = (flag('--idle-seconds') ?? 30) * 1000;
  const accel = await benchAccel();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-bench-density-'));
  const bd = await startDaemon(dir, accel);
  const { proc: daemon, api } = bd;
  const names: string[] = [];
  const result: Record<string, unknown> = { accel, vm: '64 MiB, 1 vCPU, no disk, paused' };
  try {
    await startPaused(api, 'probe');
    names.push('probe');
    await sleep(500);
    const rss0 = rssKiB(daemon.pid!);
    const p = await vmPids(api, 'probe');
    const perVm = rssKiB(p.qemu) + rssKiB(p.launcher) + 1024;
    const count = flag('--count') ?? Math.max(100, Math.min(300, Math.floor(BUDGET_KIB / perVm)));
    const todo = Array.from({ length: count - 1 }, (_, i) => `vm-${i}`);
    const t0 = performance.now();
    progress(`density: starting ${count} paused VMs in batches of 10`);
    await inBatches(todo, 10, async (n) => {
      await startPaused(api, n);
      names.push(n);
      if (names.length % 10 === 0) progress(`density: ${names.length}/${count} paused`);
    });
    const allUpMs = performance.now() - t0;
    await sleep(1000);
    const rssN = rssKiB(daemon.pid!);
    const pids = await Promise.all(names.map((n) => vmPids(api, n)));
    const launcher = avg(pids.map((x) => rssKiB(x.launcher)));
    // QMP through the daemon while all of them run.
    const rtt: number[] = [];
    for (let i = 0; i < 300; i++) {
      const n = names[i % names.length]!;
      const s = performance.now();
      await api.call('POST', paths.subresource('virtualmachineinstances', 'default', n, 'qmp'), { body: { execute: 'query-status' } });
      rtt.push(performance.now() - s);
    }
    progress(`density: measuring the daemon's idle CPU for ${idleMs / 1000} s`);
    const c0 = cpuMs(daemon.pid!);
    await sleep(idleMs);
    const idleCpu = cpuMs(daemon.pid!) - c0;
    Object.assign(result, {
      vms: names.length,
      all_paused_ms: +allUpMs.toFixed(0),
      daemon_rss_kib: { vms_1: rss0, [`vms_${names.length}`]: rssN },
      management_per_vm_kib: +(launcher + (rssN - rss0) / (names.length - 1)).toFixed(1),
      qemu_rss_kib: avg(pids.map((x) => rssKiB(x.qemu))),
      qmp_via_api_p50_ms: +percentile(rtt, 50).toFixed(2),
      qmp_via_api_p99_ms: +percentile(rtt, 99).toFixed(2),
      daemon_cpu_ms_idle: { seconds: idleMs / 1000, cpu_ms: +idleCpu.toFixed(0) },
    });
  } finally {
    await bd.close(names);
  }
  if (!args.includes('--no-libvirt')) {
    const n = result['vms'] as number;
    const lv = await startLibvirt(accel);
    const doms = Array.from({ length: n }, (_, i) => `dens-${i}`);
    try {
      const rss0 = rssKiB(lv.pid);
      const t0 = performance.now();
      progress(`density: ${n} paused libvirt domains`);
      await inBatches(doms, 10, async (d) => {
        await lv.start(d, { paused: true });
      });
      const allUp = performance.now() - t0;
      await sleep(1000);
      const rssN = rssKiB(lv.pid);
      const c0 = cpuMs(lv.pid);
      await sleep(idleMs);
      result['libvirt'] = {
        vms: n,
        all_paused_ms: +allUp.toFixed(0),
        libvirtd_rss_kib: { vms_0: rss0, [`vms_${n}`]: rssN },
        libvirtd_growth_per_vm_kib: +((rssN - rss0) / n).toFixed(1),
        libvirtd_cpu_ms_idle: { seconds: idleMs / 1000, cpu_ms: +(cpuMs(lv.pid) - c0).toFixed(0) },
      };
    } finally {
      await inBatches(doms, 20, (d) => lv.destroy(d));
      await lv.stop();
    }
  }
  if (opts.json) console.log(JSON.stringify(result));
  else console.log(JSON.stringify(result, null, 2));
}
