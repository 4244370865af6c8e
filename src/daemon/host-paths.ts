// Standalone: a VMI's hostDisk and kernelBoot paths must lie below a folder of the daemon config's hostPaths.allow, compared after every symlink is resolved (the daemon opens them as root).
import fs from 'node:fs';
import path from 'node:path';
import type { VirtualMachineInstance } from '../api/types.js';

type VirtualMachineInstanceSpec = VirtualMachineInstance['spec'];
import { hostPathAllowed } from '../controller/launcher-pod.js';
import { VmletError } from '../errors.js';

/** Where the allow list is set, for messages. */
export const STANDALONE_HOST_PATHS_KEY = 'hostPaths.allow in the daemon config';

export interface HostPathUse {
  /** The field, relative to the VMI spec. */
  field: string;
  path: string;
  /** DiskOrCreate: the file may not exist yet (its folder is checked). */
  mayBeMissing: boolean;
}

/** Every host path a VMI spec names. */
export function hostPathsOf(spec: VirtualMachineInstanceSpec): HostPathUse[] {
  const out: HostPathUse[] = [];
  (spec.volumes ?? []).forEach((v, i) => {
    if (v.hostDisk) out.push({ field: `volumes[${i}].hostDisk.path`, path: v.hostDisk.path, mayBeMissing: v.hostDisk.type === 'DiskOrCreate' });
  });
  const kb = spec.domain.firmware?.kernelBoot?.hostPath;
  if (kb?.kernelPath !== undefined) out.push({ field: 'domain.firmware.kernelBoot.hostPath.kernelPath', path: kb.kernelPath, mayBeMissing: false });
  if (kb?.initrdPath !== undefined) out.push({ field: 'domain.firmware.kernelBoot.hostPath.initrdPath', path: kb.initrdPath, mayBeMissing: false });
  return out;
}

/** The path with its symlinks resolved; for a file yet to be made, its nearest existing folder resolved and the rest kept. */
export function resolvedPath(p: string): string {
  const rest: string[] = [];
  let at = path.resolve(p);
  for (;;) {
    try {
      return path.join(fs.realpathSync(at), ...rest.reverse());
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const parent = path.dirname(at);
      if ((code !== 'ENOENT' && code !== 'ENOTDIR') || parent === at) return path.join(at, ...rest.reverse());
      rest.push(path.basename(at));
      at = parent;
    }
  }
}

/** The allow list's folders, themselves resolved (a folder that does not exist allows nothing). */
function resolvedAllow(allow: readonly string[]): string[] {
  return allow.flatMap((a) => {
    try {
      return [fs.realpathSync(a)];
    } catch {
      return [];
    }
  });
}

/** HOST_PATH_NOT_ALLOWED, with `field`, for each path not below an allowed folder once resolved. */
export function refusedHostPaths(spec: VirtualMachineInstanceSpec, allow: readonly string[]): Array<{ field: string; error: VmletError }> {
  const uses = hostPathsOf(spec);
  if (uses.length === 0) return [];
  const folders = resolvedAllow(allow);
  return uses.flatMap((u) => {
    const real = resolvedPath(u.path);
    if (hostPathAllowed(real, folders)) return [];
    const via = real !== path.resolve(u.path) ? ` (it resolves to ${JSON.stringify(real)})` : '';
    const listed = allow.length === 0 ? 'none are allowed' : `allowed: ${allow.map((a) => JSON.stringify(a)).join(', ')}`;
    const error = new VmletError(
      'HOST_PATH_NOT_ALLOWED',
      `${JSON.stringify(u.path)}${via} is not below a folder of ${STANDALONE_HOST_PATHS_KEY} (${listed}); the daemon opens it as root, so add its folder there if it is meant to be used`,
      { details: { path: u.path, resolved: real, allow: [...allow] } },
    );
    return [{ field: u.field, error }];
  });
}
