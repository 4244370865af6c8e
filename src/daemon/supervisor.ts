// One VMI's supervisor: a state machine that launches or re-adopts its QEMU, drives it over QMP and reports status.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { VMIInterfaceStatus, VirtualMachineInstance, VirtualMachineInstanceStatus } from '../api/types.js';
import { VmletError } from '../errors.js';
import { isLiveProcessFor, readRunDir, spawnLauncher, type ExitStatus } from '../qemu/launch.js';
import { readQemuErrors } from '../qemu/qemu-log.js';
import type { HelloDecision, LauncherHello, LauncherLink, LauncherServer } from '../qemu/launcher-server.js';
import { accelFromCmdline, GUEST_AGENT_DEVICE_ID } from '../qemu/argv.js';
import { QmpClient } from '../qmp/client.js';
import { GuestAgentClient } from '../qmp/guest-agent.js';
import type { GuestNetworkInterface } from '../qmp/guest-agent-types.js';
import { closeFds } from '../sys/libc.js';
import { SerialConsole } from './console.js';
import type { VmCgroups } from './vm-cgroup.js';
import { vmResources, vmSizing, type VmResources, type VmSizing } from './vm-resources.js';
import { canTransition, describeExit, finalPhase, type FailureReason, type SupervisorState } from './vmi-state.js';
import { withCondition, withInterfaces, withPhase, withRuntime } from './vmi-status.js';

/** What `prepare` hands back: QEMU's argv and the fds it references (3, 4, … in order). */
export interface PreparedLaunch {
  argv: string[];
  /** Open fds (close-on-exec) the launcher hands to QEMU; the supervisor closes them once it has them. */
  fds: number[];
  accel: 'kvm' | 'tcg';
  softwareEmulation: boolean;
  /** Why software emulation (the SoftwareEmulation condition's reason and message). */
  emulation?: { reason: 'KvmUnusable' | 'EmulationRequested'; message: string };
  /** The network sandbox the launcher joins before it forks QEMU. */
  netnsPath?: string;
  /** status.interfaces as known before boot (from the lease). */
  interfaces?: VMIInterfaceStatus[];
}

export interface SupervisorDeps {
  vmi: VirtualMachineInstance;
  runDir: string;
  logger: Logger;
  launcherServer: LauncherServer;
  launcherBinary: string;
  launcherSocket: string;
  /** Creates volumes and builds QEMU's argv; throws VmletError for anything the VMI asks that cannot be done. */
  prepare(vmi: VirtualMachineInstance, runDir: string): Promise<PreparedLaunch>;
  /** Writes the VMI's status (serialised per object by the source). */
  writeStatus(mutate: (s: VirtualMachineInstanceStatus) => VirtualMachineInstanceStatus): Promise<void>;
  event(type: 'Normal' | 'Warning', reason: string, message: string): void;
  now?: () => number;
  procRoot?: string;
  /** How long QEMU may take from launcher spawn to QMP ready. */
  startTimeoutMs?: number;
  /** Runs after set-action and before `cont` on a fresh start (e.g. vCPU pinning); a throw fails the launch. */
  beforeCont?: (qmp: QmpClient, qemuPid: number) => Promise<void>;
  /** The per-VM cgroups; absent = QEMU runs in the launcher's cgroups as spawned (config `cgroupParent: ""`). */
  cgroups?: VmCgroups;
  /** Removes the VM's network sandbox once QEMU is gone (idempotent). */
  releaseNetwork?: () => Promise<void>;
  /** status.interfaces with what the guest agent reports merged in; undefined = leave them. */
  guestInterfaces?: (guest: GuestNetworkInterface[]) => VMIInterfaceStatus[] | undefined;
}

export interface ExitReport {
  phase: 'Succeeded' | 'Failed';
  reason?: FailureReason | 'Stopped' | 'GuestShutdown';
  exit?: ExitStatus;
  /** QEMU's last stderr lines when it failed. */
  qemuError?: string;
}

