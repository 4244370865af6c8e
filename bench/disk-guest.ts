// The in-guest half of the disk benchmark: a shell on a serial socket, the dd workloads it times, and QEMU started by hand from vmlet's own argv.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { QmpClient } from '../src/qmp/client.js';
import { READY_MARKER } from '../test/support/guest.js';
import { sleep } from './support.js';

/** A busybox shell on a serial console socket (the daemon's console stream or QEMU's chardev socket). */
export class SerialShell {
  private text = '';
  private readonly waiters = new Set<() => void>();
  private ended = false;
  private seq = 0;
  // A per-connection nonce: replayed output of an earlier connection never matches this one's markers.
  private readonly nonce = randomBytes(3).toString('hex');

  constructor(
    private readonly sock: net.Socket,
    head?: Buffer,
  ) {
    if (head && head.length > 0) this.text += head.toString('latin1');
    sock.on('data', (d: Buffer) => {
      this.text += d.toString('latin1');
      this.wake();
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      this.ended = true;
      this.wake();
    });
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  /** Waits until `re` matches the output from offset `from`; resolves with the match and its end offset. */
  wait(re: RegExp, from: number, timeoutMs: number): Promise<{ m: RegExpExecArray; end: number }> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const m = re.exec(this.text.slice(from));
        if (m) {
          this.waiters.delete(onData);
          clearTimeout(timer);
          resolve({ m, end: from + m.index + m[0].length });
          return true;
        }
        if (this.ended) {
          this.waiters.delete(onData);
          clearTimeout(timer);
          reject(new Error(`serial console closed before ${String(re)}; last output:\n${this.text.slice(-600)}`));
          return true;
        }
        return false;
      };
      const onData = (): void => void check();
      const timer = setTimeout(() => {
        this.waiters.delete(onData);
        reject(new Error(`${String(re)} did not appear on the serial console within ${timeoutMs} ms; last output:\n${this.text.slice(-600)}`));
      }, timeoutMs);
      if (!check()) this.waiters.add(onData);
    });
  }

  waitReady(timeoutMs: number): Promise<unknown> {
    return this.wait(new RegExp(`(^|\\n)${READY_MARKER}\\r?\\n`), 0, timeoutMs);
  }

  /** Runs one command line; resolves with its output (CRs removed) and exit status. */
  async run(command: string, timeoutMs = 60_000): Promise<{ output: string; status: number }> {
    const n = `${this.nonce}x${++this.seq}`;
    const from = this.text.length;
    // The markers are split in the typed text ("__DB""n__"), so only the shell's output carries them whole.
    this.sock.write(`echo "__DB""${n}__"; ${command}; echo "__DE${n}_$?""__"\n`);
    const b = await this.wait(new RegExp(`__DB${n}__`), from, timeoutMs);
    const e = await this.wait(new RegExp(`__DE${n}_(\\d+)__`), b.end, timeoutMs);
    const output = this.text
      .slice(b.end, e.end - e.m[0].length)
      .replace(/\r/g, '')
      .replace(/^\n/, '');
    return { output, status: Number(e.m[1]) };
  }

  async ok(command: string, timeoutMs?: number): Promise<string> {
    const r = await this.run(command, timeoutMs);
    if (r.status !== 0) throw new Error(`guest command failed (status ${r.status}): ${command}\n${r.output}`);
    return r.output;
  }

  close(): void {
    this.sock.destroy();
  }
}

export type WorkloadKey = 'seq_write' | 'seq_read' | 'rand_read' | 'rand_write';

export interface IoOptions {
  /** MiB per sequential pass (bs=1M). */
  seqMiB: number;
  /** Single-block dd runs per random pass. */
  randomOps: number;
  /** O_DIRECT in the guest (busybox dd's iflag/oflag=direct); false falls back to conv=fsync and cached reads. */
  direct: boolean;
}

export const WORKLOADS: readonly { key: WorkloadKey; label: string; unit: 'MiB/s' | 'ops/s' }[] = [
  { key: 'seq_write', label: 'seq write 1M', unit: 'MiB/s' },
  { key: 'seq_read', label: 'seq read 1M', unit: 'MiB/s' },
  { key: 'rand_read', label: 'rand read 4k', unit: 'ops/s' },
  { key: 'rand_write', label: 'rand write 4k', unit: 'ops/s' },
];

/** 4 KiB blocks of the 256 MiB data disk: random offsets cover all of it. */
const BLOCKS_4K = 65536;

