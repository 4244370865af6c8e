// The supervisor's shell against the fake QMP server (a real socket), a fake /proc and a launcher link driven by the test: re-adoption, QEMU's events, user actions, QMP loss and reconnect, launcher loss, stop, the HELLO wait and the hand-over.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import t from 'tap';
import type { VirtualMachineInstance, VirtualMachineInstanceStatus } from '../../src/api/types.js';
import { validateVMI } from '../../src/api/validate.js';
import { VmletError } from '../../src/errors.js';
import { Supervisor, type PreparedLaunch } from '../../src/daemon/supervisor.js';
import { LauncherLink, type LauncherHello } from '../../src/qemu/launcher-server.js';
import { FakeQmpServer, type FakeQmpOptions } from '../support/fake-qmp.js';

const UID = '5a1e5a1e-0000-4000-8000-0000000000aa';
// Above any pid_max: a kill of them can only fail with ESRCH.
const QEMU_PID = 0x7ffff001;
const LAUNCHER_PID = 0x7ffff002;

function vmi(): VirtualMachineInstance {
  const v = validateVMI({
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'shell', namespace: 'default' },
    spec: { domain: { memory: { guest: '64Mi' }, devices: { autoattachSerialConsole: false } } },
  });
  return { ...v, metadata: { ...v.metadata, uid: UID } };
}

interface Rig {
  sup: Supervisor;
  fake: FakeQmpServer;
  runDir: string;
  proc: string;
  link: LauncherLink;
  status(): VirtualMachineInstanceStatus;
  events: Array<{ type: string; reason: string; message: string }>;
  released(): number;
  /** QEMU's run state as the fake reports it. */
  vm: { running: boolean };
}

function fakeProcess(proc: string, pid: number, argv: string[]): void {
  fs.mkdirSync(path.join(proc, String(pid)), { recursive: true });
  fs.writeFileSync(path.join(proc, String(pid), 'stat'), `${pid} (${path.basename(argv[0] ?? 'x')}) S 1 1 1`);
  fs.writeFileSync(path.join(proc, String(pid), 'cmdline'), `${argv.join('\0')}\0`);
}

const QEMU_ARGV = ['qemu-system-x86_64', '-name', `guest=default_shell`, '-uuid', UID, '-accel', 'tcg,tb-size=64'];

async function rig(
  t: { teardown(fn: () => unknown): void },
  o: {
    qmp?: FakeQmpOptions;
    qemu?: boolean;
    launcher?: boolean;
    running?: boolean;
    prepare?: () => Promise<PreparedLaunch>;
    launcherBinary?: string;
    resumeGate?: () => Promise<void> | undefined;
  } = {},
): Promise<Rig> {
  const vm = { running: o.running ?? true };
  const fake = await new FakeQmpServer({
    handlers: {
      'query-status': () => ({ return: { running: vm.running, singlestep: false, status: vm.running ? 'running' : 'paused' } }),
      stop: () => {
        vm.running = false;
        return { return: {} };
      },
      cont: () => {
        vm.running = true;
        return { return: {} };
      },
    },
    ...o.qmp,
  }).start();
  t.teardown(() => fake.close());
  const runDir = fake.dir;
  const proc = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-proc-'));
  t.teardown(() => fs.rmSync(proc, { recursive: true, force: true }));
  if (o.qemu ?? true) {
    fakeProcess(proc, QEMU_PID, QEMU_ARGV);
    fs.writeFileSync(path.join(runDir, 'qemu.pid'), `${QEMU_PID}\n`);
  }
  if (o.launcher ?? true) {
    fakeProcess(proc, LAUNCHER_PID, ['vmlet-launch', '--uid', UID]);
    fs.writeFileSync(path.join(runDir, 'launcher.pid'), `${LAUNCHER_PID}\n`);
  }
  const link = new LauncherLink(UID);
  let status: VirtualMachineInstanceStatus = {};
  let releases = 0;
  const events: Rig['events'] = [];
  const sup = new Supervisor({
    vmi: vmi(),
    runDir,
    logger: pino({ level: 'silent' }),
    launcherServer: { link: () => link, attach: () => link, detach: () => undefined },
    launcherBinary: o.launcherBinary ?? path.join(proc, 'no-such-launcher'),
    launcherSocket: path.join(proc, 'launcher.sock'),
    prepare: o.prepare ?? (async () => ({ argv: ['qemu'], fds: [], accel: 'tcg', softwareEmulation: true })),
    writeStatus: async (mutate) => {
      status = mutate(status);
    },
    event: (type, reason, message) => {
      events.push({ type, reason, message });
    },
    procRoot: proc,
    startTimeoutMs: 2_000,
    releaseNetwork: async () => {
      releases++;
    },
    ...(o.resumeGate ? { resumeGate: o.resumeGate } : {}),
  });
  return { sup, fake, runDir, proc, link, status: () => status, events, released: () => releases, vm };
}

