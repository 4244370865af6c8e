// Test harness for the standalone daemon: spawns `vmlet daemon` on temp dirs, drives it through the CLI and the socket, and cleans up every process it started.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, readdirSync, readlinkSync, rmSync, rmdirSync, statSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { guestKernelArgs, READY_MARKER } from './guest.js';
import { which } from './which.js';
import type { AccelSetting } from '../../src/api/vocabulary.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const distCli = path.join(repoRoot, 'dist', 'cli', 'main.js');
export const launcherBinary = path.join(repoRoot, 'native', 'build', 'vmlet-launch');
export const guestDir = path.join(repoRoot, '.cache', 'guest');
/** The PVH ELF kernel boots ~3 s faster under TCG than the bzImage; either works with kernelBoot. */
export const guestKernel = existsSync(path.join(guestDir, 'vmlinux')) ? path.join(guestDir, 'vmlinux') : path.join(guestDir, 'vmlinuz');
export const guestInitrd = path.join(guestDir, 'initrd.img');
/** What a test daemon's `hostPaths.allow` holds unless a test says otherwise. */
export const TEST_HOST_PATHS: readonly string[] = [path.dirname(guestDir), os.tmpdir()];
export { READY_MARKER };
export const GUEST_KERNEL_ARGS = guestKernelArgs();

/** Why the daemon tests cannot run here, or false. `guest`: they also boot the test guest. */
export function daemonSkipReason(opts: { guest?: boolean } = {}): string | false {
  if (process.platform !== 'linux') return 'needs Linux';
  if (process.getuid?.() !== 0) return 'needs root (the daemon makes run dirs, sockets and sandboxes)';
  if (!which('qemu-system-x86_64')) return 'qemu-system-x86_64 is not installed (npm run setup installs it)';
  if (!existsSync(launcherBinary)) return `vmlet-launch is not built at ${launcherBinary} (make -C native; npm test builds it)`;
  if (!existsSync(distCli)) return `${distCli} is missing: run "npm run build" (npm test builds it first)`;
  if (opts.guest !== false && !(existsSync(guestKernel) && existsSync(guestInitrd))) {
    return `the test guest is not built in ${guestDir} (node scripts/build-guest-image.mjs; npm test builds it)`;
  }
  return false;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` until it returns a value other than undefined/false; the error names `what` and the last value seen. */
export async function waitFor<T>(
  what: string,
  cond: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 30_000,
  everyMs = 100,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > end) {
      const why = lastErr instanceof Error ? ` (last error: ${lastErr.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------------------------------------
// Manifests

export type RunStrategy = 'Always' | 'RerunOnFailure' | 'Halted' | 'Manual' | 'Once';

export interface GuestSpecOptions {
  memory?: string;
  graceSeconds?: number;
  /** Extra disks+volumes (the guest boots from kernel+initrd and needs none). */
  disks?: Array<Record<string, unknown>>;
  volumes?: Array<Record<string, unknown>>;
}

/** A VMI spec for the test guest: kernel boot, 128Mi, serial console, a short grace period. */
export function guestSpec(o: GuestSpecOptions = {}): Record<string, unknown> {
  const devices: Record<string, unknown> = { autoattachSerialConsole: true };
  if (o.disks) devices.disks = o.disks;
  const spec: Record<string, unknown> = {
    terminationGracePeriodSeconds: o.graceSeconds ?? 5,
    domain: {
      cpu: { cores: 1 },
      memory: { guest: o.memory ?? '128Mi' },
      firmware: { kernelBoot: { kernelArgs: GUEST_KERNEL_ARGS, hostPath: { kernelPath: guestKernel, initrdPath: guestInitrd } } },
      devices,
    },
  };
  if (o.volumes) spec.volumes = o.volumes;
  return spec;
}

export interface ManifestOptions extends GuestSpecOptions {
  namespace?: string;
  apiVersion?: string;
  labels?: Record<string, string>;
}

export function vmObject(name: string, o: ManifestOptions & { runStrategy?: RunStrategy } = {}): Record<string, unknown> {
  const labels = o.labels ?? { app: name };
  return {
    apiVersion: o.apiVersion ?? 'vmlet.io/v1alpha1',
    kind: 'VirtualMachine',
    metadata: { name, namespace: o.namespace ?? 'default', labels },
    spec: { runStrategy: o.runStrategy ?? 'Always', template: { metadata: { labels }, spec: guestSpec(o) } },
  };
}

export function vmiObject(name: string, o: ManifestOptions = {}): Record<string, unknown> {
  return {
    apiVersion: o.apiVersion ?? 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: o.namespace ?? 'default', labels: o.labels ?? { app: name } },
    spec: guestSpec(o),
  };
}

/** YAML of a VirtualMachine running the test guest. */
export function manifestVM(name: string, o: ManifestOptions & { runStrategy?: RunStrategy } = {}): string {
  return YAML.stringify(vmObject(name, o));
}

/** YAML of a VirtualMachineInstance running the test guest. */
export function manifestVMI(name: string, o: ManifestOptions = {}): string {
  return YAML.stringify(vmiObject(name, o));
}

// ---------------------------------------------------------------------------------------------
// Processes

export interface ProcInfo {
  pid: number;
  argv: string[];
}

/** Every live, non-zombie process whose argv mentions `needle` (from /proc). */
export function processesMatching(needle: string, procRoot = '/proc'): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const ent of readdirSync(procRoot)) {
    if (!/^\d+$/.test(ent)) continue;
    const pid = Number(ent);
    if (pid === process.pid) continue;
    let raw: string;
    try {
      raw = readFileSync(path.join(procRoot, ent, 'cmdline'), 'utf8');
      if (!raw) continue; // kernel thread or zombie
      const stat = readFileSync(path.join(procRoot, ent, 'stat'), 'utf8');
      if (/\) Z /.test(stat)) continue;
    } catch {
      continue;
    }
    if (!raw.includes(needle)) continue;
    out.push({ pid, argv: raw.replace(/\0$/, '').split('\0') });
  }
  return out;
}