/** The command line of one workload; `t` is the clock function the session defines. status=none keeps dd's report off the serial console. */
function workloadCommand(key: WorkloadKey, o: IoOptions): string {
  const iflag = o.direct ? ' iflag=direct' : '';
  const oflag = o.direct ? ' oflag=direct' : '';
  const drop = 'sync; echo 3 > /proc/sys/vm/drop_caches';
  // busybox $RANDOM is 15 bits: two of them make an offset over the whole disk. Seeded, so both sides touch the same blocks.
  const off = `$(( (RANDOM * 32768 + RANDOM) % ${BLOCKS_4K} ))`;
  const loop = (dd: string): string => `${drop}; RANDOM=4242; i=0; a=$(t); while [ $i -lt ${o.randomOps} ]; do ${dd}; i=$((i+1)); done; b=$(t)`;
  switch (key) {
    case 'seq_write':
      return `${drop}; a=$(t); dd if=/dev/zero of=/dev/vda bs=1M count=${o.seqMiB}${oflag} conv=fsync status=none; b=$(t)`;
    case 'seq_read':
      return `${drop}; a=$(t); dd if=/dev/vda of=/dev/null bs=1M count=${o.seqMiB}${iflag} status=none; b=$(t)`;
    case 'rand_read':
      return loop(`dd if=/dev/vda of=/dev/null bs=4k count=1 skip=${off}${iflag} status=none`);
    case 'rand_write':
      return loop(`dd if=/dev/zero of=/dev/vda bs=4k count=1 seek=${off}${oflag} conv=notrunc${o.direct ? '' : ',fsync'} status=none`);
  }
}

export interface GuestClock {
  /** 'timer_list' (ns, monotonic) or 'uptime' (10 ms) */
  kind: string;
  /** median ms between two back-to-back readings: included in every measurement, on both sides */
  overheadMs: number;
}

/**
 * Defines the clock function `t` in this boot's shell. busybox `date` has no %N here, so nanoseconds come from
 * /proc/timer_list's "now at N nsecs"; /proc/uptime (10 ms) is the fallback.
 */
export async function defineClock(sh: SerialShell): Promise<GuestClock> {
  const hasTimerList = (await sh.run(`grep -q '^now at' /proc/timer_list`)).status === 0;
  if (hasTimerList) await sh.ok(`t() { awk '/^now at/{print $3; exit}' /proc/timer_list; }`);
  else await sh.ok(`t() { awk '{printf "%.0f\\n", $1*1e9}' /proc/uptime; }`);
  const gaps: number[] = [];
  for (let i = 0; i < 3; i++) gaps.push(parseSpan(await sh.ok('a=$(t); b=$(t); echo "SPAN $a $b"')));
  gaps.sort((x, y) => x - y);
  return { kind: hasTimerList ? 'timer_list' : 'uptime', overheadMs: +(gaps[1]! * 1000).toFixed(2) };
}

/** Seconds between the two clock readings in "SPAN a b". */
function parseSpan(output: string): number {
  const m = /SPAN (\d+) (\d+)/.exec(output);
  if (!m) throw new Error(`no timing in the guest's output: ${JSON.stringify(output.slice(-300))}`);
  return Number(BigInt(m[2]!) - BigInt(m[1]!)) / 1e9;
}

/** Whether this busybox dd has O_DIRECT flags (its --help lists them). */
export async function ddHasDirect(sh: SerialShell): Promise<boolean> {
  const help = (await sh.run('busybox dd --help 2>&1')).output;
  return /iflag=[^\n]*direct/.test(help) && /oflag=[^\n]*direct/.test(help);
}

/** Runs every workload once in this boot; the rate of each (MiB/s or ops/s). */
export async function runWorkloads(sh: SerialShell, o: IoOptions): Promise<Record<WorkloadKey, number>> {
  const out = {} as Record<WorkloadKey, number>;
  for (const w of WORKLOADS) {
    const secs = parseSpan(await sh.ok(`${workloadCommand(w.key, o)}; echo "SPAN $a $b"`, 600_000));
    const amount = w.unit === 'MiB/s' ? o.seqMiB : o.randomOps;
    out[w.key] = +(amount / secs).toFixed(1);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// QEMU by hand, from vmlet's argv

/** QEMU's argv of a live process (/proc/PID/cmdline). */
export function procArgv(pid: number): string[] {
  return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0$/, '').split('\0');
}

/**
 * vmlet's argv for a start by hand: `-add-fd` dropped, `/dev/fdset/N` replaced by the file the daemon passed in that
 * set (`fdFiles`), QMP's inherited socket bound by path, each `[from, to]` of `moves` (the VMI's run dir: sockets,
 * overlay; a hostDisk) replaced; everything else unchanged. The first move is the run dir: nothing may refer to it afterwards.
 */
export function handArgv(argv: readonly string[], moves: readonly [string, string][], fdFiles: ReadonlyMap<number, string>): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '-add-fd') {
      i++;
      continue;
    }
    // QMP's listening socket, inherited from the daemon: the hand-started QEMU binds the same path itself.
    const qmpByPath = moves[0] === undefined ? a : a.replace(/^(socket,id=qmp,)fd=\d+(,|$)/, `$1path=${moves[0][0]}/qmp.sock$2`);
    let swapped = qmpByPath.replace(/\/dev\/fdset\/(\d+)/g, (_, set: string) => {
      const f = fdFiles.get(Number(set));
      if (f === undefined) throw new Error(`vmlet's argv opens fd set ${set}, whose file this benchmark does not know: ${a}`);
      return f;
    });
    for (const [from, to] of moves) swapped = swapped.split(from).join(to);
    out.push(swapped);
  }
  const runDir = moves[0]?.[0];
  const left = out.find((a) => (runDir !== undefined && a.includes(runDir)) || a.includes('/dev/fdset/') || /(^|,)fds?=\d/.test(a));
  if (left !== undefined) throw new Error(`the hand-started argv still refers to vmlet's run dir or an inherited fd: ${left}`);
  return out;
}

