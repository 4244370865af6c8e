// The supervisor's pure core: (state, event) → { state, effects }, with every decision of a VMI's lifecycle and the effects, as data, that the shell (supervisor.ts) carries out.
import type { VMIInterfaceStatus, VolumeStatus } from '../api/types.js';
import type { ExitStatus } from '../qemu/launch.js';
import { canTransition, describeExit, finalPhase, type FailureReason, type SupervisorState } from './vmi-state.js';
import type { VmResources } from './vm-resources.js';
import type { Accel } from '../api/vocabulary.js';

/** What `prepare` hands back: QEMU's argv and the fds it references (3, 4, … in order). */
export interface PreparedLaunch {
  argv: string[];
  /** Open fds (close-on-exec) the launcher hands to QEMU; the supervisor closes them once it has them. */
  fds: number[];
  accel: Accel;
  softwareEmulation: boolean;
  /** Why software emulation (the SoftwareEmulation condition's reason and message). */
  emulation?: { reason: 'KvmUnusable' | 'EmulationRequested'; message: string };
  /** The network sandbox the launcher joins before it forks QEMU. */
  netnsPath?: string;
  /** The rest of the sandbox (links, nftables ruleset, DHCP), made while QEMU starts: the guest runs (`cont`) only once it resolved. */
  networkFinished?: Promise<void>;
  /** status.interfaces as known before boot (from the lease). */
  interfaces?: VMIInterfaceStatus[];
  /** status.volumeStatus: each volume's format, size and image. */
  volumeStatus?: VolumeStatus[];
}

export interface ExitReport {
  phase: 'Succeeded' | 'Failed';
  reason?: FailureReason | 'Stopped' | 'GuestShutdown';
  exit?: ExitStatus;
  /** QEMU's last stderr lines when it failed. */
  qemuError?: string;
}

/** Everything the supervisor decides on: its phase and the facts that change the final outcome. */
export interface CoreState {
  readonly phase: SupervisorState;
  /** A stop (delete, runStrategy, failed start) was asked for: the end is a success, and a late prepare is undone. */
  readonly stopRequested: boolean;
  /** The QMP reconnect loop runs. */
  readonly reconnecting: boolean;
  /** QEMU reported a shutdown the guest asked for. */
  readonly guestShutdown: boolean;
  /** The guest kernel panicked: the end is a failure unless a stop was asked for. */
  readonly panicked: boolean;
  /** Why the launch failed, when QEMU came up but never answered (kept for the final status). */
  readonly launchFailure: string | undefined;
}

export const INITIAL_STATE: CoreState = {
  phase: 'New',
  stopRequested: false,
  reconnecting: false,
  guestShutdown: false,
  panicked: false,
  launchFailure: undefined,
};

/** Where a launch or its failure came from: a fresh launch, or the hand-over to a launcher found after a restart. */
export type LaunchVia = 'launch' | 'handover';

export type CoreEvent =
  // The lifecycle
  | { type: 'start' }
  | { type: 'reattach' }
  | { type: 'resourcesInvalid'; error: unknown }
  | { type: 'prepareFailed'; reason: FailureReason; error: unknown }
  | { type: 'prepared'; prepared: PreparedLaunch }
  | { type: 'launchFailed'; error: unknown; via: LaunchVia }
  | { type: 'qemuStarted'; pid: number; prepared: PreparedLaunch; via: LaunchVia }
  | { type: 'inspected'; launcherAlive: boolean; qemuAlive: boolean; exit: ExitStatus | undefined }
  /** Kubernetes mode: the pod's launcher called in with QEMU already started (or ended): a daemon that died after handing it argv. */
  | { type: 'podLauncherRan' }
  | { type: 'connecting' }
  | { type: 'qmpReady' }
  | { type: 'startupFailed'; error: unknown }
  | { type: 'stop'; graceSeconds: number; why: string }
  | { type: 'launcherLost'; reason: string }
  | { type: 'exited'; exit?: ExitStatus | undefined; failure?: FailureReason | undefined; message?: string | undefined }
  // What QEMU and the guest report
  | { type: 'paused'; paused: boolean }
  | { type: 'shutdown'; guest: boolean; reason: string }
  | { type: 'reset' }
  | { type: 'panicked' }
  | { type: 'agentPort'; open: boolean }
  | { type: 'agentAnswered'; interfaces: VMIInterfaceStatus[] | undefined }
  // The QMP connection
  | { type: 'qmpClosed' }
  | { type: 'qmpUnresponsive' }
  | { type: 'qmpAnswers' }
  | { type: 'reconnectEnded' };

export type CoreEventType = CoreEvent['type'];

