// One VM through the real daemon, QEMU and test guest: apply, Running, console, get -o json, events, pause/unpause, softreboot, stop, start, delete.
import { existsSync } from 'node:fs';
import t from 'tap';
import { daemonSkipReason, isAlive, manifestVM, qemuProcessesFor, READY_MARKER, startTestDaemon, waitFor, type KubeObj } from '../support/daemon.js';

const skip = daemonSkipReason();

const cond = (o: KubeObj | undefined, type: string): string | undefined => o?.status?.conditions?.find((c) => c.type === type)?.status;

t.test('a VM from apply to delete', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  const name = 'life';

  const applied = await d.apply(manifestVM(name, { runStrategy: 'Always' }));
  t.match(applied, `virtualmachine.vmlet.io/${name} created`, 'apply creates the VM');
  const t0 = Date.now();
  const vmi = await d.waitPhase(name, 'Running', 30_000);
  t.comment(`apply → Running in ${Date.now() - t0} ms`);
  const uid = vmi.metadata.uid;
  const qemuPid = vmi.status?.vmlet?.qemuPid;
  t.ok(qemuPid && isAlive(qemuPid), 'status.vmlet.qemuPid is a live process');
  t.same(
    qemuProcessesFor(uid).map((p) => p.pid),
    [qemuPid],
    'exactly one QEMU carries the VMI uid, the recorded one',
  );
  t.equal(cond(vmi, 'Ready'), 'True', 'Ready');
  t.equal(cond(vmi, 'SoftwareEmulation'), 'True', 'SoftwareEmulation condition under --accel tcg');
  const traces = (await d.http('GET', '/debug/start-traces')).json() as { items: Array<{ uid: string; outcome?: string; steps: Array<[string, number]> }> };
  const trace = traces.items.find((x) => x.uid === uid);
  t.equal(trace?.outcome, 'Running', 'GET /debug/start-traces has the start, ended at Running');
  const steps = trace?.steps ?? [];
  for (const s of ['supervisor.created', 'launcher.argv', 'qemu.started', 'qmp.greeting', 'qmp.cont', 'end:Running']) {
    t.ok(
      steps.some(([x]) => x === s),
      `the trace has step ${s}`,
    );
  }
  // The daemon's spare launcher (launcher-spare.ts) when it was ready, else one spawned into a fresh group.
  const how = steps.filter(([x]) => x === 'launcher.spare' || x === 'cgroup.ready').map(([x]) => x);
  t.equal(how.length, 1, `the trace says how the launcher came: ${how.join(', ') || 'not at all'}`);
  t.ok(
    steps.every(([, ms], i) => i === 0 || ms >= steps[i - 1]![1]),
    'its steps are in time order',
  );

  await d.waitConsole(uid, READY_MARKER, 1, 90_000);
  t.comment(`apply → ready marker in ${Date.now() - t0} ms`);

  await t.test('console shows the ready marker', async (t) => {
    // Piped stdin: the CLI sends it, then exits once stdin ended and the daemon closed; the ring buffer is replayed first.
    const r = await d.cli(['console', name], { input: 'echo CONSOLE-$((6*7))\n', timeoutMs: 20_000 });
    t.equal(r.code, 0, `console exits 0 (stderr: ${r.stderr.trim()})`);
    t.match(r.stderr, `Successfully connected to ${name} console`, 'banner on stderr');
    t.match(r.stdout, READY_MARKER, 'the replayed output holds the ready marker');
    await waitFor('the guest shell to answer on the console', () => d.consoleText(uid).includes('CONSOLE-42'), 15_000);
    t.pass('input typed through vmlet console reached the guest shell');
  });

  await t.test('get -o json, get table, events', async (t) => {
    const obj = JSON.parse(await d.cliOk(['get', 'vmi', name, '-o', 'json'])) as KubeObj;
    t.equal(obj.kind, 'VirtualMachineInstance');
    t.equal(obj.metadata.uid, uid);
    t.equal(obj.status?.phase, 'Running', 'the JSON carries the status');
    t.equal(obj.status?.vmlet?.qemuPid, qemuPid, 'with the runtime block');
    const vmObj = JSON.parse(await d.cliOk(['get', 'vm', name, '-o', 'json'])) as KubeObj;
    t.equal(vmObj.status?.printableStatus, 'Running', 'VM printableStatus Running');
    t.ok(
      obj.metadata.ownerReferences?.some((r) => r.uid === vmObj.metadata.uid),
      'the VMI is owned by the VM',
    );
    const table = await d.cliOk(['get', 'vmis']);
    t.match(table, new RegExp(`^${name}\\s+\\S+\\s+Running\\s`, 'm'), 'table row shows Running');
    const ev = JSON.parse(await d.cliOk(['events', name, '-o', 'json'])) as {
      kind: string;
      items: Array<{ reason: string; involvedObject: { kind: string } }>;
    };
    t.equal(ev.kind, 'EventList');
    const reasons = ev.items.map((e) => `${e.involvedObject.kind}/${e.reason}`);
    for (const want of ['VirtualMachine/Created', 'VirtualMachine/SuccessfulCreate', 'VirtualMachineInstance/Launched']) {
      t.ok(reasons.includes(want), `event ${want} (have: ${reasons.join(', ')})`);
    }
    const evTable = await d.cliOk(['events', name]);
    t.match(evTable, /Launched\s+virtualmachineinstance\/life/, 'events table names the VMI');
  });

  await t.test('pause and unpause', async (t) => {
    t.match(await d.cliOk(['pause', name]), `VMI ${name} was scheduled to pause`);
    const paused = await d.waitPhase(name, 'Running', 10_000, (o) => cond(o, 'Paused') === 'True');
    t.equal(cond(paused, 'Ready'), 'False', 'not Ready while paused');
    const qs = JSON.parse(await d.cliOk(['qmp', name, '{"execute":"query-status"}'])) as { return: { status: string; running: boolean } };
    t.equal(qs.return.status, 'paused', 'QEMU says paused');
    t.equal(qs.return.running, false);
    await waitFor('VM printableStatus Paused', async () => (await d.vm(name))?.status?.printableStatus === 'Paused', 10_000);
    await t.test('pausing a paused VMI is refused, as in KubeVirt', async (t) => {
      const again = await d.cli(['pause', name]);
      t.match(again.stderr, '(VMI_ALREADY_PAUSED)', `second pause: ${again.stderr.trim() || again.stdout.trim()}`);
    });

    t.match(await d.cliOk(['unpause', name]), `VMI ${name} was scheduled to unpause`);
    const resumed = await d.waitPhase(name, 'Running', 10_000, (o) => cond(o, 'Paused') === 'False' && cond(o, 'Ready') === 'True');
    t.ok(resumed, 'Paused False, Ready True');
    const qs2 = JSON.parse(await d.cliOk(['qmp', name, '{"execute":"query-status"}'])) as { return: { status: string; running: boolean } };
    t.equal(qs2.return.status, 'running', 'QEMU says running');
  });

  await t.test('softreboot reboots the guest through the agent', async (t) => {
    const agentUp = await waitFor('AgentConnected', async () => cond(await d.vmi(name), 'AgentConnected') === 'True', 45_000, 500).then(
      () => true,
      () => false,
    );
    if (!agentUp) {
      t.fail(
        "the guest agent never connected (condition AgentConnected is not True after 45 s): softreboot needs qemu-ga running in the test guest (scripts/build-guest-image.mjs); see the guest's /run/qemu-ga.log",
      );
      return;
    }
    const r = await d.cli(['softreboot', name]);
    t.equal(r.code, 0, `softreboot accepted (stderr: ${r.stderr.trim()})`);
    if (r.code !== 0) return;
    await d.waitConsole(uid, READY_MARKER, 2, 90_000);
    t.pass('the ready marker appeared a second time: the guest rebooted');
    const ev = JSON.parse(await d.cliOk(['events', name, '-o', 'json'])) as { items: Array<{ reason: string }> };
    t.ok(
      ev.items.some((e) => e.reason === 'Reset'),
      'a Reset event was recorded (QMP RESET)',
    );
    const after = await d.vmi(name);
    t.equal(after?.metadata.uid, uid, 'same VMI');
    t.equal(after?.status?.vmlet?.qemuPid, qemuPid, 'same QEMU: a guest reboot, not a restart');
    t.equal(after?.status?.phase, 'Running');
  });

  await t.test('stop: the VMI ends Succeeded and goes, nothing is left', async (t) => {
    const w = await d.watch('vmi', name);
    t.teardown(() => w.close());
    const started = Date.now();
    t.match(await d.cliOk(['stop', name]), `VM ${name} was scheduled to stop`);
    await waitFor('the VMI to be deleted after stop', () => w.events.some((e) => e.type === 'DELETED'), 60_000);
    t.comment(`stop → VMI gone in ${Date.now() - started} ms`);
    const phases = w.events.map((e) => e.object.status?.phase);
    const succeeded = w.events.find((e) => e.object.status?.phase === 'Succeeded');
    t.ok(succeeded, `the VMI went through Succeeded (phases seen: ${phases.join(' → ')})`);
    t.equal(succeeded?.object.status?.reason, 'Stopped', 'reason Stopped');
    t.notOk(
      w.events.some((e) => e.object.status?.phase === 'Failed'),
      'never Failed',
    );
    t.notOk(existsSync(d.vmRunDir(uid)), 'the run directory is gone');
    t.same(qemuProcessesFor(uid), [], 'no QEMU with the VMI uid remains');
    t.notOk(qemuPid && isAlive(qemuPid), 'the old QEMU pid is gone');
    const vm = await waitFor(
      'VM Stopped',
      async () => {
        const v = await d.vm(name);
        return v?.status?.printableStatus === 'Stopped' ? v : undefined;
      },
      10_000,
    );
    t.equal(vm.spec.runStrategy, 'Halted', 'stop on an Always VM sets runStrategy Halted');
    await new Promise((r) => setTimeout(r, 1500));
    t.equal(await d.vmi(name), undefined, 'no new VMI appears');
  });

  await t.test('start again, then delete --wait cascades to a running VMI', async (t) => {
    t.match(await d.cliOk(['start', name]), `VM ${name} was scheduled to start`);
    const v2 = await d.waitPhase(name, 'Running', 30_000);
    t.not(v2.metadata.uid, uid, 'a new VMI');
    const uid2 = v2.metadata.uid;
    t.equal(qemuProcessesFor(uid2).length, 1, 'one QEMU for it');
    // Booted, so the deletion's ACPI power-down is heard and the grace period is not used up.
    await d.waitConsole(uid2, READY_MARKER, 1, 90_000);
    const started = Date.now();
    const r = await d.cli(['delete', 'vm', name, '--wait'], { timeoutMs: 90_000 });
    t.equal(r.code, 0, `delete --wait exits 0 (stderr: ${r.stderr.trim()})`);
    t.match(r.stdout, `virtualmachine.vmlet.io "${name}" deleted`);
    t.comment(`delete vm --wait took ${Date.now() - started} ms`);
    await d.waitGone('vmi', name, 30_000);
    t.equal(await d.vm(name), undefined, 'the VM is gone');
    t.notOk(existsSync(d.vmRunDir(uid2)), 'the run directory is gone');
    t.same(qemuProcessesFor(uid2), [], 'no QEMU with the VMI uid remains');
    t.same(d.vmProcesses(), [], 'no launcher or QEMU of this daemon remains');
    const list = await d.cli(['get', 'vmis']);
    t.equal(list.code, 0);
    t.match(list.stderr, 'No resources found in default namespace.');
  });
});
