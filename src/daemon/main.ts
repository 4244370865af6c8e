// `vmlet daemon`: wires the store, controller, node reconciler, launcher socket and API socket, and runs until a signal.
import { ensureKvmAccess } from './kvm-access.js';
import { resolveQemuUser } from './qemu-sandbox.js';
import { startTraces } from './start-trace.js';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pino, { type Logger } from 'pino';
import { detectCgroupLayout } from '../cgroups/index.js';
import { LauncherSpare, sparesPossible } from './launcher-spare.js';
import { vmletVersion } from '../version.js';
import { VmController } from '../controller/vm-controller.js';
import { VmletError } from '../errors.js';
import { describeCaps, probeQemu, type ProbeOptions, type QemuCaps } from '../qemu/probe.js';
import { LauncherServer } from '../qemu/launcher-server.js';
import { LocalStore } from '../source/local-store.js';
import { ApiServer } from './api-server.js';
import { loadConfig, wantsTextLogs, type DaemonConfig, type DaemonFlags } from './config.js';
import type { RunningKubeDaemon } from './kube-daemon.js';
import { LocalBackend } from './local-backend.js';
import { NodeReconciler } from './node-reconciler.js';
import { makePrepare } from './prepare.js';
import { VmCgroups } from './vm-cgroup.js';
import { VmNetwork } from './vm-network.js';
import { ImageStore } from '../images/store.js';
import { FormatRecords } from '../disk/format-records.js';
import { imageApi } from './image-api.js';
import { lockDirs, lockDirsWaiting, type DirLock } from '../sys/dir-lock.js';
import { groupId, type SocketAccess } from './api-access.js';
import { ClientConnections } from './api-client-limit.js';
import { NodeAdmission } from './node-admission.js';
import { apiAnswers, SystemdNotifier } from './systemd-notify.js';
import { describeCounts, VmCountWatch } from './vm-counts.js';
import { MallocTrimmer } from './malloc-trim.js';
import { fixMallocThresholds, limitMallocArenas } from '../sys/malloc.js';
import { onNetnsStuck } from '../sys/netns.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface RunningDaemon {
  config: DaemonConfig;
  store: LocalStore;
  node: NodeReconciler;
  controller: VmController;
  api: ApiServer;
  launcherServer: LauncherServer;
  /** Stops serving; VMs keep running (they belong to their launchers, not to the daemon). */
  close(): Promise<void>;
}

/** QEMU probed once per daemon start (prepare reuses the cached result): KVM counts only if a guest ran under it. */
async function probeAtStart(config: DaemonConfig, logger: Logger): Promise<QemuCaps> {
  const probeOptions: ProbeOptions = { devKvm: config.kvmDevice, kvmProbeDeadlineMs: config.kvmProbeDeadlineMs };
  // VMLET_TRACE=1: one log line per VMI start with each step's time (docs/performance.md).
  if (process.env['VMLET_TRACE'] === '1') startTraces.onEnd((t) => logger.info({ trace: t }, 'start trace'));
  const caps = await probeQemu(config.qemuBinary, probeOptions).catch((e: unknown) => {
    throw new VmletError('QEMU_NOT_FOUND', `cannot use QEMU at ${config.qemuBinary}; install qemu-system-x86 (npm run setup does)`, { cause: e });
  });
  logger.info({ qemu: describeCaps(caps), accel: config.accel, useEmulation: config.useEmulation, kvmProbeMs: caps.kvm.durationMs }, 'QEMU probed');
  if (!caps.kvm.usable && config.accel !== 'tcg') {
    const then =
      config.accel === 'auto' && config.useEmulation
        ? 'VMs run with software emulation (TCG, slow)'
        : 'VMs will fail to start until KVM works or software emulation is allowed (useEmulation: true or --accel tcg)';
    logger.warn({ kvm: caps.kvm.reason, stage: caps.kvm.stage }, `KVM is not usable: ${then}`);
  }

  return caps;
}

