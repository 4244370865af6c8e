// The supervisor's way back to the source for one VMI: status writes (in order; a VMI already gone is no error; a failed write is retried, never the VM's end) and events, mirrored on the owning VM when a run ends.
import type { VirtualMachineInstance, VirtualMachineInstanceStatus } from '../api/types.js';
import { isFinalPhase } from '../api/vocabulary.js';
import { VmletError } from '../errors.js';
import type { Logger } from 'pino';
import type { Source } from '../source/source.js';
import type { SupervisorDeps } from './supervisor-deps.js';

type Mutate = (s: VirtualMachineInstanceStatus) => VirtualMachineInstanceStatus;

/** Backoff of a failing status write: doubling from the first, capped. */
export const STATUS_RETRY_MS = { first: 250, max: 30_000 } as const;

interface Queued {
  mutate: Mutate;
  settle: () => void;
  after?: Promise<unknown>;
}

/**
 * Status writes of one VMI, one at a time and in order; what queued meanwhile goes in one write. A write that
 * fails (a full disk, an object over the store's size limit, an API server refusing) does not reach the caller:
 * its promise settles, the failure is logged once, and the same changes are tried again with backoff until they
 * land or the VMI is gone. So no VM is stopped, or left paused, because its status could not be written.
 * A change with `after` goes in a write of its own, prepared at once and shown once `after` resolves; when `after`
 * rejects, that change is dropped (not retried) and its promise settles.
 */
export class StatusWriter {
  readonly #queue: Queued[] = [];
  #pumping = false;

  constructor(
    private readonly write: (mutate: Mutate, after?: Promise<unknown>) => Promise<void>,
    private readonly log?: Logger,
    private readonly sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms).unref()),
  ) {}

  /** Resolves once written, or once the first attempt failed (then retried in the background), or once `after` rejected. */
  enqueue(mutate: Mutate, opts: { after?: Promise<unknown> } = {}): Promise<void> {
    const after = opts.after;
    // Settled (and so never an unhandled rejection) by the write that waits for it.
    after?.catch(() => undefined);
    const done = new Promise<void>((settle) => this.#queue.push({ mutate, settle, ...(after ? { after } : {}) }));
    void this.#pump();
    return done;
  }

  /** The changes queued up to the next gated one, or that one alone. */
  #nextBatch(): Queued[] {
    const gated = this.#queue.findIndex((q) => q.after !== undefined);
    return this.#queue.splice(0, gated === 0 ? 1 : gated < 0 ? this.#queue.length : gated);
  }

  async #pump(): Promise<void> {
    if (this.#pumping) return;
    this.#pumping = true;
    let delay: number = STATUS_RETRY_MS.first;
    let failing = false;
    try {
      while (this.#queue.length > 0) {
        const batch = this.#nextBatch();
        const after = batch[0]?.after;
        let gateFailed = false;
        const gate = after?.catch((e: unknown) => {
          gateFailed = true;
          throw e;
        });
        gate?.catch(() => undefined);
        try {
          await this.write((s) => batch.reduce((acc, b) => b.mutate(acc), s), gate);
        } catch (e) {
          if (gateFailed || (e instanceof VmletError && e.code === 'STORE_NOT_FOUND')) {
            for (const b of batch) b.settle();
            continue;
          }
          if (!failing) this.log?.warn({ err: e }, 'status write failed; the VM runs on and the write is retried');
          failing = true;
          for (const b of batch) b.settle();
          this.#queue.unshift(...batch.map((b) => ({ mutate: b.mutate, settle: () => undefined, ...(b.after ? { after: b.after } : {}) })));
          await this.sleep(delay);
          delay = Math.min(delay * 2, STATUS_RETRY_MS.max);
          continue;
        }
        if (failing) this.log?.info('status written again');
        failing = false;
        delay = STATUS_RETRY_MS.first;
        for (const b of batch) b.settle();
      }
    } finally {
      this.#pumping = false;
    }
  }
}

/** `writeStatus` and `event` of a VMI's supervisor, over `store`. */
export function storeCallbacks(
  store: Pick<Source, 'updateStatus' | 'recordEvent'>,
  vmi: VirtualMachineInstance,
  log?: Logger,
): Pick<SupervisorDeps, 'writeStatus' | 'event'> {
  const { namespace, name } = vmi.metadata;
  const uid = vmi.metadata.uid!;
  const writer = new StatusWriter(async (mutate, after) => {
    await store.updateStatus<VirtualMachineInstanceStatus>('VirtualMachineInstance', namespace, name, (s) => mutate(s ?? {}), after ? { after } : {});
  }, log);
  return {
    writeStatus: (mutate, opts) => writer.enqueue(mutate, opts),
    event: (type, reason, message) => {
      void store.recordEvent({ involvedObject: { kind: 'VirtualMachineInstance', namespace, name, uid }, type, reason, message }).catch(() => undefined);
      // A VMI's events go with it; how its run ended is kept on the VM that owns it too.
      const owner = vmi.metadata.ownerReferences?.find((r) => r.kind === 'VirtualMachine');
      if (owner && isFinalPhase(reason)) {
        void store
          .recordEvent({
            involvedObject: { kind: 'VirtualMachine', namespace, name: owner.name, uid: owner.uid },
            type,
            reason: `VMI${reason}`,
            message: `VirtualMachineInstance ${name} (${uid}): ${message}`,
          })
          .catch(() => undefined);
      }
    },
  };
}
