// The daemon's configuration: defaults, the YAML config file, then command-line flags, checked into one typed object.
import { DEFAULT_FILESYSTEM_OVERHEAD } from '../api/pod-volumes.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { VmletError } from '../errors.js';
import { parseQuantity } from '../api/quantity.js';
import type { AccelSetting } from '../api/vocabulary.js';

export type Accel = AccelSetting;
/** `text`: human-readable lines; `json`: pino's JSON lines; `auto`: text when stdout is a terminal, JSON otherwise. */
export type LogFormat = 'auto' | 'json' | 'text';
export const LOG_FORMATS: readonly LogFormat[] = ['auto', 'json', 'text'];

/** Whether the daemon logs text lines: asked for, or `auto` with stdout on a terminal. */
export function wantsTextLogs(format: LogFormat, stdoutIsTty: boolean): boolean {
  return format === 'text' || (format === 'auto' && stdoutIsTty);
}

export interface DaemonConfig {
  socket: string;
  /** Group (name or gid) that may use `socket` besides root; '' = root only (docs/security.md). */
  socketGroup: string;
  /** A second socket that serves only reads (get, list, watch, events); '' = none. */
  readOnlySocket: string;
  /** Group that may use `readOnlySocket` besides root. */
  readOnlySocketGroup: string;
  stateDir: string;
  runDir: string;
  accel: Accel;
  /** Like KubeVirt's useEmulation: with accel auto and no usable KVM, fall back to TCG. */
  useEmulation: boolean;
  nodeName: string;
  qemuBinary: string;
  /**
   * Standalone: the unprivileged user QEMU runs as (no capabilities, no_new_privs, its own mount namespace,
   * `-sandbox`; docs/security.md). The set-up creates `vmlet-qemu`. `root` keeps QEMU root (not for production).
   */
  qemuUser: string;
  /** vmlet-launch; default: native/build/vmlet-launch of this checkout. */
  launcherBinary: string;
  /** Request body limit of the API, in bytes. */
  maxBodyBytes: number;
  logLevel: string;
  logFormat: LogFormat;
  /** The KVM device the accelerator probe opens (tests point it at a plain file). */
  kvmDevice: string;
  /** How long the probe guest gets to run under KVM before KVM counts as unusable (docs/accelerator.md). */
  kvmProbeDeadlineMs: number;
  /**
   * Kubernetes mode: when KVM is usable, add o+rw to `kvmDevice` at start, so launcher pods (uid 107, no
   * capabilities) can open their copy of it (docs/node-registration.md). false: keep the host's mode.
   */
  kvmWorldAccessible: boolean;
  /**
   * Parent of the per-VM cgroups (`<cgroupParent>/<uid>`), relative to each hierarchy root
   * (v1: every controller's mount; v2: the unified mount). "" = make no VM cgroups.
   */
  cgroupParent: string;
  /** Root of the cgroup mounts (tests point it elsewhere). */
  cgroupRoot: string;
  /**
   * Standalone, v1/hybrid cgroups: keep one vmlet-launch ready in a group of its own, renamed to a VM's at its start,
   * so the start does not wait for the cgroup join's RCU grace period (launcher-spare.ts). false: spawn each launcher.
   */
  launcherSpare: boolean;
  /** Standalone networking: host bridge, NAT, one sandbox netns per VMI, DHCP. */
  network: NetworkConfig;
  /** `standalone` (the embedded store) or `kubernetes` (VMIs from the API server, QEMU in launcher pods). */
  mode: DaemonMode;
  /** Kubernetes mode: the kubelet's --root-dir (its pod folders hold the launcher pods' emptyDirs). */
  kubeletRootDir: string;
  /** Kubernetes mode: where the kubelet looks for device plugins (fixed at /var/lib/kubelet/device-plugins, whatever its root dir). */
  devicePluginDir: string;
  /** Kubernetes mode: a kubeconfig file; default in-cluster, then $KUBECONFIG. */
  kubeconfig?: string;
  /** Host folders below which hostDisk and kernelBoot host paths are allowed (cluster config; empty: none). */
  hostPaths: { allow: string[] };
  /** QMP commands `vmlet qmp` may pass to QEMU besides queries and the safe list (docs/security.md); none by default. */
  qmpPassthrough: { allow: string[] };
  /** Cluster config (read by the controller, which records it per claim in the VMI's status): the share of a Filesystem claim kept free. */
  filesystemOverhead: number;
  /** Standalone node-wide limits (0 = none); a VMI over one is refused with NODE_LIMIT_* codes (docs/security.md). */
  limits: NodeLimits;
  /** Kubernetes mode: the group/version of the VMIs served, `vmlet.io/v1alpha1` or `kubevirt.io/v1` (kubevirt-compat); $VMLET_API_GROUP wins. */
  apiGroup: string;
}

