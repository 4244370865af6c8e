// Follows how many VMIs the daemon has and how many of them are Running, from the store's watch, for the STATUS line it shows systemd.
import type { Logger } from 'pino';
import type { Source } from '../source/source.js';

export interface VmCounts {
  /** VMIs that are not Succeeded or Failed (deleting ones included: their QEMU still runs). */
  total: number;
  running: number;
}

/** "3 VMs (2 running)". Pure. */
export function describeCounts(c: VmCounts): string {
  return `${c.total} ${c.total === 1 ? 'VM' : 'VMs'} (${c.running} running)`;
}

const FINAL = new Set(['Succeeded', 'Failed']);

/** The phase of every VMI from one watch (initial events first); `onChange` after each event that changed the counts. */
export class VmCountWatch {
  readonly #phases = new Map<string, string>();
  #watch: { close(): void } | undefined;
  #closed = false;

  constructor(
    private readonly opts: {
      store: Pick<Source, 'watch'>;
      onChange: (c: VmCounts) => void;
      logger: Logger;
    },
  ) {}

  counts(): VmCounts {
    let total = 0;
    let running = 0;
    for (const phase of this.#phases.values()) {
      if (FINAL.has(phase)) continue;
      total++;
      if (phase === 'Running') running++;
    }
    return { total, running };
  }

  start(): void {
    const w = this.opts.store.watch('VirtualMachineInstance', undefined, undefined, { sendInitialEvents: true });
    this.#watch = w;
    // A fresh watch re-delivers every VMI: the map is rebuilt from it.
    this.#phases.clear();
    void (async () => {
      try {
        for await (const ev of w) {
          const before = describeCounts(this.counts());
          const uid = ev.object.metadata.uid ?? `${ev.object.metadata.namespace}/${ev.object.metadata.name}`;
          if (ev.type === 'DELETED') this.#phases.delete(uid);
          else this.#phases.set(uid, (ev.object.status as { phase?: string } | undefined)?.phase ?? 'Pending');
          if (describeCounts(this.counts()) !== before) this.opts.onChange(this.counts());
        }
      } catch (e) {
        if (!this.#closed) this.opts.logger.warn({ err: e }, 'VM count watch failed; following again in 1 s');
      }
      if (!this.#closed && this.#watch === w) setTimeout(() => void (!this.#closed && this.#watch === w && this.start()), 1000).unref();
    })();
  }

  close(): void {
    this.#closed = true;
    this.#watch?.close();
  }
}
