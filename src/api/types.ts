// TypeScript shapes of vmlet.io/v1alpha1 VirtualMachine and VirtualMachineInstance, mirroring the CRD schemas in deploy/crds.

import type { Accel, ImageFormat } from './vocabulary.js';

export const API_GROUP = 'vmlet.io';
export const API_VERSION = 'vmlet.io/v1alpha1';
/** apiVersions accepted on input; all are normalised to API_VERSION. */
export const ACCEPTED_API_VERSIONS: readonly string[] = [API_VERSION, 'kubevirt.io/v1'];

/** A Kubernetes quantity as written in a manifest ("128Mi", "1", 2). */
export type Quantity = string | number;

export interface ObjectMeta {
  name: string;
  namespace: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  /** Server-set. */
  uid?: string;
  /** Server-set. */
  resourceVersion?: string;
  /** Server-set (RFC 3339). */
  creationTimestamp?: string | null;
  generation?: number;
  deletionTimestamp?: string | null;
  deletionGracePeriodSeconds?: number;
  finalizers?: string[];
  ownerReferences?: OwnerReference[];
  managedFields?: unknown[];
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface TemplateMeta {
  name?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  creationTimestamp?: string | null;
}

export type DiskBus = 'virtio' | 'sata' | 'scsi';

export interface CPU {
  cores: number;
  sockets: number;
  threads: number;
  /** 'host-passthrough' | 'host-model' | a QEMU CPU model name. Absent means host-model. */
  model?: string;
  /** KubeVirt's field: each vCPU thread gets a host CPU of its own (docs/cgroups.md, "Dedicated CPUs"). */
  dedicatedCpuPlacement?: boolean;
}

export interface ResourceList {
  cpu?: Quantity;
  memory?: Quantity;
}

export interface Firmware {
  uuid?: string;
  serial?: string;
  bootloader?: {
    bios?: Record<string, never>;
    efi?: { secureBoot: boolean };
  };
  kernelBoot?: {
    kernelArgs?: string;
    /** vmlet extension: absolute paths on the node. */
    hostPath?: { kernelPath: string; initrdPath?: string };
  };
}

export interface Disk {
  name: string;
  disk?: { bus: DiskBus; readonly: boolean };
  cdrom?: { bus: DiskBus; readonly: boolean };
  bootOrder?: number;
  serial?: string;
  /** Host page cache use: none (O_DIRECT), writethrough, writeback. Absent: QEMU's default (writeback). */
  cache?: DiskCache;
  /** native (Linux AIO; needs cache none) or threads. Absent: threads. */
  io?: DiskIO;
  /** Several VMs may open the image read-write at once (share-rw); the guests must coordinate. */
  shareable?: boolean;
}

export type DiskCache = 'none' | 'writethrough' | 'writeback';
export type DiskIO = 'native' | 'threads';

/** KubeVirt's containerDisk: in standalone mode, an image of the node image store (`vmlet image import`). */
export interface ContainerDiskSource {
  /** An image reference: name[:tag][@sha256:…] or sha256:…. */
  image: string;
  /** Cluster mode: as for any container. */
  imagePullPolicy?: 'Always' | 'IfNotPresent' | 'Never';
  /** Cluster mode: a Secret in the VMI's namespace for pulling the image. */
  imagePullSecret?: string;
}

/** Cluster mode: a PersistentVolumeClaim in the VMI's namespace. */
export interface ClaimSource {
  claimName: string;
  readOnly?: boolean;
}

export interface HostDiskSource {
  path: string;
  type: 'Disk' | 'DiskOrCreate';
  capacity?: Quantity;
}

export interface CloudInitNoCloudSource {
  userData?: string;
  userDataBase64?: string;
  networkData?: string;
  networkDataBase64?: string;
}

export interface Volume {
  name: string;
  hostDisk?: HostDiskSource;
  emptyDisk?: { capacity: Quantity };
  cloudInitNoCloud?: CloudInitNoCloudSource;
  containerDisk?: ContainerDiskSource;
  persistentVolumeClaim?: ClaimSource;
  /** The claim is the read-only base of a qcow2 overlay that goes with the VMI. */
  ephemeral?: { persistentVolumeClaim: ClaimSource };
}

/** `spec.domain.devices.interfaces[]`: one binding key (masquerade or bridge; the others are refused by name). */
export interface Interface {
  name: string;
  masquerade?: Record<string, never>;
  bridge?: Record<string, never>;
  slirp?: Record<string, unknown>;
  sriov?: Record<string, unknown>;
  macvtap?: Record<string, unknown>;
  passt?: Record<string, unknown>;
  binding?: Record<string, unknown>;
  macAddress?: string;
  model?: string;
  ports?: Array<{ name?: string; port: number; protocol?: 'TCP' | 'UDP' }>;
}

/** `spec.networks[]`: only the pod network is supported. */
export interface Network {
  name: string;
  pod?: { vmNetworkCIDR?: string };
  multus?: Record<string, unknown>;
}

export interface DomainSpec {
  /** Always set after validation (defaulted from resources, or 1/1/1). */
  cpu: CPU;
  /** Always set after validation (guest defaulted from resources). */
  memory: { guest: Quantity };
  resources?: { requests?: ResourceList; limits?: ResourceList };
  machine: { type: string };
  firmware?: Firmware;
  devices: {
    autoattachSerialConsole: boolean;
    autoattachGraphicsDevice: boolean;
    disks?: Disk[];
    interfaces?: Interface[];
    /** One tap queue per vCPU for virtio NICs. */
    networkInterfaceMultiqueue?: boolean;
    /** Without interfaces and networks: add the default masquerade pod interface (default true). */
    autoattachPodInterface?: boolean;
  };
}

export interface Toleration {
  key?: string;
  operator?: 'Exists' | 'Equal';
  value?: string;
  effect?: '' | 'NoSchedule' | 'PreferNoSchedule' | 'NoExecute';
  tolerationSeconds?: number;
}

export interface NodeSelectorRequirement {
  key: string;
  operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist' | 'Gt' | 'Lt';
  values?: string[];
}

export interface NodeSelectorTerm {
  matchExpressions?: NodeSelectorRequirement[];
  matchFields?: NodeSelectorRequirement[];
}

/** Node affinity as in a pod spec; pod (anti-)affinity is not supported. */
export interface Affinity {
  nodeAffinity?: {
    requiredDuringSchedulingIgnoredDuringExecution?: { nodeSelectorTerms: NodeSelectorTerm[] };
    preferredDuringSchedulingIgnoredDuringExecution?: Array<{ weight: number; preference: NodeSelectorTerm }>;
  };
}

export interface VMISpec {
  domain: DomainSpec;
  volumes?: Volume[];
  networks?: Network[];
  terminationGracePeriodSeconds: number;
  /** Cluster mode: node choice, copied to the launcher pod (standalone ignores them). */
  nodeSelector?: Record<string, string>;
  tolerations?: Toleration[];
  affinity?: Affinity;
}

export type VMIPhase = '' | 'Pending' | 'Scheduling' | 'Scheduled' | 'Running' | 'Succeeded' | 'Failed' | 'Unknown';

export interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason?: string;
  message?: string;
  lastProbeTime?: string | null;
  lastTransitionTime?: string | null;
}

