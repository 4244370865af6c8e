// The controller's view of the cluster config (ConfigMap vmlet/vmlet-config, key vmlet.yaml): the keys it acts on, read live, the last good version kept.
import YAML from 'yaml';
import { DEFAULT_FILESYSTEM_OVERHEAD } from '../api/pod-volumes.js';
import { isRecord } from '../api/vocabulary.js';
import { VmletError } from '../errors.js';

export const CONFIG_MAP_NAME = 'vmlet-config';
export const CONFIG_MAP_KEY = 'vmlet.yaml';

export interface ClusterConfig {
  /** VMIs may run under software emulation on nodes whose KVM is unusable (KubeVirt's `useEmulation`). */
  useEmulation: boolean;
  /** Host folders below which `hostDisk` and `kernelBoot` host paths are allowed (none by default). */
  hostPathsAllow: string[];
  /**
   * The share of a Filesystem claim kept free for the filesystem itself (KubeVirt's `filesystemOverhead`, in [0, 1)):
   * the node daemon makes `disk.img` of the claim's capacity less this share. Written into each claim's
   * `status.volumeStatus[].persistentVolumeClaimInfo.filesystemOverhead` when the VMI is placed.
   */
  filesystemOverhead: number;
}

export const DEFAULT_CLUSTER_CONFIG: ClusterConfig = { useEmulation: false, hostPathsAllow: [], filesystemOverhead: DEFAULT_FILESYSTEM_OVERHEAD };

/**
 * Reads the keys the controller acts on from the config document; the node daemons read the same document with
 * their own (stricter) parser. CONFIG_INVALID names the key when a known key has the wrong type.
 */
export function parseClusterConfig(text: string | undefined, source = `ConfigMap ${CONFIG_MAP_NAME}`): ClusterConfig {
  if (text === undefined || text.trim() === '') return { ...DEFAULT_CLUSTER_CONFIG };
  let doc: unknown;
  try {
    doc = YAML.parse(text);
  } catch (e) {
    throw new VmletError('CONFIG_INVALID', `${source}: ${CONFIG_MAP_KEY} is not valid YAML`, { cause: e });
  }
  if (doc === null || doc === undefined) return { ...DEFAULT_CLUSTER_CONFIG };
  if (!isRecord(doc)) throw new VmletError('CONFIG_INVALID', `${source}: ${CONFIG_MAP_KEY} must be a mapping`);
  const out: ClusterConfig = { ...DEFAULT_CLUSTER_CONFIG };
  if (doc['useEmulation'] !== undefined) {
    if (typeof doc['useEmulation'] !== 'boolean') throw new VmletError('CONFIG_INVALID', `${source}: "useEmulation" must be a boolean`);
    out.useEmulation = doc['useEmulation'];
  }
  const hp = doc['hostPaths'];
  if (hp !== undefined && hp !== null) {
    if (!isRecord(hp)) throw new VmletError('CONFIG_INVALID', `${source}: "hostPaths" must be a mapping with the key "allow"`);
    const allow = hp['allow'] ?? [];
    if (!Array.isArray(allow) || !allow.every((p): p is string => typeof p === 'string' && p.startsWith('/'))) {
      throw new VmletError('CONFIG_INVALID', `${source}: "hostPaths.allow" must be a list of absolute folder paths`);
    }
    out.hostPathsAllow = allow;
  }
  const fo = doc['filesystemOverhead'];
  if (fo !== undefined && fo !== null) {
    if (typeof fo !== 'number' || !Number.isFinite(fo) || fo < 0 || fo >= 1) {
      throw new VmletError(
        'CONFIG_INVALID',
        `${source}: "filesystemOverhead" must be a number from 0 up to (not including) 1, the share of a Filesystem claim kept free (e.g. 0.055), got ${JSON.stringify(fo)}`,
      );
    }
    out.filesystemOverhead = fo;
  }
  return out;
}
