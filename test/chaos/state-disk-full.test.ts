// Chaos: the state folder's file system is full (a 16 MiB tmpfs, filled to the last block) while a VM starts and while it runs: QEMU is started and kept, the user's pause is answered, and the status lands once there is room again.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import tap from 'tap';
import { daemonSkipReason, isAlive, manifestVMI, qemuProcessesFor, sleep, startTestDaemon, waitFor, type KubeObj } from '../support/daemon.js';

const skip = daemonSkipReason() || (process.getuid?.() === 0 ? false : 'needs root to mount a tmpfs');

/** Writes zeros into `file` until the file system says ENOSPC; returns the bytes written. */
function fill(file: string): number {
  const fd = fs.openSync(file, 'a');
  const chunk = Buffer.alloc(64 * 1024);
  let n = 0;
  try {
    for (;;) n += fs.writeSync(fd, chunk);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  } finally {
    fs.closeSync(fd);
  }
  // The last partial block too.
  const small = fs.openSync(file, 'a');
  try {
    for (;;) n += fs.writeSync(small, Buffer.alloc(512));
  } catch {
    /* full */
  } finally {
    fs.closeSync(small);
  }
  return n;
}

const condition = (o: KubeObj | undefined, type: string): string | undefined =>
  (o?.status?.conditions as Array<{ type: string; status: string }> | undefined)?.find((c) => c.type === type)?.status;

tap.test('a full state disk during a VM start and run loses nothing', { skip }, async (t) => {
  const d = await startTestDaemon(t, {
    beforeStart: ({ stateDir }) => {
      fs.mkdirSync(stateDir, { recursive: true });
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m,mode=0700', 'vmlet-test-full', stateDir]);
      return () => execFileSync('umount', ['-l', stateDir]);
    },
  });
  const filler = path.join(d.stateDir, 'filler');
  const log = (): string => fs.readFileSync(d.logFile, 'utf8');

  // The VMI is stored, then the disk fills before the daemon has written any of its start: the daemon is stopped
  // the moment the VMI's file lands, so that a quick start (a few ms to QEMU's launch record) cannot beat the fill.
  const vmiDir = path.join(d.stateDir, 'objects', 'virtualmachineinstances', 'default');
  fs.mkdirSync(vmiDir, { recursive: true, mode: 0o700 });
  let stopped = false;
  const watcher = fs.watch(vmiDir, (_event, file) => {
    if (stopped || file !== 'full.json') return;
    stopped = true;
    process.kill(d.pid, 'SIGSTOP');
  });
  const applied = d.apply(manifestVMI('full'));
  try {
    await waitFor('the VMI to be stored', () => stopped, 30_000, 1);
  } finally {
    watcher.close();
  }
  const filled = fill(filler);
  process.kill(d.pid, 'SIGCONT');
  await applied;
  t.ok(filled > 0, `the state disk is full (${filled} bytes of filler)`);
  t.throws(() => fs.writeFileSync(path.join(d.stateDir, 'probe'), 'x'), { code: 'ENOSPC' }, 'nothing more fits');
  const vmi = await waitFor('the VMI to be known', async () => d.vmi('full'), 10_000, 100);
  const qemu = await waitFor('QEMU to start although no status can be written', () => qemuProcessesFor(vmi.metadata.uid)[0], 60_000, 200);
  await waitFor('the failed status write in the log', async () => log().includes('status write failed'), 20_000, 200);
  await sleep(2_000);
  t.ok(isAlive(qemu.pid), 'QEMU runs on, not killed for the failed writes');
  t.not((await d.vmi('full'))?.status?.phase, 'Running', 'Running is not recorded yet');

  fs.rmSync(filler);
  const running = await d.waitPhase('full', 'Running', 60_000);
  t.equal(running.status?.vmlet?.qemuPid, qemu.pid, 'once there is room, Running lands with that same QEMU');

  // Full again while it runs: the user's pause is answered, the VM is kept, the condition lands later.
  fill(filler);
  const paused = await d.cli(['pause', 'full']);
  t.equal(paused.code, 0, `pause answers OK on a full disk (${paused.stderr.trim() || 'ok'})`);
  await sleep(2_000);
  t.ok(isAlive(qemu.pid), 'QEMU still runs');
  const qmp = await d.cli(['qmp', 'full', '{"execute":"query-status"}']);
  t.match(qmp.stdout, /"status": ?"paused"/, 'and is paused');
  fs.rmSync(filler);
  const after = await waitFor(
    'the Paused condition to land',
    async () => ((o) => (condition(o, 'Paused') === 'True' ? o : undefined))(await d.vmi('full')),
    40_000,
    250,
  );
  t.equal(after.status?.vmlet?.qemuPid, qemu.pid, 'the same QEMU throughout');
});
