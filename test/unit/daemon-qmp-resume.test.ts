// resumeGuest against a fake monitor and a real console socket: what a fresh QEMU and a re-adopted one are sent, and the console's order and clean-up.
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { QmpClient } from '../../src/qmp/client.js';
import { gate, resumeGuest } from '../../src/daemon/qmp-resume.js';
import { connectSerialConsole } from '../../src/daemon/console.js';
import { FakeQmpServer, type FakeQmpOptions } from '../support/fake-qmp.js';

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

/** A fake monitor, a console socket that records when a client connected, and the order of what happened. */
async function rig(
  t: Tap,
  opts: FakeQmpOptions = {},
): Promise<{
  fake: FakeQmpServer;
  connect: () => Promise<QmpClient>;
  console: () => ReturnType<typeof connectSerialConsole>;
  order: string[];
  consoles: net.Socket[];
}> {
  const order: string[] = [];
  const fake = await new FakeQmpServer({ ...opts, onCommand: (c) => order.push(String(c.execute)) }).start();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-resume-'));
  const consoles: net.Socket[] = [];
  const server = net.createServer((s) => {
    order.push('console');
    consoles.push(s);
  });
  await new Promise<void>((r) => server.listen(path.join(dir, 'serial.sock'), r));
  const clients: QmpClient[] = [];
  t.teardown(async () => {
    for (const c of clients) await c.close();
    for (const s of consoles) s.destroy();
    await new Promise((r) => server.close(r));
    await fake.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const connect = async (): Promise<QmpClient> => {
    const q = new QmpClient({ path: fake.path, connectTimeoutMs: 1000 });
    clients.push(q);
    await q.connect();
    return q;
  };
  return { fake, connect, console: () => connectSerialConsole(dir, 1000), order, consoles };
}

const names = (fake: FakeQmpServer): string[] => fake.connections.flatMap((c) => c.received.map((m) => String(m.execute)));

t.test('a fresh QEMU gets only cont, after its console is connected', async (t) => {
  const r = await rig(t);
  const steps: string[] = [];
  const res = await resumeGuest({ connect: r.connect, fresh: true, console: r.console, trace: (s) => steps.push(s) });
  t.same(names(r.fake), ['qmp_capabilities', 'cont'], 'no query-status, no set-action: -S and -action say it');
  t.ok(r.order.indexOf('console') >= 0 && r.order.indexOf('console') < r.order.indexOf('cont'), 'the console was connected before cont');
  t.same(steps, ['qmp.greeting', 'qmp.cont']);
  t.match(res, { cont: true, paused: false });
  t.ok(res.console, 'the console is handed back');
  res.console?.close();
});

t.test('a re-adopted QEMU still in prelaunch gets its actions, then cont', async (t) => {
  const r = await rig(t);
  const res = await resumeGuest({ connect: r.connect, fresh: false, console: r.console, trace: () => undefined });
  t.same(names(r.fake), ['qmp_capabilities', 'query-status', 'set-action', 'cont']);
  t.same(r.fake.connections[0]?.received.find((c) => c.execute === 'set-action')?.arguments, { shutdown: 'poweroff', reboot: 'reset', panic: 'pause' });
  t.match(res, { cont: true, paused: false });
  res.console?.close();
});

t.test('a re-adopted paused guest stays paused; one running is left alone', async (t) => {
  const paused = await rig(t, { handlers: { 'query-status': () => ({ return: { running: false, singlestep: false, status: 'paused' } }) } });
  t.match(await resumeGuest({ connect: paused.connect, fresh: false, trace: () => undefined }), { cont: false, paused: true });
  t.same(names(paused.fake), ['qmp_capabilities', 'query-status']);
  const running = await rig(t, { handlers: { 'query-status': () => ({ return: { running: true, singlestep: false, status: 'running' } }) } });
  t.match(await resumeGuest({ connect: running.connect, fresh: false, trace: () => undefined }), { cont: false, paused: false });
});

t.test('a fresh start with a hook before cont goes step by step', async (t) => {
  const r = await rig(t);
  const res = await resumeGuest({
    connect: r.connect,
    fresh: true,
    beforeCont: async (qmp) => {
      r.order.push('hook');
      await qmp.execute('query-cpus-fast');
    },
    trace: () => undefined,
  });
  t.same(names(r.fake), ['qmp_capabilities', 'query-status', 'query-cpus-fast', 'cont']);
  t.match(res, { cont: true });
});

t.test('a failed cont closes the console it connected', async (t) => {
  const r = await rig(t, { handlers: { cont: () => ({ error: { class: 'GenericError', desc: 'no' } }) } });
  await t.rejects(resumeGuest({ connect: r.connect, fresh: true, console: r.console, trace: () => undefined }), /no/);
  await new Promise<void>((resolve) => (r.consoles[0]?.closed ? resolve() : r.consoles[0]?.once('close', () => resolve())));
  t.ok(r.consoles[0]?.closed, "the console's connection was closed");
});

t.test('a QMP that cannot connect closes the console started early', async (t) => {
  const r = await rig(t);
  await t.rejects(resumeGuest({ connect: () => Promise.reject(new Error('QMP gone')), fresh: true, console: r.console, trace: () => undefined }), /QMP gone/);
  await new Promise<void>((resolve) => {
    const check = (): void => {
      const s = r.consoles[0];
      if (s?.closed || (s && s.readableEnded)) resolve();
      else setTimeout(check, 10);
    };
    check();
  });
  t.pass('the early console was closed');
});

t.test("cont waits for the gate (the sandbox's filters); a failed gate sends no cont", async (t) => {
  const r = await rig(t);
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const resumed = resumeGuest({ connect: r.connect, fresh: true, gate, trace: () => undefined });
  await r.fake.waitForCommands(1);
  await new Promise((res) => setTimeout(res, 50));
  t.same(names(r.fake), ['qmp_capabilities'], 'no cont while the gate is closed');
  open();
  t.match(await resumed, { cont: true });
  t.same(names(r.fake), ['qmp_capabilities', 'cont']);

  const failing = await rig(t);
  // As the sandbox hands it over: already handled, so its rejection is not an unhandled one while QEMU starts.
  const refused = Promise.reject(new Error('nft: ruleset refused'));
  refused.catch(() => undefined);
  await t.rejects(resumeGuest({ connect: failing.connect, fresh: true, gate: refused, trace: () => undefined }), /ruleset refused/);
  t.notOk(names(failing.fake).includes('cont'), 'the guest never ran');
});

t.test('onCont is called as cont is sent, before its answer, on both ways to cont; gate() opens once', async (t) => {
  let answer!: () => void;
  const answered = new Promise<void>((r) => (answer = r));
  const r = await rig(t, {
    handlers: {
      cont: async () => {
        await answered;
        return { return: {} };
      },
    },
  });
  const seen: string[] = [];
  const resumed = resumeGuest({
    connect: r.connect,
    fresh: true,
    onCont: () => seen.push(`onCont after ${names(r.fake).join(',')}`),
    trace: (s) => seen.push(s),
  });
  await r.fake.waitForCommands(2);
  t.same(seen, ['qmp.greeting', 'onCont after qmp_capabilities'], 'called once, when cont went out, before the answer');
  answer();
  await resumed;
  t.same(seen.at(-1), 'qmp.cont');

  const adopted = await rig(t);
  let calls = 0;
  await resumeGuest({ connect: adopted.connect, fresh: false, onCont: () => calls++, trace: () => undefined });
  t.equal(calls, 1, 'a re-adopted QEMU in prelaunch too');

  const g = gate('did not move');
  t.equal(g.open(true), true);
  await t.resolves(g.promise);
  const shut = gate('did not move');
  t.equal(shut.open(false), false);
  await t.rejects(shut.promise, /did not move/);
});
