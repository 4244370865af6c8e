// The kubelet's device plugin API v1beta1 for vmlet's KVM plugin: loading the .proto, the message shapes, and the pure answers (device list, Allocate, preferred allocation).
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as protoLoader from '@grpc/proto-loader';
import { isRecord } from '../api/vocabulary.js';
import { VmletError } from '../errors.js';

export const DEVICE_PLUGIN_API_VERSION = 'v1beta1';
export const KVM_RESOURCE_NAME = 'devices.vmlet.io/kvm';
export const KVM_SOCKET_NAME = 'vmlet-kvm.sock';
export const KUBELET_SOCKET_NAME = 'kubelet.sock';
/** KubeVirt's way: /dev/kvm is shared, so many pods may hold one "device" each. */
export const DEFAULT_KVM_DEVICE_COUNT = 1000;

const PROTO_FILE = 'deviceplugin-v1beta1.proto';

/**
 * Where the .proto may be: next to this module (src/ under tsx, or dist/ when the build copied it),
 * else src/daemon/proto seen from dist/daemon/ (tsc does not copy .proto files).
 */
export function protoCandidates(moduleUrl: string = import.meta.url): string[] {
  return [new URL(`./proto/${PROTO_FILE}`, moduleUrl), new URL(`../../src/daemon/proto/${PROTO_FILE}`, moduleUrl)].map((u) => fileURLToPath(u));
}

export type ServiceDefinition = protoLoader.ServiceDefinition;

export interface DevicePluginApi {
  /** The kubelet's service (`v1beta1.Registration`). */
  registration: ServiceDefinition;
  /** The plugin's service (`v1beta1.DevicePlugin`). */
  devicePlugin: ServiceDefinition;
  protoPath: string;
}

function isServiceDefinition(d: protoLoader.AnyDefinition | undefined): d is ServiceDefinition {
  if (!d || 'format' in d) return false;
  return Object.values(d).every((m) => isRecord(m) && typeof m.path === 'string');
}

/** Loads the v1beta1 services from the first .proto found (or the one given). Field names stay as in the .proto (snake_case). */
export function loadDevicePluginApi(protoPath?: string): DevicePluginApi {
  const candidates = protoPath ? [protoPath] : protoCandidates();
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) throw new VmletError('DEVICE_PLUGIN_PROTO_MISSING', `${PROTO_FILE} not found`, { details: { candidates } });
  let pkg: protoLoader.PackageDefinition;
  try {
    pkg = protoLoader.loadSync(found, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
  } catch (e) {
    throw new VmletError('DEVICE_PLUGIN_PROTO_MISSING', `${found} could not be parsed`, { cause: e });
  }
  const registration = pkg['v1beta1.Registration'];
  const devicePlugin = pkg['v1beta1.DevicePlugin'];
  if (!isServiceDefinition(registration) || !isServiceDefinition(devicePlugin))
    throw new VmletError('DEVICE_PLUGIN_PROTO_MISSING', `${found} lacks the v1beta1 Registration or DevicePlugin service`);
  return { registration, devicePlugin, protoPath: found };
}

export type DeviceHealth = 'Healthy' | 'Unhealthy';

export interface Device {
  ID: string;
  health: DeviceHealth;
}

export interface DeviceSpec {
  container_path: string;
  host_path: string;
  permissions: string;
}

export interface ContainerAllocateResponse {
  envs: Record<string, string>;
  mounts: never[];
  devices: DeviceSpec[];
  annotations: Record<string, string>;
  cdi_devices: never[];
}

export interface RegisterRequest {
  version: string;
  endpoint: string;
  resource_name: string;
  options: { pre_start_required: boolean; get_preferred_allocation_available: boolean };
}

/** The Register call this plugin makes. */
export function registerRequest(socketName: string, resourceName: string): RegisterRequest {
  return {
    version: DEVICE_PLUGIN_API_VERSION,
    endpoint: socketName,
    resource_name: resourceName,
    options: { pre_start_required: false, get_preferred_allocation_available: true },
  };
}

/**
 * The advertised devices: `count` shares of /dev/kvm. Without usable KVM they are all Unhealthy rather
 * than absent, so the node shows the resource with capacity N and allocatable 0 (visibly broken, not
 * silently missing), and KVM coming back is one health update on the open stream.
 */
export function kvmDevices(count: number, usable: boolean): Device[] {
  const health: DeviceHealth = usable ? 'Healthy' : 'Unhealthy';
  return Array.from({ length: count }, (_, i) => ({ ID: `kvm-${i}`, health }));
}

function stringList(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((s): s is string => typeof s === 'string') : [];
}

function containerRequests(req: unknown): unknown[] {
  return isRecord(req) && Array.isArray(req.container_requests) ? req.container_requests : [];
}

/** Allocate: every container that asked for any number of shares gets the one device node, read-write. */
export function allocateResponse(req: unknown, devicePath: string): { container_responses: ContainerAllocateResponse[] } {
  return {
    container_responses: containerRequests(req).map(() => ({
      envs: {},
      mounts: [],
      devices: [{ container_path: '/dev/kvm', host_path: devicePath, permissions: 'rw' }],
      annotations: {},
      cdi_devices: [],
    })),
  };
}

/** GetPreferredAllocation: the must-include IDs, then the first available ones, up to the size asked (all shares are alike). */
export function preferredAllocation(req: unknown): { container_responses: Array<{ deviceIDs: string[] }> } {
  return {
    container_responses: containerRequests(req).map((c) => {
      const r = isRecord(c) ? c : {};
      const size = typeof r.allocation_size === 'number' ? r.allocation_size : 0;
      const must = stringList(r.must_include_deviceIDs);
      const rest = stringList(r.available_deviceIDs).filter((id) => !must.includes(id));
      return { deviceIDs: [...must, ...rest].slice(0, Math.max(size, must.length)) };
    }),
  };
}
