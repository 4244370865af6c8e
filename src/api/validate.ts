// Validates VirtualMachine / VirtualMachineInstance objects: CRD schema via ajv, then semantic checks ajv cannot express.

import { posix } from 'node:path';
import { applyRunStrategyDefault, applySpecDefaults, type DomainDefaults, type LooseDomain, type LooseSpec } from './defaults.js';
import { allProblems, Collector, ValidationError, type FieldError } from './field-errors.js';
import { parseMilliQuantity, parseQuantity } from './quantity.js';
import { defaultSchemas, type CompiledSchemas, type SchemaKind, type SchemaValidators } from './schema.js';
import { joinPath, mapSchemaErrors } from './schema-errors.js';
import {
  ACCEPTED_API_VERSIONS,
  API_VERSION,
  RUN_STRATEGIES,
  type Quantity,
  type RunStrategy,
  type VirtualMachine,
  type VirtualMachineInstance,
} from './types.js';
import { referenceProblem } from './image-reference.js';
import { isRecord } from './vocabulary.js';

export { ValidationError } from './field-errors.js';

export interface ValidateOptions {
  /** Compiled CRD schemas; default: deploy/crds of this checkout, loaded once. */
  schemas?: CompiledSchemas;
}

// Limits of the semantic checks (documented in docs/api.md).
export const MIN_MEMORY_BYTES = 16n << 20n; // 16 MiB
export const MAX_MEMORY_BYTES = 16n << 40n; // 16 TiB
export const MAX_DISK_BYTES = 1n << 50n; // 1 PiB
export const MAX_VCPUS = 512;
export const MAX_CPU_MILLIS = 1024n * 1000n;
export const MAX_CLOUD_INIT_BYTES = 1 << 20;

const DNS_LABEL_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_NAME_RE = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
const QEMU_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const DISK_SERIAL_RE = /^[A-Za-z0-9_.+-]+$/;
const UID_RE = /^[A-Za-z0-9][A-Za-z0-9-]{0,63}$/;
const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
// C0 and C1 control characters, DEL, and the Unicode line/paragraph separators.
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/** True if `name` is a DNS-1123 label (lower-case alphanumerics and '-', at most 63 characters). */
export function isDnsLabel(name: string): boolean {
  return name.length <= 63 && DNS_LABEL_RE.test(name);
}

/** A DNS-1123 subdomain: dot-separated labels, at most 253 characters (names of most Kubernetes objects). */
export function isDnsSubdomain(name: string): boolean {
  return name.length <= 253 && name.split('.').every((part) => isDnsLabel(part));
}

/** True if `s` contains a control character (including NUL, CR, LF, TAB). */
export function hasControlChars(s: string): boolean {
  return CONTROL_RE.test(s);
}

// ---------------------------------------------------------------------------------------------
// preflight: apiVersion, kind, cloning

function subjectOf(kind: string, obj: unknown): string {
  const meta = isRecord(obj) ? obj['metadata'] : undefined;
  const name = isRecord(meta) && typeof meta['name'] === 'string' ? meta['name'] : '';
  const ns = isRecord(meta) && typeof meta['namespace'] === 'string' ? meta['namespace'] : 'default';
  return name === '' ? kind : `${kind} "${ns}/${name}"`;
}

