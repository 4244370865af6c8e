import t from 'tap';
import {
  blkioFromIoWeight,
  controllersFor,
  formatCpuList,
  ioWeightFromBlkio,
  memswFromSwap,
  parseCpuList,
  parseKeyValues,
  planDedicatedCpus,
  quotaFromMillis,
  resourcesFromSpec,
  sharesFromMillis,
  sharesFromWeight,
  v1StatsFromFiles,
  v1Writes,
  v2StatsFromFiles,
  v2Writes,
  validateResources,
  weightFromShares,
  type CgroupResources,
} from '../../src/cgroups/index.js';

t.test('sharesFromMillis follows kubelet (1024 per CPU, clamped to [2, 262144])', async (t) => {
  t.equal(sharesFromMillis(0), 2);
  t.equal(sharesFromMillis(1), 2);
  t.equal(sharesFromMillis(2), 2);
  t.equal(sharesFromMillis(3), 3);
  t.equal(sharesFromMillis(100), 102);
  t.equal(sharesFromMillis(250), 256);
  t.equal(sharesFromMillis(500), 512);
  t.equal(sharesFromMillis(1000), 1024);
  t.equal(sharesFromMillis(1500), 1536);
  t.equal(sharesFromMillis(256000), 262144);
  t.equal(sharesFromMillis(1_000_000), 262144);
  t.throws(() => sharesFromMillis(-1), { code: 'CGROUP_INVALID_RESOURCES' });
  t.throws(() => sharesFromMillis(1.5), { code: 'CGROUP_INVALID_RESOURCES' });
});

t.test('weightFromShares follows runc/crun', async (t) => {
  t.equal(weightFromShares(0), 0, 'unset stays unset');
  t.equal(weightFromShares(2), 1);
  t.equal(weightFromShares(1024), 39);
  t.equal(weightFromShares(512), 20);
  t.equal(weightFromShares(2048), 79);
  t.equal(weightFromShares(262144), 10000);
  t.equal(weightFromShares(1), 1, 'clamped below');
  t.equal(weightFromShares(10_000_000), 10000, 'clamped above');
  // the inverse lands back on (or just below) the original
  for (const s of [2, 100, 1024, 5000, 262144]) {
    const back = sharesFromWeight(weightFromShares(s));
    t.ok(back <= s && weightFromShares(back) === weightFromShares(s), `round trip ${s} → ${back}`);
  }
  t.equal(sharesFromWeight(1), 2);
  t.equal(sharesFromWeight(100), 2598);
  t.equal(sharesFromWeight(10000), 262144);
});

t.test('quotaFromMillis follows kubelet', async (t) => {
  t.equal(quotaFromMillis(1000), 100000);
  t.equal(quotaFromMillis(500), 50000);
  t.equal(quotaFromMillis(2500), 250000);
  t.equal(quotaFromMillis(1), 1000, 'minimum quota 1000 µs');
  t.equal(quotaFromMillis(10), 1000);
  t.equal(quotaFromMillis(0), 'max');
  t.equal(quotaFromMillis(1500, 50000), 75000);
  t.throws(() => quotaFromMillis(1000, 999), { code: 'CGROUP_INVALID_RESOURCES' });
  t.throws(() => quotaFromMillis(1000, 1_000_001), { code: 'CGROUP_INVALID_RESOURCES' });
});

t.test('io weight ↔ blkio weight follows runc', async (t) => {
  t.equal(ioWeightFromBlkio(10), 1);
  t.equal(ioWeightFromBlkio(500), 4950);
  t.equal(ioWeightFromBlkio(1000), 10000);
  t.equal(ioWeightFromBlkio(0), 0);
  t.equal(blkioFromIoWeight(1), 10);
  t.equal(blkioFromIoWeight(100), 20);
  for (const b of [10, 11, 100, 500, 999, 1000])
    t.equal(
      blkioFromIoWeight(ioWeightFromBlkio(b)) <= b && ioWeightFromBlkio(blkioFromIoWeight(ioWeightFromBlkio(b))) === ioWeightFromBlkio(b),
      true,
      `round trip ${b}`,
    );
  t.equal(blkioFromIoWeight(10000), 1000);
  t.equal(blkioFromIoWeight(4950), 500);
});

t.test('memsw = memory + swap', async (t) => {
  t.equal(memswFromSwap(1 << 30, 1 << 29), (1 << 30) + (1 << 29));
  t.equal(memswFromSwap(1 << 30, 0), 1 << 30, 'no swap: memsw equals the limit');
  t.equal(memswFromSwap(1 << 30, 'max'), 'max');
  t.equal(memswFromSwap(undefined, 'max'), 'max');
  t.throws(() => memswFromSwap('max', 100), { code: 'CGROUP_INVALID_RESOURCES' });
  t.throws(() => memswFromSwap(undefined, 100), { code: 'CGROUP_INVALID_RESOURCES' });
});