/** fd set number → the `node-name` of the `-blockdev` that opens it (vmlet names them volN-base-file / volN-file). */
export function fdSetNodes(argv: readonly string[]): Map<number, string> {
  const out = new Map<number, string>();
  for (let i = 0; i + 1 < argv.length; i++) {
    if (argv[i] !== '-blockdev') continue;
    const opts = argv[i + 1]!;
    const set = /(?:^|,)filename=\/dev\/fdset\/(\d+)(?:,|$)/.exec(opts);
    const node = /(?:^|,)node-name=([^,]+)/.exec(opts);
    if (set && node) out.set(Number(set[1]), node[1]!);
  }
  return out;
}

/** The `path=` of `-chardev socket,id=ID,…`. */
function chardevPath(argv: readonly string[], id: string): string {
  for (let i = 0; i + 1 < argv.length; i++) {
    if (argv[i] !== '-chardev') continue;
    const opts = argv[i + 1]!;
    if (!new RegExp(`(^|,)id=${id}(,|$)`).test(opts)) continue;
    const m = /(?:^|,)path=([^,]+)/.exec(opts);
    if (m) return m[1]!;
  }
  throw new Error(`the argv has no socket chardev "${id}"`);
}

export interface HandQemu {
  pid: number;
  shell: SerialShell;
  log(): string;
  kill(): Promise<void>;
}

/**
 * Spawns `argv` (which starts paused, -S, like vmlet's), connects the serial console before the guest runs, then
 * does over QMP what the daemon does: set-action and cont. `cgroupProcs`: a cgroup.procs file QEMU joins before exec.
 */
export async function startHandQemu(argv: readonly string[], dir: string, cgroupProcs?: string): Promise<HandQemu> {
  const [qemu, ...args] = argv;
  if (qemu === undefined) throw new Error('empty argv');
  const logFile = path.join(dir, 'qemu.log');
  const logFd = fs.openSync(logFile, 'a');
  // setpriv --pdeathsig: QEMU dies with the benchmark even when that is SIGKILLed.
  const direct = ['setpriv', '--pdeathsig', 'KILL', qemu, ...args];
  // sh writes its own pid, then execs: QEMU keeps that pid and so the group.
  const cmd = cgroupProcs === undefined ? direct : ['sh', '-c', 'echo $$ > "$0" && exec "$@"', cgroupProcs, ...direct];
  const child: ChildProcess = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', logFd, logFd] });
  fs.closeSync(logFd);
  let exited = false;
  const gone = new Promise<void>((r) =>
    child.once('exit', () => {
      exited = true;
      r();
    }),
  );
  const log = (): string => {
    try {
      return fs.readFileSync(logFile, 'utf8');
    } catch {
      return '';
    }
  };
  const kill = async (): Promise<void> => {
    if (!exited) child.kill('SIGKILL');
    await gone;
  };
  try {
    const qmp = new QmpClient({ path: chardevPath(argv, 'qmp'), connectTimeoutMs: 20_000 });
    await Promise.race([qmp.connect(), gone.then(() => Promise.reject(new Error('exited at once')))]).catch(async (e: unknown) => {
      await Promise.race([gone, sleep(500)]);
      throw new Error(`hand-started QEMU did not answer on QMP (${(e as Error).message}): ${log().trim()}`, { cause: e });
    });
    const serialPath = chardevPath(argv, 'serial0');
    let sock: net.Socket | undefined;
    for (let i = 0; !sock; i++) {
      try {
        sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(serialPath);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
      } catch (e) {
        if (i > 200) throw e;
        await sleep(20);
      }
    }
    const shell = new SerialShell(sock);
    await qmp.execute('set-action', { shutdown: 'poweroff', reboot: 'reset', panic: 'pause' });
    await qmp.execute('cont');
    await qmp.close();
    return {
      pid: child.pid ?? -1,
      shell,
      log,
      async kill() {
        shell.close();
        await kill();
      },
    };
  } catch (e) {
    await kill();
    throw e;
  }
}
