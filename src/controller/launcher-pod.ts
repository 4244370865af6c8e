// Renders a VMI's launcher pod (docs/cluster-mode.md, "The launcher pod") as pure data: name, labels, owner, node, security context, resources, volumes and disk containers.
import { posix } from 'node:path';
import type { V1Container, V1Pod, V1Volume, V1VolumeMount } from '@kubernetes/client-node';
import { OVERHEAD_ANNOTATION, memoryOverhead } from '../api/overhead.js';
import { formatBytes, parseQuantity } from '../api/quantity.js';
import type { Quantity } from '../api/types.js';
import { VmletError } from '../errors.js';
import { KVM_RESOURCE, LAUNCHER_COMPONENT, LAUNCHER_LABELS } from './cluster-names.js';
import { diskParts, dnsLabelPart, restrictedSecurityContext, type LauncherClaim, type PullPolicy } from './launcher-volumes.js';
import type { PlacedVmi } from './placement.js';

export const LAUNCHER = {
  namePrefix: 'vmlet-launcher-',
  container: 'compute',
  command: '/usr/libexec/vmlet/vmlet-launch',
  runVolume: 'vmlet-run',
  runDir: '/var/run/vmlet',
  socket: '/var/run/vmlet/launcher.sock',
  lingerSeconds: 600,
  /** uid and gid QEMU runs as in the pod (qemu's uid on Debian). */
  uid: 107,
  /** Added to the VMI's grace period, so the launcher outlives QEMU's shutdown. */
  extraGraceSeconds: 15,
  defaultGraceSeconds: 30,
} as const;

/** Where the allowed host folders come from, for messages. */
export const HOST_PATHS_CONFIG_KEY = 'hostPaths.allow in the ConfigMap vmlet/vmlet-config (key vmlet.yaml)';

export interface LauncherPodInput {
  vmi: PlacedVmi;
  /** The node assignment's choice. */
  nodeName: string;
  /** 5 lowercase letters or digits, random, chosen by the caller (keeps this pure). */
  nameSuffix: string;
  image: string;
  imagePullPolicy?: PullPolicy;
  /** The VMI runs under software emulation: no KVM device, TCG's memory overhead. */
  emulation?: boolean;
  /** Host folders below which hostDisk and kernelBoot paths may be mounted (the cluster config's hostPaths.allow). */
  hostPathsAllow?: readonly string[];
  /** Volume name → its PersistentVolumeClaim, for every persistentVolumeClaim and ephemeral volume (the controller reads them first). */
  claims?: Readonly<Record<string, LauncherClaim>>;
}

const SUFFIX_RE = /^[a-z0-9]{5}$/;
const MAX_NAME = 63;

/** `vmlet-launcher-<vmi name>-<suffix>`, the VMI name cut (and dots made dashes) so the whole is a DNS label of at most 63 characters. */
export function launcherPodName(vmiName: string, suffix: string): string {
  if (!SUFFIX_RE.test(suffix))
    throw new VmletError('LAUNCHER_POD_BAD_INPUT', `launcher pod name suffix must be 5 lowercase letters or digits, got ${JSON.stringify(suffix)}`);
  const room = MAX_NAME - LAUNCHER.namePrefix.length - 1 - suffix.length;
  const middle = dnsLabelPart(dnsLabelPart(vmiName).slice(0, room));
  return `${LAUNCHER.namePrefix}${middle === '' ? 'vmi' : middle}-${suffix}`;
}

/** The pod's hostname: the VMI name up to its first dot, at most 63 characters (as KubeVirt). */
export function launcherHostname(vmiName: string): string {
  const first = vmiName.split('.')[0] ?? '';
  return dnsLabelPart(dnsLabelPart(first).slice(0, MAX_NAME)) || 'vmi';
}

function bytesOf(field: string, q: Quantity): number {
  let v: bigint;
  try {
    v = parseQuantity(q);
  } catch (e) {
    throw new VmletError('INVALID_QUANTITY', `${field}: cannot parse ${JSON.stringify(q)}`, { cause: e });
  }
  if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) throw new VmletError('INVALID_QUANTITY', `${field}: out of range, got ${JSON.stringify(q)}`);
  return Number(v);
}

/**
 * The pod's memory (request = limit): max(guest memory, resources.limits.memory) + QEMU's
 * overhead (the `vmlet.io/memory-overhead` annotation, else the formula of src/api/overhead.ts),
 * the same figure the daemon gives the VM's cgroup. Throws INVALID_QUANTITY.
 */