/** `vmlet daemon --mode kubernetes`: the same start-up checks, then the cluster's node daemon (kube-daemon.ts). */
export async function startKubernetesDaemon(config: DaemonConfig, logger: Logger): Promise<RunningKubeDaemon> {
  await fs.mkdir(config.runDir, { recursive: true, mode: 0o755 });
  // A DaemonSet may start this pod while the previous daemon's is still terminating: wait for it a while.
  const locks = await lockDirsWaiting([{ dir: config.runDir, what: 'the run folder' }], KUBE_LOCK_WAIT_MS, (e) =>
    logger.warn({ err: e }, 'waiting for the previous daemon to let go of the run folder'),
  );
  try {
    await checkLauncher(config);
    const caps = await probeAtStart(config, logger);
    // Loaded only in this mode: the Kubernetes client and gRPC are most of the standalone daemon's memory otherwise.
    const { startKubeDaemon } = await import('./kube-daemon.js');
    const d = await startKubeDaemon(config, caps, logger);
    return { ...d, close: (opts) => d.close(opts).finally(() => releaseAll(locks)) };
  } catch (e) {
    releaseAll(locks);
    throw e;
  }
}

function releaseAll(locks: DirLock[]): void {
  for (const l of locks) l.release();
}

async function checkLauncher(config: DaemonConfig): Promise<void> {
  try {
    await fs.access(config.launcherBinary);
  } catch (e) {
    throw new VmletError('LAUNCHER_MISSING', `vmlet-launch not found at ${config.launcherBinary}; build it with "make -C native" (npm run setup does)`, {
      cause: e,
    });
  }
}

/** Kubernetes mode: how long a daemon waits for the previous one (its pod terminating) to release the run folder; more than the pod's 30 s grace period. */
export const KUBE_LOCK_WAIT_MS = 60_000;

/** Starts every part of the daemon and returns once the API socket answers. */
export async function startDaemon(config: DaemonConfig, logger: Logger): Promise<RunningDaemon> {
  await fs.mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  await fs.mkdir(path.join(config.runDir, 'vms'), { recursive: true, mode: 0o700 });
  await fs.mkdir(path.dirname(config.socket), { recursive: true, mode: 0o755 });
  // Before anything in either folder is read, removed or killed: a second daemon would take the first one's VMs for strays.
  const locks = lockDirs([
    { dir: config.stateDir, what: 'the state folder' },
    { dir: config.runDir, what: 'the run folder' },
  ]);
  try {
    return await startLocked(config, logger, locks);
  } catch (e) {
    releaseAll(locks);
    throw e;
  }
}

/** The sockets' groups, resolved before anything starts (a group that does not exist is CONFIG_INVALID). */
function socketAccessOf(config: DaemonConfig): { main: SocketAccess; readOnly?: SocketAccess } {
  const main: SocketAccess = config.socketGroup === '' ? {} : { gid: groupId(config.socketGroup) };
  if (config.readOnlySocket === '') return { main };
  return { main, readOnly: { readOnly: true, ...(config.readOnlySocketGroup === '' ? {} : { gid: groupId(config.readOnlySocketGroup) }) } };
}

