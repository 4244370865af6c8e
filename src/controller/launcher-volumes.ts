// The disk parts of a launcher pod (pure): one container per containerDisk running vmlet's waiting program, the init container that brings it, and each claim as a mount or a device, where src/api/pod-volumes.ts says.
import type { V1Container, V1LocalObjectReference, V1SecurityContext, V1Volume, V1VolumeDevice, V1VolumeMount } from '@kubernetes/client-node';
import { parseReference } from '../api/image-reference.js';
import {
  DISK_WAIT_BINARY,
  DISK_WAIT_DIR,
  DISK_WAIT_IMAGE_PATH,
  DISK_WAIT_VOLUME,
  claimDevicePath,
  claimMountPath,
  containerDiskContainer,
} from '../api/pod-volumes.js';
import type { Volume } from '../api/types.js';
import { VmletError } from '../errors.js';
import { claimVolumes } from './volume-claims.js';

export type PullPolicy = 'Always' | 'IfNotPresent' | 'Never';

/** What rendering needs of a volume's PersistentVolumeClaim (the controller reads it before the pod is made). */
export interface LauncherClaim {
  /** The claim's `spec.volumeMode` (Filesystem when unset). */
  volumeMode: 'Filesystem' | 'Block';
  /** The claim's capacity in bytes. */
  capacityBytes: number;
  accessModes: string[];
}

/** The name of the init container that copies vmlet's waiting program into the DISK_WAIT_VOLUME emptyDir. */
export const DISK_WAIT_INIT_CONTAINER = 'vmlet-bin';
/** The prefix of the pod volume of each claim. */
export const CLAIM_VOLUME_PREFIX = 'pvc-';

/**
 * A containerDisk container only runs vmlet's waiting program (static, it sleeps until killed) so that its image's
 * root stays mounted for the node daemon to read the disk from; 1m of cpu and 16Mi of memory are plenty, and keep
 * the pod's requests about the VM's own.
 */
const DISK_WAIT_RESOURCES = { requests: { cpu: '1m', memory: '16Mi' }, limits: { memory: '16Mi' } } as const;

/** Every container of the launcher pod runs like this (the restricted Pod Security Standard; the pod adds seccomp and uid 107). */
export function restrictedSecurityContext(): V1SecurityContext {
  return { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] }, runAsNonRoot: true };
}

/**
 * Kubernetes' default for a container without imagePullPolicy: Always when the image's tag is `latest` or it has
 * neither tag nor digest, else IfNotPresent. A reference that does not parse gets IfNotPresent (admission refuses
 * such VMIs; the kubelet would report the image anyway).
 */
export function defaultPullPolicy(image: string): 'Always' | 'IfNotPresent' {
  let tag: string | undefined;
  try {
    const ref = parseReference(image);
    tag = ref.kind === 'named' ? ref.tag : undefined;
  } catch {
    return 'IfNotPresent';
  }
  return tag === 'latest' ? 'Always' : 'IfNotPresent';
}

/** Lowercase, letters, digits and `-` only, without a leading or trailing `-`. */
export function dnsLabelPart(s: string): string {
  return s
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, '-')
    .replace(/^-+|-+$/g, '');
}

/** `<prefix><name>` as a DNS label of at most 63 characters, not one of `taken` (a `-<n>` suffix when it would be); adds it to `taken`. */
export function uniqueVolumeName(prefix: string, name: string, taken: Set<string>): string {
  const base = `${prefix}${dnsLabelPart(name)}`.slice(0, 63).replace(/-+$/, '');
  let out = base;
  for (let n = 2; taken.has(out); n++) out = `${base.slice(0, 63 - String(n).length - 1).replace(/-+$/, '')}-${n}`;
  taken.add(out);
  return out;
}