/** The API groups cluster mode can serve: vmlet's own, and KubeVirt's kinds on clusters without KubeVirt (deploy/components/kubevirt-compat). */
export const API_GROUPS = ['vmlet.io/v1alpha1', 'kubevirt.io/v1'] as const;

/** Splits an `apiGroup` setting (`group/version`), refusing anything but API_GROUPS by name. */
export function parseApiGroup(value: string, source: string): { group: string; version: string } {
  const [group, version] = value.split('/');
  if (!(API_GROUPS as readonly string[]).includes(value) || group === undefined || version === undefined) {
    throw new VmletError('CONFIG_INVALID', `${source}: apiGroup must be one of ${API_GROUPS.join(', ')} (got ${JSON.stringify(value)})`);
  }
  return { group, version };
}

export type DaemonMode = 'standalone' | 'kubernetes';

/** The `limits:` mapping: what one node may run at once, and what one API client may hold open. 0 = unlimited. */
export interface NodeLimits {
  /** VMIs that exist (any phase but Succeeded/Failed). */
  maxVmis: number;
  /** Sum of the guests' memory, bytes (the file takes a quantity such as `64Gi`). */
  maxGuestMemory: number;
  /** Sum of the guests' vCPUs. */
  maxVcpus: number;
  /** Open connections per client uid on the API socket. */
  maxConnectionsPerClient: number;
}

const limitKeys: Record<keyof NodeLimits, KeyType> = {
  maxVmis: 'number',
  maxGuestMemory: 'number',
  maxVcpus: 'number',
  maxConnectionsPerClient: 'number',
};

/** Merges `limits:` (maxGuestMemory may be a quantity string), each a whole number ≥ 0. */
function mergeLimits(base: NodeLimits, doc: object, source: string): NodeLimits {
  const d: Record<string, unknown> = { ...doc };
  if (typeof d['maxGuestMemory'] === 'string') {
    try {
      d['maxGuestMemory'] = Number(parseQuantity(d['maxGuestMemory']));
    } catch (e) {
      throw new VmletError('CONFIG_INVALID', `${source}: limits.maxGuestMemory must be a byte count or a quantity such as 64Gi`, { cause: e });
    }
  }
  const out = mergeKeys(base, d, limitKeys, source, 'limits.');
  for (const [k, v] of Object.entries(out)) {
    if (!Number.isSafeInteger(v) || v < 0) throw new VmletError('CONFIG_INVALID', `${source}: limits.${k} must be a whole number ≥ 0 (0 = no limit)`);
  }
  return out;
}

/** The `network:` mapping of the config file. */
export interface NetworkConfig {
  /** false: no sandboxes; VMIs run without NICs and a VMI asking for interfaces is refused. */
  enabled: boolean;
  /** The node's sandbox subnet on the host bridge (must not clash with the host's routes). */
  subnet: string;
  bridge: string;
  nftTable: string;
  netnsPrefix: string;
  vethPrefix: string;
  /** Masquerade only out of this interface; default: out of anything but the bridge. */
  uplink?: string;
  mtu: number;
  /** Set net.ipv4.ip_forward=1 on the host (NAT to the uplink needs it). */
  hostForwarding: boolean;
  /** DNS servers handed out by DHCP; default: the host's resolv.conf. */
  dnsServers?: string[];
  dnsSearch?: string[];
  /** DHCP option 15; default: the first search domain. */
  dnsDomain?: string;
  leaseSeconds: number;
  /** Guests may open connections to the host itself (its bridge address and any other); default false. */
  allowHostAccess: boolean;
  /** Guests may reach the cloud metadata address 169.254.169.254; default false. */
  allowMetadata: boolean;
}