function preflight(input: unknown, kind: SchemaKind): Record<string, unknown> {
  if (!isRecord(input)) throw new ValidationError(kind, [{ field: '', code: 'INVALID_FIELD', message: 'manifest must be an object' }]);
  const subject = subjectOf(kind, input);
  const apiVersion = input['apiVersion'];
  if (apiVersion === undefined) {
    throw new ValidationError(subject, [{ field: 'apiVersion', code: 'MISSING_FIELD', message: 'required field missing' }]);
  }
  if (typeof apiVersion !== 'string' || !ACCEPTED_API_VERSIONS.includes(apiVersion)) {
    throw new ValidationError(subject, [
      {
        field: 'apiVersion',
        code: 'UNSUPPORTED_API_VERSION',
        message: `${JSON.stringify(apiVersion)} is not supported; use ${ACCEPTED_API_VERSIONS.join(' or ')}`,
      },
    ]);
  }
  if (input['kind'] !== kind) {
    throw new ValidationError(subject, [
      { field: 'kind', code: input['kind'] === undefined ? 'MISSING_FIELD' : 'UNSUPPORTED_KIND', message: `must be ${kind}` },
    ]);
  }
  let clone: unknown;
  try {
    clone = structuredClone(input);
  } catch (cause) {
    throw new ValidationError(subject, [{ field: '', code: 'INVALID_FIELD', message: 'manifest is not plain data' }], { cause });
  }
  const out = clone as Record<string, unknown>;
  out['apiVersion'] = API_VERSION;
  return out;
}

/** The schema's validator for `kind`: a type guard that fills in defaults and collects every error. */
function validatorsOf(opts: ValidateOptions | undefined): SchemaValidators {
  return (opts?.schemas ?? defaultSchemas()).validators;
}

// ---------------------------------------------------------------------------------------------
// semantic checks (shapes are known when the schema passed; after a schema error each check runs guarded)

function checkNoControlChars(value: unknown, path: string, skip: (path: string) => boolean, col: Collector): void {
  if (skip(path)) return;
  if (typeof value === 'string') {
    if (hasControlChars(value)) col.add(path, 'UNSAFE_VALUE', 'must not contain control characters (newlines, tabs, NUL, ...)');
  } else if (Array.isArray(value)) {
    value.forEach((v, i) => checkNoControlChars(v, joinPath(path, i), skip, col));
  } else if (isRecord(value)) {
    for (const [k, v] of Object.entries(value)) {
      if (hasControlChars(k)) col.add(path, 'UNSAFE_VALUE', 'keys must not contain control characters');
      checkNoControlChars(v, joinPath(path, k), skip, col);
    }
  }
}

function checkLabels(labels: Record<string, string> | undefined, path: string, col: Collector): void {
  if (labels === undefined) return;
  for (const [key, value] of Object.entries(labels)) {
    const at = joinPath(path, key);
    const slash = key.lastIndexOf('/');
    const prefix = slash >= 0 ? key.slice(0, slash) : undefined;
    const name = slash >= 0 ? key.slice(slash + 1) : key;
    if (prefix !== undefined && (prefix.length > 253 || !DNS_SUBDOMAIN_RE.test(prefix))) {
      col.add(at, 'INVALID_FIELD', 'label key prefix must be a DNS subdomain');
    }
    if (name.length > 63 || !LABEL_NAME_RE.test(name)) {
      col.add(at, 'INVALID_FIELD', 'label key name must be at most 63 alphanumerics, "-", "_" or ".", starting and ending alphanumeric');
    }
    if (value.length > 63 || (value !== '' && !LABEL_NAME_RE.test(value))) {
      col.add(at, 'INVALID_FIELD', 'label value must be empty or at most 63 alphanumerics, "-", "_" or ".", starting and ending alphanumeric');
    }
  }
}

function checkMetadata(meta: Record<string, unknown> | undefined, col: Collector): void {
  if (meta === undefined) return col.add('metadata', 'MISSING_FIELD', 'required field missing');
  const name = meta['name'];
  if (typeof name === 'string' && !isDnsLabel(name)) {
    col.add(
      'metadata.name',
      'INVALID_NAME',
      'must be a DNS-1123 label: at most 63 lower-case letters, digits or "-", starting and ending with a letter or digit',
    );
  }
  const ns = meta['namespace'];
  if (typeof ns === 'string' && !isDnsLabel(ns)) col.add('metadata.namespace', 'INVALID_NAME', 'must be a DNS-1123 label');
  const uid = meta['uid'];
  if (typeof uid === 'string' && !UID_RE.test(uid)) col.add('metadata.uid', 'INVALID_FIELD', 'must be alphanumerics and "-" (a UUID)');
  checkLabels(meta['labels'] as Record<string, string> | undefined, 'metadata.labels', col);
  checkNoControlChars(meta, 'metadata', (p) => p === 'metadata.annotations' || p === 'metadata.managedFields', col);
}

