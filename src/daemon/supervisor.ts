// One VMI's supervisor, the effectful shell around the pure core (supervisor-core.ts): it feeds the core events and carries out the effects it returns — prepare, launch or re-adopt QEMU, drive it over QMP, report status.
import fsSync from 'node:fs';
import type { Logger } from 'pino';
import { VmletError } from '../errors.js';
import type { HelloDecision, LauncherHello } from '../qemu/launcher-server.js';
import type { QmpClient } from '../qmp/client.js';
import { closeFds } from '../sys/libc.js';
import { AgentWatch } from './agent-watch.js';
import { connectSerialConsole, type SerialConsole } from './console.js';
import { QmpWatch, runningQmp, setQemuPaused } from './qmp-watch.js';
import { gate, resumeGuest } from './qmp-resume.js';
import { Changes } from './supervisor-changes.js';
import { inspectRunDir, LauncherWatch } from './supervisor-launcher.js';
import { accelOfProcess, inspectPodLauncher, podLauncherArrival, POD_ARRIVE_MS, POD_HELLO_WAIT_MS } from './supervisor-pod.js';
import { INITIAL_STATE, step, type CoreEvent, type CoreState, type Effect, type ExitReport, type Outcome, type PreparedLaunch } from './supervisor-core.js';
import { adoptedStatus, applyEdit, editIsBestEffort, launchedStatus, runningStatus, type Runtime } from './supervisor-status.js';
import type { PrepareContext, SupervisorDeps } from './supervisor-deps.js';
import { cleanupVm, escalateStop, finalizeVmi, killVmProcesses, releaseVmNetwork, type FinalizeInput } from './supervisor-exit.js';
import { abandonEarly, EARLY_HELLO_WAIT_MS, EarlyLauncher, spawnsEarly, spawnVmLauncher } from './supervisor-spawn.js';
import { startTraces } from './start-trace.js';
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
  #launchRecorded: Promise<void> = Promise.resolve();
  #networkFinished: Promise<void> | undefined; // the rest of the sandbox, made while QEMU starts: `cont` waits for it
  /** Standalone: the launcher spawned while prepare runs (its pid), and whether its argv waits for the group's limits. */
  #early: EarlyLauncher | undefined;
  #argvHeld = false;
  adopted = false; // QEMU was found running (after a daemon restart), not launched by this supervisor
  #sizing: VmSizing | undefined;
  #resources: VmResources | undefined; // the VM group's, once computed at launch
  #resolveDone!: (r: ExitReport) => void;
  /** Kubernetes mode: the pod's launcher said HELLO (its pid, daemon's namespace). */
  #arrived: Promise<{ pid: number; running: boolean }>;
  readonly #stopping = new AbortController(); // a stop aborts a prepare that waits (for an image)
  #resolveArrived!: (hello: { pid: number; running: boolean }) => void;
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
      started: (pid) => void (this.#qemuPid = pid),
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

  private iso = (): string => new Date(this.now()).toISOString();

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
      startTraces.mark(this.uid, r.state.phase);
      if (r.state.phase === 'Exited') startTraces.end(this.uid, 'Exited');
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
        this.#networkFinished = e.prepared.networkFinished;
        // Written while QEMU starts up; connectAndRun waits for it before Running.
        this.#launchRecorded = this.deps
          .writeStatus((s) => launchedStatus(s, e.prepared, this.runtime(e.qemuPid), this.iso()))
          .then(() => startTraces.mark(this.uid, 'launch.recorded'));
        this.#launchRecorded.catch(() => undefined);
        return;
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

  /** The launcher's HELLO for this VMI, routed here by the daemon; standalone, only the launcher it spawned or recorded is heard. */
  async onHello(h: LauncherHello): Promise<HelloDecision> {
    startTraces.mark(this.uid, 'launcher.hello');
    const refused = this.deps.pod ? undefined : await this.launcher.refuseStranger(h, this.#early);
    startTraces.mark(this.uid, 'launcher.checked');
    if (this.deps.pod) {
      this.#launcherPid = h.peer.pid;
      // A launcher that calls in with QEMU started (its daemon died before Running) is adopted, not prepared for.
      this.#resolveArrived({ pid: h.peer.pid, running: h.state.kind !== 'new' });
    }
    if (refused || h.state.kind !== 'new') return refused ?? { action: 'accept' };
    // A launcher started early, or one that calls after a restart, may come before prepare has (re)built its argv: wait, bounded.
    const before = (): boolean => this.state === 'Reattaching' || this.state === 'Preparing' || this.state === 'Launching';
    const wait = this.#early ? EARLY_HELLO_WAIT_MS : this.deps.pod ? POD_HELLO_WAIT_MS : HELLO_WAIT_MS;
    await this.changes.until(() => (this.#pendingLaunch !== undefined && !this.#argvHeld) || !before(), wait);
    const p = before() && !this.#argvHeld ? this.#pendingLaunch : undefined;
    if (!p) return { action: 'reject', reason: 'no launch is pending for this VMI' };
    startTraces.mark(this.uid, 'launcher.argv');
    return { action: 'launch', argv: p.argv, fds: p.fds, ...(p.netnsPath !== undefined ? { netns: p.netnsPath } : {}) };
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
    let prepared: PreparedLaunch | undefined;
    try {
      // Inline: a metadata change in the page cache, cheaper than a trip through the thread pool.
      fsSync.mkdirSync(this.deps.runDir, { recursive: true, mode: 0o700 });
      if (spawnsEarly(this.deps)) {
        this.launcher.attach();
        this.#early = new EarlyLauncher({ deps: this.deps, uid: this.uid, log: this.log, stopRequested: () => this.#core.stopRequested });
        this.#early.pid.then((pid) => (this.#launcherPid = pid)).catch(() => undefined);
      }
      const ctx = await this.prepareContext();
      if (ctx) prepared = await this.deps.prepare(this.deps.vmi, this.deps.runDir, ctx);
    } catch (error) {
      await abandonEarly(this.#early?.pid, { deps: this.deps, uid: this.uid, log: this.log });
      const code = error instanceof VmletError ? error.code : 'PREPARE_FAILED';
      await this.dispatch({ type: 'prepareFailed', reason: code === 'KVM_UNAVAILABLE' ? 'KvmUnavailable' : 'LaunchFailed', error });
      return;
    }
    await this.dispatch(prepared ? { type: 'prepared', prepared } : { type: 'podLauncherRan' });
  }

  /** Kubernetes mode: waits for the pod's launcher, whose pid names the pod's netns; undefined when that launcher already ran QEMU. */
  private async prepareContext(): Promise<PrepareContext | undefined> {
    // An early launcher's group gets its limits while prepare goes on (the sizing was checked before prepare).
    const accelChosen = (accel: Accel): void => {
      const resources = this.#early && this.resourcesFor(accel);
      if (resources) void this.#early?.limit(resources);
    };
    if (!this.deps.pod) return { signal: this.#stopping.signal, trace: (step) => startTraces.mark(this.uid, step), accelChosen };
    this.launcher.attach();
    const hello = await podLauncherArrival(this.#arrived, this.deps.pod.arriveTimeoutMs ?? POD_ARRIVE_MS);
    return hello.running ? undefined : { launcherPid: hello.pid };
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
    this.#argvHeld = this.#early !== undefined;
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
      const resources = this.resourcesFor(prepared.accel);
      if (this.#early) {
        await this.#early.pid;
        if (resources) await this.#early.limit(resources);
        this.#argvHeld = false;
        this.changes.notify();
      } else {
        this.#launcherPid = (await spawnVmLauncher({ deps: this.deps, uid: this.uid, log: this.log, ...(resources ? { resources } : {}) })).pid;
      }
      [qemuPid] = await started;
      startTraces.mark(this.uid, 'qemu.started');
      this.#qemuPid = qemuPid;
    } catch (error) {
      started.catch(() => undefined);
      await this.dispatch({ type: 'launchFailed', error, via: 'launch' });
      return;
    }
    await this.dispatch({ type: 'qemuStarted', pid: qemuPid, prepared, via: 'launch' });
  }

  /** The VM group's resources (undefined without cgroups), kept for the OOM diagnosis at the end. */
  private resourcesFor(accel: Accel): VmResources | undefined {
    if (!this.deps.cgroups) return undefined;
    this.#resources = vmResources(this.#sizing ?? vmSizing(this.deps.vmi), accel);
    return this.#resources;
  }

  /** After a daemon restart: what runs, from the run dir (standalone) or the pod's launcher reconnecting. */
  private async inspectRunDir(): Promise<void> {
    const v = this.deps.pod ? await inspectPodLauncher(this.launcher.attach()) : await inspectRunDir(this.deps.runDir, this.uid, this.deps.procRoot);
    this.#launcherPid = v.launcherPid;
    this.#qemuPid = v.qemuPid;
    await this.dispatch({ type: 'inspected', launcherAlive: v.launcherAlive, qemuAlive: v.qemuAlive, exit: v.exit });
  }

  /** The previous daemon may have died before it recorded the launch: record it from what runs. */
  private async recordAdopted(): Promise<void> {
    const pid = this.#qemuPid;
    this.log.info({ qemuPid: pid, launcherPid: this.#launcherPid }, 're-adopting running QEMU');
    this.adopted = true;
    this.#networkFinished = this.deps.resumeGate?.();
    const accel = pid === undefined ? undefined : await accelOfProcess(pid, this.deps.procRoot ?? DEFAULT_PROC_ROOT);
    await this.deps.writeStatus((s) => adoptedStatus(s, this.runtime(pid), accel, this.iso()));
  }

  /** A launcher spawned by the previous daemon waits for QEMU's argv: prepare again and hand it over. */
  private async handover(): Promise<void> {
    try {
      const ctx = this.deps.pod ? { launcherPid: this.#launcherPid ?? (await this.#arrived).pid } : {};
      const prepared = await this.deps.prepare(this.deps.vmi, this.deps.runDir, ctx);
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
    const [before, pid] = [this.deps.beforeCont, this.#qemuPid];
    // The Running status is written and synced while QEMU answers `cont`; it shows once the VMI moved to Running.
    const moved = gate('the VMI did not move to Running');
    let running: Promise<void> | undefined;
    try {
      const r = await resumeGuest({
        // A fresh QEMU's `cont` follows qmp_capabilities without waiting for its answer.
        connect: () => (fresh ? this.qmpWatch.connect(undefined, { pipelined: !before }) : this.qmpWatch.connectReadopted(() => this.state === 'Reattaching')),
        fresh,
        console: this.deps.vmi.spec.domain.devices.autoattachSerialConsole ? () => connectSerialConsole(this.deps.runDir) : undefined,
        ...(before && pid ? { beforeCont: (qmp: QmpClient) => before(qmp, pid) } : {}),
        ...(this.#networkFinished ? { gate: this.#networkFinished } : {}),
        onCont: () => void (running = this.deps.writeStatus((s) => runningStatus(s, false, this.iso()), { after: moved.promise })),
        trace: (step) => startTraces.mark(this.uid, step),
      });
      this.#console = r.console;
      await this.#launchRecorded;
      if (!moved.open((await this.dispatch({ type: 'qmpReady' })) === 'moved')) return;
      // After `cont` it runs (a later STOP comes as an event); asking again would wait for TCG's first vCPU slice.
      await (running ?? this.deps.writeStatus((s) => runningStatus(s, r.paused, this.iso())));
      startTraces.end(this.uid, 'Running');
      this.agent.start();
      this.log.info({ qemuPid: this.#qemuPid }, fresh ? 'VMI running' : 'VMI re-adopted');
    } catch (error) {
      moved.open(false);
      await this.dispatch({ type: 'startupFailed', error });
    }
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
  cleanup = (): Promise<void> => cleanupVm(this.deps, this.uid, this.log);

  pause = (): Promise<void> => this.setPaused(true);
  unpause = (): Promise<void> => this.setPaused(false);
  private async setPaused(paused: boolean): Promise<void> {
    await setQemuPaused(this.qmpClient(), paused);
    await this.dispatch({ type: 'paused', paused });
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