const QUIT_WAIT_MS = 5_000;
const KILL_WAIT_MS = 5_000;
const SOFTWARE_EMULATION_MESSAGE = 'QEMU runs with software emulation (TCG): expect it to be slow';

/** The SoftwareEmulation condition's reason and message for a launch. */
function emulationCondition(prepared: Pick<PreparedLaunch, 'emulation'>): { reason: string; message: string } {
  const e = prepared.emulation;
  if (e === undefined) return { reason: 'SoftwareEmulation', message: SOFTWARE_EMULATION_MESSAGE };
  return { reason: e.reason, message: `${SOFTWARE_EMULATION_MESSAGE}; ${e.reason === 'KvmUnusable' ? `KVM is not usable: ${e.message}` : e.message}` };
}

export class Supervisor {
  state: SupervisorState = 'New';
  qemuPid: number | undefined;
  launcherPid: number | undefined;
  qmp: QmpClient | undefined;
  agent: GuestAgentClient | undefined;
  console: SerialConsole | undefined;
  /** Resolves once QEMU is gone and the final status is written. */
  readonly done: Promise<ExitReport>;

  private resolveDone!: (r: ExitReport) => void;
  private link: LauncherLink | undefined;
  private pendingLaunch: PreparedLaunch | undefined;
  private stopRequested = false;
  private reconnecting = false;
  private guestShutdown = false;
  private panicked = false;
  /** Why the launch failed, when QEMU came up but never answered (kept for the final status). */
  private launchFailure: string | undefined;
  private readonly uid: string;
  private readonly log: Logger;
  private readonly now: () => number;
  private exitWaiters: Array<() => void> = [];
  private sizing: VmSizing | undefined;
  /** The VM group's resources, once computed at launch. */
  resources: VmResources | undefined;

  constructor(private readonly deps: SupervisorDeps) {
    this.uid = deps.vmi.metadata.uid ?? '';
    this.log = deps.logger;
    this.now = deps.now ?? Date.now;
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
  }

  /** A method, not a field read, so checks after an await are not narrowed away. */
  get exited(): boolean {
    return this.state === 'Exited';
  }

  private iso(): string {
    return new Date(this.now()).toISOString();
  }

  private to(next: SupervisorState): void {
    if (!canTransition(this.state, next)) {
      throw new VmletError('SUPERVISOR_BAD_TRANSITION', `VMI ${this.uid}: cannot go from ${this.state} to ${next}`);
    }
    this.log.debug({ from: this.state, to: next }, 'supervisor state');
    this.state = next;
  }

  /** The launcher's HELLO for this VMI, routed here by the daemon. */
  async onHello(h: LauncherHello): Promise<HelloDecision> {
    if (h.state.kind !== 'new') return { action: 'accept' };
    // After a restart the launcher may call before prepare() has rebuilt its argv: wait for it, bounded.
    const until = this.now() + 10_000;
    while (!this.pendingLaunch && (this.state === 'Reattaching' || this.state === 'Preparing') && this.now() < until) {
      await new Promise((r) => setTimeout(r, 20));
    }
    if (!this.pendingLaunch) return { action: 'reject', reason: 'no launch is pending for this VMI' };
    return { action: 'launch', argv: this.pendingLaunch.argv, fds: this.pendingLaunch.fds };
  }

  /** First start: prepare, spawn the launcher, wait for QEMU, then QMP and cont. */
  async start(): Promise<void> {
    this.to('Preparing');
    if (this.deps.cgroups) {
      // Bad CPU/memory values fail the VMI before anything (run dir, volumes, group) exists.
      try {
        this.sizing = vmSizing(this.deps.vmi);
      } catch (e) {
        await this.fail('InvalidResources', e);
        return;
      }
    }
    let prepared: PreparedLaunch;
    try {
      await fs.mkdir(this.deps.runDir, { recursive: true, mode: 0o700 });
      prepared = await this.deps.prepare(this.deps.vmi, this.deps.runDir);
    } catch (e) {
      const code = e instanceof VmletError ? e.code : 'PREPARE_FAILED';
      await this.fail(code === 'KVM_UNAVAILABLE' ? 'KvmUnavailable' : 'LaunchFailed', e);
      await this.releaseAfterLateStop();
      return;
    }
    if (this.stopRequested) {
      closeFds(prepared.fds);
      await this.finish(undefined);
      await this.releaseAfterLateStop();
      return;
    }
    await this.launch(prepared);
  }