async function until(what: string, ok: () => boolean, ms = 8_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** An fd on a file of its own, so that its close is seen even when the number is reused at once. */
function markerFd(t: { teardown(fn: () => unknown): void }): { fd: number; open(): boolean } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-fd-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'marker');
  fs.writeFileSync(file, '');
  const fd = fs.openSync(file, 'r');
  return {
    fd,
    open: () => {
      try {
        return fs.readlinkSync(`/proc/self/fd/${fd}`) === file;
      } catch {
        return false;
      }
    },
  };
}

const cond = (s: VirtualMachineInstanceStatus, type: string): { status: string; reason?: string; message?: string } | undefined =>
  s.conditions?.find((c) => c.type === type);
const names = (fake: FakeQmpServer): string[] => fake.received.map((c) => String(c.execute));
const hello = (kind: 'new' | 'running' | 'exited', pid = LAUNCHER_PID): LauncherHello => ({
  uid: UID,
  launcherPid: pid,
  peer: { pid, uid: 0, gid: 0 },
  state:
    kind === 'new'
      ? { kind: 'new' }
      : kind === 'running'
        ? { kind: 'running', qemuPid: QEMU_PID }
        : { kind: 'exited', qemuPid: QEMU_PID, status: { kind: 'exit', code: 0 } },
});

t.test('re-adopts a running QEMU, follows its events, takes user actions, and ends on its exit', async (t) => {
  const r = await rig(t);
  await r.sup.reattach();
  t.equal(r.sup.state, 'Running');
  t.equal(r.sup.qemuPid, QEMU_PID);
  t.equal(r.sup.launcherPid, LAUNCHER_PID);
  const s = r.status();
  t.equal(s.phase, 'Running');
  t.match(s.vmlet, { qemuPid: QEMU_PID, launcherPid: LAUNCHER_PID, accel: 'tcg', softwareEmulation: true }, 'the runtime block, accel from the command line');
  t.match(cond(s, 'SoftwareEmulation'), { status: 'True', reason: 'SoftwareEmulation' });
  t.match(cond(s, 'Ready'), { status: 'True' });
  t.same(names(r.fake), ['qmp_capabilities', 'query-status'], 'a running QEMU is neither set up again nor continued (one query-status says how it runs)');
  t.equal(r.sup.serialConsole(), undefined, 'no console was asked for');

  r.fake.last!.event('STOP');
  await until('Paused', () => cond(r.status(), 'Paused')?.status === 'True');
  t.match(cond(r.status(), 'Ready'), { status: 'False' });
  r.fake.last!.event('RESUME');
  await until('resumed', () => cond(r.status(), 'Paused')?.status === 'False');

  await r.sup.pause();
  t.match(cond(r.status(), 'Paused'), { status: 'True', reason: 'PausedByUser' });
  await t.rejects(r.sup.pause(), { code: 'VMI_ALREADY_PAUSED' });
  await r.sup.unpause();
  t.match(cond(r.status(), 'Paused'), { status: 'False' });
  await t.rejects(r.sup.unpause(), { code: 'VMI_NOT_PAUSED' });
  await r.sup.reset();
  t.ok(names(r.fake).includes('system_reset'));
  t.equal(r.sup.qmpClient(), r.sup.qmpClient(), 'one client');

  r.fake.last!.event('SHUTDOWN', { guest: true, reason: 'guest-shutdown' });
  await until('Shutdown event', () => r.events.some((e) => e.reason === 'Shutdown'));
  r.link.emit('exited', { kind: 'exit', code: 0 }, QEMU_PID);
  const report = await r.sup.done;
  t.same(report, { phase: 'Succeeded', reason: 'GuestShutdown', exit: { kind: 'exit', code: 0 } });
  t.equal(r.sup.state, 'Exited');
  t.match(r.status(), { phase: 'Succeeded', reason: 'GuestShutdown', message: 'QEMU ended: exit code 0' });
  t.match(cond(r.status(), 'Ready'), { status: 'False', reason: 'GuestShutdown' });
  t.same(r.events.at(-1), { type: 'Normal', reason: 'Succeeded', message: 'GuestShutdown: QEMU ended: exit code 0' });
  t.equal(r.released(), 1, 'the sandbox is released once');
  t.throws(() => r.sup.qmpClient(), { code: 'VMI_NOT_RUNNING' });
  await t.rejects(r.sup.softreboot(), { code: 'VMI_NOT_RUNNING' });
  t.same(await r.sup.stop(30, 'deleted'), report, 'a stop after the end gives the same report');
});

