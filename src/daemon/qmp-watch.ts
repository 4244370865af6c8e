// A VM's QMP connection as the supervisor sees it: QEMU's events turned into core events, the current client, and the reconnect loop for a QEMU that stopped answering.
import path from 'node:path';
import type { Logger } from 'pino';
import { GUEST_AGENT_DEVICE_ID } from '../qemu/argv.js';
import { isLiveProcessFor, readRunDir, type ExitStatus } from '../qemu/launch.js';
import { QmpClient } from '../qmp/client.js';
import type { CoreEvent } from './supervisor-core.js';
import type { SupervisorState } from './vmi-state.js';
import { VmletError } from '../errors.js';

/** The QMP events the supervisor follows (coreEventOf turns exactly these into core events). */
export const WATCHED_EVENTS = ['STOP', 'RESUME', 'SHUTDOWN', 'RESET', 'VSERPORT_CHANGE', 'GUEST_PANICKED'] as const;

function field(data: unknown, name: string): unknown {
  return typeof data === 'object' && data !== null ? (data as Record<string, unknown>)[name] : undefined;
}

/** A QMP event as a core event; undefined for events the supervisor does not act on. Pure. */
export function coreEventOf(name: string, data: unknown): CoreEvent | undefined {
  switch (name) {
    case 'STOP':
      return { type: 'paused', paused: true };
    case 'RESUME':
      return { type: 'paused', paused: false };
    case 'SHUTDOWN':
      return { type: 'shutdown', guest: field(data, 'guest') === true, reason: String(field(data, 'reason')) };
    case 'RESET':
      return { type: 'reset' };
    case 'VSERPORT_CHANGE':
      return field(data, 'id') === GUEST_AGENT_DEVICE_ID ? { type: 'agentPort', open: field(data, 'open') === true } : undefined;
    case 'GUEST_PANICKED':
      return { type: 'panicked' };
    default:
      return undefined;
  }
}

/** The QMP client of a VMI in `state`; QMP_UNAVAILABLE while a Running VMI's QEMU does not answer, VMI_NOT_RUNNING otherwise. */
export function runningQmp(qmp: QmpClient | undefined, state: SupervisorState): QmpClient {
  if (state === 'Running' && !qmp) {
    throw new VmletError('QMP_UNAVAILABLE', 'QEMU is not answering QMP right now; the daemon keeps reconnecting (see the QmpResponsive condition)');
  }
  if (state !== 'Running' || !qmp) {
    throw new VmletError('VMI_NOT_RUNNING', `VMI is ${state === 'Exited' ? 'not running' : `still ${state.toLowerCase()}`}; try again once it is Running`);
  }
  return qmp;
}

export interface QmpWatchOptions {
  runDir: string;
  uid: string;
  logger: Logger;
  procRoot?: string | undefined;
  /** Where QEMU's events and the connection's end go. */
  dispatch(e: CoreEvent): Promise<unknown>;
}

