// qemu-sandbox.ts and the launcher's sandbox flags: qemuUser resolved from a passwd file (missing, root, uid 0), the KVM group, the paths a VM's QEMU gets, and flags that refuse root, relative paths and "..".
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { launcherArgv } from '../../src/qemu/launch.js';
import { launcherSandbox, qemuRunDirOf, resolveQemuUser } from '../../src/daemon/qemu-sandbox.js';
import type { VirtualMachineInstance } from '../../src/api/types.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-qsb-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
const passwd = path.join(dir, 'passwd');
fs.writeFileSync(passwd, 'root:x:0:0:root:/root:/bin/bash\nvmlet-qemu:x:995:993::/nonexistent:/usr/sbin/nologin\nzero:x:0:5::/:/bin/sh\n');
const noKvm = path.join(dir, 'no-kvm');

t.test('resolveQemuUser', async (t) => {
  t.same(resolveQemuUser('vmlet-qemu', { passwdPath: passwd, kvmDevice: noKvm }), { name: 'vmlet-qemu', uid: 995, gid: 993, groups: [] });
  t.equal(resolveQemuUser('root', { passwdPath: passwd }), undefined, 'root: no sandbox user');
  t.throws(() => resolveQemuUser('nobody-here', { passwdPath: passwd }), { code: 'QEMU_USER_MISSING', message: /useradd/ });
  t.throws(() => resolveQemuUser('zero', { passwdPath: passwd }), { code: 'CONFIG_INVALID', message: /uid 0/ });
  t.throws(() => resolveQemuUser('vmlet-qemu', { passwdPath: path.join(dir, 'absent') }), { code: 'QEMU_USER_MISSING' });
  // A device file of group 1234 with g+rw: that group is added; without g+rw it is not.
  const dev = path.join(dir, 'kvm');
  fs.writeFileSync(dev, '');
  fs.chownSync(dev, 0, 1234);
  fs.chmodSync(dev, 0o660);
  t.same(resolveQemuUser('vmlet-qemu', { passwdPath: passwd, kvmDevice: dev })?.groups, [1234], "the KVM device's group");
  fs.chmodSync(dev, 0o600);
  t.same(resolveQemuUser('vmlet-qemu', { passwdPath: passwd, kvmDevice: dev })?.groups, [], 'not without g+rw');
});

t.test('launcherSandbox: the VM paths QEMU gets', async (t) => {
  const user = { name: 'vmlet-qemu', uid: 995, gid: 993, groups: [] };
  const vmi = {
    metadata: { name: 'a', namespace: 'default', uid: 'u1' },
    spec: { domain: { firmware: { kernelBoot: { hostPath: { kernelPath: '/srv/k', initrdPath: '/srv/i' } } }, devices: {} } },
  } as unknown as VirtualMachineInstance;
  const s = launcherSandbox(vmi, user, { runDir: '/run/vmlet/vms/u1', scratchDir: '/var/lib/vmlet/scratch/u1', qemuBinary: '/usr/bin/qemu-system-x86_64' });
  t.same(s, {
    user: { uid: 995, gid: 993, groups: [] },
    mountNs: true,
    bindRo: ['/srv/k', '/srv/i'],
    bindRw: ['/run/vmlet/vms/u1/qemu', '/var/lib/vmlet/scratch/u1'],
  });
  t.equal(qemuRunDirOf('/run/vmlet/vms/u1'), '/run/vmlet/vms/u1/qemu');
  const local = launcherSandbox({ ...vmi, spec: { domain: { devices: {} } } } as unknown as VirtualMachineInstance, user, {
    runDir: '/r',
    qemuBinary: '/opt/qemu/bin/qemu',
  });
  t.same(local.bindRo, ['/opt/qemu/bin/qemu'], 'a QEMU outside /usr is bound too');
});

t.test('launcherArgv sandbox flags', async (t) => {
  const base = { uid: 'u1', socket: '/run/l.sock', runDir: '/run/vms/u1' };
  const sandbox = { user: { uid: 995, gid: 993, groups: [36] }, mountNs: true, bindRo: ['/srv/k'], bindRw: ['/run/vms/u1/qemu'] };
  t.same(launcherArgv({ ...base, sandbox }).slice(6), [
    '--qemu-user',
    '995:993:36',
    '--mount-ns',
    'yes',
    '--bind-ro',
    '/srv/k',
    '--bind-rw',
    '/run/vms/u1/qemu',
  ]);
  t.throws(() => launcherArgv({ ...base, sandbox: { ...sandbox, user: { uid: 0, gid: 0, groups: [] } } }), { code: 'LAUNCH_BAD_ARGUMENT' }, 'never root');
  t.throws(() => launcherArgv({ ...base, sandbox: { ...sandbox, bindRo: ['relative/k'] } }), { code: 'LAUNCH_BAD_ARGUMENT' }, 'absolute paths only');
  t.throws(() => launcherArgv({ ...base, sandbox: { ...sandbox, bindRw: ['/run/vms/../../etc'] } }), { code: 'LAUNCH_BAD_ARGUMENT' }, 'no ..');
  t.throws(
    () => launcherArgv({ ...base, sandbox: { ...sandbox, user: { uid: 1, gid: 1, groups: [1, 2, 3, 4, 5] } } }),
    { code: 'LAUNCH_BAD_ARGUMENT' },
    'at most 4 groups',
  );
});
