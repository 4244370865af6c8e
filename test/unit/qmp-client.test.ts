// Tests the QMP client against a fake monitor on a real unix socket: negotiation, id matching, events, timeouts, protocol errors, disconnects.
import type { Socket } from 'node:net';
import t from 'tap';
import { QmpClient, type QmpClientOptions } from '../../src/qmp/client.js';
import { type QmpError, isQmpError } from '../../src/qmp/errors.js';
import type { QmpEvent, ShutdownCause, StatusInfo } from '../../src/qmp/types.js';
import pino from 'pino';
import { FakeQmpServer, defaultGreeting, type FakeQmpOptions } from '../support/fake-qmp.js';

/** The subtest type tap hands to callbacks. */
type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function setup(t: Tap, fakeOpts: FakeQmpOptions = {}, clientOpts: Partial<QmpClientOptions> = {}): Promise<{ fake: FakeQmpServer; qmp: QmpClient }> {
  const fake = await new FakeQmpServer(fakeOpts).start();
  const qmp = new QmpClient({ path: fake.path, connectTimeoutMs: 1000, greetingTimeoutMs: 500, ...clientOpts });
  t.teardown(async () => {
    await qmp.close();
    await fake.close();
  });
  return { fake, qmp };
}

async function rejectsCode(t: Tap, p: Promise<unknown>, code: string, msg?: string): Promise<QmpError> {
  try {
    await p;
  } catch (e) {
    t.ok(isQmpError(e), 'is a QmpError');
    t.equal((e as QmpError).code, code, msg ?? `rejects with ${code}`);
    return e as QmpError;
  }
  t.fail(`expected rejection with ${code}`);
  throw new Error('unreachable');
}

t.test('negotiates capabilities, enabling oob when offered', async (t) => {
  const { fake, qmp } = await setup(t);
  t.equal(qmp.state, 'idle', 'constructor does nothing');
  await qmp.connect();
  t.equal(qmp.state, 'ready');
  t.same(fake.received[0], { execute: 'qmp_capabilities', arguments: { enable: ['oob'] }, id: 1 });
  await qmp.execute('query-status');
  await qmp.execute('query-status');
  t.same(
    fake.received.map((c) => c.id),
    [1, 1, 1],
    'ids are reused once answered: sequential use keeps requests short',
  );
  t.equal(qmp.oob, true);
  t.same(qmp.capabilities, ['oob']);
  t.equal(qmp.greeting?.QMP.version.qemu.major, 7);
  const st = await qmp.execute('query-status');
  t.equal(st.status, 'prelaunch');
});

t.test('no oob offered, or oob disabled by option: qmp_capabilities without enable', async (t) => {
  const { fake, qmp } = await setup(t, { capabilities: [] });
  await qmp.connect();
  t.same(fake.received[0]?.arguments, {});
  t.equal(qmp.oob, false);
  const s2 = await setup(t, {}, { enableOob: false });
  await s2.qmp.connect();
  t.same(s2.fake.received[0]?.arguments, {});
});

t.test('connect retries until the socket appears', async (t) => {
  const fake = new FakeQmpServer();
  t.teardown(() => fake.close());
  const qmp = new QmpClient({ path: fake.path, connectTimeoutMs: 3000, retryIntervalMs: 20 });
  t.teardown(() => qmp.close());
  const started = Date.now();
  const connecting = qmp.connect();
  await sleep(150);
  await fake.start();
  await connecting;
  t.ok(Date.now() - started >= 140, 'waited for the socket');
  t.equal(qmp.state, 'ready');
});

t.test('connect gives up at the deadline with QMP_CONNECT_FAILED', async (t) => {
  const qmp = new QmpClient({ path: '/nonexistent/vmlet-test/qmp.sock', connectTimeoutMs: 200, retryIntervalMs: 20 });
  const started = Date.now();
  const err = await rejectsCode(t, qmp.connect(), 'QMP_CONNECT_FAILED');
  const took = Date.now() - started;
  t.ok(took >= 190 && took < 1000, `gave up after ${took} ms`);
  t.equal((err.cause as NodeJS.ErrnoException).code, 'ENOENT', 'wraps the last connect error');
  t.equal(qmp.state, 'closed');
  t.equal(await qmp.closed, err);
});