t.test('CPU lists', async (t) => {
  t.same(parseCpuList('0-3,6,8-9'), [0, 1, 2, 3, 6, 8, 9]);
  t.same(parseCpuList('3,1,1'), [1, 3]);
  t.same(parseCpuList(' 0\n'), [0]);
  t.same(parseCpuList(''), []);
  t.throws(() => parseCpuList('3-1'), { code: 'CGROUP_INVALID_RESOURCES' });
  t.throws(() => parseCpuList('a'), { code: 'CGROUP_INVALID_RESOURCES' });
  t.throws(() => parseCpuList('0-1000000'), { code: 'CGROUP_INVALID_RESOURCES' });
  t.equal(formatCpuList([0, 1, 2, 3, 6, 8, 9]), '0-3,6,8-9');
  t.equal(formatCpuList([5, 4, 4]), '4-5');
  t.equal(formatCpuList([]), '');
});

t.test('validateResources refuses out-of-range values', async (t) => {
  const bad: Array<[string, CgroupResources]> = [
    ['shares 1', { cpu: { shares: 1 } }],
    ['shares too big', { cpu: { shares: 262145 } }],
    ['weight 0', { cpu: { weight: 0 } }],
    ['weight 10001', { cpu: { weight: 10001 } }],
    ['fractional weight', { cpu: { weight: 1.5 } }],
    ['quota below 1000', { cpu: { quota: 999 } }],
    ['period too small', { cpu: { period: 10 } }],
    ['empty cpus', { cpu: { cpus: '' } }],
    ['bad cpus', { cpu: { cpus: '0-' } }],
    ['memory 0', { memory: { max: 0 } }],
    ['memory negative', { memory: { max: -5 } }],
    ['memory NaN', { memory: { max: Number.NaN } }],
    ['memory string', { memory: { max: '1Gi' as unknown as number } }],
    ['pids 0', { pids: { max: 0 } }],
    ['io weight 0', { io: { weight: 0 } }],
    ['blkio weight 5', { io: { blkioWeight: 5 } }],
  ];
  for (const [name, r] of bad) t.throws(() => validateResources(r), { code: 'CGROUP_INVALID_RESOURCES' }, name);
  t.doesNotThrow(() =>
    validateResources({
      cpu: { shares: 2, weight: 10000, quota: 'max', period: 1000000, cpus: '0-1', mems: '0' },
      memory: { max: 'max', high: 1, swapMax: 0 },
      pids: { max: 'max' },
      io: { weight: 1 },
    }),
  );
});

t.test('controllersFor', async (t) => {
  t.same(controllersFor({}), []);
  t.same(controllersFor({ cpu: { shares: 2, cpus: '0' }, memory: { max: 1 }, pids: { max: 1 }, io: { weight: 1 } }), ['cpu', 'cpuset', 'memory', 'pids', 'io']);
  t.same(controllersFor({ cpu: { mems: '0' } }), ['cpuset']);
  t.same(controllersFor({ memory: {} }), []);
});

const full: CgroupResources = {
  cpu: { shares: 1024, quota: 150000, period: 100000, cpus: '0-1', mems: '0' },
  memory: { max: 1 << 30, high: 900 << 20, swapMax: 256 << 20 },
  pids: { max: 4096 },
  io: { weight: 100 },
};

t.test('v2 writes', async (t) => {
  t.same(v2Writes(full), [
    ['cpu.weight', '39'],
    ['cpu.max', '150000 100000'],
    ['cpuset.cpus', '0-1'],
    ['cpuset.mems', '0'],
    ['memory.max', '1073741824'],
    ['memory.high', '943718400'],
    ['memory.swap.max', '268435456'],
    ['pids.max', '4096'],
    ['io.weight', 'default 100'],
  ]);
  t.same(v2Writes({}), []);
  t.same(v2Writes({ cpu: { weight: 250, shares: 1024 } }), [['cpu.weight', '250']], 'explicit weight wins');
  t.same(v2Writes({ cpu: { quota: 'max' } }), [['cpu.max', 'max 100000']]);
  t.same(v2Writes({ cpu: { period: 50000 } }), [['cpu.max', 'max 50000']], 'period alone: no quota');
  t.same(v2Writes({ memory: { max: 'max', swapMax: 0 }, pids: { max: 'max' } }), [
    ['memory.max', 'max'],
    ['memory.swap.max', '0'],
    ['pids.max', 'max'],
  ]);
  t.same(v2Writes({ io: { blkioWeight: 500 } }), [['io.weight', 'default 4950']]);
  t.throws(() => v2Writes({ cpu: { shares: 0 } }), { code: 'CGROUP_INVALID_RESOURCES' });
});