export function launcherMemoryBytes(vmi: PlacedVmi, emulation: boolean): number {
  const domain = vmi.spec.domain;
  const res = domain.resources;
  const guestQ = domain.memory?.guest ?? res?.requests?.memory ?? res?.limits?.memory;
  if (guestQ === undefined) throw new VmletError('INVALID_QUANTITY', 'domain.memory.guest: missing (and no resources.requests.memory to take it from)');
  const guestBytes = bytesOf('domain.memory.guest', guestQ);
  const limitBytes = res?.limits?.memory === undefined ? 0 : bytesOf('domain.resources.limits.memory', res.limits.memory);
  const cpu = domain.cpu;
  const vcpus = (cpu?.sockets ?? 1) * (cpu?.cores ?? 1) * (cpu?.threads ?? 1);
  const ann = vmi.metadata.annotations?.[OVERHEAD_ANNOTATION];
  const overhead =
    ann !== undefined
      ? bytesOf(`metadata.annotations["${OVERHEAD_ANNOTATION}"]`, ann)
      : memoryOverhead({ guestBytes, vcpus, accel: emulation ? 'tcg' : 'kvm' });
  return Math.max(guestBytes, limitBytes) + overhead;
}

/**
 * The pod's cpu request: the VMI's resources.requests.cpu, else 100m per vCPU (KubeVirt's default CPU allocation
 * ratio of 10), so that idle VMs do not reserve whole cores; a limit only when the VMI sets one.
 */
export function launcherCpu(vmi: PlacedVmi): { request: string; limit?: string } {
  const res = vmi.spec.domain.resources;
  const cpu = vmi.spec.domain.cpu;
  const vcpus = (cpu?.sockets ?? 1) * (cpu?.cores ?? 1) * (cpu?.threads ?? 1);
  const request = res?.requests?.cpu !== undefined ? String(res.requests.cpu) : `${vcpus * CPU_MILLIS_PER_VCPU}m`;
  return res?.limits?.cpu !== undefined ? { request, limit: String(res.limits.cpu) } : { request };
}

/** What each vCPU requests when the VMI names no cpu (KubeVirt: 1000m / cpuAllocationRatio 10). */
export const CPU_MILLIS_PER_VCPU = 100;

