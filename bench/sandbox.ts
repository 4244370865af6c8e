// Times the standalone network sandbox of one masquerade NIC (netns, veth, bridge port, NAT, DHCP): NetManager set-up and teardown with the execFile runner, the posix_spawn runner, and posix_spawn with ip batches sent over netlink, side by side.
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { execFileRunner, execRunner, type CommandRunner } from '../src/net/exec.js';
import { NetManager } from '../src/net/sandbox.js';
import { percentile, progress } from './support.js';

/** Names of its own: never the node's vmlet0, BENCH_NET (10.215/16) or the tests' 10.214/16. */
const SANDBOX_NET = { subnet: '10.216.0.0/24', bridge: 'vmlsbx0', nftTable: 'vmlet_sbx', netnsPrefix: 'vsbx-', vethPrefix: 'vsbh' };

/** execRunner behind another function: IpTools sends batches over netlink only with execRunner itself, so this one keeps starting ip */
const spawnOnly: CommandRunner = Object.assign((bin: string, args: readonly string[], input?: string) => execRunner(bin, args, input), {
  inNetns: execRunner.inNetns!,
});

const RUNNERS: ReadonlyArray<{ name: 'execFile' | 'posix_spawn' | 'netlink'; runner: CommandRunner }> = [
  { name: 'execFile', runner: execFileRunner },
  { name: 'posix_spawn', runner: spawnOnly },
  { name: 'netlink', runner: execRunner },
];

interface Sample {
  setup: number;
  teardown: number;
  /** main-thread (event loop) busy time during set-up */
  setupBusy: number;
}

function skipReason(): string | null {
  if (process.platform !== 'linux') return 'needs Linux';
  if (process.getuid?.() !== 0) return 'needs root (creates a netns, a bridge and an nftables table)';
  for (const bin of ['ip', 'nft']) {
    try {
      execFileSync(bin, ['-V'], { stdio: 'ignore' });
    } catch {
      return `${bin} is not installed`;
    }
  }
  return null;
}

/** Grows this process's RSS to about `mib` MiB of touched memory, as the daemon's (fork copies the page tables of all of it). */
function ballast(mib: number): Buffer[] {
  const held: Buffer[] = [];
  const rssMib = (): number => process.memoryUsage().rss / 1048576;
  while (rssMib() < mib) held.push(Buffer.alloc(16 * 1048576, 1));
  return held;
}

/** Removes whatever carries the benchmark's names (also after a crash of an earlier run). */
function scrub(): void {
  const quiet = (bin: string, args: string[]): void => {
    try {
      execFileSync(bin, args, { stdio: 'ignore' });
    } catch {
      /* already gone */
    }
  };
  for (const ns of fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns') : []) {
    if (ns.startsWith(SANDBOX_NET.netnsPrefix)) quiet('ip', ['netns', 'del', ns]);
  }
  const links = JSON.parse(execFileSync('ip', ['-json', 'link', 'show']).toString()) as { ifname: string }[];
  for (const l of links) if (l.ifname.startsWith(SANDBOX_NET.vethPrefix)) quiet('ip', ['link', 'del', l.ifname]);
  quiet('ip', ['link', 'del', SANDBOX_NET.bridge]);
  quiet('nft', ['delete', 'table', 'ip', SANDBOX_NET.nftTable]);
}

function manager(stateDir: string, runner: CommandRunner): NetManager {
  // as src/daemon/vm-network.ts builds it from the default config, with the benchmark's names
  return new NetManager({
    stateDir,
    subnet: SANDBOX_NET.subnet,
    bridge: SANDBOX_NET.bridge,
    nftTable: SANDBOX_NET.nftTable,
    names: { netnsPrefix: SANDBOX_NET.netnsPrefix, vethPrefix: SANDBOX_NET.vethPrefix },
    mtu: 1500,
    hostForwarding: false,
    leaseSeconds: 86400,
    runner,
  });
}

async function once(mgr: NetManager): Promise<Sample> {
  const uid = randomUUID();
  const elu0 = performance.eventLoopUtilization();
  const t0 = performance.now();
  // what VmNetwork.prepare asks for a VMI with KubeVirt's default NIC
  await mgr.setup({ uid, hostname: 'bench', plan: { queues: 1, autoattachPodInterface: true } });
  const t1 = performance.now();
  const busy = performance.eventLoopUtilization(elu0).active;
  await mgr.teardown(uid);
  return { setup: t1 - t0, teardown: performance.now() - t1, setupBusy: busy };
}