/** `procs` and their children: QEMU's command line names no run-dir path (its sockets come by fd), its launcher's does. */
export function withChildren(procs: ProcInfo[], procRoot = '/proc'): ProcInfo[] {
  const pids = new Set(procs.map((p) => p.pid));
  const out = [...procs];
  for (const ent of readdirSync(procRoot)) {
    if (!/^\d+$/.test(ent) || pids.has(Number(ent))) continue;
    try {
      const stat = readFileSync(path.join(procRoot, ent, 'stat'), 'utf8');
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (state === 'Z' || !pids.has(Number(ppid))) continue;
      const raw = readFileSync(path.join(procRoot, ent, 'cmdline'), 'utf8');
      if (raw) out.push({ pid: Number(ent), argv: raw.replace(/\0$/, '').split('\0') });
    } catch {
      /* gone */
    }
  }
  return out;
}

export function isQemu(p: ProcInfo): boolean {
  return path.basename(p.argv[0] ?? '').startsWith('qemu-system');
}

/** QEMU processes whose command line holds the VMI uid. */
export function qemuProcessesFor(uid: string): ProcInfo[] {
  return processesMatching(uid).filter(isQemu);
}

export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) Z /.test(stat);
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP over the unix socket

export interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  json(): unknown;
}

export function httpRequest(
  socketPath: string,
  method: string,
  urlPath: string,
  body?: string | Buffer,
  headers: Record<string, string> = {},
  timeoutMs = 15_000,
): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const h: Record<string, string | number> = { ...headers };
    if (body !== undefined) {
      h['content-length'] = Buffer.byteLength(body);
      h['content-type'] ??= 'application/json';
    }
    const req = http.request({ socketPath, method, path: urlPath, headers: h, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json: () => JSON.parse(text) as unknown });
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${urlPath}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * A request on a raw socket, for bodies the server refuses before reading them all. node:http's
 * client (like any node socket) drops an answer it has not read yet once a write fails with EPIPE,
 * so this one never writes past the point where the server must have answered: with a
 * Content-Length it waits for an answer after the headers (the limit is checked on them) before
 * sending the body; chunked, it stops sending once `limitBytes` were sent and waits for the answer.
 */