/** Normalised absolute folder, or undefined for an entry that is not one (relative, or with `..`). */
function allowedFolder(a: string): string | undefined {
  if (!a.startsWith('/') || a.split('/').includes('..')) return undefined;
  const n = posix.normalize(a);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

/**
 * Whether a node path lies strictly below one of the allowed folders, compared as normalised
 * absolute paths (no symlinks are resolved here; the daemon does that). Paths with `..` never do.
 */
export function hostPathAllowed(path: string, allow: readonly string[]): boolean {
  if (!path.startsWith('/') || path.split('/').includes('..') || path.includes('\0')) return false;
  const p = posix.normalize(path);
  return allow.some((a) => {
    const folder = allowedFolder(a);
    if (folder === undefined) return false;
    return p !== folder && p.startsWith(folder === '/' ? '/' : `${folder}/`);
  });
}

function refuse(what: string, path: string, allow: readonly string[]): VmletError {
  const listed = allow.length === 0 ? 'none are allowed' : `allowed: ${allow.map((a) => JSON.stringify(a)).join(', ')}`;
  return new VmletError(
    'HOST_PATH_NOT_ALLOWED',
    `${what}: node path ${JSON.stringify(path)} is not below a folder of ${HOST_PATHS_CONFIG_KEY} (${listed}); add its folder there`,
    {
      details: { path, allow: [...allow] },
    },
  );
}

interface HostMounts {
  volumes: V1Volume[];
  mounts: V1VolumeMount[];
}

function volumeName(prefix: string, name: string): string {
  return `${prefix}${dnsLabelPart(name)}`.slice(0, MAX_NAME).replace(/-+$/, '');
}

/** hostPath volumes for hostDisk and kernelBoot paths, each checked against the allow list; a folder or file is mounted once. */
export function hostPathMounts(vmi: PlacedVmi, allow: readonly string[]): HostMounts {
  const out: HostMounts = { volumes: [], mounts: [] };
  const seen = new Set<string>();
  const addMount = (name: string, path: string, type: 'File' | 'DirectoryOrCreate', readOnly: boolean): void => {
    if (seen.has(path)) return;
    seen.add(path);
    out.volumes.push({ name, hostPath: { path, type } });
    out.mounts.push({ name, mountPath: path, ...(readOnly ? { readOnly: true } : {}) });
  };
  for (const v of vmi.spec.volumes ?? []) {
    const hd = v.hostDisk;
    if (hd === undefined) continue;
    if (!hostPathAllowed(hd.path, allow)) throw refuse(`volume "${v.name}" (hostDisk)`, hd.path, allow);
    const p = posix.normalize(hd.path);
    // DiskOrCreate: the daemon creates the image, so the folder must be there and writable.
    if (hd.type === 'DiskOrCreate') addMount(volumeName('hostdisk-', v.name), posix.dirname(p), 'DirectoryOrCreate', false);
    else addMount(volumeName('hostdisk-', v.name), p, 'File', false);
  }
  const kb = vmi.spec.domain.firmware?.kernelBoot?.hostPath;
  if (kb !== undefined) {
    for (const [what, path] of [
      ['kernel', kb.kernelPath],
      ['initrd', kb.initrdPath],
    ] as const) {
      if (path === undefined) continue;
      if (!hostPathAllowed(path, allow)) throw refuse(`kernelBoot.hostPath.${what}Path`, path, allow);
      addMount(`kernelboot-${what}`, posix.normalize(path), 'File', true);
    }
  }
  return out;
}

/**
 * The launcher pod of a VMI, per docs/cluster-mode.md: `compute` is always containers[0] (the node daemon relies on
 * it), the containerDisk containers follow. Throws LAUNCHER_POD_BAD_INPUT, INVALID_QUANTITY or HOST_PATH_NOT_ALLOWED.
 */
export function renderLauncherPod(input: LauncherPodInput): V1Pod {
  const { vmi } = input;
  const meta = vmi.metadata;
  const uid = meta.uid;
  if (uid === undefined || uid === '')
    throw new VmletError('LAUNCHER_POD_BAD_INPUT', `VMI ${meta.namespace}/${meta.name} has no uid yet; render its launcher pod once it is stored`);
  const emulation = input.emulation ?? false;
  const memory = formatBytes(BigInt(launcherMemoryBytes(vmi, emulation)));
  const cpu = launcherCpu(vmi);
  const kvm = emulation ? {} : { [KVM_RESOURCE]: '1' };
  const requests: Record<string, string> = { cpu: cpu.request, memory, ...kvm };
  const limits: Record<string, string> = { ...(cpu.limit !== undefined ? { cpu: cpu.limit } : {}), memory, ...kvm };
  const host = hostPathMounts(vmi, input.hostPathsAllow ?? []);
  const imagePullPolicy = input.imagePullPolicy ?? 'IfNotPresent';
  const disks = diskParts({
    volumes: vmi.spec.volumes ?? [],
    image: input.image,
    imagePullPolicy,
    claims: input.claims ?? {},
    takenVolumeNames: new Set([LAUNCHER.runVolume, ...host.volumes.map((v) => v.name)]),
  });
  const { nodeSelector, affinity, tolerations } = vmi.spec;
  const compute: V1Container = {
    name: LAUNCHER.container,
    image: input.image,
    imagePullPolicy,
    command: [LAUNCHER.command],
    args: ['--uid', uid, '--socket', LAUNCHER.socket, '--run-dir', LAUNCHER.runDir, '--linger', String(LAUNCHER.lingerSeconds)],
    securityContext: restrictedSecurityContext(),
    resources: { requests, limits },
    volumeMounts: [{ name: LAUNCHER.runVolume, mountPath: LAUNCHER.runDir }, ...host.mounts, ...disks.computeMounts],
    ...(disks.computeDevices.length > 0 ? { volumeDevices: disks.computeDevices } : {}),
  };
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: launcherPodName(meta.name, input.nameSuffix),
      namespace: meta.namespace,
      labels: {
        ...(meta.labels ?? {}),
        [LAUNCHER_LABELS.component]: LAUNCHER_COMPONENT,
        [LAUNCHER_LABELS.vmiName]: meta.name,
        [LAUNCHER_LABELS.vmiUid]: uid,
      },
      ownerReferences: [{ apiVersion: vmi.apiVersion, kind: vmi.kind, name: meta.name, uid, controller: true, blockOwnerDeletion: true }],
    },
    spec: {
      nodeName: input.nodeName,
      ...(nodeSelector !== undefined ? { nodeSelector: { ...nodeSelector } } : {}),
      ...(affinity !== undefined ? { affinity: structuredClone(affinity) } : {}),
      ...(tolerations !== undefined ? { tolerations: tolerations.map((t) => ({ ...t })) } : {}),
      securityContext: {
        runAsNonRoot: true,
        runAsUser: LAUNCHER.uid,
        runAsGroup: LAUNCHER.uid,
        fsGroup: LAUNCHER.uid,
        seccompProfile: { type: 'RuntimeDefault' },
      },
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      restartPolicy: 'Never',
      hostname: launcherHostname(meta.name),
      terminationGracePeriodSeconds: (vmi.spec.terminationGracePeriodSeconds ?? LAUNCHER.defaultGraceSeconds) + LAUNCHER.extraGraceSeconds,
      ...(disks.imagePullSecrets.length > 0 ? { imagePullSecrets: disks.imagePullSecrets } : {}),
      ...(disks.initContainers.length > 0 ? { initContainers: disks.initContainers } : {}),
      containers: [compute, ...disks.containers],
      volumes: [{ name: LAUNCHER.runVolume, emptyDir: {} }, ...host.volumes, ...disks.volumes],
    },
  };
}
