// The one interface both cgroup managers (v1, v2) implement, and the shapes they exchange.

import type { CgroupResources, CgroupWrite } from './resources.js';
import type { CgroupStats } from './stats.js';

export interface CreateOptions {
  /** Applied right after the directories exist; validated before anything is created. */
  resources?: CgroupResources;
}

export interface ApplyResult {
  /** Writes done, as [absolute file path, value], in order. */
  written: CgroupWrite[];
  /** Writes left out because this kernel lacks the file (see OPTIONAL_FILES) or the mode has no such knob (v1 memory.high). */
  skipped: string[];
}

/** Where a group lives: v2 = one directory; v1 = one directory per hierarchy. */
export type CgroupPaths = { version: 2; dir: string; dirs: string[] } | { version: 1; byController: Readonly<Record<string, string>>; dirs: string[] };

/** A handle on one group. Creating a handle does nothing; every effect is an explicit call. */
export interface CgroupManager {
  readonly version: 1 | 2;
  /** The group path relative to the hierarchy root ("vmlet/vm-1"). */
  readonly group: string;
  /** True for a per-thread sub-group (v2 threaded; v1 cpu/cpuacct/cpuset-only sub-directories). */
  readonly threaded: boolean;
  /** Creates the group (and missing ancestors), enabling controllers on the way down, then applies resources. Idempotent. */
  create(opts?: CreateOptions): Promise<ApplyResult>;
  exists(): Promise<boolean>;
  /** Writes the resources' files. */
  apply(resources: CgroupResources): Promise<ApplyResult>;
  /** Moves a whole process (all its threads) into the group. */
  addProcess(pid: number): Promise<void>;
  /** Moves one thread into the group. */
  addThread(tid: number): Promise<void>;
  /** Creates (or opens) a threaded child for per-thread placement (e.g. one per vCPU). */
  createThreadedChild(name: string, opts?: CreateOptions): Promise<CgroupManager>;
  /** The pids in the group itself (cgroup.procs). */
  procs(): Promise<number[]>;
  /** The thread ids in the group itself (cgroup.threads on v2, tasks on v1). */
  threads(): Promise<number[]>;
  /** Freezes every task and waits until the kernel reports the group frozen. */
  freeze(): Promise<void>;
  thaw(): Promise<void>;
  /** SIGKILLs every process in the group and below, and waits until it is empty. */
  kill(): Promise<void>;
  /** Removes the group and its children (rmdir only), retrying EBUSY with bounded backoff. Missing = done. */
  delete(): Promise<void>;
  stats(): Promise<CgroupStats>;
  paths(): CgroupPaths;
}
