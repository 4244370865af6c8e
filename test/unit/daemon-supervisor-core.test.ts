// The supervisor's pure core: every (state, event) pair of its table, allowed and refused, the flags folded into its state, and the final outcome of a VMI.
import t from 'tap';
import {
  errorMessage,
  finalOutcome,
  INITIAL_STATE,
  mayBeOomKill,
  oomMessage,
  step,
  withQemuSaid,
  type CoreEvent,
  type CoreEventType,
  type CoreState,
  type Effect,
  type PreparedLaunch,
} from '../../src/daemon/supervisor-core.js';
import { canTransition, SUPERVISOR_STATES, type SupervisorState } from '../../src/daemon/vmi-state.js';

const prepared: PreparedLaunch = { argv: ['qemu'], fds: [7, 8], accel: 'tcg', softwareEmulation: true };
const boom = new Error('boom');

/** One event of each type. */
const SAMPLES: Record<CoreEventType, CoreEvent> = {
  start: { type: 'start' },
  reattach: { type: 'reattach' },
  resourcesInvalid: { type: 'resourcesInvalid', error: boom },
  prepareFailed: { type: 'prepareFailed', reason: 'LaunchFailed', error: boom },
  prepared: { type: 'prepared', prepared },
  launchFailed: { type: 'launchFailed', error: boom, via: 'launch' },
  qemuStarted: { type: 'qemuStarted', pid: 42, prepared, via: 'launch' },
  inspected: { type: 'inspected', launcherAlive: true, qemuAlive: true, exit: undefined },
  podLauncherRan: { type: 'podLauncherRan' },
  connecting: { type: 'connecting' },
  qmpReady: { type: 'qmpReady' },
  startupFailed: { type: 'startupFailed', error: boom },
  stop: { type: 'stop', graceSeconds: 30, why: 'deleted' },
  launcherLost: { type: 'launcherLost', reason: 'EOF' },
  exited: { type: 'exited', exit: { kind: 'exit', code: 0 } },
  paused: { type: 'paused', paused: true },
  shutdown: { type: 'shutdown', guest: true, reason: 'guest-shutdown' },
  reset: { type: 'reset' },
  panicked: { type: 'panicked' },
  agentPort: { type: 'agentPort', open: true },
  agentAnswered: { type: 'agentAnswered', interfaces: undefined },
  qmpClosed: { type: 'qmpClosed' },
  qmpUnresponsive: { type: 'qmpUnresponsive' },
  qmpAnswers: { type: 'qmpAnswers' },
  reconnectEnded: { type: 'reconnectEnded' },
};

// The table, with every flag false. A phase name = moved there; S = stayed (taken, same phase);
// I = ignored; R = refused (the shell throws SUPERVISOR_BAD_TRANSITION).
// Columns:                New            Preparing    Launching    Starting    Reattaching  Running      Stopping     Exited
const TABLE: Record<CoreEventType, string> = {
  start: 'Preparing      R            R            R           R            R            R            R',
  reattach: 'Reattaching    I            R            R           R            R            R            R',
  resourcesInvalid: 'S              S            S            S           S            S            S            S',
  prepareFailed: 'S              S            S            S           S            S            S            S',
  prepared: 'R              Launching    R            R           R            R            R            R',
  launchFailed: 'S              S            S            S           S            S            S            S',
  qemuStarted: 'S              S            S            S           S            S            S            S',
  inspected: 'S              S            S            S           S            S            S            S',
  podLauncherRan: 'I              Reattaching  I            I           I            I            I            I',
  connecting: 'R              R            Starting     R           S            R            R            R',
  qmpReady: 'I              I            I            Running     Running      I            I            I',
  startupFailed: 'S              S            S            S           S            S            I            I',
  stop: 'R              Stopping     Stopping     Stopping    Stopping     Stopping     S            S',
  launcherLost: 'S              S            S            S           S            S            S            S',
  exited: 'Exited         Exited       Exited       Exited      Exited       Exited       Exited       I',
  paused: 'I              I            I            I           I            S            I            I',
  shutdown: 'S              S            S            S           S            S            S            S',
  reset: 'S              S            S            S           S            S            S            S',
  panicked: 'S              S            S            S           S            S            S            S',
  agentPort: 'I              I            I            I           I            S            I            I',
  agentAnswered: 'I              I            I            I           I            S            I            I',
  qmpClosed: 'I              I            I            I           I            S            I            I',
  qmpUnresponsive: 'S              S            S            S           S            S            S            S',
  qmpAnswers: 'S              S            S            S           S            S            S            S',
  reconnectEnded: 'S              S            S            S           S            S            S            S',
};

