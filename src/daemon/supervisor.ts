// One VMI's supervisor, the effectful shell around the pure core (supervisor-core.ts): it feeds the core events and carries out the effects it returns — prepare, launch or re-adopt QEMU, drive it over QMP, report status.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { VmletError } from '../errors.js';
import { isLiveProcessFor, readRunDir, spawnLauncher, type RunDirState } from '../qemu/launch.js';
import type { HelloDecision, LauncherHello } from '../qemu/launcher-server.js';
import type { QmpClient } from '../qmp/client.js';
import { closeFds } from '../sys/libc.js';
import { AgentWatch } from './agent-watch.js';
import { SerialConsole } from './console.js';
import { QmpWatch, runningQmp } from './qmp-watch.js';
import { Changes } from './supervisor-changes.js';
import { LauncherWatch } from './supervisor-launcher.js';
import { accelOfProcess, inspectPodLauncher, podLauncherArrival, POD_ARRIVE_MS, POD_HELLO_WAIT_MS } from './supervisor-pod.js';
import { INITIAL_STATE, step, type CoreEvent, type CoreState, type Effect, type ExitReport, type Outcome, type PreparedLaunch } from './supervisor-core.js';
import { adoptedStatus, applyEdit, editIsBestEffort, launchedStatus, runningStatus, type Runtime } from './supervisor-status.js';
import type { PrepareContext, SupervisorDeps } from './supervisor-deps.js';
import { escalateStop, finalizeVmi, killVmProcesses, releaseVmNetwork, type FinalizeInput } from './supervisor-exit.js';
import { setUpVmCgroup } from './vm-cgroup-setup.js';
import { vmResources, vmSizing, type VmResources, type VmSizing } from './vm-resources.js';
import type { SupervisorState } from './vmi-state.js';
import { type Accel, DEFAULT_PROC_ROOT } from '../api/vocabulary.js';

export type { ExitReport, PreparedLaunch } from './supervisor-core.js';
export type { SupervisorDeps } from './supervisor-deps.js';

/** How long a launcher's HELLO waits for prepare to rebuild QEMU's argv (after a restart; in a pod, while the network is built). */
const HELLO_WAIT_MS = 10_000;

export class Supervisor {
  /** Resolves once QEMU is gone and the final status is written. */
  readonly done: Promise<ExitReport>;

  #core: CoreState = INITIAL_STATE;
  #qemuPid: number | undefined;
  #launcherPid: number | undefined;
  #console: SerialConsole | undefined;
  #pendingLaunch: PreparedLaunch | undefined;
  #sizing: VmSizing | undefined;
  /** The VM group's resources, once computed at launch. */
  #resources: VmResources | undefined;
  #resolveDone!: (r: ExitReport) => void;
  /** Kubernetes mode: the pod's launcher said HELLO (its pid, daemon's namespace). */
  #arrived: Promise<number>;
  /** Aborted by a stop, so a prepare that waits (for an image) gives up. */
  readonly #stopping = new AbortController();
  #resolveArrived!: (pid: number) => void;
  private readonly uid: string;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly changes = new Changes();
  private readonly qmpWatch: QmpWatch;
  private readonly agent: AgentWatch;
  private readonly launcher: LauncherWatch;