t.test('a re-adopted QEMU still paused from -S is set up and continued', async (t) => {
  const r = await rig(t, {
    running: false,
    qmp: { handlers: { 'query-status': () => ({ return: { running: false, singlestep: false, status: 'prelaunch' } }) } },
  });
  await r.sup.reattach();
  t.equal(r.sup.state, 'Running');
  t.same(names(r.fake), ['qmp_capabilities', 'query-status', 'set-action', 'cont'], 'after cont it runs: no second query-status');
  t.same(r.fake.received.find((c) => c.execute === 'set-action')?.arguments, { shutdown: 'poweroff', reboot: 'reset', panic: 'pause' });
});

t.test('after a restart, a QEMU still paused from -S whose sandbox was left unfinished is not continued: the start fails', async (t) => {
  const unfinished = (): Promise<void> => {
    const gate = Promise.reject(new VmletError('NET_SANDBOX_UNFINISHED', 'the sandbox of this VMI was not finished'));
    gate.catch(() => undefined);
    return gate;
  };
  let link: LauncherLink | undefined;
  const r = await rig(t, {
    running: false,
    qmp: {
      handlers: {
        'query-status': () => ({ return: { running: false, singlestep: false, status: 'prelaunch' } }),
        quit: () => {
          setTimeout(() => link?.emit('exited', { kind: 'signal', signal: 15 }, QEMU_PID), 20);
          return { return: {} };
        },
      },
    },
    resumeGate: unfinished,
  });
  link = r.link;
  await r.sup.reattach();
  t.match(await r.sup.done, { phase: 'Failed', reason: 'LaunchFailed' });
  t.notOk(names(r.fake).includes('cont'), 'no cont: the guest never ran');
  t.ok(names(r.fake).includes('quit'), 'QEMU was ended');
  t.match(r.status().message, /the sandbox of this VMI was not finished/);
  t.ok(r.released() > 0, 'the sandbox is released');

  // The same gate does not touch a guest that already runs: it is only what a first `cont` waits for.
  const running = await rig(t, { resumeGate: unfinished });
  await running.sup.reattach();
  t.equal(running.sup.state, 'Running');
  t.notOk(names(running.fake).includes('cont'));
  running.link.emit('exited', { kind: 'exit', code: 0 }, QEMU_PID);
  await running.sup.done;
});

t.test("a panicked guest fails the VMI, with QEMU's last words", async (t) => {
  const r = await rig(t);
  await r.sup.reattach();
  fs.writeFileSync(path.join(r.runDir, 'qemu.log'), '2024-01-01T00:00:00.000Z qemu-system-x86_64: guest panicked hard\n');
  r.fake.last!.event('GUEST_PANICKED', { action: 'pause' });
  await until('GuestPanicked', () => r.events.some((e) => e.reason === 'GuestPanicked' && e.type === 'Warning'));
  r.link.emit('exited', { kind: 'exit', code: 0 }, QEMU_PID);
  const report = await r.sup.done;
  t.match(report, { phase: 'Failed', reason: 'QemuCrashed', qemuError: 'guest panicked hard' });
  t.equal(r.status().message, 'QEMU ended: exit code 0; QEMU said: guest panicked hard');
  t.match(r.events.at(-1), { type: 'Warning', reason: 'Failed', message: 'QemuCrashed: QEMU ended: exit code 0; QEMU said: guest panicked hard' });
});

