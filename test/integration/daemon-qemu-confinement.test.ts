// Standalone QEMU confined: it runs as the unprivileged qemuUser with no capabilities, no_new_privs and seccomp, in a private mount namespace that shows only the system folders and the VM's own paths; its disks still work. A QEMU without seccomp is refused, a missing qemuUser stops the daemon, and `qemuUser: root` is the old way.
import fs from 'node:fs';
import path from 'node:path';
import tap from 'tap';
import YAML from 'yaml';
import {
  daemonSkipReason,
  isQemu,
  runDaemonUntilExit,
  guestKernel,
  manifestVMI,
  READY_MARKER,
  startTestDaemon,
  vmiObject,
  waitFor,
} from '../support/daemon.js';
import { resolveQemuUser } from '../../src/daemon/qemu-sandbox.js';

const skip = daemonSkipReason();

function qemuUserSkip(): string | false {
  try {
    return resolveQemuUser('vmlet-qemu') ? false : 'no vmlet-qemu';
  } catch (e) {
    return `the user vmlet-qemu does not exist (npm run setup creates it): ${(e as Error).message}`;
  }
}

/** /proc/PID/status as key → value. */
function procStatus(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const l of fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const i = l.indexOf(':');
    if (i > 0) out[l.slice(0, i)] = l.slice(i + 1).trim();
  }
  return out;
}

tap.test('QEMU runs unprivileged, without capabilities, under seccomp, in its own mount namespace', { skip: skip || qemuUserSkip() }, async (t) => {
  const user = resolveQemuUser('vmlet-qemu')!;
  const d = await startTestDaemon(t);
  const disk = path.join(d.root, 'data.img');
  fs.writeFileSync(disk, Buffer.alloc(4 * 1024 * 1024));
  fs.chmodSync(disk, 0o600); // root's file: QEMU gets it by fd
  const vmi = vmiObject('confined', {
    disks: [
      { name: 'data', disk: { bus: 'virtio' } },
      { name: 'scratch', disk: { bus: 'virtio' } },
    ],
    volumes: [
      { name: 'data', hostDisk: { path: disk, type: 'Disk' } },
      { name: 'scratch', emptyDisk: { capacity: '16Mi' } },
    ],
  });
  await d.apply(YAML.stringify(vmi));
  const v = await d.waitPhase('confined', 'Running', 90_000).catch(async (e: Error) => {
    throw new Error(`${e.message.slice(0, 200)}\nstatus: ${JSON.stringify((await d.vmi('confined'))?.status)}`);
  });
  const pid = v.status!.vmlet!.qemuPid!;
  const uid = v.metadata.uid;
  const st = procStatus(pid);
  t.equal(st['Uid'], `${user.uid}\t${user.uid}\t${user.uid}\t${user.uid}`, 'every uid is vmlet-qemu');
  t.equal(st['Gid'], `${user.gid}\t${user.gid}\t${user.gid}\t${user.gid}`, 'every gid is its group');
  t.equal(st['Groups'], user.groups.join(' '), 'no supplementary groups but the KVM device group');
  for (const set of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) t.equal(st[set], '0000000000000000', `${set} is empty`);
  t.equal(st['NoNewPrivs'], '1', 'no_new_privs');
  t.equal(st['Seccomp'], '2', 'seccomp filter mode (-sandbox)');

  t.not(fs.readlinkSync(`/proc/${pid}/ns/mnt`), fs.readlinkSync('/proc/self/ns/mnt'), 'its own mount namespace');
  const root = `/proc/${pid}/root`;
  const seen = (p: string): boolean => fs.existsSync(path.join(root, p));
  for (const hidden of [
    '/etc/shadow',
    '/etc/passwd',
    '/root',
    '/home',
    '/var/lib',
    path.join(d.stateDir, 'daemon.lock'),
    path.join(d.runDir, 'launcher.sock'),
    path.join(d.vmRunDir(uid), 'launcher.pid'),
    disk,
  ]) {
    t.notOk(seen(hidden), `${hidden} is not in its view`);
  }
  t.ok(seen('/usr/bin/qemu-system-x86_64'), 'the system folders are');
  t.ok(seen(guestKernel), 'its kernel is (read-only)');
  t.ok(seen(path.join(d.vmRunDir(uid), 'qemu')), 'its own run folder is');
  t.ok(seen(path.join(d.stateDir, 'scratch', uid)), 'its scratch folder (the emptyDisk) is');
  const mounts = fs.readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n');
  const kernelMount = mounts.find((l) => l.split(' ')[4] === guestKernel);
  t.match(kernelMount ?? '', / ro,|ro,|\bro\b/, 'the kernel is mounted read-only');
  const rootMount = mounts.find((l) => l.split(' ')[4] === '/');
  t.match(rootMount ?? '', /\bro\b/, 'its root is read-only');

  // The launcher's own files stay root's: QEMU cannot rewrite the pids the daemon trusts.
  const launcherPid = fs.statSync(path.join(d.vmRunDir(uid), 'launcher.pid'));
  t.equal(launcherPid.uid, 0, 'launcher.pid is root-owned');
  t.equal(fs.statSync(d.vmRunDir(uid)).uid, 0, 'the run dir is root-owned');

  // The guest sees both disks: QEMU opened the root-owned one through the fd the daemon passed.
  await d.waitConsole(uid, READY_MARKER, 1, 90_000);
  await d.cli(['console', 'confined'], { input: 'echo SIZES $(cat /sys/block/vda/size) $(cat /sys/block/vdb/size)\n', timeoutMs: 20_000 });
  await waitFor('the guest to print its disk sizes', () => /SIZES \d+ \d+/.test(d.consoleText(uid)), 15_000);
  t.match(d.consoleText(uid), /SIZES 8192 32768/, 'the guest sees the 4 MiB hostDisk and the 16 MiB emptyDisk');
});

