// The start tracer: steps in time order from the earliest origin, bounded memory, one end per start.
import t from 'tap';
import { StartTracer, type StartTrace } from '../../src/daemon/start-trace.js';

function clock(): { now: () => number; at: (ms: number) => void } {
  let ms = 1000;
  return { now: () => ms, at: (v) => (ms = v) };
}

t.test('steps are ms since the first step; end records the outcome and hands the trace on', async (t) => {
  const c = clock();
  const ended: StartTrace[] = [];
  const tr = new StartTracer({ now: c.now, onEnd: (x) => ended.push(x) });
  t.equal(tr.open, 0, 'no start under way');
  t.equal(tr.begin('u1', 'vm', 'supervisor.created'), true);
  t.equal(tr.open, 1, 'one start under way (the spare launcher waits for none before it refills)');
  c.at(1002.5);
  tr.mark('u1', 'cgroup.ready');
  c.at(1030);
  tr.end('u1', 'Running');
  tr.end('u1', 'Failed');
  tr.mark('u1', 'late');
  const [trace] = tr.recent();
  t.same(trace?.steps, [
    ['supervisor.created', 0],
    ['cgroup.ready', 2.5],
    ['end:Running', 30],
  ]);
  t.equal(trace?.outcome, 'Running', 'a second end is ignored');
  t.equal(tr.open, 0, 'none under way once it ended');
  t.equal(ended.length, 1, 'onEnd once');
});

t.test('an earlier origin reported later (the API request) becomes step 0 and the rest shift', async (t) => {
  const c = clock();
  const tr = new StartTracer({ now: c.now });
  tr.begin('u1', 'vm', 'supervisor.created');
  c.at(1004);
  tr.mark('u1', 'Preparing');
  t.equal(tr.begin('u1', 'vm', 'api.received', 997), false, 'already open');
  tr.mark('u1', 'api.created');
  c.at(1010);
  tr.end('u1', 'Running');
  t.same(tr.recent()[0]?.steps, [
    ['api.received', 0],
    ['supervisor.created', 3],
    ['Preparing', 7],
    ['api.created', 7],
    ['end:Running', 13],
  ]);
});

t.test('memory is bounded: finished traces kept, open ones abandoned beyond the limit', async (t) => {
  const c = clock();
  const tr = new StartTracer({ now: c.now, keep: 2, maxOpen: 2 });
  for (const u of ['a', 'b', 'c']) {
    tr.begin(u, u, 'start');
    tr.end(u, 'Running');
  }
  t.same(
    tr.recent().map((x) => x.uid),
    ['b', 'c'],
    'only the last `keep` finished traces',
  );
  tr.begin('x', 'x', 'start');
  tr.begin('y', 'y', 'start');
  tr.begin('z', 'z', 'start');
  t.equal(tr.recent().at(-1)?.outcome, 'Abandoned', 'the oldest open trace is abandoned to make room');
  t.equal(tr.recent().at(-1)?.uid, 'x');
  tr.mark('nobody', 'step');
  t.pass('marking a start that is not traced does nothing');
});
