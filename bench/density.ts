// Density: as many paused VMs as fit in 12 GiB (at least 100) through vmlet, and through libvirt for comparison, both measured the same way from 0 VMs.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { paths } from '../src/cli/client.js';
import { startLibvirt } from './libvirt.js';
import { HeapProbe } from './heap-account.js';
import { avg, benchAccel, percentile, progress, rssKiB, settledRssKiB, sleep, startDaemon, startPaused, threadsCpuMs, vmletDelete, vmPids } from './support.js';

const BUDGET_KIB = 12 * 1024 * 1024;

async function inBatches<T>(items: T[], size: number, fn: (x: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

/** What one side (vmlet or libvirt) offers the measurement. */
interface SideOps {
  label: string;
  pid: number;
  start(name: string): Promise<void>;
  stop(name: string): Promise<void>;
  /** Work done once all VMs are paused and before the idle windows (vmlet: QMP through the API). */
  busy?(): Promise<void>;
  /** A full garbage collection in the process (vmlet: through the bench probe); nothing for libvirtd, which has none. */
  collect?(label: string): Promise<void>;
}

/**
 * Both sides go through the same steps: boot, one VM started and removed (warm-up, so lazily loaded code and
 * first-use caches are not counted per VM), N paused VMs, two idle windows. A garbage-collected daemon's RSS
 * after a burst of work still holds garbage and a grown young generation until V8's memory reducer collects,
 * some seconds to minutes later; so each RSS is read as it is and again after a full GC (`rss_after_gc_kib`),
 * the state the reducer reaches by itself. The GC at N VMs comes after the idle windows, so it does not spare
 * them a collection.
 */
interface Side {
  vms: number;
  all_paused_ms: number;
  rss_kib: Record<string, number>;
  rss_after_gc_kib: Record<string, number>;
  /** (RSS with N after the idle windows − RSS with 0 after the warm-up VM) / N, both after a full GC. */
  growth_per_vm_kib: number;
  /** (RSS 2 s after the last start − RSS with 0 after the warm-up VM) / N, as they are: what the garbage of the starts still holds included. */
  growth_per_vm_after_starts_kib: number;
  /** From the RSS at boot, before any VM, after a full GC: one-time costs of the first VM included. */
  growth_per_vm_from_boot_kib: number;
  /** CPU of all threads (schedstat): the first idle window right after the starts (and vmlet's QMP calls), then the next one. */
  cpu_ms_idle: { seconds: number; cpu_ms: number; next_window_cpu_ms: number };
}

async function measureSide(ops: SideOps, count: number, settleMs: number, idleMs: number): Promise<Side> {
  const rss: Record<string, number> = {};
  const gcd: Record<string, number> = {};
  const read = async (key: string, collect: boolean): Promise<void> => {
    rss[key] = await settledRssKiB(ops.pid);
    if (!collect) return;
    if (ops.collect) {
      await ops.collect(key);
      await sleep(500);
    }
    gcd[key] = await settledRssKiB(ops.pid);
  };
  await sleep(settleMs);
  await read('vms_0_boot', true);
  await ops.start('warm');
  await ops.stop('warm');
  await sleep(settleMs);
  await read('vms_0', true);
  const t0 = performance.now();
  progress(`density: ${count} paused VMs through ${ops.label}, in batches of 10`);
  let up = 0;
  await inBatches(
    Array.from({ length: count }, (_, i) => `vm-${i}`),
    10,
    async (n) => {
      await ops.start(n);
      if (++up % 10 === 0) progress(`density: ${ops.label} ${up}/${count} paused`);
    },
  );
  const allUpMs = performance.now() - t0;
  await sleep(2000);
  await read(`vms_${count}_after_starts`, false);
  await ops.busy?.();
  progress(`density: ${ops.label}'s idle CPU, 2 × ${idleMs / 1000} s`);
  const c0 = threadsCpuMs(ops.pid);
  await sleep(idleMs);
  const c1 = threadsCpuMs(ops.pid);
  await sleep(idleMs);
  const c2 = threadsCpuMs(ops.pid);
  await read(`vms_${count}`, true);
  const per = (a: number | undefined, b: number | undefined): number => +(((a ?? NaN) - (b ?? NaN)) / count).toFixed(1);
  return {
    vms: count,
    all_paused_ms: +allUpMs.toFixed(0),
    rss_kib: rss,
    rss_after_gc_kib: gcd,
    growth_per_vm_kib: per(gcd[`vms_${count}`], gcd['vms_0']),
    growth_per_vm_after_starts_kib: per(rss[`vms_${count}_after_starts`], rss['vms_0']),
    growth_per_vm_from_boot_kib: per(gcd[`vms_${count}`], gcd['vms_0_boot']),
    cpu_ms_idle: { seconds: idleMs / 1000, cpu_ms: +(c1 - c0).toFixed(1), next_window_cpu_ms: +(c2 - c1).toFixed(1) },
  };
}

export async function run(opts: { json: boolean; args?: string[] }): Promise<void> {
  const args = opts.args ?? [];
  // The per-VM heap account (bench/heap-account.ts) instead of the comparison, with the same --count.
  if (args.includes('--heap'))
    return (await import('./heap-account.js')).run({ json: opts.json, args: [...args, ...(args.includes('--count') ? [] : ['--count', '100'])] });
  const flag = (f: string): number | undefined => (args.includes(f) ? Number(args[args.indexOf(f) + 1]) : undefined);
  const idleMs = (flag('--idle-seconds') ?? 30) * 1000;
  const settleMs = (flag('--settle-seconds') ?? 10) * 1000;
  // Extra Node options for the daemon, e.g. --node-args=--max-semi-space-size=1 (what a unit file could pass).
  const nodeArgs = args.filter((a) => a.startsWith('--node-args=')).flatMap((a) => a.slice('--node-args='.length).split(' ').filter(Boolean));
  const accel = await benchAccel();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-bench-density-'));
  // The probe (bench/heap-account.ts) only answers the full GCs asked for below; it holds a few hundred KiB, the same at every reading.
  const probe = new HeapProbe(dir);
  const bd = await startDaemon(dir, accel, { nodeArgs: [...probe.nodeArgs(), ...nodeArgs] });
  const { proc: daemon, api } = bd;
  const names = new Set<string>();
  const result: Record<string, unknown> = { accel, vm: '64 MiB, 1 vCPU, no disk, paused', ...(nodeArgs.length > 0 ? { daemon_node_args: nodeArgs } : {}) };
  let count = flag('--count');
  try {
    if (count === undefined) {
      // As many as fit the budget, judged by one VM's processes.
      await startPaused(api, 'size');
      const p = await vmPids(api, 'size');
      count = Math.max(100, Math.min(300, Math.floor(BUDGET_KIB / (rssKiB(p.qemu) + rssKiB(p.launcher) + 1024))));
      await vmletDelete(api, 'size');
    }
    const rtt: number[] = [];
    const side = await measureSide(
      {
        label: 'vmlet',
        pid: daemon.pid!,
        start: async (n) => {
          names.add(n);
          await startPaused(api, n);
        },
        stop: async (n) => {
          await vmletDelete(api, n);
          names.delete(n);
        },
        collect: async (label) => {
          await probe.request(daemon.pid!, 'figures', label);
        },
        busy: async () => {
          // QMP through the daemon while all of them run.
          for (let i = 0; i < 300; i++) {
            const s = performance.now();
            await api.call('POST', paths.subresource('virtualmachineinstances', 'default', `vm-${i % count!}`, 'qmp'), { body: { execute: 'query-status' } });
            rtt.push(performance.now() - s);
          }
        },
      },
      count,
      settleMs,
      idleMs,
    );
    const pids = await Promise.all([...names].map((n) => vmPids(api, n)));
    const launcher = avg(pids.map((x) => rssKiB(x.launcher)));
    Object.assign(result, {
      vms: count,
      vmlet: {
        ...side,
        launcher_rss_kib: launcher,
        management_per_vm_kib: {
          value: +(launcher + side.growth_per_vm_kib).toFixed(1),
          what: 'daemon growth per VM + the RSS of one vmlet-launch (a per-VM process libvirt does not have; QEMU not included)',
        },
        qemu_rss_kib: avg(pids.map((x) => rssKiB(x.qemu))),
        qmp_via_api_p50_ms: +percentile(rtt, 50).toFixed(2),
        qmp_via_api_p99_ms: +percentile(rtt, 99).toFixed(2),
      },
    });
  } finally {
    await bd.close([...names]);
  }
  if (!args.includes('--no-libvirt')) {
    const lv = await startLibvirt(accel);
    const doms = new Set<string>();
    try {
      const side = await measureSide(
        {
          label: 'libvirt',
          pid: lv.pid,
          start: async (d) => {
            doms.add(d);
            await lv.start(d, { paused: true });
          },
          stop: async (d) => {
            await lv.destroy(d);
            doms.delete(d);
          },
        },
        count,
        settleMs,
        idleMs,
      );
      result['libvirt'] = { ...side, management_per_vm_kib: { value: side.growth_per_vm_kib, what: 'libvirtd growth per VM (QEMU not included)' } };
      const v = result['vmlet'] as Side;
      result['per_vm_vs_libvirtd'] = +(v.growth_per_vm_kib / side.growth_per_vm_kib).toFixed(2);
      result['per_vm_vs_libvirtd_after_starts'] = +(v.growth_per_vm_after_starts_kib / side.growth_per_vm_after_starts_kib).toFixed(2);
    } finally {
      await inBatches([...doms], 20, (d) => lv.destroy(d));
      await lv.stop();
    }
  }
  if (opts.json) console.log(JSON.stringify(result));
  else {
    console.log(JSON.stringify(result, null, 2));
    summary(result);
  }
}

function summary(r: Record<string, unknown>): void {
  const v = r['vmlet'] as (Side & { launcher_rss_kib: number }) | undefined;
  const l = r['libvirt'] as Side | undefined;
  if (!v) return;
  const n = v.vms;
  const row = (what: string, a: string | number | undefined, b: string | number | undefined): void =>
    console.log(`${what.padEnd(52)} ${String(a ?? '—').padStart(10)} ${String(b ?? '—').padStart(10)}`);
  const both = (k: string, x: Side | undefined): string | undefined =>
    x && x.rss_kib[k] !== undefined
      ? `${x.rss_kib[k]}${x.rss_after_gc_kib[k] !== undefined && x.rss_after_gc_kib[k] !== x.rss_kib[k] ? ` / ${x.rss_after_gc_kib[k]}` : ''}`
      : undefined;
  console.log(`\ndensity, ${String(r['accel'])}, ${n} paused VMs (KiB, ms; RSS as is / after a full GC)       vmlet    libvirt`);
  row('RSS at boot, no VM', both('vms_0_boot', v), both('vms_0_boot', l));
  row('RSS with no VM, after a warm-up VM', both('vms_0', v), both('vms_0', l));
  row(`RSS with ${n} VMs, 2 s after the last start`, both(`vms_${n}_after_starts`, v), both(`vms_${n}_after_starts`, l));
  row(`RSS with ${n} VMs, after the idle windows`, both(`vms_${n}`, v), both(`vms_${n}`, l));
  row('growth per VM (after a full GC)', v.growth_per_vm_kib, l?.growth_per_vm_kib);
  row('growth per VM (as is, 2 s after the last start)', v.growth_per_vm_after_starts_kib, l?.growth_per_vm_after_starts_kib);
  row('growth per VM from boot (after a full GC)', v.growth_per_vm_from_boot_kib, l?.growth_per_vm_from_boot_kib);
  row('+ vmlet-launch RSS per VM', v.launcher_rss_kib, l ? 0 : undefined);
  row(`idle CPU, first ${v.cpu_ms_idle.seconds} s after the starts`, v.cpu_ms_idle.cpu_ms, l?.cpu_ms_idle.cpu_ms);
  row(`idle CPU, the next ${v.cpu_ms_idle.seconds} s`, v.cpu_ms_idle.next_window_cpu_ms, l?.cpu_ms_idle.next_window_cpu_ms);
  row('all paused after', v.all_paused_ms, l?.all_paused_ms);
  if (r['per_vm_vs_libvirtd'] !== undefined) {
    console.log(
      `per_vm_vs_libvirtd (daemon growth per VM ÷ libvirtd's): ${String(r['per_vm_vs_libvirtd'])} after a full GC, ${String(r['per_vm_vs_libvirtd_after_starts'])} as is 2 s after the starts`,
    );
  }
}