  /**
   * A stop while `prepare` ran finished the VMI at once, possibly before the sandbox was complete;
   * what prepare made after that is released here (the sandbox teardown is idempotent).
   */
  private async releaseAfterLateStop(): Promise<void> {
    if (!this.stopRequested) return;
    this.dropPendingLaunch();
    await this.releaseNetwork();
  }

  private async releaseNetwork(): Promise<void> {
    try {
      await this.deps.releaseNetwork?.();
    } catch (e) {
      this.log.warn({ err: e }, 'could not remove the network sandbox; the next daemon start removes it');
    }
  }

  private async launch(prepared: PreparedLaunch): Promise<void> {
    this.to('Launching');
    this.pendingLaunch = prepared;
    const link = this.attachLink();
    const started = link.waitFor('started', this.deps.startTimeoutMs ?? 30_000);
    try {
      // The launcher joins the group before it forks QEMU, so no QEMU thread ever runs outside it.
      const cgroupDirs = await this.createCgroup(prepared.accel);
      const spawned = await spawnLauncher({
        launcherBinary: this.deps.launcherBinary,
        uid: this.uid,
        socket: this.deps.launcherSocket,
        runDir: this.deps.runDir,
        cgroups: cgroupDirs,
        ...(prepared.netnsPath !== undefined ? { netns: prepared.netnsPath } : {}),
      });
      this.launcherPid = spawned.pid;
      const [qemuPid] = await started;
      this.qemuPid = qemuPid;
    } catch (e) {
      started.catch(() => undefined);
      await this.killProcesses();
      await this.fail('LaunchFailed', e);
      return;
    }
    this.dropPendingLaunch();
    await this.deps.writeStatus((s) => this.launchedStatus(s, prepared, this.qemuPid));
    this.deps.event('Normal', 'Launched', `QEMU started with pid ${this.qemuPid}`);
    await this.connectAndRun(true);
  }

  /** What a launch records, in one (fsync'd) status write: pids, accel, interfaces, SoftwareEmulation. */
  private launchedStatus(s: VirtualMachineInstanceStatus, prepared: PreparedLaunch, qemuPid: number | undefined): VirtualMachineInstanceStatus {
    let out = withRuntime(s, { qemuPid, launcherPid: this.launcherPid, runDir: this.deps.runDir, accel: prepared.accel, softwareEmulation: prepared.softwareEmulation });
    out = withInterfaces(out, prepared.interfaces);
    if (prepared.softwareEmulation) {
      const c = emulationCondition(prepared);
      out = withCondition(out, 'SoftwareEmulation', true, this.iso(), c.reason, c.message);
    }
    return out;
  }

  /** QEMU has its fds (or will never get them): the daemon's copies are closed. */
  private dropPendingLaunch(): void {
    const p = this.pendingLaunch;
    this.pendingLaunch = undefined;
    if (p) closeFds(p.fds);
  }

  /** Creates the VM's group with its limits; returns the directories the launcher joins ([] without cgroups). */
  private async createCgroup(accel: 'kvm' | 'tcg'): Promise<string[]> {
    const cgroups = this.deps.cgroups;
    if (!cgroups) return [];
    const sizing = this.sizing ?? vmSizing(this.deps.vmi);
    const res = vmResources(sizing, accel);
    this.resources = res;
    const cg = cgroups.manager(this.uid);
    try {
      const applied = await cg.create({ resources: res.resources });
      this.log.info({ cgroup: cg.group, memoryLimitBytes: res.memoryLimitBytes, overheadBytes: res.overheadBytes, cpu: res.resources.cpu, skipped: applied.skipped }, 'VM cgroup created');
    } catch (e) {
      await cg.delete().catch(() => undefined);
      throw new VmletError('VM_CGROUP_FAILED', `cannot set up the VM's cgroup ${cg.group}: ${(e as Error).message}`, { cause: e });
    }
    return cg.paths().dirs;
  }

