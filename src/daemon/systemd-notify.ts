// Tells systemd (Type=notify) how the daemon is doing: READY=1 once the API answers and the VMs found running are re-adopted (bounded), STATUS= lines, WATCHDOG=1 from the event loop, STOPPING=1.
import http from 'node:http';
import { isMainThread } from 'node:worker_threads';
import type { Logger } from 'pino';
import { VmletError } from '../errors.js';
import { sdNotify, watchdogIntervalMs } from '../sys/sd-notify.js';

/**
 * How long READY=1 waits for re-adoption. Past it READY goes anyway, with a warning naming the VMIs not adopted: a
 * unit that never gets ready is killed by systemd (TimeoutStartSec, 90 s by default), which helps no VM.
 */
export const READOPT_BOUND_MS = 60_000;
/** STATUS= updates are at most this often (a burst of VMI changes becomes one line). */
export const STATUS_DEBOUNCE_MS = 250;

/** One VMI being re-adopted (NodeReconciler.readoptions): `settled` never rejects. */
export interface Readoption {
  name: string;
  settled: Promise<void>;
}

export interface ReadyInput {
  /** Resolves once the API socket answers a request; a rejection is logged and READY still goes. */
  apiAnswers: () => Promise<void>;
  readoptions: ReadonlyMap<string, Readoption>;
  /** The STATUS= text sent with READY=1. */
  status: () => string;
}

export interface ReadyReport {
  /** False when a stop came first (no READY=1 then). */
  sent: boolean;
  ms: number;
  /** Names of the VMIs still not re-adopted when the bound ran out. */
  pending: string[];
}

export interface SystemdNotifierOptions {
  logger: Logger;
  /** Where NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are read (default process.env). */
  env?: NodeJS.ProcessEnv;
  pid?: number;
  readoptBoundMs?: number;
  statusDebounceMs?: number;
}

const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;

export class SystemdNotifier {
  readonly #log: Logger;
  readonly #env: NodeJS.ProcessEnv;
  #watchdog: NodeJS.Timeout | undefined;
  #statusTimer: NodeJS.Timeout | undefined;
  #pendingStatus: string | undefined;
  #lastStatus: string | undefined;
  #ready = false;
  #stopping = false;
  #onStop: () => void = () => undefined;
  readonly #stopped = new Promise<void>((resolve) => (this.#onStop = resolve));
  /** The last send failed: the next failure is not logged again (the watchdog would repeat it every few seconds). */
  #failing = false;

  constructor(private readonly opts: SystemdNotifierOptions) {
    this.#log = opts.logger;
    this.#env = opts.env ?? process.env;
  }

