// Probes what a QEMU binary and this host can do (version, machine types, CPU models, KVM, OVMF), cached per binary, and picks the accelerator.

import { execFile } from 'node:child_process';
import { constants as fsc } from 'node:fs';
import { access, readdir, readFile, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { VmletError } from '../errors.js';
import { checkKvm, probeKvm, type KvmProbeOptions } from './kvm-probe.js';
import type { OvmfPaths } from './volumes.js';
import type { Accel, AccelSetting } from '../api/vocabulary.js';
import { isRecord } from '../api/vocabulary.js';

export { checkKvm } from './kvm-probe.js';

export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
  /** The whole first line of `-version`. */
  text: string;
}

export interface MachineType {
  name: string;
  description: string;
  /** For an alias such as `q35`: the versioned type it stands for. */
  aliasOf?: string;
  isDefault: boolean;
  deprecated: boolean;
}

/**
 * Where the KVM verdict was reached: 'device' (/dev/kvm does not open), 'binary' (QEMU lacks the kvm
 * accelerator), 'payload' (the probe guest is not built), 'qemu' (QEMU died or would not start under
 * KVM), 'guest' (QEMU ran, the probe guest did not finish in time or failed a check), 'ok'.
 */
export type KvmProbeStage = 'device' | 'binary' | 'payload' | 'qemu' | 'guest' | 'ok';

export interface KvmStatus {
  usable: boolean;
  /** Why not, or 'ok'. */
  reason: string;
  /** How long the check took, ms (the /dev/kvm open plus the probe guest's run). */
  durationMs?: number;
  stage?: KvmProbeStage;
}

export interface QemuCaps {
  binary: string;
  version: QemuVersion;
  machineTypes: MachineType[];
  /** Every name `-machine` accepts, aliases included. */
  machineTypeNames: string[];
  cpuModels: string[];
  accelerators: string[];
  /** QEMU was built with seccomp (`-sandbox` works). */
  seccomp: boolean;
  kvm: KvmStatus;
  /** OVMF firmware without secure boot, or undefined if none was found. */
  ovmf: OvmfPaths | undefined;
}

export interface ProbeOptions {
  /** Default /dev/kvm. */
  devKvm?: string;
  /** QEMU firmware descriptor directories, in priority order; default /etc/qemu/firmware, /usr/share/qemu/firmware. */
  firmwareDirs?: readonly string[];
  /** Fallback OVMF locations tried when no descriptor matches. */
  ovmfCandidates?: readonly OvmfPaths[];
  /** Per QEMU invocation; default 10 s. */
  timeoutMs?: number;
  /** The KVM probe guest (src/qemu/kvm-probe.ts); default native/build/kvm-probe.elf of this checkout. */
  kvmProbePayload?: string;
  /** How long the probe guest gets after `cont` under KVM; default 500 ms. */
  kvmProbeDeadlineMs?: number;
  /** Machine type the probe guest runs on; default 'q35' (as vmlet's VMs). */
  kvmProbeMachine?: string;
  /** CPU model the probe guest runs with; default 'host' (as vmlet's VMs under KVM). */
  kvmProbeCpu?: string;
}

export const DEFAULT_FIRMWARE_DIRS: readonly string[] = ['/etc/qemu/firmware', '/usr/share/qemu/firmware'];

