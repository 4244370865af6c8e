// runStrategy against the real daemon: Always restarts a killed QEMU, RerunOnFailure restarts a crash but not a guest power-off, Halted and Manual only run on start.
import { existsSync } from 'node:fs';
import tap from 'tap';
import {
  daemonSkipReason,
  isAlive,
  manifestVM,
  qemuProcessesFor,
  READY_MARKER,
  sleep,
  startTestDaemon,
  waitFor,
  type KubeObj,
  type TestDaemon,
} from '../support/daemon.js';

const skip = daemonSkipReason();

/** How long "stays down" is watched. */
const QUIET_MS = 3_000;

function pidOf(o: KubeObj): number {
  const pid = o.status?.vmlet?.qemuPid;
  if (!pid) throw new Error(`VMI ${o.metadata.name} has no status.vmlet.qemuPid`);
  return pid;
}

/** Asserts over QUIET_MS that the VM has no running VMI and no QEMU of `uid` (if given) appears. */
async function staysDown(t: Pick<typeof tap, 'notOk'>, d: TestDaemon, name: string, expect: { uid?: string; phase?: string }): Promise<void> {
  const end = Date.now() + QUIET_MS;
  let bad: string | undefined;
  while (Date.now() < end && !bad) {
    const vmi = await d.vmi(name);
    if (expect.uid === undefined && vmi) bad = `a VMI appeared (uid ${vmi.metadata.uid}, phase ${vmi.status?.phase})`;
    if (expect.uid !== undefined && vmi?.metadata.uid !== expect.uid) bad = `the VMI changed (now ${vmi ? `uid ${vmi.metadata.uid}` : 'none'})`;
    if (expect.phase && vmi && vmi.status?.phase !== expect.phase) bad = `the VMI left ${expect.phase} for ${vmi.status?.phase}`;
    await sleep(250);
  }
  t.notOk(bad, `${name} stays down for ${QUIET_MS / 1000} s${bad ? `: ${bad}` : ''}`);
}