t.test('connect can be aborted', async (t) => {
  const qmp = new QmpClient({ path: '/nonexistent/vmlet-test/qmp.sock', connectTimeoutMs: 5000, retryIntervalMs: 20 });
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 50);
  const started = Date.now();
  await rejectsCode(t, qmp.connect({ signal: ac.signal }), 'QMP_ABORTED');
  t.ok(Date.now() - started < 1000);
});

t.test('no greeting: QMP_GREETING_TIMEOUT', async (t) => {
  const { qmp } = await setup(t, { greeting: false }, { greetingTimeoutMs: 100 });
  const started = Date.now();
  await rejectsCode(t, qmp.connect(), 'QMP_GREETING_TIMEOUT');
  t.ok(Date.now() - started < 1000);
  t.equal(qmp.state, 'closed');
});

t.test('garbage instead of a greeting: QMP_PROTOCOL', async (t) => {
  const { qmp } = await setup(t, { greeting: 'SSH-2.0-OpenSSH\r\n' });
  await rejectsCode(t, qmp.connect(), 'QMP_PROTOCOL');
});

t.test('a JSON object that is not a greeting: QMP_PROTOCOL', async (t) => {
  const { qmp } = await setup(t, { greeting: '{"return": {}}\r\n' });
  await rejectsCode(t, qmp.connect(), 'QMP_PROTOCOL');
});

t.test('the socket closes before the greeting: QMP_CONNECT_FAILED', async (t) => {
  const { fake, qmp } = await setup(t, { greeting: false });
  const p = qmp.connect();
  await sleep(50);
  fake.last?.destroy();
  await rejectsCode(t, p, 'QMP_CONNECT_FAILED');
});

t.test('qmp_capabilities refused: QMP_NEGOTIATION_FAILED wrapping the command error', async (t) => {
  const { qmp } = await setup(t, { handlers: { qmp_capabilities: () => ({ error: { class: 'GenericError', desc: 'nope' } }) } });
  const err = await rejectsCode(t, qmp.connect(), 'QMP_NEGOTIATION_FAILED');
  t.equal((err.cause as QmpError).code, 'QMP_COMMAND_ERROR');
  t.equal((err.cause as QmpError).desc, 'nope');
});

t.test('pipelined connect: resolves before qmp_capabilities is answered; the next command follows it', async (t) => {
  // Like QEMU, the fake answers in order: cont only after the capabilities.
  let answerCaps!: () => void;
  const capsAnswered = new Promise<void>((resolve) => (answerCaps = resolve));
  const { fake, qmp } = await setup(t, {
    handlers: {
      qmp_capabilities: async (c, conn) => {
        await capsAnswered;
        conn.reply(c.id, {});
        return undefined;
      },
      cont: async () => {
        await capsAnswered;
        await sleep(5);
        return { return: {} };
      },
    },
  });
  await qmp.connect({ pipelined: true });
  t.equal(qmp.state, 'ready', 'usable at once');
  const cont = qmp.execute('cont');
  await fake.waitForCommands(2);
  t.same(
    fake.received.map((c) => c.execute),
    ['qmp_capabilities', 'cont'],
    'cont was sent before the capabilities were answered',
  );
  answerCaps();
  t.same(await cont, {});
  t.equal(qmp.oob, true, 'oob counts once the answer came');
});