export const DEFAULT_OVMF_CANDIDATES: readonly OvmfPaths[] = [
  { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd' }, // Debian, Ubuntu
  { code: '/usr/share/OVMF/OVMF_CODE.fd', vars: '/usr/share/OVMF/OVMF_VARS.fd' },
  { code: '/usr/share/edk2/ovmf/OVMF_CODE.fd', vars: '/usr/share/edk2/ovmf/OVMF_VARS.fd' }, // Fedora
  { code: '/usr/share/edk2/x64/OVMF_CODE.4m.fd', vars: '/usr/share/edk2/x64/OVMF_VARS.4m.fd' }, // Arch
  { code: '/usr/share/qemu/ovmf-x86_64-code.bin', vars: '/usr/share/qemu/ovmf-x86_64-vars.bin' }, // openSUSE
];

// ---------------------------------------------------------------------------------------------
// pure parsers

/** Parses the output of `qemu-system-x86_64 -version`. Throws QEMU_PROBE_FAILED. */
export function parseVersion(output: string): QemuVersion {
  const line = output.split('\n').find((l) => /version\s+\d+\.\d+/i.test(l));
  const m = line === undefined ? null : /version\s+(\d+)\.(\d+)(?:\.(\d+))?/i.exec(line);
  if (line === undefined || m === null) throw new VmletError('QEMU_PROBE_FAILED', `cannot read a version from ${JSON.stringify(output.slice(0, 200))}`);
  return { major: Number(m[1]), minor: Number(m[2]), micro: Number(m[3] ?? 0), text: line.trim() };
}

/** Parses `-machine help`. */
export function parseMachineHelp(output: string): MachineType[] {
  const out: MachineType[] = [];
  for (const line of output.split('\n')) {
    if (line.trim() === '' || /^Supported machines/i.test(line)) continue;
    const m = /^(\S+)\s+(.*)$/.exec(line.trimEnd());
    if (m === null || m[1] === undefined) continue;
    let description = m[2] ?? '';
    const alias = /\(alias of ([^)]+)\)/.exec(description)?.[1];
    const isDefault = /\(default\)/.test(description);
    const deprecated = /\(deprecated\)/.test(description);
    description = description.replace(/\s*\((alias of [^)]+|default|deprecated)\)/g, '').trim();
    const mt: MachineType = { name: m[1], description, isDefault, deprecated };
    if (alias !== undefined) mt.aliasOf = alias;
    out.push(mt);
  }
  return out;
}

/** Parses `-cpu help` (the model list before the CPUID flags). */
export function parseCpuHelp(output: string): string[] {
  const out: string[] = [];
  for (const line of output.split('\n')) {
    if (/^Recognized CPUID flags/i.test(line)) break;
    const m = /^x86\s+(\S+)/.exec(line);
    if (m?.[1] !== undefined) out.push(m[1]);
  }
  return out;
}

/** Parses `-accel help`. */
export function parseAccelHelp(output: string): string[] {
  return output
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !/^Accelerators supported/i.test(l) && /^[a-z0-9_-]+$/.test(l));
}

const REFUSED_FIRMWARE_FEATURES = ['secure-boot', 'requires-smm', 'enrolled-keys', 'amd-sev-es', 'amd-sev-snp', 'intel-tdx'];

/**
 * From QEMU firmware descriptors (docs/interop/firmware.json), in priority order, the OVMF
 * builds vmlet can use: UEFI, flash-mapped raw images with an NVRAM template, for x86_64 q35,
 * without secure boot or SMM. Pure.
 */
export function pickOvmf(descriptors: readonly unknown[]): OvmfPaths[] {
  const out: OvmfPaths[] = [];
  for (const d of descriptors) {
    if (!isRecord(d)) continue;
    const types = d['interface-types'];
    if (!Array.isArray(types) || !types.includes('uefi')) continue;
    const features = Array.isArray(d['features']) ? d['features'] : [];
    if (features.some((f) => REFUSED_FIRMWARE_FEATURES.includes(String(f)))) continue;
    const mapping = d['mapping'];
    if (!isRecord(mapping) || mapping['device'] !== 'flash') continue;
    const exe = mapping['executable'];
    const nvram = mapping['nvram-template'];
    if (!isRecord(exe) || !isRecord(nvram)) continue;
    const code = exe['filename'];
    const vars = nvram['filename'];
    if (typeof code !== 'string' || typeof vars !== 'string') continue;
    if ((exe['format'] ?? 'raw') !== 'raw' || (nvram['format'] ?? 'raw') !== 'raw') continue;
    const targets = Array.isArray(d['targets']) ? d['targets'] : [];
    const q35 = targets.some(
      (t) =>
        isRecord(t) &&
        t['architecture'] === 'x86_64' &&
        Array.isArray(t['machines']) &&
        t['machines'].some((m) => typeof m === 'string' && (m.startsWith('pc-q35') || m === 'q35')),
    );
    if (q35) out.push({ code, vars });
  }
  return out;
}

/** How to run QEMU: the accelerator and whether that is software emulation. */
export interface AccelChoice {
  accel: Accel;
  softwareEmulation: boolean;
  /** Why software emulation: KVM was wanted (`auto`) but is unusable, or tcg was asked for. */
  emulationReason?: 'KvmUnusable' | 'EmulationRequested';
  /** With 'KvmUnusable': why KVM is unusable (the probe's reason). */
  emulationMessage?: string;
}