  /** True when the VM's group counts an OOM kill (QEMU is by far its largest process). */
  private async oomKilled(): Promise<boolean> {
    const cgroups = this.deps.cgroups;
    if (!cgroups) return false;
    try {
      const s = await cgroups.manager(this.uid).stats();
      return (s.oomKills ?? 0) > 0 || s.underOom === true;
    } catch {
      return false;
    }
  }

  /** QMP connect, set-action, console; `cont` when QEMU is still paused from -S. */
  private async connectAndRun(fresh: boolean): Promise<void> {
    if (this.state !== 'Reattaching') this.to('Starting');
    try {
      await this.connectQmp();
      const qmp = this.qmp!;
      const status = await qmp.execute('query-status');
      if (fresh || status.status === 'prelaunch') {
        await qmp.execute('set-action', { shutdown: 'poweroff', reboot: 'reset', panic: 'pause' });
      }
      await this.connectConsole();
      if (status.status === 'prelaunch' || (fresh && !status.running)) {
        if (this.deps.beforeCont && this.qemuPid) await this.deps.beforeCont(qmp, this.qemuPid);
        await qmp.execute('cont');
      }
      if (this.state === 'Starting' || this.state === 'Reattaching') this.to('Running');
      else return;
      const paused = !(await qmp.execute('query-status')).running;
      await this.deps.writeStatus((s) => {
        let out = withPhase(s, 'Running', this.iso());
        out = withCondition(out, 'Ready', !paused, this.iso());
        out = paused ? withCondition(out, 'Paused', true, this.iso(), 'PausedByUser') : withCondition(out, 'Paused', false, this.iso());
        return out;
      });
      this.connectAgent();
      this.log.info({ qemuPid: this.qemuPid }, fresh ? 'VMI running' : 'VMI re-adopted');
    } catch (e) {
      if (this.state === 'Exited' || this.state === 'Stopping') return;
      // One line in finish() says what happened, with QEMU's own words; the stack is for debugging only.
      this.log.debug({ err: e }, 'QEMU did not come up');
      this.launchFailure = `QEMU did not come up: ${(e as Error).message}`;
      await this.stop(0, 'LaunchFailed');
    }
  }

  private attachLink(): LauncherLink {
    const link = this.deps.launcherServer.link(this.uid) ?? this.deps.launcherServer.attach(this.uid);
    if (this.link !== link) {
      this.link = link;
      link.on('started', (pid) => { this.qemuPid = pid; });
      link.on('exited', (status) => { void this.finish(status); });
      link.on('failed', (f) => { this.log.warn({ reason: f.reason, err: f.error }, 'launcher failed'); });
      link.on('disconnected', (reason) => { void this.onLauncherGone(reason); });
    }
    return link;
  }

  private async connectQmp(timeoutMs = 10_000): Promise<void> {
    const qmp = new QmpClient({ path: path.join(this.deps.runDir, 'qmp.sock'), connectTimeoutMs: timeoutMs, greetingTimeoutMs: Math.min(timeoutMs, 5_000), logger: this.log });
    await qmp.connect();
    this.qmp = qmp;
    qmp.on('STOP', () => { void this.setPaused(true); });
    qmp.on('RESUME', () => { void this.setPaused(false); });
    qmp.on('SHUTDOWN', (data) => {
      if (data.guest) this.guestShutdown = true;
      this.deps.event('Normal', 'Shutdown', `QEMU reports shutdown (${data.reason})`);
    });
    qmp.on('RESET', () => { this.deps.event('Normal', 'Reset', 'the guest was reset'); });
    qmp.on('VSERPORT_CHANGE', (data) => {
      const d = data as { id?: unknown; open?: unknown };
      if (d.id === GUEST_AGENT_DEVICE_ID) this.onAgentPort(d.open === true);
    });
    qmp.on('GUEST_PANICKED', () => {
      this.panicked = true;
      this.deps.event('Warning', 'GuestPanicked', 'the guest kernel panicked');
    });
    qmp.onClose(() => {
      if (this.qmp === qmp) this.qmp = undefined;
      if (this.state === 'Running') void this.onQmpLost();
    });
  }

