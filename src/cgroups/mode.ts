// Detects whether a host runs cgroup v1, hybrid or v2 (from mountinfo text and optionally statfs) and where each hierarchy is mounted.

import { readFile, statfs } from 'node:fs/promises';
import { VmletError } from '../errors.js';

export type CgroupMode = 'v1' | 'hybrid' | 'v2';

export interface MountEntry {
  mountId: number;
  parentId: number;
  /** The mount's root inside its file system (e.g. "/" or, in a container, "/docker/abc"). */
  root: string;
  mountPoint: string;
  fsType: string;
  source: string;
  superOptions: string[];
}

export interface CgroupLayout {
  mode: CgroupMode;
  /** The cgroup root the layout was detected for (e.g. /sys/fs/cgroup). */
  root: string;
  /** Mount point of the cgroup2 hierarchy: the root itself on v2, e.g. root/unified on hybrid. */
  unified?: string;
  /** v1 only: controller (or "name=systemd") → mount point of its hierarchy. Co-mounted controllers share one. */
  hierarchies: Readonly<Record<string, string>>;
}

/** The v1 controllers the kernel knows (a super option of a `cgroup` mount names each one it carries). */
export const V1_CONTROLLERS: ReadonlySet<string> = new Set([
  'cpu',
  'cpuacct',
  'cpuset',
  'memory',
  'devices',
  'freezer',
  'net_cls',
  'blkio',
  'perf_event',
  'net_prio',
  'hugetlb',
  'pids',
  'rdma',
  'misc',
]);

export const CGROUP2_SUPER_MAGIC = 0x63677270;
export const CGROUP_SUPER_MAGIC = 0x27e0eb;
export const TMPFS_MAGIC = 0x01021994;

function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

/** Parses /proc/PID/mountinfo text (proc(5)); malformed lines are ignored. */
export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const fields = line.split(' ');
    const sep = fields.indexOf('-', 6);
    if (sep < 0 || fields.length < sep + 3) continue;
    const [id, parent, , root, mountPoint] = fields;
    if (id === undefined || parent === undefined || root === undefined || mountPoint === undefined) continue;
    out.push({
      mountId: Number.parseInt(id, 10),
      parentId: Number.parseInt(parent, 10),
      root: unescapeOctal(root),
      mountPoint: unescapeOctal(mountPoint),
      fsType: fields[sep + 1] ?? '',
      source: unescapeOctal(fields[sep + 2] ?? ''),
      superOptions: (fields[sep + 3] ?? '').split(',').filter((o) => o !== ''),
    });
  }
  return out;
}

function under(path: string, root: string): boolean {
  const r = root.endsWith('/') && root.length > 1 ? root.slice(0, -1) : root;
  return path === r || path.startsWith(r === '/' ? '/' : `${r}/`);
}

/**
 * Works out the mode from mountinfo text for cgroup mounts at or below `root`:
 * v2 = a cgroup2 mount and no v1 hierarchy carrying a controller; hybrid = v1 controller
 * hierarchies plus a cgroup2 mount (systemd's "unified" one); v1 = controller hierarchies only.
 * Later mounts on the same point hide earlier ones. Throws CGROUP_NOT_MOUNTED.
 */
export function layoutFromMountinfo(text: string, root: string): CgroupLayout {
  const byPoint = new Map<string, MountEntry>();
  for (const m of parseMountinfo(text)) {
    if (!under(m.mountPoint, root)) continue;
    byPoint.delete(m.mountPoint); // keep insertion order of the visible mount
    byPoint.set(m.mountPoint, m);
  }
  let unified: string | undefined;
  const hierarchies: Record<string, string> = {};
  let v1Controllers = 0;
  for (const m of byPoint.values()) {
    if (m.fsType === 'cgroup2') {
      // Prefer the mount right at the root when there are several.
      if (unified === undefined || m.mountPoint.length < unified.length) unified = m.mountPoint;
    } else if (m.fsType === 'cgroup') {
      for (const opt of m.superOptions) {
        if (V1_CONTROLLERS.has(opt)) {
          hierarchies[opt] = m.mountPoint;
          v1Controllers += 1;
        } else if (opt.startsWith('name=')) {
          hierarchies[opt] = m.mountPoint;
        }
      }
    }
  }
  if (v1Controllers > 0) {
    return unified === undefined ? { mode: 'v1', root, hierarchies } : { mode: 'hybrid', root, unified, hierarchies };
  }
  if (unified !== undefined) return { mode: 'v2', root, unified, hierarchies: {} };
  throw new VmletError('CGROUP_NOT_MOUNTED', `no cgroup or cgroup2 file system is mounted at or below ${root}`);
}

/**
 * Cross-checks a layout with the file system type of the root (statfs f_type): a cgroup2 root
 * means v2, a tmpfs root means v1 or hybrid. Throws CGROUP_MODE_MISMATCH when they disagree.
 */
export function checkStatfsType(layout: CgroupLayout, fsType: number): void {
  const rootIsV2 = fsType === CGROUP2_SUPER_MAGIC;
  const layoutSaysV2AtRoot = layout.mode === 'v2' && layout.unified === layout.root;
  if (rootIsV2 !== layoutSaysV2AtRoot && (rootIsV2 || fsType === TMPFS_MAGIC)) {
    throw new VmletError(
      'CGROUP_MODE_MISMATCH',
      `${layout.root} has file system type 0x${fsType.toString(16)} but mountinfo says ${layout.mode}${layout.unified === undefined ? '' : ` (cgroup2 at ${layout.unified})`}`,
    );
  }
}

export interface DetectOptions {
  /** The cgroup root, normally /sys/fs/cgroup. */
  root: string;
  /** The mount table to read, normally /proc/self/mountinfo. */
  mountinfoPath: string;
  /** Also statfs the root and cross-check (default false). */
  statfs?: boolean;
}

const cache = new Map<string, CgroupLayout>();

/** Reads the mount table once per (root, mountinfoPath) and caches the layout. */
export async function detectCgroupLayout(opts: DetectOptions): Promise<CgroupLayout> {
  const key = `${opts.root}\0${opts.mountinfoPath}\0${opts.statfs === true ? 's' : ''}`;
  const hit = cache.get(key);
  if (hit !== undefined) return hit;
  let text: string;
  try {
    text = await readFile(opts.mountinfoPath, 'utf8');
  } catch (e) {
    throw new VmletError('CGROUP_MOUNTINFO_UNREADABLE', `cannot read ${opts.mountinfoPath}`, { cause: e });
  }
  const layout = layoutFromMountinfo(text, opts.root);
  if (opts.statfs === true) {
    let type: number;
    try {
      type = (await statfs(opts.root)).type;
    } catch (e) {
      throw new VmletError('CGROUP_NOT_MOUNTED', `cannot statfs ${opts.root}`, { cause: e });
    }
    checkStatfsType(layout, type);
  }
  cache.set(key, layout);
  return layout;
}

/** Forgets cached layouts (tests, or after the host remounted cgroups). */
export function clearCgroupLayoutCache(): void {
  cache.clear();
}
