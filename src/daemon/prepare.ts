// Makes what a VMI's QEMU needs before it starts: the accelerator choice, its volume files, and its argv.
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { VirtualMachineInstance } from '../api/types.js';
import { VmletError } from '../errors.js';
import { buildArgv } from '../qemu/argv.js';
import { probeQemu, resolveAccel, type ProbeOptions } from '../qemu/probe.js';
import { planVolumes, type PreparedFile } from '../qemu/volumes.js';
import type { PodVmNetwork } from './kube-vm-network.js';
import type { PreparedLaunch } from './supervisor.js';
import type { PrepareContext } from './supervisor-deps.js';
import type { VmNetwork } from './vm-network.js';
import type { AccelSetting } from '../api/vocabulary.js';

const run = promisify(execFile);

export interface PrepareOptions {
  qemuBinary: string;
  accel: AccelSetting;
  /** A function when it is read live (the cluster config). */
  useEmulation: boolean | (() => boolean);
  /** The same options as the daemon's start-up probe, so both share one cached result. */
  probe?: ProbeOptions;
  genisoimage?: string;
  /** Standalone networking; absent = VMs get no NIC. */
  network?: VmNetwork;
  /**
   * Kubernetes mode: QEMU runs in the launcher pod and sees the run dir at `qemuRunDir` (the daemon reaches it
   * through the `runDir` it is given); files made there are given to `owner` (the pod's uid); the NICs are
   * built in the pod's netns.
   */
  pod?: { qemuRunDir: string; owner: { uid: number; gid: number }; network?: PodVmNetwork };
}

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  );
}

/** A sparse file of `size` bytes; O_EXCL when `fresh` is false so an existing disk is never truncated. */
async function sparseFile(p: string, size: bigint, replace: boolean): Promise<void> {
  const fh = await fs.open(p, replace ? 'w' : 'wx', 0o600);
  try {
    await fh.truncate(Number(size));
  } finally {
    await fh.close();
  }
}

async function makeFile(f: PreparedFile, genisoimage: string): Promise<void> {
  switch (f.kind) {
    case 'emptyDisk':
      return sparseFile(f.path, f.sizeBytes, true);
    case 'hostDisk':
      if (await exists(f.path)) return;
      if (!f.create) throw new VmletError('HOSTDISK_MISSING', `hostDisk ${f.volume}: ${f.path} does not exist; create it or use type DiskOrCreate`);
      await fs.mkdir(path.dirname(f.path), { recursive: true });
      return sparseFile(f.path, f.sizeBytes, false);
    case 'efiVars':
      if (await exists(f.path)) return;
      await fs.copyFile(f.template, f.path);
      return;
    case 'cloudInitIso': {
      const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmlet-cidata-'));
      try {
        for (const file of f.files) await fs.writeFile(path.join(dir, file.name), file.data);
        await run(genisoimage, ['-quiet', '-output', f.path, '-volid', f.label, '-joliet', '-rock', ...f.files.map((x) => path.join(dir, x.name))]);
      } catch (e) {
        throw new VmletError('CLOUDINIT_ISO_FAILED', `cloud-init volume ${f.volume}: could not build the cidata ISO`, { cause: e });
      } finally {
        await fs.rm(dir, { recursive: true, force: true });
      }
    }
  }
}

/** The daemon's `prepare` step: probe (cached), choose the accelerator, create files, build argv, then the network sandbox and its tap fds. */
export function makePrepare(opts: PrepareOptions): (vmi: VirtualMachineInstance, runDir: string, at?: PrepareContext) => Promise<PreparedLaunch> {
  return async (vmi, runDir, at = {}) => {
    const caps = await probeQemu(opts.qemuBinary, opts.probe ?? {});
    const choice = resolveAccel(opts.accel, typeof opts.useEmulation === 'function' ? opts.useEmulation() : opts.useEmulation, caps);
    const pod = opts.pod;
    // Paths as QEMU sees them; the daemon makes the files through its own view of the same folder.
    const qemuRunDir = pod?.qemuRunDir ?? runDir;
    const plan = planVolumes(vmi, qemuRunDir, caps.ovmf ? { ovmf: caps.ovmf } : {});
    for (const f of plan.files) {
      const inRunDir = f.path.startsWith(`${qemuRunDir}/`);
      const file = pod && inRunDir ? { ...f, path: path.join(runDir, path.relative(qemuRunDir, f.path)) } : f;
      await makeFile(file, opts.genisoimage ?? 'genisoimage');
      if (pod && inRunDir) await fs.chown(file.path, pod.owner.uid, pod.owner.gid);
    }
    const ctx: Parameters<typeof buildArgv>[1] = {
      qemuBinary: opts.qemuBinary,
      runDir: qemuRunDir,
      accel: choice.accel,
      machineTypes: caps.machineTypeNames,
      cpuModels: caps.cpuModels,
      volumes: plan.volumes,
      sandbox: caps.seccomp,
    };
    if (caps.ovmf) ctx.ovmf = caps.ovmf;
    const argv = buildArgv(vmi, ctx);
    const prepared: PreparedLaunch = { argv, fds: [], accel: choice.accel, softwareEmulation: choice.softwareEmulation };
    if (choice.emulationReason !== undefined) {
      prepared.emulation = { reason: choice.emulationReason, message: choice.emulationMessage ?? '' };
    }
    // Last, so that nothing after it can fail and leave tap fds open.
    if (pod) {
      if (at.launcherPid === undefined) throw new VmletError('PREPARE_FAILED', "the pod's launcher has not connected, so its netns is unknown");
      const net = await pod.network?.prepare(vmi, { fdBase: prepared.fds.length, accel: choice.accel, launcherPid: at.launcherPid });
      if (net) {
        prepared.argv = [...argv, ...net.args];
        prepared.fds = net.fds;
        prepared.interfaces = net.interfaces;
      }
      return prepared;
    }
    const net = await opts.network?.prepare(vmi, { fdBase: prepared.fds.length, accel: choice.accel });
    if (net) {
      prepared.argv = [...argv, ...net.args];
      prepared.fds = net.fds;
      prepared.netnsPath = net.netnsPath;
      prepared.interfaces = net.interfaces;
    }
    return prepared;
  };
}
