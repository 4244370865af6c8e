// Boots the systemd guest (scripts/build-systemd-guest.mjs: Debian 12 with systemd as PID 1, QEMU and nftables) under plain QEMU with the project tree and the host's node on read-only disks, and runs shell commands in it as root through the guest agent.
//
// Independent of the daemon: QEMU is started here, not through vmlet, so a broken vmlet cannot break the
// harness that tests it. Only the guest-agent client comes from src/qmp.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { imageFiles, type GuestImageFiles } from '../../scripts/lib/guest-manifest.mjs';
import { eachInode } from '../../scripts/lib/tree-walk.mjs';
import { GuestAgentClient } from '../../src/qmp/guest-agent.js';
import { which } from './which.js';

/** The directory holding package.json: what the guest sees at SYSTEMD_GUEST_SRC. */
export const projectRoot = findProjectRoot(path.dirname(fileURLToPath(import.meta.url)));
export const systemdGuestDir = path.join(projectRoot, '.cache', 'systemd-guest');
/** The project tree inside the guest (read-only). */
export const SYSTEMD_GUEST_SRC = '/mnt/vmlet-src';
/** The host's node binary inside the guest, copied there after boot. */
export const SYSTEMD_GUEST_NODE = '/usr/local/bin/node';
/** Where the disk with the node binary is mounted (read-only); the image's fstab names both labels. */
const GUEST_HOST_SHARE = '/mnt/vmlet-host';
const SRC_LABEL = 'vmlet-src';
const HOST_LABEL = 'vmlet-host';
/** Left out of the share: build caches (the guest images themselves), test output, history. */
const SHARE_EXCLUDE = new Set(['.cache', '.tap', '.git']);
/** Temp dirs are named after the owning pid, so a later boot can remove those of killed test processes. */
const TMP_PREFIX = 'vmlet-sdguest-';
const builderPath = path.join(projectRoot, 'scripts', 'build-systemd-guest.mjs');
/** What commands run with: qemu-ga hands its own (nearly empty) environment on otherwise. */
const GUEST_ENV = [
  'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  'HOME=/root',
  'USER=root',
  'LOGNAME=root',
  'LANG=C.UTF-8',
  'SHELL=/bin/sh',
];

function findProjectRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`no package.json above ${from}`);
  }
}

/** The parts of the builder's manifest.json the harness reads. */
export interface SystemdGuestManifest {
  buildSeconds: number;
  debianVersion: string;
  kernelVersion: string;
  kernelArgs: string;
  kernel: { file: string };
  initrd: { file: string };
  disk: { file: string; size: number; allocatedBytes: number; usedBytes: number };
  versions: Record<string, string>;
  packageCount: number;
}

/** The cached image as paths. `disk` is the base image: never written; every boot gets a qcow2 overlay. */
export type SystemdGuestImage = GuestImageFiles<SystemdGuestManifest>;

interface BuilderModule {
  validSystemdGuest(out: string): SystemdGuestManifest | null;
  ensureSystemdGuest(o: { root: string; log: (msg: string) => void }): Promise<{ manifest: SystemdGuestManifest }>;
}

// A dynamic import with a computed specifier: the builder is plain JS without a declaration file.
const builder = (): Promise<BuilderModule> => import(pathToFileURL(builderPath).href) as Promise<BuilderModule>;

/** The cached image when it is complete and made by the current builder, else null. Never builds. */
export async function systemdGuestImage(dir = systemdGuestDir): Promise<SystemdGuestImage | null> {
  const manifest = (await builder()).validSystemdGuest(dir);
  return manifest ? imageFiles(dir, manifest) : null;
}

/**
 * Why the systemd guest cannot be booted here, or false. Builds the image when it is missing (a few
 * minutes with the Debian guest, ~10 s from it), unless VMLET_SKIP_SYSTEMD_GUEST=1.
 */
