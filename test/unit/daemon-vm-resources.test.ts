// VMI spec → VM cgroup resources (pure): CPU from requests/limits, memory limit = guest + overhead, errors before anything exists; and the cgroupParent config key.
import t from 'tap';
import type { VirtualMachineInstance } from '../../src/api/types.js';
import { defaultConfig, mergeConfig } from '../../src/daemon/config.js';
import { OVERHEAD, OVERHEAD_ANNOTATION, memoryOverhead, vmGroupPath, vmResources, vmSizing } from '../../src/daemon/vm-resources.js';
import { VmletError } from '../../src/errors.js';
import { TCG_TB_CACHE, tcgTbSizeMiB } from '../../src/qemu/tcg.js';

const MiB = 1024 * 1024;

function vmi(domain: Record<string, unknown>, annotations?: Record<string, string>): VirtualMachineInstance {
  return {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'v', namespace: 'default', uid: 'u-1', ...(annotations ? { annotations } : {}) },
    spec: {
      terminationGracePeriodSeconds: 0,
      domain: {
        cpu: { sockets: 1, cores: 1, threads: 1 },
        memory: { guest: '128Mi' },
        machine: { type: 'q35' },
        devices: { autoattachSerialConsole: true, autoattachGraphicsDevice: false },
        ...domain,
      },
    },
  } as VirtualMachineInstance;
}

const code = (c: string): { code: string } => ({ code: c });

t.test('memoryOverhead: base + per vCPU + guest/64, plus the TCG term, whole MiB', async (t) => {
  const kvm = memoryOverhead({ guestBytes: 1024 * MiB, vcpus: 2, accel: 'kvm' });
  t.equal(kvm, OVERHEAD.baseBytes + 2 * OVERHEAD.perVcpuBytes + 16 * MiB);
  const tcg = memoryOverhead({ guestBytes: 1024 * MiB, vcpus: 2, accel: 'tcg' });
  t.equal(tcg - kvm, OVERHEAD.tcgBytes + tcgTbSizeMiB(1024 * MiB) * MiB, 'TCG adds its bounded translation cache and its own data');
  t.equal(tcgTbSizeMiB(1024 * MiB), 64, '1 GiB guest: a 64 MiB translation cache');
  t.equal(tcgTbSizeMiB(128 * MiB), TCG_TB_CACHE.minMiB, 'small guests get the minimum');
  t.equal(tcgTbSizeMiB(2048 * MiB), 128, '2 GiB guest: 1/16');
  t.equal(tcgTbSizeMiB(64 * 1024 * MiB), TCG_TB_CACHE.maxMiB, 'large guests are capped');
  t.equal(memoryOverhead({ guestBytes: 128 * MiB, vcpus: 1, accel: 'tcg' }), (96 + 8 + 2 + 96) * MiB, '128Mi, 1 vCPU, TCG: 202 MiB');
  t.equal(memoryOverhead({ guestBytes: 100 * MiB + 1, vcpus: 1, accel: 'kvm' }) % MiB, 0, 'rounded up to a MiB');
  t.ok(
    memoryOverhead({ guestBytes: 8192 * MiB, vcpus: 8, accel: 'kvm' }) > memoryOverhead({ guestBytes: 1024 * MiB, vcpus: 1, accel: 'kvm' }),
    'grows with size',
  );
});

t.test('vmResources: memory limit and CPU from the spec', async (t) => {
  const plain = vmResources(vmSizing(vmi({})), 'tcg');
  t.equal(plain.guestBytes, 128 * MiB);
  t.equal(plain.memoryLimitBytes, 128 * MiB + plain.overheadBytes);
  t.same(plain.resources, { memory: { max: plain.memoryLimitBytes } }, 'no CPU resources without requests/limits');

  const withCpu = vmResources(
    vmSizing(vmi({ cpu: { sockets: 1, cores: 2, threads: 1 }, resources: { requests: { cpu: '500m' }, limits: { cpu: '2' } } })),
    'kvm',
  );
  t.equal(withCpu.vcpus, 2);
  t.same(withCpu.resources.cpu, { shares: 512, quota: 200000, period: 100000 }, 'shares from the request, quota from the limit');
  t.equal(withCpu.overheadBytes, memoryOverhead({ guestBytes: 128 * MiB, vcpus: 2, accel: 'kvm' }));

  const onlyLimit = vmResources(vmSizing(vmi({ resources: { limits: { cpu: '1500m' } } })), 'kvm');
  t.same(onlyLimit.resources.cpu, { shares: 1536, quota: 150000, period: 100000 }, 'a missing request defaults to the limit');

  const bigger = vmResources(vmSizing(vmi({ resources: { limits: { memory: '1Gi' } } })), 'kvm');
  t.equal(bigger.memoryLimitBytes, 1024 * MiB + bigger.overheadBytes, 'limits.memory above the guest memory counts');
  t.equal(bigger.overheadBytes, memoryOverhead({ guestBytes: 128 * MiB, vcpus: 1, accel: 'kvm' }), 'the overhead follows the guest memory');

  const fromRequest = vmResources(vmSizing(vmi({ memory: undefined, resources: { requests: { memory: '256Mi' } } })), 'kvm');
  t.equal(fromRequest.guestBytes, 256 * MiB, 'guest memory from requests.memory when memory.guest is absent');
});

