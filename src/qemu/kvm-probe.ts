// Decides whether KVM really runs guest code: opens /dev/kvm, then boots native/build/kvm-probe.elf (a PVH payload that switches to long mode) in QEMU and waits for its "OK".

import { spawn } from 'node:child_process';
import { constants as fsc } from 'node:fs';
import { access, mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { VmletError } from '../errors.js';
import { QmpClient } from '../qmp/client.js';
import { escapeOptValue } from './escape.js';
import { qemuErrorLines } from './qemu-log.js';
import type { KvmStatus } from './probe.js';
import type { Accel } from '../api/vocabulary.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Where `make -C native` puts the payload in this checkout (src/ and dist/ both sit one level below the root). */
export const DEFAULT_KVM_PROBE_PAYLOAD = path.join(repoRoot, 'native', 'build', 'kvm-probe.elf');
export const DEFAULT_KVM_PROBE_DEADLINE_MS = 500;
export const DEFAULT_KVM_PROBE_START_TIMEOUT_MS = 5_000;

/** The payload's debugcon port and isa-debug-exit codes (native/kvm-probe.S). */
const DEBUGCON_PORT = '0x402';
const EXIT_OK = 0x2a;
const EXIT_FAIL = 0x15;
/** QEMU's exit status after the guest writes `v` to isa-debug-exit. */
const exitStatus = (v: number): number => ((v << 1) | 1) & 0xff;

/** What the payload prints on the debug console, in order. */
const MARKERS = ['P32', 'P64', 'OK'] as const;

export interface KvmProbeOptions {
  qemuBinary: string;
  /** Default /dev/kvm; only opened with accel 'kvm'. */
  devKvm?: string;
  /** The guest payload; default DEFAULT_KVM_PROBE_PAYLOAD (native/build/kvm-probe.elf). */
  payload?: string;
  /** How long the guest gets after `cont` to print "OK"; default 500 ms. */
  deadlineMs?: number;
  /** How long QEMU gets to answer QMP and `cont`; default 5 000 ms. */
  startTimeoutMs?: number;
  /** `-machine` type, as vmlet runs VMs; default 'q35'. `accel=` is appended. */
  machine?: string;
  /** `-cpu` model; default 'host' under kvm (what vmlet's argv uses), 'max' under tcg. */
  cpu?: string;
  /** Default 'kvm'. 'tcg' runs the same payload without KVM (no /dev/kvm check): a test of the payload itself. */
  accel?: Accel;
  /** Parent of the probe's private temp dir (QMP socket); default os.tmpdir(). */
  tmpDir?: string;
  /** Clock for durationMs; default performance.now. */
  now?: () => number;
}

/** Whether /dev/kvm can be opened read-write (no ioctls). */
export async function checkKvm(devKvm = '/dev/kvm'): Promise<KvmStatus> {
  try {
    const fh = await open(devKvm, fsc.O_RDWR);
    await fh.close();
    return { usable: true, reason: 'ok' };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { usable: false, reason: `${devKvm} does not exist: no KVM module loaded, or no hardware or nested virtualisation` };
    if (code === 'EACCES' || code === 'EPERM') return { usable: false, reason: `no permission to open ${devKvm} read-write` };
    return { usable: false, reason: `cannot open ${devKvm}: ${code ?? String(e)}` };
  }
}

/** QEMU's stderr as a one-line reason: its first lines as a failed VMI shows them (src/qemu/qemu-log.ts), joined, at most 600 characters. Pure. */
export function stderrReason(stderr: string): string {
  const text = qemuErrorLines(stderr, Infinity).slice(0, 5).join('; ');
  return text.length > 600 ? `${text.slice(0, 597)}...` : text;
}

/** The markers found in the debug console output, in order, and whether any other output (firmware) came. Pure. */
export function parseConsole(output: string): { markers: string[]; failure: string | undefined; firmware: boolean } {
  const markers: string[] = [];
  let failure: string | undefined;
  let firmware = false;
  for (const raw of output.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    if ((MARKERS as readonly string[]).includes(line)) markers.push(line);
    else if (line.startsWith('FAIL ')) failure = line;
    else firmware = true;
  }
  return { markers, failure, firmware };
}

/** "P64", "firmware output only", or "nothing": how far the guest got. Pure. */
export function reachedText(output: string): string {
  const c = parseConsole(output);
  const last = c.markers[c.markers.length - 1];
  if (last !== undefined) return last;
  return c.firmware ? 'firmware output only, payload not entered' : 'nothing';
}

function describeSetup(machine: string, accel: string, cpu: string): string {
  return `-machine ${machine},accel=${accel} -cpu ${cpu}`;
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: Error;
}

type Verdict = Omit<KvmStatus, 'durationMs'>;

/**
 * Runs the payload under KVM (or the accel given) and says whether it printed "OK" within the
 * deadline. Never throws for a verdict: a missing /dev/kvm or payload, a QEMU that dies (its stderr
 * becomes the reason) or a guest that stalls all give `usable: false`. Throws KVM_PROBE_FAILED only
 * when the probe itself cannot run (temp dir, spawn). QEMU is always killed and reaped, the temp dir
 * always removed.
 */
export async function probeKvm(opts: KvmProbeOptions): Promise<KvmStatus> {
  const now = opts.now ?? (() => performance.now());
  const t0 = now();
  const accel = opts.accel ?? 'kvm';
  const done = (v: Verdict): KvmStatus => ({ ...v, durationMs: Math.round(now() - t0) });

  if (accel === 'kvm') {
    const dev = await checkKvm(opts.devKvm);
    if (!dev.usable) return done({ ...dev, stage: 'device' });
  }
  const payload = opts.payload ?? DEFAULT_KVM_PROBE_PAYLOAD;
  try {
    await access(payload, fsc.R_OK);
  } catch {
    return done({
      usable: false,
      stage: 'payload',
      reason: `cannot check that KVM runs guest code: the probe payload ${payload} is missing; build it with "make -C native" (npm run setup does)`,
    });
  }
  let dir: string;
  try {
    dir = await mkdtemp(path.join(opts.tmpDir ?? os.tmpdir(), 'vmlet-kvm-probe-'));
  } catch (cause) {
    throw new VmletError('KVM_PROBE_FAILED', 'cannot make a temp dir for the KVM probe', { cause });
  }
  try {
    return done(await runGuest(opts, accel, payload, dir));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function runGuest(opts: KvmProbeOptions, accel: Accel, payload: string, dir: string): Promise<Verdict> {
  const machine = opts.machine ?? 'q35';
  const cpu = opts.cpu ?? (accel === 'kvm' ? 'host' : 'max');
  const deadlineMs = opts.deadlineMs ?? DEFAULT_KVM_PROBE_DEADLINE_MS;
  const startMs = opts.startTimeoutMs ?? DEFAULT_KVM_PROBE_START_TIMEOUT_MS;
  const setup = describeSetup(machine, accel, cpu);
  const qmpPath = path.join(dir, 'qmp.sock');
  if (Buffer.byteLength(qmpPath) > 107) {
    throw new VmletError(
      'KVM_PROBE_FAILED',
      `the KVM probe's QMP socket path ${qmpPath} is longer than a unix socket allows (107 bytes); use a shorter tmpDir/TMPDIR`,
    );
  }
  // prettier-ignore
  const args = [
    '-no-user-config', '-nodefaults', '-display', 'none', '-S', '-no-reboot',
    '-machine', `${escapeOptValue(machine)},accel=${accel}`,
    '-cpu', escapeOptValue(cpu),
    '-m', '32M',
    '-chardev', `socket,id=qmp,path=${escapeOptValue(qmpPath)},server=on,wait=off`,
    '-mon', 'chardev=qmp,mode=control',
    // readback=0: SeaBIOS then takes the port for absent and stays quiet after its banner
    '-chardev', 'stdio,id=dbg',
    '-device', `isa-debugcon,iobase=${DEBUGCON_PORT},chardev=dbg,readback=0`,
    '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04',
    '-kernel', payload,
  ];

  const child = spawn(opts.qemuBinary, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', LC_ALL: 'C' },
  });
  let consoleOut = '';
  let stderr = '';
  let onOk: () => void = () => {};
  const okSeen = new Promise<void>((resolve) => {
    onOk = resolve;
  });
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (s: string) => {
    consoleOut += s;
    if (consoleOut.length > 65_536) consoleOut = consoleOut.slice(-65_536);
    if (/(^|\n)OK\n/.test(consoleOut)) onOk();
  });
  child.stderr.on('data', (s: string) => {
    if (stderr.length < 65_536) stderr += s;
  });
  let exitInfo: Exit | undefined;
  const exited = new Promise<Exit>((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal }));
    child.on('error', (error) => resolve({ code: null, signal: null, error }));
  }).then((e) => (exitInfo = e));

  const ac = new AbortController();
  void exited.then(() => ac.abort());
  const client = new QmpClient({ path: qmpPath, connectTimeoutMs: startMs, greetingTimeoutMs: startMs });
  let shutdownReason: string | undefined;
  client.on('SHUTDOWN', (data) => {
    const r = (data as { reason?: unknown } | undefined)?.reason;
    if (typeof r === 'string') shutdownReason = r;
  });

  const died = (e: Exit): Verdict => {
    if (e.error !== undefined) {
      throw new VmletError('KVM_PROBE_FAILED', `cannot run ${opts.qemuBinary} for the KVM probe: ${e.error.message}`, { cause: e.error });
    }
    const reached = reachedText(consoleOut);
    const how = e.signal !== null ? `died by ${e.signal}` : `exited with status ${e.code ?? '?'}`;
    const said = stderrReason(stderr);
    if (e.code === exitStatus(EXIT_OK)) return { usable: true, reason: 'ok', stage: 'ok' };
    if (e.code === exitStatus(EXIT_FAIL)) {
      const failure = parseConsole(consoleOut).failure ?? 'FAIL (no message)';
      return { usable: false, stage: 'guest', reason: `the probe guest's own check failed under ${setup}: ${failure} (reached: ${reached})` };
    }
    if (e.code === 0 && said === '') {
      const why = shutdownReason === 'guest-reset' ? 'the guest reset itself (a triple fault?)' : `QEMU exited (${shutdownReason ?? 'status 0'})`;
      return { usable: false, stage: 'guest', reason: `${why} under ${setup} before the probe guest finished (reached: ${reached})` };
    }
    return {
      usable: false,
      stage: 'qemu',
      reason: said === '' ? `QEMU ${how} under ${setup} without a message (reached: ${reached})` : `${said} (QEMU ${how} under ${setup}; reached: ${reached})`,
    };
  };

  let timer: NodeJS.Timeout | undefined;
  try {
    try {
      await client.connect({ signal: ac.signal });
      await client.execute('cont', undefined, { timeoutMs: startMs, signal: ac.signal });
    } catch (e) {
      // QEMU dying right after its greeting (the MSR abort) closes QMP first; give its exit a moment to arrive.
      const e2 = await Promise.race([exited, sleep(1_000).then(() => undefined)]);
      if (e2 !== undefined) return died(e2);
      return { usable: false, stage: 'qemu', reason: `QEMU under ${setup} did not take QMP commands: ${(e as Error).message}` };
    }
    const outcome = await Promise.race([
      okSeen.then(() => 'ok' as const),
      exited,
      new Promise<'deadline'>((resolve) => {
        timer = setTimeout(() => resolve('deadline'), deadlineMs);
      }),
    ]);
    if (outcome === 'ok') return { usable: true, reason: 'ok', stage: 'ok' };
    if (outcome === 'deadline') {
      return { usable: false, stage: 'guest', reason: `guest code did not run within ${deadlineMs} ms under ${setup} (reached: ${reachedText(consoleOut)})` };
    }
    return died(outcome);
  } finally {
    if (timer !== undefined) clearTimeout(timer);
    if (exitInfo === undefined) child.kill('SIGKILL');
    await exited;
    await client.close();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
