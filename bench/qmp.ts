// Benchmarks the QMP client's query-status round trip against a minimal hand-written socket loop on the same (TCG, paused) QEMU.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { QmpClient } from '../src/qmp/client.js';

const WARMUP = 300;
const ITERATIONS = 2000;
const ROUNDS = 4; // client and raw loop alternate in rounds so drift (CPU frequency, other load) hits both alike

function which(bin: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(dir, bin);
    if (dir && existsSync(p)) return p;
  }
  return undefined;
}

/** The floor: its own connection, negotiate, then write/read query-status one at a time; no ids, no timers, no events. */
class RawLoop {
  private sock: net.Socket | undefined;
  private buf = '';
  private waiter: ((msg: Record<string, unknown>) => void) | undefined;

  async connect(sockPath: string): Promise<void> {
    for (let i = 0; ; i++) {
      try {
        this.sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection({ path: sockPath }, () => resolve(s));
          s.once('error', reject);
        });
        break;
      } catch (e) {
        if (i > 200) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    this.sock.setNoDelay(true);
    this.sock.on('data', (chunk: Buffer) => {
      this.buf += chunk.toString('utf8');
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        const msg = JSON.parse(line) as Record<string, unknown>;
        if ('event' in msg) continue;
        const w = this.waiter;
        this.waiter = undefined;
        w?.(msg);
      }
    });
    await this.next(); // greeting
    await this.cmd('{"execute":"qmp_capabilities"}\n');
  }

  private next(): Promise<Record<string, unknown>> {
    return new Promise((resolve) => (this.waiter = resolve));
  }

  cmd(line: string): Promise<Record<string, unknown>> {
    const p = this.next();
    this.sock?.write(line);
    return p;
  }

  close(): void {
    this.sock?.destroy();
  }
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

const round3 = (n: number): number => Math.round(n * 1000) / 1000;

export async function run(opts: { json: boolean }): Promise<void> {
  const qemu = which('qemu-system-x86_64');
  if (!qemu) throw new Error('bench qmp: qemu-system-x86_64 is not installed');
  const dir = mkdtempSync(path.join(tmpdir(), 'vmlet-bench-qmp-'));
  const clientSock = path.join(dir, 'qmp-client.sock');
  const rawSock = path.join(dir, 'qmp-raw.sock');
  const proc = spawn(
    qemu,
    [
      '-accel',
      'tcg',
      '-S',
      '-nodefaults',
      '-display',
      'none',
      '-machine',
      'q35',
      '-m',
      '64',
      '-qmp',
      `unix:${clientSock},server=on,wait=off`,
      '-qmp',
      `unix:${rawSock},server=on,wait=off`,
    ],
    { stdio: 'ignore' },
  );
  const qmp = new QmpClient({ path: clientSock });
  const raw = new RawLoop();
  try {
    await qmp.connect();
    await raw.connect(rawSock);
    const rawLine = '{"execute":"query-status"}\n';
    // Same loop with the id the client must send: QEMU 7.2 reads its monitor one byte per recvmsg, so
    // these 7 bytes alone cost measurable time; this row separates that from the client's own overhead.
    const rawIdLine = '{"execute":"query-status","id":1}\n';

    for (let i = 0; i < WARMUP; i++) {
      await qmp.execute('query-status');
      await raw.cmd(rawLine);
      await raw.cmd(rawIdLine);
    }
    const clientMs: number[] = [];
    const rawMs: number[] = [];
    const rawIdMs: number[] = [];
    const per = ITERATIONS / ROUNDS;
    for (let r = 0; r < ROUNDS; r++) {
      for (let i = 0; i < per; i++) {
        const t0 = performance.now();
        await qmp.execute('query-status');
        clientMs.push(performance.now() - t0);
      }
      for (let i = 0; i < per; i++) {
        const t0 = performance.now();
        await raw.cmd(rawLine);
        rawMs.push(performance.now() - t0);
      }
      for (let i = 0; i < per; i++) {
        const t0 = performance.now();
        await raw.cmd(rawIdLine);
        rawIdMs.push(performance.now() - t0);
      }
    }
    clientMs.sort((a, b) => a - b);
    rawMs.sort((a, b) => a - b);
    rawIdMs.sort((a, b) => a - b);
    const result = {
      bench: 'qmp',
      command: 'query-status',
      iterations: ITERATIONS,
      qemu: qmp.greeting ? `${qmp.greeting.QMP.version.qemu.major}.${qmp.greeting.QMP.version.qemu.minor}.${qmp.greeting.QMP.version.qemu.micro}` : 'unknown',
      p50_ms: round3(percentile(clientMs, 50)),
      p99_ms: round3(percentile(clientMs, 99)),
      raw_p50_ms: round3(percentile(rawMs, 50)),
      raw_p99_ms: round3(percentile(rawMs, 99)),
      ratio_p50: round3(percentile(clientMs, 50) / percentile(rawMs, 50)),
      raw_id_p50_ms: round3(percentile(rawIdMs, 50)),
      ratio_p50_vs_raw_id: round3(percentile(clientMs, 50) / percentile(rawIdMs, 50)),
    };
    if (opts.json) {
      process.stdout.write(`${JSON.stringify(result)}\n`);
    } else {
      const rows: Array<[string, string, string]> = [
        ['', 'p50 ms', 'p99 ms'],
        ['vmlet QmpClient', result.p50_ms.toFixed(3), result.p99_ms.toFixed(3)],
        ['raw socket loop', result.raw_p50_ms.toFixed(3), result.raw_p99_ms.toFixed(3)],
        ['raw loop + "id"', result.raw_id_p50_ms.toFixed(3), '-'],
      ];
      process.stdout.write(`query-status round trip, ${ITERATIONS} iterations, QEMU ${result.qemu} (TCG, paused)\n`);
      for (const [a, b, c] of rows) process.stdout.write(`${a.padEnd(18)}${b.padStart(9)}${c.padStart(9)}\n`);
      process.stdout.write(`ratio p50 (client / raw): ${result.ratio_p50.toFixed(3)}; client / raw with id: ${result.ratio_p50_vs_raw_id.toFixed(3)}\n`);
    }
  } finally {
    await qmp.close();
    raw.close();
    proc.kill('SIGKILL');
    await new Promise((r) => (proc.exitCode !== null || proc.signalCode !== null ? r(undefined) : proc.once('exit', r)));
    rmSync(dir, { recursive: true, force: true });
  }
}
