// Per-VM management overhead of vmlet (launcher RSS + the daemon's RSS growth per VM) and QEMU's RSS, for 1, 10 and 50 paused 64 MiB VMs.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { avg, benchAccel, progress, rssKiB, sleep, startDaemon, startPaused, statusKiB, vmletDelete, vmPids } from './support.js';

export async function run(opts: { json: boolean; args?: string[] }): Promise<void> {
  const args = opts.args ?? [];
  const i = args.indexOf('--counts');
  const counts = (i >= 0 ? (args[i + 1] ?? '') : '1,10,50')
    .split(',')
    .map(Number)
    .filter((n) => n > 0)
    .sort((a, b) => a - b);
  const accel = await benchAccel();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-bench-overhead-'));
  const bd = await startDaemon(dir, accel);
  const { proc: daemon, api } = bd;
  const names: string[] = [];
  try {
    // Warm up (page cache, probe cache, the daemon's lazily loaded modules), then measure the idle daemon.
    await startPaused(api, 'warm');
    await vmletDelete(api, 'warm');
    await sleep(1000);
    const rss0 = rssKiB(daemon.pid!);
    const rows = [];
    for (const n of counts) {
      progress(`overhead: ${n} paused VMs`);
      while (names.length < n) {
        const batch = Array.from({ length: Math.min(10, n - names.length) }, (_, k) => `vm-${names.length + k}`);
        await Promise.all(batch.map((name) => startPaused(api, name)));
        names.push(...batch);
      }
      await sleep(1000);
      const rssN = rssKiB(daemon.pid!);
      const ps = await Promise.all(names.map((name) => vmPids(api, name)));
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
        console.log(
          `${String(r.vms).padStart(5)}  ${String(r.daemon_rss_kib).padStart(10)}  ${String(r.daemon_growth_per_vm_kib).padStart(9)}  ${String(r.launcher_rss_kib).padStart(8)}  ${String(r.management_per_vm_kib).padStart(7)}  ${String(r.qemu_rss_kib).padStart(9)}  ${String(r.qemu_rss_anon_kib).padStart(8)}  ${String(r.qemu_rss_file_kib).padStart(8)}`,
        );
      }
      console.log('(KiB; mgmt/VM = launcher RSS + daemon growth per VM; KubeVirt reserves 240 MiB per VM for its management processes)');
    }
  } finally {
    await bd.close(names);
  }
}