/** Parses a quantity for a check; records INVALID_QUANTITY and returns undefined if it does not parse. */
function quantity(q: Quantity | undefined, path: string, col: Collector, milli = false): bigint | undefined {
  if (q === undefined) return undefined;
  try {
    return milli ? parseMilliQuantity(q) : parseQuantity(q);
  } catch (e) {
    col.add(path, 'INVALID_QUANTITY', e instanceof Error ? e.message : 'invalid quantity');
    return undefined;
  }
}

function checkMemoryRange(bytes: bigint | undefined, path: string, col: Collector): void {
  if (bytes === undefined) return;
  if (bytes <= 0n) col.add(path, 'OUT_OF_RANGE', 'memory must be positive');
  else if (bytes < MIN_MEMORY_BYTES) col.add(path, 'OUT_OF_RANGE', 'memory must be at least 16Mi');
  else if (bytes > MAX_MEMORY_BYTES) col.add(path, 'OUT_OF_RANGE', 'memory must be at most 16Ti');
}

function checkCapacity(q: Quantity, path: string, col: Collector): void {
  const bytes = quantity(q, path, col);
  if (bytes === undefined) return;
  if (bytes <= 0n) col.add(path, 'OUT_OF_RANGE', 'capacity must be positive');
  else if (bytes > MAX_DISK_BYTES) col.add(path, 'OUT_OF_RANGE', 'capacity must be at most 1Pi');
}

/** Checks an absolute, normalised host path (no NUL, no `.`/`..`, no `//`, no trailing `/`). */
export function hostPathProblem(p: string): string | undefined {
  if (p.includes('\0')) return 'must not contain NUL';
  if (hasControlChars(p)) return 'must not contain control characters';
  if (!p.startsWith('/')) return 'must be an absolute path';
  if (p.length > 1 && p.endsWith('/')) return 'must name a file, not end in "/"';
  if (p === '/' || posix.normalize(p) !== p || p.split('/').some((s) => s === '.' || s === '..')) {
    return 'must be a normalised path (no "//", "." or "..")';
  }
  return undefined;
}

function checkPath(p: string, path: string, col: Collector): void {
  const problem = hostPathProblem(p);
  if (problem !== undefined) col.add(path, 'INVALID_HOST_PATH', problem);
}

function checkResources(domain: LooseDomain, path: string, col: Collector): void {
  const res = domain.resources;
  if (res === undefined) return;
  const rp = joinPath(path, 'resources');
  const reqCpu = quantity(res.requests?.cpu, `${rp}.requests.cpu`, col, true);
  const limCpu = quantity(res.limits?.cpu, `${rp}.limits.cpu`, col, true);
  const reqMem = quantity(res.requests?.memory, `${rp}.requests.memory`, col);
  const limMem = quantity(res.limits?.memory, `${rp}.limits.memory`, col);
  for (const [v, at] of [
    [reqCpu, `${rp}.requests.cpu`],
    [limCpu, `${rp}.limits.cpu`],
  ] as const) {
    if (v !== undefined && v <= 0n) col.add(at, 'OUT_OF_RANGE', 'cpu must be positive');
    else if (v !== undefined && v > MAX_CPU_MILLIS) col.add(at, 'OUT_OF_RANGE', 'cpu must be at most 1024');
  }
  checkMemoryRange(reqMem, `${rp}.requests.memory`, col);
  checkMemoryRange(limMem, `${rp}.limits.memory`, col);
  if (reqCpu !== undefined && limCpu !== undefined && limCpu < reqCpu) {
    col.add(`${rp}.limits.cpu`, 'INVALID_RESOURCES', 'limits.cpu must not be below requests.cpu');
  }
  if (reqMem !== undefined && limMem !== undefined && limMem < reqMem) {
    col.add(`${rp}.limits.memory`, 'INVALID_RESOURCES', 'limits.memory must not be below requests.memory');
  }
}