tap.test('runStrategy', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  // The scenarios use different VMs and run side by side to share the boot time.
  t.jobs = 4;

  t.test('Always: QEMU killed with SIGKILL → a new VMI and QEMU run', async (t) => {
    const name = 'always';
    await d.apply(manifestVM(name, { runStrategy: 'Always' }));
    const first = await d.waitPhase(name, 'Running', 30_000);
    const pid1 = pidOf(first);
    t.same(
      qemuProcessesFor(first.metadata.uid).map((p) => p.pid),
      [pid1],
      'one QEMU, the recorded one',
    );
    const killedAt = Date.now();
    process.kill(pid1, 'SIGKILL');
    const second = await d.waitPhase(name, 'Running', 30_000, (o) => o.metadata.uid !== first.metadata.uid);
    t.comment(`kill -9 → new VMI Running in ${Date.now() - killedAt} ms`);
    const pid2 = pidOf(second);
    t.not(pid2, pid1, 'a new QEMU pid');
    t.ok(isAlive(pid2), 'the new QEMU lives');
    t.notOk(isAlive(pid1), 'the old one is gone');
    t.same(
      qemuProcessesFor(second.metadata.uid).map((p) => p.pid),
      [pid2],
      'exactly one QEMU for the new VMI',
    );
    t.same(qemuProcessesFor(first.metadata.uid), [], 'none for the old VMI');
    await waitFor('the old run dir to go', () => !existsSync(d.vmRunDir(first.metadata.uid)), 15_000);
    t.pass("the old VMI's run dir is removed");
    const vm = await waitFor(
      'VM Running',
      async () => {
        const v = await d.vm(name);
        return v?.status?.printableStatus === 'Running' ? v : undefined;
      },
      10_000,
    );
    t.ok(vm, 'VM printableStatus Running again');
  });

  t.test('RerunOnFailure: a crash is rerun, a guest power-off is not', async (t) => {
    const name = 'rerun';
    await d.apply(manifestVM(name, { runStrategy: 'RerunOnFailure' }));
    const first = await d.waitPhase(name, 'Running', 30_000);
    process.kill(pidOf(first), 'SIGKILL');
    const second = await d.waitPhase(name, 'Running', 30_000, (o) => o.metadata.uid !== first.metadata.uid);
    t.pass('after SIGKILL of QEMU (Failed) a new VMI runs');
    const uid = second.metadata.uid;
    const pid = pidOf(second);
    await d.waitConsole(uid, READY_MARKER, 1, 120_000);
    // acpid in the guest turns the ACPI power button into poweroff.
    const r = await d.cli(['qmp', name, '{"execute":"system_powerdown"}']);
    t.equal(r.code, 0, `system_powerdown sent (stderr: ${r.stderr.trim()})`);
    const done = await d.waitPhase(name, 'Succeeded', 60_000, (o) => o.metadata.uid === uid);
    t.equal(done.status?.reason, 'GuestShutdown', 'reason GuestShutdown');
    t.notOk(isAlive(pid), 'QEMU exited');
    t.same(qemuProcessesFor(uid), [], 'no QEMU for the VMI');
    await staysDown(t, d, name, { uid, phase: 'Succeeded' });
    t.equal((await d.vm(name))?.status?.printableStatus, 'Stopped', 'VM printableStatus Stopped');
  });

  t.test('Halted: nothing runs until start', async (t) => {
    const name = 'halted';
    await d.apply(manifestVM(name, { runStrategy: 'Halted' }));
    await staysDown(t, d, name, {});
    t.same(
      d.vmProcesses().filter((p) => p.argv.some((a) => a.includes(`guest=${name}`))),
      [],
      'no process for it',
    );
    t.equal((await d.vm(name))?.status?.printableStatus, 'Stopped', 'VM printableStatus Stopped');
    const stop = await d.cli(['stop', name]);
    t.equal(stop.code, 1, 'stop of a halted VM fails');
    t.match(stop.stderr, '(VM_NOT_RUNNING)');
    t.match(await d.cliOk(['start', name]), `VM ${name} was scheduled to start`);
    const vmi = await d.waitPhase(name, 'Running', 30_000);
    t.ok(isAlive(pidOf(vmi)), 'start runs it');
    t.equal((await d.vm(name))?.spec.runStrategy, 'Always', 'start turns Halted into Always');
    const again = await d.cli(['start', name]);
    t.match(again.stderr, '(VM_ALREADY_RUNNING)', 'a second start is refused');
  });

  t.test('Manual: start and stop only; a crash is not restarted', async (t) => {
    const name = 'manual';
    await d.apply(manifestVM(name, { runStrategy: 'Manual' }));
    await staysDown(t, d, name, {});
    t.match(await d.cliOk(['start', name]), `VM ${name} was scheduled to start`);
    const first = await d.waitPhase(name, 'Running', 30_000);
    process.kill(pidOf(first), 'SIGKILL');
    const failed = await d.waitPhase(name, 'Failed', 30_000);
    t.equal(failed.metadata.uid, first.metadata.uid, 'the VMI ends Failed');
    t.equal(failed.status?.reason, 'QemuCrashed', 'reason QemuCrashed');
    await staysDown(t, d, name, { uid: first.metadata.uid, phase: 'Failed' });
    t.match(await d.cliOk(['start', name]), `VM ${name} was scheduled to start`);
    const second = await d.waitPhase(name, 'Running', 30_000, (o) => o.metadata.uid !== first.metadata.uid);
    t.ok(isAlive(pidOf(second)), 'start after a failure runs a new VMI');
    t.equal((await d.vm(name))?.spec.runStrategy, 'Manual', 'runStrategy stays Manual');
    t.match(await d.cliOk(['stop', name]), `VM ${name} was scheduled to stop`);
    await d.waitGone('vmi', name, 60_000);
    t.same(qemuProcessesFor(second.metadata.uid), [], 'stop ends its QEMU');
    await staysDown(t, d, name, {});
  });
});