async function startLocked(config: DaemonConfig, logger: Logger, locks: DirLock[]): Promise<RunningDaemon> {
  const access = socketAccessOf(config);
  await checkLauncher(config);
  const qemuUser = resolveQemuUser(config.qemuUser, { kvmDevice: config.kvmDevice });
  const caps = await probeAtStart(config, logger);
  const probeOptions: ProbeOptions = { devKvm: config.kvmDevice, kvmProbeDeadlineMs: config.kvmProbeDeadlineMs };
  if (qemuUser === undefined) logger.warn('qemuUser is root: QEMU runs as root with every capability in the host mount namespace');
  else if (caps.kvm.usable && qemuUser.groups.length === 0) {
    // The unprivileged QEMU must open /dev/kvm: through its group (Debian's 0660 root:kvm) or, without one, o+rw.
    await ensureKvmAccess({ devicePath: config.kvmDevice, keep: !config.kvmWorldAccessible, logger: logger.child({ component: 'kvm-access' }) });
  }

  let cgroups: VmCgroups | undefined;
  let launcherSpare: LauncherSpare | undefined;
  if (config.cgroupParent !== '') {
    const layout = await detectCgroupLayout({ root: config.cgroupRoot, mountinfoPath: '/proc/self/mountinfo' });
    cgroups = new VmCgroups({ layout, parent: config.cgroupParent });
    logger.info({ mode: layout.mode, parent: config.cgroupParent }, 'VM cgroups');
    if (config.launcherSpare && sparesPossible(cgroups)) {
      const log = logger.child({ component: 'launcher-spare' });
      launcherSpare = new LauncherSpare({
        cgroups,
        launcherBinary: config.launcherBinary,
        runDir: config.runDir,
        log,
        quiet: () => startTraces.open === 0,
      });
    }
  } else {
    logger.warn('cgroupParent is empty: VMs get no cgroup of their own and no limits');
  }

  // The host side first: a subnet that clashes with the host's routes stops the daemon here.
  const network = new VmNetwork({ config: config.network, stateDir: config.stateDir, logger: logger.child({ component: 'net' }) });
  if (network.enabled) {
    await network.start();
    logger.info({ bridge: config.network.bridge, subnet: config.network.subnet }, 'networking ready');
  } else {
    logger.warn('network.enabled is false: VMs get no NIC');
  }

  const store = await LocalStore.open({ dir: config.stateDir, logger: logger.child({ component: 'store' }) });
  const images = new ImageStore({ dir: path.join(config.stateDir, 'images'), log: logger.child({ component: 'images' }) });
  await images.init();
  const formats = new FormatRecords(path.join(config.stateDir, 'disk-formats'));
  let node: NodeReconciler | undefined;
  const launcherSocket = path.join(config.runDir, 'launcher.sock');
  const launcherServer = new LauncherServer({
    socketPath: launcherSocket,
    onHello: (h) => (node ? node.onHello(h) : { action: 'reject', reason: 'the daemon is starting' }),
    logger: logger.child({ component: 'launcher-server' }),
  });
  node = new NodeReconciler({
    store,
    nodeName: config.nodeName,
    runDir: config.runDir,
    launcherServer,
    launcherBinary: config.launcherBinary,
    launcherSocket,
    prepare: makePrepare({
      qemuBinary: config.qemuBinary,
      accel: config.accel,
      useEmulation: config.useEmulation,
      probe: probeOptions,
      network,
      images,
      formats,
      scratchRoot: path.join(config.stateDir, 'scratch'),
      hostPathsAllow: config.hostPaths.allow,
      ...(qemuUser ? { qemuOwner: qemuUser } : {}),
    }),
    scratchRoot: path.join(config.stateDir, 'scratch'),
    ...(qemuUser ? { qemuSandbox: { user: qemuUser, qemuBinary: config.qemuBinary } } : {}),
    onImagesChanged: (listener) => images.onChange(listener),
    logger: logger.child({ component: 'node' }),
    ...(cgroups ? { cgroups } : {}),
    ...(launcherSpare ? { launcherSpare } : {}),
    network,
  });
  // Node limits and MACs in use: one admission for the API's creates and the controller's, so neither overshoots the other.
  const admission = new NodeAdmission({ limits: config.limits, listVmis: () => store.list('VirtualMachineInstance') });
  const controller = new VmController({
    source: store,
    nodeName: config.nodeName,
    logger: logger.child({ component: 'controller' }),
    admit: (vmi, create) => admission.admit(vmi, create),
  });
  // Supervisors of running VMs exist before launchers reconnect, so none of them is turned away.
  await node.start();
  await launcherServer.listen();
  await launcherSpare?.start();
  controller.start();
  const backend = new LocalBackend({
    store,
    node,
    controller,
    network,
    hostPathsAllow: config.hostPaths.allow,
    qmpAllow: config.qmpPassthrough.allow,
    admission,
    logger: logger.child({ component: 'api' }),
  });
  const clientConnections = new ClientConnections(config.limits.maxConnectionsPerClient);
  const serve = (socketPath: string, access: SocketAccess, component: string): Promise<ApiServer> =>
    ApiServer.listen({
      backend,
      socketPath,
      access,
      logger: logger.child({ component }),
      maxBodyBytes: config.maxBodyBytes,
      images: imageApi(images, store),
      clientConnections,
      version: { vmlet: vmletVersion(), qemu: caps.version.text, kvm: caps.kvm, accel: config.accel, useEmulation: config.useEmulation },
    });
  const api = await serve(config.socket, access.main, 'api');
  const readOnly = access.readOnly ? await serve(config.readOnlySocket, access.readOnly, 'api-ro') : undefined;
  return {
    config,
    store,
    node,
    controller,
    api,
    launcherServer,
    async close() {
      controller.stop();
      node.stop();
      await launcherSpare?.close();
      await api.close();
      await readOnly?.close();
      await launcherServer.close();
      await network.close();
      await store.close();
      releaseAll(locks);
    },
  };
}

