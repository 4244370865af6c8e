// Public surface of the cgroups library: mode detection, resources and their writes, the managers and the factory that picks one.

import { VmletError } from '../errors.js';
import type { CgroupManager } from './manager.js';
import type { CgroupLayout } from './mode.js';
import { V1Manager, type V1ManagerOptions } from './v1.js';
import { V2Manager, type V2ManagerOptions } from './v2.js';

export * from './resources.js';
export * from './writes.js';
export * from './spec.js';
export * from './mode.js';
export * from './stats.js';
export type { ApplyResult, CgroupManager, CgroupPaths, CreateOptions } from './manager.js';
export type { CgroupFs, ManagerDeps } from './fs.js';
export { nodeCgroupFs, parsePids } from './fs.js';
export { V1Manager, DEFAULT_V1_CONTROLLERS, V1_THREAD_CONTROLLERS, type V1ManagerOptions } from './v1.js';
export { V2Manager, DEFAULT_V2_CONTROLLERS, V2_THREADED_CONTROLLERS, type V2ManagerOptions } from './v2.js';

export interface ManagerOptions extends V1ManagerOptions, V2ManagerOptions {}

/**
 * A handle on `group` (a path below each hierarchy root) for the layout's mode: v2 → V2Manager
 * on the unified mount; v1 and hybrid → V1Manager on the controller hierarchies (a hybrid host's
 * unified mount carries no controllers worth using). Does no I/O.
 */
export function cgroupManager(layout: CgroupLayout, group: string, opts: ManagerOptions = {}): CgroupManager {
  if (layout.mode === 'v2') {
    if (layout.unified === undefined) throw new VmletError('CGROUP_NOT_MOUNTED', 'v2 layout without a cgroup2 mount');
    return new V2Manager(layout.unified, group, opts);
  }
  return new V1Manager(layout.hierarchies, group, opts);
}
