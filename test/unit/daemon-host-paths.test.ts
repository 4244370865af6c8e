// Standalone host paths: every hostDisk and kernelBoot path of a spec, resolved through symlinks (also for a file yet to be made), and refused unless below an allowed folder, itself resolved.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import type { VirtualMachineInstance } from '../../src/api/types.js';
import { hostPathsOf, refusedHostPaths, resolvedPath } from '../../src/daemon/host-paths.js';

type Spec = VirtualMachineInstance['spec'];

const work = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-hp-')));
t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
const allowed = path.join(work, 'vms');
const outside = path.join(work, 'outside');
fs.mkdirSync(allowed);
fs.mkdirSync(outside);
fs.writeFileSync(path.join(allowed, 'disk.img'), '');
fs.writeFileSync(path.join(outside, 'secret'), '');
fs.symlinkSync(path.join(outside, 'secret'), path.join(allowed, 'link-out'));
fs.symlinkSync(outside, path.join(allowed, 'dir-out'));
fs.symlinkSync(allowed, path.join(work, 'vms-link'));

// Only what hostPathsOf reads; the rest of a spec does not matter here.
const spec = (volumes: Spec['volumes'], kernel?: { kernelPath?: string; initrdPath?: string }): Spec =>
  ({ domain: { devices: {}, ...(kernel ? { firmware: { kernelBoot: { hostPath: kernel } } } : {}) }, volumes }) as unknown as Spec;

t.test('the paths a spec names', async (t) => {
  const s = spec(
    [
      { name: 'a', hostDisk: { path: '/x/a.img', type: 'Disk' } },
      { name: 'b', emptyDisk: { capacity: '1Mi' } },
    ],
    { kernelPath: '/k', initrdPath: '/i' },
  );
  t.same(
    hostPathsOf(s).map((u) => [u.field, u.path]),
    [
      ['volumes[0].hostDisk.path', '/x/a.img'],
      ['domain.firmware.kernelBoot.hostPath.kernelPath', '/k'],
      ['domain.firmware.kernelBoot.hostPath.initrdPath', '/i'],
    ],
  );
});

t.test('symlinks resolved, also for a file yet to be made', async (t) => {
  t.equal(resolvedPath(path.join(allowed, 'link-out')), path.join(outside, 'secret'));
  t.equal(resolvedPath(path.join(allowed, 'dir-out', 'new.img')), path.join(outside, 'new.img'), 'a missing file below a symlinked folder');
  t.equal(resolvedPath(path.join(allowed, 'a', 'b', 'new.img')), path.join(allowed, 'a', 'b', 'new.img'), 'missing folders kept as named');
  t.equal(resolvedPath(path.join(allowed, '..', 'outside', 'secret')), path.join(outside, 'secret'), '.. resolved');
});

t.test('what is refused', async (t) => {
  const allow = [allowed];
  const ok = (p: string, type: 'Disk' | 'DiskOrCreate' = 'Disk'): number => refusedHostPaths(spec([{ name: 'd', hostDisk: { path: p, type } }]), allow).length;
  t.equal(ok(path.join(allowed, 'disk.img')), 0, 'a file in the folder');
  t.equal(ok(path.join(allowed, 'new', 'disk.img'), 'DiskOrCreate'), 0, 'a file to be made below it');
  t.equal(ok(path.join(outside, 'secret')), 1, 'a file elsewhere');
  t.equal(ok('/etc/shadow'), 1);
  t.equal(ok(path.join(allowed, 'link-out')), 1, 'a symlink out of the folder');
  t.equal(ok(path.join(allowed, 'dir-out', 'x.img'), 'DiskOrCreate'), 1, 'a new file below a symlinked folder that leads out');
  t.equal(ok(path.join(allowed, '..', 'outside', 'secret')), 1, 'climbing out with ..');
  t.equal(ok(allowed), 1, 'the folder itself is not a file below it');
  t.equal(
    refusedHostPaths(spec([{ name: 'd', hostDisk: { path: path.join(allowed, 'disk.img'), type: 'Disk' } }]), []).length,
    1,
    'nothing is allowed by default',
  );
  t.equal(
    refusedHostPaths(spec([{ name: 'd', hostDisk: { path: path.join(work, 'vms-link', 'disk.img'), type: 'Disk' } }]), allow).length,
    0,
    'a path through a symlink that stays inside',
  );
  t.equal(
    refusedHostPaths(spec([{ name: 'd', hostDisk: { path: path.join(allowed, 'disk.img'), type: 'Disk' } }]), [path.join(work, 'vms-link')]).length,
    0,
    'an allowed folder that is itself a symlink',
  );
  const r = refusedHostPaths(spec([], { kernelPath: path.join(allowed, 'disk.img'), initrdPath: path.join(allowed, 'link-out') }), allow);
  t.equal(r.length, 1, 'kernelBoot paths too');
  t.equal(r[0]?.field, 'domain.firmware.kernelBoot.hostPath.initrdPath');
  t.equal(r[0]?.error.code, 'HOST_PATH_NOT_ALLOWED');
  t.match(r[0]?.error.message, /resolves to .*outside\/secret/, 'the message says where the symlink leads');
});
