// Unit tests for src/qemu/launch.ts: run-dir parsing, exit statuses, launcher argv, and isLiveProcessFor against a fake /proc tree.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { exitStatusCode, formatExitStatus, isLiveProcessFor, launcherArgv, parseExitStatus, processStartTime, readRunDir } from '../../src/qemu/launch.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'vmlet-unit-launch-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

t.test('exit statuses', async (t) => {
  t.same(parseExitStatus('exit=0\n'), { kind: 'exit', code: 0 });
  t.same(parseExitStatus('signal=9'), { kind: 'signal', signal: 9 });
  for (const bad of ['', 'exit=', 'exit=256', 'signal=-1', 'code=1', 'exit=1 extra']) {
    t.throws(() => parseExitStatus(bad), { code: 'LAUNCH_BAD_EXIT_STATUS' }, JSON.stringify(bad));
  }
  t.equal(formatExitStatus({ kind: 'exit', code: 3 }), 'exit=3');
  t.equal(formatExitStatus({ kind: 'signal', signal: 15 }), 'signal=15');
  t.equal(exitStatusCode({ kind: 'exit', code: 3 }), 3);
  t.equal(exitStatusCode({ kind: 'signal', signal: 9 }), 137);
});

t.test('launcherArgv', async (t) => {
  t.same(launcherArgv({ uid: 'u-1', socket: '/run/vmlet/launcher.sock', runDir: '/run/vmlet/vms/u-1' }), [
    '--uid',
    'u-1',
    '--socket',
    '/run/vmlet/launcher.sock',
    '--run-dir',
    '/run/vmlet/vms/u-1',
  ]);
  t.same(launcherArgv({ uid: 'u', socket: '/s', runDir: '/r', netns: '/run/netns/x', cgroups: ['/cg/a', '/cg/b'], lingerSeconds: 0 }), [
    '--uid',
    'u',
    '--socket',
    '/s',
    '--run-dir',
    '/r',
    '--netns',
    '/run/netns/x',
    '--cgroup',
    '/cg/a',
    '--cgroup',
    '/cg/b',
    '--linger',
    '0',
  ]);
  t.throws(() => launcherArgv({ uid: 'a b', socket: '/s', runDir: '/r' }), { code: 'LAUNCH_BAD_ARGUMENT' });
  t.throws(() => launcherArgv({ uid: '', socket: '/s', runDir: '/r' }), { code: 'LAUNCH_BAD_ARGUMENT' });
  t.throws(() => launcherArgv({ uid: 'u', socket: '/s', runDir: '/r', lingerSeconds: 1.5 }), { code: 'LAUNCH_BAD_ARGUMENT' });
});

t.test('readRunDir', async (t) => {
  const dir = path.join(tmp, 'run');
  mkdirSync(dir);
  t.same(await readRunDir(dir), {}, 'empty run dir');
  writeFileSync(path.join(dir, 'launcher.pid'), '100\n');
  t.same(await readRunDir(dir), { launcherPid: 100 }, 'launcher started, QEMU not yet');
  writeFileSync(path.join(dir, 'qemu.pid'), '101\n');
  t.same(await readRunDir(dir), { launcherPid: 100, qemuPid: 101 });
  writeFileSync(path.join(dir, 'exit-status'), 'signal=9\n');
  t.same(await readRunDir(dir), { launcherPid: 100, qemuPid: 101, exitStatus: { kind: 'signal', signal: 9 } });

  writeFileSync(path.join(dir, 'qemu.pid'), 'nonsense');
  await t.rejects(readRunDir(dir), { code: 'LAUNCH_RUNDIR_CORRUPT' });
  writeFileSync(path.join(dir, 'qemu.pid'), '0\n');
  await t.rejects(readRunDir(dir), { code: 'LAUNCH_RUNDIR_CORRUPT' });
  writeFileSync(path.join(dir, 'qemu.pid'), '101');
  writeFileSync(path.join(dir, 'exit-status'), 'exit=');
  await t.rejects(readRunDir(dir), { code: 'LAUNCH_RUNDIR_CORRUPT' });

  await t.rejects(readRunDir(path.join(tmp, 'missing')), { code: 'LAUNCH_RUNDIR_MISSING' });

  // What vmlet-launch writes now: the pid and its start time.
  writeFileSync(path.join(dir, 'exit-status'), 'exit=0');
  writeFileSync(path.join(dir, 'launcher.pid'), '100 123456\n');
  writeFileSync(path.join(dir, 'qemu.pid'), '101 123460\n');
  t.same(await readRunDir(dir), { launcherPid: 100, launcherStart: 123456, qemuPid: 101, qemuStart: 123460, exitStatus: { kind: 'exit', code: 0 } });
  writeFileSync(path.join(dir, 'qemu.pid'), '101 0\n');
  t.same((await readRunDir(dir)).qemuStart, undefined, 'a start time the launcher could not read (0) is none');
  writeFileSync(path.join(dir, 'qemu.pid'), '101 12x\n');
  await t.rejects(readRunDir(dir), { code: 'LAUNCH_RUNDIR_CORRUPT' });
});