export function rawHttpRequest(
  socketPath: string,
  method: string,
  urlPath: string,
  body: Buffer,
  opts: { chunked?: boolean; contentType?: string; limitBytes?: number; timeoutMs?: number } = {},
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(socketPath);
    const got: Buffer[] = [];
    const limit = opts.limitBytes ?? 1024 * 1024;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`${method} ${urlPath}: no answer within ${opts.timeoutMs ?? 15_000} ms`));
    }, opts.timeoutMs ?? 15_000);
    sock.on('data', (b: Buffer) => got.push(b));
    sock.on('error', () => undefined);
    sock.on('close', () => {
      clearTimeout(timer);
      const text = Buffer.concat(got).toString('utf8');
      const sep = text.indexOf('\r\n\r\n');
      const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
      if (!m || sep < 0) {
        reject(new Error(`${method} ${urlPath}: no HTTP answer (got ${JSON.stringify(text.slice(0, 120))})`));
        return;
      }
      let payload = text.slice(sep + 4);
      if (/^transfer-encoding:\s*chunked/im.test(text.slice(0, sep))) {
        let out = '';
        let rest = payload;
        for (;;) {
          const nl = rest.indexOf('\r\n');
          const n = parseInt(rest.slice(0, nl), 16);
          if (!(n > 0)) break;
          out += rest.slice(nl + 2, nl + 2 + n);
          rest = rest.slice(nl + 2 + n + 2);
        }
        payload = out;
      }
      resolve({ status: Number(m[1]), text: payload });
    });
    const write = (b: string | Buffer): Promise<void> =>
      new Promise((r) => {
        if (sock.destroyed) r();
        else sock.write(b, () => r());
      });
    const answered = (): boolean => got.length > 0 || sock.destroyed;
    sock.on('connect', () => {
      void (async () => {
        await write(
          [
            `${method} ${urlPath} HTTP/1.1`,
            'Host: localhost',
            `Content-Type: ${opts.contentType ?? 'application/json'}`,
            opts.chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${body.length}`,
            'Connection: close',
            '',
            '',
          ].join('\r\n'),
        );
        if (!opts.chunked && body.length > limit) {
          await waitFor('an answer to the headers', answered, 2_000, 20).catch(() => undefined);
        }
        let off = 0;
        while (off < body.length && !answered()) {
          if (opts.chunked && off > limit) {
            // Past the limit: the server answers without reading more.
            await waitFor('an answer', answered, 5_000, 20).catch(() => undefined);
            break;
          }
          const part = body.subarray(off, off + 64 * 1024);
          off += part.length;
          await write(opts.chunked ? Buffer.concat([Buffer.from(`${part.length.toString(16)}\r\n`), part, Buffer.from('\r\n')]) : part);
          await new Promise((r) => setImmediate(r));
        }
        if (off >= body.length && opts.chunked && !answered()) await write('0\r\n\r\n');
      })();
    });
  });
}

export interface KubeObj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string; uid: string; resourceVersion: string; deletionTimestamp?: string; ownerReferences?: Array<{ uid: string }> };
  spec: Record<string, unknown>;
  status?: {
    phase?: string;
    reason?: string;
    message?: string;
    printableStatus?: string;
    conditions?: Array<{ type: string; status: string; reason?: string; message?: string }>;
    vmlet?: { qemuPid?: number; launcherPid?: number; runDir?: string };
    interfaces?: Array<{ name?: string; mac?: string; ipAddress?: string; ipAddresses?: string[]; interfaceName?: string; infoSource?: string }>;
  };
}

export interface WatchHandle {
  events: Array<{ type: string; object: KubeObj }>;
  close(): void;
}

// ---------------------------------------------------------------------------------------------
// The daemon

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface TestDaemonOptions {
  /** Extra keys for the daemon's YAML config file (see src/daemon/config.ts). */
  config?: Record<string, unknown>;
  logLevel?: string;
  /** The daemon's --accel; default tcg (tests boot guests under software emulation on every host). */
  accel?: AccelSetting;
  /**
   * Runs before the daemon first starts (e.g. to mount a small file system on the state folder); what it returns
   * runs at teardown once every process is gone, before the folders are removed.
   */
  beforeStart?: (dirs: { root: string; stateDir: string; runDir: string }) => (() => void) | void;
}

export interface TestDaemon {
  root: string;
  socket: string;
  stateDir: string;
  runDir: string;
  logFile: string;
  /** The current daemon process's pid (changes on restart). */
  readonly pid: number;
  /** Milliseconds from the last spawn until /healthz answered. */
  readonly startMs: number;
  cli(args: string[], opts?: { input?: string | Buffer; timeoutMs?: number }): Promise<CliResult>;
  /** Like cli(), but throws with stderr when the exit code is not 0. */
  cliOk(args: string[], opts?: { input?: string | Buffer; timeoutMs?: number }): Promise<string>;
  apply(yamlText: string): Promise<string>;
  http(method: string, urlPath: string, body?: string | Buffer, headers?: Record<string, string>): Promise<HttpAnswer>;
  vmi(name: string, ns?: string): Promise<KubeObj | undefined>;
  vm(name: string, ns?: string): Promise<KubeObj | undefined>;
  vmis(ns?: string): Promise<KubeObj[]>;
  /** Waits until the VMI of `name` has `phase` (and, if given, `pred` holds); returns it. */
  waitPhase(name: string, phase: string, timeoutMs?: number, pred?: (o: KubeObj) => boolean): Promise<KubeObj>;
  waitGone(kind: 'vmi' | 'vm', name: string, timeoutMs?: number): Promise<void>;
  /** The VMI's serial console log (run dir console.log), '' if none yet. */
  consoleText(uid: string): string;
  /** Waits until `marker` appears at least `count` times in the VMI's console log. */
  waitConsole(uid: string, marker?: string, count?: number, timeoutMs?: number): Promise<void>;
  /** A watch on one VMI (or VM), collecting events until closed. */
  watch(kind: 'vmi' | 'vm', name: string): Promise<WatchHandle>;
  vmRunDir(uid: string): string;
  /** Processes this daemon's VMs run as (launchers and QEMUs: their argv holds the run dir). */
  vmProcesses(): ProcInfo[];
  /** Sends `signal` to the daemon and waits for it to exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Spawns the daemon again on the same dirs (after kill()) and waits for /healthz. */
  restart(): Promise<{ spawnedAt: number; healthyAt: number }>;
  /** SIGTERM and wait (VMs keep running). */
  stop(): Promise<void>;
  /** Last lines of the daemon's log, for failure messages. */
  logTail(lines?: number): string;
}

interface TapLike {
  teardown(fn: () => void | Promise<void>): void;
  comment(...args: unknown[]): void;
  passing(): boolean;
}

const live = new Set<string>();
let exitHookInstalled = false;

/**
 * Runs `vmlet daemon --config CONFIG` on folders of its own below `root` (or the given ones) until it exits, for
 * start-up refusals; its exit code and output (stdout and stderr). Killed after `timeoutMs`.
 */
export function runDaemonUntilExit(
  config: string,
  root: string,
  o: { socket?: string; stateDir?: string; runDir?: string; timeoutMs?: number } = {},
): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(
      process.execPath,
      [
        distCli,
        'daemon',
        '--config',
        config,
        '--socket',
        o.socket ?? path.join(root, 's.sock'),
        '--state-dir',
        o.stateDir ?? path.join(root, 'state'),
        '--run-dir',
        o.runDir ?? path.join(root, 'run'),
        '--accel',
        'tcg',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    c.stdout.on('data', (b: Buffer) => (out += b.toString()));
    c.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const timer = setTimeout(() => c.kill('SIGKILL'), o.timeoutMs ?? 30_000);
    c.on('error', reject);
    c.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/** Kills every process whose argv mentions `root` (daemon, launchers, QEMUs, CLIs) and waits until they are gone. */
async function killEverythingUnder(root: string): Promise<void> {
  const end = Date.now() + 10_000;
  for (;;) {
    // Children first found through their parents: QEMU's argv does not name the folder, its launcher's does.
    const procs = withChildren(processesMatching(root));
    if (procs.length === 0) return;
    for (const p of procs) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    if (Date.now() > end) throw new Error(`processes under ${root} survive SIGKILL: ${procs.map((p) => p.pid).join(', ')}`);
    await sleep(50);
  }
}

function killEverythingUnderSync(root: string): void {
  for (const p of withChildren(processesMatching(root))) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

/**
 * Starts `vmlet daemon` (dist build) with its own temp socket, state dir and run dir, and waits until
 * /healthz answers. Teardown kills the daemon and every launcher/QEMU under its dirs and removes them.
 */
export async function startTestDaemon(t: TapLike, opts: TestDaemonOptions = {}): Promise<TestDaemon> {
  if (!existsSync(distCli)) throw new Error(`${distCli} is missing: run "npm run build" first (npm test does)`);
  // Short: unix socket paths must stay under 108 bytes with run/vms/<uid>/serial.sock appended.
  const root = mkdtempSync(path.join(os.tmpdir(), 'vmlet-d-'));
  live.add(root);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const r of live) {
        killEverythingUnderSync(r);
        rmSync(r, { recursive: true, force: true });
      }
    });
  }
  const socket = path.join(root, 'vmlet.sock');
  const stateDir = path.join(root, 'state');
  const runDir = path.join(root, 'run');
  const logFile = path.join(root, 'daemon.log');
  const configFile = path.join(root, 'vmlet.yaml');
  // Networking is off unless a test asks for it (with names of its own: see daemonNetConfig()).
  // VM cgroups go below a parent of this daemon's own, removed in teardown.
  // Host paths: the guests' cache (.cache: the test guest, the Debian guest) and the temp folder the tests make their disks in (the daemon allows none by default).
  const cfg: Record<string, unknown> = {
    logLevel: opts.logLevel ?? 'info',
    network: { enabled: false },
    cgroupParent: path.basename(root),
    hostPaths: { allow: TEST_HOST_PATHS },
    ...opts.config,
  };
  await import('node:fs/promises').then((fs) => fs.writeFile(configFile, YAML.stringify(cfg)));
  const undoBeforeStart = opts.beforeStart?.({ root, stateDir, runDir });

  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let startMs = 0;

  const spawnDaemon = async (): Promise<{ spawnedAt: number; healthyAt: number }> => {
    const fd = openSync(logFile, 'a');
    const spawnedAt = Date.now();
    let c: ChildProcess;
    try {
      c = spawn(
        process.execPath,
        [distCli, 'daemon', '--config', configFile, '--socket', socket, '--state-dir', stateDir, '--run-dir', runDir, '--accel', opts.accel ?? 'tcg'],
        {
          stdio: ['ignore', fd, fd],
          env: { ...process.env, VMLET_LOG_LEVEL: opts.logLevel ?? 'info' },
        },
      );
    } finally {
      closeSync(fd);
    }
    child = c;
    let gone = false;
    exited = new Promise((resolve) =>
      c.once('exit', () => {
        gone = true;
        resolve();
      }),
    );
    await waitFor(
      'the daemon to answer /healthz',
      async () => {
        if (gone) throw new Error(`the daemon exited during start-up:\n${tail(logFile, 20)}`);
        const r = await httpRequest(socket, 'GET', '/healthz', undefined, {}, 2_000);
        return r.status === 200;
      },
      30_000,
      20,
    ).catch((e: unknown) => {
      throw gone ? e : new Error(`${(e as Error).message}\n${tail(logFile, 20)}`);
    });
    const healthyAt = Date.now();
    startMs = healthyAt - spawnedAt;
    return { spawnedAt, healthyAt };
  };

  const runCli = (args: string[], o: { input?: string | Buffer; timeoutMs?: number } = {}): Promise<CliResult> =>
    new Promise((resolve, reject) => {
      const c = spawn(process.execPath, [distCli, '--socket', socket, ...args], {
        stdio: ['pipe', 'pipe', 'pipe'],
        env: { ...process.env, VMLET_SOCKET: socket },
      });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      c.stdout.on('data', (b: Buffer) => out.push(b));
      c.stderr.on('data', (b: Buffer) => err.push(b));
      const timer = setTimeout(() => c.kill('SIGKILL'), o.timeoutMs ?? 60_000);
      c.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      c.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
      });
      c.stdin.on('error', () => undefined);
      c.stdin.end(o.input);
    });

  const api = (kind: 'vmi' | 'vm', ns: string, name?: string): string =>
    `/apis/vmlet.io/v1alpha1/namespaces/${ns}/${kind === 'vmi' ? 'virtualmachineinstances' : 'virtualmachines'}${name ? `/${name}` : ''}`;

  const getObj = async (kind: 'vmi' | 'vm', name: string, ns = 'default'): Promise<KubeObj | undefined> => {
    const r = await httpRequest(socket, 'GET', api(kind, ns, name));
    if (r.status === 404) return undefined;
    if (r.status !== 200) throw new Error(`GET ${kind} ${name}: ${r.status} ${r.text}`);
    return r.json() as KubeObj;
  };

  const d: TestDaemon = {
    root,
    socket,
    stateDir,
    runDir,
    logFile,
    get pid() {
      return child?.pid ?? -1;
    },
    get startMs() {
      return startMs;
    },
    cli: runCli,
    async cliOk(args, o) {
      const r = await runCli(args, o);
      if (r.code !== 0) throw new Error(`vmlet ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
      return r.stdout;
    },
    async apply(text) {
      return d.cliOk(['apply', '-f', '-'], { input: text });
    },
    http: (method, urlPath, body, headers) => httpRequest(socket, method, urlPath, body, headers),
    vmi: (name, ns) => getObj('vmi', name, ns),
    vm: (name, ns) => getObj('vm', name, ns),
    async vmis(ns = 'default') {
      const r = await httpRequest(socket, 'GET', api('vmi', ns));
      if (r.status !== 200) throw new Error(`list VMIs: ${r.status} ${r.text}`);
      return (r.json() as { items: KubeObj[] }).items;
    },
    async waitPhase(name, phase, timeoutMs = 60_000, pred) {
      let last: KubeObj | undefined;
      try {
        return await waitFor(
          `VMI ${name} to be ${phase}`,
          async () => {
            last = await getObj('vmi', name);
            return last?.status?.phase === phase && (!pred || pred(last)) ? last : undefined;
          },
          timeoutMs,
          100,
        );
      } catch (e) {
        throw new Error(
          `${(e as Error).message}; last seen: ${last ? `phase ${last.status?.phase ?? '-'} reason ${last.status?.reason ?? '-'}` : 'no VMI'}\n--- daemon log ---\n${d.logTail(15)}`,
        );
      }
    },
    async waitGone(kind, name, timeoutMs = 60_000) {
      await waitFor(`${kind} ${name} to be gone`, async () => (await getObj(kind, name)) === undefined, timeoutMs, 100);
    },
    consoleText(uid) {
      try {
        return readFileSync(path.join(runDir, 'vms', uid, 'console.log'), 'latin1');
      } catch {
        return '';
      }
    },
    async waitConsole(uid, marker = READY_MARKER, count = 1, timeoutMs = 90_000) {
      try {
        await waitFor(`"${marker}" ×${count} on the console of ${uid}`, () => d.consoleText(uid).split(marker).length - 1 >= count, timeoutMs, 200);
      } catch (e) {
        throw new Error(`${(e as Error).message}\n--- console tail ---\n${d.consoleText(uid).slice(-800)}`);
      }
    },
    async watch(kind, name) {
      const events: WatchHandle['events'] = [];
      const req = http.request({ socketPath: socket, method: 'GET', path: `${api(kind, 'default')}?watch=true&fieldSelector=metadata.name=${name}` });
      await new Promise<void>((resolve, reject) => {
        req.on('response', (res) => {
          let buf = '';
          res.setEncoding('utf8');
          res.on('data', (s: string) => {
            buf += s;
            let i: number;
            while ((i = buf.indexOf('\n')) >= 0) {
              const line = buf.slice(0, i).trim();
              buf = buf.slice(i + 1);
              if (line) events.push(JSON.parse(line) as { type: string; object: KubeObj });
            }
          });
          res.on('error', () => undefined);
          resolve();
        });
        req.on('error', reject);
        req.end();
      });
      return { events, close: () => req.destroy() };
    },
    vmRunDir: (uid) => path.join(runDir, 'vms', uid),
    vmProcesses: () => withChildren(processesMatching(runDir).filter((p) => p.pid !== child?.pid)),
    async kill(signal = 'SIGKILL') {
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      await exited;
    },
    restart: spawnDaemon,
    async stop() {
      await d.kill('SIGTERM');
    },
    logTail: (n = 30) => tail(logFile, n),
  };

  t.teardown(async () => {
    if (!t.passing()) t.comment(`daemon log tail (${logFile}):\n${tail(logFile, 40)}`);
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    await killEverythingUnder(root);
    if (typeof cfg.cgroupParent === 'string' && cfg.cgroupParent === path.basename(root)) await removeCgroupParent(cfg.cgroupParent);
    if (typeof undoBeforeStart === 'function') undoBeforeStart();
    rmSync(root, { recursive: true, force: true });
    live.delete(root);
  });

  await spawnDaemon();
  return d;
}

/** Removes `/sys/fs/cgroup/<hierarchy>/<parent>` and the empty groups below it (children first), retrying while the killed processes leave. */
async function removeCgroupParent(parent: string): Promise<void> {
  const base = '/sys/fs/cgroup';
  const dirs = (existsSync(base) ? readdirSync(base) : []).map((h) => path.join(base, h, parent)).filter((d) => existsSync(d));
  const rm = (d: string): boolean => {
    for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) rm(path.join(d, e.name));
    try {
      rmdirSync(d);
      return true;
    } catch {
      return false;
    }
  };
  for (let i = 0; i < 20; i++) {
    const left = dirs.filter((d) => existsSync(d) && !rm(d));
    if (left.length === 0) return;
    await sleep(100);
  }
}

function tail(file: string, n: number): string {
  try {
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n');
    return lines
      .slice(-n)
      .map((l) => (l.length > 400 ? `${l.slice(0, 400)}…` : l))
      .join('\n');
  } catch {
    return '(no log)';
  }
}

/** The files of a state dir with their content, to prove a refused request stored nothing. */
export function snapshotDir(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string): void => {
    let ents: string[];
    try {
      ents = readdirSync(d);
    } catch {
      return;
    }
    for (const e of ents) {
      const p = path.join(d, e);
      const st = statSync(p, { throwIfNoEntry: false });
      if (!st) continue;
      if (st.isDirectory()) walk(p);
      else out.set(path.relative(dir, p), st.isSymbolicLink() ? readlinkSync(p) : readFileSync(p, 'utf8'));
    }
  };
  walk(dir);
  return out;
}

/** Types `command` into the guest's shell over `vmlet console` and waits until `expect` appears once more on its console log. */
export async function runInGuest(d: TestDaemon, vm: string, uid: string, command: string, expect: string, timeoutMs = 30_000): Promise<void> {
  // The console echoes what is typed: an `expect` inside the command would match before it ran.
  if (command.includes(expect)) throw new Error(`"${expect}" is part of the command: its echo would match`);
  const before = d.consoleText(uid).split(expect).length - 1;
  await d.cliOk(['console', vm], { input: `${command}\n`, timeoutMs: 20_000 });
  await waitFor(`"${expect}" on ${vm}'s console`, () => d.consoleText(uid).split(expect).length - 1 > before, timeoutMs);
}
