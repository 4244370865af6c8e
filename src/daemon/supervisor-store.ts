// The supervisor's way back to the source for one VMI: status writes (a VMI already gone is no error) and events, mirrored on the owning VM when a run ends.
import type { VirtualMachineInstance, VirtualMachineInstanceStatus } from '../api/types.js';
import { isFinalPhase } from '../api/vocabulary.js';
import { VmletError } from '../errors.js';
import type { Source } from '../source/source.js';
import type { SupervisorDeps } from './supervisor-deps.js';

/** `writeStatus` and `event` of a VMI's supervisor, over `store`. */
export function storeCallbacks(
  store: Pick<Source, 'updateStatus' | 'recordEvent'>,
  vmi: VirtualMachineInstance,
): Pick<SupervisorDeps, 'writeStatus' | 'event'> {
  const { namespace, name } = vmi.metadata;
  const uid = vmi.metadata.uid!;
  return {
    writeStatus: async (mutate) => {
      await store
        .updateStatus<VirtualMachineInstanceStatus>('VirtualMachineInstance', namespace, name, (s) => {
          return mutate(s ?? {});
        })
        .catch((e: unknown) => {
          if (!(e instanceof VmletError && e.code === 'STORE_NOT_FOUND')) throw e;
        });
    },
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
