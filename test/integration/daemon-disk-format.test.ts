// hostDisk formats with a real guest: the format is read once and kept (a guest that writes a qcow2 header naming /etc/shadow into its raw disk still gets raw after a restart), a qcow2 with a backing file is refused, a qcow2 hostDisk works.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tap from 'tap';
import YAML from 'yaml';
import { daemonSkipReason, READY_MARKER, runInGuest, startTestDaemon, TEST_HOST_PATHS, vmObject, vmiObject, type TestDaemon } from '../support/daemon.js';
import { which } from '../support/which.js';
import { skipWith } from '../support/skip.js';

const skip = daemonSkipReason() || (which('qemu-img') ? false : 'qemu-img is missing (apt-get install qemu-utils)');

function hostDiskSpec(file: string): { disks: Array<Record<string, unknown>>; volumes: Array<Record<string, unknown>> } {
  return { disks: [{ name: 'data', disk: { bus: 'virtio' } }], volumes: [{ name: 'data', hostDisk: { path: file, type: 'Disk' } }] };
}

/** The `driver=` of the format node QEMU got for the VMI's first disk. */
function formatDriver(d: TestDaemon, uid: string): string | undefined {
  const qemu = d.vmProcesses().find((p) => p.argv[0]?.includes('qemu-system') && p.argv.join(' ').includes(uid));
  const node = qemu?.argv.find((a) => a.includes('node-name=vol0,'));
  return /driver=([a-z0-9]+)/.exec(node ?? '')?.[1];
}

tap.test('a raw hostDisk stays raw after its guest wrote a qcow2 header naming /etc/shadow', { skip }, async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-fmt-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  // The evil header sits at 1 MiB of a raw disk; the guest copies it to sector 0.
  const evil = path.join(work, 'evil.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/shadow', '-u', evil, '16M']);
  const disk = path.join(work, 'disk.raw');
  fs.writeFileSync(disk, Buffer.alloc(16 * 1024 * 1024));
  const fd = fs.openSync(disk, 'r+');
  fs.writeSync(fd, fs.readFileSync(evil).subarray(0, 4096), 0, 4096, 1024 * 1024);
  fs.closeSync(fd);

  const d = await startTestDaemon(t);
  await d.apply(YAML.stringify(vmObject('fmt', { runStrategy: 'Always', ...hostDiskSpec(disk) })));
  const first = await d.waitPhase('fmt', 'Running', 90_000);
  t.equal(formatDriver(d, first.metadata.uid), 'raw', 'first sight: QEMU is told raw');
  t.match((first.status as { volumeStatus?: unknown }).volumeStatus, [{ name: 'data', format: 'raw', size: 16 * 1024 * 1024 }], 'status.volumeStatus says raw');
  await d.waitConsole(first.metadata.uid, READY_MARKER, 1, 120_000);
  await runInGuest(
    d,
    'fmt',
    first.metadata.uid,
    'dd if=/dev/vda of=/dev/vda bs=512 skip=2048 seek=0 count=8 conv=notrunc,fsync 2>/dev/null; head -c 3 /dev/vda; echo " <hdr"',
    'QFI',
  );
  t.equal(fs.readFileSync(disk).subarray(0, 4).toString('latin1'), 'QFI\xfb', 'the guest wrote a qcow2 header into sector 0 of its raw disk');

  await d.cliOk(['restart', 'fmt']);
  const second = await d.waitPhase('fmt', 'Running', 90_000, (o) => o.metadata.uid !== first.metadata.uid);
  t.equal(formatDriver(d, second.metadata.uid), 'raw', 'after the restart QEMU is still told raw (the recorded format), so /etc/shadow is never opened');
  await d.waitConsole(second.metadata.uid, READY_MARKER, 1, 120_000);
  await runInGuest(d, 'fmt', second.metadata.uid, 'head -c 3 /dev/vda; echo " <again"', 'QFI <again');
  t.pass('the guest sees its own bytes, as raw');
  await d.cliOk(['delete', 'vm', 'fmt', '--wait']);
});

tap.test('hostDisk: a qcow2 with a backing file is refused; a plain qcow2 runs as qcow2', { skip }, async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-fmt-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  const evil = path.join(work, 'evil.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/shadow', '-u', evil, '16M']);
  const good = path.join(work, 'good.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', good, '32M']);

  const d = await startTestDaemon(t);
  await d.apply(YAML.stringify(vmiObject('evil', hostDiskSpec(evil))));
  const failed = await d.waitPhase('evil', 'Failed', 60_000);
  t.match(failed.status?.message, /backing file.*\/etc\/shadow/, 'the message names the backing file');
  t.match(failed.status?.message, /IMAGE_BACKING_FILE_REFUSED|qemu-img convert/, 'and says what to do');

  await d.apply(YAML.stringify(vmiObject('good', hostDiskSpec(good))));
  const ok = await d.waitPhase('good', 'Running', 90_000);
  t.equal(formatDriver(d, ok.metadata.uid), 'qcow2', 'QEMU is told qcow2 for a qcow2 hostDisk');
  t.match(
    (ok.status as { volumeStatus?: unknown }).volumeStatus,
    [{ name: 'data', format: 'qcow2', size: 32 * 1024 * 1024 }],
    'status.volumeStatus says qcow2 and its virtual size',
  );
});

tap.test('hostDisk on a block device (a loop device): QEMU opens it as host_device', { skip }, async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-fmt-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  const file = path.join(work, 'block.img');
  fs.writeFileSync(file, Buffer.alloc(0));
  fs.truncateSync(file, 32 * 1024 * 1024);
  let loop: string;
  try {
    loop = execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim();
  } catch (e) {
    skipWith(t, `no loop device here: ${(e as Error).message.split('\n')[0]}`);
    return;
  }
  t.teardown(() => void execFileSync('losetup', ['-d', loop]));
  // A block device is a host path like any other: its folder must be allowed.
  const d = await startTestDaemon(t, { config: { hostPaths: { allow: [...TEST_HOST_PATHS, '/dev'] } } });
  await d.apply(YAML.stringify(vmiObject('blk', hostDiskSpec(loop))));
  const vmi = await d.waitPhase('blk', 'Running', 90_000);
  const node = d
    .vmProcesses()
    .find((p) => p.argv[0]?.includes('qemu-system') && p.argv.join(' ').includes(vmi.metadata.uid))
    ?.argv.find((a) => a.includes('node-name=vol0-file'));
  t.match(node, /^driver=host_device,/, 'the protocol node is host_device');
  t.match((vmi.status as { volumeStatus?: unknown }).volumeStatus, [{ name: 'data', format: 'raw', size: 32 * 1024 * 1024 }], 'raw, with the device size');
});
