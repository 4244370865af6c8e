// Tests the guest-agent client against a fake qemu-ga on a real unix socket: 0xFF resync, stale data, absent agent, no-reply shutdown, reconnect.
import t from 'tap';
import { GuestAgentClient, type GuestAgentClientOptions } from '../../src/qmp/guest-agent.js';
import { type QmpError, isQmpError } from '../../src/qmp/errors.js';
import { FakeGuestAgent, type FakeGuestAgentOptions } from '../support/fake-qmp.js';

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function setup(
  t: Tap,
  fakeOpts: FakeGuestAgentOptions = {},
  opts: Partial<GuestAgentClientOptions> = {},
): Promise<{ fake: FakeGuestAgent; ga: GuestAgentClient }> {
  const fake = await new FakeGuestAgent(fakeOpts).start();
  const ga = new GuestAgentClient({ path: fake.path, connectTimeoutMs: 500, syncTimeoutMs: 300, ...opts });
  t.teardown(async () => {
    await ga.close();
    await fake.close();
  });
  return { fake, ga };
}

async function rejectsCode(t: Tap, p: Promise<unknown>, code: string): Promise<QmpError> {
  try {
    await p;
  } catch (e) {
    t.ok(isQmpError(e), 'is a QmpError');
    t.equal((e as QmpError).code, code, `rejects with ${code}`);
    return e as QmpError;
  }
  t.fail(`expected rejection with ${code}`);
  throw new Error('unreachable');
}

t.test('first command connects, sends 0xFF + guest-sync-delimited, then the command', async (t) => {
  const { fake, ga } = await setup(t);
  t.equal(ga.state, 'disconnected', 'constructor does nothing');
  await ga.ping();
  t.equal(ga.state, 'connected');
  t.equal(fake.resets, 1);
  t.same(
    fake.received.map((c) => c.execute),
    ['guest-sync-delimited', 'guest-ping'],
  );
  await ga.ping();
  t.equal(fake.resets, 1, 'no resync while in sync');
});

t.test('typed commands and helpers', async (t) => {
  const { ga } = await setup(t, {
    handlers: {
      'guest-info': () => ({ return: { version: '7.2.0', supported_commands: [{ name: 'guest-ping', enabled: true, 'success-response': true }] } }),
      'guest-get-osinfo': () => ({ return: { id: 'debian', 'kernel-release': '6.1.0' } }),
      'guest-get-host-name': () => ({ return: { 'host-name': 'vm1' } }),
      'guest-network-get-interfaces': () => ({
        return: [
          { name: 'eth0', 'hardware-address': '52:54:00:12:34:56', 'ip-addresses': [{ 'ip-address': '10.0.2.15', 'ip-address-type': 'ipv4', prefix: 24 }] },
        ],
      }),
      'guest-get-fsinfo': () => ({ return: [{ name: 'vda1', mountpoint: '/', type: 'ext4', disk: [] }] }),
      'guest-fsfreeze-status': () => ({ return: 'thawed' }),
      'guest-fsfreeze-freeze': () => ({ return: 2 }),
      'guest-fsfreeze-thaw': () => ({ return: 2 }),
      'guest-get-time': () => ({ return: 1700000000000000000 }),
    },
  });
  t.equal((await ga.info()).version, '7.2.0');
  t.equal((await ga.osInfo()).id, 'debian');
  t.equal(await ga.hostName(), 'vm1');
  t.equal((await ga.networkInterfaces())[0]?.['ip-addresses']?.[0]?.['ip-address'], '10.0.2.15');
  t.equal((await ga.fsInfo())[0]?.mountpoint, '/');
  t.equal(await ga.fsfreezeStatus(), 'thawed');
  t.equal(await ga.fsfreezeFreeze(), 2);
  t.equal(await ga.fsfreezeThaw(), 2);
  const raw = await ga.execute('guest-get-time');
  t.equal(raw, 1700000000000000000, 'raw execute of a command outside the map');
});