t.test('pipelined connect: a refused negotiation closes the client and fails what followed', async (t) => {
  const { qmp } = await setup(t, {
    handlers: {
      qmp_capabilities: () => ({ error: { class: 'GenericError', desc: 'nope' } }),
      cont: () => ({ error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" } }),
    },
  });
  await qmp.connect({ pipelined: true });
  // QEMU refuses what came before the negotiation; the client closes on the refused capabilities.
  await t.rejects(qmp.execute('cont'), { code: /^QMP_(COMMAND_ERROR|NEGOTIATION_FAILED)$/ });
  await new Promise((r) => setTimeout(r, 10));
  t.equal(qmp.state, 'closed');
  await rejectsCode(t, qmp.execute('query-status'), 'QMP_DISCONNECTED');
});

t.test('command errors carry QEMU class and desc', async (t) => {
  const { qmp } = await setup(t, {
    handlers: { device_del: (c) => ({ error: { class: 'DeviceNotFound', desc: `Device '${String(c.arguments?.['id'])}' not found` } }) },
  });
  await qmp.connect();
  const err = await rejectsCode(t, qmp.execute('device_del', { id: 'nic9' }), 'QMP_COMMAND_ERROR');
  t.equal(err.errorClass, 'DeviceNotFound');
  t.equal(err.desc, "Device 'nic9' not found");
  t.equal(err.command, 'device_del');
  t.equal(qmp.state, 'ready', 'a command error leaves the connection up');
  t.equal((await qmp.execute('query-status')).running, false);
});

t.test('raw execute of an unknown command, and executeRaw', async (t) => {
  const { fake, qmp } = await setup(t, { handlers: { 'x-custom': (c) => ({ return: { echo: c.arguments } }) } });
  await qmp.connect();
  const r = await qmp.execute('x-custom', { a: 1 });
  t.same(r, { echo: { a: 1 } });
  t.same(await qmp.executeRaw('x-custom', { b: 2 }), { echo: { b: 2 } });
  t.same(
    fake.received.slice(1).map((c) => c.arguments),
    [{ a: 1 }, { b: 2 }],
  );
});

t.test('every in-flight command has a unique id; 500 concurrent replies answered out of order reach the right callers', async (t) => {
  const held: Array<() => void> = [];
  const { fake, qmp } = await setup(t, {
    handlers: {
      'x-echo': (c, conn) => {
        held.push(() => conn.reply(c.id, { n: c.arguments?.['n'] }));
        return undefined;
      },
    },
  });
  await qmp.connect();
  const n = 500;
  const calls = Array.from({ length: n }, (_, i) => qmp.execute('x-echo', { n: i }));
  await fake.waitForCommands(n + 1);
  const ids = new Set(fake.received.slice(1).map((c) => c.id));
  t.equal(ids.size, n, 'ids of in-flight commands are unique');
  // answer in reverse, in two bursts, so replies arrive in one chunk and across chunks
  held.reverse();
  for (const f of held.splice(0, n / 2)) f();
  await sleep(5);
  for (const f of held.splice(0)) f();
  const results = await Promise.all(calls);
  const wrong = results.filter((r, i) => (r as { n: number }).n !== i).length;
  t.equal(wrong, 0, 'zero mismatched replies');
});

t.test('events before the reply reach listeners before the promise settles; typed listeners and *', async (t) => {
  const { qmp } = await setup(t, {
    handlers: {
      quit: (c, conn) => {
        conn.event('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
        conn.reply(c.id, {});
        setTimeout(() => conn.destroy(), 5);
        return undefined;
      },
      stop: (c, conn) => {
        // event and reply in the same write
        conn.sendRaw(`{"event":"STOP","timestamp":{"seconds":1,"microseconds":2}}\r\n{"return":{},"id":${String(c.id)}}\r\n`);
        return undefined;
      },
    },
  });
  await qmp.connect();
  const order: string[] = [];
  qmp.on('STOP', (data, ev) => {
    order.push('STOP');
    t.same(data, {}, 'events without data get {}');
    t.same(ev.timestamp, { seconds: 1, microseconds: 2 });
  });
  qmp.on('SHUTDOWN', (data) => {
    order.push(`SHUTDOWN:${data.reason}:${String(data.guest)}`);
  });
  const all: string[] = [];
  qmp.on('*', (_d, ev) => all.push(ev.event));
  await qmp.execute('stop').then(() => order.push('stop-reply'));
  await qmp.execute('quit').then(() => order.push('quit-reply'));
  t.same(order, ['STOP', 'stop-reply', 'SHUTDOWN:host-qmp-quit:false', 'quit-reply']);
  t.same(all, ['STOP', 'SHUTDOWN']);
  await qmp.closed;
});

t.test('a listener that throws does not break the connection; off() removes listeners', async (t) => {
  const { fake, qmp } = await setup(t);
  await qmp.connect();
  let calls = 0;
  const unsub = qmp.on('RESUME', () => {
    calls++;
    throw new Error('listener bug');
  });
  fake.last?.event('RESUME');
  t.equal((await qmp.execute('query-status')).status, 'prelaunch');
  unsub();
  fake.last?.event('RESUME');
  await qmp.execute('query-status');
  t.equal(calls, 1);
});

t.test('events() iterator: filtered, ends when the connection closes', async (t) => {
  const { fake, qmp } = await setup(t);
  await qmp.connect();
  const it = qmp.events({ names: ['RESET', 'BALLOON_CHANGE'] });
  const conn = fake.last;
  conn?.event('STOP');
  conn?.event('RESET', { guest: true, reason: 'guest-reset' });
  conn?.event('BALLOON_CHANGE', { actual: 1024 });
  setTimeout(() => conn?.destroy(), 30);
  const got: QmpEvent[] = [];
  for await (const ev of it) got.push(ev);
  t.same(
    got.map((e) => e.event),
    ['RESET', 'BALLOON_CHANGE'],
  );
  t.equal((await qmp.closed)?.code, 'QMP_DISCONNECTED');
  const late = qmp.events();
  t.same(await late.next(), { value: undefined, done: true }, 'events() after close is already done');
});

t.test('bounded event buffer: oldest dropped, counted in droppedEvents', async (t) => {
  const { fake, qmp } = await setup(t);
  await qmp.connect();
  const it = qmp.events({ bufferSize: 5 });
  const fast = qmp.events({ bufferSize: 100 });
  for (let i = 0; i < 20; i++) fake.last?.event('BALLOON_CHANGE', { actual: i });
  await qmp.execute('query-status'); // all 20 events were read before this reply
  t.equal(qmp.droppedEvents, 15);
  t.equal(it.dropped, 15);
  t.equal(fast.dropped, 0);
  const seen: number[] = [];
  for (let i = 0; i < 5; i++) {
    const r = await it.next();
    if (!r.done) seen.push((r.value.data as { actual: number }).actual);
  }
  t.same(seen, [15, 16, 17, 18, 19], 'the newest events are kept');
  await it.return();
  await fast.return();
});

t.test('garbage line after negotiation: QMP_PROTOCOL closes, pending fail with QMP_DISCONNECTED caused by it', async (t) => {
  const { qmp } = await setup(t, { handlers: { 'query-status': () => ({ raw: 'this is not json\r\n' }) } });
  await qmp.connect();
  const err = await rejectsCode(t, qmp.execute('query-status'), 'QMP_DISCONNECTED');
  t.equal((err.cause as QmpError).code, 'QMP_PROTOCOL');
  t.equal((await qmp.closed)?.code, 'QMP_PROTOCOL');
  await rejectsCode(t, qmp.execute('query-status'), 'QMP_DISCONNECTED', 'later calls fail at once');
});

t.test('a reply with an unknown id, or without id, is a protocol error', async (t) => {
  const a = await setup(t, { handlers: { 'query-status': () => ({ raw: '{"return": {}, "id": 99999}\r\n' }) } });
  await a.qmp.connect();
  await rejectsCode(t, a.qmp.execute('query-status'), 'QMP_DISCONNECTED');
  t.equal((await a.qmp.closed)?.code, 'QMP_PROTOCOL');
  const b = await setup(t, { handlers: { 'query-status': () => ({ raw: '{"error": {"class": "GenericError", "desc": "JSON parse error"}}\r\n' }) } });
  await b.qmp.connect();
  await rejectsCode(t, b.qmp.execute('query-status'), 'QMP_DISCONNECTED');
  t.match((await b.qmp.closed)?.message, /without a matching id/);
});

t.test('a reply split across many 1-byte chunks, with an event in the middle', async (t) => {
  const { qmp } = await setup(t, {
    handlers: {
      'query-version': (c, conn) => {
        const text = `{"event": "POWERDOWN", "timestamp": {"seconds": 1, "microseconds": 0}}\r\n{"return": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "caf\u00e9"}, "id": ${String(c.id)}}\r\n`;
        void conn.sendChunked(text, 1, 0);
        return undefined;
      },
    },
  });
  await qmp.connect();
  let powerdown = 0;
  qmp.on('POWERDOWN', () => powerdown++);
  const v = await qmp.execute('query-version');
  t.same(v, { qemu: { major: 7, minor: 2, micro: 0 }, package: 'caf\u00e9' });
  t.equal(powerdown, 1);
});

t.test('oversized line: QMP_PROTOCOL without waiting for its end', async (t) => {
  const { qmp } = await setup(
    t,
    {
      handlers: {
        'query-qmp-schema': (_c, conn) => {
          conn.sendRaw(`[${'"x",'.repeat(2000)}`); // 10 kB and no newline, ever
          return undefined;
        },
      },
    },
    { maxLineBytes: 4096 },
  );
  await qmp.connect();
  const err = await rejectsCode(t, qmp.execute('query-qmp-schema'), 'QMP_DISCONNECTED');
  t.equal((err.cause as QmpError).code, 'QMP_PROTOCOL');
  t.match((err.cause as QmpError).message, /exceeds 4096 bytes/);
});

t.test('stalled peer: QMP_TIMEOUT, then (default) the connection closes and other pending fail', async (t) => {
  const { qmp } = await setup(t, { handlers: { 'query-status': () => 'stall', device_add: () => 'stall' } });
  await qmp.connect();
  const started = Date.now();
  const a = qmp.execute('query-status', undefined, { timeoutMs: 100 });
  const b = qmp.execute('device_add', { driver: 'virtio-net-pci', id: 'n1' });
  const errA = await rejectsCode(t, a, 'QMP_TIMEOUT');
  t.equal(errA.command, 'query-status');
  const took = Date.now() - started;
  t.ok(took >= 95 && took < 1000, `timed out after ${took} ms`);
  const errB = await rejectsCode(t, b, 'QMP_DISCONNECTED');
  t.equal((errB.cause as QmpError).cause, errA, 'the others fail because of the timeout');
  t.equal(qmp.state, 'closed');
});

t.test('per-command timeouts option and closeOnTimeout=false: a late reply is dropped, never handed to a later caller', async (t) => {
  let first = true;
  const { fake, qmp } = await setup(
    t,
    {
      handlers: {
        'query-status': (c, conn) => {
          if (first) {
            first = false;
            // answers after the caller gave up
            setTimeout(() => conn.reply(c.id, { running: true, status: 'running', late: true }), 150);
            return undefined;
          }
          return { return: { running: false, status: 'paused' } };
        },
      },
    },
    { closeOnTimeout: false, timeouts: { 'query-status': 50 } },
  );
  await qmp.connect();
  await rejectsCode(t, qmp.execute('query-status'), 'QMP_TIMEOUT');
  t.equal(qmp.state, 'ready');
  const lateId = fake.received[1]?.id;
  await qmp.execute('query-version', undefined, { timeoutMs: 1000 });
  t.not(fake.received[2]?.id, lateId, 'the abandoned id is not reused while its reply may still come');
  await sleep(120);
  const second = qmp.execute('query-status', undefined, { timeoutMs: 1000 });
  const r = await second;
  t.same(r, { running: false, status: 'paused' }, 'second caller gets its own reply');
  await sleep(20);
  t.equal(qmp.state, 'ready', 'the late reply did not break the connection');
});

t.test('abort signal: QMP_ABORTED; the late reply is dropped', async (t) => {
  const { qmp } = await setup(t, {
    handlers: { 'query-block': (c, conn) => (setTimeout(() => conn.reply(c.id, []), 50), undefined) },
  });
  await qmp.connect();
  const ac = new AbortController();
  const p = qmp.execute('query-block', undefined, { signal: ac.signal });
  setTimeout(() => ac.abort(), 10);
  await rejectsCode(t, p, 'QMP_ABORTED');
  await sleep(80);
  t.equal(qmp.state, 'ready');
  t.same(await qmp.execute('query-status'), { running: false, singlestep: false, status: 'prelaunch' });
});

t.test('peer disconnect mid-command: all pending fail at once with QMP_DISCONNECTED', async (t) => {
  const { fake, qmp } = await setup(t, { handlers: { 'query-status': () => 'stall' } });
  await qmp.connect();
  const calls = Array.from({ length: 10 }, () => qmp.execute('query-status'));
  await fake.waitForCommands(11);
  const started = Date.now();
  fake.last?.destroy();
  const results = await Promise.allSettled(calls);
  const took = Date.now() - started;
  t.ok(took < 100, `all failed within ${took} ms`);
  t.ok(results.every((r) => r.status === 'rejected' && isQmpError(r.reason, 'QMP_DISCONNECTED')));
  t.equal(qmp.pendingCount, 0);
});

t.test('quit: a disconnect after it was sent counts as done', async (t) => {
  const { qmp } = await setup(t, { handlers: { quit: (_c, conn) => (conn.destroy(), undefined) } });
  await qmp.connect();
  t.same(await qmp.execute('quit'), {});
});

t.test('usage errors: not connected, missing fd, close() fails pending', async (t) => {
  const { qmp } = await setup(t, { handlers: { 'query-status': () => 'stall' } });
  await rejectsCode(t, qmp.execute('query-status'), 'QMP_NOT_CONNECTED');
  await qmp.connect();
  await rejectsCode(t, qmp.execute('getfd', { fdname: 'x' }), 'QMP_INVALID_ARGUMENT');
  await rejectsCode(t, qmp.execute('add-fd', {}, { fds: [1, 2] }), 'QMP_INVALID_ARGUMENT');
  const p = qmp.execute('query-status');
  await qmp.close();
  await rejectsCode(t, p, 'QMP_DISCONNECTED');
  t.equal(await qmp.closed, undefined, 'closed by us: no reason');
  await rejectsCode(t, qmp.connect(), 'QMP_NOT_CONNECTED', 'a client connects once');
});

t.test('fd commands: sent with sendmsg in call order; the next fd command waits for the previous reply', async (t) => {
  const sent: Array<{ line: string; fds: number[] }> = [];
  const releases: Array<() => void> = [];
  const { fake, qmp } = await setup(
    t,
    {
      handlers: {
        getfd: (c, conn) => (releases.push(() => conn.reply(c.id, {})), undefined),
      },
    },
    {
      // records the call and writes the bytes through a second route, like sendmsg would
      socketFd: () => 42,
      sendWithFds: (_fd, data, fds) => {
        sent.push({ line: data.toString(), fds });
        sockRef?.write(data);
      },
    },
  );
  let sockRef: Socket | undefined;
  await qmp.connect();
  sockRef = (qmp as unknown as { sock: Socket }).sock;
  const a = qmp.execute('getfd', { fdname: 'a' }, { fds: [10] });
  const b = qmp.execute('query-status');
  const c = qmp.execute('getfd', { fdname: 'c' }, { fds: [11] });
  const d = qmp.execute('query-status');
  await fake.waitForCommands(3);
  await sleep(30);
  t.same(
    fake.received.map((x) => x.execute),
    ['qmp_capabilities', 'getfd', 'query-status'],
    'second getfd (and what follows) waits',
  );
  t.same(
    sent.map((s) => s.fds),
    [[10]],
  );
  releases.shift()?.();
  await a;
  await b;
  await fake.waitForCommands(5);
  t.same(
    fake.received.map((x) => x.execute),
    ['qmp_capabilities', 'getfd', 'query-status', 'getfd', 'query-status'],
  );
  t.same(
    sent.map((s) => s.fds),
    [[10], [11]],
  );
  t.match(sent[1]?.line, /"fdname":"c"/);
  releases.shift()?.();
  await c;
  await d;
});

t.test('pino-shaped logger receives warnings', async (t) => {
  const logs: string[] = [];
  const fn =
    (level: string) =>
    (_o: object, msg?: string): void =>
      void logs.push(`${level}:${msg ?? ''}`);
  const logger = { trace: fn('trace'), debug: fn('debug'), info: fn('info'), warn: fn('warn'), error: fn('error') };
  const { qmp } = await setup(t, { handlers: { stop: () => 'stall' } }, { logger });
  await qmp.connect();
  await rejectsCode(t, qmp.execute('stop', undefined, { timeoutMs: 20 }), 'QMP_TIMEOUT');
  t.ok(logs.includes('warn:qmp command timed out'));
});

t.test('greeting object helper is what QEMU sends', async (t) => {
  t.same(Object.keys(defaultGreeting()), ['QMP']);
});

t.test('compile-time typing of execute() and the logger option', async (t) => {
  const check = false as boolean;
  if (check) {
    const q = new QmpClient({ path: '/x', logger: pino({ enabled: false }) });
    // @ts-expect-error device_del requires its arguments
    void q.execute('device_del');
    // @ts-expect-error balloon value is a number
    void q.execute('balloon', { value: 'big' });
    // @ts-expect-error query-status takes no arguments
    void q.execute('query-status', { verbose: true });
    const st: Promise<StatusInfo> = q.execute('query-status');
    const any: Promise<unknown> = q.execute('x-anything', { free: 'form' });
    q.on('SHUTDOWN', (d) => {
      const reason: ShutdownCause = d.reason;
      void reason;
    });
    void st;
    void any;
  }
  t.pass('type-checked by tsc -p tsconfig.check.json');
});
