// Holds a VMI whose containerDisk image is not in the node image store yet: condition ImageAvailable=False while it waits, prepare again once an import changes the store.
import type { Logger } from 'pino';
import type { VirtualMachineInstance, VirtualMachineInstanceStatus } from '../api/types.js';
import { isVmletError, type VmletError } from '../errors.js';
import type { PreparedLaunch } from './supervisor-core.js';
import type { PrepareContext } from './supervisor-deps.js';
import { withCondition, withoutCondition } from './vmi-status.js';

type Prepare = (vmi: VirtualMachineInstance, runDir: string, at?: PrepareContext) => Promise<PreparedLaunch>;

export interface ImageWaitOptions {
  /** Calls `listener` after each change of the image store; returns the unsubscribe. */
  onImagesChanged(listener: () => void): () => void;
  writeStatus(mutate: (s: VirtualMachineInstanceStatus) => VirtualMachineInstanceStatus): Promise<void>;
  logger: Logger;
  now?: () => string;
}

/** `prepare`, except that IMAGE_NOT_FOUND waits for the image (or the context's abort) instead of failing the VMI. */
export function waitingForImages(prepare: Prepare, o: ImageWaitOptions): Prepare {
  const now = o.now ?? (() => new Date().toISOString());
  return async (vmi, runDir, at = {}) => {
    let waited = false;
    let said: string | undefined;
    for (;;) {
      // Subscribed before the attempt, so an import that lands during it is not missed.
      let changed!: () => void;
      const change = new Promise<void>((resolve) => (changed = resolve));
      const unsubscribe = o.onImagesChanged(() => changed());
      try {
        const prepared = await prepare(vmi, runDir, at);
        if (waited) await o.writeStatus((s) => withoutCondition(s, 'ImageAvailable'));
        return prepared;
      } catch (e) {
        if (!isVmletError(e, 'IMAGE_NOT_FOUND')) throw e;
        // Written when it changes only: in a cluster the store is looked at every second.
        if (e.message !== said) {
          if (!waited) o.logger.warn({ err: e }, 'waiting for a containerDisk image');
          await o.writeStatus((s) => withCondition(s, 'ImageAvailable', false, now(), 'ImageNotFound', e.message));
          said = e.message;
        }
        waited = true;
        await untilChangedOrAborted(change, at.signal, e);
      } finally {
        unsubscribe();
      }
    }
  };
}

function untilChangedOrAborted(change: Promise<void>, signal: AbortSignal | undefined, why: VmletError): Promise<void> {
  if (signal === undefined) return change;
  if (signal.aborted) return Promise.reject(why);
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(why);
    signal.addEventListener('abort', onAbort, { once: true });
    void change.then(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    });
  });
}