/** A status change the shell writes, as data (supervisor-status.ts applies it). */
export type StatusEdit =
  | { kind: 'paused'; paused: boolean }
  | { kind: 'agentConnected'; interfaces: VMIInterfaceStatus[] | undefined }
  | { kind: 'agentPortClosed' }
  | { kind: 'qmpResponsive'; responsive: boolean };

export type Effect =
  /** Sizing, run dir, `prepare`; then `prepared`, `prepareFailed` or `resourcesInvalid`. */
  | { kind: 'prepare' }
  /** VM cgroup, launcher spawn, QEMU's pid; then `qemuStarted` or `launchFailed`. */
  | { kind: 'launch'; prepared: PreparedLaunch }
  /** Read the run dir and check the recorded processes; then `inspected`. */
  | { kind: 'inspectRunDir' }
  | { kind: 'attachLink' }
  /** Record the runtime block of a QEMU found running (pids, accel from its command line). */
  | { kind: 'recordAdopted' }
  /** Prepare again and hand QEMU's argv to the launcher found waiting; then `qemuStarted` or `launchFailed`. */
  | { kind: 'handover' }
  /** Record the launch: pids, accel, interfaces, SoftwareEmulation. */
  | { kind: 'recordLaunch'; prepared: PreparedLaunch; qemuPid: number }
  | { kind: 'dropPendingLaunch' }
  | { kind: 'closeFds'; fds: number[] }
  /** QMP negotiation, set-action, console, `cont`; then `qmpReady` or `startupFailed`. */
  | { kind: 'connect'; fresh: boolean }
  | { kind: 'writeStatus'; edit: StatusEdit }
  | { kind: 'event'; type: 'Normal' | 'Warning'; reason: string; message: string }
  | { kind: 'log'; level: 'debug' | 'info' | 'warn'; fields: Record<string, unknown>; message: string }
  | { kind: 'probeAgent' }
  | { kind: 'reconnectQmp' }
  /** SIGKILL QEMU and the launcher (those that are still ours). */
  | { kind: 'kill' }
  | { kind: 'stop'; graceSeconds: number; why: string }
  /** ACPI power-down, the grace period, `quit`, SIGKILL; then `exited`. */
  | { kind: 'escalate'; graceSeconds: number }
  /** Feed `exited` back in. */
  | { kind: 'exit'; exit?: ExitStatus | undefined; failure?: FailureReason | undefined; message?: string | undefined }
  /** OOM diagnosis, close the clients, write the final status, event, log, release the sandbox. */
  | { kind: 'finalize'; exit: ExitStatus | undefined; failure: FailureReason | undefined; message: string | undefined }
  /** After a stop that came while prepare ran: drop a pending launch and release the sandbox. */
  | { kind: 'releaseIfStopped' };

/**
 * - moved: the phase changed;
 * - stayed: the event was taken, the phase is the same (flags or effects may follow);
 * - ignored: the event means nothing in this phase;
 * - refused: the event asks for a transition the table forbids (a bug: the shell throws SUPERVISOR_BAD_TRANSITION).
 */
export type Outcome = 'moved' | 'stayed' | 'ignored' | 'refused';

export interface Step {
  outcome: Outcome;
  state: CoreState;
  effects: Effect[];
  /** For a refusal: the phase the event asked for. */
  to?: SupervisorState;
}

function moveTo(s: CoreState, to: SupervisorState, effects: Effect[], patch: Partial<CoreState> = {}): Step {
  if (!canTransition(s.phase, to)) return { outcome: 'refused', state: s, effects: [], to };
  return { outcome: 'moved', state: { ...s, ...patch, phase: to }, effects };
}

function stay(s: CoreState, effects: Effect[], patch: Partial<CoreState> = {}): Step {
  return { outcome: 'stayed', state: { ...s, ...patch }, effects };
}