t.test('QMP that stops answering: QmpResponsive False and QMP_UNAVAILABLE, then it answers again', async (t) => {
  const r = await rig(t);
  await r.sup.reattach();
  r.fake.opts.greeting = false; // the next connections get no greeting, as from a stopped QEMU
  r.fake.last!.destroy();
  await until('QmpUnresponsive', () => r.events.some((e) => e.reason === 'QmpUnresponsive'));
  t.match(cond(r.status(), 'QmpResponsive'), { status: 'False', reason: 'QmpUnresponsive', message: 'QEMU does not answer QMP' });
  t.throws(() => r.sup.qmpClient(), { code: 'QMP_UNAVAILABLE' });
  t.equal(r.sup.state, 'Running', 'still running');
  delete r.fake.opts.greeting;
  await until('QmpReconnected', () => r.events.some((e) => e.reason === 'QmpReconnected'));
  await until('condition', () => cond(r.status(), 'QmpResponsive')?.status === 'True');
  t.match(cond(r.status(), 'QmpResponsive'), { reason: 'QmpReconnected' });
  await r.sup.reset();
  t.pass('QMP works again');
  r.link.emit('exited', { kind: 'exit', code: 0 }, QEMU_PID);
  await r.sup.done;
});

t.test('QMP lost because QEMU is gone: the exit status it left is the end', async (t) => {
  const r = await rig(t);
  await r.sup.reattach();
  fs.writeFileSync(path.join(r.runDir, 'exit-status'), 'signal=11\n');
  fs.writeFileSync(path.join(r.runDir, 'qemu.log'), 'one\ntwo\nthree\nfour\n');
  fs.rmSync(path.join(r.proc, String(QEMU_PID)), { recursive: true });
  r.fake.last!.destroy();
  const report = await r.sup.done;
  t.match(report, { phase: 'Failed', reason: 'QemuCrashed', exit: { kind: 'signal', signal: 11 }, qemuError: 'two\nthree\nfour' });
  t.equal(r.status().message, 'QEMU ended: signal 11; QEMU said: two | three | four', 'the last three lines');
  t.notOk(
    r.events.some((e) => e.reason === 'QmpUnresponsive'),
    'a gone QEMU is not an unresponsive one',
  );
});

t.test('a launcher that is gone: LauncherLost', async (t) => {
  const r = await rig(t);
  await r.sup.reattach();
  fs.rmSync(path.join(r.proc, String(LAUNCHER_PID)), { recursive: true });
  r.link.emit('disconnected', 'EOF');
  const report = await r.sup.done;
  t.match(report, { phase: 'Failed', reason: 'LauncherLost' });
  t.match(
    r.events.find((e) => e.reason === 'LauncherLost'),
    { type: 'Warning', message: 'vmlet-launch died (EOF); QEMU dies with it' },
  );
});

t.test('a launcher that only reconnects is no loss', async (t) => {
  const r = await rig(t);
  await r.sup.reattach();
  r.link.emit('disconnected', 'EOF');
  await new Promise((res) => setTimeout(res, 500));
  t.equal(r.sup.state, 'Running', 'the launcher process still lives');
  r.link.emit('exited', { kind: 'exit', code: 0 }, QEMU_PID);
  await r.sup.done;
});

t.test('stop: ACPI power-down, the grace period, then quit', async (t) => {
  let link: LauncherLink | undefined;
  const r = await rig(t, {
    qmp: {
      handlers: {
        quit: () => {
          setTimeout(() => link?.emit('exited', { kind: 'signal', signal: 15 }, QEMU_PID), 20);
          return { return: {} };
        },
      },
    },
  });
  link = r.link;
  await r.sup.reattach();
  const t0 = Date.now();
  const stopping = r.sup.stop(1, 'test');
  t.equal(r.sup.state, 'Stopping', 'at once');
  const report = await stopping;
  t.ok(Date.now() - t0 >= 900, 'the grace period was given');
  t.same(report, { phase: 'Succeeded', reason: 'Stopped', exit: { kind: 'signal', signal: 15 } });
  const sent = names(r.fake);
  t.ok(sent.indexOf('system_powerdown') >= 0 && sent.indexOf('system_powerdown') < sent.indexOf('quit'), 'power-down, then quit');
  t.match(r.status(), { phase: 'Succeeded', reason: 'Stopped' });
});