t.test('command errors carry the agent class and desc', async (t) => {
  const { ga } = await setup(t);
  const err = await rejectsCode(t, ga.execute('guest-get-users'), 'QGA_COMMAND_ERROR');
  t.equal(err.errorClass, 'CommandNotFound');
  t.match(err.desc, /guest-get-users/);
  await ga.ping();
});

t.test('stale output from an earlier session, including an old 0xFF reply, is skipped', async (t) => {
  const stale = Buffer.concat([Buffer.from('{"return": {}, "id": 7}\n{"half": '), Buffer.from([0xff]), Buffer.from('{"return": 12345}\n')]);
  const { fake, ga } = await setup(t, {
    staleOnConnect: stale,
    handlers: { 'guest-get-host-name': () => ({ return: { 'host-name': 'right' } }) },
  });
  t.equal(await ga.hostName(), 'right');
  t.equal(fake.resets, 1);
});

t.test('absent agent: QGA_TIMEOUT from the sync, not a hang; each try resyncs', async (t) => {
  const { fake, ga } = await setup(t, { silent: true }, { syncTimeoutMs: 150 });
  const started = Date.now();
  const err = await rejectsCode(t, ga.ping(), 'QGA_TIMEOUT');
  const took = Date.now() - started;
  t.ok(took >= 140 && took < 1000, `failed after ${took} ms`);
  t.match(err.message, /is qemu-ga running/);
  await rejectsCode(t, ga.ping(), 'QGA_TIMEOUT');
  t.equal(fake.resets, 2, 'a fresh 0xFF + sync for the second try');
  t.equal(fake.connections.length, 1, 'the connection itself is kept');
});

t.test('a command timeout forces a resync; its late reply never reaches the next caller', async (t) => {
  let n = 0;
  const { fake, ga } = await setup(t, {
    handlers: {
      'guest-get-host-name': (c, conn) => {
        n++;
        if (n === 1) {
          setTimeout(() => conn.sendRaw(`${JSON.stringify({ return: { 'host-name': 'late' }, id: c.id })}\n`), 120);
          return undefined;
        }
        return { return: { 'host-name': `fresh${n}` } };
      },
    },
  });
  await rejectsCode(t, ga.hostName({ timeoutMs: 50 }), 'QGA_TIMEOUT');
  await sleep(100);
  // the late reply arrives while the next call is syncing
  t.equal(await ga.hostName(), 'fresh2');
  t.equal(fake.resets, 2, 'resynced after the timeout');
});

t.test('a late reply without an id (old agents) is still skipped thanks to the sync', async (t) => {
  let n = 0;
  const { ga } = await setup(t, {
    echoId: false,
    handlers: {
      'guest-get-host-name': (_c, conn) => {
        n++;
        if (n === 1) {
          setTimeout(() => conn.sendRaw('{"return": {"host-name": "late"}}\n'), 60);
          return undefined;
        }
        return { return: { 'host-name': 'fresh' } };
      },
    },
  });
  await rejectsCode(t, ga.hostName({ timeoutMs: 30 }), 'QGA_TIMEOUT');
  await sleep(80);
  t.equal(await ga.hostName(), 'fresh');
});

t.test('guest-shutdown resolves once written (no reply) and the next command resyncs', async (t) => {
  const { fake, ga } = await setup(t);
  const started = Date.now();
  await ga.shutdown('powerdown');
  t.ok(Date.now() - started < 500);
  await fake.waitForCommands(2);
  t.same(fake.received.at(-1), { execute: 'guest-shutdown', arguments: { mode: 'powerdown' }, id: 1 });
  await ga.ping();
  t.equal(fake.resets, 2);
});

t.test('commands are serialised: concurrent callers each get their own reply', async (t) => {
  let inFlight = 0;
  let maxInFlight = 0;
  const { ga } = await setup(t, {
    handlers: {
      'guest-exec-status': async (c) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        await sleep(2);
        inFlight--;
        return { return: { pid: c.arguments?.['pid'] } };
      },
    },
  });
  const calls = Array.from({ length: 20 }, (_, i) => ga.execute('guest-exec-status', { pid: i }));
  const results = await Promise.all(calls);
  t.same(
    results.map((r) => (r as { pid: number }).pid),
    Array.from({ length: 20 }, (_, i) => i),
  );
  t.equal(maxInFlight, 1, 'one request at a time');
});

