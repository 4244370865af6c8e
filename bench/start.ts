// create → Running latency of a small VM through vmlet against raw QEMU (the floor) and libvirt, plus the daemon's RSS with 0 and N VMs.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Spawned } from '../src/sys/spawn.js';
import { startRawQemu, stopRawQemu } from './raw-qemu.js';
import { startLibvirt, type Libvirt } from './libvirt.js';
import { benchAccel, hostBusyMs, percentile, progress, rssKiB, startDaemon, vmletDelete, vmletStart } from './support.js';
import type { ApiClient } from '../src/cli/client.js';
import type { Accel } from '../src/api/vocabulary.js';

/** The floor, as the other benchmarks take it (raw-qemu.ts). */
function rawStart(dir: string, accel: Accel, i: number): Promise<{ ms: number; qemu: Spawned }> {
  return startRawQemu({ sock: path.join(dir, `raw-${i}.qmp`), accel });
}

/**
 * `n` starts asked for at once; each one's time from that moment to running. Every start is timed on this one clock
 * (not from its own request): a harness that spawns is busy while it does, and a start asked for at once but spawned
 * later waited for it.
 */
async function burst<T>(n: number, start: (i: number) => Promise<T>): Promise<{ ms: number[]; wall: number; results: T[] }> {
  const t0 = performance.now();
  const ms: number[] = [];
  const results = await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const r = await start(i);
      ms[i] = performance.now() - t0;
      return r;
    }),
  );
  return { ms, wall: performance.now() - t0, results };
}