/**
 * Chooses the accelerator. `kvm` needs a usable KVM; `tcg` is taken as consent to software
 * emulation; `auto` takes KVM when usable and falls back to tcg only if allowEmulation. Pure;
 * throws KVM_UNAVAILABLE or ACCEL_UNAVAILABLE.
 */
export function resolveAccel(config: AccelSetting, allowEmulation: boolean, caps: Pick<QemuCaps, 'kvm' | 'accelerators'>): AccelChoice {
  const kvmOk = caps.kvm.usable && caps.accelerators.includes('kvm');
  const kvmWhy = caps.kvm.usable ? 'this QEMU binary has no KVM support' : caps.kvm.reason;
  const tcg = (why: Pick<AccelChoice, 'emulationReason' | 'emulationMessage'>): AccelChoice => {
    if (!caps.accelerators.includes('tcg')) throw new VmletError('ACCEL_UNAVAILABLE', 'this QEMU binary has no tcg (software emulation) support');
    return { accel: 'tcg', softwareEmulation: true, ...why };
  };
  if (config === 'kvm') {
    if (!kvmOk) throw new VmletError('KVM_UNAVAILABLE', `KVM is not usable (${kvmWhy}); fix KVM or run with --accel tcg for software emulation (slow)`);
    return { accel: 'kvm', softwareEmulation: false };
  }
  if (config === 'tcg') return tcg({ emulationReason: 'EmulationRequested' });
  if (kvmOk) return { accel: 'kvm', softwareEmulation: false };
  if (allowEmulation) return tcg({ emulationReason: 'KvmUnusable', emulationMessage: kvmWhy });
  throw new VmletError('KVM_UNAVAILABLE', `KVM is not usable (${kvmWhy}); set --accel tcg or allow software emulation to run VMs without KVM (slow)`);
}

// ---------------------------------------------------------------------------------------------
// effects

function run(binary: string, args: readonly string[], timeoutMs: number): Promise<{ ok: boolean; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      binary,
      [...args],
      { timeout: timeoutMs, maxBuffer: 8 << 20, env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', LC_ALL: 'C' } },
      (err, stdout, stderr) => {
        if (err !== null && (err as NodeJS.ErrnoException).code === 'ENOENT') {
          reject(new VmletError('QEMU_NOT_FOUND', `QEMU binary ${binary} not found`, { cause: err }));
          return;
        }
        resolve({ ok: err === null, stdout, stderr });
      },
    );
  });
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path, fsc.R_OK);
    return true;
  } catch {
    return false;
  }
}

/** Reads firmware descriptors (a file name in an earlier directory hides the same name in later ones), sorted by file name. */
export async function readFirmwareDescriptors(dirs: readonly string[]): Promise<unknown[]> {
  const byName = new Map<string, string>();
  for (const dir of dirs) {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      continue;
    }
    for (const n of names) if (n.endsWith('.json') && !byName.has(n)) byName.set(n, join(dir, n));
  }
  const out: unknown[] = [];
  for (const name of [...byName.keys()].sort()) {
    const file = byName.get(name);
    if (file === undefined) continue;
    try {
      out.push(JSON.parse(await readFile(file, 'utf8')));
    } catch {
      // a broken descriptor is skipped, like QEMU's own firmware selection would
    }
  }
  return out;
}

/** Finds usable OVMF firmware: descriptors first, then the fallback paths; both files must be readable. */
export async function findOvmf(dirs: readonly string[], candidates: readonly OvmfPaths[]): Promise<OvmfPaths | undefined> {
  for (const c of [...pickOvmf(await readFirmwareDescriptors(dirs)), ...candidates]) {
    if ((await exists(c.code)) && (await exists(c.vars))) return c;
  }
  return undefined;
}

const cache = new Map<string, Promise<QemuCaps>>();

/** Forgets every cached probe. */
export function clearProbeCache(): void {
  cache.clear();
}

