// The supervisor's status writes as pure functions (launch, re-adoption, Running, the end, the core's edits), and QMP events as core events.
import t from 'tap';
import type { VirtualMachineInstanceStatus } from '../../src/api/types.js';
import { coreEventOf } from '../../src/daemon/qmp-watch.js';
import type { PreparedLaunch } from '../../src/daemon/supervisor-core.js';
import {
  adoptedStatus,
  applyEdit,
  editIsBestEffort,
  emulationCondition,
  finalStatus,
  launchedStatus,
  runningStatus,
  SOFTWARE_EMULATION_MESSAGE,
} from '../../src/daemon/supervisor-status.js';

const NOW = '2024-01-01T00:00:00.000Z';
const rt = { qemuPid: 10, launcherPid: 9, runDir: '/run/vmlet/vms/x' };
const cond = (s: VirtualMachineInstanceStatus, type: string) => s.conditions?.find((c) => c.type === type);

t.test('the SoftwareEmulation condition says why', async (t) => {
  t.same(emulationCondition({}), { reason: 'SoftwareEmulation', message: SOFTWARE_EMULATION_MESSAGE });
  t.same(emulationCondition({ emulation: { reason: 'KvmUnusable', message: 'the probe guest did not run' } }), {
    reason: 'KvmUnusable',
    message: `${SOFTWARE_EMULATION_MESSAGE}; KVM is not usable: the probe guest did not run`,
  });
  t.same(emulationCondition({ emulation: { reason: 'EmulationRequested', message: 'useEmulation is set' } }), {
    reason: 'EmulationRequested',
    message: `${SOFTWARE_EMULATION_MESSAGE}; useEmulation is set`,
  });
});

t.test('a launch records pids, accel, interfaces and SoftwareEmulation in one write', async (t) => {
  const tcg: PreparedLaunch = {
    argv: [],
    fds: [],
    accel: 'tcg',
    softwareEmulation: true,
    interfaces: [{ name: 'default', mac: '52:54:00:00:00:01' }],
    emulation: { reason: 'KvmUnusable', message: 'no /dev/kvm' },
  };
  const s = launchedStatus({ phase: 'Scheduled' }, tcg, rt, NOW);
  t.same(s.vmlet, { qemuPid: 10, launcherPid: 9, runDir: rt.runDir, accel: 'tcg', softwareEmulation: true });
  t.same(s.interfaces, tcg.interfaces);
  t.match(cond(s, 'SoftwareEmulation'), { status: 'True', reason: 'KvmUnusable' });
  const kvm = launchedStatus({}, { argv: [], fds: [], accel: 'kvm', softwareEmulation: false }, rt, NOW);
  t.equal(cond(kvm, 'SoftwareEmulation'), undefined, 'no condition under KVM');
  t.equal(kvm.interfaces, undefined, 'interfaces left as they were');
});

t.test('re-adoption records accel from the command line, and guesses the condition only when no launch recorded it', async (t) => {
  const fresh = adoptedStatus({}, rt, 'tcg', NOW);
  t.match(fresh.vmlet, { accel: 'tcg', softwareEmulation: true });
  t.match(cond(fresh, 'SoftwareEmulation'), { reason: 'SoftwareEmulation', message: SOFTWARE_EMULATION_MESSAGE });
  const recorded = launchedStatus(
    {},
    { argv: [], fds: [], accel: 'tcg', softwareEmulation: true, emulation: { reason: 'EmulationRequested', message: 'asked' } },
    rt,
    NOW,
  );
  t.match(cond(adoptedStatus(recorded, rt, 'tcg', NOW), 'SoftwareEmulation'), { reason: 'EmulationRequested' }, "the launch's reason stays");
  const unknown = adoptedStatus({ vmlet: { accel: 'kvm' } }, rt, undefined, NOW);
  t.same(unknown.vmlet, { accel: 'kvm', qemuPid: 10, launcherPid: 9, runDir: rt.runDir }, 'an unreadable command line leaves accel as it was');
});

t.test('Running, and the end', async (t) => {
  const run = runningStatus({}, false, NOW);
  t.equal(run.phase, 'Running');
  t.match(cond(run, 'Ready'), { status: 'True' });
  t.match(cond(run, 'Paused'), { status: 'False' });
  const paused = runningStatus({}, true, NOW);
  t.match(cond(paused, 'Ready'), { status: 'False' });
  t.match(cond(paused, 'Paused'), { status: 'True', reason: 'PausedByUser' });
  const end = finalStatus(run, { phase: 'Failed', reason: 'QemuCrashed', text: 'QEMU ended: signal 11' }, NOW);
  t.match(end, { phase: 'Failed', reason: 'QemuCrashed', message: 'QEMU ended: signal 11' });
  t.match(cond(end, 'Ready'), { status: 'False', reason: 'QemuCrashed' });
});

t.test("the core's status edits", async (t) => {
  t.match(cond(applyEdit({}, { kind: 'paused', paused: true }, NOW), 'Paused'), { status: 'True', reason: 'PausedByUser' });
  t.match(cond(applyEdit({}, { kind: 'paused', paused: false }, NOW), 'Ready'), { status: 'True' });
  const agent = applyEdit({}, { kind: 'agentConnected', interfaces: [{ name: 'default' }] }, NOW);
  t.match(cond(agent, 'AgentConnected'), { status: 'True' });
  t.same(agent.interfaces, [{ name: 'default' }]);
  t.match(cond(applyEdit({}, { kind: 'agentPortClosed' }, NOW), 'AgentConnected'), { status: 'False', reason: 'PortClosed' });
  t.match(cond(applyEdit({}, { kind: 'qmpResponsive', responsive: false }, NOW), 'QmpResponsive'), {
    status: 'False',
    reason: 'QmpUnresponsive',
    message: 'QEMU does not answer QMP',
  });
  t.match(cond(applyEdit({}, { kind: 'qmpResponsive', responsive: true }, NOW), 'QmpResponsive'), { status: 'True', reason: 'QmpReconnected' });
  t.ok(editIsBestEffort({ kind: 'agentPortClosed' }));
  t.notOk(editIsBestEffort({ kind: 'paused', paused: true }), "a user's pause must not fail silently");
});

t.test('QMP events as core events', async (t) => {
  t.same(coreEventOf('STOP', {}), { type: 'paused', paused: true });
  t.same(coreEventOf('RESUME', {}), { type: 'paused', paused: false });
  t.same(coreEventOf('SHUTDOWN', { guest: true, reason: 'guest-shutdown' }), { type: 'shutdown', guest: true, reason: 'guest-shutdown' });
  t.same(coreEventOf('RESET', { guest: true, reason: 'guest-reset' }), { type: 'reset' });
  t.same(coreEventOf('GUEST_PANICKED', { action: 'pause' }), { type: 'panicked' });
  t.same(coreEventOf('VSERPORT_CHANGE', { id: 'channel0', open: true }), { type: 'agentPort', open: true });
  t.same(coreEventOf('VSERPORT_CHANGE', { id: 'channel0', open: false }), { type: 'agentPort', open: false });
  t.equal(coreEventOf('VSERPORT_CHANGE', { id: 'other', open: true }), undefined, 'other ports are not the agent');
  t.equal(coreEventOf('BLOCK_IO_ERROR', {}), undefined);
});