function checkCpuAndMemory(domain: LooseDomain, path: string, col: Collector, defaulted: DomainDefaults): void {
  const cpuPath = `${path}.cpu`;
  const cpu = domain.cpu ?? {};
  const total = (cpu.sockets ?? 1) * (cpu.cores ?? 1) * (cpu.threads ?? 1);
  if (total > MAX_VCPUS) col.add(cpuPath, 'OUT_OF_RANGE', `sockets*cores*threads is ${total}, at most ${MAX_VCPUS} vCPUs are supported`);
  if (cpu.model !== undefined && cpu.model !== 'host-passthrough' && cpu.model !== 'host-model' && !QEMU_NAME_RE.test(cpu.model)) {
    col.add(`${cpuPath}.model`, 'INVALID_FIELD', 'must be host-passthrough, host-model or a QEMU CPU model name (letters, digits, ".", "_", "-")');
  }

  const memPath = `${path}.memory.guest`;
  if (domain.memory?.guest === undefined) {
    col.add(memPath, 'MISSING_FIELD', 'guest memory must be given in domain.memory.guest or domain.resources.requests.memory');
    return;
  }
  if (defaulted.memoryFromResources) return; // the resource quantity is checked by checkResources
  const guest = quantity(domain.memory.guest, memPath, col);
  checkMemoryRange(guest, memPath, col);
  const limit = domain.resources?.limits?.memory;
  if (guest !== undefined && limit !== undefined) {
    try {
      if (guest > parseQuantity(limit)) col.add(memPath, 'INVALID_RESOURCES', 'must not exceed resources.limits.memory');
    } catch {
      // reported by checkResources
    }
  }
}

function checkFirmware(domain: LooseDomain, path: string, col: Collector): void {
  const fw = domain.firmware;
  if (fw === undefined) return;
  const fp = `${path}.firmware`;
  const bl = fw.bootloader;
  if (bl?.bios !== undefined && bl.efi !== undefined) {
    col.add(`${fp}.bootloader`, 'CONFLICTING_FIELDS', 'set either bios or efi, not both');
  }
  if (bl?.efi?.secureBoot === true) col.add(`${fp}.bootloader.efi.secureBoot`, 'INVALID_FIELD', 'secure boot is not supported yet; set secureBoot: false');
  const kb = fw.kernelBoot;
  if (kb !== undefined) {
    if (kb.hostPath === undefined) {
      col.add(`${fp}.kernelBoot.hostPath`, 'MISSING_FIELD', 'kernelBoot needs hostPath.kernelPath (kernelBoot.container is not supported)');
    } else {
      checkPath(kb.hostPath.kernelPath, `${fp}.kernelBoot.hostPath.kernelPath`, col);
      const initrd = kb.hostPath.initrdPath;
      if (initrd !== undefined) {
        checkPath(initrd, `${fp}.kernelBoot.hostPath.initrdPath`, col);
        // QEMU splits -initrd at commas for multiboot kernels.
        if (initrd.includes(',')) col.add(`${fp}.kernelBoot.hostPath.initrdPath`, 'INVALID_HOST_PATH', 'must not contain a comma');
      }
    }
  }
}

