// Chaos: the store refuses the VMI's status writes (its folder read-only) across a daemon restart and a pause: the VM is neither killed nor stranded, the pause is answered, and the change lands once the store takes writes again.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import tap from 'tap';
import { daemonSkipReason, isAlive, manifestVMI, sleep, startTestDaemon, waitFor, type KubeObj } from '../support/daemon.js';

const skip = daemonSkipReason();

const condition = (o: KubeObj | undefined, type: string): string | undefined =>
  (o?.status?.conditions as Array<{ type: string; status: string }> | undefined)?.find((c) => c.type === type)?.status;

tap.test('failed status writes never end or strand a VM; they land later', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  await d.apply(manifestVMI('steady'));
  const v = await d.waitPhase('steady', 'Running', 60_000);
  const qemuPid = v.status!.vmlet!.qemuPid!;
  // The whole log: logTail() shortens long lines.
  const log = (): string => fs.readFileSync(d.logFile, 'utf8');
  const dir = path.join(d.stateDir, 'objects', 'virtualmachineinstances', 'default');
  t.ok(fs.existsSync(path.join(dir, 'steady.json')), 'the VMI is stored where the test makes it read-only');

  // The daemon restarts while the VMI's folder takes no writes: re-adoption's status writes fail.
  await d.kill('SIGKILL');
  execFileSync('mount', ['--bind', dir, dir]);
  execFileSync('mount', ['-o', 'remount,bind,ro', dir]);
  let mounted = true;
  const unmount = (): void => {
    if (mounted) execFileSync('umount', [dir]);
    mounted = false;
  };
  t.teardown(unmount);
  t.throws(() => fs.writeFileSync(path.join(dir, 'probe'), 'x'), 'the folder refuses writes');
  await d.restart();
  // Re-adoption writes only what changed: the same QEMU, so nothing; the pause below must write.
  await waitFor('the VM re-adopted', async () => log().includes('VMI re-adopted'), 30_000, 200);
  const paused = await d.cli(['pause', 'steady']);
  t.equal(paused.code, 0, `pause answers OK although its status cannot be written (${paused.stderr.trim() || 'ok'})`);
  await waitFor('the failed status write in the log', async () => log().includes('status write failed'), 10_000, 200);
  t.pass('the daemon says the status write failed');
  await sleep(2_000);
  t.ok(isAlive(qemuPid), 'QEMU was not killed for it');
  t.not(condition(await d.vmi('steady'), 'Paused'), 'True', 'the Paused condition is not written yet');
  const qmp = await d.cli(['qmp', 'steady', '{"execute":"query-status"}']);
  t.match(qmp.stdout, /"status": ?"paused"/, 'QEMU is paused (the VM is still driven over QMP)');

  unmount();
  const after = await waitFor(
    'the Paused condition to land',
    async () => ((o) => (condition(o, 'Paused') === 'True' ? o : undefined))(await d.vmi('steady')),
    40_000,
    250,
  );
  t.equal(after.status?.phase, 'Running', 'the VMI is Running');
  t.equal(after.status?.vmlet?.qemuPid, qemuPid, 'with the same QEMU');
  t.ok(isAlive(qemuPid), 'which still runs');
  t.match(log(), /status written again/, 'the daemon says the writes caught up');
});