function at(phase: SupervisorState, flags: Partial<CoreState> = {}): CoreState {
  return Object.freeze({ ...INITIAL_STATE, ...flags, phase });
}

const kinds = (effects: Effect[]): string[] => effects.map((e) => e.kind);

t.test('every (state, event) pair of the table', async (t) => {
  t.equal(SUPERVISOR_STATES.length, 8);
  let pairs = 0;
  for (const [type, row] of Object.entries(TABLE) as Array<[CoreEventType, string]>) {
    const cells = row.split(/\s+/);
    t.equal(cells.length, SUPERVISOR_STATES.length, `${type}: a cell per state`);
    SUPERVISOR_STATES.forEach((phase, i) => {
      pairs++;
      const want = cells[i]!;
      const s = at(phase);
      const r = step(s, SAMPLES[type]);
      const where = `${type} in ${phase}`;
      if (want === 'R') {
        t.equal(r.outcome, 'refused', `${where}: refused`);
        t.equal(r.state, s, `${where}: state unchanged`);
        t.same(r.effects, [], `${where}: no effects`);
        t.ok(r.to !== undefined && !canTransition(phase, r.to), `${where}: ${r.to} is not allowed from ${phase}`);
      } else if (want === 'I') {
        t.equal(r.outcome, 'ignored', `${where}: ignored`);
        t.equal(r.state, s, `${where}: state unchanged`);
        t.same(r.effects, [], `${where}: no effects`);
      } else if (want === 'S') {
        t.equal(r.outcome, 'stayed', `${where}: taken`);
        t.equal(r.state.phase, phase, `${where}: same phase`);
      } else {
        t.equal(r.outcome, 'moved', `${where}: moved`);
        t.equal(r.state.phase, want, `${where}: to ${want}`);
        t.ok(canTransition(phase, r.state.phase), `${where}: through the transition table`);
      }
    });
  }
  t.equal(pairs, Object.keys(SAMPLES).length * 8, 'all pairs walked');
});

t.test('the effects of each accepted event', async (t) => {
  const eff = (phase: SupervisorState, e: CoreEvent, flags: Partial<CoreState> = {}): string[] => kinds(step(at(phase, flags), e).effects);
  t.same(eff('New', SAMPLES.start), ['prepare']);
  t.same(eff('New', SAMPLES.reattach), ['inspectRunDir']);
  t.same(eff('Preparing', SAMPLES.podLauncherRan), ['inspectRunDir'], 'a pod launcher that already ran QEMU is inspected, not prepared for');
  t.same(eff('Preparing', SAMPLES.resourcesInvalid), ['log', 'exit']);
  t.same(eff('Preparing', SAMPLES.prepareFailed), ['log', 'exit', 'releaseIfStopped']);
  t.same(eff('Preparing', SAMPLES.prepared), ['launch']);
  t.same(eff('Launching', SAMPLES.launchFailed), ['kill', 'log', 'exit']);
  t.same(eff('Reattaching', { type: 'launchFailed', error: boom, via: 'handover' }), ['kill', 'log', 'exit', 'releaseIfStopped']);
  t.same(eff('Launching', SAMPLES.qemuStarted), ['dropPendingLaunch', 'recordLaunch', 'event', 'connect']);
  t.same(
    eff('Reattaching', { type: 'qemuStarted', pid: 42, prepared, via: 'handover' }),
    ['dropPendingLaunch', 'recordLaunch', 'connect'],
    'a hand-over records no Launched event',
  );
  t.same(eff('Launching', SAMPLES.connecting), []);
  t.same(eff('Starting', SAMPLES.qmpReady), []);
  t.same(eff('Running', SAMPLES.startupFailed), ['log', 'stop']);
  t.same(eff('Preparing', SAMPLES.stop), ['log', 'kill', 'exit'], 'before launch there is nothing to power down');
  for (const p of ['Launching', 'Starting', 'Reattaching', 'Running'] as const) t.same(eff(p, SAMPLES.stop), ['log', 'escalate'], `stop in ${p} escalates`);
  t.same(eff('Running', SAMPLES.launcherLost), ['log', 'event', 'kill', 'exit']);
  t.same(eff('Running', SAMPLES.exited), ['dropPendingLaunch', 'finalize']);
  t.same(step(at('Running'), SAMPLES.paused).effects, [{ kind: 'writeStatus', edit: { kind: 'paused', paused: true } }]);
  t.same(step(at('Running'), { type: 'agentPort', open: true }).effects, [{ kind: 'probeAgent' }]);
  t.same(step(at('Running'), { type: 'agentPort', open: false }).effects, [{ kind: 'writeStatus', edit: { kind: 'agentPortClosed' } }]);
  t.same(step(at('Running'), { type: 'agentAnswered', interfaces: [] }).effects, [{ kind: 'writeStatus', edit: { kind: 'agentConnected', interfaces: [] } }]);
  t.same(eff('Running', SAMPLES.qmpClosed), ['reconnectQmp']);
  t.same(
    step(at('Running'), SAMPLES.qmpUnresponsive).effects.map((e) => (e.kind === 'event' ? e.reason : e.kind)),
    ['QmpUnresponsive', 'writeStatus'],
  );
  t.same(
    step(at('Running'), SAMPLES.qmpAnswers).effects.map((e) => (e.kind === 'event' ? e.reason : e.kind)),
    ['QmpReconnected', 'writeStatus'],
  );
  t.same(step(at('Running'), SAMPLES.shutdown).effects, [
    { kind: 'event', type: 'Normal', reason: 'Shutdown', message: 'QEMU reports shutdown (guest-shutdown)' },
  ]);
  t.same(step(at('Running'), SAMPLES.reset).effects, [{ kind: 'event', type: 'Normal', reason: 'Reset', message: 'the guest was reset' }]);
  t.same(step(at('Running'), SAMPLES.panicked).effects, [{ kind: 'event', type: 'Warning', reason: 'GuestPanicked', message: 'the guest kernel panicked' }]);
  t.same(eff('Running', SAMPLES.reconnectEnded), []);
});