export interface DaemonFlags {
  config?: string;
  mode?: DaemonMode;
  kubeconfig?: string;
  socket?: string;
  stateDir?: string;
  runDir?: string;
  accel?: Accel;
  logFormat?: LogFormat;
}

type KeyType = 'string' | 'boolean' | 'number' | 'object' | 'string[]';

const keys: Record<keyof DaemonConfig, KeyType> = {
  socket: 'string',
  socketGroup: 'string',
  readOnlySocket: 'string',
  readOnlySocketGroup: 'string',
  stateDir: 'string',
  runDir: 'string',
  accel: 'string',
  useEmulation: 'boolean',
  nodeName: 'string',
  qemuBinary: 'string',
  qemuUser: 'string',
  launcherBinary: 'string',
  maxBodyBytes: 'number',
  logLevel: 'string',
  logFormat: 'string',
  kvmDevice: 'string',
  kvmProbeDeadlineMs: 'number',
  kvmWorldAccessible: 'boolean',
  cgroupParent: 'string',
  cgroupRoot: 'string',
  launcherSpare: 'boolean',
  network: 'object',
  mode: 'string',
  kubeletRootDir: 'string',
  devicePluginDir: 'string',
  kubeconfig: 'string',
  hostPaths: 'object',
  limits: 'object',
  qmpPassthrough: 'object',
  apiGroup: 'string',
  filesystemOverhead: 'number',
};

const networkKeys: Record<keyof NetworkConfig, KeyType> = {
  enabled: 'boolean',
  subnet: 'string',
  bridge: 'string',
  nftTable: 'string',
  netnsPrefix: 'string',
  vethPrefix: 'string',
  uplink: 'string',
  mtu: 'number',
  hostForwarding: 'boolean',
  dnsServers: 'string[]',
  dnsSearch: 'string[]',
  dnsDomain: 'string',
  leaseSeconds: 'number',
  allowHostAccess: 'boolean',
  allowMetadata: 'boolean',
};

function hasType(v: unknown, want: KeyType): boolean {
  if (want === 'string[]') return Array.isArray(v) && v.every((x) => typeof x === 'string');
  if (want === 'object') return typeof v === 'object' && v !== null && !Array.isArray(v);
  return typeof v === want;
}

const typeNames: Record<KeyType, string> = { string: 'string', boolean: 'boolean', number: 'number', object: 'mapping', 'string[]': 'list of strings' };

/** Copies `doc`'s keys over `base`, refusing unknown keys and wrong types by name (`prefix`: the enclosing key, e.g. `network.`). */
function mergeKeys<T extends object>(base: T, doc: object, types: Record<keyof T, KeyType>, source: string, prefix = ''): T {
  const out: T = { ...base };
  for (const [k, v] of Object.entries(doc)) {
    const want = types[k as keyof T];
    if (!want) throw new VmletError('CONFIG_INVALID', `${source}: unknown key "${prefix}${k}" (known: ${Object.keys(types).join(', ')})`);
    if (!hasType(v, want)) throw new VmletError('CONFIG_INVALID', `${source}: "${prefix}${k}" must be a ${typeNames[want]}`);
    // The value's type was checked against the key's declared type just above.
    Object.assign(out, { [k]: v });
  }
  return out;
}