function checkDisksAndVolumes(spec: LooseSpec, path: string, col: Collector): void {
  const dp = `${path}.domain.devices.disks`;
  const vp = `${path}.volumes`;
  const disks = spec.domain.devices.disks ?? [];
  const volumes = spec.volumes ?? [];

  const diskIndex = new Map<string, number>();
  const bootOrders = new Map<number, number>();
  disks.forEach((disk, i) => {
    const at = joinPath(dp, i);
    if (!isDnsLabel(disk.name)) col.add(`${at}.name`, 'INVALID_NAME', 'must be a DNS-1123 label');
    if (diskIndex.has(disk.name)) col.add(`${at}.name`, 'DUPLICATE_NAME', `disk name "${disk.name}" is used twice`);
    else diskIndex.set(disk.name, i);
    if (disk.disk !== undefined && disk.cdrom !== undefined) {
      col.add(at, 'CONFLICTING_FIELDS', 'set either disk or cdrom, not both');
    }
    if (disk.cdrom !== undefined) {
      if (disk.cdrom.bus === 'virtio') col.add(`${at}.cdrom.bus`, 'INVALID_FIELD', 'a cdrom cannot use the virtio bus; use sata or scsi');
      if (!disk.cdrom.readonly) col.add(`${at}.cdrom.readonly`, 'INVALID_FIELD', 'a cdrom is always read-only');
    }
    if (disk.disk?.bus === 'sata' && disk.disk.readonly) {
      col.add(`${at}.disk.readonly`, 'INVALID_FIELD', 'QEMU cannot attach a read-only disk on the sata bus; use virtio or scsi');
    }
    if (disk.io === 'native' && disk.cache !== 'none') {
      col.add(`${at}.io`, 'INVALID_FIELD', 'io native (Linux AIO) needs cache: none; set cache: none or io: threads');
    }
    if (disk.bootOrder !== undefined) {
      const other = bootOrders.get(disk.bootOrder);
      if (other !== undefined) col.add(`${at}.bootOrder`, 'INVALID_FIELD', `bootOrder ${disk.bootOrder} is also used by ${joinPath(dp, other)}`);
      else bootOrders.set(disk.bootOrder, i);
    }
    if (disk.serial !== undefined && !DISK_SERIAL_RE.test(disk.serial)) {
      col.add(`${at}.serial`, 'INVALID_FIELD', 'must be letters, digits, "_", ".", "+" or "-"');
    }
  });

  const volumeIndex = new Map<string, number>();
  volumes.forEach((vol, i) => {
    const at = joinPath(vp, i);
    if (!isDnsLabel(vol.name)) col.add(`${at}.name`, 'INVALID_NAME', 'must be a DNS-1123 label');
    if (volumeIndex.has(vol.name)) col.add(`${at}.name`, 'DUPLICATE_NAME', `volume name "${vol.name}" is used twice`);
    else volumeIndex.set(vol.name, i);
    const sources = (['hostDisk', 'emptyDisk', 'cloudInitNoCloud', 'containerDisk', 'persistentVolumeClaim', 'ephemeral'] as const).filter(
      (k) => vol[k] !== undefined,
    );
    if (sources.length === 0) {
      col.add(at, 'MISSING_FIELD', 'a volume needs one source: containerDisk, persistentVolumeClaim, ephemeral, hostDisk, emptyDisk or cloudInitNoCloud');
    }
    for (const [claim, field] of [
      [vol.persistentVolumeClaim, 'persistentVolumeClaim'],
      [vol.ephemeral?.persistentVolumeClaim, 'ephemeral.persistentVolumeClaim'],
    ] as const) {
      if (claim !== undefined && !isDnsSubdomain(claim.claimName))
        col.add(`${at}.${field}.claimName`, 'INVALID_NAME', 'must be a DNS-1123 subdomain (a PersistentVolumeClaim name)');
    }
    if (sources.length > 1) col.add(at, 'CONFLICTING_FIELDS', `a volume has exactly one source, found ${sources.join(' and ')}`);
    if (vol.hostDisk !== undefined) {
      checkPath(vol.hostDisk.path, `${at}.hostDisk.path`, col);
      if (vol.hostDisk.type === 'DiskOrCreate' && vol.hostDisk.capacity === undefined) {
        col.add(`${at}.hostDisk.capacity`, 'MISSING_FIELD', 'type DiskOrCreate needs a capacity');
      }
      if (vol.hostDisk.type === 'Disk' && vol.hostDisk.capacity !== undefined) {
        col.add(`${at}.hostDisk.capacity`, 'INVALID_FIELD', 'capacity is only used with type DiskOrCreate');
      }
      if (vol.hostDisk.capacity !== undefined) checkCapacity(vol.hostDisk.capacity, `${at}.hostDisk.capacity`, col);
    }
    if (vol.emptyDisk !== undefined) checkCapacity(vol.emptyDisk.capacity, `${at}.emptyDisk.capacity`, col);
    if (vol.containerDisk !== undefined) {
      const problem = referenceProblem(vol.containerDisk.image);
      if (problem !== undefined) col.add(`${at}.containerDisk.image`, 'IMAGE_NAME_INVALID', problem);
    }
    const ci = vol.cloudInitNoCloud;
    if (ci !== undefined) {
      const cp = `${at}.cloudInitNoCloud`;
      if (ci.userData !== undefined && ci.userDataBase64 !== undefined) {
        col.add(`${cp}.userDataBase64`, 'CONFLICTING_FIELDS', 'set either userData or userDataBase64, not both');
      }
      if (ci.networkData !== undefined && ci.networkDataBase64 !== undefined) {
        col.add(`${cp}.networkDataBase64`, 'CONFLICTING_FIELDS', 'set either networkData or networkDataBase64, not both');
      }
      if (ci.userData === undefined && ci.userDataBase64 === undefined && ci.networkData === undefined && ci.networkDataBase64 === undefined) {
        col.add(cp, 'MISSING_FIELD', 'needs userData, userDataBase64, networkData or networkDataBase64');
      }
      for (const key of ['userDataBase64', 'networkDataBase64'] as const) {
        const v = ci[key];
        if (v !== undefined && !BASE64_RE.test(v.replace(/\s+/g, ''))) col.add(`${cp}.${key}`, 'INVALID_FIELD', 'must be base64');
      }
      let size = 0;
      for (const key of ['userData', 'userDataBase64', 'networkData', 'networkDataBase64'] as const) size += ci[key]?.length ?? 0;
      if (size > MAX_CLOUD_INIT_BYTES) col.add(cp, 'OUT_OF_RANGE', 'cloud-init data must be at most 1Mi in total');
    }
  });

  disks.forEach((disk, i) => {
    if (!volumeIndex.has(disk.name)) col.add(`${joinPath(dp, i)}.name`, 'MISSING_VOLUME', `no volume named "${disk.name}" in ${vp}`);
  });
  volumes.forEach((vol, i) => {
    if (!diskIndex.has(vol.name)) col.add(`${joinPath(vp, i)}.name`, 'UNUSED_VOLUME', `volume "${vol.name}" is not used by any disk in ${dp}`);
  });
}