tap.test('a hostDisk that is a directory is refused by the daemon, which opens it for QEMU', { skip: skip || qemuUserSkip() }, async (t) => {
  const d = await startTestDaemon(t);
  const dir = path.join(d.root, 'not-a-disk');
  fs.mkdirSync(dir);
  await d.apply(
    YAML.stringify(
      vmiObject('dir', { disks: [{ name: 'data', disk: { bus: 'virtio' } }], volumes: [{ name: 'data', hostDisk: { path: dir, type: 'Disk' } }] }),
    ),
  );
  const v = await d.waitPhase('dir', 'Failed', 60_000);
  t.match(v.status?.message, /HOSTDISK_NOT_A_DISK|is a directory, not a disk image/, `a clear reason (${v.status?.message ?? ''})`);
  t.same(d.vmProcesses().filter(isQemu), [], 'no QEMU runs');
});

tap.test('a QEMU without seccomp is refused with QEMU_NO_SECCOMP', { skip }, async (t) => {
  const dir = fs.mkdtempSync(path.join('/tmp', 'vmlet-noseccomp-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // A real QEMU behind a wrapper that fails -sandbox as a build without libseccomp does.
  const wrapper = path.join(dir, 'qemu-no-seccomp');
  fs.writeFileSync(
    wrapper,
    '#!/bin/sh\nfor a in "$@"; do [ "$a" = -sandbox ] && { echo "qemu-system-x86_64: -sandbox on: There is no option group \'sandbox\'" >&2; exit 1; }; done\nexec /usr/bin/qemu-system-x86_64 "$@"\n',
    { mode: 0o755 },
  );
  const d = await startTestDaemon(t, { config: { qemuBinary: wrapper } });
  await d.apply(manifestVMI('noseccomp'));
  const v = await d.waitPhase('noseccomp', 'Failed', 60_000);
  const text = JSON.stringify(v.status);
  t.match(text, /QEMU_NO_SECCOMP|no seccomp/, 'the VMI failed, saying why');
  t.same(d.vmProcesses(), [], 'no QEMU was started');
});

tap.test('a qemuUser that does not exist stops the daemon with QEMU_USER_MISSING', { skip }, async (t) => {
  const root = fs.mkdtempSync(path.join('/tmp', 'vmlet-nouser-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const cfg = path.join(root, 'vmlet.yaml');
  fs.writeFileSync(cfg, YAML.stringify({ qemuUser: 'vmlet-no-such-user', network: { enabled: false }, cgroupParent: '' }));
  const r = await runDaemonUntilExit(cfg, root);
  t.equal(r.code, 1, 'exits 1');
  t.match(r.out, /QEMU_USER_MISSING/, 'with the code');
  t.match(r.out, /useradd/, 'saying how to make it');
});

tap.test('qemuUser: root keeps the old way, and says so', { skip }, async (t) => {
  const d = await startTestDaemon(t, { config: { qemuUser: 'root' } });
  await d.apply(manifestVMI('asroot'));
  const v = await d.waitPhase('asroot', 'Running', 90_000);
  t.equal(procStatus(v.status!.vmlet!.qemuPid!)['Uid']?.split('\t')[0], '0', 'QEMU is root');
  const warned = await waitFor('the warning', () => fs.readFileSync(d.logFile, 'utf8').includes('qemuUser is root'), 5_000, 100);
  t.ok(warned, 'the daemon warns at start');
});
