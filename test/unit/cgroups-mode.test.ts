import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import {
  CGROUP2_SUPER_MAGIC,
  TMPFS_MAGIC,
  checkStatfsType,
  clearCgroupLayoutCache,
  detectCgroupLayout,
  layoutFromMountinfo,
  parseMountinfo,
} from '../../src/cgroups/index.js';

// Debian 12 / RHEL 8 style: systemd hybrid (tmpfs root, v1 controllers, cgroup2 at unified)
const HYBRID = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:5 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
30 25 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
31 30 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:29 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:6 - cgroup cgroup rw,xattr,name=systemd
33 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:7 - cgroup cgroup rw,cpu,cpuacct
34 30 0:31 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,memory
35 30 0:32 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpuset
36 30 0:33 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,pids
37 30 0:34 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,freezer
38 30 0:35 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,blkio
39 30 0:36 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,net_cls,net_prio
`;

// Legacy: like hybrid without the cgroup2 mount
const V1 = HYBRID.split('\n')
  .filter((l) => !l.includes('cgroup2'))
  .join('\n');

// Debian 12 default: pure v2
const V2 = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:5 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
28 25 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
29 25 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:5 - securityfs securityfs rw
`;

// A container: cgroup2 namespaced root, plus an unrelated cgroup mount elsewhere
const V2_CONTAINER = `600 500 0:60 / / rw,relatime - overlay overlay rw
610 600 0:65 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
611 610 0:24 /kubepods.slice/pod1 /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup ro,nsdelegate
612 600 0:70 / /other/cgroup rw - cgroup cgroup rw,memory
`;

t.test('parseMountinfo', async (t) => {
  const m = parseMountinfo(HYBRID);
  t.equal(m.length, 12);
  const cpu = m.find((e) => e.mountPoint === '/sys/fs/cgroup/cpu,cpuacct');
  t.same(cpu, {
    mountId: 33,
    parentId: 30,
    root: '/',
    mountPoint: '/sys/fs/cgroup/cpu,cpuacct',
    fsType: 'cgroup',
    source: 'cgroup',
    superOptions: ['rw', 'cpu', 'cpuacct'],
  });
  const esc = parseMountinfo('40 30 0:37 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\ngarbage line\n');
  t.equal(esc.length, 1);
  t.equal(esc[0]?.mountPoint, '/mnt/with space');
  t.same(parseMountinfo(''), []);
});

t.test('hybrid', async (t) => {
  const l = layoutFromMountinfo(HYBRID, '/sys/fs/cgroup');
  t.equal(l.mode, 'hybrid');
  t.equal(l.unified, '/sys/fs/cgroup/unified');
  t.equal(l.hierarchies['cpu'], '/sys/fs/cgroup/cpu,cpuacct');
  t.equal(l.hierarchies['cpuacct'], '/sys/fs/cgroup/cpu,cpuacct', 'co-mounted share a mount point');
  t.equal(l.hierarchies['memory'], '/sys/fs/cgroup/memory');
  t.equal(l.hierarchies['name=systemd'], '/sys/fs/cgroup/systemd');
  t.equal(l.hierarchies['net_prio'], '/sys/fs/cgroup/net_cls,net_prio');
  t.notOk('rw' in l.hierarchies);
  t.notOk('xattr' in l.hierarchies);
});

t.test('pure v1', async (t) => {
  const l = layoutFromMountinfo(V1, '/sys/fs/cgroup');
  t.equal(l.mode, 'v1');
  t.equal(l.unified, undefined);
  t.equal(l.hierarchies['freezer'], '/sys/fs/cgroup/freezer');
});

t.test('pure v2', async (t) => {
  const l = layoutFromMountinfo(V2, '/sys/fs/cgroup');
  t.same(l, { mode: 'v2', root: '/sys/fs/cgroup', unified: '/sys/fs/cgroup', hierarchies: {} });
  t.equal(layoutFromMountinfo(V2, '/sys/fs/cgroup/').mode, 'v2', 'trailing slash');
});

t.test('container: only mounts under the root count', async (t) => {
  const l = layoutFromMountinfo(V2_CONTAINER, '/sys/fs/cgroup');
  t.equal(l.mode, 'v2');
  t.equal(l.unified, '/sys/fs/cgroup');
});

t.test('a v2 hierarchy with only a named v1 hierarchy is v2', async (t) => {
  const text = `${V2}40 28 0:40 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n`;
  t.equal(layoutFromMountinfo(text, '/sys/fs/cgroup').mode, 'v2');
});

t.test('the later mount on a point hides the earlier', async (t) => {
  const text = `${V1}50 30 0:50 / /sys/fs/cgroup/memory rw - tmpfs tmpfs rw\n`;
  const l = layoutFromMountinfo(text, '/sys/fs/cgroup');
  t.equal(l.hierarchies['memory'], undefined);
  t.equal(l.mode, 'v1');
});

t.test('nothing mounted', async (t) => {
  t.throws(() => layoutFromMountinfo('22 1 8:1 / / rw - ext4 /dev/sda1 rw\n', '/sys/fs/cgroup'), { code: 'CGROUP_NOT_MOUNTED' });
  t.throws(() => layoutFromMountinfo(V2, '/elsewhere'), { code: 'CGROUP_NOT_MOUNTED' });
});

t.test('statfs cross-check', async (t) => {
  const v2 = layoutFromMountinfo(V2, '/sys/fs/cgroup');
  const hy = layoutFromMountinfo(HYBRID, '/sys/fs/cgroup');
  t.doesNotThrow(() => checkStatfsType(v2, CGROUP2_SUPER_MAGIC));
  t.doesNotThrow(() => checkStatfsType(hy, TMPFS_MAGIC));
  t.throws(() => checkStatfsType(v2, TMPFS_MAGIC), { code: 'CGROUP_MODE_MISMATCH' });
  t.throws(() => checkStatfsType(hy, CGROUP2_SUPER_MAGIC), { code: 'CGROUP_MODE_MISMATCH' });
});

t.test('detectCgroupLayout reads the file once and caches', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlet-mountinfo-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'mountinfo');
  await writeFile(file, HYBRID);
  clearCgroupLayoutCache();
  const a = await detectCgroupLayout({ root: '/sys/fs/cgroup', mountinfoPath: file });
  t.equal(a.mode, 'hybrid');
  await writeFile(file, V2);
  const b = await detectCgroupLayout({ root: '/sys/fs/cgroup', mountinfoPath: file });
  t.equal(b, a, 'cached object');
  clearCgroupLayoutCache();
  const c = await detectCgroupLayout({ root: '/sys/fs/cgroup', mountinfoPath: file });
  t.equal(c.mode, 'v2', 'after clearing the cache');
  await t.rejects(detectCgroupLayout({ root: '/sys/fs/cgroup', mountinfoPath: join(dir, 'missing') }), { code: 'CGROUP_MOUNTINFO_UNREADABLE' });
  clearCgroupLayoutCache();
});

t.test('this host (real /proc/self/mountinfo)', async (t) => {
  clearCgroupLayoutCache();
  try {
    const l = await detectCgroupLayout({ root: '/sys/fs/cgroup', mountinfoPath: '/proc/self/mountinfo', statfs: true });
    t.ok(['v1', 'hybrid', 'v2'].includes(l.mode), `mode ${l.mode}`);
  } catch (e) {
    t.match(e, { code: 'CGROUP_NOT_MOUNTED' }, 'no cgroups here');
  }
  clearCgroupLayoutCache();
});