t.test('the overhead annotation replaces the formula', async (t) => {
  const r = vmResources(vmSizing(vmi({ memory: { guest: '256Mi' } }, { [OVERHEAD_ANNOTATION]: '32Mi' })), 'tcg');
  t.equal(r.overheadBytes, 32 * MiB);
  t.equal(r.memoryLimitBytes, 288 * MiB);
  t.equal(vmResources(vmSizing(vmi({}, { [OVERHEAD_ANNOTATION]: '0' })), 'tcg').memoryLimitBytes, 128 * MiB, '"0": the guest memory alone');
  t.throws(() => vmSizing(vmi({}, { [OVERHEAD_ANNOTATION]: 'lots' })), code('CGROUP_INVALID_QUANTITY'));
});

t.test('bad input is refused with a clear error', async (t) => {
  const cases: Array<[string, Record<string, unknown>, string, RegExp]> = [
    ['cpu request that does not parse', { resources: { requests: { cpu: 'two' } } }, 'CGROUP_INVALID_QUANTITY', /requests\.cpu/],
    ['memory limit that does not parse', { resources: { limits: { memory: '1 GB' } } }, 'CGROUP_INVALID_QUANTITY', /limits\.memory/],
    ['guest memory that does not parse', { memory: { guest: 'big' } }, 'CGROUP_INVALID_QUANTITY', /memory\.guest/],
    ['zero guest memory', { memory: { guest: '0' } }, 'CGROUP_INVALID_QUANTITY', /memory\.guest/],
    ['cpu limit below request', { resources: { requests: { cpu: '2' }, limits: { cpu: '1' } } }, 'CGROUP_LIMIT_BELOW_REQUEST', /limits\.cpu/],
    ['memory limit below request', { resources: { requests: { memory: '1Gi' }, limits: { memory: '512Mi' } } }, 'CGROUP_LIMIT_BELOW_REQUEST', /limits\.memory/],
    [
      'memory limit below guest memory',
      { memory: { guest: '1Gi' }, resources: { limits: { memory: '512Mi' } } },
      'CGROUP_LIMIT_BELOW_REQUEST',
      /memory\.guest/,
    ],
    ['zero vCPUs', { cpu: { sockets: 1, cores: 0, threads: 1 } }, 'CGROUP_INVALID_RESOURCES', /sockets/],
  ];
  for (const [what, domain, c, msg] of cases) {
    try {
      vmSizing(vmi(domain));
      t.fail(`${what}: accepted`);
    } catch (e) {
      t.ok(e instanceof VmletError, `${what}: a VmletError`);
      t.equal((e as VmletError).code, c, `${what}: ${c}`);
      t.match((e as Error).message, msg, `${what}: names the field (${(e as Error).message})`);
    }
  }
});

t.test('vmGroupPath and the cgroupParent config key', async (t) => {
  t.equal(vmGroupPath('vmlet', 'abc'), 'vmlet/abc');
  t.equal(vmGroupPath('/system.slice/vmlet.service/vms/', 'abc'), 'system.slice/vmlet.service/vms/abc');
  const base = defaultConfig('/repo');
  t.equal(base.cgroupParent, 'vmlet', 'default parent');
  t.equal(mergeConfig(base, { cgroupParent: '/system.slice/vmlet.service/vms/' }, 'f').cgroupParent, 'system.slice/vmlet.service/vms', 'slashes trimmed');
  t.equal(mergeConfig(base, { cgroupParent: '' }, 'f').cgroupParent, '', '"" turns VM cgroups off');
  t.throws(() => mergeConfig(base, { cgroupParent: 'a/../b' }, 'f'), code('CONFIG_INVALID'));
  t.throws(() => mergeConfig(base, { cgroupParent: 'a//b' }, 'f'), code('CONFIG_INVALID'));
  t.throws(() => mergeConfig(base, { cgroupParent: 3 }, 'f'), code('CONFIG_INVALID'));
});
