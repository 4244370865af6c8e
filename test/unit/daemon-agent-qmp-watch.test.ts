// Tests the supervisor's watches against fakes on real unix sockets: an agent that does not answer holds no socket until the guest opens its port again; QEMU's events become core events through one listener.
import pino from 'pino';
import t from 'tap';
import { AgentWatch } from '../../src/daemon/agent-watch.js';
import { QmpWatch } from '../../src/daemon/qmp-watch.js';
import type { CoreEvent } from '../../src/daemon/supervisor-core.js';
import { FakeGuestAgent, FakeQmpServer } from '../support/fake-qmp.js';

async function until(what: string, ok: () => boolean, ms = 8000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`not ${what} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test('a guest agent that does not answer: the probe lets go of the socket, the next probe connects again', async (t) => {
  const fake = await new FakeGuestAgent({ silent: true }).start();
  const events: CoreEvent[] = [];
  const watch = new AgentWatch({ runDir: fake.dir, running: () => true, dispatch: async (e) => events.push(e) });
  t.teardown(async () => {
    watch.close();
    await fake.close();
  });
  watch.start();
  await until('connected', () => fake.connections.length === 1);
  const first = fake.connections[0]!;
  await until('released', () => first.socket.destroyed || first.socket.readableEnded);
  t.same(events, [], 'no answer, no event');
  t.ok(watch.client, 'the client stays, only its socket went');

  // The guest starts qemu-ga and opens the port: QEMU's VSERPORT_CHANGE makes the supervisor probe again.
  fake.opts.silent = false;
  await watch.probe();
  t.equal(fake.connections.length, 2, 'connected again');
  t.same(events, [{ type: 'agentAnswered', interfaces: undefined }]);
  t.notOk(fake.connections[1]!.socket.destroyed, 'an agent that answers keeps its connection');
});

t.test('a failing probe does not cut off a newer one in flight', async (t) => {
  const fake = await new FakeGuestAgent({ silent: true }).start();
  const events: CoreEvent[] = [];
  const watch = new AgentWatch({ runDir: fake.dir, running: () => true, dispatch: async (e) => events.push(e) });
  t.teardown(async () => {
    watch.close();
    await fake.close();
  });
  watch.start();
  // The first probe's sync must have reached the silent agent before it starts answering, or that probe gets an answer too.
  await until('first probe sent', () => (fake.connections[0]?.received.length ?? 0) >= 1);
  // A second probe queued behind the first (the guest opened its port meanwhile) and the agent answers it.
  fake.opts.silent = false;
  await watch.probe();
  t.same(events, [{ type: 'agentAnswered', interfaces: undefined }], 'the second probe got its answer');
});

t.test("QEMU's events reach the supervisor as core events, others are ignored", async (t) => {
  const fake = await new FakeQmpServer().start();
  const events: CoreEvent[] = [];
  const watch = new QmpWatch({ runDir: fake.dir, uid: 'u1', logger: pino({ level: 'silent' }), dispatch: async (e) => events.push(e) });
  t.teardown(async () => {
    watch.close();
    await fake.close();
  });
  await watch.connect(2000);
  const conn = fake.last!;
  conn.event('RTC_CHANGE', { offset: 1 });
  conn.event('STOP');
  conn.event('VSERPORT_CHANGE', { id: 'channel0', open: true });
  conn.event('VSERPORT_CHANGE', { id: 'other', open: true });
  conn.event('RESUME');
  await until('three events', () => events.length >= 3);
  t.same(events, [
    { type: 'paused', paused: true },
    { type: 'agentPort', open: true },
    { type: 'paused', paused: false },
  ]);
  conn.destroy();
  await until('closed', () => events.length === 4);
  t.same(events[3], { type: 'qmpClosed' });
  t.equal(watch.client, undefined, 'no client once QEMU went away');
});
