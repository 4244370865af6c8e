import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { validateVMI, type VirtualMachineInstance } from '../../src/api/index.js';
import { DISK_WAIT_BINARY, DISK_WAIT_IMAGE_PATH, claimDiskBytes, claimMountPath } from '../../src/api/pod-volumes.js';
import { claimDisk, containerDiskImage, resolveInRoot } from '../../src/daemon/pod-disks.js';

const POD = '0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b';
const OTHER = '11111111-2222-3333-4444-555555555555';
const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };

function cgroupOf(pod: string, cid: string): string {
  return `12:pids:/kubepods/besteffort/pod${pod}/${cid}\n11:memory:/kubepods/besteffort/pod${pod}/${cid}\n0::/\n`;
}

/** A fake /proc: the launcher (pid 10), and processes with a command line, a pod and a root folder. */
function fakeProc(t: { teardown(fn: () => void): void }): { root: string; proc(pid: number, argv: string[], pod: string): string } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-proc-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const proc = (pid: number, argv: string[], pod: string): string => {
    const dir = path.join(root, String(pid));
    fs.mkdirSync(path.join(dir, 'root'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'cmdline'), argv.map((a) => `${a}\0`).join(''));
    fs.writeFileSync(path.join(dir, 'cgroup'), cgroupOf(pod, `c${pid}`));
    return path.join(dir, 'root');
  };
  proc(10, ['/usr/libexec/vmlet/vmlet-launch'], POD);
  return { root, proc };
}

function vmi(volumes: unknown[], status?: unknown): VirtualMachineInstance {
  const v = validateVMI({
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'p', namespace: 'default', uid: 'u' },
    spec: { domain: { memory: { guest: '64Mi' }, devices: { disks: (volumes as Array<{ name: string }>).map((x) => ({ name: x.name })) } }, volumes },
  });
  return status === undefined ? v : { ...v, status: status as NonNullable<VirtualMachineInstance['status']> };
}

t.test('containerDisk: the one file in /disk/ of the waiting container of the same pod', async (t) => {
  const { root, proc } = fakeProc(t);
  const v = vmi([{ name: 'root', containerDisk: { image: 'debian:12' } }]);
  const vol = v.spec.volumes![0]!;
  const o = { procRoot: root, owner };
  await t.rejects(containerDiskImage(o, v, vol, 10), { code: 'IMAGE_NOT_FOUND', message: /not running in the launcher pod yet/ }, 'no container yet: wait');

  const other = proc(20, [DISK_WAIT_BINARY, 'root'], OTHER);
  fs.mkdirSync(path.join(other, 'disk'));
  fs.writeFileSync(path.join(other, 'disk', 'x.img'), Buffer.alloc(4096));
  await t.rejects(containerDiskImage(o, v, vol, 10), { code: 'IMAGE_NOT_FOUND' }, "another pod's container does not count");
  proc(21, [DISK_WAIT_BINARY, 'data'], POD);
  await t.rejects(containerDiskImage(o, v, vol, 10), { code: 'IMAGE_NOT_FOUND' }, "another volume's container does not count");

  const mine = proc(30, [DISK_WAIT_BINARY, 'root'], POD);
  await t.rejects(containerDiskImage(o, v, vol, 10), { code: 'IMAGE_NO_DISK', message: /\/disk: is not a folder/ });
  fs.mkdirSync(path.join(mine, 'disk'));
  await t.rejects(containerDiskImage(o, v, vol, 10), { code: 'IMAGE_NO_DISK', message: /holds 0 files/ });
  fs.symlinkSync('/etc/shadow', path.join(mine, 'disk', 'disk.img'));
  await t.rejects(containerDiskImage(o, v, vol, 10), { code: 'IMAGE_NO_DISK', message: /symlink/ }, 'a symlink would resolve on the node: refused');
  fs.rmSync(path.join(mine, 'disk', 'disk.img'));
  fs.writeFileSync(path.join(mine, 'disk', 'disk.img'), Buffer.alloc(1 << 20));
  const image = await containerDiskImage(o, v, vol, 10);
  t.same(image, { file: { path: path.join(mine, 'disk', 'disk.img') }, format: 'raw', virtualSize: 1 << 20, digest: '' });
  fs.writeFileSync(path.join(mine, 'disk', 'second.img'), '');
  await t.rejects(containerDiskImage(o, v, vol, 10), { code: 'IMAGE_NO_DISK', message: /holds 2 files/ });
});