  /** Run by systemd with Type=notify (NOTIFY_SOCKET is set). */
  get enabled(): boolean {
    return Boolean(this.#env.NOTIFY_SOCKET);
  }

  private send(state: string): boolean {
    try {
      const sent = sdNotify(state, this.#env);
      this.#failing = false;
      return sent;
    } catch (err) {
      if (!this.#failing) this.#log.warn({ err, state: state.split('\n')[0] }, 'cannot notify systemd');
      this.#failing = true;
      return false;
    }
  }

  /**
   * WATCHDOG=1 every WATCHDOG_USEC/2 from a timer of this thread's event loop, and only the main thread's: a blocked
   * loop must stop the pings so systemd restarts the daemon, and a worker's loop could ping on while the main one hangs.
   * Unref'd: the pings never keep the process alive.
   */
  startWatchdog(): void {
    const everyMs = watchdogIntervalMs(this.#env, this.opts.pid ?? process.pid);
    if (everyMs === undefined || this.#watchdog || !this.enabled) return;
    if (!isMainThread) {
      this.#log.warn('not the main thread: no systemd watchdog pings from here');
      return;
    }
    this.#log.info({ everyMs }, 'systemd watchdog: pinging');
    this.send('WATCHDOG=1');
    this.#watchdog = setInterval(() => this.send('WATCHDOG=1'), everyMs);
    this.#watchdog.unref();
  }

  /**
   * Waits until the API answers and every re-adoption settled, at most the bound, then sends READY=1 with STATUS=.
   * Meanwhile STATUS says how many VMs are being re-adopted. A stop before then cancels READY.
   */
  async ready(input: ReadyInput): Promise<ReadyReport> {
    const started = Date.now();
    const all = [...input.readoptions.values()];
    const pending = new Set(all);
    for (const r of all) void r.settled.then(() => pending.delete(r));
    if (all.length > 0) this.send(`STATUS=re-adopting ${plural(all.length, 'VM')}`);
    const api = input.apiAnswers().catch((err: unknown) => this.#log.warn({ err }, 'the API socket does not answer; telling systemd READY=1 anyway'));
    const boundMs = this.opts.readoptBoundMs ?? READOPT_BOUND_MS;
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<void>((resolve) => (timer = setTimeout(resolve, boundMs)));
    await Promise.race([Promise.all([api, ...all.map((r) => r.settled)]), bound, this.#stopped]);
    clearTimeout(timer);
    const ms = Date.now() - started;
    const left = [...pending].map((r) => r.name).sort();
    if (this.#stopping) return { sent: false, ms, pending: left };
    if (left.length > 0) this.#log.warn({ vmis: left, boundMs }, `${plural(left.length, 'VM')} not re-adopted within ${boundMs} ms; ready anyway`);
    else if (all.length > 0) this.#log.info({ vmis: all.length, ms }, 'every VM found running is re-adopted');
    const status = input.status();
    this.#ready = true;
    this.#lastStatus = status;
    this.send(`READY=1\nSTATUS=${status}`);
    return { sent: true, ms, pending: left };
  }

  /** A new STATUS= line: sent after READY=1, at most once per debounce interval, and only when it changed. */
  status(text: string): void {
    this.#pendingStatus = text;
    if (this.#statusTimer || this.#stopping) return;
    this.#statusTimer = setTimeout(() => {
      this.#statusTimer = undefined;
      const next = this.#pendingStatus;
      if (!this.#ready || this.#stopping || next === undefined || next === this.#lastStatus) return;
      this.#lastStatus = next;
      this.send(`STATUS=${next}`);
    }, this.opts.statusDebounceMs ?? STATUS_DEBOUNCE_MS);
    this.#statusTimer.unref();
  }

  /** STOPPING=1 (a READY still waiting is cancelled); the watchdog keeps pinging while the daemon closes. */
  stopping(): void {
    this.#stopping = true;
    this.#onStop();
    this.send('STOPPING=1\nSTATUS=stopping; VMs keep running');
  }

  close(): void {
    clearInterval(this.#watchdog);
    clearTimeout(this.#statusTimer);
    this.#watchdog = undefined;
  }
}

/** Resolves once GET /healthz on the unix socket answers 200 (a listening socket alone proves the kernel, not the server). */
export function apiAnswers(socketPath: string, timeoutMs = 5_000): Promise<void> {
  return new Promise((resolve, reject) => {
    // Its own connection, closed after the answer: a kept-alive one would count against root's maxConnectionsPerClient.
    const req = http.request({ socketPath, path: '/healthz', timeout: timeoutMs, agent: false, headers: { Connection: 'close' } }, (res) => {
      res.resume();
      if (res.statusCode === 200) resolve();
      else reject(new VmletError('DAEMON_UNREACHABLE', `GET /healthz on ${socketPath} answered ${res.statusCode ?? '?'}`));
    });
    req.on('timeout', () => req.destroy(new VmletError('DAEMON_UNREACHABLE', `GET /healthz on ${socketPath}: no answer within ${timeoutMs} ms`)));
    req.on('error', (e) => reject(e instanceof VmletError ? e : new VmletError('DAEMON_UNREACHABLE', `cannot reach ${socketPath}`, { cause: e })));
    req.end();
  });
}