const stats = (xs: number[]): { p50: number; p95: number } => ({ p50: +percentile(xs, 50).toFixed(2), p95: +percentile(xs, 95).toFixed(2) });

export async function run(opts: { json: boolean; args?: string[] }): Promise<void> {
  const args = opts.args ?? [];
  const num = (flag: string, def: number): number => {
    const i = args.indexOf(flag);
    return i >= 0 ? Number(args[i + 1]) : def;
  };
  const n = num('--n', 20);
  const rssTarget = num('--rss-mib', 150);
  // back to back by default: a netns deleted just before makes the next `ip netns add` wait for its cleanup in the kernel
  const pauseMs = num('--pause-ms', 0);
  const why = skipReason();
  if (why) throw new Error(`bench sandbox: ${why}`);
  scrub();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-bench-sandbox-'));
  const mgrs = RUNNERS.map((r) => ({ ...r, mgr: manager(path.join(dir, r.name), r.runner) }));
  const samples = new Map<string, Sample[]>(RUNNERS.map((r) => [r.name, []]));
  const held = ballast(rssTarget);
  const rss = Math.round(process.memoryUsage().rss / 1048576);
  try {
    for (const m of mgrs) await m.mgr.start();
    progress(`sandbox: ${n} set-ups and teardowns per runner, RSS ${rss} MiB (${held.length} ballast chunks)`);
    for (const m of mgrs) for (let i = 0; i < 2; i++) await once(m.mgr); // warm-up: page cache, lazily compiled code
    for (let i = 0; i < n; i++) {
      // alternate which runner goes first, so drift hits both alike
      for (const m of i % 2 === 0 ? mgrs : [...mgrs].reverse()) {
        samples.get(m.name)!.push(await once(m.mgr));
        if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
      }
    }
  } finally {
    for (const m of mgrs) await m.mgr.close();
    await mgrs[0]!.mgr.removeHost().catch(() => undefined);
    scrub();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const row = (name: string): { setup: { p50: number; p95: number }; teardown: { p50: number; p95: number }; setup_main_thread_p50: number } => {
    const s = samples.get(name)!;
    return {
      setup: stats(s.map((x) => x.setup)),
      teardown: stats(s.map((x) => x.teardown)),
      setup_main_thread_p50: +percentile(
        s.map((x) => x.setupBusy),
        50,
      ).toFixed(2),
    };
  };
  const before = row('execFile');
  const after = row('posix_spawn');
  const netlink = row('netlink');
  const result = {
    n,
    pause_ms: pauseMs,
    rss_mib: rss,
    execFile_ms: before,
    posix_spawn_ms: after,
    netlink_ms: netlink,
    ratio_p50: { setup: +(before.setup.p50 / after.setup.p50).toFixed(2), teardown: +(before.teardown.p50 / after.teardown.p50).toFixed(2) },
    netlink_ratio_p50: { setup: +(after.setup.p50 / netlink.setup.p50).toFixed(2) },
  };
  if (opts.json) {
    console.log(JSON.stringify(result));
    return;
  }
  console.log(`standalone sandbox, one masquerade NIC, ${n} rounds, ${pauseMs} ms between them, process RSS ${rss} MiB`);
  console.log('               set-up p50   p95   teardown p50   p95   set-up main-thread p50 (ms)');
  for (const [name, r] of [
    ['execFile', before],
    ['posix_spawn', after],
    ['netlink', netlink],
  ] as const) {
    console.log(
      `${name.padEnd(12)} ${r.setup.p50.toFixed(1).padStart(10)} ${r.setup.p95.toFixed(1).padStart(6)} ${r.teardown.p50.toFixed(1).padStart(14)} ${r.teardown.p95.toFixed(1).padStart(6)} ${r.setup_main_thread_p50.toFixed(1).padStart(12)}`,
    );
  }
  console.log(`execFile / posix_spawn at p50: set-up ${result.ratio_p50.setup}x, teardown ${result.ratio_p50.teardown}x`);
  console.log(`posix_spawn / netlink (ip batches over rtnetlink) at p50: set-up ${result.netlink_ratio_p50.setup}x`);
}