  private async connectConsole(): Promise<void> {
    if (!this.deps.vmi.spec.domain.devices.autoattachSerialConsole) return;
    const c = new SerialConsole({ socketPath: path.join(this.deps.runDir, 'serial.sock'), logFile: path.join(this.deps.runDir, 'console.log') });
    await c.connect(10_000);
    this.console = c;
  }

  /** The agent may never answer; it is looked for in the background and only sets a condition. */
  private connectAgent(): void {
    const agent = new GuestAgentClient({ path: path.join(this.deps.runDir, 'qga.sock') });
    this.agent = agent;
    // One try now (the agent may already be up, e.g. after a daemon restart); after that, QEMU's
    // VSERPORT_CHANGE event says when the guest opens the port, so nothing polls.
    void this.probeAgent();
  }

  private async probeAgent(): Promise<void> {
    const agent = this.agent;
    if (!agent || this.state !== 'Running') return;
    try {
      await agent.ping({ timeoutMs: 2_000 });
    } catch {
      return;
    }
    if (this.agent !== agent || this.state !== 'Running') return;
    // The guest's view of its NICs goes into status.interfaces together with the condition (one write).
    let interfaces: VMIInterfaceStatus[] | undefined;
    if (this.deps.guestInterfaces) {
      const guest = await agent.networkInterfaces({ timeoutMs: 2_000 }).catch(() => undefined);
      if (guest) interfaces = this.deps.guestInterfaces(guest);
    }
    if (this.agent === agent && this.state === 'Running') {
      await this.deps.writeStatus((s) => withInterfaces(withCondition(s, 'AgentConnected', true, this.iso()), interfaces)).catch(() => undefined);
    }
  }

  /** The guest opened or closed the agent's virtio-serial port (QMP VSERPORT_CHANGE). */
  private onAgentPort(open: boolean): void {
    if (this.state !== 'Running') return;
    if (open) {
      void this.probeAgent();
      return;
    }
    void this.deps.writeStatus((s) => withCondition(s, 'AgentConnected', false, this.iso(), 'PortClosed')).catch(() => undefined);
  }

  private async setPaused(paused: boolean): Promise<void> {
    if (this.state !== 'Running') return;
    await this.deps.writeStatus((s) => {
      let out = withCondition(s, 'Paused', paused, this.iso(), paused ? 'PausedByUser' : undefined);
      out = withCondition(out, 'Ready', !paused, this.iso());
      return out;
    });
  }

  /**
   * QMP went away while running. Either QEMU is gone (the launcher's EXITED follows within milliseconds)
   * or it stopped answering (a command timed out, e.g. QEMU was SIGSTOPped): then reconnect until it
   * answers again, and say so in the QmpResponsive condition meanwhile.
   */
  private async onQmpLost(): Promise<void> {
    if (this.reconnecting) return;
    this.reconnecting = true;
    let reported = false;
    try {
      for (let attempt = 0; ; attempt++) {
        await new Promise((r) => setTimeout(r, attempt === 0 ? 200 : 1_000));
        if (this.exited || this.state !== 'Running' || this.qmp) return;
        if (this.qemuPid && !(await isLiveProcessFor(this.qemuPid, this.uid, this.deps.procRoot))) {
          await new Promise((r) => setTimeout(r, 2_000));
          if (this.exited) return;
          const rd = await readRunDir(this.deps.runDir).catch(() => undefined);
          await this.finish(rd?.exitStatus);
          return;
        }
        try {
          await this.connectQmp(3_000);
        } catch (e) {
          if (!reported) {
            reported = true;
            this.log.warn({ err: e }, 'QEMU does not answer QMP; reconnecting');
            this.deps.event('Warning', 'QmpUnresponsive', 'QEMU does not answer QMP; the daemon keeps reconnecting');
            await this.deps.writeStatus((s) => withCondition(s, 'QmpResponsive', false, this.iso(), 'QmpUnresponsive', 'QEMU does not answer QMP'));
          }
          continue;
        }
        if (reported) {
          this.log.info('QMP answers again');
          this.deps.event('Normal', 'QmpReconnected', 'QEMU answers QMP again');
          await this.deps.writeStatus((s) => withCondition(s, 'QmpResponsive', true, this.iso(), 'QmpReconnected'));
        }
        const st = await this.qmp!.execute('query-status').catch(() => undefined);
        if (st) await this.setPaused(!st.running);
        return;
      }
    } finally {
      this.reconnecting = false;
    }
  }