t.test('the agent socket closing fails the running command with QGA_DISCONNECTED; the next one reconnects and resyncs', async (t) => {
  const { fake, ga } = await setup(t, {
    handlers: {
      'guest-fsfreeze-freeze': (_c, conn) => (setTimeout(() => conn.destroy(), 20), undefined),
    },
  });
  await ga.ping();
  const started = Date.now();
  await rejectsCode(t, ga.fsfreezeFreeze(), 'QGA_DISCONNECTED');
  t.ok(Date.now() - started < 500);
  await ga.ping();
  t.equal(fake.connections.length, 2);
  t.equal(fake.resets, 2);
});

t.test('malformed reply: QGA_PROTOCOL, then a resync', async (t) => {
  let n = 0;
  const { fake, ga } = await setup(t, {
    handlers: { 'guest-get-host-name': () => (++n === 1 ? { raw: 'garbage\n' } : { return: { 'host-name': 'ok' } }) },
  });
  await rejectsCode(t, ga.hostName(), 'QGA_PROTOCOL');
  t.equal(await ga.hostName(), 'ok');
  t.equal(fake.resets, 2);
});

t.test('oversized reply: QGA_PROTOCOL, reconnect', async (t) => {
  let n = 0;
  const { fake, ga } = await setup(
    t,
    {
      handlers: { 'guest-get-fsinfo': () => (++n === 1 ? { raw: `[${'"x",'.repeat(1000)}` } : { return: [] }) },
    },
    { maxLineBytes: 1024 },
  );
  await rejectsCode(t, ga.fsInfo(), 'QGA_PROTOCOL');
  t.same(await ga.fsInfo(), []);
  t.equal(fake.connections.length, 2);
});

t.test('no socket: QGA_CONNECT_FAILED; after close(): QGA_CLOSED', async (t) => {
  const ga = new GuestAgentClient({ path: '/nonexistent/vmlet-test/qga.sock', connectTimeoutMs: 100, retryIntervalMs: 20 });
  await rejectsCode(t, ga.ping(), 'QGA_CONNECT_FAILED');
  await ga.close();
  await rejectsCode(t, ga.ping(), 'QGA_CLOSED');
  t.equal(ga.state, 'closed');
});

t.test('abort signal: QGA_ABORTED', async (t) => {
  const { ga } = await setup(t, { handlers: { 'guest-ping': () => 'stall' } });
  await ga.connect();
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 20);
  await rejectsCode(t, ga.ping({ signal: ac.signal }), 'QGA_ABORTED');
});

t.test('disconnect() lets go of the socket but not of the client: the next command connects again and resyncs', async (t) => {
  const { fake, ga } = await setup(t);
  ga.disconnect();
  t.equal(fake.connections.length, 0, 'nothing to let go of before the first command');
  await ga.ping();
  t.equal(fake.connections.length, 1);
  ga.disconnect();
  t.equal(ga.state, 'disconnected', 'disconnected, not closed');
  const first = fake.connections[0]!;
  await new Promise<void>((r) => (first.socket.destroyed ? r() : first.socket.once('close', () => r())));
  await ga.ping();
  t.equal(fake.connections.length, 2, 'a new connection');
  t.equal(fake.resets, 2, 'resynced on it');
  t.equal(ga.state, 'connected');
});

t.test('disconnect() fails the command that waits on the socket with QGA_DISCONNECTED', async (t) => {
  const { ga } = await setup(t, { silent: true }, { syncTimeoutMs: 5_000 });
  const p = ga.ping();
  await sleep(50);
  ga.disconnect();
  await rejectsCode(t, p, 'QGA_DISCONNECTED');
});
