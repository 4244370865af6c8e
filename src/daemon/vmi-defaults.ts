// A VMI from the API server with vmlet's defaults applied: the server applies only the CRD schema's, while the standalone daemon's admission fills in the rest (vCPUs, guest memory, a disk's bus), so the node daemon does the same before it uses one.
import { validateVMI } from '../api/validate.js';
import type { StoredVmi } from '../controller/vm-controller.js';

/** The VMI with its spec defaulted, or why admission would have refused it (it then passed without the webhook). */
export function withVmletDefaults(obj: StoredVmi): { vmi: StoredVmi } | { error: unknown; message: string } {
  const { name, namespace, labels, annotations } = obj.metadata;
  try {
    // Server-set metadata is not the user's manifest: only what a user writes is checked.
    const v = validateVMI({ apiVersion: obj.apiVersion, kind: obj.kind, metadata: { name, namespace, labels, annotations }, spec: obj.spec });
    return { vmi: { ...obj, spec: v.spec } };
  } catch (error) {
    return { error, message: error instanceof Error ? error.message : String(error) };
  }
}