/**
 * The daemon's logger: pino JSON on stdout, or (logFormat text, or auto on a terminal) one human-readable line per
 * entry. pino-pretty is loaded only then, and runs in this thread rather than as a worker transport (which would
 * start a thread and lose lines written just before process.exit).
 */
async function makeLogger(config: DaemonConfig): Promise<Logger> {
  const options = { level: config.logLevel, base: { node: config.nodeName } };
  if (!wantsTextLogs(config.logFormat, process.stdout.isTTY === true)) return pino(options);
  const { textLogDestination } = await import('./log-format.js');
  return pino(options, textLogDestination({ out: process.stdout, colorize: process.stdout.isTTY === true && process.env.NO_COLOR === undefined }));
}

/** The `vmlet daemon` verb: runs in the foreground until SIGTERM/SIGINT. */
export async function runDaemon(flags: DaemonFlags): Promise<void> {
  // Before the pool threads allocate: an arena per thread is kept at its high-water mark (−3 MB measured).
  limitMallocArenas(2);
  fixMallocThresholds();
  const config = loadConfig(repoRoot, flags);
  const logger = await makeLogger(config);
  const systemd = new SystemdNotifier({ logger: logger.child({ component: 'systemd' }) });
  onNetnsStuck((err) => {
    logger.fatal({ err }, 'exiting: the main thread is stuck in a sandbox netns; VMs keep running');
    process.exit(70);
  });
  // From the first moment: the start-up (QEMU probe, re-adoption) runs under the watchdog too.
  systemd.startWatchdog();
  let daemon: RunningDaemon | RunningKubeDaemon;
  try {
    daemon = config.mode === 'kubernetes' ? await startKubernetesDaemon(config, logger) : await startDaemon(config, logger);
  } catch (e) {
    logger.fatal({ err: e }, 'the daemon could not start');
    const code = e instanceof VmletError ? ` (${e.code})` : '';
    process.stderr.write(`vmlet daemon: ${(e as Error).message}${code}\n`);
    process.exit(1);
  }
  logger.info({ socket: config.socket, stateDir: config.stateDir, runDir: config.runDir }, 'vmlet daemon ready');
  // Standalone: the VM count, for systemd's STATUS line and to trim malloc once starts and stops settle.
  const trimmer = new MallocTrimmer();
  const onCounts = (): void => {
    trimmer.poke();
    if (systemd.enabled) systemd.status(statusLine());
  };
  const counts = 'store' in daemon ? new VmCountWatch({ store: daemon.store, onChange: onCounts, logger: logger.child({ component: 'counts' }) }) : undefined;
  const statusLine = (): string => `${counts ? `${describeCounts(counts.counts())}, ` : ''}serving on ${config.socket}`;
  counts?.start();
  // What start-up freed goes back once it has settled too.
  trimmer.poke();
  const running = daemon;
  const stopped = new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      logger.info({ signal: sig }, 'stopping the daemon; VMs keep running');
      systemd.stopping();
      counts?.close();
      trimmer.close();
      void running.close().finally(resolve);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  // READY=1 once the API answers and the VMs found running are re-adopted (bounded); a stop first cancels it.
  void systemd
    .ready({ apiAnswers: () => (systemd.enabled ? apiAnswers(config.socket) : Promise.resolve()), readoptions: daemon.node.readoptions, status: statusLine })
    .catch((err: unknown) => logger.error({ err }, 'could not tell systemd the daemon is ready'));
  await stopped;
  systemd.close();
  process.exit(0);
}