export async function systemdGuestSkipReason(o: { build?: boolean } = {}): Promise<string | false> {
  if (process.platform !== 'linux' || process.arch !== 'x64') return 'the systemd guest needs x86_64 Linux';
  if (process.getuid?.() !== 0) return 'needs root (the systemd guest is built in a loop-mounted chroot)';
  const tools: [bin: string, pkg: string][] = [
    ['qemu-system-x86_64', 'qemu-system-x86'],
    ['qemu-img', 'qemu-utils'],
    ['mke2fs', 'e2fsprogs'],
  ];
  for (const [bin, pkg] of tools) {
    if (!which(bin)) return `${bin} is not installed (apt-get install ${pkg})`;
  }
  if (await systemdGuestImage()) return false;
  if (o.build === false || process.env['VMLET_SKIP_SYSTEMD_GUEST'] === '1') {
    return `the systemd guest is not built in ${systemdGuestDir} (run "node scripts/build-systemd-guest.mjs" as root)`;
  }
  try {
    await (await builder()).ensureSystemdGuest({ root: projectRoot, log: (msg) => process.stderr.write(`systemd-guest: ${msg}\n`) });
  } catch (e) {
    return `the systemd guest could not be built: ${e instanceof Error ? e.message : String(e)}`;
  }
  return (await systemdGuestImage()) ? false : 'the systemd guest was built but does not validate (see .cache/systemd-guest/manifest.json)';
}

// ---------------------------------------------------------------------------------------------
// the shares: ext4 images made per boot (the guest's cloud kernel has no 9p)

/** Bytes in 4 KiB blocks and inode count of a tree (hard links once). */
function treeUsage(dir: string): { bytes: number; inodes: number } {
  let bytes = 0;
  let inodes = 0;
  eachInode(dir, (_ent, st) => {
    inodes++;
    bytes += Math.ceil(st.size / 4096) * 4096;
  });
  return { bytes, inodes };
}

