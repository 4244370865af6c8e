// Start traces: a monotonic timestamp for each step of a VMI's way from the API's create to Running, the last ones kept for GET /debug/start-traces (and logged one line each with VMLET_TRACE=1).
import { performance } from 'node:perf_hooks';

/** One start: each step's time in ms since the trace began (the API request's arrival, or the supervisor's start). */
export interface StartTrace {
  uid: string;
  name: string;
  /** Wall-clock time of the first step. */
  startedAt: string;
  steps: Array<[step: string, ms: number]>;
  /** How it ended: 'Running', 'Failed', or 'Abandoned' when a newer trace pushed it out before it ended. */
  outcome?: string;
}

export interface StartTracerOptions {
  /** Finished traces kept (default 100). */
  keep?: number;
  /** Traces still open at most (default 1000); the oldest is abandoned beyond that. */
  maxOpen?: number;
  now?: () => number;
  /** Called once per finished trace (the daemon logs it when VMLET_TRACE=1). */
  onEnd?: (t: StartTrace) => void;
}

interface Open {
  t0: number;
  trace: StartTrace;
}

export class StartTracer {
  readonly #open = new Map<string, Open>();
  #done: StartTrace[] = [];
  readonly #keep: number;
  readonly #maxOpen: number;
  readonly #now: () => number;
  #onEnd: ((t: StartTrace) => void) | undefined;

  constructor(opts: StartTracerOptions = {}) {
    this.#onEnd = opts.onEnd;
    this.#keep = opts.keep ?? 100;
    this.#maxOpen = opts.maxOpen ?? 1000;
    this.#now = opts.now ?? (() => performance.now());
  }

  /**
   * Opens a trace whose first step is `step` at `at` (default now). False when one is already open for `uid`: it is kept,
   * and when `at` is earlier (the API's request, reported after the store's watch already started the VMI) it becomes
   * the trace's origin.
   */
  begin(uid: string, name: string, step: string, at = this.#now()): boolean {
    const open = this.#open.get(uid);
    if (open) {
      if (at < open.t0) {
        const shift = open.t0 - at;
        open.trace.steps = [[step, 0], ...open.trace.steps.map(([s, ms]): [string, number] => [s, Math.round((ms + shift) * 100) / 100])];
        open.t0 = at;
        open.trace.startedAt = new Date(Date.now() - (this.#now() - at)).toISOString();
      }
      return false;
    }
    if (this.#open.size >= this.#maxOpen) {
      const oldest = this.#open.keys().next().value;
      if (oldest !== undefined) this.end(oldest, 'Abandoned');
    }
    const trace: StartTrace = { uid, name, startedAt: new Date(Date.now() - (this.#now() - at)).toISOString(), steps: [[step, 0]] };
    this.#open.set(uid, { t0: at, trace });
    return true;
  }

  /** Records a step of an open trace; nothing happens for a VMI whose start is not traced (a re-adoption). */
  mark(uid: string, step: string): void {
    const o = this.#open.get(uid);
    if (o) o.trace.steps.push([step, Math.round((this.#now() - o.t0) * 100) / 100]);
  }

  /** Closes a trace with its outcome; a second end is ignored. */
  end(uid: string, outcome: string): void {
    const o = this.#open.get(uid);
    if (!o) return;
    o.trace.steps.push([`end:${outcome}`, Math.round((this.#now() - o.t0) * 100) / 100]);
    this.#open.delete(uid);
    // Marks from the API and from the supervisor interleave: keep them in time order.
    o.trace.steps.sort((a, b) => a[1] - b[1]);
    o.trace.outcome = outcome;
    this.#done.push(o.trace);
    if (this.#done.length > this.#keep) this.#done = this.#done.slice(-this.#keep);
    this.#onEnd?.(o.trace);
  }

  /** Starts under way: traces begun and not ended. */
  get open(): number {
    return this.#open.size;
  }

  /** Sets (or clears) the function called once per finished trace. */
  onEnd(fn: ((t: StartTrace) => void) | undefined): void {
    this.#onEnd = fn;
  }

  /** Finished traces, oldest first. */
  recent(): StartTrace[] {
    return this.#done.map((t) => ({ ...t, steps: t.steps.map(([s, ms]): [string, number] => [s, ms]) }));
  }
}

/** The daemon's tracer: the API server, the reconciler and the supervisors mark the same starts. */
export const startTraces = new StartTracer();
