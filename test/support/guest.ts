// Boots the test guest (built by scripts/build-guest-image.mjs) straight under QEMU for library-level tests: serial console, QMP and guest-agent sockets.
//
// Independent of src/: the daemon has its own launch path. See docs/test-guest.md.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureGuestImage } from '../../scripts/build-guest-image.mjs';
import { testAccel } from './accel.js';

/** Printed by the guest's /init on the serial console, on a line of its own, once everything is up. */
export const READY_MARKER = 'VMLET-GUEST-READY';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface GuestImage {
  /** bzImage */
  kernel: string;
  /** uncompressed ELF kernel with a PVH entry: what bootTestGuest uses when present (~3 s faster under TCG) */
  kernelPvh: string | null;
  initrd: string;
  kernelVersion: string;
}

let imagePromise: Promise<GuestImage> | undefined;

/** Builds the guest image into .cache/guest/ when needed (a no-op when it is there) and returns its paths. */
export async function guestImage(): Promise<GuestImage> {
  imagePromise ??= ensureGuestImage({ root: ROOT, log: (msg) => process.stderr.write(`guest-image: ${msg}\n`) }).then((r) => ({
    kernel: r.kernel,
    kernelPvh: r.kernelPvh,
    initrd: r.initrd,
    kernelVersion: r.manifest.kernelVersion,
  }));
  try {
    return await imagePromise;
  } catch (e) {
    imagePromise = undefined;
    throw e;
  }
}

/**
 * The recommended kernel command line: serial console, quiet (so the ready marker is not drowned),
 * reboot at once on panic, and a few switches that shorten boot under TCG. `extra` is appended
 * (e.g. `vmlet.debug=1` to trace /init and keep kernel messages on the console).
 */
export function guestKernelArgs(extra?: string): string {
  const args = [
    'console=ttyS0',
    'quiet',
    'panic=-1',
    '8250.nr_uarts=1',
    'i8042.noaux',
    'i8042.nomux',
    'i8042.nopnp',
    'mitigations=off',
    'audit=0',
    'nowatchdog',
    'no_timer_check',
    'tsc=reliable',
  ];
  if (extra && extra.trim()) args.push(extra.trim());
  return args.join(' ');
}

/** Why guests cannot be booted here (to skip a test with), or null when they can. */
export function guestSkipReason(opts: { needRoot?: boolean } = {}): string | null {
  if (process.platform !== 'linux' || process.arch !== 'x64') return 'the test guest needs x86_64 Linux';
  if ((opts.needRoot ?? true) && process.getuid?.() !== 0) return 'needs root (builds the guest image from Debian packages)';
  if (!findBinary(qemuBinary())) return `${qemuBinary()} is not installed (apt-get install qemu-system-x86)`;
  return null;
}

function qemuBinary(): string {
  return process.env['VMLET_QEMU'] ?? 'qemu-system-x86_64';
}