t.test('v1 writes', async (t) => {
  t.same(v1Writes(full), [
    ['cpu.shares', '1024'],
    ['cpu.cfs_period_us', '100000'],
    ['cpu.cfs_quota_us', '150000'],
    ['cpuset.cpus', '0-1'],
    ['cpuset.mems', '0'],
    ['memory.limit_in_bytes', '1073741824'],
    ['memory.memsw.limit_in_bytes', String((1 << 30) + (256 << 20))],
    ['pids.max', '4096'],
    ['blkio.weight', '20'],
  ]);
  t.same(v1Writes({ cpu: { weight: 100 } }), [['cpu.shares', '2598']], 'weight converted to shares');
  t.same(v1Writes({ cpu: { quota: 'max' } }), [
    ['cpu.cfs_period_us', '100000'],
    ['cpu.cfs_quota_us', '-1'],
  ]);
  t.same(v1Writes({ io: { blkioWeight: 300, weight: 1 } }), [['blkio.weight', '300']]);
  t.same(v1Writes({ io: { weight: 100 } }, { blkioWeight: false }), [], 'no blkio.weight on this kernel');
  t.same(v1Writes({ memory: { high: 5 } }), [], 'memory.high has no v1 counterpart');
  t.same(v1Writes({ pids: { max: 'max' } }), [['pids.max', 'max']]);
});

t.test('v1 memory/memsw write order', async (t) => {
  const gib = 1 << 30;
  // growing past the current limit: memsw first
  t.same(v1Writes({ memory: { max: gib, swapMax: 0 } }, { currentMemoryLimit: 512 << 20 }), [
    ['memory.memsw.limit_in_bytes', String(gib)],
    ['memory.limit_in_bytes', String(gib)],
  ]);
  // shrinking (current unlimited or bigger): limit first
  t.same(v1Writes({ memory: { max: gib, swapMax: 0 } }), [
    ['memory.limit_in_bytes', String(gib)],
    ['memory.memsw.limit_in_bytes', String(gib)],
  ]);
  t.same(v1Writes({ memory: { max: gib, swapMax: 0 } }, { currentMemoryLimit: 2 * gib }), [
    ['memory.limit_in_bytes', String(gib)],
    ['memory.memsw.limit_in_bytes', String(gib)],
  ]);
  // unlimited memory: memsw goes unlimited first
  t.same(v1Writes({ memory: { max: 'max' } }, { currentMemoryLimit: gib }), [
    ['memory.memsw.limit_in_bytes', '-1'],
    ['memory.limit_in_bytes', '-1'],
  ]);
  t.same(v1Writes({ memory: { max: gib } }), [['memory.limit_in_bytes', String(gib)]], 'swap untouched when not asked');
  t.same(v1Writes({ memory: { max: gib, swapMax: 100 } }, { swapAccounting: false }), [['memory.limit_in_bytes', String(gib)]], 'no memsw file: swap left out');
  t.throws(() => v1Writes({ memory: { swapMax: 4096 } }), { code: 'CGROUP_INVALID_RESOURCES' }, 'swap limit without memory limit');
});

t.test('resourcesFromSpec', async (t) => {
  t.same(resourcesFromSpec({ requests: { cpu: '500m', memory: '1Gi' }, limits: { cpu: '2', memory: '2Gi' } }), {
    cpu: { shares: 512, quota: 200000, period: 100000 },
    memory: { max: 2 * 1024 ** 3 },
  });
  t.same(resourcesFromSpec({ limits: { cpu: '1500m' } }), { cpu: { shares: 1536, quota: 150000, period: 100000 } }, 'request defaults to limit');
  t.same(resourcesFromSpec({ requests: { cpu: 1 } }), { cpu: { shares: 1024 } });
  t.same(resourcesFromSpec({ requests: { cpu: '1m' } }), { cpu: { shares: 2 } });
  t.same(resourcesFromSpec({ requests: { cpu: '0' } }), { cpu: { shares: 2 } });
  t.same(resourcesFromSpec({ requests: { memory: '1Gi' } }), {}, 'memory request alone writes nothing');
  t.same(resourcesFromSpec({}), {});
  t.same(resourcesFromSpec({ limits: { cpu: '1' } }, { period: 50000 }), { cpu: { shares: 1024, quota: 50000, period: 50000 } });
  t.same(resourcesFromSpec({ limits: { cpu: '1m' } }), { cpu: { shares: 2, quota: 1000, period: 100000 } }, 'tiny limit → minimum quota');
});