t.test('claims: disk.img made sparse at the capacity less the overhead, kept when there, refused read-only when missing', async (t) => {
  const { root } = fakeProc(t);
  const o = { procRoot: root, owner };
  const status = {
    volumeStatus: [
      {
        name: 'data',
        target: '',
        persistentVolumeClaimInfo: { claimName: 'c1', volumeMode: 'Filesystem', capacity: { storage: '1Gi' }, filesystemOverhead: '0.055' },
      },
    ],
  };
  const v = vmi([{ name: 'data', persistentVolumeClaim: { claimName: 'c1' } }], status);
  const vol = v.spec.volumes![0]!;
  await t.rejects(claimDisk(o, v, vol, 10, false), { code: 'IMAGE_NO_DISK', message: /its mount: is not a folder/ });
  const mount = path.join(root, '10', 'root', claimMountPath('data'));
  fs.mkdirSync(mount, { recursive: true });
  await t.rejects(claimDisk(o, v, vol, 10, true), { code: 'IMAGE_NO_DISK', message: /read-only and has no disk.img/ });
  const made = await claimDisk(o, v, vol, 10, false);
  const want = claimDiskBytes(1 << 30, 0.055);
  t.equal(want, 967 * 1024 * 1024, '1Gi less 5.5%, rounded down to a MiB');
  t.same(made, { file: { path: path.join(mount, 'disk.img') }, format: 'raw', virtualSize: want, digest: '' });
  const st = fs.statSync(path.join(mount, 'disk.img'));
  t.equal(st.size, want);
  t.ok(st.blocks * 512 < 1 << 20, 'sparse');
  fs.truncateSync(path.join(mount, 'disk.img'), 4096);
  t.equal((await claimDisk(o, v, vol, 10, false)).virtualSize, 4096, 'an existing disk.img is used as it is (never truncated)');
  fs.rmSync(path.join(mount, 'disk.img'));
  await t.rejects(
    claimDisk(o, vmi([{ name: 'data', persistentVolumeClaim: { claimName: 'c1' } }]), vol, 10, false),
    { code: 'PREPARE_FAILED', message: /capacity/ },
    'no recorded capacity: no guess',
  );
});

t.test("vmlet's image keeps the waiting program where launcher pods' init container copies it from", async (t) => {
  const script = fs.readFileSync(new URL('../../scripts/build-image.mjs', import.meta.url), 'utf8');
  t.equal(/diskWait: '([^']+)'/.exec(script)?.[1], DISK_WAIT_IMAGE_PATH);
});

t.test('paths in a container resolve its symlinks inside its root, never on the node', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-root-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  fs.mkdirSync(path.join(root, 'run', 'vmlet-pvc', 'data'), { recursive: true });
  fs.mkdirSync(path.join(root, 'var'));
  fs.symlinkSync('/run', path.join(root, 'var', 'run'));
  fs.symlinkSync('../../etc', path.join(root, 'run', 'up'));
  t.equal(
    await resolveInRoot(root, '/var/run/vmlet-pvc/data'),
    path.join(root, 'run', 'vmlet-pvc', 'data'),
    'an absolute link (/var/run → /run) stays in the root',
  );
  t.equal(await resolveInRoot(root, '/run/up/shadow'), path.join(root, 'etc', 'shadow'), '".." cannot climb out of the root');
  fs.symlinkSync('/loop', path.join(root, 'loop'));
  await t.rejects(resolveInRoot(root, '/loop/x'), { code: 'IMAGE_NO_DISK' }, 'a link loop ends');
});