t.test('a launcher HELLO waits for prepare (a promise, not a poll), then gets the argv', async (t) => {
  let settle!: (p: PreparedLaunch) => void;
  // /bin/true stands in for the launcher started beside prepare: it starts, so the argv is handed over, and never reports QEMU.
  const r = await rig(t, { qemu: false, launcher: false, launcherBinary: '/bin/true', prepare: () => new Promise((resolve) => (settle = resolve)) });
  t.match(await r.sup.onHello(hello('running')), { action: 'reject', code: 'launcher-mismatch' }, 'no launcher was spawned yet: nobody is heard');
  const started = r.sup.start();
  await until('the launcher spawned beside prepare', () => r.sup.launcherPid !== undefined);
  let decided = false;
  const decision = r.sup.onHello(hello('new', r.sup.launcherPid)).finally(() => (decided = true));
  await new Promise((res) => setTimeout(res, 50));
  t.notOk(decided, 'waits while prepare runs');
  const marker = markerFd(t);
  const fds = [marker.fd];
  settle({ argv: ['qemu', '-S'], fds, accel: 'kvm', softwareEmulation: false });
  t.same(await decision, { action: 'launch', argv: ['qemu', '-S'], fds });
  await started; // no QEMU is ever reported: the launch fails after startTimeoutMs
  t.match(await r.sup.done, { phase: 'Failed', reason: 'LaunchFailed' });
  t.notOk(marker.open(), 'the fds prepare opened are closed');
});

t.test('the launcher started beside prepare is known by its pid while the daemon has not reaped it; after that the run dir decides', async (t) => {
  const launcher = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-launcher-')), 'launcher.sh');
  t.teardown(() => fs.rmSync(path.dirname(launcher), { recursive: true, force: true }));
  fs.writeFileSync(launcher, '#!/bin/sh\nexec sleep 30\n', { mode: 0o755 });
  let settle!: (p: PreparedLaunch) => void;
  const r = await rig(t, { qemu: false, launcher: false, launcherBinary: launcher, prepare: () => new Promise((resolve) => (settle = resolve)) });
  const started = r.sup.start();
  await until('the launcher spawned beside prepare', () => r.sup.launcherPid !== undefined);
  const pid = r.sup.launcherPid!;
  // A run dir that names another pid: the procfs check would refuse this peer.
  fs.writeFileSync(path.join(r.runDir, 'launcher.pid'), `${pid + 1} 1\n`);
  t.same(await r.sup.onHello(hello('running', pid)), { action: 'accept' }, "the daemon's own unreaped child is heard without procfs");
  process.kill(pid, 'SIGKILL');
  await until('the launcher reaped', () => !fs.existsSync(`/proc/${pid}`));
  t.match(
    await r.sup.onHello(hello('running', pid)),
    { action: 'reject', code: 'launcher-mismatch', reason: /launcher.pid names pid/ },
    "once reaped, its pid may be anyone's: the run dir decides",
  );
  settle({ argv: ['qemu', '-S'], fds: [], accel: 'tcg', softwareEmulation: true });
  await started;
  t.match(await r.sup.done, { phase: 'Failed', reason: 'LaunchFailed' });
});

t.test('a launcher that cannot be started beside prepare fails the launch; a HELLO meanwhile is refused', async (t) => {
  let settle!: (p: PreparedLaunch) => void;
  const r = await rig(t, { qemu: false, launcher: false, prepare: () => new Promise((resolve) => (settle = resolve)) });
  const started = r.sup.start();
  const decision = r.sup.onHello(hello('new'));
  const marker = markerFd(t);
  await new Promise((res) => setTimeout(res, 50)); // prepare is under way
  settle({ argv: ['qemu', '-S'], fds: [marker.fd], accel: 'tcg', softwareEmulation: true });
  t.match(await decision, { action: 'reject', code: 'launcher-mismatch' }, 'no launcher was started: nobody is heard');
  await started;
  t.match(await r.sup.done, { phase: 'Failed', reason: 'LaunchFailed' });
  t.match(r.status().message, /cannot start/);
  t.notOk(marker.open(), 'the fds prepare opened are closed');
});

t.test('a HELLO while prepare fails is refused', async (t) => {
  let fail!: (e: Error) => void;
  const preparing = new Promise<PreparedLaunch>((_, reject) => (fail = reject));
  preparing.catch(() => undefined); // rejected before the supervisor awaits it is not unhandled
  const r = await rig(t, { qemu: false, launcher: false, prepare: () => preparing });
  const started = r.sup.start();
  const decision = r.sup.onHello(hello('new'));
  fail(new Error('bad spec'));
  t.match(await decision, { action: 'reject' });
  await started;
  t.match(r.status(), { phase: 'Failed', reason: 'LaunchFailed', message: 'bad spec' });
});