/** KVM's verdict for this binary: the probe guest runs only if the binary lists kvm and /dev/kvm opens (probeKvm checks that first). */
async function kvmStatus(binary: string, accelsP: Promise<{ ok: boolean; stdout: string }>, opts: ProbeOptions): Promise<KvmStatus> {
  const accels = await accelsP;
  if (!accels.ok || !parseAccelHelp(accels.stdout).includes('kvm')) {
    const dev = await checkKvm(opts.devKvm);
    return dev.usable ? { usable: false, reason: 'this QEMU binary has no KVM support', stage: 'binary' } : { ...dev, stage: 'device' };
  }
  const ko: KvmProbeOptions = { qemuBinary: binary };
  if (opts.devKvm !== undefined) ko.devKvm = opts.devKvm;
  if (opts.kvmProbePayload !== undefined) ko.payload = opts.kvmProbePayload;
  if (opts.kvmProbeDeadlineMs !== undefined) ko.deadlineMs = opts.kvmProbeDeadlineMs;
  if (opts.kvmProbeMachine !== undefined) ko.machine = opts.kvmProbeMachine;
  if (opts.kvmProbeCpu !== undefined) ko.cpu = opts.kvmProbeCpu;
  if (opts.timeoutMs !== undefined) ko.startTimeoutMs = opts.timeoutMs;
  return probeKvm(ko);
}

async function probeUncached(binary: string, opts: ProbeOptions): Promise<QemuCaps> {
  const timeout = opts.timeoutMs ?? 10_000;
  const accelsP = run(binary, ['-accel', 'help'], timeout);
  const [version, machines, cpus, accels, sandbox, kvm, ovmf] = await Promise.all([
    run(binary, ['-version'], timeout),
    run(binary, ['-machine', 'help'], timeout),
    run(binary, ['-cpu', 'help'], timeout),
    accelsP,
    run(binary, ['-sandbox', 'on', '-version'], timeout),
    kvmStatus(binary, accelsP, opts),
    findOvmf(opts.firmwareDirs ?? DEFAULT_FIRMWARE_DIRS, opts.ovmfCandidates ?? DEFAULT_OVMF_CANDIDATES),
  ]);
  if (!version.ok) throw new VmletError('QEMU_PROBE_FAILED', `${binary} -version failed: ${version.stderr.trim()}`);
  if (!machines.ok) throw new VmletError('QEMU_PROBE_FAILED', `${binary} -machine help failed: ${machines.stderr.trim()}`);
  const machineTypes = parseMachineHelp(machines.stdout);
  return {
    binary,
    version: parseVersion(version.stdout),
    machineTypes,
    machineTypeNames: machineTypes.map((m) => m.name),
    cpuModels: cpus.ok ? parseCpuHelp(cpus.stdout) : [],
    accelerators: accels.ok ? parseAccelHelp(accels.stdout) : [],
    seccomp: sandbox.ok,
    kvm,
    ovmf,
  };
}

/**
 * Probes a QEMU binary once; later calls with the same binary (same path and modification time)
 * and options get the cached result. Throws QEMU_NOT_FOUND or QEMU_PROBE_FAILED.
 */
export async function probeQemu(binary: string, opts: ProbeOptions = {}): Promise<QemuCaps> {
  let st;
  try {
    st = await stat(binary);
  } catch (cause) {
    throw new VmletError('QEMU_NOT_FOUND', `QEMU binary ${binary} not found`, { cause });
  }
  const key = JSON.stringify([
    binary,
    st.mtimeMs,
    st.size,
    opts.devKvm ?? '',
    opts.firmwareDirs ?? [],
    opts.ovmfCandidates ?? [],
    opts.kvmProbePayload ?? '',
    opts.kvmProbeDeadlineMs ?? 0,
    opts.kvmProbeMachine ?? '',
    opts.kvmProbeCpu ?? '',
  ]);
  let p = cache.get(key);
  if (p === undefined) {
    p = probeUncached(binary, opts);
    cache.set(key, p);
    p.catch(() => cache.delete(key));
  }
  return p;
}

/** A short description for logs: "QEMU 7.2.22 at qemu-system-x86_64 (kvm: no (qemu, probed in 37 ms): <reason>; ovmf: ...)" or "(kvm: yes, the probe guest ran, probed in 90 ms; ...)". */
export function describeCaps(caps: QemuCaps): string {
  const ms = caps.kvm.durationMs === undefined ? '' : `, probed in ${caps.kvm.durationMs} ms`;
  const kvm = caps.kvm.usable ? `yes, the probe guest ran${ms}` : `no${caps.kvm.stage === undefined ? '' : ` (${caps.kvm.stage}${ms})`}: ${caps.kvm.reason}`;
  return `QEMU ${caps.version.major}.${caps.version.minor}.${caps.version.micro} at ${basename(caps.binary)} (kvm: ${kvm}; ovmf: ${caps.ovmf?.code ?? 'none'})`;
}
