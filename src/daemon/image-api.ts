// Serves the node image store over the API: list, get, import a file on the node, and remove unless a VMI that is not finished uses the image.
import type { VirtualMachineInstance } from '../api/types.js';
import { isFinalPhase } from '../api/vocabulary.js';
import { VmletError } from '../errors.js';
import type { ImageRecord, ImageStore } from '../images/store.js';
import type { Source } from '../source/source.js';
import type { ImageApi } from './api-server.js';

/** `namespace/name` of each VMI that is not finished and uses `rec` (by its recorded digest, or by a reference that resolves to it now). */
export function vmisUsing(rec: ImageRecord, vmis: readonly VirtualMachineInstance[], store: Pick<ImageStore, 'resolve'>): string[] {
  const out: string[] = [];
  for (const vmi of vmis) {
    if (isFinalPhase(vmi.status?.phase ?? '')) continue;
    const recorded = (vmi.status?.volumeStatus ?? []).some((v) => v.containerDiskVolume?.digest === rec.digest);
    const named = (vmi.spec.volumes ?? []).some((v) => v.containerDisk !== undefined && store.resolve(v.containerDisk.image)?.digest === rec.digest);
    if (recorded || named) out.push(`${vmi.metadata.namespace}/${vmi.metadata.name}`);
  }
  return out;
}

export function imageApi(images: ImageStore, source: Pick<Source, 'list'>): ImageApi {
  return {
    list: () => images.list(),
    get: (ref) => {
      const rec = images.resolve(ref);
      if (rec === undefined) throw new VmletError('IMAGE_NOT_FOUND', `no image ${ref} in the node image store (vmlet image ls lists them)`);
      return rec;
    },
    import: (file, name) => images.import(file, name === undefined ? {} : { name }),
    remove: async (ref) => {
      const vmis = (await source.list('VirtualMachineInstance')) as VirtualMachineInstance[];
      return images.remove(ref, (rec) => vmisUsing(rec, vmis, images));
    },
  };
}