/** Merges the `network:` mapping over the current network settings. */
function mergeNetwork(base: NetworkConfig, doc: object, source: string): NetworkConfig {
  const net = mergeKeys(base, doc, networkKeys, source, 'network.');
  if (net.dnsServers === undefined && (net.dnsSearch !== undefined || net.dnsDomain !== undefined)) {
    throw new VmletError(
      'CONFIG_INVALID',
      `${source}: network.dnsSearch and network.dnsDomain need network.dnsServers (without it, all DNS settings come from the host's resolv.conf)`,
    );
  }
  if (!Number.isInteger(net.mtu) || net.mtu < 576 || net.mtu > 65535)
    throw new VmletError('CONFIG_INVALID', `${source}: network.mtu must be an integer 576-65535`);
  if (!Number.isInteger(net.leaseSeconds) || net.leaseSeconds < 60 || net.leaseSeconds > 31_536_000) {
    throw new VmletError('CONFIG_INVALID', `${source}: network.leaseSeconds must be an integer 60-31536000`);
  }
  return net;
}

export function defaultConfig(repoRoot: string): DaemonConfig {
  return {
    socket: '/run/vmlet/vmlet.sock',
    socketGroup: '',
    readOnlySocket: '',
    readOnlySocketGroup: '',
    stateDir: '/var/lib/vmlet',
    runDir: '/run/vmlet',
    accel: 'auto',
    useEmulation: false,
    nodeName: os.hostname(),
    qemuBinary: '/usr/bin/qemu-system-x86_64',
    qemuUser: 'vmlet-qemu',
    launcherBinary: path.join(repoRoot, 'native', 'build', 'vmlet-launch'),
    maxBodyBytes: 1024 * 1024,
    logLevel: process.env.VMLET_LOG_LEVEL ?? 'info',
    logFormat: 'auto',
    kvmDevice: '/dev/kvm',
    kvmProbeDeadlineMs: 500,
    kvmWorldAccessible: true,
    cgroupParent: 'vmlet',
    cgroupRoot: '/sys/fs/cgroup',
    launcherSpare: true,
    network: {
      enabled: true,
      subnet: '10.213.0.0/16',
      bridge: 'vmlet0',
      nftTable: 'vmlet',
      netnsPrefix: 'vmlet-',
      vethPrefix: 'vmh-',
      mtu: 1500,
      hostForwarding: true,
      leaseSeconds: 86400,
      allowHostAccess: false,
      allowMetadata: false,
    },
    mode: 'standalone',
    kubeletRootDir: '/var/lib/kubelet',
    devicePluginDir: '/var/lib/kubelet/device-plugins',
    hostPaths: { allow: [] },
    limits: { maxVmis: 0, maxGuestMemory: 0, maxVcpus: 0, maxConnectionsPerClient: 0 },
    qmpPassthrough: { allow: [] },
    apiGroup: API_GROUPS[0],
    filesystemOverhead: DEFAULT_FILESYSTEM_OVERHEAD,
  };
}