const FREE_TEXT = /\.cloudInitNoCloud\.(userData|userDataBase64|networkData|networkDataBase64)$/;

/** Semantic checks and code defaults for a VMI spec (in place) at `path` (`spec` or `spec.template.spec`). */
function checkVMISpec(spec: LooseSpec, path: string, col: Collector): void {
  let defaulted: DomainDefaults = { memoryFromResources: false };
  col.check(() => {
    defaulted = applySpecDefaults(spec);
  });
  col.check(() => checkNoControlChars(spec, path, (p) => FREE_TEXT.test(p), col));
  const dom = `${path}.domain`;
  col.check(() => checkResources(spec.domain, dom, col));
  col.check(() => checkCpuAndMemory(spec.domain, dom, col, defaulted));
  col.check(() => {
    if (!QEMU_NAME_RE.test(spec.domain.machine.type)) {
      col.add(`${dom}.machine.type`, 'INVALID_FIELD', 'must be a QEMU machine type name (letters, digits, ".", "_", "-")');
    }
  });
  col.check(() => checkFirmware(spec.domain, dom, col));
  col.check(() => checkDisksAndVolumes(spec, path, col));
}

// ---------------------------------------------------------------------------------------------
// public entry points

/**
 * Validates a VirtualMachineInstance manifest (kubevirt.io/v1 or vmlet.io/v1alpha1) and returns a
 * normalised, defaulted copy; the input is not modified. Throws ValidationError.
 */