function findBinary(bin: string): string | null {
  if (bin.includes('/')) return fs.existsSync(bin) ? bin : null;
  for (const d of (process.env['PATH'] ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(d, bin);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

export interface HostForward {
  hostPort: number;
  guestPort: number;
  /** default 127.0.0.1 */
  hostAddr?: string;
}

export interface BootTestGuestOptions {
  /** guest RAM in MiB; default 128 */
  memoryMiB?: number;
  /** default 1 */
  cpus?: number;
  /** `auto` (default): VMLET_TEST_ACCEL, else KVM only when vmlet's probe saw guest code run under it (test/support/accel.ts) */
  accel?: 'auto' | 'tcg' | 'kvm';
  /** default true: a QMP socket (paths.qmp) */
  qmp?: boolean;
  /** default true: virtio-serial port org.qemu.guest_agent.0 on a socket (paths.qga) */
  guestAgent?: boolean;
  /** a virtio-net NIC on QEMU user networking (SLIRP: local only, DHCP 10.0.2.15/24) */
  net?: boolean | { hostForwards?: HostForward[] };
  /** appended to guestKernelArgs() */
  kernelArgs?: string;
  /** boot the bzImage instead of the PVH vmlinux */
  bzImage?: boolean;
  /** -no-reboot: a guest reboot makes QEMU exit; default false */
  noReboot?: boolean;
  /** more QEMU arguments, appended */
  extraArgs?: string[];
  /** QEMU binary; default $VMLET_QEMU or qemu-system-x86_64 */
  qemu?: string;
  /** how long to wait for QEMU to come up and accept the serial connection; default 30 s */
  startTimeoutMs?: number;
  /** registers kill() as a teardown, e.g. `teardown: (fn) => t.teardown(fn)` */
  teardown?: (fn: () => Promise<void>) => void;
}

export interface SerialMatch {
  /** the matched text */
  text: string;
  /** capture groups of a RegExp pattern */
  groups: (string | undefined)[];
  /** offset of the match in serialOutput() */
  index: number;
  /** offset just after the match */
  end: number;
}

export interface GuestExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface TestGuest {
  pid: number;
  /** the temporary directory holding the sockets and logs (removed by kill()) */
  dir: string;
  paths: { serial: string; serialLog: string; qmp: string | null; qga: string | null };
  argv: string[];
  /** Date.now() when QEMU was spawned */
  startedAt: number;
  /** everything read from the serial console so far */
  serialOutput(): string;
  /** QEMU's stderr so far */
  stderr(): string;
  /**
   * Waits until `pattern` appears in the serial output after the cursor (by default: the end of the
   * previous match, like expect), and moves the cursor past it. `since` searches from that offset instead.
   */
  waitForSerial(pattern: string | RegExp, timeoutMs?: number, opts?: { since?: number }): Promise<SerialMatch>;
  /** Waits for the ready marker; resolves with ms since spawn. */
  waitReady(timeoutMs?: number): Promise<number>;
  writeSerial(text: string): void;
  /** Runs one command line in the serial shell; resolves with its output (CRs removed) and exit status. */
  shell(command: string, timeoutMs?: number): Promise<{ output: string; status: number }>;
  /** Resolves when QEMU has exited. */
  readonly exited: Promise<GuestExit>;
  /** exited, or rejects after timeoutMs */
  waitForExit(timeoutMs: number): Promise<GuestExit>;
  /** Ends QEMU (SIGTERM, then SIGKILL) and removes the temporary directory; safe to call twice. */
  kill(): Promise<void>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`GUEST_TIMEOUT: ${what} after ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** Spawns QEMU with the test guest. Resolves once QEMU runs and the serial console is connected. */
export async function bootTestGuest(opts: BootTestGuestOptions = {}): Promise<TestGuest> {
  const image = await guestImage();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-guest-'));
  const paths = {
    serial: path.join(dir, 'serial.sock'),
    serialLog: path.join(dir, 'serial.log'),
    qmp: opts.qmp === false ? null : path.join(dir, 'qmp.sock'),
    qga: opts.guestAgent === false ? null : path.join(dir, 'qga.sock'),
  };
  const accel = opts.accel === undefined || opts.accel === 'auto' ? await testAccel(opts.qemu ?? qemuBinary()) : opts.accel;
  const kernel = !opts.bzImage && image.kernelPvh ? image.kernelPvh : image.kernel;
  // the serial chardev comes first and waits for our connection, so no console output is lost
  // prettier-ignore
  const argv = [
    '-name', 'vmlet-test-guest',
    '-accel', accel,
    ...(accel === 'kvm' ? ['-cpu', 'host'] : []),
    '-machine', 'q35',
    '-m', String(opts.memoryMiB ?? 128),
    '-smp', String(opts.cpus ?? 1),
    '-nodefaults', '-no-user-config', '-display', 'none',
    '-chardev', `socket,id=ser0,path=${paths.serial},server=on,wait=on,logfile=${paths.serialLog}`,
    '-serial', 'chardev:ser0',
    '-kernel', kernel,
    '-initrd', image.initrd,
    '-append', guestKernelArgs(opts.kernelArgs),
  ];
  if (paths.qmp) argv.push('-chardev', `socket,id=qmp0,path=${paths.qmp},server=on,wait=off`, '-mon', 'chardev=qmp0,mode=control');
  if (paths.qga) {
    argv.push(
      '-chardev',
      `socket,id=qga0,path=${paths.qga},server=on,wait=off`,
      '-device',
      'virtio-serial-pci,id=vser0',
      '-device',
      'virtserialport,bus=vser0.0,nr=1,chardev=qga0,name=org.qemu.guest_agent.0',
    );
  }
  if (opts.net) {
    const fwds = typeof opts.net === 'object' ? (opts.net.hostForwards ?? []) : [];
    const fw = fwds.map((f) => `,hostfwd=tcp:${f.hostAddr ?? '127.0.0.1'}:${f.hostPort}-:${f.guestPort}`).join('');
    argv.push('-netdev', `user,id=net0${fw}`, '-device', 'virtio-net-pci,netdev=net0,romfile=');
  }
  if (opts.noReboot) argv.push('-no-reboot');
  argv.push(...(opts.extraArgs ?? []));

  const qemu = opts.qemu ?? qemuBinary();
  // setpriv --pdeathsig: QEMU dies with the test process even when that is SIGKILLed
  const setpriv = findBinary('setpriv');
  const [cmd, args] = setpriv ? [setpriv, ['--pdeathsig', 'KILL', qemu, ...argv]] : [qemu, argv];
  const startedAt = Date.now();
  const child: ChildProcess = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (d: string) => {
    stderr += d;
  });
  let exitInfo: GuestExit | null = null;
  const exited = new Promise<GuestExit>((resolve) => {
    child.on('exit', (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
    child.on('error', (e) => {
      stderr += `spawn ${cmd}: ${e.message}\n`;
      exitInfo = { code: null, signal: null };
      resolve(exitInfo);
    });
  });

  let serialText = '';
  let cursor = 0;
  const waiters = new Set<() => void>();
  const wake = (): void => {
    for (const w of [...waiters]) w();
  };
  let sock: net.Socket | null = null;
  let killed = false;

  const kill = async (): Promise<void> => {
    if (!killed) {
      killed = true;
      if (exitInfo === null && child.pid !== undefined) {
        child.kill('SIGTERM');
        const r = await Promise.race([exited, sleep(3000).then(() => null)]);
        if (r === null) {
          child.kill('SIGKILL');
          await exited;
        }
      }
      sock?.destroy();
    }
    await exited;
    fs.rmSync(dir, { recursive: true, force: true });
  };
  opts.teardown?.(kill);

  // connect to the serial socket once QEMU has created it
  const deadline = Date.now() + (opts.startTimeoutMs ?? 30_000);
  try {
    for (;;) {
      if (exitInfo !== null) throw new Error(`GUEST_START_FAILED: QEMU exited before the serial console was up: ${stderr.trim()}`);
      if (Date.now() > deadline) throw new Error(`GUEST_START_FAILED: no serial socket from QEMU within ${opts.startTimeoutMs ?? 30_000} ms`);
      if (fs.existsSync(paths.serial)) {
        try {
          sock = await new Promise<net.Socket>((resolve, reject) => {
            const s = net.createConnection(paths.serial);
            s.once('connect', () => resolve(s));
            s.once('error', reject);
          });
          break;
        } catch {
          /* not listening yet */
        }
      }
      await sleep(20);
    }
  } catch (e) {
    await kill();
    throw e;
  }
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    serialText += d;
    wake();
  });
  sock.on('error', () => {});
  sock.on('close', wake);
  void exited.then(wake);

  const waitForSerial = (pattern: string | RegExp, timeoutMs = 60_000, o: { since?: number } = {}): Promise<SerialMatch> => {
    const from = o.since ?? cursor;
    const find = (): SerialMatch | null => {
      const hay = serialText.slice(from);
      if (typeof pattern === 'string') {
        const i = hay.indexOf(pattern);
        return i < 0 ? null : { text: pattern, groups: [], index: from + i, end: from + i + pattern.length };
      }
      const re = new RegExp(pattern.source, pattern.flags.replace('g', '').replace('y', ''));
      const m = re.exec(hay);
      return m ? { text: m[0], groups: m.slice(1), index: from + m.index, end: from + m.index + m[0].length } : null;
    };
    return new Promise<SerialMatch>((resolve, reject) => {
      const done = (m: SerialMatch): void => {
        cursor = Math.max(cursor, m.end);
        resolve(m);
      };
      const now = find();
      if (now) return done(now);
      const timer = setTimeout(() => {
        waiters.delete(check);
        const tail = serialText.slice(-600);
        reject(new Error(`GUEST_TIMEOUT: ${String(pattern)} did not appear on the serial console within ${timeoutMs} ms; last output:\n${tail}`));
      }, timeoutMs);
      const check = (): void => {
        const m = find();
        if (m) {
          clearTimeout(timer);
          waiters.delete(check);
          done(m);
        } else if (exitInfo !== null) {
          clearTimeout(timer);
          waiters.delete(check);
          reject(new Error(`GUEST_EXITED: QEMU exited (${JSON.stringify(exitInfo)}) before ${String(pattern)} appeared; stderr: ${stderr.trim()}`));
        }
      };
      waiters.add(check);
    });
  };

  const writeSerial = (text: string): void => {
    if (!sock || sock.destroyed) throw new Error('GUEST_SERIAL_CLOSED: the serial console is not connected');
    sock.write(text);
  };

  let shellSeq = 0;
  const shell = async (command: string, timeoutMs = 30_000): Promise<{ output: string; status: number }> => {
    const n = ++shellSeq;
    // the markers are split in the typed text ("__VMB""1__"), so only the shell's output carries them whole
    const begin = `__VMB${n}__`;
    const typed = `echo "__VMB""${n}__"; ${command}; echo "__VME${n}_$?""__"\n`;
    writeSerial(typed);
    const b = await waitForSerial(begin, timeoutMs);
    const e = await waitForSerial(new RegExp(`__VME${n}_(\\d+)__`), timeoutMs);
    const output = serialText.slice(b.end, e.index).replace(/\r/g, '').replace(/^\n/, '');
    return { output, status: Number(e.groups[0]) };
  };

  return {
    pid: child.pid ?? -1,
    dir,
    paths,
    argv: [qemu, ...argv],
    startedAt,
    serialOutput: () => serialText,
    stderr: () => stderr,
    waitForSerial,
    waitReady: async (timeoutMs = 60_000) => {
      await waitForSerial(new RegExp(`(^|\\n)${READY_MARKER}\\r?\\n`), timeoutMs, { since: 0 });
      return Date.now() - startedAt;
    },
    writeSerial,
    shell,
    exited,
    waitForExit: (timeoutMs) => withTimeout(exited, timeoutMs, 'QEMU did not exit'),
    kill,
  };
}

// ---------------------------------------------------------------------------------------------
// minimal raw JSON over the QMP and guest-agent sockets (the real client lives in src/qmp)

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Reads newline-separated JSON objects from a socket. */
function jsonLines(sock: net.Socket): () => Promise<{ [k: string]: Json }> {
  let buf = '';
  const queue: { [k: string]: Json }[] = [];
  const waiting: ((v: { [k: string]: Json } | Error) => void)[] = [];
  const push = (v: { [k: string]: Json } | Error): void => {
    const w = waiting.shift();
    if (w) w(v);
    else if (!(v instanceof Error)) queue.push(v);
  };
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      // qemu-ga answers guest-sync-delimited with a 0xFF sentinel byte before the JSON
      // (decoded as U+FFFD); drop it before parsing
      const clean = line.replace(/^[\u00ff\ufffd]+/, '');
      if (!clean) continue;
      try {
        push(JSON.parse(clean) as { [k: string]: Json });
      } catch {
        /* not JSON: ignore */
      }
    }
  });
  const closed = (): void => {
    for (const w of waiting.splice(0)) w(new Error('GUEST_SOCKET_CLOSED: the socket closed'));
  };
  sock.on('close', closed);
  sock.on('error', closed);
  return () =>
    new Promise((resolve, reject) => {
      const v = queue.shift();
      if (v) return resolve(v);
      if (sock.destroyed) return reject(new Error('GUEST_SOCKET_CLOSED: the socket closed'));
      waiting.push((r) => (r instanceof Error ? reject(r) : resolve(r)));
    });
}

function connect(p: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(p);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Sends one QMP command (after the greeting and qmp_capabilities) and returns the reply (`return` or `error`); events are skipped. */
export async function qmpCommand(socketPath: string, execute: string, args?: { [k: string]: Json }, timeoutMs = 10_000): Promise<{ [k: string]: Json }> {
  const sock = await connect(socketPath);
  try {
    const next = jsonLines(sock);
    const reply = async (): Promise<{ [k: string]: Json }> => {
      for (;;) {
        const m = await next();
        if ('return' in m || 'error' in m) return m;
      }
    };
    return await withTimeout(
      (async () => {
        const greeting = await next();
        if (!('QMP' in greeting)) throw new Error(`GUEST_QMP_PROTOCOL: unexpected greeting ${JSON.stringify(greeting)}`);
        sock.write(`${JSON.stringify({ execute: 'qmp_capabilities' })}\n`);
        await reply();
        sock.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
        return reply();
      })(),
      timeoutMs,
      `QMP ${execute}`,
    );
  } finally {
    sock.destroy();
  }
}

/**
 * Sends one guest-agent command and returns the reply. Starts with guest-sync-delimited so stale
 * bytes from an earlier client are skipped. Commands without a reply (guest-shutdown) resolve with {}.
 */
export async function qgaCommand(socketPath: string, execute: string, args?: { [k: string]: Json }, timeoutMs = 10_000): Promise<{ [k: string]: Json }> {
  const sock = await connect(socketPath);
  try {
    const next = jsonLines(sock);
    return await withTimeout(
      (async () => {
        const id = Math.floor(Math.random() * 2 ** 31);
        // a 0xFF byte makes qemu-ga drop any half-parsed input first
        sock.write(Buffer.from([0xff]));
        sock.write(`${JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } })}\n`);
        for (;;) {
          const m = await next();
          if (m['return'] === id) break;
        }
        sock.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
        if (execute === 'guest-shutdown') return {};
        return next();
      })(),
      timeoutMs,
      `guest agent ${execute}`,
    );
  } finally {
    sock.destroy();
  }
}
