// Dedicated CPU placement (pure planning, and pinVcpus against a recording fake manager): vCPU i on the i-th host CPU, emulator threads on the rest.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import type { CgroupManager, CreateOptions } from '../../src/cgroups/index.js';
import type { VirtualMachineInstance } from '../../src/api/types.js';
import { emulatorThreads, pinVcpus, planPinning, vcpuCount, vcpuThreads, wantsDedicatedCpus } from '../../src/daemon/vcpu-pinning.js';

t.test('planPinning: one host CPU per vCPU, emulator on the rest', async (t) => {
  const p = planPinning(
    [
      { index: 0, tid: 100 },
      { index: 1, tid: 101 },
    ],
    [3, 1, 2, 0, 1],
  );
  t.same(p.vcpus, [
    { index: 0, tid: 100, cpu: 0, group: 'vcpu0' },
    { index: 1, tid: 101, cpu: 1, group: 'vcpu1' },
  ]);
  t.same(p.emulatorCpus, [2, 3]);
  t.equal(p.emulatorShared, false);
});

t.test('planPinning: no CPU left over, the emulator shares vCPU 0', async (t) => {
  const p = planPinning(
    [
      { index: 0, tid: 10 },
      { index: 1, tid: 11 },
    ],
    [4, 5],
  );
  t.same(
    p.vcpus.map((v) => v.cpu),
    [4, 5],
  );
  t.same(p.emulatorCpus, [4]);
  t.equal(p.emulatorShared, true);
  const one = planPinning([{ index: 0, tid: 10 }], [0, 1]);
  t.same(one.emulatorCpus, [1]);
  t.equal(one.emulatorShared, false);
});

t.test('planPinning: more vCPUs than host CPUs is CGROUP_CPUSET_TOO_SMALL', async (t) => {
  t.throws(
    () =>
      planPinning(
        [
          { index: 0, tid: 1 },
          { index: 1, tid: 2 },
          { index: 2, tid: 3 },
        ],
        [0, 1],
      ),
    { code: 'CGROUP_CPUSET_TOO_SMALL' },
  );
});

t.test('vcpuThreads: sorted by index; bad or shared threads refused', async (t) => {
  const q = (i: number, tid: number) => ({ 'cpu-index': i, 'thread-id': tid });
  t.same(vcpuThreads([q(1, 21), q(0, 20)]), [
    { index: 0, tid: 20 },
    { index: 1, tid: 21 },
  ]);
  t.throws(() => vcpuThreads([q(0, 20), q(1, 20)]), { code: 'VCPU_PINNING_FAILED' });
  t.throws(() => vcpuThreads([q(0, 0)]), { code: 'VCPU_PINNING_FAILED' });
});

t.test('emulatorThreads: everything but the vCPU threads', async (t) => {
  t.same(
    emulatorThreads(
      [5, 6, 7, 8],
      [
        { index: 0, tid: 6 },
        { index: 1, tid: 8 },
      ],
    ),
    [5, 7],
  );
});

t.test('wantsDedicatedCpus / vcpuCount', async (t) => {
  const vmi = (cpu: Record<string, unknown>) => ({ spec: { domain: { cpu } } }) as unknown as VirtualMachineInstance;
  t.equal(wantsDedicatedCpus(vmi({ dedicatedCpuPlacement: true })), true);
  t.equal(wantsDedicatedCpus(vmi({ dedicatedCpuPlacement: false })), false);
  t.equal(wantsDedicatedCpus(vmi({})), false);
  t.equal(vcpuCount(vmi({ sockets: 2, cores: 3, threads: 1 })), 6);
});

t.test('pinVcpus: sub-groups with their cpusets, each thread where it belongs', async (t) => {
  const proc = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-pin-'));
  t.teardown(() => fs.rmSync(proc, { recursive: true, force: true }));
  for (const tid of [500, 501, 502, 503, 504]) fs.mkdirSync(path.join(proc, '500', 'task', String(tid)), { recursive: true });
  const log: string[] = [];
  const child = (name: string, opts?: CreateOptions): CgroupManager => {
    log.push(`create ${name} cpus=${opts?.resources?.cpu?.cpus ?? ''}`);
    return {
      group: `vm/${name}`,
      addThread: async (tid: number) => {
        log.push(`${name} <- ${tid}`);
      },
    } as unknown as CgroupManager;
  };
  const cg = { group: 'vm', createThreadedChild: async (name: string, opts?: CreateOptions) => child(name, opts) } as unknown as CgroupManager;
  const qmp = { execute: async () => [{ 'cpu-index': 0, 'thread-id': 502 }] } as never;
  const plan = await pinVcpus({ cgroup: cg, qmp, qemuPid: 500, hostCpus: [0, 1, 2], procRoot: proc });
  t.same(plan.emulatorCpus, [1, 2]);
  t.same(log, ['create vcpu0 cpus=0', 'vcpu0 <- 502', 'create emulator cpus=1-2', 'emulator <- 500', 'emulator <- 501', 'emulator <- 503', 'emulator <- 504']);
});

t.test('pinVcpus: a failing cgroup write is VCPU_PINNING_FAILED with the cause', async (t) => {
  const cg = {
    group: 'vm',
    createThreadedChild: async () => {
      throw new Error('EACCES');
    },
  } as unknown as CgroupManager;
  const qmp = { execute: async () => [{ 'cpu-index': 0, 'thread-id': 7 }] } as never;
  await t.rejects(pinVcpus({ cgroup: cg, qmp, qemuPid: 1, hostCpus: [0], procRoot: '/nonexistent' }), { code: 'VCPU_PINNING_FAILED' });
});