t.test('resourcesFromSpec errors', async (t) => {
  const e1 = t.throws(() => resourcesFromSpec({ requests: { cpu: 'lots' } }), { code: 'CGROUP_INVALID_QUANTITY' }) as unknown as Error;
  t.match(e1.message, /requests\.cpu/);
  t.match((e1.cause as { code?: string }).code, 'INVALID_QUANTITY', 'wraps the parser error');
  t.throws(() => resourcesFromSpec({ limits: { memory: '1Gb' } }), { code: 'CGROUP_INVALID_QUANTITY', message: /limits\.memory/ });
  t.throws(() => resourcesFromSpec({ limits: { memory: '-1Gi' } }), { code: 'CGROUP_INVALID_QUANTITY' });
  t.throws(() => resourcesFromSpec({ limits: { memory: '0' } }), { code: 'CGROUP_INVALID_QUANTITY' });
  t.throws(() => resourcesFromSpec({ limits: { cpu: '0' } }), { code: 'CGROUP_INVALID_QUANTITY' });
  t.throws(() => resourcesFromSpec({ limits: { memory: '1E' } }), { code: 'CGROUP_INVALID_QUANTITY', message: /too large/ });
  t.throws(() => resourcesFromSpec({ requests: { cpu: '2' }, limits: { cpu: '1' } }), { code: 'CGROUP_LIMIT_BELOW_REQUEST', message: /limits\.cpu/ });
  t.throws(() => resourcesFromSpec({ requests: { memory: '2Gi' }, limits: { memory: '1Gi' } }), {
    code: 'CGROUP_LIMIT_BELOW_REQUEST',
    message: /limits\.memory/,
  });
  t.doesNotThrow(() => resourcesFromSpec({ requests: { cpu: '1', memory: '1Gi' }, limits: { cpu: '1000m', memory: '1024Mi' } }), 'equal is fine');
});

t.test('planDedicatedCpus', async (t) => {
  t.same(planDedicatedCpus(2, [0, 1, 2, 3]), { vcpuToCpu: [0, 1], cpuset: '0-1' });
  t.same(planDedicatedCpus(3, [7, 2, 5, 2, 4]), { vcpuToCpu: [2, 4, 5], cpuset: '2,4-5' });
  t.same(planDedicatedCpus(2, [0, 1]), { vcpuToCpu: [0, 1], cpuset: '0-1' });
  t.throws(() => planDedicatedCpus(3, [0, 1]), { code: 'CGROUP_CPUSET_TOO_SMALL', message: /3 dedicated vCPUs.*only 2/ });
  t.throws(() => planDedicatedCpus(2, [1, 1]), { code: 'CGROUP_CPUSET_TOO_SMALL' }, 'duplicates do not count twice');
  t.throws(() => planDedicatedCpus(1, []), { code: 'CGROUP_CPUSET_TOO_SMALL' });
  t.throws(() => planDedicatedCpus(0, [0]), { code: 'CGROUP_INVALID_RESOURCES' });
  t.throws(() => planDedicatedCpus(1, [-1]), { code: 'CGROUP_INVALID_RESOURCES' });
});

t.test('stats parsing', async (t) => {
  t.same(
    [...parseKeyValues('usage_usec 1234\nuser_usec 1000\n\nbad\n').entries()],
    [
      ['usage_usec', 1234],
      ['user_usec', 1000],
    ],
  );
  t.same(
    v2StatsFromFiles({
      'cpu.stat': 'usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n',
      'memory.current': '4096\n',
      'memory.peak': '8192\n',
      'memory.events': 'low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n',
      'pids.current': '7\n',
    }),
    { cpuUsageUsec: 1234, memoryCurrent: 4096, memoryPeak: 8192, oomEvents: 2, oomKills: 1, pidsCurrent: 7 },
  );
  t.same(v2StatsFromFiles({ 'cpu.stat': 'usage_usec 5\n' }), { cpuUsageUsec: 5 }, 'absent files leave fields out');
  t.same(
    v1StatsFromFiles({
      'cpuacct.usage': '1234567\n',
      'memory.usage_in_bytes': '4096\n',
      'memory.max_usage_in_bytes': '8192\n',
      'memory.oom_control': 'oom_kill_disable 0\nunder_oom 1\noom_kill 3\n',
      'memory.failcnt': '9\n',
      'pids.current': '2\n',
    }),
    { cpuUsageUsec: 1234, memoryCurrent: 4096, memoryPeak: 8192, oomKills: 3, underOom: true, memoryFailcnt: 9, pidsCurrent: 2 },
  );
  t.same(v1StatsFromFiles({ 'memory.oom_control': 'oom_kill_disable 0\nunder_oom 0\n' }), { underOom: false }, 'old kernels lack oom_kill');
});