export async function run(opts: { json: boolean; args?: string[] }): Promise<void> {
  const args = opts.args ?? [];
  const num = (flag: string, def: number): number => {
    const i = args.indexOf(flag);
    return i >= 0 ? Number(args[i + 1]) : def;
  };
  const sequential = num('--sequential', 20);
  const concurrent = num('--concurrent', 50);
  const accel = await benchAccel();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-bench-start-'));
  const bd = await startDaemon(dir, accel);
  const { proc: daemon, api } = bd;
  // The same daemon with QEMU kept root (no user switch, no private mount namespace): what the confinement costs.
  const rootDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-bench-start-root-'));
  const asRoot = await startDaemon(rootDir, accel, { qemuUser: 'root', network: false });
  const noLibvirt = args.includes('--no-libvirt');
  const libvirt: Libvirt | undefined = noLibvirt ? undefined : await startLibvirt(accel);
  try {
    // Warm both paths once (page cache, probe cache).
    await stopRawQemu((await rawStart(dir, accel, -1)).qemu);
    await vmletStart(api, 'warm');
    await vmletDelete(api, 'warm');
    await vmletStart(api, 'warm-net', true);
    await vmletDelete(api, 'warm-net');
    await vmletStart(asRoot.api, 'warm');
    await vmletDelete(asRoot.api, 'warm');
    if (libvirt) {
      await libvirt.start('warm');
      await libvirt.destroy('warm');
    }
    await new Promise((r) => setTimeout(r, 500));
    const rss0 = rssKiB(daemon.pid!);

    const raw: number[] = [];
    const vml: number[] = [];
    const lv: number[] = [];
    const vmlNet: number[] = [];
    const vmlRoot: number[] = [];
    // the host's CPU time per start (every process and the kernel): what a start costs once all cores are busy
    const rawCpu: number[] = [];
    const vmlCpu: number[] = [];
    progress(`sequential: ${sequential} rounds of ${libvirt ? 'libvirt, ' : ''}raw QEMU, vmlet, vmlet with a NIC`);
    for (let i = 0; i < sequential; i++) {
      progress(`sequential ${i + 1}/${sequential}`);
      if (libvirt) {
        lv.push(await libvirt.start(`seq-${i}`));
        await libvirt.destroy(`seq-${i}`);
      }
      let busy = hostBusyMs();
      const r = await rawStart(dir, accel, i);
      rawCpu.push(hostBusyMs() - busy);
      raw.push(r.ms);
      await stopRawQemu(r.qemu);
      busy = hostBusyMs();
      vml.push(await vmletStart(api, `seq-${i}`));
      vmlCpu.push(hostBusyMs() - busy);
      await vmletDelete(api, `seq-${i}`);
      // The same VM with KubeVirt's default NIC: masquerade in its own netns sandbox, tap by fd, DHCP.
      vmlNet.push(await vmletStart(api, `net-${i}`, true));
      await vmletDelete(api, `net-${i}`);
      vmlRoot.push(await vmletStart(asRoot.api, `root-${i}`));
      await vmletDelete(asRoot.api, `root-${i}`);
    }

    const traces = await startTraceSteps(api);
    const rootTraces = await startTraceSteps(asRoot.api);

    progress(`concurrent: ${concurrent} raw QEMU at once`);
    const rawBurst = await burst(concurrent, (i) => rawStart(dir, accel, 1000 + i));
    const rawStarts = rawBurst.results;
    await Promise.all(rawStarts.map((r) => stopRawQemu(r.qemu)));
    const [rawC, rawConcurrentWall] = [rawBurst.ms, rawBurst.wall];
    progress(`concurrent: ${concurrent} vmlet VMIs at once`);
    const { ms: vmlC, wall: vmletConcurrentWall } = await burst(concurrent, (i) => vmletStart(api, `con-${i}`));
    const concurrentTrace = (await startTraceSteps(api))('con-');
    await new Promise((r) => setTimeout(r, 500));
    const rssN = rssKiB(daemon.pid!);
    await Promise.all(Array.from({ length: concurrent }, (_, i) => vmletDelete(api, `con-${i}`)));
    let lvC: number[] = [];
    let libvirtConcurrentWall = NaN;
    if (libvirt) {
      progress(`concurrent: ${concurrent} libvirt domains at once`);
      ({ ms: lvC, wall: libvirtConcurrentWall } = await burst(concurrent, (i) => libvirt.start(`con-${i}`)));
      await Promise.all(Array.from({ length: concurrent }, (_, i) => libvirt.destroy(`con-${i}`)));
    }

    const med = (xs: number[]): number => percentile(xs, 50);
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
    const result = {
      accel,
      sequential: {
        n: sequential,
        vmlet_p50_ms: +med(vml).toFixed(1),
        vmlet_p95_ms: +percentile(vml, 95).toFixed(1),
        raw_p50_ms: +med(raw).toFixed(1),
        raw_p95_ms: +percentile(raw, 95).toFixed(1),
        ratio_vs_raw: +(med(vml) / med(raw)).toFixed(2),
        ...(libvirt
          ? { libvirt_p50_ms: +med(lv).toFixed(1), libvirt_p95_ms: +percentile(lv, 95).toFixed(1), ratio_vs_libvirt: +(med(vml) / med(lv)).toFixed(2) }
          : {}),
      },
      qemu_confinement: {
        n: sequential,
        qemu_root_p50_ms: +med(vmlRoot).toFixed(1),
        confined_p50_ms: +med(vml).toFixed(1),
        added_p50_ms: +(med(vml) - med(vmlRoot)).toFixed(1),
      },
      sequential_with_nic: {
        n: sequential,
        vmlet_p50_ms: +med(vmlNet).toFixed(1),
        vmlet_p95_ms: +percentile(vmlNet, 95).toFixed(1),
        sandbox_added_p50_ms: +(med(vmlNet) - med(vml)).toFixed(1),
        ratio_vs_raw: +(med(vmlNet) / med(raw)).toFixed(2),
        ...(libvirt ? { ratio_vs_libvirt: +(med(vmlNet) / med(lv)).toFixed(2) } : {}),
      },
      concurrent: {
        n: concurrent,
        vmlet_p50_ms: +med(vmlC).toFixed(1),
        vmlet_p95_ms: +percentile(vmlC, 95).toFixed(1),
        vmlet_wall_ms: +vmletConcurrentWall.toFixed(1),
        raw_p50_ms: +med(rawC).toFixed(1),
        raw_p95_ms: +percentile(rawC, 95).toFixed(1),
        raw_wall_ms: +rawConcurrentWall.toFixed(1),
        // each QEMU from its own spawn, as this benchmark timed it before December 2026 (for comparison only)
        raw_from_own_spawn_p50_ms: +med(rawStarts.map((r) => r.ms)).toFixed(1),
        ratio_vs_raw: +(med(vmlC) / med(rawC)).toFixed(2),
        ...(libvirt
          ? {
              libvirt_p50_ms: +med(lvC).toFixed(1),
              libvirt_p95_ms: +percentile(lvC, 95).toFixed(1),
              libvirt_wall_ms: +libvirtConcurrentWall.toFixed(1),
              ratio_vs_libvirt: +(med(vmlC) / med(lvC)).toFixed(2),
            }
          : {}),
      },
      host_cpu_per_start_ms: {
        n: sequential,
        vmlet_mean: +mean(vmlCpu).toFixed(1),
        raw_mean: +mean(rawCpu).toFixed(1),
        ratio_vs_raw: +(mean(vmlCpu) / mean(rawCpu)).toFixed(2),
      },
      start_trace_p50_ms: { no_nic: traces('seq-'), with_nic: traces('net-'), qemu_root: rootTraces('root-'), concurrent: concurrentTrace },
      daemon_rss_kib: { vms_0: rss0, [`vms_${concurrent}`]: rssN, per_vm: +((rssN - rss0) / concurrent).toFixed(1) },
      libvirt: libvirt ? 'virsh create until domstate is running, private libvirtd' : 'skipped (--no-libvirt)',
    };
    if (opts.json) console.log(JSON.stringify(result));
    else {
      console.log(`create → Running, ${accel}, same VM (64 MiB, 1 vCPU, no disk; no NIC unless +NIC)`);
      console.log('                    p50 ms    p95 ms   ratio vs raw');
      console.log(
        `sequential vmlet  ${result.sequential.vmlet_p50_ms.toString().padStart(8)}  ${result.sequential.vmlet_p95_ms.toString().padStart(8)}   ${result.sequential.ratio_vs_raw}`,
      );
      console.log(`sequential raw    ${result.sequential.raw_p50_ms.toString().padStart(8)}  ${result.sequential.raw_p95_ms.toString().padStart(8)}`);
      console.log(
        `sequential vmlet+NIC ${result.sequential_with_nic.vmlet_p50_ms.toString().padStart(5)}  ${result.sequential_with_nic.vmlet_p95_ms.toString().padStart(8)}   ${result.sequential_with_nic.ratio_vs_raw}   (sandbox adds ${result.sequential_with_nic.sandbox_added_p50_ms} ms at p50)`,
      );
      console.log(
        `sequential vmlet, QEMU as root ${result.qemu_confinement.qemu_root_p50_ms}   (QEMU's user, capabilities and mount namespace add ${result.qemu_confinement.added_p50_ms} ms at p50)`,
      );
      console.log(
        `${concurrent} concurrent vmlet ${result.concurrent.vmlet_p50_ms.toString().padStart(7)}  ${result.concurrent.vmlet_p95_ms.toString().padStart(8)}   ${result.concurrent.ratio_vs_raw}`,
      );
      console.log(
        `${concurrent} concurrent raw   ${result.concurrent.raw_p50_ms.toString().padStart(7)}  ${result.concurrent.raw_p95_ms.toString().padStart(8)}   (each from its own spawn: p50 ${result.concurrent.raw_from_own_spawn_p50_ms})`,
      );
      console.log(`  (concurrent rows: each start from the moment all ${concurrent} were asked for)`);
      if (libvirt) {
        console.log(
          `sequential libvirt ${med(lv).toFixed(1).padStart(7)}  ${percentile(lv, 95).toFixed(1).padStart(8)}   vmlet/libvirt ${(med(vml) / med(lv)).toFixed(2)}`,
        );
        console.log(
          `${concurrent} concurrent libvirt ${med(lvC).toFixed(1).padStart(5)}  ${percentile(lvC, 95).toFixed(1).padStart(8)}   vmlet/libvirt ${(med(vmlC) / med(lvC)).toFixed(2)}`,
        );
      }
      console.log('start trace, p50 ms since the POST arrived (GET /debug/start-traces):');
      const withNic = result.start_trace_p50_ms.with_nic;
      for (const [step, ms] of Object.entries(result.start_trace_p50_ms.no_nic)) console.log(`  ${step.padEnd(20)} ${String(ms).padStart(8)}`);
      console.log('  with a NIC:');
      for (const [step, ms] of Object.entries(withNic)) console.log(`  ${step.padEnd(20)} ${String(ms).padStart(8)}`);
      console.log(`  ${concurrent} concurrent:`);
      for (const [step, ms] of Object.entries(concurrentTrace)) console.log(`  ${step.padEnd(20)} ${String(ms).padStart(8)}`);
      const cpu = result.host_cpu_per_start_ms;
      console.log(
        `host CPU per start (every process and the kernel, mean of ${sequential}): vmlet ${cpu.vmlet_mean} ms, raw ${cpu.raw_mean} ms, ${cpu.ratio_vs_raw}× (the concurrent ratio's floor once every core is busy)`,
      );
      console.log(`daemon RSS: ${rss0} KiB with 0 VMs, ${rssN} KiB with ${concurrent} VMs`);
    }
  } finally {
    await libvirt?.stop();
    await bd.close([]);
    await asRoot.close([]);
  }
}

/** The daemon's start traces, as a function: name prefix → each step's median time since the POST (in first-seen order). */
async function startTraceSteps(api: ApiClient): Promise<(prefix: string) => Record<string, number>> {
  const body = await api.call('GET', '/debug/start-traces');
  const items = (body as { items?: Array<{ name: string; steps: Array<[string, number]> }> }).items ?? [];
  return (prefix) => {
    const by = new Map<string, number[]>();
    for (const t of items.filter((x) => x.name.startsWith(prefix))) {
      for (const [step, ms] of t.steps) by.set(step, [...(by.get(step) ?? []), ms]);
    }
    return Object.fromEntries([...by].map(([step, xs]) => [step, +percentile(xs, 50).toFixed(2)]));
  };
}