t.test('hand-over: a launcher that waited through a restart gets its argv, and the launch is recorded', async (t) => {
  const marker = markerFd(t);
  const fds = [marker.fd];
  const r = await rig(t, {
    qemu: false,
    running: false,
    qmp: { handlers: { 'query-status': () => ({ return: { running: false, singlestep: false, status: 'prelaunch' } }) } },
    prepare: async () => ({ argv: ['qemu'], fds, accel: 'tcg', softwareEmulation: true, emulation: { reason: 'KvmUnusable', message: '/dev/kvm is missing' } }),
  });
  const attached = r.sup.reattach();
  // The daemon attaches the link only once the run dir named the launcher.
  await until('the run dir read', () => r.sup.launcherPid !== undefined);
  t.same(await r.sup.onHello(hello('new')), { action: 'launch', argv: ['qemu'], fds });
  fakeProcess(r.proc, QEMU_PID, QEMU_ARGV);
  r.link.emit('started', QEMU_PID);
  await attached;
  t.equal(r.sup.state, 'Running');
  t.same(names(r.fake), ['qmp_capabilities', 'cont'], 'the argv was built by this daemon: -action set the actions, -S says prelaunch');
  t.match(r.status().vmlet, { qemuPid: QEMU_PID, launcherPid: LAUNCHER_PID, accel: 'tcg' });
  t.match(cond(r.status(), 'SoftwareEmulation'), { status: 'True', reason: 'KvmUnusable', message: /KVM is not usable: \/dev\/kvm is missing$/ });
  t.notOk(
    r.events.some((e) => e.reason === 'Launched'),
    'a hand-over is no new launch',
  );
  t.notOk(marker.open(), "the daemon's copies of the fds are closed");
  r.link.emit('exited', { kind: 'exit', code: 0 }, QEMU_PID);
  await r.sup.done;
});

t.test('a HELLO from any process but the recorded launcher is refused, whatever it claims, and changes nothing', async (t) => {
  const r = await rig(t);
  await r.sup.reattach();
  t.equal(r.sup.state, 'Running');
  const stranger = LAUNCHER_PID + 1;
  for (const kind of ['new', 'running', 'exited'] as const) {
    t.match(
      await r.sup.onHello(hello(kind, stranger)),
      { action: 'reject', code: 'launcher-mismatch', reason: new RegExp(`pid ${stranger} is not the launcher`) },
      kind,
    );
  }
  t.equal(r.sup.state, 'Running', 'still Running');
  t.equal(r.sup.launcherPid, LAUNCHER_PID, 'the recorded launcher is kept');
  t.same(await r.sup.onHello(hello('running')), { action: 'accept' }, 'the recorded launcher is heard');
  r.link.emit('exited', { kind: 'exit', code: 0 }, QEMU_PID);
  await r.sup.done;
});

t.test('re-adoption records an ended QEMU, or Lost when nothing is left', async (t) => {
  const ended = await rig(t, { qemu: false, launcher: false });
  fs.writeFileSync(path.join(ended.runDir, 'exit-status'), 'exit=0\n');
  await ended.sup.reattach();
  t.match(await ended.sup.done, { phase: 'Succeeded', reason: 'GuestShutdown' });

  const lost = await rig(t, { qemu: false, launcher: false });
  await lost.sup.reattach();
  t.match(await lost.sup.done, { phase: 'Failed', reason: 'Lost' });
  t.equal(lost.fake.received.length, 0, 'nothing was connected to');
});

t.test('a transition the table forbids throws SUPERVISOR_BAD_TRANSITION', async (t) => {
  const r = await rig(t, { qemu: false, launcher: false });
  await t.rejects(r.sup.stop(30, 'deleted'), { code: 'SUPERVISOR_BAD_TRANSITION', message: `VMI ${UID}: cannot go from New to Stopping` });
  await r.sup.reattach();
  await t.rejects(r.sup.reattach(), { code: 'SUPERVISOR_BAD_TRANSITION', message: `VMI ${UID}: cannot go from Exited to Reattaching` });
  await t.rejects(r.sup.start(), { code: 'SUPERVISOR_BAD_TRANSITION' });
});