t.test('the flags folded into the state', async (t) => {
  const stopped = step(at('Running'), SAMPLES.stop);
  t.equal(stopped.state.stopRequested, true, 'a stop is remembered');
  t.equal(step(at('Exited'), SAMPLES.stop).state.stopRequested, true, 'even once the VMI ended (it makes a finishing end a success)');
  t.equal(step(at('New'), SAMPLES.stop).state.stopRequested, false, 'a refused stop changes nothing');

  t.same(
    kinds(step(at('Stopping', { stopRequested: true }), SAMPLES.prepared).effects),
    ['closeFds', 'exit', 'releaseIfStopped'],
    'prepare done after a stop: its fds closed, its sandbox released',
  );
  t.equal(step(at('Exited', { stopRequested: true }), SAMPLES.prepared).outcome, 'stayed');
  t.same(step(at('Exited', { stopRequested: true }), SAMPLES.prepared).effects[0], { kind: 'closeFds', fds: [7, 8] });

  const closed = step(at('Running'), SAMPLES.qmpClosed);
  t.equal(closed.state.reconnecting, true, 'one reconnect loop');
  t.equal(step(closed.state, SAMPLES.qmpClosed).outcome, 'ignored', 'not two');
  t.equal(step(closed.state, SAMPLES.reconnectEnded).state.reconnecting, false, 'until it ends');

  t.equal(step(at('Running'), SAMPLES.shutdown).state.guestShutdown, true, 'a guest shutdown is remembered');
  t.equal(step(at('Running'), { type: 'shutdown', guest: false, reason: 'host-qmp-quit' }).state.guestShutdown, false, 'a host one is not');
  t.equal(step(at('Running'), SAMPLES.panicked).state.panicked, true);

  const failed = step(at('Starting'), { type: 'startupFailed', error: new Error('no greeting') });
  t.equal(failed.state.launchFailure, 'QEMU did not come up: no greeting');
  t.same(failed.effects[1], { kind: 'stop', graceSeconds: 0, why: 'LaunchFailed' });
  t.equal(errorMessage('plain'), 'plain');

  const frozen = at('Running');
  step(frozen, SAMPLES.stop);
  t.equal(frozen.stopRequested, false, 'step never changes its input');
});

