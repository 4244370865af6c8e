// Validates VirtualMachine / VirtualMachineInstance objects: CRD schema via ajv, then semantic checks ajv cannot express.

import { applyRunStrategyDefault, applySpecDefaults, type DomainDefaults, type LooseDomain, type LooseSpec } from './defaults.js';
import { allProblems, Collector, ValidationError, type FieldError } from './field-errors.js';
import { checkMemoryRange, checkPath, quantity } from './field-checks.js';
import { hasControlChars, isDnsLabel } from './names.js';
import { parseQuantity } from './quantity.js';
import { defaultSchemas, type CompiledSchemas, type SchemaKind, type SchemaValidators } from './schema.js';
import { joinPath, mapSchemaErrors } from './schema-errors.js';
import { ACCEPTED_API_VERSIONS, API_VERSION, RUN_STRATEGIES, type RunStrategy, type VirtualMachine, type VirtualMachineInstance } from './types.js';
import { checkDisksAndVolumes } from './validate-volumes.js';
import { isRecord } from './vocabulary.js';

export { ValidationError } from './field-errors.js';

export interface ValidateOptions {
  /** Compiled CRD schemas; default: deploy/crds of this checkout, loaded once. */
  schemas?: CompiledSchemas;
}

// Limits of the semantic checks (documented in docs/api.md).
export const MAX_VCPUS = 512;
export const MAX_CPU_MILLIS = 1024n * 1000n;

const DNS_SUBDOMAIN_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_NAME_RE = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
const QEMU_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const UID_RE = /^[A-Za-z0-9][A-Za-z0-9-]{0,63}$/;

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
