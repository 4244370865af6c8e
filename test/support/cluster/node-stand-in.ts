// For tests that run the controller without a node daemon: stand in for the daemon's one write at deletion, releasing its finalizer from deleted VMIs as the daemon does once QEMU is gone.
import { PatchStrategy, setHeaderOptions, type CustomObjectsApi } from '@kubernetes/client-node';
import { NODE_FINALIZER } from '../../../src/controller/cluster-names.js';

const MERGE = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

interface VmiMeta {
  metadata: { name: string; resourceVersion?: string; deletionTimestamp?: string; finalizers?: string[] };
}

/** Removes `vmlet.io/node-cleanup` from every VMI of `namespace` that is being deleted; returns how many. */
export async function releaseNodeFinalizers(custom: CustomObjectsApi, api: { group: string; version: string }, namespace: string): Promise<number> {
  const list = (await custom.listNamespacedCustomObject({ ...api, plural: 'virtualmachineinstances', namespace })) as { items: VmiMeta[] };
  let n = 0;
  for (const v of list.items) {
    const fin = v.metadata.finalizers ?? [];
    if (!v.metadata.deletionTimestamp || !fin.includes(NODE_FINALIZER)) continue;
    const body = { metadata: { resourceVersion: v.metadata.resourceVersion, finalizers: fin.filter((f) => f !== NODE_FINALIZER) } };
    // A conflict or a VMI gone meanwhile: the next call looks again.
    await custom.patchNamespacedCustomObject({ ...api, plural: 'virtualmachineinstances', namespace, name: v.metadata.name, body }, MERGE).then(
      () => n++,
      () => undefined,
    );
  }
  return n;
}