export interface PhaseTransitionTimestamp {
  phase: VMIPhase;
  phaseTransitionTimestamp: string;
}

export interface VMIInterfaceStatus {
  name?: string;
  ipAddress?: string;
  ipAddresses?: string[];
  mac?: string;
  /** the guest's name for the NIC (from the guest agent) */
  interfaceName?: string;
  /** where the entry comes from: `domain`, plus `guest-agent` once the agent reported it */
  infoSource?: string;
}

/** One volume as QEMU opened it (KubeVirt's VolumeStatus, with vmlet's format and image). */
export interface VolumeStatus {
  name: string;
  /** The device name libvirt would give it (vda, sda, …); the guest may name it differently. */
  target: string;
  /** The format QEMU is told (never probed by QEMU). */
  format?: ImageFormat;
  /** Virtual size in bytes. */
  size?: number;
  /** containerDisk: the image and its digest; the VM writes to a qcow2 overlay of it. */
  containerDiskVolume?: { image: string; digest?: string };
  /** A claim (KubeVirt's field), written by the controller once the claim is bound. */
  persistentVolumeClaimInfo?: PersistentVolumeClaimInfo;
}

export interface PersistentVolumeClaimInfo {
  claimName?: string;
  accessModes?: string[];
  volumeMode?: 'Filesystem' | 'Block';
  capacity?: { storage?: string };
  /** The share of a Filesystem claim kept free (a decimal string, as KubeVirt's). */
  filesystemOverhead?: string;
}

/** vmlet extension of the VMI status: how and where QEMU runs. */
export interface VmletRuntimeStatus {
  accel?: Accel | undefined;
  softwareEmulation?: boolean | undefined;
  qemuPid?: number | undefined;
  launcherPid?: number | undefined;
  runDir?: string | undefined;
  podName?: string | undefined;
}

export interface VirtualMachineInstanceStatus {
  phase?: VMIPhase;
  reason?: string;
  message?: string;
  nodeName?: string;
  conditions?: Condition[];
  phaseTransitionTimestamps?: PhaseTransitionTimestamp[];
  interfaces?: VMIInterfaceStatus[];
  volumeStatus?: VolumeStatus[];
  vmlet?: VmletRuntimeStatus;
}

export interface VirtualMachineInstance {
  apiVersion: typeof API_VERSION;
  kind: 'VirtualMachineInstance';
  metadata: ObjectMeta;
  spec: VMISpec;
  status?: VirtualMachineInstanceStatus;
}

export type RunStrategy = 'Always' | 'RerunOnFailure' | 'Manual' | 'Halted' | 'Once';
export const RUN_STRATEGIES: readonly RunStrategy[] = ['Always', 'RerunOnFailure', 'Manual', 'Halted', 'Once'];

export type PrintableStatus =
  | 'Stopped'
  | 'Provisioning'
  | 'Starting'
  | 'Running'
  | 'Paused'
  | 'Stopping'
  | 'Terminating'
  | 'CrashLoopBackOff'
  | 'Migrating'
  | 'Unknown'
  | 'ErrorUnschedulable'
  | 'ErrImagePull'
  | 'ErrorPvcNotFound'
  | 'WaitingForVolumeBinding';

export interface VirtualMachineStatus {
  printableStatus?: PrintableStatus;
  ready?: boolean;
  created?: boolean;
  runStrategy?: RunStrategy;
  observedGeneration?: number;
  desiredGeneration?: number;
  conditions?: Condition[];
  startFailure?: {
    consecutiveFailCount?: number;
    lastFailedVMIUID?: string;
    retryAfterTimestamp?: string | null;
  };
}

export interface VirtualMachineSpec {
  /** Always set after validation (legacy `running` is mapped onto it and removed). */
  runStrategy: RunStrategy;
  template: { metadata?: TemplateMeta; spec: VMISpec };
}

export interface VirtualMachine {
  apiVersion: typeof API_VERSION;
  kind: 'VirtualMachine';
  metadata: ObjectMeta;
  spec: VirtualMachineSpec;
  status?: VirtualMachineStatus;
}