/** What the reconnect loop needs to know of the supervisor. */
export interface ReconnectHooks {
  /** Still worth reconnecting: the VMI is Running and has no client. */
  wanted(): boolean;
  exited(): boolean;
  qemuPid(): number | undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class QmpWatch {
  #client: QmpClient | undefined;

  constructor(private readonly opts: QmpWatchOptions) {}

  /** The connected client, if any (undefined while QEMU does not answer, and after close). */
  get client(): QmpClient | undefined {
    return this.#client;
  }

  /** Connects, follows QEMU's events, and reports the connection's end as `qmpClosed`. */
  async connect(timeoutMs = 10_000, opts: { pipelined?: boolean } = {}): Promise<QmpClient> {
    const log = this.opts.logger;
    const qmp = new QmpClient({
      path: path.join(this.opts.runDir, 'qmp.sock'),
      connectTimeoutMs: timeoutMs,
      // The whole wait for QEMU's start-up: standalone, the socket (passed to QEMU) accepts before QEMU serves it.
      greetingTimeoutMs: timeoutMs,
      logger: log,
    });
    await qmp.connect(opts.pipelined ? { pipelined: true } : {});
    this.#client = qmp;
    // One listener for every event rather than one per name: per VM, that is five Sets and closures fewer.
    qmp.on('*', (data: unknown, event) => {
      const ev = coreEventOf(event.event, data);
      if (ev) void this.opts.dispatch(ev);
    });
    qmp.onClose(() => {
      if (this.#client === qmp) this.#client = undefined;
      void this.opts.dispatch({ type: 'qmpClosed' });
    });
    return qmp;
  }

  /**
   * After a daemon restart: a QEMU that does not answer QMP is not killed for it. Says so once (QmpResponsive=False
   * and a Warning), tries again every second while `wanted()`, and reports the recovery; throws once unwanted.
   */
  async connectReadopted(wanted: () => boolean): Promise<QmpClient> {
    const { dispatch, logger: log } = this.opts;
    let reported = false;
    for (;;) {
      try {
        const qmp = await this.connect();
        if (reported) {
          log.info('QMP answers again');
          await dispatch({ type: 'qmpAnswers' });
        }
        return qmp;
      } catch (e) {
        if (!wanted()) throw e;
        if (!reported) {
          reported = true;
          log.warn({ err: e }, 'the re-adopted QEMU does not answer QMP; it keeps running and the daemon keeps trying');
          await dispatch({ type: 'qmpUnresponsive' });
        }
        await sleep(1_000);
        if (!wanted()) throw e;
      }
    }
  }

  close(): void {
    void this.#client?.close().catch(() => undefined);
    this.#client = undefined;
  }

  /**
   * QMP went away while running. Either QEMU is gone (the launcher's EXITED follows within milliseconds)
   * or it stopped answering (a command timed out, e.g. QEMU was SIGSTOPped): then reconnect until it
   * answers again, and say so in the QmpResponsive condition meanwhile. Ends with `reconnectEnded`.
   */
  async reconnect(h: ReconnectHooks): Promise<void> {
    const { dispatch, logger: log } = this.opts;
    let reported = false;
    try {
      for (let attempt = 0; ; attempt++) {
        await sleep(attempt === 0 ? 200 : 1_000);
        if (h.exited() || !h.wanted() || this.#client) return;
        const pid = h.qemuPid();
        if (pid && !(await isLiveProcessFor(pid, this.opts.uid, this.opts.procRoot))) {
          await sleep(2_000);
          if (h.exited()) return;
          const rd = await readRunDir(this.opts.runDir).catch(() => undefined);
          const exit: ExitStatus | undefined = rd?.exitStatus;
          await dispatch({ type: 'exited', exit });
          return;
        }
        let qmp: QmpClient;
        try {
          qmp = await this.connect(3_000);
        } catch (e) {
          if (!reported) {
            reported = true;
            log.warn({ err: e }, 'QEMU does not answer QMP; reconnecting');
            await dispatch({ type: 'qmpUnresponsive' });
          }
          continue;
        }
        if (reported) {
          log.info('QMP answers again');
          await dispatch({ type: 'qmpAnswers' });
        }
        const st = await qmp.execute('query-status').catch(() => undefined);
        if (st) await dispatch({ type: 'paused', paused: !st.running });
        return;
      }
    } finally {
      await dispatch({ type: 'reconnectEnded' });
    }
  }
}

/** Pauses or resumes QEMU; refused with a code when it already is so. */
export async function setQemuPaused(qmp: QmpClient, paused: boolean): Promise<void> {
  const running = (await qmp.execute('query-status')).running;
  if (paused && !running) throw new VmletError('VMI_ALREADY_PAUSED', 'the VMI is already paused; unpause it first');
  if (!paused && running) throw new VmletError('VMI_NOT_PAUSED', 'the VMI is not paused');
  await qmp.execute(paused ? 'stop' : 'cont');
}