  /** The launcher's connection dropped: fine while it reconnects, fatal if the process is gone. */
  private async onLauncherGone(reason: string): Promise<void> {
    if (this.exited) return;
    await new Promise((r) => setTimeout(r, 300));
    if (this.exited || this.link?.connected) return;
    if (this.launcherPid && (await isLiveProcessFor(this.launcherPid, this.uid, this.deps.procRoot))) return;
    const rd = await readRunDir(this.deps.runDir).catch(() => undefined);
    if (rd?.exitStatus) {
      await this.finish(rd.exitStatus);
      return;
    }
    this.log.warn({ reason }, 'launcher is gone');
    this.deps.event('Warning', 'LauncherLost', `vmlet-launch died (${reason}); QEMU dies with it`);
    await this.killProcesses();
    await this.finish(undefined, 'LauncherLost');
  }

  /** The accelerator a running QEMU was started with, from its command line (`-accel X,…`, or `-machine …,accel=X` before tb-size was set). */
  private async accelOf(pid: number): Promise<'kvm' | 'tcg' | undefined> {
    const cmdline = await fs.readFile(path.join(this.deps.procRoot ?? '/proc', String(pid), 'cmdline'), 'utf8').catch(() => '');
    return accelFromCmdline(cmdline.split('\0'));
  }

  /** After a daemon restart: adopt what runs, record what ended, and never start a second QEMU. */
  async reattach(): Promise<void> {
    this.to('Reattaching');
    const rd = await readRunDir(this.deps.runDir).catch(() => ({ launcherPid: undefined, qemuPid: undefined, exitStatus: undefined }));
    const procRoot = this.deps.procRoot;
    const launcherAlive = rd.launcherPid !== undefined && (await isLiveProcessFor(rd.launcherPid, this.uid, procRoot));
    const qemuAlive = rd.qemuPid !== undefined && (await isLiveProcessFor(rd.qemuPid, this.uid, procRoot));
    this.launcherPid = launcherAlive ? rd.launcherPid : undefined;
    this.qemuPid = qemuAlive ? rd.qemuPid : undefined;
    if (launcherAlive) this.attachLink();
    if (qemuAlive) {
      this.log.info({ qemuPid: this.qemuPid, launcherPid: this.launcherPid }, 're-adopting running QEMU');
      // The previous daemon may have died before it recorded the launch: record it from what runs.
      const accel = await this.accelOf(this.qemuPid!);
      await this.deps.writeStatus((s) => {
        let out = withRuntime(s, { qemuPid: this.qemuPid, launcherPid: this.launcherPid, runDir: this.deps.runDir, ...(accel ? { accel, softwareEmulation: accel === 'tcg' } : {}) });
        // The launch recorded why; only a daemon that died before that record leaves it to be guessed here.
        if (accel === 'tcg' && !(s.conditions ?? []).some((c) => c.type === 'SoftwareEmulation')) {
          out = withCondition(out, 'SoftwareEmulation', true, this.iso(), 'SoftwareEmulation', SOFTWARE_EMULATION_MESSAGE);
        }
        return out;
      });
      await this.connectAndRun(false);
      return;
    }
    if (rd.exitStatus) {
      await this.finish(rd.exitStatus);
      return;
    }
    if (launcherAlive) {
      // Spawned, but the daemon died before QEMU's argv went out: hand it over now.
      try {
        const prepared = await this.deps.prepare(this.deps.vmi, this.deps.runDir);
        this.pendingLaunch = prepared;
        const [pid] = await this.link!.waitFor('started', this.deps.startTimeoutMs ?? 30_000);
        this.qemuPid = pid;
        this.dropPendingLaunch();
        await this.deps.writeStatus((s) => this.launchedStatus(s, prepared, pid));
        await this.connectAndRun(true);
      } catch (e) {
        await this.killProcesses();
        await this.fail('LaunchFailed', e);
        await this.releaseAfterLateStop();
      }
      return;
    }
    await this.finish(undefined, 'Lost');
  }