t.test('re-adoption decides from what it found', async (t) => {
  const found = (launcherAlive: boolean, qemuAlive: boolean, exit?: { kind: 'exit'; code: number }): Effect[] =>
    step(at('Reattaching'), { type: 'inspected', launcherAlive, qemuAlive, exit }).effects;
  t.same(kinds(found(true, true)), ['attachLink', 'recordAdopted', 'connect']);
  t.same(found(false, true)[1], { kind: 'connect', fresh: false }, 'a running QEMU is connected to, not started');
  t.same(found(false, false, { kind: 'exit', code: 0 }), [{ kind: 'exit', exit: { kind: 'exit', code: 0 } }], 'an ended QEMU is recorded');
  t.same(kinds(found(true, false, { kind: 'exit', code: 0 })), ['attachLink', 'exit']);
  t.same(kinds(found(true, false)), ['attachLink', 'handover'], 'a launcher waiting for its argv gets it');
  t.same(found(false, false), [{ kind: 'exit', failure: 'Lost' }], 'nothing found: Lost');
});

t.test('the final outcome', async (t) => {
  const out = (flags: Partial<CoreState>, exit?: Parameters<typeof finalOutcome>[1], failure?: Parameters<typeof finalOutcome>[2], message?: string) =>
    finalOutcome(at('Exited', flags), exit, failure, message);
  t.match(out({ stopRequested: true }, { kind: 'signal', signal: 9 }), { phase: 'Succeeded', reason: 'Stopped', text: 'QEMU ended: signal 9' });
  t.match(out({}, { kind: 'exit', code: 0 }), { phase: 'Succeeded', reason: 'GuestShutdown' });
  t.match(out({ guestShutdown: true }, { kind: 'exit', code: 1 }), { phase: 'Succeeded', reason: 'GuestShutdown' });
  t.match(out({}, { kind: 'exit', code: 1 }), { phase: 'Failed', reason: 'QemuCrashed', text: 'QEMU ended: exit code 1' });
  t.match(out({}, undefined), { phase: 'Failed', reason: 'QemuCrashed', text: 'QEMU ended: unknown exit' });
  t.match(out({ panicked: true }, { kind: 'exit', code: 0 }), { phase: 'Failed', reason: 'QemuCrashed' }, 'a panic fails the VMI');
  t.match(out({ panicked: true, stopRequested: true }, { kind: 'exit', code: 0 }), { phase: 'Succeeded', reason: 'Stopped' }, 'unless it was stopped');
  t.match(
    out({ launchFailure: 'QEMU did not come up: x', stopRequested: true }, { kind: 'exit', code: 0 }),
    { phase: 'Failed', reason: 'LaunchFailed', text: 'QEMU did not come up: x' },
    'a failed launch is LaunchFailed, though it was stopped',
  );
  t.match(out({ launchFailure: 'x' }, undefined, undefined, 'own words'), { reason: 'LaunchFailed', text: 'own words' });
  t.match(out({ launchFailure: 'x' }, undefined, 'OOMKilled', 'oom'), { reason: 'OOMKilled', text: 'oom' }, 'a given failure wins');
  t.same(out({}, { kind: 'signal', signal: 11 }).report, { phase: 'Failed', reason: 'QemuCrashed', exit: { kind: 'signal', signal: 11 } });

  const said = withQemuSaid(out({}, { kind: 'exit', code: 1 }), ['could not open disk', 'aborting']);
  t.equal(said.text, 'QEMU ended: exit code 1; QEMU said: could not open disk | aborting');
  t.equal(said.report.qemuError, 'could not open disk\naborting');
  const quiet = out({}, { kind: 'exit', code: 1 });
  t.equal(withQemuSaid(quiet, []), quiet, 'nothing said, nothing added');
});

t.test('OOM diagnosis', async (t) => {
  t.ok(mayBeOomKill(at('Exited'), undefined, undefined), 'QEMU vanished');
  t.ok(mayBeOomKill(at('Exited'), { kind: 'signal', signal: 9 }, undefined), 'SIGKILL');
  t.notOk(mayBeOomKill(at('Exited'), { kind: 'signal', signal: 11 }, undefined));
  t.notOk(mayBeOomKill(at('Exited'), { kind: 'exit', code: 1 }, undefined));
  t.notOk(mayBeOomKill(at('Exited', { stopRequested: true }), undefined, undefined), 'a stop kills on purpose');
  t.notOk(mayBeOomKill(at('Exited'), undefined, 'LauncherLost'), 'the cause is known');
  t.equal(oomMessage(undefined), 'QEMU was killed by the OOM killer: the VM went over its cgroup memory limit');
  t.match(oomMessage({ memoryLimitBytes: 300, guestBytes: 200, overheadBytes: 100, vcpus: 1, resources: {} }), /of 300 bytes \(guest 200 \+ overhead 100\)$/);
});