export function validateVMI(input: unknown, opts?: ValidateOptions): VirtualMachineInstance {
  const obj = preflight(input, 'VirtualMachineInstance');
  const validate = validatorsOf(opts).VirtualMachineInstance;
  const typed = validate(obj) ? obj : undefined;
  const schema = typed ? [] : mapSchemaErrors(validate.errors ?? []);
  const col = new Collector(schema.length > 0);
  col.check(() => checkMetadata(obj['metadata'] as Record<string, unknown> | undefined, col));
  col.check(() => checkVMISpec(obj['spec'] as LooseSpec, 'spec', col));
  const problems = allProblems(schema, col.details);
  if (problems.length > 0 || typed === undefined) throw new ValidationError(subjectOf('VirtualMachineInstance', obj), problems);
  return typed;
}

/**
 * Validates a VirtualMachine manifest and returns a normalised, defaulted copy (legacy `running`
 * becomes `runStrategy`). Throws ValidationError.
 */
export function validateVM(input: unknown, opts?: ValidateOptions): VirtualMachine {
  const obj = preflight(input, 'VirtualMachine');
  const validate = validatorsOf(opts).VirtualMachine;
  const typed = validate(obj) ? obj : undefined;
  const schema = typed ? [] : mapSchemaErrors(validate.errors ?? []);
  const col = new Collector(schema.length > 0);
  col.check(() => checkMetadata(obj['metadata'] as Record<string, unknown> | undefined, col));
  const spec = obj['spec'] as { running?: boolean; runStrategy?: RunStrategy; template: { metadata?: Record<string, unknown>; spec: LooseSpec } };
  col.check(() => {
    if (spec.running !== undefined && spec.runStrategy !== undefined) {
      col.add('spec.running', 'CONFLICTING_FIELDS', 'set either running or runStrategy, not both');
    } else if (spec.running === undefined && spec.runStrategy === undefined) {
      col.add('spec.runStrategy', 'MISSING_FIELD', `required field missing (one of ${RUN_STRATEGIES.join(', ')})`);
    } else {
      applyRunStrategyDefault(spec);
    }
  });
  col.check(() => {
    const tmeta = spec.template.metadata;
    if (tmeta !== undefined) {
      checkLabels(tmeta['labels'] as Record<string, string> | undefined, 'spec.template.metadata.labels', col);
      checkNoControlChars(tmeta, 'spec.template.metadata', (p) => p === 'spec.template.metadata.annotations', col);
    }
  });
  col.check(() => checkVMISpec(spec.template.spec, 'spec.template.spec', col));
  const problems = allProblems(schema, col.details);
  if (problems.length > 0 || typed === undefined) throw new ValidationError(subjectOf('VirtualMachine', obj), problems);
  return typed;
}

/** Validates a VirtualMachine or a VirtualMachineInstance, chosen by `kind`. Throws ValidationError. */
export function validateObject(input: unknown, opts?: ValidateOptions): VirtualMachine | VirtualMachineInstance {
  const kind = isRecord(input) ? input['kind'] : undefined;
  if (kind === 'VirtualMachine') return validateVM(input, opts);
  if (kind === 'VirtualMachineInstance') return validateVMI(input, opts);
  throw new ValidationError(subjectOf(typeof kind === 'string' ? kind : 'manifest', input), [
    {
      field: 'kind',
      code: kind === undefined ? 'MISSING_FIELD' : 'UNSUPPORTED_KIND',
      message: `${JSON.stringify(kind ?? null)} is not supported; use VirtualMachine or VirtualMachineInstance`,
    },
  ]);
}