  /** Graceful stop: ACPI power-down, the grace period, `quit`, then SIGKILL. */
  async stop(graceSeconds: number, why: string): Promise<ExitReport> {
    this.stopRequested = true;
    if (this.state === 'Exited') return this.done;
    if (this.state === 'Stopping') return this.done;
    const before = this.state;
    this.to('Stopping');
    this.log.info({ graceSeconds, why }, 'stopping VMI');
    if (before === 'New' || before === 'Preparing') {
      await this.killProcesses();
      return this.finish(undefined);
    }
    const qmp = this.qmp;
    if (qmp && graceSeconds > 0) {
      await qmp.execute('system_powerdown').catch(() => undefined);
      if (await this.waitExit(graceSeconds * 1000)) return this.done;
    }
    if (this.qmp) {
      await this.qmp.execute('quit').catch(() => undefined);
      if (await this.waitExit(QUIT_WAIT_MS)) return this.done;
    }
    await this.killProcesses();
    if (await this.waitExit(KILL_WAIT_MS)) return this.done;
    return this.finish(undefined);
  }

  private waitExit(ms: number): Promise<boolean> {
    if (this.state === 'Exited') return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(this.state === 'Exited'), ms);
      this.exitWaiters.push(() => { clearTimeout(timer); resolve(true); });
    });
  }

  private async killProcesses(): Promise<void> {
    for (const pid of [this.qemuPid, this.launcherPid]) {
      if (pid && (await isLiveProcessFor(pid, this.uid, this.deps.procRoot))) {
        try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
      }
    }
  }

  private async fail(reason: FailureReason, e: unknown): Promise<void> {
    const msg = e instanceof Error ? e.message : String(e);
    // finish() logs the one line; the stack is for debugging only.
    this.log.debug({ err: e, reason }, 'VMI failed');
    await this.finish(undefined, reason, msg);
  }

  /** QEMU is gone: write the final phase once, and release everything. */
  async finish(exit: ExitStatus | undefined, failure?: FailureReason, message?: string): Promise<ExitReport> {
    if (this.state === 'Exited') return this.done;
    this.state = 'Exited';
    for (const w of this.exitWaiters) w();
    this.exitWaiters = [];
    this.dropPendingLaunch();
    if (!failure && !this.stopRequested && (exit === undefined || (exit.kind === 'signal' && exit.signal === 9)) && (await this.oomKilled())) {
      failure = 'OOMKilled';
      const limit = this.resources ? ` of ${this.resources.memoryLimitBytes} bytes (guest ${this.resources.guestBytes} + overhead ${this.resources.overheadBytes})` : '';
      message = `QEMU was killed by the OOM killer: the VM went over its cgroup memory limit${limit}`;
      this.deps.event('Warning', 'OOMKilled', message);
    }
    void this.qmp?.close().catch(() => undefined);
    this.qmp = undefined;
    void this.agent?.close().catch(() => undefined);
    this.agent = undefined;
    this.console?.close();
    if (!failure && this.launchFailure !== undefined) {
      failure = 'LaunchFailed';
      message ??= this.launchFailure;
    }
    let phase: 'Succeeded' | 'Failed' = failure ? 'Failed' : finalPhase(exit, this.stopRequested, this.guestShutdown) === 'Failed' ? 'Failed' : 'Succeeded';
    if (this.panicked && !this.stopRequested) phase = 'Failed';
    const reason: ExitReport['reason'] = failure ?? (phase === 'Failed' ? 'QemuCrashed' : this.stopRequested ? 'Stopped' : 'GuestShutdown');
    const report: ExitReport = { phase, reason };
    if (exit) report.exit = exit;
    let text = message ?? `QEMU ended: ${describeExit(exit)}`;
    // QEMU's own last words say why far better than a closed socket does.
    const qemuSaid = phase === 'Failed' ? await readQemuErrors(this.deps.runDir).catch(() => []) : [];
    if (qemuSaid.length > 0) {
      text = `${text}; QEMU said: ${qemuSaid.join(' | ')}`;
      report.qemuError = qemuSaid.join('\n');
    }
    if (phase === 'Failed') this.log.warn({ reason, ...(exit ? { exit: describeExit(exit) } : {}) }, `VMI failed: ${text}`);
    try {
      await this.deps.writeStatus((s) => {
        let out = withPhase(s, phase, this.iso(), reason);
        out = withCondition(out, 'Ready', false, this.iso(), reason);
        out = { ...out, message: text };
        return out;
      });
    } catch (e) {
      this.log.warn({ err: e }, 'could not write the final status');
    }
    this.deps.event(phase === 'Failed' ? 'Warning' : 'Normal', phase, `${reason}: ${text}`);
    // After the final phase is written (it must be seen at once), before anyone waiting on done
    // (a delete) goes on: the sandbox is gone when the VMI is.
    await this.releaseNetwork();
    this.resolveDone(report);
    return report;
  }

  /** Removes the run dir and the VM's cgroup, and forgets the launcher link; only after QEMU is gone. */
  async cleanup(): Promise<void> {
    this.deps.launcherServer.detach(this.uid);
    await fs.rm(this.deps.runDir, { recursive: true, force: true });
    await this.deps.cgroups?.remove(this.uid, this.log);
  }

  requireRunning(): QmpClient {
    if (this.state === 'Running' && !this.qmp) {
      throw new VmletError('QMP_UNAVAILABLE', 'QEMU is not answering QMP right now; the daemon keeps reconnecting (see the QmpResponsive condition)');
    }
    if (this.state !== 'Running' || !this.qmp) {
      throw new VmletError('VMI_NOT_RUNNING', `VMI is ${this.state === 'Exited' ? 'not running' : `still ${this.state.toLowerCase()}`}; try again once it is Running`);
    }
    return this.qmp;
  }

  async pause(): Promise<void> {
    const qmp = this.requireRunning();
    if (!(await qmp.execute('query-status')).running) throw new VmletError('VMI_ALREADY_PAUSED', 'the VMI is already paused; unpause it first');
    await qmp.execute('stop');
    await this.setPaused(true);
  }

  async unpause(): Promise<void> {
    const qmp = this.requireRunning();
    if ((await qmp.execute('query-status')).running) throw new VmletError('VMI_NOT_PAUSED', 'the VMI is not paused');
    await qmp.execute('cont');
    await this.setPaused(false);
  }

  async reset(): Promise<void> {
    await this.requireRunning().execute('system_reset');
  }

  /** A reboot the guest takes part in: through the agent when it answers, else ACPI is no help, so refuse. */
  async softreboot(): Promise<void> {
    this.requireRunning();
    if (!this.agent) throw new VmletError('VMI_AGENT_UNAVAILABLE', 'softreboot needs the guest agent, which is not connected; use reset for a hard reset');
    try {
      await this.agent.shutdown('reboot');
    } catch (e) {
      throw new VmletError('VMI_AGENT_UNAVAILABLE', 'the guest agent did not take the reboot; use reset for a hard reset', { cause: e });
    }
  }
}