  constructor(private readonly deps: SupervisorDeps) {
    this.uid = deps.vmi.metadata.uid ?? '';
    this.log = deps.logger;
    this.now = deps.now ?? Date.now;
    this.done = new Promise((resolve) => (this.#resolveDone = resolve));
    this.#arrived = new Promise((resolve) => (this.#resolveArrived = resolve));
    const dispatch = (e: CoreEvent): Promise<Outcome> => this.dispatch(e);
    this.qmpWatch = new QmpWatch({ runDir: deps.runDir, uid: this.uid, logger: this.log, procRoot: deps.procRoot, dispatch });
    this.agent = new AgentWatch({ runDir: deps.runDir, running: () => this.state === 'Running', dispatch, guestInterfaces: deps.guestInterfaces });
    this.launcher = new LauncherWatch({
      server: deps.launcherServer,
      uid: this.uid,
      runDir: deps.runDir,
      procRoot: deps.procRoot,
      logger: this.log,
      dispatch,
      exited: () => this.exited,
      launcherPid: () => this.#launcherPid,
      started: (pid) => {
        this.#qemuPid = pid;
      },
    });
  }

  get state(): SupervisorState {
    return this.#core.phase;
  }

  /** A getter, not a field read, so checks after an await are not narrowed away. */
  get exited(): boolean {
    return this.#core.phase === 'Exited';
  }

  get qemuPid(): number | undefined {
    return this.#qemuPid;
  }

  get launcherPid(): number | undefined {
    return this.#launcherPid;
  }

  /** The serial console, when the VMI asked for one and QEMU came up. */
  serialConsole(): SerialConsole | undefined {
    return this.#console;
  }

  /** The QMP client of a Running VMI; QMP_UNAVAILABLE while it does not answer, VMI_NOT_RUNNING otherwise. */
  qmpClient(): QmpClient {
    return runningQmp(this.qmpWatch.client, this.state);
  }

  private iso(): string {
    return new Date(this.now()).toISOString();
  }

  /** Runs one event through the core and carries out its effects in order; a refused transition throws SUPERVISOR_BAD_TRANSITION. */
  private dispatch(e: CoreEvent): Promise<Outcome> {
    const from = this.#core.phase;
    const r = step(this.#core, e);
    if (r.outcome === 'refused') {
      return Promise.reject(
        new VmletError('SUPERVISOR_BAD_TRANSITION', `VMI ${this.uid}: cannot go from ${from} to ${r.to ?? '?'}`, { details: { event: e.type } }),
      );
    }
    this.#core = r.state;
    if (r.outcome === 'moved') {
      this.log.debug({ from, to: r.state.phase }, 'supervisor state');
      this.changes.notify();
    }
    return this.runEffects(r.effects).then(() => r.outcome);
  }

  private async runEffects(effects: readonly Effect[]): Promise<void> {
    for (const e of effects) await this.run(e);
  }

  private async run(e: Effect): Promise<void> {
    switch (e.kind) {
      case 'prepare':
        return this.prepare();
      case 'launch':
        return this.launch(e.prepared);
      case 'inspectRunDir':
        return this.inspectRunDir();
      case 'attachLink':
        this.launcher.attach();
        return;
      case 'recordAdopted':
        return this.recordAdopted();
      case 'handover':
        return this.handover();
      case 'recordLaunch':
        return this.deps.writeStatus((s) => launchedStatus(s, e.prepared, this.runtime(e.qemuPid), this.iso()));
      case 'dropPendingLaunch':
        this.dropPendingLaunch();
        return;
      case 'closeFds':
        closeFds(e.fds);
        return;
      case 'connect':
        return this.connectAndRun(e.fresh);
      case 'writeStatus': {
        const w = this.deps.writeStatus((s) => applyEdit(s, e.edit, this.iso()));
        return editIsBestEffort(e.edit) ? w.catch(() => undefined) : w;
      }
      case 'event':
        this.deps.event(e.type, e.reason, e.message);
        return;
      case 'log':
        this.log[e.level](e.fields, e.message);
        return;
      case 'probeAgent':
        void this.agent.probe();
        return;
      case 'reconnectQmp':
        void this.qmpWatch.reconnect({ wanted: () => this.state === 'Running', exited: () => this.exited, qemuPid: () => this.#qemuPid });
        return;
      case 'kill':
        return killVmProcesses([this.#qemuPid, this.#launcherPid], this.uid, this.deps.procRoot);
      case 'stop':
        await this.stop(e.graceSeconds, e.why);
        return;
      case 'escalate':
        return escalateStop({
          graceSeconds: e.graceSeconds,
          qmp: () => this.qmpWatch.client,
          waitExit: (ms) => this.changes.until(() => this.exited, ms),
          kill: () => this.run({ kind: 'kill' }),
          giveUp: () => this.dispatch({ type: 'exited' }),
        });
      case 'exit':
        await this.dispatch({ type: 'exited', exit: e.exit, failure: e.failure, message: e.message });
        return;
      case 'finalize':
        return this.finalize(e);
      case 'releaseIfStopped':
        // A stop while `prepare` ran finished the VMI at once, possibly before the sandbox was complete;
        // what prepare made after that is released here (the sandbox teardown is idempotent).
        if (!this.#core.stopRequested) return;
        this.dropPendingLaunch();
        return releaseVmNetwork(this.deps, this.log);
    }
  }

  private runtime(qemuPid: number | undefined): Runtime {
    return { qemuPid, launcherPid: this.#launcherPid, runDir: this.deps.runDir };
  }

  /** The launcher's HELLO for this VMI, routed here by the daemon. */
  async onHello(h: LauncherHello): Promise<HelloDecision> {
    if (this.deps.pod) {
      this.#launcherPid = h.peer.pid;
      this.#resolveArrived(h.peer.pid);
    }
    if (h.state.kind !== 'new') return { action: 'accept' };
    // After a restart the launcher may call before prepare() has rebuilt its argv: wait for it, bounded.
    await this.changes.until(
      () => this.#pendingLaunch !== undefined || (this.state !== 'Reattaching' && this.state !== 'Preparing'),
      this.deps.pod ? POD_HELLO_WAIT_MS : HELLO_WAIT_MS,
    );
    const p = this.#pendingLaunch;
    if (!p) return { action: 'reject', reason: 'no launch is pending for this VMI' };
    return { action: 'launch', argv: p.argv, fds: p.fds };
  }

  /** First start: prepare, spawn the launcher, wait for QEMU, then QMP and cont. */
  async start(): Promise<void> {
    await this.dispatch({ type: 'start' });
  }

  /** After a daemon restart: adopt what runs, record what ended, and never start a second QEMU. */
  async reattach(): Promise<void> {
    await this.dispatch({ type: 'reattach' });
  }

  /** Graceful stop: ACPI power-down, the grace period, `quit`, then SIGKILL. */
  async stop(graceSeconds: number, why: string): Promise<ExitReport> {
    this.#stopping.abort();
    await this.dispatch({ type: 'stop', graceSeconds, why });
    return this.done;
  }

  private async prepare(): Promise<void> {
    if (this.deps.cgroups) {
      // Bad CPU/memory values fail the VMI before anything (run dir, volumes, group) exists.
      try {
        this.#sizing = vmSizing(this.deps.vmi);
      } catch (error) {
        await this.dispatch({ type: 'resourcesInvalid', error });
        return;
      }
    }
    let prepared: PreparedLaunch;
    try {
      await fs.mkdir(this.deps.runDir, { recursive: true, mode: 0o700 });
      prepared = await this.deps.prepare(this.deps.vmi, this.deps.runDir, await this.prepareContext());
    } catch (error) {
      const code = error instanceof VmletError ? error.code : 'PREPARE_FAILED';
      await this.dispatch({ type: 'prepareFailed', reason: code === 'KVM_UNAVAILABLE' ? 'KvmUnavailable' : 'LaunchFailed', error });
      return;
    }
    await this.dispatch({ type: 'prepared', prepared });
  }

  /** Kubernetes mode: waits for the pod's launcher, whose pid names the pod's netns. */
  private async prepareContext(): Promise<PrepareContext> {
    if (!this.deps.pod) return { signal: this.#stopping.signal };
    this.launcher.attach();
    return { launcherPid: await podLauncherArrival(this.#arrived, this.deps.pod.arriveTimeoutMs ?? POD_ARRIVE_MS) };
  }

  private setPendingLaunch(p: PreparedLaunch): void {
    this.#pendingLaunch = p;
    this.changes.notify();
  }

  /** QEMU has its fds (or will never get them): the daemon's copies are closed. */
  private dropPendingLaunch(): void {
    const p = this.#pendingLaunch;
    this.#pendingLaunch = undefined;
    if (p) closeFds(p.fds);
  }

  private async launch(prepared: PreparedLaunch): Promise<void> {
    this.setPendingLaunch(prepared);
    const link = this.launcher.attach();
    const started = link.waitFor('started', this.deps.startTimeoutMs ?? 30_000);
    let qemuPid: number;
    try {
      if (this.deps.pod) {
        // The pod's launcher is already connected and waits for this argv; QEMU stays in the pod's cgroup.
        [qemuPid] = await started;
        this.#qemuPid = qemuPid;
        await this.dispatch({ type: 'qemuStarted', pid: qemuPid, prepared, via: 'launch' });
        return;
      }
      // The launcher joins the group before it forks QEMU, so no QEMU thread ever runs outside it.
      const cgroupDirs = await this.setUpCgroup(prepared.accel);
      const spawned = await spawnLauncher({
        launcherBinary: this.deps.launcherBinary,
        uid: this.uid,
        socket: this.deps.launcherSocket,
        runDir: this.deps.runDir,
        cgroups: cgroupDirs,
        ...(prepared.netnsPath !== undefined ? { netns: prepared.netnsPath } : {}),
      });
      this.#launcherPid = spawned.pid;
      [qemuPid] = await started;
      this.#qemuPid = qemuPid;
    } catch (error) {
      started.catch(() => undefined);
      await this.dispatch({ type: 'launchFailed', error, via: 'launch' });
      return;
    }
    await this.dispatch({ type: 'qemuStarted', pid: qemuPid, prepared, via: 'launch' });
  }

  /** Creates the VM's group with its limits; returns the directories the launcher joins ([] without cgroups). */
  private async setUpCgroup(accel: Accel): Promise<string[]> {
    const cgroups = this.deps.cgroups;
    if (!cgroups) return [];
    const resources = vmResources(this.#sizing ?? vmSizing(this.deps.vmi), accel);
    this.#resources = resources;
    return setUpVmCgroup({ cgroups, uid: this.uid, resources, log: this.log });
  }

  private async inspectRunDir(): Promise<void> {
    if (this.deps.pod) return this.inspectPodLauncher();
    const rd = await readRunDir(this.deps.runDir).catch((): RunDirState => ({}));
    const procRoot = this.deps.procRoot;
    const launcherAlive = rd.launcherPid !== undefined && (await isLiveProcessFor(rd.launcherPid, this.uid, procRoot));
    const qemuAlive = rd.qemuPid !== undefined && (await isLiveProcessFor(rd.qemuPid, this.uid, procRoot));
    this.#launcherPid = launcherAlive ? rd.launcherPid : undefined;
    this.#qemuPid = qemuAlive ? rd.qemuPid : undefined;
    await this.dispatch({ type: 'inspected', launcherAlive, qemuAlive, exit: rd.exitStatus });
  }

  /** Kubernetes mode after a daemon restart: the launcher, reconnecting, says what runs. */
  private async inspectPodLauncher(): Promise<void> {
    const v = await inspectPodLauncher(this.launcher.attach());
    this.#launcherPid = v.launcherPid;
    this.#qemuPid = v.qemuPid;
    await this.dispatch({ type: 'inspected', launcherAlive: v.launcherAlive, qemuAlive: v.qemuAlive, exit: v.exit });
  }

  /** The previous daemon may have died before it recorded the launch: record it from what runs. */
  private async recordAdopted(): Promise<void> {
    const pid = this.#qemuPid;
    this.log.info({ qemuPid: pid, launcherPid: this.#launcherPid }, 're-adopting running QEMU');
    const accel = pid === undefined ? undefined : await accelOfProcess(pid, this.deps.procRoot ?? DEFAULT_PROC_ROOT);
    await this.deps.writeStatus((s) => adoptedStatus(s, this.runtime(pid), accel, this.iso()));
  }

  /** A launcher spawned by the previous daemon waits for QEMU's argv: prepare again and hand it over. */
  private async handover(): Promise<void> {
    try {
      const prepared = await this.deps.prepare(
        this.deps.vmi,
        this.deps.runDir,
        this.deps.pod ? { launcherPid: this.#launcherPid ?? (await this.#arrived) } : {},
      );
      this.setPendingLaunch(prepared);
      const [pid] = await (this.launcher.link ?? this.launcher.attach()).waitFor('started', this.deps.startTimeoutMs ?? 30_000);
      this.#qemuPid = pid;
      await this.dispatch({ type: 'qemuStarted', pid, prepared, via: 'handover' });
    } catch (error) {
      await this.dispatch({ type: 'launchFailed', error, via: 'handover' });
    }
  }

  /** QMP connect, set-action, console; `cont` when QEMU is still paused from -S. */
  private async connectAndRun(fresh: boolean): Promise<void> {
    await this.dispatch({ type: 'connecting' });
    try {
      const qmp = await this.qmpWatch.connect();
      const status = await qmp.execute('query-status');
      if (fresh || status.status === 'prelaunch') {
        await qmp.execute('set-action', { shutdown: 'poweroff', reboot: 'reset', panic: 'pause' });
      }
      await this.connectConsole();
      if (status.status === 'prelaunch' || (fresh && !status.running)) {
        if (this.deps.beforeCont && this.#qemuPid) await this.deps.beforeCont(qmp, this.#qemuPid);
        await qmp.execute('cont');
      }
      if ((await this.dispatch({ type: 'qmpReady' })) !== 'moved') return;
      const paused = !(await qmp.execute('query-status')).running;
      await this.deps.writeStatus((s) => runningStatus(s, paused, this.iso()));
      this.agent.start();
      this.log.info({ qemuPid: this.#qemuPid }, fresh ? 'VMI running' : 'VMI re-adopted');
    } catch (error) {
      await this.dispatch({ type: 'startupFailed', error });
    }
  }

  private async connectConsole(): Promise<void> {
    if (!this.deps.vmi.spec.domain.devices.autoattachSerialConsole) return;
    const c = new SerialConsole({ socketPath: path.join(this.deps.runDir, 'serial.sock'), logFile: path.join(this.deps.runDir, 'console.log') });
    await c.connect(10_000);
    this.#console = c;
  }

  /** QEMU is gone: write the final phase once, release everything, then settle `done`. */
  private async finalize(end: Pick<FinalizeInput, 'exit' | 'failure' | 'message'>): Promise<void> {
    const report = await finalizeVmi({
      ...end,
      deps: this.deps,
      uid: this.uid,
      log: this.log,
      core: () => this.#core,
      resources: () => this.#resources,
      iso: () => this.iso(),
      closeConnections: () => {
        this.qmpWatch.close();
        this.agent.close();
        this.#console?.close();
      },
    });
    this.#resolveDone(report);
  }

  /** Removes the run dir and the VM's cgroup, and forgets the launcher link; only after QEMU is gone. */
  async cleanup(): Promise<void> {
    this.deps.launcherServer.detach(this.uid);
    await (this.deps.removeRunDir ? this.deps.removeRunDir() : fs.rm(this.deps.runDir, { recursive: true, force: true }));
    await this.deps.cgroups?.remove(this.uid, this.log);
  }

  async pause(): Promise<void> {
    const qmp = this.qmpClient();
    if (!(await qmp.execute('query-status')).running) throw new VmletError('VMI_ALREADY_PAUSED', 'the VMI is already paused; unpause it first');
    await qmp.execute('stop');
    await this.dispatch({ type: 'paused', paused: true });
  }

  async unpause(): Promise<void> {
    const qmp = this.qmpClient();
    if ((await qmp.execute('query-status')).running) throw new VmletError('VMI_NOT_PAUSED', 'the VMI is not paused');
    await qmp.execute('cont');
    await this.dispatch({ type: 'paused', paused: false });
  }

  async reset(): Promise<void> {
    await this.qmpClient().execute('system_reset');
  }

  /** A reboot the guest takes part in: through the agent when it answers, else ACPI is no help, so refuse. */
  async softreboot(): Promise<void> {
    this.qmpClient();
    await this.agent.reboot();
  }
}