/** Merges a parsed config document over the defaults, refusing unknown keys and wrong types by name. */
export function mergeConfig(base: DaemonConfig, doc: unknown, source: string): DaemonConfig {
  if (doc === null || doc === undefined) return base;
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new VmletError('CONFIG_INVALID', `${source}: the config must be a mapping`);
  const cfg = mergeKeys(base, doc, keys, source);
  if ('network' in doc) cfg.network = mergeNetwork(base.network, cfg.network, source);
  if ('limits' in doc) cfg.limits = mergeLimits(base.limits, cfg.limits, source);
  if (!['auto', 'kvm', 'tcg'].includes(cfg.accel)) throw new VmletError('CONFIG_INVALID', `${source}: accel must be auto, kvm or tcg`);
  if (cfg.mode !== 'standalone' && cfg.mode !== 'kubernetes') throw new VmletError('CONFIG_INVALID', `${source}: mode must be standalone or kubernetes`);
  cfg.hostPaths = allowList(cfg.hostPaths, (a) => a.startsWith('/'), `${source}: hostPaths must be {allow: [absolute folder, …]}`);
  cfg.qmpPassthrough = allowList(cfg.qmpPassthrough, (a) => /^[a-z][a-z0-9_-]*$/.test(a), `${source}: qmpPassthrough must be {allow: [QMP command name, …]}`);
  parseApiGroup(cfg.apiGroup, source);
  if (!(cfg.filesystemOverhead >= 0 && cfg.filesystemOverhead < 1)) {
    throw new VmletError('CONFIG_INVALID', `${source}: filesystemOverhead must be a number from 0 up to (not including) 1, got ${cfg.filesystemOverhead}`);
  }
  if (!/^[a-z_][a-z0-9_-]{0,31}$/.test(cfg.qemuUser)) {
    throw new VmletError('CONFIG_INVALID', `${source}: qemuUser must be a user name (got ${JSON.stringify(cfg.qemuUser)})`);
  }
  if (!LOG_FORMATS.includes(cfg.logFormat)) throw new VmletError('CONFIG_INVALID', `${source}: logFormat must be json, text or auto`);
  if (!Number.isInteger(cfg.kvmProbeDeadlineMs) || cfg.kvmProbeDeadlineMs < 50 || cfg.kvmProbeDeadlineMs > 60_000) {
    throw new VmletError('CONFIG_INVALID', `${source}: kvmProbeDeadlineMs must be a whole number of milliseconds from 50 to 60000`);
  }
  cfg.cgroupParent = cfg.cgroupParent.replace(/^\/+|\/+$/g, '');
  if (cfg.cgroupParent.split('/').some((seg) => seg === '.' || seg === '..' || (seg === '' && cfg.cgroupParent !== ''))) {
    throw new VmletError('CONFIG_INVALID', `${source}: cgroupParent must be a relative group path without "." or ".." segments (or "" for no VM cgroups)`);
  }
  return cfg;
}

export function loadConfig(repoRoot: string, flags: DaemonFlags): DaemonConfig {
  let cfg = defaultConfig(repoRoot);
  if (flags.config) {
    let text: string;
    try {
      text = fs.readFileSync(flags.config, 'utf8');
    } catch (e) {
      throw new VmletError('CONFIG_INVALID', `cannot read config file ${flags.config}`, { cause: e });
    }
    let doc: unknown;
    try {
      doc = YAML.parse(text);
    } catch (e) {
      throw new VmletError('CONFIG_INVALID', `${flags.config}: not valid YAML`, { cause: e });
    }
    cfg = mergeConfig(cfg, doc, flags.config);
  }
  const fromFlags: Partial<DaemonConfig> = {};
  if (flags.socket) fromFlags.socket = flags.socket;
  if (flags.stateDir) fromFlags.stateDir = flags.stateDir;
  if (flags.runDir) fromFlags.runDir = flags.runDir;
  if (flags.accel) fromFlags.accel = flags.accel;
  if (flags.logFormat) fromFlags.logFormat = flags.logFormat;
  if (flags.mode) fromFlags.mode = flags.mode;
  if (flags.kubeconfig) fromFlags.kubeconfig = flags.kubeconfig;
  // In a DaemonSet the node's name comes from the downward API.
  if (cfg.mode === 'kubernetes' || flags.mode === 'kubernetes') {
    const node = process.env.NODE_NAME;
    if (node) fromFlags.nodeName = node;
  }
  // The kubevirt-compat component sets it on the DaemonSet (and the controller), since a patch cannot edit one key inside vmlet.yaml.
  const envGroup = process.env.VMLET_API_GROUP;
  if (envGroup) {
    parseApiGroup(envGroup, '$VMLET_API_GROUP');
    fromFlags.apiGroup = envGroup;
  }
  return mergeConfig(cfg, fromFlags, 'flags');
}

/** `{allow: [...]}` of strings that each pass `ok`; CONFIG_INVALID with `message` otherwise. */
function allowList(v: unknown, ok: (a: string) => boolean, message: string): { allow: string[] } {
  const o = v as { allow?: unknown };
  const allow: unknown = o.allow ?? [];
  if (!Array.isArray(allow) || !allow.every((a) => typeof a === 'string' && ok(a)) || Object.keys(o).some((k) => k !== 'allow')) {
    throw new VmletError('CONFIG_INVALID', message);
  }
  return { allow: allow as string[] };
}