export interface DiskPartsInput {
  volumes: readonly Volume[];
  /** vmlet's image and its pull policy (the init container's, as the compute container's). */
  image: string;
  imagePullPolicy: PullPolicy;
  /** Volume name → its claim, for every persistentVolumeClaim and ephemeral volume. */
  claims: Readonly<Record<string, LauncherClaim>>;
  /** Pod volume names already used (the claims' are added). */
  takenVolumeNames: Set<string>;
}

export interface DiskParts {
  initContainers: V1Container[];
  /** The containerDisk containers, in the order of spec.volumes; they come after `compute`. */
  containers: V1Container[];
  volumes: V1Volume[];
  computeMounts: V1VolumeMount[];
  computeDevices: V1VolumeDevice[];
  imagePullSecrets: V1LocalObjectReference[];
}

function containerDiskParts(input: DiskPartsInput, out: DiskParts): void {
  const secrets = new Set<string>();
  input.volumes.forEach((v, i) => {
    const cd = v.containerDisk;
    if (cd === undefined) return;
    out.containers.push({
      name: containerDiskContainer(i),
      image: cd.image,
      imagePullPolicy: cd.imagePullPolicy ?? defaultPullPolicy(cd.image),
      command: [DISK_WAIT_BINARY, v.name],
      volumeMounts: [{ name: DISK_WAIT_VOLUME, mountPath: DISK_WAIT_DIR, readOnly: true }],
      securityContext: restrictedSecurityContext(),
      resources: structuredClone(DISK_WAIT_RESOURCES),
    });
    if (cd.imagePullSecret !== undefined && cd.imagePullSecret !== '' && !secrets.has(cd.imagePullSecret)) {
      secrets.add(cd.imagePullSecret);
      out.imagePullSecrets.push({ name: cd.imagePullSecret });
    }
  });
  if (out.containers.length === 0) return;
  input.takenVolumeNames.add(DISK_WAIT_VOLUME);
  out.volumes.push({ name: DISK_WAIT_VOLUME, emptyDir: {} });
  out.initContainers.push({
    name: DISK_WAIT_INIT_CONTAINER,
    image: input.image,
    imagePullPolicy: input.imagePullPolicy,
    // vmlet's image is Debian (mmdebstrap minbase: coreutils is essential, /bin is /usr/bin).
    command: ['/bin/cp', DISK_WAIT_IMAGE_PATH, DISK_WAIT_BINARY],
    volumeMounts: [{ name: DISK_WAIT_VOLUME, mountPath: DISK_WAIT_DIR }],
    securityContext: restrictedSecurityContext(),
    resources: structuredClone(DISK_WAIT_RESOURCES),
  });
}

function claimParts(input: DiskPartsInput, out: DiskParts): void {
  for (const cv of claimVolumes(input.volumes)) {
    const claim = input.claims[cv.volume];
    if (claim === undefined) {
      throw new VmletError(
        'LAUNCHER_POD_BAD_INPUT',
        `volume "${cv.volume}": no facts of its claim "${cv.claimName}" were given; the controller reads the claims before it renders the pod`,
      );
    }
    const name = uniqueVolumeName(CLAIM_VOLUME_PREFIX, cv.volume, input.takenVolumeNames);
    out.volumes.push({ name, persistentVolumeClaim: { claimName: cv.claimName, ...(cv.readOnly ? { readOnly: true } : {}) } });
    if (claim.volumeMode === 'Block') out.computeDevices.push({ name, devicePath: claimDevicePath(cv.volume) });
    else out.computeMounts.push({ name, mountPath: claimMountPath(cv.volume), ...(cv.readOnly ? { readOnly: true } : {}) });
  }
}

/** The containers, volumes, mounts, devices and pull secrets a VMI's containerDisk and claim volumes add to its launcher pod. Throws LAUNCHER_POD_BAD_INPUT. */
export function diskParts(input: DiskPartsInput): DiskParts {
  const out: DiskParts = { initContainers: [], containers: [], volumes: [], computeMounts: [], computeDevices: [], imagePullSecrets: [] };
  containerDiskParts(input, out);
  claimParts(input, out);
  return out;
}