/** A hard-link copy where it can (same filesystem: ~1 s for the tree with node_modules), else a real one. */
function linkCopy(from: string, to: string): void {
  try {
    execFileSync('cp', ['-al', from, to], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch {
    fs.rmSync(to, { recursive: true, force: true });
    execFileSync('cp', ['-a', '--reflink=auto', from, to], { stdio: ['ignore', 'ignore', 'pipe'] });
  }
}

/** An ext4 image of `tree`, without a journal (it is only ever read), sized to fit with some slack. */
function makeExt4(tree: string, image: string, label: string): void {
  const use = treeUsage(tree);
  const bytes = Math.ceil((use.bytes * 1.1 + use.inodes * 512 + 64 * 1024 * 1024) / (1024 * 1024)) * 1024 * 1024;
  fs.closeSync(fs.openSync(image, 'w'));
  fs.truncateSync(image, bytes);
  // prettier-ignore
  execFileSync('mke2fs', [
    '-q', '-F', '-t', 'ext4', '-O', '^has_journal', '-m', '0', '-L', label,
    '-N', String(use.inodes + 1024), '-d', tree, image,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * The project share: every top-level entry of the project but SHARE_EXCLUDE, plus `.cache/<name>` for each
 * of `cacheDirs` that exists (the tiny test guest, for VMs nested in this one).
 */
function makeSrcShare(dir: string, cacheDirs: string[]): string {
  const tree = path.join(dir, 'src-tree');
  fs.mkdirSync(tree);
  for (const name of fs.readdirSync(projectRoot)) {
    if (!SHARE_EXCLUDE.has(name)) linkCopy(path.join(projectRoot, name), path.join(tree, name));
  }
  for (const name of cacheDirs) {
    const from = path.join(projectRoot, '.cache', name);
    if (!fs.existsSync(from)) continue;
    fs.mkdirSync(path.join(tree, '.cache'), { recursive: true });
    linkCopy(from, path.join(tree, '.cache', name));
  }
  const image = path.join(dir, 'src.ext4');
  makeExt4(tree, image, SRC_LABEL);
  fs.rmSync(tree, { recursive: true, force: true });
  return image;
}

function makeHostShare(dir: string, nodeBinary: string): string {
  const tree = path.join(dir, 'host-tree');
  fs.mkdirSync(tree);
  linkCopy(fs.realpathSync(nodeBinary), path.join(tree, 'node'));
  const image = path.join(dir, 'host.ext4');
  makeExt4(tree, image, HOST_LABEL);
  fs.rmSync(tree, { recursive: true, force: true });
  return image;
}

/** Removes the temp dirs of test processes that died without cleaning up (SIGKILL, tap's timeout). */
function removeStaleDirs(): void {
  const re = new RegExp(`^${TMP_PREFIX}(\\d+)-`);
  for (const name of fs.readdirSync(os.tmpdir())) {
    const pid = Number(re.exec(name)?.[1]);
    if (!pid || pid === process.pid) continue;
    try {
      process.kill(pid, 0);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH') fs.rmSync(path.join(os.tmpdir(), name), { recursive: true, force: true });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// running commands through the guest agent

export interface ExecOptions {
  /** default 120 000; on expiry the command's process group is killed and exec throws SYSTEMD_GUEST_EXEC_TIMEOUT */
  timeoutMs?: number;
  /** written to the command's stdin, then stdin is closed */
  input?: string;
}

export interface ExecResult {
  /** the exit code; 128 + N when killed by signal N */
  code: number;
  stdout: string;
  stderr: string;
  /** qemu-ga keeps at most 16 MiB of each stream; true when it dropped the rest */
  truncated: boolean;
}

interface ExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  'out-data'?: string;
  'err-data'?: string;
  'out-truncated'?: boolean;
  'err-truncated'?: boolean;
}

function isExecStatus(v: unknown): v is ExecStatus {
  return typeof v === 'object' && v !== null && typeof (v as { exited?: unknown }).exited === 'boolean';
}

/** A path inside a QEMU option list (`file=…,id=…`), where a comma must be doubled. */
const opt = (p: string): string => p.replaceAll(',', ',,');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const fromB64 = (s: string | undefined): string => (s ? Buffer.from(s, 'base64').toString('utf8') : '');

function toResult(st: ExecStatus): ExecResult {
  return {
    code: st.exitcode ?? (st.signal !== undefined ? 128 + st.signal : -1),
    stdout: fromB64(st['out-data']),
    stderr: fromB64(st['err-data']),
    truncated: st['out-truncated'] === true || st['err-truncated'] === true,
  };
}

async function execStatus(agent: GuestAgentClient, pid: number): Promise<ExecStatus> {
  const st: unknown = await agent.execute('guest-exec-status', { pid }, { timeoutMs: 30_000 });
  if (!isExecStatus(st)) throw new Error(`SYSTEMD_GUEST_AGENT_PROTOCOL: guest-exec-status answered ${JSON.stringify(st)}`);
  return st;
}

/**
 * `/bin/sh -c cmd` as root via guest-exec. setsid makes the shell lead its own process group, so a timeout
 * kills everything it started (but not daemons that left the group). The agent returns the output only
 * once the process has exited and every holder of its stdout/stderr has closed them: a background job
 * that keeps them open holds exec until the timeout (redirect its output).
 */
async function guestExec(agent: GuestAgentClient, cmd: string, o: ExecOptions): Promise<ExecResult> {
  const timeoutMs = o.timeoutMs ?? 120_000;
  const deadline = Date.now() + timeoutMs;
  const args = {
    path: '/usr/bin/setsid',
    arg: ['/bin/sh', '-c', cmd],
    env: GUEST_ENV,
    'capture-output': true,
    ...(o.input !== undefined ? { 'input-data': Buffer.from(o.input).toString('base64') } : {}),
  };
  const started: unknown = await agent.execute('guest-exec', args, { timeoutMs: 30_000 });
  const pid = (started as { pid?: unknown } | null)?.pid;
  if (typeof pid !== 'number') throw new Error(`SYSTEMD_GUEST_AGENT_PROTOCOL: guest-exec answered ${JSON.stringify(started)}`);
  for (let pause = 20; ; pause = Math.min(pause * 2, 250)) {
    const st = await execStatus(agent, pid);
    if (st.exited) return toResult(st);
    if (Date.now() > deadline) break;
    await sleep(pause);
  }
  // Timed out: kill the group, then collect what it printed (the agent hands it over once the pipes close).
  await agent.execute('guest-exec', { path: '/bin/kill', arg: ['-KILL', '--', `-${pid}`] }, { timeoutMs: 10_000 }).catch(() => undefined);
  let partial: ExecResult | undefined;
  for (let i = 0; i < 20 && !partial; i++) {
    await sleep(100);
    const st = await execStatus(agent, pid).catch(() => undefined);
    if (st?.exited) partial = toResult(st);
  }
  const tail = (s: string): string => JSON.stringify(s.slice(-400));
  const seen = partial ? `; stdout ends ${tail(partial.stdout)}, stderr ends ${tail(partial.stderr)}` : '; its output could not be collected';
  throw new Error(`SYSTEMD_GUEST_EXEC_TIMEOUT: ${JSON.stringify(cmd)} did not finish within ${timeoutMs} ms and was killed${seen}`);
}

// ---------------------------------------------------------------------------------------------
// booting

export interface BootSystemdGuestOptions {
  /** guest RAM; default 3072 (nested VMs run inside) */
  memoryMiB?: number;
  /** default 2 */
  cpus?: number;
  /** default tcg (kvm with VMLET_TEST_ACCEL=kvm) */
  accel?: 'tcg' | 'kvm';
  /**
   * default `max,la57=off,svm=off` under TCG. svm=off: TCG emulates AMD's SVM, so the guest would get a
   * /dev/kvm for nested VMs to try (slow, fragile); without it they use TCG as on a host without KVM.
   * la57=off: with 5-level paging and svm=off, QEMU 7.2's TCG boots a guest whose mounts fail (EBUSY,
   * "no mount"), udevd included; with la57 off it boots cleanly.
   */
  cpu?: string;
  /** appended to the image's `root=/dev/vda console=ttyS0` and the harness's speed-ups */
  kernelArgs?: string;
  /** a virtio NIC on QEMU user networking (DHCP 10.0.2.15, no inbound); default none */
  net?: boolean;
  /** subdirectories of the project's .cache/ to put into the share; default ['guest'] (the tiny test guest) */
  cacheDirs?: string[];
  /** the node binary copied to SYSTEMD_GUEST_NODE; default the one running this process */
  nodeBinary?: string;
  /** from spawn until `systemctl is-system-running --wait` answers; default 300 000 */
  bootTimeoutMs?: number;
  /** more QEMU arguments, appended */
  extraQemuArgs?: string[];
  /** progress lines (boot time, failed units); default stderr */
  log?: (msg: string) => void;
}

export interface SystemdGuest {
  /** `/bin/sh -c cmd` as root in the guest; rejects only on timeout or agent failure, never for a non-zero exit */
  exec(cmd: string, opts?: ExecOptions): Promise<ExecResult>;
  /** everything the guest wrote on its serial console so far (kernel, systemd, getty) */
  serialLog(): string;
  /** Powers the guest off (guest agent), kills QEMU after `graceMs` (default 30 000), removes `dir`. Safe to call twice. */
  shutdown(opts?: { graceMs?: number }): Promise<void>;
  /** the temp dir: overlay.qcow2, src.ext4, host.ext4, serial.log, qmp.sock, qga.sock */
  dir: string;
  /** ms from spawning QEMU until `systemctl is-system-running --wait` returned */
  bootMs: number;
  /** what is-system-running said: running, or degraded with `failedUnits` */
  systemState: string;
  failedUnits: string[];
  /** ms spent making the overlay and the share images before QEMU started */
  prepareMs: number;
  qemuPid: number;
  qmpSocket: string;
  agentSocket: string;
  argv: string[];
}

/**
 * Boots a fresh guest: a qcow2 overlay on the cached image (never written), the project tree as a
 * read-only ext4 disk mounted at SYSTEMD_GUEST_SRC, node copied to SYSTEMD_GUEST_NODE. Resolves once
 * systemd reports the boot finished (running or degraded) and the shares are in place.
 */
export async function bootSystemdGuest(opts: BootSystemdGuestOptions = {}): Promise<SystemdGuest> {
  const image = await systemdGuestImage();
  if (!image) throw new Error(`SYSTEMD_GUEST_NO_IMAGE: ${await systemdGuestSkipReason({ build: false })}`);
  const log = opts.log ?? ((msg: string) => process.stderr.write(`systemd-guest: ${msg}\n`));
  removeStaleDirs();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${TMP_PREFIX}${process.pid}-`));
  const paths = {
    overlay: path.join(dir, 'overlay.qcow2'),
    serialLog: path.join(dir, 'serial.log'),
    qmp: path.join(dir, 'qmp.sock'),
    qga: path.join(dir, 'qga.sock'),
  };
  let child: ChildProcess | undefined;
  // A test process that exits without shutdown() (a failed assertion, process.exit) takes QEMU and the dir with it.
  const onExit = (): void => {
    child?.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', onExit);
  const agent = new GuestAgentClient({ path: paths.qga, connectTimeoutMs: 5_000, syncTimeoutMs: 2_000, maxLineBytes: 64 * 1024 * 1024 });

  let exitInfo: string | null = null;
  let stderr = '';
  let exited: Promise<void> = Promise.resolve();
  let down: Promise<void> | undefined;
  const kill = async (graceMs: number): Promise<void> => {
    if (child && exitInfo === null) {
      if (graceMs > 0) {
        await agent.shutdown('powerdown', { timeoutMs: 5_000 }).catch(() => undefined);
        await Promise.race([exited, sleep(graceMs)]);
      }
      if (exitInfo === null) child.kill('SIGTERM');
      await Promise.race([exited, sleep(5_000)]);
      if (exitInfo === null) child.kill('SIGKILL');
      await exited;
    }
  };
  const shutdown = (o: { graceMs?: number } = {}): Promise<void> => {
    // a second call (a teardown after an explicit shutdown) waits for the first
    down ??= (async () => {
      await kill(o.graceMs ?? 30_000);
      await agent.close();
      process.off('exit', onExit);
      fs.rmSync(dir, { recursive: true, force: true });
    })();
    return down;
  };
  const serialLog = (): string => {
    try {
      return fs.readFileSync(paths.serialLog, 'utf8');
    } catch {
      return '';
    }
  };

  try {
    const tPrep = Date.now();
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', image.disk, paths.overlay], { stdio: ['ignore', 'ignore', 'pipe'] });
    const srcImage = makeSrcShare(dir, opts.cacheDirs ?? ['guest']);
    const hostImage = makeHostShare(dir, opts.nodeBinary ?? process.execPath);
    const prepareMs = Date.now() - tPrep;

    const accel = opts.accel ?? (process.env['VMLET_TEST_ACCEL'] === 'kvm' ? 'kvm' : 'tcg');
    // Kernel speed-ups that matter under TCG: no Spectre mitigations, no audit, trust the TSC, no legacy probing.
    const kernelArgs = [
      image.kernelArgs,
      'mitigations=off',
      'audit=0',
      'tsc=reliable',
      'no_timer_check',
      'i8042.noaux',
      'i8042.nomux',
      'i8042.nopnp',
      '8250.nr_uarts=1',
    ]
      .concat(opts.kernelArgs ? [opts.kernelArgs] : [])
      .join(' ');
    // prettier-ignore
    const argv = [
      '-name', 'vmlet-systemd-guest',
      '-accel', accel,
      '-cpu', opts.cpu ?? (accel === 'kvm' ? 'host' : 'max,la57=off,svm=off'),
      '-machine', 'q35',
      '-m', String(opts.memoryMiB ?? 3072),
      '-smp', String(opts.cpus ?? 2),
      '-nodefaults', '-no-user-config', '-display', 'none',
      '-kernel', image.kernel,
      '-initrd', image.initrd,
      '-append', kernelArgs,
      // root first, so it is /dev/vda; cache=unsafe: the overlay is thrown away anyway
      '-drive', `file=${opt(paths.overlay)},if=none,id=root,format=qcow2,cache=unsafe,discard=unmap`,
      '-device', 'virtio-blk-pci,drive=root',
      '-drive', `file=${opt(srcImage)},if=none,id=src,format=raw,readonly=on`,
      '-device', 'virtio-blk-pci,drive=src',
      '-drive', `file=${opt(hostImage)},if=none,id=host,format=raw,readonly=on`,
      '-device', 'virtio-blk-pci,drive=host',
      '-chardev', `file,id=ser0,path=${opt(paths.serialLog)}`,
      '-serial', 'chardev:ser0',
      '-chardev', `socket,id=qmp0,path=${opt(paths.qmp)},server=on,wait=off`,
      '-mon', 'chardev=qmp0,mode=control',
      '-chardev', `socket,id=qga0,path=${opt(paths.qga)},server=on,wait=off`,
      '-device', 'virtio-serial-pci,id=vser0',
      '-device', 'virtserialport,bus=vser0.0,nr=1,chardev=qga0,name=org.qemu.guest_agent.0',
      '-device', 'virtio-rng-pci',
      ...(opts.net ? ['-nic', 'user,model=virtio-net-pci'] : ['-nic', 'none']),
      ...(opts.extraQemuArgs ?? []),
    ];
    const qemu = which('qemu-system-x86_64') ?? 'qemu-system-x86_64';
    // setpriv --pdeathsig: QEMU dies with this process even when that is SIGKILLed (no 'exit' event then)
    const setpriv = which('setpriv');
    const [cmd, args] = setpriv ? [setpriv, ['--pdeathsig', 'KILL', qemu, ...argv]] : [qemu, argv];
    const spawnedAt = Date.now();
    const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    child = proc;
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d: string) => {
      stderr += d;
    });
    exited = new Promise<void>((resolve) => {
      proc.on('exit', (code, signal) => {
        exitInfo = signal ? `signal ${signal}` : `code ${code}`;
        resolve();
      });
      proc.on('error', (e) => {
        exitInfo = `spawn failed: ${e.message}`;
        resolve();
      });
    });
    const bootTimeoutMs = opts.bootTimeoutMs ?? 300_000;
    const deadline = spawnedAt + bootTimeoutMs;
    // The temp dir goes with the failure; the whole serial log is kept next to it for a post-mortem.
    const failBoot = (what: string): Error => {
      const text = serialLog();
      const kept = path.join(os.tmpdir(), `${TMP_PREFIX}failed-${process.pid}-${Date.now()}.serial.log`);
      fs.writeFileSync(kept, text);
      const tail = text.slice(-1500);
      return new Error(`SYSTEMD_GUEST_BOOT_FAILED: ${what}; QEMU stderr: ${stderr.trim() || '(none)'}; serial log in ${kept}, it ends:\n${tail}`);
    };

    // The agent starts as soon as udev sees its port, well before the boot finishes.
    for (;;) {
      if (exitInfo !== null) throw failBoot(`QEMU exited (${exitInfo}) before the guest agent answered`);
      if (Date.now() > deadline) throw failBoot(`the guest agent did not answer within ${bootTimeoutMs} ms`);
      try {
        await agent.ping({ timeoutMs: 2_000 });
        break;
      } catch {
        await sleep(500);
      }
    }
    const agentMs = Date.now() - spawnedAt;
    const state = await guestExec(agent, 'systemctl is-system-running --wait', { timeoutMs: Math.max(deadline - Date.now(), 1_000) }).catch((e: unknown) => {
      throw failBoot(`waiting for systemd: ${e instanceof Error ? e.message : String(e)}`);
    });
    const bootMs = Date.now() - spawnedAt;
    const systemState = state.stdout.trim();
    let failedUnits: string[] = [];
    if (systemState === 'degraded') {
      const failed = await guestExec(agent, 'systemctl list-units --failed --no-legend --plain', { timeoutMs: 30_000 });
      failedUnits = failed.stdout
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => l.split(/\s+/)[0] ?? l);
      log(`guest is degraded: failed units: ${failedUnits.join(', ') || '(none listed)'}`);
    } else if (systemState !== 'running') {
      throw failBoot(`systemctl is-system-running --wait said ${JSON.stringify(systemState)} (exit ${state.code}) ${state.stderr.trim()}`);
    }

    // fstab mounts the shares at boot; mount them here if that failed, then put node where a user would install it.
    const setup = await guestExec(
      agent,
      [
        `{ mountpoint -q ${SYSTEMD_GUEST_SRC} || mount -o ro,noload LABEL=${SRC_LABEL} ${SYSTEMD_GUEST_SRC}; }`,
        `{ mountpoint -q ${GUEST_HOST_SHARE} || mount -o ro,noload LABEL=${HOST_LABEL} ${GUEST_HOST_SHARE}; }`,
        `install -m 0755 ${GUEST_HOST_SHARE}/node ${SYSTEMD_GUEST_NODE}`,
      ].join(' && '),
      { timeoutMs: 60_000 },
    );
    if (setup.code !== 0) throw failBoot(`setting up the shares failed (exit ${setup.code}): ${setup.stderr.trim()}`);
    log(
      `booted in ${(bootMs / 1000).toFixed(1)} s (agent up after ${(agentMs / 1000).toFixed(1)} s; overlay and shares made in ${(prepareMs / 1000).toFixed(1)} s); ${systemState}`,
    );

    return {
      exec: (command, o = {}) => guestExec(agent, command, o),
      serialLog,
      shutdown,
      dir,
      bootMs,
      systemState,
      failedUnits,
      prepareMs,
      qemuPid: proc.pid ?? -1,
      qmpSocket: paths.qmp,
      agentSocket: paths.qga,
      argv: [qemu, ...argv],
    };
  } catch (e) {
    await shutdown({ graceMs: 0 });
    throw e;
  }
}