function ignore(s: CoreState): Step {
  return { outcome: 'ignored', state: s, effects: [] };
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** finish() logs the one line that says why, with QEMU's own words; the stack is for debugging only. */
function failedLog(error: unknown, reason: FailureReason): Effect {
  return { kind: 'log', level: 'debug', fields: { err: error, reason }, message: 'VMI failed' };
}

/** The whole lifecycle, one event at a time. Pure. */
export function step(s: CoreState, e: CoreEvent): Step {
  switch (e.type) {
    case 'start':
      return moveTo(s, 'Preparing', [{ kind: 'prepare' }]);
    case 'reattach':
      // Only a new supervisor re-adopts; Preparing reaches Reattaching only by podLauncherRan.
      if (s.phase === 'Preparing') return ignore(s);
      return moveTo(s, 'Reattaching', [{ kind: 'inspectRunDir' }]);
    case 'resourcesInvalid':
      return stay(s, [failedLog(e.error, 'InvalidResources'), { kind: 'exit', failure: 'InvalidResources', message: errorMessage(e.error) }]);
    case 'prepareFailed':
      return stay(s, [failedLog(e.error, e.reason), { kind: 'exit', failure: e.reason, message: errorMessage(e.error) }, { kind: 'releaseIfStopped' }]);
    case 'prepared':
      // A stop while prepare ran has finished the VMI (or is finishing it): what prepare made is undone.
      if (s.stopRequested) return stay(s, [{ kind: 'closeFds', fds: e.prepared.fds }, { kind: 'exit' }, { kind: 'releaseIfStopped' }]);
      return moveTo(s, 'Launching', [{ kind: 'launch', prepared: e.prepared }]);
    case 'launchFailed':
      return stay(s, [
        { kind: 'kill' },
        failedLog(e.error, 'LaunchFailed'),
        { kind: 'exit', failure: 'LaunchFailed', message: errorMessage(e.error) },
        ...(e.via === 'handover' ? [{ kind: 'releaseIfStopped' } as const] : []),
      ]);
    case 'qemuStarted':
      return stay(s, [
        { kind: 'dropPendingLaunch' },
        { kind: 'recordLaunch', prepared: e.prepared, qemuPid: e.pid },
        ...(e.via === 'launch' ? [{ kind: 'event', type: 'Normal', reason: 'Launched', message: `QEMU started with pid ${e.pid}` } as const] : []),
        { kind: 'connect', fresh: true },
      ]);
    case 'podLauncherRan':
      // Adopt what that daemon started; never prepare (and build the pod's network) a second time.
      if (s.phase !== 'Preparing') return ignore(s);
      return moveTo(s, 'Reattaching', [{ kind: 'inspectRunDir' }]);
    case 'inspected':
      return stay(s, inspectedEffects(e));
    case 'connecting':
      // A re-adopted QEMU is connected to in Reattaching; a fresh one in Starting.
      if (s.phase === 'Reattaching') return stay(s, []);
      return moveTo(s, 'Starting', []);
    case 'qmpReady':
      if (s.phase !== 'Starting' && s.phase !== 'Reattaching') return ignore(s);
      return moveTo(s, 'Running', []);
    case 'startupFailed':
      if (s.phase === 'Exited' || s.phase === 'Stopping') return ignore(s);
      return stay(
        s,
        [
          { kind: 'log', level: 'debug', fields: { err: e.error }, message: 'QEMU did not come up' },
          { kind: 'stop', graceSeconds: 0, why: 'LaunchFailed' },
        ],
        { launchFailure: `QEMU did not come up: ${errorMessage(e.error)}` },
      );
    case 'stop': {
      if (s.phase === 'Exited' || s.phase === 'Stopping') return stay(s, [], { stopRequested: true });
      const log: Effect = { kind: 'log', level: 'info', fields: { graceSeconds: e.graceSeconds, why: e.why }, message: 'stopping VMI' };
      // Before launch there is no QEMU to power down.
      if (s.phase === 'Preparing') return moveTo(s, 'Stopping', [log, { kind: 'kill' }, { kind: 'exit' }], { stopRequested: true });
      return moveTo(s, 'Stopping', [log, { kind: 'escalate', graceSeconds: e.graceSeconds }], { stopRequested: true });
    }
    case 'launcherLost':
      return stay(s, [
        { kind: 'log', level: 'warn', fields: { reason: e.reason }, message: 'launcher is gone' },
        { kind: 'event', type: 'Warning', reason: 'LauncherLost', message: `vmlet-launch died (${e.reason}); QEMU dies with it` },
        { kind: 'kill' },
        { kind: 'exit', failure: 'LauncherLost' },
      ]);
    case 'exited':
      if (s.phase === 'Exited') return ignore(s);
      return moveTo(s, 'Exited', [{ kind: 'dropPendingLaunch' }, { kind: 'finalize', exit: e.exit, failure: e.failure, message: e.message }]);
    case 'paused':
      if (s.phase !== 'Running') return ignore(s);
      return stay(s, [{ kind: 'writeStatus', edit: { kind: 'paused', paused: e.paused } }]);
    case 'shutdown':
      return stay(
        s,
        [{ kind: 'event', type: 'Normal', reason: 'Shutdown', message: `QEMU reports shutdown (${e.reason})` }],
        e.guest ? { guestShutdown: true } : {},
      );
    case 'reset':
      return stay(s, [{ kind: 'event', type: 'Normal', reason: 'Reset', message: 'the guest was reset' }]);
    case 'panicked':
      return stay(s, [{ kind: 'event', type: 'Warning', reason: 'GuestPanicked', message: 'the guest kernel panicked' }], { panicked: true });
    case 'agentPort':
      if (s.phase !== 'Running') return ignore(s);
      return stay(s, [e.open ? { kind: 'probeAgent' } : { kind: 'writeStatus', edit: { kind: 'agentPortClosed' } }]);
    case 'agentAnswered':
      if (s.phase !== 'Running') return ignore(s);
      return stay(s, [{ kind: 'writeStatus', edit: { kind: 'agentConnected', interfaces: e.interfaces } }]);
    case 'qmpClosed':
      if (s.phase !== 'Running' || s.reconnecting) return ignore(s);
      return stay(s, [{ kind: 'reconnectQmp' }], { reconnecting: true });
    case 'qmpUnresponsive':
      return stay(s, [
        { kind: 'event', type: 'Warning', reason: 'QmpUnresponsive', message: 'QEMU does not answer QMP; the daemon keeps reconnecting' },
        { kind: 'writeStatus', edit: { kind: 'qmpResponsive', responsive: false } },
      ]);
    case 'qmpAnswers':
      return stay(s, [
        { kind: 'event', type: 'Normal', reason: 'QmpReconnected', message: 'QEMU answers QMP again' },
        { kind: 'writeStatus', edit: { kind: 'qmpResponsive', responsive: true } },
      ]);
    case 'reconnectEnded':
      return stay(s, [], { reconnecting: false });
  }
}

/** After a daemon restart: adopt what runs, record what ended, hand over to a waiting launcher, and never start a second QEMU. */
function inspectedEffects(e: Extract<CoreEvent, { type: 'inspected' }>): Effect[] {
  const link: Effect[] = e.launcherAlive ? [{ kind: 'attachLink' }] : [];
  if (e.qemuAlive) return [...link, { kind: 'recordAdopted' }, { kind: 'connect', fresh: false }];
  if (e.exit) return [...link, { kind: 'exit', exit: e.exit }];
  // Spawned, but the daemon died before QEMU's argv went out: hand it over now.
  if (e.launcherAlive) return [...link, { kind: 'handover' }];
  return [{ kind: 'exit', failure: 'Lost' }];
}

/** Whether an end may be the OOM killer's work (then the VM's cgroup is asked): QEMU vanished or got SIGKILL, and nobody asked. */
export function mayBeOomKill(s: CoreState, exit: ExitStatus | undefined, failure: FailureReason | undefined): boolean {
  return !failure && !s.stopRequested && (exit === undefined || (exit.kind === 'signal' && exit.signal === 9));
}

export function oomMessage(resources: VmResources | undefined): string {
  const limit = resources ? ` of ${resources.memoryLimitBytes} bytes (guest ${resources.guestBytes} + overhead ${resources.overheadBytes})` : '';
  return `QEMU was killed by the OOM killer: the VM went over its cgroup memory limit${limit}`;
}

export interface FinalOutcome {
  phase: 'Succeeded' | 'Failed';
  reason: NonNullable<ExitReport['reason']>;
  /** status.message and the text of the event. */
  text: string;
  report: ExitReport;
}

/** The final phase, reason and message of a VMI whose QEMU is gone. Pure. */
export function finalOutcome(s: CoreState, exit: ExitStatus | undefined, failure0: FailureReason | undefined, message0: string | undefined): FinalOutcome {
  let failure = failure0;
  let message = message0;
  if (!failure && s.launchFailure !== undefined) {
    failure = 'LaunchFailed';
    message ??= s.launchFailure;
  }
  let phase: 'Succeeded' | 'Failed' = failure ? 'Failed' : finalPhase(exit, s.stopRequested, s.guestShutdown) === 'Failed' ? 'Failed' : 'Succeeded';
  if (s.panicked && !s.stopRequested) phase = 'Failed';
  const reason = failure ?? (phase === 'Failed' ? 'QemuCrashed' : s.stopRequested ? 'Stopped' : 'GuestShutdown');
  const report: ExitReport = { phase, reason };
  if (exit) report.exit = exit;
  return { phase, reason, text: message ?? `QEMU ended: ${describeExit(exit)}`, report };
}

/** QEMU's own last words say why far better than a closed socket does: they go into the message and the report. */
export function withQemuSaid(o: FinalOutcome, lines: readonly string[]): FinalOutcome {
  if (lines.length === 0) return o;
  return { ...o, text: `${o.text}; QEMU said: ${lines.join(' | ')}`, report: { ...o.report, qemuError: lines.join('\n') } };
}