t.test('isLiveProcessFor against a fake proc tree', async (t) => {
  const proc = path.join(tmp, 'proc');
  const uid = '6c1d6b0e-7a0e-4b9e-9a3c-0d8c5e1e2f10';
  const fake = (pid: number, stat: string, argv: string[]): void => {
    mkdirSync(path.join(proc, String(pid)), { recursive: true });
    writeFileSync(path.join(proc, String(pid), 'stat'), `${pid} ${stat}\n`);
    writeFileSync(path.join(proc, String(pid), 'cmdline'), argv.map((a) => `${a}\0`).join(''));
  };
  fake(10, '(vmlet-launch) S 1 10 10 0', ['/usr/lib/vmlet/vmlet-launch', '--uid', uid, '--socket', '/run/vmlet/l.sock']);
  fake(11, '(qemu-system-x86) S 10 10 10 0', ['/usr/bin/qemu-system-x86_64', '-name', `guest=default_vm,debug-threads=on`, '-uuid', uid]);
  fake(12, '(qemu-system-x86) S 10 10 10 0', ['/usr/bin/qemu-system-x86_64', '-uuid', '00000000-0000-4000-8000-000000000000']);
  fake(13, '(bash) S 1 13 13 0', ['bash']);
  fake(14, '(weird ) Z (name) Z 1 14 14 0', []);
  fake(15, '(weird ) R (name) R 1 15 15 0', ['x', `--uid=${uid}`]);

  t.ok(await isLiveProcessFor(10, uid, proc), 'launcher with --uid UID');
  t.ok(await isLiveProcessFor(11, uid, proc), 'QEMU with -uuid UID');
  t.notOk(await isLiveProcessFor(12, uid, proc), 'QEMU of another VMI (recycled pid)');
  t.notOk(await isLiveProcessFor(13, uid, proc), 'unrelated process on a recycled pid');
  t.notOk(await isLiveProcessFor(14, uid, proc), 'zombie, with parentheses in its comm');
  t.ok(await isLiveProcessFor(15, uid, proc), 'running, with parentheses in its comm');
  t.notOk(await isLiveProcessFor(99, uid, proc), 'no such pid');
  await t.rejects(isLiveProcessFor(0, uid, proc), { code: 'LAUNCH_BAD_ARGUMENT' });
  await t.rejects(isLiveProcessFor(10, '', proc), { code: 'LAUNCH_BAD_ARGUMENT' });
  t.ok(await isLiveProcessFor(process.pid, process.argv[1] ?? 'node'), 'the real /proc works too');

  // A recycled pid whose command line merely mentions the uid: only its start time tells it apart.
  const stat = (start: number): string => `(tail) S 1 16 16 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 ${start} 5000 100`;
  fake(16, stat(777777), ['tail', '-f', `/run/vmlet/vms/${uid}/qemu.log`]);
  t.equal(processStartTime(`16 ${stat(777777)}`), 777777, 'field 22 of stat');
  t.ok(await isLiveProcessFor(16, uid, proc), 'without a recorded start time the command line alone decides (old run dirs)');
  t.notOk(await isLiveProcessFor(16, uid, proc, 123456), 'a start time other than the one recorded: not ours');
  t.ok(await isLiveProcessFor(16, uid, proc, 777777), 'the recorded start time: ours');
});
